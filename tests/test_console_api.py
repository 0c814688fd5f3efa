"""The console's side of the daemon (controller/web/console.py, controller/api/routers/console.py) with
real parts: a real Store on disk, the real engine (journalling; its playing loop not started), the real
HealthMonitor, MQTT reporter (against a real Mosquitto), CAP inbox and feed pollers, and one real
SpeechService (the espeak-ng worker) for the speech previews.

Checked: the console page and its files are served; every response — page, files, API, errors, 404s,
413, 500 and the SSE stream — carries the strict security headers (/docs its own); a token is read
from the Authorization header only; session, templates, speech preview (roles, limits, a real WAV
from the engine's worker and cache), the recorded audio of a broadcast (path safety) and gateway
health.
"""

from __future__ import annotations

import asyncio
import io
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
import uvicorn
import yaml
from apikit import api_services, assert_error, auth
from mqttkit import Broker
from simkit import free_port, write_sim_config
from starlette.testclient import TestClient

from controller.alerts.feeds import Feeds
from controller.alerts.inbox import AlertService
from controller.api.app import ApiServices, create_app
from controller.config import Config, ConfigError, load_config, parse_config
from controller.core.actors import Actor, Role
from controller.devices.health import HealthMonitor
from controller.speech.tts import SpeechService
from controller.uplink.mqtt import MqttReporter
from controller.uplink.outbox import Outbox
from controller.web.console import CONSOLE_CSP, STATIC_DIR

REPO = Path(__file__).resolve().parent.parent
DRILL = {"class": "drill", "targets": {"all": True}, "text": "这是一次应急广播系统测试。"}
ZH = "暴雨红色预警。请各村组立即做好防范准备。"
EN = "Red rainstorm warning. Move to higher ground now."
TEMPLATES = [
    {"id": "flood", "title": "防汛紧急通知", "class": "emergency", "severity": 2, "repeat": 2,
     "text": "防汛紧急通知：河道水位上涨，沿河群众做好转移准备。"},
    {"id": "weekly-test", "title": "例行测试", "class": "drill", "tone": "chime",
     "text": "这是应急广播系统例行测试，请勿惊慌。"},
    {"id": "drill-en", "title": "Routine test", "class": "drill", "text": "This is a test.",
     "language": "en"},
]
EXPECTED_HEADERS = {
    "content-security-policy": CONSOLE_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def write_config(tmp_path: Path, **sections: Any) -> Path:
    sim = write_sim_config(tmp_path)
    data = {**sim.data, "state_dir": str(tmp_path / "state"), "speech": {"max_chars": 100},
            "broadcast": {"templates": TEMPLATES}, **sections}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return sim.path


def make_services(cfg: Config, speech: SpeechService | None = None, **extra: Any) -> ApiServices:
    """The daemon's wiring minus the started hardware (tests/apikit.py), with the health monitor."""
    services = api_services(cfg, speech=speech, keepalive_s=0.2, **extra)
    assert services.hardware is not None
    services.health = HealthMonitor(cfg, services.bus, services.hardware, services.registry,
                                    engine=services.engine)
    return services


def assert_secured(response: Any) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.request.url)
    assert len(response.headers.get_list("content-security-policy")) == 1


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture
def services(cfg: Config) -> Iterator[ApiServices]:
    services = make_services(cfg)
    yield services
    services.store.close()


@pytest.fixture
def tokens(services: ApiServices) -> dict[str, str]:
    """The console's roles only (conftest.py's has a feed token too, which cannot open the console)."""
    return {role: services.store.create_token(f"{role}-1", Role(role))
            for role in ("viewer", "operator", "admin")}


# -- the console and its headers ---------------------------------------------------------------------


def test_console_page_is_served_never_cached_with_strict_headers(client: TestClient):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert r.text == (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert_secured(r)
    head = client.head("/")  # uptime monitors and curl -I
    assert head.status_code == 200 and head.content == b""
    assert_secured(head)


def test_console_files_are_served_from_the_package_under_ui(client: TestClient):
    r = client.get("/ui/js/app.js")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/javascript")  # module scripts need a JS type
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (STATIC_DIR / "js" / "app.js").read_bytes()
    assert_secured(r)


@pytest.mark.parametrize("path", ["/ui/%2e%2e/web.py", "/ui/..%2Fweb.py", "/ui/nothing-here.js", "/nope",
                                  "/api/v1/nope", "/ui/", "/ui"])
def test_unknown_and_escaping_paths_are_404_with_headers(client: TestClient, path: str):
    r = client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert "import" not in r.text  # no source of controller/ leaked
    assert_secured(r)


def test_api_answers_and_errors_carry_the_headers(client: TestClient, tokens: dict[str, str]):
    ok = client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
    unauthorised = client.get("/api/v1/devices")
    forbidden = client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["viewer"]))
    too_large = client.post("/api/v1/broadcasts", content=b"x" * (300 * 1024),
                            headers=auth(tokens["operator"]))
    invalid = client.post("/api/v1/broadcasts", json={"class": "nope"}, headers=auth(tokens["operator"]))
    assert [r.status_code for r in (unauthorised, forbidden, too_large, invalid)] == [401, 403, 413, 422]
    for r in (ok, unauthorised, forbidden, too_large, invalid, client.get("/api/v1/health")):
        assert_secured(r)


def test_a_crash_answer_carries_the_headers_too(services: ApiServices):
    app = create_app(services)

    @app.get("/api/v1/test-crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/v1/test-crash")
    assert_error(r, 500)
    assert "boom" not in r.text
    assert_secured(r)


def test_routes_cannot_weaken_the_policy(services: ApiServices):
    """A header a route sets under the same name is replaced, not sent twice."""
    app = create_app(services)

    @app.get("/api/v1/test-weak")
    async def weak() -> Any:
        from fastapi.responses import PlainTextResponse
        return PlainTextResponse("x", headers={"Content-Security-Policy": "default-src *",
                                               "X-Frame-Options": "ALLOWALL"})

    with TestClient(app) as c:
        assert_secured(c.get("/api/v1/test-weak"))


def test_api_docs_have_their_own_policy_and_the_spec_the_strict_one(client: TestClient):
    docs = client.get("/docs")
    assert docs.status_code == 200
    csp = docs.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in csp and "frame-ancestors 'none'" in csp
    assert docs.headers["x-frame-options"] == "DENY"
    spec = client.get("/openapi.json")
    assert_secured(spec)
    paths = spec.json()["paths"]
    for path in ("/api/v1/session", "/api/v1/templates", "/api/v1/speech/preview",
                 "/api/v1/broadcasts/{broadcast_id}/audio", "/api/v1/gateway"):
        assert path in paths
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


async def test_event_stream_carries_the_headers(services: ApiServices, tokens: dict[str, str]):
    """SSE needs a real server (a streaming response never 'completes' for TestClient)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port,
                                           log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done()
        await asyncio.sleep(0.02)
    try:
        async with (httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
                    http.stream("GET", "/api/v1/events", headers=auth(tokens["viewer"])) as stream):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-cache"
            assert_secured(stream)
            assert await anext(stream.aiter_lines()) == ": connected"
    finally:
        services.stopping.set()
        server.should_exit = True
        await serving


# -- tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["token={t}", "access_token={t}", "authorization=Bearer%20{t}",
                                   "bearer={t}", "api_key={t}"])
def test_a_token_in_the_query_string_is_never_accepted(client: TestClient, tokens: dict[str, str],
                                                       query: str):
    r = client.get("/api/v1/session?" + query.format(t=tokens["admin"]))
    assert_error(r, 401)
    assert tokens["admin"] not in r.text


def test_a_token_in_a_cookie_is_not_accepted(client: TestClient, tokens: dict[str, str]):
    client.cookies.set("Authorization", f"Bearer {tokens['admin']}")
    client.cookies.set("token", tokens["admin"])
    assert_error(client.get("/api/v1/session"), 401)


def test_the_auth_dependency_reads_only_the_header():
    """No code path reads a token from the URL: the only source is request.headers['authorization']."""
    source = (REPO / "controller" / "api" / "auth.py").read_text(encoding="utf-8")
    assert "query_params" not in source and "cookies" not in source
    modules = [*(REPO / "controller" / "api").rglob("*.py"), REPO / "controller" / "web" / "console.py"]
    for module in modules:
        text = module.read_text(encoding="utf-8")
        assert "query_params" not in text and "request.cookies" not in text, module


# -- session and templates ----------------------------------------------------------------------------


def test_session_says_who_the_token_is(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    known = {t.name: t.id for t in services.store.list_tokens()}
    for role, token in tokens.items():
        r = client.get("/api/v1/session", headers=auth(token))
        assert r.status_code == 200
        assert r.json() == {"name": f"{role}-1", "role": role, "token_id": known[f"{role}-1"],
                            "timezone": "Asia/Shanghai"}  # the gateway's: the console shows times in it
        assert token not in r.text
    assert_error(client.get("/api/v1/session"), 401)


def test_templates_come_from_the_config_with_the_tone_that_will_play(client: TestClient,
                                                                   tokens: dict[str, str]):
    r = client.get("/api/v1/templates", headers=auth(tokens["viewer"]))
    assert r.status_code == 200
    assert r.json() == [
        {"id": "flood", "title": "防汛紧急通知", "class": "emergency", "severity": 2, "tone": "siren",
         "repeat": 2, "text": TEMPLATES[0]["text"], "language": "zh"},
        {"id": "weekly-test", "title": "例行测试", "class": "drill", "severity": None, "tone": "chime",
         "repeat": 1, "text": TEMPLATES[1]["text"], "language": "zh"},
        {"id": "drill-en", "title": "Routine test", "class": "drill", "severity": None, "tone": "chime",
         "repeat": 1, "text": "This is a test.", "language": "en"},
    ]
    assert_error(client.get("/api/v1/templates"), 401)


def test_a_template_plus_targets_is_a_broadcast_the_api_accepts(client: TestClient, tokens: dict[str, str]):
    template = client.get("/api/v1/templates", headers=auth(tokens["viewer"])).json()[0]
    body = {k: template[k] for k in ("class", "severity", "tone", "repeat", "text", "language")}
    body |= {"title": template["title"], "targets": {"devices": ["rtu1", "tcp1"]}}
    r = client.post("/api/v1/broadcasts", json=body, headers=auth(tokens["operator"]))
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(("template", "error"), [
    ({"id": "x", "title": "t", "class": "emergency", "text": "t"},
     "broadcast.templates[0](x): severity (1-4) is required for an emergency broadcast"),
    ({"id": "x", "title": "t", "class": "daily", "severity": 2, "text": "t"},
     "broadcast.templates[0](x): severity applies to emergency broadcasts only"),
    ({"id": "x", "title": "t", "class": "drill", "text": "   "},
     "broadcast.templates[0](x).text: text has nothing"),
    ({"id": "x", "title": "t", "class": "drill", "text": "\u200b\u3000"},
     "broadcast.templates[0](x).text: text has nothing to speak"),
    ({"id": "x", "title": "t", "class": "drill", "text": "t", "targets": {"all": True}},
     "broadcast.templates[0](x).targets: unknown key"),
    ({"id": "x", "title": "t", "class": "drill", "text": "t", "tone": "horn"},
     "broadcast.templates[0](x).tone"),
    ({"id": "x", "title": "t", "class": "drill", "text": "长" * 101},
     "broadcast.templates[0](x).text: 101 characters; speech.max_chars allows 100"),
    ({"id": "X Y", "title": "t", "class": "drill", "text": "t"}, "broadcast.templates[0](X Y).id"),
])
def test_bad_templates_are_config_errors_that_name_the_key(tmp_path: Path, template: dict[str, Any],
                                                           error: str):
    data = yaml.safe_load(write_config(tmp_path).read_text(encoding="utf-8"))
    data["broadcast"]["templates"] = [template]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml", tmp_path)
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


def test_duplicate_template_ids_are_a_config_error(tmp_path: Path):
    data = yaml.safe_load(write_config(tmp_path).read_text(encoding="utf-8"))
    data["broadcast"]["templates"] = [TEMPLATES[0], TEMPLATES[0]]
    with pytest.raises(ConfigError, match="duplicate template id 'flood'"):
        parse_config(data, "gw.yaml", tmp_path)


def test_the_demo_township_offers_realistic_templates():
    cfg = load_config(REPO / "config" / "demo.yaml")
    templates = cfg.broadcast.templates
    assert 4 <= len(templates) <= 6
    titles = " ".join(t.title for t in templates)
    for topic in ("暴雨红色预警", "防汛", "地质灾害", "森林防火", "例行测试"):
        assert topic in titles
    assert all(t.language == "zh" and len(t.text) <= cfg.speech.max_chars for t in templates)
    assert {t.broadcast_class.value for t in templates} >= {"emergency", "drill"}


def test_devices_carry_location_and_zones_for_the_board(client: TestClient, tokens: dict[str, str]):
    devices = {d["id"]: d for d in client.get("/api/v1/devices", headers=auth(tokens["viewer"])).json()}
    assert devices["rtu1"]["location"] == {"lat": 33.9, "lon": 116.8}
    assert devices["rtu1"]["zones"] == [1, 2] and devices["tcp1"]["zones"] == [1]
    assert devices["fm1"]["zones"] == [] and devices["fm1"]["kind"] == "fm_transmitter"


# -- speech preview: roles and limits (no synthesis needed) ----------------------------------------------


def test_speech_preview_needs_the_operator_role(client: TestClient, tokens: dict[str, str]):
    assert_error(client.post("/api/v1/speech/preview", json={"text": ZH}), 401)
    body = assert_error(client.post("/api/v1/speech/preview", json={"text": ZH},
                                    headers=auth(tokens["viewer"])), 403)
    assert "operator" in body["error"]


def test_speech_preview_without_a_speech_service_is_503(client: TestClient, tokens: dict[str, str]):
    r = client.post("/api/v1/speech/preview", json={"text": ZH}, headers=auth(tokens["operator"]))
    assert_error(r, 503)
    assert_secured(r)


@pytest.mark.parametrize(("body", "field"), [
    ({"text": ""}, "text"),
    ({"text": "  \n "}, "text"),
    ({"text": "\x00\u200b\u3000\ufeff"}, "text"),
    ({"text": "长" * 101}, "text"),        # over speech.max_chars (100 here): the engine would refuse it
    ({"text": "长" * 2001}, "text"),       # over what any broadcast request may carry
    ({}, "text"),
    ({"text": ZH, "language": "fr"}, "language"),
    ({"text": ZH, "voice": "cmn"}, "voice"),
])
def test_speech_preview_refuses_bad_text_naming_the_field(cfg: Config, tokens: dict[str, str],
                                                          body: dict[str, Any], field: str):
    unstarted = SpeechService(Path(cfg.state_dir) / "speech-cache", cfg.speech.rate_wpm, cfg.speech.max_chars)
    services = make_services(cfg, speech=unstarted)
    try:
        tokens = {"operator": services.store.create_token("op-2", Role.OPERATOR)}
        with TestClient(create_app(services)) as c:
            r = c.post("/api/v1/speech/preview", json=body, headers=auth(tokens["operator"]))
        assert_error(r, 422, field)
        assert unstarted.worker_pid is None  # refused before anything reached a speech worker
    finally:
        services.store.close()


# -- speech preview with the real engine worker (one module-scoped service) ------------------------------


@pytest.fixture(scope="module")
def speech_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(write_config(tmp_path_factory.mktemp("speech-gw")))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech(speech_config: Config) -> AsyncIterator[SpeechService]:
    cfg = speech_config
    service = SpeechService(Path(cfg.state_dir) / "speech-cache", cfg.speech.rate_wpm, cfg.speech.max_chars)
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def speech_api(speech_config: Config, speech: SpeechService) -> AsyncIterator[tuple[httpx2.AsyncClient,
                                                                                         ApiServices]]:
    """The app in the speech service's own event loop, as in the daemon (one loop for both)."""
    services = make_services(speech_config, speech=speech)
    transport = httpx2.ASGITransport(app=create_app(services))
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http, services
    finally:
        services.store.close()


def wav_of(data: bytes) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) of a WAV file's bytes."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getframerate(), wav.getnchannels(), wav.getnframes() / wav.getframerate()


@pytest.mark.asyncio(loop_scope="module")
async def test_speech_preview_is_the_engines_speech_from_the_same_worker_and_cache(
        speech_api: tuple[httpx2.AsyncClient, ApiServices], speech: SpeechService):
    http, services = speech_api
    operator = services.store.create_token("duty-1", Role.OPERATOR)
    worker = speech.worker_pid
    assert worker is not None
    r = await http.post("/api/v1/speech/preview", json={"text": ZH, "language": "zh"}, headers=auth(operator))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["cache-control"] == "no-store"
    assert_secured(r)
    rate, channels, seconds = wav_of(r.content)
    assert (rate, channels) == (22050, 1) and seconds > 2.0  # ~19 characters of Mandarin
    assert float(r.headers["x-audio-seconds"]) == pytest.approx(seconds, abs=0.01)
    # What a broadcast of this text would play: the engine's cache file, made by the same worker.
    assert r.content == speech.cache_path(ZH, "zh").read_bytes()
    assert speech.worker_pid == worker and speech.restarts == 0
    assert "pyttsx3" not in sys.modules  # no second engine in the API's process
    # Asked again (or broadcast after the preview): served from the cache, not synthesised again.
    last = speech.last_synthesis
    again = await http.post("/api/v1/speech/preview", json={"text": ZH}, headers=auth(operator))
    assert again.content == r.content and speech.last_synthesis is last


@pytest.mark.asyncio(loop_scope="module")
async def test_speech_previews_in_english_and_several_at_once(
        speech_api: tuple[httpx2.AsyncClient, ApiServices], speech: SpeechService):
    http, services = speech_api
    operator = services.store.create_token("duty-2", Role.OPERATOR)
    texts = [EN, "Second preview. The river is rising.", "Third preview. Stay indoors."]
    answers = await asyncio.gather(*(http.post("/api/v1/speech/preview", json={"text": t, "language": "en"},
                                               headers=auth(operator)) for t in texts))
    for text, r in zip(texts, answers, strict=True):
        assert r.status_code == 200, r.text
        assert r.content == speech.cache_path(text, "en").read_bytes()
        assert wav_of(r.content)[2] > 1.0


# -- recorded audio of a broadcast --------------------------------------------------------------------------


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x10\x00" * int(seconds * rate))
    return path.read_bytes()


def test_recorded_audio_of_a_broadcast(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    created = client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"]))
    bid = created.json()["id"]
    path = f"/api/v1/broadcasts/{bid}/audio"
    assert_error(client.get(path), 401)
    body = assert_error(client.get(path, headers=auth(tokens["viewer"])), 404)
    assert "no recorded audio" in body["error"]
    evidence = services.engine.evidence_dir / f"{bid}.wav"  # what the player writes as it plays
    data = write_wav(evidence)
    r = client.get(path, headers=auth(tokens["viewer"]))
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert r.content == data
    assert_secured(r)


@pytest.mark.parametrize("bid", ["%2e%2e", ".hidden", "a.b", "x" * 65, "%00", "a%20b"])
def test_recorded_audio_ids_cannot_name_other_files(client: TestClient, services: ApiServices,
                                                    tokens: dict[str, str], bid: str):
    write_wav(services.engine.evidence_dir / "keep.wav")
    write_wav(services.engine.evidence_dir.parent / "secret.wav")
    r = client.get(f"/api/v1/broadcasts/{bid}/audio", headers=auth(tokens["viewer"]))
    assert_error(r, 404)


@pytest.mark.parametrize("path", ["/api/v1/broadcasts/..%2Fsecret/audio",
                                  "/api/v1/broadcasts/%2E%2E%2F%2E%2E%2Fstate%2Fsecret/audio",
                                  "/api/v1/broadcasts/../secret/audio"])
def test_recorded_audio_paths_with_slashes_do_not_route(client: TestClient, services: ApiServices,
                                                        tokens: dict[str, str], path: str):
    write_wav(services.engine.evidence_dir.parent / "secret.wav")
    r = client.get(path, headers=auth(tokens["viewer"]))
    assert r.status_code in (404, 405) and r.headers["content-type"].startswith("application/json")
    assert_secured(r)


def test_recorded_audio_is_never_read_through_a_link(client: TestClient, services: ApiServices,
                                                     tokens: dict[str, str], tmp_path: Path):
    bid = client.post("/api/v1/broadcasts", json=DRILL, headers=auth(tokens["operator"])).json()["id"]
    write_wav(tmp_path / "outside.wav")
    services.engine.evidence_dir.mkdir(parents=True, exist_ok=True)
    (services.engine.evidence_dir / f"{bid}.wav").symlink_to(tmp_path / "outside.wav")
    assert_error(client.get(f"/api/v1/broadcasts/{bid}/audio", headers=auth(tokens["viewer"])), 404)


def test_recorded_audio_of_an_unknown_broadcast_is_404(client: TestClient, services: ApiServices,
                                                       tokens: dict[str, str]):
    write_wav(services.engine.evidence_dir / "20260101-000000-abcdef.wav")  # a file, but no such broadcast
    r = client.get("/api/v1/broadcasts/20260101-000000-abcdef/audio", headers=auth(tokens["viewer"]))
    assert "no broadcast" in assert_error(r, 404)["error"]


# -- gateway health ------------------------------------------------------------------------------------------


def test_gateway_health_without_uplink(client: TestClient, cfg: Config, tokens: dict[str, str]):
    r = client.get("/api/v1/gateway", headers=auth(tokens["viewer"]))
    assert r.status_code == 200
    body = r.json()
    assert body["gateway"] == {"id": "gw-test", "name": "测试网关", "area_code": cfg.gateway.area_code,
                               "location": {"lat": 33.9, "lon": 116.8}, "timezone": "Asia/Shanghai"}
    assert body["mqtt"] == {"enabled": False, "connected": False, "broker": None}
    assert body["devices"]["total"] == len(cfg.devices)
    assert body["engine"] == {"current": None, "queue_depth": 0}
    for key in ("ts", "lines", "faults"):
        assert key in body
    assert "feeds" not in body and "alerts" not in body and "speech" not in body
    assert_error(client.get("/api/v1/gateway"), 401)


def cap_document(area_code: str) -> str:
    now = datetime.now(UTC).replace(microsecond=0)
    sent, expires = now.isoformat(), (now + timedelta(hours=2)).isoformat()
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>TEST-CONSOLE-{now:%Y%m%d%H%M%S}</identifier>
  <sender>sxqxt@ahqx.gov.cn</sender>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <expires>{expires}</expires>
    <senderName>濉溪县气象台</senderName>
    <headline>濉溪县气象台发布暴雨橙色预警信号</headline>
    <description>未来三小时内将出现五十毫米以上降雨。</description>
    <area>
      <areaDesc>刘桥镇</areaDesc>
      <geocode><valueName>行政区划代码</valueName><value>{area_code}</value></geocode>
    </area>
  </info>
</alert>
"""


async def test_gateway_health_with_uplink_feeds_and_pending_alerts(tmp_path: Path):
    """Everything the gateway view shows, from the real parts: a reporter connected to a real broker,
    the CAP feed pollers and an alert waiting for the duty officer."""
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "cap-inbox").mkdir()
    cfg = load_config(write_config(
        tmp_path, mqtt={"brokers": [broker.url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        alerts={"default_action": "approve",
                "feeds": [{"id": "local", "type": "directory", "path": str(tmp_path / "cap-inbox")}]}))
    services = make_services(cfg)
    outbox = Outbox.in_state_dir(cfg.state_dir)
    reporter = MqttReporter(cfg, services.bus, outbox, services.registry)
    alerts = AlertService(cfg, services.store, services.engine, services.bus)

    async def ingest(document: bytes, source: str, level: str) -> Any:  # as the daemon wires the feeds
        return await alerts.ingest(document, source=source, actor=Actor(name="feed:local", via="cap"),
                                   source_level=level)

    services.mqtt, services.feeds, services.alerts = reporter, Feeds(cfg.alerts, tmp_path, ingest), alerts
    try:
        await reporter.start()
        record = await alerts.ingest(cap_document(cfg.gateway.area_code), source="test",
                                     actor=Actor(name="feed:test", via="cap"))
        assert record["disposition"] == "pending", record
        viewer = services.store.create_token("viewer-1", Role.VIEWER)
        deadline = asyncio.get_running_loop().time() + 30  # a guard against a hang, not a timing claim
        while not reporter.connected:
            assert asyncio.get_running_loop().time() < deadline, "reporter never connected"
            await asyncio.sleep(0.05)
        transport = httpx2.ASGITransport(app=create_app(services))
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
            body = (await http.get("/api/v1/gateway", headers=auth(viewer))).json()
        assert body["mqtt"] == {"enabled": True, "connected": True, "broker": broker.url}
        assert [f["id"] for f in body["feeds"]] == ["local"]
        assert body["alerts"] == {"pending": 1}
    finally:
        await reporter.stop()
        outbox.close()
        services.store.close()
        broker.stop()
