"""The simulator as a gateway sees it: a separate process reached over real ptys and sockets.

Raw RTU frames go through pyserial, Modbus TCP through plain sockets, the FM module through its
AT line, and Debian's ``mbpoll`` reads and writes a terminal both ways. Timing is asserted only
as a lower bound (a reply can never beat the wire), which is physical and cannot be flaky.
"""

from __future__ import annotations

import math
import re
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from simkit import SimConfig, SimProcess, running_simulator, write_sim_config

from simulator.modbus_pdu import crc_ok, with_crc

CHAR_S = 10 / 9600  # 8N1 at 9600 baud
T35_S = 3.5 * CHAR_S  # the silence owed between frames, after a reply too
TURNAROUND_S = 0.003
QUIET_S = 0.3  # how long we listen before calling it silence

_last_heard: dict[str, float] = {}
"""When the end of a reply was last received on each line (by port path: this module is the master
of each line, whichever of its handles it sends on)."""


def frame(unit: int, fc: int, *words: int) -> bytes:
    return with_crc(struct.pack(f">BB{len(words)}H", unit, fc, *words))


def wire_time(request: int, reply: int, turnaround_s: float = TURNAROUND_S) -> float:
    """Least time a transaction can take: request, t3.5 silence, turnaround, reply."""
    return (request + 3.5 + reply) * CHAR_S + turnaround_s


@pytest.fixture
def rtu(module_sim: SimProcess) -> Iterator[serial.Serial]:
    port = serial.Serial(str(module_sim.config.rtu_link), 9600, timeout=1.0)
    yield port
    port.close()


def transact(port: serial.Serial, request: bytes, reply_len: int, timeout: float = 1.0,
             after_reply_s: float = T35_S) -> tuple[bytes, float]:
    """Send ``request`` once ``after_reply_s`` have passed since the last reply was in (a correct
    master keeps 3.5 characters of silence) and read up to ``reply_len`` bytes of its reply."""
    port.reset_input_buffer()
    port.timeout = timeout
    wait = _last_heard.get(port.port, -1.0) + after_reply_s - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    start = time.monotonic()
    port.write(request)
    reply = port.read(reply_len)
    if reply:
        _last_heard[port.port] = time.monotonic()
    return reply, time.monotonic() - start


def silent(port: serial.Serial, request: bytes) -> bool:
    reply, _ = transact(port, request, 1, timeout=QUIET_S)
    return reply == b""


def read_regs(port: serial.Serial, unit: int, fc: int, address: int, count: int) -> list[int]:
    reply, _ = transact(port, frame(unit, fc, address, count), 5 + 2 * count)
    assert crc_ok(reply) and reply[:3] == bytes([unit, fc, 2 * count]), reply.hex()
    return list(struct.unpack(f">{count}H", reply[3:-2]))


def write_reg(port: serial.Serial, unit: int, address: int, value: int) -> None:
    request = frame(unit, 6, address, value)
    reply, _ = transact(port, request, 8)
    assert reply == request


def write_coil(port: serial.Serial, unit: int, address: int, on: bool) -> None:
    request = frame(unit, 5, address, 0xFF00 if on else 0)
    reply, _ = transact(port, request, 8)
    assert reply == request


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# ---------------------------------------------------------------------------- Modbus RTU over the pty

def test_replies_take_at_least_their_wire_time(module_sim: SimProcess, rtu: serial.Serial):
    for unit in (1, 2, 3):
        request = frame(unit, 4, 0, 19)
        reply, elapsed = transact(rtu, request, 5 + 38)
        assert crc_ok(reply) and reply[0] == unit
        assert elapsed >= wire_time(len(request), len(reply))
    request = frame(2, 1, 0, 16)
    reply, elapsed = transact(rtu, request, 7)
    assert crc_ok(reply) and elapsed >= wire_time(8, 7)


def test_exception_replies_come_back_over_the_wire(rtu: serial.Serial):
    reply, _ = transact(rtu, frame(1, 6, 0, 101), 5)
    assert crc_ok(reply) and reply[:3] == bytes([1, 0x86, 3])
    reply, _ = transact(rtu, frame(1, 4, 0, 20), 5)
    assert crc_ok(reply) and reply[:3] == bytes([1, 0x84, 2])


def test_unknown_unit_bad_crc_and_missing_frame_gap_get_silence(module_sim: SimProcess, rtu: serial.Serial):
    before = module_sim.call("stats", line="rs485")["stats"]
    assert silent(rtu, frame(42, 3, 0, 5))
    damaged = bytearray(frame(1, 3, 0, 5))
    damaged[-1] ^= 0xFF
    assert silent(rtu, bytes(damaged))
    # Two requests without 3.5 characters of silence between them are one (garbled) frame.
    assert silent(rtu, frame(1, 3, 0, 5) + frame(2, 3, 0, 5))
    after = module_sim.call("stats", line="rs485")["stats"]
    assert after["unanswered"] >= before["unanswered"] + 1
    assert after["bad_frames"] >= before["bad_frames"] + 2
    assert read_regs(rtu, 1, 3, 0, 1)  # the line still works


def line_stats(sim: SimProcess) -> dict[str, object]:
    return sim.call("stats", line="rs485")["stats"]


PEER_GAP_S = 0.0011
"""A well-known peer gateway (ThingsBoard IoT Gateway, pymodbus async serial client) sends its next
request about this long after a reply: well inside the 3.65 ms that 3.5 characters take at 9600."""


def soon_after_a_reply(sim: SimProcess, port: serial.Serial, gap_s: float,
                       tries: int = 5) -> list[tuple[bool, bytes]]:
    """Read a reply, then send the next request ``gap_s`` after it was in, as a hasty master does;
    per try (until the line counted one as early): whether it did, and what came back."""
    outcomes = []
    for _ in range(tries):
        before = line_stats(sim)["early_frames"]
        assert read_regs(port, 1, 3, 0, 1)  # a reply on the bus
        reply, _ = transact(port, frame(2, 3, 0, 1), 7, timeout=QUIET_S, after_reply_s=gap_s)
        early = line_stats(sim)["early_frames"] > before  # type: ignore[operator]
        outcomes.append((early, reply))
        if early:
            break
    return outcomes


def test_a_request_too_soon_after_a_reply_runs_into_it_and_gets_silence(module_sim: SimProcess,
                                                                        rtu: serial.Serial):
    # Strict framing (the default): every device heard the reply and the request as one garbled frame.
    # (A try that a busy machine delayed past 3.5 characters is not early, and may be answered.)
    outcomes = soon_after_a_reply(module_sim, rtu, PEER_GAP_S)
    assert any(early for early, _ in outcomes), f"no request went out within 3.5 characters: {outcomes}"
    assert all(reply == b"" for early, reply in outcomes if early)
    assert line_stats(module_sim)["framing"] == "strict"
    assert read_regs(rtu, 2, 3, 0, 1)  # the same request after the full silence is answered


def test_requests_that_keep_the_silence_after_a_reply_are_all_answered(module_sim: SimProcess,
                                                                       rtu: serial.Serial):
    before = line_stats(module_sim)
    for unit in (1, 2, 3, 1, 2, 3):
        reply, _ = transact(rtu, frame(unit, 3, 0, 1), 7, after_reply_s=T35_S)
        assert crc_ok(reply) and reply[0] == unit
    after = line_stats(module_sim)
    assert after["early_frames"] == before["early_frames"]


def test_lenient_framing_answers_a_request_too_soon_after_a_reply(tmp_path: Path):
    config = write_sim_config(tmp_path, rtu_terminals=2, tcp_terminals=0, fm=False, rtu_framing="lenient")
    with running_simulator(config) as sim, serial.Serial(str(config.rtu_link), 9600, timeout=1) as port:
        outcomes = soon_after_a_reply(sim, port, PEER_GAP_S)
        assert any(early for early, _ in outcomes), f"no request went out within 3.5 characters: {outcomes}"
        assert all(crc_ok(reply) and reply[0] == 2 for _, reply in outcomes)
        stats = line_stats(sim)
        assert stats["framing"] == "lenient" and stats["early_frames"] >= 1


def test_broadcast_write_reaches_every_terminal_without_a_reply(module_sim: SimProcess, rtu: serial.Serial):
    request = with_crc(struct.pack(">BBHHBH", 0, 16, 0, 1, 2, 33))
    assert silent(rtu, request)
    for unit in (1, 2, 3):
        assert read_regs(rtu, unit, 3, 0, 1) == [33]
    assert all(module_sim.state(d)["holding"]["volume"] == 33 for d in module_sim.config.rtu_ids)
    assert silent(rtu, frame(0, 6, 0, 50))
    assert [read_regs(rtu, unit, 3, 0, 1) for unit in (1, 2, 3)] == [[50]] * 3


def test_offline_terminal_is_silent_until_the_fault_clears(module_sim: SimProcess, rtu: serial.Serial):
    module_sim.fault("offline", device="rtu2")
    try:
        assert silent(rtu, frame(2, 3, 0, 1))
        assert read_regs(rtu, 1, 3, 0, 1)  # its neighbours still answer
    finally:
        module_sim.fault("offline", device="rtu2", clear=True)
    assert read_regs(rtu, 2, 3, 0, 1)


def test_crc_fault_corrupts_replies(module_sim: SimProcess, rtu: serial.Serial):
    module_sim.fault("crc_errors", device="rtu1", rate=1.0)
    try:
        for _ in range(3):
            reply, _ = transact(rtu, frame(1, 3, 0, 5), 15)
            assert len(reply) == 15 and not crc_ok(reply)
        assert module_sim.call("stats", line="rs485")["stats"]["corrupted_replies"] >= 3
    finally:
        module_sim.fault("crc_errors", device="rtu1", clear=True)
    reply, _ = transact(rtu, frame(1, 3, 0, 5), 15)
    assert crc_ok(reply)


def test_slow_replies_add_their_delay(module_sim: SimProcess, rtu: serial.Serial):
    module_sim.fault("slow_replies", device="rtu3", delay_ms=150)
    try:
        request = frame(3, 3, 0, 5)
        reply, elapsed = transact(rtu, request, 15)
        assert crc_ok(reply) and elapsed >= wire_time(8, 15) + 0.150
    finally:
        module_sim.fault("slow_replies", device="rtu3", clear=True)


def test_unplug_removes_the_link_and_replug_brings_a_working_port_back(module_sim: SimProcess):
    link = module_sim.config.rtu_link
    old = serial.Serial(str(link), 9600, timeout=0.3)
    module_sim.fault("unplug", line="rs485")
    try:
        assert not link.exists() and not link.is_symlink()
        try:
            old.write(frame(1, 3, 0, 1))
            assert old.read(7) == b""
        except serial.SerialException:
            pass  # the adapter is gone: the OS says so
        assert module_sim.call("stats", line="rs485")["stats"]["plugged"] is False
    finally:
        old.close()
        module_sim.fault("unplug", line="rs485", clear=True)
    assert link.is_symlink() and link.exists()
    with serial.Serial(str(link), 9600, timeout=1.0) as port:
        assert read_regs(port, 1, 3, 0, 1)


# ---------------------------------------------------------------------------- Modbus TCP

def mbap(sock: socket.socket, tid: int, unit: int, pdu: bytes) -> bytes | None:
    sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
    try:
        header = sock.recv(7, socket.MSG_WAITALL)
    except TimeoutError:
        return None
    t, proto, length, u = struct.unpack(">HHHB", header)
    assert (t, proto, u) == (tid, 0, unit)
    return sock.recv(length - 1, socket.MSG_WAITALL)


def test_tcp_terminal_answers_its_unit_and_255_only(module_sim: SimProcess):
    port = module_sim.config.tcp_ports["tcp1"]
    with socket.create_connection(("127.0.0.1", port), timeout=QUIET_S) as sock:
        assert mbap(sock, 1, 1, struct.pack(">BHH", 3, 0, 5))[:2] == bytes([3, 10])
        assert mbap(sock, 2, 255, struct.pack(">BHH", 4, 16, 1)) == bytes([4, 2, 1, 3])  # firmware 1.3
        assert mbap(sock, 3, 1, struct.pack(">BHH", 6, 0, 200)) == bytes([0x86, 3])
        assert mbap(sock, 4, 7, struct.pack(">BHH", 3, 0, 5)) is None  # silence
    with socket.create_connection(("127.0.0.1", port), timeout=QUIET_S) as sock:
        module_sim.fault("offline", device="tcp1")
        try:
            assert mbap(sock, 5, 1, struct.pack(">BHH", 3, 0, 1)) is None
        finally:
            module_sim.fault("offline", device="tcp1", clear=True)
    with socket.create_connection(("127.0.0.1", port), timeout=QUIET_S) as sock:
        module_sim.fault("crc_errors", device="tcp1", rate=1.0)
        try:
            assert mbap(sock, 6, 1, struct.pack(">BHH", 3, 0, 1)) is None  # a lost reply
        finally:
            module_sim.fault("crc_errors", device="tcp1", clear=True)


def test_tcp_link_down_refuses_connections_until_it_comes_back(module_sim: SimProcess):
    port = module_sim.config.tcp_ports["tcp1"]
    module_sim.fault("unplug", line="ip1")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        module_sim.fault("unplug", line="ip1", clear=True)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                return mbap(sock, 1, 1, struct.pack(">BHH", 3, 0, 1)) is not None
        except ConnectionRefusedError:
            return False

    assert wait_for(answers, timeout=5)


# ---------------------------------------------------------------------------- mbpoll, a public client

def mbpoll(*args: str) -> tuple[dict[int, int], str]:
    result = subprocess.run(["mbpoll", "-1", "-0", "-o", "1", *args], capture_output=True, text=True,
                            timeout=20)
    out = result.stdout + result.stderr
    values = {int(m[1]): int(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(-?\d+)", out, re.M)}
    return values, out


def test_mbpoll_reads_and_writes_a_terminal_over_the_serial_pty(module_sim: SimProcess):
    link = str(module_sim.config.rtu_link)
    rtu = ["-m", "rtu", "-b", "9600", "-P", "none", "-a", "3"]
    values, out = mbpoll(*rtu, "-t", "3", "-r", "0", "-c", "19", link)
    assert values[16] == 0x0103 and values[3] == 1360 and 2200 <= values[2] <= 2300, out
    _, out = mbpoll(*rtu, "-t", "4", "-r", "0", link, "77")
    assert "Written 1 references" in out, out
    values, out = mbpoll(*rtu, "-t", "4", "-r", "0", "-c", "5", link)
    assert values[0] == 77 and values[2] == 9780, out
    assert module_sim.state("rtu3")["holding"]["volume"] == 77
    _, out = mbpoll(*rtu, "-t", "4", "-r", "0", link, "150")
    assert "Illegal data value" in out, out
    _, out = mbpoll(*rtu, "-t", "0", "-r", "8", link, "1")
    assert module_sim.state("rtu3")["coils"]["zone_1"] is True, out
    mbpoll(*rtu, "-t", "0", "-r", "8", link, "0")
    mbpoll(*rtu, "-t", "4", "-r", "0", link, "50")


def test_mbpoll_reads_and_writes_a_terminal_over_tcp(module_sim: SimProcess):
    tcp = ["-m", "tcp", "-p", str(module_sim.config.tcp_ports["tcp1"]), "-a", "1"]
    _, out = mbpoll(*tcp, "-t", "4", "-r", "0", "127.0.0.1", "55")
    assert "Written 1 references" in out, out
    values, out = mbpoll(*tcp, "-t", "4", "-r", "0", "-c", "5", "127.0.0.1")
    assert values[0] == 55, out
    values, out = mbpoll(*tcp, "-t", "3", "-r", "0", "-c", "19", "127.0.0.1")
    assert values[16] == 0x0103 and values[8] == 100, out  # zone 1 commissioned at ~100 Ω
    mbpoll(*tcp, "-t", "4", "-r", "0", "127.0.0.1", "50")


# ---------------------------------------------------------------------------- FM transmitter

def read_line(port: serial.Serial, timeout: float = 2.0) -> str:
    port.timeout = timeout
    return port.read_until(b"\r\n").decode()


def at(port: serial.Serial, command: str) -> list[str]:
    """Send a command and collect its reply up to OK/ERROR, skipping unsolicited alarms."""
    port.write(command.encode() + b"\r\n")
    lines = []
    while True:
        line = read_line(port)
        assert line.endswith("\r\n"), f"no complete reply to {command}: {lines} {line!r}"
        if not line.startswith("+ALARM:"):
            lines.append(line[:-2])
        if line.startswith(("OK", "ERROR:")):
            return lines


def test_fm_at_protocol_over_its_pty(module_sim: SimProcess):
    with serial.Serial(str(module_sim.config.fm_link), 9600, timeout=2) as port:
        start = time.monotonic()
        assert at(port, "AT") == ["OK"]
        assert time.monotonic() - start >= 8 * CHAR_S  # "AT\r\n" in and "OK\r\n" out at 9600 baud
        assert at(port, "AT+FREQ=9450") == ["OK"]
        assert at(port, "AT+FREQ?") == ["+FREQ:9450", "OK"]
        assert at(port, "AT+FREQ=7000") == ["ERROR:3"]
        assert at(port, "AT+PWR=60") == ["OK"]
        assert at(port, "AT+RDS=PS,LIUQIAO") == ["OK"]
        assert at(port, "AT+RDS=RT," + "R" * 65) == ["ERROR:3"]
        assert at(port, "AT+WHAT") == ["ERROR:1"]
        stat = at(port, "AT+STAT?")
        assert re.fullmatch(r"\+STAT:fwd=0,ref=0,temp=\d+,alarm=0", stat[0]) and stat[1] == "OK"


def test_fm_reports_high_vswr_unsolicited(module_sim: SimProcess):
    with serial.Serial(str(module_sim.config.fm_link), 9600, timeout=2) as port:
        assert at(port, "AT+PWR=100") == ["OK"]
        assert at(port, "AT+TX=1") == ["OK"]
        try:
            module_sim.fault("high_vswr", device="fm1")
            assert read_line(port) == "+ALARM:1\r\n"
            fwd, ref = map(int, re.findall(r"(?:fwd|ref)=(\d+)", at(port, "AT+STAT?")[0]))
            assert ref * 10 > fwd > 0  # VSWR far above 1.5
            module_sim.fault("high_vswr", device="fm1", clear=True)
            assert read_line(port) == "+ALARM:0\r\n"
        finally:
            at(port, "AT+TX=0")


# ---------------------------------------------------------------------------- audio line

def sine(seconds: float, rate: int = 16000, freq: float = 1000.0, amplitude: float = 0.5) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(amplitude * 32767 * math.sin(2 * math.pi * freq * i / rate))
                                   for i in range(n)))


def test_audio_line_logs_who_was_audible_and_records_wav(module_sim: SimProcess, rtu: serial.Serial):
    # rtu1: amplifier on, zone 1 on, line-in, no warm-up wait; rtu2: amplifier off.
    write_reg(rtu, 1, 3, 0)
    write_reg(rtu, 1, 1, 1)
    write_coil(rtu, 1, 0, True)
    write_coil(rtu, 1, 8, True)
    try:
        with socket.create_connection(("127.0.0.1", module_sim.config.audio_port)) as sock:
            sock.sendall(b'{"format":"s16le","rate":16000,"channels":1}\n')
            start = time.time()
            sock.sendall(sine(1.0) + bytes(2 * 3200))  # 1 s of 1 kHz, then 0.2 s of silence
            time.sleep(0.4)
            assert module_sim.call("audio")["present"] is True
            assert read_regs(rtu, 1, 4, 4, 1) == [50]  # output level follows the volume
            assert read_regs(rtu, 2, 4, 4, 1) == [0]
        recordings = wait_for(lambda: [r for r in module_sim.call("audio")["recordings"] if r["ended"]])
        assert recordings, module_sim.call("audio")
        rec = recordings[-1]
        assert rec["seconds"] == pytest.approx(1.2, abs=0.021) and rec["audio_seconds"] >= 0.96
        with wave.open(rec["file"]) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16000, 1, 19200)
        spans = module_sim.call("audible", device="rtu1")
        assert len(spans["spans"]) == 1 and spans["spans"][0]["duration_s"] >= 0.95
        assert spans["spans"][0]["start"] >= start - 0.1
        assert len(spans["zones"]["1"]) == 1 and spans["zones"]["2"] == []
        assert module_sim.call("audible", device="rtu2")["spans"] == []
        assert module_sim.call("audio")["present"] is False
    finally:
        write_coil(rtu, 1, 0, False)
        write_coil(rtu, 1, 8, False)
        write_reg(rtu, 1, 3, 2000)


def test_audio_line_rejects_a_bad_header(module_sim: SimProcess):
    with socket.create_connection(("127.0.0.1", module_sim.config.audio_port), timeout=5) as sock:
        sock.sendall(b'{"format":"mp3","rate":16000}\n')
        assert b"field 'format'" in sock.recv(1000)


# ---------------------------------------------------------------------------- physics, scenario, shutdown

def test_physics_over_the_wire_with_time_scale(tmp_path: Path):
    # 100x: a 50 s warm-up takes 0.5 s, a flat battery a few seconds.
    config = write_sim_config(tmp_path, rtu_terminals=1, tcp_terminals=0, fm=False, time_scale=100,
                              devices={"rtu1": {"warmup_ms": 50000}})
    with running_simulator(config) as sim, serial.Serial(str(config.rtu_link), 9600, timeout=1) as port:
        write_coil(port, 1, 0, True)
        assert read_regs(port, 1, 4, 0, 1)[0] & 0b1100 == 0b0100  # amp on, warming up
        assert wait_for(lambda: read_regs(port, 1, 4, 0, 1)[0] & 0b1000, timeout=5)
        sim.fault("line_open", device="rtu1", zone=2)
        assert read_regs(port, 1, 4, 9, 1) != [65535]  # not known before a line check
        write_reg(port, 1, 4, 1)
        assert wait_for(lambda: read_regs(port, 1, 3, 4, 1) == [0], timeout=3)
        assert read_regs(port, 1, 4, 9, 1) == [65535] and read_regs(port, 1, 4, 0, 1)[0] & 1 << 7
        sim.fault("mains_failure", device="rtu1")
        status, _, mains, battery = read_regs(port, 1, 4, 0, 4)
        assert status & 0b11 == 0b10 and mains == 0 and battery <= 1360
        assert wait_for(lambda: silent(port, frame(1, 4, 0, 1)), timeout=30)  # battery flat: dead
        assert sim.state("rtu1")["physics"]["alive"] is False


def test_scenario_steps_fire_at_their_time(tmp_path: Path):
    config = write_sim_config(tmp_path, rtu_terminals=2, tcp_terminals=0, fm=False,
                              scenarios=[{"at_s": 0.5, "device": "rtu2", "fault": "offline"},
                                         {"at_s": 0.6, "device": "rtu1", "fault": "tamper"}])
    with running_simulator(config) as sim:
        assert wait_for(lambda: sim.state("rtu1")["status"]["tamper"], timeout=5)
        assert sim.state("rtu2")["faults"]["offline"] is True
        with serial.Serial(str(config.rtu_link), 9600) as port:
            assert silent(port, frame(2, 3, 0, 1))
        assert "scenario" in sim.log()


def test_sigterm_stops_the_simulator_and_removes_its_links(sim: SimProcess):
    config: SimConfig = sim.config
    assert config.rtu_link.is_symlink() and config.fm_link is not None and config.fm_link.is_symlink()
    assert sim.stop() == 0
    assert not config.rtu_link.is_symlink() and not config.fm_link.is_symlink()
