"""The demo township as a bench: simulator, ``ebc run`` and Mosquitto as real processes, plus the
simulator's own evidence of what each horn played.

``Township`` copies ``config/demo.yaml`` (16 ebt-1 terminals on one 9600-baud RS-485 line, 4 Modbus
TCP terminals, the FM transmitter) into a temporary directory with free ports and private pty
paths, starts ``ebc sim`` and ``ebc run`` as separate processes (the daemon reporting to a
Mosquitto started here), and makes an operator token the way an administrator does.

``judge`` sets a finished broadcast's record (GET /api/v1/broadcasts/<id>) against the simulator:
the program as it arrived on the simulator's audio line (its recording, judged in 20 ms blocks,
-50 dBFS — the terminals' own criterion) and each terminal's audible spans (control op
``audible``). A reported outcome *contradicts* that evidence when

* ``succeeded`` — the terminal was audible for less than 90 % of one repetition's sound;
* ``failed`` — it was audible for more than 0.5 s of the program;
* ``partial`` — it was never audible.

``unreachable`` claims nothing about what played (no read-back answered); one that was audible
anyway is counted as *unconfirmed*, not as a contradiction.

It also gives, per terminal, the audible seconds, the delay from the program's first sound to the
terminal's first audible moment, and the coil state after the broadcast (``released``: amplifier,
override and every zone relay off — the demo's terminals start at rest).

Used by bench/fault_matrix.py and bench/chaos.py; run from the repository with ``.venv/bin/python``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same harness the tests use

from mqttkit import Broker, Subscriber  # noqa: E402
from simkit import Daemon, free_port, make_token, terminate, wait_until  # noqa: E402

from controller.storage.journal import DB_NAME  # noqa: E402
from drivers.audio_output import has_sound  # noqa: E402
from simulator.control import ControlClient  # noqa: E402

RTU = [f"t{i:02d}" for i in range(1, 17)]
TCP = ["t17", "t18", "t19", "t20"]
TERMINALS = RTU + TCP
FINAL = ("succeeded", "failed", "cancelled")
GUARD_S = 180.0
"""Only a guard against a hung run, never a performance claim."""
BLOCK_S = 0.02


def demo_config(workdir: Path, broker_url: str | None) -> tuple[Path, dict[str, Any]]:
    """config/demo.yaml with every port free and every path under ``workdir``."""
    data = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    data["profiles_dir"] = str(REPO / "config" / "profiles")
    data["state_dir"] = str(workdir / "state")
    data["api"] = {"host": "127.0.0.1", "port": free_port()}
    for line in data["lines"]:
        if line["type"] == "serial":
            line["port"] = str(workdir / "dev" / Path(line["port"]).name)
        else:
            line["port"] = free_port()
    sim = data["simulator"]
    sim["control"]["port"] = free_port()
    sim["audio"].update(port=free_port(), record_dir=str(workdir / "audio"))
    data["schedules"] = []
    if broker_url is None:
        data.pop("mqtt", None)
    else:
        data["mqtt"] = {**data.get("mqtt", {}), "brokers": [broker_url], "health_interval_s": 30}
    path = workdir / "township.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, data


@dataclass
class TerminalEvidence:
    device: str
    outcome: str
    reason: str
    audible_s: float
    first_audible_delay_s: float | None
    """From the program's first sound to the terminal's first audible moment in the program."""
    released: bool
    contradiction: str = ""
    unconfirmed: bool = False
    """Reported unreachable, yet audible: the gateway could not read it back (not a contradiction)."""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgement:
    broadcast_id: str
    state: str
    reason: str
    coverage: float | None
    program_sound_s: float
    repetition_sound_s: float
    terminals: dict[str, TerminalEvidence]

    @property
    def contradictions(self) -> list[TerminalEvidence]:
        return [t for t in self.terminals.values() if t.contradiction]


class Township:
    """The demo township running: ``with Township() as town: ...``."""

    def __init__(self, workdir: Path | None = None, *, mqtt: bool = True, verbose: bool = False) -> None:
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="ebc-town-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.broker = Broker(self.workdir / "broker", persistent=True) if mqtt else None
        self.config_path, self.data = demo_config(self.workdir, self.broker.url if self.broker else None)
        sim = self.data["simulator"]
        self.control = ControlClient("127.0.0.1", sim["control"]["port"], timeout=10)
        self._control_lock = threading.Lock()
        """One control connection, one request at a time: bench/chaos.py calls it from several threads."""
        self.record_dir = Path(sim["audio"]["record_dir"])
        self.daemon = Daemon(self.config_path, self.data["api"]["port"], self.workdir / "daemon.log",
                             verbose=verbose)
        self.sim_proc: subprocess.Popen[bytes] | None = None
        self.subscriber: Subscriber | None = None
        self.token = ""
        self.http = httpx2.Client(timeout=30)
        self.server_errors: list[str] = []

    # -- processes --------------------------------------------------------------------------------

    def __enter__(self) -> Township:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.broker is not None:
            self.broker.start()
            self.subscriber = Subscriber(self.broker, [f"ebc/{self.data['gateway']['id']}/#"],
                                         persistent=True, client_id="bench-county").start()
        with open(self.workdir / "sim.log", "ab") as log:
            self.sim_proc = subprocess.Popen([sys.executable, "-m", "controller.app.cli", "sim", "--config",
                                              str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                             cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_until("the simulator", lambda: self._sim_up(), guard_s=30)
        self.token = make_token(self.config_path, "bench", "operator")
        self.daemon.start()
        wait_until("every terminal polled", lambda: all(
            d.get("online") for d in self.devices() if d["id"] in TERMINALS), guard_s=60)

    def _sim_up(self) -> bool:
        with contextlib.suppress(OSError):
            return bool(self.control.call("ping")["ok"]) and all(
                Path(line["port"]).exists() for line in self.data["lines"] if line["type"] == "serial")
        return False

    def close(self) -> None:
        self.daemon.stop()
        self.control.close()
        terminate(self.sim_proc, 10)
        if self.subscriber is not None:
            self.subscriber.close()
        if self.broker is not None:
            self.broker.stop()
        self.http.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def kill_daemon(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        assert self.daemon.proc is not None
        os.kill(self.daemon.proc.pid, signal.SIGKILL)
        self.daemon.proc.wait()

    def restart_daemon(self) -> None:
        self.daemon.start()

    # -- the API ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.daemon.base_url + "/api/v1"

    def api(self, method: str, path: str, **kw: Any) -> httpx2.Response:
        """Any request to ``/api/v1<path>`` as the operator (5xx answers are collected)."""
        return self._call(method, path, **kw)

    def _call(self, method: str, path: str, **kw: Any) -> httpx2.Response:
        response = self.http.request(method, self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"}, **kw)
        if response.status_code >= 500:
            self.server_errors.append(f"{method} {path} → {response.status_code} {response.text[:200]}")
        return response

    def devices(self) -> list[dict[str, Any]]:
        with contextlib.suppress(httpx2.HTTPError):
            response = self._call("GET", "/devices")
            if response.status_code == 200:
                return list(response.json())
        return []

    def broadcast(self, body: dict[str, Any]) -> str:
        response = self._call("POST", "/broadcasts", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def cancel(self, broadcast_id: str) -> int:
        return self._call("POST", f"/broadcasts/{broadcast_id}/cancel").status_code

    def record(self, broadcast_id: str) -> dict[str, Any]:
        response = self._call("GET", f"/broadcasts/{broadcast_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_final(self, broadcast_id: str, guard_s: float = GUARD_S) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            with contextlib.suppress(httpx2.HTTPError):
                record = self.record(broadcast_id)
                if record["state"] in FINAL:
                    return record
            return None
        return dict(wait_until(f"broadcast {broadcast_id} final", final, every=0.2, guard_s=guard_s))

    def wait_playing(self, broadcast_id: str) -> dict[str, Any]:
        return dict(wait_until(f"broadcast {broadcast_id} playing",
                               lambda: (r := self.record(broadcast_id))["state"] in ("playing", *FINAL) and r,
                               every=0.05))

    # -- the simulator ------------------------------------------------------------------------------

    def sim(self, op: str, **fields: Any) -> dict[str, Any]:
        with self._control_lock:
            return dict(self.control.call(op, **fields))

    def fault(self, fault: str, **fields: Any) -> None:
        self.sim("fault", fault=fault, **fields)

    def coils(self, device: str) -> dict[str, bool]:
        return dict(self.sim("state", device=device)["state"]["coils"])

    def at_rest(self, device: str) -> bool:
        """Amplifier, override and every zone relay off."""
        coils = self.coils(device)
        return not coils["amp_power"] and not coils["emergency_override"] and not any(
            v for k, v in coils.items() if k.startswith("zone_"))

    def audible_spans(self, device: str) -> list[tuple[float, float]]:
        return [(s["start"], s["end"]) for s in self.sim("audible", device=device)["spans"]]

    def recordings(self, since: float, until: float) -> list[dict[str, Any]]:
        """The simulator's recordings of the audio line that overlap [since, until] (wall clock)."""
        return [r for r in self.sim("audio")["recordings"]
                if r["started"] < until and (r["ended"] or time.time()) > since]

    def journal(self) -> list[dict[str, Any]]:
        """The daemon's journal of activations in flight (devices switched on and not yet restored),
        read from its SQLite file: empty once every device is back in its prior state."""
        path = Path(self.data["state_dir"]) / DB_NAME
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT broadcast_id, device_id, saved_at FROM activations")
            return [dict(r) for r in rows]

    # -- evidence -----------------------------------------------------------------------------------

    def judge(self, record: dict[str, Any], *, repeat: int = 1,
              recordings: list[dict[str, Any]] | None = None) -> Judgement:
        """Set a final broadcast record against the simulator's evidence (see the module doc).

        ``recordings``: the broadcast's own recordings of the audio line, when the caller knows them
        (by default every recording within a second of its start and end, which may hold another
        broadcast's sound when two follow each other closely).
        """
        start, end = record["started_at"] or record["created_at"], record["finished_at"] or time.time()
        sound: list[tuple[float, float]] = []
        for rec in self.recordings(start - 1, end + 1) if recordings is None else recordings:
            sound += sound_intervals(Path(rec["file"]), rec["started"])
        program_sound = sum(b - a for a, b in sound)
        rep_sound = program_sound / max(1, repeat)
        first_sound = sound[0][0] if sound else None
        out: dict[str, TerminalEvidence] = {}
        for o in record["outcomes"]:
            dev = o["device_id"]
            if dev not in TERMINALS:
                continue
            spans = [(max(a, start), min(b, end + 0.5)) for a, b in self.audible_spans(dev)
                     if b > start and a < end + 0.5]
            audible = sum(max(0.0, b - a) for a, b in spans)
            delay = None if not spans or first_sound is None else round(spans[0][0] - first_sound, 3)
            ev = TerminalEvidence(dev, o["outcome"], o["reason"], round(audible, 2), delay, self.at_rest(dev),
                                  detail={k: o.get(k) for k in ("joined_late", "missed_s", "audible_s")})
            if o["outcome"] == "succeeded" and audible < 0.9 * rep_sound:
                ev.contradiction = f"succeeded, but audible {audible:.1f} s of a {rep_sound:.1f} s repetition"
            elif o["outcome"] == "failed" and audible > 0.5:
                ev.contradiction = f"failed, but audible {audible:.1f} s"
            elif o["outcome"] == "unreachable" and audible > 0.5:
                ev.unconfirmed = True
            elif o["outcome"] == "partial" and audible == 0:
                ev.contradiction = "partial, but never audible"
            out[dev] = ev
        return Judgement(record["id"], record["state"], record["reason"] or "", record.get("coverage"),
                         round(program_sound, 2), round(rep_sound, 2), out)


def sound_intervals(path: Path, started: float) -> list[tuple[float, float]]:
    """Wall-clock intervals of sound in one recording of the audio line (20 ms blocks)."""
    with contextlib.suppress(OSError, wave.Error, EOFError), wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
        block = 2 * round(rate * BLOCK_S)
        out: list[tuple[float, float]] = []
        for i in range(0, len(pcm), block):
            if has_sound(pcm[i:i + block]):
                a = started + i / 2 / rate
                if out and abs(out[-1][1] - a) < 1e-6:
                    out[-1] = (out[-1][0], a + BLOCK_S)
                else:
                    out.append((a, a + BLOCK_S))
        return out
    return []
