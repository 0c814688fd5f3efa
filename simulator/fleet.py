"""A fleet of virtual township gateways that speak docs/mqtt.md, for the county centre's tests and benches.

Each gateway is its own MQTT connection (client id = gateway id) with the Last Will ``offline`` on
``<prefix>/<gw>/status``; on every connection it publishes ``online``, its ``birth`` inventory and every
device's state (all retained), subscribes to ``cmd/+``, and then sends its in-memory outbox
(``events``, ``broadcasts/<id>``, ``health``) in ``seq`` order with at most ``inflight`` awaiting PUBACK —
the same contract as a real gateway, without its database: a report is kept until its PUBACK, and
resent ``historical: true`` after a lost connection.

Why one thread: a paho network thread per gateway would cost 1,000 threads for a 1,000-gateway bench.
Here every client is driven from one selector loop with paho's external-loop API (``on_socket_*``
callbacks register the sockets, ``loop_read`` / ``loop_write`` / ``loop_misc`` do the work), and every
gateway's state is touched only on that thread; the public methods of :class:`Fleet` hand their work
to it and wait for the result.

Faults and recoveries happen at random (a Poisson process per terminal, ``fault_rate_per_hour`` and
``recovery_rate_per_hour``), drawn from one ``random.Random(seed)``; names, villages, area codes and
positions come from per-gateway generators derived from the seed, so one seed always makes the same
county. Signatures of county commands are checked only when county public keys are given
(Ed25519, over the canonical bytes of docs/county-commands.md); otherwise every well-formed command
for the right gateway is accepted.

Imports neither ``controller`` nor ``drivers``: like a third-party gateway it shares only the documents.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("simulator.fleet")

VERSION = "0.1.0-fleet"
COMMANDS = ("broadcast", "cancel", "rebirth", "line_check", "alert")
ENVELOPE_FIELDS = ("correlation_id", "gateway", "ts", "nonce", "key_id", "args", "sig")
MAX_COMMAND_BYTES = 64 * 1024
CONNACK_TIMEOUT_S = 15.0
MISC_EVERY_S = 1.0
STATE_NAMES = {1: ("normal", "正常"), 2: ("off", "关机/离线"), 3: ("fault", "故障"),
               4: ("fault_recovered", "故障恢复"), 5: ("broadcasting", "播出中")}
BROADCAST_STATES = {1: "waiting", 2: "playing", 3: "succeeded", 4: "failed", 5: "cancelled"}
FAULT_KINDS = ("mains_lost", "offline", "amp_fault", "line_open", "over_temperature", "low_battery", "tamper")
FAULT_WEIGHTS = (30, 20, 10, 15, 10, 10, 5)
"""Which fault a random one is: mains cuts and silent terminals are the common ones in the field."""
OVER_TEMPERATURE_C = 80.0
LOW_BATTERY_V = 11.5

_SURNAMES = ("刘李王张陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐"
             "冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎")
_TOWN_HEADS = ("临涣", "五沟", "韩村", "孙疃", "四铺", "百善", "铁佛", "南坪", "双堆", "祁集",
               "刘桥", "岳集", "马桥", "徐楼", "白沙", "石桥", "青龙", "河口", "金湖", "梅集")
_VILLAGE_TAILS = ("村", "庄", "集", "楼", "圩", "湖村", "营", "店")
_SITES = ("村委会广场", "村委会", "集市东口", "小学门口", "文化广场",
          "卫生室", "桥头", "北头", "南头", "养殖场")


class FleetError(ValueError):
    """Bad fleet parameters; the message names the parameter."""


# --------------------------------------------------------------------------------------------- model


@dataclass
class Terminal:
    """One village loudspeaker terminal (ebt-1 profile) as its gateway sees it."""

    id: str
    name: str
    village: str
    area_code: str
    location: dict[str, float]
    line: str
    line_type: str
    unit_id: int
    zones: list[int]
    values: dict[str, Any]
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Active faults by key (``code`` or ``code:zone``), each as published (with ``since``)."""
    online: bool = True
    broadcasting: bool = False
    recovered_at: float | None = None
    last_seen: float = field(default_factory=time.time)
    saved_values: dict[str, Any] = field(default_factory=dict)
    """Values a fault overwrote, restored on recovery."""
    published: tuple[int, bool, frozenset[str]] = (1, True, frozenset())
    """(state, online, fault keys) as last announced: what time alone changes is compared with it."""

    def state(self, now: float, hold_s: float) -> int:
        """The judgement of controller/devices/health.py: fault, off, broadcasting, recovered, normal."""
        if self.faults:
            return 3
        if not self.online:
            return 2
        if self.broadcasting:
            return 5
        if self.recovered_at is not None and now - self.recovered_at < hold_s:
            return 4
        return 1

    def inventory(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "village": self.village, "area_code": self.area_code,
                "location": dict(self.location), "line": self.line, "line_type": self.line_type,
                "profile": "ebt-1", "kind": "terminal", "unit_id": self.unit_id, "zones": list(self.zones)}

    def view(self, state: int) -> dict[str, Any]:
        """The registry view (``devices/<dev>/state`` without ``ts``, and the head of ``device.state``)."""
        return {"id": self.id, "name": self.name, "village": self.village, "area_code": self.area_code,
                "line": self.line, "kind": "terminal", "online": self.online, "last_seen": self.last_seen,
                "failure": None if self.online else f"timeout: no answer from unit {self.unit_id}",
                "values": dict(self.values) if self.online else None, "state": state,
                "state_name": STATE_NAMES[state][0], "faults": list(self.faults.values()),
                "location": dict(self.location), "zones": list(self.zones)}


def _terminal_values(rng: random.Random, zones: Sequence[int]) -> dict[str, Any]:
    values: dict[str, Any] = {"amp_power": False, "emergency_override": False, "mute": False}
    values.update({f"zone_{z}": False for z in range(1, 9)})
    values.update({"volume": rng.choice((50, 60, 70, 80)), "audio_source": "line_in", "fm_frequency": 98.5,
                   "warmup_ms": 2000, "line_check": 0, "mains_ok": True, "on_battery": False, "amp_on": False,
                   "amp_ready": False, "audio_present": False, "amp_fault": False, "over_temperature": False,
                   "line_fault": False, "tamper": False, "fm_signal": True,
                   "amp_temperature": round(rng.uniform(22.0, 31.0), 1),
                   "mains_voltage": round(rng.uniform(218.0, 232.0), 1),
                   "battery_voltage": round(rng.uniform(13.2, 13.8), 2), "output_level": 0,
                   "fm_rssi": rng.randint(30, 60)})
    values.update({f"line_impedance_{z}": (rng.randint(90, 120) if z in zones else 65535)
                   for z in range(1, 9)})
    values.update({"firmware": "1.3", "uptime_s": rng.randint(3600, 3_000_000)})
    return values


def _fault(code: str, term: Terminal, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fault as published, the values it sets) — reasons worded as controller/devices/fault_rules.py."""
    v = term.values
    if code == "mains_lost":
        battery = round(rng.uniform(12.4, 13.6), 2)
        return ({"fault": code, "zone": None, "reason": f"mains power lost, on battery {battery:.2f} V",
                 "reason_zh": f"市电中断，电池供电 {battery:.2f} V",
                 "values": {"battery_v": battery, "mains_v": 0.0}},
                {"mains_ok": False, "on_battery": True, "mains_voltage": 0.0, "battery_voltage": battery})
    if code == "amp_fault":
        return ({"fault": code, "zone": None, "reason": "amplifier fault", "reason_zh": "功放故障",
                 "values": {}},
                {"amp_fault": True})
    if code == "over_temperature":
        temp = round(rng.uniform(OVER_TEMPERATURE_C, OVER_TEMPERATURE_C + 12), 1)
        return ({"fault": code, "zone": None, "reason": f"amplifier over-temperature ({temp:.1f} °C)",
                 "reason_zh": f"功放过温（{temp:.1f} °C）",
                 "values": {"temperature_c": temp, "limit_c": OVER_TEMPERATURE_C}},
                {"over_temperature": True, "amp_temperature": temp})
    if code == "low_battery":
        battery = round(rng.uniform(10.2, LOW_BATTERY_V - 0.1), 2)
        return ({"fault": code, "zone": None,
                 "reason": f"battery low: {battery:.2f} V (below {LOW_BATTERY_V:g} V)",
                 "reason_zh": f"电池电压低：{battery:.2f} V（低于 {LOW_BATTERY_V:g} V）",
                 "values": {"battery_v": battery, "limit_v": LOW_BATTERY_V}},
                {"battery_voltage": battery})
    if code == "tamper":
        return ({"fault": code, "zone": None, "reason": "cabinet opened (tamper switch)",
                 "reason_zh": "机箱被打开（防拆报警）", "values": {}}, {"tamper": True})
    if code == "line_open":
        z = rng.choice(term.zones)
        return ({"fault": code, "zone": z, "reason": f"zone {z} speaker line open",
                 "reason_zh": f"第{z}路喇叭线路开路",
                 "values": {"zone": z, "measured_ohm": 65535,
                            "commissioned_ohm": v.get(f"line_impedance_{z}")}},
                {"line_fault": True, f"line_impedance_{z}": 65535})
    raise FleetError(f"fault: unknown fault {code!r}; one of {', '.join(FAULT_KINDS)}")


@dataclass
class _Row:
    """One outbox report: ``seq``, where it goes, its body (JSON without seq/historical)."""

    seq: int
    topic: str
    kind: str
    body: str
    droppable: bool
    historical: bool


@dataclass
class _Broadcast:
    id: str
    state: int
    devices: list[str]
    repeat: int
    started: float | None = None
    timers: list[_Timer] = field(default_factory=list)


class Gateway:
    """One virtual township gateway; every method runs on the fleet's loop thread."""

    def __init__(self, fleet: Fleet, index: int, township: str, terminals: int) -> None:
        self.fleet = fleet
        rng = random.Random(f"{fleet.seed}:gw:{township}")
        self.rng = rng
        county = fleet.county_area
        self.area9 = f"{county}{township}"
        self.id = f"gw-{self.area9}"
        self.area_code = f"{self.area9}000"
        head = _TOWN_HEADS[index % len(_TOWN_HEADS)]
        self.township_name = f"{head}{'' if index < len(_TOWN_HEADS) else index // len(_TOWN_HEADS)}镇"
        self.name = f"{fleet.county_name}{self.township_name}应急广播网关"
        lat0, lon0 = fleet.centre
        self.location = {"lat": round(lat0 + rng.uniform(-0.25, 0.25), 4),
                         "lon": round(lon0 + rng.uniform(-0.3, 0.3), 4)}
        villages = [(f"{rng.choice(_SURNAMES)}{rng.choice(_SURNAMES)}{rng.choice(_VILLAGE_TAILS)}",
                     f"{self.area9}{201 + i:03d}") for i in range(max(1, math.ceil(terminals / 3)))]
        self.terminals: dict[str, Terminal] = {}
        for i in range(terminals):
            village, code = villages[i // 3 if i // 3 < len(villages) else -1]
            serial = i < 16
            zones = sorted(rng.sample(range(1, 5), rng.choice((1, 2, 2, 3))))
            dev_id = f"t{i + 1:02d}"
            self.terminals[dev_id] = Terminal(
                dev_id, f"{village}{_SITES[i % len(_SITES)]}", village, code,
                {"lat": round(self.location["lat"] + rng.uniform(-0.03, 0.03), 4),
                 "lon": round(self.location["lon"] + rng.uniform(-0.03, 0.03), 4)},
                "rs485-1" if serial else f"4g-{i - 15}", "serial" if serial else "tcp",
                i + 1 if serial else 1, zones, _terminal_values(rng, zones))
        self.root = f"{fleet.prefix}/{self.id}"
        self.next_seq = int(time.time() * 1000)
        """A new outbox starts at the Unix time in ms (docs/mqtt.md) and never repeats."""
        self.pending: collections.deque[_Row] = collections.deque()
        self.inflight: dict[int, _Row] = {}
        self.health_pending = 0
        self.dropped_health = 0
        self.client: paho.Client | None = None
        self.connected = False
        self.alive = False
        self.life = 0
        """Incremented on every (re)start and kill: timers of an earlier life do nothing."""
        self.started_at = 0.0
        self.connects = 0
        self.backoff = fleet.reconnect_min_s
        self.nonces: dict[tuple[str, str], float] = {}
        self.broadcasts: dict[str, _Broadcast] = {}
        self.requests = 0

    # -- outbox ------------------------------------------------------------------------------------

    def emit(self, kind: str, data: dict[str, Any], topic: str = "events", *, ts: float | None = None,
             droppable: bool = False) -> int:
        """Append one report to the outbox and send it if the window allows; returns its seq."""
        if not self.alive:
            return 0
        seq = self.next_seq
        self.next_seq += 1
        body = orjson.dumps({"kind": kind, "ts": time.time() if ts is None else ts, "data": data}).decode()
        if droppable:
            if self.health_pending >= self.fleet.outbox_max_health_rows:
                for row in self.pending:
                    if row.droppable:
                        self.pending.remove(row)
                        self.health_pending -= 1
                        self.dropped_health += 1
                        break
            self.health_pending += 1
        self.pending.append(_Row(seq, topic, kind, body, droppable, not self.connected))
        self.pump()
        return seq

    def pump(self) -> None:
        client = self.client
        if client is None or not self.connected:
            return
        while self.pending and len(self.inflight) < self.fleet.inflight:
            row = self.pending.popleft()
            if row.droppable:
                self.health_pending -= 1
            head = f'{{"seq":{row.seq},"historical":{"true" if row.historical else "false"},'
            info = client.publish(f"{self.root}/{row.topic}", (head + row.body[1:]).encode("utf-8"), qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self.pending.appendleft(row)
                return
            row.historical = True  # if this connection drops before the PUBACK, it is a replay
            self.inflight[info.mid] = row
            self.fleet.count(row.topic.split("/", 1)[0])

    def on_ack(self, mid: int) -> None:
        if self.inflight.pop(mid, None) is not None:
            self.fleet.count("acked")
            self.pump()

    def requeue(self) -> None:
        """The connection is gone: what awaited its PUBACK goes back to the front, in seq order."""
        rows = sorted(self.inflight.values(), key=lambda r: r.seq)
        self.inflight.clear()
        for row in reversed(rows):
            self.pending.appendleft(row)
            if row.droppable:
                self.health_pending += 1

    # -- retained picture --------------------------------------------------------------------------

    def birth(self) -> dict[str, Any]:
        return {"gateway": {"id": self.id, "name": self.name, "area_code": self.area_code,
                            "location": dict(self.location)},
                "version": VERSION, "started_at": self.started_at, "ts": time.time(),
                "topics": {"root": self.root}, "devices": [t.inventory() for t in self.terminals.values()]}

    def publish_retained(self, suffix: str, payload: bytes, kind: str) -> None:
        if self.client is not None and self.connected:
            self.client.publish(f"{self.root}/{suffix}", payload, qos=1, retain=True)
            self.fleet.count(kind)

    def publish_state(self, term: Terminal, now: float | None = None) -> None:
        now = time.time() if now is None else now
        doc = {**term.view(term.state(now, self.fleet.recovered_hold_s)), "ts": now}
        self.publish_retained(f"devices/{term.id}/state", _dumps(doc), "state")

    def announce(self) -> None:
        """status online, birth, every device state — all retained (docs/mqtt.md, life cycle step 2)."""
        self.publish_retained("status", b"online", "status")
        self.publish_retained("birth", _dumps(self.birth()), "birth")
        now = time.time()
        for term in self.terminals.values():
            self.publish_state(term, now)

    # -- device changes ----------------------------------------------------------------------------

    def change(self, term: Terminal, apply: Callable[[], None], now: float) -> None:
        """Apply a change to ``term``; publish device.state (and its retained state) if it shows."""
        hold = self.fleet.recovered_hold_s
        before = term.published
        apply()
        term.last_seen = now if term.online else term.last_seen
        after = (term.state(now, hold), term.online, frozenset(term.faults))
        if after == before:
            return
        term.published = after
        view = term.view(after[0])
        name, name_zh = STATE_NAMES[after[0]]
        data = {**view, "device": term.id, "kind": "terminal", "state": after[0], "state_name": name,
                "state_name_zh": name_zh, "online": term.online, "last_seen": term.last_seen,
                "broadcasting": term.broadcasting, "faults": view["faults"], "previous_state": before[0],
                "previous_online": before[1]}
        self.emit("device.state", data, ts=now)
        self.publish_state(term, now)
        if after[0] == 4:
            life = self.life
            self.fleet.loop.call_later(hold + 0.01, self._hold_over, term, life)

    def _hold_over(self, term: Terminal, life: int) -> None:
        if life == self.life and self.alive:
            self.change(term, lambda: None, time.time())

    def raise_fault(self, dev: str, code: str) -> bool:
        """Raise ``code`` on terminal ``dev`` (``offline``: it stops answering); False if already so."""
        term = self._terminal(dev)
        now = time.time()
        if code == "offline":
            if not term.online:
                return False
            self.change(term, lambda: setattr(term, "online", False), now)
            return True
        if code not in FAULT_KINDS:
            raise FleetError(f"fault: unknown fault {code!r}; one of {', '.join(FAULT_KINDS)}")
        if any(f["fault"] == code for f in term.faults.values()):
            return False
        fault, values = _fault(code, term, self.rng)
        fault["since"] = now
        key = code if fault["zone"] is None else f"{code}:{fault['zone']}"
        self.emit("device.fault", {"device": term.id, "kind": "terminal", "name": term.name,
                                   "village": term.village, "fault": code, "zone": fault["zone"],
                                   "reason": fault["reason"], "reason_zh": fault["reason_zh"],
                                   "values": fault["values"], "since": now}, ts=now)

        def apply() -> None:
            for k, v in values.items():
                term.saved_values.setdefault(k, term.values.get(k))
                term.values[k] = v
            term.faults[key] = fault
        self.change(term, apply, now)
        return True

    def clear_faults(self, dev: str, code: str | None = None) -> int:
        """Clear ``code`` (or every fault, and bring the terminal back online); how many cleared."""
        term = self._terminal(dev)
        now = time.time()
        cleared = 0
        if term.online is False and code in (None, "offline"):
            self.change(term, lambda: setattr(term, "online", True), now)
            cleared += 1
        for key, fault in list(term.faults.items()):
            if code is not None and fault["fault"] != code:
                continue
            self.emit("device.recovered", {
                "device": term.id, "kind": "terminal", "name": term.name, "village": term.village,
                "fault": fault["fault"], "zone": fault["zone"], "reason": f"recovered: {fault['reason']}",
                "reason_zh": f"已恢复：{fault['reason_zh']}", "values": fault["values"],
                "since": fault["since"],
                "duration_s": round(now - fault["since"], 1)}, ts=now)

            def apply(key: str = key) -> None:
                del term.faults[key]
                if not term.faults:
                    term.values.update(term.saved_values)
                    term.saved_values.clear()
                    term.recovered_at = now
            self.change(term, apply, now)
            cleared += 1
        return cleared

    def _terminal(self, dev: str) -> Terminal:
        try:
            return self.terminals[dev]
        except KeyError:
            raise FleetError(f"device: {self.id} has no device {dev!r}") from None

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        now = time.time()
        hold = self.fleet.recovered_hold_s
        by_state: dict[str, int] = {}
        for t in self.terminals.values():
            name = STATE_NAMES[t.state(now, hold)][0]
            by_state[name] = by_state.get(name, 0) + 1
        uptime = round(now - self.started_at, 1)
        self.requests += 20 * len(self.terminals)
        lines: dict[str, Any] = {}
        for t in self.terminals.values():
            if t.line not in lines:
                lines[t.line] = {"kind": t.line_type, "up": True, "requests": self.requests, "timeouts": 0,
                                 "crc_errors": 0, "latency_avg_ms": round(self.rng.uniform(30, 45), 1),
                                 "poll": {"cycles": int(uptime // 5), "last_cycle_s": 2.1}}
            if not t.online:
                lines[t.line]["timeouts"] += 1
        return {"gateway": self.id, "ts": now, "uptime_s": uptime,
                "process": {"pid": 10000 + self.rng.randint(0, 50000), "cpu_percent": 3.5, "rss_mb": 67.0,
                            "children_rss_mb": 0.0, "threads": 6},
                "system": {"cpu_percent": 10.0, "cpus": 2, "memory_available_mb": 1500.0, "load_1m": 0.4},
                "disk": {"path": "/var/lib/ebc", "free_mb": 20000.0, "writable": True},
                "engine": {"current": next((b.id for b in self.broadcasts.values() if b.state == 2), None),
                           "queue_depth": sum(1 for b in self.broadcasts.values() if b.state == 1)},
                "outbox_depth": len(self.pending) + len(self.inflight), "lines": lines,
                "devices": {"total": len(self.terminals),
                            "online": sum(1 for t in self.terminals.values() if t.online),
                            "with_faults": sum(1 for t in self.terminals.values() if t.faults),
                            "by_state": by_state},
                "faults": [],
                "outbox": {"depth": len(self.pending) + len(self.inflight),
                           "health_depth": self.health_pending,
                           "dropped_health": self.dropped_health, "dropped_events": 0, "overflows": 0},
                "mqtt": {"broker": self.fleet.broker_url, "connects": self.connects}}

    def health_tick(self, life: int) -> None:
        if life != self.life or not self.alive:
            return
        self.emit("gateway.health", self.health(), "health", droppable=True)
        self.fleet.loop.call_later(self.fleet.health_interval_s, self.health_tick, life)

    # -- commands ----------------------------------------------------------------------------------

    def on_command(self, name: str, payload: bytes) -> None:
        self.fleet.count("commands")
        try:
            response = self.fleet.commands.handle(self, name, payload)
        except Exception:
            log.exception("%s: command %r failed", self.id, name[:64])
            response = {"correlation_id": _correlation_id(payload), "ok": False, "error": "internal_error",
                        "message": "the gateway failed while handling the command; see its log"}
        if self.client is not None and self.connected:
            self.client.publish(f"{self.root}/cmd/{name}/response", _dumps(response), qos=1)
            self.fleet.count("response")

    def start_broadcast(self, args: dict[str, Any], devices: list[str]) -> str:
        now = time.time()
        bid = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{self.rng.getrandbits(24):06x}"
        repeat = args.get("repeat", 1)
        b = _Broadcast(bid, 1, devices, repeat if isinstance(repeat, int) and repeat > 0 else 1)
        self.broadcasts[bid] = b
        self._broadcast_state(b, 1, None, submitted=True)
        life = self.life
        b.timers.append(self.fleet.loop.call_later(self.fleet.broadcast_start_s, self._play, b, life))
        return bid

    def _broadcast_state(self, b: _Broadcast, state: int, reason: str | None, *,
                         coverage: float | None = None, submitted: bool = False) -> None:
        b.state = state
        data: dict[str, Any] = {"id": b.id, "state": state, "name": BROADCAST_STATES[state], "reason": reason}
        if not submitted:
            data["coverage"] = coverage
        now = time.time()
        self.emit("broadcast.state", data, f"broadcasts/{b.id}", ts=now)
        self.emit("broadcast.state", data, "events", ts=now)  # a compact copy on events, as the gateway does

    def _play(self, b: _Broadcast, life: int) -> None:
        if life != self.life or not self.alive or b.state != 1:
            return
        b.started = time.time()
        self._broadcast_state(b, 2, None)
        for dev in b.devices:
            term = self.terminals[dev]
            if term.online and not term.faults:
                self.change(term, lambda t=term: self._set_playing(t, True), b.started)
        b.timers.append(self.fleet.loop.call_later(self.fleet.broadcast_s * b.repeat, self._finish, b, life))

    @staticmethod
    def _set_playing(term: Terminal, on: bool) -> None:
        term.broadcasting = on
        term.values.update({"amp_power": on, "amp_on": on, "amp_ready": on, "audio_present": on,
                            "emergency_override": on, "output_level": 80 if on else 0})
        for z in term.zones:
            term.values[f"zone_{z}"] = on

    def _release(self, b: _Broadcast) -> None:
        now = time.time()
        for dev in b.devices:
            term = self.terminals[dev]
            if term.broadcasting:
                self.change(term, lambda t=term: self._set_playing(t, False), now)

    def _finish(self, b: _Broadcast, life: int) -> None:
        if life != self.life or not self.alive or b.state != 2:
            return
        assert b.started is not None
        played = round(time.time() - b.started, 1)
        confirmed = 0
        for dev in b.devices:
            term = self.terminals[dev]
            if not term.online:
                outcome, reason, audible = "unreachable", "no read-back answered during the broadcast", 0.0
            elif not term.broadcasting:
                codes = {f["fault"] for f in term.faults.values()}
                reason = ("amplifier fault" if "amp_fault" in codes else
                          "no audio at the output: speaker line fault" if "line_open" in codes else
                          "not able to play: " + ", ".join(sorted(codes)) if codes else "did not play")
                outcome, audible = "failed", 0.0
            else:
                outcome, reason, audible = "succeeded", "", played
                confirmed += 1
            self.emit("broadcast.outcome", {"id": b.id, "device": dev, "outcome": outcome, "reason": reason,
                                            "joined_late": False, "missed_s": 0.0 if audible else played,
                                            "audible_s": audible, "joined_at_s": 0.0 if audible else None},
                      f"broadcasts/{b.id}")
        self._release(b)
        total = len(b.devices)
        coverage = round(confirmed / total, 3) if total else 0.0
        if confirmed:
            self._broadcast_state(b, 3, f"{confirmed}/{total} devices confirmed audio", coverage=coverage)
        else:
            self._broadcast_state(b, 4, f"0/{total} devices confirmed audio", coverage=coverage)

    def cancel_broadcast(self, bid: str) -> str:
        """``not_found``, ``not_cancellable`` or ``cancelled``."""
        b = self.broadcasts.get(bid)
        if b is None:
            return "not_found"
        if b.state not in (1, 2):
            return "not_cancellable"
        for t in b.timers:
            t.cancelled = True
        self._release(b)
        self._broadcast_state(b, 5, "cancelled by county", coverage=0.0)
        return "cancelled"

    def line_check(self, devices: list[str]) -> dict[str, Any]:
        now = time.time()
        results: dict[str, Any] = {}
        for dev in devices:
            term = self.terminals[dev]
            if not term.online:
                results[dev] = {"device": dev, "ok": False, "skipped": "offline"}
                continue
            if term.broadcasting:
                results[dev] = {"device": dev, "ok": False, "skipped": "broadcasting"}
                continue
            zones = []
            for z in term.zones:
                ohm = term.values[f"line_impedance_{z}"]
                ref = term.saved_values.get(f"line_impedance_{z}", ohm)
                verdict = "open" if ohm >= 65535 else "ok"
                zones.append({"zone": z, "state": "open" if verdict == "open" else "ok", "measured_ohm": ohm,
                              "commissioned_ohm": ref,
                              "deviation_pct": (None if verdict == "open"
                                                else round((ohm - ref) / ref * 100, 1)),
                              "verdict": verdict})
            faults = [f for f in term.faults.values() if f["fault"] == "line_open"]
            results[dev] = {"device": dev, "ok": not faults, "zones": zones, "faults": faults,
                            "checked_at": now}
        return results


# ----------------------------------------------------------------------------------------- commands


class _Refusal(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def canonical_json(obj: Any) -> bytes:
    """docs/county-commands.md: keys sorted, no whitespace, UTF-8 as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_bytes(name: str, envelope: dict[str, Any]) -> bytes:
    """What the county signs: ``ebc-cmd-v1\\n<name>\\n`` + the canonical envelope without ``sig``."""
    body = {k: v for k, v in envelope.items() if k != "sig"}
    return b"ebc-cmd-v1\n" + name.encode("utf-8") + b"\n" + canonical_json(body)


def load_ed25519_public_key(text: str) -> Any:
    """An Ed25519 public key: PEM ``PUBLIC KEY``, or the raw 32 bytes in hex or base64."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise FleetError("county key: not an Ed25519 public key")
        return key
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise FleetError("county key: neither PEM nor 32 bytes in hex or base64") from None
    if len(raw) != 32:
        raise FleetError(f"county key: an Ed25519 key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _Refusal("bad_request", f"duplicate key {key!r}", key)
        doc[key] = value
    return doc


def _reject_constant(name: str) -> Any:
    raise _Refusal("bad_request", f"{name} is not a number JSON allows")


def _correlation_id(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    cid = doc.get("correlation_id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) else None


class CommandHandler:
    """The checks of docs/county-commands.md, in their order, then the five commands."""

    def __init__(self, keys: dict[str, Any] | None = None, *, max_skew_s: float = 300.0) -> None:
        self.keys = keys or {}
        self.max_skew_s = max_skew_s
        self.nonce_ttl_s = 2 * max_skew_s
        self.answered: dict[tuple[str, str, str], tuple[str, Any, dict[str, Any]]] = {}
        """(gateway, key, correlation id) → (command, args, answer) of each executed broadcast, cancel
        and alert: a retry is answered from it (``duplicate``), never run again. Kept for the run."""

    def handle(self, gw: Gateway, name: str, payload: bytes) -> dict[str, Any]:
        cid: str | None = None
        try:
            env = self._parse(payload)
            cid = env["correlation_id"]
            self._check(gw, name, env)
            once = (gw.id, env["key_id"], cid) if name in ("broadcast", "cancel", "alert") else None
            if once is not None and once in self.answered:
                command, args, answer = self.answered[once]
                if (command, args) != (name, env["args"]):
                    raise _Refusal("conflict", f"correlation id {cid!r} was already used for another "
                                               f"command or other args")
                return {**answer, "duplicate": True}
            answer = {"correlation_id": cid, "ok": True, **self._run(gw, name, env["args"])}
            if once is not None:
                self.answered[once] = (name, env["args"], answer)
            return answer
        except _Refusal as r:
            refusal: dict[str, Any] = {"correlation_id": cid if cid is not None else _correlation_id(payload),
                                       "ok": False, "error": r.code, "message": r.message}
            if r.field is not None:
                refusal["field"] = r.field
            return refusal

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_COMMAND_BYTES:
            raise _Refusal("bad_request", f"payload larger than {MAX_COMMAND_BYTES} bytes")
        try:
            env = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                             parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Refusal("bad_request", f"not UTF-8 JSON: {exc}") from None
        if not isinstance(env, dict):
            raise _Refusal("bad_request", "the payload must be a JSON object")
        for key in env:
            if key not in ENVELOPE_FIELDS:
                raise _Refusal("bad_request", f"{key}: unknown field", key)
        for key in ENVELOPE_FIELDS:
            if key not in env:
                raise _Refusal("bad_request", f"{key}: missing", key)
        checks: dict[str, tuple[Callable[[Any], bool], str]] = {
            "correlation_id": (lambda v: isinstance(v, str) and 1 <= len(v) <= 128,
                               "a string of 1-128 chars"),
            "gateway": (lambda v: isinstance(v, str), "a string"),
            "ts": (lambda v: isinstance(v, int | float) and not isinstance(v, bool),
                   "a number (unix seconds)"),
            "nonce": (lambda v: isinstance(v, str) and 16 <= len(v) <= 64 and v.isascii() and v.isprintable()
                      and " " not in v, "16-64 printable ASCII chars without spaces"),
            "key_id": (lambda v: isinstance(v, str) and 1 <= len(v) <= 64, "a string of 1-64 chars"),
            "args": (lambda v: isinstance(v, dict), "an object"),
            "sig": (lambda v: isinstance(v, str), "a base64 string"),
        }
        for key, (ok, what) in checks.items():
            if not ok(env[key]):
                raise _Refusal("bad_request", f"{key}: must be {what}", key)
        return env

    def _check(self, gw: Gateway, name: str, env: dict[str, Any]) -> None:
        if env["gateway"] != gw.id:
            raise _Refusal("wrong_gateway", f"gateway: this is {gw.id}, not {env['gateway']!r}")
        now = time.time()
        if self.keys:
            key = self.keys.get(env["key_id"])
            if key is None:
                raise _Refusal("unknown_key", f"key_id: {env['key_id']!r} is not configured here")
            try:
                sig = base64.b64decode(env["sig"], validate=True)
            except binascii.Error:
                raise _Refusal("bad_signature", "sig: not base64") from None
            from cryptography.exceptions import InvalidSignature
            try:
                key.verify(sig, signed_bytes(name, env))
            except InvalidSignature:
                raise _Refusal("bad_signature", "sig: does not verify with key " + env["key_id"]) from None
            if env["ts"] < now - self.max_skew_s:
                raise _Refusal("stale", f"ts: {now - env['ts']:.0f} s old (limit {self.max_skew_s:g} s)")
            if env["ts"] > now + self.max_skew_s:
                raise _Refusal("from_future",
                               f"ts: {env['ts'] - now:.0f} s ahead (limit {self.max_skew_s:g} s)")
        for nonce_key, seen in list(gw.nonces.items()):
            if now - seen > self.nonce_ttl_s:
                del gw.nonces[nonce_key]
        nonce_key = (env["key_id"], env["nonce"])
        if nonce_key in gw.nonces:
            raise _Refusal("replayed", "nonce: already used by this key")
        gw.nonces[nonce_key] = now
        if name not in COMMANDS:
            raise _Refusal("unknown_command", f"unknown command {name[:64]!r}; one of {', '.join(COMMANDS)}")

    def _run(self, gw: Gateway, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "rebirth":
            gw.announce()
            return {}
        if name == "cancel":
            bid = args.get("broadcast_id")
            if not isinstance(bid, str):
                raise _Refusal("bad_args", "args.broadcast_id: must be a string", "args.broadcast_id")
            result = gw.cancel_broadcast(bid)
            if result == "not_found":
                raise _Refusal("not_found", f"no broadcast {bid!r}")
            if result == "not_cancellable":
                raise _Refusal("not_cancellable", f"broadcast {bid} has already ended")
            return {"broadcast_id": bid, "state": "cancelled"}
        if name == "line_check":
            devices = args.get("devices")
            if devices is None:
                devices = list(gw.terminals)
            if not isinstance(devices, list):
                raise _Refusal("bad_args", "args.devices: must be a list or null", "args.devices")
            for i, dev in enumerate(devices):
                if dev not in gw.terminals:
                    raise _Refusal("bad_args", f"args.devices.{i}: no device {dev!r}", f"args.devices.{i}")
            return {"results": gw.line_check(devices)}
        if name == "alert":
            raise _Refusal("unavailable", "this simulated gateway has no alert inbox")
        return {"broadcast_id": gw.start_broadcast(args, self._targets(gw, args))}

    @staticmethod
    def _targets(gw: Gateway, args: dict[str, Any]) -> list[str]:
        """The terminals a broadcast request targets (docs/api.md targets), checked like bad_args."""
        cls = args.get("class")
        if cls not in ("emergency", "drill", "daily"):
            raise _Refusal("bad_args", "args.class: one of emergency, drill, daily", "args.class")
        if not isinstance(args.get("text"), str) and not isinstance(args.get("audio_id"), str):
            raise _Refusal("bad_args", "args.text: a text or an audio_id is required", "args.text")
        targets = args.get("targets")
        if not isinstance(targets, dict) or not targets:
            raise _Refusal("bad_args", "args.targets: must be an object", "args.targets")
        chosen: list[str] = []
        for kind, value in targets.items():
            where = f"args.targets.{kind}"
            if kind == "all":
                if value is True:
                    chosen.extend(gw.terminals)
            elif kind in ("devices", "zones", "area_codes"):
                if not isinstance(value, list):
                    raise _Refusal("bad_args", f"{where}: must be a list", where)
                for i, item in enumerate(value):
                    if kind == "devices":
                        if item not in gw.terminals:
                            raise _Refusal("bad_args", f"{where}.{i}: no device {item!r}", f"{where}.{i}")
                        chosen.append(item)
                    elif kind == "zones":
                        chosen.extend(t.id for t in gw.terminals.values() if item in t.zones)
                    else:
                        if not (isinstance(item, str) and len(item) == 12 and item.isdigit()):
                            raise _Refusal("bad_args", f"{where}.{i}: a 12-digit area code", f"{where}.{i}")
                        prefix = _area_prefix(item)
                        chosen.extend(t.id for t in gw.terminals.values() if t.area_code.startswith(prefix))
            else:
                raise _Refusal("bad_args", f"{where}: unknown target kind", where)
        devices = list(dict.fromkeys(chosen))
        if not devices:
            raise _Refusal("bad_args", "args.targets: no device on this gateway matches", "args.targets")
        return devices


def _area_prefix(code: str) -> str:
    """The significant digits of a 12-digit area code (province 2, city 4, county 6, township 9,
    village 12)."""
    for length in (2, 4, 6, 9):
        if set(code[length:]) == {"0"}:
            return code[:length]
    return code


def _dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON, as a gateway sends it (orjson: a busy bench fleet encodes thousands a second)."""
    return orjson.dumps(doc)


# ---------------------------------------------------------------------------------------- the loop


@dataclass(order=True)
class _Timer:
    when: float
    order: int
    fn: Callable[..., None] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class _Loop:
    """A selector loop with timers and a thread-safe call queue; runs on one thread."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list[_Timer] = []
        self.calls: collections.deque[Callable[[], None]] = collections.deque()
        self._order = itertools.count()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.after_round: Callable[[], None] | None = None
        """Called at the end of every round (the fleet writes what its gateways queued meanwhile)."""

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(time.monotonic() + delay, next(self._order), fn, args)
        heapq.heappush(self.timers, timer)
        return timer

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def on_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def run(self, on_io: Callable[[Any, int], None]) -> None:
        while not self.stopping:
            timeout = 0.5
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0].when - time.monotonic()))
            if self.calls:
                timeout = 0.0
            for key, mask in self.selector.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    on_io(key.data, mask)
            while self.calls:
                self._guard(self.calls.popleft())
            now = time.monotonic()
            while self.timers and self.timers[0].when <= now:
                timer = heapq.heappop(self.timers)
                if not timer.cancelled:
                    self._guard(timer.fn, *timer.args)
            if self.after_round is not None:
                self._guard(self.after_round)

    @staticmethod
    def _guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("fleet loop: %r failed", fn)

    def close(self) -> None:
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


# --------------------------------------------------------------------------------------- the fleet


class _GatewayClient(paho.Client):
    """paho's client with a cheaper PUBACK: MQTT 3.1.1's is two bytes (the mid), yet paho builds a reason
    code and a properties object for each — a fifth of a busy fleet's CPU."""

    _ACK_REASON = paho.ReasonCode(paho.PacketTypes.PUBACK)
    _ACK_PROPS = paho.Properties(paho.PacketTypes.PUBACK)

    def _handle_pubackcomp(self, cmd: Any) -> paho.MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != paho.MQTTv311 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = packet[0] << 8 | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._ACK_REASON, self._ACK_PROPS)
        return paho.MQTT_ERR_SUCCESS


def parse_broker(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (port 1883 by default) → (host, port)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise FleetError(f"--broker: {url!r} is not mqtt://host[:port] (TLS is not simulated)")
    return parts.hostname, parts.port or 1883


def township_codes(gateways: int, first: int = 0) -> list[str]:
    """Distinct 3-digit township codes: 100-999 first (as real ones are), then 000-099; ``first`` skips
    that many (several fleet processes, each with its own share of one county)."""
    if not 1 <= gateways <= 1000:
        raise FleetError(f"gateways: 1 to 1000 townships fit under one county code, not {gateways}")
    if not 0 <= first <= 1000 - gateways:
        raise FleetError(f"first: 0 to {1000 - gateways} with {gateways} gateways, not {first}")
    codes = [f"{c:03d}" for c in range(100, 1000)] + [f"{c:03d}" for c in range(100)]
    return codes[first:first + gateways]


class Fleet:
    """N virtual gateways on one broker; ``start()``, ``stop()``, and the test/bench hooks below."""

    def __init__(self, broker_host: str = "127.0.0.1", broker_port: int = 1883, *, gateways: int = 10,
                 terminals: int = 20, prefix: str = "ebc", county_area: str = "340621", seed: int = 1,
                 fault_rate_per_hour: float = 0.0, recovery_rate_per_hour: float = 6.0,
                 health_interval_s: float = 60.0, keepalive_s: int = 30, connect_rate: float = 200.0,
                 inflight: int = 100, recovered_hold_s: float = 60.0, broadcast_s: float = 10.0,
                 broadcast_start_s: float = 0.5, county_keys: dict[str, str] | None = None,
                 county_name: str = "濉溪县", centre: tuple[float, float] = (33.92, 116.77),
                 reconnect_min_s: float = 1.0, reconnect_max_s: float = 60.0,
                 outbox_max_health_rows: int = 1000, first: int = 0) -> None:
        if not (len(county_area) == 6 and county_area.isdigit()):
            raise FleetError(f"county_area: a 6-digit county code, not {county_area!r}")
        if not 1 <= terminals <= 99:
            raise FleetError(f"terminals: 1 to 99 per gateway, not {terminals}")
        for name, value in (("fault_rate_per_hour", fault_rate_per_hour),
                            ("recovery_rate_per_hour", recovery_rate_per_hour),
                            ("connect_rate", connect_rate)):
            if not (math.isfinite(value) and value >= 0):
                raise FleetError(f"{name}: must be a finite number ≥ 0, not {value!r}")
        for name, value in (("health_interval_s", health_interval_s), ("keepalive_s", keepalive_s),
                            ("inflight", inflight)):
            if not (math.isfinite(value) and value > 0):
                raise FleetError(f"{name}: must be > 0, not {value!r}")
        self.host, self.port = broker_host, broker_port
        self.broker_url = f"mqtt://{broker_host}:{broker_port}"
        self.prefix, self.county_area = prefix, county_area
        self.county_name, self.centre = county_name, centre
        self.seed = seed
        self.fault_rate_per_hour, self.recovery_rate_per_hour = fault_rate_per_hour, recovery_rate_per_hour
        self.health_interval_s, self.keepalive_s = health_interval_s, int(keepalive_s)
        self.connect_rate, self.inflight = connect_rate, inflight
        self.recovered_hold_s, self.broadcast_s, self.broadcast_start_s = (recovered_hold_s, broadcast_s,
                                                                          broadcast_start_s)
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.outbox_max_health_rows = outbox_max_health_rows
        keys = {kid: load_ed25519_public_key(text) for kid, text in (county_keys or {}).items()}
        self.commands = CommandHandler(keys)
        self.rng = random.Random(seed)
        self.loop = _Loop()
        self.loop.after_round = self._write_queued
        self._to_write: dict[Any, tuple[paho.Client, Gateway]] = {}
        self._wait_writable: set[Any] = set()
        self.stats: collections.Counter[str] = collections.Counter()
        self.gateways: dict[str, Gateway] = {}
        for i, code in enumerate(township_codes(gateways, first), start=first):
            gw = Gateway(self, i, code, terminals)
            self.gateways[gw.id] = gw
        self._connect_queue: collections.deque[Gateway] = collections.deque()
        self._allowance = 0.0
        self._closing = False
        self._last_tick = time.monotonic()
        self.started_mono: float | None = None
        self.all_connected_s: float | None = None
        """Seconds from ``start()`` until every gateway had its first CONNACK (None until then)."""

    # -- public API (any thread) -------------------------------------------------------------------

    def start(self) -> Fleet:
        """Start the loop thread; gateways connect at ``connect_rate`` per second (returns at once)."""
        if self.loop.thread is not None:
            raise RuntimeError("fleet already started")
        self.started_mono = time.monotonic()
        for gw in self.gateways.values():
            self._boot(gw)
        self.loop.call_later(0.0, self._ramp)
        self.loop.call_later(MISC_EVERY_S, self._misc)
        if self.fault_rate_per_hour > 0:
            self._schedule_fault()
        self.loop.thread = threading.Thread(target=self.loop.run, args=(self._on_io,), name="fleet-loop",
                                            daemon=True)
        self.loop.thread.start()
        return self

    def stop(self, grace_s: float = 3.0) -> None:
        """Graceful stop as docs/mqtt.md step 5: ``offline`` retained, then DISCONNECT, then the loop ends."""
        if self.loop.thread is None:
            return
        try:
            self._call(self._stop_all, timeout=30.0)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self._call(self._open_sockets, timeout=30.0):
                time.sleep(0.05)
        finally:
            self.loop.stopping = True
            self.loop.call_soon_threadsafe(lambda: None)
            self.loop.thread.join(30.0)
            for gw in self.gateways.values():
                if gw.client is not None and gw.client.socket() is not None:
                    _hard_close(gw.client)
            self.loop.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject_fault(self, gateway: str, device: str, fault: str = "mains_lost") -> bool:
        """Raise ``fault`` (one of FAULT_KINDS; ``offline`` = the terminal stops answering) now."""
        return self._call(lambda: self._gw(gateway).raise_fault(device, fault))

    def recover(self, gateway: str, device: str, fault: str | None = None) -> int:
        """Clear ``fault`` (default: every fault, and bring the terminal back online)."""
        return self._call(lambda: self._gw(gateway).clear_faults(device, fault))

    def kill(self, gateway: str) -> None:
        """Drop the gateway's socket without DISCONNECT (a power cut): the broker publishes its Will."""
        self._call(lambda: self._kill(self._gw(gateway)))

    def restart(self, gateway: str) -> None:
        """Start a killed gateway again (kill it first if it is alive); its outbox is kept."""
        def go() -> None:
            gw = self._gw(gateway)
            if gw.alive:
                self._kill(gw)
            self._boot(gw)
        self._call(go)

    def publish_stats(self) -> dict[str, int]:
        """Messages sent per kind (status, birth, state, events, broadcasts, health, response), acks,
        commands received, connects/disconnects, and how many gateways are connected now."""
        return self._call(lambda: {**self.stats,
                                   "connected": sum(g.connected for g in self.gateways.values())})

    def connected_count(self) -> int:
        return sum(1 for g in list(self.gateways.values()) if g.connected)

    def wait_connected(self, count: int | None = None, timeout: float = 120.0) -> bool:
        """Until ``count`` (default all) gateways are connected; False on timeout."""
        want = len(self.gateways) if count is None else count
        deadline = time.monotonic() + timeout
        while self.connected_count() < want:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def terminal_state(self, gateway: str, device: str) -> int:
        """The terminal's state code now (1 normal, 2 off, 3 fault, 4 fault recovered, 5 broadcasting)."""
        return self._call(lambda: self._gw(gateway)._terminal(device).state(time.time(),
                                                                            self.recovered_hold_s))

    # -- plumbing -----------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        if self.loop.thread is None or self.loop.on_loop() or not self.loop.thread.is_alive():
            return fn()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def _gw(self, gateway: str) -> Gateway:
        try:
            return self.gateways[gateway]
        except KeyError:
            raise FleetError(f"gateway: no gateway {gateway!r} in this fleet") from None

    def count(self, kind: str, n: int = 1) -> None:
        self.stats[kind] += n

    def _boot(self, gw: Gateway) -> None:
        gw.alive = True
        gw.life += 1
        gw.started_at = time.time()
        gw.backoff = self.reconnect_min_s
        self.loop.call_later(self.rng.uniform(0, self.health_interval_s), gw.health_tick, gw.life)
        self._connect_queue.append(gw)

    def _ramp(self) -> None:
        """Connect queued gateways at ``connect_rate`` per second (0: all at once)."""
        now = time.monotonic()
        self._allowance = min(self._allowance + (now - self._last_tick) * self.connect_rate,
                              max(1.0, self.connect_rate / 10))
        self._last_tick = now
        while self._connect_queue and (self.connect_rate == 0 or self._allowance >= 1):
            self._allowance -= 1
            gw = self._connect_queue.popleft()
            if gw.alive and gw.client is None:
                self._connect(gw)
        if not self._closing:
            self.loop.call_later(0.02, self._ramp)

    def _connect(self, gw: Gateway) -> None:
        client = _GatewayClient(CallbackAPIVersion.VERSION2, client_id=gw.id, clean_session=True,
                             protocol=paho.MQTTv311, userdata=gw, reconnect_on_failure=False)
        client.connect_timeout = 5.0
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.will_set(f"{gw.root}/status", "offline", qos=1, retain=True)
        client.on_socket_open = self._sock_open
        client.on_socket_close = self._sock_close
        client.on_socket_register_write = self._sock_want_write
        client.on_socket_unregister_write = self._sock_done_writing
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        gw.client = client
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as exc:
            log.debug("%s: cannot connect: %s", gw.id, exc)
            gw.client = None
            self._retry(gw)
            return
        self.count("connect_attempts")
        self.loop.call_later(CONNACK_TIMEOUT_S, self._connack_due, gw, client)

    def _connack_due(self, gw: Gateway, client: paho.Client) -> None:
        if gw.client is client and not gw.connected:
            log.warning("%s: no CONNACK within %g s", gw.id, CONNACK_TIMEOUT_S)
            _hard_close(client)
            gw.client = None
            self._retry(gw)

    def _retry(self, gw: Gateway) -> None:
        if not gw.alive or self._closing:
            return
        delay = gw.backoff
        gw.backoff = min(gw.backoff * 2, self.reconnect_max_s)
        self.loop.call_later(delay, self._connect_queue.append, gw)

    def _kill(self, gw: Gateway) -> None:
        gw.alive = False
        gw.life += 1
        client, gw.client = gw.client, None
        if gw.connected:
            gw.connected = False
            gw.requeue()
        if client is not None:
            _hard_close(client)
        self.count("kills")

    def _stop_all(self) -> None:
        self._closing = True  # no more connects, retries or random faults; the loop runs on to close
        self._connect_queue.clear()
        self.fault_rate_per_hour = 0.0
        for gw in self.gateways.values():
            gw.alive = False
            gw.life += 1
            client = gw.client
            if client is None:
                continue
            if gw.connected:
                client.publish(f"{gw.root}/status", b"offline", qos=1, retain=True)
                self.count("status")
                client.disconnect()
            else:
                _hard_close(client)
                gw.client = None

    def _open_sockets(self) -> int:
        return sum(1 for g in self.gateways.values()
                   if g.client is not None and g.client.socket() is not None)

    def _misc(self) -> None:
        for gw in self.gateways.values():
            if gw.client is not None:
                gw.client.loop_misc()
        if not self.loop.stopping:
            self.loop.call_later(MISC_EVERY_S, self._misc)

    # -- random faults -----------------------------------------------------------------------------

    def _schedule_fault(self) -> None:
        terminals = sum(len(g.terminals) for g in self.gateways.values())
        rate = self.fault_rate_per_hour * terminals / 3600.0
        if rate > 0:
            self.loop.call_later(self.rng.expovariate(rate), self._random_fault)

    def _random_fault(self) -> None:
        if self.fault_rate_per_hour <= 0:
            return
        gw = self.rng.choice(list(self.gateways.values()))
        term = self.rng.choice(list(gw.terminals.values()))
        code = self.rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
        if gw.alive and gw.raise_fault(term.id, code):
            self.count("random_faults")
            if self.recovery_rate_per_hour > 0:
                delay = self.rng.expovariate(self.recovery_rate_per_hour / 3600.0)
                self.loop.call_later(delay, self._random_recovery, gw, term.id, code, gw.life)
        self._schedule_fault()

    def _random_recovery(self, gw: Gateway, dev: str, code: str, life: int) -> None:
        if gw.alive and life == gw.life and gw.clear_faults(dev, code):
            self.count("random_recoveries")

    # -- paho callbacks (loop thread) ----------------------------------------------------------------

    def _on_io(self, gw: Gateway, mask: int) -> None:
        client = gw.client
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            client.loop_read()
        if mask & selectors.EVENT_WRITE and gw.client is client:
            client.loop_write()

    def _sock_open(self, client: paho.Client, gw: Gateway, sock: Any) -> None:
        self.loop.selector.register(sock, selectors.EVENT_READ, gw)

    def _sock_close(self, client: paho.Client, gw: Gateway, sock: Any) -> None:
        self._to_write.pop(sock, None)
        self._wait_writable.discard(sock)
        with contextlib.suppress(KeyError, ValueError):
            self.loop.selector.unregister(sock)

    def _sock_want_write(self, client: paho.Client, gw: Gateway, sock: Any) -> None:
        """Written at the end of this loop round (:meth:`_write_queued`), not after a ``select`` for it."""
        self._to_write[sock] = (client, gw)

    def _sock_done_writing(self, client: paho.Client, gw: Gateway, sock: Any) -> None:
        self._to_write.pop(sock, None)
        if sock in self._wait_writable:
            self._wait_writable.discard(sock)
            with contextlib.suppress(KeyError, ValueError):
                self.loop.selector.modify(sock, selectors.EVENT_READ, gw)

    def _write_queued(self) -> None:
        """Send what the gateways queued this round; a socket whose buffer is full waits in ``select``."""
        queued, self._to_write = self._to_write, {}
        for sock, (client, gw) in queued.items():
            if gw.client is client and client.socket() is sock:
                client.loop_write()
                if client.want_write() and client.socket() is sock and sock not in self._wait_writable:
                    self._wait_writable.add(sock)
                    with contextlib.suppress(KeyError, ValueError):
                        self.loop.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, gw)
        for sock in queued:
            if sock in self._wait_writable:
                self._to_write.pop(sock, None)  # select tells when it can be written

    def _on_connect(self, client: paho.Client, gw: Gateway, flags: Any, reason: Any, props: Any) -> None:
        if client is not gw.client:
            return
        if reason.is_failure:
            log.warning("%s: connection refused: %s", gw.id, reason)
            return  # paho closes the socket; on_disconnect retries
        gw.connected = True
        gw.connects += 1
        gw.backoff = self.reconnect_min_s
        self.count("connects")
        if self.all_connected_s is None and self.started_mono is not None and all(
                g.connects for g in self.gateways.values()):
            self.all_connected_s = time.monotonic() - self.started_mono
        gw.announce()
        client.subscribe(f"{gw.root}/cmd/+", qos=1)
        gw.pump()

    def _on_disconnect(self, client: paho.Client, gw: Gateway, flags: Any, reason: Any, props: Any) -> None:
        if client is not gw.client:
            return
        self.count("disconnects")
        gw.client = None
        if gw.connected:
            gw.connected = False
            gw.requeue()
        self._retry(gw)

    def _on_publish(self, client: paho.Client, gw: Gateway, mid: int, reason: Any, props: Any) -> None:
        if client is gw.client:
            gw.on_ack(mid)

    def _on_message(self, client: paho.Client, gw: Gateway, msg: paho.MQTTMessage) -> None:
        if client is not gw.client or not gw.alive:
            return
        name = msg.topic[len(gw.root) + len("/cmd/"):]
        if msg.topic.startswith(f"{gw.root}/cmd/") and "/" not in name:
            gw.on_command(name, bytes(msg.payload))


def _hard_close(client: paho.Client) -> None:
    """Close the client's socket with a TCP reset and no DISCONNECT, as a power cut would."""
    sock = client.socket()
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # paho's own close: unregisters the socket (on_socket_close) and forgets it, without DISCONNECT
    client._sock_close()


# ------------------------------------------------------------------------------------------------ CLI


def _rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _stats_line(fleet: Fleet, started: float) -> str:
    s = fleet.publish_stats()
    cpu = time.process_time()
    parts = [f"t={time.monotonic() - started:6.1f}s",
             f"connected={s.get('connected', 0)}/{len(fleet.gateways)}"]
    parts += [f"{k}={s.get(k, 0)}" for k in ("birth", "state", "events", "broadcasts", "health", "response",
                                              "acked", "random_faults", "random_recoveries", "disconnects")]
    parts += [f"cpu={cpu:.1f}s", f"rss={_rss_mb():.0f}MB"]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulator.fleet --broker mqtt://127.0.0.1:1883 --gateways 100``."""
    p = argparse.ArgumentParser(prog="fleet-sim",
                                description="Virtual township gateways speaking docs/mqtt.md")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host[:port]")
    p.add_argument("--gateways", type=int, default=10)
    p.add_argument("--terminals", type=int, default=20, help="terminals per gateway")
    p.add_argument("--prefix", default="ebc")
    p.add_argument("--county-area", default="340621", help="6-digit county code")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fault-rate", type=float, default=0.5, help="faults per terminal per hour")
    p.add_argument("--recovery-rate", type=float, default=6.0, help="recoveries per faulty terminal per hour")
    p.add_argument("--health-interval", type=float, default=60.0, help="seconds between health snapshots")
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--connect-rate", type=float, default=200.0,
                   help="new connections per second (0: no pacing)")
    p.add_argument("--broadcast-s", type=float, default=10.0, help="how long a simulated broadcast plays")
    p.add_argument("--county-key", action="append", default=[], metavar="KEY_ID=FILE",
                   help="verify commands with this Ed25519 public key (PEM or hex file); repeatable")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--stats-every", type=float, default=5.0)
    p.add_argument("-v", "--verbose", action="store_true")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if opts.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_broker(opts.broker)
        keys: dict[str, str] = {}
        for spec in opts.county_key:
            kid, sep, path = spec.partition("=")
            if not sep or not kid:
                raise FleetError(f"--county-key: {spec!r} is not KEY_ID=FILE")
            with open(path, encoding="utf-8") as f:
                keys[kid] = f.read()
        fleet = Fleet(host, port, gateways=opts.gateways, terminals=opts.terminals, prefix=opts.prefix,
                      county_area=opts.county_area, seed=opts.seed, fault_rate_per_hour=opts.fault_rate,
                      recovery_rate_per_hour=opts.recovery_rate, health_interval_s=opts.health_interval,
                      keepalive_s=opts.keepalive, connect_rate=opts.connect_rate,
                      broadcast_s=opts.broadcast_s, county_keys=keys)
    except (FleetError, OSError) as exc:
        print(f"fleet-sim: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    fleet.start()
    print(f"fleet-sim: {len(fleet.gateways)} gateways × {opts.terminals} terminals → {fleet.broker_url}, "
          f"prefix {opts.prefix}, county {opts.county_area}, seed {opts.seed}", flush=True)
    announced = False
    try:
        while opts.duration <= 0 or time.monotonic() - started < opts.duration:
            time.sleep(min(opts.stats_every, max(0.05, opts.duration - (time.monotonic() - started)))
                       if opts.duration > 0 else opts.stats_every)
            print(_stats_line(fleet, started), flush=True)
            if not announced and fleet.all_connected_s is not None:
                print(f"fleet-sim: all {len(fleet.gateways)} gateways connected in "
                      f"{fleet.all_connected_s:.2f} s", flush=True)
                announced = True
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
    print(_stats_line(fleet, started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
