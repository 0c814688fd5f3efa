"""The gateway's hardware as driver objects, built from the validated config.

This is the one place where config models are mapped onto the drivers' own settings (drivers
never import the controller): one arbiter and one poller per line, a ModbusTerminal per Modbus
device, an FmTransmitter per AT device.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.config import Config, SerialLine, TcpLine
from drivers.fm_transmitter import FmAlarm, FmLineSettings, FmTransmitter
from drivers.line_arbiter import LineArbiter, SerialLineSettings, TcpLineSettings
from drivers.line_poller import LinePoller, PollResult, PollSettings
from drivers.modbus_terminal import ModbusTerminal
from drivers.profile import AtFmTransmitterProfile, ModbusTerminalProfile


def line_settings(line: SerialLine | TcpLine) -> SerialLineSettings | TcpLineSettings:
    """Driver settings for one configured line."""
    if isinstance(line, SerialLine):
        return SerialLineSettings(port=line.port, baudrate=line.baudrate, bytesize=line.bytesize,
                                  parity=line.parity, stopbits=line.stopbits, timeout_s=line.timeout_s,
                                  retries=line.retries, name=line.id)
    return TcpLineSettings(host=line.host, port=line.port, timeout_s=line.timeout_s, retries=line.retries,
                           name=line.id)


@dataclass
class Hardware:
    """Every line, terminal and transmitter of one gateway."""

    arbiters: dict[str, LineArbiter] = field(default_factory=dict)
    terminals: dict[str, ModbusTerminal] = field(default_factory=dict)
    transmitters: dict[str, FmTransmitter] = field(default_factory=dict)
    pollers: dict[str, LinePoller] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config, *, on_poll: Callable[[PollResult], object],
                    on_fm_alarm: Callable[[str, FmAlarm], object] | None = None) -> Hardware:
        hw = cls()
        for dev in cfg.devices:
            profile = cfg.profiles[dev.profile]
            line = cfg.line(dev.line)
            if isinstance(profile, ModbusTerminalProfile):
                if line.id not in hw.arbiters:
                    hw.arbiters[line.id] = LineArbiter(line_settings(line))
                assert dev.unit_id is not None  # guaranteed by config validation
                hw.terminals[dev.id] = ModbusTerminal(dev.id, dev.unit_id, profile, hw.arbiters[line.id])
            elif isinstance(profile, AtFmTransmitterProfile) and isinstance(line, SerialLine):
                settings = FmLineSettings(port=line.port, baudrate=line.baudrate, bytesize=line.bytesize,
                                          parity=line.parity, stopbits=line.stopbits, retries=line.retries,
                                          name=line.id)
                alarm = None if on_fm_alarm is None else (lambda a, d=dev.id: on_fm_alarm(d, a))
                hw.transmitters[dev.id] = FmTransmitter(settings, profile, on_alarm=alarm)
        for line_id in hw.arbiters:
            line = cfg.line(line_id)
            terminals = [t for t in hw.terminals.values() if t.arbiter is hw.arbiters[line_id]]
            hw.pollers[line_id] = LinePoller(terminals, on_poll, PollSettings(
                offline_after_failures=line.offline_after_failures,
                offline_poll_every=line.offline_poll_every, interval_s=line.poll_interval_s))
        return hw

    async def start(self, *, poll: bool = True) -> None:
        for arbiter in self.arbiters.values():
            await arbiter.start()
        for fm in self.transmitters.values():
            await fm.start()
        if poll:
            for poller in self.pollers.values():
                poller.start()

    async def stop(self) -> None:
        """Stop polling, then close every line (shielded: runs to the end during cancellation)."""

        async def _stop() -> None:
            for poller in self.pollers.values():
                await poller.stop()
            for arbiter in self.arbiters.values():
                with contextlib.suppress(Exception):
                    await arbiter.close()
            for fm in self.transmitters.values():
                with contextlib.suppress(Exception):
                    await fm.close()

        await asyncio.shield(_stop())
