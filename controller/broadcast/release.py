"""Guaranteed release: every device a broadcast switched on goes back to its prior state.

Activation journals each device's prior state before touching it (``Store.save_activation``).
From the moment a broadcast lets go of a device until that device is back in its prior state, the
:class:`Releaser` owns it: it writes the prior state (unicast, exact per terminal) and clears the
journal rows only when the device acknowledged. A device that cannot be restored — its line is
down, it stopped answering — stays journalled and is retried, with a back-off from
``retry_min_s`` to ``retry_max_s``, at once when its line comes back or health polling hears it
again, across daemon restarts (the journal is read at start) and for as long as it takes. Only
another broadcast may take it meanwhile (:meth:`Releaser.claim`): its prior state then passes to
that broadcast, so it is still restored to what it was before the first one.

While a device waits, ``on_pending(device, reason)`` is called (the health monitor raises a
"not restored" fault: ``/devices``, the console and MQTT show it) and, once it is back,
``on_pending(device, None)``; each broadcast whose record held it gets a note either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.core.lifecycle import cancel_and_wait
from controller.devices.hardware import Hardware
from controller.storage.journal import Store
from drivers.errors import DriverError
from drivers.fm_transmitter import FmTransmitter
from drivers.line_arbiter import Priority
from drivers.link_state import LineDriver
from drivers.modbus_codec import PointError, write_plan
from drivers.profile import ModbusTerminalProfile

log = logging.getLogger(__name__)

RESTORED_POINTS = ("amp_power", "emergency_override", "volume", "audio_source")
"""What activation writes, so what release puts back (plus zones). Mute is never written: a local
mute pressed during the broadcast must survive it."""

POWER_AND_ZONES = ("amp_power", "emergency_override")
"""Restored first (with the zone relays): the horn falls silent before its settings are put back."""

PendingCallback = Callable[[str, str | None, tuple[str, ...]], None]
"""``(device_id, reason, broadcast_ids)`` while a device waits to be restored; ``reason`` None once
it is (or another broadcast took it)."""
NoteCallback = Callable[[str, str], None]
"""``(broadcast_id, text)``: a line for that broadcast's record."""


@dataclass(frozen=True)
class Held:
    """A device's journalled prior state and the broadcasts whose journal rows hold it."""

    prior: dict[str, Any] | None
    """None when missing or unreadable: the device is put into a safe state instead."""
    broadcast_ids: tuple[str, ...]


def zone_points(profile: ModbusTerminalProfile) -> list[str]:
    return [f"zone_{z}" for z in range(1, profile.zones + 1) if f"zone_{z}" in profile.points]


def known_points(profile: ModbusTerminalProfile, values: Mapping[str, object]) -> dict[str, object]:
    """Only the points this profile has (another vendor's terminal may lack an override coil)."""
    return {k: v for k, v in values.items() if k in profile.points}


def safe_values(profile: ModbusTerminalProfile) -> dict[str, object]:
    """Amplifier off, override off, every zone relay off: harmless whatever came before."""
    return known_points(profile, {"amp_power": False, "emergency_override": False,
                                  **dict.fromkeys(zone_points(profile), False)})


def restore_values(profile: ModbusTerminalProfile, prior: dict[str, Any] | None) -> dict[str, object] | None:
    """The writes that put a terminal back to ``prior``; None if ``prior`` is missing or unusable.

    A prior state journalled in two steps (coils before power-on, registers during the warm-up)
    may hold only the coils: then only they are put back, which is all that was touched.
    """
    points = prior.get("points") if isinstance(prior, dict) and prior.get("kind") == "terminal" else None
    if not isinstance(points, dict):
        return None
    values = {k: points[k] for k in (*RESTORED_POINTS, *zone_points(profile)) if k in points}
    try:
        write_plan(profile, values)
    except PointError:
        return None
    return values or None


def pending_by_device(store: Store) -> dict[str, Held]:
    """Every journalled activation, one entry per device holding its *earliest* prior state.

    The earliest row is the state before the first broadcast touched the device; later rows of a
    hand-over copy it.
    """
    held: dict[str, Held] = {}
    for row in store.pending_activations():  # oldest first
        dev, bid, prior = row["device_id"], row["broadcast_id"], row["prior_state"]
        if dev in held:
            held[dev] = Held(held[dev].prior, (*held[dev].broadcast_ids, bid))
        else:
            held[dev] = Held(prior if isinstance(prior, dict) else None, (bid,))
    return held


@dataclass
class _Waiting:
    """A device the releaser owns until it is restored."""

    held: Held
    since: float
    """Monotonic time the releaser took it."""
    handed_at: float = field(default_factory=time.time)
    attempts: int = 0
    due: float = 0.0
    reason: str = ""
    announced: bool = False
    """``on_pending`` was called (the first attempt failed)."""


class Releaser:
    """Owns every journalled device no broadcast holds, until it is back in its prior state."""

    def __init__(self, hardware: Hardware, store: Store, *, on_pending: PendingCallback | None = None,
                 on_note: NoteCallback | None = None, retry_min_s: float = 0.5, retry_max_s: float = 5.0,
                 priority: Priority = Priority.COMMAND) -> None:
        self.hardware = hardware
        self.store = store
        self.on_pending = on_pending
        self.on_note = on_note
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.priority = priority
        self._waiting: dict[str, _Waiting] = {}
        self._parked: set[str] = set()
        """Kept on for a pre-empting broadcast that has not claimed them yet."""
        self._claimed: set[str] = set()
        self._lines: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> dict[str, str]:
        """Take every device the journal says is still switched on (left by a crash) and restore it;
        returns what the first attempt did (device → ``restored``, ``safe`` or ``failed: …``)."""
        self._started = True
        held = {d: h for d, h in pending_by_device(self.store).items() if d not in self._claimed}
        if not held:
            return {}
        done = await self.hand_back(held)
        log.info("restored %d device(s) left active by an earlier run: %s", len(done),
                 ", ".join(f"{d} {w}" for d, w in done.items()))
        return done

    async def stop(self) -> None:
        """Stop retrying (devices not yet restored stay journalled for the next start)."""
        self._started = False
        await cancel_and_wait(*self._lines.values(), *self._inflight.values())
        self._lines.clear()
        self._inflight.clear()

    # ------------------------------------------------------------------ engine-facing

    def claim(self, devices: Collection[str]) -> dict[str, Held]:
        """A broadcast takes ``devices``: stop restoring them; returns the journalled prior state of
        those that are still on from an earlier broadcast (the new one inherits it)."""
        self._claimed |= set(devices)
        for dev in devices:
            waiting = self._waiting.pop(dev, None)
            self._parked.discard(dev)
            task = self._inflight.pop(dev, None)
            if task is not None:  # a queued write is dropped; one already on the wire completes first
                task.cancel()
            if waiting is not None and waiting.announced:
                self._settled(dev)
        journal = pending_by_device(self.store)
        return {d: journal[d] for d in devices if d in journal}

    def park(self, devices: Collection[str]) -> None:
        """A pre-empted broadcast keeps ``devices`` on, untouched, for the broadcast about to claim
        them (no amplifier off/on, no second warm-up); :meth:`unpark` restores what nobody claimed."""
        self._claimed -= set(devices)
        self._parked |= set(devices)

    async def hand_back(self, held: Mapping[str, Held]) -> dict[str, str]:
        """A broadcast lets go of ``held``: restore them now (lines in parallel); returns what the
        first attempt did. Failures are retried in the background until they succeed."""
        self._claimed -= set(held)
        now = asyncio.get_running_loop().time()
        for dev, h in held.items():
            self._waiting[dev] = _Waiting(h, now)
        results = await asyncio.gather(*(self._attempt_line(line, devs) for line, devs in
                                         self._by_line(list(held)).items()))
        self._drop_unknown(held)
        done: dict[str, str] = {}
        for part in results:
            done.update(part)
        for dev in held:
            if dev in self._waiting and dev not in self._inflight:
                self._ensure_line_task(dev)
        return done

    def hand_back_later(self, held: Mapping[str, Held]) -> None:
        """Like :meth:`hand_back`, but the first attempt runs in the background too (devices that
        were not answering: each attempt may cost a line timeout)."""
        self._claimed -= set(held)
        now = asyncio.get_running_loop().time()
        for dev, h in held.items():
            if dev in self.hardware.terminals or dev in self.hardware.transmitters:
                self._waiting[dev] = _Waiting(h, now)
                self._ensure_line_task(dev)
        self._drop_unknown(held)

    def unpark(self) -> None:
        """Restore the devices kept on for a pre-emption hand-over that nobody claimed."""
        parked, self._parked = self._parked, set()
        if not parked:
            return
        journal = pending_by_device(self.store)
        now = asyncio.get_running_loop().time()
        for dev in parked:
            if dev in journal:
                self._waiting[dev] = _Waiting(journal[dev], now)
                self._ensure_line_task(dev)

    async def settle(self, timeout_s: float) -> bool:
        """Wait until no device waits to be restored (True), or ``timeout_s`` (False)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._waiting:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def wake(self, device_id: str | None = None) -> None:
        """Retry now (a line came back, or health polling heard ``device_id`` again)."""
        if device_id is not None and device_id not in self._waiting:
            return
        for dev, w in self._waiting.items():
            if device_id is None or dev == device_id:
                w.due = 0.0
        lines = {self._line_of(device_id)} if device_id else set(self._wake)
        for line in lines:
            if line in self._wake:
                self._wake[line].set()

    def pending(self) -> dict[str, dict[str, Any]]:
        """Devices waiting to be restored: ``{since, attempts, reason, broadcast_ids}`` each."""
        return {d: {"since": w.handed_at, "attempts": w.attempts, "reason": w.reason,
                    "broadcast_ids": list(w.held.broadcast_ids)}
                for d, w in self._waiting.items()}

    # ------------------------------------------------------------------ restoring

    def _line_of(self, dev: str | None) -> str:
        if dev in self.hardware.terminals:
            return self.hardware.terminals[dev].arbiter.name
        return f"fm:{dev}"

    def _driver(self, dev: str) -> LineDriver | None:
        if dev in self.hardware.terminals:
            return self.hardware.terminals[dev].arbiter
        return self.hardware.transmitters.get(dev)

    def _by_line(self, devices: list[str]) -> dict[str, list[str]]:
        lines: dict[str, list[str]] = {}
        for dev in devices:
            if dev in self.hardware.terminals or dev in self.hardware.transmitters:
                lines.setdefault(self._line_of(dev), []).append(dev)
        return lines

    def _drop_unknown(self, held: Mapping[str, Held]) -> None:
        for dev in held:
            if dev not in self.hardware.terminals and dev not in self.hardware.transmitters:
                log.warning("journalled device %s is no longer configured; dropping its activation", dev)
                for bid in held[dev].broadcast_ids:
                    self.store.clear_activation(bid, dev)
                self._waiting.pop(dev, None)

    async def _attempt_line(self, line: str, devices: list[str]) -> dict[str, str]:
        """One attempt for each device of one line. They are queued on the line's arbiter together,
        so it sends every amplifier-off write first (each restore starts with its power coil), then
        the registers and zones — and health polls cannot slip in between."""

        async def one(dev: str) -> tuple[str, str] | None:
            if dev not in self._waiting:
                return None
            task = self._inflight.get(dev)  # the retry loop may be at it already: wait for that one
            if task is None:
                task = self._inflight[dev] = asyncio.create_task(self._restore(dev), name=f"restore {dev}")
            try:
                ok = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():  # claimed by a broadcast meanwhile: not ours any more
                    return dev, "claimed"
                raise
            finally:
                if self._inflight.get(dev) is task and task.done():
                    del self._inflight[dev]
            waiting = self._waiting.get(dev)
            return dev, "restored" if ok or waiting is None else f"failed: {waiting.reason}"

        return dict(r for r in await asyncio.gather(*(one(d) for d in devices)) if r is not None)

    async def _restore(self, dev: str) -> bool:
        """Write ``dev``'s prior (or safe) state once; on success clear its journal rows."""
        w = self._waiting[dev]
        w.attempts += 1
        try:
            what = await self._write_prior(dev, w.held.prior)
        except DriverError as exc:
            self._failed(dev, w, str(exc))
            return False
        except Exception as exc:  # a bug must not end the retries: log it and try again later
            log.exception("restoring %s failed", dev)
            self._failed(dev, w, f"internal error: {exc}")
            return False
        for bid in w.held.broadcast_ids:
            self.store.clear_activation(bid, dev)
        del self._waiting[dev]
        late = asyncio.get_running_loop().time() - w.since
        if w.announced:
            log.info("%s restored (%s) %.1f s after its broadcast let it go, attempt %d",
                     dev, what, late, w.attempts)
            for bid in w.held.broadcast_ids:
                self._note(bid, f"{dev} restored {late:.1f} s after the broadcast released it "
                                f"({w.attempts} attempts)")
            self._settled(dev)
        return True

    async def _write_prior(self, dev: str, prior: dict[str, Any] | None) -> str:
        term = self.hardware.terminals.get(dev)
        if term is not None:
            values = restore_values(term.profile, prior)
            writes = values or safe_values(term.profile)
            silence = {k: v for k, v in writes.items() if k in POWER_AND_ZONES or k.startswith("zone_")}
            await term.write_points(silence, self.priority)  # amplifier, override and zones first
            rest = {k: v for k, v in writes.items() if k not in silence}
            if rest:
                await term.write_points(rest, self.priority)
            return "prior state" if values else "safe state"
        fm: FmTransmitter = self.hardware.transmitters[dev]
        tx = prior.get("tx") if isinstance(prior, dict) and prior.get("kind") == "fm" else None
        await fm.set_tx(tx is True)
        return "prior state" if isinstance(tx, bool) else "safe state"

    def _failed(self, dev: str, w: _Waiting, reason: str) -> None:
        w.reason = reason
        backoff = min(self.retry_max_s, self.retry_min_s * 2 ** min(w.attempts - 1, 10))
        w.due = asyncio.get_running_loop().time() + backoff
        log.warning("cannot restore %s: %s (retrying in %.1f s; kept in the journal)", dev, reason, backoff)
        if not w.announced:
            w.announced = True
            for bid in w.held.broadcast_ids:
                self._note(bid, f"{dev} not restored when the broadcast ended: {reason}; "
                                "retrying until it is")
            if self.on_pending is not None:
                self.on_pending(dev, reason, w.held.broadcast_ids)

    def _settled(self, dev: str) -> None:
        """``dev`` is no longer waiting (restored or claimed): lift its 'not restored' state."""
        if self.on_pending is not None:
            self.on_pending(dev, None, ())

    def _note(self, bid: str, text: str) -> None:
        if self.on_note is not None:
            try:
                self.on_note(bid, text)
            except Exception:
                log.exception("cannot add a note to broadcast %s", bid)

    def _ensure_line_task(self, dev: str) -> None:
        line = self._line_of(dev)
        task = self._lines.get(line)
        if task is None or task.done():
            self._wake[line] = asyncio.Event()
            self._lines[line] = asyncio.create_task(self._retry_line(line), name=f"release {line}")
        else:
            self._wake[line].set()

    async def _retry_line(self, line: str) -> None:
        """Retry the devices of one line until none waits: at once when the line comes back."""
        wake = self._wake[line]
        loop = asyncio.get_running_loop()
        while True:
            devices = [d for d in self._waiting if self._line_of(d) == line]
            if not devices:
                return
            driver = self._driver(devices[0])
            if driver is not None and not driver.connected:
                for dev in devices:  # say so now: no attempt can be made until the line is back
                    w = self._waiting[dev]
                    if not w.announced:
                        w.attempts += 1
                        self._failed(dev, w, f"line {line} is down: {driver.down_reason}")
                await driver.wait_connected(self.retry_max_s * 12)  # woken the moment it is up
                if driver.connected:  # a broadcast may have claimed some meanwhile
                    for dev in devices:
                        if (w := self._waiting.get(dev)) is not None:
                            w.due = 0.0
                continue
            now = loop.time()
            due = [d for d in devices if self._waiting[d].due <= now]
            if due:
                await self._attempt_line(line, due)
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._waiting[d].due for d in devices) - now):
                    await wake.wait()
