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
from drivers.modbus_codec import ReadPlan, Value, decode_point, read_plan, write_plan
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
    settings_read_at: float | None = None
    """Wall-clock time the writable points in ``values`` were last read from the terminal:
    ``timestamp`` when this read included them, earlier when a health poll reused them
    (``settings_poll_every`` in the profile; values written through the driver since are included
    as written)."""


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
        self._setting_names = tuple(name for name, point in profile.points.items() if point.writable)
        live = [name for name, point in profile.points.items() if not point.writable]
        self._live_plan = (read_plan(profile, live) if profile.settings_poll_every > 1 and live
                           and self._setting_names else self._status_plan)
        self._settings: dict[str, Value] | None = None
        """The writable points from the last full read, while they can be trusted."""
        self._settings_at = 0.0
        self._settings_writes = 0
        """``arbiter.write_count(unit_id)`` just before they were read."""
        self._polls_since_settings = 0
        self._amp_on: bool | None = None
        """The amplifier status bit of the last good poll (a cross-check of the settings)."""

    def __repr__(self) -> str:
        return f"ModbusTerminal({self.device_id!r}, unit {self.unit_id} on {self.arbiter.name})"

    @property
    def status_plan(self) -> ReadPlan:
        """The merged requests :meth:`read_status` sends (every point)."""
        return self._status_plan

    @property
    def live_plan(self) -> ReadPlan:
        """The merged requests a health poll sends when the settings are not due (read-only points)."""
        return self._live_plan

    # ------------------------------------------------------------------ reads

    async def read_status(self, priority: Priority = Priority.POLL) -> TerminalSnapshot:
        """Read every point; a communication failure gives an offline snapshot instead of raising."""
        writes = self.arbiter.write_count(self.unit_id)  # before the read: a write during it counts
        try:
            values = await self._read_plan(self._status_plan, priority)
        except DriverError as exc:
            return self._failed(exc)
        now = time.time()
        if self._settings_at == 0.0:  # the first read: stagger the terminals of a line by unit id
            self._polls_since_settings = self.unit_id % self.profile.settings_poll_every
        else:
            self._polls_since_settings = 0
        self._settings = {name: values[name] for name in self._setting_names}
        self._settings_at, self._settings_writes = now, writes
        self._amp_on = values.get("amp_on") if isinstance(values.get("amp_on"), bool) else None
        return TerminalSnapshot(self.device_id, self.unit_id, True, now, values, settings_read_at=now)

    async def poll_status(self, priority: Priority = Priority.POLL) -> TerminalSnapshot:
        """The health poll: like :meth:`read_status`, but the writable points are read only when due.

        Read-only points (status bits, measurements: where faults show) are read on every poll.
        The writable ones — settings that change only when written, by the gateway or a local
        operator — are read on every ``settings_poll_every``-th poll, on the first poll, after a
        failed poll and after a write to this unit id (or a broadcast) on its line other than
        through :meth:`write_points` of this object, which updates them as written; otherwise the
        snapshot carries them from the last read (``settings_read_at`` says when; the terminals of
        a line take their turns staggered by unit id). Whoever needs a setting fresh
        (activation's prior-state read and read-back) reads it with :meth:`read_points`, which
        never uses these values.
        """
        settings = self._settings
        if (settings is None or self._live_plan is self._status_plan
                or self._polls_since_settings + 1 >= self.profile.settings_poll_every
                or self.arbiter.write_count(self.unit_id) != self._settings_writes):
            return await self.read_status(priority)
        try:
            live = await self._read_plan(self._live_plan, priority)
        except DriverError as exc:
            return self._failed(exc)
        self._polls_since_settings += 1
        self._amp_on = live.get("amp_on") if isinstance(live.get("amp_on"), bool) else None
        return TerminalSnapshot(self.device_id, self.unit_id, True, time.time(), {**settings, **live},
                                settings_read_at=self._settings_at)

    def known_settings(self, max_age_s: float) -> dict[str, Value] | None:
        """The writable points as the health polls know them, when they can stand for a fresh read:
        read from the terminal at most ``max_age_s`` ago, nothing but this object's own
        :meth:`write_points` has written the terminal since, and the amplifier status bit of the
        last poll agrees with the power coil. None otherwise (then read them).

        Why: reading a whole RS-485 line's settings before an emergency costs one transaction per
        terminal before the first horn can be powered; the polls already hold them.
        """
        settings = self._settings
        if (settings is None or time.time() - self._settings_at > max_age_s
                or self.arbiter.write_count(self.unit_id) != self._settings_writes):
            return None
        power = settings.get("amp_power")
        if self._amp_on is True and power is False:  # switched on by other means since the read
            return None
        return dict(settings)

    def _failed(self, exc: DriverError) -> TerminalSnapshot:
        """An offline snapshot; the settings are read again with the next good answer."""
        self._settings = None
        return TerminalSnapshot(self.device_id, self.unit_id, False, time.time(),
                                failure=failure_kind(exc), error=str(exc))

    async def read_points(self, names: Iterable[str], priority: Priority = Priority.COMMAND, *,
                          retries: int | None = None) -> dict[str, Value]:
        """Read some points (merged like the status read); raises DriverError on failure.
        ``retries`` overrides the line's (0 for a probe of a terminal that has not been answering)."""
        return await self._read_plan(read_plan(self.profile, names), priority, retries)

    async def _read_plan(self, plan: ReadPlan, priority: Priority,
                         retries: int | None = None) -> dict[str, Value]:
        replies = []
        for block in plan.blocks:  # stop at the first failure: a dead device costs one timeout
            replies.append(await self.arbiter.read(self.unit_id, block, priority=priority,
                                                   timeout_s=self.timeout_s, retries=retries))
        return plan.decode(replies)

    # ------------------------------------------------------------------ writes

    async def write_points(self, values: Mapping[str, object],
                           priority: Priority = Priority.COMMAND) -> None:
        """Validate and write points, adjacent ones in one request (raises PointError / DriverError).

        Health polls report the values written here until they next read the settings, so a
        write costs no extra read; if a write fails, or anyone else writes to this unit id (or
        broadcasts) meanwhile, the next poll reads the settings from the terminal instead.
        """
        blocks = write_plan(self.profile, values)
        before = self.arbiter.write_count(self.unit_id)
        for block in blocks:
            await self.arbiter.write(self.unit_id, block, priority=priority, timeout_s=self.timeout_s)
        settings, after = self._settings, before + len(blocks)
        if settings is not None and self._settings_writes == before \
                and self.arbiter.write_count(self.unit_id) == after:  # only ours since they were read
            for block in blocks:
                offset = 0
                for name in block.points:
                    point = self.profile.points[name]
                    settings[name] = decode_point(point, block.values[offset:offset + point.width])
                    offset += point.width
            self._settings_writes = after

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

