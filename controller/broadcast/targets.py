"""Which of this gateway's devices a broadcast's ``Targets`` name, and which zones on each.

Resolution is a pure function of the config so the API can reject a request that reaches nobody
before it is journalled (422 naming ``targets``), and the engine resolves the same way later.

Rules (DESIGN §3): ``all`` is every loudspeaker terminal; ``zones`` are those zones on every
terminal that has them; ``devices`` must all exist (a typo is an error, never a silent skip);
``area_codes`` are hierarchical — trailing zero groups cover the region (340621000000 the county,
340621105000 the township, a full code one village). A county-wide request naming several
townships is normal, so an area code that covers none of *our* terminals is not an error by
itself; only a request that reaches nothing here is. A terminal named by ``all``, ``devices`` or
an area code plays on all its configured zones; one reached only through ``zones`` plays on those.

The township FM transmitter radiates to the whole township, so it is keyed only when the request
covers the whole gateway area (``all`` or an area code covering the gateway's own) or names it in
``devices`` — never for a single village or zone.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.broadcast.model import Targets
from controller.config import Config, area_prefix
from controller.core.errors import Invalid
from drivers.profile import ModbusTerminalProfile


class TargetError(Invalid):
    """The request's targets are unusable here (``field`` ``targets``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "targets")


@dataclass(frozen=True)
class Resolved:
    """What one request reaches on this gateway."""

    terminals: dict[str, tuple[int, ...]]
    """Loudspeaker terminal id → zones to switch on, in config order."""
    transmitters: tuple[str, ...]
    """FM transmitter ids to key."""

    @property
    def device_ids(self) -> list[str]:
        return [*self.terminals, *self.transmitters]


def area_covers(region: str, code: str) -> bool:
    """True if the 12-digit ``code`` lies in ``region`` (trailing zero groups widen a region)."""
    return code.startswith(area_prefix(region))


def resolve(cfg: Config, targets: Targets) -> Resolved:
    """The terminals (with zones) and transmitters ``targets`` reach; raises TargetError if none."""
    terminal_ids = [d.id for d in cfg.devices
                    if isinstance(cfg.profiles.get(d.profile), ModbusTerminalProfile)]
    by_id = {d.id: d for d in cfg.devices}
    unknown = [d for d in targets.devices if d not in by_id]
    if unknown:
        raise TargetError(f"unknown device id(s): {', '.join(unknown)} "
                          f"(known: {', '.join(by_id) or 'none'})")
    whole_area = targets.all or any(area_covers(code, cfg.gateway.area_code) for code in targets.area_codes)
    named = set(targets.devices)
    zones_wanted = set(targets.zones)
    terminals: dict[str, tuple[int, ...]] = {}
    for dev_id in terminal_ids:
        dev = by_id[dev_id]
        if whole_area or dev_id in named or any(area_covers(c, dev.area_code) for c in targets.area_codes):
            terminals[dev_id] = tuple(dev.zones)
        elif zones_wanted & set(dev.zones):
            terminals[dev_id] = tuple(z for z in dev.zones if z in zones_wanted)
    transmitters = tuple(d.id for d in cfg.devices
                         if d.id not in terminal_ids and (whole_area or d.id in named))
    if not terminals and not transmitters:
        raise TargetError(_nothing_reached(cfg, targets))
    return Resolved(terminals, transmitters)


def _nothing_reached(cfg: Config, targets: Targets) -> str:
    parts = []
    if targets.zones:
        parts.append(f"zones {sorted(targets.zones)} are not wired at any terminal")
    if targets.area_codes:
        parts.append(f"area codes {', '.join(targets.area_codes)} are outside this gateway's area "
                     f"{cfg.gateway.area_code} or have no terminal")
    return "no terminal of this gateway matches: " + ("; ".join(parts) or "nothing named")
