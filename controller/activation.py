"""Switching terminals on for one broadcast, confirming they play, and putting them back.

Per line, in this order (lines run concurrently, each through its own arbiter). Within a line the
requests of one phase (all prior reads, one status round) are queued on the arbiter together: it
still puts one transaction at a time on the wire, but the health poller cannot slip a full-status
read in between two of ours — measured on 16 terminals at 9600 baud, that interleaving made
activation 1.6× slower (bench/trigger_to_air.py).

1. Read each terminal's prior state (power, override, mute, volume, source, zones) and journal it
   (``store.save_activation``) *before* touching it, so a restart after kill -9 can put it back.
   A terminal that does not answer is UNREACHABLE and is left alone.
2. Write: amplifier power (+ emergency override) first, so the warm-up starts as early as
   possible; then volume and source line-in; then the zone relays. Emergency forces volume 100
   and override (which bypasses local mute); otherwise the request's volume or the configured
   daily volume, and a local mute is respected (reported as "muted locally"). When every terminal
   of a serial line is targeted, answered, and gets the same values, each write group is one
   unit-id-0 frame (``write_all_on_line``) instead of one frame per terminal.
3. Supervise: read the status word until amp ready (bounded by ``ready_timeout_s``) and — once the
   engine says audio is on the line — until ``audio_present`` confirms sound at the output
   (SUCCEEDED). Amp fault / over-temperature / no sound within a window → FAILED with a reason;
   a terminal that stops answering → UNREACHABLE.

The FM transmitter (keyed only for whole-township requests, see controller/targets.py) gets RDS
PS/RT and carrier on; its outcome is the carrier's forward power read back.

Release restores every journalled device with unicast writes (exact per terminal) and clears its
journal rows; a device that cannot be restored keeps its row, so the next activation or restart
still knows its true prior state. A caller may ``keep`` devices (pre-emption hand-over): they stay
on and journalled, and the next activation inherits their prior state instead of reading the
"on" state back (no amplifier off/on cycle, no second warm-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.broadcasts import BroadcastClass, BroadcastRequest, TerminalOutcome
from controller.hardware import Hardware
from controller.store import Store
from controller.targets import Resolved
from drivers.errors import AtCommandError, DeviceExceptionError, DriverError
from drivers.fm_transmitter import FmTransmitter
from drivers.line_arbiter import LineArbiter, Priority
from drivers.modbus_codec import PointError, write_plan
from drivers.modbus_terminal import ModbusTerminal, write_all_on_line, zone_values
from drivers.profile import ModbusTerminalProfile

log = logging.getLogger(__name__)

PRIOR_POINTS = ("amp_power", "emergency_override", "mute", "volume", "audio_source")
"""Journalled before a terminal is touched (plus every zone relay)."""
RESTORED_POINTS = ("amp_power", "emergency_override", "volume", "audio_source")
"""What activation writes, so what release puts back (plus zones). Mute is never written: a local
mute pressed during the broadcast must survive it."""
STATUS_POINTS = ("amp_ready", "audio_present", "amp_fault", "over_temperature", "line_fault")
ROUND_PERIOD_S = 0.02
"""Shortest time between two status reads of one terminal: a fast (TCP) terminal is read every
20 ms, so the first ready amplifier starts the program promptly; on RS-485 a pass over the line
takes longer anyway."""
CONFIRM_WINDOW_S = 3.0
"""How long a ready terminal may show no sound at its output after audio started before FAILED."""


@dataclass(frozen=True)
class DeviceResult:
    """A device's verdict for one broadcast; ``reason`` says why it did not play."""

    outcome: TerminalOutcome
    reason: str = ""


@dataclass(frozen=True)
class Held:
    """A device's journalled prior state and the broadcasts whose journal rows hold it."""

    prior: dict[str, Any] | None
    """None when missing or unreadable: the device is put into a safe state instead."""
    broadcast_ids: tuple[str, ...]


Report = Callable[[str, DeviceResult], None]
"""Called once per device as soon as its outcome is known (the engine journals and publishes it)."""


@dataclass(frozen=True)
class ActivationSettings:
    """The values one broadcast puts on its terminals and transmitter."""

    emergency: bool
    volume: int
    priority: Priority
    ready_timeout_s: float
    rds_ps: str
    rds_rt: str

    @classmethod
    def for_request(cls, request: BroadcastRequest, *, daily_volume: int,
                    ready_timeout_s: float) -> ActivationSettings:
        emergency = request.broadcast_class is BroadcastClass.EMERGENCY
        volume = 100 if emergency else (request.volume if request.volume is not None else daily_volume)
        return cls(emergency=emergency, volume=volume,
                   priority=Priority.EMERGENCY if emergency else Priority.COMMAND,
                   ready_timeout_s=ready_timeout_s, rds_ps=rds_ps(request), rds_rt=rds_rt(request))


def rds_ps(request: BroadcastRequest) -> str:
    """RDS station name (≤ 8 printable ASCII characters) by class."""
    names = {BroadcastClass.EMERGENCY: "EMERG", BroadcastClass.DRILL: "DRILL"}
    return names.get(request.broadcast_class, "EBC")


def rds_rt(request: BroadcastRequest) -> str:
    """RDS radio text (≤ 64 printable ASCII): the title if it is ASCII, else a generic line.

    ebr-fm1 accepts ASCII only; a Chinese title is not transliterated (that needs a pinyin
    dictionary), so receivers show what kind of broadcast this is.
    """
    title = " ".join(request.title.split())
    if title and all(" " <= c <= "~" for c in title):
        return title[:64]
    return {BroadcastClass.EMERGENCY: "EMERGENCY BROADCAST",
            BroadcastClass.DRILL: "DRILL"}.get(request.broadcast_class, "ANNOUNCEMENT")


def lines_of(terminals: Iterable[ModbusTerminal]) -> dict[LineArbiter, list[ModbusTerminal]]:
    """Terminals grouped by the line (arbiter) they hang on, in the given order."""
    groups: dict[LineArbiter, list[ModbusTerminal]] = {}
    for term in terminals:
        groups.setdefault(term.arbiter, []).append(term)
    return groups


def _outcome_of(exc: DriverError) -> TerminalOutcome:
    """A refusal is an answer (FAILED); silence or a dead line is UNREACHABLE."""
    refused = isinstance(exc, DeviceExceptionError | AtCommandError)
    return TerminalOutcome.FAILED if refused else TerminalOutcome.UNREACHABLE


def _known(profile: ModbusTerminalProfile, values: Mapping[str, object]) -> dict[str, object]:
    """Only the points this profile has (another vendor's terminal may lack an override coil)."""
    return {k: v for k, v in values.items() if k in profile.points}


def _zone_points(profile: ModbusTerminalProfile) -> list[str]:
    return [f"zone_{z}" for z in range(1, profile.zones + 1) if f"zone_{z}" in profile.points]


def safe_values(profile: ModbusTerminalProfile) -> dict[str, object]:
    """Amplifier off, override off, every zone relay off: harmless whatever came before."""
    return _known(profile, {"amp_power": False, "emergency_override": False,
                            **dict.fromkeys(_zone_points(profile), False)})


def restore_values(profile: ModbusTerminalProfile, prior: dict[str, Any] | None) -> dict[str, object] | None:
    """The writes that put a terminal back to ``prior``; None if ``prior`` is missing or unusable."""
    points = prior.get("points") if isinstance(prior, dict) and prior.get("kind") == "terminal" else None
    if not isinstance(points, dict):
        return None
    values = {k: points[k] for k in (*RESTORED_POINTS, *_zone_points(profile)) if k in points}
    try:
        write_plan(profile, values)
    except PointError:
        return None
    return values or None


async def restore(hardware: Hardware, store: Store, held: Mapping[str, Held],
                  priority: Priority = Priority.COMMAND) -> dict[str, str]:
    """Put devices back to their prior (or safe) state and clear their journal rows.

    Lines are restored concurrently, devices on one line in turn, each with unicast writes. A
    device that cannot be written keeps its rows. Returns device id → what happened.
    """
    done: dict[str, str] = {}

    def cleared(dev: str, what: str) -> None:
        for bid in held[dev].broadcast_ids:
            store.clear_activation(bid, dev)
        done[dev] = what

    async def line(terms: list[ModbusTerminal]) -> None:
        for term in terms:
            values = restore_values(term.profile, held[term.device_id].prior)
            try:
                await term.write_points(values or safe_values(term.profile), priority)
            except DriverError as exc:
                log.warning("cannot restore %s: %s (kept in the journal)", term.device_id, exc)
                done[term.device_id] = f"failed: {exc}"
                continue
            cleared(term.device_id, "restored" if values else "safe")

    async def transmitter(dev: str, fm: FmTransmitter) -> None:
        prior = held[dev].prior
        tx = prior.get("tx") if isinstance(prior, dict) and prior.get("kind") == "fm" else None
        try:
            await fm.set_tx(tx is True)
        except DriverError as exc:
            log.warning("cannot restore %s: %s (kept in the journal)", dev, exc)
            done[dev] = f"failed: {exc}"
            return
        cleared(dev, "restored" if isinstance(tx, bool) else "safe")

    terminals = [hardware.terminals[d] for d in held if d in hardware.terminals]
    jobs = [line(terms) for terms in lines_of(terminals).values()]
    jobs += [transmitter(d, hardware.transmitters[d]) for d in held if d in hardware.transmitters]
    await asyncio.gather(*jobs)
    for dev in held:
        if dev not in hardware.terminals and dev not in hardware.transmitters:
            log.warning("journalled device %s is no longer configured; dropping its activation", dev)
            cleared(dev, "unknown device")
    return done


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


async def restore_pending(store: Store, hardware: Hardware) -> dict[str, str]:
    """After a crash (kill -9): put every device found journalled back to its prior or safe state."""
    held = pending_by_device(store)
    if not held:
        return {}
    done = await restore(hardware, store, held)
    log.info("restored %d device(s) left active by an earlier run: %s", len(done),
             ", ".join(f"{d} {w}" for d, w in done.items()))
    return done


class Activation:
    """One broadcast's hold on its devices: ``start`` → ``wait_ready`` → audio → ``release``."""

    def __init__(self, broadcast_id: str, resolved: Resolved, hardware: Hardware, store: Store,
                 settings: ActivationSettings, *, inherited: Mapping[str, Held] | None = None,
                 offline: Collection[str] = (), report: Report | None = None) -> None:
        self.broadcast_id = broadcast_id
        self.resolved = resolved
        self.hardware = hardware
        self.store = store
        self.settings = settings
        self.results: dict[str, DeviceResult] = {}
        self._inherited = dict(inherited or {})
        self._offline = frozenset(offline)
        """Known offline by health polling: not read before power-on (see :meth:`_read_prior`)."""
        self._report = report
        self._held: dict[str, dict[str, Any] | None] = {}
        self._muted: set[str] = set()
        self._ready = asyncio.Event()
        self._audio_on = asyncio.Event()
        self._audio_done = asyncio.Event()
        self._audio_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._terminals = [hardware.terminals[d] for d in resolved.terminals if d in hardware.terminals]

    # ------------------------------------------------------------------ engine-facing

    def start(self) -> None:
        """Begin activating every line and transmitter concurrently (returns at once)."""
        whole = {arb: len(terms) == sum(t.arbiter is arb for t in self.hardware.terminals.values())
                 for arb, terms in lines_of(self._terminals).items()}
        self._tasks = [asyncio.create_task(self._line(terms, whole[arb]), name=f"activate {arb.name}")
                       for arb, terms in lines_of(self._terminals).items()]
        self._tasks += [asyncio.create_task(self._transmitter(d, self.hardware.transmitters[d]),
                                            name=f"activate {d}")
                        for d in self.resolved.transmitters if d in self.hardware.transmitters]
        for dev in [*self.resolved.terminals, *self.resolved.transmitters]:
            if dev not in self.hardware.terminals and dev not in self.hardware.transmitters:
                self._resolve(dev, TerminalOutcome.UNREACHABLE, "no driver for this device")

    async def wait_ready(self) -> None:
        """Until the first terminal's amplifier is ready, or nothing can become ready any more.

        Program start policy: the first sound waits for the *first* ready terminal, not for all —
        slow lines catch up while the attention tone plays. With no terminal targeted (FM only)
        it waits for the transmitter.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.ready_timeout_s + 1.0):
                await self._ready.wait()

    @property
    def live(self) -> bool:
        """Some device may still carry the program (confirmed, or not yet judged)."""
        devices = [*self.resolved.terminals, *self.resolved.transmitters]
        return any(self.results.get(d, DeviceResult(TerminalOutcome.PENDING)).outcome
                   in (TerminalOutcome.PENDING, TerminalOutcome.SUCCEEDED) for d in devices)

    def audio_started(self) -> None:
        """The program's first sound is on the line-out: read-back may now confirm audio."""
        if not self._audio_on.is_set():
            self._audio_at = asyncio.get_running_loop().time()
            self._audio_on.set()

    def audio_ended(self) -> None:
        """The program finished: terminals not confirmed by now did not play it."""
        self._audio_done.set()

    async def wait_confirmed(self) -> dict[str, DeviceResult]:
        """Until every device is judged; returns the results."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return dict(self.results)

    async def release(self, keep: Collection[str] = ()) -> set[str]:
        """Stop supervising, restore every held device not in ``keep``; returns the kept ones.

        Kept devices stay on and journalled under this broadcast for the next activation to
        inherit (see :func:`pending_by_device`).
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        kept = {d for d in self._held if d in keep}
        back = {d: Held(p, (self.broadcast_id,)) for d, p in self._held.items() if d not in kept}
        self._held.clear()
        await restore(self.hardware, self.store, back, self.settings.priority)
        return kept

    # ------------------------------------------------------------------ bookkeeping

    def _journal(self, dev: str, prior: dict[str, Any] | None) -> None:
        """Journal ``prior`` under this broadcast before the device is touched.

        An inherited device's rows move to this broadcast (written first, then the old ones
        cleared, so a crash in between leaves two copies of the same prior state, never none).
        """
        self.store.save_activation(self.broadcast_id, dev, prior if prior is not None else {})
        for bid in self._inherited[dev].broadcast_ids if dev in self._inherited else ():
            if bid != self.broadcast_id:
                self.store.clear_activation(bid, dev)
        self._held[dev] = prior

    def _resolve(self, dev: str, outcome: TerminalOutcome, reason: str = "") -> None:
        if dev in self.results:
            return
        result = DeviceResult(outcome, reason)
        self.results[dev] = result
        if all(d in self.results for d in self.resolved.terminals):
            self._ready.set()  # no terminal left that could become ready (or FM-only: judged)
        if self._report is not None:
            self._report(dev, result)

    # ------------------------------------------------------------------ one line of terminals

    async def _line(self, terms: list[ModbusTerminal], whole_line: bool) -> None:
        answered = await asyncio.gather(*(self._read_prior(t) for t in terms))
        live = [t for t, ok in zip(terms, answered, strict=True) if ok]
        broadcast = whole_line and len(live) == len(terms)
        live = await self._write(live, {t: self._level_values(t) for t in live}, broadcast)
        zones = {t: zone_values(t.profile, self.resolved.terminals[t.device_id]) for t in live}
        live = await self._write(live, zones, broadcast)
        await self._supervise(live)

    async def _read_prior(self, term: ModbusTerminal) -> bool:
        """Journal the terminal's state before touching it; False if it did not answer.

        A terminal health polling already reports offline is not read: its timeouts would delay
        every terminal of its line before power-on. It is journalled without a prior state (so a
        release or restart puts it into the safe state), written with the others, and judged by
        the status read-back, which runs during the warm-up.
        """
        dev = term.device_id
        inherited = self._inherited.get(dev)
        if inherited is not None:  # still on from a pre-empted broadcast: its true prior is journalled
            self._journal(dev, inherited.prior)
            points = (inherited.prior or {}).get("points", {})
        elif dev in self._offline:
            self._journal(dev, None)
            return True
        else:
            names = [*(p for p in PRIOR_POINTS if p in term.profile.points), *_zone_points(term.profile)]
            try:
                points = await term.read_points(names, self.settings.priority)
            except DriverError as exc:
                self._resolve(dev, _outcome_of(exc), f"no answer before activation: {exc}")
                return False
            self._journal(dev, {"kind": "terminal", "points": points})
        if points.get("mute") is True:
            self._muted.add(dev)
        return True

    def _level_values(self, term: ModbusTerminal) -> dict[str, object]:
        """Power and override first (warm-up starts), then volume and source line-in."""
        s = self.settings
        return _known(term.profile, {"amp_power": True, "emergency_override": s.emergency,
                                     "volume": s.volume, "audio_source": "line_in"})

    async def _write(self, live: list[ModbusTerminal], values: Mapping[ModbusTerminal, Mapping[str, object]],
                     broadcast: bool) -> list[ModbusTerminal]:
        """One unit-id-0 frame per write group when allowed and equal for all; else one per terminal."""
        if not live:
            return live
        first = values[live[0]]
        failed: dict[str, DriverError] = {}
        if broadcast and all(values[t] == first for t in live):
            failed = (await write_all_on_line(live, first, self.settings.priority)).failed
        else:  # unicast; terminals known offline last, so their timeouts delay nobody
            for term in sorted(live, key=lambda t: t.device_id in self._offline):
                try:
                    await term.write_points(values[term], self.settings.priority)
                except DriverError as exc:
                    failed[term.device_id] = exc
        for dev, error in failed.items():
            self._resolve(dev, _outcome_of(error), f"activation write failed: {error}")
        return [t for t in live if t.device_id not in failed]

    async def _supervise(self, live: list[ModbusTerminal]) -> None:
        """Watch every terminal of the line until each is confirmed playing or judged failed."""
        powered = asyncio.get_running_loop().time()
        await asyncio.gather(*(self._watch(t, powered) for t in live))

    async def _watch(self, term: ModbusTerminal, powered: float) -> None:
        """Read one terminal's status until it is judged. The line's watchers keep one read each
        queued, so the arbiter serves them round-robin and each terminal is read again as soon as
        the others have had their turn: once the amplifiers are ready every terminal is seen
        within one pass over the line."""
        loop = asyncio.get_running_loop()
        dev = term.device_id
        names = [p for p in STATUS_POINTS if p in term.profile.points]
        ready_at: float | None = None
        while True:
            started = loop.time()
            try:
                status = await term.read_points(names, self.settings.priority)
            except DriverError as exc:
                why = "offline (health polling), no answer" if dev in self._offline else "stopped answering"
                self._resolve(dev, _outcome_of(exc), f"{why} during activation: {exc}")
                return
            now = loop.time()
            if ready_at is None and status.get("amp_ready"):
                ready_at = now
                self._ready.set()  # the program may start
            verdict = self._judge(dev, status, now - powered, ready_at)
            if verdict is not None:
                self._resolve(dev, verdict.outcome, verdict.reason)
                return
            await asyncio.sleep(max(0.0, started + ROUND_PERIOD_S - now))

    def _judge(self, dev: str, status: Mapping[str, object], since_power_s: float,
               ready_at: float | None) -> DeviceResult | None:
        """Verdict on one status read, or None to keep watching."""
        failed = TerminalOutcome.FAILED
        if status.get("amp_fault"):
            return DeviceResult(failed, "amplifier fault")
        if status.get("over_temperature"):
            return DeviceResult(failed, "amplifier over-temperature (shut down)")
        if ready_at is None:
            if since_power_s > self.settings.ready_timeout_s:
                return DeviceResult(failed, f"amplifier not ready after {since_power_s:.1f} s")
            if self._audio_done.is_set():
                return DeviceResult(failed, "amplifier not ready before the program ended")
            return None
        if not self._audio_on.is_set():
            return None
        if status.get("audio_present"):
            return DeviceResult(TerminalOutcome.SUCCEEDED)
        quiet_s = asyncio.get_running_loop().time() - max(ready_at, self._audio_at)
        if self._audio_done.is_set() or quiet_s > CONFIRM_WINDOW_S:
            if dev in self._muted and not self.settings.emergency:
                return DeviceResult(failed, "muted locally (only emergencies override a local mute)")
            if status.get("line_fault"):
                return DeviceResult(failed, "speaker line fault (open or short)")
            return DeviceResult(failed, "no audio at the output")
        return None

    # ------------------------------------------------------------------ FM transmitter

    async def _transmitter(self, dev: str, fm: FmTransmitter) -> None:
        """Journal the carrier state, set RDS, key the carrier and read its forward power back."""
        if dev in self._inherited:
            self._journal(dev, self._inherited[dev].prior)
        else:
            try:
                tx = await fm.get_tx()
            except DriverError as exc:
                self._resolve(dev, TerminalOutcome.UNREACHABLE, f"no answer before activation: {exc}")
                return
            self._journal(dev, {"kind": "fm", "tx": tx})
        try:
            await fm.set_rds_ps(self.settings.rds_ps)
            await fm.set_rds_rt(self.settings.rds_rt)
            await fm.set_tx(True)
            status = await fm.status()
        except DriverError as exc:
            self._resolve(dev, _outcome_of(exc), f"transmitter: {exc}")
            return
        if status.forward_w > 0:
            self._resolve(dev, TerminalOutcome.SUCCEEDED, f"on air, {status.forward_w:g} W")
        else:
            alarms = ", ".join(status.alarm.names) or "none"
            self._resolve(dev, TerminalOutcome.FAILED, f"carrier off after TX on (alarms: {alarms})")
