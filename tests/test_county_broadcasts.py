"""County-wide broadcasts through the county SERVICE: its REST API (validation, roles, 409 without a key),
what it publishes (signed with the configured key, checked with the gateway's verifier), answers and
reports followed into one report, cancel, SSE, audit, history across a restart, ``ebc county keygen`` —
and end to end with three real ``ebc run`` gateways on the simulator behind a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import yaml
from countykit import (
    COUNTY_CODE,
    TOWNS,
    FakeGateway,
    device,
    keygen_text,
    set_county_keys,
    township,
    until,
    write_county_config,
)
from mqttkit import HANG_GUARD_S, Broker
from paho.mqtt.enums import CallbackAPIVersion
from simkit import Daemon, SimProcess

from controller.uplink.signing import load_public_key, signed_bytes
from county.cli import main
from county.commands import CountySigner
from county.config import CountyConfigError, load_county_config
from county.service import CountyService

CAP_DIR = Path(__file__).parent / "cap"
CAP_RED = (CAP_DIR / "cn_rainstorm_red_alert.xml").read_text(encoding="utf-8")
CAP_OTHER_COUNTY = (CAP_DIR / "cn_other_county.xml").read_text(encoding="utf-8")
SIGNING = {"type": "ed25519", "key_id": "county-1", "private_key_file": "county.key"}
WARNING = {"class": "emergency", "severity": 3, "title": "全县测试", "repeat": 1,
           "text": "濉溪县应急管理局：这是一次全县应急广播系统测试。", "confirm": True}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens(service: CountyService) -> dict[str, str]:
    assert service.store is not None
    return {role: service.store.create_token(f"{role}-1", role)[1]
            for role in ("viewer", "operator", "admin")}


def _verifies(public: str, command: str, envelope: dict[str, Any]) -> bool:
    key = load_public_key("ed25519", public)
    return key.verify(base64.b64decode(envelope["sig"], validate=True), signed_bytes(command, envelope))


class Wire:
    """Every command the county publishes (``<prefix>/<gw>/cmd/<name>``), and answers sent back."""

    def __init__(self, broker: Broker) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"wire-{time.monotonic_ns()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe("ebc/+/cmd/+", 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.sent.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(HANG_GUARD_S)

    def to(self, gateway: str, command: str) -> list[dict[str, Any]]:
        return [env for topic, env in list(self.sent) if topic == f"ebc/{gateway}/cmd/{command}"]

    def answer(self, gateway: str, command: str, **doc: Any) -> None:
        info = self.client.publish(f"ebc/{gateway}/cmd/{command}/response", json.dumps(doc), qos=1)
        info.wait_for_publish(HANG_GUARD_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def signed_config(folder: Path, broker: Broker) -> tuple[Path, str]:
    """A county config with an Ed25519 signing key; (its path, the public key for the gateways)."""
    folder.mkdir(parents=True)
    private = keygen_text("ed25519", folder / "county.key")
    public = CountySigner("ed25519", "county-1", private).public_key_text
    return write_county_config(folder, broker, signing=SIGNING), public


# -- the API over fake gateways ----------------------------------------------------------------------


@pytest.fixture
async def county(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[CountyService, str, Path]]:
    path, public = signed_config(tmp_path / "county", broker)
    service = CountyService(load_county_config(path))
    await service.start()
    try:
        yield service, public, path
    finally:
        await service.stop()


async def test_api_validation_roles_and_the_report(county: tuple[CountyService, str, Path], broker: Broker):
    service, public, config_path = county
    up = FakeGateway(broker, "gw-340621105").connect()
    down = FakeGateway(broker, "gw-340621106", "濉溪县百善镇应急广播网关",
                       [device(f"t0{i}", "百善村", 33.8, 116.9, "340621106201") for i in (1, 2, 3)]).connect()
    down.stop()
    wire = Wire(broker)
    try:
        await until("both gateways known, one offline", lambda: len(service.picture.gateways) == 2
                    and service.picture.gateways["gw-340621106"].status == "offline"
                    and len(service.picture.gateways["gw-340621105"].devices) == 3)
        tokens = _tokens(service)
        url = "/api/v1/county-broadcasts"
        targets = {"gateways": ["gw-340621106"], "area_codes": ["340621105000"]}
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
            assert (await http.post(url, json={**WARNING, "targets": targets})).status_code == 401
            r = await http.post(url, json={**WARNING, "targets": targets}, headers=_auth(tokens["viewer"]))
            assert r.status_code == 403 and "operator role" in r.json()["detail"]

            op = _auth(tokens["operator"])
            for body, fld in [
                ({**WARNING, "targets": targets, "confirm": False}, "confirm"),
                ({k: v for k, v in WARNING.items() if k != "confirm"} | {"targets": targets}, "confirm"),
                (WARNING, "targets"),
                ({**WARNING, "targets": {}}, "targets"),
                ({**WARNING, "targets": ["gw-340621105"]}, "targets"),
                ({**WARNING, "targets": {"towns": ["x"]}}, "targets.towns"),
                ({**WARNING, "targets": {"gateways": ["gw-340621105", "gw-nowhere"]}}, "targets.gateways.1"),
                ({**WARNING, "targets": {"area_codes": ["3406"]}}, "targets.area_codes.0"),
                ({**WARNING, "targets": {"gateways": ["gw-340621105"], "area_codes": ["340622000000"]}},
                 "targets.area_codes.0"),  # a neighbouring county: no terminal of ours there
                ({**WARNING, "targets": targets, "severity": None}, "severity"),
                ({**WARNING, "targets": targets, "text": " "}, "text"),
                ({**WARNING, "targets": targets, "repeat": 11}, "repeat"),
                ({**WARNING, "targets": targets, "expires_at": "2030-01-01T08:00:00"}, "expires_at"),
                ({**WARNING, "targets": targets, "colour": "red"}, "colour"),
                ({**WARNING, "targets": targets, "alert": "<alert/>"}, "class"),  # the plan decides
                ({"alert": "<alert/>", "targets": targets, "confirm": True}, "alert"),
                ({"alert": CAP_RED, "targets": targets}, "confirm"),
                ({"alert": CAP_RED.replace("Red", "Purple"), "confirm": True}, "alert"),
                ({"alert": CAP_OTHER_COUNTY, "confirm": True}, "alert"),  # concerns none of ours
                ({"alert": CAP_RED, "targets": {"gateways": ["gw-nowhere"]}, "confirm": True},
                 "targets.gateways.0"),
                ([WARNING], "body"),
            ]:
                r = await http.post(url, json=body, headers=op)
                assert r.status_code == 422, (fld, r.text)
                assert r.json()["field"] == fld and r.json()["detail"].startswith(f"{fld}: "), r.json()
            r = await http.post(url, json={"alert": CAP_RED.replace("Red", "Purple"), "confirm": True},
                                headers=op)
            assert r.json()["detail"].startswith("alert: alert/info[0]/severity: unknown severity 'Purple'")
            r = await http.post(url, content=b"{nope", headers=op)
            assert r.status_code == 422 and r.json()["field"] == "body"
            assert wire.sent == []  # nothing refused was sent

            # SSE: the console hears about it
            async with httpx.AsyncClient(base_url=service.url, timeout=60) as sse_http, \
                    sse_http.stream("GET", "/api/v1/events", headers=_auth(tokens["viewer"])) as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == ": connected"
                r = await http.post(url, json={**WARNING, "targets": targets}, headers=op)
                assert r.status_code == 201, r.text
                doc = r.json()
                event = None
                async for line in lines:
                    if line == "event: county_broadcast":
                        event = json.loads((await anext(lines)).removeprefix("data: "))
                        break
                assert event is not None and event["id"] == doc["id"]

            assert doc["created_by"] == "operator-1" and doc["live"] is True and doc["state"] == "in_progress"
            assert doc["request"]["targets"] == targets and "confirm" not in doc["request"]
            rows = {row["gateway"]: row for row in doc["gateways"]}
            assert rows["gw-340621105"]["state"] == "sent" and rows["gw-340621105"]["online"] is True
            assert rows["gw-340621105"]["targets"] == {"area_codes": ["340621105000"]}
            assert rows["gw-340621106"]["state"] == "offline" and rows["gw-340621106"]["online"] is False
            assert rows["gw-340621106"]["command"]["attempts"] == 0
            assert doc["terminals"]["targeted"] == 6 and doc["coverage"] == 0.0

            # what went on the broker: signed with the configured key, for that gateway only
            [env] = await until("the command published", lambda: wire.to("gw-340621105", "broadcast"))
            assert env["key_id"] == "county-1" and env["gateway"] == "gw-340621105"
            assert _verifies(public, "broadcast", env)
            assert wire.to("gw-340621106", "broadcast") == []

            # the gateway accepts; the report follows
            wire.answer("gw-340621105", "broadcast", correlation_id=env["correlation_id"], ok=True,
                        broadcast_id="b-105")

            async def row(gw: str) -> dict[str, Any]:
                got = (await http.get(f"{url}/{doc['id']}", headers=op)).json()
                return next(r for r in got["gateways"] if r["gateway"] == gw)

            async def accepted() -> bool:
                return (await row("gw-340621105"))["state"] == "accepted"

            await until_async("accepted", accepted)
            listed = (await http.get(url, headers=_auth(tokens["viewer"]))).json()["broadcasts"]
            assert [b["id"] for b in listed] == [doc["id"]]
            r = await http.get(f"{url}/nope", headers=op)
            assert r.status_code == 404 and r.json()["field"] == "broadcast_id"

            # cancel: operators only; a signed cancel to the gateway that accepted, the other never gets it
            cancel_url = f"{url}/{doc['id']}/cancel"
            assert (await http.post(cancel_url, headers=_auth(tokens["viewer"]))).status_code == 403
            assert (await http.post(f"{url}/nope/cancel", headers=op)).status_code == 404
            r = await http.post(cancel_url, headers=op)
            assert r.status_code == 200 and r.json()["cancelled_by"] == "operator-1"
            assert r.json()["cancelled_at"] is not None
            rows = {row["gateway"]: row for row in r.json()["gateways"]}
            assert rows["gw-340621106"]["state"] == "cancelled"
            assert rows["gw-340621105"]["cancel"]["broadcast_id"] == "b-105"
            [cancel] = await until("the cancel published", lambda: wire.to("gw-340621105", "cancel"))
            assert cancel["args"] == {"broadcast_id": "b-105"} and _verifies(public, "cancel", cancel)
            assert (await http.post(cancel_url, headers=op)).status_code == 200  # twice: harmless
            wire.answer("gw-340621105", "cancel", correlation_id=cancel["correlation_id"], ok=True,
                        broadcast_id="b-105", state="cancelled")
            up.report("broadcasts/b-105", "broadcast.state",
                      {"id": "b-105", "state": 5, "name": "cancelled", "reason": "cancelled by county-1"})

            async def finished() -> bool:
                got = (await http.get(f"{url}/{doc['id']}", headers=op)).json()
                return got["state"] == "done" and (await row("gw-340621105"))["cancel"]["answer"] is not None

            await until_async("cancelled everywhere", finished)
            assert wire.to("gw-340621106", "broadcast") == []
            final = (await row("gw-340621105"))
            assert final["state"] == "cancelled" and final["cancel"]["answer"]["ok"] is True

            audit = (await http.get("/api/v1/audit", headers=_auth(tokens["admin"]))).json()["audit"]
            mine = [(a["action"], a["actor"], a["target"]) for a in audit
                    if a["action"].startswith("county_")]
            assert mine == [("county_broadcast.cancel", "operator-1", f"county_broadcast:{doc['id']}"),
                            ("county_broadcast.create", "operator-1", f"county_broadcast:{doc['id']}")]
        last = json.loads(json.dumps(await service.broadcasts.get(doc["id"])))  # type: ignore[union-attr]
    finally:
        wire.close()
        up.stop()

    # the history survives a restart, and the restarted service follows it again (it is done, and kept
    # live a while for late reports); a second cancel is still harmless
    await service.stop()
    again = CountyService(load_county_config(config_path))
    await again.start()
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=60,
                                     headers=_auth(tokens["operator"])) as http:
            [stored] = (await http.get("/api/v1/county-broadcasts")).json()["broadcasts"]
            assert stored["live"] is True and stored["id"] == doc["id"]
            for key in ("created_by", "cancelled_by", "cancelled_at", "request", "state", "terminals"):
                assert stored[key] == last[key], key
            assert [(r["gateway"], r["state"], r["broadcast_id"]) for r in stored["gateways"]] == \
                [("gw-340621105", "cancelled", "b-105"), ("gw-340621106", "cancelled", None)]
            r = await http.post(f"/api/v1/county-broadcasts/{doc['id']}/cancel")
            assert r.status_code == 200 and r.json()["cancelled_by"] == "operator-1"
    finally:
        await again.stop()


async def until_async(what: str, check: Any, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def test_without_a_signing_key_sending_is_409(tmp_path: Path, broker: Broker):
    service = CountyService(load_county_config(write_county_config(tmp_path / "county", broker)))
    await service.start()
    try:
        tokens = _tokens(service)
        async with httpx.AsyncClient(base_url=service.url, headers=_auth(tokens["operator"])) as http:
            r = await http.post("/api/v1/county-broadcasts", json={**WARNING, "targets": {"gateways": ["x"]}})
            assert r.status_code == 409 and r.json()["field"] == "signing"
            assert "ebc county keygen" in r.json()["detail"]
            assert (await http.post("/api/v1/county-broadcasts/x/cancel")).status_code == 409
            assert (await http.get("/api/v1/county-broadcasts")).json() == {"broadcasts": []}
    finally:
        await service.stop()


async def test_an_unusable_signing_key_is_a_config_error(tmp_path: Path, broker: Broker):
    folder = tmp_path / "county"
    folder.mkdir()
    (folder / "county.key").write_text("not a key\n")
    service = CountyService(load_county_config(write_county_config(folder, broker, signing=SIGNING)))
    with pytest.raises(CountyConfigError, match=r"signing.private_key_file: .*county.key: an Ed25519"):
        await service.start()


def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "county-sm2.key"
    assert main(["keygen", "--type", "sm2", "--out", str(out), "--key-id", "county-sm2"]) == 0
    printed = capsys.readouterr()
    [entry] = yaml.safe_load(printed.out)  # pasted under county.keys in a gateway config
    assert entry["id"] == "county-sm2" and entry["type"] == "sm2"
    assert load_public_key("sm2", entry["public_key"]).type == "sm2"
    assert CountySigner("sm2", "k", out.read_text()).public_key_text == entry["public_key"].strip()
    assert "private_key_file" in printed.err and (out.stat().st_mode & 0o777) == 0o600
    content = out.read_text()
    assert main(["keygen", "--type", "ed25519", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err and out.read_text() == content
    assert main(["keygen", "--type", "ed25519", "--out", str(tmp_path / "missing" / "k.key")]) == 1
    assert "cannot write" in capsys.readouterr().err


# -- end to end: three real gateways -------------------------------------------------------------------


@pytest.mark.timeout(400)
async def test_county_service_broadcasts_to_real_gateways(tmp_path: Path, broker: Broker):
    """Through the REST API: a township holding another county key refuses (visible in the report);
    then, with that township down and fixed, one warning for the whole county — offline shown at once,
    delivered when it is back, coverage 1.0 by the simulators' own ears; then a cancel that stops one."""
    config_path, public = signed_config(tmp_path / "county", broker)
    good = [{"id": "county-1", "type": "ed25519", "public_key": public}]
    other = CountySigner("ed25519", "county-1", keygen_text("ed25519", tmp_path / "other.key"))
    wrong = [{"id": "county-1", "type": "ed25519", "public_key": other.public_key_text}]
    towns = {gw: township(tmp_path / gw, broker, gw, town, wrong if gw == "gw-340621107" else good)
             for gw, town in TOWNS.items()}
    sims = {gw: SimProcess(sim).start() for gw, (sim, _, _) in towns.items()}
    daemons = {gw: Daemon(path, port, tmp_path / f"{gw}.log", verbose=True)
               for gw, (_, path, port) in towns.items()}
    service = CountyService(load_county_config(config_path), retry_after_s=0.5)
    try:
        await asyncio.gather(*(asyncio.to_thread(d.start) for d in daemons.values()))
        await service.start()
        picture = service.picture
        await until("every gateway online with its inventory", lambda: all(
            gw in picture.gateways and picture.gateways[gw].status == "online"
            and len(picture.gateways[gw].devices) == 2 for gw in TOWNS))
        op = _auth(_tokens(service)["operator"])
        county = {**WARNING, "targets": {"area_codes": [COUNTY_CODE]}}
        async with httpx.AsyncClient(base_url=service.url, timeout=60, headers=op) as http:
            async def get(bid: str) -> dict[str, Any]:
                r = await http.get(f"/api/v1/county-broadcasts/{bid}")
                assert r.status_code == 200
                return r.json()  # type: ignore[no-any-return]

            async def wait_for(bid: str, what: str, check: Any) -> dict[str, Any]:
                doc: dict[str, Any] = {}

                async def ok() -> bool:
                    nonlocal doc
                    doc = await get(bid)
                    return bool(check(doc))

                try:
                    await until_async(what, ok)
                except AssertionError:
                    raise AssertionError(f"{what}: {json.dumps(doc, ensure_ascii=False)[:3000]}") from None
                return doc

            def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
                return {r["gateway"]: r for r in doc["gateways"]}

            # 1. refused by the township that trusts another key under our key id
            r = await http.post("/api/v1/county-broadcasts", json=county)
            assert r.status_code == 201, r.text
            first = await wait_for(r.json()["id"], "the first broadcast done", lambda d: d["state"] == "done")
            refused = rows(first)["gw-340621107"]
            assert refused["state"] == "refused" and refused["command"]["refusal"]["error"] == "bad_signature"
            assert refused["broadcast_id"] is None
            assert {gw: row["state"] for gw, row in rows(first).items()} == {
                "gw-340621105": "succeeded", "gw-340621106": "succeeded", "gw-340621107": "refused"}
            assert first["terminals"]["targeted"] == 6 and first["terminals"]["succeeded"] == 4
            assert first["coverage"] == 4 / 6
            assert sims["gw-340621107"].call("audible", device="rtu1")["spans"] == []  # refused: silent

            # 2. the township is down (being fixed) when the county sends
            assert daemons["gw-340621107"].stop() == 0
            set_county_keys(towns["gw-340621107"][0], good)
            await until("gw-340621107 offline", lambda: picture.gateways["gw-340621107"].status == "offline")
            sent_at = time.time()
            r = await http.post("/api/v1/county-broadcasts", json=county)
            assert r.status_code == 201
            bid = r.json()["id"]
            late = rows(r.json())["gw-340621107"]
            assert late["state"] == "offline" and late["online"] is False and late["command"]["attempts"] == 0
            await wait_for(bid, "the two townships that are up", lambda d: all(
                rows(d)[gw]["state"] == "succeeded" for gw in ("gw-340621105", "gw-340621106")))
            assert (await get(bid))["state"] == "in_progress"
            back_at = time.time()
            await asyncio.to_thread(daemons["gw-340621107"].start)
            doc = await wait_for(bid, "the whole county", lambda d: d["state"] == "done")
            late = rows(doc)["gw-340621107"]
            assert late["state"] == "succeeded" and late["command"]["acked"], late
            assert late["command"]["sent_at"] >= back_at
            assert doc["terminals"] == {"targeted": 6, "succeeded": 6, "partial": 0, "failed": 0,
                                        "unreachable": 0, "pending": 0, "not_played": 0}, doc
            assert doc["coverage"] == 1.0 and doc["by_state"] == {"succeeded": 3}
            for gw, sim in sims.items():  # by the loudspeakers' own evidence
                since = back_at if gw == "gw-340621107" else sent_at
                for dev in ("rtu1", "rtu2"):
                    spans = sim.call("audible", device=dev)["spans"]
                    assert [s for s in spans if s["end"] > since], (gw, dev)

            # 3. a long one, cancelled while it plays
            r = await http.post("/api/v1/county-broadcasts", json={
                **WARNING, "class": "drill", "severity": None, "repeat": 10, "gap_s": 60,
                "targets": {"gateways": ["gw-340621105"]}})
            assert r.status_code == 201, r.text
            long_id = r.json()["id"]
            await wait_for(long_id, "playing", lambda d: rows(d)["gw-340621105"]["broadcast_state"] in (
                "waiting", "playing"))
            r = await http.post(f"/api/v1/county-broadcasts/{long_id}/cancel")
            assert r.status_code == 200
            doc = await wait_for(long_id, "cancelled on the gateway", lambda d: d["state"] == "done"
                                 and rows(d)["gw-340621105"]["cancel"]["answer"] is not None)
            row = rows(doc)["gw-340621105"]
            assert row["state"] == "cancelled" and row["cancel"]["answer"]["ok"] is True, row

            listed = (await http.get("/api/v1/county-broadcasts")).json()["broadcasts"]
            assert [b["id"] for b in listed] == [long_id, bid, first["id"]]
    finally:
        await service.stop()
        for d in daemons.values():
            d.stop()
        for sim in sims.values():
            sim.stop()


# -- CAP alerts fanned out ------------------------------------------------------------------------------


async def test_cap_alert_fan_out_shows_each_townships_disposition(county: tuple[CountyService, str, Path],
                                                                  broker: Broker):
    """A CAP alert for the whole county: the signed ``alert`` command to each township, and per
    township what its plan made of it — played (followed to its terminals), waiting for the duty
    officer (not covered; followed once approved, through the stored ``alert.decided`` event), only
    recorded (not covered, not pending)."""
    service, public, _ = county
    towns = {"gw-340621105": "340621105", "gw-340621106": "340621106", "gw-340621107": "340621107"}
    gws = {gw: FakeGateway(broker, gw, devices=[device(f"t{i}", "村", 33.9, 116.7, f"{code}20{i}")
                                                for i in (1, 2)]).connect() for gw, code in towns.items()}
    wire = Wire(broker)
    cap = CAP_RED.replace("340621105201,340621105202,340621105203", "340621000000")
    try:
        await until("three townships known", lambda: all(
            len(service.picture.gateways.get(gw, None).devices if gw in service.picture.gateways else ())
            == 2 for gw in towns))
        op = _auth(_tokens(service)["operator"])
        async with httpx.AsyncClient(base_url=service.url, timeout=60, headers=op) as http:
            # the confirm step's preview: the townships the alert's area codes concern; nothing sent or kept
            r = await http.post("/api/v1/county-broadcasts/preview", json={"alert": cap})
            assert r.status_code == 200, r.text
            assert [(g["gateway"], g["targeted"]) for g in r.json()["gateways"]] == [(gw, 2) for gw in towns]
            assert r.json()["request"]["alert"]["severity"] == "Red"
            r = await http.post("/api/v1/county-broadcasts/preview", json={"alert": "<alert"})
            assert r.status_code == 422 and r.json()["detail"].startswith("alert: not well-formed XML")
            viewer = _auth(_tokens(service)["viewer"])
            r = await http.post("/api/v1/county-broadcasts/preview", json={"alert": cap}, headers=viewer)
            assert r.status_code == 403
            assert wire.sent == []
            assert (await http.get("/api/v1/county-broadcasts")).json()["broadcasts"] == []

            r = await http.post("/api/v1/county-broadcasts", json={"alert": cap, "confirm": True})
            assert r.status_code == 201, r.text
            doc = r.json()
            assert doc["command"] == "alert" and doc["request"]["alert"]["identifier"] == \
                "34062141600000_20261128031500"
            assert doc["request"]["alert"]["area_codes"] == ["340621000000"]
            assert "cap" not in json.dumps(doc["request"])  # the document: in the audit trail, not the report
            envs = {gw: (await until(f"alert to {gw}", lambda g=gw: wire.to(g, "alert")))[0] for gw in towns}
            for env in envs.values():
                assert env["args"] == {"cap": cap, "source_level": "county"}
                assert _verifies(public, "alert", env)
            assert all(wire.to(gw, "broadcast") == [] for gw in towns)

            def answer(gw: str, **fields: Any) -> None:
                wire.answer(gw, "alert", correlation_id=envs[gw]["correlation_id"], ok=True,
                            alert_id=f"a-{gw}", duplicate=False, **fields)

            answer("gw-340621105", disposition="broadcast", broadcast_id="b-105", reason="rule 'red' matched")
            answer("gw-340621106", disposition="pending", broadcast_id=None, reason="waits for approval")
            answer("gw-340621107", disposition="recorded", broadcast_id=None, reason="rule says record")
            for i in (1, 2):
                gws["gw-340621105"].report("broadcasts/b-105", "broadcast.outcome",
                                           {"id": "b-105", "device": f"t{i}", "outcome": "succeeded"})
            gws["gw-340621105"].report("broadcasts/b-105", "broadcast.state",
                                       {"id": "b-105", "state": 3, "name": "succeeded", "coverage": 1.0})

            async def current() -> dict[str, Any]:
                return (await http.get(f"/api/v1/county-broadcasts/{doc['id']}")).json()  # type: ignore[no-any-return]

            def rows(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
                return {row["gateway"]: row for row in d["gateways"]}

            got: dict[str, Any] = {}

            async def settled() -> bool:
                nonlocal got
                got = await current()
                return {gw: row["state"] for gw, row in rows(got).items()} == {
                    "gw-340621105": "succeeded", "gw-340621106": "pending_approval",
                    "gw-340621107": "recorded"}

            await until_async("the three dispositions", settled)
            assert got["state"] == "in_progress"  # a duty officer may still approve it
            assert rows(got)["gw-340621106"]["alert"]["disposition"] == "pending"
            assert rows(got)["gw-340621107"]["alert"]["reason"] == "rule says record"
            assert got["terminals"] == {"targeted": 6, "succeeded": 2, "partial": 0, "failed": 0,
                                        "unreachable": 0, "pending": 2, "not_played": 2}
            assert got["coverage"] == 2 / 6

            # the duty officer approves: the gateway's event names the broadcast, which is followed
            gws["gw-340621106"].report("events", "alert.decided", {
                "id": "a-gw-340621106", "disposition": "broadcast", "by": "duty", "broadcast_id": "b-106",
                "reason": "approved by duty"})
            for i in (1, 2):
                gws["gw-340621106"].report("broadcasts/b-106", "broadcast.outcome",
                                           {"id": "b-106", "device": f"t{i}", "outcome": "succeeded"})
            gws["gw-340621106"].report("broadcasts/b-106", "broadcast.state",
                                       {"id": "b-106", "state": 3, "name": "succeeded", "coverage": 1.0})

            async def done() -> bool:
                nonlocal got
                got = await current()
                return got["state"] == "done"

            await until_async("the approved one played", done)
            row = rows(got)["gw-340621106"]
            assert row["state"] == "succeeded" and row["broadcast_id"] == "b-106"
            assert row["alert"]["by"] == "duty"
            assert got["terminals"] == {"targeted": 6, "succeeded": 4, "partial": 0, "failed": 0,
                                        "unreachable": 0, "pending": 0, "not_played": 2}
            admin = _auth(_tokens(service)["admin"])
            audit = (await http.get("/api/v1/audit", headers=admin)).json()["audit"]
            [created] = [a for a in audit if a["action"] == "county_broadcast.create"]
            assert created["details"]["cap"] == cap
    finally:
        wire.close()
        for gw in gws.values():
            gw.stop()


@pytest.mark.timeout(400)
async def test_cap_alert_and_a_county_restart_with_real_gateways(tmp_path: Path, broker: Broker):
    """Two real townships: 刘桥镇 plays a red warning at once by its plan, 百善镇 has no rule for it (a
    duty officer must approve) and is down when the county sends. The county stops mid-broadcast and
    starts again: it follows what it had sent (the played one to its terminals, by the simulators'
    ears), sends the alert to 百善镇 when it is back (shown pending approval, silent, not covered),
    and a long broadcast sent before the restart can still be cancelled after it."""
    folder = tmp_path / "county"
    folder.mkdir()
    private = keygen_text("ed25519", folder / "county.key")
    public = CountySigner("ed25519", "county-1", private).public_key_text
    # a persistent session: the broker keeps the townships' reports for the county while it restarts
    config_path = write_county_config(folder, broker, client_id="county-suixi", signing=SIGNING)
    keys = [{"id": "county-1", "type": "ed25519", "public_key": public}]
    plans = {"gw-340621105": {"rules": [{"id": "red-auto", "match": {"severity": ["Extreme"]},
                                         "action": "broadcast", "repeat": 1}]},
             "gw-340621106": {"default_action": "approve"}}
    towns = {gw: township(tmp_path / gw, broker, gw, TOWNS[gw], keys) for gw in plans}
    for gw, (sim, path, _) in towns.items():
        sim.data["alerts"] = plans[gw]
        path.write_text(yaml.safe_dump(sim.data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sims = {gw: SimProcess(sim).start() for gw, (sim, _, _) in towns.items()}
    daemons = {gw: Daemon(path, port, tmp_path / f"{gw}.log", verbose=True)
               for gw, (_, path, port) in towns.items()}
    cap = CAP_RED.replace("340621105201,340621105202,340621105203", COUNTY_CODE)
    service = CountyService(load_county_config(config_path), retry_after_s=0.5)
    again: CountyService | None = None
    try:
        await asyncio.gather(*(asyncio.to_thread(d.start) for d in daemons.values()))
        await service.start()
        await until("both townships online with their inventory", lambda: all(
            gw in service.picture.gateways and service.picture.gateways[gw].status == "online"
            and len(service.picture.gateways[gw].devices) == 2 for gw in plans))
        token = _tokens(service)["operator"]
        assert daemons["gw-340621106"].stop() == 0
        await until("百善镇 offline", lambda: service.picture.gateways["gw-340621106"].status == "offline")

        async with httpx.AsyncClient(base_url=service.url, timeout=60, headers=_auth(token)) as http:
            sent_at = time.time()
            r = await http.post("/api/v1/county-broadcasts", json={"alert": cap, "confirm": True})
            assert r.status_code == 201, r.text
            alert_id = r.json()["id"]
            assert {row["gateway"]: row["state"] for row in r.json()["gateways"]} == {
                "gw-340621105": "sent", "gw-340621106": "offline"}
            r = await http.post("/api/v1/county-broadcasts", json={
                **WARNING, "class": "drill", "severity": None, "repeat": 10, "gap_s": 60,
                "targets": {"gateways": ["gw-340621105"]}})
            long_id = r.json()["id"]

            async def accepted() -> bool:
                docs = [(await http.get(f"/api/v1/county-broadcasts/{bid}")).json()
                        for bid in (alert_id, long_id)]
                return all(row["broadcast_id"] for d in docs for row in d["gateways"]
                           if row["gateway"] == "gw-340621105")

            await until_async("刘桥镇 accepted both", accepted)
        await service.stop()  # mid-broadcast

        back_at = time.time()
        await asyncio.to_thread(daemons["gw-340621106"].start)  # back while the county is down
        again = CountyService(load_county_config(config_path), retry_after_s=0.5)
        await again.start()
        async with httpx.AsyncClient(base_url=again.url, timeout=60, headers=_auth(token)) as http:
            async def get(bid: str) -> dict[str, Any]:
                got = await http.get(f"/api/v1/county-broadcasts/{bid}")
                return got.json()  # type: ignore[no-any-return]

            def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
                return {row["gateway"]: row for row in doc["gateways"]}

            doc: dict[str, Any] = {}

            async def settled() -> bool:
                nonlocal doc
                doc = await get(alert_id)
                return doc["live"] and rows(doc)["gw-340621105"]["state"] == "succeeded" \
                    and rows(doc)["gw-340621105"]["terminals"]["succeeded"] == 2 \
                    and rows(doc)["gw-340621106"]["state"] == "pending_approval"

            try:
                await until_async("the alert followed after the restart", settled)
            except AssertionError:
                raise AssertionError(json.dumps(doc, ensure_ascii=False)[:3000]) from None
            played, pending = rows(doc)["gw-340621105"], rows(doc)["gw-340621106"]
            assert played["alert"]["disposition"] == "broadcast" and "red-auto" in played["alert"]["reason"]
            assert played["terminals"]["succeeded"] == 2 == played["terminals"]["targeted"]
            assert pending["alert"]["disposition"] == "pending" and pending["broadcast_id"] is None
            assert pending["command"]["sent_at"] >= back_at  # sent by the restarted county
            assert pending["terminals"] == {"targeted": 2, "succeeded": 0, "partial": 0, "failed": 0,
                                            "unreachable": 0, "pending": 2, "not_played": 0}
            assert doc["coverage"] == 2 / 4 and doc["state"] == "in_progress"
            for dev in ("rtu1", "rtu2"):  # by the loudspeakers' own evidence
                assert [s for s in sims["gw-340621105"].call("audible", device=dev)["spans"]
                        if s["end"] > sent_at], dev

            # the long one: still followed, so it can be cancelled
            long_doc = await get(long_id)
            assert long_doc["live"] is True
            r = await http.post(f"/api/v1/county-broadcasts/{long_id}/cancel")
            assert r.status_code == 200 and r.json()["cancelled_by"] == "operator-1"

            async def cancelled() -> bool:
                nonlocal long_doc
                long_doc = await get(long_id)
                return rows(long_doc)["gw-340621105"]["state"] == "cancelled" \
                    and (rows(long_doc)["gw-340621105"]["cancel"] or {}).get("answer") is not None

            await until_async("the long one cancelled on 刘桥镇", cancelled)
            assert rows(long_doc)["gw-340621105"]["cancel"]["answer"]["ok"] is True
            # the alert was not played where it waits for a duty officer
            for dev in ("rtu1", "rtu2"):
                spans = sims["gw-340621106"].call("audible", device=dev)["spans"]
                assert [s for s in spans if s["end"] > sent_at] == [], dev
    finally:
        for s in (service, again):
            if s is not None:
                await s.stop()
        for d in daemons.values():
            d.stop()
        for sim in sims.values():
            sim.stop()
