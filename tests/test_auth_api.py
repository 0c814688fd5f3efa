"""The REST API (controller/api/) with a real Store on disk: auth, roles, validation, error shape.

These tests are about the API's own contract, not playback: the real BroadcastEngine journals,
audits and queues what the API submits, but its playing loop is not started (no hardware here).
Playback end to end is in tests/test_daemon.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
import yaml
from apikit import api_services, assert_error, auth
from simkit import free_port, write_sim_config
from starlette.testclient import TestClient

from controller.api.app import MAX_BODY_BYTES, ApiServices, create_app
from controller.app.logs import setup_logging
from controller.broadcast.model import TerminalOutcome
from controller.broadcast.scheduler import Scheduler
from controller.config import Config, load_config
from controller.core.events import BroadcastStateChanged
from controller.core.redaction import redact

DRILL = {"class": "drill", "targets": {"all": True}, "text": "这是一次应急广播系统测试。"}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    sim = write_sim_config(tmp_path)
    data = dict(sim.data)
    data["state_dir"] = str(tmp_path / "state")
    data["schedules"] = [{"id": "weekly-test", "cron": "0 8 * * 1", "request": DRILL}]
    data["speech"] = {"max_chars": 100}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(sim.path)


@pytest.fixture
def services(cfg: Config) -> Iterator[ApiServices]:
    services = api_services(cfg, keepalive_s=0.2)
    services.scheduler = Scheduler(cfg, services.store, services.engine)
    services.scheduler.reload()  # knows every schedule and its next run; its firing loop is not started
    yield services
    services.store.close()


PROTECTED = [("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/rtu1"), ("POST", "/api/v1/broadcasts"),
             ("GET", "/api/v1/broadcasts"), ("GET", "/api/v1/broadcasts/x"),
             ("POST", "/api/v1/broadcasts/x/cancel"), ("GET", "/api/v1/schedules"),
             ("POST", "/api/v1/schedules"), ("DELETE", "/api/v1/schedules/x"), ("GET", "/api/v1/audit"),
             ("GET", "/api/v1/tokens"), ("GET", "/api/v1/events"), ("GET", "/api/v1/metrics"),
             ("POST", "/api/v1/audio"),
             ("GET", "/metrics")]


def test_health_is_open_and_says_nothing_more(client: TestClient):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_default_credentials_everything_is_401(client: TestClient, method: str, path: str):
    r = client.request(method, path, json=DRILL if method == "POST" else None)
    body = assert_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["error"]


@pytest.mark.parametrize("header", ["Bearer ebc_not-a-real-token-at-all", "Basic YWRtaW46YWRtaW4=", "Bearer",
                                    "ebc_whatever"])
def test_bad_credentials_are_401(client: TestClient, tokens: dict[str, str], header: str):
    r = client.get("/api/v1/devices", headers={"Authorization": header})
    assert_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_token_in_the_url_is_not_accepted(client: TestClient, tokens: dict[str, str]):
    """Tokens never go in URLs (they end up in access logs and browser history)."""
    for param in ("access_token", "token"):
        r = client.get(f"/api/v1/events?{param}={tokens['admin']}")
        assert_error(r, 401)
        assert tokens["admin"] not in r.text


def test_revoked_token_is_401(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    assert client.get("/api/v1/devices", headers=auth(tokens["viewer"])).status_code == 200
    services.store.revoke_token("viewer-1")
    assert_error(client.get("/api/v1/devices", headers=auth(tokens["viewer"])), 401)


def test_roles_are_least_privilege(client: TestClient, tokens: dict[str, str]):
    viewer, operator, admin = auth(tokens["viewer"]), auth(tokens["operator"]), auth(tokens["admin"])
    body = assert_error(client.post("/api/v1/broadcasts", json=DRILL, headers=viewer), 403)
    assert "operator" in body["error"]
    assert_error(client.get("/api/v1/audit", headers=operator), 403)
    assert_error(client.get("/api/v1/tokens", headers=operator), 403)
    assert_error(client.post("/api/v1/schedules", json={}, headers=operator), 403)
    assert client.get("/api/v1/audit", headers=admin).status_code == 200
    assert client.post("/api/v1/broadcasts", json=DRILL, headers=admin).status_code == 202


def test_operator_broadcast_is_202_journalled_and_audited(client: TestClient, services: ApiServices,
                                                           tokens: dict[str, str]):
    r = client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "waiting" and body["location"] == f"/api/v1/broadcasts/{body['id']}"
    assert r.headers["location"] == body["location"]
    assert services.store.get_broadcast(body["id"]) is not None  # journalled before the answer

    one = client.get(body["location"], headers=auth(tokens["viewer"])).json()
    assert one["id"] == body["id"] and one["state"] == "waiting" and one["state_code"] == 1
    assert one["request"]["class"] == "drill" and one["outcomes"] == [] and "coverage" in one
    assert one["actor"]["name"] == "operator-1" and one["actor"]["via"] == "api"

    listed = client.get("/api/v1/broadcasts?state=waiting", headers=auth(tokens["viewer"])).json()
    assert [b["id"] for b in listed] == [body["id"]]
    assert client.get("/api/v1/broadcasts?state=3", headers=auth(tokens["viewer"])).json() == []

    entry = services.store.list_audit()[0]
    assert entry["action"] == "broadcast.submit" and entry["target"] == body["id"]
    assert entry["actor"] == "operator-1" and entry["role"] == "operator"
    assert entry["token_id"] == services.store.verify_token(tokens["operator"]).id  # type: ignore[union-attr]
    assert entry["remote"]  # where it came from
    assert tokens["operator"] not in json.dumps(entry)


def test_outcomes_and_coverage_are_shown(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    r = client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    broadcast_id = r.json()["id"]
    services.store.set_outcome(broadcast_id, "rtu1", TerminalOutcome.SUCCEEDED)
    services.store.set_outcome(broadcast_id, "rtu2", TerminalOutcome.UNREACHABLE, "no answer on rs485")
    one = client.get(f"/api/v1/broadcasts/{broadcast_id}", headers=auth(tokens["viewer"])).json()
    assert {o["device_id"]: o["outcome"] for o in one["outcomes"]} == {"rtu1": "succeeded",
                                                                        "rtu2": "unreachable"}
    assert one["coverage"] == 0.5


@pytest.mark.parametrize(("body", "field", "words"), [
    ({**DRILL, "targets": {"area_codes": ["340621105201", "12"]}}, "targets.area_codes", "12-digit"),
    ({"targets": {"all": True}, "text": "x"}, "class", "missing"),
    ({**DRILL, "colour": "red"}, "colour", "unknown field"),
    ({**DRILL, "class": "party"}, "class", "emergency"),
    ({**DRILL, "repeat": 99}, "repeat", "10"),
    ({**DRILL, "targets": {"all": True, "zones": ["one"]}}, "targets.zones.0", "integer"),
    ({**DRILL, "class": "emergency"}, None, "severity"),
    ({**DRILL, "targets": {"devices": ["rtu1", "nope"]}}, "targets", "nope"),
    ({**DRILL, "targets": {"area_codes": ["110101000000"]}}, "targets", "outside"),
    ({**DRILL, "text": "长" * 101}, "text", "100"),
    ({**DRILL, "text": "\x00"}, "text", "nothing to speak"),
    ({**DRILL, "text": "\u200b\u200d\ufeff \u3000\u3000"}, "text", "nothing to speak"),
    ({**DRILL, "text": None, "audio_id": "no-such-clip"}, "audio_id", "no-such-clip"),
])
def test_validation_names_the_field(client: TestClient, tokens: dict[str, str], body: dict[str, Any],
                                    field: str | None, words: str):
    r = client.post("/api/v1/broadcasts", json=body, headers=auth(tokens["operator"]))
    err = assert_error(r, 422, field)
    assert words in err["error"]
    if field:
        assert err["error"].startswith(field)


def test_a_nul_no_longer_cuts_the_spoken_text(client: TestClient, services: ApiServices,
                                              tokens: dict[str, str]):
    body = {**DRILL, "text": "请注意\x00：河水上涨，\u200b立即撤离"}
    r = client.post("/api/v1/broadcasts", json=body, headers=auth(tokens["operator"]))
    assert r.status_code == 202, r.text
    record = services.store.get_broadcast(r.json()["id"])
    assert record is not None and record["request"]["text"] == "请注意：河水上涨，立即撤离"


@pytest.mark.parametrize("path", ["/api/v1/broadcasts", "/api/v1/alerts", "/api/v1/audit"])
@pytest.mark.parametrize(("query", "field"), [
    ("offset=9223372036854775808", "offset"),   # past SQLite's integers: was a 500 (OverflowError)
    ("offset=1000000001", "offset"),
    ("offset=-1", "offset"),
    ("limit=0", "limit"),
    ("limit=99999999999999999999", "limit"),
    ("offset=1e3", "offset"),
])
def test_list_parameters_are_bounded_422_naming_them(client: TestClient, tokens: dict[str, str], path: str,
                                                     query: str, field: str):
    err = assert_error(client.get(f"{path}?{query}", headers=auth(tokens["admin"])), 422, field)
    assert err["error"].startswith(f"{field}: ")


def test_list_filters_name_what_they_accept(client: TestClient, tokens: dict[str, str]):
    viewer = auth(tokens["viewer"])
    err = assert_error(client.get("/api/v1/broadcasts?state=lost", headers=viewer), 422, "state")
    assert "'waiting'" in err["error"] and "'5'" in err["error"]
    assert client.get("/api/v1/broadcasts?state=1&offset=1000000000", headers=viewer).json() == []


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_as_such(client: TestClient, tokens: dict[str, str], value: str):
    body = json.dumps({**DRILL, "repeat": 2}).removesuffix("}") + f', "gap_s": {value}}}'
    r = client.post("/api/v1/broadcasts", content=body.encode(), headers={
        **auth(tokens["operator"]), "Content-Type": "application/json"})
    assert assert_error(r, 422, "gap_s")["error"] == "gap_s: Input should be a finite number"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("OPTIONS", "/api/v1/schedules", "GET, POST"),
    ("PUT", "/api/v1/schedules", "GET, POST"),
    ("PATCH", "/api/v1/broadcasts", "GET, POST"),
    ("GET", "/api/v1/schedules/weekly-test", "DELETE"),
    ("DELETE", "/api/v1/broadcasts/b1", "GET"),
])
def test_405_lists_every_method_of_the_path(client: TestClient, tokens: dict[str, str], method: str,
                                            path: str, allowed: str):
    r = client.request(method, path, headers=auth(tokens["admin"]))
    assert_error(r, 405)
    assert r.headers["allow"] == allowed


def test_not_json_is_422(client: TestClient, tokens: dict[str, str]):
    r = client.post("/api/v1/broadcasts", content=b'{"class": ', headers={
        **auth(tokens["operator"]), "Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(r, 422)["error"]
    r = client.post("/api/v1/broadcasts", content=b'{"class": "\xff\xfe"}', headers={
        **auth(tokens["operator"]), "Content-Type": "application/json"})
    assert "not valid JSON (UnicodeDecodeError" in assert_error(r, 422)["error"]  # was a 400 from FastAPI


def test_body_limit_is_413(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    big = {**DRILL, "title": "x" * (MAX_BODY_BYTES + 10)}
    r = client.post("/api/v1/broadcasts", json=big, headers=auth(tokens["operator"]))
    assert "too large" in assert_error(r, 413)["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"class": "drill", "title": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    r = client.post("/api/v1/broadcasts", content=chunks(), headers={
        **auth(tokens["operator"]), "Content-Type": "application/json"})
    assert_error(r, 413)
    assert services.store.list_broadcasts() == []


def test_unknown_ids_are_404_naming_the_id(client: TestClient, tokens: dict[str, str]):
    viewer, operator = auth(tokens["viewer"]), auth(tokens["operator"])
    assert "b-nope" in assert_error(client.get("/api/v1/broadcasts/b-nope", headers=viewer), 404)["error"]
    assert "b-nope" in assert_error(client.post("/api/v1/broadcasts/b-nope/cancel", headers=operator),
                                    404)["error"]
    assert "t99" in assert_error(client.get("/api/v1/devices/t99", headers=viewer), 404)["error"]
    assert_error(client.get("/api/v1/no-such-thing", headers=viewer), 404)
    assert_error(client.put("/api/v1/broadcasts", headers=operator), 405)


def test_cancel_then_cancel_again_is_409(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    operator = auth(tokens["operator"])
    broadcast_id = client.post("/api/v1/broadcasts", json=DRILL, headers=operator).json()["id"]
    r = client.post(f"/api/v1/broadcasts/{broadcast_id}/cancel", headers=operator)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert "cancelled" in assert_error(client.post(f"/api/v1/broadcasts/{broadcast_id}/cancel",
                                                   headers=operator), 409)["error"]
    actions = [a["action"] for a in services.store.list_audit()]
    assert actions[actions.index("broadcast.cancel") + 1:] == ["broadcast.submit"]


def test_devices_list_and_one(client: TestClient, tokens: dict[str, str]):
    devices = client.get("/api/v1/devices", headers=auth(tokens["viewer"])).json()
    assert {d["id"] for d in devices} == {"rtu1", "rtu2", "rtu3", "tcp1", "fm1"}
    assert {d["kind"] for d in devices} == {"terminal", "fm_transmitter"}
    one = client.get("/api/v1/devices/rtu2", headers=auth(tokens["viewer"])).json()
    assert one["id"] == "rtu2" and one["online"] is None  # never polled in this test


def test_schedules_crud(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    admin = auth(tokens["admin"])
    listed = client.get("/api/v1/schedules", headers=auth(tokens["viewer"])).json()
    assert [(s["id"], s["source"]) for s in listed] == [("weekly-test", "config")]
    assert listed[0]["next_at"] and listed[0]["problem"] is None
    new = {"id": "noon-news", "cron": "0 12 * * *", "request": {**DRILL, "class": "daily"}}
    r = client.post("/api/v1/schedules", json=new, headers=admin)
    assert r.status_code == 201, r.text
    assert_error(client.post("/api/v1/schedules", json=new, headers=admin), 409, "id")
    bad_cron = {**new, "id": "x2", "cron": "every day"}
    assert_error(client.post("/api/v1/schedules", json=bad_cron, headers=admin), 422, "cron")
    assert_error(client.post("/api/v1/schedules", json={**new, "id": "x3", "request": {**DRILL, "repeat": 0}},
                             headers=admin), 422, "request.repeat")
    assert_error(client.post("/api/v1/schedules", json={**new, "id": "Bad Id"}, headers=admin), 422, "id")
    listed = client.get("/api/v1/schedules", headers=admin).json()
    assert [s["id"] for s in listed] == ["weekly-test", "noon-news"]
    assert "T12:00:00" in listed[1]["next_at"]  # the running scheduler picked it up
    assert_error(client.delete("/api/v1/schedules/weekly-test", headers=admin), 409)
    assert client.delete("/api/v1/schedules/noon-news", headers=admin).status_code == 204
    assert_error(client.delete("/api/v1/schedules/noon-news", headers=admin), 404)
    actions = [a["action"] for a in services.store.list_audit()]
    assert actions == ["schedule.delete", "schedule.add"]


def test_tokens_endpoint_never_shows_secrets(client: TestClient, tokens: dict[str, str]):
    listed = client.get("/api/v1/tokens", headers=auth(tokens["admin"])).json()
    assert {t["name"] for t in listed} == {"viewer-1", "operator-1", "admin-1", "feed-1"}
    text = json.dumps(listed)
    for token in tokens.values():
        assert token not in text
    assert all(set(t) == {"id", "name", "role", "created_at"} for t in listed)


def test_token_plaintext_never_reaches_the_database_files(client: TestClient, services: ApiServices,
                                                           tokens: dict[str, str]):
    for token in tokens.values():  # use each so verification paths run too
        client.get("/api/v1/devices", headers=auth(token))
    client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    files = [p for p in services.store.path.parent.iterdir() if p.name.startswith(services.store.path.name)]
    assert files
    for path in files:
        data = path.read_bytes()
        for token in tokens.values():
            assert token.encode() not in data, f"token found in {path.name}"
            assert token.removeprefix("ebc_").encode() not in data


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_tokens_are_never_logged(client: TestClient, tokens: dict[str, str],
                                 capsys: pytest.CaptureFixture[str], restore_logging: None):
    setup_logging("json", verbose=True)
    client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    client.get("/api/v1/devices", headers=auth(tokens["viewer"] + "tampered"))
    client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    logging.getLogger("ebc.test").warning("a careless line: Authorization: Bearer %s", tokens["admin"])
    try:
        raise ValueError(f"token {tokens['operator']} in an exception")
    except ValueError:
        logging.getLogger("ebc.test").exception("oops")
    err = capsys.readouterr().err
    assert "[REDACTED]" in err
    for token in tokens.values():
        assert token not in err
        assert token.removeprefix("ebc_") not in err
    for line in err.splitlines():  # JSON format: one object per line
        json.loads(line)


def test_redact_patterns():
    assert redact("Authorization: Bearer abc.def-123") == "Authorization: Bearer [REDACTED]"
    assert redact("key ebc_AbCdEf0123456789_- end") == "key ebc_[REDACTED] end"
    assert redact("nothing secret 这里") == "nothing secret 这里"


@pytest.mark.parametrize("line", [
    '"GET /api/v1/devices?token=ebc%5F{secret} HTTP/1.1" 401',
    '"GET /api/v1/devices?t=%65%62%63_{secret} HTTP/1.1" 401',
    '"GET /api/v1/devices?t=%65%62%63%5f{secret}&page=2 HTTP/1.1" 401',
    '"GET /api/v1/devices?x=Bearer+{secret} HTTP/1.1" 401',
    '"GET /api/v1/devices?x=Bearer%20{secret} HTTP/1.1" 401',
    '"GET /api/v1/devices?x=%2565%2562%2563%255F{secret} HTTP/1.1" 401',   # encoded twice
    '"GET /api/v1/devices?x=ebc_{head}%2D{tail} HTTP/1.1" 401',
])
def test_url_encoded_tokens_are_redacted(line: str):
    secret = "AbCdEf0123456789_-zZ"
    out = redact(line.format(secret=secret, head=secret[:10], tail=secret[10:]))
    assert "[REDACTED]" in out and secret[:10] not in out and secret[-8:] not in out
    assert out.startswith('"GET /api/v1/devices?') and out.endswith(" HTTP/1.1\" 401")


def test_redaction_leaves_ordinary_urls_alone():
    for text in ("GET /api/v1/broadcasts?state=waiting&limit=50", "a+b 50% off, 1+1=2", "%E5%88%98%E6%A1%A5"):
        assert redact(text) == text


def test_metrics_and_openapi(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    text = client.get("/api/v1/metrics", headers=auth(tokens["viewer"])).text
    assert 'ebc_broadcasts{state="waiting"} 1' in text
    assert 'ebc_devices{kind="terminal"} 4' in text and "# TYPE ebc_devices_online gauge" in text
    assert 'ebc_line_requests_total{line="rs485"} 0' in text and 'ebc_line_timeouts_total{line="ip1"}' in text
    assert client.get("/metrics", headers=auth(tokens["viewer"])).text.startswith("# HELP")
    spec = client.get("/openapi.json").json()
    assert "/api/v1/broadcasts" in spec["paths"] and "/api/v1/events" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_openapi_lists_every_answer_with_the_error_shape(client: TestClient):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/api/v1/broadcasts/{broadcast_id}/cancel"]["post"]["responses"]) == {
        "200", "401", "403", "404", "409"}
    assert set(paths["/api/v1/broadcasts"]["post"]["responses"]) == {"202", "401", "403", "413", "422"}
    assert set(paths["/api/v1/health"]["get"]["responses"]) == {"200"}
    assert "security" not in paths["/api/v1/health"]["get"]
    assert paths["/api/v1/devices"]["get"]["security"] == [{"bearer": []}]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    assert paths["/api/v1/metrics"]["get"]["responses"]["401"]["content"] == error  # JSON, not text/plain
    assert paths["/api/v1/audit"]["get"]["responses"]["422"]["content"] == error
    assert "HTTPValidationError" not in json.dumps(spec)
    offset = next(p for p in paths["/api/v1/audit"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 1_000_000_000
    request = spec["components"]["schemas"]["BroadcastRequest"]["properties"]
    assert request["text"]["anyOf"][0]["minLength"] == 1 and request["gap_s"]["type"] == "number"


async def test_event_stream_over_a_real_server(services: ApiServices, tokens: dict[str, str]):
    """SSE needs a real server (a streaming response never 'completes' for TestClient)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done()
        await asyncio.sleep(0.02)
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.get("/api/v1/events")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            async with http.stream("GET", "/api/v1/events", headers=auth(tokens["viewer"])) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert await anext(lines) == ": connected"
                sent = services.bus.publish(BroadcastStateChanged(broadcast_id="b1", state=2, name="playing",
                                                                   reason=None))
                seen: list[str] = []
                while not any(s.startswith("data:") for s in seen):
                    line = await anext(lines)
                    if line and not line.startswith(":"):
                        seen.append(line)
                assert "event: broadcast.state" in seen
                data = json.loads(next(s for s in seen if s.startswith("data:")).removeprefix("data: "))
                assert data == {"id": "b1", "state": 2, "name": "playing", "reason": None, "coverage": None,
                                "ts": sent.ts}
                keepalive = ""
                while not keepalive.startswith(": keep-alive"):
                    keepalive = await anext(lines)
                services.stopping.set()  # shutdown ends open streams so the server can stop
                with contextlib.suppress(StopAsyncIteration):
                    while True:
                        await anext(lines)
    finally:
        server.should_exit = True
        await serving


def _wav(seconds: float, rate: int = 16000) -> bytes:
    """A real PCM WAV file: a 440 Hz tone."""
    import io
    import math
    import struct
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return buf.getvalue()


def test_uploaded_recording_can_be_broadcast(client: TestClient, services: ApiServices,
                                             tokens: dict[str, str]):
    clip = _wav(12.0)  # 384 KB: over the JSON body limit, within the recording limit
    assert len(clip) > MAX_BODY_BYTES
    r = client.post("/api/v1/audio", content=clip, headers={**auth(tokens["operator"]),
                                                           "Content-Type": "audio/wav"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["duration_s"] == 12.0 and body["sample_rate"] == 16000 and body["channels"] == 1
    again = client.post("/api/v1/audio", content=clip, headers=auth(tokens["operator"])).json()
    assert again["audio_id"] == body["audio_id"], "the same recording keeps its id"
    assert services.store.list_audit()[0]["action"] == "audio.upload"

    request = {"class": "daily", "targets": {"all": True}, "audio_id": body["audio_id"]}
    r = client.post("/api/v1/broadcasts", json=request, headers=auth(tokens["operator"]))
    assert r.status_code == 202, r.text
    r = client.post("/api/v1/broadcasts", json={**request, "audio_id": "clip-0000"},
                    headers=auth(tokens["operator"]))
    assert "no uploaded audio" in assert_error(r, 422, "audio_id")["error"]


def test_upload_refuses_what_cannot_play(client: TestClient, tokens: dict[str, str]):
    r = client.post("/api/v1/audio", content=b"<script>not audio</script>", headers=auth(tokens["operator"]))
    assert "not a WAV or MP3 file" in assert_error(r, 422, "body")["error"]
    r = client.post("/api/v1/audio", content=_wav(1.0), headers=auth(tokens["viewer"]))
    assert_error(r, 403)


def _mp3(seconds: float, rate: int = 16000) -> bytes:
    """A real MP3 file (soundfile's libsndfile + LAME): a 440 Hz tone."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    samples = 0.25 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)
    sf.write(buf, samples, rate, format="MP3")
    return buf.getvalue()


def test_an_mp3_recording_is_accepted_and_can_be_broadcast(client: TestClient, services: ApiServices,
                                                           tokens: dict[str, str]):
    operator = auth(tokens["operator"])
    clip = _mp3(12.0)
    r = client.post("/api/v1/audio", content=clip, headers={**operator, "Content-Type": "audio/mpeg"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "mp3" and body["sample_rate"] == 16000 and body["channels"] == 1
    assert abs(body["duration_s"] - 12.0) < 0.05 and body["bytes"] == len(clip)
    assert (services.engine.audio_dir / f"{body['audio_id']}.mp3").is_file()
    assert services.store.list_audit()[0]["details"]["format"] == "mp3"
    wav = client.post("/api/v1/audio", content=_wav(1.0), headers={**operator, "Content-Type": "audio/mpeg"})
    assert wav.json()["format"] == "wav", "the content decides, not the Content-Type"
    r = client.post("/api/v1/broadcasts", json={"class": "daily", "targets": {"all": True},
                                                "audio_id": body["audio_id"]}, headers=operator)
    assert r.status_code == 202, r.text
    r = client.post("/api/v1/audio", content=clip[:len(clip) // 2], headers=operator)  # cut mid-upload
    assert "truncated MP3" in assert_error(r, 422, "body")["error"]
    r = client.post("/api/v1/audio", content=b"ID3" + bytes(4000), headers=operator)
    assert "MP3 file could not be read" in assert_error(r, 422, "body")["error"]


def _claim_seconds(clip: bytes, seconds: float, rate: int = 16000) -> bytes:
    """``clip`` with its data chunk's size field rewritten to announce ``seconds`` (16-bit mono)."""
    at = clip.index(b"data") + 4
    return clip[:at] + int(seconds * rate * 2).to_bytes(4, "little") + clip[at + 4:]


def test_upload_refuses_a_wav_whose_header_lies_about_its_length(client: TestClient, services: ApiServices,
                                                                 tokens: dict[str, str]):
    operator = auth(tokens["operator"])
    r = client.post("/api/v1/audio", content=_claim_seconds(_wav(1.0), 120.0), headers=operator)
    err = assert_error(r, 422, "body")
    assert "announces 120.000 s" in err["error"] and "holds 1.000 s" in err["error"]
    r = client.post("/api/v1/audio", content=_wav(2.0)[:-16001], headers=operator)  # cut mid-upload
    assert "truncated WAV" in assert_error(r, 422, "body")["error"]
    assert not list(services.engine.audio_dir.glob("*.wav")), "nothing refused is stored"
    r = client.post("/api/v1/audio", content=_wav(1.0), headers=operator)
    assert r.status_code == 201 and r.json()["duration_s"] == 1.0

