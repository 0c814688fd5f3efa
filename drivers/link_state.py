"""Up/down state of one line (serial port or TCP endpoint), shared by every line driver.

Callers need to fail fast with a reason while a line is down, tests and the controller need to
wait for it to come back, and health reporting wants to hear about each change once.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

log = logging.getLogger(__name__)

LineStateCallback = Callable[[bool, str], None]
"""``(up, reason)``: called on every change (reason is "" when up)."""


class LinkState:
    """Whether a line is up, why not, and who to tell. Use from the event-loop thread only."""

    def __init__(self, name: str, on_change: LineStateCallback | None = None) -> None:
        self.name = name
        self.reason = "not started"
        self._on_change = on_change
        self._up = asyncio.Event()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def set_up(self) -> None:
        self.reason = ""
        self._up.set()
        log.info("line %s up", self.name)
        self._notify(True, "")

    def set_down(self, reason: str, *, notify: bool = True) -> None:
        """Record why the line is down; ``notify=False`` for an orderly close."""
        was_up = self.up
        self.reason = reason
        self._up.clear()
        if notify and was_up:
            log.warning("line %s down: %s", self.name, reason)
            self._notify(False, reason)

    def _notify(self, up: bool, reason: str) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(up, reason)
        except Exception:  # an observer must not break the driver (we may be inside pymodbus)
            log.exception("line %s: state observer failed", self.name)

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait until the line is up; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: 3.11's can lose a cancel
                await self._up.wait()
        except TimeoutError:
            return False
        return True


class LineDriver(ABC):
    """What the controller can rely on for every line driver (Modbus arbiter, FM module):
    start/close (also as ``async with``), whether the line is up, why not, and waiting for it."""

    _link: LinkState

    @abstractmethod
    async def start(self) -> None:
        """Begin using the line; a missing port is retried in the background, never raised."""

    @abstractmethod
    async def close(self) -> None:
        """Stop and release the port."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @property
    def down_reason(self) -> str:
        """Why the line is down ("" while it is up)."""
        return "" if self.connected else self._link.reason

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the line is up; False on timeout."""
        return await self._link.wait_up(timeout_s)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
