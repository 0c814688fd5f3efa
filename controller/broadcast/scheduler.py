"""Calendar broadcasts: daily programs and routine system tests on five-field cron expressions.

Schedules come from the config file (``schedules:``) and from the store (created through the
API; :meth:`Scheduler.reload` picks up changes). Cron fields are read in the gateway's time zone
(``gateway.timezone``, Asia/Shanghai by default: China has no daylight saving, so every day has
every minute once).
Parsing is cronsim's (the parser healthchecks.io runs on); :func:`validate_cron` turns its terse
errors into messages that say which field is wrong.

At each due time the schedule's request is submitted to the engine like any other broadcast,
with an :class:`~controller.core.actors.Actor` ``schedule:<id>`` (via ``schedule``) in the audit trail.
Runs missed while the daemon was down (or the machine suspended) are **not** replayed: after a
start or a late wake-up the next run is the first one after *now* — a 07:00 morning program
played at 11:30 would confuse more than it informs, and a missed routine test runs next week.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from pydantic import ValidationError

from controller.broadcast.model import BroadcastRequest
from controller.broadcast.ports import BroadcastPort
from controller.config import Config
from controller.core.actors import Actor
from controller.core.lifecycle import cancel_and_wait
from controller.storage.journal import Store

log = logging.getLogger(__name__)

MAX_SLEEP_S = 60.0
"""Re-read the clock at least this often, so a clock step (NTP, RTC fix) is noticed."""
FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def validate_cron(expr: str, now: datetime | None = None) -> CronSim:
    """Parse a five-field cron expression; ValueError names the bad field in plain words."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r}: expected 5 fields ({', '.join(FIELDS)}), got {len(fields)}")
    start = now or datetime.now(UTC)  # any aware start will do to check the fields
    try:
        return CronSim(expr, start)
    except CronSimError as exc:
        raise ValueError(f"cron {expr!r}: {_explain(str(exc))}") from None


def _explain(message: str) -> str:
    """cronsim says 'Bad hour'; say what a technician editing YAML needs to know."""
    ranges = {"minute": "0-59", "hour": "0-23", "day-of-month": "1-31 (and existing in the month)",
              "month": "1-12", "day-of-week": "0-7 (0 and 7 are Sunday)"}
    for name, allowed in ranges.items():
        if name in message.lower():
            field = name.replace("-", " ")
            return f"the {field} field is not valid (allowed {allowed}, '*', lists, ranges, /steps)"
    return message


@dataclass
class _Entry:
    id: str
    cron: str
    request: BroadcastRequest
    source: str
    """``config`` or ``api``."""
    next_at: datetime | None = None


class Scheduler:
    """Fires due schedules into the engine; see the module doc for the rules."""

    def __init__(self, cfg: Config, store: Store, engine: BroadcastPort, *,
                 timezone: str | tzinfo | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        """``timezone``: the one the cron fields are read in (default: ``gateway.timezone``)."""
        self.cfg = cfg
        self.store = store
        self.engine = engine
        zone = cfg.gateway.timezone if timezone is None else timezone
        self.tz = ZoneInfo(zone) if isinstance(zone, str) else zone
        self._clock = clock or (lambda: datetime.now(UTC))
        self._entries: dict[str, _Entry] = {}
        self.problems: dict[str, str] = {}
        """Schedule id → why it is not active (bad cron or request); shown, never fatal."""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.fired: list[tuple[str, str]] = []
        """(schedule id, broadcast id) of every submission since start, oldest first."""

    def now(self) -> datetime:
        return self._clock().astimezone(self.tz)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.reload()
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def reload(self) -> None:
        """(Re)read config and store schedules; a schedule keeps its next time if its cron is unchanged."""
        now = self.now()
        found: dict[str, _Entry] = {}
        self.problems = {}
        sources = [(s.id, s.cron, s.request, s.enabled, "config") for s in self.cfg.schedules]
        sources += [(s["id"], s["cron"], s["request"], s["enabled"], "api")
                    for s in self.store.list_schedules()]
        for sid, cron, request, enabled, source in sources:
            if not enabled:
                continue
            try:
                next_at = next(validate_cron(cron, now))
                parsed = BroadcastRequest.model_validate(request)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError too
                self.problems[sid] = _problem(exc)
                log.error("schedule %s (%s) is not active: %s", sid, source, self.problems[sid])
                continue
            old = self._entries.get(sid)
            if old is not None and old.cron == cron:
                next_at = old.next_at or next_at
            found[sid] = _Entry(sid, cron, parsed, source, next_at)
        self._entries = found
        self._wake.set()

    def snapshot(self) -> list[dict[str, Any]]:
        """Active schedules with their next run (local time), then the inactive ones with why."""
        active = [{"id": e.id, "cron": e.cron, "source": e.source,
                   "next_at": e.next_at.isoformat() if e.next_at else None} for e in self._entries.values()]
        return active + [{"id": sid, "problem": why} for sid, why in self.problems.items()]

    # ------------------------------------------------------------------ firing

    async def fire_due(self) -> list[str]:
        """Submit every schedule whose time has come (once, however late); returns broadcast ids."""
        now = self.now()
        ids: list[str] = []
        for entry in list(self._entries.values()):
            if entry.next_at is None or entry.next_at > now:
                continue
            entry.next_at = next(CronSim(entry.cron, max(now, entry.next_at)))  # missed runs are skipped
            actor = Actor(name=f"schedule:{entry.id}", via="schedule")
            try:
                bid = await self.engine.submit(entry.request, actor)
            except ValueError as exc:  # e.g. its targets no longer match the config
                log.error("schedule %s could not submit its broadcast: %s", entry.id, exc)
                self.problems[entry.id] = f"last run refused: {exc}"
                continue
            log.info("schedule %s submitted broadcast %s", entry.id, bid)
            self.fired.append((entry.id, bid))
            ids.append(bid)
        return ids

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.fire_due()
            except Exception:  # a failing submission must not end the calendar
                log.exception("scheduler: firing failed")
            times = [e.next_at for e in self._entries.values() if e.next_at is not None]
            delay = MAX_SLEEP_S
            if times:
                delay = min(delay, max(0.0, (min(times) - self.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: 3.11's can lose a cancel
                    await self._wake.wait()


def _problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"request.{where}: {str(first['msg']).removeprefix('Value error, ')}"
    return str(exc)
