"""The ebr-fm1 township FM transmitter module: its AT-command protocol and physics.

It sits alone on a serial line (a pty paced at 9600 8N1 like every simulated line). Commands
and replies are lines ending in CR LF; a command is answered by ``OK``, ``ERROR:<code>`` or one
or more ``+KEY:value`` lines followed by ``OK``. When the alarm bits change the module sends
``+ALARM:<bits>`` on its own — always as a whole line between replies, never inside one.

Error codes (documented for vendors in docs/simulator.md):
  1 unknown command, 2 bad parameter (syntax, not a number, bad RDS field or characters),
  3 value out of range, 4 not allowed now (carrier on during an over-temperature or supply fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from simulator.faults import RequestError, WireFaults
from simulator.physics import HeatSink, ScaledClock
from simulator.pty_port import PtyPort
from simulator.spec import FmSpec, SerialLineSpec

ERR_UNKNOWN, ERR_PARAM, ERR_RANGE, ERR_NOT_ALLOWED = 1, 2, 3, 4
FREQ_MIN, FREQ_MAX = 8750, 10800
RDS_LIMITS = {"PS": 8, "RT": 64}
ALARM_HIGH_VSWR, ALARM_OVER_TEMP, ALARM_PLL, ALARM_SUPPLY, ALARM_NO_AUDIO = (1 << i for i in range(5))
ALARM_NAMES = ("high_vswr", "over_temperature", "pll_unlocked", "supply_fault", "no_audio_input")

FULL_POWER_DW = 500          # 50.0 W at 100 %, in 0.1 W
NORMAL_REFLECTION = 0.01
VSWR_REFLECTION = 0.25       # a damaged antenna or feeder sends a quarter back
VSWR_FOLDBACK = 0.5          # the module protects itself by halving its output
AMBIENT_C = 25.0
FULL_POWER_RISE_C = 30.0
FAULT_HEAT_C = 70.0
THERMAL_TAU_S = 60.0
OVER_TEMP_TRIP_C = 75.0
OVER_TEMP_RESET_C = 65.0
NO_AUDIO_AFTER_S = 30.0      # silence detector: carrier on without programme for this long


class FmTransmitter:
    """One ebr-fm1 module and the serial line it hangs on."""

    def __init__(self, spec: FmSpec, line: SerialLineSpec, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.port = PtyPort(line, self._on_bytes)
        self.wire = WireFaults()
        self.now = ScaledClock(time_scale, clock)
        self._last = 0.0
        self.frequency = 9800
        self.power = 80
        self.tx = False
        self.rds = {"PS": "", "RT": ""}
        self.heat = HeatSink(trip_c=OVER_TEMP_TRIP_C, reset_c=OVER_TEMP_RESET_C, heat_tau_s=THERMAL_TAU_S,
                             cool_tau_s=THERMAL_TAU_S, temperature_c=AMBIENT_C)
        self.vswr_fault = False
        self.overheating = False
        self.supply_fault = False
        self.audio_present = False
        self._silent_since = 0.0
        self.reported_alarms = 0
        self.alarm_lines = 0
        self.commands = 0
        self.errors = 0
        self._rx = bytearray()
        self._commands: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.port.open()
        self._task = asyncio.create_task(self._serve(), name=f"fm-{self.spec.id}")

    async def stop(self) -> None:
        for task in [self._task, *self._pending]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.port.close()

    def unplug(self) -> None:
        self._rx.clear()
        self.port.close()

    def plug(self) -> None:
        self.port.open()

    # ------------------------------------------------------------------ physics
    @property
    def on_air(self) -> bool:
        """The carrier is radiating: commanded on and not cut by supply or thermal protection."""
        return self.tx and not self.supply_fault and not self.heat.tripped

    def forward_dw(self) -> int:
        if not self.on_air:
            return 0
        fwd = FULL_POWER_DW * self.power / 100
        return round(fwd * (VSWR_FOLDBACK if self.vswr_fault else 1.0))

    def reflected_dw(self) -> int:
        return round(self.forward_dw() * (VSWR_REFLECTION if self.vswr_fault else NORMAL_REFLECTION))

    def alarms(self) -> int:
        bits = 0
        if self.vswr_fault and self.on_air:
            bits |= ALARM_HIGH_VSWR
        if self.heat.tripped:
            bits |= ALARM_OVER_TEMP
        if self.supply_fault:
            bits |= ALARM_SUPPLY
        if self.on_air and self._last - self._silent_since >= NO_AUDIO_AFTER_S:
            bits |= ALARM_NO_AUDIO
        return bits

    def rssi_at(self, frequency: int) -> float | None:
        """Field strength (dBµV) at a village receiver tuned to ``frequency``; None if nothing there."""
        if frequency != self.frequency or self.forward_dw() == 0:
            return None
        return round(40 + 10 * math.log10(self.forward_dw() / 10 + 1), 1)

    def tick(self) -> None:
        """Advance the physics; report changed alarm bits unsolicited."""
        t = self.now()
        dt = t - self._last
        if dt > 0:
            target = AMBIENT_C + FULL_POWER_RISE_C * self.forward_dw() / FULL_POWER_DW
            target += FAULT_HEAT_C if self.overheating else 0.0
            self.heat.step(target, dt)
            self._last = t
        if self.audio_present or not self.on_air:
            self._silent_since = self._last
        bits = self.alarms()
        if bits != self.reported_alarms:
            self.reported_alarms = bits
            self._emit([f"+ALARM:{bits}"])

    def set_audio_present(self, present: bool) -> None:
        """Called by the audio line: the module's programme input carries sound or not."""
        self.audio_present = present

    def set_fault(self, fault: str, active: bool) -> None:
        self.tick()
        if fault == "high_vswr":
            self.vswr_fault = active
        elif fault == "over_temperature":
            self.overheating = active
            if active:
                self.heat.overheat()
        elif fault == "mains_failure":
            self.supply_fault = active
        else:
            raise RequestError(f"'fault': {fault!r} does not apply to an FM transmitter")
        self.tick()

    # ------------------------------------------------------------------ AT protocol
    def execute(self, command: str) -> list[str]:
        """Answer one command line (without its line ending)."""
        self.tick()
        self.commands += 1
        reply = self._execute(command.strip())
        if reply[-1].startswith("ERROR"):
            self.errors += 1
        return reply

    def _execute(self, cmd: str) -> list[str]:
        head, sep, arg = cmd.partition("=")
        head = head.upper()
        if head == "AT" and not sep:
            return ["OK"]
        query = {"AT+FREQ?": f"+FREQ:{self.frequency}", "AT+PWR?": f"+PWR:{self.power}",
                 "AT+TX?": f"+TX:{int(self.tx)}",
                 "AT+STAT?": f"+STAT:fwd={self.forward_dw()},ref={self.reflected_dw()},"
                             f"temp={round(self.heat.temperature_c * 10)},alarm={self.alarms()}"}
        if not sep and head in query:
            return [query[head], "OK"]
        if not sep and head == "AT+RDS?":
            return [f"+RDS:PS,{self.rds['PS']}", f"+RDS:RT,{self.rds['RT']}", "OK"]
        if sep and head == "AT+FREQ":
            return self._set_number(arg, FREQ_MIN, FREQ_MAX, "frequency")
        if sep and head == "AT+PWR":
            return self._set_number(arg, 0, 100, "power")
        if sep and head == "AT+TX":
            if arg not in ("0", "1"):
                return [f"ERROR:{ERR_PARAM}"]
            if arg == "1" and (self.heat.tripped or self.supply_fault):
                return [f"ERROR:{ERR_NOT_ALLOWED}"]
            self.tx = arg == "1"
            return ["OK"]
        if sep and head == "AT+RDS":
            field, comma, text = arg.partition(",")
            field = field.upper()
            if not comma or field not in RDS_LIMITS or not all(" " <= c <= "~" for c in text):
                return [f"ERROR:{ERR_PARAM}"]
            if len(text) > RDS_LIMITS[field]:
                return [f"ERROR:{ERR_RANGE}"]
            self.rds[field] = text
            return ["OK"]
        return [f"ERROR:{ERR_UNKNOWN}"]

    def _set_number(self, arg: str, low: int, high: int, attr: str) -> list[str]:
        if not arg.isdigit():
            return [f"ERROR:{ERR_PARAM}"]
        if not low <= int(arg) <= high:
            return [f"ERROR:{ERR_RANGE}"]
        setattr(self, attr, int(arg))
        return ["OK"]

    # ------------------------------------------------------------------ serial side
    def _on_bytes(self, data: bytes, arrived_at: float) -> None:
        self._rx += data
        while True:
            cut = min((i for i in (self._rx.find(b"\r"), self._rx.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            raw = bytes(self._rx[:cut])
            del self._rx[:cut + 1]
            if raw.strip():
                self._commands.put_nowait((raw.decode("latin-1"), arrived_at))
        if len(self._rx) > 512:  # line noise without an end: a real UART buffer overflows too
            self._rx.clear()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, arrived_at = await self._commands.get()
            if self.wire.offline:
                continue
            reply = self.execute(command)
            delay = arrived_at + (self.spec.turnaround_ms + self.wire.extra_delay_ms) / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(reply)
            self.tick()  # the command may have changed the alarm bits: report them after the reply

    async def _send(self, lines: list[str]) -> None:
        data = bytearray("".join(f"{line}\r\n" for line in lines).encode("latin-1"))
        if self.wire.corrupt_next():  # one garbled character; line endings stay intact
            spots = [i for i, byte in enumerate(data) if byte not in b"\r\n"]
            data[self.wire.rng.choice(spots)] ^= 0x20
        if self.port.plugged:
            await self.port.send(bytes(data))

    def _emit(self, lines: list[str]) -> None:
        """Queue an unsolicited message; the port's transmit lock keeps it out of other replies."""
        if self.wire.offline or not self.port.plugged:
            return
        with contextlib.suppress(RuntimeError):  # no running loop (unit tests of the model)
            task = asyncio.get_running_loop().create_task(self._send(lines))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            self.alarm_lines += 1

    def line_state(self) -> dict[str, Any]:
        return {"id": self.spec.line, "kind": "at", "device": self.spec.id, **self.port.stats(),
                "commands": self.commands, "errors": self.errors, "alarm_lines": self.alarm_lines}

    def state(self) -> dict[str, Any]:
        self.tick()
        bits = self.alarms()
        return {
            "id": self.spec.id, "kind": "fm_transmitter", "line": self.spec.line,
            "frequency": self.frequency, "power": self.power, "tx": self.tx, "on_air": self.on_air,
            "rds": dict(self.rds), "forward_dw": self.forward_dw(), "reflected_dw": self.reflected_dw(),
            "temperature_c": round(self.heat.temperature_c, 2), "alarm": bits,
            "alarms": [name for i, name in enumerate(ALARM_NAMES) if bits >> i & 1],
            "audio_present": self.audio_present,
            "faults": {"high_vswr": self.vswr_fault, "over_temperature": self.overheating,
                       "mains_failure": self.supply_fault, **self.wire.state()},
        }
