"""The ``lines`` and ``devices`` sections: the buses the gateway talks on and the terminals on them.

Which profile a device has, and whether it fits its line, is a cross-section rule (checks.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from controller.config.common import IDENT, Location, Strict, check_area_code


class _LinePolicy(Strict):
    """How the arbiter and poller of any line treat its devices."""

    retries: int = Field(default=2, ge=0, le=5, description="Retries after a timeout or CRC error")
    offline_after_failures: int = Field(default=3, ge=1, le=20,
                                        description="Consecutive failed polls before a device is offline")
    offline_poll_every: int = Field(default=5, ge=1, le=100,
                                    description="Poll an offline device only every N cycles")
    poll_interval_s: float = Field(default=5.0, ge=0, le=300,
                                   description="Shortest time between the starts of two health-poll cycles")


class SerialLine(_LinePolicy):
    """An RS-485 (or RS-232) port; one arbiter serves every device on it."""

    type: Literal["serial"]
    id: str = Field(pattern=IDENT)
    port: str = Field(min_length=1, description="Device path, e.g. /dev/ttyUSB0 or the simulator's pty link")
    baudrate: int = Field(default=9600, description="Bits per second")
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(default=0.3, gt=0, le=10, description="Reply timeout per request")

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, value: int) -> int:
        if value not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            raise ValueError("must be a standard rate: 1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200")
        return value


class TcpLine(_LinePolicy):
    """A Modbus TCP endpoint (an IP / 4G terminal); one arbiter per endpoint."""

    type: Literal["tcp"]
    id: str = Field(pattern=IDENT)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="Reply timeout per request")


Line = Annotated[SerialLine | TcpLine, Field(discriminator="type")]


class Device(Strict):
    id: str = Field(pattern=IDENT, description="Device id used in topics, API and logs")
    name: str = Field(min_length=1)
    village: str = Field(default="", description="Village (村) the device serves")
    area_code: str
    location: Location
    line: str = Field(description="Id of the line (serial port or TCP endpoint) the device is on")
    profile: str = Field(description="Profile name from the profiles directory, e.g. ebt-1")
    unit_id: int | None = Field(default=None, ge=1, le=247, description="Modbus unit id (Modbus devices)")
    zones: list[int] = Field(default_factory=lambda: [1], description="Speaker zones wired at this terminal")
    commissioned_impedance_ohm: dict[int, float] = Field(
        default_factory=dict, description="Line impedance per zone measured at commissioning")
    ebrid: str | None = Field(default=None, pattern=r"^\d{23}$",
                              description="23-digit resource code (EBRID) on the national platform; "
                                          "required with national_platform (`ebc platform codes` "
                                          "proposes one)")

    _area = field_validator("area_code")(check_area_code)
