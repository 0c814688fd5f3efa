"""Pure unit tests of the Modbus codec: point decode/encode, read-plan merging, write plans."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.modbus_codec import (
    PointError,
    ReadBlock,
    WriteBlock,
    decode_point,
    encode_point,
    read_plan,
    write_plan,
)
from drivers.modbus_terminal import LineImpedance, decode_line_impedance, line_impedances, zone_values
from drivers.profile import ModbusTerminalProfile, Point, load_profile

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"


@pytest.fixture(scope="module")
def ebt1() -> ModbusTerminalProfile:
    profile = load_profile(PROFILES / "ebt-1.yaml")
    assert isinstance(profile, ModbusTerminalProfile)
    return profile


def _point(**kw) -> Point:
    return Point(**{"table": "holding", "address": 0, **kw})


# ---------------------------------------------------------------------- decode


@pytest.mark.parametrize(("kw", "raw", "value"), [
    ({"table": "coil", "type": "bool"}, [True], True),
    ({"table": "coil", "type": "bool"}, [False], False),
    ({"table": "input", "type": "bool", "bit": 3}, [0b1000], True),
    ({"table": "input", "type": "bool", "bit": 9}, [0b0111111111], False),
    ({"type": "uint16"}, [65535], 65535),
    ({"type": "int16"}, [0xFFFF], -1),
    ({"type": "int16"}, [0x7FFF], 32767),
    ({"type": "int16", "scale": 0.1}, [0xFF9C], -10.0),
    ({"type": "int16", "scale": 0.1}, [235], 23.5),
    ({"type": "uint16", "scale": 0.01}, [1362], 13.62),
    ({"type": "uint16", "scale": 0.25}, [3], 0.75),
    ({"type": "uint32"}, [0x0001, 0x0002], 65538),
    ({"type": "int32"}, [0xFFFF, 0xFFFE], -2),
    ({"type": "version"}, [0x0103], "1.3"),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, [1], "line_in"),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, [7], 7),
])
def test_decode_point(kw, raw, value):
    decoded = decode_point(_point(**kw), raw)
    assert decoded == value
    assert type(decoded) is type(value)


# ---------------------------------------------------------------------- encode and validation


@pytest.mark.parametrize(("kw", "value", "raw"), [
    ({"table": "coil", "type": "bool"}, True, (True,)),
    ({"table": "coil", "type": "bool"}, 0, (False,)),
    ({"type": "uint16", "min": 0, "max": 100}, 100, (100,)),
    ({"type": "int16"}, -2, (0xFFFE,)),
    ({"type": "uint16", "scale": 0.01, "min": 8750, "max": 10800}, 98.5, (9850,)),
    ({"type": "uint16", "scale": 0.01}, 87.5, (8750,)),
    ({"type": "uint32"}, 65538, (1, 2)),
    ({"type": "int32"}, -2, (0xFFFF, 0xFFFE)),
    ({"type": "version"}, "2.10", (0x020A,)),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, "line_in", (1,)),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, 0, (0,)),
])
def test_encode_point(kw, value, raw):
    point = _point(writable=True, **kw)
    assert encode_point("p", point, value) == raw
    if point.table != "coil" and not (point.enum and isinstance(value, int)):
        assert decode_point(point, raw) == value


@pytest.mark.parametrize(("kw", "value", "message"), [
    ({"type": "uint16", "min": 0, "max": 100}, 101, "above the maximum 100"),
    ({"type": "uint16", "min": 10, "max": 100}, 9, "below the minimum 10"),
    ({"type": "uint16", "scale": 0.01, "min": 8750, "max": 10800, "unit": "MHz"}, 108.5,
     "above the maximum 108.0 MHz"),
    ({"type": "uint16"}, -1, "does not fit a uint16"),
    ({"type": "int16"}, 40000, "does not fit a int16"),
    ({"type": "uint16"}, 1.5, "not a whole multiple"),
    ({"type": "uint16"}, "ten", "expects a number"),
    ({"type": "uint16"}, True, "expects a number"),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, "radio", "'radio' is not one of none, line_in"),
    ({"type": "uint16", "enum": {0: "none", 1: "line_in"}}, 5, "5 is not one of 0 (none), 1 (line_in)"),
    ({"table": "coil", "type": "bool"}, "yes", "expects true/false"),
])
def test_encode_rejects_with_point_name(kw, value, message):
    with pytest.raises(PointError, match=re.escape(message)) as info:
        encode_point("volume", _point(writable=True, **kw), value)
    assert str(info.value).startswith("volume: ")
    assert info.value.point == "volume"


def test_read_only_and_unknown_points(ebt1):
    with pytest.raises(PointError, match="uptime_s: is read-only"):
        write_plan(ebt1, {"uptime_s": 5})
    with pytest.raises(PointError, match=r"volme: no such point in profile ebt-1 \(known: amp_power"):
        write_plan(ebt1, {"volme": 5})
    with pytest.raises(PointError, match="volume: 120 is above the maximum 100"):
        write_plan(ebt1, {"amp_power": True, "volume": 120})  # nothing is sent when one value is bad


# ---------------------------------------------------------------------- read plans


def test_ebt1_full_status_in_three_requests(ebt1):
    """docs/register-map.md promises coils 0-15, holding 0-4 and input 0-18: the profile's
    ``max_read_gap`` lets reads span the reserved coils 3-7 and input registers 6-7."""
    plan = read_plan(ebt1)
    assert plan.blocks == (ReadBlock("coil", 0, 16), ReadBlock("holding", 0, 5), ReadBlock("input", 0, 19))
    assert [b.function_code for b in plan.blocks] == [1, 3, 4]


@pytest.mark.parametrize(("gap", "expected"), [
    (0, [("coil", 0, 3), ("coil", 8, 8), ("holding", 0, 5), ("input", 0, 6), ("input", 8, 11)]),
    (2, [("coil", 0, 3), ("coil", 8, 8), ("holding", 0, 5), ("input", 0, 19)]),
    (5, [("coil", 0, 16), ("holding", 0, 5), ("input", 0, 19)]),
    (32, [("coil", 0, 16), ("holding", 0, 5), ("input", 0, 19)]),
])
def test_read_plan_merges_within_gap(ebt1, gap, expected):
    plan = read_plan(ebt1.model_copy(update={"max_read_gap": gap}))
    assert plan.blocks == tuple(ReadBlock(*b) for b in expected)
    assert {name for name, _, _ in plan.placement} == set(ebt1.points)


def test_read_plan_respects_request_size_limits(ebt1):
    limits = {"max_read_gap": 32, "max_read_registers": 10, "max_read_bits": 8}
    plan = read_plan(ebt1.model_copy(update=limits))
    assert plan.blocks == (ReadBlock("coil", 0, 3), ReadBlock("coil", 8, 8), ReadBlock("holding", 0, 5),
                           ReadBlock("input", 0, 10), ReadBlock("input", 10, 9))
    # a 32-bit point is never split across two requests
    uptime = next(index for name, _, index in plan.placement if name == "uptime_s")
    assert plan.blocks[uptime] == ReadBlock("input", 10, 9)


def test_read_plan_subset_and_decode(ebt1):
    plan = read_plan(ebt1.model_copy(update={"max_read_gap": 8}),
                     ["amp_ready", "amp_temperature", "uptime_s", "firmware", "volume"])
    assert plan.blocks == (ReadBlock("holding", 0, 1), ReadBlock("input", 0, 2), ReadBlock("input", 16, 3))
    inputs = [0] * 19
    inputs[0] = 0b1000
    inputs[1] = (-52) & 0xFFFF
    inputs[16] = 0x0103
    inputs[17], inputs[18] = 0x0001, 0x0010
    assert plan.decode([[80], inputs[:2], inputs[16:]]) == {
        "amp_ready": True, "amp_temperature": -5.2, "uptime_s": 65552, "firmware": "1.3", "volume": 80}


def test_full_status_decode(ebt1):
    plan = read_plan(ebt1.model_copy(update={"max_read_gap": 8}))
    coils = [True, False, True, False, False, False, False, False] + [True, True] + [False] * 6
    holding = [70, 1, 9850, 2000, 0]
    inputs = [0b1000011101, 412, 2231, 1362, 0, 31, 0, 0, 96, 65535, 0, 100, 65535, 65535, 65535, 65535,
              0x0103, 0, 3600]
    values = plan.decode([coils, holding, inputs])
    assert values["amp_power"] is True and values["mute"] is True and values["emergency_override"] is False
    assert [values[f"zone_{z}"] for z in range(1, 9)] == [True, True] + [False] * 6
    assert values["audio_source"] == "line_in" and values["fm_frequency"] == 98.5
    assert values["mains_ok"] and values["amp_on"] and values["amp_ready"] and values["fm_signal"]
    assert not values["on_battery"] and not values["line_fault"]
    assert values["amp_temperature"] == 41.2 and values["mains_voltage"] == 223.1
    assert values["battery_voltage"] == 13.62 and values["uptime_s"] == 3600
    assert line_impedances(ebt1, values) == {
        1: LineImpedance("ok", 96), 2: LineImpedance("open", None), 3: LineImpedance("short", None),
        4: LineImpedance("ok", 100), **{z: LineImpedance("open", None) for z in range(5, 9)}}


def test_line_impedance_coding(ebt1):
    coding = ebt1.line_impedance
    assert decode_line_impedance(65535, coding) == LineImpedance("open", None)
    assert decode_line_impedance(0, coding) == LineImpedance("short", None)
    assert decode_line_impedance(8, coding) == LineImpedance("ok", 8)
    custom = coding.model_copy(update={"open_at_or_above": 9999, "short_at_or_below": 2})
    assert decode_line_impedance(9999, custom).state == "open"
    assert decode_line_impedance(2, custom).state == "short"


# ---------------------------------------------------------------------- write plans


def test_write_plan_groups_adjacent_points(ebt1):
    blocks = write_plan(ebt1, {"volume": 80, "audio_source": "line_in", "fm_frequency": 98.5})
    assert blocks == (WriteBlock("holding", 0, (80, 1, 9850), ("volume", "audio_source", "fm_frequency")),)
    assert blocks[0].function_code == 16


def test_write_plan_single_values_use_fc5_fc6(ebt1):
    blocks = write_plan(ebt1, {"mute": True, "warmup_ms": 1500})
    assert blocks == (WriteBlock("coil", 2, (True,), ("mute",)),
                      WriteBlock("holding", 3, (1500,), ("warmup_ms",)))
    assert [b.function_code for b in blocks] == [5, 6]


def test_write_plan_never_spans_unnamed_addresses(ebt1):
    blocks = write_plan(ebt1, {"amp_power": True, "mute": False, "zone_1": True, "zone_2": True})
    assert blocks == (WriteBlock("coil", 0, (True,), ("amp_power",)),
                      WriteBlock("coil", 2, (False,), ("mute",)),
                      WriteBlock("coil", 8, (True, True), ("zone_1", "zone_2")))
    assert [b.function_code for b in blocks] == [5, 5, 15]


def test_write_plan_keeps_caller_order_between_blocks(ebt1):
    blocks = write_plan(ebt1, {"audio_source": 1, "amp_power": True, "emergency_override": True})
    assert [b.points for b in blocks] == [("audio_source",), ("amp_power", "emergency_override")]


def test_zone_values(ebt1):
    values = zone_values(ebt1, {1, 3})
    assert values == {f"zone_{z}": z in (1, 3) for z in range(1, 9)}
    assert write_plan(ebt1, values) == (
        WriteBlock("coil", 8, (True, False, True, False, False, False, False, False),
                   tuple(f"zone_{z}" for z in range(1, 9))),)
    with pytest.raises(ValueError, match=r"zones \[9\] do not exist"):
        zone_values(ebt1, {9})
