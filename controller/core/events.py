"""A small in-process event bus: the core publishes, features (API stream, MQTT, health) subscribe.

Events are frozen dataclasses, one per kind, and name a device ``device_id`` whatever kind they
are. What the county and the console read (docs/mqtt.md, the SSE stream) is each event's
:meth:`Event.wire` dict, whose keys predate this and stay as they were (``device``, ``id``, …):
the translation is there and nowhere else.

Subscribers get their own bounded queue so a slow one (a stalled browser) never blocks the
engine; when its queue is full the oldest event is dropped for that subscriber only and it is
told so with a ``dropped_before`` count on the next event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened; a subclass per kind."""

    kind: ClassVar[str]
    """The kind on the wire: ``event:`` of the SSE stream, ``kind`` of MQTT and outbox records."""
    ts: float = field(default_factory=time.time)
    dropped_before: int = 0
    """Events this subscriber lost just before this one (its queue was full); 0 for listeners."""

    def wire(self) -> dict[str, Any]:
        """The event's ``data`` as published (MQTT ``events``/``broadcasts``, outbox, SSE)."""
        data = self._wire()
        if self.dropped_before:
            data["dropped_before"] = self.dropped_before
        return data

    def _wire(self) -> dict[str, Any]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------- devices


@dataclass(frozen=True, kw_only=True)
class DeviceEvent(Event):
    """About one device (a terminal, an FM transmitter, or the gateway itself for its own faults)."""

    device_id: str


@dataclass(frozen=True)
class DeviceCard:
    """What the registry shows of a device besides its health (the console's card), at the time."""

    name: str
    village: str
    area_code: str
    line: str
    failure: str | None
    values: Mapping[str, Any] | None
    location: Mapping[str, float] | None
    zones: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class DeviceState(DeviceEvent):
    """A device's state code, online flag or fault set changed."""

    kind: ClassVar[str] = "device.state"
    device_kind: str
    """``terminal``, ``fm_transmitter`` or ``gateway``."""
    state: int | None
    state_name: str
    state_name_zh: str
    online: bool | None
    last_seen: float | None
    broadcasting: bool
    faults: tuple[Mapping[str, Any], ...]
    previous_state: int | None
    previous_online: bool | None
    card: DeviceCard | None = None
    """None for a device the registry does not know: the wire dict then starts with ``id`` only."""

    def _wire(self) -> dict[str, Any]:
        # Key order as published since the registry view was merged with the health fields.
        faults = [dict(f) for f in self.faults]
        data: dict[str, Any] = {"id": self.device_id}
        c = self.card
        if c is not None:
            data.update(name=c.name, village=c.village, area_code=c.area_code, line=c.line,
                         kind=self.device_kind, online=self.online, last_seen=self.last_seen,
                         failure=c.failure, values=None if c.values is None else dict(c.values),
                         state=self.state, state_name=self.state_name, faults=faults,
                         location=None if c.location is None else dict(c.location), zones=list(c.zones))
        data.update(device=self.device_id, kind=self.device_kind, state=self.state,
                    state_name=self.state_name, state_name_zh=self.state_name_zh, online=self.online,
                    last_seen=self.last_seen, broadcasting=self.broadcasting, faults=faults,
                    previous_state=self.previous_state, previous_online=self.previous_online)
        return data


@dataclass(frozen=True, kw_only=True)
class _FaultEvent(DeviceEvent):
    device_kind: str
    name: str
    village: str
    fault: str
    """Stable code, e.g. ``mains_lost``, ``release_pending``."""
    zone: int | None
    reason: str
    reason_zh: str
    values: Mapping[str, Any]
    since: float
    """Wall-clock time the fault was raised."""

    def _wire(self) -> dict[str, Any]:
        return {"device": self.device_id, "kind": self.device_kind, "name": self.name,
                "village": self.village, "fault": self.fault, "zone": self.zone, "reason": self.reason,
                "reason_zh": self.reason_zh, "values": dict(self.values), "since": self.since}


@dataclass(frozen=True, kw_only=True)
class DeviceFault(_FaultEvent):
    """A fault was raised."""

    kind: ClassVar[str] = "device.fault"


@dataclass(frozen=True, kw_only=True)
class DeviceRecovered(_FaultEvent):
    """A fault cleared; ``reason`` says which (``recovered: …``)."""

    kind: ClassVar[str] = "device.recovered"
    duration_s: float

    def _wire(self) -> dict[str, Any]:
        return {**super()._wire(), "duration_s": self.duration_s}


@dataclass(frozen=True, kw_only=True)
class DeviceAlarm(DeviceEvent):
    """An unsolicited FM transmitter alarm, published before health has judged it."""

    kind: ClassVar[str] = "device.alarm"
    bits: int
    alarms: tuple[str, ...]

    def _wire(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "bits": self.bits, "alarms": list(self.alarms)}


# -------------------------------------------------------------------------------------- broadcasts


@dataclass(frozen=True, kw_only=True)
class BroadcastEvent(Event):
    broadcast_id: str


@dataclass(frozen=True, kw_only=True)
class BroadcastStateChanged(BroadcastEvent):
    """A broadcast's state (not named BroadcastState: that is the state enum)."""

    kind: ClassVar[str] = "broadcast.state"
    state: int
    name: str
    reason: str | None
    coverage: float | None = None
    submitted: bool = False
    """The announcement of a new broadcast, whose wire dict has never carried ``coverage``."""

    def _wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.broadcast_id, "state": self.state, "name": self.name,
                                "reason": self.reason}
        if not self.submitted:
            data["coverage"] = self.coverage
        return data


@dataclass(frozen=True, kw_only=True)
class BroadcastOutcome(BroadcastEvent):
    """One device's outcome of a broadcast, with the read-back evidence figures."""

    kind: ClassVar[str] = "broadcast.outcome"
    device_id: str
    outcome: str
    reason: str
    joined_late: bool
    missed_s: float
    audible_s: float
    joined_at_s: float | None

    def _wire(self) -> dict[str, Any]:
        return {"id": self.broadcast_id, "device": self.device_id, "outcome": self.outcome,
                "reason": self.reason, "joined_late": self.joined_late, "missed_s": self.missed_s,
                "audible_s": self.audible_s, "joined_at_s": self.joined_at_s}


# ------------------------------------------------------------------------------------------ alerts


@dataclass(frozen=True, kw_only=True)
class AlertReceived(Event):
    """An alert was taken in and decided on (played, pending approval, ignored, …)."""

    kind: ClassVar[str] = "alert.received"
    alert_id: str
    disposition: str
    cap_event: str | None
    """The CAP ``event`` (what the alert is about)."""
    severity: str | None
    headline: str | None
    level: int | str | None
    villages: tuple[str, ...]
    broadcast_id: str | None
    reason: str

    def _wire(self) -> dict[str, Any]:
        return {"id": self.alert_id, "disposition": self.disposition, "event": self.cap_event,
                "severity": self.severity, "headline": self.headline, "level": self.level,
                "villages": list(self.villages), "broadcast_id": self.broadcast_id, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class AlertDecided(Event):
    """A person, a deadline or a later alert decided an alert afterwards."""

    kind: ClassVar[str] = "alert.decided"
    alert_id: str
    disposition: str
    by: str
    broadcast_id: str | None
    reason: str

    def _wire(self) -> dict[str, Any]:
        return {"id": self.alert_id, "disposition": self.disposition, "by": self.by,
                "broadcast_id": self.broadcast_id, "reason": self.reason}


# -------------------------------------------------------------------------------- national platform


@dataclass(frozen=True, kw_only=True)
class PlatformExchange(Event):
    """An EBD package exchanged with the national platform and what was decided about it
    (controller/uplink/national/): every inbound request and every report that was answered."""

    kind: ClassVar[str] = "national.ebd"
    direction: str
    """``in`` (the platform asked) or ``out`` (we reported)."""
    ebd_type: str
    ebdid: str
    related_ebdid: str | None
    result_code: int | None
    """EBDResponse ResultCode: 1 accepted, 2 parse failed, 3 content missing, 4 bad signature, 5 other."""
    result_desc: str
    peer: str
    """The platform's EBRID, or its address when the package could not be read."""
    broadcast_id: str | None = None

    def _wire(self) -> dict[str, Any]:
        return {"direction": self.direction, "ebd_type": self.ebd_type, "ebdid": self.ebdid,
                "related_ebdid": self.related_ebdid, "result_code": self.result_code,
                "result_desc": self.result_desc, "peer": self.peer, "broadcast_id": self.broadcast_id}


# ----------------------------------------------------------------------------------------- gateway


@dataclass(frozen=True, kw_only=True)
class GatewayHealth(Event):
    """The periodic gateway snapshot (controller/devices/health.py: HealthMonitor.snapshot)."""

    kind: ClassVar[str] = "gateway.health"
    snapshot: Mapping[str, Any]

    def _wire(self) -> dict[str, Any]:
        return dict(self.snapshot)


# --------------------------------------------------------------------------------------------- bus

E = TypeVar("E", bound=Event)


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

    def publish(self, event: E) -> E:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event.kind)
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
                    event = dataclasses.replace(event, dropped_before=sub.dropped)
                    sub.dropped = 0
                yield event
        finally:
            self._subs.discard(sub)
