"""Attention signals measured from their PCM: durations, on/off patterns, frequencies, no clicks."""

from __future__ import annotations

import array
import itertools
import math
import types

import pytest

from controller.broadcast.model import Tone
from controller.speech.tones import (
    Signal,
    air_defence_warning,
    air_raid,
    all_clear,
    chime,
    signal_for,
    siren,
)

RATE = 8000  # enough for tones up to 1.2 kHz, and keeps the 3-minute signals quick to analyse
WINDOW_S = 0.1


def samples_of(signal: Signal, rate: int = RATE) -> array.array[int]:
    return array.array("h", b"".join(signal.pcm(rate)))


def on_off_runs(samples: array.array[int], rate: int = RATE) -> list[tuple[bool, float]]:
    """(sounding, seconds) runs, judged per 100 ms window by RMS above -40 dBFS."""
    n = round(rate * WINDOW_S)
    flags = []
    for start in range(0, len(samples), n):
        block = samples[start:start + n]
        rms = math.sqrt(sum(s * s for s in block) / len(block))
        flags.append(rms > 32768 * 10 ** (-40 / 20))
    return [(on, round(len(list(group)) * WINDOW_S, 1)) for on, group in itertools.groupby(flags)]


def goertzel_power(samples: array.array[int] | list[int], hz: float, rate: int = RATE) -> float:
    """Power of one frequency in a block (the Goertzel algorithm)."""
    coeff = 2 * math.cos(2 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def dominant_hz(samples: array.array[int], rate: int = RATE) -> float:
    """Frequency from the zero-crossing rate (good enough for a single sweeping tone)."""
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


@pytest.mark.parametrize(("signal", "seconds"), [
    (chime(), 1.5), (siren(), 12.0), (siren(8.0), 8.0),
    (air_defence_warning(), 180.0), (air_raid(), 180.0), (all_clear(), 180.0),
])
def test_duration_from_the_pcm(signal: Signal, seconds: float):
    pcm = b"".join(signal.pcm(RATE))
    assert len(pcm) / 2 / RATE == pytest.approx(seconds)
    assert signal.duration_s == pytest.approx(seconds)
    assert signal.samples(RATE) * 2 == len(pcm)


def test_air_raid_is_fifteen_six_second_blasts_with_six_second_pauses():
    runs = on_off_runs(samples_of(air_raid()))
    assert runs == [(True, 6.0), (False, 6.0)] * 15


def test_advance_warning_is_three_times_36_on_24_off():
    runs = on_off_runs(samples_of(air_defence_warning()))
    assert runs == [(True, 36.0), (False, 24.0)] * 3


def test_all_clear_is_three_minutes_continuous():
    runs = on_off_runs(samples_of(all_clear()))
    assert runs == [(True, 180.0)]


def test_chime_is_ding_880_then_dong_660():
    samples = samples_of(chime())
    ding, dong = samples[: round(0.5 * RATE)], samples[round(1.0 * RATE):]
    assert goertzel_power(ding, 880) > 20 * goertzel_power(ding, 660)
    assert goertzel_power(dong, 660) > 20 * goertzel_power(dong, 880)
    assert on_off_runs(samples) == [(True, 1.5)]  # decays, but is still heard to the end


def test_siren_sweeps_600_to_1200_hz_every_four_seconds():
    rate = 16000
    samples = samples_of(siren(), rate)

    def pitch_at(t: float) -> float:  # over the 0.25 s around t
        return dominant_hz(samples[round((t - 0.125) * rate):round((t + 0.125) * rate)], rate)

    for cycle in range(3):
        assert pitch_at(4 * cycle + 2) == pytest.approx(1200, rel=0.02)  # top of each sweep
        assert pitch_at(4 * cycle + 1) == pytest.approx(900, rel=0.05)  # rising through the middle
        assert pitch_at(4 * cycle + 3) == pytest.approx(900, rel=0.05)  # falling
    for t in (4.0, 8.0):
        assert pitch_at(t) == pytest.approx(600, rel=0.02)  # bottom between sweeps


@pytest.mark.parametrize("signal", [chime(), siren(2.0), air_raid()])
def test_bursts_fade_in_and_out_without_clicks(signal: Signal):
    samples = samples_of(signal)
    for start, end in signal.on_spans()[:2]:
        first, last = round(start * RATE), round(end * RATE) - 1
        assert abs(samples[first]) < 300 and abs(samples[last]) < 300
    assert max(abs(s) for s in samples) <= 32767 * 0.71


def test_pcm_is_lazy_and_chunked():
    chunks = all_clear().pcm(16000, chunk_s=0.02)
    assert isinstance(chunks, types.GeneratorType)
    first = list(itertools.islice(chunks, 10))
    assert all(len(c) == 640 for c in first)  # 20 ms of 16-bit mono at 16 kHz


def test_on_spans_describe_the_layout():
    assert air_raid().on_spans()[:2] == [(0.0, 6.0), (12.0, 18.0)]
    assert chime().on_spans() == [(0.0, 1.5)]


def test_every_tone_of_a_request_has_a_signal():
    assert signal_for(Tone.NONE).duration_s == 0
    assert list(signal_for(Tone.NONE).pcm(RATE)) == []
    for tone in Tone:
        assert signal_for(tone).name == str(tone.value) or tone is Tone.NONE
