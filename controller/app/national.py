"""``ebc platform codes`` and ``ebc platform keygen``: setting a site up for the national interface."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from controller.config import Config
from controller.uplink.national.codes import (
    SUBTYPE_EQUIPMENT,
    SUBTYPE_NODE,
    SUBTYPE_TERMINAL,
    parse_ebrid,
    propose_ebrid,
)
from controller.uplink.national.signature import generate_keypair


def propose_codes(cfg: Config, type_code: str = "0314") -> str:
    """YAML lines to paste: an EBRID for the gateway and each device that has none yet.

    Terminals are numbered per village (subtype 04, sequence 01…99, then the type sequence goes
    up); the FM transmitter is coverage equipment (subtype 03). Codes already in the file are kept
    and never proposed twice.
    """
    taken = {c for c in [cfg.gateway.ebrid, *(d.ebrid for d in cfg.devices)] if c}
    lines = ["# proposed by `ebc platform codes` — check them against the county's resource plan"]
    if cfg.gateway.ebrid:
        lines.append(f"# gateway.ebrid is set: {cfg.gateway.ebrid}")
    else:
        code = _free(taken, lambda seq: propose_ebrid(cfg.gateway.area_code, level=5, type_code=type_code,
                                                        subtype=SUBTYPE_NODE, subtype_seq=seq))
        lines += ["gateway:", f'  ebrid: "{code}"']
    lines.append("devices:  # add each line to its device")
    for dev in cfg.devices:
        if dev.ebrid:
            parse_ebrid(dev.ebrid)
            lines.append(f"  # {dev.id}: ebrid is set ({dev.ebrid})")
            continue
        terminal = cfg.profiles[dev.profile].type == "modbus-terminal"
        subtype = SUBTYPE_TERMINAL if terminal else SUBTYPE_EQUIPMENT

        def make(seq: int, dev_area: str = dev.area_code, sub: int = subtype) -> str:
            return propose_ebrid(dev_area, type_code=type_code, type_seq=1 + (seq - 1) // 99, subtype=sub,
                                 subtype_seq=1 + (seq - 1) % 99)

        code = _free(taken, make)
        lines.append(f'  - id: {dev.id}\n    ebrid: "{code}"  # {dev.village or dev.area_code} {dev.name}')
    return "\n".join(lines)


def _free(taken: set[str], make: Callable[[int], str]) -> str:
    """The first code from ``make(seq)`` not yet taken (and take it)."""
    for seq in range(1, 99 * 99 + 1):
        code = make(seq)
        if code not in taken:
            taken.add(code)
            return code
    raise ValueError("no free resource code left for this area and type")


def write_keypair(path: Path) -> str:
    """Write a new SM2 private key (hex, mode 0600, never over an existing file); return what to
    give the county platform: the public key."""
    private, public = generate_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(private + "\n")
    return (f"private key written to {path} (keep it secret; national_platform.signing.private_key_file)\n"
            f"public key (give it to the county platform): {public}")
