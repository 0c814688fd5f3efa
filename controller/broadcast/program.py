"""A broadcast program: attention tone, then speech (or uploaded audio), repeated with gaps.

The program is the PCM the gateway's line-out plays, as an async stream of fixed-size chunks
(s16le mono at the output rate). DESIGN §3 wants an alert signal within 3 s of a trigger whatever
happens, so the tone starts with the very first chunk while speech is synthesised concurrently;
only if the speech is still not ready when the tone (and the short pause after it) has played is
silence inserted, and that wait is counted. Speech arrives as a 22050 Hz WAV and uploaded audio as
any PCM WAV; both are resampled to the output rate on the fly (linear interpolation: plenty for
horn loudspeakers, which stop well below the 8 kHz Nyquist limit of 16 kHz output). An uploaded
MP3 is decoded (soundfile, in a worker thread) into a cached WAV at the output rate as part of the
voice preparation, so it too is made ready while the tone plays.

``layout`` lists the segments (tone 0–1.5 s, pause, speech 2.0–6.7 s, gap, …) and ``duration_s``
the total as soon as the speech length is known, so the engine and the tests can set what was
heard against the plan.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import io
import math
import os
import re
import struct
import sys
import tempfile
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf

from controller.broadcast.model import AUDIO_ID as AUDIO_ID_PATTERN
from controller.broadcast.model import BroadcastRequest, Tone
from controller.core.errors import Invalid
from controller.core.lifecycle import cancel_and_wait
from controller.speech.tones import CHUNK_S, Signal, pcm_bytes, signal_for

if TYPE_CHECKING:
    from controller.speech.tts import SpeechService

PAUSE_S = 0.5
"""Silence between the attention tone and the words, so the first syllable is not masked."""
READ_FRAMES = 4096
AUDIO_ID = re.compile(AUDIO_ID_PATTERN)

SegmentKind = Literal["tone", "pause", "wait", "speech", "gap"]
VoiceSource = Path | Callable[[], Awaitable[Path]] | None
"""A stored clip (uploaded audio: ``.wav``, or ``.mp3`` decoded while the tone plays), a coroutine
function that makes a WAV (speech), or nothing."""
ClipFormat = Literal["wav", "mp3"]
DECODED_DIR = "decoded"
"""Under the audio directory: MP3 clips decoded to PCM WAV, ``<clip>-<rate>.wav``."""
DECODE_BLOCK_S = 5
"""Decode an MP3 this many seconds at a time (memory stays small for a 10-minute clip)."""


@dataclass(frozen=True)
class Segment:
    """One part of a program, in seconds from its first sample; ``repeat`` counts from 0."""

    kind: SegmentKind
    start_s: float
    end_s: float
    repeat: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Program:
    """Tone + voice, ``repeat`` times with ``gap_s`` between; iterate :meth:`chunks` once."""

    def __init__(self, sample_rate: int, *, tone: Tone | Signal = Tone.CHIME, voice: VoiceSource = None,
                 repeat: int = 1, gap_s: float = 3.0, pause_s: float = PAUSE_S,
                 chunk_s: float = CHUNK_S) -> None:
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        self.sample_rate = sample_rate
        self.signal = tone if isinstance(tone, Signal) else signal_for(tone)
        self.voice = voice
        self.repeat = repeat
        self.chunk_samples = max(1, round(sample_rate * chunk_s))
        self._tone_n = self.signal.samples(sample_rate)
        self._gap_n = round(gap_s * sample_rate)
        self._pause_n = round(pause_s * sample_rate) if voice is not None and self._tone_n else 0
        self._wait_n = 0
        self._voice_n: int | None = None if voice is not None else 0
        if isinstance(voice, Path):  # an MP3's length comes from its header: known before decoding
            self._voice_n = clip_output_samples(voice, sample_rate)
        self._started = False

    # -- what the program looks like --------------------------------------------------------------

    @property
    def waited_s(self) -> float:
        """Silence inserted because speech was not ready when the tone ended."""
        return self._wait_n / self.sample_rate

    @property
    def duration_s(self) -> float | None:
        """Total length, once the speech length is known (None before)."""
        if self._voice_n is None:
            return None
        return self._segments()[-1].end_s if self._segments() else 0.0

    @property
    def layout(self) -> list[Segment]:
        """Every segment known so far; the whole program once the speech length is known."""
        return self._segments()

    def repetitions(self) -> list[tuple[float, float]]:
        """Each repetition's (start, end) in program seconds — attention tone to last word, without
        the gaps between repetitions — as far as the layout is known (the outcome rule judges
        terminals per complete repetition: controller/broadcast/evidence.py)."""
        spans: dict[int, tuple[float, float]] = {}
        for seg in self._segments():
            if seg.kind == "gap":
                continue
            a, b = spans.get(seg.repeat, (seg.start_s, seg.end_s))
            spans[seg.repeat] = (min(a, seg.start_s), max(b, seg.end_s))
        complete = len(spans) if self._voice_n is not None else max(0, len(spans) - 1)
        return [spans[r] for r in sorted(spans)[:complete]]

    def _segments(self) -> list[Segment]:
        out: list[Segment] = []
        pos = 0
        rate = self.sample_rate

        def add(kind: SegmentKind, n: int, rep: int) -> None:
            nonlocal pos
            if n > 0:
                out.append(Segment(kind, pos / rate, (pos + n) / rate, rep))
                pos += n

        for rep in range(self.repeat):
            add("gap", self._gap_n if rep else 0, rep)
            add("tone", self._tone_n, rep)
            if self.voice is None:
                continue
            add("pause", self._pause_n, rep)
            add("wait", self._wait_n if rep == 0 else 0, rep)
            if self._voice_n is None:
                break
            add("speech", self._voice_n, rep)
        return out

    # -- the PCM ------------------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """s16le mono chunks of ``chunk_samples`` (the last may be shorter). The tone comes first,
        at once; speech is prepared meanwhile. Raises the speech error if synthesis fails."""
        if self._started:
            raise RuntimeError("a program plays once; build a new one to play it again")
        self._started = True
        task = self._start_voice()
        size = 2 * self.chunk_samples
        pending = bytearray()
        silence = bytes(size)
        try:
            for rep in range(self.repeat):
                parts: list[Iterator[bytes]] = []
                if rep:
                    parts.append(_silence(self._gap_n, self.chunk_samples))
                parts.append(self.signal.pcm(self.sample_rate, self.chunk_samples / self.sample_rate))
                if self.voice is not None:
                    parts.append(_silence(self._pause_n, self.chunk_samples))
                for part in parts:
                    for pcm in part:
                        pending += pcm
                        while len(pending) >= size:
                            yield bytes(pending[:size])
                            del pending[:size]
                if self.voice is None:
                    continue
                assert task is not None
                while not task.done():  # the tone is over and the words are not ready: hold the line
                    await asyncio.wait({task}, timeout=self.chunk_samples / self.sample_rate)
                    if not task.done():
                        self._wait_n += self.chunk_samples
                        pending += silence
                        yield bytes(pending[:size])
                        del pending[:size]
                path = task.result()
                for pcm in wav_pcm(path, self.sample_rate, self.chunk_samples):
                    pending += pcm
                    while len(pending) >= size:
                        yield bytes(pending[:size])
                        del pending[:size]
            if pending:
                yield bytes(pending)
        finally:
            if task is not None and not task.done():
                await cancel_and_wait(task)

    def _start_voice(self) -> asyncio.Task[Path] | None:
        """Begin preparing the voice now, concurrently with the tone."""
        voice = self.voice
        if voice is None:
            return None

        async def prepare() -> Path:
            if isinstance(voice, Path):
                path = voice
                if voice.suffix == ".mp3":  # decoding takes a while: off the event loop
                    path = await asyncio.to_thread(decoded_mp3, voice, self.sample_rate)
            else:
                path = await voice()
            self._voice_n = wav_output_samples(path, self.sample_rate)
            return path

        return asyncio.create_task(prepare(), name="program voice")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()


def _silence(samples: int, chunk: int) -> Iterator[bytes]:
    block = bytes(2 * chunk)
    for start in range(0, samples, chunk):
        yield block[: 2 * min(chunk, samples - start)]


# -- WAV input ----------------------------------------------------------------------------------------


def wav_output_samples(path: Path, out_rate: int) -> int:
    """How many samples ``path`` becomes at ``out_rate`` (what :func:`wav_pcm` will yield)."""
    with wave.open(str(path), "rb") as wav:
        return round(wav.getnframes() * out_rate / wav.getframerate())


def wav_pcm(path: Path, out_rate: int, chunk_samples: int = 320) -> Iterator[bytes]:
    """A PCM WAV file (8/16/24/32-bit, mono or stereo, any rate) as s16le mono at ``out_rate``,
    read and resampled block by block."""
    with wave.open(str(path), "rb") as wav:
        if wav.getcomptype() != "NONE":
            raise ValueError(f"{path}: only uncompressed PCM WAV can be played")
        n_in, in_rate = wav.getnframes(), wav.getframerate()
        blocks = _mono16_blocks(wav)
        out = _resample(blocks, n_in, in_rate, out_rate) if in_rate != out_rate else blocks
        pending = array.array("h")
        for block in out:
            pending.extend(block)
            while len(pending) >= chunk_samples:
                yield pcm_bytes(pending[:chunk_samples])
                del pending[:chunk_samples]
        if pending:
            yield pcm_bytes(pending)


def _mono16_blocks(wav: wave.Wave_read) -> Iterator[array.array[int]]:
    """Frames as signed 16-bit mono, whatever the file's sample width and channel count."""
    width, channels = wav.getsampwidth(), wav.getnchannels()
    if width not in (1, 2, 3, 4):
        raise ValueError(f"unsupported WAV sample width: {8 * width} bits")
    while data := wav.readframes(READ_FRAMES):
        if width == 1:  # unsigned 8-bit
            samples = array.array("h", ((b - 128) << 8 for b in data))
        elif width == 2:
            samples = array.array("h", data)
            if sys.byteorder == "big":
                samples.byteswap()
        else:  # keep the top 16 bits of each little-endian sample
            top = bytearray(len(data) // width * 2)
            top[0::2], top[1::2] = data[width - 2::width], data[width - 1::width]
            samples = array.array("h", bytes(top))
            if sys.byteorder == "big":
                samples.byteswap()
        if channels > 1:
            frames = [samples[c::channels] for c in range(channels)]
            samples = array.array("h", (sum(f) // channels for f in zip(*frames, strict=True)))
        yield samples


def _resample(blocks: Iterator[array.array[int]], n_in: int, in_rate: int,
              out_rate: int) -> Iterator[array.array[int]]:
    """Streaming linear-interpolation resampler; yields ``round(n_in * out_rate / in_rate)`` samples."""
    n_out = round(n_in * out_rate / in_rate)
    step = in_rate / out_rate
    src = array.array("h")
    base = 0  # source index of src[0]
    k = 0
    for block in blocks:
        src.extend(block)
        end = base + len(src)
        final = end >= n_in
        out = array.array("h")
        while k < n_out:
            pos = k * step
            i = int(pos)
            if i + 1 >= end and not final:
                break  # need the next block for this sample
            j = min(i - base, len(src) - 1)
            a = src[j]
            b = src[j + 1] if j + 1 < len(src) else a
            out.append(round(a + (b - a) * (pos - i)))
            k += 1
        drop = max(0, min(int(k * step) - base, len(src) - 1))
        del src[:drop]
        base += drop
        yield out
    if k < n_out and src:  # header claimed more frames than the file holds: hold the last sample
        yield array.array("h", [src[-1]] * (n_out - k))


# -- MP3 input ----------------------------------------------------------------------------------------


def clip_output_samples(path: Path, out_rate: int) -> int:
    """How many samples a stored clip plays at ``out_rate``; an MP3's from its header, without
    decoding it (the decoded WAV is made to hold exactly this many)."""
    if path.suffix != ".mp3":
        return wav_output_samples(path, out_rate)
    info = sf.info(str(path))
    return round(info.frames * out_rate / info.samplerate)


def decoded_mp3(path: Path, out_rate: int) -> Path:
    """An MP3 clip as s16le mono PCM WAV at ``out_rate``, decoded once and cached under
    ``decoded/`` next to it. Blocking (about half a second for 10 MB, 250 s of 44.1 kHz stereo):
    run it in a worker thread. Written to a temporary name and renamed, so a reader never sees
    half a file."""
    out = path.parent / DECODED_DIR / f"{path.stem}-{out_rate}.wav"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, sf.SoundFile(str(path)) as mp3, wave.open(raw, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(out_rate)
            blocks = (b.mean(axis=1) for b in mp3.blocks(DECODE_BLOCK_S * mp3.samplerate, dtype="float32",
                                                         always_2d=True))
            for block in _resample_float(blocks, mp3.frames, mp3.samplerate, out_rate):
                wav.writeframes(np.clip(np.rint(block * 32767), -32768, 32767).astype("<i2").tobytes())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _resample_float(blocks: Iterator[np.ndarray], n_in: int, in_rate: int,
                    out_rate: int) -> Iterator[np.ndarray]:
    """:func:`_resample`'s linear interpolation on numpy blocks (the pure-Python one would take
    seconds for a long clip); yields exactly ``round(n_in * out_rate / in_rate)`` samples, the MP3
    header's count, padding with silence should the decoder give fewer."""
    n_out = round(n_in * out_rate / in_rate)
    step = in_rate / out_rate
    src = np.zeros(0, dtype=np.float32)
    base = 0  # source index of src[0]
    k = 0
    for block in blocks:
        src = np.concatenate((src, block))
        end = base + len(src)
        k_end = min(n_out, math.ceil((end - 1) / step))  # every sample whose two neighbours are here
        if k_end > k:
            pos = np.arange(k, k_end) * step
            i = pos.astype(np.int64)
            j = i - base
            a, b = src[j], src[np.minimum(j + 1, len(src) - 1)]
            yield a + (b - a) * (pos - i)
            k = k_end
        drop = max(0, min(int(k * step) - base, len(src) - 1))
        src = src[drop:]
        base += drop
    if k < n_out:  # the last samples: hold the final decoded one, silence past what was decoded
        pos = np.arange(k, n_out) * step
        i = pos.astype(np.int64)
        j = i - base
        out = np.zeros(n_out - k, dtype=np.float64)
        held = j < len(src)
        if held.any():
            jh = j[held]
            a, b = src[jh], src[np.minimum(jh + 1, len(src) - 1)]
            out[held] = a + (b - a) * (pos[held] - i[held])
        yield out


# -- from a broadcast request ----------------------------------------------------------------------------


def build_program(request: BroadcastRequest, speech: SpeechService, sample_rate: int, *,
                  audio_dir: Path | None = None) -> Program:
    """The program for a request: its tone, its text spoken (or its uploaded audio), its repeats.

    Raises at once (before anything plays) for text over the speech limit or unknown audio."""
    voice: VoiceSource = None
    if request.text is not None:
        text, language = request.text, request.language
        speech.check_length(text)

        async def speak() -> Path:
            return await speech.synthesize(text, language)

        voice = speak
    elif request.audio_id is not None:
        voice = uploaded_audio(request.audio_id, audio_dir)
    return Program(sample_rate, tone=request.effective_tone, voice=voice, repeat=request.repeat,
                   gap_s=request.gap_s)


def uploaded_audio(audio_id: str, audio_dir: Path | None) -> Path:
    """The stored file (``.wav`` or ``.mp3``) of an uploaded clip; its id never leaves ``audio_dir``."""
    if audio_dir is None:
        raise Invalid("uploaded audio is not available on this gateway (no audio directory)", "audio_id")
    if not AUDIO_ID.match(audio_id) or ".." in audio_id:
        raise Invalid(f"not a valid audio id: {audio_id!r}", "audio_id")
    names = [audio_id] if audio_id.endswith((".wav", ".mp3")) else [f"{audio_id}.wav", f"{audio_id}.mp3"]
    for name in names:
        path = Path(audio_dir) / name
        if path.is_file():
            return path
    raise Invalid(f"no uploaded audio with id {audio_id!r}", "audio_id")


@dataclass(frozen=True)
class UploadedAudio:
    audio_id: str
    duration_s: float
    sample_rate: int
    channels: int
    bytes: int
    format: ClipFormat
    """As stored and found by its content: ``wav`` (played as it is) or ``mp3`` (decoded when played)."""


MAX_UPLOAD_SECONDS = 600.0
MP3_TAIL_S = 1.0
"""An MP3's last second is read at upload to prove the file holds what its header announces."""
MP3_TAIL_SLACK_S = 0.05
"""What that last second may fall short by (an encoder's frame count off by a frame or two)."""


def _check_complete(data: bytes, frames: int, held_bytes: int, frame_bytes: int, rate: int) -> None:
    """Refuse a truncated or inconsistent file: its headers must agree with the bytes it holds.

    ``wave`` takes the data chunk's header at its word, so a file claiming 120 s that holds 1 s was
    stored as a 120 s clip (and the engine planned 119 s of silence it could not play).
    """
    riff_size = int.from_bytes(data[4:8], "little")
    if riff_size > len(data) - 8:
        raise ValueError(f"truncated WAV: its RIFF header announces {riff_size + 8} bytes, the upload "
                         f"has {len(data)}")
    if held_bytes != frames * frame_bytes:
        raise ValueError(f"truncated or inconsistent WAV: its data chunk announces {frames / rate:.3f} s "
                         f"({frames * frame_bytes} bytes) but holds {held_bytes // frame_bytes / rate:.3f} s "
                         f"({held_bytes} bytes)")


def _is_mp3(data: bytes) -> bool:
    """An ID3v2 tag or an MPEG audio frame sync (11 set bits): how an MP3 file begins."""
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def _check_mp3(data: bytes) -> tuple[int, int, int]:
    """(frames, rate, channels) of an MP3 that can be played, from its header: no full decode.

    A cut-off upload keeps a header (Xing/Info) announcing the whole length, so the last second is
    read too (seeking there scans frame headers; about 30 ms for 10 MB).
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as mp3:
            fmt, frames, rate, channels = mp3.format, mp3.frames, mp3.samplerate, mp3.channels
            if fmt != "MP3":
                raise ValueError(f"not a WAV or MP3 file (it looks like MP3 but reads as {fmt})")
            if channels not in (1, 2) or not 8000 <= rate <= 48000:
                raise ValueError(f"unsupported MP3: {channels} channels, {rate} Hz "
                                 "(mono or stereo, 8-48 kHz)")
            duration = frames / rate
            if not 0 < duration <= MAX_UPLOAD_SECONDS:
                raise ValueError(f"recording is {duration:.1f} s long; 0-{MAX_UPLOAD_SECONDS:.0f} s accepted")
            tail = min(frames, round(MP3_TAIL_S * rate))
            mp3.seek(frames - tail)
            held = len(mp3.read(tail, dtype="int16"))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        why = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)  # not "<BytesIO …>"
        raise ValueError(f"MP3 file could not be read (damaged or cut short?): {why}") from None
    if held < tail - MP3_TAIL_SLACK_S * rate:
        raise ValueError(f"truncated MP3: its header announces {frames / rate:.3f} s but the file ends at "
                         f"least {(tail - held) / rate:.3f} s early")
    return frames, rate, channels


def store_uploaded_audio(data: bytes, audio_dir: Path) -> UploadedAudio:
    """Check an uploaded recording and keep it under a content-derived id (same clip, same id).

    Only what this module can play is accepted — uncompressed PCM WAV, or MP3 (told by its content,
    not its name) — so a broadcast that names the clip later cannot fail on its format in the
    middle of an emergency.
    """
    if _is_mp3(data):
        frames, rate, channels = _check_mp3(data)
        return _keep(data, audio_dir, "mp3", frames / rate, rate, channels)
    if data[:4] != b"RIFF":
        raise ValueError("not a WAV or MP3 file")
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            comp, channels, width = wav.getcomptype(), wav.getnchannels(), wav.getsampwidth()
            rate, frames = wav.getframerate(), wav.getnframes()
            held = len(wav.readframes(frames)) if comp == "NONE" and width and channels else 0
    except (wave.Error, EOFError, RuntimeError, struct.error) as exc:  # RuntimeError: a chunk past the end
        raise ValueError(f"not a WAV file ({exc or 'a chunk runs past the end of the file'})") from None
    if comp != "NONE":
        raise ValueError("only uncompressed PCM WAV is accepted")
    if channels not in (1, 2) or width not in (1, 2, 3, 4) or not 8000 <= rate <= 48000:
        raise ValueError(f"unsupported WAV: {channels} channels, {8 * width}-bit, {rate} Hz "
                         "(mono or stereo, 8-32 bit, 8-48 kHz)")
    _check_complete(data, frames, held, channels * width, rate)
    duration = frames / rate
    if not 0 < duration <= MAX_UPLOAD_SECONDS:
        raise ValueError(f"recording is {duration:.1f} s long; 0-{MAX_UPLOAD_SECONDS:.0f} s accepted")
    return _keep(data, audio_dir, "wav", duration, rate, channels)


def _keep(data: bytes, audio_dir: Path, fmt: ClipFormat, duration: float, rate: int,
          channels: int) -> UploadedAudio:
    """Store a checked recording as ``clip-<hash>.<fmt>`` (written whole, then renamed)."""
    audio_id = "clip-" + hashlib.sha256(data).hexdigest()[:20]
    audio_dir.mkdir(parents=True, exist_ok=True)
    path = audio_dir / f"{audio_id}.{fmt}"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return UploadedAudio(audio_id, round(duration, 3), rate, channels, len(data), fmt)
