"""The county API over a running service (real Mosquitto, real uvicorn socket), its tokens and roles,
the CLI, and config validation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from countykit import TAMPER, FakeGateway, until, write_county_config
from mqttkit import Broker

from county.cli import main
from county.config import CountyConfigError, load_county_config
from county.service import CountyService

OUTLINE = {"type": "Feature", "properties": {"name": "濉溪县"},
           "geometry": {"type": "Polygon", "coordinates": [[[116.5, 33.6], [117.0, 33.6], [117.0, 34.1],
                                                            [116.5, 33.6]]]}}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def config_path(tmp_path: Path, broker: Broker) -> Path:
    return write_county_config(tmp_path / "county", broker, outline=OUTLINE)


@pytest.fixture
async def county(config_path: Path, broker: Broker) -> AsyncIterator[tuple[CountyService, FakeGateway]]:
    service = CountyService(load_county_config(config_path))
    await service.start()
    gw = FakeGateway(broker, "gw-340621105").connect()
    try:
        await until("gateway seen", lambda: gw.id in service.picture.gateways
                    and len(service.picture.gateways[gw.id].devices) == 3)
        yield service, gw
    finally:
        gw.client.loop_stop()
        gw.close_socket()
        await service.stop()


def _tokens(service: CountyService) -> dict[str, str]:
    assert service.store is not None
    return {role: service.store.create_token(f"{role}-1", role)[1]
            for role in ("viewer", "operator", "admin")}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_health_is_open_and_hardened(county: tuple[CountyService, FakeGateway]) -> None:
    service, _ = county
    async with httpx.AsyncClient(base_url=service.url) as http:
        r = await http.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "county": "suixi", "mqtt_connected": True, "gateways": 1}
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"


async def test_tokens_and_roles(county: tuple[CountyService, FakeGateway]) -> None:
    service, _ = county
    tokens = _tokens(service)
    async with httpx.AsyncClient(base_url=service.url) as http:
        r = await http.get("/api/v1/overview")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["field"] == "authorization" and "Bearer" in r.json()["detail"]
        assert (await http.get("/api/v1/overview", headers=_auth("nope"))).status_code == 401
        assert (await http.get("/api/v1/overview", params={"token": tokens["admin"]})).status_code == 401
        for role in ("viewer", "operator", "admin"):
            assert (await http.get("/api/v1/faults", headers=_auth(tokens[role]))).status_code == 200
        r = await http.get("/api/v1/audit", headers=_auth(tokens["operator"]))
        assert r.status_code == 403 and "admin role" in r.json()["detail"]
        assert (await http.get("/api/v1/audit", headers=_auth(tokens["admin"]))).status_code == 200
        assert service.store is not None
        info = service.store.verify_token(tokens["viewer"])
        assert info is not None and service.store.revoke_token(info.id)
        assert (await http.get("/api/v1/faults", headers=_auth(tokens["viewer"]))).status_code == 401


async def test_picture_endpoints(county: tuple[CountyService, FakeGateway]) -> None:
    service, gw = county
    token = _tokens(service)["viewer"]
    gw.fault("t03", TAMPER)
    gw.fault("t01")
    await until("two faults", lambda: len(service.picture.faults()) == 2)
    await until("events stored", lambda: service.store is not None and service.store.count_events() == 2)
    async with httpx.AsyncClient(base_url=service.url, headers=_auth(token)) as http:
        overview = (await http.get("/api/v1/overview")).json()
        assert overview["county"] == {"id": "suixi", "name": "濉溪县应急广播中心",
                                      "area_code": "340621000000"}
        assert overview["gateways"] == {"total": 1, "online": 1, "offline": 0, "unknown": 0}
        assert overview["terminals"] == {"total": 3, "by_state": {"1": 1, "3": 2}}
        assert overview["open_faults"] == 2 and overview["unexplained_gaps"] == 0

        [row] = (await http.get("/api/v1/gateways")).json()["gateways"]
        assert (row["id"], row["status"], row["devices"], row["open_faults"]) == (gw.id, "online", 3, 2)
        assert row["by_state"] == {"1": 1, "3": 2} and row["gaps"] == {"unexplained": 0, "explained": 0}
        assert isinstance(row["since"], float) and isinstance(row["last_seq"], int)

        board = (await http.get(f"/api/v1/gateways/{gw.id}")).json()
        assert [d["id"] for d in board["devices"]] == ["t01", "t02", "t03"]
        assert [e["kind"] for e in board["recent_events"]] == ["device.fault", "device.fault"]
        assert board["gap_list"] == [] and board["broadcasts"] == []

        r = await http.get("/api/v1/gateways/gw-nowhere")
        assert r.status_code == 404 and r.json()["field"] == "gateway_id"
        r = await http.get(f"/api/v1/gateways/{gw.id}", params={"events": -1})
        assert r.status_code == 422 and r.json()["field"] == "events"
        assert r.json()["detail"].startswith("events:")

        faults = (await http.get("/api/v1/faults")).json()["faults"]
        assert [(f["fault"], f["village"], f["township"]) for f in faults] == \
            [("mains_lost", "刘桥村", gw.name), ("tamper", "后李村", gw.name)]  # severity before age
        assert faults[0]["severity"] > faults[1]["severity"]

        county_map = (await http.get("/api/v1/map")).json()
        assert county_map["outline"] == OUTLINE
        points = {(p["device"], p["state"]) for p in county_map["points"]}
        assert points == {("t01", 3), ("t02", 1), ("t03", 3)}
        assert all(isinstance(p["lat"], float) and isinstance(p["lon"], float) for p in county_map["points"])


async def test_sse_streams_picture_changes(county: tuple[CountyService, FakeGateway]) -> None:
    service, gw = county
    token = _tokens(service)["viewer"]
    assert service.context is not None
    service.context.token_check_s = 0.2
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http, \
            http.stream("GET", "/api/v1/events", headers=_auth(token)) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        gw.fault("t02")
        changes = []
        async for line in lines:
            if line.startswith("data: "):
                changes.append(json.loads(line.removeprefix("data: ")))
                if any(c["type"] == "device.state" and c["device"]["id"] == "t02" for c in changes):
                    break
        state = next(c for c in changes if c["type"] == "device.state")
        assert state["gateway"] == gw.id and state["device"]["faults"][0]["fault"] == "mains_lost"
        assert service.store is not None
        info = service.store.verify_token(token)
        assert info is not None
        service.store.revoke_token(info.id)
        rest = [line async for line in lines]  # the stream ends once the revoke is noticed
        assert ": token revoked" in rest


def test_cli_tokens(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "duty officer", "--role", "admin", "--config", str(config_path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ebcc_")
    assert main(["token", "list", "--config", str(config_path)]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["name"], row["role"], row["revoked"]) == ("duty officer", "admin", False)
    assert token not in json.dumps(row)
    assert main(["token", "revoke", str(row["id"]), "--config", str(config_path)]) == 0
    assert main(["token", "revoke", str(row["id"]), "--config", str(config_path)]) == 1
    capsys.readouterr()
    bad = config_path.parent / "bad.yaml"
    bad.write_text("county: {id: x}\n", encoding="utf-8")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "county.name: required key is missing" in err and "mqtt: required key is missing" in err


def test_config_errors_name_the_key(config_path: Path) -> None:
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["county"]["area_code"] = "3406"
    data["mqtt"]["brokers"] = ["http://x"]
    data["mqtt"]["keepalive"] = 3
    data["storage"]["url"] = "mysql://x"
    data["map"]["outline_geojson"] = "missing.geojson"
    path = config_path.parent / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(CountyConfigError) as err:
        load_county_config(path)
    keys = sorted(e.split(":")[0] for e in err.value.errors)
    assert keys == ["county.area_code", "mqtt.brokers", "mqtt.keepalive", "storage.url"]
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["map"]["outline_geojson"] = "missing.geojson"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(CountyConfigError, match=r"map.outline_geojson: cannot read .*missing.geojson"):
        load_county_config(path)
    cfg = load_county_config(config_path)
    assert cfg.sqlite_path == config_path.parent.resolve() / "county.sqlite3"  # relative to the file
