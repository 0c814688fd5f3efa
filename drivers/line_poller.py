"""Health polling of every terminal on one line, in cycles, at low priority.

Each cycle reads the status of every terminal (merged reads, ``Priority.POLL``, through
:meth:`ModbusTerminal.poll_status`: read-only points every cycle, the writable settings every
``settings_poll_every`` cycles of the profile) and publishes one result per polled terminal. A
terminal that fails ``offline_after_failures`` polls in a row is offline and — if it is silent
rather than refusing — is then polled only every ``offline_poll_every`` cycles (ESPHome's rule),
so a dead terminal costs its line one timeout per N cycles instead of one per cycle. While the
line itself is down nothing is sent; every terminal gets a ``line_down`` result once per wait and
all are polled again as soon as the line is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from drivers.modbus_terminal import FailureKind, ModbusTerminal, TerminalSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollSettings:
    offline_after_failures: int = 3
    offline_poll_every: int = 5
    interval_s: float = 0.0
    """Shortest time from one cycle's start to the next (0: back to back)."""
    line_down_wait_s: float = 1.0
    """How long to wait for a down line to come back before reporting it again."""


@dataclass(frozen=True)
class PollResult:
    """One terminal's poll: its snapshot (``snapshot.online`` says whether this read worked)."""

    device_id: str
    cycle: int
    snapshot: TerminalSnapshot
    online: bool
    """Availability after this poll: False once ``offline_after_failures`` polls in a row failed."""
    consecutive_failures: int
    changed: bool
    """``online`` differs from before this poll (went offline or came back)."""


@dataclass
class Availability:
    online: bool = True
    consecutive_failures: int = 0
    offline_since_cycle: int = 0
    last_failure: FailureKind | None = None
    last_ok: float | None = None


@dataclass
class CycleStats:
    cycles: int = 0
    last_cycle_s: float = 0.0
    max_cycle_s: float = 0.0
    last_polled: int = 0
    last_skipped: int = 0
    """Offline terminals left out of the last cycle."""
    last_failed: int = 0


Publish = Callable[[PollResult], object]


class LinePoller:
    """Polls the terminals of one line (all must share one arbiter) and publishes every result.

    ``publish`` may be a plain function or a coroutine function; its errors are logged, never
    propagated, so a broken subscriber cannot stop health polling.
    """

    def __init__(self, terminals: Sequence[ModbusTerminal], publish: Publish,
                 settings: PollSettings | None = None) -> None:
        if terminals and any(t.arbiter is not terminals[0].arbiter for t in terminals):
            raise ValueError("LinePoller needs terminals of one line (one arbiter)")
        self.terminals = list(terminals)
        self.settings = settings or PollSettings()
        self._publish = publish
        self._availability = {t.device_id: Availability() for t in self.terminals}
        self._stats = CycleStats()
        self._cycle = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> CycleStats:
        return replace(self._stats)

    def availability(self, device_id: str) -> Availability:
        return replace(self._availability[device_id])

    def due(self, device_id: str, cycle: int) -> bool:
        """Whether the terminal is polled in ``cycle``: always, unless offline and silent."""
        a = self._availability[device_id]
        if a.online or a.last_failure is not FailureKind.NO_RESPONSE:
            return True
        return (cycle - a.offline_since_cycle) % self.settings.offline_poll_every == 0

    async def poll_cycle(self) -> list[PollResult]:
        """Run one cycle now and return what was published."""
        started = time.monotonic()
        cycle = self._cycle
        self._cycle += 1
        results: list[PollResult] = []
        skipped = failed = 0
        for term in self.terminals:
            if not self.due(term.device_id, cycle):
                skipped += 1
                continue
            result = self._account(term.device_id, cycle, await term.poll_status())
            failed += not result.snapshot.online
            results.append(result)
            await self._emit(result)
        elapsed = time.monotonic() - started
        s = self._stats
        s.cycles += 1
        s.last_cycle_s, s.max_cycle_s = elapsed, max(s.max_cycle_s, elapsed)
        s.last_polled, s.last_skipped, s.last_failed = len(results), skipped, failed
        return results

    def _account(self, device_id: str, cycle: int, snap: TerminalSnapshot) -> PollResult:
        a = self._availability[device_id]
        was_online = a.online
        if snap.online:
            a.online, a.consecutive_failures, a.last_failure, a.last_ok = True, 0, None, snap.timestamp
        else:
            a.consecutive_failures += 1
            a.last_failure = snap.failure
            if a.online and a.consecutive_failures >= self.settings.offline_after_failures:
                a.online, a.offline_since_cycle = False, cycle
        if was_online != a.online:
            log.info("%s %s", device_id, "back online" if a.online else f"offline: {snap.error}")
        return PollResult(device_id, cycle, snap, a.online, a.consecutive_failures, was_online != a.online)

    async def _emit(self, result: PollResult) -> None:
        try:
            outcome = self._publish(result)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("poll result subscriber failed for %s", result.device_id)

    # ------------------------------------------------------------------ background loop

    def start(self) -> None:
        """Poll in the background until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="line poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        if not self.terminals:
            return
        arbiter = self.terminals[0].arbiter
        while True:
            started = time.monotonic()
            if not arbiter.connected:
                await self.poll_cycle()  # fails fast: every terminal reports line_down
                await arbiter.wait_connected(self.settings.line_down_wait_s)
                continue
            await self.poll_cycle()
            rest = self.settings.interval_s - (time.monotonic() - started)
            await asyncio.sleep(max(rest, 0.0))  # always yield, even back to back
