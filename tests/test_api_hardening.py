"""The API as the network meets it, on the real daemon: malformed HTTP, connections that never
finish, tokens in URLs and the access log, and an event stream whose token is revoked meanwhile.

What happens below FastAPI (uvicorn's protocol, its access log) only shows with a real server, and
revocation is done as an administrator does it: ``ebc token revoke`` in another process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx2
import pytest
from apikit import Gateway, parse_response, raw_exchange, running_gateway
from simkit import REPO, make_token

from controller.web.console import CONSOLE_CSP, SECURITY_HEADERS

HEADER_TIMEOUT_S = 1.0
KEEPALIVE_S = 1.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    api = {"header_timeout_s": HEADER_TIMEOUT_S, "keepalive_timeout_s": KEEPALIVE_S}
    with running_gateway(tmp_path_factory.mktemp("hardening"), api=api) as gw:
        yield gw


@pytest.fixture(scope="module")
def viewer(gateway: Gateway) -> str:
    return make_token(gateway.sim.path, "viewer-1", "viewer")


def assert_json_error_with_headers(raw: bytes, status: int) -> dict[str, str]:
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    for name, value in {**SECURITY_HEADERS, "Content-Security-Policy": CONSOLE_CSP}.items():
        assert headers[name.lower()] == value
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
    error = json.loads(body)
    assert set(error) == {"error", "field", "details"} and error["error"]
    return error


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\nno colon in this header\r\n\r\n",
    b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\nContent-Length: x\r\n\r\n",
    b"GET /api/v1/he alth HTTP/1.1\r\nHost: gw\r\n\r\n",
])
def test_malformed_http_is_a_json_400_with_the_security_headers(gateway: Gateway, request_bytes: bytes):
    raw, _ = raw_exchange(gateway.daemon.port, request_bytes)
    error = assert_json_error_with_headers(raw, 400)
    assert "malformed HTTP request" in error["error"]


def test_a_request_head_that_never_completes_is_closed_with_408(gateway: Gateway):
    raw, held_s = raw_exchange(gateway.daemon.port, b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\n")
    error = assert_json_error_with_headers(raw, 408)
    assert "headers not received within 1 s" in error["error"]
    assert held_s < 10 * HEADER_TIMEOUT_S  # closed by the server, not by this test's hang guard


def test_a_trickled_request_head_does_not_keep_the_connection(gateway: Gateway):
    """Slowloris: a byte now and then used to stop uvicorn's only timer, forever."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", gateway.daemon.port), timeout=30) as sock:
        started, received = time.monotonic(), b""
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\n")
        sock.settimeout(0.25)
        for byte in b"X-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
                received += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if received:
                break
        held_s = time.monotonic() - started
    assert parse_response(received)[0] == 408
    assert held_s < 10 * HEADER_TIMEOUT_S


def test_a_silent_connection_and_an_idle_keepalive_are_closed(gateway: Gateway):
    raw, held_s = raw_exchange(gateway.daemon.port, b"")
    assert raw == b"" and held_s < 10 * HEADER_TIMEOUT_S
    raw, held_s = raw_exchange(gateway.daemon.port, b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert parse_response(raw)[:1] == (200,) and raw.endswith(b'{"status":"ok"}')
    assert held_s < 10 * KEEPALIVE_S  # the answer came, then the idle connection was closed


def test_tokens_in_urls_never_reach_the_access_log(gateway: Gateway, viewer: str):
    secret = viewer.removeprefix("ebc_")
    encoded = "".join(f"%{b:02X}" for b in b"ebc") + "_" + secret
    targets = [f"/api/v1/devices?token=ebc%5F{secret}", f"/api/v1/devices?t={encoded}",
               f"/api/v1/devices?x=Bearer+{viewer}", f"/api/v1/devices?x=Bearer%20{viewer}",
               f"/api/v1/devices/ebc%5F{secret}"]
    for target in targets:
        raw, _ = raw_exchange(gateway.daemon.port, f"GET {target} HTTP/1.1\r\nHost: gw\r\n"
                                                   "Connection: close\r\n\r\n".encode())
        assert parse_response(raw)[0] == 401  # a token in the URL is never accepted
    log = gateway.log()
    assert log.count("GET /api/v1/devices?token=[REDACTED]") == 1, log[-3000:]
    assert "GET /api/v1/devices?x=[REDACTED]" in log and "GET /api/v1/devices?t=[REDACTED]" in log
    assert secret not in log and secret[:12] not in log and secret[-12:] not in log


def test_revoking_a_token_ends_its_open_event_stream(gateway: Gateway):
    token = make_token(gateway.sim.path, "wall-screen", "viewer")
    lines: list[str] = []
    ended = threading.Event()

    def watch() -> None:
        with httpx2.stream("GET", f"{gateway.base_url}/api/v1/events", timeout=60,
                           headers={"Authorization": f"Bearer {token}"}) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                lines.append(line)
        ended.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    while ": connected" not in lines:
        assert watcher.is_alive(), "the stream did not open"
        ended.wait(0.05)
    assert not ended.wait(3.0), "the stream must stay open while its token is valid"
    subprocess.run([sys.executable, "-m", "controller.app.cli", "token", "revoke", "wall-screen", "--config",
                    str(gateway.sim.path)], cwd=REPO, check=True, capture_output=True)
    assert ended.wait(30), "the stream kept flowing after its token was revoked"
    assert lines[-1] == ": token revoked" or lines[-2:] == [": token revoked", ""]
    r = httpx2.get(f"{gateway.base_url}/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401

