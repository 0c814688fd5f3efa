"""MQTT → the county picture and history: one paho client for every gateway (docs/mqtt.md).

Subscriptions (QoS 1): ``<prefix>/+/status``, ``+/birth`` and ``+/devices/+/state`` — the retained
picture, which every instance receives in full — and ``+/events``, ``+/broadcasts/+`` and
``+/health`` — the history, through ``$share/<share_group>/…`` when several instances share it —
and ``+/cmd/+/response``, handed to :attr:`Ingest.on_response` (the commands module).

paho runs its network loop in its own thread; its message callback only appends to a deque and
wakes the event loop once per burst (``call_soon_threadsafe``), where messages are parsed, applied
to the picture at once (a fault is visible before it is written down) and queued for the writer.
Under a backlog the work is bounded, so memory does not grow with it and the writer keeps pace:
paho's thread waits while :data:`INBOX_MAX` messages are unparsed (its PUBACKs wait too, so the
broker keeps the rest — in the session, which must be persistent to survive a reconnect), the loop
parses :data:`DRAIN_CHUNK` at a time, and stops while :data:`OPS_MAX` updates wait for the writer.
paho itself reads the socket ahead and acknowledges in batches (:class:`_Client`).

The writer stores a burst in one transaction in a worker thread (the burst's reports in
multi-row ``INSERT`` statements, its device states in one ``executemany``), keeps only reports
whose (gateway, seq) is new (the database's unique key decides, across restarts and instances; an
in-memory window of recent seqs spares it obvious duplicates), then looks for gaps in seq: in the
gateways that received reports, each at most once per :data:`GAP_SCAN_INTERVAL_S` (a later burst
or a timer does the rest).

A malformed message is logged and counted for its gateway; it never stops the ingest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from county.config import Broker, CountyConfig
from county.gaps import GapScanner
from county.picture import Picture
from county.store import Store

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 15.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
RECENT_SEQS = 4096
"""Per gateway, how many recent seqs are remembered to drop duplicates before the database."""
SETTLE_SHARED_S = 5.0
"""With a share group: how old a report must be before a hole before it counts as a gap."""
GAP_SCAN_INTERVAL_S = 1.0
"""A gateway's gaps are looked for at most this often (each scan costs queries)."""
INBOX_MAX = 10_000
"""Messages received but not yet parsed, at most: past this paho's thread waits (and so do its PUBACKs,
so the broker holds the rest) instead of the county's memory growing with the backlog."""
DRAIN_CHUNK = 1_000
"""Messages parsed per turn of the event loop, so the writer, the API and SSE get turns under load."""
OPS_MAX = 5_000
"""Parsed updates waiting for the writer, at most (besides the burst being written): past this
parsing waits until the writer takes them."""
MALFORMED_LOGGED = 10
"""Malformed messages logged per gateway at warning level; the rest at debug (still counted)."""


PUBACK = 0x40
READ_AHEAD = 256 * 1024
"""Bytes the MQTT socket reads at once (see :class:`_ReadAhead`)."""
READ_BATCH = 1000
"""Packets read per round of paho's loop at most, before it writes (the PUBACKs) again."""


class _ReadAhead:
    """The broker socket, read up to :data:`READ_AHEAD` bytes at a time.

    paho reads every packet with three ``recv`` calls (type byte, length, body) after a ``select``,
    which made its network thread the largest cost of a busy county. Here those reads are served from
    one large read; ``pending()`` tells paho's loop that bytes are buffered, so it reads them without
    waiting in ``select`` (paho calls it for TLS sockets, whose own buffer it includes)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = bytearray(READ_AHEAD)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= self._end:
            got = self._sock.recv_into(self._buf)
            if got == 0:
                return b""
            self._pos, self._end = 0, got
        out = bytes(self._view[self._pos:min(self._pos + size, self._end)])
        self._pos += len(out)
        return out

    def buffered(self) -> int:
        """Bytes read but not yet handed to paho."""
        return self._end - self._pos

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self._end - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(paho.Client):
    """paho's client on a :class:`_ReadAhead` socket, reading every buffered packet per loop round and
    sending the PUBACKs that queue meanwhile in one write (paho would use one round and one ``send``
    per message: at thousands of messages a second that was most of the county's network thread)."""

    def _create_socket(self) -> Any:
        return _ReadAhead(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(READ_BATCH):
            sock = self._sock
            if rc != paho.MQTT_ERR_SUCCESS or not isinstance(sock, _ReadAhead) or not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        if rc == paho.MQTT_ERR_SUCCESS and self._out_packet:
            rc = self.loop_write()  # the PUBACKs of this round (see _send_puback)
        return rc

    def _send_puback(self, mid: int) -> paho.MQTTErrorCode:
        """Queued for :meth:`loop_read` to write. paho would also wake its own ``select`` through a
        socket pair — a system call per message that gives up the GIL, which the event loop's thread
        then holds for up to a switch interval: under load that, not CPU, limited the county."""
        self._out_packet.append({"command": PUBACK, "mid": mid, "qos": 1, "pos": 0, "to_process": 4,
                                 "packet": struct.pack("!BBH", PUBACK, 2, mid), "info": None})
        return paho.MQTT_ERR_SUCCESS

    def loop_write(self) -> paho.MQTTErrorCode:
        out = self._out_packet  # the network thread is its only consumer; others only append
        if len(out) > 1 and out[0]["command"] == PUBACK and out[1]["command"] == PUBACK:
            head = out.popleft()
            acks = [head["packet"][head["pos"]:]]
            while out and out[0]["command"] == PUBACK and out[0]["pos"] == 0:
                acks.append(out.popleft()["packet"])
            data = b"".join(acks)
            out.appendleft({**head, "pos": 0, "to_process": len(data), "packet": data})
        return super().loop_write()


class Malformed(ValueError):
    """A message that does not follow docs/mqtt.md; the text says what is wrong."""


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    malformed_by_gateway: dict[str, int] = field(default_factory=dict)
    connects: int = 0


@dataclass
class _Recent:
    """A bounded window of seqs already seen from one gateway."""

    order: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=RECENT_SEQS))
    seqs: set[int] = field(default_factory=set)

    def add(self, seq: int) -> bool:
        if seq in self.seqs:
            return False
        if len(self.order) == self.order.maxlen:
            self.seqs.discard(self.order[0])
        self.order.append(seq)
        self.seqs.add(seq)
        return True


def _report(payload: bytes) -> dict[str, Any]:
    """An outbox report: ``seq``, ``historical``, ``kind``, ``ts``, ``data``."""
    doc = _json_object(payload)
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise Malformed("seq: must be a non-negative integer")
    if not isinstance(doc.get("kind"), str):
        raise Malformed("kind: must be a string")
    ts = doc.get("ts")
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
        raise Malformed("ts: must be a number")
    if not isinstance(doc.get("historical", False), bool):
        raise Malformed("historical: must be true or false")
    if not isinstance(doc.get("data", {}), dict):
        raise Malformed("data: must be an object")
    return {"seq": seq, "kind": doc["kind"], "ts": ts, "historical": doc.get("historical", False),
            "data": doc.get("data", {})}


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)  # UTF-8 only, as docs/mqtt.md says; NaN/Infinity are not JSON
    except ValueError as exc:
        raise Malformed(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    return doc


def _birth(payload: bytes) -> dict[str, Any]:
    doc = _json_object(payload)
    if not isinstance(doc.get("gateway", {}), dict):
        raise Malformed("gateway: must be an object")
    devices = doc.get("devices", [])
    if not isinstance(devices, list):
        raise Malformed("devices: must be a list")
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict) or not isinstance(dev.get("id"), str) or not dev["id"]:
            raise Malformed(f"devices[{i}].id: must be a non-empty string")
    return doc


def _state(payload: bytes, device: str) -> tuple[dict[str, Any], str | None]:
    """The state document, and its text as received when that is what would be stored (it names its
    device and is UTF-8), so the writer need not encode it again."""
    doc = _json_object(payload)
    text = None
    if "id" in doc:
        with contextlib.suppress(UnicodeDecodeError):
            text = payload.decode("utf-8")
    if doc.setdefault("id", device) != device:
        raise Malformed(f"id: {str(doc['id'])[:64]!r} does not match the topic's device {device!r}")
    if not isinstance(doc.get("faults") or [], list):
        raise Malformed("faults: must be a list")
    return doc, text


class Ingest:
    """See the module docstring. ``await start()``, ``await stop()``; ``publish`` for commands."""

    def __init__(self, cfg: CountyConfig, store: Store, picture: Picture, *,
                 on_response: Callable[[str, str, bytes], None] | None = None,
                 on_report: Callable[[str, str, bytes], None] | None = None,
                 on_status: Callable[[str, str], None] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.picture = picture
        self.on_response = on_response
        """(gateway, command name, payload) of every ``cmd/<name>/response``, on the event loop."""
        self.on_report = on_report
        """(gateway, broadcast id, payload) of every well-formed ``broadcasts/<id>`` report, duplicates
        included (the county broadcasts keep the latest by seq themselves), on the event loop."""
        self.on_status = on_status
        """(gateway, ``online``/``offline``) of every ``status`` message, on the event loop."""
        self.prefix = cfg.mqtt.prefix
        self.client_id = cfg.client_id
        self.persistent = cfg.mqtt.client_id is not None
        self.brokers: list[Broker] = cfg.mqtt.addresses()
        self.stats = IngestStats()
        self.gaps = GapScanner(store, SETTLE_SHARED_S if cfg.mqtt.share_group else 0.0)
        self._recent: dict[str, _Recent] = {}
        self._inbox: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._drain_due = False
        """A drain is scheduled, or held until the writer takes the waiting updates."""
        self._drain_held = False
        self._room = threading.Condition()
        """paho's thread waits on it while the inbox is full."""
        self._ops: list[tuple[Any, ...]] = []
        self._seen: dict[str, float] = {}
        """Per gateway, when a message from it was last received (written with the next burst)."""
        self._write_due = asyncio.Event()
        self._db = ThreadPoolExecutor(1, thread_name_prefix="county-db")
        self._scan_pending: set[str] = set()
        """Gateways with reports stored since their last gap scan (the writer thread's)."""
        self._scanned_at: dict[str, float] = {}
        self._scan_pass = -1e9
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.connected = asyncio.Event()
        """Set while subscribed to a broker."""
        self.writes_done = 0
        """Writer bursts completed (tests wait on it)."""

    # -- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._supervise(), name="county mqtt"),
                       asyncio.create_task(self._writer(), name="county writer")]

    async def stop(self) -> None:
        self._stopping = True
        self._make_room()
        client = self._client
        if client is not None:
            client.disconnect()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while self._inbox:  # what was received is stored before we go
            self._parse(DRAIN_CHUNK)
            await self._write_burst()
        if self._ops or self._seen:
            await self._write_burst()
        self._db.shutdown(wait=True)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish on the current connection (county commands); False when not connected."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        return client.publish(topic, payload, qos=qos, retain=retain).rc == paho.MQTT_ERR_SUCCESS

    def subscriptions(self) -> list[str]:
        p = self.prefix
        share = f"$share/{self.cfg.mqtt.share_group}/" if self.cfg.mqtt.share_group else ""
        return [f"{p}/+/status", f"{p}/+/birth", f"{p}/+/devices/+/state", f"{share}{p}/+/events",
                f"{share}{p}/+/broadcasts/+", f"{share}{p}/+/health", f"{p}/+/cmd/+/response"]

    # -- connection -------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay, index = RECONNECT_MIN_S, 0
        while not self._stopping:
            broker = self.brokers[index % len(self.brokers)]
            ended = asyncio.Event()
            client = self._client = self._make_client(ended)
            worked = False
            try:
                await loop.run_in_executor(None, client.connect, broker.host, broker.port,
                                           self.cfg.mqtt.keepalive_s)
                client.loop_start()
                try:
                    async with asyncio.timeout(CONNACK_TIMEOUT_S):
                        await self.connected.wait()
                    worked = True
                    await ended.wait()
                except TimeoutError:
                    log.warning("MQTT %s: no CONNACK within %g s", broker.url, CONNACK_TIMEOUT_S)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("MQTT %s: cannot connect (%s)", broker.url, exc)
            finally:
                self.connected.clear()
                self._client = None
                with contextlib.suppress(Exception):
                    client.disconnect()
                await asyncio.shield(loop.run_in_executor(None, client.loop_stop))
            if self._stopping:
                return
            delay = RECONNECT_MIN_S if worked else min(delay * 2, RECONNECT_MAX_S)
            index += 1
            await asyncio.sleep(delay)

    def _make_client(self, ended: asyncio.Event) -> paho.Client:
        m = self.cfg.mqtt
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=not self.persistent, protocol=paho.MQTTv311,
                             reconnect_on_failure=False)
        client.max_queued_messages_set(0)
        if m.username is not None:
            client.username_pw_set(m.username, self.cfg.read_password())
        if self.brokers[0].tls:
            ca = self.cfg.file(m.ca_file)
            client.tls_set(ca_certs=str(ca) if ca else None, cert_reqs=ssl.CERT_REQUIRED)
        loop = self._loop
        assert loop is not None

        def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                log.warning("MQTT connection refused: %s", reason)
                return
            c.subscribe([(topic, 1) for topic in self.subscriptions()])

        def on_subscribe(c: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            failed = [r for r in reasons if r.is_failure]
            if failed:
                log.error("MQTT subscription refused: %s", failed)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_subscribed)

        def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ended.set)

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self._inbox.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            if len(self._inbox) >= INBOX_MAX:
                with self._room:
                    while len(self._inbox) >= INBOX_MAX and not self._stopping:
                        self._room.wait(1.0)
            if not self._drain_due:
                self._drain_due = True
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._drain)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        return client

    def _on_subscribed(self) -> None:
        self.stats.connects += 1
        self.connected.set()
        log.info("county ingest subscribed to %s as %s", self.brokers, self.client_id)

    # -- parsing (on the event loop) --------------------------------------------------------------------

    def _drain(self) -> None:
        """Parse up to :data:`DRAIN_CHUNK` messages, then yield the loop; held while :data:`OPS_MAX`
        updates wait for the writer (it resumes parsing when it takes them)."""
        if len(self._ops) >= OPS_MAX:
            self._drain_held = True  # _drain_due stays set: paho's thread need not wake us
            return
        self._parse(DRAIN_CHUNK)
        if not self._inbox:
            self._drain_due = False
            if not self._inbox:  # else appended just before the flag was cleared: go on
                return
            self._drain_due = True
        assert self._loop is not None
        self._loop.call_soon(self._drain)

    def _parse(self, limit: int) -> None:
        try:
            for _ in range(limit):
                if not self._inbox:
                    break
                topic, payload, retain = self._inbox.popleft()
                self.handle(topic, payload, retain)
        finally:
            self.picture.end_quiet()  # retained states re-read: one resync, not one change each
        if len(self._inbox) < INBOX_MAX:
            self._make_room()

    def _make_room(self) -> None:
        with self._room:
            self._room.notify_all()

    def handle(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """One message from the broker; never raises."""
        self.stats.received += 1
        gateway: str | None = None
        try:
            if not topic.startswith(self.prefix + "/"):
                raise Malformed("topic outside the prefix")
            parts = topic[len(self.prefix) + 1:].split("/")
            gateway, tail = parts[0], parts[1:]
            if not gateway:
                gateway = None
                raise Malformed("empty gateway id")
            self._route(gateway, tail, payload, time.time(), retain)
        except Malformed as exc:
            self._malformed(gateway, topic, str(exc))
        except Exception:  # a bug must not stop the ingest either
            log.exception("county ingest failed on %r", topic[:200])
            self._malformed(gateway, topic, "internal error (see log)")

    def _route(self, gw: str, tail: list[str], payload: bytes, now: float, retain: bool = False) -> None:
        if tail[:1] == ["cmd"] and len(tail) == 3 and tail[2] == "response":
            if self.on_response is not None:
                self.on_response(gw, tail[1], payload)
            return
        if not payload and (tail in (["status"], ["birth"]) or tail[:1] == ["devices"]):
            return  # a retained message being cleared: nothing to apply
        self.picture.seen(gw, now)
        self._seen[gw] = now
        if tail == ["status"]:
            text = payload.decode("utf-8", "replace").strip()
            if text not in ("online", "offline"):
                raise Malformed("status: must be 'online' or 'offline'")
            self.picture.set_status(gw, text, now)
            self._queue(("status", gw, text, now))
            if self.on_status is not None:
                self.on_status(gw, text)
        elif tail == ["birth"]:
            birth = _birth(payload)
            self.picture.set_birth(gw, birth)
            self._queue(("birth", gw, birth, now))
        elif len(tail) == 3 and tail[0] == "devices" and tail[2] == "state":
            doc, text = _state(payload, tail[1])
            self.picture.set_device_state(gw, doc, now, quiet=retain)
            self._queue(("state", gw, doc, now, text))
        elif tail in (["events"], ["health"]) or (len(tail) == 2 and tail[0] == "broadcasts"):
            report = _report(payload)
            data, kind = report["data"], report["kind"]
            if kind in ("broadcast.state", "broadcast.outcome") and (
                    "id" not in data or (kind == "broadcast.outcome" and "device" not in data)):
                raise Malformed("data: a broadcast report needs id (and device for an outcome)")
            if tail[0] == "broadcasts" and self.on_report is not None:
                self.on_report(gw, tail[1], payload)
            recent = self._recent.get(gw)
            if recent is None:  # not setdefault: a _Recent per report was a tenth of the parsing
                recent = self._recent[gw] = _Recent()
            if not recent.add(report["seq"]):
                self.stats.duplicates += 1
                return
            self._queue(("report", gw, tail[0], report, now))
        else:
            raise Malformed("unknown topic")

    def _queue(self, op: tuple[Any, ...]) -> None:
        self._ops.append(op)
        self._write_due.set()

    def _malformed(self, gw: str | None, topic: str, why: str) -> None:
        self.stats.malformed += 1
        if gw is not None:
            count = self.stats.malformed_by_gateway[gw] = self.stats.malformed_by_gateway.get(gw, 0) + 1
            self.picture.count_malformed(gw)
        else:
            count = self.stats.malformed
        level = logging.WARNING if count <= MALFORMED_LOGGED else logging.DEBUG
        log.log(level, "malformed MQTT message on %r: %s", topic[:200], why)

    # -- writing (worker thread) ------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            if self._scan_pending:  # scans held back: come back for them even without new reports
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GAP_SCAN_INTERVAL_S):
                        await self._write_due.wait()
            else:
                await self._write_due.wait()
            self._write_due.clear()
            await self._write_burst()

    async def _write_burst(self) -> None:
        ops, self._ops = self._ops, []
        seen, self._seen = self._seen, {}
        if self._drain_held:  # parsing goes on while this burst is written
            self._drain_held = False
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        if not ops and not seen and not self._scan_pending:
            return
        loop = asyncio.get_running_loop()
        try:
            new, duplicates, gaps = await loop.run_in_executor(self._db, self._write, ops, seen)
        except Exception:
            log.exception("cannot store %d county updates; retrying in 1 s", len(ops))
            self._ops = ops + self._ops
            for gw, at in seen.items():
                self._seen[gw] = max(at, self._seen.get(gw, at))
            await asyncio.sleep(1.0)
            self._write_due.set()
            return
        self.stats.stored += len(new)  # counted here, on the loop: the stats have one writer
        self.stats.duplicates += duplicates
        for gw, event in new:
            self.picture.add_event(gw, event)
        for gw, (unexplained, explained) in gaps.items():
            self.picture.set_gaps(gw, unexplained, explained)
        self.writes_done += 1

    def _write(self, ops: list[tuple[Any, ...]], seen: dict[str, float]
               ) -> tuple[list[tuple[str, dict[str, Any]]], int, dict[str, tuple[int, int]]]:
        """Apply a burst in one transaction (worker thread); the new reports, how many were already
        stored, and the gap counts of gateways whose gaps changed."""
        new: list[tuple[str, dict[str, Any]]] = []
        duplicates = 0
        states: list[tuple[str, dict[str, Any], float, str | None]] = []
        reports: list[tuple[Any, ...]] = []
        with self.store.batch():
            for op in ops:
                kind, gw = op[0], op[1]
                if kind == "state":
                    states.append((gw, op[2], op[3], op[4]))
                elif kind == "report":
                    reports.append(op)
                else:  # status, birth: in order with the device states (a birth forgets devices)
                    self.store.save_device_states(states)
                    states = []
                    if kind == "status":
                        self.store.set_status(gw, op[2], op[3])
                    elif kind == "birth":
                        self.store.save_birth(gw, op[2], op[3])
            self.store.save_device_states(states)
            stored = self.store.insert_events([(op[1], op[3]["seq"], op[3]["kind"], op[3]["ts"],
                                                op[3]["historical"], op[3]["data"], op[4]) for op in reports])
            for (_, gw, topic, r, at), is_new in zip(reports, stored, strict=True):
                if not is_new:
                    duplicates += 1
                    continue
                new.append((gw, {**r, "topic": topic, "received_at": at}))
                self._scan_pending.add(gw)
                if r["kind"] == "broadcast.state":
                    self.store.save_broadcast_state(gw, r["seq"], r["data"], at)
                elif r["kind"] == "broadcast.outcome":
                    self.store.save_broadcast_outcome(gw, r["seq"], r["data"], at)
            self.store.touch_many(seen)
        return new, duplicates, self._scan(self._scan_due())

    def _scan_due(self) -> set[str]:
        """The gateways with new reports whose last gap scan is old enough (writer thread); looked for
        at most every tenth of the interval, not after every burst."""
        now = time.monotonic()
        if now - self._scan_pass < GAP_SCAN_INTERVAL_S / 10:
            return set()
        self._scan_pass = now
        due = {gw for gw in self._scan_pending if now - self._scanned_at.get(gw, -1e9) >= GAP_SCAN_INTERVAL_S}
        self._scan_pending -= due
        for gw in due:
            self._scanned_at[gw] = now
        return due

    def _scan(self, gateways: set[str]) -> dict[str, tuple[int, int]]:
        out = {}
        for gw in gateways:
            with self.store.batch():
                if not self.gaps.scan(gw):
                    continue
                rows = self.store.gaps(gw)
            unexplained = sum(1 for g in rows if g["explained_by"] == "unexplained")
            out[gw] = (unexplained, len(rows) - unexplained)
        return out

    async def rescan(self) -> None:
        """Scan every gateway for gaps (periodically with a share group: reports settle in the database)."""
        loop = asyncio.get_running_loop()
        gaps = await loop.run_in_executor(self._db, self._scan, set(self.picture.gateways))
        for gw, (unexplained, explained) in gaps.items():
            self.picture.set_gaps(gw, unexplained, explained)
