"""The ``simulator`` section: the simulated township the demo and the tests run against."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from controller.config.common import Strict


class SimFault(Strict):
    """One step of a scripted fault scenario for the simulator."""

    at_s: float = Field(ge=0, description="Seconds after simulator start")
    device: str | None = Field(default=None, description="Device id (omit for line faults)")
    line: str | None = Field(default=None, description="Line id, for unplug/replug")
    fault: Literal["offline", "crc_errors", "slow_replies", "line_open", "line_short", "mains_failure",
                   "over_temperature", "amp_fault", "tamper", "high_vswr", "unplug"]
    clear: bool = Field(default=False, description="Clear this fault instead of raising it")
    zone: int | None = Field(default=None, ge=1, le=32)
    rate: float | None = Field(default=None, ge=0, le=1, description="Fraction of replies corrupted")
    delay_ms: float | None = Field(default=None, ge=0, le=10000, description="Extra reply delay")


class SimDevice(Strict):
    """Physical properties of one simulated device (defaults model a healthy terminal)."""

    turnaround_ms: float | None = Field(default=None, ge=0, le=1000)
    warmup_ms: int | None = Field(default=None, ge=0, le=60000)
    battery_full_v: float | None = None


class Endpoint(Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class SimAudio(Endpoint):
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    record_dir: str = Field(description="Where received audio is kept as WAV")


class Simulator(Strict):
    control: Endpoint = Field(description="JSON-lines control interface (fault injection, queries)")
    audio: SimAudio = Field(description="The audio line the gateway's output feeds")
    time_scale: float = Field(default=1.0, gt=0, le=100, description="Physics speed-up (tests only)")
    turnaround_ms: float = Field(default=3.0, ge=0, le=1000, description="Default reply turnaround")
    rtu_framing: Literal["strict", "lenient"] = Field(
        default="strict",
        description="strict: a request starting less than 3.5 characters after the previous frame on "
                    "the bus (a reply too) runs into it and goes unanswered, as on RS-485 hardware; "
                    "lenient: answer it anyway (to compare)")
    devices: dict[str, SimDevice] = Field(default_factory=dict)
    scenarios: list[SimFault] = Field(default_factory=list)
