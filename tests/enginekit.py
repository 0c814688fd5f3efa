"""The daemon's broadcast side in-process against a simulator process, for engine and delivery tests.

``gateway()`` wires what ``ebc run`` wires for broadcasts — drivers with health polling into a
registry, the SQLite journal, the warmed speech worker, the player on the simulator's audio line,
the engine with its releaser, and a health monitor (not started: only its device view and faults)
— and takes it down again, every terminal back at rest. Timeouts here only guard against hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from simkit import SimProcess, running_simulator, write_sim_config

from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.model import FINAL_STATES, BroadcastRequest, BroadcastState, TerminalOutcome
from controller.broadcast.release import Releaser
from controller.config import Config, load_config
from controller.core.actors import Actor, Role
from controller.core.events import BroadcastStateChanged, Event, EventBus
from controller.devices.hardware import Hardware
from controller.devices.health import HealthMonitor
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import SpeechService
from controller.storage.journal import Store
from drivers.audio_output import AudioPlayer, SimLineSink, has_sound

OPERATOR = Actor(name="duty-officer", role=Role.OPERATOR, token_id="tk_test", via="api")
TEXT = "请注意，这是测试。"
HANG_GUARD_S = 60.0
"""Only a guard against a hung test, never a performance claim."""


# -- fixtures (import them into a test module, with pytestmark = pytest.mark.asyncio(loop_scope="module"))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """3 RTU terminals on one 9600-baud pty, 1 TCP terminal, the FM module; physics ×10 (warm-up 0.2 s)."""
    config = write_sim_config(tmp_path_factory.mktemp("sim"), rtu_terminals=3, tcp_terminals=1, time_scale=10)
    with running_simulator(config) as proc:
        yield proc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SpeechService]:
    service = SpeechService(tmp_path_factory.mktemp("speech"))
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def gw(sim: SimProcess, speech: SpeechService, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(sim, speech, tmp_path) as g:
        yield g


@dataclass
class Gateway:
    cfg: Config
    store: Store
    hardware: Hardware
    bus: EventBus
    registry: DeviceRegistry
    engine: BroadcastEngine
    sim: SimProcess
    events: list[Event]
    health: HealthMonitor


async def _collect(bus: EventBus, into: list[Event]) -> None:
    async for event in bus.subscribe():
        into.append(event)


@contextlib.asynccontextmanager
async def gateway(sim: SimProcess, speech: SpeechService, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The daemon's broadcast side on a fresh journal; every terminal back to rest afterwards."""
    cfg = load_config(sim.config.path)
    cfg.state_dir = str(tmp_path / "state")
    store = Store.in_state_dir(cfg.state_dir)
    bus = EventBus()
    registry = DeviceRegistry(cfg, bus)
    hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)
    health = HealthMonitor(cfg, bus, hardware, registry)
    await hardware.start()
    player = AudioPlayer(SimLineSink(sim.config.host, sim.config.audio_port))
    releaser = Releaser(hardware, store, on_pending=health.set_release_pending, on_note=store.add_note)
    engine = BroadcastEngine(cfg, hardware, store, speech, player, bus, registry, releaser=releaser)
    events: list[Event] = []
    collector = asyncio.create_task(_collect(bus, events))
    await asyncio.sleep(0)
    await engine.start()
    try:
        yield Gateway(cfg, store, hardware, bus, registry, engine, sim, events, health)
    finally:
        await engine.stop()
        await releaser.stop()
        collector.cancel()
        await hardware.stop()
        store.close()


def request(cls: str = "daily", *, targets: dict[str, Any] | None = None, text: str = TEXT,
            **extra: Any) -> BroadcastRequest:
    body: dict[str, Any] = {"class": cls, "targets": targets or {"all": True}, "text": text, "tone": "chime",
                            "title": "Test", **extra}
    if cls == "emergency":
        body.setdefault("severity", 2)
    return BroadcastRequest.model_validate(body)


async def wait_state(store: Store, bid: str, states: frozenset[BroadcastState] = FINAL_STATES,
                     timeout: float = HANG_GUARD_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = store.get_broadcast(bid)
        assert record is not None
        if record["state"] in states:
            return record
        assert time.monotonic() < deadline, f"{bid} stuck in {record['state'].name}"
        await asyncio.sleep(0.05)


async def wait_for(predicate: Any, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def outcomes(record: dict[str, Any]) -> dict[str, TerminalOutcome]:
    return {o["device_id"]: o["outcome"] for o in record["outcomes"]}


def spans(sim: SimProcess, device: str, since: float) -> list[dict[str, float]]:
    return [s for s in sim.call("audible", device=device)["spans"] if s["end"] > since]


def sound_extent_s(path: Path) -> float:
    """First to last 20 ms block with sound in a played program (the simulator's own criterion)."""
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    block = 2 * round(rate * 0.02)
    loud = [i for i in range(0, len(pcm), block) if has_sound(pcm[i:i + block])]
    return (loud[-1] + block - loud[0]) / 2 / rate


def play_order(events: list[Event]) -> list[str]:
    return [e.broadcast_id for e in events
            if isinstance(e, BroadcastStateChanged) and e.state == BroadcastState.PLAYING]


