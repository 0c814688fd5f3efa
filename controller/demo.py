"""``ebc demo``: the simulated township and a live status board of every polled device.

The simulator runs as its own process, exactly like real hardware would, and the board reaches
it only through the serial ptys and TCP ports, via the same drivers the daemon uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

from controller.config import Config, SerialLine
from controller.hardware import Hardware
from drivers.fm_transmitter import FmAlarm, FmTransmitter
from drivers.line_poller import PollResult

REFRESH_S = 2.0
STATE_TEXT = {True: "在线 online", False: "离线 OFFLINE"}


async def _wait_for_simulator(cfg: Config, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Wait until the simulator's control port answers and every serial link exists."""
    assert cfg.simulator is not None
    links = [Path(line.port) for line in cfg.lines if isinstance(line, SerialLine)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection((cfg.simulator.control.host, cfg.simulator.control.port), 0.5).close()
            if all(link.exists() for link in links):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"simulator did not come up within {timeout_s:.0f} s")


def _terminal_line(cfg: Config, result: PollResult | None, device_id: str) -> str:
    dev = next(d for d in cfg.devices if d.id == device_id)
    head = f"{dev.id:<5} {_pad(dev.name, 16)}"
    if result is None:
        return f"{head} (not polled yet)"
    snap = result.snapshot
    if not snap.online:
        age = time.time() - snap.timestamp
        state = _pad(STATE_TEXT[result.online], 13)
        return f"{head} {state} {snap.failure or ''} {snap.error[:50]} ({age:.0f}s ago)"
    v = snap.values
    flags = [name for name in ("on_battery", "amp_fault", "over_temperature", "line_fault", "tamper")
             if v.get(name)]
    return (f"{head} {_pad(STATE_TEXT[True], 13)} amp={'on ' if v.get('amp_power') else 'off'} "
            f"vol={v.get('volume')!s:>3} temp={v.get('amp_temperature')!s:>5}°C "
            f"mains={v.get('mains_voltage')!s:>5}V batt={v.get('battery_voltage')!s:>5}V "
            f"fw={v.get('firmware')} up={v.get('uptime_s')}s {' '.join(flags) or 'ok'}")


def _pad(text: str, width: int) -> str:
    """Left-justify for a terminal, where CJK characters take two columns."""
    used = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(width - used, 0)


async def _fm_line(fm_id: str, fm: FmTransmitter) -> str:
    try:
        st = await fm.status()
    except Exception as exc:  # the board shows any failure instead of dying
        return f"{fm_id:<5} {_pad('FM transmitter', 16)} unreachable: {exc}"
    alarms = ",".join(st.alarm.names) or "none"
    return (f"{fm_id:<5} {_pad('FM transmitter', 16)} fwd={st.forward_w:.1f}W ref={st.reflected_w:.1f}W "
            f"vswr={st.vswr} temp={st.temperature_c:.1f}°C alarms={alarms}")


async def _board(cfg: Config, hw: Hardware, latest: dict[str, PollResult]) -> None:
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    while True:
        await asyncio.sleep(REFRESH_S)
        out = [f"{clear}{cfg.gateway.name} ({cfg.gateway.id}) — {time.strftime('%H:%M:%S')}  Ctrl-C to stop"]
        for line_id, poller in hw.pollers.items():
            stats = hw.arbiters[line_id].stats
            cyc = poller.stats
            out.append(f"\n[{line_id}] cycle {cyc.last_cycle_s * 1000:.0f} ms, requests {stats.requests}, "
                       f"timeouts {stats.timeouts}, crc {stats.crc_errors}, "
                       f"latency avg {stats.latency_avg_ms:.1f} ms")
            out.extend(_terminal_line(cfg, latest.get(t.device_id), t.device_id) for t in poller.terminals)
        for fm_id, fm in hw.transmitters.items():
            out.append("\n" + await _fm_line(fm_id, fm))
        print("\n".join(out), flush=True)


async def run_demo(cfg: Config) -> None:
    """Start the simulator process, poll everything, print the board until cancelled."""
    if cfg.simulator is None or cfg.path is None:
        raise SystemExit("ebc demo needs a config file with a simulator section")
    cmd = [sys.executable, "-m", "controller.cli", "sim", "--config", str(cfg.path)]
    sim = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    latest: dict[str, PollResult] = {}

    def on_poll(result: PollResult) -> None:
        latest[result.device_id] = result

    def on_alarm(device_id: str, alarm: FmAlarm) -> None:
        print(f"*** {device_id} alarm: {', '.join(alarm.names) or 'cleared'}", flush=True)

    hw = Hardware.from_config(cfg, on_poll=on_poll, on_fm_alarm=on_alarm)
    try:
        await _wait_for_simulator(cfg, sim)
        await hw.start()
        print(f"simulator up; polling {len(hw.terminals)} terminals on {len(hw.pollers)} lines "
              f"and {len(hw.transmitters)} FM transmitter(s). Fault injection: see docs/simulator.md",
              flush=True)
        await _board(cfg, hw, latest)
    finally:
        await hw.stop()
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
