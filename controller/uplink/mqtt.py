"""Reporting to the county centre over MQTT (paho-mqtt 2.x); topics and payloads in docs/mqtt.md.

What the county sees, below ``<prefix>/<gateway id>/``:

``status``               retained ``online`` / ``offline`` (plain text; ``offline`` is the Last Will
                         and is also published on a graceful stop)
``birth``                retained inventory: the gateway and every device
``devices/<id>/state``   retained current state of one device
``events``               QoS 1, one message per event, each with a ``seq`` from the outbox
``broadcasts/<id>``      QoS 1, progress and per-terminal outcome of one broadcast
``health``               QoS 1, periodic gateway health snapshot
``cmd/<name>``           in: county commands (controller/uplink/commands.py); answered on
                         ``cmd/<name>/response`` (QoS 1, not retained)

Also in, on whatever topics ``alerts.mqtt_topics`` names (subscribed QoS 1 on every connection):
CAP documents pushed by the county, handed as they are to :attr:`MqttReporter.on_alert_document`.
A message on ``cmd/<name>`` is always a command, even if an alert topic filter matches it too.

Everything with a ``seq`` goes through the durable outbox (controller/uplink/outbox.py): an event is
written there by a synchronous bus listener, inside ``EventBus.publish``, so no event is missed,
and the reporter sends only outbox rows, deleting each on its PUBACK. Retained state (status,
birth, device states) is not queued: it is re-published in full on every connection instead.

Coming online: on every connection the reporter first waits until the county command handler is
ready (``CommandHandler.ready``: the daemon starts it after the engine and the alert inbox), then
subscribes to ``cmd/+`` and the alert topics and waits for the broker's SUBACK, and only then
announces ``online``, ``birth`` and the device states and lets the outbox flow. So a county that
sends a command the moment it sees ``online`` finds it subscribed and executed, not ``unavailable``.

Connections: one paho client per connection attempt, its network loop in paho's own thread
(``loop_start``), every callback hopping back to asyncio with ``call_soon_threadsafe``. When a
connection ends the client is dropped with whatever paho still held in memory, and the next one
re-sends every unacknowledged row from the outbox in ``seq`` order — so the order on the wire
is the outbox order, and everything replayed is marked ``historical: true``. Brokers are tried in
turn (the next one after any failure), waiting ``reconnect_min_s`` doubling to
``reconnect_max_s`` while attempts fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.config import BrokerAddress, Config, MqttSettings
from controller.core.events import (
    BroadcastEvent,
    BroadcastStateChanged,
    DeviceEvent,
    Event,
    EventBus,
    GatewayHealth,
)
from controller.core.lifecycle import cancel_and_wait
from controller.devices.registry import DeviceRegistry
from controller.uplink.outbox import Outbox, OutboxRow, event_record

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 15.0
"""A broker that accepted TCP (and TLS) but sends no CONNACK within this is given up on."""
CONNECT_TIMEOUT_S = 10.0
STOP_DRAIN_S = 3.0
"""On a graceful stop, how long to wait for the outbox to empty and for ``offline`` to be acked."""

_UNSAFE_IN_TOPIC = str.maketrans({"/": "_", "+": "_", "#": "_"})


class CommandHandler(Protocol):
    """The county's command checker (controller/uplink/commands.py: CountyCommands); never raises."""

    async def handle(self, name: str, payload: bytes) -> dict[str, Any]: ...

    async def ready(self) -> None:
        """Return once commands are executed: the gateway is announced ``online`` only then."""
        ...


@dataclass(eq=False)
class _Session:
    """One connection attempt: its own paho client, and what is in flight on it."""

    broker: BrokerAddress
    client: paho.Client | None = None
    connected: bool = False
    """CONNACK accepted."""
    ready: bool = False
    """Subscribed, command handler ready, retained state announced; outbox rows may flow."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: dict[int, int] = field(default_factory=dict)
    """paho message id → outbox seq, sent and not yet acknowledged."""
    cursor: int = 0
    """Highest seq handed to paho in this session."""
    replay_upto: int = 0
    """Rows up to this seq were written before the gateway came online on it: they are historical."""
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    """paho message id of a publish or a subscribe → resolved on its PUBACK / SUBACK (or the end)."""
    subscribing: dict[int, str] = field(default_factory=dict)
    """paho message id → topic filter, awaiting its SUBACK."""
    why: str = ""


def _version() -> str:
    try:
        return importlib.metadata.version("ebc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def stamp(row: OutboxRow, historical: bool) -> bytes:
    """The wire payload of an outbox row: its ``seq`` and ``historical`` flag first, then its body."""
    head = f'{{"seq":{row.seq},"historical":{"true" if historical else "false"}'
    body = row.payload[1:]
    return (head + ("," + body if body != "}" else "}")).encode("utf-8")


class MqttReporter:
    """Keeps the county informed; see the module docstring. ``await start()``, ``await stop()``."""

    def __init__(self, cfg: Config, bus: EventBus, outbox: Outbox, registry: DeviceRegistry, *,
                 health: Callable[[], dict[str, Any]] | None = None,
                 queue_depth: Callable[[], int] | None = None,
                 commands: CommandHandler | None = None,
                 on_alert_document: Callable[[bytes, str], None] | None = None) -> None:
        """Registers the bus listener at once, so events published before ``start()`` are kept too.

        ``on_alert_document`` gets (payload, topic) of each message on :attr:`alert_topics`, on the
        event loop; it must not block (controller/alerts/ingress.py schedules the ingest as a task).
        """
        if cfg.mqtt is None:
            raise ValueError("the config has no mqtt section")
        self.cfg = cfg
        self.settings: MqttSettings = cfg.mqtt
        self.outbox = outbox
        self.registry = registry
        self.health = health
        self.queue_depth = queue_depth
        self.commands = commands
        self.alert_topics = list(cfg.alerts.mqtt_topics)
        self.on_alert_document = on_alert_document
        self.root = f"{self.settings.prefix}/{cfg.gateway.id}"
        self.client_id = self.settings.client_id or cfg.gateway.id
        self.brokers = self.settings.addresses()
        self._base = cfg.path.parent if cfg.path is not None else Path.cwd()
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._acks: list[int] = []
        self._pump_due = False
        self._flush_due = False
        self._dirty_devices: set[str] = set()
        self._stopping = False
        self.attempts = 0
        """Connection attempts since start, successful or not (for /metrics and tests)."""
        self.connects = 0
        """Successful connections since start."""
        bus.add_listener(self._on_event)

    # -- public ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.ready

    @property
    def broker(self) -> str | None:
        """URL of the broker in use, if connected."""
        return self._session.broker.url if self.connected and self._session else None

    async def start(self) -> None:
        """Start connecting (in the background: no broker is no reason not to run) and reporting."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._supervise(), name="mqtt connection"),
                       asyncio.create_task(self._health_loop(), name="mqtt health")]
        self._kick()

    async def stop(self) -> None:
        """Let queued reports go out briefly, publish ``offline`` (retained), disconnect cleanly."""
        self._stopping = True
        session = self._session
        if session is not None and session.ready and session.client is not None:
            deadline = time.monotonic() + STOP_DRAIN_S
            while (self.outbox.depth or session.inflight) and time.monotonic() < deadline \
                    and not session.ended.is_set():
                await asyncio.sleep(0.05)
            info = session.client.publish(self._topic("status"), "offline", qos=1, retain=True)
            waiter = self._waiter(session, info)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, max(0.1, deadline - time.monotonic()) + 2.0)
            session.client.disconnect()  # a clean DISCONNECT: the broker discards the Will
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # not wait_for: 3.11's can lose a cancel
                    await session.ended.wait()
        await cancel_and_wait(*self._tasks, *self._spawned)
        self._tasks = []
        self._flush_acks()

    async def rebirth(self) -> None:
        """Re-send status, birth and every device's retained state (the county's ``rebirth``)."""
        session = self._session
        if session is None or not session.connected:
            raise RuntimeError("not connected to a broker")
        self._announce(session)

    # -- bus → outbox ------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Bus listener (synchronous, inside ``publish``): write the event to the outbox now."""
        kind, record = event.kind, event_record(event.kind, event.wire(), event.ts)
        if isinstance(event, BroadcastEvent):
            self.outbox.append(kind, f"broadcasts/{event.broadcast_id.translate(_UNSAFE_IN_TOPIC)}", record)
            if isinstance(event, BroadcastStateChanged):  # on ``events`` too, as the same record
                self.outbox.append(kind, "events", record)
        elif not isinstance(event, GatewayHealth):  # the periodic snapshot has its own topic
            self.outbox.append(kind, "events", record)
        if isinstance(event, DeviceEvent) and event.device_id in self.registry.devices:
            self._dirty_devices.add(event.device_id)
        self._kick()

    def _health_payload(self) -> dict[str, Any]:
        """The health monitor's snapshot (or a minimal one without it), plus outbox and connection."""
        snap: dict[str, Any] | None = None
        if self.health is not None:
            try:
                snap = dict(self.health())
            except Exception:
                log.exception("health snapshot failed; reporting the minimal one")
        if snap is None:
            snap = {"uptime_s": round(time.time() - self.started_at, 1),
                    "queue_depth": None if self.queue_depth is None else self.queue_depth()}
        stats = self.outbox.stats()
        snap["outbox"] = {"depth": stats.depth, "health_depth": stats.droppable_depth,
                          "dropped_health": stats.dropped_droppable, "dropped_events": stats.dropped_kept,
                          "overflows": stats.overflows}
        snap["mqtt"] = {"broker": self.broker, "connects": self.connects}
        return event_record("gateway.health", snap)

    async def _health_loop(self) -> None:
        while True:
            try:
                self.outbox.append("gateway.health", "health", self._health_payload(), droppable=True)
                self._kick()
            except Exception:
                log.exception("cannot queue the health snapshot")
            await asyncio.sleep(self.settings.health_interval_s)

    # -- outbox → broker ---------------------------------------------------------------------------

    def _kick(self) -> None:
        """Schedule one pump on the loop (from any thread); repeated kicks coalesce."""
        if self._loop is None or self._pump_due:
            return
        self._pump_due = True
        with contextlib.suppress(RuntimeError):  # loop closed: nothing to send any more
            self._loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        """Send outbox rows in seq order while fewer than ``inflight`` await their PUBACK."""
        self._pump_due = False
        session = self._session
        if session is None or not session.ready or session.client is None:
            return
        for device in list(self._dirty_devices):
            self._publish_state(session, device)
        self._dirty_devices.clear()
        window = self.settings.inflight
        while (room := window - len(session.inflight)) > 0:
            rows = self.outbox.pending(after=session.cursor, limit=room)
            if not rows:
                return
            for row in rows:
                payload = stamp(row, historical=row.seq <= session.replay_upto)
                info = session.client.publish(self._topic(row.topic), payload, qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # the connection is going; the next session re-sends from the outbox
                session.inflight[info.mid] = row.seq
                session.cursor = row.seq

    def _on_ack(self, session: _Session, mid: int, failed: bool) -> None:
        waiter = session.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        seq = session.inflight.pop(mid, None)
        if seq is None:
            return
        if failed:  # MQTT 5 brokers may refuse one message (e.g. ACL); keep it for the next session
            log.error("broker refused outbox row %d; it stays queued", seq)
            return
        self._acks.append(seq)
        if not self._flush_due:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        """Delete a burst of acknowledged rows in one transaction, then refill the window."""
        self._flush_due = False
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                self.outbox.ack_many(acks)
            except Exception:  # they stay queued and are sent again: a duplicate, not a loss
                log.exception("cannot delete %d acknowledged outbox rows", len(acks))
        self._pump()

    # -- retained state ----------------------------------------------------------------------------

    def _topic(self, suffix: str) -> str:
        return f"{self.root}/{suffix}"

    def birth(self) -> dict[str, Any]:
        """The inventory the county builds its screens from."""
        cfg, gw = self.cfg, self.cfg.gateway
        devices = []
        for dev in cfg.devices:
            view = self.registry.devices.get(dev.id)
            devices.append({"id": dev.id, "name": dev.name, "village": dev.village,
                            "area_code": dev.area_code, "location": dev.location.model_dump(),
                            "line": dev.line, "line_type": cfg.line(dev.line).type, "profile": dev.profile,
                            "kind": view.kind if view else None, "unit_id": dev.unit_id, "zones": dev.zones})
        return {"gateway": {"id": gw.id, "name": gw.name, "area_code": gw.area_code,
                            "location": gw.location.model_dump()},
                "version": _version(), "started_at": self.started_at, "ts": time.time(),
                "topics": {"root": self.root}, "devices": devices}

    def _publish_state(self, session: _Session, device: str) -> None:
        assert session.client is not None
        view = self.registry.devices[device]
        payload = _json({**view.as_dict(), "ts": time.time()})
        session.client.publish(self._topic(f"devices/{device}/state"), payload, qos=1, retain=True)

    def _announce(self, session: _Session) -> None:
        """status online, birth, every device state — all retained, so a late subscriber sees them."""
        assert session.client is not None
        session.client.publish(self._topic("status"), "online", qos=1, retain=True)
        session.client.publish(self._topic("birth"), _json(self.birth()), qos=1, retain=True)
        for device in self.registry.devices:
            self._publish_state(session, device)

    def _waiter(self, session: _Session, info: paho.MQTTMessageInfo) -> asyncio.Future[None]:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            session.waiters[info.mid] = fut
        else:
            fut.set_result(None)
        return fut

    # -- commands ----------------------------------------------------------------------------------

    def _on_command(self, name: str, payload: bytes) -> None:
        task = asyncio.create_task(self._answer(name, payload), name=f"mqtt cmd {name[:32]}")
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _answer(self, name: str, payload: bytes) -> None:
        if self.commands is None:
            response: dict[str, Any] = {"correlation_id": _correlation_id(payload), "ok": False,
                                        "error": "unavailable",
                                        "message": "county commands are not configured on this gateway"}
        else:
            try:
                response = await self.commands.handle(name, payload)
            except Exception:
                log.exception("county command handler failed on %r", name[:64])
                response = {"correlation_id": _correlation_id(payload), "ok": False,
                            "error": "internal_error",
                            "message": "the gateway failed while handling the command; see its log"}
        session = self._session
        if session is None or session.client is None or not session.connected:
            log.warning("response to county command %r (correlation id %r) not sent: disconnected",
                        name[:64], response.get("correlation_id"))
            return
        session.client.publish(self._topic(f"cmd/{name}/response"), _json(response), qos=1, retain=False)

    # -- connections -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect to the brokers in turn, forever; back off while attempts fail."""
        delay = self.settings.reconnect_min_s
        index = 0
        while not self._stopping:
            session = _Session(self.brokers[index % len(self.brokers)])
            self._session = session
            self.attempts += 1
            try:
                await self._run(session)
            finally:
                self._session = None
                await self._end(session)
            if self._stopping:
                return
            if session.connected:
                delay = self.settings.reconnect_min_s
            log.warning("MQTT %s: %s; next attempt in %.1f s", session.broker.url,
                        session.why or "disconnected", delay)
            index += 1
            await asyncio.sleep(delay)
            if not session.connected:
                delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _run(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        try:
            client = session.client = self._client(session)
            await loop.run_in_executor(None, client.connect, session.broker.host, session.broker.port,
                                       self.settings.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            session.why = f"cannot connect ({exc})"
            return
        client.loop_start()
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):  # not wait_for: 3.11's can lose a cancel
                await session.ended.wait()
        except TimeoutError:
            if not session.connected:
                session.why = f"no CONNACK within {CONNACK_TIMEOUT_S:g} s"
                client.disconnect()
                return
            await session.ended.wait()

    async def _end(self, session: _Session) -> None:
        """Drop the session's client (and what paho held of it); acks already received still count."""
        session.ready = False
        client = session.client
        if client is not None:
            if not session.ended.is_set():
                client.disconnect()  # cancelled (stop) before the connection ended: close it cleanly
            await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)
        for waiter in session.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._flush_acks()

    def _client(self, session: _Session) -> paho.Client:
        s = self.settings
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=paho.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(0)  # unlimited in paho: our window (settings.inflight) bounds it
        client.max_queued_messages_set(0)
        client.will_set(self._topic("status"), "offline", qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.read_password(self._base))
        if session.broker.tls:
            ca, cert, key = (s.file(n, self._base) for n in ("ca_file", "cert_file", "key_file"))
            client.tls_set(ca_certs=str(ca) if ca else None, certfile=str(cert) if cert else None,
                           keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._cb(session, self._on_connect)
        client.on_disconnect = self._cb(session, self._on_disconnect)
        client.on_publish = self._cb(session, self._on_publish)
        client.on_subscribe = self._cb(session, self._on_subscribe)
        client.on_message = self._cb(session, self._on_message)
        return client

    def _cb(self, session: _Session, handler: Callable[..., None]) -> Callable[..., None]:
        """A paho callback (paho's thread) that runs ``handler(session, ...)`` on the asyncio loop."""
        loop = self._loop
        assert loop is not None

        def callback(client: paho.Client, userdata: Any, *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed at exit: nothing left to tell
                loop.call_soon_threadsafe(handler, session, *args)
        return callback

    def _on_connect(self, session: _Session, flags: Any, reason: ReasonCode,
                    props: Properties | None) -> None:
        if reason.is_failure:
            session.why = f"connection refused: {reason}"
            return  # paho closes the socket; on_disconnect ends the session
        if session is not self._session or self._stopping:
            return
        session.connected = True
        self.connects += 1
        task = asyncio.create_task(self._come_online(session), name="mqtt online")
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def _current(self, session: _Session) -> bool:
        return session is self._session and not session.ended.is_set() and not self._stopping

    async def _come_online(self, session: _Session) -> None:
        """Command handler ready, subscriptions acknowledged — then ``online``, birth, states, outbox."""
        if self.commands is not None:
            await self.commands.ready()
        client = session.client
        if not self._current(session) or client is None:
            return
        acks = [self._subscribe(session, self._topic("cmd/+"))]
        for topic in self.alert_topics:
            try:
                acks.append(self._subscribe(session, topic))
            except ValueError as exc:  # one bad filter must not cost the others
                log.error("alerts.mqtt_topics: cannot subscribe to %r: %s", topic, exc)
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):  # not wait_for: 3.11's can lose a cancel
                await asyncio.gather(*acks)
        except TimeoutError:
            session.why = f"no SUBACK within {CONNACK_TIMEOUT_S:g} s"
            client.disconnect()
            return
        if not self._current(session):
            return
        session.replay_upto = self.outbox.last_seq()
        self._announce(session)
        session.ready = True
        log.info("MQTT connected to %s as %s; %d queued report(s) to send", session.broker.url,
                 self.client_id, self.outbox.depth)
        self._dirty_devices.clear()
        self._pump()

    def _subscribe(self, session: _Session, topic: str) -> asyncio.Future[None]:
        """SUBSCRIBE ``topic`` at QoS 1; the future resolves on its SUBACK (or when the session ends)."""
        assert session.client is not None and self._loop is not None
        result, mid = session.client.subscribe(topic, qos=1)
        fut: asyncio.Future[None] = self._loop.create_future()
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            session.waiters[mid] = fut
            session.subscribing[mid] = topic
        else:
            fut.set_result(None)  # the connection is going; the session ends and the next one retries
        return fut

    def _on_subscribe(self, session: _Session, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        topic = session.subscribing.pop(mid, "?")
        if any(reason.is_failure for reason in reasons):
            log.error("the broker refused the subscription to %r (%s): nothing on it will arrive",
                      topic[:128], ", ".join(str(r) for r in reasons))
        waiter = session.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_disconnect(self, session: _Session, flags: Any, reason: ReasonCode,
                       props: Properties | None) -> None:
        if session.connected and not session.why:
            session.why = f"connection lost ({reason})"
        session.ready = False
        session.ended.set()

    def _on_publish(self, session: _Session, mid: int, reason: ReasonCode, props: Properties | None) -> None:
        self._on_ack(session, mid, reason.is_failure)

    def _on_message(self, session: _Session, message: paho.MQTTMessage) -> None:
        if session is not self._session or self._stopping:
            return
        topic = message.topic
        if paho.topic_matches_sub(self._topic("cmd/+"), topic):
            self._on_command(topic.rsplit("/", 1)[-1], bytes(message.payload))
        elif any(paho.topic_matches_sub(sub, topic) for sub in self.alert_topics):
            self._on_alert_document(bytes(message.payload), topic)

    def _on_alert_document(self, payload: bytes, topic: str) -> None:
        hook = self.on_alert_document
        if hook is None:
            log.warning("CAP document on %r (%d bytes) dropped: no alert inbox is attached", topic[:128],
                        len(payload))
            return
        try:
            hook(payload, topic)
        except Exception:
            log.exception("the alert document handler failed on %r", topic[:128])


def _correlation_id(payload: bytes) -> str | None:
    """The request's correlation id, best effort, for answers the command handler did not give."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    cid = doc.get("correlation_id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= 128 else None

