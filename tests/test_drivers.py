"""The drivers against the real simulator: real ptys paced at the baud rate and real TCP sockets.

Nothing here mocks pymodbus or pyserial. The simulator runs as its own process (``module_sim``,
shared by this module — every test clears the faults it raises) and is looked into and
fault-injected only through its JSON-lines control interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from simkit import SimProcess, free_port

from drivers.errors import AtCommandError, DeviceExceptionError, LineDownError, NoResponseError
from drivers.fm_transmitter import FmAlarm, FmLineSettings, FmTransmitter
from drivers.line_arbiter import LineArbiter, Priority, SerialLineSettings, TcpLineSettings, _ReplyEnd
from drivers.line_poller import LinePoller, PollResult, PollSettings
from drivers.modbus_codec import PointError, ReadBlock, WriteBlock
from drivers.modbus_terminal import LineImpedance, ModbusTerminal, write_all_on_line
from drivers.profile import AtFmTransmitterProfile, ModbusTerminalProfile, load_profile

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
RTU_LINE = "rs485"


@pytest.fixture(scope="module")
def ebt1() -> ModbusTerminalProfile:
    profile = load_profile(PROFILES / "ebt-1.yaml")
    assert isinstance(profile, ModbusTerminalProfile)
    return profile


@pytest.fixture(scope="module")
def ebr_fm1() -> AtFmTransmitterProfile:
    profile = load_profile(PROFILES / "ebr-fm1.yaml")
    assert isinstance(profile, AtFmTransmitterProfile)
    return profile


@dataclass
class Line:
    arbiter: LineArbiter
    terminals: list[ModbusTerminal]
    events: list[tuple[bool, str]]
    """What the arbiter reported through ``on_line_state``."""


@contextlib.asynccontextmanager
async def open_line(kind: str, sim: SimProcess, profile: ModbusTerminalProfile) -> AsyncIterator[Line]:
    """``rtu``: the simulator's RS-485 line (3 terminals, 9600 baud); ``tcp``: its Modbus TCP
    terminal. Each behind a fresh arbiter (fresh counters)."""
    cfg = sim.config
    events: list[tuple[bool, str]] = []
    if kind == "rtu":
        settings: SerialLineSettings | TcpLineSettings = SerialLineSettings(
            str(cfg.rtu_link), baudrate=cfg.baudrate, timeout_s=0.3, retries=2, name=RTU_LINE)
        units = [(dev, i + 1) for i, dev in enumerate(cfg.rtu_ids)]
    else:
        dev = cfg.tcp_ids[0]
        settings = TcpLineSettings(cfg.host, cfg.tcp_ports[dev], timeout_s=0.5, retries=1, name="ip1")
        units = [(dev, 1)]
    async with LineArbiter(settings, on_line_state=lambda up, why: events.append((up, why))) as arbiter:
        assert arbiter.connected, arbiter.down_reason
        yield Line(arbiter, [ModbusTerminal(dev, unit, profile, arbiter) for dev, unit in units], events)


@pytest.fixture
async def rtu(module_sim: SimProcess, ebt1: ModbusTerminalProfile) -> AsyncIterator[Line]:
    async with open_line("rtu", module_sim, ebt1) as line:
        yield line


@pytest.fixture(params=["rtu", "tcp"])
async def any_line(request: pytest.FixtureRequest, module_sim: SimProcess,
                   ebt1: ModbusTerminalProfile) -> AsyncIterator[Line]:
    async with open_line(request.param, module_sim, ebt1) as line:
        yield line


@pytest.fixture
async def fm(module_sim: SimProcess, ebr_fm1: AtFmTransmitterProfile) -> AsyncIterator[tuple[FmTransmitter,
                                                                                              list[FmAlarm]]]:
    cfg = module_sim.config
    assert cfg.fm_link is not None
    alarms: list[FmAlarm] = []
    driver = FmTransmitter(FmLineSettings(str(cfg.fm_link), name="fm"), ebr_fm1, on_alarm=alarms.append)
    await driver.start()
    assert await driver.wait_connected(5.0), driver.down_reason
    try:
        yield driver, alarms
    finally:
        await driver.close()


@contextlib.contextmanager
def fault(sim: SimProcess, name: str, **fields: Any) -> Iterator[None]:
    """Raise a simulator fault for the duration of the block."""
    sim.fault(name, **fields)
    try:
        yield
    finally:
        sim.fault(name, clear=True, **{k: v for k, v in fields.items() if k in ("device", "line", "zone")})


def line_stats(sim: SimProcess, line: str) -> dict[str, Any]:
    return sim.call("stats", line=line)["stats"]


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy (liveness, not a timing goal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(LineDownError, NoResponseError):
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- every point round-trips

WRITES: list[tuple[str, object, object]] = [
    # (point, value to write, what the simulator's state shows)
    ("amp_power", True, True), ("amp_power", False, False),
    ("emergency_override", True, True), ("emergency_override", False, False),
    ("mute", True, True), ("mute", False, False),
    *[(f"zone_{z}", on, on) for z in range(1, 9) for on in (True, False)],
    ("volume", 73, 73), ("volume", 50, 50),
    ("audio_source", "fm_tuner", 2), ("audio_source", "ip_stream", 3), ("audio_source", "line_in", 1),
    ("fm_frequency", 101.7, 10170), ("fm_frequency", 97.8, 9780),
    ("warmup_ms", 1500, 1500), ("warmup_ms", 2000, 2000),
    ("line_check", 1, 1),  # reads 1 while the check runs
]


async def test_every_writable_point_round_trips(any_line, module_sim):
    term = any_line.terminals[0]
    for name, value, in_sim in WRITES:
        await term.write_points({name: value})
        assert (await term.read_points([name]))[name] == value, name
        state = module_sim.state(term.device_id)
        table = "coils" if term.profile.points[name].table == "coil" else "holding"
        assert state[table][name] == in_sim, name


async def test_every_read_point_matches_the_simulator(any_line, module_sim):
    term = any_line.terminals[0]
    await eventually(lambda: _line_check_idle(term), timeout_s=10)  # values settle after a running check
    await term.write_points({"amp_power": False, "mute": True, "zone_2": True, "volume": 42})
    snap = await term.read_status()
    state = module_sim.state(term.device_id)
    assert snap.online and snap.failure is None
    assert set(snap.values) == set(term.profile.points)
    for name, on in state["status"].items():
        assert snap.values[name] == on, name
    assert snap.values["mute"] is True and snap.values["zone_2"] is True and snap.values["volume"] == 42
    inputs = state["input_registers"]
    assert snap.values["firmware"] == f"{inputs[16] >> 8}.{inputs[16] & 0xFF}"
    assert [snap.values[f"line_impedance_{z}"] for z in range(1, 9)] == inputs[8:16]
    assert snap.values["amp_temperature"] == pytest.approx(state["physics"]["amp_temperature_c"], abs=0.1)
    assert snap.values["battery_voltage"] == pytest.approx(state["physics"]["battery_v"], abs=0.01)
    assert 0 <= state["physics"]["uptime_s"] - snap.values["uptime_s"] <= 2  # the clock moved on
    assert 200 < snap.values["mains_voltage"] < 240
    assert snap.values["fm_rssi"] == inputs[5] and snap.values["output_level"] == inputs[4]


async def _line_check_idle(term: ModbusTerminal) -> bool:
    return (await term.read_points(["line_check"]))["line_check"] == 0


async def test_convenience_methods(rtu, module_sim):
    term = rtu.terminals[1]
    await term.set_zones({1, 2})
    await term.set_volume(66)
    await term.set_source("line_in")
    await term.set_fm_frequency(88.1)
    await term.set_override(True)
    await term.set_mute(True)
    await term.set_amp_power(True)
    state = module_sim.state(term.device_id)
    assert state["coils"] == {"amp_power": True, "emergency_override": True, "mute": True,
                              "zone_1": True, "zone_2": True, **{f"zone_{z}": False for z in range(3, 9)}}
    assert state["holding"]["volume"] == 66 and state["holding"]["fm_frequency"] == 8810
    await term.set_zones(set())
    await term.write_points({"amp_power": False, "emergency_override": False, "mute": False})
    assert not any(module_sim.state(term.device_id)["coils"].values())


async def test_invalid_values_never_reach_the_wire(rtu):
    term = rtu.terminals[0]
    before = rtu.arbiter.stats.requests
    for values in ({"volume": 101}, {"audio_source": "radio"}, {"fm_frequency": 120.0}, {"uptime_s": 1},
                   {"volume": 10, "mute": "yes"}):
        with pytest.raises(PointError):
            await term.write_points(values)
    with pytest.raises(ValueError, match="zones"):
        await term.set_zones({9})
    assert rtu.arbiter.stats.requests == before


async def test_device_exception_is_its_own_error(rtu):
    """Bypassing validation, the terminal itself refuses volume 150 with exception 3."""
    with pytest.raises(DeviceExceptionError) as info:
        await rtu.arbiter.write(1, WriteBlock("holding", 0, (150,), ("volume",)))
    assert info.value.code == 3 and info.value.code_name == "illegal data value"
    with pytest.raises(DeviceExceptionError) as info:  # reserved coil 5 refuses writes
        await rtu.arbiter.write(1, WriteBlock("coil", 5, (True,), ("reserved",)))
    assert info.value.code == 2
    stats = rtu.arbiter.stats
    assert stats.exceptions == 2 and stats.retries == 0 and stats.failures == 0


# ---------------------------------------------------------------------- merged reads


async def test_full_status_in_three_merged_requests(rtu, module_sim, ebt1):
    """Coils 0-15, holding 0-4, input 0-18: counted by the arbiter and by the simulator's line."""
    term = rtu.terminals[2]
    assert [(b.table, b.address, b.count) for b in term.status_plan.blocks] == [
        ("coil", 0, 16), ("holding", 0, 5), ("input", 0, 19)]
    frames_before = line_stats(module_sim, RTU_LINE)["frames"]
    snap = await term.read_status()
    assert snap.online and set(snap.values) == set(ebt1.points)
    assert rtu.arbiter.stats.requests == 3
    assert line_stats(module_sim, RTU_LINE)["frames"] - frames_before == 3


# ---------------------------------------------------------------------- health polls: settings every Nth poll


def every(profile: ModbusTerminalProfile, n: int) -> ModbusTerminalProfile:
    return profile.model_copy(update={"settings_poll_every": n})


async def _requests_per_poll(term: ModbusTerminal, polls: int) -> list[int]:
    counts = []
    for _ in range(polls):
        before = term.arbiter.stats.requests
        snap = await term.poll_status()
        assert snap.online and set(snap.values) == set(term.profile.points)
        counts.append(term.arbiter.stats.requests - before)
    return counts


async def test_health_poll_reads_status_every_time_and_settings_every_nth(any_line, ebt1):
    """ebt-1 polls read the input registers (status, measurements) every time and the coils and
    holding registers (settings) only every ``settings_poll_every``-th time: 1 request, not 3."""
    assert ebt1.settings_poll_every == 12
    base = any_line.terminals[0]
    term = ModbusTerminal(base.device_id, base.unit_id, every(ebt1, 3), any_line.arbiter)
    assert [(b.table, b.address, b.count) for b in term.live_plan.blocks] == [("input", 0, 19)]
    phase = term.unit_id % 3  # the terminals of a line take their turns staggered by unit id
    first = 3 - phase  # polls until the second full read
    counts = await _requests_per_poll(term, 1 + first + 3)
    assert counts == [3, *[1] * (first - 1), 3, 1, 1, 3]
    snap = await term.poll_status()  # a poll that reused the settings says when they were read
    assert snap.settings_read_at is not None and snap.settings_read_at < snap.timestamp
    full = await term.read_status()  # an explicit full read still reads everything
    assert full.settings_read_at == full.timestamp
    one = ModbusTerminal(base.device_id, base.unit_id, every(ebt1, 1), any_line.arbiter)
    assert await _requests_per_poll(one, 3) == [3, 3, 3]  # settings_poll_every: 1 reads all each time


async def test_fault_bits_show_on_the_next_poll_when_settings_are_not_due(rtu, module_sim, ebt1):
    """A fault in the status word is seen by the very next poll (the ≤ 2 poll cycles promise)
    even while the settings are reused, through the line poller as the daemon runs it."""
    base = rtu.terminals[1]
    term = ModbusTerminal(base.device_id, base.unit_id, every(ebt1, 1000), rtu.arbiter)
    results: list[PollResult] = []
    poller = LinePoller([term], results.append)
    await poller.poll_cycle()
    await poller.poll_cycle()
    assert results[-1].snapshot.values["tamper"] is False
    before = rtu.arbiter.stats.requests
    with fault(module_sim, "tamper", device=term.device_id):
        await poller.poll_cycle()
        assert results[-1].snapshot.values["tamper"] is True
        assert rtu.arbiter.stats.requests - before == 1  # the status alone was read
    await poller.poll_cycle()
    assert results[-1].snapshot.values["tamper"] is False


async def test_written_settings_show_in_polls_and_other_writes_force_a_read(rtu, module_sim, ebt1):
    term, other = (ModbusTerminal(t.device_id, t.unit_id, every(ebt1, 1000), rtu.arbiter)
                   for t in rtu.terminals[:2])
    await _requests_per_poll(term, 1)
    await term.write_points({"volume": 37, "audio_source": "fm_tuner", "mute": True})
    assert await _requests_per_poll(term, 1) == [1]  # no extra read: polls report what was written
    snap = await term.poll_status()
    assert (snap.values["volume"], snap.values["audio_source"], snap.values["mute"]) == (37, "fm_tuner", True)
    await other.write_points({"volume": 20})  # another unit: no reason to read term's settings again
    assert await _requests_per_poll(term, 1) == [1]
    await rtu.arbiter.write(term.unit_id, WriteBlock("holding", 0, (41,), ("volume",)))  # not through term
    assert await _requests_per_poll(term, 2) == [3, 1]
    assert (await term.poll_status()).values["volume"] == 41
    await write_all_on_line(rtu.terminals, {"volume": 45})  # unit id 0 reaches every terminal
    assert await _requests_per_poll(term, 1) == [3]
    assert (await term.poll_status()).values["volume"] == 45
    with fault(module_sim, "offline", device=term.device_id):  # a failed poll: read them all once back
        assert not (await term.poll_status()).online
    assert await _requests_per_poll(term, 2) == [3, 1]
    await term.write_points({"volume": 50, "audio_source": "line_in", "mute": False})


async def test_known_settings_stand_for_a_read_only_while_nothing_else_wrote_the_terminal(rtu, ebt1):
    """What activation may journal as a terminal's prior state without reading it first."""
    first = rtu.terminals[0]
    term = ModbusTerminal(first.device_id, first.unit_id, every(ebt1, 1000), rtu.arbiter)
    assert term.known_settings(60) is None  # never read
    await term.read_status()
    await term.write_points({"volume": 33})  # through this object: known as written
    known = term.known_settings(60)
    assert known is not None and known["volume"] == 33 and known["amp_power"] is False
    assert term.known_settings(0) is None  # too old for a zero age
    await write_all_on_line(rtu.terminals, {"volume": 45})  # a unit-id-0 frame: what it did is unknown
    assert term.known_settings(60) is None
    await term.read_status()
    assert term.known_settings(60)["volume"] == 45  # type: ignore[index]
    await term.write_points({"volume": 50})


async def test_read_points_is_fresh_while_polls_reuse_settings(module_sim, ebt1):
    """A local operator (here a second Modbus TCP client, as a panel would be) turns the volume:
    polls keep showing the last read value until the settings are due, but read_points — what
    activation's prior-state read and read-back use — reads the terminal itself."""
    async with open_line("tcp", module_sim, ebt1) as line, open_line("tcp", module_sim, ebt1) as panel:
        term = ModbusTerminal(line.terminals[0].device_id, 1, every(ebt1, 4), line.arbiter)
        await term.write_points({"volume": 30})
        await term.read_status()  # the first full read (unit 1: its next one is 4 - 1 polls on)
        await panel.terminals[0].write_points({"volume": 64})
        for _ in range(2):
            assert (await term.poll_status()).values["volume"] == 30  # reused (not yet due)
            assert (await term.read_points(["volume"]))["volume"] == 64  # fresh from the terminal
        assert (await term.poll_status()).values["volume"] == 64  # due: read again
        await term.write_points({"volume": 50})


# ---------------------------------------------------------------------- reading whole replies


async def test_replies_are_read_whole_after_their_wire_time(rtu, module_sim, ebt1):
    """Each RTU reply to a poll is read in two pieces (its first bytes, then the rest after its
    wire time) instead of one wake-up per chunk the port delivers; values, exceptions and CRC
    errors are unaffected, and the same reads without holding give the same values."""
    hold = rtu.arbiter._hold
    assert hold is not None and hold.enabled  # the pinned pymodbus has what holding relies on
    term = rtu.terminals[0]
    before = hold.holds
    for _ in range(3):
        held = await term.read_status()
        assert held.online
    assert hold.holds - before == 9  # every reply of every block (coils 7, holding 15, input 43 bytes)
    assert not hold.holding
    before = hold.holds
    assert (await term.read_points(["volume", "amp_ready"], Priority.EMERGENCY))["volume"] >= 0
    assert hold.holds == before  # a command's replies are taken as they come: no added latency
    with pytest.raises(DeviceExceptionError):
        await rtu.arbiter.write(1, WriteBlock("holding", 0, (150,), ("volume",)))
    with fault(module_sim, "crc_errors", device="rtu1", rate=1.0), pytest.raises(NoResponseError) as info:
        await term.read_points(["volume"])
    assert info.value.garbled == 3 and not hold.holding
    settings = SerialLineSettings(rtu.arbiter.settings.port, timeout_s=0.3, retries=2, hold_replies=False)
    await rtu.arbiter.close()  # one client per port
    async with LineArbiter(settings) as plain:
        assert plain._hold is None
        snap = await ModbusTerminal(term.device_id, term.unit_id, ebt1, plain).read_status()
    assert snap.online and set(snap.values) == set(held.values)
    writable = [name for name, point in ebt1.points.items() if point.writable and name != "line_check"]
    assert {k: snap.values[k] for k in writable} == {k: held.values[k] for k in writable}


# ---------------------------------------------------------------------- the silence after a reply


async def test_every_request_keeps_the_silence_after_the_reply_before_it(rtu, module_sim, ebt1):
    """The simulator's line is strict (a request less than 3.5 characters after a reply runs into
    it and gets no answer) and counts every request that starts too soon: with held poll replies,
    with replies taken as they come (commands, and holding switched off) and with broadcasts in
    between, the arbiter sends none too soon and every request is answered at the first try."""
    before = line_stats(module_sim, RTU_LINE)
    assert before["framing"] == "strict"
    poller = LinePoller(rtu.terminals, lambda result: None)
    for _ in range(3):
        assert all(r.snapshot.online for r in await poller.poll_cycle())
        for term in rtu.terminals:
            assert (await term.read_points(["volume", "amp_power"], Priority.COMMAND))["volume"] >= 0
    assert not (await write_all_on_line(rtu.terminals, {"mute": False})).failed  # a broadcast
    assert all(r.snapshot.online for r in await poller.poll_cycle())
    stats = rtu.arbiter.stats
    assert stats.retries == 0 and stats.timeouts == 0 and stats.crc_errors == 0
    settings = SerialLineSettings(rtu.arbiter.settings.port, timeout_s=0.3, retries=2, hold_replies=False)
    await rtu.arbiter.close()  # one client per port
    async with LineArbiter(settings) as plain:
        terminals = [ModbusTerminal(t.device_id, t.unit_id, ebt1, plain) for t in rtu.terminals]
        plain_poller = LinePoller(terminals, lambda result: None)
        for _ in range(2):
            assert all(r.snapshot.online for r in await plain_poller.poll_cycle())
        assert plain.stats.retries == 0
    after = line_stats(module_sim, RTU_LINE)
    assert after["early_frames"] == before["early_frames"]
    assert after["unanswered"] == before["unanswered"]


def test_reply_end_is_bounded_by_the_arrival_of_its_bytes():
    """The silence counts from when the reply left the wire: no later than its bytes arrived
    plus the wire time of those still to come (continuous RTU frame); not trusted when the rest
    came in later than the silence would have ended, nor when the header does not tell the size."""
    char = 10 / 9600
    t35 = 3.5 * char
    end = _ReplyEnd(char, t35)
    end.received(100.0, 3, 43, after_hold=False)  # 40 characters still to come
    end.received(100.0 + 40 * char + 0.002, 43, 43, after_hold=False)  # the rest came 2 ms late
    assert end.trusted and end.end(now=100.051) == pytest.approx(100.0 + 40 * char)
    end.new_reply()
    end.received(100.0, 3, 43, after_hold=False)
    end.received(100.0 + 40 * char + t35 + 0.001, 43, 43, after_hold=False)  # the device paused
    assert not end.trusted and end.end(now=101.0) == pytest.approx(100.0 + 40 * char + t35 + 0.001)
    end.new_reply()
    end.received(100.0, 3, 43, after_hold=False)
    end.received(100.2, 43, 43, after_hold=True)  # read late on purpose: all there at once
    assert end.trusted and end.end(now=100.2) == pytest.approx(100.0 + 40 * char)
    end.new_reply()
    end.received(100.0, 3, 43, after_hold=False)
    end.received(100.1, 40, 43, after_hold=True)  # not all there when released: not trusted
    end.received(100.2, 43, 43, after_hold=True)
    assert not end.trusted and end.end(now=100.3) == 100.2
    end.new_reply()
    end.received(100.0, 2, 0, after_hold=False)  # not a reply to this request, as far as it says
    assert end.end(now=100.5) == 100.5


# ---------------------------------------------------------------------- broadcast


async def test_broadcast_write_reaches_every_terminal(rtu, module_sim):
    before = line_stats(module_sim, RTU_LINE)["broadcasts"]
    values = {"amp_power": True, "emergency_override": True, "volume": 64}
    result = await write_all_on_line(rtu.terminals, values)
    assert result.broadcast and not result.failed
    assert line_stats(module_sim, RTU_LINE)["broadcasts"] - before == 2  # coils 0-1 in one FC15, volume FC6
    for term in rtu.terminals:
        state = module_sim.state(term.device_id)
        assert state["coils"]["amp_power"] and state["coils"]["emergency_override"], term.device_id
        assert state["holding"]["volume"] == 64, term.device_id
    # the line is usable right after the broadcast: every terminal answers the next request
    for term in rtu.terminals:
        assert (await term.read_points(["volume"]))["volume"] == 64
    result = await write_all_on_line(rtu.terminals, {"amp_power": False, "emergency_override": False})
    assert result.broadcast
    assert not any(module_sim.state(t.device_id)["coils"]["amp_power"] for t in rtu.terminals)
    assert rtu.arbiter.stats.broadcasts == 3


async def test_group_write_falls_back_to_each_unit(rtu, module_sim, ebt1):
    no_broadcast = ebt1.model_copy(update={"broadcast_writes": False})
    terminals = [ModbusTerminal(t.device_id, t.unit_id, no_broadcast, rtu.arbiter) for t in rtu.terminals]
    before = line_stats(module_sim, RTU_LINE)["broadcasts"]
    with fault(module_sim, "offline", device="rtu2"):
        result = await write_all_on_line(terminals, {"mute": True})
    assert not result.broadcast
    assert set(result.failed) == {"rtu2"} and isinstance(result.failed["rtu2"], NoResponseError)
    assert line_stats(module_sim, RTU_LINE)["broadcasts"] == before
    assert module_sim.state("rtu1")["coils"]["mute"] and module_sim.state("rtu3")["coils"]["mute"]
    assert not (await write_all_on_line(terminals, {"mute": False})).failed


# ---------------------------------------------------------------------- polling and faults


async def test_dead_terminal_is_polled_every_n_cycles_and_neighbours_keep_going(rtu, module_sim):
    results: list[PollResult] = []
    poller = LinePoller(rtu.terminals, results.append,
                        PollSettings(offline_after_failures=2, offline_poll_every=3))
    timeouts_before = rtu.arbiter.stats.timeouts
    with fault(module_sim, "offline", device="rtu2"):
        for _ in range(9):
            await poller.poll_cycle()
        assert poller.stats.last_cycle_s > 0
    polled_dead = [r.cycle for r in results if r.device_id == "rtu2"]
    assert polled_dead == [0, 1, 4, 7]  # offline after cycle 1, then every 3rd cycle
    transitions = [(r.cycle, r.online) for r in results if r.device_id == "rtu2" and r.changed]
    assert transitions == [(1, False)]
    assert all(r.snapshot.failure == "no_response" for r in results if r.device_id == "rtu2")
    neighbours = [r for r in results if r.device_id != "rtu2"]
    assert len(neighbours) == 18 and all(r.snapshot.online for r in neighbours)
    # a dead terminal costs one timed-out request (with its retries) per poll, not its whole plan
    assert rtu.arbiter.stats.timeouts - timeouts_before == len(polled_dead) * 3
    # after the fault is cleared it comes back at its next due poll
    for _ in range(3):
        await poller.poll_cycle()
    assert poller.availability("rtu2").online
    assert [(r.cycle, r.online) for r in results if r.device_id == "rtu2" and r.changed][-1] == (10, True)


async def test_crc_errors_are_retried_and_counted(rtu, module_sim):
    term = rtu.terminals[0]
    sim_before = line_stats(module_sim, RTU_LINE)["corrupted_replies"]
    with fault(module_sim, "crc_errors", device="rtu1", rate=1.0), pytest.raises(NoResponseError) as info:
        await term.read_points(["volume"])
    assert info.value.attempts == 3 and info.value.garbled == 3
    stats = rtu.arbiter.stats
    assert (stats.crc_errors, stats.retries, stats.timeouts, stats.failures) == (3, 2, 0, 1)

    retrying = LineArbiter(SerialLineSettings(rtu.arbiter.settings.port, timeout_s=0.3, retries=8))
    await rtu.arbiter.close()  # one client per port
    async with retrying:
        lossy = ModbusTerminal("rtu1", 1, term.profile, retrying)
        with fault(module_sim, "crc_errors", device="rtu1", rate=0.3):
            for _ in range(10):
                assert (await lossy.read_status()).online
        stats = retrying.stats
    assert stats.crc_errors > 0 and stats.retries == stats.crc_errors and stats.failures == 0
    assert stats.timeouts == 0
    sim_corrupted = line_stats(module_sim, RTU_LINE)["corrupted_replies"] - sim_before
    assert sim_corrupted == 3 + stats.crc_errors  # every corrupted reply was noticed as such


async def test_per_device_timeout_override(rtu, module_sim, ebt1):
    await rtu.arbiter.close()  # one client per port: reopen without retries
    settings = SerialLineSettings(rtu.arbiter.settings.port, timeout_s=0.3, retries=0)
    async with LineArbiter(settings) as arbiter:
        hasty = ModbusTerminal("rtu3", 3, ebt1, arbiter)
        patient = ModbusTerminal("rtu3", 3, ebt1, arbiter, timeout_s=1.5)
        with fault(module_sim, "slow_replies", device="rtu3", delay_ms=500):
            with pytest.raises(NoResponseError):
                await hasty.read_points(["volume"])
            await asyncio.sleep(0.5)  # let the late reply pass
            assert (await patient.read_points(["warmup_ms"]))["warmup_ms"] > 0
        assert arbiter.stats.timeouts == 1 and arbiter.stats.successes == 1


async def test_commands_jump_ahead_of_polling(rtu, module_sim):
    """With 40 polls queued, a command waits only for the transaction already on the wire, and an
    emergency command queued after a routine one still goes first."""
    block = ReadBlock("input", 0, 19)
    polls = [asyncio.create_task(rtu.arbiter.read(1 + i % 3, block)) for i in range(40)]
    await asyncio.sleep(0.1)  # the first polls are served; most are still queued
    done_before = rtu.arbiter.stats.successes
    await rtu.terminals[0].set_volume(55)
    served_meanwhile = rtu.arbiter.stats.successes - done_before - 1
    assert served_meanwhile <= 1
    assert sum(not p.done() for p in polls) >= 30

    order: list[str] = []

    async def tagged(tag: str, priority: Priority) -> None:
        await rtu.terminals[1].write_points({"emergency_override": tag == "emergency"}, priority)
        order.append(tag)

    both = [asyncio.create_task(tagged("routine", Priority.COMMAND)),
            asyncio.create_task(tagged("emergency", Priority.EMERGENCY))]
    await asyncio.gather(*both)
    assert order == ["emergency", "routine"]
    assert module_sim.state("rtu2")["coils"]["emergency_override"] is False  # the routine write came last
    assert sum(not p.done() for p in polls) >= 25
    await asyncio.gather(*polls)
    assert rtu.arbiter.stats.failures == 0


async def test_unplug_and_replug_recovers_without_restart(rtu, module_sim):
    results: list[PollResult] = []
    poller = LinePoller(rtu.terminals, results.append, PollSettings(line_down_wait_s=0.2))
    poller.start()
    try:
        await eventually(lambda: len(results) >= 3)
        module_sim.fault("unplug", line=RTU_LINE)
        down = await eventually(lambda: [r for r in results if r.snapshot.failure == "line_down"])
        assert "rs485" in down[0].snapshot.error
        with pytest.raises(LineDownError, match="is down"):
            await rtu.terminals[0].read_points(["volume"])
        assert not rtu.arbiter.connected
        plugged = time.monotonic()
        module_sim.fault("unplug", line=RTU_LINE, clear=True)
        await eventually(lambda: rtu.terminals[0].read_points(["volume"]))
        print(f"RS-485 re-plug → first good reply: {(time.monotonic() - plugged) * 1000:.0f} ms")
        mark = len(results)
        await eventually(lambda: len([r for r in results[mark:] if r.snapshot.online]) >= 3)
    finally:
        await poller.stop()
    assert rtu.arbiter.stats.reconnects == 1
    assert all(poller.availability(t.device_id).online for t in rtu.terminals)
    assert [up for up, _ in rtu.events] == [True, False, True]
    assert "serial port closed" in rtu.events[1][1]


async def test_silent_tcp_terminal_does_not_close_its_connection(module_sim, ebt1):
    """pymodbus closes a TCP connection after retries+3 unanswered requests; the arbiter keeps it."""
    cfg = module_sim.config
    dev = cfg.tcp_ids[0]
    settings = TcpLineSettings(cfg.host, cfg.tcp_ports[dev], timeout_s=0.15, retries=0)
    async with LineArbiter(settings) as arbiter:
        term = ModbusTerminal(dev, 1, ebt1, arbiter)
        with fault(module_sim, "offline", device=dev):
            for _ in range(6):
                assert (await term.read_status()).failure == "no_response"
        assert (await term.read_status()).online
        stats = arbiter.stats
    assert (stats.timeouts, stats.reconnects, stats.line_down) == (6, 0, 0)


async def test_tcp_endpoint_nobody_listens_on(ebt1):
    async with LineArbiter(TcpLineSettings("127.0.0.1", free_port(), timeout_s=0.2)) as arbiter:
        assert not arbiter.connected
        with pytest.raises(LineDownError, match="cannot connect"):
            await ModbusTerminal("x", 1, ebt1, arbiter).read_points(["volume"])


async def test_line_that_never_existed_fails_fast(tmp_path):
    arbiter = LineArbiter(SerialLineSettings(str(tmp_path / "ttyNone")))
    async with arbiter:
        assert not arbiter.connected
        with pytest.raises(LineDownError, match="does not exist"):
            await arbiter.read(1, ReadBlock("coil", 0, 1))
    assert arbiter.stats.line_down == 1


async def test_line_impedance_check_reports_open_and_short(rtu, module_sim):
    term = rtu.terminals[0]
    with fault(module_sim, "line_open", device="rtu1", zone=1), \
            fault(module_sim, "line_short", device="rtu1", zone=2):
        zones = await term.run_line_check(timeout_s=10)
    assert zones[1] == LineImpedance("open", None) and zones[2] == LineImpedance("short", None)
    assert all(zones[z].state == "open" for z in range(3, 9))  # nothing wired there
    snap = await term.read_status()
    assert snap.values["line_fault"] is True
    zones = await term.run_line_check(timeout_s=10)
    assert zones[1].state == "ok" and zones[1].ohms == pytest.approx(100, abs=2)
    assert zones[2].state == "ok" and zones[2].ohms == pytest.approx(120, abs=2)


# ---------------------------------------------------------------------- FM transmitter


async def test_fm_commands_round_trip(fm, module_sim):
    driver, _ = fm
    await driver.ping()
    await driver.set_frequency(9850)
    assert await driver.get_frequency() == 9850
    await driver.set_power(60)
    assert await driver.get_power() == 60
    await driver.set_rds_ps("LIUQIAO")
    await driver.set_rds_rt("Liuqiao township emergency broadcast, 98.5 MHz")
    await driver.set_tx(True)
    assert await driver.get_tx() is True
    state = module_sim.state("fm1")
    assert (state["frequency"], state["power"], state["tx"]) == (9850, 60, True)
    assert state["rds"] == {"PS": "LIUQIAO", "RT": "Liuqiao township emergency broadcast, 98.5 MHz"}
    status = await driver.status()
    assert status.forward_w == pytest.approx(30.0) and status.reflected_w == pytest.approx(0.3)
    assert status.vswr is not None and 1.0 < status.vswr < 1.5
    assert 20 < status.temperature_c < 60 and status.alarm.names == ()
    await driver.set_tx(False)
    assert await driver.get_tx() is False
    assert (await driver.status()).vswr is None


async def test_fm_limits_and_device_errors(fm, module_sim):
    driver, _ = fm
    for call in (driver.set_frequency(10900), driver.set_power(101), driver.set_rds_ps("TOO LONG!"),
                 driver.set_rds_rt("x" * 65), driver.set_rds_ps("广播")):
        with pytest.raises(ValueError):
            await call
    with fault(module_sim, "mains_failure", device="fm1"), pytest.raises(AtCommandError) as info:
        await driver.set_tx(True)  # the module refuses the carrier during a supply fault
    assert info.value.code == "4"
    assert driver.stats.errors == 1


async def test_fm_unsolicited_alarms_between_replies(fm, module_sim):
    """Alarm lines arrive while commands are in flight; both are sorted out correctly."""
    driver, alarms = fm
    await driver.set_frequency(9850)
    await driver.set_tx(True)
    stop = asyncio.Event()

    async def busy() -> int:
        count = 0
        while not stop.is_set():
            assert await driver.get_frequency() == 9850
            count += 1
        return count

    worker = asyncio.create_task(busy())
    await asyncio.sleep(0.1)
    with fault(module_sim, "high_vswr", device="fm1"):
        await eventually(lambda: alarms and alarms[-1].bits == 1)
        status = await driver.status()
        assert status.alarm.names == ("high_vswr",) and status.vswr is not None and status.vswr > 2
    await eventually(lambda: alarms[-1].bits == 0)
    stop.set()
    assert await worker > 0
    assert [a.names for a in alarms][-2:] == [("high_vswr",), ()]
    assert all(a.unsolicited for a in alarms)
    stats = driver.stats
    assert stats.garbled == 0 and stats.timeouts == 0 and stats.alarms == len(alarms)
    await driver.set_tx(False)


async def test_fm_survives_garbled_replies(fm, module_sim, ebr_fm1):
    """A damaged character makes a reply unusable; the command is asked again, never misread."""
    driver, _ = fm
    await driver.close()  # one owner per port: reopen with more retries
    patient = FmTransmitter(FmLineSettings(driver.settings.port, retries=6), ebr_fm1)
    async with patient:
        assert await patient.wait_connected(5.0)
        await patient.set_power(70)
        # A flipped character is not always visible (the module's letters may arrive in either
        # case), so garble often enough that some replies are certainly unusable.
        with fault(module_sim, "crc_errors", device="fm1", rate=0.5):
            for _ in range(40):
                assert await patient.get_power() == 70
        stats = patient.stats
    assert stats.garbled + stats.timeouts > 0
    assert stats.retries == stats.garbled + stats.timeouts


async def test_fm_unplug_and_replug(fm, module_sim):
    driver, _ = fm
    module_sim.fault("unplug", line="fm")
    await eventually(lambda: not driver.connected)
    with pytest.raises(LineDownError, match="is down"):
        await driver.ping()
    plugged = time.monotonic()
    module_sim.fault("unplug", line="fm", clear=True)
    assert await driver.wait_connected(5.0)
    await eventually(lambda: _pinged(driver))
    print(f"FM re-plug → first good reply: {(time.monotonic() - plugged) * 1000:.0f} ms")
    assert driver.stats.reconnects == 1


async def _pinged(driver: FmTransmitter) -> bool:
    await driver.ping()
    return True
