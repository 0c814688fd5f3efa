"""A small in-process event bus: the core publishes, features (API stream, MQTT, health) subscribe.

Subscribers get their own bounded queue so a slow one (a stalled browser) never blocks the
engine; when its queue is full the oldest event is dropped for that subscriber only and it is
told so with a ``dropped`` count on the next event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    kind: str
    """e.g. ``device.state``, ``broadcast.state``, ``broadcast.outcome``, ``audit``."""
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)


class _Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: set[_Subscription] = set()
        self._listeners: list[Listener] = []
        self._queue_size = queue_size

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` synchronously inside every ``publish``, before it returns.

        For consumers that must never miss an event (the durable MQTT outbox writes it to SQLite
        here); keep listeners fast. A failing listener is logged and does not stop the others.
        """
        self._listeners.append(listener)

    def publish(self, kind: str, /, **data: Any) -> Event:
        event = Event(kind, data)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, kind)
        for sub in self._subs:
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(event)
        return event

    async def subscribe(self) -> AsyncIterator[Event]:
        """Yield every event published from now on, until the consumer stops iterating."""
        sub = _Subscription(self._queue_size)
        self._subs.add(sub)
        try:
            while True:
                event = await sub.queue.get()
                if sub.dropped:
                    event = Event(event.kind, {**event.data, "dropped_before": sub.dropped}, event.ts)
                    sub.dropped = 0
                yield event
        finally:
            self._subs.discard(sub)
