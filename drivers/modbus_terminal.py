"""A loudspeaker terminal: unit id + profile + the arbiter of its line.

Callers speak in logical points (``volume``, ``zone_3``); the profile says where they live and the
codec merges them into few frames. Nothing here knows a register address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from drivers.errors import DeviceExceptionError, DriverError, LineDownError
from drivers.line_arbiter import LineArbiter, Priority
from drivers.modbus_codec import ReadPlan, Value, read_plan, write_plan
from drivers.profile import LineImpedanceCoding, ModbusTerminalProfile


class FailureKind(StrEnum):
    """Why a terminal could not be read (what a health report needs to tell apart)."""

    NO_RESPONSE = "no_response"
    DEVICE_EXCEPTION = "device_exception"
    LINE_DOWN = "line_down"


def failure_kind(exc: DriverError) -> FailureKind:
    if isinstance(exc, LineDownError):
        return FailureKind.LINE_DOWN
    if isinstance(exc, DeviceExceptionError):
        return FailureKind.DEVICE_EXCEPTION
    return FailureKind.NO_RESPONSE


@dataclass(frozen=True)
class LineImpedance:
    """One zone's speaker-line measurement: ohms, or an open/short line."""

    state: Literal["ok", "open", "short"]
    ohms: int | None


def decode_line_impedance(raw: int, coding: LineImpedanceCoding) -> LineImpedance:
    """Apply the profile's open/short coding to a raw impedance register."""
    if raw >= coding.open_at_or_above:
        return LineImpedance("open", None)
    if raw <= coding.short_at_or_below:
        return LineImpedance("short", None)
    return LineImpedance("ok", raw)


@dataclass(frozen=True)
class TerminalSnapshot:
    """A terminal's full status at one moment, or why it could not be read."""

    device_id: str
    unit_id: int
    online: bool
    timestamp: float
    """Wall-clock time (``time.time()``) when the read completed or failed."""
    values: dict[str, Value] = field(default_factory=dict)
    failure: FailureKind | None = None
    error: str = ""


class ModbusTerminal:
    """One Modbus loudspeaker terminal (RTU or TCP) reached through its line's arbiter."""

    def __init__(self, device_id: str, unit_id: int, profile: ModbusTerminalProfile,
                 arbiter: LineArbiter, *, timeout_s: float | None = None) -> None:
        self.device_id = device_id
        self.unit_id = unit_id
        self.profile = profile
        self.arbiter = arbiter
        self.timeout_s = timeout_s
        """Reply timeout for this device (None: the line's)."""
        self._status_plan = read_plan(profile)

    def __repr__(self) -> str:
        return f"ModbusTerminal({self.device_id!r}, unit {self.unit_id} on {self.arbiter.name})"

    @property
    def status_plan(self) -> ReadPlan:
        """The merged requests :meth:`read_status` sends."""
        return self._status_plan

    # ------------------------------------------------------------------ reads

    async def read_status(self, priority: Priority = Priority.POLL) -> TerminalSnapshot:
        """Read every point; a communication failure gives an offline snapshot instead of raising."""
        try:
            values = await self._read_plan(self._status_plan, priority)
        except DriverError as exc:
            return TerminalSnapshot(self.device_id, self.unit_id, False, time.time(),
                                    failure=failure_kind(exc), error=str(exc))
        return TerminalSnapshot(self.device_id, self.unit_id, True, time.time(), values)

    async def read_points(self, names: Iterable[str],
                          priority: Priority = Priority.COMMAND) -> dict[str, Value]:
        """Read some points (merged like the status read); raises DriverError on failure."""
        return await self._read_plan(read_plan(self.profile, names), priority)

    async def _read_plan(self, plan: ReadPlan, priority: Priority) -> dict[str, Value]:
        replies = []
        for block in plan.blocks:  # stop at the first failure: a dead device costs one timeout
            replies.append(await self.arbiter.read(self.unit_id, block, priority=priority,
                                                   timeout_s=self.timeout_s))
        return plan.decode(replies)

    # ------------------------------------------------------------------ writes

    async def write_points(self, values: Mapping[str, object],
                           priority: Priority = Priority.COMMAND) -> None:
        """Validate and write points, adjacent ones in one request (raises PointError / DriverError)."""
        for block in write_plan(self.profile, values):
            await self.arbiter.write(self.unit_id, block, priority=priority, timeout_s=self.timeout_s)

    async def set_amp_power(self, on: bool, priority: Priority = Priority.COMMAND) -> None:
        await self.write_points({"amp_power": on}, priority)

    async def set_override(self, on: bool, priority: Priority = Priority.COMMAND) -> None:
        """Emergency override: maximum volume, local mute and attenuators bypassed."""
        await self.write_points({"emergency_override": on}, priority)

    async def set_mute(self, on: bool, priority: Priority = Priority.COMMAND) -> None:
        await self.write_points({"mute": on}, priority)

    async def set_volume(self, percent: int, priority: Priority = Priority.COMMAND) -> None:
        await self.write_points({"volume": percent}, priority)

    async def set_source(self, source: str | int, priority: Priority = Priority.COMMAND) -> None:
        """Audio source by enum name (``line_in``) or raw code."""
        await self.write_points({"audio_source": source}, priority)

    async def set_fm_frequency(self, mhz: float, priority: Priority = Priority.COMMAND) -> None:
        """Tune the terminal's FM receiver (MHz, as the ``fm_frequency`` point reads back)."""
        await self.write_points({"fm_frequency": mhz}, priority)

    async def set_zones(self, zones: Iterable[int], priority: Priority = Priority.COMMAND) -> None:
        """Switch exactly these speaker zones on and every other zone off (one request on ebt-1)."""
        await self.write_points(zone_values(self.profile, zones), priority)

    async def start_line_check(self, priority: Priority = Priority.COMMAND) -> None:
        """Start a speaker-line impedance measurement (results in ``line_impedance_<zone>``)."""
        await self.write_points({"line_check": 1}, priority)

    async def run_line_check(self, timeout_s: float = 10.0, poll_s: float = 0.2,
                             priority: Priority = Priority.POLL) -> dict[int, LineImpedance]:
        """Start a line check, wait until the terminal reports it finished, return every zone.

        Raises TimeoutError if ``line_check`` still reads non-zero after ``timeout_s``.
        """
        await self.start_line_check(Priority.COMMAND)
        deadline = time.monotonic() + timeout_s
        while (await self.read_points(["line_check"], priority))["line_check"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.device_id}: line check did not finish within {timeout_s} s")
            await asyncio.sleep(poll_s)
        return await self.read_line_impedance(priority)

    async def read_line_impedance(self, priority: Priority = Priority.COMMAND) -> dict[int, LineImpedance]:
        """The last measured impedance of every zone the profile has."""
        names = impedance_points(self.profile)
        values = await self.read_points(names.values(), priority)
        return line_impedances(self.profile, values)


# ---------------------------------------------------------------------- helpers on values


def zone_values(profile: ModbusTerminalProfile, zones: Iterable[int]) -> dict[str, bool]:
    """``{zone_1: on?, ...}`` for every zone of the profile; unknown zone numbers are an error."""
    wanted = set(zones)
    bad = sorted(z for z in wanted if not 1 <= z <= profile.zones)
    if bad:
        raise ValueError(f"zones {bad} do not exist (profile {profile.name} has 1..{profile.zones})")
    return {f"zone_{z}": z in wanted for z in range(1, profile.zones + 1)}


def impedance_points(profile: ModbusTerminalProfile) -> dict[int, str]:
    """Zone → name of its line-impedance point, for the zones the profile maps."""
    return {z: f"line_impedance_{z}" for z in range(1, profile.zones + 1)
            if f"line_impedance_{z}" in profile.points}


def line_impedances(profile: ModbusTerminalProfile, values: Mapping[str, Value]) -> dict[int, LineImpedance]:
    """Decode the line-impedance points found in ``values`` (e.g. a snapshot's) per zone."""
    result: dict[int, LineImpedance] = {}
    for zone, name in impedance_points(profile).items():
        raw = values.get(name)
        if isinstance(raw, int) and not isinstance(raw, bool):
            result[zone] = decode_line_impedance(raw, profile.line_impedance)
    return result


# ---------------------------------------------------------------------- group writes


@dataclass(frozen=True)
class GroupWriteResult:
    """Outcome of a write to every terminal of a line."""

    broadcast: bool
    """True when unit id 0 was used (delivery cannot be confirmed on the wire)."""
    failed: dict[str, DriverError]
    """Device id → error, for per-unit writes that failed."""


async def write_all_on_line(terminals: Sequence[ModbusTerminal], values: Mapping[str, object],
                            priority: Priority = Priority.COMMAND) -> GroupWriteResult:
    """Write the same points to every terminal of one line, in one frame when possible.

    Unit id 0 reaches every terminal on the line at once — including any not listed — so it is
    used only on a serial line whose terminals all share one profile that allows
    ``broadcast_writes``; otherwise each terminal is written in turn and failures are collected
    rather than stopping the others. Values are validated (PointError) before anything is sent.
    """
    if not terminals:
        return GroupWriteResult(False, {})
    arbiter = terminals[0].arbiter
    if any(t.arbiter is not arbiter for t in terminals):
        raise ValueError("write_all_on_line needs terminals of one line")
    profile = terminals[0].profile
    blocks = write_plan(profile, values)
    if arbiter.is_serial and profile.broadcast_writes and all(t.profile == profile for t in terminals):
        for block in blocks:
            await arbiter.broadcast(block, priority=priority)
        return GroupWriteResult(True, {})
    for t in terminals:
        write_plan(t.profile, values)  # validate for every profile before sending anything
    failed: dict[str, DriverError] = {}
    for t in terminals:
        try:
            await t.write_points(values, priority)
        except DriverError as exc:
            failed[t.device_id] = exc
    return GroupWriteResult(False, failed)

