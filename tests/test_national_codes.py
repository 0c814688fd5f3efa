"""EBRID/EBDID/EBMID layouts of the national platform interface (controller/uplink/national/codes.py)."""

from __future__ import annotations

import re
from datetime import date

import pytest

from controller.uplink.national import codes
from controller.uplink.national.codes import (
    EBDID_RE,
    EBMID_RE,
    SUBTYPE_TERMINAL,
    Ebrid,
    area_level,
    ebdid,
    ebmid,
    heartbeat_ebdid,
    parse_ebrid,
    propose_ebrid,
)

COUNTY = "43210020000000314010101"  # seen in a vendor's files
PROVINCE = "23200000000000103010101"


@pytest.mark.parametrize(("area", "level"), [
    ("000000000000", 1), ("320000000000", 2), ("320100000000", 3), ("320102000000", 4),
    ("320102001000", 5), ("320102001001", 6), ("320102001100", 6),
])
def test_area_level_by_trailing_zeros(area, level):
    assert area_level(area) == level
    assert codes.LEVELS[level]


@pytest.mark.parametrize("area", ["32010200100", "3201020010010", "32010200100x",
                                  "３２０１０２００１００１", ""])
def test_area_level_refuses_malformed_codes(area):
    with pytest.raises(ValueError, match="must be 12 digits"):
        area_level(area)


def test_parse_ebrid_splits_the_fields():
    assert parse_ebrid(COUNTY) == Ebrid(code=COUNTY, level=4, area_code="321002000000", type_code="0314",
                                        type_seq="01", subtype="01", subtype_seq="01")
    assert parse_ebrid(PROVINCE).level == 2


def test_parse_ebrid_messages_say_what_is_wrong():
    with pytest.raises(ValueError) as info:
        parse_ebrid(COUNTY[:-1])
    assert str(info.value) == f"EBRID '{COUNTY[:-1]}' must be 23 digits, got 22"
    with pytest.raises(ValueError) as info:
        parse_ebrid("53201020010010314010101")
    assert str(info.value) == ("EBRID level digit 5 does not match its area code 320102001001 "
                               "(a village: level 6)")
    with pytest.raises(ValueError, match="digits only"):
        parse_ebrid("4321002000000031401010a")
    with pytest.raises(ValueError, match="digits only"):  # non-ASCII digits are not digits here
        parse_ebrid("4321002000000031401010٣")
    with pytest.raises(ValueError, match=re.escape("level digit 7 must be 1..6")):
        parse_ebrid("73210020000000314010101")
    with pytest.raises(ValueError, match=re.escape("level digit 0 must be 1..6")):
        parse_ebrid("0" * 23)


def test_propose_ebrid_round_trips_and_checks():
    code = propose_ebrid("320102001000", subtype=1, subtype_seq=1)
    assert code == "53201020010000314010101"
    assert parse_ebrid(code).level == 5
    terminal = propose_ebrid("320102001001", subtype=SUBTYPE_TERMINAL, subtype_seq=12, type_seq=3)
    assert terminal == "63201020010010314030412"
    assert propose_ebrid("321002000000", level=4, type_code="0314", subtype=1, subtype_seq=1) == COUNTY
    with pytest.raises(ValueError, match="does not match its area code"):
        propose_ebrid("320102001000", level=4, subtype=1, subtype_seq=1)
    with pytest.raises(ValueError, match=re.escape("subtype_seq must be an integer 0..99, got 100")):
        propose_ebrid("320102001000", subtype=1, subtype_seq=100)
    with pytest.raises(ValueError, match="type code '314' must be 4 digits"):
        propose_ebrid("320102001000", type_code="314", subtype=1, subtype_seq=1)
    with pytest.raises(ValueError, match="area code '3201' must be 12 digits"):
        propose_ebrid("3201", subtype=1, subtype_seq=1)
    with pytest.raises(ValueError, match=re.escape("level must be 1..6")):
        propose_ebrid("320102001000", level=9, subtype=1, subtype_seq=1)


def test_ids_have_the_documented_layout():
    day = date(2024, 5, 1)
    assert heartbeat_ebdid(COUNTY) == "01" + COUNTY + "0" * 16
    assert ebdid(COUNTY, day, 7) == "10" + COUNTY + "20240501" + "00000007"
    assert ebmid(COUNTY, day, 12) == COUNTY + "20240501" + "0012"
    assert EBDID_RE.fullmatch(ebdid(COUNTY, day, 99_999_999))
    assert EBDID_RE.fullmatch(heartbeat_ebdid(COUNTY))
    assert EBMID_RE.fullmatch(ebmid(COUNTY, day, 9_999))
    assert not EBDID_RE.fullmatch(ebdid(COUNTY, day, 1)[:-1])
    assert not EBMID_RE.fullmatch(ebmid(COUNTY, day, 1) + "0")


@pytest.mark.parametrize(("build", "counter"), [
    (ebdid, 0), (ebdid, 100_000_000), (ebmid, 0), (ebmid, 10_000), (ebdid, True),
])
def test_id_counters_are_range_checked(build, counter):
    with pytest.raises(ValueError, match=re.escape("counter must be 1..")):
        build(COUNTY, date(2024, 5, 1), counter)


def test_id_builders_refuse_a_malformed_sender():
    with pytest.raises(ValueError, match="must be 23 digits"):
        heartbeat_ebdid("123")
    with pytest.raises(ValueError, match="must be 23 digits"):
        ebdid(COUNTY + "1", date(2024, 5, 1), 1)
