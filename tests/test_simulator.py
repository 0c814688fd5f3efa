"""The simulated hardware in-process: Modbus PDU execution, the ebt-1 model and its physics, the
ebr-fm1 AT protocol, the control interface's answers, and the config → simulation mapping.

Physics runs on a fake clock so a test can watch an amplifier warm up or a battery drain
instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest
from simkit import free_port

from controller.app.simulation import spec_from_config
from controller.config import load_config
from simulator.control import ControlServer
from simulator.fm_transmitter import FmTransmitter
from simulator.modbus_pdu import crc16, crc_ok, execute, with_crc
from simulator.runner import Simulation, run_simulation
from simulator.spec import (
    AudioSpec,
    Endpoint,
    FmSpec,
    SerialLineSpec,
    SimulationSpec,
    TcpEndpointSpec,
    TerminalSpec,
)
from simulator.terminal import OVER_TEMP_TRIP_C, Terminal

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def term(clock: FakeClock) -> Terminal:
    spec = TerminalSpec(id="t1", unit_id=1, line="rs485", zones=[1, 2],
                        nominal_impedance_ohm={1: 100.0, 2: 120.0}, warmup_ms=2000)
    return Terminal(spec, clock=clock)


def read(t: Terminal, fc: int, address: int, count: int) -> bytes:
    return execute(t, struct.pack(">BHH", fc, address, count))


def regs(reply: bytes) -> list[int]:
    assert reply[0] < 0x80, f"exception reply {reply.hex()}"
    return list(struct.unpack(f">{reply[1] // 2}H", reply[2:]))


def inputs(t: Terminal) -> list[int]:
    return regs(read(t, 4, 0, 19))


def write_coil(t: Terminal, address: int, on: bool) -> bytes:
    return execute(t, struct.pack(">BHH", 5, address, 0xFF00 if on else 0))


def write_reg(t: Terminal, address: int, value: int) -> bytes:
    return execute(t, struct.pack(">BHH", 6, address, value))


# ---------------------------------------------------------------------------- Modbus PDUs

def test_crc16_matches_the_modbus_reference_vector():
    frame = bytes.fromhex("01030000000a")
    assert crc16(frame) == 0xCDC5
    assert with_crc(frame) == bytes.fromhex("01030000000ac5cd")
    assert crc_ok(bytes.fromhex("01030000000ac5cd"))
    assert not crc_ok(bytes.fromhex("01030000000ac5ce"))


def test_reads_cover_the_whole_register_map(term: Terminal):
    coils = read(term, 1, 0, 16)
    assert coils[:2] == bytes([1, 2]) and len(coils) == 4  # 16 coils in 2 bytes, all off
    assert regs(read(term, 3, 0, 5)) == [50, 1, 9780, 2000, 0]
    values = inputs(term)
    assert values[0] & 0b1 and not values[0] & 0b10  # mains present, not on battery
    assert values[1] == 250 and 2200 <= values[2] <= 2300 and values[3] == 1360
    assert values[8:10] == [pytest.approx(100, abs=2), pytest.approx(120, abs=2)]
    assert values[10:16] == [65535] * 6  # nothing wired to zones 3..8
    assert values[16] == 0x0103


def test_exception_codes(term: Terminal):
    assert execute(term, bytes([7])) == bytes([0x87, 1])                     # illegal function
    assert read(term, 4, 0, 20) == bytes([0x84, 2])                          # past input 18
    assert read(term, 3, 5, 1) == bytes([0x83, 2])                           # past holding 4
    assert read(term, 2, 0, 1) == bytes([0x82, 2])                           # no discrete inputs
    assert read(term, 3, 0, 0) == bytes([0x83, 3])                           # quantity 0
    assert write_coil(term, 3, True) == bytes([0x85, 2])                     # reserved coil
    assert execute(term, struct.pack(">BHH", 5, 0, 0x1234)) == bytes([0x85, 3])
    assert write_reg(term, 0, 101) == bytes([0x86, 3])                       # volume > 100
    assert write_reg(term, 2, 8000) == bytes([0x86, 3])                      # below 87.5 MHz
    assert write_reg(term, 9, 1) == bytes([0x86, 2])


def test_multiple_writes_are_all_or_nothing(term: Terminal):
    bad = struct.pack(">BHHB2H", 16, 0, 2, 4, 70, 9)  # volume 70 ok, source 9 is not
    assert execute(term, bad) == bytes([0x90, 3])
    assert regs(read(term, 3, 0, 2)) == [50, 1]
    good = struct.pack(">BHHB2H", 16, 0, 2, 4, 70, 2)
    assert execute(term, good) == struct.pack(">BHH", 16, 0, 2)
    assert regs(read(term, 3, 0, 2)) == [70, 2]
    zones = struct.pack(">BHHBB", 15, 8, 8, 1, 0b101)
    assert execute(term, zones) == struct.pack(">BHH", 15, 8, 8)
    assert term.coils[8:16] == [True, False, True, False, False, False, False, False]


# ---------------------------------------------------------------------------- terminal physics

def test_amplifier_is_ready_only_after_its_warm_up(term: Terminal, clock: FakeClock):
    write_coil(term, 0, True)
    assert inputs(term)[0] & 0b1100 == 0b0100  # on, not ready
    clock.advance(1.9)
    assert not inputs(term)[0] & 0b1000
    clock.advance(0.2)
    assert inputs(term)[0] & 0b1000
    write_coil(term, 0, False)
    write_coil(term, 0, True)  # power cycle: warm up again
    assert not inputs(term)[0] & 0b1000


def test_temperature_rises_while_on_and_cools_when_off(term: Terminal, clock: FakeClock):
    write_coil(term, 0, True)
    clock.advance(120)
    warm = inputs(term)[1]
    assert warm > 300
    write_coil(term, 0, False)
    clock.advance(120)
    assert inputs(term)[1] < warm


def test_over_temperature_shuts_the_amplifier_down_until_it_cools(term: Terminal, clock: FakeClock):
    write_coil(term, 0, True)
    term.set_fault("over_temperature", True)
    status = inputs(term)[0]
    assert status & 1 << 6 and not status & 1 << 2
    assert inputs(term)[1] >= OVER_TEMP_TRIP_C * 10
    term.set_fault("over_temperature", False)
    clock.advance(300)
    status = inputs(term)[0]
    assert not status & 1 << 6 and status & 1 << 2  # cooled down, amplifier back on


def test_mains_failure_drains_the_battery_until_the_terminal_dies(term: Terminal, clock: FakeClock):
    term.set_fault("mains_failure", True)
    values = inputs(term)
    assert values[0] & 0b11 == 0b10 and values[2] == 0
    write_coil(term, 0, True)
    clock.advance(60)
    assert inputs(term)[3] < 1360 - 50
    for _ in range(100):
        clock.advance(10)
        term.tick()
    assert not term.responsive
    term.set_fault("mains_failure", False)
    term.tick()
    assert term.responsive and not term.coils[0]  # rebooted with everything off
    assert inputs(term)[17:19] == [0, 0]


def test_line_fault_is_found_by_a_line_check_not_instantly(term: Terminal, clock: FakeClock):
    term.set_fault("line_open", True, zone=1)
    term.set_fault("line_short", True, zone=2)
    assert inputs(term)[8] != 65535 and not inputs(term)[0] & 1 << 7
    write_reg(term, 4, 1)
    assert regs(read(term, 3, 4, 1)) == [1]
    clock.advance(0.5)
    assert inputs(term)[8] != 65535
    clock.advance(1.5)
    assert regs(read(term, 3, 4, 1)) == [0]
    values = inputs(term)
    assert values[8:10] == [65535, 0] and values[0] & 1 << 7
    term.set_fault("line_open", False, zone=1)
    term.set_fault("line_short", False, zone=2)
    write_reg(term, 4, 1)
    clock.advance(2)
    values = inputs(term)
    assert values[8] == pytest.approx(100, abs=2) and not values[0] & 1 << 7


def test_audible_needs_the_whole_chain_and_override_beats_mute(term: Terminal, clock: FakeClock):
    write_coil(term, 0, True)
    write_coil(term, 8, True)
    write_reg(term, 0, 40)
    clock.advance(3)
    term.line_in_present = True
    assert term.audible() and inputs(term)[4] == 40 and inputs(term)[0] & 1 << 4
    write_coil(term, 2, True)  # mute
    assert not term.audible() and inputs(term)[4] == 0
    write_coil(term, 1, True)  # emergency override: maximum volume, mute bypassed
    assert term.audible() and inputs(term)[4] == 100
    term.set_fault("line_open", True, zone=1)
    assert not term.audible()  # the only switched-on zone is cut
    write_coil(term, 9, True)
    assert term.audible_zones() == [2]
    write_reg(term, 1, 2)  # FM tuner instead of the gateway's line-in
    assert not term.audible()


def test_uptime_counts_seconds_high_word_first(term: Terminal, clock: FakeClock):
    clock.advance(70000)
    hi, lo = inputs(term)[17:19]
    assert hi << 16 | lo == 70000 and hi == 1


def test_time_scale_speeds_up_physics(clock: FakeClock):
    fast = Terminal(TerminalSpec(id="t", unit_id=1, line="x", warmup_ms=2000), clock=clock, time_scale=10)
    write_coil(fast, 0, True)
    clock.advance(0.21)
    assert inputs(fast)[0] & 0b1000


# ---------------------------------------------------------------------------- FM transmitter

@pytest.fixture
def fm(clock: FakeClock) -> FmTransmitter:
    return FmTransmitter(FmSpec(id="fm1", line="fm"), SerialLineSpec(id="fm", link_path="/nonexistent"),
                         clock=clock)


def test_fm_at_commands_and_error_codes(fm: FmTransmitter):
    assert fm.execute("AT") == ["OK"]
    assert fm.execute("AT+FREQ=9450") == ["OK"]
    assert fm.execute("AT+FREQ?") == ["+FREQ:9450", "OK"]
    assert fm.execute("AT+FREQ=12000") == ["ERROR:3"]
    assert fm.execute("AT+FREQ=abc") == ["ERROR:2"]
    assert fm.execute("AT+PWR=100") == ["OK"] and fm.execute("AT+PWR?") == ["+PWR:100", "OK"]
    assert fm.execute("AT+PWR=101") == ["ERROR:3"]
    assert fm.execute("AT+TX=2") == ["ERROR:2"]
    assert fm.execute("AT+RDS=PS,LIUQIAO") == ["OK"]
    assert fm.execute("AT+RDS=PS,TOOLONGNAME") == ["ERROR:3"]
    assert fm.execute("AT+RDS=RT," + "x" * 64) == ["OK"]
    assert fm.execute("AT+RDS=XX,abc") == ["ERROR:2"]
    assert fm.execute("AT+RDS=PS,刘桥") == ["ERROR:2"]
    assert fm.execute("AT+RDS?") == ["+RDS:PS,LIUQIAO", "+RDS:RT," + "x" * 64, "OK"]
    assert fm.execute("AT+BOGUS") == ["ERROR:1"]
    assert fm.execute("HELLO") == ["ERROR:1"]


def test_fm_power_reflection_temperature_and_alarms(fm: FmTransmitter, clock: FakeClock):
    assert fm.execute("AT+STAT?") == ["+STAT:fwd=0,ref=0,temp=250,alarm=0", "OK"]
    fm.execute("AT+PWR=100")
    fm.execute("AT+TX=1")
    assert fm.execute("AT+TX?") == ["+TX:1", "OK"]
    assert (fm.forward_dw(), fm.reflected_dw()) == (500, 5)
    fm.set_audio_present(True)
    clock.advance(120)
    fm.tick()
    assert fm.heat.temperature_c > 40
    fm.set_fault("high_vswr", True)
    assert fm.reflected_dw() > fm.forward_dw() // 10 and fm.alarms() & 1
    fm.set_fault("high_vswr", False)
    fm.set_fault("mains_failure", True)
    assert fm.alarms() == 1 << 3 and fm.forward_dw() == 0
    assert fm.execute("AT+TX=1") == ["ERROR:4"]
    fm.set_fault("mains_failure", False)
    fm.set_audio_present(False)
    clock.advance(31)
    fm.tick()
    assert fm.alarms() == 1 << 4  # on air without programme for 30 s


def test_fm_carrier_is_received_by_terminals_tuned_to_it(fm: FmTransmitter):
    fm.execute("AT+FREQ=9780")
    assert fm.rssi_at(9780) is None
    fm.execute("AT+TX=1")
    assert fm.rssi_at(9780) is not None and fm.rssi_at(9781) is None


# ---------------------------------------------------------------------------- control interface

def _small_spec(tmp_path: Path) -> SimulationSpec:
    return SimulationSpec(
        serial_lines=[SerialLineSpec(id="rs485", link_path=str(tmp_path / "tty0")),
                      SerialLineSpec(id="fm", link_path=str(tmp_path / "tty1"))],
        tcp_endpoints=[TcpEndpointSpec(id="ip1", host="127.0.0.1", port=free_port())],
        terminals=[TerminalSpec(id="t1", unit_id=1, line="rs485"),
                   TerminalSpec(id="t2", unit_id=1, line="ip1", tcp=("127.0.0.1", 0))],
        fm_transmitters=[FmSpec(id="fm1", line="fm")],
        control=Endpoint("127.0.0.1", free_port()),
        audio=AudioSpec("127.0.0.1", free_port(), record_dir=str(tmp_path / "audio")),
    )


def _ask(server: ControlServer, request: object) -> dict:
    line = request if isinstance(request, bytes) else json.dumps(request).encode()
    return asyncio.run(server.handle_line(line))


def test_control_answers_bad_requests_with_a_message_naming_the_field(tmp_path: Path):
    server = Simulation(_small_spec(tmp_path)).control
    assert _ask(server, {"op": "ping"}) == {"ok": True, "pong": True}
    cases = {
        b"not json": "not valid JSON",
        b"[1]": "'op'",
        json.dumps({"op": "explode"}).encode(): "field 'op'",
        json.dumps({"op": "state"}).encode(): "missing field 'device'",
        json.dumps({"op": "state", "device": "t9"}).encode(): "field 'device': no device 't9'",
        json.dumps({"op": "fault", "device": "t1", "fault": "fire"}).encode(): "field 'fault'",
        json.dumps({"op": "fault", "device": "t1", "fault": "line_open"}).encode(): "'zone'",
        json.dumps({"op": "fault", "device": "t1", "fault": "crc_errors"}).encode(): "'rate'",
        json.dumps({"op": "fault", "device": "t1", "fault": "high_vswr"}).encode(): "does not apply",
        json.dumps({"op": "fault", "fault": "unplug"}).encode(): "field 'line'",
        json.dumps({"op": "fault", "device": "t1", "fault": "tamper", "clear": "yes"}).encode():
            "field 'clear' must be true or false",
        json.dumps({"op": "stats", "line": "nope"}).encode(): "field 'line': no line 'nope'",
    }
    for request, message in cases.items():
        reply = _ask(server, request)
        assert reply["ok"] is False and message in reply["error"], (request, reply)


def test_control_state_and_faults(tmp_path: Path):
    sim = Simulation(_small_spec(tmp_path))
    server = sim.control
    assert _ask(server, {"op": "fault", "device": "t1", "fault": "tamper"})["ok"]
    state = _ask(server, {"op": "state", "device": "t1"})["state"]
    assert state["status"]["tamper"] and state["faults"]["tamper"]
    assert _ask(server, {"op": "fault", "device": "t2", "fault": "offline"})["ok"]
    assert not sim.terminals["t2"].responsive
    fm_state = _ask(server, {"op": "state", "device": "fm1"})["state"]
    assert fm_state["kind"] == "fm_transmitter" and fm_state["alarm"] == 0
    names = {d["id"] for d in _ask(server, {"op": "list"})["devices"]}
    assert names == {"t1", "t2", "fm1"}


# ---------------------------------------------------------------------------- config mapping, lifecycle

def test_spec_from_the_demo_config():
    spec = spec_from_config(load_config(REPO / "config" / "demo.yaml"))
    rtu = [t for t in spec.terminals if t.tcp is None]
    tcp = [t for t in spec.terminals if t.tcp is not None]
    assert len(rtu) == 16 and len(tcp) == 4 and len(spec.fm_transmitters) == 1
    by_id = {t.id: t for t in spec.terminals}
    assert by_id["t07"].turnaround_ms == 8.0 and by_id["t01"].turnaround_ms == 3.0
    assert by_id["t01"].nominal_impedance_ohm == {1: 96.0, 2: 108.0}
    assert by_id["t17"].tcp == ("127.0.0.1", 15021)
    assert {s.id for s in spec.serial_lines} == {"rs485-1", "fm-1"}


def test_spec_defaults_and_overrides(tmp_path: Path):
    from simkit import write_sim_config

    cfg_file = write_sim_config(tmp_path, rtu_terminals=2, devices={"rtu2": {"warmup_ms": 500,
                                                                              "battery_full_v": 27.2}})
    data = cfg_file.data
    data["devices"][0]["commissioned_impedance_ohm"] = {1: 90}
    cfg_file.path.write_text(json.dumps(data), encoding="utf-8")
    spec = spec_from_config(load_config(cfg_file.path))
    by_id = {t.id: t for t in spec.terminals}
    assert by_id["rtu1"].nominal_impedance_ohm == {1: 90.0, 2: 100.0}  # default for zone 2
    assert by_id["rtu2"].warmup_ms == 500 and by_id["rtu2"].battery_full_v == 27.2


async def test_run_simulation_opens_links_and_removes_them_when_cancelled(tmp_path: Path):
    spec = _small_spec(tmp_path)
    ready = asyncio.Event()
    task = asyncio.create_task(run_simulation(spec, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    links = [Path(s.link_path) for s in spec.serial_lines]
    assert all(p.is_symlink() and p.exists() for p in links)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(p.is_symlink() for p in links)
