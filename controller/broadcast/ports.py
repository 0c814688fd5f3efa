"""The one way into the broadcast engine from outside it: alerts, county commands, the API, the scheduler.

Each of those only submits and cancels (and health only looks at what plays), so they depend on
these Protocols, never on :class:`~controller.broadcast.engine.BroadcastEngine` itself: a test can
hand them a recorder, and the engine can change without touching them.
"""

from __future__ import annotations

from typing import Any, Protocol

from controller.broadcast.model import BroadcastRequest
from controller.core.actors import Actor


class BroadcastPort(Protocol):
    """Submit a broadcast (journalled before the id is returned) or cancel one by id."""

    async def submit(self, request: BroadcastRequest, actor: Actor) -> str: ...

    async def cancel(self, broadcast_id: str, actor: Actor) -> bool: ...


class BroadcastView(Protocol):
    """What is on air and what waits, for health reports (read only)."""

    def current(self) -> str | None: ...

    def queue_snapshot(self) -> list[dict[str, Any]]: ...
