"""How a CAP alert reaches the inbox, by source — the first step of "how an alert becomes a broadcast".

Every source ends in :meth:`AlertService.ingest <controller.alerts.inbox.AlertService.ingest>`
(which stores, decides by the rules and submits to the engine through controller.broadcast.ports);
what differs is who the alert counts as, and that is decided here, in one place:

* API ``POST /api/v1/alerts/cap``: source ``api``, the token's holder, no level (the rules' default,
  county) — the route (controller/api/routers/alerts.py) calls the inbox itself;
* a feed poller (controller/alerts/feeds.py): ``feed:<id> <where>``, ``feed:<id>`` via ``cap``, the
  feed's configured level;
* the county's MQTT alert topics: ``mqtt:<topic>``, ``county-mqtt`` via ``county``, ``county``;
* the signed ``alert`` command: ``county:<key id>``, the verified key, the command's level.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from controller.core.actors import Actor
from controller.core.lifecycle import cancel_and_wait

log = logging.getLogger(__name__)


class Inbox(Protocol):
    """The inbox's one entry (controller/alerts/inbox.py: AlertService)."""

    async def ingest(self, document: bytes | str, *, source: str, actor: Actor,
                     source_level: str | None = None) -> dict[str, Any]: ...


class AlertIngress:
    """Feeds, the county's MQTT alert topics and the signed ``alert`` command, into the inbox.

    A service: the MQTT reporter hears alert topics before the inbox has started (it connects
    first), so documents are taken only between :meth:`start` and :meth:`stop`; an MQTT ingest
    still running at stop is cancelled — the document stays stored and is decided on restart.
    """

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._open = False
        self._tasks: set[asyncio.Task[None]] = set()
        """CAP documents from MQTT being ingested (the reporter's hook must not block)."""

    async def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self._open = False
        await cancel_and_wait(*self._tasks)

    async def from_feed(self, document: bytes, source: str, source_level: str) -> dict[str, Any]:
        """A feed poller's document; the actor is the feed (``feed:<id>``), its level the feed's."""
        return await self.inbox.ingest(document, source=source, source_level=source_level,
                                       actor=Actor(name=source.split(" ", 1)[0], via="cap"))

    async def from_county_command(self, document: bytes, actor: Actor, source_level: str) -> dict[str, Any]:
        """The signed county ``alert`` command: the verified key is the actor."""
        return await self.inbox.ingest(document, source=f"county:{actor.name}", actor=actor,
                                       source_level=source_level)

    def from_mqtt(self, payload: bytes, topic: str) -> None:
        """A CAP document on one of ``alerts.mqtt_topics``: ingested in a task (the hook must not block)."""
        if not self._open:
            log.warning("CAP document on %r (%d bytes) dropped: the alert inbox is not running",
                        topic[:128], len(payload))
            return
        task = asyncio.create_task(self._mqtt_alert(payload, topic), name=f"mqtt alert {topic[:48]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mqtt_alert(self, payload: bytes, topic: str) -> None:
        try:
            record = await self.inbox.ingest(payload, source=f"mqtt:{topic}", source_level="county",
                                             actor=Actor(name="county-mqtt", via="county"))
        except ValueError as exc:  # refused and audited by the inbox; nobody to answer on MQTT
            log.warning("CAP document on MQTT topic %r refused: %s", topic[:128], exc)
            return
        log.info("CAP document on MQTT topic %r: alert %s, %s", topic[:128], record["id"],
                 record["disposition"])
