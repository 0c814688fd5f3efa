"""The virtual gateway fleet (simulator/fleet.py) against a real Mosquitto, read as the county would.

Waits are hang guards only (tests/mqttkit.py), never timing claims.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqttkit import Broker, Received, Subscriber

from simulator.fleet import Fleet, FleetError, main, signed_bytes

PREFIX = "ebc"
STATE_KEYS = ["id", "name", "village", "area_code", "line", "kind", "online", "last_seen", "failure",
              "values", "state", "state_name", "faults", "location", "zones", "ts"]
DEVICE_KEYS = ["id", "name", "village", "area_code", "location", "line", "line_type", "profile", "kind",
               "unit_id", "zones"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker per test: retained messages of one test must not leak into the next."""
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def fleet(broker: Broker) -> Iterator[Fleet]:
    f = Fleet("127.0.0.1", broker.port, gateways=5, terminals=20, prefix=PREFIX, county_area="340621", seed=7,
              fault_rate_per_hour=0.0, health_interval_s=1.0, keepalive_s=2, broadcast_s=0.3,
              broadcast_start_s=0.1, recovered_hold_s=0.5)
    yield f
    f.stop()


def docs(messages: list[Received], topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == topic]


def test_retained_picture_has_the_documented_shapes(broker: Broker, fleet: Fleet):
    topics = [f"{PREFIX}/+/status", f"{PREFIX}/+/birth", f"{PREFIX}/+/devices/+/state"]
    with Subscriber(broker, topics) as live:
        fleet.start()
        live.wait_for("every state", lambda ms: sum("/devices/" in m.topic for m in ms) >= 100)
    with Subscriber(broker, topics) as sub:  # subscribed afterwards: all of it retained
        sub.wait_for("every retained state", lambda ms: sum("/devices/" in m.topic for m in ms) >= 100)
        messages = sub.snapshot()
    assert sorted(fleet.gateways) == [f"gw-340621{c}" for c in ("100", "101", "102", "103", "104")]
    for gw in fleet.gateways:
        root = f"{PREFIX}/{gw}"
        assert [(m.text, m.retain) for m in messages if m.topic == f"{root}/status"] == [("online", True)]
        (birth,) = docs(messages, f"{root}/birth")
        assert list(birth) == ["gateway", "version", "started_at", "ts", "topics", "devices"]
        assert list(birth["gateway"]) == ["id", "name", "area_code", "location"]
        assert birth["gateway"]["id"] == gw and birth["gateway"]["area_code"] == gw[3:] + "000"
        assert birth["topics"] == {"root": root}
        assert len(birth["devices"]) == 20
        for dev in birth["devices"]:
            assert list(dev) == DEVICE_KEYS
            assert dev["area_code"].startswith(gw[3:]) and len(dev["area_code"]) == 12
            assert dev["profile"] == "ebt-1" and dev["kind"] == "terminal"
            assert 33.5 < dev["location"]["lat"] < 34.3 and 116.3 < dev["location"]["lon"] < 117.2
        states = [m for m in messages if m.topic.startswith(f"{root}/devices/")]
        assert len(states) == 20 and all(m.retain for m in states)
        for m in states:
            state = m.json()
            assert list(state) == STATE_KEYS
            assert m.topic == f"{root}/devices/{state['id']}/state"
            assert (state["state"], state["state_name"], state["online"]) == (1, "normal", True)
            assert state["faults"] == []
            assert state["values"]["mains_ok"] is True and "line_impedance_1" in state["values"]


def test_events_health_and_an_injected_fault(broker: Broker, fleet: Fleet):
    with Subscriber(broker, [f"{PREFIX}/#"]) as sub:
        fleet.start()
        gw = next(iter(fleet.gateways))
        root = f"{PREFIX}/{gw}"
        sub.wait_for("health from every gateway",
                     lambda ms: len({m.topic for m in ms if m.topic.endswith("/health")}) == 5)
        assert fleet.inject_fault(gw, "t03", "mains_lost") is True
        assert fleet.terminal_state(gw, "t03") == 3
        sub.wait_for("the retained fault state",
                     lambda ms: any(m.topic == f"{root}/devices/t03/state" and m.json()["state"] == 3
                                    for m in ms))
        assert fleet.recover(gw, "t03") == 1
        sub.wait_for("device.state back to normal after the hold",
                     lambda ms: any(d["kind"] == "device.state" and d["data"]["id"] == "t03"
                                    and d["data"]["state"] == 1
                                    for d in docs(ms, f"{root}/events")))
        sub.wait_for("the retained state back to normal",
                     lambda ms: [m.json()["state"] for m in ms
                                 if m.topic == f"{root}/devices/t03/state"][-1] == 1)
        messages = sub.snapshot()

    events = docs(messages, f"{root}/events")
    kinds = [(e["kind"], e["data"].get("state")) for e in events if e["data"].get("device") == "t03"]
    assert kinds == [("device.fault", None), ("device.state", 3), ("device.recovered", None),
                     ("device.state", 4), ("device.state", 1)]
    fault = next(e for e in events if e["kind"] == "device.fault")
    assert list(fault) == ["seq", "historical", "kind", "ts", "data"]
    assert fault["historical"] is False
    assert list(fault["data"]) == ["device", "kind", "name", "village", "fault", "zone", "reason",
                                   "reason_zh", "values", "since"]
    assert fault["data"]["reason"].startswith("mains power lost, on battery")
    state = next(e["data"] for e in events if e["kind"] == "device.state")
    assert list(state) == [*STATE_KEYS[:-1], "device", "state_name_zh", "broadcasting", "previous_state",
                           "previous_online"]
    assert (state["state"], state["state_name_zh"], state["previous_state"]) == (3, "故障", 1)
    assert [f["fault"] for f in state["faults"]] == ["mains_lost"]
    assert state["values"]["mains_ok"] is False
    recovered = next(e["data"] for e in events if e["kind"] == "device.recovered")
    assert recovered["reason"].startswith("recovered: mains power lost") and "duration_s" in recovered
    retained = [m.json() for m in messages if m.topic == f"{root}/devices/t03/state"]
    assert retained[-1]["state"] == 1 and retained[-1]["values"]["mains_ok"] is True

    health = docs(messages, f"{root}/health")
    assert health and health[0]["kind"] == "gateway.health"
    data = health[0]["data"]
    assert data["gateway"] == gw and data["devices"]["total"] == 20
    assert list(data["outbox"]) == ["depth", "health_depth", "dropped_health", "dropped_events", "overflows"]
    assert data["mqtt"]["connects"] == 1

    for name in fleet.gateways:  # one seq per gateway across events, broadcasts and health: increasing
        r = f"{PREFIX}/{name}/"
        seqs = [m.json()["seq"] for m in messages if m.topic.startswith(r) and
                (m.topic.endswith(("/events", "/health")) or "/broadcasts/" in m.topic)]
        assert seqs and seqs == sorted(set(seqs))
        assert seqs[0] > 1_600_000_000_000  # starts at the Unix time in ms


def test_kill_makes_the_broker_publish_the_will(broker: Broker, fleet: Fleet):
    fleet.start()
    assert fleet.wait_connected(timeout=60)
    gw = list(fleet.gateways)[1]
    with Subscriber(broker, [f"{PREFIX}/{gw}/status"]) as sub:
        sub.wait_for("online", lambda ms: [m.text for m in ms] == ["online"])
        fleet.kill(gw)
        sub.wait_for("the Will", lambda ms: [m.text for m in ms] == ["online", "offline"])
        fleet.restart(gw)
        sub.wait_for("online again", lambda ms: [m.text for m in ms] == ["online", "offline", "online"])


def _command(gw: str, name: str, args: dict[str, Any], correlation_id: str) -> bytes:
    env = {"correlation_id": correlation_id, "gateway": gw, "ts": int(time.time()),
           "nonce": secrets.token_hex(16), "key_id": "county-test", "args": args, "sig": "AA=="}
    return json.dumps(env, ensure_ascii=False).encode("utf-8")


def test_broadcast_command_gets_a_response_and_reports(broker: Broker, fleet: Fleet):
    fleet.start()
    assert fleet.wait_connected(timeout=60)
    gw = list(fleet.gateways)[2]
    root = f"{PREFIX}/{gw}"
    fleet.inject_fault(gw, "t01", "offline")
    fleet.inject_fault(gw, "t02", "amp_fault")
    with Subscriber(broker, [f"{root}/cmd/+/response", f"{root}/broadcasts/+"]) as sub:
        args = {"class": "drill", "targets": {"area_codes": [gw[3:] + "000"]}, "text": "演练",
                "title": "演练"}
        sub.client.publish(f"{root}/cmd/broadcast", _command(gw, "broadcast", args, "c-1"), qos=1)
        sub.client.publish(f"{root}/cmd/broadcast", _command("gw-999", "broadcast", args, "c-2"), qos=1)
        sub.client.publish(f"{root}/cmd/broadcast", b'{"correlation_id":"c-3","gateway":1}', qos=1)
        responses = sub.wait_for("three responses",
                                 lambda ms: len(got := docs(ms, f"{root}/cmd/broadcast/response")) == 3
                                 and got)
        by_id = {r["correlation_id"]: r for r in responses}
        assert by_id["c-1"]["ok"] is True and list(by_id["c-1"]) == ["correlation_id", "ok", "broadcast_id"]
        assert by_id["c-2"]["error"] == "wrong_gateway"
        assert by_id["c-3"]["error"] == "bad_request" and by_id["c-3"]["ok"] is False
        bid = by_id["c-1"]["broadcast_id"]
        topic = f"{root}/broadcasts/{bid}"
        sub.wait_for("the final state", lambda ms: any(d["data"].get("state") == 3 for d in docs(ms, topic)))
        reports = docs(sub.snapshot(), topic)
    states = [(r["data"]["name"], r["data"].get("coverage", "-")) for r in reports
              if r["kind"] == "broadcast.state"]
    assert states == [("waiting", "-"), ("playing", None), ("succeeded", 0.9)]
    outcomes = {r["data"]["device"]: r["data"]["outcome"] for r in reports
                if r["kind"] == "broadcast.outcome"}
    assert len(outcomes) == 20
    assert (outcomes["t01"], outcomes["t02"], outcomes["t03"]) == ("unreachable", "failed", "succeeded")
    outcome = next(r["data"] for r in reports if r["kind"] == "broadcast.outcome")
    assert list(outcome) == ["id", "device", "outcome", "reason", "joined_late", "missed_s", "audible_s",
                             "joined_at_s"]


def test_cancel_and_signed_commands(broker: Broker):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    fleet = Fleet("127.0.0.1", broker.port, gateways=1, terminals=4, prefix=PREFIX, seed=3,
                  county_keys={"county-1": pem}, broadcast_s=30.0, broadcast_start_s=0.1)
    try:
        fleet.start()
        assert fleet.wait_connected(timeout=60)
        (gw,) = fleet.gateways
        root = f"{PREFIX}/{gw}"

        def signed(name: str, args: dict[str, Any], key_id: str = "county-1", cid: str | None = None
                   ) -> bytes:
            env: dict[str, Any] = {"correlation_id": cid or str(uuid.uuid4()), "gateway": gw,
                                   "ts": int(time.time()),
                                   "nonce": secrets.token_hex(16), "key_id": key_id, "args": args}
            env["sig"] = base64.b64encode(key.sign(signed_bytes(name, env))).decode()
            return json.dumps(env).encode()

        with Subscriber(broker, [f"{root}/cmd/+/response", f"{root}/broadcasts/+"]) as sub:
            def ask(name: str, payload: bytes) -> dict[str, Any]:
                cid = json.loads(payload)["correlation_id"]
                sub.client.publish(f"{root}/cmd/{name}", payload, qos=1)
                return sub.wait_for(f"{name} response", lambda ms: next(
                    (d for d in docs(ms, f"{root}/cmd/{name}/response") if d["correlation_id"] == cid), None))

            drill = {"class": "drill", "targets": {"all": True}, "text": "测试"}
            started = ask("broadcast", signed("broadcast", drill, cid="bc-1"))
            assert started["ok"] is True
            bid = started["broadcast_id"]
            # a retry (same correlation id, fresh nonce) is answered, not played again; other args: conflict
            sub.client.publish(f"{root}/cmd/broadcast", signed("broadcast", drill, cid="bc-1"), qos=1)
            sub.client.publish(f"{root}/cmd/broadcast", signed("broadcast", {**drill, "text": "别的"},
                                                                cid="bc-1"), qos=1)
            retry, conflict = sub.wait_for("the two answers", lambda ms: (
                len(got := docs(ms, f"{root}/cmd/broadcast/response")) == 3 and got[1:]))
            assert retry == {**started, "duplicate": True}
            assert conflict["error"] == "conflict" and conflict["correlation_id"] == "bc-1"
            sub.wait_for("playing", lambda ms: any(d["data"].get("name") == "playing"
                                                   for d in docs(ms, f"{root}/broadcasts/{bid}")))
            cancelled = ask("cancel", signed("cancel", {"broadcast_id": bid}))
            assert (cancelled["ok"], cancelled["state"]) == (True, "cancelled")
            assert ask("cancel", signed("cancel", {"broadcast_id": bid}))["error"] == "not_cancellable"
            assert ask("cancel", signed("cancel", {"broadcast_id": "nope"}))["error"] == "not_found"
            rebirth = ask("rebirth", signed("rebirth", {}))
            assert list(rebirth) == ["correlation_id", "ok"] and rebirth["ok"] is True
            assert ask("rebirth", signed("rebirth", {}, "county-x"))["error"] == "unknown_key"
            forged = json.loads(signed("rebirth", {}))
            forged["args"] = {"x": 1}
            assert ask("rebirth", json.dumps(forged).encode())["error"] == "bad_signature"
            as_other = signed("cancel", {"broadcast_id": bid})
            assert ask("rebirth", as_other)["error"] == "bad_signature"  # signed for another command name
            checked = ask("line_check", signed("line_check", {"devices": None}))
            assert checked["ok"] is True and set(checked["results"]) == {"t01", "t02", "t03", "t04"}
            assert ask("alert", signed("alert", {"cap": "<alert/>"}))["error"] == "unavailable"
            reports = docs(sub.snapshot(), f"{root}/broadcasts/{bid}")
        assert [r["data"]["name"] for r in reports if r["kind"] == "broadcast.state"] == [
            "waiting", "playing", "cancelled"]
    finally:
        fleet.stop()


def test_two_hundred_gateways_connect_and_publish_their_birth(broker: Broker):
    fleet = Fleet("127.0.0.1", broker.port, gateways=200, terminals=20, prefix="big", seed=11,
                  health_interval_s=60.0, connect_rate=0)
    try:
        with Subscriber(broker, ["big/+/birth"]) as sub:
            fleet.start()
            births = sub.wait_for("200 births", lambda ms: len({m.topic for m in ms}) == 200 and ms)
        assert len({b.json()["gateway"]["area_code"] for b in births}) == 200
        assert fleet.wait_connected(timeout=60)
        stats = fleet.publish_stats()
        assert stats["birth"] == 200 and stats["state"] == 4000 and stats["connected"] == 200
    finally:
        fleet.stop()


def test_bad_parameters_are_named(broker: Broker):
    with pytest.raises(FleetError, match="gateways"):
        Fleet("127.0.0.1", broker.port, gateways=1001)
    with pytest.raises(FleetError, match="county_area"):
        Fleet("127.0.0.1", broker.port, county_area="34")
    with pytest.raises(FleetError, match="fault_rate_per_hour"):
        Fleet("127.0.0.1", broker.port, fault_rate_per_hour=float("nan"))
    with pytest.raises(FleetError, match="first"):
        Fleet("127.0.0.1", broker.port, gateways=10, first=995)
    # two processes' shares of one county: the same townships as one fleet, none twice
    halves = [set(Fleet("127.0.0.1", broker.port, gateways=5, first=f).gateways) for f in (0, 5)]
    assert not halves[0] & halves[1]
    assert halves[0] | halves[1] == set(Fleet("127.0.0.1", broker.port, gateways=10).gateways)
    fleet = Fleet("127.0.0.1", broker.port, gateways=1)
    with pytest.raises(FleetError, match="device"):
        fleet.inject_fault("gw-340621100", "t99")
    with pytest.raises(FleetError, match="gateway"):
        fleet.kill("gw-1")


def test_cli_runs_with_random_faults(broker: Broker, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    with Subscriber(broker, ["cli/+/events"]) as sub:
        assert main(["--broker", broker.url, "--gateways", "3", "--terminals", "5", "--prefix", "cli",
                     "--seed", "5", "--fault-rate", "3600", "--duration", "2", "--stats-every", "0.5"]) == 0
        sub.wait_for("random faults", lambda ms: any(m.json()["kind"] == "device.fault" for m in ms))
    out = capsys.readouterr().out
    assert "connected=3/3" in out and "random_faults=" in out
    assert main(["--broker", "http://x"]) == 2
