"""``ebc county demo``: a county of simulated townships on one machine, watched by the county centre.

It starts a local Mosquitto, N township gateways (each ``ebc sim`` + ``ebc run`` as its own
processes, made from config/demo.yaml with its own township code, ports and state directory, and
the county's public key in its ``county`` section), and the county service with a fresh signing
key and admin token; then it prints how to use the console. The gateways are reached only as
processes and over MQTT, as in the field: nothing of the gateway is imported here.

Keys and tokens are made per run under the demo directory (no default credentials).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from county.commands import keygen
from county.config import load_county_config

REPO = Path(__file__).resolve().parents[1]
DEMO_GATEWAY = REPO / "config" / "demo.yaml"
TOWNSHIPS = [("105", "刘桥镇"), ("106", "百善镇"), ("107", "铁佛镇")]
"""Township codes under 濉溪县 (340621) and their names; the first is config/demo.yaml's own."""
BROKER_PORT = 18830
COUNTY_PORT = 8090
FIRST_GATEWAY_API_PORT = 8081


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _gateway_config(workdir: Path, index: int, code: str, name: str, public_key: str) -> Path:
    """config/demo.yaml moved to township ``code``: ids, area codes, ports and paths of its own."""
    text = DEMO_GATEWAY.read_text(encoding="utf-8").replace("340621105", f"340621{code}")
    text = text.replace("刘桥镇", name).replace("/tmp/ebc-demo", str(workdir / f"gw-{code}"))
    data: dict[str, Any] = yaml.safe_load(text)
    offset = 100 * (index + 1)
    data["profiles_dir"] = str(REPO / "config" / "profiles")
    data["api"] = {"host": "127.0.0.1", "port": FIRST_GATEWAY_API_PORT + index}
    data["mqtt"] = {"brokers": [f"mqtt://127.0.0.1:{BROKER_PORT}"], "health_interval_s": 30}
    data["county"] = {"keys": [{"id": "county-demo", "type": "ed25519", "public_key": public_key}]}
    data["schedules"] = []
    for line in data["lines"]:
        if line["type"] == "tcp":
            line["port"] += offset
    sim = data["simulator"]
    for endpoint in sim.get("endpoints", []):
        if "port" in endpoint:
            endpoint["port"] += offset
    sim["control"]["port"] += offset
    sim["audio"]["port"] += offset
    data.pop("national_platform", None)
    path = workdir / f"gw-{code}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class Processes:
    """Child processes in their own sessions, stopped in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's life
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def run(townships: int, workdir: Path) -> int:
    if not shutil.which("mosquitto"):
        print("ebc county demo needs Mosquitto (apt install mosquitto; ./run.sh county-demo installs it)",
              file=sys.stderr)
        return 1
    ports = (BROKER_PORT, COUNTY_PORT, *range(FIRST_GATEWAY_API_PORT, FIRST_GATEWAY_API_PORT + townships))
    busy = [p for p in ports if not _free(p)]
    if busy:
        print(f"ebc county demo: port(s) {', '.join(map(str, busy))} busy (another demo running?)",
              file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    logs = workdir / "logs"
    logs.mkdir()
    procs = Processes(logs)
    python = sys.executable
    try:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {BROKER_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        procs.start("mosquitto", ["mosquitto", "-c", str(conf)])
        public_key = keygen("ed25519", workdir / "county-ed25519.key")
        gateways = []
        for index, (code, name) in enumerate(TOWNSHIPS[:townships]):
            path = _gateway_config(workdir, index, code, name, public_key)
            procs.start(f"sim-{code}", [python, "-m", "controller.app.cli", "sim", "--config", str(path),
                                        "--exit-on-stdin-eof"])
            time.sleep(1.5)  # the simulator makes its ptys before the gateway opens them
            gw = procs.start(f"gw-{code}", [python, "-m", "controller.app.cli", "run", "--config", str(path)])
            gateways.append((code, name, gw, FIRST_GATEWAY_API_PORT + index))
        county_yaml = workdir / "county.yaml"
        county_yaml.write_text(yaml.safe_dump({
            "county": {"id": "suixi", "name": "濉溪县应急广播中心", "area_code": "340621000000"},
            "mqtt": {"brokers": [f"mqtt://127.0.0.1:{BROKER_PORT}"], "prefix": "ebc"},
            "storage": {"url": "sqlite://county.sqlite3", "retention_days": 30},
            "api": {"host": "127.0.0.1", "port": COUNTY_PORT},
            "signing": {"type": "ed25519", "key_id": "county-demo", "private_key_file": "county-ed25519.key"},
        }, allow_unicode=True), encoding="utf-8")
        load_county_config(county_yaml)  # a config error fails here, with its message
        made = subprocess.run([python, "-m", "county.cli", "token", "create", "demo-admin", "--role",
                               "admin", "--config", str(county_yaml)], cwd=REPO, capture_output=True,
                              text=True, check=True)
        token = made.stdout.strip().splitlines()[-1]
        county = procs.start("county", [python, "-m", "county.cli", "run", "--config", str(county_yaml)])
        _wait_http(f"http://127.0.0.1:{COUNTY_PORT}/api/v1/health", county, "the county service")
        for code, _, gw, port in gateways:
            _wait_http(f"http://127.0.0.1:{port}/api/v1/health", gw, f"gateway gw-340621{code}")
        print(_banner(token, gateways, workdir), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for _, p in procs.children):
                time.sleep(1)
            for name, proc in procs.children:
                if proc.poll() is not None:
                    print(f"{name} stopped (code {proc.returncode}); see {logs / (name + '.log')}",
                          flush=True)
        return 0
    finally:
        procs.stop()


def _banner(token: str, gateways: list[tuple[str, str, Any, int]], workdir: Path) -> str:
    base = f"http://127.0.0.1:{COUNTY_PORT}"
    lines = [f"濉溪县应急广播中心 (county centre) is up with {len(gateways)} simulated townships.",
             f"  County console: {base}/   (log in with the token below)",
             f"  Token:          {token}   (admin, made for this run only)",
             f"  API:            {base}/api/v1/overview"]
    lines += [f"  {name} gateway gw-340621{code}: http://127.0.0.1:{port}/"
              for code, name, _, port in gateways]
    body = ('{"targets":{"area_codes":["340621000000"]},"class":"drill","title":"全县演练",'
            '"text":"这是濉溪县应急广播全县联动演练，请勿惊慌。","confirm":true}')
    lines += ["", "Send one drill to every township and read its county coverage:",
              f"  curl -sS -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
              f"-d '{body}' {base}/api/v1/county-broadcasts",
              f"Logs: {workdir / 'logs'}.  Ctrl-C to stop.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebc county demo", description=__doc__.splitlines()[0])
    parser.add_argument("--townships", type=int, default=2, choices=range(1, len(TOWNSHIPS) + 1),
                        help="how many simulated townships (default 2)")
    parser.add_argument("--workdir", default="/tmp/ebc-county-demo", help="keys, configs, state and logs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: every child is stopped in order
    return run(args.townships, Path(args.workdir))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
