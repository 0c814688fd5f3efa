"""A small simulated township with the real daemon, for tests of the API as a client meets it
(raw HTTP, the access log, the event stream, the OpenAPI contract)."""

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
