"""Logical points ⇄ raw Modbus values, and the plans that move them in as few frames as possible.

Pure functions and frozen dataclasses only — no I/O — so the wire format of a profile can be
unit-tested exhaustively. On a 9600-baud RS-485 line every request costs a frame in each direction
plus turnaround and 3.5 characters of silence, so a terminal's status is read in merged blocks
(ESPHome style) rather than one request per value, and adjacent writes share one FC15/FC16 frame.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from drivers.profile import ModbusTerminalProfile, Point, Table

Value = bool | int | float | str
"""A decoded engineering value: bool, int, scaled float, enum name or version string."""

Raw = int | bool

TABLE_ORDER: tuple[Table, ...] = ("coil", "discrete_input", "holding", "input")
READ_FUNCTION: dict[Table, int] = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
MAX_WRITE_BITS = 1968  # FC15 quantity limit (Modbus application protocol v1.1b3)
MAX_WRITE_REGISTERS = 123  # FC16 quantity limit

_RANGES: dict[str, tuple[int, int]] = {
    "uint16": (0, 0xFFFF),
    "int16": (-0x8000, 0x7FFF),
    "uint32": (0, 0xFFFFFFFF),
    "int32": (-0x80000000, 0x7FFFFFFF),
    "version": (0, 0xFFFF),
}


class PointError(ValueError):
    """A point name or value the profile does not allow; the message names the point."""

    def __init__(self, point: str, message: str) -> None:
        super().__init__(f"{point}: {message}")
        self.point = point


def is_bit_table(table: Table) -> bool:
    """Coils and discrete inputs carry single bits; the other tables 16-bit registers."""
    return table in ("coil", "discrete_input")


# --------------------------------------------------------------------------- single points


@functools.lru_cache(maxsize=64)
def _decimals(scale: float) -> int:
    exponent = Decimal(str(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def decode_point(point: Point, raw: Sequence[Raw]) -> Value:
    """Decode one point from its ``point.width`` raw registers (or one bit).

    Scaled values are rounded to the scale's decimals so 0.1-unit registers read 23.5, not
    23.500000000000004; enum values decode to their name (unknown raw values stay ints).
    """
    if is_bit_table(point.table):
        return bool(raw[0])
    if point.bit is not None:
        return bool((int(raw[0]) >> point.bit) & 1)
    if point.type == "version":
        word = int(raw[0])
        return f"{word >> 8}.{word & 0xFF}"
    if point.width == 2:
        number = (int(raw[0]) << 16) | int(raw[1])
        if point.type == "int32" and number & 0x80000000:
            number -= 1 << 32
    else:
        number = int(raw[0])
        if point.type == "int16" and number & 0x8000:
            number -= 1 << 16
    if point.enum is not None and number in point.enum:
        return point.enum[number]
    if point.scale != 1.0:
        return round(number * point.scale, _decimals(point.scale))
    return number


def _raw_number(name: str, point: Point, value: object) -> int:
    """Engineering value → raw integer (before range checks)."""
    if isinstance(value, bool):
        raise PointError(name, f"expects a number, got {value!r}")
    if point.enum is not None:
        if isinstance(value, str):
            for raw, label in point.enum.items():
                if label == value:
                    return raw
            raise PointError(name, f"{value!r} is not one of {', '.join(point.enum.values())}")
        if isinstance(value, int) and value not in point.enum:
            allowed = ", ".join(f"{k} ({v})" for k, v in point.enum.items())
            raise PointError(name, f"{value} is not one of {allowed}")
    if point.type == "version" and isinstance(value, str):
        try:
            major, minor = (int(part) for part in value.split("."))
        except ValueError:
            raise PointError(name, f"{value!r} is not a version like '1.2'") from None
        if not (0 <= major <= 255 and 0 <= minor <= 255):
            raise PointError(name, f"{value!r}: major and minor must be 0-255")
        return major << 8 | minor
    if not isinstance(value, int | float):
        raise PointError(name, f"expects a number, got {value!r}")
    scaled = value / point.scale if point.scale != 1.0 else value
    raw = round(scaled)
    if abs(scaled - raw) > 1e-6:
        raise PointError(name, f"{value!r} is not a whole multiple of the scale {point.scale}")
    return raw


def _shown(point: Point, raw: int) -> str:
    """A raw limit as the user would write it (in engineering units when the point is scaled)."""
    if point.scale == 1.0:
        return str(raw)
    return f"{round(raw * point.scale, _decimals(point.scale))} {point.unit}".rstrip()


def encode_point(name: str, point: Point, value: object) -> tuple[Raw, ...]:
    """Validate ``value`` against the profile and return the raw coil/registers to write.

    Raises :class:`PointError` naming the point for read-only points, wrong types, unknown enum
    names and values outside the profile's min/max (raw units) or the register's range.
    """
    if not point.writable:
        raise PointError(name, "is read-only")
    if point.table == "coil":
        if isinstance(value, bool) or value in (0, 1):
            return (bool(value),)
        raise PointError(name, f"expects true/false, got {value!r}")
    raw = _raw_number(name, point, value)
    if point.min is not None and raw < point.min:
        raise PointError(name, f"{value!r} is below the minimum {_shown(point, point.min)}")
    if point.max is not None and raw > point.max:
        raise PointError(name, f"{value!r} is above the maximum {_shown(point, point.max)}")
    low, high = _RANGES[point.type]
    if not low <= raw <= high:
        raise PointError(name, f"{value!r} does not fit a {point.type} register ({low}..{high} raw)")
    if point.width == 2:
        raw &= 0xFFFFFFFF
        return (raw >> 16, raw & 0xFFFF)
    return (raw & 0xFFFF,)


def lookup(profile: ModbusTerminalProfile, name: str) -> Point:
    """The point called ``name``; a clear error lists the known names otherwise."""
    try:
        return profile.points[name]
    except KeyError:
        raise PointError(name, f"no such point in profile {profile.name} "
                               f"(known: {', '.join(profile.points)})") from None


# --------------------------------------------------------------------------- read plans


@dataclass(frozen=True)
class ReadBlock:
    """One read request: ``count`` bits or registers of ``table`` from ``address``."""

    table: Table
    address: int
    count: int

    @property
    def function_code(self) -> int:
        return READ_FUNCTION[self.table]


@dataclass(frozen=True)
class ReadPlan:
    """The requests that read a set of points, and where each point sits in their replies."""

    blocks: tuple[ReadBlock, ...]
    placement: tuple[tuple[str, Point, int], ...]
    """(name, point, index of its block) for every point in the plan."""

    def decode(self, replies: Sequence[Sequence[Raw]]) -> dict[str, Value]:
        """Decode the replies to ``blocks`` (same order) into ``{name: value}``."""
        return {name: decode_point(point, replies[index][start:end])
                for name, point, index, start, end in self._slices}

    @functools.cached_property
    def _slices(self) -> tuple[tuple[str, Point, int, int, int], ...]:
        """(name, point, block index, start, end) of every point in its block's reply (every health
        poll decodes a plan: worked out once)."""
        result = []
        for name, point, index in self.placement:
            start = point.address - self.blocks[index].address
            result.append((name, point, index, start, start + point.width))
        return tuple(result)


def read_plan(profile: ModbusTerminalProfile, names: Iterable[str] | None = None) -> ReadPlan:
    """Merge the points ``names`` (default: all) into as few read requests as the profile allows.

    Two spans in one table merge when the unused addresses between them are at most
    ``max_read_gap`` and the merged block stays within ``max_read_registers`` /
    ``max_read_bits``. Overlapping points (bits of one status register) share their register.
    """
    wanted = list(profile.points) if names is None else list(dict.fromkeys(names))
    points = [(name, lookup(profile, name)) for name in wanted]
    blocks: list[ReadBlock] = []
    placement: list[tuple[str, Point, int]] = []
    for table in TABLE_ORDER:
        in_table = sorted((p for p in points if p[1].table == table), key=lambda p: p[1].address)
        limit = profile.max_read_bits if is_bit_table(table) else profile.max_read_registers
        start = end = -1
        for name, point in in_table:
            p_start, p_end = point.address, point.address + point.width
            if start < 0 or p_start - end > profile.max_read_gap or max(end, p_end) - start > limit:
                if start >= 0:
                    blocks.append(ReadBlock(table, start, end - start))
                start, end = p_start, p_end
            else:
                end = max(end, p_end)
            placement.append((name, point, len(blocks)))
        if start >= 0:
            blocks.append(ReadBlock(table, start, end - start))
    return ReadPlan(tuple(blocks), tuple(placement))


# --------------------------------------------------------------------------- write plans


@dataclass(frozen=True)
class WriteBlock:
    """One write request: consecutive coils or holding registers starting at ``address``."""

    table: Literal["coil", "holding"]
    address: int
    values: tuple[Raw, ...]
    points: tuple[str, ...]

    @property
    def function_code(self) -> int:
        """FC5/FC6 for a single coil/register, FC15/FC16 for more."""
        if self.table == "coil":
            return 5 if len(self.values) == 1 else 15
        return 6 if len(self.values) == 1 else 16


def write_plan(profile: ModbusTerminalProfile, values: Mapping[str, object]) -> tuple[WriteBlock, ...]:
    """Validate every value first (all or nothing), then group adjacent points into requests.

    Points whose addresses follow each other without a hole share one FC15/FC16 request (a write
    never touches an address the caller did not name). Blocks keep the order in which the caller
    first named their points, so ``{"audio_source": ..., "amp_power": True}`` writes the source first.
    """
    encoded: list[tuple[int, str, Point, tuple[Raw, ...]]] = []
    for order, (name, value) in enumerate(values.items()):
        point = lookup(profile, name)
        encoded.append((order, name, point, encode_point(name, point, value)))
    groups: list[tuple[int, WriteBlock]] = []
    for table in ("coil", "holding"):
        in_table = sorted((e for e in encoded if e[2].table == table), key=lambda e: e[2].address)
        limit = MAX_WRITE_BITS if table == "coil" else MAX_WRITE_REGISTERS
        current: list[tuple[int, str, Point, tuple[Raw, ...]]] = []
        for entry in in_table:
            if current:
                last = current[-1][2]
                if entry[2].address < last.address + last.width:
                    raise PointError(entry[1], f"overlaps {current[-1][1]} in the same write")
                size = sum(len(e[3]) for e in current)
                if entry[2].address != last.address + last.width or size + len(entry[3]) > limit:
                    groups.append(_block(table, current))
                    current = []
            current.append(entry)
        if current:
            groups.append(_block(table, current))
    return tuple(block for _, block in sorted(groups, key=lambda g: g[0]))


def _block(table: Literal["coil", "holding"],
           entries: list[tuple[int, str, Point, tuple[Raw, ...]]]) -> tuple[int, WriteBlock]:
    raw: tuple[Raw, ...] = tuple(v for e in entries for v in e[3])
    block = WriteBlock(table, entries[0][2].address, raw, tuple(e[1] for e in entries))
    return min(e[0] for e in entries), block
