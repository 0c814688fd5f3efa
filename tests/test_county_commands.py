"""County commands (county/commands.py): signing checked with the gateway's own verifier, the tracker,
the fan-out of one county-wide broadcast and its report — and end to end against real ``ebc run``
gateways on the simulator behind a real Mosquitto.

The unit tests verify every signature with ``controller.uplink.signing`` (``load_public_key`` on the
text the county tells an engineer to paste into a gateway's config), never with the county code.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from countykit import COUNTY_CODE, PREFIX, TOWNS, keygen_text, township
from cryptography.hazmat.primitives import serialization
from mqttkit import HANG_GUARD_S, Broker
from paho.mqtt.enums import CallbackAPIVersion
from simkit import Daemon, SimProcess, wait_until

from controller.uplink.signing import load_public_key, signed_bytes
from county.commands import (
    BroadcastRequestError,
    CommandTracker,
    CountyBroadcast,
    CountySigner,
    SigningKeyError,
    keygen,
)

RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
ENVELOPE_FIELDS = {"correlation_id", "gateway", "ts", "nonce", "key_id", "args", "sig"}
ARGS = {"class": "emergency", "severity": 2, "title": "暴雨橙色预警", "text": "请村民注意防范。",
        "targets": {"area_codes": ["340621105000"]}, "repeat": 2}


@pytest.fixture(scope="module", params=["ed25519", "sm2"])
def signer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CountySigner:
    path = tmp_path_factory.mktemp("keys") / f"county-{request.param}.key"
    keygen(request.param, path)
    return CountySigner(request.param, f"county-{request.param}", path.read_text())


def verifies(key_type: str, public_text: str, command: str, envelope: dict[str, Any]) -> bool:
    """The gateway's check: its key loader on the pasted text, its verifier over its signed bytes."""
    key = load_public_key(key_type, public_text)  # type: ignore[arg-type]
    return key.verify(base64.b64decode(envelope["sig"], validate=True), signed_bytes(command, envelope))


# -- signing -----------------------------------------------------------------------------------------


def test_envelopes_verify_with_the_gateway_verifier(signer: CountySigner):
    before = time.time()
    env = signer.envelope("broadcast", "gw-340621105", ARGS)
    assert set(env) == ENVELOPE_FIELDS
    assert env["gateway"] == "gw-340621105" and env["key_id"] == signer.key_id and env["args"] == ARGS
    assert isinstance(env["ts"], int) and before - 1 <= env["ts"] <= time.time()
    assert re.fullmatch(r"[!-~]{16,64}", env["nonce"])  # printable ASCII, no spaces
    assert re.fullmatch(r"[0-9a-f]{32}", env["correlation_id"])
    assert verifies(signer.key_type, signer.public_key_text, "broadcast", env)
    # what the gateway parses off the wire is what was signed
    wire = json.loads(json.dumps(env, ensure_ascii=False))
    assert verifies(signer.key_type, signer.public_key_text, "broadcast", wire)
    # bound to the command name and every field
    assert not verifies(signer.key_type, signer.public_key_text, "cancel", env)
    assert not verifies(signer.key_type, signer.public_key_text, "broadcast", {**env, "gateway": "gw-other"})
    assert not verifies(signer.key_type, signer.public_key_text, "broadcast",
                        {**env, "args": {**ARGS, "text": "假警报"}})
    again = signer.envelope("broadcast", "gw-340621105", ARGS)
    assert again["nonce"] != env["nonce"] and again["correlation_id"] != env["correlation_id"]


def test_ed25519_key_forms_and_the_rfc8032_key():
    seed = bytes.fromhex(RFC8032_SEED)
    forms = [RFC8032_SEED, base64.b64encode(seed).decode()]
    signers = [CountySigner("ed25519", "k", text) for text in forms]
    # PKCS#8, as `openssl genpkey -algorithm ed25519` writes it
    pem_text = signers[0]._ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()
    signers.append(CountySigner("ed25519", "k", pem_text))
    assert {s.public_key_text for s in signers} == {signers[0].public_key_text}
    assert signers[0].public_key_text.startswith("-----BEGIN PUBLIC KEY-----")
    raw = load_public_key("ed25519", RFC8032_PUBLIC)
    env = signers[2].envelope("rebirth", "gw-1", {})
    assert raw.verify(base64.b64decode(env["sig"]), signed_bytes("rebirth", env))


def test_sm2_public_key_is_the_point_the_gateway_loads(tmp_path: Path):
    public = keygen("sm2", tmp_path / "sm2.key")
    assert re.fullmatch(r"[0-9a-f]{128}", public)
    assert load_public_key("sm2", public).type == "sm2"
    assert load_public_key("sm2", "04" + public).type == "sm2"


@pytest.mark.parametrize(("key_type", "text", "error"), [
    ("ed25519", "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n"
                "-----END PUBLIC KEY-----", "this is a public key"),
    ("ed25519", "abcd", "an Ed25519 private key is PEM"),
    ("sm2", "xyz", "64 hex digits"),
    ("sm2", "0" * 64, "out of range"),
    ("sm2", "f" * 64, "out of range"),
    ("rsa", "00", "not a key type"),
])
def test_bad_private_keys_say_what_is_wrong(key_type: str, text: str, error: str):
    with pytest.raises(SigningKeyError, match=error):
        CountySigner(key_type, "k", text)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", ["ed25519", "sm2"])
def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path, key_type: str):
    path = tmp_path / "county.key"
    old_umask = os.umask(0)  # even a careless umask gives an owner-only file
    try:
        public = keygen(key_type, path)  # type: ignore[arg-type]
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert CountySigner(key_type, "k", content).public_key_text == public  # type: ignore[arg-type]
    with pytest.raises(FileExistsError, match="never overwritten"):
        keygen(key_type, path)  # type: ignore[arg-type]
    assert path.read_text() == content


# -- the tracker -------------------------------------------------------------------------------------


class Wire:
    """The publish callable, recording what would go on the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, json.loads(payload)))

    def to(self, gateway: str) -> list[dict[str, Any]]:
        return [env for topic, env in self.sent if topic == f"ebc/{gateway}/cmd/broadcast"]


def answer(correlation_id: str, ok: bool = True, **fields: Any) -> bytes:
    return json.dumps({"correlation_id": correlation_id, "ok": ok, **fields}).encode()


async def test_tracker_matches_answers_by_correlation_id(signer: CountySigner):
    wire = Wire()
    tracker = CommandTracker(wire, prefix="ebc")
    env = signer.envelope("line_check", "gw-a", {"devices": None})
    cid = tracker.send("gw-a", "line_check", env)
    assert cid == env["correlation_id"] and wire.sent == [("ebc/gw-a/cmd/line_check", env)]
    assert tracker.result(cid) is None
    assert tracker.on_response("gw-b", "line_check", answer(cid)) is None  # another gateway's answer
    assert tracker.on_response("gw-a", "rebirth", answer(cid)) is None     # another command's
    assert tracker.on_response("gw-a", "line_check", b"not json") is None
    assert await tracker.wait(cid, 0.05) is None  # no answer yet: times out, None

    # an answer from paho's thread wakes the waiter on the loop
    threading.Timer(0.05, tracker.on_response, ("gw-a", "line_check", answer(cid, results={}))).start()
    got = await tracker.wait(cid, 60)
    assert got == {"correlation_id": cid, "ok": True, "results": {}}
    assert await tracker.wait(cid, 0) == got and tracker.result(cid) == got
    assert await tracker.wait("unknown", 0.01) is None
    with pytest.raises(ValueError, match="gateway"):
        tracker.send("gw-b", "line_check", env)  # signed for gw-a: the gateway would refuse it

    # QoS 1 twice: "replayed" first (reordered), then ok — the ok counts; ok then replayed — still ok
    env2 = signer.envelope("rebirth", "gw-a", {})
    cid2 = tracker.send("gw-a", "rebirth", env2)
    tracker.on_response("gw-a", "rebirth", answer(cid2, False, error="replayed", message="m"))
    tracker.on_response("gw-a", "rebirth", answer(cid2))
    tracker.on_response("gw-a", "rebirth", answer(cid2, False, error="replayed", message="m"))
    assert tracker.result(cid2) == {"correlation_id": cid2, "ok": True}


# -- one county-wide broadcast: fan-out and report ------------------------------------------------------


def term(dev_id: str, code: str, kind: str = "terminal") -> dict[str, Any]:
    return {"id": dev_id, "area_code": code, "kind": kind}


INVENTORY = {
    "gw-105": [term("t1", "340621105201"), term("t2", "340621105201"), term("t3", "340621105202"),
               term("fm1", "340621105201", "fm_transmitter")],
    "gw-106": ["340621106201", "340621106202"],            # area codes only, as the brief allows
    "gw-107": [term("t1", "340621107201")],
}
REQUEST = {"text": "濉溪县气象台发布暴雨橙色预警。", "class": "emergency", "severity": 2,
           "title": "暴雨橙色预警", "repeat": 1, "tone": "siren"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def county_broadcast(request: dict[str, Any], online: set[str] | None = None, clock: Clock | None = None,
                     signer: CountySigner | None = None) -> tuple[CountyBroadcast, Wire, set[str]]:
    wire = Wire()
    up = set(INVENTORY) if online is None else online
    bc = CountyBroadcast({**REQUEST, **request}, signer=signer or ED, tracker=CommandTracker(wire),
                         inventory=INVENTORY, is_online=lambda gw: gw in up, clock=clock or Clock())
    return bc, wire, up


ED = CountySigner("ed25519", "county-ed", RFC8032_SEED)


def report(seq: int, kind: str, **data: Any) -> bytes:
    return json.dumps({"seq": seq, "historical": False, "kind": kind, "ts": 1.0, "data": data}).encode()


def test_fan_out_by_gateway_and_area_code():
    bc, _, _ = county_broadcast({"targets": ["340621105201", "gw-106"]})
    assert bc.gateways == ["gw-105", "gw-106"]
    a = bc.args_for("gw-105")
    assert a == {"class": "emergency", "text": REQUEST["text"], "severity": 2, "title": "暴雨橙色预警",
                 "tone": "siren", "repeat": 1, "targets": {"area_codes": ["340621105201"]}}
    assert bc.args_for("gw-106")["targets"] == {"all": True}
    terminals = {r["gateway"]: r["terminals"]["targeted"] for r in bc.report()["gateways"]}
    assert terminals == {"gw-105": 2, "gw-106": 2}  # one village: its 2 terminals, not the FM transmitter

    county, _, _ = county_broadcast({"targets": ["340621000000"], "expires_at": "2030-01-01T08:00:00+08:00"})
    assert county.gateways == ["gw-105", "gw-106", "gw-107"]
    assert county.args_for("gw-107")["targets"] == {"area_codes": ["340621000000"]}
    assert county.args_for("gw-107")["expires_at"] == "2030-01-01T08:00:00+08:00"
    assert {r["gateway"]: r["terminals"]["targeted"] for r in county.report()["gateways"]} == {
        "gw-105": 4, "gw-106": 2, "gw-107": 1}  # the whole township: its FM transmitter too


@pytest.mark.parametrize(("request_", "field"), [
    ({"targets": ["340621105201", "gw-typo"]}, "targets.1"),
    ({"targets": ["340622000000"]}, "targets.0"),     # a neighbouring county: nobody here
    ({"targets": []}, "targets"),
    ({"targets": ["gw-106"], "severity": None}, "severity"),
    ({"targets": ["gw-106"], "class": "drill"}, "severity"),
    ({"targets": ["gw-106"], "repeat": 1.5}, "repeat"),
    ({"targets": ["gw-106"], "text": " "}, "text"),
    ({"targets": ["gw-106"], "expires_at": "2030-01-01T08:00:00"}, "expires_at"),
    ({"targets": ["gw-106"], "colour": "red"}, "colour"),
])
def test_bad_requests_name_the_field(request_: dict[str, Any], field: str):
    with pytest.raises(BroadcastRequestError) as caught:
        county_broadcast(request_)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")


def test_report_arithmetic_counts_only_successes_as_covered():
    bc, wire, _ = county_broadcast({"targets": ["340621000000"]})
    bc.start()
    cids = {gw: wire.to(gw)[0]["correlation_id"] for gw in bc.gateways}
    assert bc.report()["state"] == "in_progress"
    assert {r["state"] for r in bc.report()["gateways"]} == {"sent"}

    # gw-105: its report overtakes the answer (two paths); a success revised, a partial, an unreachable
    playing = report(10, "broadcast.state", state=2, name="playing")
    assert not bc.on_broadcast_report("gw-105", "b105", playing)
    assert bc.on_response("gw-105", answer(cids["gw-105"], broadcast_id="b105"))
    assert bc.report()["gateways"][0]["state"] == "playing"
    for seq, dev, outcome in [(11, "t1", "succeeded"), (12, "t2", "partial"), (13, "t3", "unreachable"),
                              (14, "fm1", "succeeded"), (15, "t1", "succeeded")]:
        outcome_report = report(seq, "broadcast.outcome", id="b105", device=dev, outcome=outcome, reason="")
        assert bc.on_broadcast_report("gw-105", "b105", outcome_report)
    bc.on_broadcast_report("gw-105", "b105", report(16, "broadcast.state", state=3, name="succeeded",
                                                    reason="2/4", coverage=0.5))
    bc.on_broadcast_report("gw-105", "b105", playing)  # a replay of an older state changes nothing
    assert not bc.on_broadcast_report("gw-105", "other", report(17, "broadcast.state", state=2))
    # gw-106: one failed of two; gw-107: refused
    bc.on_response("gw-106", answer(cids["gw-106"], broadcast_id="b106"))
    bc.on_broadcast_report("gw-106", "b106", report(5, "broadcast.outcome", device="a", outcome="succeeded"))
    bc.on_broadcast_report("gw-106", "b106", report(6, "broadcast.outcome", device="b", outcome="failed"))
    bc.on_broadcast_report("gw-106", "b106", report(7, "broadcast.state", state=4, name="failed"))
    bc.on_response("gw-107", answer(cids["gw-107"], False, error="bad_signature", message="does not verify"))

    doc = bc.report()
    json.dumps(doc)  # JSON-ready
    rows = {r["gateway"]: r for r in doc["gateways"]}
    assert rows["gw-105"]["terminals"] == {"targeted": 4, "succeeded": 2, "partial": 1, "failed": 0,
                                           "unreachable": 1, "pending": 0, "not_played": 0}
    assert rows["gw-105"]["state"] == "succeeded" and rows["gw-105"]["gateway_coverage"] == 0.5
    assert rows["gw-105"]["coverage"] == 0.5 and rows["gw-105"]["broadcast_id"] == "b105"
    assert rows["gw-106"]["terminals"] == {"targeted": 2, "succeeded": 1, "partial": 0, "failed": 1,
                                           "unreachable": 0, "pending": 0, "not_played": 0}
    assert rows["gw-107"]["state"] == "refused"
    assert rows["gw-107"]["command"]["refusal"] == {"error": "bad_signature", "message": "does not verify"}
    # refused: meant to be reached, and nothing will play there (not pending: the report is done)
    assert rows["gw-107"]["terminals"] == {"targeted": 1, "succeeded": 0, "partial": 0, "failed": 0,
                                           "unreachable": 0, "pending": 0, "not_played": 1}
    assert doc["terminals"] == {"targeted": 7, "succeeded": 3, "partial": 1, "failed": 1, "unreachable": 1,
                                "pending": 0, "not_played": 1}
    assert doc["coverage"] == 3 / 7
    assert doc["state"] == "done" and doc["by_state"] == {"failed": 1, "refused": 1, "succeeded": 1}


def test_offline_gateway_waits_then_gets_it_when_back_online():
    clock = Clock()
    bc, wire, online = county_broadcast({"targets": ["340621000000"]}, online={"gw-105", "gw-106"},
                                        clock=clock)
    bc.start()
    assert wire.to("gw-107") == []
    row = {r["gateway"]: r for r in bc.report()["gateways"]}["gw-107"]
    assert row["state"] == "offline" and row["online"] is False and row["command"]["attempts"] == 0
    clock.now += 600
    bc.tick()
    assert wire.to("gw-107") == []  # still offline: nothing sent
    online.add("gw-107")
    bc.on_gateway_online("gw-107")
    [env] = wire.to("gw-107")
    assert verifies("ed25519", ED.public_key_text, "broadcast", env) and env["gateway"] == "gw-107"
    assert {r["gateway"]: r for r in bc.report()["gateways"]}["gw-107"]["state"] == "sent"
    bc.on_gateway_online("gw-107")  # a second "online" (rebirth) while the command is in flight
    assert len(wire.to("gw-107")) == 1

    # the gateway went away before answering, came back starting up ("unavailable"), then took it
    bc.on_gateway_offline("gw-107")
    bc.on_gateway_online("gw-107")
    second = wire.to("gw-107")[1]
    assert second["nonce"] != env["nonce"]
    bc.on_response("gw-107", answer(second["correlation_id"], False, error="unavailable", message="starting"))
    assert {r["gateway"]: r for r in bc.report()["gateways"]}["gw-107"]["state"] == "retrying"
    bc.tick()
    assert len(wire.to("gw-107")) == 2  # not before retry_after_s
    clock.now += 2
    bc.tick()
    third = wire.to("gw-107")[2]
    bc.on_response("gw-107", answer(third["correlation_id"], broadcast_id="b107"))
    bc.on_response("gw-107", answer(env["correlation_id"], False, error="stale", message="late"))  # ignored
    row = {r["gateway"]: r for r in bc.report()["gateways"]}["gw-107"]
    assert row["state"] == "accepted" and row["broadcast_id"] == "b107" and row["command"]["attempts"] == 3


def test_snapshot_and_restore_carry_on_after_a_restart():
    """What the service stores with each report is enough to go on: a late answer to a command sent
    before the restart still counts, an offline township still gets it (signed afresh), the reports
    already applied are kept, and a cancel reaches the township that accepted."""
    clock = Clock()
    bc, wire, online = county_broadcast({"targets": ["340621000000"]}, online={"gw-105", "gw-106"},
                                        clock=clock)
    bc.start()
    cids = {gw: wire.to(gw)[0]["correlation_id"] for gw in ("gw-105", "gw-106")}
    bc.on_response("gw-105", answer(cids["gw-105"], broadcast_id="b105"))
    bc.on_broadcast_report("gw-105", "b105", report(3, "broadcast.outcome", id="b105", device="t1",
                                                    outcome="succeeded"))
    snap = json.loads(json.dumps(bc.snapshot()))  # through the database as JSON

    wire2 = Wire()
    tracker2 = CommandTracker(wire2)
    again = CountyBroadcast.restore(snap, signer=ED, tracker=tracker2, is_online=lambda gw: gw in online,
                                    clock=clock)
    assert again.report()["gateways"] == bc.report()["gateways"] and again.id == bc.id
    assert again.expires_at == bc.expires_at and again.command == "broadcast"
    assert again.on_response("gw-106", answer(cids["gw-106"], broadcast_id="b106"))  # sent before
    online.add("gw-107")
    again.tick()  # the township that was offline: sent now, signed afresh
    [env] = wire2.to("gw-107")
    assert verifies("ed25519", ED.public_key_text, "broadcast", env)
    assert env["args"] == bc.args_for("gw-107")
    rows = {r["gateway"]: r for r in again.report()["gateways"]}
    assert rows["gw-105"]["terminals"]["succeeded"] == 1 and rows["gw-106"]["broadcast_id"] == "b106"
    assert sorted(again.cancel()) == [("gw-105", "b105"), ("gw-106", "b106")]
    assert {r["gateway"]: r["state"] for r in again.report()["gateways"]}["gw-107"] == "cancelled"


def test_an_alert_snapshot_keeps_the_document_once():
    cap = (Path(__file__).parent / "cap" / "cn_rainstorm_red_alert.xml").read_text(encoding="utf-8")
    bc = CountyBroadcast({"alert": cap, "targets": ["gw-107"]}, signer=ED, tracker=CommandTracker(Wire()),
                         inventory=INVENTORY, is_online=lambda gw: True, clock=Clock())
    snap = bc.snapshot()
    assert json.dumps(snap, ensure_ascii=False).count("濉溪县气象台2026年11月28日") == 1
    again = CountyBroadcast.restore(snap, signer=ED, tracker=CommandTracker(Wire()),
                                    is_online=lambda gw: True)
    assert again.command == "alert" and again.args_for("gw-105") == {"cap": cap, "source_level": "county"}
    assert {r["gateway"]: r["targets"] for r in again.report()["gateways"]} == {
        "gw-105": {"area_codes": ["340621105201", "340621105202"]},  # 203: no terminal of ours there
        "gw-107": {"all": True}}


def test_expired_broadcast_is_not_sent_to_a_returning_gateway():
    clock = Clock()
    expires = clock.now + 60
    bc, wire, online = county_broadcast({"targets": ["gw-106", "gw-107"], "expires_at": expires},
                                        online={"gw-106"}, clock=clock)
    bc.start()
    assert len(wire.to("gw-106")) == 1 and wire.to("gw-107") == []
    clock.now = expires
    assert {r["gateway"]: r for r in bc.report()["gateways"]}["gw-107"]["state"] == "expired"
    online.add("gw-107")
    bc.on_gateway_online("gw-107")
    bc.tick()
    assert wire.to("gw-107") == []
    doc = bc.report()
    assert doc["expired"] is True
    assert {r["gateway"]: r["state"] for r in doc["gateways"]}["gw-107"] == "expired"


def test_no_answer_is_retried_and_given_up_after_max_attempts():
    clock = Clock()
    wire = Wire()
    bc = CountyBroadcast({**REQUEST, "targets": ["gw-106"]}, signer=ED, tracker=CommandTracker(wire),
                         inventory=INVENTORY, is_online=lambda gw: True, clock=clock, answer_timeout_s=10,
                         max_attempts=2)
    bc.start()
    clock.now += 9
    bc.tick()
    assert len(wire.to("gw-106")) == 1
    clock.now += 1
    bc.tick()
    assert len(wire.to("gw-106")) == 2
    first, retry = wire.to("gw-106")
    # the retry re-uses the correlation id (the gateway answers it from the first execution)
    assert retry["correlation_id"] == first["correlation_id"] and retry["nonce"] != first["nonce"]
    clock.now += 10
    bc.tick()
    row = bc.report()["gateways"][0]
    assert len(wire.to("gw-106")) == 2 and row["state"] == "undelivered"
    assert row["command"]["refusal"]["error"] == "no_answer"


def test_a_retry_answered_as_a_duplicate_counts_once():
    """The first answer is lost; the retry's answer (the gateway's stored one, ``duplicate``) is used."""
    clock = Clock()
    bc, wire, _ = county_broadcast({"targets": ["gw-107"]}, clock=clock)
    bc.start()
    clock.now += 15
    bc.tick()
    first, retry = wire.to("gw-107")
    cid = first["correlation_id"]
    assert retry["correlation_id"] == cid
    assert bc.on_response("gw-107", answer(cid, broadcast_id="b-1", duplicate=True))
    assert bc.on_response("gw-107", answer(cid, False, error="replayed", message="m"))  # a QoS 1 repeat
    row = bc.report()["gateways"][0]
    assert row["broadcast_id"] == "b-1" and row["state"] == "accepted" and row["command"]["acked"]
    assert row["duplicate_broadcast_ids"] == [] and row["command"]["attempts"] == 2


# -- end to end: real gateways (``ebc run`` on the simulator) behind a real Mosquitto ---------------------

class County:
    """What the county service does with paho: status, birth, answers and reports fed to the commands
    module, and a timer for its retries."""

    def __init__(self, broker: Broker) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"county-{time.monotonic_ns()}")
        self.tracker = CommandTracker(lambda topic, payload: self.client.publish(topic, payload, qos=1),
                                      PREFIX)
        self.status: dict[str, str] = {}
        self.births: dict[str, dict[str, Any]] = {}
        self.broadcasts: list[CountyBroadcast] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{PREFIX}/+/{t}", 1) for t in ("status", "birth", "cmd/+/response", "broadcasts/+")])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(HANG_GUARD_S)
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        gw, payload = parts[1], bytes(msg.payload)
        with self._lock:
            active = list(self.broadcasts)
        if parts[2:] == ["status"]:
            self.status[gw] = payload.decode()
            for bc in active:
                (bc.on_gateway_online if payload == b"online" else bc.on_gateway_offline)(gw)
        elif parts[2:] == ["birth"]:
            self.births[gw] = json.loads(payload)
        elif parts[2] == "cmd" and parts[4:] == ["response"]:
            self.tracker.on_response(gw, parts[3], payload)
            for bc in active:
                if parts[3] == "broadcast":
                    bc.on_response(gw, payload)
        elif parts[2] == "broadcasts":
            for bc in active:
                bc.on_broadcast_report(gw, parts[3], payload)

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                active = list(self.broadcasts)
            for bc in active:
                bc.tick()

    def online(self, gw: str) -> bool:
        return self.status.get(gw) == "online"

    def broadcast(self, request: dict[str, Any], signer: CountySigner) -> CountyBroadcast:
        inventory = {gw: birth["devices"] for gw, birth in self.births.items()}
        bc = CountyBroadcast(request, signer=signer, tracker=self.tracker, inventory=inventory,
                             is_online=self.online, retry_after_s=0.5)
        with self._lock:
            self.broadcasts.append(bc)
        bc.start()
        return bc

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        self.client.disconnect()
        self.client.loop_stop()


def rows(bc: CountyBroadcast) -> dict[str, dict[str, Any]]:
    return {r["gateway"]: r for r in bc.report()["gateways"]}


@pytest.mark.timeout(300)
def test_county_wide_broadcast_to_real_gateways(tmp_path: Path):
    """Three townships; refusals first (a key they do not know, a forged one), then one warning for the
    whole county while one township is stopped: it gets it when it is back, coverage 1.0 by the
    simulators' own ears."""
    county_sm2 = CountySigner("sm2", "county-sm2", keygen_text("sm2", tmp_path / "sm2.key"))
    county_ed = CountySigner("ed25519", "county-ed", keygen_text("ed25519", tmp_path / "ed.key"))
    keys = [{"id": "county-sm2", "type": "sm2", "public_key": county_sm2.public_key_text},
            {"id": "county-ed", "type": "ed25519", "public_key": county_ed.public_key_text}]
    broker = Broker(tmp_path / "broker").start()
    towns = {gw: township(tmp_path / gw, broker, gw, town, keys) for gw, town in TOWNS.items()}
    sims = {gw: SimProcess(sim).start() for gw, (sim, _, _) in towns.items()}
    daemons = {gw: Daemon(path, port, tmp_path / f"{gw}.log", verbose=True)
               for gw, (_, path, port) in towns.items()}
    county: County | None = None
    try:
        for d in daemons.values():
            d.start()
        county = County(broker)
        wait_until("every gateway online with its inventory", lambda: all(
            county.online(gw) and gw in county.births for gw in TOWNS))
        warning = {"text": "濉溪县应急管理局：这是一次全县应急广播系统测试。", "class": "emergency",
                   "severity": 3, "title": "全县测试", "repeat": 1, "targets": [COUNTY_CODE]}

        # refused: a key nobody configured, and a forged signature under a known key id
        rogue = CountySigner("ed25519", "county-rogue", keygen_text("ed25519", tmp_path / "rogue.key"))
        forged = CountySigner("ed25519", "county-ed", keygen_text("ed25519", tmp_path / "forged.key"))
        refused_rogue = county.broadcast({**warning, "targets": ["gw-340621105", "gw-340621106"]}, rogue)
        refused_forged = county.broadcast({**warning, "targets": ["gw-340621107"]}, forged)
        wait_until("both refusals", lambda: refused_rogue.report()["state"] == "done"
                   and refused_forged.report()["state"] == "done")
        for row in rows(refused_rogue).values():
            assert row["state"] == "refused" and row["command"]["refusal"]["error"] == "unknown_key", row
            assert row["broadcast_id"] is None and row["terminals"]["succeeded"] == 0
        forged_row = rows(refused_forged)["gw-340621107"]
        assert forged_row["command"]["refusal"]["error"] == "bad_signature", forged_row
        assert refused_rogue.report()["coverage"] == 0.0

        # one township is down when the county sends
        assert daemons["gw-340621107"].stop() == 0
        wait_until("gw-340621107 offline", lambda: county.status.get("gw-340621107") == "offline")
        sent_at = time.time()
        bc = county.broadcast(warning, county_sm2)
        assert bc.gateways == list(TOWNS)
        assert [r["targets"] for r in rows(bc).values()] == [{"area_codes": [COUNTY_CODE]}] * 3
        first = rows(bc)["gw-340621107"]
        assert first["state"] == "offline" and first["online"] is False and first["command"]["attempts"] == 0
        wait_until("the two townships that are up to finish", lambda: all(
            rows(bc)[gw]["state"] == "succeeded" for gw in ("gw-340621105", "gw-340621106")))
        assert rows(bc)["gw-340621107"]["command"]["attempts"] == 0
        assert bc.report()["state"] == "in_progress"

        back_at = time.time()
        daemons["gw-340621107"].start()
        wait_until("the whole county broadcast to finish", lambda: bc.report()["state"] == "done")
        doc = bc.report()
        late = rows(bc)["gw-340621107"]
        assert late["state"] == "succeeded" and late["command"]["acked"] and late["broadcast_id"], late
        assert late["command"]["sent_at"] >= back_at
        assert doc["terminals"] == {"targeted": 6, "succeeded": 6, "partial": 0, "failed": 0,
                                    "unreachable": 0, "pending": 0, "not_played": 0}, doc
        assert doc["coverage"] == 1.0 and doc["by_state"] == {"succeeded": 3}
        for row in rows(bc).values():
            assert set(row["devices"]) == {"rtu1", "rtu2"} and row["gateway_coverage"] == 1.0, row
        # what the loudspeakers did, by the simulators' own evidence
        for gw, sim in sims.items():
            since = back_at if gw == "gw-340621107" else sent_at
            for dev in ("rtu1", "rtu2"):
                heard = [s for s in sim.call("audible", device=dev)["spans"] if s["end"] > since]
                assert heard, f"{gw}/{dev} was never audible"
        # the refused commands played nothing: before this broadcast, no terminal had sounded
        for gw, sim in sims.items():
            for dev in ("rtu1", "rtu2"):
                assert all(s["start"] >= sent_at for s in sim.call("audible", device=dev)["spans"]), (gw, dev)
    finally:
        if county is not None:
            county.close()
        for d in daemons.values():
            d.stop()
        for sim in sims.values():
            sim.stop()
        broker.stop()


class Township:
    """One county client on one real gateway: sends a signed broadcast the instant it sees ``online``
    and keeps every answer and every broadcast id the gateway reports."""

    def __init__(self, broker: Broker, gateway: str) -> None:
        self.gateway = gateway
        self.answers: list[dict[str, Any]] = []
        self.reported: dict[str, str] = {}
        """broadcast id → its latest state name, from ``broadcasts/<id>``."""
        self.on_online: list[bytes] = []
        """Payloads to send on ``cmd/broadcast`` the moment ``online`` arrives (one per ``online``)."""
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"county-{time.monotonic_ns()}")
        root = f"{PREFIX}/{gateway}"
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{root}/status", 1), (f"{root}/cmd/broadcast/response", 1), (f"{root}/broadcasts/+", 1)])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(HANG_GUARD_S)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if parts[2:] == ["status"] and msg.payload == b"online" and self.on_online:
            self.send(self.on_online.pop(0))  # on paho's thread, before anything else is read
        elif parts[2:] == ["cmd", "broadcast", "response"]:
            self.answers.append(json.loads(msg.payload))
        elif parts[2] == "broadcasts":
            data = json.loads(msg.payload)["data"]
            if "name" in data:
                self.reported[parts[3]] = data["name"]

    def send(self, payload: bytes) -> None:
        self.client.publish(f"{PREFIX}/{self.gateway}/cmd/broadcast", payload, qos=1)

    def answer(self, n: int) -> dict[str, Any]:
        return wait_until(f"answer #{n}", lambda: len(self.answers) >= n and self.answers[n - 1])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(300)
def test_a_command_at_online_is_executed_and_a_retry_plays_once(tmp_path: Path):
    """A broadcast sent the instant the gateway says ``online`` is executed, not ``unavailable``. The
    county's retry after a lost answer — same correlation id, fresh nonce — is answered from the first
    execution with ``duplicate: true`` and plays nothing, also after the gateway restarted; the same
    correlation id with other args is a ``conflict``. One broadcast in the journal, one on the air."""
    signer = CountySigner("ed25519", "county-ed", keygen_text("ed25519", tmp_path / "ed.key"))
    gw = "gw-340621105"
    broker = Broker(tmp_path / "broker").start()
    sim, path, port = township(tmp_path / gw, broker, gw, TOWNS[gw], [
        {"id": "county-ed", "type": "ed25519", "public_key": signer.public_key_text}])
    sim_proc = SimProcess(sim).start()
    daemon = Daemon(path, port, tmp_path / "gw.log", verbose=True)
    args = {"class": "drill", "targets": {"all": True}, "text": "这是一次应急广播系统测试。"}
    cid = "county-bc-1:" + gw

    def attempt(a: dict[str, Any] = args) -> bytes:
        return json.dumps(signer.envelope("broadcast", gw, a, correlation_id=cid)).encode()

    county = Township(broker, gw)
    try:
        county.on_online.append(attempt())
        daemon.start()
        first = county.answer(1)
        assert first["ok"] is True and first["correlation_id"] == cid, first
        bid = first["broadcast_id"]
        assert "duplicate" not in first

        county.send(attempt())  # the retry: same correlation id, new nonce and signature
        assert county.answer(2) == {**first, "duplicate": True}
        county.send(attempt({**args, "text": "另一条消息。"}))
        conflict = county.answer(3)
        assert conflict["ok"] is False and conflict["error"] == "conflict", conflict
        wait_until("the broadcast to finish", lambda: county.reported.get(bid) == "succeeded")

        assert daemon.stop() == 0
        county.on_online.append(attempt())  # after a restart: still remembered, still at once
        daemon.start()
        assert county.answer(4) == {**first, "duplicate": True}
        assert set(county.reported) == {bid}
        for dev in ("rtu1", "rtu2"):
            assert sim_proc.call("audible", device=dev)["spans"], f"{dev} never played"
    finally:
        county.close()
        daemon.stop()
        sim_proc.stop()
        broker.stop()
    with sqlite3.connect(tmp_path / gw / "state" / "ebc.sqlite3") as journal:
        assert journal.execute("SELECT id FROM broadcasts").fetchall() == [(bid,)]
        actions = [a for (a,) in journal.execute("SELECT action FROM audit WHERE action LIKE 'county.%'"
                                                 " ORDER BY seq")]
    assert actions == ["county.command", "county.duplicate", "county.refused", "county.duplicate"]
