"""The broadcast engine: what plays when, on which terminals, and what became of it.

One program plays at a time (the gateway has one line-out). Waiting broadcasts are ordered by
``request.priority`` (higher first, DESIGN §3: 上级优先于下级、应急优先于日常), FIFO among equals.
A due broadcast of *strictly* higher priority pre-empts the one playing at once: its task is
cancelled, which stops the audio player, and the devices both broadcasts target stay on and are
handed over (no amplifier off/on, no second warm-up). Equal priority waits.

Decisions (documented for operators and the API):

* A pre-empted broadcast goes back to WAITING and later replays from the start of its program.
  If it expires before it can resume it ends FAILED with reason "pre-empted" (not CANCELLED:
  nobody decided against it, it simply did not get the air).
* ``start_at`` in the future waits; ``expires_at`` passed → never plays (FAILED "expired"), also
  when it expires while waiting; expiring mid-play stops it (FAILED "expired").
* Cancel acts directly: a waiting broadcast is CANCELLED at once; a playing one is stopped, its
  devices released, then CANCELLED. ``cancel`` returns after that.
* Outcome, from read-back evidence (controller/broadcast/evidence.py): a device *succeeded* when it was
  confirmed audible through at least one complete repetition; the broadcast SUCCEEDED when at
  least ``broadcast.success_threshold`` (default: every one) of the reachable targeted devices
  did, else FAILED naming who was missed. Coverage = succeeded / targeted devices (the FM
  transmitter counts when it is keyed).
* The program starts when every targeted terminal that answered is ready, so every horn hears
  the whole attention tone (bounded: see :meth:`Activation.wait_ready`); terminals that could not
  be reached join late while the broadcast is valid.
* Health polling's view (the DeviceRegistry) is used for two things: a terminal it reports
  offline is not read before power-on (its timeouts would hold up a whole RS-485 line), and one
  that never answers during a broadcast it already had offline does not count against it.
* Release: every device goes to the :class:`~controller.broadcast.release.Releaser`, which restores it and
  keeps retrying until it is back in its prior state, across line outages and restarts.
* Everything accepted is journalled before ``submit`` returns. ``stop()`` puts the playing
  broadcast back to WAITING, so it and every queued one resume after a restart; ``start()``
  restores devices left on by a crash, then requeues what is still valid and fails the rest with
  "interrupted by restart".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.broadcast.activation import Activation, ActivationSettings
from controller.broadcast.evidence import ProgramTimeline, Verdict, broadcast_verdict
from controller.broadcast.model import BroadcastRequest, BroadcastState, TerminalOutcome
from controller.broadcast.program import Program, build_program, uploaded_audio
from controller.broadcast.release import Releaser
from controller.broadcast.targets import Resolved, TargetError, resolve
from controller.config import Config
from controller.core.actors import Actor, Role
from controller.core.events import BroadcastOutcome, BroadcastStateChanged, EventBus
from controller.core.lifecycle import cancel_and_wait
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.storage.journal import Store
from drivers.audio_output import has_sound, prune_evidence

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass
class _Entry:
    """A broadcast the engine holds: waiting in the queue or playing."""

    id: str
    request: BroadcastRequest
    actor: Actor
    seq: int
    resolved: Resolved
    preemptions: int = 0
    interrupt: tuple[str, Any] | None = None
    """Why the playing task was cancelled: ("preempted", by id), ("cancelled", actor), ("expired", None),
    ("stopping", None) or ("error", exception)."""
    offline_at_start: frozenset[str] = frozenset()
    """Devices health polling had offline when its activation began (see the outcome rule)."""
    running: bool = False
    """Its task has begun (a task cancelled before its first step would skip its clean-up)."""
    concluding: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted_verdicts: dict[str, Verdict] = field(default_factory=dict)
    """What its last, pre-empted run proved per device: its outcomes if it never replays."""

    @property
    def rank(self) -> tuple[tuple[int, int, int], int]:
        """Higher plays first: priority, then the earlier submission (FIFO among equals)."""
        return self.request.priority, -self.seq

    def due(self, now: datetime) -> bool:
        return self.request.start_at is None or self.request.start_at <= now


def new_broadcast_id() -> str:
    """Readable and unique: local submission time plus 24 random bits, e.g. 20261128-031502-a1b2c3."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class BroadcastEngine:
    """Queue, priority, pre-emption, activation and playback of broadcasts (see module doc)."""

    def __init__(self, cfg: Config, hardware: Hardware, store: Store, speech: Any, player: Any, bus: EventBus,
                 registry: DeviceRegistry | None = None, *, clock: Clock | None = None,
                 releaser: Releaser | None = None) -> None:
        self.cfg = cfg
        self.hardware = hardware
        self.store = store
        self.speech = speech
        self.player = player
        self.bus = bus
        self.registry = registry
        self.releaser = releaser or Releaser(hardware, store, on_note=store.add_note)
        self._now: Clock = clock or (lambda: datetime.now(UTC))
        self._queue: dict[str, _Entry] = {}
        self._current: _Entry | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._system = Actor.system()
        self.evidence_dir = Path(cfg.state_dir) / "evidence"
        """Every program as played, ``<broadcast id>.wav`` (kept ``evidence_retention_days``)."""
        self.audio_dir = Path(cfg.state_dir) / "audio"
        """Uploaded clips a request may name by ``audio_id``."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover from an unclean stop, requeue what is still valid, then start scheduling."""
        await self.releaser.start()  # devices a crash left switched on go back first
        now = self._now()
        for row in self.store.unfinished_broadcasts():
            self._recover(row, now)
        prune_evidence(self.evidence_dir, self.cfg.broadcast.evidence_retention_days)
        self._loop_task = asyncio.create_task(self._run(), name="broadcast engine")

    def _recover(self, row: dict[str, Any], now: datetime) -> None:
        bid, a = row["id"], row["actor"]
        actor = Actor(name=a["name"], role=Role(a["role"]) if a["role"] else None, token_id=a["token_id"],
                      remote=a["remote"], via=a["via"])
        try:
            request = BroadcastRequest.model_validate(row["request"])
            resolved = resolve(self.cfg, request.targets)
        except (ValidationError, TargetError) as exc:
            self._settle_cut_short(bid)
            self._finish(bid, BroadcastState.FAILED, f"interrupted by restart; cannot resume: {exc}")
            return
        if request.expired(now):
            self._settle_cut_short(bid)
            self._finish(bid, BroadcastState.FAILED, "interrupted by restart")
            return
        self._queue[bid] = _Entry(bid, request, actor, next(self._seq), resolved)
        self.store.add_note(bid, "requeued after a restart")
        self._transition(bid, BroadcastState.WAITING, "requeued after a restart")

    async def stop(self) -> None:
        """Stop the current program, release its devices, stop the releaser; everything unfinished
        stays WAITING."""
        await cancel_and_wait(self._loop_task)
        self._loop_task = None
        current = self._current
        if current is not None:
            self._interrupt(current, "stopping", None)
            await current.done.wait()
        self.releaser.unpark()  # kept on for a pre-emptor that never took them
        await self.releaser.settle(STOP_RELEASE_S)
        await self.releaser.stop()  # started by start(); what is still unrestored stays journalled

    # ------------------------------------------------------------------ public API

    async def submit(self, request: BroadcastRequest, actor: Actor) -> str:
        """Validate targets, journal (durable before this returns), audit and queue; returns the id.

        Raises :class:`~controller.core.errors.Invalid` (a ValueError) naming the field: ``targets``
        when nothing here would play it, ``text`` over the speech limit, ``audio_id`` unknown.
        """
        resolved = resolve(self.cfg, request.targets)
        if request.text is not None:  # refuse now (Invalid → 422) what would only fail when due
            self.speech.check_length(request.text)
        elif request.audio_id is not None:
            uploaded_audio(request.audio_id, self.audio_dir)
        bid = new_broadcast_id()
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.store.add_broadcast(bid, body, actor, BroadcastState.WAITING, time.time())
        self.store.audit(actor, "broadcast.submit", bid, {"class": request.broadcast_class.value,
                                                          "priority": list(request.priority)})
        self.bus.publish(BroadcastStateChanged(broadcast_id=bid, state=int(BroadcastState.WAITING),
                                               name="waiting", reason=None, submitted=True))
        self._queue[bid] = _Entry(bid, request, actor, next(self._seq), resolved)
        self._wake.set()
        return bid

    async def cancel(self, broadcast_id: str, actor: Actor) -> bool:
        """Cancel a waiting or playing broadcast; True once it is CANCELLED (devices released)."""
        entry = self._queue.pop(broadcast_id, None)
        if entry is not None:
            self.store.audit(actor, "broadcast.cancel", broadcast_id)
            self._finish_unplayed(entry, BroadcastState.CANCELLED, f"cancelled by {actor.name}")
            self._wake.set()
            return True
        current = self._current
        if current is None or current.id != broadcast_id or current.concluding:
            return False
        self.store.audit(actor, "broadcast.cancel", broadcast_id)
        self._interrupt(current, "cancelled", actor)  # no-op if it is already being pre-empted
        await asyncio.shield(current.done.wait())
        requeued = self._queue.pop(broadcast_id, None)
        if requeued is not None:  # it was pre-empted meanwhile
            self._finish_unplayed(requeued, BroadcastState.CANCELLED, f"cancelled by {actor.name}")
            self._wake.set()
        record = self.store.get_broadcast(broadcast_id)
        return record is not None and record["state"] is BroadcastState.CANCELLED

    def current(self) -> str | None:
        """The id of the broadcast on air (or being activated), if any."""
        return self._current.id if self._current is not None else None

    def queue_snapshot(self) -> list[dict[str, Any]]:
        """The playing broadcast (if any) then the waiting ones, in the order they would play."""
        now = self._now()
        entries = sorted(self._queue.values(), key=lambda e: e.rank, reverse=True)
        out = [] if self._current is None else [self._describe(self._current, "playing", now)]
        return out + [self._describe(e, "waiting", now) for e in entries]

    @staticmethod
    def _describe(entry: _Entry, state: str, now: datetime) -> dict[str, Any]:
        r = entry.request
        return {"id": entry.id, "state": state, "class": r.broadcast_class.value, "severity": r.severity,
                "source_level": int(r.source_level), "priority": list(r.priority), "title": r.title,
                "due": entry.due(now), "start_at": r.start_at.isoformat() if r.start_at else None,
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "preemptions": entry.preemptions}

    # ------------------------------------------------------------------ scheduling loop

    async def _run(self) -> None:
        """The one place that decides: expire, pre-empt, start the next; sleep until something changes."""
        while True:
            self._wake.clear()
            now = self._now()
            self._expire_waiting(now)
            best = max((e for e in self._queue.values() if e.due(now)), key=lambda e: e.rank, default=None)
            current = self._current
            if current is not None and current.interrupt is None and not current.concluding:
                if current.request.expired(now):
                    self._interrupt(current, "expired", None)
                elif best is not None and best.request.priority > current.request.priority:
                    self._interrupt(current, "preempted", best.id)
            elif current is None and best is None:
                self.releaser.unpark()  # a pre-emptor that kept devices on went away before playing
            elif current is None and best is not None:
                del self._queue[best.id]
                self._current = best
                self._task = asyncio.create_task(self._play(best), name=f"broadcast {best.id}")
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_s(now)):  # not wait_for: 3.11's can lose a cancel
                    await self._wake.wait()

    def _sleep_s(self, now: datetime) -> float | None:
        """Until the next start_at or expiry that could change a decision (None: until woken)."""
        moments = [e.request.start_at for e in self._queue.values() if e.request.start_at and not e.due(now)]
        moments += [e.request.expires_at for e in self._queue.values() if e.request.expires_at]
        if self._current is not None and self._current.request.expires_at:
            moments.append(self._current.request.expires_at)
        if not moments:
            return None
        return max(0.0, (min(moments) - now).total_seconds()) + 0.001

    def _expire_waiting(self, now: datetime) -> None:
        for entry in [e for e in self._queue.values() if e.request.expired(now)]:
            del self._queue[entry.id]
            reason = "pre-empted" if entry.preemptions else "expired"
            self._finish_unplayed(entry, BroadcastState.FAILED, reason)

    def _interrupt(self, entry: _Entry, why: str, detail: Any) -> None:
        """Stop the playing task for ``why`` (pre-empted, cancelled, expired, stopping)."""
        if entry.interrupt is not None or entry.concluding or self._task is None:
            return
        entry.interrupt = (why, detail)
        if entry.running:  # otherwise _play sees the interrupt when it begins
            self._task.cancel()

    # ------------------------------------------------------------------ one broadcast on air

    async def _play(self, entry: _Entry) -> None:
        """Activate, play, confirm, release and journal the outcome of one broadcast."""
        done = entry.done  # a requeued entry gets a fresh event for its next run
        entry.running = True
        activation: Activation | None = None
        try:
            if entry.interrupt is None:  # not interrupted between being picked and starting
                self._transition(entry.id, BroadcastState.PLAYING, None, started_at=time.time())
                program = build_program(entry.request, self.speech, self.cfg.audio_output.sample_rate,
                                        audio_dir=self.audio_dir)  # raises before anything is touched
                activation = self._activate(entry, program)
                await self._perform(entry, activation, program)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if entry.interrupt is None:
                entry.interrupt = ("stopping", None)
        except Exception as exc:  # audio output down, speech failed, a bug: fail this one, keep going
            log.exception("broadcast %s failed", entry.id)
            entry.interrupt = ("error", exc)
        entry.concluding = True
        try:
            await _unstoppable(self._conclude(entry, activation))
        finally:
            self._current, self._task = None, None
            done.set()
            self._wake.set()

    def _activate(self, entry: _Entry, program: Program) -> Activation:
        """Take the targeted devices (inheriting those still on from a pre-empted broadcast) and
        start activating them."""
        b = self.cfg.broadcast
        settings = ActivationSettings.for_request(entry.request, daily_volume=b.daily_volume,
                                                  ready_timeout_s=b.ready_timeout_s,
                                                  ready_hold_s=b.ready_hold_s,
                                                  prior_state_max_age_s=b.prior_state_max_age_s)
        entry.offline_at_start = frozenset(self._known_offline())
        inherited = self.releaser.claim(entry.resolved.device_ids)
        self.releaser.unpark()  # kept on by a pre-empted broadcast but not ours: restore them
        activation = Activation(entry.id, entry.resolved, self.hardware, self.store, settings, self.releaser,
                                inherited=inherited, offline=entry.offline_at_start,
                                timeline=ProgramTimeline(program.repetitions,
                                                         time_scale=getattr(self.player, "time_scale", 1.0)),
                                report=lambda dev, verdict: self._outcome(entry.id, dev, verdict))
        for dev in entry.resolved.device_ids:
            self.store.set_outcome(entry.id, dev, TerminalOutcome.PENDING)
        activation.start()
        return activation

    def _known_offline(self) -> set[str]:
        """Devices health polling currently reports offline (none without a registry)."""
        if self.registry is None:
            return set()
        return {d for d, view in self.registry.devices.items() if view.online is False}

    async def _perform(self, entry: _Entry, activation: Activation, program: Program) -> None:
        """Start the program once the terminals are ready (speech synthesises under the tone), play
        it to the end, and read every device back once more."""
        await activation.wait_ready()
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        chunks = _announcing(program.chunks(), activation, program.sample_rate)
        evidence = self.evidence_dir / f"{entry.id}.wav"
        await self.player.play(chunks, program.sample_rate, evidence_path=evidence)
        entry.concluding = True  # played to its end: nothing may interrupt (and so replay) it now
        activation.program_ended()
        await activation.finish()

    async def _conclude(self, entry: _Entry, activation: Activation | None) -> None:
        """Judge, release devices (handing over to a pre-emptor), then journal the final or waiting state."""
        why, detail = entry.interrupt or ("completed", None)
        replays = why == "stopping" or (why == "preempted" and not entry.request.expired(self._now()))
        verdicts: dict[str, Verdict] = {}
        if activation is not None:
            if why != "completed":
                activation.program_ended(_STOPPED.get(why, why))
            verdicts = await activation.finish(final_pass=False, report=not replays)
            keep: set[str] = set()
            if why == "preempted" and detail in self._queue:
                keep = set(entry.resolved.device_ids) & set(self._queue[detail].resolved.device_ids)
            await activation.release(keep)
        if why == "preempted" and replays:
            entry.preemptions += 1
            entry.interrupted_verdicts = verdicts
            entry.interrupt, entry.running, entry.concluding, entry.done = None, False, False, asyncio.Event()
            self._queue[entry.id] = entry
            self.store.add_note(entry.id, f"pre-empted by {detail}; replays from the start later")
            self._transition(entry.id, BroadcastState.WAITING, f"pre-empted by {detail}")
            return
        if why == "stopping":
            self.store.add_note(entry.id, "interrupted by shutdown; resumes after restart")
            self._transition(entry.id, BroadcastState.WAITING, "interrupted by shutdown")
            return
        for dev in entry.resolved.device_ids:
            if dev not in verdicts:  # never activated (it failed before): say so per device
                verdicts[dev] = Verdict(TerminalOutcome.FAILED, f"{_STOPPED.get(why, why)} before activation")
                self._outcome(entry.id, dev, verdicts[dev])
        state, reason, coverage = _verdict(why, detail, verdicts, entry.offline_at_start,
                                           self.cfg.broadcast.success_threshold)
        self._finish(entry.id, state, reason, coverage)

    # ------------------------------------------------------------------ journal + events

    def _outcome(self, bid: str, dev: str, verdict: Verdict) -> None:
        v = verdict.rounded()
        self.store.set_outcome(bid, dev, v.outcome, v.reason, v.detail())
        self.bus.publish(BroadcastOutcome(broadcast_id=bid, device_id=dev, outcome=v.outcome.value,
                                          reason=v.reason, joined_late=v.joined_late, missed_s=v.missed_s,
                                          audible_s=v.audible_s, joined_at_s=v.joined_at_s))

    def _transition(self, bid: str, state: BroadcastState, reason: str | None, *,
                    started_at: float | None = None, finished_at: float | None = None,
                    coverage: float | None = None) -> None:
        self.store.set_state(bid, state, reason=reason, started_at=started_at, finished_at=finished_at,
                             coverage=coverage)
        self.store.audit(self._system, "broadcast.state", bid,
                         {"state": state.name.lower(), "reason": reason, "coverage": coverage})
        self.bus.publish(BroadcastStateChanged(broadcast_id=bid, state=int(state), name=state.name.lower(),
                                               reason=reason, coverage=coverage))

    def _finish(self, bid: str, state: BroadcastState, reason: str, coverage: float | None = None) -> None:
        self._transition(bid, state, reason, finished_at=time.time(), coverage=coverage)

    def _finish_unplayed(self, entry: _Entry, state: BroadcastState, reason: str) -> None:
        """End a waiting broadcast. One whose earlier run was interrupted (pre-empted, or by a
        restart) and never replayed gets outcomes from what that run proved, never ``pending``."""
        if entry.preemptions:
            verdicts = dict(entry.interrupted_verdicts)
            for dev in entry.resolved.device_ids:
                verdicts.setdefault(dev, Verdict(TerminalOutcome.FAILED, "pre-empted before activation"))
                self._outcome(entry.id, dev, verdicts[dev])
        else:
            verdicts = self._settle_cut_short(entry.id)
        if not verdicts:  # it never started
            self._finish(entry.id, state, reason)
            return
        self.store.add_note(entry.id, f"{reason} before it could replay: outcomes from its interrupted run")
        judged = broadcast_verdict(verdicts, offline_at_start=entry.offline_at_start,
                                   threshold=self.cfg.broadcast.success_threshold)
        self._finish(entry.id, state, reason, judged.coverage)

    def _settle_cut_short(self, bid: str) -> dict[str, Verdict]:
        """Outcomes a restart left ``pending``: that run was never judged, so nothing is known."""
        record = self.store.get_broadcast(bid)
        verdicts: dict[str, Verdict] = {}
        for row in (record or {}).get("outcomes", []):
            if row["outcome"] is TerminalOutcome.PENDING:
                verdicts[row["device_id"]] = Verdict(TerminalOutcome.UNREACHABLE, CUT_SHORT)
                self._outcome(bid, row["device_id"], verdicts[row["device_id"]])
        return verdicts

CUT_SHORT = "its run was cut short by a restart and did not replay: nothing known of what it played"
_STOPPED = {"cancelled": "cancelled", "preempted": "pre-empted", "expired": "expired",
            "stopping": "stopped by shutdown", "error": "stopped by an error"}
STOP_RELEASE_S = 5.0
"""At shutdown, how long to wait for devices to be restored before the lines close (those that
are not stay journalled and are restored at the next start)."""


def _verdict(why: str, detail: Any, verdicts: dict[str, Verdict], offline_at_start: frozenset[str],
             threshold: float) -> tuple[BroadcastState, str, float]:
    """Final state, reason and coverage: interrupted, or by the outcome rule
    (controller/broadcast/evidence.py)."""
    judged = broadcast_verdict(verdicts, offline_at_start=offline_at_start, threshold=threshold)
    if why == "cancelled":
        return BroadcastState.CANCELLED, f"cancelled by {detail.name}", judged.coverage
    if why in ("expired", "preempted"):
        return BroadcastState.FAILED, "expired" if why == "expired" else "pre-empted", judged.coverage
    if why == "error":
        return BroadcastState.FAILED, f"cannot play: {detail}", judged.coverage
    return judged.state, judged.reason, judged.coverage


async def _unstoppable(coro: Any) -> None:
    """Run ``coro`` to the end even if the caller is cancelled meanwhile (release must finish)."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
    task.result()


async def _announcing(chunks: AsyncIterator[bytes], activation: Activation,
                      sample_rate: int) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, telling the activation when the program starts and what each chunk
    is (its length, and whether it is sound a terminal's output detector would notice)."""
    loop = asyncio.get_running_loop()
    first = True
    try:
        async for chunk in chunks:
            if first and chunk:
                first = False
                activation.program_started(loop.time())
            activation.timeline.add_chunk(len(chunk) / 2 / sample_rate, has_sound(chunk))
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:  # ends the program now (cancels its speech synthesis)
            await aclose()
