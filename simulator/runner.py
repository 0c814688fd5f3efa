"""Wire the whole simulated township together on one asyncio loop.

``run_simulation`` is what ``ebc sim`` runs: it builds the devices from a :class:`SimulationSpec`,
opens every pty, socket and the control and audio endpoints, plays the scripted fault scenario,
and when cancelled (Ctrl-C, or SIGTERM, which it turns into Ctrl-C) closes everything again,
removing the pty links so a stale link never points at a dead pty. Given a lifeline (see
``simulator.lifeline``) it also stops, just as cleanly, when the process that started it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import Any

from simulator.audio_line import AudioLine
from simulator.control import ControlServer
from simulator.faults import FM_FAULTS, TERMINAL_FAULTS, WIRE_FAULTS, RequestError
from simulator.fm_transmitter import FmTransmitter
from simulator.lifeline import watch_lifeline
from simulator.rtu_line import RtuLine
from simulator.spec import FaultStep, SimulationSpec
from simulator.tcp_server import TcpEndpoint
from simulator.terminal import Terminal

log = logging.getLogger("simulator")

TICK_S = 0.2


class Simulation:
    """Every simulated device, line and endpoint of one spec."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.spec = spec
        self.fms = {f.id: FmTransmitter(f, next(s for s in spec.serial_lines if s.id == f.line),
                                        time_scale=spec.time_scale) for f in spec.fm_transmitters}
        self.terminals = {t.id: Terminal(t, time_scale=spec.time_scale, fm_rssi=self._fm_rssi)
                          for t in spec.terminals}
        fm_lines = {f.line for f in spec.fm_transmitters}
        self.rtu_lines = {s.id: RtuLine(s, self._on_line(s.id))
                          for s in spec.serial_lines if s.id not in fm_lines}
        self.tcp_endpoints = {e.id: TcpEndpoint(e, self._on_line(e.id)) for e in spec.tcp_endpoints}
        self.audio = AudioLine(spec.audio, list(self.terminals.values()), list(self.fms.values()))
        self.control = ControlServer(self, spec.control.host, spec.control.port)
        self._tasks: list[asyncio.Task[None]] = []

    def _on_line(self, line: str) -> list[Terminal]:
        return [t for t in self.terminals.values() if t.spec.line == line]

    def _fm_rssi(self, frequency: int) -> float | None:
        """What a terminal's FM tuner receives: the township transmitter, if it is on air there."""
        levels = [fm.rssi_at(frequency) for fm in self.fms.values()]
        return max((lv for lv in levels if lv is not None), default=None)

    async def start(self) -> None:
        started: list[Any] = []
        try:
            for part in [*self.rtu_lines.values(), *self.fms.values(), *self.tcp_endpoints.values(),
                         self.audio, self.control]:
                await part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                await part.stop()
            raise
        self._tasks = [asyncio.create_task(self._tick_forever(), name="sim-physics")]
        if self.spec.scenarios:
            self._tasks.append(asyncio.create_task(self._run_scenario(), name="sim-scenario"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for part in [self.control, self.audio, *self.tcp_endpoints.values(), *self.fms.values(),
                     *self.rtu_lines.values()]:
            try:
                await part.stop()
            except Exception:
                log.exception("error stopping %r", part)

    async def _tick_forever(self) -> None:
        """Advance physics even when nobody polls, so batteries drain and alarms fire on time."""
        while True:
            for term in self.terminals.values():
                term.tick()
            for fm in self.fms.values():
                fm.tick()
            await asyncio.sleep(TICK_S)

    async def _run_scenario(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for step in sorted(self.spec.scenarios, key=lambda s: s.at_s):
            await asyncio.sleep(max(0.0, t0 + step.at_s - loop.time()))
            try:
                log.info("scenario t=%.1fs: %s", step.at_s, self.apply_step(step))
            except RequestError as exc:
                log.error("scenario step at %.1fs not applied: %s", step.at_s, exc)

    # ------------------------------------------------------------------ queries
    def terminal(self, device: str) -> Terminal:
        if device not in self.terminals:
            raise RequestError(f"field 'device': no terminal {device!r} (known: {', '.join(self.terminals)})")
        return self.terminals[device]

    def device_state(self, device: str) -> dict[str, Any]:
        if device in self.fms:
            return self.fms[device].state()
        if device in self.terminals:
            return self.terminals[device].state()
        raise RequestError(f"field 'device': no device {device!r} (known: {', '.join(self._device_ids())})")

    def _device_ids(self) -> list[str]:
        return [*self.terminals, *self.fms]

    def line_ids(self) -> list[str]:
        return [*self.rtu_lines, *(fm.spec.line for fm in self.fms.values()), *self.tcp_endpoints]

    def line_state(self, line: str) -> dict[str, Any]:
        if line in self.rtu_lines:
            return self.rtu_lines[line].state()
        if line in self.tcp_endpoints:
            return self.tcp_endpoints[line].state()
        for fm in self.fms.values():
            if fm.spec.line == line:
                return fm.line_state()
        raise RequestError(f"field 'line': no line {line!r} (known: {', '.join(self.line_ids())})")

    def inventory(self) -> dict[str, Any]:
        devices = [{"id": t.spec.id, "kind": "terminal", "line": t.spec.line, "unit_id": t.spec.unit_id,
                    "zones": t.spec.zones, "name": t.spec.name} for t in self.terminals.values()]
        devices += [{"id": f.spec.id, "kind": "fm_transmitter", "line": f.spec.line, "name": f.spec.name}
                    for f in self.fms.values()]
        lines = [self.line_state(lid) for lid in self.line_ids()]
        return {"devices": devices, "lines": lines,
                "control": {"host": self.spec.control.host, "port": self.spec.control.port},
                "audio": {"host": self.spec.audio.host, "port": self.spec.audio.port,
                          "record_dir": self.spec.audio.record_dir},
                "time_scale": self.spec.time_scale}

    # ------------------------------------------------------------------ faults
    def apply_step(self, step: FaultStep) -> str:
        return self.apply_fault(step.fault, device=step.device, line=step.line, clear=step.clear,
                                zone=step.zone, rate=step.rate, delay_ms=step.delay_ms)

    def apply_fault(self, fault: str, *, device: str | None = None, line: str | None = None,
                    clear: bool = False, zone: int | None = None, rate: float | None = None,
                    delay_ms: float | None = None) -> str:
        """Raise or clear one fault; returns a one-line description of what was done."""
        verb = "cleared" if clear else "raised"
        if fault == "unplug":
            if line is None:
                raise RequestError("field 'line': required for unplug (the id of a serial line)")
            port = self._unpluggable(line)
            if clear:
                port.plug()
            else:
                port.unplug()
            return f"line {line} {'plugged back in' if clear else 'unplugged'}"
        if device is None:
            raise RequestError(f"field 'device': required for {fault}")
        if device in self.fms:
            fm = self.fms[device]
            if fault in WIRE_FAULTS:
                fm.wire.apply(fault, clear, rate, delay_ms)
            elif fault in FM_FAULTS:
                fm.set_fault(fault, not clear)
            else:
                raise RequestError(f"field 'fault': {fault!r} does not apply to FM transmitter {device!r} "
                                   f"(it takes: {', '.join(WIRE_FAULTS + FM_FAULTS)})")
            return f"{fault} {verb} on {device}"
        term = self.terminal(device)
        if fault in WIRE_FAULTS:
            term.wire.apply(fault, clear, rate, delay_ms)
        elif fault in TERMINAL_FAULTS:
            term.set_fault(fault, not clear, zone)
        else:
            raise RequestError(f"field 'fault': {fault!r} does not apply to terminal {device!r} "
                               f"(it takes: {', '.join(WIRE_FAULTS + TERMINAL_FAULTS)})")
        return f"{fault} {verb} on {device}" + (f" zone {zone}" if zone is not None else "")

    def _unpluggable(self, line: str) -> RtuLine | FmTransmitter | TcpEndpoint:
        if line in self.rtu_lines:
            return self.rtu_lines[line]
        if line in self.tcp_endpoints:
            return self.tcp_endpoints[line]
        for fm in self.fms.values():
            if fm.spec.line == line:
                return fm
        raise RequestError(f"field 'line': no line {line!r} (known: {', '.join(self.line_ids())})")

    def summary(self) -> str:
        """One line saying what listens where."""
        parts = [f"{ln.spec.id} pty {ln.spec.link_path} ({len(ln.terminals)} terminals, "
                 f"{ln.spec.baudrate} baud)" for ln in self.rtu_lines.values()]
        parts += [f"{fm.spec.line} pty {fm.port.link} (FM {fm.spec.id}, {fm.port.spec.baudrate} baud)"
                  for fm in self.fms.values()]
        parts += [f"{e.spec.id} tcp {e.spec.host}:{e.spec.port} (units {sorted(e.terminals)})"
                  for e in self.tcp_endpoints.values()]
        parts.append(f"control {self.spec.control.host}:{self.spec.control.port}")
        parts.append(f"audio {self.spec.audio.host}:{self.spec.audio.port} → {self.spec.audio.record_dir}")
        return "simulator up: " + "; ".join(parts)


def _sigterm_as_ctrl_c(loop: asyncio.AbstractEventLoop) -> bool:
    """Make SIGTERM behave like Ctrl-C, so ``asyncio.run`` cancels its main task and every
    ``finally`` runs (the default SIGTERM action would kill the process and leave stale links).
    Only in the main thread and only if nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    loop.add_signal_handler(signal.SIGTERM, signal.raise_signal, signal.SIGINT)
    return True


async def run_simulation(spec: SimulationSpec, *, ready: asyncio.Event | None = None,
                         lifeline_fd: int | None = None) -> None:
    """Run the simulation until cancelled; ``ready`` is set once every endpoint listens.

    With ``lifeline_fd`` (the read end of a pipe whose other end the starting process holds) it
    also stops when that pipe reaches end-of-file: the starter is gone, even if it was SIGKILLed.
    """
    sim = Simulation(spec)
    loop = asyncio.get_running_loop()
    starter_gone = asyncio.Event()
    unwatch = watch_lifeline(lifeline_fd, starter_gone.set) if lifeline_fd is not None else None
    handles_sigterm = _sigterm_as_ctrl_c(loop)
    try:
        await sim.start()
        log.info(sim.summary())
        if ready is not None:
            ready.set()
        await starter_gone.wait()  # or until cancelled
        log.info("the process that started the simulator is gone (its lifeline closed)")
    finally:
        log.info("simulator stopping")
        if unwatch is not None:
            unwatch()
        if handles_sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
        await sim.stop()
