"""Trigger to air: from ``engine.submit()`` to the first sound and to every terminal confirmed playing.

A config-like township — 16 ebt-1 terminals on one 9600-baud RS-485 line, 4 Modbus TCP terminals,
the FM transmitter — runs in the simulator (its own process, ptys paced at the baud, real warm-up
of 2 s, physics not sped up). The daemon's broadcast side runs here as in ``ebc run``: drivers with
health pollers, the SQLite journal, speech, the audio player on the simulator's audio line, the
engine. An emergency for the whole township is submitted, once with its speech uncached and once
cached, and this prints:

  (a) trigger → first sound: the player's first write with sound, and the first audible span at any
      terminal (simulator), against the target 200 ms + amplifier warm-up;
  (b) trigger → all 20 terminals confirmed audible (the last read-back), against the wire-time
      limit of the RS-485 line: for the frames activation needs — per terminal the prior-state
      reads, the unit-id-0 write frames, one status read-back per terminal — bytes × 10 / baud +
      3.5-character silences + the simulator's turnaround (the arbiter's 100 ms after each
      broadcast frame), plus the configured warm-up (the write frames after power-on overlap it).
      Target ≤ 1.2 × that. The frames actually sent on the line (incl. status polls while the
      amplifiers warm up, and the health poller's) are printed too;
  (c) pre-emption: a daily broadcast is playing, an emergency is submitted: time until the daily
      one's sound stops at a terminal, and until the emergency is audible (target ≤ 500 ms to stop).

Run: .venv/bin/python bench/trigger_to_air.py [--no-poll]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the same simulator harness the tests use
sys.path.insert(0, str(REPO / "bench"))

from line_efficiency import CHAR_BITS, reply_bytes  # noqa: E402
from simkit import SimProcess, running_simulator, write_sim_config  # noqa: E402

from controller.activation import PRIOR_POINTS, STATUS_POINTS, ActivationSettings  # noqa: E402
from controller.auth import Actor, Role  # noqa: E402
from controller.broadcasts import FINAL_STATES, BroadcastRequest  # noqa: E402
from controller.config import load_config  # noqa: E402
from controller.device_state import DeviceRegistry  # noqa: E402
from controller.engine import BroadcastEngine  # noqa: E402
from controller.events import Event, EventBus  # noqa: E402
from controller.hardware import Hardware  # noqa: E402
from controller.store import Store  # noqa: E402
from controller.tts import SpeechService  # noqa: E402
from drivers.audio_output import AudioPlayer, SimLineSink  # noqa: E402
from drivers.line_arbiter import SerialLineSettings  # noqa: E402
from drivers.modbus_codec import ReadBlock, WriteBlock, read_plan, write_plan  # noqa: E402
from drivers.modbus_terminal import ModbusTerminal, zone_values  # noqa: E402

BAUD = 9600
RTU, TCP = 16, 4
ACTOR = Actor(name="bench", role=Role.OPERATOR, via="api")
TEXT = "濉溪县气象台发布暴雨红色预警，请村民注意防范。"
EMERGENCY = BroadcastRequest.model_validate({"class": "emergency", "severity": 1, "source_level": 3,
                                             "targets": {"all": True}, "text": TEXT, "tone": "chime",
                                             "title": "Rainstorm red warning"})


def request_bytes(block: ReadBlock | WriteBlock) -> int:
    """RTU request size: unit, function, fields, data, CRC."""
    if isinstance(block, ReadBlock) or block.function_code in (5, 6):
        return 8
    n = len(block.values)
    return 9 + (math.ceil(n / 8) if block.function_code == 15 else 2 * n)


def wire_limit_s(terminals: list[ModbusTerminal], settings: ActivationSettings, turnaround_s: float,
                 broadcast_silence_s: float, warmup_s: float) -> dict[str, float]:
    """The shortest time one RS-485 line can take to activate ``terminals`` and confirm them all."""
    char_s = CHAR_BITS / BAUD
    t35 = 3.5 * char_s

    def transaction(block: ReadBlock) -> float:
        return (request_bytes(block) + reply_bytes(block)) * char_s + 2 * t35 + turnaround_s

    profile = terminals[0].profile
    prior = read_plan(profile, [*PRIOR_POINTS, *(f"zone_{z}" for z in range(1, profile.zones + 1))])
    status = read_plan(profile, STATUS_POINTS)
    level = {"amp_power": True, "emergency_override": settings.emergency, "volume": settings.volume,
             "audio_source": "line_in"}
    frames = [*write_plan(profile, level), *write_plan(profile, zone_values(profile, [1, 2]))]
    reads = len(terminals) * sum(transaction(b) for b in prior.blocks)
    power, *rest = [request_bytes(b) * char_s + t35 + broadcast_silence_s for b in frames]
    confirm = len(terminals) * sum(transaction(b) for b in status.blocks)
    # the frames after the power-on frame go out while the amplifiers warm up
    total = reads + power + max(warmup_s, sum(rest)) + confirm
    frame_count = len(terminals) * (len(prior.blocks) + len(status.blocks)) + len(frames)
    return {"reads": reads, "writes": power + sum(rest), "warmup": warmup_s, "confirm": confirm,
            "total": total, "frames": frame_count}


def first_span_start(sim: SimProcess, devices: list[str], since: float) -> float | None:
    starts = [s["start"] for d in devices for s in sim.call("audible", device=d)["spans"]]
    return min((t for t in starts if t >= since), default=None)


def _heard_from(spans: list[dict[str, float]], moment: float) -> float:
    """When a terminal was audible at or after ``moment`` (a span may run on across a hand-over)."""
    return min((max(s["start"], moment) for s in spans if s["end"] >= moment), default=math.inf)


def line_counters(sim: SimProcess) -> dict[str, int]:
    stats = sim.call("stats", line="rs485")["stats"]
    return {k: stats[k] for k in ("frames", "broadcasts", "bytes_in", "bytes_out", "replies")}


async def wait_final(store: Store, bid: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (record := store.get_broadcast(bid)) is None or record["state"] not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise RuntimeError(f"broadcast {bid} did not finish")
        await asyncio.sleep(0.05)
    return record


async def settle(sim: SimProcess, devices: list[str]) -> None:
    """Wait until no terminal is audible any more (the previous program is over)."""
    while any(sim.call("audible", device=d)["audible_now"] for d in devices):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)


async def trigger(label: str, engine: BroadcastEngine, store: Store, sim: SimProcess, player: AudioPlayer,
                  events: list[Event], devices: list[str], limit: dict[str, float]) -> None:
    before = line_counters(sim)
    t_wall, t_mono = time.time(), time.monotonic()
    bid = await engine.submit(EMERGENCY, ACTOR)
    record = await wait_final(store, bid)
    after = line_counters(sim)
    result = player.last_result
    first_write = (result.first_sound_at - t_mono) if result and result.first_sound_at else math.nan
    first_heard = (first_span_start(sim, devices, t_wall) or math.nan) - t_wall
    confirmed = [e.ts for e in events if e.kind == "broadcast.outcome" and e.data["id"] == bid
                 and e.data["outcome"] == "succeeded" and e.data["device"] in devices]
    all_confirmed = (max(confirmed) - t_wall) if len(confirmed) == len(devices) else math.nan
    sent = {k: after[k] - before[k] for k in after}
    char_s = CHAR_BITS / BAUD
    sent_wire = (sent["bytes_in"] + sent["bytes_out"]) * char_s
    print(f"\n{label}: {record['state'].name.lower()}, coverage {record['coverage']:.2f}")
    print(f"  (a) first sound: player {first_write * 1000:6.0f} ms, first terminal audible "
          f"{first_heard * 1000:6.0f} ms   target ≤ {200 + limit['warmup'] * 1000:.0f} ms "
          f"(200 ms + {limit['warmup'] * 1000:.0f} ms warm-up)")
    print(f"  (b) all {len(devices)} terminals confirmed: {all_confirmed * 1000:6.0f} ms   wire limit "
          f"{limit['total'] * 1000:.0f} ms (prior reads {limit['reads'] * 1000:.0f} + unit-0 writes "
          f"{limit['writes'] * 1000:.0f}, all but the power-on frame during the warm-up "
          f"{limit['warmup'] * 1000:.0f} + read-back "
          f"{limit['confirm'] * 1000:.0f}; {limit['frames']:.0f} frames)   ratio "
          f"{all_confirmed / limit['total']:.2f} (target ≤ 1.2)")
    print(f"      RS-485 frames actually sent until the end of the broadcast: {sent['frames']} "
          f"({sent['broadcasts']} unit-id-0), {sent['bytes_in'] + sent['bytes_out']} bytes = "
          f"{sent_wire * 1000:.0f} ms of characters on the wire")


async def preemption(engine: BroadcastEngine, store: Store, sim: SimProcess, devices: list[str]) -> None:
    daily = BroadcastRequest.model_validate({"class": "daily", "targets": {"all": True}, "tone": "chime",
                                             "text": "各位村民请注意，今天下午三点在村委会召开会议。"})
    d1 = await engine.submit(daily, ACTOR)
    while not sim.call("audible", device="tcp1")["audible_now"]:
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)
    t_wall = time.time()
    e1 = await engine.submit(EMERGENCY, ACTOR)
    await wait_final(store, e1)
    await wait_final(store, d1)
    recordings = sim.call("audio")["recordings"]
    stopped = next(r["ended"] for r in recordings if r["started"] < t_wall <= (r["ended"] or math.inf))
    started = min(r["started"] for r in recordings if r["started"] > t_wall)
    heard = min(_heard_from(sim.call("audible", device=d)["spans"], started) for d in devices)
    print(f"\n(c) pre-emption (daily playing on all {len(devices)} terminals, emergency submitted):")
    print(f"  daily program off the audio line after {(stopped - t_wall) * 1000:.0f} ms (target ≤ 500 ms); "
          f"emergency program on the line after {(started - t_wall) * 1000:.0f} ms, audible at a terminal "
          f"after {(heard - t_wall) * 1000:.0f} ms (amplifiers handed over warm: no second warm-up)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-poll", action="store_true", help="run without the health pollers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ebc-bench-") as tmp:
        cfg_sim = write_sim_config(Path(tmp), rtu_terminals=RTU, tcp_terminals=TCP, baudrate=BAUD)
        with running_simulator(cfg_sim) as sim:
            cfg = load_config(cfg_sim.path)
            cfg.state_dir = str(Path(tmp) / "state")
            store, bus = Store.in_state_dir(cfg.state_dir), EventBus()
            registry = DeviceRegistry(cfg, bus)
            hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)
            await hardware.start(poll=not args.no_poll)
            speech = SpeechService(Path(tmp) / "speech-cache")
            await speech.start()
            player = AudioPlayer(SimLineSink(cfg_sim.host, cfg_sim.audio_port))
            engine = BroadcastEngine(cfg, hardware, store, speech, player, bus, registry)
            events: list[Event] = []

            async def collect() -> None:
                async for event in bus.subscribe():
                    events.append(event)

            collector = asyncio.create_task(collect())
            await engine.start()
            devices = [*cfg_sim.rtu_ids, *cfg_sim.tcp_ids]
            rtu = [hardware.terminals[d] for d in cfg_sim.rtu_ids]
            warmup_s = sim.state(cfg_sim.rtu_ids[0])["holding"]["warmup_ms"] / 1000
            line = hardware.arbiters["rs485"].settings
            assert isinstance(line, SerialLineSettings)
            settings = ActivationSettings.for_request(EMERGENCY, daily_volume=70, ready_timeout_s=15)
            limit = wire_limit_s(rtu, settings, cfg_sim.data["simulator"]["turnaround_ms"] / 1000,
                                 line.broadcast_turnaround_s, warmup_s)
            print(f"trigger to air: {RTU} ebt-1 on one RS-485 line at {BAUD} baud + {TCP} Modbus TCP + FM; "
                  f"warm-up {warmup_s:g} s; health polling {'off' if args.no_poll else 'on'}")
            try:
                await settle(sim, devices)
                await trigger("uncached speech", engine, store, sim, player, events, devices, limit)
                await settle(sim, devices)
                await trigger("cached speech", engine, store, sim, player, events, devices, limit)
                await settle(sim, devices)
                await preemption(engine, store, sim, devices)
            finally:
                await engine.stop()
                collector.cancel()
                await hardware.stop()
                await speech.close()
                store.close()


if __name__ == "__main__":
    asyncio.run(main())
