"""``ebc demo``: the simulated township, the whole daemon on it, and a fresh admin token to try it.

The simulator runs as its own process, exactly like real hardware would; the daemon reaches it
only through the serial ptys and TCP ports. Each run makes a new admin token (and revokes the
previous demo ones) and prints one curl line that plays a test announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from controller.app.daemon import Daemon
from controller.broadcast.model import BroadcastState
from controller.config import Config, SerialLine
from controller.core.actors import Actor, Role
from controller.core.redaction import install_redaction

STATUS_EVERY_S = 2.0
STATUS_AT_LEAST_S = 60.0
DEMO_TOKEN_PREFIX = "demo-admin-"
TEST_TEXT = "这是一次应急广播系统测试。"


async def _wait_for_simulator(cfg: Config, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Wait until the simulator's control port answers and every serial link exists."""
    assert cfg.simulator is not None
    links = [Path(line.port) for line in cfg.lines if isinstance(line, SerialLine)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection((cfg.simulator.control.host, cfg.simulator.control.port), 0.5).close()
            if all(link.exists() for link in links):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"simulator did not come up within {timeout_s:.0f} s")


def _fresh_token(daemon: Daemon) -> str:
    """A new admin token for this run; earlier demo tokens stop working."""
    store = daemon.store
    system = Actor.system("ebc demo")
    for info in store.list_tokens():
        if info.name.startswith(DEMO_TOKEN_PREFIX) and store.revoke_token(info.name):
            store.audit(system, "token.revoke", info.name)
    name = DEMO_TOKEN_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    token = store.create_token(name, Role.ADMIN)
    store.audit(system, "token.create", name, {"role": Role.ADMIN.value})
    return token


def _banner(cfg: Config, token: str) -> str:
    base = f"http://{cfg.api.host}:{cfg.api.port}"
    body = '{"class":"drill","targets":{"all":true},"text":"' + TEST_TEXT + '"}'
    header = shlex.quote(f"Authorization: Bearer {token}")
    return "\n".join([
        f"{cfg.gateway.name} ({cfg.gateway.id}) is up on the simulator.",
        f"  Console:  {base}/   (web console: log in with the token below)",
        f"  API:      {base}/api/v1   (OpenAPI: {base}/docs)",
        f"  Token:    {token}   (admin, made for this run only)",
        "",
        "Play a test announcement on every loudspeaker:",
        f"  curl -sS -H {header} -H 'Content-Type: application/json' -d '{body}' {base}/api/v1/broadcasts",
        "See how it went (use the id from the answer):",
        f"  curl -sS -H {header} {base}/api/v1/broadcasts/<id>",
        "Fault injection: docs/simulator.md.  Ctrl-C to stop.",
        "",
    ])


def _status_line(daemon: Daemon) -> str:
    views = daemon.registry.devices.values()
    online = sum(1 for v in views if v.online)
    counts = daemon.store.broadcast_counts()
    last = daemon.store.list_broadcasts(limit=1)
    tail = ""
    if last:
        b = last[0]
        coverage = f" {b['coverage']:.0%}" if b["coverage"] is not None else ""
        tail = f" · last {b['id']} {b['state'].name.lower()}{coverage}"
    return (f"devices online {online}/{len(daemon.registry.devices)}"
            f" · playing {counts[BroadcastState.PLAYING]} · waiting {counts[BroadcastState.WAITING]}{tail}")


async def _status(daemon: Daemon) -> None:
    """One compact line when something changed (and at least once a minute), not a whole board."""
    shown, shown_at = "", 0.0
    while True:
        line = _status_line(daemon)
        if line != shown or time.monotonic() - shown_at > STATUS_AT_LEAST_S:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            shown, shown_at = line, time.monotonic()
        await asyncio.sleep(STATUS_EVERY_S)


async def run_demo(cfg: Config) -> None:
    """Start the simulator process and the daemon on it; print how to use it; run until cancelled."""
    if cfg.simulator is None or cfg.path is None:
        raise SystemExit("ebc demo needs a config file with a simulator section")
    install_redaction()
    daemon = Daemon(cfg)  # first: a config its parts refuse fails before the simulator runs
    cmd = [sys.executable, "-m", "controller.app.cli", "sim", "--config", str(cfg.path),
           "--exit-on-stdin-eof"]
    # Its own session: Ctrl-C goes to the whole foreground group, and the simulated terminals must
    # outlive the daemon's shutdown so it can switch them off; the simulator is stopped last. Its
    # stdin is a pipe nobody writes to: if this process dies without stopping it (SIGKILL), the
    # kernel closes our end and the simulator stops by itself (simulator/lifeline.py).
    sim = subprocess.Popen(cmd, stdin=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                           start_new_session=True)
    try:
        await _wait_for_simulator(cfg, sim)
        await daemon.start()
        print(_banner(cfg, _fresh_token(daemon)), flush=True)
        await _status(daemon)
    finally:
        await asyncio.shield(daemon.stop())
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        if sim.stdin is not None:
            sim.stdin.close()
