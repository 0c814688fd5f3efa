"""Shared helpers for tests that need simulated hardware.

The simulator runs as a separate process (``python -m controller.app.cli sim --config FILE``), as real
hardware would, and is reached only over its ptys, sockets and control interface. Other test
modules reuse this: ``write_sim_config`` for a small township, ``SimProcess`` to run it, and
``Daemon`` to run ``ebc run`` against it as a child process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml

from simulator.control import ControlClient

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO / "config" / "profiles"
AREA = "340621105"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (good enough on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SimConfig:
    """A test township written to disk, and where its simulated hardware will be."""

    path: Path
    data: dict[str, Any]
    rtu_link: Path
    fm_link: Path | None
    control_port: int
    audio_port: int
    record_dir: Path
    rtu_ids: list[str] = field(default_factory=list)
    """Device ids on the RTU line; ``rtu_ids[i]`` has unit id i + 1."""
    tcp_ids: list[str] = field(default_factory=list)
    tcp_ports: dict[str, int] = field(default_factory=dict)
    """TCP terminal id → its port (each on its own endpoint, unit id 1)."""
    fm_id: str | None = None
    baudrate: int = 9600
    host: str = "127.0.0.1"


def _device(dev_id: str, i: int, line: str, **extra: Any) -> dict[str, Any]:
    return {"id": dev_id, "name": f"测试终端 {dev_id}", "area_code": f"{AREA}{200 + i:03d}",
            "location": {"lat": 33.9, "lon": 116.8}, "line": line, **extra}


def write_sim_config(tmp_path: Path, *, rtu_terminals: int = 3, tcp_terminals: int = 1, fm: bool = True,
                     baudrate: int = 9600, time_scale: float = 1.0, turnaround_ms: float = 3.0,
                     rtu_framing: str = "strict",
                     devices: dict[str, dict[str, Any]] | None = None,
                     scenarios: list[dict[str, Any]] | None = None) -> SimConfig:
    """Write a small gateway config with a simulator section into ``tmp_path``.

    ``rtu_terminals`` ebt-1 terminals share one pty line (unit ids 1..N, zones 1 and 2),
    ``tcp_terminals`` ebt-1 terminals each get a loopback port, and an ebr-fm1 transmitter has its
    own pty line. Every endpoint is on a free port and every link under ``tmp_path``.
    """
    host = "127.0.0.1"
    rtu_link, fm_link = tmp_path / "dev" / "ttyRS485", tmp_path / "dev" / "ttyFM"
    lines: list[dict[str, Any]] = [
        {"type": "serial", "id": "rs485", "port": str(rtu_link), "baudrate": baudrate,
         "poll_interval_s": 1.0}]  # the tests rely on fast polling (the default is 5 s)
    devs: list[dict[str, Any]] = []
    rtu_ids = [f"rtu{i + 1}" for i in range(rtu_terminals)]
    for i, dev_id in enumerate(rtu_ids):
        devs.append(_device(dev_id, i, "rs485", unit_id=i + 1, profile="ebt-1", zones=[1, 2],
                            commissioned_impedance_ohm={1: 100 + i, 2: 120 + i}))
    tcp_ports: dict[str, int] = {}
    for i in range(tcp_terminals):
        dev_id = f"tcp{i + 1}"
        tcp_ports[dev_id] = free_port(host)
        lines.append({"type": "tcp", "id": f"ip{i + 1}", "host": host, "port": tcp_ports[dev_id],
                      "poll_interval_s": 1.0})
        devs.append(_device(dev_id, 100 + i, f"ip{i + 1}", unit_id=1, profile="ebt-1", zones=[1]))
    if fm:
        lines.append({"type": "serial", "id": "fm", "port": str(fm_link), "baudrate": 9600})
        devs.append(_device("fm1", 199, "fm", profile="ebr-fm1"))
    control_port, audio_port = free_port(host), free_port(host)
    record_dir = tmp_path / "audio"
    data = {
        "gateway": {"id": "gw-test", "name": "测试网关", "area_code": f"{AREA}000",
                    "location": {"lat": 33.9, "lon": 116.8}},
        "profiles_dir": str(PROFILES_DIR),
        "lines": lines,
        "devices": devs,
        "simulator": {
            "control": {"host": host, "port": control_port},
            "audio": {"host": host, "port": audio_port, "sample_rate": 16000, "record_dir": str(record_dir)},
            "time_scale": time_scale,
            "turnaround_ms": turnaround_ms,
            "rtu_framing": rtu_framing,
            "devices": devices or {},
            "scenarios": scenarios or [],
        },
    }
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return SimConfig(path=path, data=data, rtu_link=rtu_link, fm_link=fm_link if fm else None,
                     control_port=control_port, audio_port=audio_port, record_dir=record_dir,
                     rtu_ids=rtu_ids, tcp_ids=list(tcp_ports), tcp_ports=tcp_ports,
                     fm_id="fm1" if fm else None, baudrate=baudrate, host=host)


class SimProcess:
    """``ebc sim --config FILE`` as a child process; ready once control answers and links exist."""

    def __init__(self, config: SimConfig, log_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path or config.path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.control = ControlClient(config.host, config.control_port)

    def start(self, timeout: float = 20.0) -> SimProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.app.cli", "sim", "--config", str(self.config.path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        links = [p for p in (self.config.rtu_link, self.config.fm_link) if p is not None]
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.control.call("ping")["ok"] and all(p.exists() for p in links):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulator not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """A control request that must succeed."""
        return self.control.call(op, **fields)

    def state(self, device: str) -> dict[str, Any]:
        return self.call("state", device=device)["state"]

    def fault(self, fault: str, **fields: Any) -> dict[str, Any]:
        return self.call("fault", fault=fault, **fields)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it does not stop."""
        self.control.close()
        return terminate(self.proc, timeout)


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM (unless it already exited), then SIGKILL if it does not stop within ``timeout``;
    the exit status, or None if never started."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def running_simulator(config: SimConfig) -> Iterator[SimProcess]:
    """Start the simulator for ``config`` and stop it afterwards."""
    sim = SimProcess(config).start()
    try:
        yield sim
    finally:
        sim.stop()


DAEMON_START_GUARD_S = 90.0
"""Only a guard against a hung start or stop, never a performance claim."""


class Daemon:
    """``ebc run --config FILE`` as a child process, ready once ``/api/v1/health`` answers.

    (tests/test_daemon.py runs the daemon its own way: it tests readiness over sd_notify.)
    """

    def __init__(self, config: Path, port: int, log_path: Path, *, verbose: bool = False) -> None:
        self.config, self.port, self.log_path, self.verbose = config, port, log_path, verbose
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        args = [sys.executable, "-m", "controller.app.cli", *(["-v"] if self.verbose else []),
                "run", "--config", str(self.config)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + DAEMON_START_GUARD_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{self.base_url}/api/v1/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon not answering after {DAEMON_START_GUARD_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it hangs; returns the exit status (None if never started)."""
        return terminate(self.proc, DAEMON_START_GUARD_S)


def make_token(config: Path, name: str, role: str) -> str:
    """A bearer token made the way an administrator makes one (``ebc token create``)."""
    out = subprocess.run([sys.executable, "-m", "controller.app.cli", "token", "create", name, "--role", role,
                          "--config", str(config)], cwd=REPO, capture_output=True, text=True, check=True)
    token = out.stdout.strip()
    assert token.startswith("ebc_") and "\n" not in token
    return token


def wait_until(what: str, check: Callable[[], Any], every: float = 0.2,
               guard_s: float = DAEMON_START_GUARD_S) -> Any:
    """``check()``'s first truthy value; fails naming ``what`` after ``guard_s`` (a hang guard)."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")
