"""The county centre at scale: ingest rate, fault → console latency, rebuild after a restart, RSS/CPU.

    .venv/bin/python bench/county_scale.py --gateways 100,500,1000 [--window 60] [--rate 6000] [--postgres]

Per N it starts, on this machine: a Mosquitto on a free loopback port (tests/mqttkit.py), the county
service as its own process (``python -m county.cli run --config …``; SQLite by default, a PostgreSQL
started here with ``--postgres``, as tests/countykit.py does), and the fleet (simulator/fleet.py) in
a child process, N gateways × 20 terminals. This process only measures: it reads the county API and
its SSE stream with a viewer token, and samples the county's CPU and RSS with psutil.

1. Picture: time from the fleet's start until /api/v1/overview shows N gateways and N×20 terminals.
2. Ingest: for ``--window`` seconds the fleet is driven at ``--rate`` reports/s (70 % health snapshots
   round-robin over the gateways, 30 % from raised-and-cleared faults, i.e. device.fault/recovered/state
   events plus their retained states), while faults are also injected at known times (latency under
   load). Published (fleet counters) vs received/stored (the county's ingest stats) over the window,
   then the backlog drained and loss = reports published − rows in the events table (must be 0).
3. Latency: faults injected one at a time at a quiet load (the fleet's defaults) on random terminals;
   per fault, time from just before ``Fleet.inject_fault`` to the first SSE ``device.state`` showing it
   (the console's picture) and to the SSE ``event`` of the stored ``device.fault`` report; p50/p99.
4. Rebuild: kill -9 the county, start it again, time until /api/v1/overview shows N gateways and N×20
   terminals (from the database), and until every retained message (status, birth, states) is re-read.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402
import yaml  # noqa: E402
from mqttkit import Broker  # noqa: E402
from simkit import free_port  # noqa: E402

TERMINALS = 20
COUNTY_CLIENT_ID = "county-bench"
KEEPALIVE_S = 120
FAULT_CODES = ("amp_fault", "line_open", "mains_lost", "over_temperature", "low_battery", "tamper")


# ------------------------------------------------------------------------------------ fleet child


def fleet_process(conn: Any, port: int, gateways: int, terminals: int, seed: int, first: int = 0,
                  procs: int = 1) -> None:
    """One fleet process (its own GIL) with gateways ``first``… of the county; commands over a pipe."""
    sys.path.insert(0, str(REPO))
    from simulator.fleet import Fleet

    fleet = Fleet("127.0.0.1", port, gateways=gateways, terminals=terminals, seed=seed + first,
                  fault_rate_per_hour=0.5, recovery_rate_per_hour=6.0, health_interval_s=60.0,
                  connect_rate=200.0 / procs, first=first)
    rng = random.Random(seed + 7)
    gws = list(fleet.gateways.values())
    drive = {"health": 0.0, "faults": 0.0, "h_due": 0.0, "f_due": 0.0, "next": 0, "on": False,
             "last": time.monotonic()}

    def tick() -> None:  # on the fleet's loop thread
        now = time.monotonic()
        dt, drive["last"] = now - drive["last"], now
        if drive["on"]:
            drive["h_due"] += drive["health"] * dt
            drive["f_due"] += drive["faults"] * dt
            while drive["h_due"] >= 1:
                drive["h_due"] -= 1
                gw = gws[drive["next"] % len(gws)]
                drive["next"] += 1
                if gw.alive:
                    gw.emit("gateway.health", gw.health(), "health", droppable=True)
            while drive["f_due"] >= 1:
                drive["f_due"] -= 1
                gw = rng.choice(gws)
                dev = rng.choice(list(gw.terminals))
                code = rng.choice(FAULT_CODES)
                if gw.alive and gw.raise_fault(dev, code):
                    fleet.loop.call_later(rng.uniform(0.5, 1.5), gw.clear_faults, dev, code)
        if not fleet.loop.stopping:
            fleet.loop.call_later(0.02, tick)

    fleet.start()
    fleet.loop.call_later(0.02, tick)
    proc = psutil.Process()
    while True:
        cmd, *args = conn.recv()
        if cmd == "stats":
            conn.send(fleet.publish_stats())
        elif cmd == "connected":
            conn.send(fleet.all_connected_s)
        elif cmd == "load":
            def set_load(h: float = args[0], f: float = args[1]) -> None:
                drive.update(health=h, faults=f, on=h > 0 or f > 0, h_due=0.0, f_due=0.0)
            fleet._call(set_load)
            conn.send(True)
        elif cmd == "inject":
            gw, dev, code = args
            t0 = time.time()
            ok = fleet.inject_fault(gw, dev, code)
            conn.send((t0, ok))
        elif cmd == "recover":
            conn.send(fleet.recover(args[0], args[1]))
        elif cmd == "idle":  # every report acknowledged by the broker
            conn.send(fleet._call(lambda: all(not g.pending and not g.inflight for g in gws)))
        elif cmd == "cpu":
            t = proc.cpu_times()
            conn.send((t.user + t.system, proc.memory_info().rss))
        elif cmd == "open_faults":
            conn.send(fleet._call(lambda: sum(len(t.faults) for g in gws if g.alive
                                              for t in g.terminals.values())))
        elif cmd == "ids":
            conn.send([(g.id, list(g.terminals)) for g in gws])
        elif cmd == "stop":
            fleet.stop()
            conn.send(True)
            return


class FleetProc:
    """One fleet child process and its pipe."""

    def __init__(self, port: int, gateways: int, seed: int, first: int, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=fleet_process, daemon=True,
                                args=(child, port, gateways, TERMINALS, seed, first, procs))

    def send(self, cmd: tuple[Any, ...]) -> None:
        self.conn.send(cmd)

    def recv(self, what: str) -> Any:
        if not self.conn.poll(120):
            raise RuntimeError(f"fleet did not answer {what}")
        return self.conn.recv()


class FleetClient:
    """The fleet as ``procs`` processes, each with its share of the N gateways (``--fleet-procs``): one
    Python process cannot publish 5,000 msgs/s and read their PUBACKs. Commands go to every process and
    the answers are combined; a fault goes to the process that has the gateway."""

    def __init__(self, port: int, gateways: int, seed: int = 1, procs: int = 1) -> None:
        procs = max(1, min(procs, gateways))
        cuts = [gateways * i // procs for i in range(procs + 1)]
        self.procs = [FleetProc(port, cuts[i + 1] - cuts[i], seed, cuts[i], procs) for i in range(procs)]
        self.owner: dict[str, FleetProc] = {}
        self.lock = threading.Lock()

    def start(self) -> FleetClient:
        for p in self.procs:
            p.proc.start()
        return self

    def __call__(self, *cmd: Any) -> Any:
        name = cmd[0]
        with self.lock:
            if name in ("inject", "recover"):
                p = self.owner[cmd[1]]
                p.send(cmd)
                return p.recv(name)
            if name == "load":  # each process drives its share of the rates
                cmd = (name, *(x / len(self.procs) for x in cmd[1:]))
            for p in self.procs:
                p.send(cmd)
            answers = [p.recv(name) for p in self.procs]
        if name == "stats":
            total: dict[str, int] = {}
            for a in answers:
                for k, v in a.items():
                    total[k] = total.get(k, 0) + v
            return total
        if name == "connected":
            return None if None in answers else max(answers)
        if name in ("load", "idle", "stop"):
            return all(answers)
        if name == "cpu":
            return sum(a[0] for a in answers), sum(a[1] for a in answers)
        if name == "open_faults":
            return sum(answers)
        if name == "ids":
            ids = [x for a in answers for x in a]
            for p, a in zip(self.procs, answers, strict=True):
                self.owner.update((gw, p) for gw, _ in a)
            return ids
        raise ValueError(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self("stop")
        for p in self.procs:
            p.proc.join(30)
            if p.proc.is_alive():
                p.proc.kill()


# ------------------------------------------------------------------------------------ county process


class County:
    def __init__(self, folder: Path, broker: Broker, storage_url: str | None) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = folder / "county.yaml"
        data = {"county": {"id": "suixi", "name": "濉溪县应急广播中心", "area_code": "340621000000"},
                # a persistent session: what the broker queued survives a reconnect (docs/county.md), and
                # a keepalive a starved machine cannot miss
                "mqtt": {"brokers": [broker.url], "prefix": "ebc", "keepalive_s": KEEPALIVE_S,
                         "client_id": COUNTY_CLIENT_ID},
                "storage": {"url": storage_url or "sqlite://county.sqlite3", "retention_days": 30},
                "api": {"host": "127.0.0.1", "port": self.port}}
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "county.log"
        out = subprocess.run([sys.executable, "-m", "county.cli", "token", "create", "bench", "--role",
                              "viewer", "--config", str(self.config)], cwd=REPO, capture_output=True,
                             check=True, timeout=60)
        self.token = out.stdout.decode().strip()

    def start(self) -> float:
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            launcher = ["-m", "county.cli"]
            if os.environ.get("COUNTY_SWITCH_S"):  # experiment: a shorter GIL switch interval
                switch = float(os.environ["COUNTY_SWITCH_S"])
                launcher = ["-c", f"import sys; sys.setswitchinterval({switch}); "
                                  "from county.cli import main; raise SystemExit(main())"]
            self.proc = subprocess.Popen([sys.executable, *launcher, "run", "--config",
                                          str(self.config), "--log-level", "WARNING"], cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT)
        return t0

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status} {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def overview(self) -> dict[str, Any] | None:
        try:
            return self.get("/api/v1/overview")  # type: ignore[no-any-return]
        except (OSError, RuntimeError, http.client.HTTPException):
            return None

    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)


class SseWatch:
    """The county SSE stream in a thread: when each (gateway, device) fault first showed, two ways."""

    def __init__(self, county: County) -> None:
        self.county = county
        self.state_at: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        self.event_at: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        """(gateway, device, fault) → [(the fault's ``since`` as the gateway stamped it, SSE arrival)]."""
        self.resyncs = 0
        self.ready = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SseWatch:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("SSE stream did not connect")
        return self

    def stop(self) -> None:
        self._stop = True

    def _run(self) -> None:
        """A raw socket, not http.client: its chunked readline would cost this process a core."""
        sock = socket.create_connection(("127.0.0.1", self.county.port), timeout=60)
        sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     f"{self.county.token}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"SSE: {head[:100]!r}")
        self.ready.set()
        while not self._stop:
            data = sock.recv(1 << 20)
            if not data:
                return
            now = time.time()
            buf += data
            cut = buf.rfind(b"\n")
            if cut < 0:
                continue
            lines, buf = buf[:cut].split(b"\n"), buf[cut + 1:]
            self.resyncs += sum(1 for line in lines if line.startswith(b"event: resync"))
            for line in lines:
                if not line.startswith(b"data: "):
                    continue
                if b'"type":"device.state"' in line and b'"state":3' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        doc = json.loads(line[6:])
                        dev = doc["device"]
                        for f in dev.get("faults") or []:
                            self.state_at.setdefault((doc["gateway"], dev["id"], str(f.get("fault"))),
                                                     []).append((float(f.get("since") or 0), now))
                elif b'"kind":"device.fault"' in line and b'"type":"event"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        doc = json.loads(line[6:])
                        data_ = doc.get("data") or {}
                        self.event_at.setdefault((doc["gateway"], str(data_.get("device")),
                                                  str(data_.get("fault"))), []).append(
                            (float(data_.get("since") or 0), now))


# ------------------------------------------------------------------------------------ helpers


def wait(what: str, check: Any, timeout: float = 300.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(every)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def reports(stats: dict[str, int]) -> int:
    return stats.get("events", 0) + stats.get("health", 0) + stats.get("broadcasts", 0)


def count_rows(storage_url: str | None, folder: Path) -> int:
    if storage_url:
        import psycopg

        with psycopg.connect(storage_url) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])  # type: ignore[index]
    import sqlite3

    with contextlib.closing(sqlite3.connect(folder / "county.sqlite3", timeout=30)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


class Sampler:
    """Peak RSS of a process, sampled every 0.5 s in a thread."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak, self._stop = proc, 0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop = True


def inject(fleet: FleetClient, ids: list[tuple[str, list[str]]], rng: random.Random,
           used: set[tuple[str, str]],
           out: list[tuple[str, str, str, float]]) -> None:
    while True:
        gw, devs = rng.choice(ids)
        dev = rng.choice(devs)
        if (gw, dev) not in used:
            break
    used.add((gw, dev))
    t0, ok = fleet("inject", gw, dev, "amp_fault")
    if ok:
        out.append((gw, dev, "amp_fault", t0))


def latencies(watch: SseWatch,
              injected: list[tuple[str, str, str, float]]) -> tuple[list[float], list[float], int]:
    state, event, missing = [], [], 0
    for gw, dev, code, t0 in injected:
        key = (gw, dev, code)
        seen = [at - since for since, at in watch.state_at.get(key, ()) if since >= t0]
        if seen:
            state.append(seen[0])
        else:
            missing += 1
        stored = [at - since for since, at in watch.event_at.get(key, ()) if since >= t0]
        if stored:
            event.append(stored[0])
    return state, event, missing


# ------------------------------------------------------------------------------------ one run


def run(n: int, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"\n=== {n} gateways × {TERMINALS} terminals ({'PostgreSQL' if opts.postgres else 'SQLite'}) ===",
          flush=True)
    folder = tmp / f"n{n}"
    broker = Broker(folder / "mosquitto").start()
    pg = None
    fleet = county = watch = None
    res: dict[str, Any] = {"n": n}
    try:
        storage_url = None
        if opts.postgres:
            from countykit import PostgresServer

            pg = PostgresServer().start()
            storage_url = pg.new_database()
        county = County(folder / "county", broker, storage_url)
        county.start()
        wait("county API", county.overview, 60)
        cproc = county.process()
        rss = Sampler(cproc)
        mosq = psutil.Process(broker.proc.pid)
        fleet = FleetClient(broker.port, n, procs=opts.fleet_procs).start()
        t0 = time.monotonic()
        want_t = n * TERMINALS

        def full() -> bool:
            o = county.overview()
            return bool(o and o["gateways"]["online"] == n and o["terminals"]["total"] == want_t)
        wait("full picture", full, 300, 0.1)
        res["picture_s"] = time.monotonic() - t0
        ids = fleet("ids")
        rng = random.Random(n)
        used: set[tuple[str, str]] = set()
        print(f"  picture complete after {res['picture_s']:.1f} s (fleet connected in "
              f"{fleet('connected') or float('nan'):.1f} s)", flush=True)
        watch = SseWatch(county).start()
        time.sleep(2)

        # -- ingest window ------------------------------------------------------------------------
        health_rate, fault_rate = 0.7 * opts.rate, 0.3 * opts.rate / 5
        s0, o0 = fleet("stats"), county.overview()
        c0, m0, (f0, _) = cproc.cpu_times(), mosq.cpu_times(), fleet("cpu")
        w0 = time.monotonic()
        if opts.profile:
            subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(cproc.pid),
                                    "-d", str(int(opts.window)), "-r", "50", "--format", "raw", "-t", "-o",
                                    f"{opts.profile}/county-{n}.txt"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        fleet("load", health_rate, fault_rate)
        injected_load: list[tuple[str, str, str, float]] = []
        next_inject = w0 + 1
        while time.monotonic() - w0 < opts.window:
            if time.monotonic() >= next_inject:
                inject(fleet, ids, rng, used, injected_load)
                next_inject += 0.5
            time.sleep(0.02)
        fleet("load", 0.0, 0.0)
        w1 = time.monotonic()
        s1, o1 = fleet("stats"), county.overview()
        c1, m1, (f1, _) = cproc.cpu_times(), mosq.cpu_times(), fleet("cpu")
        span = w1 - w0
        assert o0 and o1
        published = reports(s1) - reports(s0)
        published_all = sum(s1.get(k, 0) - s0.get(k, 0) for k in ("events", "health", "broadcasts", "state",
                                                                      "status", "birth"))
        received = o1["ingest"]["received"] - o0["ingest"]["received"]
        stored = o1["ingest"]["stored"] - o0["ingest"]["stored"]
        res.update(window_s=span, published_rps=published / span, published_all_mps=published_all / span,
                   received_mps=received / span, stored_rps=stored / span,
                   backlog_at_end=reports(s1) - (o1["ingest"]["stored"] + o1["ingest"]["duplicates"]),
                   county_cpu=(sum(c1[:2]) - sum(c0[:2])) / span * 100,
                   mosquitto_cpu=(sum(m1[:2]) - sum(m0[:2])) / span * 100, fleet_cpu=(f1 - f0) / span * 100)
        print(f"  window {span:.0f} s: fleet published {published / span:.0f} reports/s "
              f"({published_all / span:.0f} msgs/s with retained states); county received "
              f"{received / span:.0f} msgs/s, stored {stored / span:.0f} reports/s; CPU county "
              f"{res['county_cpu']:.0f} %, mosquitto {res['mosquitto_cpu']:.0f} %, "
              f"fleet {res['fleet_cpu']:.0f} %; reports not yet stored at the window's end "
              f"{res['backlog_at_end']}", flush=True)
        # drain: the fleet has every PUBACK, the county has stored all it will store
        wait("fleet outbox empty", lambda: fleet("idle"), 300, 0.2)
        total_reports = reports(fleet("stats"))

        def drained() -> bool:
            o = county.overview()
            return bool(o and o["ingest"]["stored"] + o["ingest"]["duplicates"] >= total_reports)
        with contextlib.suppress(RuntimeError):
            wait("county drained", drained, 300, 0.2)
        res["drain_s"] = time.monotonic() - w1

        def settled() -> tuple[int, int] | None:
            published, rows = reports(fleet("stats")), count_rows(storage_url, folder / "county")
            return (published, rows) if published == rows and reports(fleet("stats")) == published else None
        try:
            published_total, rows = wait("every report stored", settled, 60, 0.5)
        except RuntimeError:
            published_total, rows = reports(fleet("stats")), count_rows(storage_url, folder / "county")
        res["loss"] = published_total - rows
        o = county.overview()
        assert o
        res["duplicates"] = o["ingest"]["duplicates"]
        res["gaps"] = o["unexplained_gaps"]
        res["connects"] = o["ingest"]["connects"]
        res["malformed"] = o["ingest"]["malformed"]
        county_lines = [line for line in broker.log().splitlines() if COUNTY_CLIENT_ID in line][-10:]
        res["broker_county_lines"] = county_lines
        print(f"  county connects {res['connects']} (1 = never reconnected), malformed {res['malformed']}; "
              f"the broker's log about the county's connection: {county_lines}", flush=True)
        st, ev, miss = latencies(watch, injected_load)
        res.update(load_state_p50=pct(st, 50), load_state_p99=pct(st, 99), load_event_p50=pct(ev, 50),
                   load_event_p99=pct(ev, 99), load_samples=len(injected_load), load_missing=miss,
                   load_resyncs=watch.resyncs)
        print(f"  drained {res['drain_s']:.1f} s after the window; reports published {published_total}, "
              f"rows stored {rows}: loss {res['loss']}; duplicates {res['duplicates']}, unexplained gaps "
              f"{res['gaps']}", flush=True)
        print(f"  fault → SSE under load ({len(injected_load)} faults, {miss} not seen, {watch.resyncs} "
              f"resyncs): device.state p50 {res['load_state_p50'] * 1000:.0f} ms p99 "
              f"{res['load_state_p99'] * 1000:.0f} ms; stored event p50 "
              f"{res['load_event_p50'] * 1000:.0f} ms "
              f"p99 {res['load_event_p99'] * 1000:.0f} ms", flush=True)

        # -- latency at a quiet load -------------------------------------------------------------
        time.sleep(2)
        injected: list[tuple[str, str, str, float]] = []
        for _ in range(opts.faults):
            inject(fleet, ids, rng, used, injected)
            time.sleep(opts.fault_gap)
        time.sleep(3)
        st, ev, miss = latencies(watch, injected)
        res.update(state_p50=pct(st, 50), state_p99=pct(st, 99), event_p50=pct(ev, 50), event_p99=pct(ev, 99),
                   quiet_samples=len(injected), quiet_missing=miss)
        print(f"  fault → SSE at the fleet's quiet load ({len(injected)} faults, {miss} not seen): "
              f"device.state "
              f"p50 {res['state_p50'] * 1000:.0f} ms p99 {res['state_p99'] * 1000:.0f} ms; stored event p50 "
              f"{res['event_p50'] * 1000:.0f} ms p99 {res['event_p99'] * 1000:.0f} ms", flush=True)
        watch.stop()
        res["rss_mb"] = cproc.memory_info().rss / 2**20
        res["rss_peak_mb"] = rss.peak / 2**20
        rss.stop()

        # -- rebuild after kill -9 ---------------------------------------------------------------
        before = county.overview()
        assert before
        county.kill9()
        t0 = county.start()
        wait("full picture after restart", lambda: (o := county.overview()) and o["gateways"]["total"] == n
             and o["terminals"]["total"] == want_t, 120, 0.02)
        res["rebuild_api_s"] = time.monotonic() - t0
        retained = n * (2 + TERMINALS)
        wait("retained picture re-read", lambda: (o := county.overview()) and
                     o["ingest"]["received"] >= retained and o, 120, 0.05)
        res["rebuild_retained_s"] = time.monotonic() - t0
        try:
            wait("open faults as the fleet has them", lambda: (o := county.overview()) and o["open_faults"] ==
                 fleet("open_faults") and o["gateways"]["online"] == n, 60, 0.2)
            res["rebuild_same"] = True
        except RuntimeError:
            res["rebuild_same"] = False
        res["rss_after_restart_mb"] = county.process().memory_info().rss / 2**20
        print(f"  kill -9 + restart: overview complete (from the database) after "
              f"{res['rebuild_api_s']:.2f} s; all {retained} retained messages re-read after "
              f"{res['rebuild_retained_s']:.2f} s; open faults as the fleet has them: "
              f"{res['rebuild_same']}", flush=True)
        print(f"  county RSS {res['rss_mb']:.0f} MB (peak {res['rss_peak_mb']:.0f} MB; "
              f"{res['rss_after_restart_mb']:.0f} MB after the restart)", flush=True)
    finally:
        if watch is not None:
            watch.stop()
        if fleet is not None:
            fleet.stop()
        if county is not None:
            county.stop()
        broker.stop()
        if pg is not None:
            pg.stop()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", default="100,500,1000", help="comma-separated N")
    p.add_argument("--window", type=float, default=60.0, help="seconds of driven load")
    p.add_argument("--rate", type=float, default=6000.0,
                   help="reports/s the fleet is driven at in the window")
    p.add_argument("--faults", type=int, default=200, help="faults injected for the quiet latency")
    p.add_argument("--fault-gap", type=float, default=0.05, help="seconds between injected faults")
    p.add_argument("--fleet-procs", type=int, default=1,
                   help="fleet processes sharing the N gateways (one cannot offer 5,000 msgs/s)")
    p.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--profile", help="py-spy the county during the window; collapsed stacks into this folder")
    opts = p.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GB, Python {platform.python_version()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ebc-county-scale-") as tmp:
        for n in (int(x) for x in opts.gateways.split(",")):
            results.append(run(n, opts, Path(tmp)))
    print("\n| N | picture s | published rep/s | stored rep/s | county recv msg/s | loss | connects | dup | "
          "gaps | fault→SSE p50/p99 ms "
          "(quiet) | fault→SSE p50/p99 ms (load) | rebuild s (db / retained) | RSS MB peak | county CPU % |")
    for r in results:
        print(f"| {r['n']} | {r['picture_s']:.1f} | {r['published_rps']:.0f} | {r['stored_rps']:.0f} | "
              f"{r['received_mps']:.0f} | {r['loss']} | {r['connects']} | {r['duplicates']} | {r['gaps']} | "
              f"{r['state_p50'] * 1000:.0f} / {r['state_p99'] * 1000:.0f} | "
              f"{r['load_state_p50'] * 1000:.0f} / {r['load_state_p99'] * 1000:.0f} | "
              f"{r['rebuild_api_s']:.2f} / "
              f"{r['rebuild_retained_s']:.2f} | {r['rss_peak_mb']:.0f} | {r['county_cpu']:.0f} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
