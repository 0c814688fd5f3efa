"""MQTT reporting against a real Mosquitto the tests start (tests/mqttkit.py), never a mock client.

In-process (reporter + real bus, registry, outbox): outbox replay after an outage in seq order
with ``historical``, the overflow report, broker failover, password file, TLS with a client
certificate, and the county's signed ``rebirth``. As subprocesses (``ebc run`` against ``ebc sim``):
the Will after ``kill -9``, retained state for a late subscriber, a broker outage during device
faults and a broadcast, and ``kill -9`` with reports still in the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqttkit import HANG_GUARD_S, Broker, Received, Subscriber, TlsFiles, make_tls, seqs
from simkit import REPO, SimConfig, free_port, running_simulator, write_sim_config
from test_daemon import make_token, wait_until

from controller.config import Config, ConfigError, load_config, parse_config
from controller.core.events import BroadcastStateChanged, DeviceFault, DeviceRecovered, EventBus
from controller.devices.registry import DeviceRegistry
from controller.storage.journal import Store
from controller.uplink.commands import CountyCommands
from controller.uplink.mqtt import MqttReporter
from controller.uplink.outbox import OVERFLOW_KIND, Outbox, OutboxLimits
from controller.uplink.signing import signed_bytes

GW = "gw-test"
ROOT = f"ebc/{GW}"
STATUS, BIRTH, EVENTS = f"{ROOT}/status", f"{ROOT}/birth", f"{ROOT}/events"
FAST_RECONNECT = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


def gateway_config(tmp_path: Path, mqtt: dict[str, Any], **sections: Any) -> tuple[SimConfig, Path]:
    """A small simulated township with an mqtt section, written to ``tmp_path/gw.yaml``."""
    sim = write_sim_config(tmp_path, rtu_terminals=3, tcp_terminals=1, fm=True, time_scale=10.0)
    data = {**sim.data, "state_dir": str(tmp_path / "state"), "mqtt": {**FAST_RECONNECT, **mqtt}, **sections}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return sim, path


def events(messages: list[Received], kind: str | None = None) -> list[dict[str, Any]]:
    docs = [m.json() for m in messages if m.topic == EVENTS]
    return [d for d in docs if kind is None or d["kind"] == kind]


def fault(device: str, code: str = "amp_fault", n: int | None = None, *, cleared: bool = False,
          reason: str = "test") -> DeviceFault:
    """A fault event as health raises it (or clears it); ``n`` in its values numbers a series."""
    fields: dict[str, Any] = {"device_id": device, "device_kind": "terminal", "name": device, "village": "",
                              "fault": code, "zone": None, "reason": reason, "reason_zh": reason,
                              "values": {} if n is None else {"n": n}, "since": time.time()}
    return DeviceRecovered(**fields, duration_s=1.0) if cleared else DeviceFault(**fields)


def n_of(event: dict[str, Any]) -> int | None:
    return event["data"]["values"].get("n")


def online(messages: list[Received]) -> bool:
    return any(m.topic == STATUS and m.payload == b"online" for m in messages)


def first_arrivals(messages: list[Received]) -> list[int]:
    """Seqs in the order they first arrived (at-least-once may repeat some; that is allowed)."""
    seen: dict[int, None] = {}
    for seq in seqs(messages):
        seen.setdefault(seq, None)
    return list(seen)


def retained(broker: Broker, topic: str) -> Received | None:
    """What a brand-new subscriber gets on ``topic`` as retained, if anything (within a moment)."""
    with Subscriber(broker, [topic]) as sub, contextlib.suppress(AssertionError):
        return sub.wait_for(f"retained {topic}", lambda ms: next((m for m in ms if m.retain), None), 2.0)
    return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions across a restart, so the test's subscriber misses nothing."""
    b = Broker(tmp_path / "broker", persistent=True).start()
    yield b
    b.stop()


@pytest.mark.parametrize(("mqtt", "error"), [
    ({"brokers": ["http://county:1883"]}, "mqtt.brokers: 'http://county:1883' is not a broker URL"),
    ({"brokers": ["mqtt://a", "mqtts://b"]}, "mqtt.brokers: use either mqtt:// or mqtts://"),
    ({"brokers": ["mqtt://a"], "password": "x"}, "mqtt: a password needs a username"),
    ({"brokers": ["mqtt://a"], "ca_file": "ca.pem"}, "mqtt: ca_file and cert_file need mqtts://"),
    ({"brokers": ["mqtts://a"], "username": "u", "password_file": "nope"}, "mqtt.password_file: cannot read"),
    ({"brokers": ["mqtt://a"], "prefix": "ebc/#"}, "mqtt.prefix: String should match pattern"),
    ({"brokers": ["mqtt://a"], "keepalive": 30}, "mqtt.keepalive: unknown key"),
])
def test_config_errors_name_the_key(tmp_path: Path, mqtt: dict[str, Any], error: str):
    sim = write_sim_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse_config({**sim.data, "mqtt": mqtt}, "gw.yaml", tmp_path)
    assert any(e.startswith(error) for e in caught.value.errors), caught.value.errors


def test_config_defaults_and_ports(tmp_path: Path):
    sim = write_sim_config(tmp_path)
    cfg = parse_config({**sim.data, "mqtt": {"brokers": ["mqtts://emqx-1.county", "mqtts://[::1]:18883"]}},
                       "gw.yaml", tmp_path)
    assert cfg.mqtt is not None and cfg.mqtt.prefix == "ebc" and cfg.mqtt.client_id is None
    assert [(b.host, b.port, b.tls) for b in cfg.mqtt.addresses()] == [("emqx-1.county", 8883, True),
                                                                       ("::1", 18883, True)]


# -- in-process: the reporter with a real bus, registry and outbox ------------------------------------


class Gateway:
    """The reporting half of a daemon, in this process: bus → outbox → reporter."""

    def __init__(self, cfg: Config, limits: OutboxLimits | None = None) -> None:
        self.cfg = cfg
        self.bus = EventBus()
        self.registry = DeviceRegistry(cfg)
        self.outbox = Outbox.in_state_dir(cfg.state_dir, limits)
        self.reporter = MqttReporter(cfg, self.bus, self.outbox, self.registry)

    async def stop(self) -> None:
        await self.reporter.stop()
        self.outbox.close()


@contextlib.asynccontextmanager
async def gateway(path: Path, limits: OutboxLimits | None = None) -> AsyncIterator[Gateway]:
    gw = Gateway(load_config(path), limits)
    await gw.reporter.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def test_outage_replays_in_order_marked_historical(tmp_path: Path, broker: Broker):
    _, path = gateway_config(tmp_path, {"brokers": [broker.url]})
    with Subscriber(broker, [f"{ROOT}/#"], client_id="county", persistent=True) as sub:
        async with gateway(path) as gw:
            await asyncio.to_thread(sub.wait_for, "online", online)
            gw.bus.publish(fault("rtu1", "mains_lost", reason="before"))
            await asyncio.to_thread(sub.wait_for, "the live event", lambda ms: events(ms, "device.fault"))

            broker.stop()
            await until("the reporter to notice", lambda: not gw.reporter.connected)
            for i in range(50):
                gw.bus.publish(fault("rtu2", n=i))
            gw.bus.publish(BroadcastStateChanged(broadcast_id="b-1", state=3, name="succeeded", reason=None,
                                                 coverage=1.0))
            assert gw.outbox.depth >= 52  # written before sending: all of it waits on disk
            broker.start()

            await asyncio.to_thread(sub.wait_for, "the backlog", lambda ms: gw.outbox.depth == 0 and len(
                [e for e in events(ms, "device.fault") if n_of(e) is not None]) >= 50)
            gw.bus.publish(fault("rtu2", cleared=True))
            got = await asyncio.to_thread(sub.wait_for, "the live event after", lambda ms: events(
                ms, "device.recovered"))
    messages = sub.snapshot()
    backlog = [e for e in events(messages, "device.fault") if n_of(e) is not None]
    assert [n_of(e) for e in backlog][:50] == list(range(50))
    assert all(e["historical"] for e in backlog)
    assert not events(messages, "device.fault")[0]["historical"]  # sent while connected
    assert not got[0]["historical"]
    order = first_arrivals(messages)
    assert order == sorted(order)
    assert set(range(order[0], order[-1] + 1)) <= set(order)  # no gap: nothing lost
    outcome = [m.json() for m in messages if m.topic == f"{ROOT}/broadcasts/b-1"]
    assert outcome[0]["historical"] and outcome[0]["data"]["name"] == "succeeded"
    compact = events(messages, "broadcast.state")
    assert compact[0]["data"] == {"id": "b-1", "state": 3, "name": "succeeded", "reason": None,
                                  "coverage": 1.0}


async def test_overflow_is_reported_and_everything_else_arrives(tmp_path: Path, broker: Broker):
    _, path = gateway_config(tmp_path, {"brokers": [broker.url]})
    with Subscriber(broker, [EVENTS], client_id="county", persistent=True) as sub:
        broker.stop()
        async with gateway(path, OutboxLimits(max_rows=100, max_droppable_rows=10)) as gw:
            sent = [gw.bus.publish(fault("rtu1", n=i)) for i in range(300)]
            assert gw.outbox.depth <= 100
            broker.start()
            await asyncio.to_thread(sub.wait_for, "the overflow report and the rest",
                                    lambda ms: any(e["kind"] == "device.fault" and n_of(e) == 299
                                                   for e in events(ms)))
            stats = gw.outbox.stats()
    received = events(sub.snapshot())
    reports = [e["data"] for e in received if e["kind"] == OVERFLOW_KIND]
    assert reports and sum(r["dropped"] for r in reports) == stats.dropped_kept > 0
    arrived = {n_of(e) for e in received if e["kind"] == "device.fault"}
    dropped_faults = sum(r["kinds"].get("device.fault", 0) for r in reports)
    assert len(arrived) + dropped_faults == len(sent)  # each one either arrived or was reported
    assert max(arrived) == 299  # the oldest are the ones dropped


async def test_second_broker_used_when_the_first_is_down(tmp_path: Path, broker: Broker):
    dead = f"mqtt://127.0.0.1:{free_port()}"
    _, path = gateway_config(tmp_path, {"brokers": [dead, broker.url]})
    with Subscriber(broker, [STATUS]) as sub:
        async with gateway(path) as gw:
            await asyncio.to_thread(sub.wait_for, "online", online)
            assert gw.reporter.broker == broker.url
            assert gw.reporter.attempts >= 2


async def test_username_and_password_file(tmp_path: Path):
    b = Broker(tmp_path / "broker", users={"gw-test": "s3cret-池塘", "county": "c0unty"}).start()
    try:
        (tmp_path / "mqtt.pass").write_text("s3cret-池塘\n", encoding="utf-8")
        _, path = gateway_config(tmp_path, {"brokers": [b.url], "username": "gw-test",
                                            "password_file": "mqtt.pass"})  # relative to the config
        with Subscriber(b, [STATUS], username="county", password="c0unty") as sub:
            async with gateway(path) as gw:
                await asyncio.to_thread(sub.wait_for, "online", online)
                assert gw.reporter.connected

        (tmp_path / "mqtt.pass").write_text("wrong\n", encoding="utf-8")
        async with gateway(path) as gw:
            await until("a few refused attempts", lambda: gw.reporter.attempts >= 3)
            assert gw.reporter.connects == 0 and not gw.reporter.connected
    finally:
        b.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


async def test_tls_with_client_certificate(tmp_path: Path, tls_files: TlsFiles):
    b = Broker(tmp_path / "broker", tls=tls_files).start()
    try:
        assert b.url.startswith("mqtts://")
        _, path = gateway_config(tmp_path, {"brokers": [b.url], "ca_file": str(tls_files.ca),
                                            "cert_file": str(tls_files.client_cert),
                                            "key_file": str(tls_files.client_key)})
        with Subscriber(b, [f"{ROOT}/#"]) as sub:
            async with gateway(path) as gw:
                await asyncio.to_thread(sub.wait_for, "online over TLS", online)
                gw.bus.publish(fault("rtu1", "tamper"))
                await asyncio.to_thread(sub.wait_for, "an event over TLS",
                                        lambda ms: events(ms, "device.fault"))

        # Without a client certificate the broker refuses the handshake: never connected.
        _, path = gateway_config(tmp_path, {"brokers": [b.url], "ca_file": str(tls_files.ca)})
        async with gateway(path) as gw:
            await until("a few refused attempts", lambda: gw.reporter.attempts >= 3)
            assert gw.reporter.connects == 0
    finally:
        b.stop()


def _signed(key: Ed25519PrivateKey, name: str, args: dict[str, Any], correlation_id: str) -> bytes:
    envelope = {"correlation_id": correlation_id, "gateway": GW, "ts": time.time(),
                "nonce": secrets.token_hex(16), "key_id": "county-1", "args": args}
    envelope["sig"] = base64.b64encode(key.sign(signed_bytes(name, envelope))).decode()
    return json.dumps(envelope).encode()


async def test_signed_rebirth_resends_retained_state(tmp_path: Path, broker: Broker):
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    _, path = gateway_config(tmp_path, {"brokers": [broker.url]},
                             county={"keys": [{"id": "county-1", "type": "ed25519", "public_key": pem}]})
    store = Store.in_state_dir(tmp_path / "state")
    with Subscriber(broker, [f"{ROOT}/#"]) as sub:
        async with gateway(path) as gw:
            gw.reporter.commands = CountyCommands(gw.cfg, store, engine=None,  # type: ignore[arg-type]
                                                  rebirth=gw.reporter.rebirth, line_check=None)
            await asyncio.to_thread(sub.wait_for, "birth", lambda ms: [m for m in ms if m.topic == BIRTH])
            sub.client.publish(f"{ROOT}/cmd/rebirth", _signed(key, "rebirth", {}, "corr-rb-1"), qos=1)
            answer = await asyncio.to_thread(sub.wait_for, "the response", lambda ms: [
                m.json() for m in ms if m.topic == f"{ROOT}/cmd/rebirth/response"])
            assert answer[0] == {"correlation_id": "corr-rb-1", "ok": True}
            def reborn(ms: list[Received]) -> bool:
                topics = [m.topic for m in ms]
                return topics.count(BIRTH) >= 2 and all(
                    topics.count(f"{ROOT}/devices/{d}/state") >= 2 for d in gw.registry.devices)

            await asyncio.to_thread(sub.wait_for, "a second birth and state set", reborn)

            # Unsigned: refused, with the request's correlation id, and nothing re-sent.
            births = len(sub.on(BIRTH))
            sub.client.publish(f"{ROOT}/cmd/rebirth", b'{"correlation_id": "corr-rb-2"}', qos=1)
            refused = await asyncio.to_thread(sub.wait_for, "the refusal", lambda ms: [
                m.json() for m in ms if m.topic == f"{ROOT}/cmd/rebirth/response"
                and m.json()["correlation_id"] == "corr-rb-2"])
            assert refused[0]["ok"] is False and refused[0]["error"] == "bad_request"
            assert len(sub.on(BIRTH)) == births
    store.close()


# -- ebc run as a subprocess against the simulator ------------------------------------------------------


class Ebc:
    """``ebc run --config FILE``; ready once the API answers."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config, self.port, self.log_path = config, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Ebc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.app.cli", "-v", "run", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"ebc run exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx2.HTTPError):
                return httpx2.get(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=2).status_code == 200
            return False

        wait_until("the daemon's API", up)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG_GUARD_S)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(HANG_GUARD_S)

    def ensure_gone(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def ebc(config: Path, port: int, log_path: Path) -> Iterator[Ebc]:
    proc = Ebc(config, port, log_path)
    try:
        yield proc.start()
    finally:
        proc.ensure_gone()


def township(tmp_path: Path, broker: Broker) -> tuple[SimConfig, Path, int]:
    port = free_port()
    sim, path = gateway_config(
        tmp_path, {"brokers": [broker.url], "health_interval_s": 2},
        api={"host": "127.0.0.1", "port": port}, audio_output={"sink": "sim_line"},
        health={"offline_after_s": 3, "line_check_interval_s": 0, "fault_recovered_hold_s": 1,
                "report_interval_s": 3600})
    return sim, path, port


def outbox_rows(state_dir: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """(seq, kind, data) of what waits in a running or killed daemon's outbox (read-only)."""
    uri = f"file:{state_dir / 'outbox.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT seq, kind, payload FROM outbox ORDER BY seq").fetchall()
    return [(seq, kind, json.loads(payload)["data"]) for seq, kind, payload in rows]


def outbox_has(state_dir: Path, kind: str, **data: Any) -> bool:
    return any(k == kind and all(d.get(f) == v for f, v in data.items())
               for _, k, d in outbox_rows(state_dir))


def same_report_each_time(messages: list[Received]) -> dict[int, dict[str, Any]]:
    """Reports by seq; a seq received twice (at least once) must be the same report both times."""
    by_seq: dict[int, dict[str, Any]] = {}
    for m in messages:
        doc = m.json() if m.topic != STATUS else {}
        if "seq" in doc:
            body = {k: v for k, v in doc.items() if k != "historical"}
            first = by_seq.setdefault(doc["seq"], doc)
            assert {k: v for k, v in first.items() if k != "historical"} == body, "a seq was reused"
    return by_seq


def device_states(messages: list[Received], device: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"{ROOT}/devices/{device}/state"]


def test_will_after_kill9_and_retained_state_for_a_late_subscriber(tmp_path: Path, broker: Broker):
    sim_cfg, config, port = township(tmp_path, broker)
    ids = [d["id"] for d in sim_cfg.data["devices"]]
    with running_simulator(sim_cfg), ebc(config, port, tmp_path / "daemon.log") as d:
        with Subscriber(broker, [f"{ROOT}/#"]) as early:
            early.wait_for("every terminal judged normal", lambda ms: all(
                any(s["state"] == 1 for s in device_states(ms, t)) for t in ["rtu1", "rtu2", "rtu3", "tcp1"]))
        with Subscriber(broker, [f"{ROOT}/#"]) as late:
            wanted = {STATUS, BIRTH, *(f"{ROOT}/devices/{i}/state" for i in ids)}
            late.wait_for("retained status, birth and states",
                          lambda ms: {m.topic for m in ms if m.retain} >= wanted)
            messages = late.snapshot()
        assert late.on(STATUS)[0].payload == b"online" and late.on(STATUS)[0].retain
        birth = late.on(BIRTH)[0].json()
        assert birth["gateway"]["id"] == GW
        assert birth["gateway"]["area_code"] == sim_cfg.data["gateway"]["area_code"]
        assert [dev["id"] for dev in birth["devices"]] == ids
        rtu1 = next(dev for dev in birth["devices"] if dev["id"] == "rtu1")
        assert rtu1 == {"id": "rtu1", "name": "测试终端 rtu1", "village": "", "area_code": "340621105200",
                        "location": {"lat": 33.9, "lon": 116.8}, "line": "rs485", "line_type": "serial",
                        "profile": "ebt-1", "kind": "terminal", "unit_id": 1, "zones": [1, 2]}
        state = device_states(messages, "rtu1")[-1]
        assert state["state"] == 1 and state["online"] is True and state["faults"] == []
        assert not [m for m in messages if m.topic == EVENTS and m.retain]  # events are never retained

        d.kill()
        def will() -> Received | None:
            got = retained(broker, STATUS)
            return got if got is not None and got.payload == b"offline" else None

        offline = wait_until("the Will as retained offline", will)
        assert offline.retain


def test_broker_outage_during_faults_and_a_broadcast_loses_nothing(tmp_path: Path, broker: Broker):
    sim_cfg, config, port = township(tmp_path, broker)
    state_dir = tmp_path / "state"
    token = make_token(config, "ci-operator", "operator")
    api = httpx2.Client(base_url=f"http://127.0.0.1:{port}/api/v1",
                        headers={"Authorization": f"Bearer {token}"}, timeout=HANG_GUARD_S)
    with running_simulator(sim_cfg) as sim, ebc(config, port, tmp_path / "daemon.log") as d, api, \
            Subscriber(broker, [f"{ROOT}/#"], client_id="county", persistent=True) as county:
        county.wait_for("every terminal normal", lambda ms: all(
            any(s["state"] == 1 for s in device_states(ms, t)) for t in ["rtu1", "rtu2", "rtu3", "tcp1"]))

        broker.stop()
        down_at = time.time()
        sim.fault("mains_failure", device="rtu1")
        r = api.post("/broadcasts", json={"class": "drill", "targets": {"all": True}, "text": "演练。"})
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        final = wait_until("the broadcast to finish", lambda: (b := api.get(f"/broadcasts/{bid}").json())[
            "state"] in ("succeeded", "failed", "cancelled") and b)
        sim.fault("offline", device="tcp1")
        wait_until("the faults in the outbox", lambda: outbox_has(state_dir, "device.fault", device="rtu1")
                   and outbox_has(state_dir, "device.state", device="tcp1", online=False))
        sim.fault("mains_failure", device="rtu1", clear=True)
        wait_until("the recovery in the outbox",
                   lambda: outbox_has(state_dir, "device.recovered", device="rtu1"))
        backlog = [seq for seq, _, _ in outbox_rows(state_dir)]
        up_at = time.time()
        broker.start()

        county.wait_for("the whole backlog", lambda ms: set(backlog) <= set(seqs(ms)))
        wait_until("an empty outbox", lambda: not outbox_rows(state_dir))
        sim.fault("tamper", device="rtu2")  # a fault after the outage is live again
        county.wait_for("the live tamper fault", lambda ms: [
            e for e in events(ms, "device.fault") if e["data"]["device"] == "rtu2"])
        assert d.terminate() == 0
        county.wait_for("offline on a graceful stop",
                        lambda ms: ms[-1].topic == STATUS and ms[-1].payload == b"offline")
        messages = county.snapshot()

    by_seq = same_report_each_time(messages)
    assert all(by_seq[s]["historical"] for s in backlog)
    order = first_arrivals(messages)
    assert order == sorted(order), "replayed out of order"
    assert set(range(order[0], order[-1] + 1)) <= set(order), "a seq is missing"
    during = [e for e in events(messages) if down_at <= e["ts"] <= up_at]
    assert during and all(e["historical"] for e in during)
    kinds = {(e["kind"], e["data"].get("device")) for e in during}
    assert ("device.fault", "rtu1") in kinds and ("device.recovered", "rtu1") in kinds
    assert any(e["kind"] == "device.state" and e["data"]["device"] == "tcp1" and e["data"]["online"] is False
               for e in during)
    fault = next(e["data"] for e in during if e["kind"] == "device.fault" and e["data"]["device"] == "rtu1")
    assert fault["fault"] in ("mains_lost", "on_battery") and fault["reason"] and fault["reason_zh"]
    progress = [m.json() for m in messages if m.topic == f"{ROOT}/broadcasts/{bid}"]
    assert {p["data"]["device"] for p in progress if p["kind"] == "broadcast.outcome"} == {
        "rtu1", "rtu2", "rtu3", "tcp1", "fm1"}
    states = [p["data"]["name"] for p in progress if p["kind"] == "broadcast.state"]
    assert states[-1] == final["state"] and "playing" in states
    compact = [e["data"]["name"] for e in events(messages, "broadcast.state") if e["data"]["id"] == bid]
    assert compact == states
    live = next(e for e in events(messages, "device.fault") if e["data"]["device"] == "rtu2")
    assert live["historical"] is False
    health = [m.json() for m in messages if m.topic == f"{ROOT}/health"]
    assert health and {"uptime_s", "outbox", "mqtt"} <= health[-1]["data"].keys()
    assert device_states(messages, "rtu1")[-1]["state"] in (1, 4)  # recovered, retained after the outage


def test_kill9_with_reports_in_the_outbox_then_restart_loses_nothing(tmp_path: Path, broker: Broker):
    sim_cfg, config, port = township(tmp_path, broker)
    state_dir = tmp_path / "state"
    with running_simulator(sim_cfg) as sim, \
            Subscriber(broker, [f"{ROOT}/#"], client_id="county", persistent=True) as county:
        with ebc(config, port, tmp_path / "daemon1.log") as d:
            county.wait_for("online", online)
            broker.stop()
            sim.fault("amp_fault", device="rtu3")
            wait_until("the fault in the outbox",
                       lambda: outbox_has(state_dir, "device.fault", device="rtu3"))
            d.kill()
        stranded = outbox_rows(state_dir)
        assert any(kind == "device.fault" for _, kind, _ in stranded)
        broker.start()
        with ebc(config, port, tmp_path / "daemon2.log"):
            county.wait_for("everything stranded by the kill", lambda ms: {s for s, _, _ in stranded} <= set(
                seqs(ms)))
            wait_until("an empty outbox", lambda: not outbox_rows(state_dir))
        sim.fault("amp_fault", device="rtu3", clear=True)
    messages = county.snapshot()
    by_seq = same_report_each_time(messages)  # the restarted daemon never reused a seq
    assert all(by_seq[s]["historical"] for s, _, _ in stranded)
    fault = next(by_seq[s] for s, kind, _ in stranded if kind == "device.fault")
    assert fault["data"]["device"] == "rtu3" and fault["data"]["fault"] == "amp_fault"
    order = first_arrivals(messages)
    assert order == sorted(order) and set(range(order[0], order[-1] + 1)) <= set(order)
