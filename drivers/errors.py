"""The ways talking to a device can fail, as exception types callers can tell apart.

"The device said no" (a Modbus exception or an AT ``ERROR``), "the device did not answer" and
"the line itself is down" call for different reactions — report a refused command, count towards
offline, or stop polling until the port is back — so each is its own type.
"""

from __future__ import annotations

MODBUS_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class DriverError(Exception):
    """Base of every communication failure raised by ``drivers``."""


class LineDownError(DriverError):
    """The line (serial port or TCP endpoint) is not usable right now; nothing was sent."""


class NoResponseError(DriverError):
    """The device did not answer (timeouts, or only garbled replies) after every retry."""

    def __init__(self, message: str, *, attempts: int = 1, garbled: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.garbled = garbled


class DeviceExceptionError(DriverError):
    """The device answered, refusing the request with a Modbus exception code."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def code_name(self) -> str:
        return MODBUS_EXCEPTION_NAMES.get(self.code, f"exception {self.code}")


class AtCommandError(DriverError):
    """An AT device answered ``ERROR:<code>``."""

    def __init__(self, command: str, code: str) -> None:
        super().__init__(f"{command!r} refused: ERROR:{code}")
        self.command = command
        self.code = code
