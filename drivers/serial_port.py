"""What every serial-line driver shares: the port's settings and noticing the port vanish.

A pulled USB adapter's device node disappears, and a re-plugged one may come back under the same
path as a different device; an already-open file descriptor says neither reliably, so drivers
compare what the path points at now with what it pointed at when they opened it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PortIdentity = tuple[int, int, int, int]


@dataclass(frozen=True)
class SerialPortSettings:
    """A serial port and its framing (the controller maps its line config onto a subclass)."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    reconnect_interval_s: float = 0.1
    """How often a missing port path is looked for (a stat, cheap)."""
    vanish_check_interval_s: float = 1.0
    """How often the path of an open port is checked for having vanished or been replaced
    (a port that errors or closes is noticed at once; this catches a silently replaced one)."""
    name: str = ""

    @property
    def char_s(self) -> float:
        """Seconds per character on the wire: start + data + parity + stop bits."""
        return (1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits) / self.baudrate


def port_identity(path: str) -> PortIdentity | None:
    """What ``path`` (often a symlink) points at now, or None if it does not exist."""
    try:
        link = os.lstat(path)
        target = os.stat(path)
    except OSError:
        return None
    return (link.st_ino, link.st_mtime_ns, target.st_rdev, target.st_ino)
