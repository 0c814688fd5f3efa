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
from controller.config import (
    Config,
    NationalListen,
    NationalPlatformSettings,
    NationalSigning,
    PlatformKey,
    SerialLine,
    UpperPlatform,
)
from controller.core.actors import Actor, Role
from controller.core.redaction import install_redaction

STATUS_EVERY_S = 2.0
STATUS_AT_LEAST_S = 60.0
DEMO_TOKEN_PREFIX = "demo-admin-"
TEST_TEXT = "这是一次应急广播系统测试。"
PLATFORM_EBRID = "43406210000000103010101"
"""The demo county platform (濉溪县应急广播平台, level 4) that the stand-in plays."""
PLATFORM_PORT = 7090
GATEWAY_NATIONAL_PORT = 7080
PLATFORM_TEXT = "濉溪县应急广播平台通知：这是一次经国家应急广播接口下发的演示广播，请勿惊慌。"


def with_demo_platform(cfg: Config) -> tuple[Config, list[str]]:
    """The demo config plus a ``national_platform`` section towards the platform stand-in, with
    fresh SM2 keys for both sides made under the state directory on the first run (never shipped:
    no default credentials); returns it and the stand-in's command line."""
    from controller.uplink.national.signature import SoftwareSm2Signer, generate_keypair

    keys = Path(cfg.state_dir) / "national-demo-keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    pairs = {}
    for who in ("gateway", "platform"):
        private = keys / f"{who}-sm2.key"
        if not private.exists():
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(generate_keypair()[0] + "\n")
        pairs[who] = (private, SoftwareSm2Signer(private.read_text(), "x").public_key_hex)
    settings = NationalPlatformSettings(
        listen=NationalListen(host="127.0.0.1", port=GATEWAY_NATIONAL_PORT, path="/ebd",
                              allow=["127.0.0.1/32"]),
        upper=UpperPlatform(ebrid=PLATFORM_EBRID, url=f"http://127.0.0.1:{PLATFORM_PORT}/ebd",
                            keys=[PlatformKey(cert_sn="PLATFORM-SIM-01", public_key=pairs["platform"][1])]),
        signing=NationalSigning(private_key_file=str(pairs["gateway"][0]), cert_sn="GW-DEMO-01"),
        heartbeat_s=5)
    demo_cfg = cfg.model_copy(update={"national_platform": settings})
    village = next((d for d in cfg.devices if d.village), cfg.devices[0])
    cmd = [sys.executable, "-m", "simulator.platform_sim", "demo", "--ebrid", PLATFORM_EBRID,
           "--key-file", str(pairs["platform"][0]), "--port", str(PLATFORM_PORT),
           "--gateway-url", f"http://127.0.0.1:{GATEWAY_NATIONAL_PORT}/ebd",
           "--gateway-ebrid", cfg.gateway.ebrid or "", "--gateway-public-key", pairs["gateway"][1],
           "--area-code", village.area_code, "--text", PLATFORM_TEXT]
    return demo_cfg, cmd


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


async def run_demo(cfg: Config, *, platform: bool = True) -> None:
    """Start the simulator process and the daemon on it; print how to use it; run until cancelled.

    With ``platform`` (and EBRIDs in the config) the county platform stand-in runs too, and sends
    one broadcast over the national interface once the gateway's heartbeat reaches it.
    """
    if cfg.simulator is None or cfg.path is None:
        raise SystemExit("ebc demo needs a config file with a simulator section")
    install_redaction()
    platform_cmd: list[str] | None = None
    if platform and cfg.national_platform is None and cfg.gateway.ebrid and all(d.ebrid for d in cfg.devices):
        cfg, platform_cmd = with_demo_platform(cfg)  # model_copy keeps the file's path and profiles
    daemon = Daemon(cfg)  # first: a config its parts refuse fails before the simulator runs
    cmd = [sys.executable, "-m", "controller.app.cli", "sim", "--config", str(cfg.path),
           "--exit-on-stdin-eof"]
    # Its own session: Ctrl-C goes to the whole foreground group, and the simulated terminals must
    # outlive the daemon's shutdown so it can switch them off; the simulator is stopped last. Its
    # stdin is a pipe nobody writes to: if this process dies without stopping it (SIGKILL), the
    # kernel closes our end and the simulator stops by itself (simulator/lifeline.py).
    sim = subprocess.Popen(cmd, stdin=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                           start_new_session=True)
    platform_sim: subprocess.Popen[bytes] | None = None
    try:
        await _wait_for_simulator(cfg, sim)
        await daemon.start()
        print(_banner(cfg, _fresh_token(daemon)), flush=True)
        if platform_cmd is not None:
            print("County platform stand-in (national interface, docs/national-platform.md): it will send "
                  "one broadcast to this township once our heartbeat reaches it.\n", flush=True)
            platform_sim = subprocess.Popen(platform_cmd, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                            start_new_session=True)
        await _status(daemon)
    finally:
        if platform_sim is not None:
            platform_sim.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                platform_sim.wait(5)
            if platform_sim.poll() is None:
                platform_sim.kill()
        await asyncio.shield(daemon.stop())
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        if sim.stdin is not None:
            sim.stdin.close()
