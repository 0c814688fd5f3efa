"""Broadcast programs: tone first and at once, speech when ready, repeats, layout, resampling."""

from __future__ import annotations

import array
import asyncio
import io
import math
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tones import goertzel_power

from controller.broadcast.model import BroadcastRequest, Tone
from controller.broadcast.program import (
    MAX_UPLOAD_SECONDS,
    Program,
    build_program,
    clip_output_samples,
    decoded_mp3,
    store_uploaded_audio,
    uploaded_audio,
    wav_output_samples,
    wav_pcm,
)
from controller.speech.tones import chime
from controller.speech.tts import SpeechError, SpeechService, TextTooLong
from drivers.audio_output import has_sound

RATE = 16000
CHUNK = 320  # 20 ms


def write_wav(path: Path, *, rate: int = 22050, seconds: float = 1.0, hz: float = 1000.0, channels: int = 1,
              width: int = 2, level: float = 0.5) -> Path:
    """A sine WAV in any PCM layout (the shapes uploaded audio comes in)."""
    frames = bytearray()
    for i in range(round(rate * seconds)):
        value = level * math.sin(2 * math.pi * hz * i / rate)
        if width == 1:
            sample = bytes([round(128 + 127 * value)])
        else:
            sample = round(value * (2 ** (8 * width - 1) - 1)).to_bytes(width, "little", signed=True)
        frames += sample * channels
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path


def mp3_bytes(*, rate: int = 16000, seconds: float = 1.0, hz: float = 1000.0, channels: int = 1,
              level: float = 0.5) -> bytes:
    """A sine encoded as MP3 by soundfile (libsndfile + LAME), as the national platform sends them."""
    t = np.arange(round(rate * seconds)) / rate
    mono = (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([mono] * channels, axis=1), rate, format="MP3")
    return buf.getvalue()


async def collect(program: Program) -> list[bytes]:
    return [chunk async for chunk in program.chunks()]


@pytest.fixture
async def speech(tmp_path: Path) -> AsyncIterator[SpeechService]:
    service = SpeechService(tmp_path / "cache")
    yield service
    await service.stop()


async def test_tone_starts_before_speech_is_ready_and_the_wait_is_counted(tmp_path: Path):
    voice_file = write_wav(tmp_path / "voice.wav", seconds=1.0)
    release = asyncio.Event()
    asked = asyncio.Event()

    async def slow_voice() -> Path:
        asked.set()
        await release.wait()
        return voice_file

    program = Program(RATE, tone=Tone.CHIME, voice=slow_voice)
    chunks = program.chunks()
    first = await anext(chunks)
    assert has_sound(first)  # the chime, before the voice exists
    assert program.duration_s is None
    received = [first]
    tone_and_pause = round((1.5 + 0.5) * RATE / CHUNK)
    while len(received) < tone_and_pause + 10:  # 10 chunks (200 ms) into the wait
        received.append(await anext(chunks))
    assert asked.is_set() and not release.is_set()
    assert not any(has_sound(c) for c in received[tone_and_pause:])
    release.set()
    received += [c async for c in chunks]
    assert program.waited_s >= 0.2
    kinds = [s.kind for s in program.layout]
    assert kinds == ["tone", "pause", "wait", "speech"]
    assert program.layout[2].duration_s == pytest.approx(program.waited_s)
    assert sum(len(c) for c in received) / 2 / RATE == pytest.approx(program.duration_s)
    assert program.duration_s == pytest.approx(1.5 + 0.5 + program.waited_s + 1.0)


async def test_layout_of_repeats_with_gaps(tmp_path: Path):
    voice = write_wav(tmp_path / "v.wav", seconds=2.0)
    program = Program(RATE, tone=Tone.CHIME, voice=voice, repeat=3, gap_s=1.0)
    assert program.duration_s == pytest.approx(3 * (1.5 + 0.5 + 2.0) + 2 * 1.0)  # known before playing
    layout = [(s.kind, round(s.start_s, 3), round(s.end_s, 3), s.repeat) for s in program.layout]
    assert layout[:5] == [("tone", 0.0, 1.5, 0), ("pause", 1.5, 2.0, 0), ("speech", 2.0, 4.0, 0),
                          ("gap", 4.0, 5.0, 1), ("tone", 5.0, 6.5, 1)]
    assert layout[-1] == ("speech", 12.0, 14.0, 2)
    chunks = await collect(program)
    assert {len(c) for c in chunks[:-1]} == {2 * CHUNK}
    pcm = array.array("h", b"".join(chunks))
    assert len(pcm) / RATE == pytest.approx(program.duration_s)
    for seg in program.layout:  # sound exactly where the layout says
        part = pcm[round(seg.start_s * RATE) + 160:round(seg.end_s * RATE) - 160]
        assert has_sound(part.tobytes()) == (seg.kind in ("tone", "speech")), seg
    assert program.waited_s == 0


async def test_tone_only_and_speech_only_programs(tmp_path: Path):
    tone_only = Program(RATE, tone=Tone.SIREN)
    assert [s.kind for s in tone_only.layout] == ["tone"]
    assert sum(map(len, await collect(tone_only))) == 12 * RATE * 2
    voice = write_wav(tmp_path / "v.wav", seconds=0.5)
    speech_only = Program(RATE, tone=Tone.NONE, voice=voice, repeat=2, gap_s=0.25)
    assert [s.kind for s in speech_only.layout] == ["speech", "gap", "speech"]
    assert sum(map(len, await collect(speech_only))) / 2 / RATE == pytest.approx(1.25)


async def test_a_program_plays_once(tmp_path: Path):
    program = Program(RATE, tone=chime())
    await collect(program)
    with pytest.raises(RuntimeError, match="once"):
        await collect(program)


async def test_speech_failure_surfaces_after_the_tone():
    async def broken() -> Path:
        raise SpeechError("speech synthesis failed twice, giving up")

    program = Program(RATE, tone=Tone.CHIME, voice=broken)
    got = 0
    with pytest.raises(SpeechError):
        async for chunk in program.chunks():
            got += len(chunk)
    assert got >= 2 * round(2.0 * RATE)  # the alert signal went out regardless


async def test_stopping_early_cancels_the_synthesis():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless() -> Path:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    chunks = Program(RATE, tone=Tone.CHIME, voice=endless).chunks()
    await anext(chunks)
    await asyncio.sleep(0)
    assert started.is_set()
    await chunks.aclose()
    assert cancelled.is_set()


@pytest.mark.parametrize(("rate", "channels", "width"), [
    (22050, 1, 2), (44100, 2, 2), (48000, 2, 3), (8000, 1, 1), (16000, 1, 4), (32000, 1, 2),
])
def test_wav_input_is_resampled_to_the_output_rate(tmp_path: Path, rate: int, channels: int, width: int):
    path = write_wav(tmp_path / "in.wav", rate=rate, seconds=0.8, hz=1000, channels=channels, width=width)
    pcm = array.array("h", b"".join(wav_pcm(path, RATE, CHUNK)))
    assert len(pcm) == wav_output_samples(path, RATE) == round(0.8 * RATE)
    block = pcm[1600:9600]
    assert goertzel_power(block, 1000, RATE) > 100 * goertzel_power(block, 1500, RATE)
    peak = max(abs(s) for s in block)
    assert peak == pytest.approx(0.5 * 32767, rel=0.03)  # level kept (stereo averaged, not summed)


async def test_real_speech_program(speech: SpeechService):
    request = BroadcastRequest.model_validate({
        "class": "emergency", "severity": 3, "targets": {"all": True},
        "text": "暴雨黄色预警。请注意防范。", "repeat": 2, "gap_s": 0.5})
    program = build_program(request, speech, RATE)
    assert program.signal.name == "chime"
    chunks = program.chunks()
    first = await anext(chunks)
    assert has_sound(first)
    rest = [c async for c in chunks]
    assert program.duration_s is not None
    assert (len(first) + sum(map(len, rest))) / 2 / RATE == pytest.approx(program.duration_s)
    speech_segments = [s for s in program.layout if s.kind == "speech"]
    assert len(speech_segments) == 2 and speech_segments[0].duration_s > 2


def test_build_program_refuses_bad_input_before_playing(tmp_path: Path):
    service = SpeechService(tmp_path / "cache", max_chars=10)
    request = BroadcastRequest.model_validate({"class": "daily", "targets": {"all": True},
                                               "text": "这是一条超过十个字的日常广播通知。"})
    with pytest.raises(TextTooLong):
        build_program(request, service, RATE)
    clip = BroadcastRequest.model_validate({"class": "daily", "targets": {"all": True},
                                            "audio_id": "morning"})
    with pytest.raises(ValueError, match="no audio directory"):
        build_program(clip, service, RATE)
    with pytest.raises(ValueError, match="no uploaded audio"):
        build_program(clip, service, RATE, audio_dir=tmp_path)
    write_wav(tmp_path / "morning.wav", seconds=0.3)
    program = build_program(clip, service, RATE, audio_dir=tmp_path)
    assert program.duration_s == pytest.approx(1.5 + 0.5 + 0.3)
    for bad in ("../secret", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a valid audio id"):
            uploaded_audio(bad, tmp_path)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=900), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=99), st.integers(min_value=0, max_value=255)), max_size=4))
def test_an_upload_is_refused_or_holds_what_it_claims(tmp_path_factory: pytest.TempPathFactory, cut: int,
                                                      flips: list[tuple[int, int]]):
    """Any damage to a WAV (cut short, header bytes changed) is a clear ValueError, never a crash,
    and a clip that is accepted plays exactly the duration it reports."""
    data = bytearray(write_wav(tmp_path_factory.mktemp("wav") / "a.wav", rate=8000, seconds=0.1).read_bytes())
    for at, value in flips:
        data[at] = value
    data = data[:len(data) - cut]
    audio_dir = tmp_path_factory.mktemp("audio")
    try:
        clip = store_uploaded_audio(bytes(data), audio_dir)
    except ValueError:
        return
    stored = audio_dir / f"{clip.audio_id}.wav"
    with wave.open(str(stored), "rb") as wav:
        held = len(wav.readframes(wav.getnframes())) // (wav.getnchannels() * wav.getsampwidth())
    assert clip.duration_s == round(held / clip.sample_rate, 3)



# -- MP3 recordings ------------------------------------------------------------------------------------------


def _id3(data: bytes) -> bytes:
    """``data`` behind an ID3v2.4 tag (a title frame), as many MP3 files begin."""
    frame = b"TIT2" + (6).to_bytes(4, "big") + b"\x00\x00" + b"\x03Alert"
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + syncsafe + frame + data


def test_an_mp3_upload_is_told_by_its_content_and_checked_without_decoding(tmp_path: Path):
    data = mp3_bytes(rate=22050, seconds=2.0, channels=2)
    clip = store_uploaded_audio(data, tmp_path)
    assert (clip.format, clip.sample_rate, clip.channels, clip.bytes) == ("mp3", 22050, 2, len(data))
    assert clip.duration_s == pytest.approx(2.0, abs=0.05)
    stored = tmp_path / f"{clip.audio_id}.mp3"
    assert stored.read_bytes() == data and uploaded_audio(clip.audio_id, tmp_path) == stored
    assert store_uploaded_audio(data, tmp_path).audio_id == clip.audio_id  # same bytes, same id
    tagged = store_uploaded_audio(_id3(data), tmp_path)  # an ID3 tag first: still an MP3
    assert tagged.format == "mp3" and tagged.duration_s == clip.duration_s
    wav = write_wav(tmp_path / "named.mp3", rate=8000, seconds=0.5)  # the name says nothing
    as_wav = store_uploaded_audio(wav.read_bytes(), tmp_path / "w")
    assert as_wav.format == "wav" and (tmp_path / "w" / f"{as_wav.audio_id}.wav").is_file()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d[:len(d) // 2], "truncated MP3: its header announces 4.0"),  # cut mid-upload
    (lambda d: d[:-600], "truncated MP3"),
    (lambda d: d[:300], "MP3 file could not be read"),
    (lambda d: b"ID3" + bytes(2000), "MP3 file could not be read"),
    (lambda d: b"\xff\xfb" + bytes(range(256)) * 8, "MP3 file could not be read"),
    (lambda d: b"<script>not audio</script>", "not a WAV or MP3 file"),
    (lambda d: b"OggS" + d, "not a WAV or MP3 file"),
])
def test_a_damaged_or_foreign_mp3_is_refused_with_a_clear_error(tmp_path: Path, damage, message: str):
    data = damage(mp3_bytes(rate=8000, seconds=4.0))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        store_uploaded_audio(data, tmp_path)
    assert not list(tmp_path.glob("clip-*")), "nothing refused is stored"


def test_an_mp3_over_the_length_limit_is_refused(tmp_path: Path):
    data = mp3_bytes(rate=8000, seconds=MAX_UPLOAD_SECONDS + 1, level=0.0)
    with pytest.raises(ValueError, match=r"recording is 601\.\d s long; 0-600 s accepted"):
        store_uploaded_audio(data, tmp_path)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 1), (22050, 2), (44100, 2), (48000, 1)])
def test_an_mp3_is_decoded_to_the_output_rate_at_its_header_length(tmp_path: Path, rate: int, channels: int):
    clip = store_uploaded_audio(mp3_bytes(rate=rate, seconds=0.8, channels=channels), tmp_path)
    path = uploaded_audio(clip.audio_id, tmp_path)
    wav = decoded_mp3(path, RATE)
    assert wav == tmp_path / "decoded" / f"{clip.audio_id}-{RATE}.wav"
    assert not list(wav.parent.glob("*.tmp")), "written under a temporary name, then renamed"
    pcm = array.array("h", b"".join(wav_pcm(wav, RATE, CHUNK)))
    assert len(pcm) == clip_output_samples(path, RATE) == round(clip.duration_s * RATE)
    block = pcm[1600:9600]
    assert goertzel_power(block, 1000, RATE) > 100 * goertzel_power(block, 1500, RATE)
    rms = math.sqrt(sum(s * s for s in block) / len(block))
    assert rms == pytest.approx(0.5 * 32767 / math.sqrt(2), rel=0.1)  # stereo averaged, not summed
    mtime = wav.stat().st_mtime_ns
    assert decoded_mp3(path, RATE) == wav and wav.stat().st_mtime_ns == mtime  # decoded once, then cached


async def test_a_long_mp3_is_decoded_off_the_event_loop_while_the_tone_plays(tmp_path: Path):
    """A 5-minute MP3: the program's length is known before decoding, the tone's first chunk comes
    before the decoded WAV exists, the event loop keeps turning while it is decoded, and the words
    follow the pause without any wait."""
    clip = store_uploaded_audio(mp3_bytes(rate=8000, seconds=300.0, hz=440), tmp_path)
    request = BroadcastRequest.model_validate({"class": "daily", "targets": {"all": True},
                                               "audio_id": clip.audio_id})
    program = build_program(request, SpeechService(tmp_path / "cache"), RATE, audio_dir=tmp_path)
    decoded = tmp_path / "decoded" / f"{clip.audio_id}-{RATE}.wav"
    assert program.duration_s == pytest.approx(1.5 + 0.5 + clip.duration_s, abs=1e-3)  # from the header
    assert [s.kind for s in program.layout] == ["tone", "pause", "speech"]
    chunks = program.chunks()
    first = await anext(chunks)
    assert has_sound(first) and not decoded.exists()
    turns, started = 0, time.monotonic()
    while not decoded.exists():  # the decode runs in a worker thread: the loop keeps turning
        await asyncio.sleep(0.005)
        turns += 1
        assert time.monotonic() - started < 30, "decode never finished"
    assert turns >= 3, f"the event loop turned only {turns} times while a 5-minute MP3 was decoded"
    received = [first] + [c async for c in chunks]
    pcm = b"".join(received)
    assert len(pcm) / 2 / RATE == pytest.approx(program.duration_s)
    assert program.waited_s == 0 and [s.kind for s in program.layout] == ["tone", "pause", "speech"]
    speech = program.layout[-1]
    for at in (speech.start_s + 0.1, speech.start_s + 150, speech.end_s - 0.2):  # audible throughout
        i = 2 * round(at * RATE)
        assert has_sound(pcm[i:i + 2 * CHUNK]), at
    assert program.repetitions() == [(0.0, pytest.approx(program.duration_s))]


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=3000), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=799), st.integers(min_value=0, max_value=255)), max_size=4))
def test_an_mp3_upload_is_refused_or_plays_what_it_claims(tmp_path_factory: pytest.TempPathFactory, cut: int,
                                                         flips: list[tuple[int, int]]):
    """Any damage to an MP3 (cut short, header or frame bytes changed) is a clear ValueError, never
    a crash, and a clip that is accepted decodes to exactly the duration it reports."""
    data = bytearray(_MP3)
    for at, value in flips:
        data[at] = value
    data = data[:len(data) - cut]
    audio_dir = tmp_path_factory.mktemp("audio")
    try:
        clip = store_uploaded_audio(bytes(data), audio_dir)
    except ValueError:
        return
    path = uploaded_audio(clip.audio_id, audio_dir)
    expected = clip_output_samples(path, RATE)
    assert expected == pytest.approx(clip.duration_s * RATE, abs=RATE * 0.0005 + 1)  # duration_s: 1 ms
    with wave.open(str(decoded_mp3(path, RATE) if clip.format == "mp3" else path), "rb") as wav:
        assert (wav.getnframes() if clip.format == "mp3" else wav_output_samples(path, RATE)) == expected


_MP3 = mp3_bytes(rate=8000, seconds=0.5)
