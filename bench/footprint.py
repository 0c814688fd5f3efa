"""Footprint: the daemon's memory (RSS) and idle CPU with 64 simulated terminals.

The township: 4 RS-485 lines × 16 ebt-1 terminals at 9600 baud (a township gateway's usual shape:
one line per direction out of the town centre), plus the FM transmitter on its own serial line.
The simulator (``ebc sim``) and the real daemon (``ebc run``) run as two processes; nothing is
broadcast, so "idle" means what a gateway does all day: health-polling every terminal (merged
reads at the wire's pace), FM status queries, the API listening, the speech worker warm.

After start-up has settled (``--settle``, default 20 s) the script samples for ``--seconds``
(default 60) and prints, from psutil (/proc):
  - the DAEMON process alone: RSS (MB) at the end and its peak (VmHWM), and CPU as % of one core
    over the window (user + system time / wall time);
  - the daemon's wake-ups per second (voluntary context switches, summed over its threads), its
    CPU per thread and the machine's load average: on a virtual machine a wake-up after a few
    milliseconds of idleness costs several times what the same work costs on a warm CPU, so the
    wake-up count is the stable figure and the CPU share depends on how idle the machine is;
  - the daemon's children (the speech worker) separately, and the simulator for reference;
  - the Modbus transactions per second the daemon sent in the window (from /metrics), so a CPU
    figure can be read as "per transaction".
Targets (issue 4): RSS ≤ 80 MB, idle CPU ≤ 1 % of a core — figures, not assertions.

Run: .venv/bin/python bench/footprint.py [--seconds 60] [--settle 20] [--poll-interval 5.0]
     [--line-check-interval 90] [--lines 4 --per-line 16] [--profile]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same simulator harness the tests use

from simkit import AREA, PROFILES_DIR, SimConfig, free_port, running_simulator  # noqa: E402

GUARD_S = 120.0
"""Only a guard against a hung start, never a performance claim."""
MB = 1024 * 1024


def township(workdir: Path, lines: int, per_line: int, baud: int, poll_interval_s: float,
             line_check_interval_s: float) -> tuple[SimConfig, int]:
    """Write the config for simulator and daemon alike; returns it and the API port."""
    host = "127.0.0.1"
    line_cfgs: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    links = [workdir / "dev" / f"ttyRS485-{n + 1}" for n in range(lines)]
    for n, link in enumerate(links):
        line_id = f"rs485-{n + 1}"
        line_cfgs.append({"type": "serial", "id": line_id, "port": str(link), "baudrate": baud,
                          "poll_interval_s": poll_interval_s})
        for u in range(1, per_line + 1):
            i = n * per_line + u
            devices.append({"id": f"t{i:02d}", "name": f"终端 {i}", "area_code": f"{AREA}{200 + i:03d}",
                            "location": {"lat": 33.9, "lon": 116.8}, "line": line_id, "unit_id": u,
                            "profile": "ebt-1", "zones": [1, 2],
                            "commissioned_impedance_ohm": {1: 90 + i % 30, 2: 100 + i % 30}})
    fm_link = workdir / "dev" / "ttyFM"
    line_cfgs.append({"type": "serial", "id": "fm", "port": str(fm_link), "baudrate": 9600})
    devices.append({"id": "fm1", "name": "调频发射机", "area_code": f"{AREA}000",
                    "location": {"lat": 33.9, "lon": 116.8}, "line": "fm", "profile": "ebr-fm1"})
    control, audio, api = free_port(host), free_port(host), free_port(host)
    data = {
        "gateway": {"id": "gw-bench", "name": "基准网关", "area_code": f"{AREA}000",
                    "location": {"lat": 33.9, "lon": 116.8}},
        "profiles_dir": str(PROFILES_DIR),
        "state_dir": str(workdir / "state"),
        "api": {"host": host, "port": api},
        "audio_output": {"sink": "sim_line"},
        "health": {"line_check_interval_s": line_check_interval_s},
        "lines": line_cfgs,
        "devices": devices,
        "simulator": {"control": {"host": host, "port": control},
                      "audio": {"host": host, "port": audio, "sample_rate": 16000,
                                "record_dir": str(workdir / "audio")}},
    }
    path = workdir / "township.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sim = SimConfig(path=path, data=data, rtu_link=links[0], fm_link=fm_link, control_port=control,
                    audio_port=audio, record_dir=workdir / "audio", baudrate=baud, host=host)
    return sim, api


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) from /proc/<pid>/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1024 if match else None


def wakeups(pid: int) -> int:
    """Voluntary context switches so far, summed over every thread of ``pid`` (each one is a
    wake-up after sleeping: the daemon's idle CPU is mostly their cost)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        match = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M)
        total += int(match.group(1)) if match else 0
    return total


def thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds so far per thread of ``proc``, by thread name (``/proc/<pid>/task/<tid>/comm``)."""
    result: dict[str, float] = {}
    for t in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue
        result[f"{name} ({t.id})"] = t.user_time + t.system_time
    return result


def line_requests(http: httpx2.Client) -> dict[str, float]:
    """``ebc_line_requests_total`` per line from the daemon's /metrics."""
    text = http.get("/api/v1/metrics").text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^ebc_line_requests_total\{line="([^"]+)"\} (\S+)$', text, re.M)}


def profile(pid: int, seconds: float, out: Path, top: int = 25) -> None:
    """Sample the daemon with py-spy (after the measured window) and print where its CPU goes.

    Counts samples per function, inclusive (a function counts once per stack it appears in); py-spy
    leaves out threads that are idle (waiting in epoll, on a lock), so these are shares of CPU used.
    """
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                    "--format", "raw", "--nonblocking", "-o", str(out)], check=True, capture_output=True)
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        names = [re.sub(r":\d+\)", ")", f) for f in frames]
        for frame in dict.fromkeys(names):
            inclusive[frame] = inclusive.get(frame, 0) + n
        leaf[names[-1]] = leaf.get(names[-1], 0) + n
    print(f"\npy-spy, {total} busy samples at 200 Hz over {seconds:g} s; inclusive share of busy time:")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {n / max(total, 1) * 100:5.1f} %  {frame}")
    print("self (innermost frame):")
    for frame, n in sorted(leaf.items(), key=lambda kv: -kv[1])[:top // 2]:
        print(f"  {n / max(total, 1) * 100:5.1f} %  {frame}")


def wait_api(http: httpx2.Client, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if http.get("/api/v1/health").status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("daemon API did not come up")


def measure(args: argparse.Namespace, workdir: Path) -> None:
    sim_cfg, api_port = township(workdir, args.lines, args.per_line, args.baud, args.poll_interval,
                                 args.line_check_interval)
    config = sim_cfg.path
    token = subprocess.run([sys.executable, "-m", "controller.app.cli", "token", "create", "bench", "--role",
                            "viewer", "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    log = workdir / "daemon.log"
    with running_simulator(sim_cfg) as sim, open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "controller.app.cli", "run", "--config",
                                   str(config)],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            with httpx2.Client(base_url=f"http://127.0.0.1:{api_port}",
                               headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as http:
                wait_api(http, daemon, log)
                print(f"daemon up (pid {daemon.pid}); settling {args.settle:g} s ...", flush=True)
                time.sleep(args.settle)
                d = psutil.Process(daemon.pid)
                s = psutil.Process(sim.proc.pid) if sim.proc is not None else None
                children = d.children(recursive=True)
                t0 = time.monotonic()
                c0 = {p.pid: cpu_s(p) for p in [d, *children, *([s] if s else [])]}
                r0 = line_requests(http)
                w0, th0, t0d = wakeups(d.pid), thread_cpu(d), d.cpu_times()
                time.sleep(args.seconds)
                wall = time.monotonic() - t0
                w1, th1, t1d = wakeups(d.pid), thread_cpu(d), d.cpu_times()
                r1 = line_requests(http)
                c1 = {p.pid: cpu_s(p) for p in [d, *children, *([s] if s else [])]}
                load = os.getloadavg()[0]

                def pct(p: psutil.Process) -> float:
                    return (c1[p.pid] - c0[p.pid]) / wall * 100

                rss = d.memory_info().rss / MB
                print(f"\n{args.lines} RS-485 lines × {args.per_line} ebt-1 terminals at {args.baud} baud "
                      f"+ FM transmitter; poll_interval_s={args.poll_interval:g}, line checks every "
                      f"{args.line_check_interval:g} s per terminal; window {wall:.1f} s "
                      f"after {args.settle:g} s settle")
                print(f"daemon  pid {d.pid}: RSS {rss:.1f} MB (peak {hwm_mb(d.pid) or 0:.1f} MB), "
                      f"CPU {pct(d):.2f} % of one core   [targets: ≤ 80 MB, ≤ 1 %]")
                print(f"  of which user {(t1d.user - t0d.user) / wall * 100:.2f} %, "
                      f"system (kernel: syscalls, wake-ups) {(t1d.system - t0d.system) / wall * 100:.2f} %")
                print(f"  wake-ups (voluntary context switches, all threads) {(w1 - w0) / wall:.1f}/s; "
                      f"machine load average {load:.2f}")
                busy = sorted(((th1[k] - th0.get(k, 0.0)) / wall * 100, k) for k in th1)
                print("  threads: " + ", ".join(f"{name} {share:.2f} %" for share, name in reversed(busy)
                                                if share >= 0.01))
                for child in children:
                    name = " ".join(child.cmdline()[1:3]) or child.name()
                    print(f"  child pid {child.pid} ({name}): RSS {child.memory_info().rss / MB:.1f} MB, "
                          f"CPU {pct(child):.2f} %")
                if s is not None:
                    print(f"simulator pid {s.pid}: RSS {s.memory_info().rss / MB:.1f} MB, CPU {pct(s):.2f} % "
                          f"(reference)")
                total = sum(r1.get(k, 0) - r0.get(k, 0) for k in r1)
                per_line = ", ".join(f"{k} {(r1[k] - r0.get(k, 0)) / wall:.1f}/s" for k in sorted(r1))
                print(f"Modbus transactions: {total / wall:.1f}/s ({per_line}); daemon CPU per transaction "
                      f"{(c1[d.pid] - c0[d.pid]) / max(total, 1) * 1000:.3f} ms")
                if args.profile:
                    profile(d.pid, args.seconds, workdir / "daemon.stacks")
        finally:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    ap.add_argument("--settle", type=float, default=20.0, help="wait after the API is up")
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--per-line", type=int, default=16)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--poll-interval", type=float, default=5.0,
                    help="lines[].poll_interval_s (the config default is 5.0)")
    ap.add_argument("--line-check-interval", type=float, default=90.0,
                    help="health.line_check_interval_s (0: none; the default is 90)")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards sample the daemon with py-spy (pip install py-spy) and print hot spots")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ebc-footprint-") as tmp:
        measure(args, Path(tmp))


if __name__ == "__main__":
    main()
