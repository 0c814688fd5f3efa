"""Small physical models shared by the simulated devices.

Devices integrate their physics lazily in *simulated* seconds, which run ``time_scale`` times
faster than the wall clock so tests can watch an amplifier heat up without waiting for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class ScaledClock:
    """Simulated seconds since creation: the wall clock (or a test's fake one) × ``time_scale``."""

    def __init__(self, time_scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._scale = time_scale
        self._t0 = clock()

    def __call__(self) -> float:
        return (self._clock() - self._t0) * self._scale


@dataclass
class HeatSink:
    """First-order thermal model with an over-temperature trip and reset hysteresis."""

    trip_c: float
    reset_c: float
    heat_tau_s: float
    cool_tau_s: float
    temperature_c: float = 25.0
    tripped: bool = False

    def step(self, target_c: float, dt: float) -> None:
        """Approach ``target_c`` for ``dt`` simulated seconds, then update the trip state."""
        tau = self.heat_tau_s if target_c > self.temperature_c else self.cool_tau_s
        self.temperature_c = target_c + (self.temperature_c - target_c) * math.exp(-dt / tau)
        if self.temperature_c >= self.trip_c:
            self.tripped = True
        elif self.temperature_c <= self.reset_c:
            self.tripped = False

    def overheat(self) -> None:
        """A blocked fan or failed cooling: the sink is already past its trip point."""
        self.temperature_c = max(self.temperature_c, self.trip_c + 5)
        self.tripped = True
