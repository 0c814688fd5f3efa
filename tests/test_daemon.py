"""``ebc run`` as a real subprocess against the simulator: systemd notify, a broadcast end to end,
graceful SIGTERM, and kill -9 in the middle of a broadcast followed by a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
import yaml
from simkit import (
    REPO,
    SimConfig,
    SimProcess,
    free_port,
    make_token,
    running_simulator,
    wait_until,
    write_sim_config,
)

from controller.app import daemon as daemon_module
from controller.app.sd_notify import Notifier
from controller.storage.journal import Store

HANG_GUARD_S = 90.0
"""Only a guard against a hung test, never a performance claim."""


# -- sd_notify over a real datagram socket ---------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket at a short path (sun_path is limited to 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="ebc-n", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(HANG_GUARD_S)
    yield sock, path
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_notifier_sends_ready_watchdog_stopping(notify_socket: tuple[socket.socket, str]):
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_s == 3.0
    assert n.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_notifier_never_blocks_on_a_reader_that_stopped_reading(notify_socket: tuple[socket.socket, str]):
    _, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    results = [n.watchdog() for _ in range(500)]  # far more than the socket queue holds
    assert results[0] and not all(results)  # the overflow is dropped, the caller carries on


def test_notifier_abstract_socket_and_absent_socket():
    name = f"ebc-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(HANG_GUARD_S)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_s is None
    other_pid = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(other_pid).watchdog_s is None
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).ready()  # no crash, just False


# -- the API server's main loop ------------------------------------------------------------------------


async def test_api_server_ticks_rarely_and_stops_at_once(monkeypatch: pytest.MonkeyPatch):
    """uvicorn's own loop wakes ten times a second; the daemon's wakes once per API_TICK_S, refreshes
    the Date header on every tick, and a stop request ends it at once, not at the next tick."""
    monkeypatch.setattr(daemon_module, "API_TICK_S", 3600.0)  # a stop that waited for the tick would hang
    server = daemon_module._Server(uvicorn.Config(app=lambda scope, receive, send: None))
    ticks: list[int] = []

    async def on_tick(counter: int) -> bool:
        ticks.append(counter)
        return server.should_exit

    server.on_tick = on_tick  # type: ignore[method-assign]
    loop = asyncio.create_task(server.main_loop())
    await asyncio.sleep(0.3)
    assert ticks == [0]  # no 0.1 s tick
    server.should_exit = True
    await asyncio.wait_for(loop, HANG_GUARD_S)
    assert len(ticks) == 2 and all(counter % 10 == 0 for counter in ticks)  # each tick refreshes Date


# -- the daemon as a subprocess ------------------------------------------------------------------------


class NotifyListener:
    """Drains the notify socket in a thread, as systemd would (a full socket would drop messages)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while self.sock.fileno() >= 0:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append(message)
                self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.messages)

    def wait_for(self, assignment: str, since: int, log: Any) -> None:
        """Until a message received after ``since`` carries ``assignment``."""
        def seen() -> bool:
            return any(assignment in m.split("\n") for m in self.messages[since:])

        with self._changed:
            if not self._changed.wait_for(seen, HANG_GUARD_S):
                raise AssertionError(f"no {assignment} from the daemon; got {self.messages[since:]}\n{log()}")


class DaemonProcess:
    """``ebc run --config FILE`` with NOTIFY_SOCKET pointing at a socket this test reads."""

    def __init__(self, config: Path, notify: tuple[NotifyListener, str], log_path: Path) -> None:
        self.config, (self.listener, self.notify_path), self.log_path = config, notify, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.since = 0

    def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": self.notify_path,
               "WATCHDOG_USEC": "1000000"}
        self.since = self.listener.mark()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.app.cli", "-v", "run", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env)
        self.wait_for("READY=1")
        return self

    def wait_for(self, assignment: str) -> None:
        self.listener.wait_for(assignment, self.since, self.log)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(HANG_GUARD_S)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG_GUARD_S)

    def ensure_gone(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def township(tmp_path: Path) -> tuple[SimConfig, Path, int]:
    """A simulated township and a daemon config for it (free API port, state under tmp_path)."""
    sim = write_sim_config(tmp_path, rtu_terminals=3, tcp_terminals=1, fm=True, time_scale=10.0)
    data = dict(sim.data)
    port = free_port()
    data.update(state_dir=str(tmp_path / "state"), api={"host": "127.0.0.1", "port": port},
                audio_output={"sink": "sim_line"})
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return sim, sim.path, port


@pytest.fixture
def simulator(township: tuple[SimConfig, Path, int]) -> Iterator[SimProcess]:
    with running_simulator(township[0]) as proc:
        yield proc


@pytest.fixture
def notify(notify_socket: tuple[socket.socket, str]) -> tuple[NotifyListener, str]:
    return NotifyListener(notify_socket[0]), notify_socket[1]


@contextlib.contextmanager
def daemon(config: Path, notify: tuple[NotifyListener, str], log_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(config, notify, log_path)
    try:
        yield proc.start()
    finally:
        proc.ensure_gone()


def terminals_released(sim: SimProcess, ids: list[str]) -> bool:
    for dev in ids:
        coils = sim.state(dev)["coils"]
        if coils["amp_power"] or coils["emergency_override"] or any(
                on for name, on in coils.items() if name.startswith("zone_")):
            return False
    return True


def all_terminals(cfg: SimConfig) -> list[str]:
    return [*cfg.rtu_ids, *cfg.tcp_ids]


DRILL = {"class": "drill", "targets": {"all": True}, "text": "这是一次应急广播系统测试。"}


def test_run_broadcast_and_sigterm(township: tuple[SimConfig, Path, int], simulator: SimProcess,
                                   notify: tuple[NotifyListener, str], tmp_path: Path):
    sim_cfg, config, port = township
    token = make_token(config, "ci-operator", "operator")
    log_path = tmp_path / "daemon.log"
    with daemon(config, notify, log_path) as d:
        d.wait_for("WATCHDOG=1")
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx2.Client(base_url=base, headers=headers, timeout=HANG_GUARD_S) as http:
            assert httpx2.get(f"{base}/devices").status_code == 401  # no token, no access
            r = http.post("/broadcasts", json=DRILL)
            assert r.status_code == 202, r.text
            location = r.json()["location"].removeprefix("/api/v1")

            def finished() -> dict[str, Any] | None:
                b = http.get(location).json()
                return b if b["state"] in ("succeeded", "failed", "cancelled") else None

            result = wait_until("the broadcast to finish", finished, every=0.5)
            assert result["state"] == "succeeded", result
            outcomes = {o["device_id"]: o["outcome"] for o in result["outcomes"]}
            for dev in all_terminals(sim_cfg):
                assert outcomes.get(dev) == "succeeded", result
            assert result["coverage"] == 1.0
            devices = {d["id"]: d for d in http.get("/devices").json()}
            assert all(devices[t]["online"] for t in all_terminals(sim_cfg))
        wait_until("terminals released after the broadcast",
                   lambda: terminals_released(simulator, all_terminals(sim_cfg)))
        assert d.terminate() == 0, d.log()
        d.wait_for("STOPPING=1")
    assert terminals_released(simulator, all_terminals(sim_cfg))
    assert not simulator.state("fm1")["tx"]
    log = d.log()
    assert token not in log and token.removeprefix("ebc_") not in log
    assert "POST /api/v1/broadcasts" in log  # the access log is there, without credentials


def test_sigterm_mid_broadcast_releases_every_terminal(township: tuple[SimConfig, Path, int],
                                                       simulator: SimProcess,
                                                       notify: tuple[NotifyListener, str],
                                                       tmp_path: Path):
    sim_cfg, config, port = township
    token = make_token(config, "ci-operator", "operator")
    with daemon(config, notify, tmp_path / "daemon.log") as d:
        base = f"http://127.0.0.1:{port}/api/v1"
        with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                           timeout=HANG_GUARD_S) as http:
            r = http.post("/broadcasts", json={**DRILL, "repeat": 5, "gap_s": 2})
            assert r.status_code == 202, r.text
            wait_until("amplifiers on", lambda: all(simulator.state(t)["coils"]["amp_power"]
                                                    for t in all_terminals(sim_cfg)))
        assert d.terminate() == 0, d.log()
    assert terminals_released(simulator, all_terminals(sim_cfg))
    assert not simulator.state("fm1")["tx"]


def test_kill9_mid_broadcast_then_restart(township: tuple[SimConfig, Path, int], simulator: SimProcess,
                                          notify: tuple[NotifyListener, str], tmp_path: Path):
    sim_cfg, config, port = township
    token = make_token(config, "ci-operator", "operator")
    admin = make_token(config, "ci-admin", "admin")
    base = f"http://127.0.0.1:{port}/api/v1"
    terminals = all_terminals(sim_cfg)
    with daemon(config, notify, tmp_path / "daemon1.log") as d:
        with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                           timeout=HANG_GUARD_S) as http:
            r = http.post("/broadcasts", json={**DRILL, "repeat": 4, "gap_s": 2})
            assert r.status_code == 202, r.text
            broadcast_id = r.json()["id"]
            wait_until("amplifiers on",
                       lambda: all(simulator.state(t)["coils"]["amp_power"] for t in terminals))
            wait_until("playing",
                       lambda: http.get(f"/broadcasts/{broadcast_id}").json()["state"] == "playing")
        d.kill()
    # The crash left the loudspeakers switched on: that is what the restart must clean up.
    assert all(simulator.state(t)["coils"]["amp_power"] for t in terminals)

    with daemon(config, notify, tmp_path / "daemon2.log") as d:
        with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"},
                           timeout=HANG_GUARD_S) as http:
            def settled() -> dict[str, Any] | None:
                b = http.get(f"/broadcasts/{broadcast_id}").json()
                return b if b["state"] in ("succeeded", "failed", "cancelled") else None

            record = wait_until("the interrupted broadcast to be settled", settled, every=0.5)
            if record["state"] == "failed":
                assert "restart" in (record["reason"] or ""), record
            else:  # the engine's policy may be to resume it; then it must have played out
                assert record["state"] == "succeeded", record
            wait_until("terminals back in a safe state", lambda: terminals_released(simulator, terminals))
            audit = http.get("/audit", params={"limit": 1000}).json()
            created = [a for a in audit if a["action"] == "broadcast.submit"]
            assert [a["target"] for a in created] == [broadcast_id]
            assert created[0]["actor"] == "ci-operator"
        assert d.terminate() == 0, d.log()
    assert terminals_released(simulator, terminals)
    assert not simulator.state("fm1")["tx"]


def test_busy_port_is_a_clear_startup_error(township: tuple[SimConfig, Path, int]):
    _, config, port = township
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = subprocess.run([sys.executable, "-m", "controller.app.cli", "run", "--config", str(config)],
                             cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_token_cli_create_list_revoke(township: tuple[SimConfig, Path, int]):
    _, config, _ = township

    def ebc(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "controller.app.cli", "token", *args, "--config", str(config)]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)

    token = make_token(config, "night-duty", "viewer")
    again = ebc("create", "night-duty", "--role", "admin")
    assert again.returncode == 1 and "already exists" in again.stderr and "ebc_" not in again.stdout
    listed = ebc("list")
    assert "night-duty\tviewer\ttk_" in listed.stdout and token not in listed.stdout
    assert ebc("revoke", "night-duty").returncode == 0
    assert ebc("revoke", "night-duty").returncode == 1
    assert "night-duty" not in ebc("list").stdout
    store = Store.in_state_dir(yaml.safe_load(config.read_text())["state_dir"])
    try:
        actions = [(a["action"], a["target"], a["actor"].startswith("cli:")) for a in store.list_audit()]
        assert actions == [("token.revoke", "night-duty", True), ("token.create", "night-duty", True)]
        assert store.verify_token(token) is None
    finally:
        store.close()
