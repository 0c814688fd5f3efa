"""Attention signals (DESIGN §3) generated as 16-bit mono PCM, lazily, in small chunks.

A signal is a waveform sounded in bursts — ``(on, off)`` pairs — so its duration and on/off layout
are known before a single sample exists (the program and the tests need them), and the samples are
made only as they are played: the 3-minute civil air-defence signals are never held in memory.
Every burst fades in and out over a few milliseconds, because a waveform that starts or stops at
full level clicks audibly through a horn loudspeaker.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from controller.broadcast.model import Tone

LEVEL = 0.7
"""Peak level relative to full scale (about -3 dBFS): loud, with headroom against clipping."""
FADE_S = 0.03
CHUNK_S = 0.02

CHIME_S = 1.5
DING_HZ, DONG_HZ = 880.0, 660.0
DONG_AT_S = 0.6
SIREN_LOW_HZ, SIREN_HIGH_HZ = 600.0, 1200.0
SIREN_CYCLE_S = 4.0
SIREN_S = 12.0
AIR_DEFENCE_HZ = 800.0

Waveform = Callable[[float], float]
"""Sample value in -1..1 at ``t`` seconds after the start of a burst."""


def pcm_bytes(samples: array.array[int]) -> bytes:
    """Signed 16-bit samples as little-endian bytes (s16le) whatever the host byte order."""
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


@dataclass(frozen=True)
class Signal:
    """A waveform sounded in ``bursts`` of ``(on_s, off_s)``; samples made on demand."""

    name: str
    bursts: tuple[tuple[float, float], ...]
    waveform: Waveform
    fade_s: float = FADE_S

    @property
    def duration_s(self) -> float:
        return sum(on + off for on, off in self.bursts)

    def samples(self, sample_rate: int) -> int:
        """Exact length in samples at ``sample_rate`` (each burst part rounded to whole samples)."""
        return sum(round(on * sample_rate) + round(off * sample_rate) for on, off in self.bursts)

    def on_spans(self) -> list[tuple[float, float]]:
        """When it sounds: ``(start_s, end_s)`` of every burst."""
        spans, t = [], 0.0
        for on, off in self.bursts:
            spans.append((t, t + on))
            t += on + off
        return spans

    def pcm(self, sample_rate: int, chunk_s: float = CHUNK_S) -> Iterator[bytes]:
        """s16le mono chunks of at most ``chunk_s`` each, generated as they are asked for."""
        chunk = max(1, round(sample_rate * chunk_s))
        silence = bytes(2 * chunk)
        for on_s, off_s in self.bursts:
            n_on = round(on_s * sample_rate)
            n_fade = min(round(self.fade_s * sample_rate), n_on // 2)
            for start in range(0, n_on, chunk):
                yield self._burst_chunk(start, min(start + chunk, n_on), n_on, n_fade, sample_rate)
            n_off = round(off_s * sample_rate)
            for start in range(0, n_off, chunk):
                yield silence[: 2 * min(chunk, n_off - start)]

    def _burst_chunk(self, start: int, end: int, n_on: int, n_fade: int, rate: int) -> bytes:
        wave, scale = self.waveform, 32767 * LEVEL
        out = array.array("h", bytes(2 * (end - start)))
        for i in range(start, end):
            gain = min(1.0, i / n_fade, (n_on - 1 - i) / n_fade) if n_fade else 1.0
            out[i - start] = round(scale * gain * wave(i / rate))
        return pcm_bytes(out)


def _strike(t: float, hz: float, decay_s: float) -> float:
    """A struck bell: a partial and its octave, a 5 ms attack, exponential decay."""
    if t < 0:
        return 0.0
    envelope = min(1.0, t / 0.005) * math.exp(-t / decay_s)
    return envelope * (0.8 * math.sin(2 * math.pi * hz * t) + 0.2 * math.sin(4 * math.pi * hz * t))


def _chime_wave(t: float) -> float:
    """Ding (880 Hz) then dong (660 Hz): the two-tone chime before an announcement."""
    return 0.6 * _strike(t, DING_HZ, 0.35) + 0.6 * _strike(t - DONG_AT_S, DONG_HZ, 0.45)


def _sweep_phase(t: float, low: float, high: float, cycle_s: float) -> float:
    """Phase of a tone whose pitch goes low → high → low once per ``cycle_s`` (raised cosine)."""
    mid, depth = (low + high) / 2, (high - low) / 2
    return 2 * math.pi * (mid * t - depth * cycle_s / (2 * math.pi) * math.sin(2 * math.pi * t / cycle_s))


def _siren_wave(t: float) -> float:
    """Rising and falling 600–1200 Hz, one cycle every 4 s: the severe-alert siren."""
    return math.sin(_sweep_phase(t, SIREN_LOW_HZ, SIREN_HIGH_HZ, SIREN_CYCLE_S))


def _horn(phase: float) -> float:
    """A siren horn's timbre: odd harmonics make it carry further than a pure tone."""
    return 0.75 * math.sin(phase) + 0.2 * math.sin(3 * phase) + 0.05 * math.sin(5 * phase)


def _steady_wave(t: float) -> float:
    """A steady siren note: advance warning and all clear."""
    return _horn(2 * math.pi * AIR_DEFENCE_HZ * t)


def _air_raid_wave(t: float) -> float:
    """Each 6 s blast rises and falls in pitch, like a motor siren spinning up and down."""
    return _horn(_sweep_phase(t, 500.0, 900.0, 6.0))


def chime() -> Signal:
    """Two-tone attention chime, 1.5 s."""
    return Signal("chime", ((CHIME_S, 0.0),), _chime_wave, fade_s=0.01)


def siren(seconds: float = SIREN_S) -> Signal:
    """Rising/falling siren for the most severe alerts (severity 1–2), 12 s by default."""
    return Signal("siren", ((seconds, 0.0),), _siren_wave)


def air_defence_warning() -> Signal:
    """预先警报: 36 s on, 24 s off, three times (3 min)."""
    return Signal("air_defence_warning", ((36.0, 24.0),) * 3, _steady_wave)


def air_raid() -> Signal:
    """空袭警报: 6 s on, 6 s off, fifteen times (3 min)."""
    return Signal("air_raid", ((6.0, 6.0),) * 15, _air_raid_wave)


def all_clear() -> Signal:
    """解除警报: 3 min continuous."""
    return Signal("all_clear", ((180.0, 0.0),), _steady_wave)


def silence_signal() -> Signal:
    """No attention signal (tone "none"): zero length, so the words start at once."""
    return Signal("none", (), lambda t: 0.0)


SIGNALS: dict[Tone, Callable[[], Signal]] = {
    Tone.NONE: silence_signal,
    Tone.CHIME: chime,
    Tone.SIREN: siren,
    Tone.AIR_DEFENCE_WARNING: air_defence_warning,
    Tone.AIR_RAID: air_raid,
    Tone.ALL_CLEAR: all_clear,
}


def signal_for(tone: Tone) -> Signal:
    """The signal a broadcast's ``tone`` field names."""
    return SIGNALS[tone]()
