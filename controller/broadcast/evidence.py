"""Outcomes from evidence: what a device's read-backs prove it played, and the broadcast's verdict.

A terminal cannot be heard from the gateway; it can only be read. So a verdict is built from
*readings* — status reads spread over the whole program — set against *when the program
sounded* (the gateway knows every chunk it put on the line-out, and whether it was louder than
the -50 dBFS a terminal's "audio at the output" detector needs).

The rule (also in docs/api.md, "Outcome rule"):

* A reading is **good** when the device answered able to play — amplifier ready, no amplifier
  fault — and, if the program was sounding throughout the read (with the margins below), it
  reported audio at its output. A good reading that reports audio is an **audio** reading. Any
  other answer is **bad** (not ready, fault, silent while the program sounded). No answer says
  nothing either way.
* Consecutive good readings form a **streak**: the device is taken to have been audible from the
  first to the last of them. A bad reading ends a streak; so does a gap of more than
  :data:`MAX_GAP_S` without a good one (a line outage longer than that, a terminal that stopped
  answering). A shorter gap — a few replies lost to CRC errors — does not.
* **succeeded**: one streak covers a complete repetition of the program (tone and words, from its
  first to its last sample) and holds an audio reading inside it.
* **partial**: audible at some point — an audio reading, or ready a moment before the program's
  first sound with nothing read since that says otherwise — but no complete repetition covered:
  it joined after the start of a one-repetition program, or dropped out. Never called failed.
* **failed**: it answered while the program played, and what it said was that it did not play
  (not ready, a fault, silent while the program sounded: the reason says which) — or the program
  never began.
* **unreachable**: no read-back answered while the program played — nothing is known of what it
  played (it may have been switched on before its line went down, or the program was cancelled
  before the read-back pass reached it).

Every verdict carries ``joined_late`` (not confirmed able to play when the program's first sound
went out), ``missed_s`` (seconds of program sound outside its streaks) and ``audible_s``.

The broadcast is **succeeded** when at least ``threshold`` (default 1.0: every one) of its
*reachable* targeted devices succeeded, else **failed** naming who was missed. A device counts as
reachable unless it never answered during the broadcast *and* health polling already had it
offline when the broadcast began: a horn known to be broken does not fail every broadcast, but a
line that drops during one does.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controller.broadcast.model import BroadcastState, TerminalOutcome

SOUND_MARGIN_BEFORE_S = 0.15
"""A read counts as "during sound" only if the program sounded from this long before the request
went out (a terminal's detector needs a moment to react; the line-out has some jitter) …"""
SOUND_MARGIN_AFTER_S = 0.05
"""… until this long after its reply came back (the player runs up to 100 ms ahead of the line,
so the gateway knows this much of what comes next when a reply arrives)."""
MAX_GAP_S = 5.0
"""Longest time between two good readings that still counts as one streak."""
START_GRACE_S = 0.1
"""A device first confirmed able to play this soon after a repetition began still covers it (the
attention tone's first 100 ms: a read cannot land exactly on the first sample)."""


class ReadingKind(StrEnum):
    AUDIO = "audio"
    """Answered, able to play, and audio at its output."""
    READY = "ready"
    """Answered and able to play; the program was not (certainly) sounding during the read."""
    BAD = "bad"
    """Answered, but not able to play (not ready, fault) or silent while the program sounded."""
    NONE = "none"
    """No answer."""


@dataclass(frozen=True)
class Reading:
    """One read-back: ``sent`` and ``received`` (monotonic) bound when the device was sampled."""

    sent: float
    received: float
    kind: ReadingKind
    reason: str = ""

    @property
    def good(self) -> bool:
        return self.kind in (ReadingKind.AUDIO, ReadingKind.READY)


@dataclass(frozen=True)
class Streak:
    """A run of good readings: audible (if the program sounded) from ``start`` to ``end``."""

    start: float
    end: float
    audio_at: tuple[float, ...]
    """When its audio readings were taken."""


# ---------------------------------------------------------------------------------------- program


@dataclass(frozen=True)
class Span:
    start: float
    end: float


class ProgramTimeline:
    """When the program sounded, in monotonic time, and where its repetitions lie.

    The engine calls :meth:`begin` as the first chunk goes to the player, :meth:`add_chunk` for
    every chunk (its length and whether it carries sound) and :meth:`end` when the program stops.
    ``repetitions`` gives each repetition's span in program seconds (from the program's layout);
    ``time_scale`` > 1 when the player plays faster than real time (tests only): chunk lengths and
    repetitions are program seconds, everything stored here is wall-clock seconds.
    """

    def __init__(self, repetitions: Callable[[], list[tuple[float, float]]] | None = None, *,
                 time_scale: float = 1.0) -> None:
        self._repetitions = repetitions or (lambda: [])
        self.time_scale = time_scale
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._cursor = 0.0
        """Program seconds handed to the player so far."""
        self._starts: list[float] = []
        self._ends: list[float] = []
        """Merged sound intervals in monotonic time (parallel sorted lists)."""

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def begin(self, at: float) -> None:
        if self.started_at is None:
            self.started_at = at

    def add_chunk(self, seconds: float, sound: bool) -> None:
        assert self.started_at is not None, "begin() first"
        a = self.started_at + self._cursor
        self._cursor += seconds / self.time_scale
        b = self.started_at + self._cursor
        if not sound:
            return
        if self._ends and abs(self._ends[-1] - a) < 1e-6:
            self._ends[-1] = b
        else:
            self._starts.append(a)
            self._ends.append(b)

    def end(self, at: float) -> None:
        if self.ended_at is None:
            self.ended_at = at

    @property
    def played_until(self) -> float | None:
        """Monotonic time up to which the program has been handed out (None before it began)."""
        return None if self.started_at is None else self.started_at + self._cursor

    def sounding(self, a: float, b: float) -> bool | None:
        """True: sound throughout ``[a, b]`` widened by the margins above; False: silence throughout
        ``[a, b]`` (or before the program / after its end); None: partly, or not handed out yet."""
        lo, hi = a - SOUND_MARGIN_BEFORE_S, b + SOUND_MARGIN_AFTER_S
        played, started = self.played_until, self.started_at
        if played is None or started is None or b < started:
            return False
        i = bisect.bisect_right(self._starts, lo) - 1
        if i >= 0 and self._ends[i] >= hi and hi <= played:
            return True
        if self.sound_seconds(a, b) == 0.0 and (b <= played or self.ended_at is not None):
            return False
        return None

    def sound_seconds(self, a: float, b: float) -> float:
        """Seconds of program sound within ``[a, b]``."""
        total = 0.0
        i = bisect.bisect_right(self._ends, a)
        while i < len(self._starts) and self._starts[i] < b:
            total += max(0.0, min(b, self._ends[i]) - max(a, self._starts[i]))
            i += 1
        return total

    @property
    def first_sound_at(self) -> float | None:
        return self._starts[0] if self._starts else None

    def complete_repetitions(self) -> list[Span]:
        """Repetitions that have been played to their end, in monotonic time."""
        if self.started_at is None:
            return []
        done, k = self._cursor, self.time_scale
        return [Span(self.started_at + a / k, self.started_at + b / k)
                for a, b in self._repetitions() if b / k <= done + 1e-6]


# ---------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Verdict:
    """A device's outcome for one broadcast, with the evidence behind it."""

    outcome: TerminalOutcome
    reason: str = ""
    joined_late: bool = False
    missed_s: float = 0.0
    audible_s: float = 0.0
    joined_at_s: float | None = None
    """Program seconds at which it was first confirmed able to play (0 when before the start)."""

    def rounded(self) -> Verdict:
        """Figures to 0.1 s, as journalled and published with the outcome."""
        return replace(self, missed_s=round(self.missed_s, 1), audible_s=round(self.audible_s, 1),
                       joined_at_s=None if self.joined_at_s is None else round(self.joined_at_s, 1))

    def detail(self) -> dict[str, object]:
        """The evidence figures as journalled and published with the outcome."""
        r = self.rounded()
        return {"joined_late": r.joined_late, "missed_s": r.missed_s, "audible_s": r.audible_s,
                "joined_at_s": r.joined_at_s}


@dataclass
class DeviceEvidence:
    """Every reading of one device during one broadcast, and what they prove."""

    device_id: str
    readings: list[Reading] = field(default_factory=list)

    def add(self, reading: Reading) -> None:
        self.readings.append(reading)

    @property
    def answered(self) -> bool:
        return any(r.kind is not ReadingKind.NONE for r in self.readings)

    @property
    def heard(self) -> bool:
        """At least one audio reading: this device was audible at some point."""
        return any(r.kind is ReadingKind.AUDIO for r in self.readings)

    def streaks(self, max_gap_s: float = MAX_GAP_S) -> list[Streak]:
        """Runs of good readings, each from its first reading's reply to its last one's request."""
        out: list[Streak] = []
        start: Reading | None = None
        last: Reading | None = None
        audio: list[float] = []

        def close() -> None:
            if start is not None and last is not None:
                out.append(Streak(start.received, max(start.received, last.sent), tuple(audio)))

        for r in sorted(self.readings, key=lambda r: r.received):
            if r.kind is ReadingKind.NONE:
                continue
            if not r.good:
                close()
                start, last, audio = None, None, []
                continue
            if last is not None and r.received - last.received > max_gap_s:
                close()
                start, audio = None, []
            if start is None:
                start = r
            last = r
            if r.kind is ReadingKind.AUDIO:
                audio.append((r.sent + r.received) / 2)
        close()
        return out

    def verdict(self, timeline: ProgramTimeline, *, final: bool, stopped: str = "") -> Verdict | None:
        """The device's verdict; before the end (``final`` False) only a success is final.

        ``stopped`` says why the program ended early ("cancelled", "pre-empted", …) for the reason.
        """
        streaks = self.streaks()
        reps = timeline.complete_repetitions()
        covered = [rep for rep in reps if any(_covers(s, rep) for s in streaks)]
        t0 = timeline.first_sound_at or timeline.started_at
        end = timeline.played_until
        audible = missed = 0.0
        joined_at: float | None = None
        if t0 is not None and end is not None:
            audible = sum(timeline.sound_seconds(max(s.start, t0), min(s.end, end)) for s in streaks
                          if s.end > t0)
            missed = max(0.0, timeline.sound_seconds(t0, end) - audible)
            able = [s.start for s in streaks if s.end >= t0]
            if able:
                joined_at = max(0.0, min(able) - t0)
        late = joined_at is None or joined_at > START_GRACE_S
        if covered:
            return Verdict(TerminalOutcome.SUCCEEDED,
                           _late_note(late, joined_at, missed) or "", late, missed, audible, joined_at)
        if not final:
            return None
        during = [r for r in self.readings if t0 is not None and r.received >= t0]
        ready_at_start = t0 is not None and not any(r.kind is ReadingKind.BAD for r in during) and any(
            s.start <= t0 + START_GRACE_S and s.end >= t0 - SOUND_MARGIN_BEFORE_S for s in streaks)
        if self.heard or ready_at_start:  # audible at some point: read so, or ready as the sound began
            why = [f"audible {audible:.1f} s of {audible + missed:.1f} s of program sound"]
            if stopped:
                why.append(f"{stopped} before a complete repetition")
            elif late and joined_at is not None:
                why.append(f"joined {joined_at:.1f} s late")
            else:
                why.append("not confirmed for a complete repetition" + _last_trouble(self.readings))
            return Verdict(TerminalOutcome.PARTIAL, "; ".join(why), late, missed, audible, joined_at)
        bad = [r.reason for r in (during if t0 is not None else self.readings)
               if r.kind is ReadingKind.BAD and r.reason]
        if bad or (t0 is None and self.answered):  # it answered, and what it said was: not playing
            reason = bad[-1] if bad else f"{stopped or 'stopped'} before the program began"
            return Verdict(TerminalOutcome.FAILED, reason, True, missed, 0.0, joined_at)
        if any(r.kind is not ReadingKind.NONE for r in during):  # ready, but only read in the pauses
            return Verdict(TerminalOutcome.FAILED, "never read back with audio while it was ready",
                           True, missed, 0.0, joined_at)
        none = [r.reason for r in self.readings if r.kind is ReadingKind.NONE and r.reason]
        if self.answered:  # only before the program: what it played is not known
            reason = ("not read back while the program played"
                      + (f" ({stopped} after {timeline.sound_seconds(t0 or 0, end or 0):.1f} s of sound)"
                         if stopped else "") + _last_trouble(self.readings))
        else:
            reason = f"no answer during the broadcast ({len(none)} tries)"
            if none:
                reason += f"; last: {none[-1]}"
        return Verdict(TerminalOutcome.UNREACHABLE, reason, True, missed, 0.0, None)


def _covers(streak: Streak, rep: Span) -> bool:
    return (streak.start <= rep.start + START_GRACE_S and streak.end >= rep.end
            and any(rep.start <= a <= rep.end for a in streak.audio_at))


def _late_note(late: bool, joined_at: float | None, missed: float) -> str:
    if late and joined_at is not None:
        return f"joined {joined_at:.1f} s late (missed {missed:.1f} s of sound)"
    if missed >= 0.5:
        return f"missed {missed:.1f} s of sound"
    return ""


def _last_trouble(readings: list[Reading]) -> str:
    bad = [r for r in readings if r.kind in (ReadingKind.BAD, ReadingKind.NONE) and r.reason]
    return f" (last: {bad[-1].reason})" if bad else ""


# ---------------------------------------------------------------------------------------- broadcast


@dataclass(frozen=True)
class BroadcastVerdict:
    state: BroadcastState
    reason: str
    coverage: float


def broadcast_verdict(verdicts: Mapping[str, Verdict], *, offline_at_start: Collection[str] = (),
                      threshold: float = 1.0) -> BroadcastVerdict:
    """SUCCEEDED when ≥ ``threshold`` of the reachable devices succeeded (see the module doc)."""
    ok = [d for d, v in verdicts.items() if v.outcome is TerminalOutcome.SUCCEEDED]
    known_dead = [d for d, v in verdicts.items()
                  if v.outcome is TerminalOutcome.UNREACHABLE and d in offline_at_start]
    counted = [d for d in verdicts if d not in known_dead]
    coverage = len(ok) / len(verdicts) if verdicts else 0.0
    summary = f"{len(ok)}/{len(verdicts)} devices played a complete repetition"
    missed = _listing((d, verdicts[d]) for d in counted if d not in ok)
    dead = _listing((d, verdicts[d]) for d in known_dead)
    if dead:
        dead = f"{dead} (offline before the broadcast)"
    share = len(ok) / len(counted) if counted else 0.0
    if counted and share >= threshold - 1e-9 and ok:
        extra = "; ".join(x for x in (missed, dead) if x)
        return BroadcastVerdict(BroadcastState.SUCCEEDED, summary + (f"; {extra}" if extra else ""), coverage)
    need = "every reachable device" if threshold >= 1.0 else f"{threshold:.0%} of the reachable devices"
    parts = [f"{summary}, {need} must", f"missed: {missed}" if missed else "", dead]
    return BroadcastVerdict(BroadcastState.FAILED, "; ".join(p for p in parts if p), coverage)


def _listing(items: Iterable[tuple[str, Verdict]]) -> str:
    """``t01, t02 unreachable (line rs485-1 is down); t05 partial (joined 3.4 s late)``: devices
    with the same outcome and reason are named together."""
    groups: dict[tuple[str, str], list[str]] = {}
    for dev, v in items:
        groups.setdefault((v.outcome.value, v.reason), []).append(dev)
    parts = []
    for (outcome, reason), devs in groups.items():
        names = ", ".join(devs if len(devs) <= 12 else [*devs[:12], f"… ({len(devs)} in all)"])
        parts.append(f"{names} {outcome}" + (f" ({reason})" if reason else ""))
    return "; ".join(parts)
