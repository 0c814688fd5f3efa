"""The ebt-1 village loudspeaker terminal: its Modbus tables and the physics behind them.

Every coil and register of the ebt-1 map (docs/register-map.md) is implemented here in code, as a
vendor's firmware would; the simulator never reads the profile file the gateway uses. Physics is
integrated lazily — whenever the terminal is read, written or ticked — in *simulated* seconds, which
run ``time_scale`` times faster than the wall clock so tests can watch an amplifier warm up or a
battery drain without waiting for it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from simulator.faults import RequestError, WireFaults
from simulator.modbus_pdu import ILLEGAL_ADDRESS, ILLEGAL_VALUE, ModbusError
from simulator.physics import HeatSink, ScaledClock
from simulator.spec import TerminalSpec

FIRMWARE = (1, 3)
ZONE_COUNT = 8
ZONE_COIL_BASE = 8
COIL_COUNT = 16  # 0..15; 3..7 are reserved, read as 0 and refuse writes
COIL_NAMES = {0: "amp_power", 1: "emergency_override", 2: "mute",
              **{ZONE_COIL_BASE + i: f"zone_{i + 1}" for i in range(ZONE_COUNT)}}
HOLDING_NAMES = ("volume", "audio_source", "fm_frequency", "warmup_ms", "line_check")
INPUT_COUNT = 19  # 0..18; 6 and 7 are reserved and read as 0
STATUS_BITS = ("mains_ok", "on_battery", "amp_on", "amp_ready", "audio_present", "amp_fault",
               "over_temperature", "line_fault", "tamper", "fm_signal")
OPEN_OHM = 65535
SHORT_OHM = 0
LINE_IN = 1

AMBIENT_C = 25.0
IDLE_RISE_C = 12.0          # amplifier on, silent
LOUD_RISE_C = 25.0          # extra at 100 % output
FAULT_HEAT_C = 70.0         # extra while the over_temperature fault (blocked fan) is injected
THERMAL_TAU_S = 60.0        # heating time constant
COOLING_TAU_S = 30.0        # amplifier off: heat sink cools faster than it heats
OVER_TEMP_TRIP_C = 85.0
OVER_TEMP_RESET_C = 70.0
BATTERY_CUTOFF_V = 10.5
BATTERY_DRAIN_IDLE_V_S = 0.002   # ~26 min from full to cutoff with the amplifier off
BATTERY_DRAIN_AMP_V_S = 0.010    # ~5 min with the amplifier on
BATTERY_CHARGE_V_S = 0.005
LINE_CHECK_S = 1.5
FM_SIGNAL_DBUV = 30.0
FM_NOISE_DBUV = 8.0


class Terminal:
    """One ebt-1 terminal. Implements :class:`simulator.modbus_pdu.DataModel`."""

    def __init__(self, spec: TerminalSpec, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 fm_rssi: Callable[[int], float | None] | None = None) -> None:
        self.spec = spec
        self.wire = WireFaults(rng=random.Random(spec.unit_id))
        self.now = ScaledClock(time_scale, clock)
        """Simulated seconds since the terminal was created."""
        self._last = 0.0
        self._rng = random.Random(spec.id)
        self._fm_rssi = fm_rssi
        # Settings survive a power loss (EEPROM); coils do not.
        self.volume = 50
        self.audio_source = LINE_IN
        self.fm_frequency = 9780
        self.warmup_ms = spec.warmup_ms
        self.coils = [False] * COIL_COUNT
        # Physics
        self.alive = True
        self.boot_at = 0.0
        self.heat = HeatSink(trip_c=OVER_TEMP_TRIP_C, reset_c=OVER_TEMP_RESET_C, heat_tau_s=THERMAL_TAU_S,
                             cool_tau_s=COOLING_TAU_S, temperature_c=AMBIENT_C)
        self.battery_v = spec.battery_full_v
        self._amp_on_since: float | None = None
        self._check_until: float | None = None
        # Injected faults and the audio line
        self.zone_faults: dict[int, str] = {}
        self.mains_failed = False
        self.overheating = False
        self.amp_fault = False
        self.tamper = False
        self.line_in_present = False
        self.deaths = 0
        self.impedance = [self._measure(z) for z in range(1, ZONE_COUNT + 1)]
        self.line_fault = False

    # ------------------------------------------------------------------ time and physics
    @property
    def amp_on(self) -> bool:
        """The amplifier runs: commanded on, powered, and not shut down by its protection."""
        return self.alive and self.coils[0] and not self.heat.tripped and not self.amp_fault

    def amp_ready(self) -> bool:
        """Warmed up: on for at least ``warmup_ms`` (as of the last physics step)."""
        if self._amp_on_since is None:
            return False
        return (self._last - self._amp_on_since) * 1000.0 >= self.warmup_ms

    def audible_zones(self) -> list[int]:
        """Configured zones whose relay is closed and whose speaker line is intact."""
        return [z for z in self.spec.zones
                if self.coils[ZONE_COIL_BASE + z - 1] and z not in self.zone_faults]

    @property
    def effective_volume(self) -> int:
        return 100 if self.coils[1] else self.volume

    def audible(self) -> bool:
        """Sound leaves the horns: everything in the chain is on and the line-in carries audio."""
        self.tick()
        return self._audible()

    def _audible(self) -> bool:
        return (self.amp_on and self.amp_ready() and self.audio_source == LINE_IN
                and (not self.coils[2] or self.coils[1]) and self.effective_volume > 0
                and bool(self.audible_zones()) and self.line_in_present)

    def tick(self) -> None:
        """Advance the physics to now (the runner calls this periodically)."""
        t = self.now()
        dt = t - self._last
        if dt <= 0:
            return
        level = self.effective_volume if self._audible() else 0
        if self.mains_failed:
            if self.alive:
                drain = BATTERY_DRAIN_IDLE_V_S + (BATTERY_DRAIN_AMP_V_S if self.amp_on else 0.0)
                self.battery_v = max(0.0, self.battery_v - drain * dt)
                if self.battery_v <= BATTERY_CUTOFF_V:
                    self._die()
        else:
            self.battery_v = min(self.spec.battery_full_v, self.battery_v + BATTERY_CHARGE_V_S * dt)
            if not self.alive:
                self._boot(t)
        target = AMBIENT_C + (FAULT_HEAT_C if self.overheating else 0.0)
        if self.amp_on:
            target += IDLE_RISE_C + LOUD_RISE_C * level / 100.0
        self.heat.step(target, dt)
        if self._check_until is not None and t >= self._check_until:
            self._finish_line_check()
        self._last = t
        self._track_amp(t)

    def _track_amp(self, t: float) -> None:
        if self.amp_on and self._amp_on_since is None:
            self._amp_on_since = t
        elif not self.amp_on:
            self._amp_on_since = None

    def _die(self) -> None:
        """Battery below cutoff: the terminal browns out and goes silent on the line."""
        self.alive = False
        self.deaths += 1
        self.coils = [False] * COIL_COUNT
        self._check_until = None

    def _boot(self, t: float) -> None:
        self.alive = True
        self.boot_at = t
        self.coils = [False] * COIL_COUNT

    @property
    def responsive(self) -> bool:
        """Answers on the wire (powered and not cut off by an offline fault)."""
        return self.alive and not self.wire.offline

    # ------------------------------------------------------------------ line supervision
    def _measure(self, zone: int) -> int:
        if zone not in self.spec.zones:
            return OPEN_OHM  # nothing wired to this output
        fault = self.zone_faults.get(zone)
        if fault == "open":
            return OPEN_OHM
        if fault == "short":
            return SHORT_OHM
        nominal = self.spec.nominal_impedance_ohm.get(zone, 100.0)
        return max(1, min(OPEN_OHM - 1, round(nominal * (1 + self._rng.uniform(-0.01, 0.01)))))

    def _finish_line_check(self) -> None:
        self._check_until = None
        self.impedance = [self._measure(z) for z in range(1, ZONE_COUNT + 1)]
        self.line_fault = any(self.impedance[z - 1] in (OPEN_OHM, SHORT_OHM) for z in self.spec.zones)

    @property
    def line_check_running(self) -> bool:
        return self._check_until is not None

    # ------------------------------------------------------------------ Modbus tables
    def status_word(self) -> int:
        bits = (not self.mains_failed, self.mains_failed, self.amp_on, self.amp_on and self.amp_ready(),
                self._audible(), self.amp_fault, self.heat.tripped, self.line_fault, self.tamper,
                self.fm_rssi_dbuv() >= FM_SIGNAL_DBUV)
        return sum(1 << i for i, bit in enumerate(bits) if bit)

    def fm_rssi_dbuv(self) -> float:
        rssi = self._fm_rssi(self.fm_frequency) if self._fm_rssi else None
        return FM_NOISE_DBUV if rssi is None else rssi

    def input_registers(self) -> list[int]:
        uptime = int(self._last - self.boot_at)
        regs = [0] * INPUT_COUNT
        regs[0] = self.status_word()
        regs[1] = round(self.heat.temperature_c * 10) & 0xFFFF
        regs[2] = 0 if self.mains_failed else 2250 + self._rng.randint(-30, 30)
        regs[3] = round(self.battery_v * 100)
        regs[4] = self.effective_volume if self._audible() else 0
        regs[5] = round(self.fm_rssi_dbuv())
        regs[8:16] = self.impedance
        regs[16] = FIRMWARE[0] << 8 | FIRMWARE[1]
        regs[17], regs[18] = uptime >> 16 & 0xFFFF, uptime & 0xFFFF
        return regs

    def holding_registers(self) -> list[int]:
        return [self.volume, self.audio_source, self.fm_frequency, self.warmup_ms,
                1 if self.line_check_running else 0]

    def read_bits(self, table: str, address: int, count: int) -> list[bool]:
        self.tick()
        if table != "coil" or address + count > COIL_COUNT:
            raise ModbusError(ILLEGAL_ADDRESS)
        return self.coils[address:address + count]

    def read_registers(self, table: str, address: int, count: int) -> list[int]:
        self.tick()
        regs = self.holding_registers() if table == "holding" else self.input_registers()
        if address + count > len(regs):
            raise ModbusError(ILLEGAL_ADDRESS)
        return regs[address:address + count]

    def write_coils(self, address: int, values: list[bool]) -> None:
        self.tick()
        addresses = range(address, address + len(values))
        if any(a not in COIL_NAMES for a in addresses):
            raise ModbusError(ILLEGAL_ADDRESS)
        for a, value in zip(addresses, values, strict=True):
            self.coils[a] = value
        self._track_amp(self._last)

    def write_registers(self, address: int, values: list[int]) -> None:
        self.tick()
        if address + len(values) > len(HOLDING_NAMES):
            raise ModbusError(ILLEGAL_ADDRESS)
        for a, value in enumerate(values, start=address):
            if ((a == 0 and value > 100) or (a == 1 and value > 3) or (a == 2 and not 8750 <= value <= 10800)
                    or (a == 4 and value > 1)):
                raise ModbusError(ILLEGAL_VALUE)
        for a, value in enumerate(values, start=address):
            if a == 0:
                self.volume = value
            elif a == 1:
                self.audio_source = value
            elif a == 2:
                self.fm_frequency = value
            elif a == 3:
                self.warmup_ms = value
            elif value == 1 and not self.line_check_running:
                self._check_until = self._last + LINE_CHECK_S

    # ------------------------------------------------------------------ faults and state
    def set_fault(self, fault: str, active: bool, zone: int | None = None) -> None:
        """Inject (``active``) or clear a device fault; wire faults go through ``self.wire``."""
        self.tick()
        if fault in ("line_open", "line_short"):
            if zone is None:
                raise RequestError(f"'zone' is required for {fault}")
            if not 1 <= zone <= ZONE_COUNT:
                raise RequestError(f"'zone' must be 1..{ZONE_COUNT}")
            kind = "open" if fault == "line_open" else "short"
            if active:
                self.zone_faults[zone] = kind
            elif self.zone_faults.get(zone) == kind:
                del self.zone_faults[zone]
        elif fault == "mains_failure":
            self.mains_failed = active
            if not active and not self.alive:
                self._boot(self._last)
        elif fault == "over_temperature":
            self.overheating = active
            if active:
                self.heat.overheat()
        elif fault == "amp_fault":
            self.amp_fault = active
        elif fault == "tamper":
            self.tamper = active
        else:
            raise RequestError(f"'fault': {fault!r} does not apply to a terminal")
        self._track_amp(self._last)

    def state(self) -> dict[str, Any]:
        """Everything a technician could measure on the terminal, for the control interface."""
        self.tick()
        inputs = self.input_registers()
        status = inputs[0]
        return {
            "id": self.spec.id, "kind": "terminal", "unit_id": self.spec.unit_id, "line": self.spec.line,
            "zones": self.spec.zones,
            "coils": {name: self.coils[a] for a, name in COIL_NAMES.items()},
            "holding": dict(zip(HOLDING_NAMES, self.holding_registers(), strict=True)),
            "input_registers": inputs,
            "status": {name: bool(status >> i & 1) for i, name in enumerate(STATUS_BITS)},
            "physics": {
                "alive": self.alive, "amp_temperature_c": round(self.heat.temperature_c, 2),
                "battery_v": round(self.battery_v, 3), "uptime_s": round(self._last - self.boot_at, 1),
                "audible": self._audible(), "audible_zones": self.audible_zones() if self._audible() else [],
                "line_in_present": self.line_in_present, "line_check_running": self.line_check_running,
                "line_impedance_ohm": {z: self.impedance[z - 1] for z in self.spec.zones},
                "sim_time_s": round(self._last, 3), "deaths": self.deaths,
            },
            "faults": {"zones": dict(self.zone_faults), "mains_failure": self.mains_failed,
                       "over_temperature": self.overheating, "amp_fault": self.amp_fault,
                       "tamper": self.tamper, **self.wire.state()},
        }
