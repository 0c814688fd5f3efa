"""The outcome rule (controller/broadcast/evidence.py) on hand-made readings: what read-backs prove."""

from __future__ import annotations

import pytest

from controller.broadcast.evidence import (
    MAX_GAP_S,
    DeviceEvidence,
    ProgramTimeline,
    Reading,
    ReadingKind,
    Verdict,
    broadcast_verdict,
)
from controller.broadcast.model import BroadcastState, TerminalOutcome

AUDIO, READY, BAD, NONE = ReadingKind.AUDIO, ReadingKind.READY, ReadingKind.BAD, ReadingKind.NONE


def timeline(reps: list[tuple[float, float]], sound: list[tuple[float, float]], played: float,
             *, ended: bool = True) -> ProgramTimeline:
    """A program starting at t=100: ``sound`` intervals and repetitions in program seconds."""
    tl = ProgramTimeline(lambda: reps)
    tl.begin(100.0)
    t = 0.0
    for a, b in sound:
        if a > t:
            tl.add_chunk(a - t, False)
        tl.add_chunk(b - a, True)
        t = b
    if played > t:
        tl.add_chunk(played - t, False)
    if ended:
        tl.end(100.0 + played)
    return tl


def device(*readings: tuple[float, ReadingKind] | tuple[float, ReadingKind, str]) -> DeviceEvidence:
    ev = DeviceEvidence("t01")
    for r in readings:
        at, kind, *why = r
        ev.add(Reading(100.0 + at - 0.02, 100.0 + at, kind, why[0] if why else ""))
    return ev


ONE_REP = timeline([(0.0, 10.0)], [(0.0, 1.5), (2.0, 10.0)], 10.0)


def test_read_backs_spread_over_a_repetition_prove_it_was_played() -> None:
    ev = device((-0.3, READY), (0.5, AUDIO), (3.0, AUDIO), (6.0, READY), (9.0, AUDIO), (10.2, READY))
    v = ev.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.SUCCEEDED
    assert not v.joined_late and v.missed_s == 0.0 and v.audible_s == pytest.approx(9.5)


def test_no_read_after_the_end_leaves_the_repetition_unproven() -> None:
    ev = device((-0.3, READY), (0.5, AUDIO), (3.0, AUDIO), (9.0, AUDIO))
    v = ev.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL  # audible, so never "failed"
    assert "not confirmed for a complete repetition" in v.reason


def test_a_few_lost_replies_do_not_break_a_streak() -> None:
    crc = device((-0.3, READY), (0.5, AUDIO), (1.5, NONE), (2.5, NONE), (3.5, AUDIO), (6.5, AUDIO),
                 (9.5, AUDIO), (10.2, READY))
    v = crc.verdict(timeline([(0.0, 10.0)], [(0.0, 10.0)], 10.0), final=True)
    assert v is not None and v.outcome is TerminalOutcome.SUCCEEDED


def test_a_gap_longer_than_max_gap_breaks_the_streak() -> None:
    gap = MAX_GAP_S + 0.5
    ev = device((-0.3, READY), (0.5, AUDIO), (0.5 + gap, AUDIO), (10.2, READY))
    v = ev.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL


def test_silence_while_the_program_sounds_is_bad_but_silence_in_a_pause_is_not() -> None:
    assert ONE_REP.sounding(105.0, 105.05) is True
    assert ONE_REP.sounding(101.7, 101.8) is False  # the pause after the tone
    assert ONE_REP.sounding(101.45, 101.55) is None  # the tone's end: can't tell
    ev = device((-0.3, READY), (0.5, AUDIO), (1.8, READY), (4.0, BAD, "no audio at the output"),
                (6.0, AUDIO), (8.0, AUDIO), (10.2, READY))
    v = ev.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL  # the bad read split the repetition


def test_a_late_joiner_succeeds_on_a_later_repetition_and_says_it_was_late() -> None:
    reps = [(0.0, 10.0), (13.0, 23.0)]
    tl = timeline(reps, [(0.0, 10.0), (13.0, 23.0)], 23.0)
    ev = device((3.4, AUDIO), (5.0, AUDIO), (8.0, AUDIO), (11.0, READY), (14.0, AUDIO), (18.0, AUDIO),
                (22.0, AUDIO), (23.3, READY))
    v = ev.verdict(tl, final=True)
    assert v is not None and v.outcome is TerminalOutcome.SUCCEEDED
    assert v.joined_late and v.joined_at_s == pytest.approx(3.4) and v.missed_s == pytest.approx(3.4)
    assert "joined 3.4 s late" in v.reason


def test_a_late_joiner_of_a_single_repetition_is_partial_with_the_seconds_missed() -> None:
    ev = device((3.4, AUDIO), (6.0, AUDIO), (9.0, AUDIO), (10.2, READY))
    v = ev.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL
    assert v.joined_late and v.missed_s == pytest.approx(3.4 - 0.5, abs=0.01)  # the pause is silence
    assert "joined 3.4 s late" in v.reason


def test_success_is_known_as_soon_as_a_repetition_is_proven_and_nothing_else_before_the_end() -> None:
    reps = [(0.0, 10.0), (13.0, 23.0)]
    tl = timeline(reps, [(0.0, 10.0), (13.0, 23.0)], 12.0, ended=False)
    good = device((-0.3, READY), (1.0, AUDIO), (4.0, AUDIO), (7.0, AUDIO), (10.5, READY))
    assert good.verdict(tl, final=False).outcome is TerminalOutcome.SUCCEEDED  # type: ignore[union-attr]
    silent = device((-0.3, READY), (4.0, BAD, "no audio at the output"))
    assert silent.verdict(tl, final=False) is None


def test_failed_and_unreachable_say_what_the_readings_showed() -> None:
    muted = device((-0.3, READY), (4.0, BAD, "muted locally"), (8.0, BAD, "muted locally"), (10.2, READY))
    v = muted.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.FAILED and v.reason == "muted locally"
    dead = device((0.0, NONE, "no answer before activation"), (5.0, NONE, "stopped answering"))
    v = dead.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.UNREACHABLE
    assert "no answer during the broadcast (2 tries)" in v.reason and "stopped answering" in v.reason


def test_a_cancelled_program_has_no_complete_repetition() -> None:
    tl = timeline([(0.0, 10.0)], [(0.0, 4.0)], 4.0)
    ev = device((-0.3, READY), (1.0, AUDIO), (3.0, AUDIO), (4.2, READY))
    v = ev.verdict(tl, final=True, stopped="cancelled")
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL and "cancelled" in v.reason


# -- the broadcast ---------------------------------------------------------------------------------------


OK = Verdict(TerminalOutcome.SUCCEEDED)
GONE = Verdict(TerminalOutcome.UNREACHABLE, "no answer during the broadcast (3 tries)")
LATE = Verdict(TerminalOutcome.PARTIAL, "joined 3.4 s late", True, 3.4, 20.0, 3.4)


def test_every_reachable_device_must_play_by_default() -> None:
    v = broadcast_verdict({"t01": OK, "t02": OK, "t03": LATE})
    assert v.state is BroadcastState.FAILED and v.coverage == pytest.approx(2 / 3)
    assert "t03 partial (joined 3.4 s late)" in v.reason
    assert broadcast_verdict({"t01": OK, "t02": OK}).state is BroadcastState.SUCCEEDED


def test_a_device_known_dead_before_the_broadcast_does_not_fail_it_but_one_that_falls_silent_does() -> None:
    v = broadcast_verdict({"t01": OK, "t02": GONE}, offline_at_start={"t02"})
    assert v.state is BroadcastState.SUCCEEDED and "t02 unreachable" in v.reason
    assert "offline before the broadcast" in v.reason
    v = broadcast_verdict({"t01": OK, "t02": GONE})
    assert v.state is BroadcastState.FAILED and "t02 unreachable" in v.reason


def test_the_threshold_is_a_share_of_the_reachable_devices() -> None:
    verdicts = {f"t{i:02d}": OK for i in range(9)} | {"t09": LATE}
    assert broadcast_verdict(verdicts, threshold=0.9).state is BroadcastState.SUCCEEDED
    assert broadcast_verdict(verdicts, threshold=0.95).state is BroadcastState.FAILED
    assert broadcast_verdict({"t01": GONE}, offline_at_start={"t01"}).state is BroadcastState.FAILED


def test_many_devices_with_one_reason_are_named_together() -> None:
    down = Verdict(TerminalOutcome.UNREACHABLE, "line rs485-1 is down")
    verdicts = {f"t{i:02d}": down for i in range(1, 17)}
    v = broadcast_verdict({"t17": OK, **verdicts})
    assert v.reason.count("line rs485-1 is down") == 1
    assert "t01, t02" in v.reason and "(16 in all)" in v.reason


def test_ready_just_before_the_first_sound_then_out_of_reach_is_partial_not_failed() -> None:
    lost = device((-0.3, READY), (-0.02, READY), (2.0, NONE, "line down"), (6.0, NONE, "line down"))
    v = lost.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.PARTIAL
    muted = device((-0.02, READY), (4.0, BAD, "muted locally"))  # said otherwise once the sound came
    v = muted.verdict(ONE_REP, final=True)
    assert v is not None and v.outcome is TerminalOutcome.FAILED


def test_answers_only_before_a_program_cancelled_early_prove_nothing_either_way() -> None:
    """Cancelled 1.5 s in, before the read-back pass reached it: it was warming up at its last answer."""
    tl = timeline([(0.0, 10.0)], [(0.0, 1.5)], 1.5)
    warming = device((-0.5, BAD, "amplifier not ready"))
    v = warming.verdict(tl, final=True, stopped="cancelled")
    assert v is not None and v.outcome is TerminalOutcome.UNREACHABLE  # not "failed": nothing is known
    assert "not read back while the program played" in v.reason and "cancelled" in v.reason
    never_began = ProgramTimeline(lambda: [(0.0, 10.0)])
    v = warming.verdict(never_began, final=True, stopped="cancelled")
    assert v is not None and v.outcome is TerminalOutcome.FAILED  # nothing played anywhere
