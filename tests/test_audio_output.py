"""Audio output: programs played into the real simulator's audio line, WAV files and ALSA's null device."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from simkit import SimConfig, SimProcess, running_simulator, write_sim_config

from controller.broadcast.model import Tone
from controller.broadcast.program import Program
from controller.speech.tones import chime
from controller.speech.tts import SpeechService
from drivers.audio_output import (
    LEAD_S,
    AlsaSink,
    AudioOutputError,
    AudioPlayer,
    SimLineSink,
    WavSink,
    prune_evidence,
)

RATE = 16000
CHUNK_BYTES = 640  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def audio_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One RTU and one TCP terminal; physics 20× faster so amplifiers warm up in 0.1 s."""
    config = write_sim_config(tmp_path_factory.mktemp("audio-sim"), rtu_terminals=1, tcp_terminals=1,
                              fm=False, time_scale=20)
    with running_simulator(config) as proc:
        yield proc


def frames(path: Path | str) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.readframes(wav.getnframes())


async def switch_on(config: SimConfig, device: str, on: bool = True) -> None:
    """Raw Modbus writes, as any vendor tool would: amplifier (coil 0) and zone 1 relay (coil 8)."""
    client = AsyncModbusTcpClient(config.host, port=config.tcp_ports[device])
    await client.connect()
    try:
        for coil in (0, 8):
            reply = await client.write_coil(coil, on, device_id=1)
            assert not reply.isError()
    finally:
        client.close()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def new_recording(sim: SimProcess, before: int) -> dict[str, Any]:
    recordings = sim.call("audio")["recordings"]
    assert len(recordings) == before + 1
    return dict(recordings[-1])


async def test_program_heard_on_the_simulated_terminal(audio_sim: SimProcess, tmp_path: Path):
    config = audio_sim.config
    await switch_on(config, "tcp1")
    await wait_for(lambda: audio_sim.state("tcp1")["status"]["amp_ready"])
    before = len(audio_sim.call("audio")["recordings"])
    speech = SpeechService(tmp_path / "speech")
    try:
        text = "暴雨红色预警，请注意防范。"
        program = Program(RATE, tone=Tone.CHIME, voice=lambda: speech.synthesize(text, "zh"))
        player = AudioPlayer(SimLineSink(config.host, config.audio_port))
        result = await player.play(program.chunks(), RATE, evidence_path=tmp_path / "evidence.wav")
    finally:
        await speech.stop()
        await switch_on(config, "tcp1", False)
    assert result.completed and result.first_sound_at is not None
    assert program.duration_s is not None and result.played_s == pytest.approx(program.duration_s)
    await wait_for(lambda: audio_sim.call("audio")["recordings"][-1]["ended"] is not None)
    rec = new_recording(audio_sim, before)

    # the simulator recorded exactly what the player kept as evidence
    assert frames(rec["file"]) == frames(tmp_path / "evidence.wav")
    assert rec["seconds"] == pytest.approx(program.duration_s, abs=0.021)

    # heard where the layout says: the chime from the start, then only within the speech
    spans = [(s["start"] - rec["started"], s["end"] - rec["started"])
             for s in audio_sim.call("audible", device="tcp1")["spans"] if s["end"] > rec["started"]]
    tone, _pause, speech_seg = program.layout
    assert spans[0][0] == pytest.approx(tone.start_s, abs=0.1)
    assert spans[0][1] == pytest.approx(tone.end_s, abs=0.1)
    later = spans[1:]
    assert later, "the speech was not heard"
    assert later[0][0] == pytest.approx(speech_seg.start_s, abs=0.3)
    assert all(speech_seg.start_s - 0.1 <= a and b <= speech_seg.end_s + 0.1 for a, b in later)
    assert sum(b - a for a, b in later) > 0.5 * speech_seg.duration_s
    # the terminal that was never switched on heard nothing
    assert audio_sim.call("audible", device="rtu1")["spans"] == []


async def test_cancel_through_the_simulator_stops_within_the_lead(audio_sim: SimProcess, tmp_path: Path):
    config = audio_sim.config
    before = len(audio_sim.call("audio")["recordings"])
    player = AudioPlayer(SimLineSink(config.host, config.audio_port))
    task = asyncio.create_task(player.play(Program(RATE, tone=Tone.ALL_CLEAR).chunks(), RATE,
                                           evidence_path=tmp_path / "cut.wav"))
    await asyncio.sleep(0.6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = player.last_result
    assert result is not None and not result.completed
    assert 0.3 < result.played_s < 5
    await wait_for(lambda: audio_sim.call("audio")["recordings"][-1]["ended"] is not None)
    rec = new_recording(audio_sim, before)
    assert frames(rec["file"]) == frames(tmp_path / "cut.wav")  # all that was written, nothing more


class CountingSink(WavSink):
    """A real WAV sink that also notes how much was written after the test cancelled the player."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.written = 0
        self.after_cancel: int | None = None
        self.aborted: bool | None = None

    async def write(self, pcm: bytes) -> None:
        await super().write(pcm)
        self.written += len(pcm)
        if self.after_cancel is not None:
            self.after_cancel += len(pcm)

    async def close(self, *, abort: bool = False) -> None:
        self.aborted = abort
        await super().close(abort=abort)


async def test_cancel_stops_writing_at_once(tmp_path: Path):
    sink = CountingSink(tmp_path / "out")
    player = AudioPlayer(sink)
    started = time.monotonic()
    task = asyncio.create_task(player.play(Program(RATE, tone=Tone.ALL_CLEAR).chunks(), RATE,
                                           evidence_path=tmp_path / "evidence.wav"))
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    sink.after_cancel = 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.after_cancel <= CHUNK_BYTES  # at most the chunk already in flight
    assert sink.aborted is True
    # never more than the lead (plus one chunk) ahead of the clock
    assert sink.written / 2 / RATE <= elapsed + LEAD_S + CHUNK_BYTES / 2 / RATE
    assert player.last_result is not None and not player.last_result.completed
    assert player.last_result.played_s == pytest.approx(sink.written / 2 / RATE)
    assert frames(tmp_path / "evidence.wav") == frames(sink.last_path)


async def test_wav_sink_writes_one_valid_file_per_program(tmp_path: Path):
    sink = WavSink(tmp_path / "programs")
    player = AudioPlayer(sink, time_scale=50)
    for _ in range(2):
        program = Program(RATE, tone=chime())
        result = await player.play(program.chunks(), RATE)
        assert result.completed and result.played_s == pytest.approx(1.5)
        assert sink.last_path is not None
        with wave.open(str(sink.last_path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
            assert wav.getnframes() == round(1.5 * RATE)
    assert len(list((tmp_path / "programs").glob("*.wav"))) == 2


async def silence(seconds: float) -> AsyncIterator[bytes]:
    for _ in range(round(seconds / 0.02)):
        yield bytes(CHUNK_BYTES)


async def test_silent_stream_has_no_first_sound(tmp_path: Path):
    result = await AudioPlayer(WavSink(tmp_path), time_scale=20).play(silence(0.4), RATE)
    assert result.completed and result.first_sound_at is None and result.played_s == pytest.approx(0.4)


@pytest.mark.skipif(shutil.which("aplay") is None, reason="aplay (Debian alsa-utils) is not installed")
async def test_alsa_sink_plays_to_the_null_device(tmp_path: Path):
    player = AudioPlayer(AlsaSink("null"))
    result = await player.play(Program(RATE, tone=chime()).chunks(), RATE, evidence_path=tmp_path / "e.wav")
    assert result.completed and result.played_s == pytest.approx(1.5)
    assert len(frames(tmp_path / "e.wav")) == round(1.5 * RATE) * 2


@pytest.mark.skipif(shutil.which("aplay") is None, reason="aplay (Debian alsa-utils) is not installed")
async def test_alsa_sink_reports_a_bad_device():
    sink = AlsaSink("no-such-card")
    await sink.open(RATE)
    with pytest.raises(AudioOutputError, match="no-such-card"):
        for _ in range(100):
            await sink.write(bytes(CHUNK_BYTES))
            await asyncio.sleep(0.02)
    await sink.close(abort=True)


async def test_alsa_sink_without_aplay_says_what_to_install():
    with pytest.raises(AudioOutputError, match="alsa-utils"):
        await AlsaSink(aplay="/nonexistent/aplay").open(RATE)


async def test_sim_line_unreachable_is_a_clear_error():
    with pytest.raises(AudioOutputError, match="cannot connect"):
        await SimLineSink("127.0.0.1", 9).open(RATE)


async def test_sim_line_refusal_is_reported(audio_sim: SimProcess):
    sink = SimLineSink(audio_sim.config.host, audio_sim.config.audio_port)
    await sink.open(4000)  # the line takes 8000..48000 Hz
    with pytest.raises(AudioOutputError, match="rate"):
        for _ in range(200):
            await sink.write(bytes(CHUNK_BYTES))
            await asyncio.sleep(0.01)
    await sink.close(abort=True)


def test_prune_evidence_keeps_recent_files(tmp_path: Path):
    now = time.time()
    old, recent = tmp_path / "old.wav", tmp_path / "recent.wav"
    for path, age_days in ((old, 91), (recent, 89)):
        path.write_bytes(b"RIFF")
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    (tmp_path / "note.txt").write_text("not evidence")
    assert prune_evidence(tmp_path, 90, now=now) == [old]
    assert recent.exists() and (tmp_path / "note.txt").exists()
    assert prune_evidence(tmp_path / "missing", 90) == []
