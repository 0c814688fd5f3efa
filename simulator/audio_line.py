"""The audio line: where the gateway's sound output arrives, and who would have heard it.

A sender connects over TCP, writes one JSON header line such as
``{"format": "s16le", "rate": 16000, "channels": 1}`` and then raw PCM in real time. The line is
consumed at real-time speed (a faster sender is slowed down by TCP back-pressure, as a sound card
would), recorded as a WAV file, and judged in 20 ms blocks: audio is present when a block's RMS
is above -50 dBFS. Every block the terminals are told whether their line-in carries sound, and the
wall-clock spans during which each terminal — and each of its zones — was audible are logged.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import math
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.fm_transmitter import FmTransmitter
from simulator.spec import AudioSpec
from simulator.terminal import Terminal

log = logging.getLogger(__name__)

BLOCK_S = 0.02
PRESENT_DBFS = -50.0
UNDERRUN_S = 0.3
"""A sender this late with its next block has stopped talking: the line is silent meanwhile."""
MAX_HEADER = 4096


def rms_dbfs(pcm: bytes) -> float:
    """RMS level of signed 16-bit little-endian PCM, in dB relative to full scale."""
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    if not samples:
        return -math.inf
    mean_square = sum(s * s for s in samples) / len(samples)
    return 10 * math.log10(mean_square / 32768.0**2) if mean_square else -math.inf


@dataclass
class _Spans:
    """Open and closed audible intervals of one thing (a terminal or one of its zones)."""

    closed: list[tuple[float, float]] = field(default_factory=list)
    since: float | None = None

    def update(self, on: bool, now: float) -> None:
        if on and self.since is None:
            self.since = now
        elif not on and self.since is not None:
            self.closed.append((self.since, now))
            self.since = None

    def as_list(self, now: float) -> list[dict[str, Any]]:
        spans = [*self.closed, *([(self.since, now)] if self.since is not None else [])]
        return [{"start": round(a, 3), "end": round(b, 3), "duration_s": round(b - a, 3)} for a, b in spans]


class AudioLine:
    """TCP listener for the gateway's audio output, feeding the simulated terminals' line-in."""

    def __init__(self, spec: AudioSpec, terminals: list[Terminal], fms: list[FmTransmitter]) -> None:
        self.spec = spec
        self.terminals = terminals
        self.fms = fms
        self.record_dir = Path(spec.record_dir)
        self.recordings: list[dict[str, Any]] = []
        self._present: dict[int, bool] = {}
        self._spans = {t.spec.id: _Spans() for t in terminals}
        self._zone_spans = {(t.spec.id, z): _Spans() for t in terminals for z in t.spec.zones}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._count = 0

    async def start(self) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_server(self._client, self.spec.host, self.spec.port,
                                                  reuse_address=True, limit=MAX_HEADER)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    @property
    def present(self) -> bool:
        return any(self._present.values())

    def _refresh(self) -> None:
        """Propagate audio presence to the devices and log who is audible right now."""
        now, present = time.time(), self.present
        for term in self.terminals:
            term.line_in_present = present
            audible = term.audible()
            zones = set(term.audible_zones()) if audible else set()
            self._spans[term.spec.id].update(audible, now)
            for z in term.spec.zones:
                self._zone_spans[term.spec.id, z].update(z in zones, now)
        for fm in self.fms:
            fm.set_audio_present(present)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._count += 1
        conn = self._count
        try:
            header = await self._header(reader, writer)
            if header is not None:
                await self._receive(conn, reader, header)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._present.pop(conn, None)
            self._refresh()
            self._tasks.discard(task)
            writer.close()

    async def _header(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> dict[str, int] | None:
        try:
            header = json.loads(await reader.readuntil(b"\n"))
            problem = None
            if not isinstance(header, dict) or header.get("format") != "s16le":
                problem = "field 'format' must be \"s16le\""
            elif not isinstance(header.get("rate"), int) or not 8000 <= header["rate"] <= 48000:
                problem = "field 'rate' must be an integer sample rate 8000..48000"
            elif header.get("channels", 1) not in (1, 2):
                problem = "field 'channels' must be 1 or 2"
        except (ValueError, asyncio.LimitOverrunError) as exc:
            header, problem = None, f"the first line must be a JSON header: {exc}"
        if problem is not None:
            log.warning("audio line: rejected a sender: %s", problem)
            writer.write(json.dumps({"ok": False, "error": problem}).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return None
        assert isinstance(header, dict)
        return {"rate": header["rate"], "channels": header.get("channels", 1)}

    async def _receive(self, conn: int, reader: asyncio.StreamReader, header: dict[str, int]) -> None:
        rate, channels = header["rate"], header["channels"]
        if rate != self.spec.sample_rate:
            log.warning("audio line: sender uses %d Hz, the gateway is configured for %d Hz",
                        rate, self.spec.sample_rate)
        frame_bytes = 2 * channels
        block_bytes = max(1, round(rate * BLOCK_S)) * frame_bytes
        started = time.time()
        path = self.record_dir / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}-{conn:04d}.wav"
        record: dict[str, Any] = {"file": str(path), "started": round(started, 3), "ended": None,
                                  "rate": rate, "channels": channels, "seconds": 0.0, "audio_seconds": 0.0}
        self.recordings.append(record)
        loop = asyncio.get_running_loop()
        t0, frames, blocks, loud = loop.time(), 0, 0, 0
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(channels)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            while True:
                try:
                    block = await asyncio.wait_for(reader.readexactly(block_bytes), UNDERRUN_S)
                except TimeoutError:  # under-run: silence until the sender catches up
                    self._present[conn] = False
                    self._refresh()
                    t0 = loop.time() - frames / rate
                    continue
                except asyncio.IncompleteReadError as exc:
                    block = exc.partial[: len(exc.partial) // frame_bytes * frame_bytes]
                    if not block:
                        break
                # Play in real time: the block starting at sample n plays n / rate after the first.
                delay = t0 + frames / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                wav.writeframes(block)
                frames += len(block) // frame_bytes
                blocks += 1
                self._present[conn] = rms_dbfs(block) > PRESENT_DBFS
                loud += self._present[conn]
                self._refresh()
                record["seconds"] = round(frames / rate, 3)
                record["audio_seconds"] = round(loud * BLOCK_S, 3)
                if len(block) < block_bytes:
                    break
            # Let the last block finish playing before the line goes quiet.
            delay = t0 + frames / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        record["ended"] = round(time.time(), 3)
        log.info("audio line: recorded %.2f s (%.2f s with sound) to %s", record["seconds"],
                 record["audio_seconds"], path)

    def spans_of(self, device: str) -> dict[str, Any]:
        now = time.time()
        term = next(t for t in self.terminals if t.spec.id == device)
        return {"device": device, "audible_now": self._spans[device].since is not None,
                "spans": self._spans[device].as_list(now),
                "zones": {str(z): self._zone_spans[device, z].as_list(now) for z in term.spec.zones}}

    def state(self) -> dict[str, Any]:
        return {"present": self.present, "connections": len(self._present),
                "record_dir": str(self.record_dir), "recordings": list(self.recordings)}
