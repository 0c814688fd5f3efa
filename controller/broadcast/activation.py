"""One broadcast's hold on its devices: switch them on, keep them on while it is valid, read back
what they play, and hand them to the releaser at the end.

Each line (and each FM transmitter) gets one session task that runs from activation to release;
it puts one transaction at a time on its arbiter, so it decides the order itself:

1. **Join** every terminal that is not yet playing-ready, in this order: read the prior state of
   what the power-on write touches (power, override, mute, zone relays — one request on ebt-1) and
   journal it (``store.save_activation``) *before* touching the terminal — or take it from the
   health polls when they read it at most ``broadcast.prior_state_max_age_s`` ago and nothing has
   written the terminal since (``ModbusTerminal.known_settings``): then the first frame on the line
   is the power-on; power the amplifiers
   (warm-up starts); read the registers activation will change (volume, source) and journal them
   too, while the amplifiers warm up; then write volume and source line-in, then the zone relays.
   Emergency forces volume 100 and override (which bypasses a local mute); otherwise the
   request's or the configured daily volume, and a local mute is respected. When every terminal
   of a serial line is targeted and journalled, each write group is one unit-id-0 frame
   (``write_all_on_line``) instead of one per terminal — also when a whole line comes back
   after an outage.
2. **Read back** each joined terminal's status word: as fast as the line allows until it is ready
   and, during the program, until its output has been confirmed audible; then every
   :data:`READBACK_INTERVAL_S` to the end of the program, and once more after it — readings spread
   over the program, the evidence of controller/broadcast/evidence.py.
3. **Late join**: a terminal that does not answer (or whose line is down) is not given up while
   the broadcast is valid. A dead line's session waits for the line to come back and joins all
   its terminals then; a silent terminal is retried with a back-off (:data:`RETRY_MIN_S` …
   :data:`RETRY_MAX_S`) between the read-backs of the terminals that play, so it never starves
   them. A terminal found switched off (it rebooted) or silent while the program sounds is
   written again. The FM transmitter likewise: keyed again when it answers again.

The program starts (``wait_ready``) when every terminal that answered is ready — so every horn
hears the whole attention tone — bounded by ``ready_hold_s`` after the first one is ready and by
``ready_timeout_s`` overall; terminals that could not be reached do not hold it up (they join late).

Outcomes are judged from the readings (controller/broadcast/evidence.py): a success is reported as soon as
a complete repetition is confirmed, everything else at the end. Release hands every device to the
:class:`~controller.broadcast.release.Releaser`, which restores it and keeps retrying until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.broadcast.evidence import DeviceEvidence, ProgramTimeline, Reading, ReadingKind, Verdict
from controller.broadcast.model import BroadcastClass, BroadcastRequest
from controller.broadcast.release import Held, Releaser, known_points, safe_values, zone_points
from controller.broadcast.targets import Resolved
from controller.core.lifecycle import cancel_and_wait
from controller.devices.hardware import Hardware
from controller.storage.journal import Store
from drivers.errors import AtCommandError, DeviceExceptionError, DriverError, LineDownError, NoResponseError
from drivers.fm_transmitter import FmTransmitter
from drivers.line_arbiter import LineArbiter, Priority
from drivers.modbus_terminal import ModbusTerminal, write_all_on_line, zone_values

log = logging.getLogger(__name__)

POWER_PRIOR_POINTS = ("amp_power", "emergency_override", "mute")
"""Journalled (with every zone relay) before the power-on write touches a terminal."""
LEVEL_PRIOR_POINTS = ("volume", "audio_source")
"""Journalled during the warm-up, before volume and source are written."""
PRIOR_POINTS = (*POWER_PRIOR_POINTS, *LEVEL_PRIOR_POINTS)
STATUS_POINTS = ("amp_on", "amp_ready", "audio_present", "amp_fault", "over_temperature", "line_fault")
ROUND_PERIOD_S = 0.02
"""Shortest time between two status reads of one terminal (a fast TCP terminal is read every
20 ms until confirmed; on RS-485 a pass over the line takes longer anyway)."""
READBACK_INTERVAL_S = 1.0
"""A terminal confirmed audible is read again after this long while the program plays: enough
readings to judge every repetition, line time left for health polls and late joiners."""
FM_READ_INTERVAL_S = 2.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
"""Back-off between attempts to reach a terminal that does not answer."""
REWRITE_INTERVAL_S = 5.0
"""Shortest time between two re-writes of a terminal found silent while the program sounded."""
FINAL_PASS_S = 5.0
"""How long the read after the program's end is tried — also across a line outage that began just
before the end (as long as a gap a streak may bridge: controller/broadcast/evidence.py MAX_GAP_S) — before
the session gives up on it."""

Report = Callable[[str, Verdict], None]
"""Called with a device's verdict as soon as it is known (a success during the program; the
rest, and the final figures of the successes, at the end)."""


@dataclass(frozen=True)
class ActivationSettings:
    """The values one broadcast puts on its terminals and transmitter."""

    emergency: bool
    volume: int
    priority: Priority
    ready_timeout_s: float
    rds_ps: str
    rds_rt: str
    ready_hold_s: float = 2.0
    prior_state_max_age_s: float = 0.0
    """Journal the prior state from the health polls' settings when they are at most this old
    (0: always read it from the terminal first)."""

    @classmethod
    def for_request(cls, request: BroadcastRequest, *, daily_volume: int, ready_timeout_s: float,
                    ready_hold_s: float = 2.0, prior_state_max_age_s: float = 0.0) -> ActivationSettings:
        emergency = request.broadcast_class is BroadcastClass.EMERGENCY
        volume = 100 if emergency else (request.volume if request.volume is not None else daily_volume)
        return cls(emergency=emergency, volume=volume,
                   priority=Priority.EMERGENCY if emergency else Priority.COMMAND,
                   ready_timeout_s=ready_timeout_s, rds_ps=rds_ps(request), rds_rt=rds_rt(request),
                   ready_hold_s=ready_hold_s, prior_state_max_age_s=prior_state_max_age_s)


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


def _backoff(failures: int) -> float:
    return min(RETRY_MAX_S, RETRY_MIN_S * 2 ** max(0, failures - 1))


def _answered(exc: DriverError) -> bool:
    """A refusal is an answer; silence or a dead line is not."""
    return isinstance(exc, DeviceExceptionError | AtCommandError)


def _garbled(exc: DriverError) -> bool:
    """Replies came back, but damaged (CRC errors): the terminal is there, the wire is noisy."""
    return isinstance(exc, NoResponseError) and exc.garbled > 0


@dataclass(eq=False)
class _Tracked:
    """One device's part in this broadcast."""

    device_id: str
    evidence: DeviceEvidence
    journalled: bool = False
    """Its prior state (at least what the power-on write touches) is in the journal."""
    levels_known: bool = False
    """The prior volume and source are journalled too (or need not be: inherited, unknown)."""
    configured: bool = False
    """Every write of this broadcast was acknowledged (or sent in a unit-id-0 frame) since it was
    last found switched off."""
    in_play: bool = False
    """Answered since activation began and not given up on: it holds the program's start."""
    ready: bool = False
    """The last reading found it able to play."""
    heard: bool = False
    """An audio reading during the program."""
    hard_fault: bool = False
    """Amplifier fault, over-temperature, or muted locally (not an emergency): it will not become
    able to play by waiting, so the program does not wait for it."""
    muted: bool = False
    failures: int = 0
    last_read: float = -math.inf
    next_try: float = 0.0
    last_rewrite: float = -math.inf
    final_read: bool = False
    """Read after the program ended (or gave up trying)."""
    reported: Verdict | None = None


class Activation:
    """One broadcast's hold on its devices: ``start`` → ``wait_ready`` → program → ``finish`` →
    ``release``."""

    def __init__(self, broadcast_id: str, resolved: Resolved, hardware: Hardware, store: Store,
                 settings: ActivationSettings, releaser: Releaser, *,
                 inherited: Mapping[str, Held] | None = None, offline: Collection[str] = (),
                 timeline: ProgramTimeline | None = None, report: Report | None = None) -> None:
        self.broadcast_id = broadcast_id
        self.resolved = resolved
        self.hardware = hardware
        self.store = store
        self.settings = settings
        self.releaser = releaser
        self.timeline = timeline or ProgramTimeline()
        """When the program sounds and where its repetitions lie (fed by the engine)."""
        self._inherited = dict(inherited or {})
        self._offline = frozenset(offline)
        """Known offline by health polling: journalled without reading their prior state."""
        self._report = report
        self._held: dict[str, dict[str, Any] | None] = {}
        self._tracked = {d: _Tracked(d, DeviceEvidence(d)) for d in resolved.device_ids}
        self._terminals = [hardware.terminals[d] for d in resolved.terminals if d in hardware.terminals]
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        """Set whenever a device's readiness may have changed (what ``wait_ready`` waits for)."""
        self._phase = asyncio.Event()
        """Set (then replaced) when the program starts or ends: the sessions change their pace."""
        self._first_pass_pending = {arb.name for arb in lines_of(self._terminals)} | {
            d for d in resolved.transmitters if d in hardware.transmitters}
        self._ended = False
        self._stopped = ""
        self._started_at = 0.0

    # ------------------------------------------------------------------ engine-facing

    def start(self) -> None:
        """Begin every line's and transmitter's session (returns at once)."""
        self._started_at = asyncio.get_running_loop().time()
        all_on_line = {arb: len(terms) == sum(t.arbiter is arb for t in self.hardware.terminals.values())
                       for arb, terms in lines_of(self._terminals).items()}
        self._tasks = [asyncio.create_task(_LineSession(self, arb, terms, all_on_line[arb]).run(),
                                           name=f"activate {arb.name}")
                       for arb, terms in lines_of(self._terminals).items()]
        self._tasks += [asyncio.create_task(self._transmitter(d, self.hardware.transmitters[d]),
                                            name=f"activate {d}")
                        for d in self.resolved.transmitters if d in self.hardware.transmitters]
        for dev in self.resolved.device_ids:
            if dev not in self.hardware.terminals and dev not in self.hardware.transmitters:
                self._tracked[dev].evidence.add(_none(self._started_at, "no driver for this device"))

    async def wait_ready(self) -> None:
        """Until every device that answered is ready to play (so every horn hears the whole attention
        tone), ``ready_hold_s`` after the first was, or ``ready_timeout_s`` after activation began.
        Devices not reached do not hold the program up: they join late."""
        loop = asyncio.get_running_loop()
        s = self.settings
        deadline = self._started_at + s.ready_timeout_s
        first_ready: float | None = None
        horns = [self._tracked[d] for d in self.resolved.terminals] or list(self._tracked.values())
        while True:
            now = loop.time()
            tracked = list(self._tracked.values())
            if first_ready is None and any(t.ready for t in horns):  # a keyed FM carrier is not a horn
                first_ready = now
            warming = [t for t in tracked if t.in_play and not t.ready and not t.hard_fault]
            if not warming and not self._first_pass_pending:
                return
            limit = deadline if first_ready is None else min(deadline, first_ready + s.ready_hold_s)
            if now >= limit:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit - now):
                    await self._changed.wait()

    def program_started(self, at: float) -> None:
        """The program's first chunk goes to the line-out now (``at``, monotonic)."""
        self.timeline.begin(at)
        self._next_phase()

    def program_ended(self, stopped: str = "") -> None:
        """The program is over: completed (``stopped`` empty) or stopped early for ``stopped``."""
        played = self.timeline.played_until
        if played is not None:  # over once its last sample has been heard, not before
            self.timeline.end(max(asyncio.get_running_loop().time(), played) if not stopped
                              else asyncio.get_running_loop().time())
        self._ended = True
        self._stopped = stopped
        self._next_phase()

    async def finish(self, *, final_pass: bool = True, report: bool = True) -> dict[str, Verdict]:
        """Read every device once more after the program (unless stopped early, ``final_pass``
        False), stop the sessions and return every device's final verdict — reported, unless
        ``report`` is False (a broadcast that will replay: its outcomes are not final)."""
        if not self._ended:
            self.program_ended("stopped")
        if final_pass:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_PASS_S + 1.0):
                    await asyncio.gather(*(asyncio.shield(t) for t in self._tasks), return_exceptions=True)
        await self._stop_sessions()
        verdicts: dict[str, Verdict] = {}
        for dev, tracked in self._tracked.items():
            verdict = tracked.evidence.verdict(self.timeline, final=True, stopped=self._stopped)
            assert verdict is not None
            verdicts[dev] = verdict
            if report and tracked.reported != verdict:
                tracked.reported = verdict
                if self._report is not None:
                    self._report(dev, verdict)
        return verdicts

    async def release(self, keep: Collection[str] = ()) -> set[str]:
        """Hand every held device to the releaser (restored now, retried until it is back);
        ``keep`` stays on, parked for the broadcast about to claim it. Returns the kept ones."""
        await self._stop_sessions()
        kept = {d for d in self._held if d in keep}
        back = {d: Held(p, (self.broadcast_id,)) for d, p in self._held.items() if d not in kept}
        self._held.clear()
        self.releaser.park(kept)
        # those that were not answering are restored in the background: their timeouts must not
        # hold up whatever comes next (a cancel's answer, the next broadcast)
        silent = {d: h for d, h in back.items() if not self._tracked[d].in_play}
        self.releaser.hand_back_later(silent)
        await self.releaser.hand_back({d: h for d, h in back.items() if d not in silent})
        return kept

    # ------------------------------------------------------------------ shared with the sessions

    def _poke(self) -> None:
        self._changed.set()

    def _next_phase(self) -> None:
        phase, self._phase = self._phase, asyncio.Event()
        phase.set()
        self._poke()

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (forever: ``inf``), but wake when the program starts or ends."""
        phase = self._phase
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if math.isinf(seconds) else max(0.0, seconds)):
                await phase.wait()

    async def _stop_sessions(self) -> None:
        await cancel_and_wait(*self._tasks)

    def _journal(self, dev: str, prior: dict[str, Any] | None) -> None:
        """Journal ``prior`` under this broadcast before the device is touched (or updated with more
        of it). An inherited device's rows move to this broadcast: written first, then the old ones
        cleared, so a crash in between leaves two copies of the same prior state, never none."""
        self.store.save_activation(self.broadcast_id, dev, prior if prior is not None else {})
        for bid in self._inherited[dev].broadcast_ids if dev in self._inherited else ():
            if bid != self.broadcast_id:
                self.store.clear_activation(bid, dev)
        self._held[dev] = prior

    def _reading(self, tracked: _Tracked, reading: Reading) -> None:
        """Record a reading; report the device's success as soon as the evidence proves it."""
        tracked.evidence.add(reading)
        if reading.kind is not ReadingKind.NONE:
            tracked.in_play = True
        tracked.ready = reading.good
        if reading.good and self.timeline.started:
            tracked.heard = tracked.heard or reading.kind is ReadingKind.AUDIO
        if tracked.reported is None and self.timeline.started:
            verdict = tracked.evidence.verdict(self.timeline, final=False)
            if verdict is not None:
                tracked.reported = verdict
                if self._report is not None:
                    self._report(tracked.device_id, verdict)
        self._poke()

    def _lost(self, tracked: _Tracked, reading: Reading) -> None:
        """No answer: it no longer holds the program's start; retried with a back-off."""
        tracked.failures += 1
        tracked.in_play = False
        tracked.evidence.add(reading)
        tracked.ready = False
        self._poke()

    # ------------------------------------------------------------------ FM transmitter

    async def _transmitter(self, dev: str, fm: FmTransmitter) -> None:
        """Journal the carrier state, set RDS, key the carrier; read its forward power back every
        few seconds; key it again when it comes back after an outage."""
        tracked = self._tracked[dev]
        loop = asyncio.get_running_loop()
        keyed = False
        try:
            while True:
                if self._ended and (tracked.final_read or not self.timeline.started):
                    return
                ended_at = self.timeline.ended_at
                if ended_at is not None and loop.time() < ended_at:
                    await asyncio.sleep(ended_at - loop.time())  # the last read comes after the last sound
                if not fm.connected:
                    self._first_pass_pending.discard(dev)
                    self._lost(tracked, _none(loop.time(), f"transmitter line down: {fm.down_reason}"))
                    keyed = False
                    await self._until_connected(fm)
                    continue
                sent = loop.time()
                try:
                    if not keyed:
                        await self._key(dev, fm, tracked)
                        keyed = True
                    status = await fm.status()
                except DriverError as exc:
                    now = loop.time()
                    reading = Reading(sent, now, ReadingKind.BAD if _answered(exc) else ReadingKind.NONE,
                                      f"transmitter: {exc}")
                    if reading.kind is ReadingKind.BAD:
                        self._reading(tracked, reading)
                        tracked.failures += 1
                    else:
                        self._lost(tracked, reading)
                    keyed = False
                    self._first_pass_pending.discard(dev)
                    await self._sleep(_backoff(tracked.failures))
                    continue
                now = loop.time()
                if status.forward_w > 0:
                    on_air = f"on air, {status.forward_w:g} W"
                    self._reading(tracked, Reading(sent, now, ReadingKind.AUDIO, on_air))
                    tracked.failures = 0
                else:
                    alarms = ", ".join(status.alarm.names) or "none"
                    self._reading(tracked, Reading(sent, now, ReadingKind.BAD,
                                                   f"carrier off after TX on (alarms: {alarms})"))
                    keyed = False
                    tracked.failures += 1
                self._first_pass_pending.discard(dev)
                if self.timeline.ended_at is not None and sent >= self.timeline.ended_at:
                    tracked.final_read = True
                    return
                await self._sleep(FM_READ_INTERVAL_S if tracked.failures == 0 else _backoff(tracked.failures))
        finally:
            self._first_pass_pending.discard(dev)

    async def _key(self, dev: str, fm: FmTransmitter, tracked: _Tracked) -> None:
        if not tracked.journalled:
            if dev in self._inherited:
                self._journal(dev, self._inherited[dev].prior)
            else:
                self._journal(dev, {"kind": "fm", "tx": await fm.get_tx()})
            tracked.journalled = True
        await fm.set_rds_ps(self.settings.rds_ps)
        await fm.set_rds_rt(self.settings.rds_rt)
        await fm.set_tx(True)

    async def _until_connected(self, driver: LineArbiter | FmTransmitter) -> None:
        """Until the line is up again, or the program is over (then a last look is pointless)."""
        while not driver.connected and not self._ended:
            await driver.wait_connected(1.0)


class _LineSession:
    """The terminals of one broadcast on one line: join, read back, join late (see module doc)."""

    def __init__(self, act: Activation, arbiter: LineArbiter, terms: list[ModbusTerminal],
                 all_on_line: bool) -> None:
        self.act = act
        self.arbiter = arbiter
        self.terms = terms
        self.all_on_line = all_on_line
        """Every terminal on this line is targeted: unit-id-0 frames may reach them all."""
        self.tracked = {t.device_id: act._tracked[t.device_id] for t in terms}
        self.priority = act.settings.priority
        self._status_points = {t.device_id: [p for p in STATUS_POINTS if p in t.profile.points]
                               for t in terms}
        self._down = False
        """The line's outage has been recorded (once per outage)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.act._ended:
                    if not self.act.timeline.started:
                        return
                    for t in self.tracked.values():
                        t.final_read = t.final_read or not t.configured  # nothing to read back
                    if all(t.final_read for t in self.tracked.values()):
                        return
                if not self.arbiter.connected:
                    now = loop.time()
                    if not self._down:
                        self._line_down(now)
                    if not self.act._ended:
                        await self.act._until_connected(self.arbiter)
                        continue
                    left = (self.act.timeline.ended_at or now) + FINAL_PASS_S - now
                    if left <= 0:  # the last reads are not to be had
                        for t in self.tracked.values():
                            t.final_read = True
                        return
                    await self.arbiter.wait_connected(left)
                    continue
                self._down = False
                try:
                    await self._step(loop.time())
                except LineDownError:
                    continue  # the line went down under us: the top of the loop handles it
                except Exception:  # a bug must not end this broadcast's hold on the line
                    log.exception("activation of line %s: unexpected error", self.arbiter.name)
                    await asyncio.sleep(RETRY_MIN_S)
        finally:
            self.act._first_pass_pending.discard(self.arbiter.name)
            self.act._poke()

    async def _step(self, now: float) -> None:
        """One decision: join whoever is due, else read the terminal most due, else wait."""
        joiners = [t for t in self.terms if self._may_join(self.tracked[t.device_id], now)]
        if joiners:
            await self._join(joiners)
        else:
            term, due = self._next_read(now)
            if term is not None and due <= now:
                await self._read(term)
            else:
                if self.arbiter.name in self.act._first_pass_pending:
                    self.act._first_pass_pending.discard(self.arbiter.name)
                    self.act._poke()
                await self.act._sleep(due - now)
                return
        if self.arbiter.name in self.act._first_pass_pending and all(
                t.configured or t.next_try > now for t in self.tracked.values()):
            self.act._first_pass_pending.discard(self.arbiter.name)  # everyone reachable was joined
            self.act._poke()

    # ------------------------------------------------------------------ scheduling

    def _may_join(self, t: _Tracked, now: float) -> bool:
        """Due to be joined. A retry of one that has not been answering waits while others on the
        line warm up before the program: their start must not wait for its timeouts."""
        if t.configured or t.next_try > now or self.act._ended:
            return False
        if t.failures and not self.act.timeline.started:
            return not any(x.configured and x.in_play and not x.ready and not x.hard_fault
                           for x in self.tracked.values())
        return True

    def _next_read(self, now: float) -> tuple[ModbusTerminal | None, float]:
        """The terminal to read next and when (the earliest due; ``math.inf`` when none)."""
        best: tuple[float, float, ModbusTerminal] | None = None
        for term in self.terms:
            t = self.tracked[term.device_id]
            due = self._due(t, now)
            if due is None:
                continue
            key = (due, t.last_read, term)
            if best is None or key[:2] < best[:2]:
                best = key
        if best is None:
            retry = min((t.next_try for t in self.tracked.values() if not t.configured), default=math.inf)
            return None, retry
        retry = min((t.next_try for t in self.tracked.values() if not t.configured), default=math.inf)
        return (best[2], best[0]) if best[0] <= retry else (None, retry)

    def _due(self, t: _Tracked, now: float) -> float | None:
        """When ``t`` should be read next (None: not now — not joined, or done)."""
        if not t.configured:
            return None
        if self.act._ended:
            if t.final_read or not self.act.timeline.started:
                return None
            ended_at = self.act.timeline.ended_at or now
            if now - ended_at > FINAL_PASS_S:
                t.final_read = True  # gave up: the verdict uses what was read before
                return None
            return max(t.next_try, t.last_read + ROUND_PERIOD_S, ended_at)  # after the last sound
        if t.failures:
            return t.next_try
        if self.act.timeline.started and t.heard:
            return t.last_read + READBACK_INTERVAL_S
        return t.last_read + ROUND_PERIOD_S

    def _line_down(self, now: float) -> None:
        """Everyone on the line is out of reach until it is back; the first pass is over."""
        self._down = True
        reason = f"line {self.arbiter.name} is down: {self.arbiter.down_reason}"
        for t in self.tracked.values():
            self.act._lost(t, _none(now, reason))
            t.next_try = 0.0  # join (or read) the moment it is back
        self.act._first_pass_pending.discard(self.arbiter.name)

    # ------------------------------------------------------------------ reading back

    async def _read(self, term: ModbusTerminal) -> None:
        loop = asyncio.get_running_loop()
        t = self.tracked[term.device_id]
        sent = loop.time()
        try:
            status = await term.read_points(self._status_points[term.device_id], self.priority,
                                            retries=0 if t.failures else None)
        except LineDownError:
            return  # the loop sees the line down
        except DriverError as exc:
            now = loop.time()
            t.last_read = now
            if _answered(exc):
                self.act._reading(t, Reading(sent, now, ReadingKind.BAD, f"refused the status read: {exc}"))
            elif _garbled(exc):  # alive behind a noisy wire: no evidence either way, read again at once
                t.evidence.add(_none(now, f"garbled replies: {exc}", sent))
                t.next_try = now
                return
            else:
                self.act._lost(t, _none(now, f"stopped answering: {exc}", sent))
            t.next_try = now + _backoff(t.failures)
            if self.act._ended and now - (self.act.timeline.ended_at or now) > FINAL_PASS_S:
                t.final_read = True
            return
        now = loop.time()
        t.last_read = now
        t.failures = 0
        kind, reason = self._classify(t, status, sent, now)
        t.hard_fault = bool(status.get("amp_fault") or status.get("over_temperature")
                            or (t.muted and not self.act.settings.emergency))  # waiting will not help
        ended_at = self.act.timeline.ended_at
        if ended_at is not None and sent >= ended_at:
            t.final_read = True  # sampled after the last sound: closes its streak
        self.act._reading(t, Reading(sent, now, kind, reason))
        if status.get("amp_on") is False and not t.hard_fault and not self.act._ended:
            t.configured = False  # rebooted, or switched off by someone: write it again now
            t.next_try = now
        elif (kind is ReadingKind.BAD and reason.startswith("no audio") and not self.act._ended
              and now - t.last_rewrite >= REWRITE_INTERVAL_S):
            t.last_rewrite = now  # source or zones changed locally? assert ours once more
            t.configured = False
            t.next_try = now

    def _classify(self, t: _Tracked, status: Mapping[str, object], sent: float,
                  received: float) -> tuple[ReadingKind, str]:
        """What one status read shows (see controller/broadcast/evidence.py for what follows from it)."""
        if status.get("amp_fault"):
            return ReadingKind.BAD, "amplifier fault"
        if status.get("over_temperature"):
            return ReadingKind.BAD, "amplifier over-temperature (shut down)"
        if not status.get("amp_ready"):
            return ReadingKind.BAD, "amplifier not ready"
        if t.muted and not self.act.settings.emergency:  # not able to play, whatever the line carries
            return ReadingKind.BAD, "muted locally (only emergencies override a local mute)"
        if status.get("audio_present"):
            return ReadingKind.AUDIO, ""
        if self.act.timeline.sounding(sent, received):
            if status.get("line_fault"):
                return ReadingKind.BAD, "no audio at the output: speaker line fault (open or short)"
            return ReadingKind.BAD, "no audio at the output"
        return ReadingKind.READY, ""

    # ------------------------------------------------------------------ joining

    async def _join(self, joiners: list[ModbusTerminal]) -> None:
        """Journal, power, journal the levels, write levels and zones: the whole line in lockstep
        with unit-id-0 frames when it may have them, else each terminal on its own (concurrently
        through the arbiter, so one that does not answer delays nobody)."""
        frames = (self.all_on_line and len(joiners) > 1 and self.arbiter.is_serial
                  and all(t.profile.broadcast_writes and t.profile == joiners[0].profile for t in self.terms))
        if frames:
            await self._join_with_frames(joiners)
        else:
            await asyncio.gather(*(self._join_one(t) for t in joiners))

    async def _join_one(self, term: ModbusTerminal) -> None:
        t = self.tracked[term.device_id]
        s = self.act.settings
        if not t.journalled and not await self._journal_power_prior(term, retries=None):
            return
        steps: list[Mapping[str, object]] = [{"amp_power": True, "emergency_override": s.emergency}]
        if await self._write_one(term, steps[0]) and await self._journal_level_prior(term):
            zones = zone_values(term.profile, self.act.resolved.terminals[term.device_id])
            if await self._write_one(term, {"volume": s.volume, "audio_source": "line_in"}) \
                    and await self._write_one(term, zones):
                self._configured(t)

    async def _join_with_frames(self, joiners: list[ModbusTerminal]) -> None:
        """The whole line at once. A terminal that does not answer its first prior-state read is
        journalled as *unknown* (restored to the safe state: amplifier, override and zones off),
        so one silent terminal does not hold up the power-on of every horn on the line."""
        s = self.act.settings
        unread = [j for j in joiners if not self.tracked[j.device_id].journalled]
        await asyncio.gather(*(self._journal_power_prior(j, retries=0) for j in unread))
        for term in self.terms:  # every one of them will execute the frames: all journalled first
            t = self.tracked[term.device_id]
            if not t.journalled:
                self.act._journal(term.device_id, None)
                t.journalled = True
        await self._frame(joiners, {"amp_power": True, "emergency_override": s.emergency})
        await asyncio.gather(*(self._journal_level_prior(j) for j in joiners))
        await self._frame(joiners, {"volume": s.volume, "audio_source": "line_in"})
        zones = {tuple(self.act.resolved.terminals[j.device_id]) for j in joiners}
        if len(zones) == 1:
            await self._frame(joiners, zone_values(joiners[0].profile, zones.pop()))
        else:  # zones differ per terminal: one write each
            await asyncio.gather(*(self._write_one(j, zone_values(
                j.profile, self.act.resolved.terminals[j.device_id])) for j in joiners))
        for term in joiners:
            self._configured(self.tracked[term.device_id])

    def _configured(self, t: _Tracked) -> None:
        t.configured = True
        t.next_try = asyncio.get_running_loop().time()
        if t.in_play:  # answered: read it at full pace (one that never did keeps its back-off)
            t.failures = 0

    async def _journal_power_prior(self, term: ModbusTerminal, *, retries: int | None) -> bool:
        """Journal what the power-on write changes before it is sent; False if it did not answer.

        A terminal health polling has offline is not read first (its timeouts would delay the
        rest): on a line about to get unit-id-0 frames it is journalled as unknown, else retried later.
        """
        loop = asyncio.get_running_loop()
        t = self.tracked[term.device_id]
        dev = term.device_id
        inherited = self.act._inherited.get(dev)
        if inherited is not None:  # still on from a pre-empted broadcast: its true prior is journalled
            self.act._journal(dev, inherited.prior)
            t.journalled = t.levels_known = True
            t.in_play = True  # it was playing a moment ago: the program waits for its read-back
            t.muted = (inherited.prior or {}).get("points", {}).get("mute") is True
            return True
        if dev in self.act._offline and not t.evidence.readings:
            now = loop.time()
            self.act._lost(t, _none(now, "offline according to health polling"))
            t.next_try = now + RETRY_MIN_S
            return False
        names = [*(p for p in POWER_PRIOR_POINTS if p in term.profile.points), *zone_points(term.profile)]
        polled = term.known_settings(self.act.settings.prior_state_max_age_s) \
            if self.act.settings.prior_state_max_age_s > 0 else None
        if polled is not None and all(n in polled for n in names):  # no transaction before power-on
            levels = [p for p in LEVEL_PRIOR_POINTS if p in term.profile.points]
            known = [*names, *(p for p in levels if p in polled)]
            self.act._journal(dev, {"kind": "terminal", "points": {n: polled[n] for n in known}})
            t.journalled = t.in_play = True
            t.levels_known = all(p in polled for p in levels)
            t.muted = polled.get("mute") is True
            return True
        sent = loop.time()
        try:
            try:
                points = await term.read_points(names, self.priority, retries=0 if t.failures else retries)
            except NoResponseError as exc:
                if not _garbled(exc):
                    raise
                points = await term.read_points(names, self.priority)  # there, behind a noisy wire
        except LineDownError:
            raise
        except DriverError as exc:
            self._failed(t, exc, sent, "before activation" if not t.evidence.readings else "on retry")
            return False
        t.in_play = True
        self.act._journal(dev, {"kind": "terminal", "points": points})
        t.journalled = True
        t.muted = points.get("mute") is True
        return True

    async def _journal_level_prior(self, term: ModbusTerminal) -> bool:
        """Add the volume and source to the journalled prior state (during the warm-up)."""
        t = self.tracked[term.device_id]
        prior = self.act._held.get(term.device_id)
        names = [p for p in LEVEL_PRIOR_POINTS if p in term.profile.points]
        if t.levels_known or not names or not t.in_play:  # never answered: nothing to read back
            t.levels_known = True
            return True
        sent = asyncio.get_running_loop().time()
        try:
            points = await term.read_points(names, self.priority, retries=0 if t.failures else None)
        except LineDownError:
            raise
        except DriverError as exc:
            self._failed(t, exc, sent, "before setting the volume")
            return False
        # an unknown prior (silent before power-on) is the safe state for what the frames touched
        known = prior.get("points", {}) if isinstance(prior, dict) else safe_values(term.profile)
        self.act._journal(term.device_id, {"kind": "terminal", "points": {**known, **points}})
        t.levels_known = True
        return True

    async def _write_one(self, term: ModbusTerminal, values: Mapping[str, object]) -> bool:
        t = self.tracked[term.device_id]
        sent = asyncio.get_running_loop().time()
        try:
            await term.write_points(known_points(term.profile, values), self.priority)
        except LineDownError:
            raise
        except DriverError as exc:
            self._failed(t, exc, sent, "activation write")
            return False
        return True

    async def _frame(self, terms: list[ModbusTerminal], values: Mapping[str, object]) -> None:
        """One unit-id-0 write that every terminal of the line executes (none replies)."""
        await write_all_on_line(terms, known_points(terms[0].profile, values), self.priority)

    def _failed(self, t: _Tracked, exc: DriverError, sent: float, what: str) -> None:
        now = asyncio.get_running_loop().time()
        if _answered(exc):
            self.act._reading(t, Reading(sent, now, ReadingKind.BAD, f"{what}: refused: {exc}"))
            t.failures += 1
        elif _garbled(exc):  # there, behind a noisy wire: try again soon, at full pace
            t.evidence.add(_none(now, f"{what}: garbled replies: {exc}", sent))
            t.next_try = now + RETRY_MIN_S / 5
            return
        else:
            self.act._lost(t, _none(now, f"no answer {what}: {exc}", sent))
        t.next_try = now + _backoff(t.failures)


def _none(at: float, reason: str, sent: float | None = None) -> Reading:
    return Reading(at if sent is None else sent, at, ReadingKind.NONE, reason)

