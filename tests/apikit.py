"""Helpers for the API tests: the API's services built in-process (real store and engine, no hardware
started), its request and error helpers, and a small simulated township with the real daemon for
tests of the API as a client meets it (raw HTTP, the access log, the event stream, the OpenAPI
contract). The ``client`` and ``tokens`` fixtures over a module's ``services`` are in conftest.py."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from simkit import Daemon, SimConfig, free_port, running_simulator, write_sim_config

from controller.api.deps import ApiServices
from controller.broadcast.engine import BroadcastEngine
from controller.config import Config
from controller.core.events import EventBus
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import SpeechService
from controller.storage.journal import Store


def api_services(cfg: Config, *, speech: SpeechService | None = None, **extra: Any) -> ApiServices:
    """The daemon's wiring minus the started parts: a real store, registry and engine (its playing
    loop not started, no line opened). The engine speaks with ``speech`` if given (then the console's
    previews use it too), else with its own SpeechService that is never started (it only checks
    lengths). Whoever builds it closes ``services.store``."""
    store = Store.in_state_dir(cfg.state_dir)
    bus = EventBus()
    registry = DeviceRegistry(cfg, bus)
    hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)  # never started: no lines opened
    engine_speech = speech or SpeechService(Path(cfg.state_dir) / "speech-cache", cfg.speech.rate_wpm,
                                            cfg.speech.max_chars)
    engine = BroadcastEngine(cfg, hardware, store, engine_speech, None, bus, registry)
    return ApiServices(cfg=cfg, store=store, engine=engine, registry=registry, bus=bus, hardware=hardware,
                       speech=speech, **extra)


def auth(token: str, **extra: str) -> dict[str, str]:
    """Request headers with the bearer token (and ``extra`` ones, e.g. a Content-Type)."""
    return {"Authorization": f"Bearer {token}", **extra}


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """``response`` is the API's error answer: ``status``, the JSON error shape, ``field``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "field", "details"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["field"] == field
    return body


@dataclass
class Gateway:
    """The daemon and its simulated township; ``log()`` is the daemon's own log so far."""

    sim: SimConfig
    daemon: Daemon

    @property
    def base_url(self) -> str:
        return self.daemon.base_url

    def log(self) -> str:
        return self.daemon.log()


@contextlib.contextmanager
def running_gateway(tmp: Path, *, api: dict[str, Any] | None = None, rtu_terminals: int = 2,
                    **sections: Any) -> Iterator[Gateway]:
    """Simulator + ``ebc run`` on a township of ``rtu_terminals`` terminals (no TCP terminal, no FM)
    whose programs play 20 times faster than real time, so broadcasts end soon."""
    sim = write_sim_config(tmp, rtu_terminals=rtu_terminals, tcp_terminals=0, fm=False, time_scale=10.0)
    port = free_port()
    sim.data.update(state_dir=str(tmp / "state"), api={"host": "127.0.0.1", "port": port, **(api or {})},
                    audio_output={"sink": "sim_line", "time_scale": 20.0}, **sections)
    sim.path.write_text(yaml.safe_dump(sim.data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    with running_simulator(sim):
        daemon = Daemon(sim.path, port, tmp / "daemon.log").start()
        try:
            yield Gateway(sim, daemon)
        finally:
            daemon.stop()


def raw_exchange(port: int, data: bytes, *, guard_s: float = 30.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it; what came back and
    how long the server kept the connection open (``guard_s`` only guards against a hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=guard_s) as sock:
        started = time.monotonic()
        if data:
            sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
