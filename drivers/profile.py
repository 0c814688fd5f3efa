"""Device profiles: a device's wire map as data (config/profiles/*.yaml).

Supporting another vendor's terminal means writing a profile file, not code, so everything a
driver needs to know about registers lives here and is validated when the daemon starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Table = Literal["coil", "discrete_input", "holding", "input"]
PointType = Literal["bool", "uint16", "int16", "uint32", "int32", "version"]

REGISTER_WIDTH = {"bool": 1, "uint16": 1, "int16": 1, "version": 1, "uint32": 2, "int32": 2}


class Point(_Strict):
    """One logical value of a device and where it lives on the wire."""

    table: Table = Field(description="Modbus table: coil, discrete_input, holding or input register")
    address: int = Field(ge=0, le=65535, description="0-based PDU address")
    type: PointType = Field(default="uint16", description="How the raw register(s) are decoded")
    bit: int | None = Field(default=None, ge=0, le=15, description="Bit within a register (bool points)")
    scale: float = Field(default=1.0, description="Engineering value = raw × scale")
    unit: str = ""
    writable: bool = False
    min: int | None = Field(default=None, description="Lowest raw value accepted for writes")
    max: int | None = Field(default=None, description="Highest raw value accepted for writes")
    enum: dict[int, str] | None = Field(default=None, description="Names of raw values")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        is_bit_table = self.table in ("coil", "discrete_input")
        if is_bit_table and self.type != "bool":
            raise ValueError(f"a {self.table} point must have type bool")
        if self.bit is not None and (is_bit_table or self.type != "bool"):
            raise ValueError("'bit' is only for bool points inside a register")
        if self.type == "bool" and not is_bit_table and self.bit is None:
            raise ValueError("a bool point in a register table needs 'bit'")
        if self.writable and self.table in ("discrete_input", "input"):
            raise ValueError(f"a {self.table} point cannot be writable")
        if self.writable and self.bit is not None:
            raise ValueError("writing single bits of a register is not supported; map a coil instead")
        return self

    @property
    def width(self) -> int:
        """Number of registers (or bits) this point occupies."""
        return REGISTER_WIDTH[self.type]


class LineImpedanceCoding(_Strict):
    open_at_or_above: int = Field(default=65535, description="Raw value meaning an open speaker line")
    short_at_or_below: int = Field(default=0, description="Raw value meaning a shorted speaker line")


class ModbusTerminalProfile(_Strict):
    """A loudspeaker terminal spoken to over Modbus RTU or TCP."""

    type: Literal["modbus-terminal"]
    name: str
    vendor: str = ""
    description: str = ""
    broadcast_writes: bool = Field(default=False, description="Terminal obeys writes to unit id 0")
    max_read_registers: int = Field(default=125, ge=1, le=125)
    max_read_bits: int = Field(default=2000, ge=1, le=2000)
    max_read_gap: int = Field(default=0, ge=0, le=32, description="Unused registers a merged read may span")
    zones: int = Field(default=8, ge=1, le=32)
    line_impedance: LineImpedanceCoding = LineImpedanceCoding()
    line_check_duration_s: float = Field(
        default=1.0, gt=0, le=60,
        description="How long a speaker-line check usually takes: the gateway first asks whether it "
                    "finished after this long (each question is a transaction on a shared line)")
    settings_poll_every: int = Field(
        default=1, ge=1, le=1000,
        description="Health polls read the writable points (settings: power, mute, volume, source, "
                    "zones) only on every Nth poll of a terminal, and on the next poll after a failed "
                    "poll or a write by anyone but the gateway's driver (whose own writes are reported "
                    "as written); read-only points (status, measurements) on every poll. 1: every "
                    "point on every poll (for terminals that keep measurements in writable registers)")
    points: dict[str, Point]

    @model_validator(mode="after")
    def _required_points(self) -> ModbusTerminalProfile:
        required = ["amp_power", "emergency_override", "mute", "volume", "audio_source", "amp_ready",
                    "audio_present"] + [f"zone_{z}" for z in range(1, self.zones + 1)]
        missing = [name for name in required if name not in self.points]
        if missing:
            raise ValueError(f"points missing that every terminal needs: {', '.join(missing)}")
        return self


class AtFmTransmitterProfile(_Strict):
    """An FM transmitter module with a line-based AT-command protocol."""

    type: Literal["at-fm-transmitter"]
    name: str
    vendor: str = ""
    description: str = ""
    serial: dict[str, int | str] = Field(default_factory=dict, description="Default serial settings")
    line_ending: str = "\r\n"
    command_timeout_s: float = Field(default=1.0, gt=0, le=30)
    frequency_min: int = 8750
    frequency_max: int = 10800
    power_min: int = 0
    power_max: int = 100
    rds_ps_max: int = 8
    rds_rt_max: int = 64
    alarm_bits: dict[int, str] = Field(default_factory=dict)


Profile = Annotated[ModbusTerminalProfile | AtFmTransmitterProfile, Field(discriminator="type")]
_profile_adapter: TypeAdapter[ModbusTerminalProfile | AtFmTransmitterProfile] = TypeAdapter(Profile)


def parse_profile(data: object) -> ModbusTerminalProfile | AtFmTransmitterProfile:
    """Validate an already-loaded profile document (raises pydantic.ValidationError)."""
    return _profile_adapter.validate_python(data)


def load_profile(path: Path) -> ModbusTerminalProfile | AtFmTransmitterProfile:
    """Read and validate one profile file."""
    with path.open(encoding="utf-8") as fh:
        return parse_profile(yaml.safe_load(fh))
