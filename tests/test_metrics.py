"""``/metrics`` (controller/api/metrics.py): valid Prometheus text with every family and its sources.

Real parts: the Store journal, the BroadcastEngine (loop not started), the HealthMonitor fed a
real poll result, the SQLite Outbox and the county command handler. The exposition is checked
by prometheus_client's own parser, as a Prometheus server would read it.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apikit import api_services
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from simkit import write_sim_config
from starlette.testclient import TestClient

from controller.api.app import ApiServices, create_app
from controller.broadcast.model import BroadcastState
from controller.config import Config, load_config
from controller.core.actors import Actor, Role
from controller.devices.health import HealthMonitor
from controller.storage.journal import Store
from controller.uplink.commands import CountyCommands
from controller.uplink.outbox import Outbox
from drivers.line_poller import PollResult
from drivers.modbus_terminal import TerminalSnapshot

DRILL = {"class": "drill", "targets": {"all": True}, "text": "系统测试。"}
COUNTY_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    sim = write_sim_config(tmp_path)
    public = COUNTY_KEY.public_key().public_bytes_raw().hex()
    data = {**sim.data, "state_dir": str(tmp_path / "state"),
            "county": {"keys": [{"id": "county-1", "type": "ed25519", "public_key": public}]}}
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(sim.path)


@pytest.fixture
def services(cfg: Config) -> Iterator[ApiServices]:
    outbox = Outbox.in_state_dir(cfg.state_dir)
    services = api_services(cfg, outbox=outbox)
    assert services.hardware is not None
    services.health = health = HealthMonitor(cfg, services.bus, services.hardware, services.registry)

    async def rebirth() -> None:
        return None

    services.county = CountyCommands(cfg, services.store, services.engine, rebirth=rebirth,
                                     line_check=health.run_line_check)
    yield services
    outbox.close()
    services.store.close()


def scrape(services: ApiServices) -> dict[str, Any]:
    token = services.store.create_token(f"viewer-{secrets.token_hex(3)}", Role.VIEWER)
    with TestClient(create_app(services)) as client:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    found: list[Sample] = [s for s in family.samples if name is None or s.name == name]
    return {tuple(sorted(s.labels.items())): s.value for s in found}


def finished(store: Store, cls: str, seconds: float) -> None:
    bid = f"b-{secrets.token_hex(4)}"
    body = {**DRILL} if cls == "drill" else {**DRILL, "class": cls}
    store.add_broadcast(bid, body, Actor.system(), BroadcastState.WAITING, time.time())
    start = time.time() - seconds
    store.set_state(bid, BroadcastState.PLAYING, started_at=start)
    store.set_state(bid, BroadcastState.SUCCEEDED, finished_at=start + seconds)


def poll(device: str, **values: Any) -> PollResult:
    snap = TerminalSnapshot(device_id=device, unit_id=1, online=True, timestamp=time.time(),
                            values={"mains_ok": True, "amp_on": False, **values})
    return PollResult(device_id=device, cycle=1, snapshot=snap, online=True, consecutive_failures=0,
                      changed=False)


def signed(name: str, args: dict[str, Any], cfg: Config) -> bytes:
    env = {"correlation_id": "m-1", "gateway": cfg.gateway.id, "ts": int(time.time()),
           "nonce": secrets.token_hex(12), "key_id": "county-1", "args": args}
    message = b"ebc-cmd-v1\n" + name.encode() + b"\n" + json.dumps(
        env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return json.dumps({**env, "sig": base64.b64encode(COUNTY_KEY.sign(message)).decode()}).encode()


async def test_every_family_parses(services: ApiServices):
    store, cfg = services.store, services.cfg
    for seconds in (5, 45, 45, 700):
        finished(store, "drill", seconds)
    finished(store, "daily", 20)
    health = services.health
    assert isinstance(health, HealthMonitor)
    health.on_poll(poll("rtu1"))
    health.on_poll(poll("rtu2", amp_fault=True, tamper=True))
    assert services.outbox is not None
    services.outbox.append("event", "ebc/gw-test/events", {"kind": "test"})
    county = services.county
    assert isinstance(county, CountyCommands)
    assert (await county.handle("rebirth", signed("rebirth", {}, cfg)))["ok"] is True
    assert (await county.handle("rebirth", b"nonsense"))["error"] == "bad_request"

    families = scrape(services)

    assert families["ebc_broadcasts"].type == "gauge"
    assert samples(families["ebc_broadcasts"])[(("state", "succeeded"),)] == 5

    durations = families["ebc_broadcast_duration_seconds"]
    assert durations.type == "histogram"
    drill = {s.labels["le"]: s.value for s in durations.samples
             if s.name.endswith("_bucket") and s.labels["class"] == "drill"}
    assert drill["10.0"] == 1 and drill["60.0"] == 3 and drill["600.0"] == 3 and drill["1200.0"] == 4
    assert drill["+Inf"] == 4
    count = samples(durations, "ebc_broadcast_duration_seconds_count")
    total = samples(durations, "ebc_broadcast_duration_seconds_sum")
    assert count[(("class", "daily"),)] == 1
    assert total[(("class", "drill"),)] == pytest.approx(795, abs=0.5)

    state = samples(families["ebc_device_state"])
    assert state[(("device", "rtu1"),)] == 1  # normal
    assert state[(("device", "rtu2"),)] == 3  # fault
    assert state[(("device", "rtu3"),)] == 0  # not answered yet
    faults = samples(families["ebc_device_faults"])
    assert faults == {(("device", "rtu2"), ("fault", "amp_fault")): 1,
                      (("device", "rtu2"), ("fault", "tamper")): 1}

    assert families["ebc_line_requests"].type == "counter"
    assert (("line", "rs485"),) in samples(families["ebc_line_requests"], "ebc_line_requests_total")
    assert families["ebc_line_latency_avg_ms"].type == "gauge"

    commands = samples(families["ebc_county_commands"], "ebc_county_commands_total")
    assert commands == {(("command", "rebirth"), ("result", "ok")): 1,
                        (("command", "rebirth"), ("result", "bad_request")): 1}

    assert samples(families["ebc_outbox_depth"]) == {(): 1}
    assert families["ebc_outbox_dropped_events"].type == "counter"
    for name in ("ebc_devices", "ebc_devices_online", "ebc_device_up", "ebc_uptime_seconds"):
        assert name in families


class OddHealth:
    """A health source whose fault codes need escaping in label values."""

    def device_health(self, device_id: str) -> dict[str, Any]:
        if device_id == "rtu3":
            raise KeyError(device_id)
        return {"state": 3, "faults": [{"fault": 'line "open"\\zone\n2'}, {"fault": 'line "open"\\zone\n2'}]}


class BrokenHealth:
    def device_health(self, device_id: str) -> dict[str, Any]:
        raise RuntimeError("health monitor fell over")


def test_label_values_are_escaped(services: ApiServices):
    services.health = OddHealth()
    families = scrape(services)
    faults = samples(families["ebc_device_faults"])
    assert faults[(("device", "rtu1"), ("fault", 'line "open"\\zone\n2'))] == 2
    assert (("device", "rtu3"),) not in samples(families["ebc_device_state"])


def test_optional_sources_may_be_absent_or_broken(services: ApiServices, caplog: pytest.LogCaptureFixture):
    services.health, services.county, services.outbox, services.hardware = BrokenHealth(), None, None, None
    families = scrape(services)
    for name in ("ebc_device_state", "ebc_device_faults", "ebc_county_commands", "ebc_outbox_depth",
                 "ebc_line_requests"):
        assert name not in families
    for name in ("ebc_broadcasts", "ebc_broadcast_duration_seconds", "ebc_device_up", "ebc_uptime_seconds"):
        assert name in families
    assert "health monitor fell over" in caplog.text
