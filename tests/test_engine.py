"""The broadcast engine end to end: real simulator (own process), real drivers, SQLite journal, speech
and the simulator's audio line. Durations are checked against what was played; latencies are
printed by bench/trigger_to_air.py, never asserted here.
"""

# ruff: noqa: F811  (tests take the imported fixtures as parameters of the same name)

from __future__ import annotations

import asyncio
import io
import math
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from enginekit import (  # noqa: F401  (sim, speech, gw: fixtures)
    OPERATOR,
    Gateway,
    gw,
    outcomes,
    play_order,
    request,
    sim,
    sound_extent_s,
    spans,
    speech,
    wait_for,
    wait_state,
)

from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.model import BroadcastRequest, BroadcastState, TerminalOutcome
from controller.broadcast.program import store_uploaded_audio
from controller.broadcast.release import Releaser
from controller.broadcast.scheduler import Scheduler, validate_cron
from controller.core.events import BroadcastOutcome, BroadcastStateChanged
from controller.speech.tts import SpeechService
from drivers.audio_output import AudioPlayer, SimLineSink

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPAN_SLACK_S = 0.6
"""The simulator judges sound in 20 ms blocks and logs spans per block; read-backs and the player's
100 ms lead add a little either way."""


# -- playing ------------------------------------------------------------------------------------------------


async def test_targeted_terminals_play_for_the_program_duration_and_others_stay_silent(gw: Gateway) -> None:
    t0 = time.time()
    bid = await gw.engine.submit(request(targets={"devices": ["rtu1", "rtu2", "tcp1"]}), OPERATOR)
    record = await wait_state(gw.store, bid)
    assert record["state"] is BroadcastState.SUCCEEDED, record["reason"]
    assert outcomes(record) == {d: TerminalOutcome.SUCCEEDED for d in ("rtu1", "rtu2", "tcp1")}
    assert record["coverage"] == 1.0
    played = sound_extent_s(gw.engine.evidence_dir / f"{bid}.wav")
    assert played > 2.0  # chime + pause + words
    for dev in ("rtu1", "rtu2", "tcp1"):
        heard = spans(gw.sim, dev, t0)
        assert heard, f"{dev} was never audible"
        extent = heard[-1]["end"] - heard[0]["start"]
        assert played - SPAN_SLACK_S <= extent <= played + SPAN_SLACK_S, (dev, extent, played)
    assert spans(gw.sim, "rtu3", t0) == []
    for dev in ("rtu1", "rtu2", "tcp1"):  # released to the power-on state it had before
        state = gw.sim.state(dev)
        assert not state["coils"]["amp_power"] and not state["coils"]["zone_1"]
    assert gw.store.pending_activations() == []
    states = [e.name for e in gw.events if isinstance(e, BroadcastStateChanged) and e.broadcast_id == bid]
    verdicts = [e.outcome for e in gw.events if isinstance(e, BroadcastOutcome) and e.broadcast_id == bid]
    assert {"waiting", "playing", "succeeded"} <= set(states) and "succeeded" in verdicts
    audit = [a["action"] for a in gw.store.list_audit() if a["target"] == bid]
    assert "broadcast.submit" in audit and "broadcast.state" in audit


def _recording(fmt: str, seconds: float, rate: int = 22050) -> bytes:
    """A 440 Hz recording as an officer (WAV) or the national platform (MP3) would upload it."""
    samples = 0.4 * np.sin(2 * math.pi * 440 * np.arange(round(seconds * rate)) / rate)
    buf = io.BytesIO()
    if fmt == "mp3":
        sf.write(buf, samples, rate, format="MP3")
    else:
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
async def test_an_uploaded_recording_plays_on_the_line_for_its_length(gw: Gateway, fmt: str) -> None:
    clip = store_uploaded_audio(_recording(fmt, 3.0), gw.engine.audio_dir)
    assert clip.format == fmt
    t0 = time.time()
    body = {"class": "daily", "targets": {"devices": ["rtu1", "tcp1"]}, "audio_id": clip.audio_id,
            "tone": "chime", "title": "Recording"}
    bid = await gw.engine.submit(BroadcastRequest.model_validate(body), OPERATOR)
    record = await wait_state(gw.store, bid)
    assert record["state"] is BroadcastState.SUCCEEDED, record["reason"]
    assert outcomes(record) == {"rtu1": TerminalOutcome.SUCCEEDED, "tcp1": TerminalOutcome.SUCCEEDED}
    evidence = gw.engine.evidence_dir / f"{bid}.wav"
    with wave.open(str(evidence), "rb") as wav:
        program_s = wav.getnframes() / wav.getframerate()
    assert program_s == pytest.approx(1.5 + 0.5 + clip.duration_s, abs=0.05)  # chime, pause, the clip
    played = sound_extent_s(evidence)  # chime to the clip's last sound, the silent pause inside
    assert program_s - 0.1 <= played <= program_s
    for dev in ("rtu1", "tcp1"):
        heard = spans(gw.sim, dev, t0)
        assert heard, f"{dev} was never audible"
        extent = heard[-1]["end"] - heard[0]["start"]
        assert played - SPAN_SLACK_S <= extent <= played + SPAN_SLACK_S, (dev, extent, played)
    if fmt == "mp3":
        rate = gw.cfg.audio_output.sample_rate
        assert (gw.engine.audio_dir / "decoded" / f"{clip.audio_id}-{rate}.wav").is_file()


async def test_emergency_forces_override_and_full_volume_then_restores_the_prior_state(gw: Gateway) -> None:
    rtu1 = gw.hardware.terminals["rtu1"]
    await rtu1.write_points({"mute": True, "volume": 30, "zone_2": True})  # a locally muted horn
    try:
        bid = await gw.engine.submit(request("emergency", targets={"devices": ["rtu1", "rtu2"]}), OPERATOR)
        await wait_for(lambda: gw.sim.state("rtu1")["physics"]["audible"])
        during = gw.sim.state("rtu1")
        assert during["coils"]["emergency_override"] and during["coils"]["amp_power"]
        assert during["holding"]["volume"] == 100 and during["holding"]["audio_source"] == 1
        assert during["input_registers"][4] == 100  # output level: full, mute bypassed
        record = await wait_state(gw.store, bid)
        assert record["state"] is BroadcastState.SUCCEEDED
        assert outcomes(record)["rtu1"] is TerminalOutcome.SUCCEEDED
        after = gw.sim.state("rtu1")
        assert after["coils"]["mute"] and not after["coils"]["emergency_override"]
        assert not after["coils"]["amp_power"] and after["coils"]["zone_2"] and not after["coils"]["zone_1"]
        assert after["holding"]["volume"] == 30
    finally:
        await rtu1.write_points({"mute": False, "volume": 50, "zone_2": False})


async def test_daily_respects_a_local_mute_and_says_the_muted_horn_did_not_play(gw: Gateway) -> None:
    rtu2 = gw.hardware.terminals["rtu2"]
    await rtu2.set_mute(True)
    try:
        bid = await gw.engine.submit(request(targets={"devices": ["rtu1", "rtu2"]}, volume=40), OPERATOR)
        record = await wait_state(gw.store, bid)
    finally:
        await rtu2.set_mute(False)
    # a targeted horn that did not play: the broadcast is not called succeeded, and says why
    assert record["state"] is BroadcastState.FAILED
    assert record["coverage"] == 0.5
    detail = {o["device_id"]: o for o in record["outcomes"]}
    assert detail["rtu1"]["outcome"] is TerminalOutcome.SUCCEEDED
    assert detail["rtu2"]["outcome"] is TerminalOutcome.FAILED and "muted" in detail["rtu2"]["reason"]
    assert "rtu2 failed (muted locally" in record["reason"]


async def test_a_whole_line_is_activated_with_unit_id_0_frames(gw: Gateway) -> None:
    arbiter = gw.hardware.arbiters["rs485"]
    before_sim = gw.sim.call("stats", line="rs485")["stats"]["broadcasts"]
    before = arbiter.stats.broadcasts
    bid = await gw.engine.submit(request(targets={"all": True}), OPERATOR)
    record = await wait_state(gw.store, bid)
    assert record["state"] is BroadcastState.SUCCEEDED
    assert outcomes(record) == {d: TerminalOutcome.SUCCEEDED for d in ("rtu1", "rtu2", "rtu3", "tcp1", "fm1")}
    # power+override (FC15), volume+source (FC16), zones (FC15): one frame each for the 3 terminals
    assert arbiter.stats.broadcasts - before == 3
    assert gw.sim.call("stats", line="rs485")["stats"]["broadcasts"] - before_sim == 3
    fm = gw.sim.state("fm1")
    assert fm["rds"] == {"PS": "EBC", "RT": "Test"} and not fm["tx"]  # keyed for it, off again after


async def test_a_dead_terminal_is_unreachable_while_the_others_play(gw: Gateway) -> None:
    arbiter = gw.hardware.arbiters["rs485"]
    gw.sim.fault("offline", device="rtu2")
    try:
        t0 = time.time()
        bid = await gw.engine.submit(request(targets={"all": True}), OPERATOR)
        record = await wait_state(gw.store, bid)
        # health polling still had it online: a horn that falls silent counts, so the broadcast failed
        assert record["state"] is BroadcastState.FAILED
        assert "rtu2 unreachable" in record["reason"]
        got = outcomes(record)
        assert got.pop("rtu2") is TerminalOutcome.UNREACHABLE
        assert set(got.values()) == {TerminalOutcome.SUCCEEDED}
        assert record["coverage"] == pytest.approx(4 / 5)
        reason = next(o["reason"] for o in record["outcomes"] if o["device_id"] == "rtu2")
        assert "no answer during the broadcast" in reason and "did not answer" in reason
        assert spans(gw.sim, "rtu1", t0) and spans(gw.sim, "rtu3", t0)
        # Once health polling reports it offline it is not read first (its timeouts would hold up
        # power-on for the whole line): the line still gets unit-id-0 frames, the read-back judges it.
        await wait_for(lambda: gw.registry.devices["rtu2"].online is False)
        frames = arbiter.stats.broadcasts
        record = await wait_state(gw.store, await gw.engine.submit(request(targets={"all": True}), OPERATOR))
        assert record["state"] is BroadcastState.SUCCEEDED and arbiter.stats.broadcasts - frames == 3
        rtu2 = next(o for o in record["outcomes"] if o["device_id"] == "rtu2")
        assert rtu2["outcome"] is TerminalOutcome.UNREACHABLE and "no answer" in rtu2["reason"]
        assert "offline before the broadcast" in record["reason"]  # known dead: it does not fail it
        assert [a["device_id"] for a in gw.store.pending_activations()] == ["rtu2"]  # could not be restored
        assert "rtu2" in gw.engine.releaser.pending()
    finally:
        gw.sim.fault("offline", device="rtu2", clear=True)
    # the releaser keeps trying: once it answers it is put in the safe state and its row cleared
    await wait_for(lambda: gw.store.pending_activations() == [])
    assert gw.engine.releaser.pending() == {}
    assert not gw.sim.state("rtu2")["coils"]["amp_power"]


# -- scheduling ----------------------------------------------------------------------------------------------


async def test_higher_priority_pre_empts_and_the_pre_empted_one_resumes_before_an_equal_later_one(
        gw: Gateway) -> None:
    daily = request(targets={"all": True}, text="请注意，这是每日广播。")
    d1 = await gw.engine.submit(daily, OPERATOR)
    await wait_for(lambda: gw.sim.state("tcp1")["physics"]["audible"])
    d2 = await gw.engine.submit(request(targets={"all": True}), OPERATOR)  # equal priority: waits
    await asyncio.sleep(0.3)
    assert gw.engine.current() == d1
    assert [q["id"] for q in gw.engine.queue_snapshot()] == [d1, d2]
    emergency = await gw.engine.submit(request("emergency", severity=1, source_level=3), OPERATOR)
    record = await wait_state(gw.store, d1, frozenset({BroadcastState.WAITING}))
    assert record["reason"] == f"pre-empted by {emergency}"
    for bid in (emergency, d1, d2):
        final = await wait_state(gw.store, bid)
        assert final["state"] is BroadcastState.SUCCEEDED, (bid == emergency, final["reason"])
    assert play_order(gw.events) == [d1, emergency, d1, d2]
    notes = [n["text"] for n in gw.store.get_broadcast(d1)["notes"]]
    assert any("pre-empted" in n for n in notes)
    assert gw.store.pending_activations() == []
    assert not gw.sim.state("rtu1")["coils"]["amp_power"]


async def test_a_pre_empted_broadcast_cancelled_before_it_replays_keeps_what_its_run_proved(
        gw: Gateway) -> None:
    t0 = time.time()
    text = "请注意，这是一条较长的每日广播，它会被紧急广播打断。"
    daily = await gw.engine.submit(request(targets={"devices": ["tcp1", "rtu1"]}, text=text), OPERATOR)
    await wait_for(lambda: gw.sim.state("tcp1")["physics"]["audible"])
    await asyncio.sleep(1.5)  # read back as playing
    emergency = await gw.engine.submit(request("emergency", severity=1, source_level=3,
                                               targets={"devices": ["rtu2"]}), OPERATOR)
    await wait_state(gw.store, daily, frozenset({BroadcastState.WAITING}))
    assert await gw.engine.cancel(daily, OPERATOR)
    record = await wait_state(gw.store, daily)
    assert record["state"] is BroadcastState.CANCELLED
    # played for a while, then never again: audible part of the time, not "pending" in a final record
    assert set(outcomes(record).values()) == {TerminalOutcome.PARTIAL}
    assert all(spans(gw.sim, d, t0) for d in ("tcp1", "rtu1"))
    assert any("before it could replay" in n["text"] for n in record["notes"])
    await wait_state(gw.store, emergency)


async def test_cancel_a_waiting_and_a_playing_broadcast(gw: Gateway) -> None:
    d1 = await gw.engine.submit(request(text="请注意，这是一条较长的测试广播，马上就会被取消。"), OPERATOR)
    d2 = await gw.engine.submit(request(), OPERATOR)
    await wait_for(lambda: gw.sim.state("tcp1")["physics"]["audible"])
    assert await gw.engine.cancel(d2, OPERATOR)
    assert (await wait_state(gw.store, d2))["state"] is BroadcastState.CANCELLED
    assert await gw.engine.cancel(d1, OPERATOR)
    record = gw.store.get_broadcast(d1)
    assert record["state"] is BroadcastState.CANCELLED and record["reason"] == "cancelled by duty-officer"
    assert gw.engine.current() is None
    await asyncio.sleep(0.5)  # the simulator's audio line notices silence
    assert not gw.sim.call("audible", device="tcp1")["audible_now"]
    assert not gw.sim.state("rtu1")["coils"]["amp_power"]
    assert d2 not in play_order(gw.events)
    assert not await gw.engine.cancel(d1, OPERATOR)  # already final


async def test_expiry_while_waiting_and_while_playing(gw: Gateway) -> None:
    now = datetime.now(UTC)
    long = request(text="请注意，这是一条过期测试广播，它会在播放途中过期。", repeat=3, gap_s=0.5,
                   expires_at=now + timedelta(seconds=4))
    d1 = await gw.engine.submit(long, OPERATOR)
    d2 = await gw.engine.submit(request(expires_at=now + timedelta(seconds=1.5)), OPERATOR)
    r2 = await wait_state(gw.store, d2)
    assert r2["state"] is BroadcastState.FAILED and r2["reason"] == "expired"
    r1 = await wait_state(gw.store, d1)
    assert r1["state"] is BroadcastState.FAILED and r1["reason"] == "expired"
    assert d2 not in play_order(gw.events)
    assert gw.engine.player.last_result.completed is False  # stopped mid-program, not played out
    start_later = request(start_at=now + timedelta(hours=1))
    d3 = await gw.engine.submit(start_later, OPERATOR)
    await asyncio.sleep(0.2)
    assert gw.store.get_broadcast(d3)["state"] is BroadcastState.WAITING and gw.engine.current() is None
    past = request(expires_at=now - timedelta(seconds=1), start_at=now - timedelta(seconds=5))
    r4 = await wait_state(gw.store, await gw.engine.submit(past, OPERATOR))
    assert r4["state"] is BroadcastState.FAILED and r4["reason"] == "expired"


# -- crash recovery ----------------------------------------------------------------------------------------


async def test_a_fresh_engine_restores_terminals_left_on_by_a_killed_one(gw: Gateway, speech: SpeechService,
                                                                       tmp_path: Path) -> None:
    """A graceful stop mid-play, then as after kill -9: activations journalled, terminals still on."""
    store, hw = gw.store, gw.hardware
    stopped = await gw.engine.submit(request(targets={"devices": ["tcp1"]}), OPERATOR)
    await wait_for(lambda: gw.sim.state("tcp1")["physics"]["audible"])
    await gw.engine.stop()
    record = store.get_broadcast(stopped)
    assert record["state"] is BroadcastState.WAITING and record["reason"] == "interrupted by shutdown"
    assert not gw.sim.state("tcp1")["coils"]["amp_power"] and store.pending_activations() == []
    store.add_broadcast("crashed", request().model_dump(mode="json", by_alias=True), OPERATOR,
                        BroadcastState.PLAYING, time.time())
    expired = request(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    store.add_broadcast("stale", expired.model_dump(mode="json", by_alias=True), OPERATOR,
                        BroadcastState.WAITING, time.time())
    store.set_outcome("stale", "rtu2", TerminalOutcome.PENDING)  # its run was under way at the crash
    prior = {"kind": "terminal", "points": {"amp_power": False, "emergency_override": False, "mute": False,
                                            "volume": 40, "audio_source": "line_in", "zone_1": False,
                                            "zone_2": True}}
    store.save_activation("crashed", "rtu1", prior)
    store.save_activation("crashed", "rtu3", {"garbage": 1})  # unreadable: safe state instead
    store.save_activation("crashed", "fm1", {"kind": "fm", "tx": False})
    on = {"amp_power": True, "emergency_override": True, "volume": 100, "zone_1": True, "zone_2": True}
    for dev in ("rtu1", "rtu3"):
        await hw.terminals[dev].write_points(on)
    await hw.transmitters["fm1"].set_tx(True)

    engine = BroadcastEngine(gw.cfg, hw, store, speech, AudioPlayer(SimLineSink(gw.sim.config.host,
                                                                              gw.sim.config.audio_port)),
                             gw.bus)
    await engine.start()
    try:
        s1, s3 = gw.sim.state("rtu1"), gw.sim.state("rtu3")
        assert s1["holding"]["volume"] == 40 and s1["coils"]["zone_2"] and not s1["coils"]["zone_1"]
        assert not s1["coils"]["amp_power"] and not s1["coils"]["emergency_override"]
        assert not s3["coils"]["amp_power"] and not s3["coils"]["emergency_override"]
        assert not s3["coils"]["zone_1"] and not s3["coils"]["zone_2"]
        assert not gw.sim.state("fm1")["tx"]
        stale = gw.store.get_broadcast("stale")
        assert stale["state"] is BroadcastState.FAILED and stale["reason"] == "interrupted by restart"
        # never judged: nothing is known of what it played — not "pending" in a final record
        assert outcomes(stale) == {"rtu2": TerminalOutcome.UNREACHABLE}
        assert "cut short by a restart" in stale["outcomes"][0]["reason"]
        for bid in ("crashed", stopped):  # still valid: replayed from the start, oldest first
            assert (await wait_state(store, bid))["state"] is BroadcastState.SUCCEEDED
        assert store.pending_activations() == []
        assert gw.sim.state("rtu1")["holding"]["volume"] == 40
    finally:
        await engine.stop()
        await hw.terminals["rtu1"].write_points({"volume": 50, "zone_2": False})


async def test_restore_pending_alone_leaves_nothing_journalled(gw: Gateway) -> None:
    await gw.engine.stop()
    gw.store.save_activation("x", "tcp1", {"kind": "terminal", "points": {"amp_power": False, "volume": 50}})
    await gw.hardware.terminals["tcp1"].write_points({"amp_power": True, "zone_1": True})
    releaser = Releaser(gw.hardware, gw.store)
    done = await releaser.start()
    await releaser.stop()
    assert done == {"tcp1": "restored"}
    assert gw.store.pending_activations() == []
    assert not gw.sim.state("tcp1")["coils"]["amp_power"]
    assert gw.sim.state("tcp1")["coils"]["zone_1"]  # the prior named no zones: left as they were


# -- scheduler ----------------------------------------------------------------------------------------------


async def test_cron_expressions_are_validated_with_clear_errors() -> None:
    validate_cron("0 7 * * 1-5")
    with pytest.raises(ValueError, match="expected 5 fields"):
        validate_cron("0 7 * *")
    with pytest.raises(ValueError, match="hour field is not valid"):
        validate_cron("0 25 * * *")


async def test_the_scheduler_submits_a_due_schedule_through_the_engine(gw: Gateway) -> None:
    now = datetime.now(UTC)
    to_next_minute = 60 - now.second - now.microsecond / 1e6
    offset = timedelta(seconds=to_next_minute - 0.4)  # the scheduler's clock is 0.4 s before a minute
    gw.cfg.schedules = []
    gw.store.add_schedule("every-minute", "* * * * *", request(text="定时测试。").model_dump(
        mode="json", by_alias=True, exclude_none=True))
    gw.store.add_schedule("broken", "0 24 * * *", {"class": "daily"})
    scheduler = Scheduler(gw.cfg, gw.store, gw.engine, clock=lambda: datetime.now(UTC) + offset)
    await scheduler.start()
    try:
        assert "broken" in scheduler.problems and "hour" in scheduler.problems["broken"]
        await wait_for(lambda: scheduler.fired, timeout=5)
    finally:
        await scheduler.stop()
    [(sid, bid)] = scheduler.fired
    assert sid == "every-minute"
    record = await wait_state(gw.store, bid)
    assert record["state"] is BroadcastState.SUCCEEDED
    assert record["actor"]["name"] == "schedule:every-minute" and record["actor"]["via"] == "schedule"
    [entry] = [s for s in scheduler.snapshot() if s["id"] == "every-minute"]
    assert datetime.fromisoformat(entry["next_at"]) > datetime.now(UTC) + offset  # next minute, not replayed
