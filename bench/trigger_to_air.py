"""Trigger to air: API POST → every targeted terminal ready and the program on the line → audible.

A config-like township — 16 ebt-1 terminals on one 9600-baud RS-485 line, 4 Modbus TCP terminals,
the FM transmitter — runs in the simulator (its own process, ptys paced at the baud, real amplifier
warm-up of 2 s, physics not sped up). The gateway is the real daemon: ``ebc run --config FILE`` as
a second process (state_dir in a temp dir, health polling on as always), driven through its API
with an operator token made by ``ebc token create``. Both processes run on this machine and share
its wall clock, so the simulator's timestamps and the journal's compare with the moment this
script sent the POST.

The program (its attention tone) starts when *every* terminal that answered has been read back
ready (controller/broadcast/activation.py ``wait_ready``), so that every horn hears the whole tone; a
terminal's ``succeeded`` outcome comes only once a complete repetition is proven (near the end of
the program), so it no longer marks when the township was on air. Each trial POSTs an emergency
for the whole township with a text never spoken before (speech uncached), then the same text
again (cached), and prints, from the moment the POST was sent:

  (a) first sound: when the program reached the simulator's audio line (its recording starts when
      the player connects, right before the first chunk — the attention chime), the first 20 ms
      block of it with sound, and the earliest audible span at any targeted terminal (control op
      ``audible``); against DESIGN §3, an alert signal within 3 s of an emergency trigger;
  (b) every targeted terminal confirmed ready and the program on the line (the line start above:
      the player is only started once the last terminal read back ready), against the wire-time
      limit of the RS-485 line for what activation needs before that — per terminal the prior
      coil read, the unit-id-0 power frame, the warm-up (the holding-register prior reads and the
      volume/source and zone frames overlap it), one status read-back per terminal: bytes × 10 /
      baud + 3.5-character silences + the simulator's turnaround (the arbiter's 100 ms after each
      unit-id-0 frame). Target ≤ 1.2 × that. Also when the last terminal became audible
      (simulator), the spread between the first and the last terminal's audible start, and each
      terminal's audible start relative to the program's first sound (every horn is promised the
      whole tone: each ≤ 100 ms); the outcomes (succeeded, joined late, missed seconds, when the
      last success was journalled); the frames actually sent on the line (incl. status polls
      while the amplifiers warm up, and the health poller's), the 202 time;
  (c) pre-emption: a daily broadcast is audible on every terminal (simulator), an emergency is
      POSTed: time until the daily program is off the audio line (target ≤ 500 ms) and its sound
      ends at the terminals, and until the emergency is on the line and audible at every terminal.
      The simulator logs audibility per terminal, not per program: when the emergency reaches the
      line before the daily's last buffered audio has played, the two audible spans merge (no
      silent gap) and the line is the only place the stop shows.

``--in-process`` runs the daemon's broadcast side in this process instead (drivers, journal,
releaser, speech, player and engine as ``ebc run`` wires them, no API) and measures from
``engine.submit()``; it also prints the player's first write with sound, and ``--no-poll`` switches
its health pollers off.

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
import wave
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

from controller.broadcast.activation import (  # noqa: E402
    LEVEL_PRIOR_POINTS,
    POWER_PRIOR_POINTS,
    STATUS_POINTS,
    ActivationSettings,
)
from controller.broadcast.model import BroadcastRequest  # noqa: E402
from controller.broadcast.release import known_points, zone_points  # noqa: E402
from controller.broadcast.targets import resolve  # noqa: E402
from controller.config import Config, load_config  # noqa: E402
from controller.core.actors import Actor, Role  # noqa: E402
from controller.devices.hardware import line_settings  # noqa: E402
from controller.speech.tts import CACHE_SUBDIR  # noqa: E402
from drivers.line_arbiter import SerialLineSettings  # noqa: E402
from drivers.line_poller import PollResult  # noqa: E402
from drivers.modbus_codec import ReadBlock, WriteBlock, read_plan, write_plan  # noqa: E402
from drivers.modbus_terminal import zone_values  # noqa: E402
from drivers.profile import ModbusTerminalProfile  # noqa: E402
from simulator.audio_line import BLOCK_S, PRESENT_DBFS, rms_dbfs  # noqa: E402

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
                 zones: tuple[int, ...], turnaround_s: float, broadcast_silence_s: float,
                 warmup_s: float) -> dict[str, float]:
    """The shortest time one RS-485 line can take to switch ``terminals`` on and read every one
    back ready, in the order controller/broadcast/activation.py joins a whole line (unit-id-0 frames).

    When the health polls' settings are fresh (``broadcast.prior_state_max_age_s``, the default
    path once polling has run for a minute) the prior state is journalled from them and no read
    goes before the power-on frame; otherwise each terminal's coils are read first."""
    char_s = CHAR_BITS / BAUD
    t35 = 3.5 * char_s

    def transaction(block: ReadBlock) -> float:
        return (request_bytes(block) + reply_bytes(block)) * char_s + 2 * t35 + turnaround_s

    def frame(block: WriteBlock) -> float:
        """A unit-id-0 frame: nobody replies, the arbiter keeps the line quiet afterwards."""
        return request_bytes(block) * char_s + t35 + broadcast_silence_s

    coil_prior = read_plan(profile, [*(p for p in POWER_PRIOR_POINTS if p in profile.points),
                                     *zone_points(profile)])
    level_prior = read_plan(profile, [p for p in LEVEL_PRIOR_POINTS if p in profile.points])
    status = read_plan(profile, [p for p in STATUS_POINTS if p in profile.points])
    power = write_plan(profile, known_points(profile, {"amp_power": True,
                                                       "emergency_override": settings.emergency}))
    level = write_plan(profile, known_points(profile, {"volume": settings.volume, "audio_source": "line_in"}))
    zone = write_plan(profile, known_points(profile, zone_values(profile, zones)))
    reads = 0.0 if settings.prior_state_max_age_s > 0 else terminals * sum(
        transaction(b) for b in coil_prior.blocks)
    # the amplifiers start warming up as they receive the power frame: its quiet time is warm-up
    power_s = sum(frame(b) for b in power) - broadcast_silence_s
    level_reads = 0.0 if settings.prior_state_max_age_s > 0 else terminals * sum(
        transaction(b) for b in level_prior.blocks)
    during = broadcast_silence_s + level_reads + sum(frame(b) for b in (*level, *zone))
    confirm = terminals * sum(transaction(b) for b in status.blocks)
    total = reads + power_s + max(warmup_s, during) + confirm
    polled = settings.prior_state_max_age_s > 0
    prior_blocks = 0 if polled else len(coil_prior.blocks) + len(level_prior.blocks)
    frame_count = (terminals * (prior_blocks + len(status.blocks))
                   + len(power) + len(level) + len(zone))
    return {"reads": reads, "power": power_s, "warmup": warmup_s, "during": during,
            "level_reads": level_reads, "confirm": confirm, "total": total, "frames": frame_count,
            "unit0": len(power) + len(level) + len(zone)}


def township_limit(cfg: Config, sim_cfg: SimConfig, sim: SimProcess) -> dict[str, float]:
    profile = cfg.profiles["ebt-1"]
    assert isinstance(profile, ModbusTerminalProfile)
    line = line_settings(cfg.line("rs485"))
    assert isinstance(line, SerialLineSettings)
    warmup_s = sim.state(sim_cfg.rtu_ids[0])["holding"]["warmup_ms"] / 1000
    request = BroadcastRequest.model_validate(EMERGENCY)
    settings = ActivationSettings.for_request(request, daily_volume=cfg.broadcast.daily_volume,
                                              ready_timeout_s=cfg.broadcast.ready_timeout_s,
                                              ready_hold_s=cfg.broadcast.ready_hold_s,
                                              prior_state_max_age_s=cfg.broadcast.prior_state_max_age_s)
    zones = resolve(cfg, request.targets).terminals[sim_cfg.rtu_ids[0]]
    turnaround_s = sim_cfg.data["simulator"]["turnaround_ms"] / 1000
    return wire_limit_s(profile, len(sim_cfg.rtu_ids), settings, zones, turnaround_s,
                        line.broadcast_turnaround_s, warmup_s)


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
        out = subprocess.run([sys.executable, "-m", "controller.app.cli", *args,
                              "--config", str(self.config)],
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
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.app.cli", "run", "--config",
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
    """The daemon's broadcast side (no API) on an event loop in a thread of this process, wired as
    controller/app/daemon.py wires it: the engine gets the releaser that health polls wake."""

    ACTOR = Actor(name="bench", role=Role.OPERATOR, via="api")

    def __init__(self, cfg: Config, sim_cfg: SimConfig, work: Path, poll: bool) -> None:
        from controller.broadcast.engine import BroadcastEngine
        from controller.broadcast.release import Releaser
        from controller.core.events import EventBus
        from controller.devices.hardware import Hardware
        from controller.devices.registry import DeviceRegistry
        from controller.speech.tts import SpeechService
        from controller.storage.journal import Store
        from drivers.audio_output import AudioPlayer, SimLineSink

        self.speech_cache = work / "speech-cache"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.mono_to_wall = time.time() - time.monotonic()

        async def start() -> None:
            self.store, bus = Store.in_state_dir(cfg.state_dir), EventBus()
            registry = DeviceRegistry(cfg, bus)

            def on_poll(result: PollResult) -> None:
                registry.on_poll(result)
                if result.online:
                    self.releaser.wake(result.device_id)  # heard again: restore it now if it waits

            self.hardware = Hardware.from_config(cfg, on_poll=on_poll)
            self.releaser = Releaser(self.hardware, self.store, on_note=self.store.add_note)
            await self.hardware.start(poll=poll)
            self.speech = SpeechService(self.speech_cache)
            await self.speech.start()
            self.player = AudioPlayer(SimLineSink(sim_cfg.host, sim_cfg.audio_port))
            self.engine = BroadcastEngine(cfg, self.hardware, self.store, self.speech, self.player, bus,
                                          registry, releaser=self.releaser)
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
                await self.engine.stop()  # devices restored (or journalled for the next start) first
                await self.releaser.stop()
                await self.hardware.stop()
                await self.speech.stop()
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
class Outcomes:
    """What the journal says each device played (controller/broadcast/evidence.py), for one broadcast."""

    succeeded: int
    total: int
    joined_late: list[str]
    most_missed_s: float
    last_success: float
    """Seconds from the POST to the last ``succeeded`` outcome journalled (a complete repetition
    proven, so near the end of the program; nan unless every device succeeded)."""


@dataclass
class Trial:
    label: str
    state: str
    coverage: float
    accepted: float
    """POST sent → 202 received (in-process: submit() returned)."""
    line: float
    """→ the program on the simulator's audio line (recording started): the player is started only
    once every terminal that answered has been read back ready."""
    first_sound: float
    """→ the program's first 20 ms block with sound on the line."""
    audible: dict[str, float]
    """→ each targeted terminal audible (simulator), by device id."""
    outcomes: Outcomes
    synthesised: bool | None
    player: float | None = None
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def first_audible(self) -> float:
        return min(self.audible.values())

    @property
    def last_audible(self) -> float:
        return max(self.audible.values())

    @property
    def spread(self) -> float:
        """First → last terminal's audible start: how unequal the horns' start was."""
        return self.last_audible - self.first_audible

    @property
    def lag(self) -> dict[str, float]:
        """Each terminal's audible start after the program's first sound (≤ 100 ms: whole tone)."""
        return {d: a - self.first_sound for d, a in self.audible.items()}


def wait_final(gateway: Gateway, broadcast_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + GUARD_S
    while (record := gateway.get(broadcast_id))["state"] not in FINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"broadcast {broadcast_id} did not finish: {record['state']}")
        time.sleep(0.25)  # polling time is never a figure: the journal's and simulator's timestamps are
    return record


def line_counters(sim: SimProcess) -> dict[str, int]:
    stats = sim.call("stats", line="rs485")["stats"]
    return {k: stats[k] for k in ("frames", "broadcasts", "bytes_in", "bytes_out", "replies")}


def spans_of(sim: SimProcess, devices: list[str]) -> dict[str, list[dict[str, float]]]:
    return {d: sim.call("audible", device=d)["spans"] for d in devices}


def heard_from(spans: list[dict[str, float]], moment: float) -> float:
    """When a terminal was audible at or after ``moment`` (a span may run on across a hand-over)."""
    return min((max(s["start"], moment) for s in spans if s["end"] >= moment), default=math.inf)


def recording_after(sim: SimProcess, moment: float) -> dict[str, Any] | None:
    """The first recording of the audio line that began at or after ``moment`` (one per program)."""
    after = [r for r in sim.call("audio")["recordings"] if r["started"] >= moment]
    return min(after, key=lambda r: r["started"], default=None)


def first_sound(recording: dict[str, Any] | None) -> float:
    """Wall-clock time of a recording's first 20 ms block the simulator judges as sound (its own
    threshold: what makes a terminal audible); nan if none. Block n plays n × 20 ms after the
    recording started (the simulator paces the line in real time)."""
    if recording is None:
        return math.nan
    with wave.open(recording["file"], "rb") as wav:
        rate, width = wav.getframerate(), wav.getsampwidth() * wav.getnchannels()
        pcm = wav.readframes(wav.getnframes())
    block = round(rate * BLOCK_S) * width
    for i in range(0, len(pcm), block):
        if rms_dbfs(pcm[i:i + block]) > PRESENT_DBFS:
            return float(recording["started"]) + i / width / rate
    return math.nan


def outcomes_of(record: dict[str, Any], t0: float) -> Outcomes:
    out = record["outcomes"]
    done = [o for o in out if o["outcome"] == "succeeded"]
    last = max(o["updated_at"] for o in done) - t0 if done and len(done) == len(out) else math.nan
    return Outcomes(succeeded=len(done), total=len(out),
                    joined_late=[o["device_id"] for o in out if o.get("joined_late")],
                    most_missed_s=max((float(o.get("missed_s") or 0.0) for o in out), default=0.0),
                    last_success=last)


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


def trigger(label: str, gateway: Gateway, sim: SimProcess, devices: list[str], text: str) -> Trial:
    before, files = line_counters(sim), cached_files(gateway)
    t0 = time.time()
    bid = gateway.submit({**EMERGENCY, "text": text})
    accepted = time.time() - t0
    record = wait_final(gateway, bid)
    after = line_counters(sim)
    spans = spans_of(sim, devices)
    recording = recording_after(sim, t0)
    player = gateway.player_first_sound()
    return Trial(label=label, state=record["state"], coverage=float(record["coverage"] or 0.0),
                 accepted=accepted, line=(recording["started"] if recording else math.nan) - t0,
                 first_sound=first_sound(recording) - t0,
                 audible={d: heard_from(spans[d], t0) - t0 for d in devices},
                 outcomes=outcomes_of(record, t0), synthesised=cached_files(gateway) > files,
                 player=None if player is None else player - t0,
                 counters={k: after[k] - before[k] for k in after})


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "   n/a"
    return f"{seconds * 1000:6.0f}"


LAG_LIMIT_S = 0.1
"""Every horn is promised the whole attention tone: audible this soon after the program's first sound."""
ALERT_SIGNAL_S = 3.0
"""DESIGN §3: an alert signal within 3 s of an emergency trigger."""


def print_lags(lag: dict[str, float], indent: str = "      ") -> None:
    over = [d for d, v in lag.items() if v > LAG_LIMIT_S]
    verdict = f"OVER 100 ms: {', '.join(over)}" if over else "all ≤ 100 ms"
    print(f"{indent}audible start − the program's first sound, ms ({verdict}):")
    items = [f"{d} {v * 1000:+.0f}" for d, v in lag.items()]
    for i in range(0, len(items), 10):
        print(f"{indent}  " + "  ".join(items[i:i + 10]))


def print_outcomes(o: Outcomes, indent: str = "      ") -> None:
    late = ", ".join(o.joined_late) or "none"
    print(f"{indent}outcomes: {o.succeeded}/{o.total} succeeded, joined late: {late}, most missed "
          f"{o.most_missed_s:.1f} s; last success journalled (a complete repetition proven) after "
          f"{ms(o.last_success).strip()} ms")


def print_trial(t: Trial, limit: dict[str, float], n: int, via: str) -> None:
    synth = {True: "synthesised now", False: "from the cache", None: "?"}[t.synthesised]
    print(f"\n{t.label} (speech {synth}): {t.state}, coverage {t.coverage:.2f}; "
          f"{via} {ms(t.accepted).strip()} ms")
    player = "" if t.player is None else f"player's first write {ms(t.player).strip()} ms, "
    print(f"  (a) first sound: {player}program on the audio line {ms(t.line).strip()} ms, its first sound "
          f"{ms(t.first_sound).strip()} ms, first terminal audible {ms(t.first_audible).strip()} ms   "
          f"DESIGN §3 alert signal ≤ {ALERT_SIGNAL_S * 1000:.0f} ms")
    print(f"  (b) every terminal confirmed ready and the program on the line: {ms(t.line).strip()} ms   "
          f"wire limit {limit['total'] * 1000:.0f} ms   ratio {t.line / limit['total']:.2f} (target ≤ 1.2)")
    print(f"      last of {n} terminals audible (simulator) {ms(t.last_audible).strip()} ms; first → last "
          f"audible start {ms(t.spread).strip()} ms")
    print_lags(t.lag)
    print_outcomes(t.outcomes)
    c = t.counters
    wire = (c["bytes_in"] + c["bytes_out"]) * CHAR_BITS / BAUD
    print(f"      RS-485 frames actually sent until the end of the broadcast: {c['frames']} "
          f"({c['broadcasts']} unit-id-0), {c['bytes_in'] + c['bytes_out']} bytes = {wire * 1000:.0f} ms "
          f"of characters on the wire")


def print_summary(trials: list[Trial], limit: dict[str, float], via: str) -> None:
    print(f"\nsummary over {len(trials) // 2} trial(s), min / median / max in ms:")

    def row(name: str, values: list[float], suffix: str = "", scale: float = 1000.0,
            fmt: str = "6.0f") -> None:
        ok = [v for v in values if not (math.isnan(v) or math.isinf(v))]
        if not ok:
            print(f"  {name:<52} n/a")
            return
        print(f"  {name:<52} {min(ok) * scale:{fmt}} {statistics.median(ok) * scale:{fmt}} "
              f"{max(ok) * scale:{fmt}}{suffix}")

    for label in ("uncached", "cached"):
        group = [t for t in trials if t.label.startswith(label)]
        print(f" {label} speech:")
        row(via, [t.accepted for t in group])
        if any(t.player is not None for t in group):
            row("→ player's first write with sound", [t.player or math.nan for t in group])
        row("→ every terminal ready, program on the audio line", [t.line for t in group],
            f"   wire limit {limit['total'] * 1000:.0f}")
        row("ratio to the wire limit", [t.line / limit["total"] for t in group], "   target ≤ 1.2",
            scale=1.0, fmt="6.2f")
        row("→ the program's first sound on the line", [t.first_sound for t in group],
            f"   DESIGN §3 ≤ {ALERT_SIGNAL_S * 1000:.0f}")
        row("→ first terminal audible (simulator)", [t.first_audible for t in group])
        row("→ last terminal audible (simulator)", [t.last_audible for t in group])
        row("first → last terminal's audible start", [t.spread for t in group])
        row("latest audible start − program's first sound", [max(t.lag.values()) for t in group],
            f"   target ≤ {LAG_LIMIT_S * 1000:.0f}")
        row("→ last success journalled (repetition proven)", [t.outcomes.last_success for t in group])


def preemption(gateway: Gateway, sim: SimProcess, devices: list[str], text: str) -> None:
    daily = gateway.submit(DAILY)
    deadline = time.monotonic() + GUARD_S
    # steady state first: the daily audible on every terminal (the simulator's view; its outcomes
    # come only once a complete repetition is proven, too late to pre-empt it)
    while not all(sim.call("audible", device=d)["audible_now"] for d in devices):
        if time.monotonic() > deadline:
            raise RuntimeError("the daily broadcast never became audible on every terminal")
        time.sleep(0.005)
    t0 = time.time()
    emergency = gateway.submit({**EMERGENCY, "text": text})
    accepted = time.time() - t0
    e_record = wait_final(gateway, emergency)
    d_record = wait_final(gateway, daily)
    recordings = sim.call("audio")["recordings"]
    playing = [r for r in recordings if r["started"] < t0 <= (r["ended"] or math.inf)]
    off_line = (playing[0]["ended"] or math.nan) - t0 if playing else math.nan  # None: connection reset
    into_daily = t0 - first_sound(playing[0]) if playing else math.nan
    e_recording = recording_after(sim, t0)
    on_line = e_recording["started"] if e_recording else math.nan
    e_sound = first_sound(e_recording)
    spans = spans_of(sim, devices)
    at_t0 = sum(any(s["start"] <= t0 <= s["end"] for s in spans[d]) for d in devices)
    # the daily's last audible moment at each terminal: the end of its last span that began before the
    # emergency reached the line; at or after that moment the two spans merged (no silent gap)
    last = [max((s["end"] for s in spans[d] if t0 <= s["end"] and s["start"] < on_line), default=math.nan)
            for d in devices]
    stopped = [e - t0 for e in last if e < on_line]
    merged = sum(e >= on_line for e in last)
    heard = {d: heard_from(spans[d], on_line) for d in devices}
    print(f"\n(c) pre-emption (daily audible on all {len(devices)} terminals, on {at_t0} at the POST, "
          f"{ms(into_daily).strip()} ms after its first sound; emergency POSTed, {ms(accepted).strip()} ms "
          f"to accept it):")
    print(f"  daily program off the audio line after {ms(off_line).strip()} ms (target ≤ 500 ms)")
    if stopped:
        print(f"  its sound ends at {len(stopped)} terminal(s) after {ms(min(stopped)).strip()}–"
              f"{ms(max(stopped)).strip()} ms")
    if merged:
        overlap = off_line - (on_line - t0)
        print(f"  at {merged} terminal(s) the daily's audible span runs straight on into the emergency's "
              f"(no silent gap"
              + (f"; both programs on the line for {ms(overlap).strip()} ms)" if overlap > 0 else ")"))
    audible = [h - t0 for h in heard.values()]
    print(f"  emergency program on the line after {ms(on_line - t0).strip()} ms (every terminal read back "
          f"ready first; amplifiers handed over warm: no second warm-up), its first sound after "
          f"{ms(e_sound - t0).strip()} ms;")
    print(f"  audible at the first terminal after {ms(min(audible)).strip()} ms, at all {len(devices)} after "
          f"{ms(max(audible)).strip()} ms (first → last {ms(max(audible) - min(audible)).strip()} ms)")
    gap = (e_sound - t0) - off_line
    if gap > 0:  # the emergency waits for every terminal's read-back while the daily is already gone
        print(f"  the audio line is silent between the daily's end and the emergency's first sound for "
              f"{ms(gap).strip()} ms")
    print_lags({d: h - e_sound for d, h in heard.items()}, indent="  ")
    print_outcomes(outcomes_of(e_record, t0), indent="  ")
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
            print(f"wire limit of the RS-485 activation up to every terminal read back ready: "
                  f"{limit['total'] * 1000:.0f} ms = prior coil reads {limit['reads'] * 1000:.0f} "
                  f"+ unit-0 power frame {limit['power'] * 1000:.0f} + warm-up {limit['warmup'] * 1000:.0f} "
                  f"(overlapping it: prior volume/source reads {limit['level_reads'] * 1000:.0f}, the "
                  f"volume/source and zone frames, {limit['during'] * 1000:.0f} in all) + status "
                  f"read-backs {limit['confirm'] * 1000:.0f}; {limit['frames']:.0f} frames, "
                  f"{limit['unit0']:.0f} of them unit-id-0")
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
                        trials.append(trigger(label, gateway, sim, devices, text))
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
