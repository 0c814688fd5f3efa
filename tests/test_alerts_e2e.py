"""CAP alerts end to end: ``ebc run`` as a subprocess against the simulator, driven over HTTP (and MQTT).

What a villager would notice is checked where the simulator can see it: which terminals were audible
(its audio spans), and that a Cancel silences a broadcast that is on air.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from alertkit import LIUQIAO, OTHER_COUNTY, QIANLI, ZHANGZHUANG, alert_township, cn_alert
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqttkit import Broker, Subscriber
from simkit import Daemon, SimConfig, SimProcess, free_port, make_token, running_simulator, wait_until

HANG_GUARD_S = 90.0
"""Only a guard against a hung test, never a performance claim."""
FINAL = ("succeeded", "failed", "cancelled")
CAP12_CANCEL = (Path(__file__).resolve().parent / "cap" / "cap12_zh_cancel.xml").read_bytes()


@contextlib.contextmanager
def daemon(sim: SimConfig, port: int, log_path: Path) -> Iterator[Daemon]:
    d = Daemon(sim.path, port, log_path, verbose=True).start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log()


class Gateway:
    """HTTP clients for the roles a test needs, and the simulator's view of the loudspeakers."""

    def __init__(self, base: str, tokens: dict[str, str], sim: SimProcess) -> None:
        self.http = {role: httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                                         timeout=HANG_GUARD_S) for role, token in tokens.items()}
        self.sim = sim

    def close(self) -> None:
        for client in self.http.values():
            client.close()

    def post(self, doc: bytes, role: str = "feed", status: int = 202) -> dict[str, Any]:
        r = self.http[role].post("/alerts/cap", content=doc, headers={"Content-Type": "application/xml"})
        assert r.status_code == status, r.text
        return dict(r.json())

    def alert(self, alert_id: str) -> dict[str, Any]:
        return dict(self.http["viewer"].get(f"/alerts/{alert_id}").json())

    def broadcast(self, broadcast_id: str) -> dict[str, Any]:
        return dict(self.http["viewer"].get(f"/broadcasts/{broadcast_id}").json())

    def finished(self, broadcast_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            record = self.broadcast(broadcast_id)
            return record if record["state"] in FINAL else None

        return dict(wait_until(f"broadcast {broadcast_id} to finish", done, every=0.3))

    def spans(self, device: str) -> list[dict[str, Any]]:
        return list(self.sim.call("audible", device=device)["spans"])

    def audible_now(self, device: str) -> bool:
        return bool(self.sim.call("audible", device=device)["audible_now"])


@pytest.fixture
def township(tmp_path: Path) -> tuple[SimConfig, int]:
    port = free_port()
    sim = alert_township(tmp_path, api_port=port, audio_output={"sink": "sim_line", "time_scale": 5.0})
    return sim, port


@pytest.fixture
def gateway(township: tuple[SimConfig, int], tmp_path: Path) -> Iterator[tuple[Gateway, Daemon]]:
    sim_cfg, port = township
    tokens = {role: make_token(sim_cfg.path, f"{role}-1", role) for role in ("viewer", "operator", "feed")}
    with running_simulator(sim_cfg) as sim, daemon(sim_cfg, port, tmp_path / "daemon.log") as d:
        gw = Gateway(f"http://127.0.0.1:{port}/api/v1", tokens, sim)
        try:
            yield gw, d
        finally:
            gw.close()


class EventStream:
    """The API's SSE stream read in a thread, as a browser console would."""

    def __init__(self, client: httpx2.Client) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._client = client
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._open.wait(HANG_GUARD_S)

    def _read(self) -> None:
        kind = ""
        with contextlib.suppress(httpx2.HTTPError), self._client.stream("GET", "/events") as stream:
            for line in stream.iter_lines():
                self._open.set()
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line.removeprefix("data: "))))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in list(self.events) if k == kind]


def test_warnings_play_on_exactly_the_affected_terminals(gateway: tuple[Gateway, Daemon]):
    gw, _ = gateway
    stream = EventStream(gw.http["viewer"])

    # A red rainstorm warning for 刘桥村 plays at once on its two terminals and nowhere else.
    red = gw.post(cn_alert(geocodes=(LIUQIAO,)).xml)
    assert red["disposition"] == "broadcast" and red["plan"]["terminals"] == ["rtu1", "rtu2"], red
    played = gw.finished(red["broadcast_id"])
    assert played["state"] == "succeeded", played
    assert {o["device_id"]: o["outcome"] for o in played["outcomes"]} == {"rtu1": "succeeded",
                                                                           "rtu2": "succeeded"}
    assert gw.spans("rtu1") and gw.spans("rtu2")
    assert gw.spans("rtu3") == [] and gw.spans("tcp1") == []
    assert not gw.sim.state("fm1")["tx"]  # one village is not the whole township: no FM
    received = wait_until("alert.received on the event stream", lambda: stream.of("alert.received"))
    assert received[0]["id"] == red["id"] and received[0]["disposition"] == "broadcast"
    assert received[0]["villages"] == ["刘桥村"]

    # A yellow one for 前李村 waits for the duty officer, showing what it would do.
    yellow = gw.post(cn_alert(severity="Yellow", geocodes=(QIANLI,), area_desc="前李村").xml)
    assert yellow["disposition"] == "pending"
    inbox = gw.http["viewer"].get("/alerts", params={"disposition": "pending"}).json()
    assert [a["id"] for a in inbox] == [yellow["id"]]
    assert inbox[0]["plan"]["terminals"] == ["rtu3"] and "前李村" in inbox[0]["plan"]["text"]
    assert gw.spans("rtu3") == []
    edited = "前李村村民请注意，县气象台发布暴雨黄色预警，请远离河道。"
    r = gw.http["operator"].post(f"/alerts/{yellow['id']}/approve", json={"text": edited})
    assert r.status_code == 200, r.text
    approved = r.json()
    assert approved["disposition"] == "broadcast" and approved["decided_by"] == "operator-1"
    assert gw.broadcast(approved["broadcast_id"])["request"]["text"] == edited
    assert gw.finished(approved["broadcast_id"])["state"] == "succeeded"
    assert gw.spans("rtu3") and gw.spans("tcp1") == []
    decided = wait_until("alert.decided on the event stream", lambda: stream.of("alert.decided"))
    assert decided[0] == {**decided[0], "id": yellow["id"], "disposition": "broadcast", "by": "operator-1"}

    # A blue one for 张庄村, rejected: tcp1 never sounds.
    blue = gw.post(cn_alert(severity="Blue", geocodes=(ZHANGZHUANG,)).xml)
    r = gw.http["operator"].post(f"/alerts/{blue['id']}/reject", json={"reason": "已电话通知村干部"})
    assert r.status_code == 200 and r.json()["disposition"] == "rejected"
    assert gw.http["operator"].post(f"/alerts/{blue['id']}/approve").status_code == 409

    # What never plays, each with its reason.
    other = gw.post(cn_alert(geocodes=(OTHER_COUNTY,), area_desc="萧县").xml)
    assert other["disposition"] == "not_applicable" and "萧县" in other["reason"]
    test = gw.post(cn_alert(status="Test").xml)
    assert test["disposition"] == "recorded" and "Test" in test["reason"]
    expired = gw.post(cn_alert(expires=timedelta(minutes=-1)).xml)
    assert expired["disposition"] == "recorded" and "expired" in expired["reason"]
    duplicate = gw.http["feed"].post("/alerts/cap", content=_same_as(gw, red["id"]))
    assert duplicate.status_code == 200 and duplicate.json()["duplicate"] is True

    # Broken documents are refused naming the element; a feed token cannot play anything itself.
    bad = gw.http["feed"].post("/alerts/cap", content=cn_alert().xml.replace(b"Actual", b"Real"))
    assert bad.status_code == 422 and bad.json()["field"] == "alert/status", bad.text
    drill = {"class": "drill", "targets": {"all": True}, "text": "测试"}
    assert gw.http["feed"].post("/broadcasts", json=drill).status_code == 403

    # Approval deadlines: a gale warning plays by itself, a fog warning expires.
    gale = gw.post(cn_alert(event="大风", event_type="11B06", severity="Orange", geocodes=(QIANLI,)).xml)
    fog = gw.post(cn_alert(event="大雾", event_type="11B17", severity="Yellow", geocodes=(QIANLI,)).xml)
    played_by_itself = wait_until("the gale warning's timeout",
                                  lambda: (a := gw.alert(gale["id"]))["disposition"] != "pending" and a)
    assert played_by_itself["disposition"] == "broadcast" and played_by_itself["decided_by"] == "ebc"
    assert gw.finished(played_by_itself["broadcast_id"])["state"] == "succeeded"
    gone = wait_until("the fog warning's timeout",
                      lambda: (a := gw.alert(fog["id"]))["disposition"] != "pending" and a)
    assert gone["disposition"] == "expired"
    assert gw.spans("tcp1") == []


def _same_as(gw: Gateway, alert_id: str) -> bytes:
    """The stored document of an alert, posted again (a feed that polls twice)."""
    return str(gw.alert(alert_id)["document"]).encode("utf-8")


def test_cancel_and_update_stop_a_broadcast_that_is_playing(gateway: tuple[Gateway, Daemon]):
    gw, _ = gateway
    # A red typhoon warning plays ten times: it is on air when the Cancel comes.
    first = cn_alert(event="台风", event_type="11B01", severity="Red")
    typhoon = gw.post(first.xml)
    assert typhoon["disposition"] == "broadcast" and typhoon["rule"] == "typhoon-red-long", typhoon
    wait_until("the typhoon warning on air",
               lambda: gw.broadcast(typhoon["broadcast_id"])["state"] == "playing" and gw.audible_now("rtu1"))
    cancel = gw.post(cn_alert(msg_type="Cancel", references=(first,)).xml)
    assert cancel["disposition"] == "recorded" and f"cancels {typhoon['id']}" in cancel["reason"], cancel
    assert gw.alert(typhoon["id"])["disposition"] == "cancelled"
    stopped = gw.broadcast(typhoon["broadcast_id"])
    assert stopped["state"] == "cancelled", stopped
    wait_until("rtu1 and rtu2 silent", lambda: not gw.audible_now("rtu1") and not gw.audible_now("rtu2"))
    wait_until("amplifiers off",
               lambda: not any(gw.sim.state(t)["coils"]["amp_power"] for t in ("rtu1", "rtu2")))
    spans = gw.spans("rtu1")
    assert spans and all(s["end"] is not None for s in spans)

    # An Update replaces a warning that is playing: the old one stops, the new one plays.
    old_doc = cn_alert(event="台风", event_type="11B01", severity="Red", geocodes=(QIANLI,))
    old = gw.post(old_doc.xml)
    wait_until("the old warning on air",
               lambda: gw.broadcast(old["broadcast_id"])["state"] == "playing" and gw.audible_now("rtu3"))
    update = gw.post(cn_alert(msg_type="Update", references=(old_doc,), severity="Orange", geocodes=(QIANLI,),
                              headline="濉溪县气象台将台风预警调整为暴雨橙色预警").xml)
    assert update["disposition"] == "broadcast" and f"supersedes {old['id']}" in update["reason"], update
    assert gw.alert(old["id"])["disposition"] == "superseded"
    assert gw.broadcast(old["broadcast_id"])["state"] == "cancelled"
    new = gw.finished(update["broadcast_id"])
    assert new["state"] == "succeeded"
    assert new["request"]["title"] == "濉溪县气象台将台风预警调整为暴雨橙色预警"
    assert len(gw.spans("rtu3")) >= 2  # it fell silent when the old one stopped, then played the new one


def test_national_cancel_naming_identifiers_alone_stops_the_warning(gateway: tuple[Gateway, Daemon]):
    """China's national system writes <references> as bare identifiers of its own earlier alerts."""
    gw, _ = gateway
    typhoon_doc = cn_alert(event="台风", event_type="11B01", severity="Red")  # plays ten times
    yellow_doc = cn_alert(severity="Yellow", geocodes=(QIANLI,), area_desc="前李村")
    typhoon, yellow = gw.post(typhoon_doc.xml), gw.post(yellow_doc.xml)
    assert typhoon["disposition"] == "broadcast" and yellow["disposition"] == "pending", (typhoon, yellow)
    wait_until("the red typhoon warning on air",
               lambda: gw.broadcast(typhoon["broadcast_id"])["state"] == "playing" and gw.audible_now("rtu1"))

    # CAP 1.2 requires sender,identifier,sent: the short form there is refused, naming the element,
    # and the warning on air is untouched.
    short = CAP12_CANCEL.replace(b"sxqxt@ahqx.gov.cn,CN-AH-HB-SX-20261128-0315-RS,2026-11-28T03:15:00+08:00",
                                 b"CN-AH-HB-SX-20261128-0315-RS")
    refused = gw.http["feed"].post("/alerts/cap", content=short, headers={"Content-Type": "application/xml"})
    assert refused.status_code == 422 and refused.json()["field"] == "alert/references", refused.text
    assert "alert/references" in refused.json()["error"]
    assert gw.broadcast(typhoon["broadcast_id"])["state"] == "playing" and gw.audible_now("rtu1")

    # The national Cancel lifts both by identifier alone, whitespace-separated.
    written = f"{typhoon_doc.identifier}\n   {yellow_doc.identifier}"
    cancel = gw.post(cn_alert(msg_type="Cancel", references=(written,)).xml)
    assert cancel["disposition"] == "recorded", cancel
    assert f"cancels {typhoon['id']}" in cancel["reason"] and f"cancels {yellow['id']}" in cancel["reason"]
    assert gw.broadcast(typhoon["broadcast_id"])["state"] == "cancelled"
    wait_until("rtu1 and rtu2 silent", lambda: not gw.audible_now("rtu1") and not gw.audible_now("rtu2"))
    wait_until("amplifiers off",
               lambda: not any(gw.sim.state(t)["coils"]["amp_power"] for t in ("rtu1", "rtu2")))
    assert gw.alert(typhoon["id"])["disposition"] == "cancelled"
    withdrawn = gw.alert(yellow["id"])
    assert withdrawn["disposition"] == "cancelled" and cancel["id"] in withdrawn["reason"], withdrawn
    late = gw.http["operator"].post(f"/alerts/{yellow['id']}/approve")
    assert late.status_code == 409, late.text
    assert gw.spans("rtu3") == []  # the withdrawn yellow warning never sounded in 前李村


def test_pending_alert_survives_a_restart(township: tuple[SimConfig, int], tmp_path: Path):
    sim_cfg, port = township
    tokens = {role: make_token(sim_cfg.path, f"{role}-1", role) for role in ("viewer", "operator", "feed")}
    with running_simulator(sim_cfg) as sim:
        with daemon(sim_cfg, port, tmp_path / "daemon1.log"):
            gw = Gateway(f"http://127.0.0.1:{port}/api/v1", tokens, sim)
            pending = gw.post(cn_alert(severity="Yellow").xml)
            assert pending["disposition"] == "pending"
            gw.close()
        with daemon(sim_cfg, port, tmp_path / "daemon2.log"):
            gw = Gateway(f"http://127.0.0.1:{port}/api/v1", tokens, sim)
            try:
                after = gw.alert(pending["id"])
                assert after["disposition"] == "pending" and after["plan"] == pending["plan"]
                r = gw.http["operator"].post(f"/alerts/{pending['id']}/approve")
                assert r.status_code == 200 and r.json()["disposition"] == "broadcast", r.text
                assert gw.finished(r.json()["broadcast_id"])["state"] == "succeeded"
            finally:
                gw.close()


def _signed_command(key: Ed25519PrivateKey, name: str, args: dict[str, Any]) -> bytes:
    env = {"correlation_id": f"corr-{secrets.token_hex(4)}", "gateway": "gw-test", "ts": int(time.time()),
           "nonce": secrets.token_hex(16), "key_id": "county-ed", "args": args}
    signed = b"ebc-cmd-v1\n" + name.encode() + b"\n" + json.dumps(
        env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    env["sig"] = base64.b64encode(key.sign(signed)).decode()
    return json.dumps(env, ensure_ascii=False).encode()


def test_county_sends_alerts_over_mqtt(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    broker = Broker(tmp_path / "broker").start()
    try:
        port = free_port()
        sim_cfg = alert_township(
            tmp_path, api_port=port, audio_output={"sink": "sim_line", "time_scale": 5.0},
            mqtt={"brokers": [f"mqtt://127.0.0.1:{broker.port}"], "reconnect_min_s": 0.2},
            county={"keys": [{"id": "county-ed", "type": "ed25519",
                              "public_key": key.public_key().public_bytes_raw().hex()}]},
            alerts={"mqtt_topics": ["county/340621/cap"]})
        viewer = make_token(sim_cfg.path, "viewer-1", "viewer")
        with running_simulator(sim_cfg) as sim, daemon(sim_cfg, port, tmp_path / "daemon.log"), \
                Subscriber(broker, ["ebc/gw-test/#"]) as county:
            gw = Gateway(f"http://127.0.0.1:{port}/api/v1", {"viewer": viewer}, sim)
            try:
                county.wait_for("the gateway online", lambda ms: any(
                    m.topic == "ebc/gw-test/status" and m.text == "online" for m in ms))
                signed = cn_alert(severity="Yellow")
                county.client.publish("ebc/gw-test/cmd/alert", _signed_command(key, "alert", {
                    "cap": signed.xml.decode()}), qos=1)
                answer = county.wait_for("the alert command's answer", lambda ms: next(
                    (m.json() for m in ms if m.topic == "ebc/gw-test/cmd/alert/response"), None))
                assert answer["ok"] is True and answer["disposition"] == "pending", answer
                record = gw.alert(answer["alert_id"])
                assert record["ingested_by"] == "county-ed" and record["identifier"] == signed.identifier

                pushed = cn_alert(geocodes=(QIANLI,))
                county.client.publish("county/340621/cap", pushed.xml, qos=1)
                def arrived() -> dict[str, Any] | None:
                    listed = gw.http["viewer"].get("/alerts").json()
                    return next((a for a in listed if a["identifier"] == pushed.identifier), None)

                found = wait_until("the pushed alert in the inbox", arrived)
                assert found["source"] == "mqtt:county/340621/cap" and found["disposition"] == "broadcast"
                assert gw.finished(found["broadcast_id"])["state"] == "succeeded"
                events = county.wait_for("alert events for the county", lambda ms: [
                    m.json() for m in ms if m.topic == "ebc/gw-test/events"
                    and m.json().get("kind") == "alert.received"])
                assert {e["data"]["id"] for e in events} >= {answer["alert_id"], found["id"]}
            finally:
                gw.close()
    finally:
        broker.stop()
