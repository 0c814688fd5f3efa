"""Resource codes (EBRID) and message ids (EBDID, EBMID) of the national platform interface.

Pure functions: every id the gateway sends is built here and every EBRID it is configured with is
checked here, so a malformed id is refused at configuration time with a message that says what is
wrong, instead of being rejected later by the upper platform with a bare result code.

Layouts (docs: /work/shared/NATIONAL-PLATFORM.md, "Identifiers"):

- EBRID, 23 digits: level(1) + area code(12) + type(4) + type seq(2) + subtype(2) + subtype seq(2).
  The level digit must agree with the area code's own level (its trailing zeros).
- EBDID, 41 digits: ``10`` (``01`` for heartbeats) + sender EBRID + ``yyyyMMdd`` + 8-digit daily
  counter (heartbeats: 16 zeros).
- EBMID, 35 digits: platform EBRID + ``yyyyMMdd`` + 4-digit daily counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

LEVELS = {1: "national", 2: "province", 3: "city", 4: "county", 5: "township", 6: "village"}

SUBTYPE_NODE, SUBTYPE_ADAPTER, SUBTYPE_EQUIPMENT, SUBTYPE_TERMINAL = 1, 2, 3, 4

EBDID_RE = re.compile(r"[0-9]{41}")
"""Use with ``fullmatch``; ``[0-9]`` and not ``\\d``, which would also accept non-ASCII digits."""
EBMID_RE = re.compile(r"[0-9]{35}")
EBRID_RE = re.compile(r"[0-9]{23}")
AREA_CODE_RE = re.compile(r"[0-9]{12}")

MAX_EBDID_COUNTER = 99_999_999
MAX_EBMID_COUNTER = 9_999

_DIGITS = re.compile(r"[0-9]+")


def area_level(area_code: str) -> int:
    """The administrative level (1 national … 6 village) of a 12-digit area code, by its trailing zeros."""
    if not AREA_CODE_RE.fullmatch(area_code):
        raise ValueError(f"area code '{area_code}' must be 12 digits (GB/T 2260 + township + village)")
    if area_code == "000000000000":
        return 1
    for level, significant in ((2, 2), (3, 4), (4, 6), (5, 9)):
        if area_code[significant:] == "0" * (12 - significant):
            return level
    return 6


@dataclass(frozen=True)
class Ebrid:
    """A parsed 23-digit resource code; the fields as vendors read them (type/subtype: medium confidence)."""

    code: str
    level: int
    area_code: str
    type_code: str
    """4 digits."""
    type_seq: str
    """2 digits."""
    subtype: str
    """2 digits: 01 the node itself, 02 adapter, 03 transmission/coverage equipment, 04 terminal."""
    subtype_seq: str
    """2 digits."""


def parse_ebrid(code: str) -> Ebrid:
    """Check and split an EBRID; ValueError says what is wrong (length, digits, level, level vs area)."""
    if len(code) != 23:
        raise ValueError(f"EBRID '{code}' must be 23 digits, got {len(code)}")
    if not EBRID_RE.fullmatch(code):
        raise ValueError(f"EBRID '{code}' must be digits only (0-9)")
    level, area = int(code[0]), code[1:13]
    if level not in LEVELS:
        raise ValueError(f"EBRID '{code}': level digit {level} must be 1..6 "
                         f"(1 national, 2 province, 3 city, 4 county, 5 township, 6 village)")
    own = area_level(area)
    if level != own:
        raise ValueError(f"EBRID level digit {level} does not match its area code {area} "
                         f"(a {LEVELS[own]}: level {own})")
    return Ebrid(code=code, level=level, area_code=area, type_code=code[13:17], type_seq=code[17:19],
                 subtype=code[19:21], subtype_seq=code[21:23])


def _two_digits(name: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 99:
        raise ValueError(f"{name} must be an integer 0..99, got {value!r}")
    return f"{value:02d}"


def propose_ebrid(area_code: str, *, level: int | None = None, type_code: str = "0314", type_seq: int = 1,
                  subtype: int, subtype_seq: int) -> str:
    """An EBRID for a node in ``area_code`` (the level from the area code unless given); checked."""
    own = area_level(area_code)  # checks the area code first: its message is the clearest
    if level is None:
        level = own
    if not (isinstance(level, int) and level in LEVELS):
        raise ValueError(f"level must be 1..6, got {level!r}")
    if len(type_code) != 4 or not _DIGITS.fullmatch(type_code):
        raise ValueError(f"type code '{type_code}' must be 4 digits")
    code = (f"{level}{area_code}{type_code}{_two_digits('type_seq', type_seq)}"
            f"{_two_digits('subtype', subtype)}{_two_digits('subtype_seq', subtype_seq)}")
    return parse_ebrid(code).code


def _sender(ebrid: str) -> str:
    # Only the shape is checked: these ids are also built for EBRIDs configured elsewhere (the upper
    # platform's), which parse_ebrid's level/area rule should not refuse at send time.
    if not EBRID_RE.fullmatch(ebrid):
        raise ValueError(f"EBRID '{ebrid}' must be 23 digits (0-9), got {len(ebrid)} characters")
    return ebrid


def _counter(name: str, counter: int, maximum: int) -> int:
    if isinstance(counter, bool) or not isinstance(counter, int) or not 1 <= counter <= maximum:
        raise ValueError(f"{name} counter must be 1..{maximum:,}, got {counter!r}")
    return counter


def heartbeat_ebdid(sender_ebrid: str) -> str:
    """The EBDID of a ConnectionCheck: type ``01``, the sender, and a sequence of 16 zeros."""
    return f"01{_sender(sender_ebrid)}{'0' * 16}"


def ebdid(sender_ebrid: str, day: date, counter: int) -> str:
    """A data-package id: ``10`` + sender EBRID + ``yyyyMMdd`` + the day's counter (8 digits, from 1)."""
    return f"10{_sender(sender_ebrid)}{day:%Y%m%d}{_counter('EBDID', counter, MAX_EBDID_COUNTER):08d}"


def ebmid(platform_ebrid: str, day: date, counter: int) -> str:
    """A broadcast-message id: platform EBRID + ``yyyyMMdd`` + the day's counter (4 digits, from 1)."""
    return f"{_sender(platform_ebrid)}{day:%Y%m%d}{_counter('EBMID', counter, MAX_EBMID_COUNTER):04d}"
