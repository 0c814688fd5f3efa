"""The gateway's line-out: PCM to the simulator's audio line, an ALSA sound card or WAV files.

Every sink takes s16le mono PCM through the same small async interface (``open(sample_rate)``,
``write(pcm)``, ``close()``), so the broadcast engine does not care where the sound goes.

:class:`AudioPlayer` paces the writes in real time and stays at most ``lead_s`` (100 ms) ahead of
the clock. Why so little: whatever has been handed to a sink will be heard, so a cancelled or
pre-empted program stops within that lead — a sink holding seconds of buffered audio would keep
talking over the next, more urgent broadcast. It also keeps an evidence WAV of exactly the PCM it
handed to the sink: an audit of what was broadcast.

``AlsaSink`` runs Debian's ``aplay`` (package ``alsa-utils``, needed on real hardware only).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import sys
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from drivers.errors import DriverError

LEAD_S = 0.1
SOUND_DBFS = -50.0
"""A chunk louder than this (RMS) is sound: the same threshold as the simulator's audio line."""


class AudioOutputError(DriverError):
    """The audio output is unusable: cannot connect, the player exited, a write failed."""


class AudioSink(Protocol):
    """Where PCM goes: s16le mono at the rate given to :meth:`open`."""

    async def open(self, sample_rate: int) -> None: ...

    async def write(self, pcm: bytes) -> None: ...

    async def close(self, *, abort: bool = False) -> None:
        """Finish (let buffered audio play out) or, with ``abort``, drop what is still buffered."""
        ...


class SimLineSink:
    """The simulator's audio line: TCP, one JSON header line, then raw PCM (docs/simulator.md)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 3.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Task[None] | None = None
        self._refusal: str | None = None

    async def open(self, sample_rate: int) -> None:
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            where = f"{self.host}:{self.port}"
            raise AudioOutputError(f"cannot connect to the audio line {where}: {exc}") from None
        self._refusal = None
        self._listener = asyncio.create_task(self._listen(reader), name="audio line replies")
        header = {"format": "s16le", "rate": sample_rate, "channels": 1}
        await self.write(json.dumps(header).encode() + b"\n")

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """The line answers only to refuse a header, in one JSON line, and then hangs up."""
        with contextlib.suppress(ConnectionError, ValueError, asyncio.IncompleteReadError):
            line = await reader.readline()
            if line:
                self._refusal = str(json.loads(line).get("error", line.decode(errors="replace")))

    async def write(self, pcm: bytes) -> None:
        if self._writer is None:
            raise AudioOutputError("the audio line is not open")
        lost = ""
        if self._refusal is None:
            try:
                if self._writer.is_closing():  # the other end is gone: say so, do not write
                    raise ConnectionResetError("connection closed")
                self._writer.write(pcm)
                await self._writer.drain()
                return
            except ConnectionError as exc:
                lost = str(exc) or type(exc).__name__
                if self._listener is not None:  # a refusal may be on its way
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._listener), 0.2)
        where = f"the audio line {self.host}:{self.port}"
        if self._refusal is not None:
            raise AudioOutputError(f"{where} refused the audio: {self._refusal}")
        raise AudioOutputError(f"{where} closed: {lost}")

    async def close(self, *, abort: bool = False) -> None:
        writer, self._writer = self._writer, None
        listener, self._listener = self._listener, None
        if writer is not None:
            if abort:
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


class AlsaSink:
    """A sound card through ``aplay -t raw`` (Debian package ``alsa-utils``).

    ``device`` is an ALSA PCM name: ``default``, ``hw:0,0``, ``plughw:1,0``, or ``null`` to discard.
    """

    def __init__(self, device: str = "default", *, aplay: str = "aplay") -> None:
        self.device = device
        self.aplay = aplay
        self._proc: asyncio.subprocess.Process | None = None

    async def open(self, sample_rate: int) -> None:
        command = [self.aplay, "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE",
                   "-r", str(sample_rate), "-c", "1", "-"]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError:
            raise AudioOutputError(f"{self.aplay} not found: install Debian's alsa-utils") from None

    async def write(self, pcm: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise AudioOutputError("the ALSA output is not open")
        try:
            if proc.stdin.is_closing():  # aplay exited
                raise BrokenPipeError
            proc.stdin.write(pcm)
            await proc.stdin.drain()
        except ConnectionError:
            raise AudioOutputError(f"aplay on {self.device} stopped: {await self._stderr()}") from None

    async def _stderr(self) -> str:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return "not running"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 1.0)
            text = (await proc.stderr.read()).decode(errors="replace").strip()
            return text or f"exit status {proc.returncode}"
        return "no answer"

    async def close(self, *, abort: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if abort and proc.returncode is None:
            proc.kill()  # drops what the sound card still buffers
        elif proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()
                await proc.stdin.wait_closed()
        await proc.wait()


class WavSink:
    """One WAV file per program in ``directory`` (for gateways without a sound card, and tests)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.last_path: Path | None = None
        self._wav: wave.Wave_write | None = None
        self._count = 0

    async def open(self, sample_rate: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"{stamp}-{self._count:03d}.wav"
        while path.exists():
            self._count += 1
            path = self.directory / f"{stamp}-{self._count:03d}.wav"
        self.last_path = path
        self._wav = _open_wav(path, sample_rate)

    async def write(self, pcm: bytes) -> None:
        if self._wav is None:
            raise AudioOutputError("the WAV output is not open")
        self._wav.writeframes(pcm)

    async def close(self, *, abort: bool = False) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            wav.close()


def _open_wav(path: Path, sample_rate: int) -> wave.Wave_write:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = wave.open(str(path), "wb")  # noqa: SIM115 - stays open across many writes
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(sample_rate)
    return wav


def has_sound(pcm: bytes) -> bool:
    """Whether a chunk of s16le PCM is louder than :data:`SOUND_DBFS` (RMS)."""
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    if not samples:
        return False
    if sys.byteorder == "big":
        samples.byteswap()
    mean_square = sum(s * s for s in samples) / len(samples)
    return mean_square > (32768.0 * 10 ** (SOUND_DBFS / 20)) ** 2


@dataclass(frozen=True)
class PlayResult:
    """What :meth:`AudioPlayer.play` did: seconds of audio handed to the sink, whether the whole
    program was played, and when its first sound went out (``time.monotonic()``, None if silent)."""

    played_s: float
    completed: bool
    first_sound_at: float | None


class AudioPlayer:
    """Plays chunk streams into one sink, paced in real time (``time_scale`` > 1 only in tests)."""

    def __init__(self, sink: AudioSink, time_scale: float = 1.0, *, lead_s: float = LEAD_S) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.sink = sink
        self.time_scale = time_scale
        self.lead_s = lead_s
        self.last_result: PlayResult | None = None
        """The result of the last play, also when it was cancelled (then ``completed`` is False)."""

    async def play(self, chunks: AsyncIterator[bytes], sample_rate: int, *,
                   evidence_path: Path | None = None) -> PlayResult:
        """Play ``chunks`` (s16le mono) to the end, then close the sink; returns once it has been
        heard. Cancelling the task stops within ``lead_s`` of audio: nothing more is written, and
        the sink drops what it can of its buffer."""
        await self.sink.open(sample_rate)
        evidence = _open_wav(evidence_path, sample_rate) if evidence_path is not None else None
        written = 0  # samples
        first_sound_at: float | None = None
        completed = False
        t0 = time.monotonic()
        try:
            async for chunk in chunks:
                await self._wait_until_ahead_by(written / sample_rate, t0, self.lead_s)
                await self.sink.write(chunk)
                if evidence is not None:
                    evidence.writeframes(chunk)
                if first_sound_at is None and has_sound(chunk):
                    first_sound_at = time.monotonic()
                written += len(chunk) // 2
            await self._wait_until_ahead_by(written / sample_rate, t0, 0.0)  # let it be heard
            completed = True
        finally:
            self.last_result = PlayResult(written / sample_rate, completed, first_sound_at)
            if evidence is not None:
                evidence.close()
            try:
                await self.sink.close(abort=not completed)  # first: stop the sound
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:  # end the producer now (e.g. cancel its speech synthesis)
                    with contextlib.suppress(Exception):
                        await aclose()
        return self.last_result

    async def _wait_until_ahead_by(self, audio_s: float, t0: float, lead_s: float) -> None:
        """Sleep until the audio written so far is at most ``lead_s`` ahead of the (scaled) clock."""
        ahead = audio_s - (time.monotonic() - t0) * self.time_scale
        if ahead > lead_s:
            await asyncio.sleep((ahead - lead_s) / self.time_scale)


def prune_evidence(directory: str | Path, retention_days: float, *, now: float | None = None) -> list[Path]:
    """Delete evidence WAVs older than ``retention_days``; returns what was deleted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    removed = []
    for path in sorted(directory.glob("*.wav")):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
    return removed

