"""A pseudo-terminal standing in for a serial port, paced at its baud rate.

The gateway (or ``mbpoll``) opens the symlink like any serial device. A pty moves bytes
instantly, so this class puts the wire back: incoming bytes are taken to arrive one character
time apart after the line is free, and outgoing bytes are written in small chunks so the last one
arrives when it would on a real line. Unplugging closes the pty and removes the link, as pulling a
USB-RS485 adapter would; plugging back in creates a new pty behind the same link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tty
from collections.abc import Callable
from pathlib import Path

from simulator.spec import SerialLineSpec

log = logging.getLogger(__name__)

CHUNK_S = 0.004
"""Outgoing bytes are released in chunks of about this much wire time."""


def char_time_s(spec: SerialLineSpec) -> float:
    """Seconds per character: start bit + data bits + parity + stop bits, at the baud."""
    bits = 1 + spec.bytesize + (0 if spec.parity == "N" else 1) + spec.stopbits
    return bits / spec.baudrate


class PtyPort:
    """One serial line end: the simulator holds the pty master, clients open the linked slave."""

    def __init__(self, spec: SerialLineSpec, on_bytes: Callable[[bytes, float], None]) -> None:
        """``on_bytes(data, arrived_at)`` gets every received chunk with the loop time at which its
        last byte has arrived on the (simulated) wire."""
        self.spec = spec
        self.char_s = char_time_s(spec)
        self.link = Path(spec.link_path)
        self._on_bytes = on_bytes
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tx_lock = asyncio.Lock()
        self.wire_free = 0.0
        """Loop time at which the half-duplex wire is next idle."""
        self.tx_end = -math.inf
        """Loop time at which the last byte of the latest transmission left (or will leave) the
        simulated wire; the pty may deliver it later, as a USB adapter would, never earlier."""
        self.bytes_in = 0
        self.bytes_out = 0
        self.bytes_dropped = 0

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        return os.ttyname(self._slave) if self._slave is not None else None

    def open(self) -> None:
        """Create the pty and point the link at it (replacing a stale link)."""
        if self.plugged:
            return
        self._loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: clients normally do this too, but not all
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)  # atomic: a client never sees the link missing or half-made
        self._loop.add_reader(master, self._readable)
        self.wire_free = self._loop.time()

    def close(self) -> None:
        """Remove the link (if it is still ours) and close the pty; clients see a hang-up."""
        if self._master is None:
            return
        name = self.slave_name
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        with contextlib.suppress(OSError):
            if self.link.is_symlink() and os.readlink(self.link) == name:
                self.link.unlink()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self._master = self._slave = None

    def _readable(self) -> None:
        assert self._master is not None and self._loop is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nothing holds the slave (cannot happen while we keep it open)
            return
        if not data:
            return
        self.bytes_in += len(data)
        self.wire_free = max(self.wire_free, self._loop.time()) + len(data) * self.char_s
        self._on_bytes(data, self.wire_free)

    async def send(self, data: bytes) -> None:
        """Transmit ``data`` at the baud once the wire is free; returns when the last byte is out."""
        loop = asyncio.get_running_loop()
        async with self._tx_lock:
            start = max(loop.time(), self.wire_free)
            self.wire_free = self.tx_end = start + len(data) * self.char_s
            chunk = max(1, int(CHUNK_S / self.char_s))
            for i in range(0, len(data), chunk):
                part = data[i:i + chunk]
                due = start + (i + len(part)) * self.char_s
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._write(part)

    def _write(self, part: bytes) -> None:
        if self._master is None:  # unplugged mid-reply: the rest is lost, as on a real cable
            self.bytes_dropped += len(part)
            return
        try:
            written = os.write(self._master, part)
        except (BlockingIOError, OSError):
            written = 0  # nobody reads and the pty buffer is full
        self.bytes_out += written
        self.bytes_dropped += len(part) - written

    def stats(self) -> dict[str, object]:
        return {"plugged": self.plugged, "link": str(self.link), "pty": self.slave_name,
                "baudrate": self.spec.baudrate, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "bytes_dropped": self.bytes_dropped}
