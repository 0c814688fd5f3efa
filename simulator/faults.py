"""Faults every simulated device can show on the wire, and the names of all injectable faults.

Wire faults live apart from the device models because the transports apply them (a terminal's
registers do not know that its RS-485 transceiver garbles a reply); device faults such as a
mains failure are physics and live in the models.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WIRE_FAULTS = ("offline", "crc_errors", "slow_replies")
TERMINAL_FAULTS = ("line_open", "line_short", "mains_failure", "over_temperature", "amp_fault", "tamper")
FM_FAULTS = ("high_vswr", "over_temperature", "mains_failure")
LINE_FAULTS = ("unplug",)
ALL_FAULTS = tuple(dict.fromkeys(WIRE_FAULTS + TERMINAL_FAULTS + FM_FAULTS + LINE_FAULTS))


class RequestError(ValueError):
    """A control request or scenario step that cannot be applied; the message names the field."""


@dataclass
class WireFaults:
    """How a device misbehaves on the wire right now."""

    offline: bool = False
    """Dead to the line: every request is met with silence."""
    crc_error_rate: float = 0.0
    """Fraction of replies sent corrupted (RTU: a flipped byte; TCP: the reply is lost)."""
    extra_delay_ms: float = 0.0
    """Added to the turnaround of every reply."""
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def corrupt_next(self) -> bool:
        """Decide whether the reply about to be sent is corrupted."""
        return self.crc_error_rate > 0 and self.rng.random() < self.crc_error_rate

    def apply(self, fault: str, clear: bool, rate: float | None, delay_ms: float | None) -> None:
        if fault == "offline":
            self.offline = not clear
        elif fault == "crc_errors":
            if not clear and rate is None:
                raise RequestError("'rate' is required for crc_errors (fraction of replies, 0..1)")
            if rate is not None and not 0 <= rate <= 1:
                raise RequestError("'rate' must be between 0 and 1")
            self.crc_error_rate = 0.0 if clear else float(rate or 0.0)
        elif fault == "slow_replies":
            if not clear and delay_ms is None:
                raise RequestError("'delay_ms' is required for slow_replies")
            if delay_ms is not None and delay_ms < 0:
                raise RequestError("'delay_ms' must not be negative")
            self.extra_delay_ms = 0.0 if clear else float(delay_ms or 0.0)
        else:
            raise RequestError(f"'fault': {fault!r} is not a wire fault")

    def state(self) -> dict[str, object]:
        return {"offline": self.offline, "crc_error_rate": self.crc_error_rate,
                "extra_delay_ms": self.extra_delay_ms}
