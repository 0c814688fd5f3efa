"""Device health: fault rules and state codes from synthetic readings, then the whole chain
(simulator subprocess → real drivers → HealthMonitor → events) with injected faults.

Bounds here are in poll cycles or are lower bounds in time; waits only guard against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from simkit import SimConfig, SimProcess, write_sim_config

from controller.config import Config, HealthSettings, load_config
from controller.core.events import (
    DeviceEvent,
    DeviceFault,
    DeviceRecovered,
    DeviceState,
    Event,
    EventBus,
    GatewayHealth,
)
from controller.devices.fault_rules import check_zones, fm_faults, terminal_faults
from controller.devices.hardware import Hardware
from controller.devices.health import HealthMonitor, TerminalState
from controller.devices.registry import DeviceRegistry
from drivers.errors import LineDownError
from drivers.fm_transmitter import FmAlarm, FmStatus, vswr
from drivers.line_poller import PollResult
from drivers.modbus_terminal import FailureKind, LineImpedance, TerminalSnapshot

HANG_GUARD_S = 60.0
"""Only a guard against a hung test, never a performance claim."""

HEALTHY: dict[str, Any] = {"mains_ok": True, "on_battery": False, "amp_on": False, "amp_ready": False,
                           "audio_present": False, "amp_fault": False, "over_temperature": False,
                           "line_fault": False, "tamper": False, "amp_temperature": 25.0,
                           "mains_voltage": 225.0, "battery_voltage": 13.6}


# ---------------------------------------------------------------------- pure rules


def test_zone_deviation_math_and_verdicts():
    measured = {1: LineImpedance("ok", 116), 2: LineImpedance("ok", 86), 3: LineImpedance("open", None),
                4: LineImpedance("short", None), 5: LineImpedance("ok", 100), 6: LineImpedance("open", None)}
    checks = {c.zone: c for c in check_zones(measured, [1, 2, 3, 4, 5], {1: 100, 2: 100, 3: 100, 4: 100},
                                             tolerance=0.15)}
    assert set(checks) == {1, 2, 3, 4, 5}  # zone 6 is not wired: its "open" is not judged
    assert (checks[1].deviation_pct, checks[1].verdict) == (16.0, "deviation")
    assert (checks[2].deviation_pct, checks[2].verdict) == (-14.0, "ok")
    assert checks[3].verdict == "open" and checks[4].verdict == "short"
    assert checks[5].verdict == "no_reference" and checks[5].fault() is None
    fault = checks[1].fault()
    assert fault is not None and fault.code == "impedance_deviation" and fault.zone == 1
    assert fault.values["deviation_pct"] == 16.0 and fault.values["commissioned_ohm"] == 100
    assert "116 Ω" in fault.reason and "+16.0 %" in fault.reason and "第1路" in fault.reason_zh
    opened = checks[3].fault()
    assert opened is not None and (opened.code, opened.key) == ("line_open", "line_open:3")
    assert "开路" in opened.reason_zh
    edge = check_zones({1: LineImpedance("ok", 115)}, [1], {1: 100}, tolerance=0.15)[0]
    assert edge.verdict == "ok"  # exactly at the limit is still within it


def test_terminal_faults_mains_battery_temperature_tamper():
    s = HealthSettings()
    assert terminal_faults(HEALTHY, s) == []
    on_battery = {**HEALTHY, "mains_ok": False, "on_battery": True, "mains_voltage": 0.0,
                  "battery_voltage": 12.31}
    (mains,) = terminal_faults(on_battery, s)
    assert mains.code == "mains_lost" and mains.values["battery_v"] == 12.31
    assert "12.31 V" in mains.reason and "市电中断" in mains.reason_zh
    low = {c.code: c for c in terminal_faults({**on_battery, "battery_voltage": 11.2}, s)}
    assert set(low) == {"mains_lost", "low_battery"} and low["low_battery"].values["limit_v"] == 11.5
    hot = {c.code: c for c in terminal_faults({**HEALTHY, "amp_temperature": 81.0}, s)}
    assert hot["over_temperature"].values["temperature_c"] == 81.0  # no flag needed past the limit
    flagged = terminal_faults({**HEALTHY, "over_temperature": True, "amp_temperature": 70.0}, s)
    assert [f.code for f in flagged] == ["over_temperature"]
    assert [f.code for f in terminal_faults({**HEALTHY, "amp_fault": True, "tamper": True}, s)] == [
        "amp_fault", "tamper"]
    no_battery = HealthSettings(low_battery_v=0)
    assert terminal_faults({**HEALTHY, "battery_voltage": 0.0}, no_battery) == []


def test_fm_faults_vswr_from_bit_or_measurement():
    alarm = FmAlarm(0, ())
    ok = FmStatus(40.0, 0.4, vswr(40.0, 0.4), 30.0, alarm)
    assert fm_faults([], ok, 2.0) == []
    bad = FmStatus(20.0, 5.0, vswr(20.0, 5.0), 30.0, alarm)
    (fault,) = fm_faults([], bad, 2.0)  # the module did not flag it; the ratio does
    assert fault.code == "high_vswr" and fault.values["vswr"] == 3.0 and "VSWR 3.00" in fault.reason
    codes = [f.code for f in fm_faults(["high_vswr", "supply_fault"], None, 2.0)]
    assert codes == ["high_vswr", "supply_fault"]


# ---------------------------------------------------------------------- monitor from synthetic polls


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Unit:
    cfg: Config
    bus: EventBus
    registry: DeviceRegistry
    monitor: HealthMonitor
    clock: FakeClock
    events: list[Event] = field(default_factory=list)
    cycle: int = 0

    def poll(self, device: str, values: dict[str, Any] | None = None, *,
             failure: FailureKind = FailureKind.NO_RESPONSE) -> None:
        self.cycle += 1
        if values is not None:
            snap = TerminalSnapshot(device, 1, True, time.time(), {**HEALTHY, **values})
        else:
            snap = TerminalSnapshot(device, 1, False, time.time(), failure=failure, error="silence")
        result = PollResult(device, self.cycle, snap, snap.online, 0 if snap.online else 1, False)
        self.monitor.on_poll(result)  # it writes the registry too

    def kinds(self, device: str | None = None) -> list[str]:
        return [e.kind for e in self.events
                if device is None or (isinstance(e, DeviceEvent) and e.device_id == device)]

    def states(self, device: str) -> list[tuple[int | None, bool | None]]:
        return [(e.state, e.online) for e in self.events
                if isinstance(e, DeviceState) and e.device_id == device]


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    sim = write_sim_config(tmp_path, rtu_terminals=2, tcp_terminals=0, fm=True)
    cfg = load_config(sim.path)
    cfg.health = HealthSettings(offline_after_s=20, fault_recovered_hold_s=10)
    bus, clock = EventBus(), FakeClock()
    registry = DeviceRegistry(cfg)
    hardware = Hardware.from_config(cfg, on_poll=lambda r: None)  # built, never started: no I/O
    u = Unit(cfg, bus, registry, HealthMonitor(cfg, bus, hardware, registry, clock=clock), clock)
    bus.add_listener(u.events.append)
    return u


async def test_state_codes_fault_recovered_then_normal(unit: Unit):
    unit.poll("rtu1", {})
    assert unit.states("rtu1") == [(1, True)]
    assert unit.registry.devices["rtu1"].state == 1
    unit.poll("rtu1", {"amp_fault": True})
    assert unit.kinds("rtu1")[-2:] == ["device.fault", "device.state"]
    fault = next(e for e in unit.events if isinstance(e, DeviceFault))
    assert fault.fault == "amp_fault" and fault.reason_zh == "功放故障"
    assert unit.states("rtu1")[-1] == (3, True)
    unit.poll("rtu1", {"amp_fault": True})  # still faulty: nothing new
    assert len(unit.events) == 3
    unit.clock.t += 5
    unit.poll("rtu1", {})
    assert unit.kinds("rtu1")[-2:] == ["device.recovered", "device.state"]
    assert unit.states("rtu1")[-1] == (4, True)
    recovered = next(e for e in unit.events if isinstance(e, DeviceRecovered))
    assert recovered.fault == "amp_fault" and recovered.reason.startswith("recovered")
    unit.clock.t += 9
    unit.monitor.refresh()
    assert unit.states("rtu1")[-1] == (4, True)  # still inside the hold
    unit.clock.t += 2
    unit.monitor.refresh()
    assert unit.states("rtu1")[-1] == (1, True)
    assert unit.monitor.device_health("rtu1")["state_name"] == "normal"


async def test_offline_by_time_since_last_good_answer(unit: Unit):
    unit.poll("rtu1", {})
    assert unit.monitor.device_health("rtu2")["state"] is None  # never heard from: unknown
    for _ in range(10):  # many failed polls within the window: still online (heartbeat rule)
        unit.clock.t += 1.9
        unit.poll("rtu1", None)
    assert unit.states("rtu1") == [(1, True)]
    unit.clock.t += 1.1  # 20.1 s since the last good answer
    unit.monitor.refresh()
    assert unit.states("rtu1")[-1] == (2, False)
    assert unit.monitor.device_health("rtu1")["silent_s"] == pytest.approx(20.1)
    unit.poll("rtu1", {})
    assert unit.states("rtu1")[-1] == (1, True)
    assert unit.states("rtu2") == [(2, False)]  # off once offline_after_s passed since start


async def test_broadcasting_and_faults_keep_while_offline(unit: Unit):
    unit.poll("rtu1", {"amp_on": True})
    assert unit.states("rtu1")[-1] == (5, True)
    unit.poll("rtu1", {"amp_on": True, "tamper": True})
    assert unit.states("rtu1")[-1] == (3, True)  # a fault outranks broadcasting
    unit.clock.t += 21
    unit.monitor.refresh()
    assert unit.states("rtu1")[-1] == (3, False)  # last known fault kept while silent
    assert [f["fault"] for f in unit.monitor.device_health("rtu1")["faults"]] == ["tamper"]


async def test_state_clock_wakes_when_time_changes_a_state_not_on_a_tick(tmp_path: Path):
    """The background clock re-judges when "fault recovered" runs out and when a device has been
    silent for offline_after_s — and otherwise sleeps (an idle gateway is not woken every second)."""
    sim = write_sim_config(tmp_path, rtu_terminals=1, tcp_terminals=0, fm=False)
    cfg = load_config(sim.path)
    cfg.health = HealthSettings(offline_after_s=0.6, fault_recovered_hold_s=0.2, line_check_interval_s=0)
    bus, registry = EventBus(), DeviceRegistry(cfg)
    monitor = HealthMonitor(cfg, bus, Hardware.from_config(cfg, on_poll=lambda r: None), registry)
    u = Unit(cfg, bus, registry, monitor, FakeClock())  # the clock field is unused: real time here
    bus.add_listener(u.events.append)
    refreshes: list[float] = []
    judge = monitor.refresh

    def counted() -> None:
        refreshes.append(time.monotonic())
        judge()

    monitor.refresh = counted  # type: ignore[method-assign]
    await monitor.start()
    try:
        u.poll("rtu1", {"tamper": True})
        u.poll("rtu1", {})
        assert u.states("rtu1")[-1] == (4, True)  # fault recovered, for 0.2 s
        last_good = time.monotonic()

        async def state_becomes(state: tuple[int, bool]) -> float:
            while u.states("rtu1")[-1] != state:
                await asyncio.sleep(0.01)
            return time.monotonic()

        await asyncio.wait_for(state_becomes((1, True)), HANG_GUARD_S)
        for _ in range(12):  # answering every 0.1 s for 1.2 s: nothing for the clock to do
            await asyncio.sleep(0.1)
            u.poll("rtu1", {})
            last_good = time.monotonic()
        offline_at = await asyncio.wait_for(state_becomes((2, False)), HANG_GUARD_S)
        assert offline_at - last_good >= 0.6  # never before offline_after_s of silence
        # start, end of the hold, a few moved deadlines, offline (6) — not a tick every 0.15 s (16)
        assert len(refreshes) <= 9, len(refreshes)
    finally:
        await monitor.stop()


async def test_line_down_is_a_fault_at_once(unit: Unit):
    unit.poll("rtu1", {})
    unit.poll("rtu1", None, failure=FailureKind.LINE_DOWN)
    fault = [e for e in unit.events if isinstance(e, DeviceFault)][-1]
    assert fault.fault == "line_down" and fault.values["line"] == "rs485"
    unit.poll("rtu1", {})
    assert unit.kinds("rtu1")[-2:] == ["device.recovered", "device.state"]


async def test_fm_status_faults_and_registry_view(unit: Unit):
    alarm = FmAlarm(1, ("high_vswr",), unsolicited=False)
    unit.monitor.on_fm_status("fm1", FmStatus(20.0, 5.0, vswr(20.0, 5.0), 31.0, alarm))
    fault = next(e for e in unit.events if isinstance(e, DeviceFault))
    assert fault.device_id == "fm1" and fault.values["vswr"] == 3.0
    view = unit.registry.devices["fm1"]
    assert view.online and view.values is not None and view.values["vswr"] == 3.0 and view.state == 3
    unit.monitor.on_fm_status("fm1", None, LineDownError("serial port fm vanished"))
    assert {f["fault"] for f in unit.monitor.device_health("fm1")["faults"]} == {"high_vswr", "line_down"}
    assert unit.registry.devices["fm1"].online is False


async def test_gateway_faults_disk_low(unit: Unit):
    unit.monitor.settings = HealthSettings(disk_min_free_mb=1_000_000)  # no test disk has a terabyte free
    unit.monitor.check_gateway()
    fault = next(e for e in unit.events if isinstance(e, DeviceFault))
    assert (fault.device_id, fault.device_kind, fault.fault) == ("gw-test", "gateway", "disk_low")
    assert fault.values["free_mb"] < 1_000_000 and "MB" in fault.reason
    assert [f["fault"] for f in unit.monitor.snapshot()["faults"]] == ["disk_low"]
    unit.monitor.settings = HealthSettings(disk_min_free_mb=0)
    unit.monitor.check_gateway()
    assert unit.kinds()[-1] == "device.recovered" and unit.monitor.snapshot()["faults"] == []


async def test_registry_publishes_nothing_health_owns_device_state(unit: Unit):
    for _ in range(3):
        unit.poll("rtu1", {})
    assert unit.kinds() == ["device.state"]  # exactly one, from the monitor
    view = unit.registry.devices["rtu1"]  # the monitor is also the one writer of the registry
    assert view.online is True and view.values is not None and view.state == 1


# ---------------------------------------------------------------------- against the simulator


@pytest.fixture
def sim_config(tmp_path: Path) -> SimConfig:
    """The standard small township, physics 10× faster (an overheated amplifier cools in seconds)."""
    return write_sim_config(tmp_path, time_scale=10.0)


@dataclass
class Live:
    sim: SimProcess
    monitor: HealthMonitor
    hardware: Hardware
    events: list[tuple[Event, int | None]]
    cycles: dict[str, int]

    async def wait_event(self, what: str, match: Callable[[Event], bool],
                         since: int = 0) -> tuple[Event, int]:
        """The first event after index ``since`` that matches, with its poll cycle."""
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            for event, cycle in self.events[since:]:
                if match(event):
                    return event, cycle if cycle is not None else -1
            await asyncio.sleep(0.05)
        seen = [(e.kind, getattr(e, "device_id", None)) for e, _ in self.events]
        raise AssertionError(f"no {what}; events: {seen}")

    async def fault(self, fault: str, **fields: Any) -> int:
        """Inject (or clear) a fault; returns the event index to look from."""
        mark = len(self.events)
        await asyncio.to_thread(self.sim.fault, fault, **fields)
        return mark


def is_(cls: type[DeviceEvent], device: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, cls) and e.device_id == device and all(
        getattr(e, k) == v for k, v in fields.items())


@contextlib.asynccontextmanager
async def live(sim: SimProcess, sim_config: SimConfig, **health: Any) -> AsyncIterator[Live]:
    """Real drivers on the simulator's lines, polled, with a HealthMonitor wired as the daemon does."""
    cfg = load_config(sim_config.path)
    cfg.health = HealthSettings(**{"line_check_interval_s": 0, "report_interval_s": 3600,
                                   "fault_recovered_hold_s": 0.5, **health})
    bus, registry = EventBus(), DeviceRegistry(cfg)
    cycles: dict[str, int] = {}
    events: list[tuple[Event, int | None]] = []
    bus.add_listener(lambda e: events.append(
        (e, cycles.get(e.device_id) if isinstance(e, DeviceEvent) else None)))
    holder: list[HealthMonitor] = []

    def on_poll(result: PollResult) -> None:
        cycles[result.device_id] = result.cycle  # before judging: an event carries its cycle
        holder[0].on_poll(result)

    hardware = Hardware.from_config(cfg, on_poll=on_poll,
                                    on_fm_alarm=lambda dev, alarm: holder[0].on_fm_alarm(dev, alarm))
    monitor = HealthMonitor(cfg, bus, hardware, registry)
    holder.append(monitor)
    await hardware.start()
    await monitor.start()
    env = Live(sim, monitor, hardware, events, cycles)
    try:
        for dev in sim_config.rtu_ids:
            await env.wait_event(f"{dev} normal", is_(DeviceState, dev, state=1))
        yield env
    finally:
        await monitor.stop()
        await hardware.stop()


async def test_open_line_found_by_line_check_then_recovered(sim: SimProcess, sim_config: SimConfig):
    async with live(sim, sim_config) as env:
        mark = await env.fault("line_open", device="rtu2", zone=2)
        result = (await env.monitor.run_line_check(["rtu2"]))["rtu2"]
        assert not result["ok"]
        zones = {z["zone"]: z for z in result["zones"]}
        assert zones[2]["verdict"] == "open" and zones[1]["verdict"] == "ok"
        assert zones[1]["measured_ohm"] == pytest.approx(101, abs=2)  # commissioned 101 Ω ±1 %
        fault, _ = await env.wait_event("open", is_(DeviceFault, "rtu2", fault="line_open"), mark)
        assert fault.zone == 2 and "zone 2" in fault.reason
        assert "第2路" in fault.reason_zh
        await env.wait_event("state 3", is_(DeviceState, "rtu2", state=3), mark)
        assert env.monitor.device_health("rtu2")["state"] == TerminalState.FAULT

        mark = await env.fault("line_open", device="rtu2", zone=2, clear=True)
        assert (await env.monitor.run_line_check(["rtu2"]))["rtu2"]["ok"]
        recovered, _ = await env.wait_event("closed", is_(DeviceRecovered, "rtu2", fault="line_open"),
                                            mark)
        assert recovered.zone == 2
        await env.wait_event("state 4", is_(DeviceState, "rtu2", state=4), mark)
        await env.wait_event("state 1", is_(DeviceState, "rtu2", state=1), mark)


async def test_periodic_checks_find_short_and_deviation(sim: SimProcess, sim_config: SimConfig):
    # The gateway's record says rtu3 zone 1 was commissioned at 130 Ω; the horn measures ~102 Ω.
    async with live(sim, sim_config, line_check_interval_s=1.0) as env:
        dev3 = next(d for d in env.monitor.cfg.devices if d.id == "rtu3")
        dev3.commissioned_impedance_ohm[1] = 130.0
        mark = await env.fault("line_short", device="rtu1", zone=1)
        short, _ = await env.wait_event("short", is_(DeviceFault, "rtu1", fault="line_short", zone=1),
                                        mark)
        assert "短路" in short.reason_zh
        deviation, _ = await env.wait_event("deviation",
                                            is_(DeviceFault, "rtu3", fault="impedance_deviation"))
        values = deviation.values
        assert values["commissioned_ohm"] == 130.0 and values["deviation_pct"] < -15
        assert values["deviation_pct"] == pytest.approx((values["measured_ohm"] - 130) / 130 * 100, abs=0.1)
        mark = await env.fault("line_short", device="rtu1", zone=1, clear=True)
        await env.wait_event("short cleared", is_(DeviceRecovered, "rtu1", fault="line_short"), mark)


async def test_terminal_line_fault_bit_triggers_a_check(sim: SimProcess, sim_config: SimConfig):
    """Periodic checks off: a check started elsewhere (a technician's tool through the gateway) sets
    the terminal's line-fault bit; the monitor notices the disagreement and checks by itself."""
    async with live(sim, sim_config) as env:
        mark = await env.fault("line_open", device="rtu3", zone=1)
        await env.hardware.terminals["rtu3"].start_line_check()
        await env.wait_event("open", is_(DeviceFault, "rtu3", fault="line_open", zone=1), mark)
        assert env.monitor.device_health("rtu3")["last_line_check"]["zones"][0]["verdict"] == "open"
        await env.fault("line_open", device="rtu3", zone=1, clear=True)


@pytest.mark.parametrize(("fault", "code"), [("mains_failure", "mains_lost"),
                                             ("over_temperature", "over_temperature"),
                                             ("amp_fault", "amp_fault"), ("tamper", "tamper")])
async def test_status_faults_visible_within_two_poll_cycles(sim: SimProcess, sim_config: SimConfig,
                                                            fault: str, code: str):
    async with live(sim, sim_config) as env:
        mark = await env.fault(fault, device="rtu1")
        before = env.cycles["rtu1"]  # the last poll cycle of rtu1 finished before the fault
        event, cycle = await env.wait_event(code, is_(DeviceFault, "rtu1", fault=code), mark)
        assert cycle - before <= 2, f"{code} raised in cycle {cycle}, fault happened after cycle {before}"
        print(f"{code}: raised {cycle - before} poll cycle(s) after the fault")
        await env.wait_event("state 3", is_(DeviceState, "rtu1", state=3), mark)
        if code == "mains_lost":
            assert 10.5 < event.values["battery_v"] <= 13.6
            assert "V" in event.reason and "电池供电" in event.reason_zh
        if code == "over_temperature":
            assert event.values["temperature_c"] >= 80
        mark = await env.fault(fault, device="rtu1", clear=True)
        await env.wait_event("recovered", is_(DeviceRecovered, "rtu1", fault=code), mark)


async def test_silent_terminal_goes_offline_after_the_configured_time(sim: SimProcess, sim_config: SimConfig):
    async with live(sim, sim_config, offline_after_s=2.0) as env:
        mark = await env.fault("offline", device="rtu3")
        event, _ = await env.wait_event("offline", is_(DeviceState, "rtu3", online=False), mark)
        assert event.state == 2
        assert env.monitor.device_health("rtu3")["silent_s"] >= 2.0  # not before the configured time
        others = [e for e, _ in env.events[mark:] if isinstance(e, DeviceEvent) and e.device_id == "rtu1"]
        assert not others  # others unaffected
        mark = await env.fault("offline", device="rtu3", clear=True)
        await env.wait_event("back", is_(DeviceState, "rtu3", online=True, state=1), mark)


async def test_fm_high_vswr_and_supply_fault(sim: SimProcess, sim_config: SimConfig):
    async with live(sim, sim_config, fm_poll_interval_s=1.0) as env:
        fm = env.hardware.transmitters["fm1"]
        await env.wait_event("fm normal", is_(DeviceState, "fm1", state=1))
        await fm.set_tx(True)
        await env.wait_event("fm on air", is_(DeviceState, "fm1", state=5))
        mark = await env.fault("high_vswr", device="fm1")
        event, _ = await env.wait_event("vswr", is_(DeviceFault, "fm1", fault="high_vswr"), mark)
        assert event.values["vswr"] == pytest.approx(3.0, abs=0.1)
        assert "VSWR" in event.reason and "驻波比" in event.reason_zh
        mark = await env.fault("high_vswr", device="fm1", clear=True)
        await env.wait_event("vswr cleared", is_(DeviceRecovered, "fm1", fault="high_vswr"), mark)
        mark = await env.fault("mains_failure", device="fm1")
        await env.wait_event("supply", is_(DeviceFault, "fm1", fault="supply_fault"), mark)
        await env.fault("mains_failure", device="fm1", clear=True)
        await fm.set_tx(False)


async def test_unplugged_line_is_line_down_for_its_terminals(sim: SimProcess, sim_config: SimConfig):
    async with live(sim, sim_config) as env:
        mark = await env.fault("unplug", line="rs485")
        for dev in sim_config.rtu_ids:
            await env.wait_event(f"{dev} line down", is_(DeviceFault, dev, fault="line_down"), mark)
        assert not any(isinstance(e, DeviceFault) and e.device_id == "tcp1" for e, _ in env.events[mark:])
        mark = await env.fault("unplug", line="rs485", clear=True)
        for dev in sim_config.rtu_ids:
            await env.wait_event(f"{dev} line back", is_(DeviceRecovered, dev, fault="line_down"), mark)


async def test_gateway_snapshot_and_periodic_report(sim: SimProcess, sim_config: SimConfig):
    async with live(sim, sim_config, report_interval_s=0.5) as env:
        report, _ = await env.wait_event("report", lambda e: isinstance(e, GatewayHealth))
        assert isinstance(report, GatewayHealth)
        snap = report.snapshot
        assert snap["gateway"] == "gw-test" and snap["process"]["rss_mb"] > 0
        assert snap["disk"]["free_mb"] > 0 and snap["system"]["memory_total_mb"] > 0
        rs485 = snap["lines"]["rs485"]
        assert rs485["kind"] == "serial" and rs485["up"] and rs485["requests"] > 0
        assert {"timeouts", "crc_errors", "latency_avg_ms", "poll"} <= set(rs485)
        assert snap["lines"]["fm"]["kind"] == "fm_serial"
        assert snap["devices"]["total"] == 5 and snap["engine"] is None and snap["outbox_depth"] is None
        env.monitor.outbox_depth = lambda: 7  # the daemon passes the outbox's at construction
        assert env.monitor.snapshot()["outbox_depth"] == 7
        checked = await env.monitor.run_line_check(None)
        assert set(checked) == {"rtu1", "rtu2", "rtu3", "tcp1"}
        assert checked["tcp1"]["ok"] and checked["tcp1"]["zones"][0]["verdict"] == "no_reference"
        unknown = await env.monitor.run_line_check(["nope", "fm1"])
        assert unknown["nope"]["error"] == "no such device" and not unknown["fm1"]["ok"]
