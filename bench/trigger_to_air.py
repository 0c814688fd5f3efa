"""Trigger to air: API POST → first sound, and → every targeted terminal confirmed audible.

A config-like township — 16 ebt-1 terminals on one 9600-baud RS-485 line, 4 Modbus TCP terminals,
the FM transmitter — runs in the simulator (its own process, ptys paced at the baud, real amplifier
warm-up of 2 s, physics not sped up). The gateway is the real daemon: ``ebc run --config FILE`` as
a second process (state_dir in a temp dir, health polling on as always), driven through its API
with an operator token made by ``ebc token create``. Both processes run on this machine and share
its wall clock, so the simulator's timestamps and the journal's compare with the moment this
script sent the POST.

Each trial POSTs an emergency for the whole township with a text never spoken before (speech
uncached), then the same text again (cached), and prints, from the moment the POST was sent:

  (a) first sound: when the program reached the simulator's audio line (its recording starts when
      the player connects, right before the first chunk — the attention chime) and the earliest
      audible span at any targeted terminal (control op ``audible``); target 200 ms + warm-up;
  (b) every targeted terminal confirmed audible: the latest ``updated_at`` of the 20 terminals'
      ``succeeded`` outcomes in GET /api/v1/broadcasts/<id> (the journal's time of each read-back,
      not this script's polling), against the wire-time limit of the RS-485 line: for the frames
      activation needs — per terminal the prior-state reads, the unit-id-0 write frames, one status
      read-back per terminal — bytes × 10 / baud + 3.5-character silences + the simulator's
      turnaround (the arbiter's 100 ms after each broadcast frame), plus the configured warm-up
      (the write frames after power-on overlap it). Target ≤ 1.2 × that. Also printed: when the
      last terminal actually became audible (simulator), the frames actually sent on the line
      (incl. status polls while the amplifiers warm up, and the health poller's), the 202 time;
  (c) pre-emption: a daily broadcast is confirmed on every terminal and audible, an emergency is
      POSTed: time until the daily program is off the audio line (target ≤ 500 ms) and its sound
      ends at the terminals, and until the emergency is on the line and audible. The simulator
      logs audibility per terminal, not per program: when the emergency reaches the line before
      the daily's last buffered audio has played, the two audible spans merge (no silent gap) and
      the line is the only place the stop shows.

``--in-process`` runs the daemon's broadcast side in this process instead (drivers, journal,
speech, player and engine as ``ebc run`` wires them, no API) and measures from ``engine.submit()``;
it also prints the player's first write with sound, and ``--no-poll`` switches its health pollers
off.

Run: .venv/bin/python bench/trigger_to_air.py [--trials 3] [--preemptions 1] [--in-process [--no-poll]]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx2
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same simulator harness the tests use
sys.path.insert(0, str(REPO / "bench"))

from line_efficiency import CHAR_BITS, reply_bytes  # noqa: E402
from simkit import SimConfig, SimProcess, free_port, running_simulator, write_sim_config  # noqa: E402

from controller.activation import PRIOR_POINTS, STATUS_POINTS, ActivationSettings  # noqa: E402
from controller.auth import Actor, Role  # noqa: E402
from controller.broadcasts import BroadcastRequest  # noqa: E402
from controller.config import Config, load_config  # noqa: E402
from controller.hardware import line_settings  # noqa: E402
from controller.tts import CACHE_SUBDIR  # noqa: E402
from drivers.line_arbiter import SerialLineSettings  # noqa: E402
from drivers.modbus_codec import ReadBlock, WriteBlock, read_plan, write_plan  # noqa: E402
from drivers.modbus_terminal import zone_values  # noqa: E402
from drivers.profile import ModbusTerminalProfile  # noqa: E402

T = TypeVar("T")

BAUD = 9600
RTU, TCP = 16, 4
FINAL = ("succeeded", "failed", "cancelled")
GUARD_S = 120.0
"""Only a guard against a hung run, never a performance claim."""
TEXT = "濉溪县气象台发布暴雨红色预警，请村民注意防范。"
EMERGENCY: dict[str, Any] = {"class": "emergency", "severity": 1, "source_level": 3, "targets": {"all": True},
                             "text": TEXT, "tone": "chime", "title": "Rainstorm red warning"}
DAILY: dict[str, Any] = {"class": "daily", "targets": {"all": True}, "tone": "chime",
                         "text": "各位村民请注意，今天下午三点在村委会召开会议。"}


# -- the wire-time limit ------------------------------------------------------------------------------


def request_bytes(block: ReadBlock | WriteBlock) -> int:
    """RTU request size: unit, function, fields, data, CRC."""
    if isinstance(block, ReadBlock) or block.function_code in (5, 6):
        return 8
    n = len(block.values)
    return 9 + (math.ceil(n / 8) if block.function_code == 15 else 2 * n)


def wire_limit_s(profile: ModbusTerminalProfile, terminals: int, settings: ActivationSettings,
                 turnaround_s: float, broadcast_silence_s: float, warmup_s: float) -> dict[str, float]:
    """The shortest time one RS-485 line can take to activate ``terminals`` and confirm them all."""
    char_s = CHAR_BITS / BAUD
    t35 = 3.5 * char_s

    def transaction(block: ReadBlock) -> float:
        return (request_bytes(block) + reply_bytes(block)) * char_s + 2 * t35 + turnaround_s

    prior = read_plan(profile, [*PRIOR_POINTS, *(f"zone_{z}" for z in range(1, profile.zones + 1))])
    status = read_plan(profile, STATUS_POINTS)
    level = {"amp_power": True, "emergency_override": settings.emergency, "volume": settings.volume,
             "audio_source": "line_in"}
    frames = [*write_plan(profile, level), *write_plan(profile, zone_values(profile, [1, 2]))]
    reads = terminals * sum(transaction(b) for b in prior.blocks)
    power, *rest = [request_bytes(b) * char_s + t35 + broadcast_silence_s for b in frames]
    confirm = terminals * sum(transaction(b) for b in status.blocks)
    # the frames after the power-on frame go out while the amplifiers warm up
    total = reads + power + max(warmup_s, sum(rest)) + confirm
    frame_count = terminals * (len(prior.blocks) + len(status.blocks)) + len(frames)
    return {"reads": reads, "writes": power + sum(rest), "warmup": warmup_s, "confirm": confirm,
            "total": total, "frames": frame_count}


def township_limit(cfg: Config, sim_cfg: SimConfig, sim: SimProcess) -> dict[str, float]:
    profile = cfg.profiles["ebt-1"]
    assert isinstance(profile, ModbusTerminalProfile)
    line = line_settings(cfg.line("rs485"))
    assert isinstance(line, SerialLineSettings)
    warmup_s = sim.state(sim_cfg.rtu_ids[0])["holding"]["warmup_ms"] / 1000
    settings = ActivationSettings.for_request(BroadcastRequest.model_validate(EMERGENCY),
                                              daily_volume=cfg.broadcast.daily_volume,
                                              ready_timeout_s=cfg.broadcast.ready_timeout_s)
    turnaround_s = sim_cfg.data["simulator"]["turnaround_ms"] / 1000
    return wire_limit_s(profile, len(sim_cfg.rtu_ids), settings, turnaround_s, line.broadcast_turnaround_s,
                        warmup_s)


# -- the gateway under test: the daemon through its API, or the engine in this process ------------------


class Gateway(Protocol):
    speech_cache: Path

    def submit(self, body: dict[str, Any]) -> str:
        """Send a broadcast request; returns its id once accepted (202 / journalled)."""
        ...

    def get(self, broadcast_id: str) -> dict[str, Any]:
        """The broadcast as GET /api/v1/broadcasts/<id> shows it (state name, outcomes)."""
        ...

    def player_first_sound(self) -> float | None:
        """Wall-clock time of the player's first write with sound, if this process can see it."""
        ...


class ApiGateway:
    """``ebc run --config FILE`` as a child process, reached over HTTP with an operator token."""

    def __init__(self, config: Path, state_dir: Path, port: int, log_path: Path) -> None:
        self.config, self.log_path = config, log_path
        self.speech_cache = state_dir / CACHE_SUBDIR
        self.base = f"http://127.0.0.1:{port}/api/v1"
        token = self._ebc("token", "create", "bench-operator", "--role", "operator").strip()
        if not token.startswith("ebc_"):
            raise RuntimeError("ebc token create printed no token")
        self.http = httpx2.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"},
                                  timeout=30.0)
        self.proc: subprocess.Popen[bytes] | None = None

    def _ebc(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "controller.cli", *args, "--config", str(self.config)],
                             cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, devices: list[str]) -> None:
        """Start the daemon; ready once the API answers and health polling has seen every device."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env)
        deadline = time.monotonic() + GUARD_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ebc run exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                listed = self.http.get("/devices")
                if listed.status_code == 200:
                    online = {d["id"] for d in listed.json() if d.get("online")}
                    if set(devices) <= online:
                        return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ebc run not ready after {GUARD_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def submit(self, body: dict[str, Any]) -> str:
        r = self.http.post("/broadcasts", json=body)
        if r.status_code != 202:
            raise RuntimeError(f"POST /broadcasts answered {r.status_code}: {r.text}")
        return str(r.json()["id"])

    def get(self, broadcast_id: str) -> dict[str, Any]:
        r = self.http.get(f"/broadcasts/{broadcast_id}")
        r.raise_for_status()
        record: dict[str, Any] = r.json()
        return record

    def player_first_sound(self) -> float | None:
        return None

    def close(self) -> None:
        """SIGTERM (the daemon ends what plays and releases every terminal), then wait."""
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            print("ebc run did not stop within 30 s of SIGTERM; killed it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()


class InProcessGateway:
    """The daemon's broadcast side (no API) on an event loop in a thread of this process."""

    ACTOR = Actor(name="bench", role=Role.OPERATOR, via="api")

    def __init__(self, cfg: Config, sim_cfg: SimConfig, work: Path, poll: bool) -> None:
        from controller.device_state import DeviceRegistry
        from controller.engine import BroadcastEngine
        from controller.events import EventBus
        from controller.hardware import Hardware
        from controller.store import Store
        from controller.tts import SpeechService
        from drivers.audio_output import AudioPlayer, SimLineSink

        self.speech_cache = work / "speech-cache"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.mono_to_wall = time.time() - time.monotonic()

        async def start() -> None:
            self.store, bus = Store.in_state_dir(cfg.state_dir), EventBus()
            registry = DeviceRegistry(cfg, bus)
            self.hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)
            await self.hardware.start(poll=poll)
            self.speech = SpeechService(self.speech_cache)
            await self.speech.start()
            self.player = AudioPlayer(SimLineSink(sim_cfg.host, sim_cfg.audio_port))
            self.engine = BroadcastEngine(cfg, self.hardware, self.store, self.speech, self.player, bus,
                                          registry)
            await self.engine.start()

        self._run(start())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(GUARD_S)

    def submit(self, body: dict[str, Any]) -> str:
        return self._run(self.engine.submit(BroadcastRequest.model_validate(body), self.ACTOR))

    def get(self, broadcast_id: str) -> dict[str, Any]:
        async def get() -> dict[str, Any]:  # the store's connection belongs to the loop's thread
            record = self.store.get_broadcast(broadcast_id)
            assert record is not None
            outcomes = [{**o, "outcome": str(o["outcome"])} for o in record["outcomes"]]
            return {**record, "state": record["state"].name.lower(), "outcomes": outcomes}

        return self._run(get())

    def player_first_sound(self) -> float | None:
        result = self.player.last_result
        if result is None or result.first_sound_at is None:
            return None
        return result.first_sound_at + self.mono_to_wall

    def close(self) -> None:
        async def stop() -> None:
            try:
                await self.engine.stop()
                await self.hardware.stop()
                await self.speech.close()
            finally:
                self.store.close()
                # what the drivers leave behind, as asyncio.run() would cancel it
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

        try:
            self._run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# -- measuring ------------------------------------------------------------------------------------------


@dataclass
class Trial:
    label: str
    state: str
    coverage: float
    accepted: float
    """POST sent → 202 received (in-process: submit() returned)."""
    line: float
    """→ the program's audio on the simulator's audio line (recording started)."""
    first_audible: float
    """→ the first targeted terminal audible (simulator)."""
    last_audible: float
    """→ the last targeted terminal audible (simulator)."""
    confirmed: float
    """→ the last terminal's ``succeeded`` outcome journalled (max updated_at)."""
    fm_confirmed: float
    synthesised: bool | None
    player: float | None = None
    counters: dict[str, int] = field(default_factory=dict)


def wait_final(gateway: Gateway, broadcast_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + GUARD_S
    while (record := gateway.get(broadcast_id))["state"] not in FINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"broadcast {broadcast_id} did not finish: {record['state']}")
        time.sleep(0.25)  # polling time is never a figure: the journal's timestamps are
    return record


def line_counters(sim: SimProcess) -> dict[str, int]:
    stats = sim.call("stats", line="rs485")["stats"]
    return {k: stats[k] for k in ("frames", "broadcasts", "bytes_in", "bytes_out", "replies")}


def spans_of(sim: SimProcess, devices: list[str]) -> dict[str, list[dict[str, float]]]:
    return {d: sim.call("audible", device=d)["spans"] for d in devices}


def heard_from(spans: list[dict[str, float]], moment: float) -> float:
    """When a terminal was audible at or after ``moment`` (a span may run on across a hand-over)."""
    return min((max(s["start"], moment) for s in spans if s["end"] >= moment), default=math.inf)


def line_start_after(sim: SimProcess, moment: float) -> float:
    starts = [r["started"] for r in sim.call("audio")["recordings"] if r["started"] >= moment]
    return min(starts, default=math.nan)


def confirmed_at(record: dict[str, Any], devices: list[str]) -> float:
    """When the last of ``devices`` was journalled ``succeeded`` (nan unless all of them were)."""
    done = {o["device_id"]: o["updated_at"] for o in record["outcomes"] if o["outcome"] == "succeeded"}
    return max(done[d] for d in devices) if set(devices) <= set(done) else math.nan


def settle(sim: SimProcess, devices: list[str]) -> None:
    """Wait until no terminal is audible any more (the previous program is over)."""
    deadline = time.monotonic() + GUARD_S
    while any(sim.call("audible", device=d)["audible_now"] for d in devices):
        if time.monotonic() > deadline:
            raise RuntimeError("terminals still audible")
        time.sleep(0.1)
    time.sleep(1.0)


def cached_files(gateway: Gateway) -> int:
    return len(list(gateway.speech_cache.glob("*.wav"))) if gateway.speech_cache.is_dir() else 0


def trigger(label: str, gateway: Gateway, sim: SimProcess, devices: list[str], fm: str | None,
            text: str) -> Trial:
    before, files = line_counters(sim), cached_files(gateway)
    t0 = time.time()
    bid = gateway.submit({**EMERGENCY, "text": text})
    accepted = time.time() - t0
    record = wait_final(gateway, bid)
    after = line_counters(sim)
    spans = spans_of(sim, devices)
    heard = [heard_from(spans[d], t0) for d in devices]
    player = gateway.player_first_sound()
    fm_done = confirmed_at(record, [fm]) if fm else math.nan
    return Trial(label=label, state=record["state"], coverage=float(record["coverage"] or 0.0),
                 accepted=accepted, line=line_start_after(sim, t0) - t0, first_audible=min(heard) - t0,
                 last_audible=max(heard) - t0, confirmed=confirmed_at(record, devices) - t0,
                 fm_confirmed=fm_done - t0, synthesised=cached_files(gateway) > files,
                 player=None if player is None else player - t0,
                 counters={k: after[k] - before[k] for k in after})


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "   n/a"
    return f"{seconds * 1000:6.0f}"


def print_trial(t: Trial, limit: dict[str, float], n: int, via: str) -> None:
    synth = {True: "synthesised now", False: "from the cache", None: "?"}[t.synthesised]
    print(f"\n{t.label} (speech {synth}): {t.state}, coverage {t.coverage:.2f}; "
          f"{via} {ms(t.accepted).strip()} ms")
    player = "" if t.player is None else f"player's first write {ms(t.player)} ms, "
    print(f"  (a) first sound: {player}on the audio line {ms(t.line)} ms, first terminal audible "
          f"{ms(t.first_audible)} ms   target ≤ {200 + limit['warmup'] * 1000:.0f} ms "
          f"(200 ms + {limit['warmup'] * 1000:.0f} ms warm-up)")
    print(f"  (b) all {n} terminals confirmed: {ms(t.confirmed)} ms   wire limit "
          f"{limit['total'] * 1000:.0f} ms   ratio {t.confirmed / limit['total']:.2f} (target ≤ 1.2)")
    print(f"      last terminal audible (simulator) {ms(t.last_audible).strip()} ms; FM carrier confirmed "
          f"{ms(t.fm_confirmed).strip()} ms")
    c = t.counters
    wire = (c["bytes_in"] + c["bytes_out"]) * CHAR_BITS / BAUD
    print(f"      RS-485 frames actually sent until the end of the broadcast: {c['frames']} "
          f"({c['broadcasts']} unit-id-0), {c['bytes_in'] + c['bytes_out']} bytes = {wire * 1000:.0f} ms "
          f"of characters on the wire")


def print_summary(trials: list[Trial], limit: dict[str, float], via: str) -> None:
    print(f"\nsummary over {len(trials) // 2} trial(s), min / median / max in ms:")

    def row(name: str, values: list[float], suffix: str = "") -> None:
        ok = [v for v in values if not (math.isnan(v) or math.isinf(v))]
        if not ok:
            print(f"  {name:<42} n/a")
            return
        print(f"  {name:<42} {min(ok) * 1000:6.0f} {statistics.median(ok) * 1000:6.0f} "
              f"{max(ok) * 1000:6.0f}{suffix}")

    for label in ("uncached", "cached"):
        group = [t for t in trials if t.label.startswith(label)]
        print(f" {label} speech:")
        row(via, [t.accepted for t in group])
        if any(t.player is not None for t in group):
            row("→ player's first write with sound", [t.player or math.nan for t in group])
        row("→ program on the audio line", [t.line for t in group])
        row("→ first terminal audible", [t.first_audible for t in group],
            f"   target ≤ {200 + limit['warmup'] * 1000:.0f}")
        row("→ all terminals confirmed (journal)", [t.confirmed for t in group],
            f"   wire limit {limit['total'] * 1000:.0f}")
        ratios = [t.confirmed / limit["total"] for t in group if not math.isnan(t.confirmed)]
        if ratios:
            print(f"  {'ratio confirmed / wire limit':<42} {min(ratios):6.2f} "
                  f"{statistics.median(ratios):6.2f} {max(ratios):6.2f}   target ≤ 1.2")


def preemption(gateway: Gateway, sim: SimProcess, devices: list[str], text: str) -> None:
    daily = gateway.submit(DAILY)
    deadline = time.monotonic() + GUARD_S
    # steady state first: the daily confirmed on every terminal (its tone is over, it is speaking) ...
    while math.isnan(confirmed_at(gateway.get(daily), devices)):
        if time.monotonic() > deadline:
            raise RuntimeError("the daily broadcast was never confirmed on every terminal")
        time.sleep(0.1)
    # ... then the emergency at a moment the daily is audible (speech has short silent pauses)
    while not sim.call("audible", device=devices[-1])["audible_now"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the daily broadcast is not audible")
        time.sleep(0.005)
    t0 = time.time()
    emergency = gateway.submit({**EMERGENCY, "text": text})
    accepted = time.time() - t0
    e_record = wait_final(gateway, emergency)
    d_record = wait_final(gateway, daily)
    recordings = sim.call("audio")["recordings"]
    playing = [r for r in recordings if r["started"] < t0 <= (r["ended"] or math.inf)]
    off_line = (playing[0]["ended"] or math.nan) - t0 if playing else math.nan  # None: connection reset
    on_line = line_start_after(sim, t0)
    spans = spans_of(sim, devices)
    at_t0 = sum(any(s["start"] <= t0 <= s["end"] for s in spans[d]) for d in devices)
    # the daily's last audible moment at each terminal: the end of its last span that began before the
    # emergency reached the line; at or after that moment the two spans merged (no silent gap)
    last = [max((s["end"] for s in spans[d] if t0 <= s["end"] and s["start"] < on_line), default=math.nan)
            for d in devices]
    stopped = [e - t0 for e in last if e < on_line]
    merged = sum(e >= on_line for e in last)
    heard = [heard_from(spans[d], on_line) - t0 for d in devices]
    print(f"\n(c) pre-emption (daily confirmed on all {len(devices)} terminals and audible on {at_t0}, "
          f"emergency POSTed; {ms(accepted).strip()} ms to accept it):")
    print(f"  daily program off the audio line after {ms(off_line).strip()} ms (target ≤ 500 ms)")
    if stopped:
        print(f"  its sound ends at {len(stopped)} terminal(s) after {ms(min(stopped)).strip()}–"
              f"{ms(max(stopped)).strip()} ms")
    if merged:
        overlap = off_line - (on_line - t0)
        print(f"  at {merged} terminal(s) the daily's audible span runs straight on into the emergency's "
              f"(no silent gap"
              + (f"; both programs on the line for {ms(overlap).strip()} ms)" if overlap > 0 else ")"))
    print(f"  emergency program on the line after {ms(on_line - t0).strip()} ms, audible at the first "
          f"terminal after {ms(min(heard)).strip()} ms, at the last after {ms(max(heard)).strip()} ms;")
    print(f"  all {len(devices)} confirmed after {ms(confirmed_at(e_record, devices) - t0).strip()} ms "
          f"(amplifiers handed over warm: no second warm-up)")
    notes = "; ".join(n["text"] for n in d_record.get("notes", [])) or "no notes"
    print(f"  emergency {e_record['state']}, coverage {float(e_record['coverage'] or 0):.2f}; "
          f"daily {d_record['state']} after replaying ({notes})")


# -- main ---------------------------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_config(work: Path) -> tuple[SimConfig, Path, int]:
    """The simulated township plus the daemon's part: state_dir and API port under ``work``."""
    sim_cfg = write_sim_config(work, rtu_terminals=RTU, tcp_terminals=TCP, baudrate=BAUD)
    port = free_port()
    state_dir = work / "state"
    data = {**sim_cfg.data, "state_dir": str(state_dir), "api": {"host": "127.0.0.1", "port": port},
            "audio_output": {"sink": "sim_line"}}
    sim_cfg.path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return sim_cfg, state_dir, port


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="uncached + cached pairs (default 3)")
    parser.add_argument("--in-process", action="store_true",
                        help="engine in this process, measured from engine.submit() (no API, no ebc run)")
    parser.add_argument("--no-poll", action="store_true", help="with --in-process: no health pollers")
    parser.add_argument("--preemptions", type=int, default=1, help="how many times to run (c); 0 skips it")
    args = parser.parse_args()
    if args.no_poll and not args.in_process:
        parser.error("--no-poll needs --in-process (ebc run always polls)")
    via = "submit() returned after" if args.in_process else "202 after"
    with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
        work = Path(tmp)
        sim_cfg, state_dir, port = write_config(work)
        cfg = load_config(sim_cfg.path)
        devices = [*sim_cfg.rtu_ids, *sim_cfg.tcp_ids]
        with running_simulator(sim_cfg) as sim:
            limit = township_limit(cfg, sim_cfg, sim)
            mode = ("in process, from engine.submit()" if args.in_process
                    else "ebc run as a subprocess, from POST /api/v1/broadcasts")
            poll = "off" if args.no_poll else "on"
            print(f"trigger to air ({mode}): {RTU} ebt-1 on one RS-485 line at {BAUD} baud + {TCP} Modbus "
                  f"TCP + FM; warm-up {limit['warmup']:g} s; health polling {poll}; load average {load()}")
            print(f"wire limit of the RS-485 activation: {limit['total'] * 1000:.0f} ms = prior reads "
                  f"{limit['reads'] * 1000:.0f} + unit-0 writes {limit['writes'] * 1000:.0f} (all but the "
                  f"power-on frame during the warm-up {limit['warmup'] * 1000:.0f}) + read-back "
                  f"{limit['confirm'] * 1000:.0f}; {limit['frames']:.0f} frames")
            gateway: ApiGateway | InProcessGateway
            if args.in_process:
                cfg.state_dir = str(state_dir)
                gateway = InProcessGateway(cfg, sim_cfg, work, poll=not args.no_poll)
            else:
                gateway = ApiGateway(sim_cfg.path, state_dir, port, work / "daemon.log")
                try:
                    gateway.start([*devices, *([sim_cfg.fm_id] if sim_cfg.fm_id else [])])
                except BaseException:
                    gateway.close()
                    raise
            trials: list[Trial] = []
            run_tag = secrets.randbelow(9000) + 1000
            text = TEXT
            try:
                for n in range(1, args.trials + 1):
                    text = f"{TEXT}本条试验编号{run_tag}{n:02d}。"  # never spoken before: uncached
                    for label in (f"uncached #{n}", f"cached #{n}"):
                        settle(sim, devices)
                        trials.append(trigger(label, gateway, sim, devices, sim_cfg.fm_id, text))
                        print_trial(trials[-1], limit, len(devices), via)
                if trials:
                    print_summary(trials, limit, via)
                for _ in range(args.preemptions):
                    settle(sim, devices)
                    preemption(gateway, sim, devices, text)
            except BaseException:
                if isinstance(gateway, ApiGateway):
                    print(f"daemon log (tail):\n{gateway.log_tail()}", file=sys.stderr)
                raise
            finally:
                gateway.close()
            print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
