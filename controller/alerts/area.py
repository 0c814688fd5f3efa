"""Which of this gateway's loudspeaker terminals a CAP alert's areas touch.

A warning must reach exactly the affected villages: not the whole township for a flood on one
river bank, and never a neighbouring county's storm. An info block can describe its area three
ways and a terminal is affected when any of them reaches it:

- Chinese administrative area codes (12 digits, hierarchical: trailing zero groups cover the whole
  region, so 340621000000 is all of 濉溪县 and 340621105000 the township 刘桥镇), compared with each
  terminal's ``area_code`` exactly as :func:`controller.broadcast.targets.area_covers` does for broadcasts;
- polygons (CAP writes ``lat,lon`` pairs; shapely wants x = lon, y = lat), a point on the boundary
  counts;
- circles, by great-circle distance from the centre (a township spans a few km, but a circle may be
  a 100 km typhoon wind radius, where a flat-earth approximation would drift).

Only an area code that covers the gateway's own code means "the whole township": then the township
FM transmitter is keyed too (it cannot serve a single village), as :mod:`controller.broadcast.targets` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.alerts.cap import Area, Circle, Info
from controller.broadcast.model import AREA_CODE, Targets
from controller.broadcast.targets import area_covers
from controller.config import Config, Device
from drivers.profile import ModbusTerminalProfile

if TYPE_CHECKING:  # shapely (with numpy, ~14 MB) is imported only when an alert has a polygon
    from shapely.geometry.base import BaseGeometry

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), for great-circle distances."""

BOUNDARY_TOLERANCE_DEG = 1e-7
"""About 1 cm: a terminal written on a polygon's slanted edge is on it despite float rounding."""


@dataclass(frozen=True)
class AreaMatch:
    """What an alert's areas reach here: the terminals, their villages, and why each one."""

    terminals: tuple[str, ...]
    """Affected loudspeaker terminal ids, in config order."""
    villages: tuple[str, ...]
    """Distinct village names of those terminals (``Device.village``, else ``Device.name``)."""
    whole_gateway: bool
    """An area code covers the gateway's own area code: the FM transmitter plays too."""
    why: dict[str, str] = field(default_factory=dict)
    """Terminal id → the first reason found: ``area code 340621000000``, ``polygon '<areaDesc>'``,
    ``circle '<areaDesc>'``."""
    gateway_area_code: str = ""
    """The gateway's own area code, so :meth:`targets` can name the whole township (set by
    :func:`match_area`; without it the whole township is ``Targets(all=True)``, which reaches the same)."""

    @property
    def applicable(self) -> bool:
        """False when the alert touches none of this gateway's area (recorded as not applicable)."""
        return bool(self.terminals) or self.whole_gateway

    def targets(self) -> Targets | None:
        """The broadcast targets: the whole township (with the FM transmitter) or just these terminals."""
        if self.whole_gateway and self.gateway_area_code:
            return Targets(area_codes=[self.gateway_area_code])
        if self.whole_gateway:  # a hand-built match: ``all`` reaches the same, FM transmitter included
            return Targets(all=True)
        if self.terminals:
            return Targets(devices=list(self.terminals))
        return None


def match_area(cfg: Config, info: Info) -> AreaMatch:
    """The loudspeaker terminals of ``cfg`` that any area of ``info`` reaches."""
    terminals = [d for d in cfg.devices if isinstance(cfg.profiles.get(d.profile), ModbusTerminalProfile)]
    shapes = [_Shapes.of(area) for area in info.areas]
    why: dict[str, str] = {}
    for dev in terminals:
        reason = next((r for s in shapes if (r := s.reaches(dev)) is not None), None)
        if reason is not None:
            why[dev.id] = reason
    hit = [d for d in terminals if d.id in why]
    villages = tuple(dict.fromkeys(d.village or d.name for d in hit))
    whole = any(area_covers(code, cfg.gateway.area_code) for s in shapes for code in s.codes)
    return AreaMatch(terminals=tuple(d.id for d in hit), villages=villages, whole_gateway=whole, why=why,
                     gateway_area_code=cfg.gateway.area_code)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km (well-conditioned for the short distances of a township)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class _Shapes:
    """One CAP area made testable: its valid area codes, polygons as shapely geometry, circles."""

    desc: str
    codes: tuple[str, ...]
    polygons: tuple[BaseGeometry, ...]
    circles: tuple[Circle, ...]

    @classmethod
    def of(cls, area: Area) -> _Shapes:
        # The parser widens 6/9-digit codes; anything else is not an area code (a short string
        # would otherwise act as a very wide prefix).
        codes = tuple(c for c in area.area_codes if AREA_CODE.match(c))
        polygons = tuple(p for p in (_polygon(points) for points in area.polygons) if p is not None)
        return cls(area.desc, codes, polygons, area.circles)

    def reaches(self, dev: Device) -> str | None:
        """Why this area reaches ``dev`` (the first way found), or None."""
        for code in self.codes:
            if area_covers(code, dev.area_code):
                return f"area code {code}"
        if self.polygons:
            from shapely.geometry import Point

            point = Point(dev.location.lon, dev.location.lat)
            for poly in self.polygons:
                if poly.covers(point) or poly.distance(point) <= BOUNDARY_TOLERANCE_DEG:
                    return f"polygon '{self.desc}'"
        for circle in self.circles:
            distance = great_circle_km(circle.lat, circle.lon, dev.location.lat, dev.location.lon)
            if distance <= circle.radius_km + 1e-9:
                return f"circle '{self.desc}'"
        return None


def _polygon(points: tuple[tuple[float, float], ...]) -> BaseGeometry | None:
    """A CAP polygon (lat, lon points) as shapely geometry; None if it encloses nothing.

    A self-intersecting ring (a bow-tie drawn by hand) is repaired rather than trusted: GEOS
    predicates on invalid geometry are undefined.
    """
    ring = [(lon, lat) for lat, lon in points]
    if len(set(ring)) < 3:
        return None
    import shapely  # lazily: the idle gateway's memory (see the TYPE_CHECKING note above)
    from shapely.geometry import Polygon

    poly: BaseGeometry = Polygon(ring)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
    if poly.is_empty or poly.area == 0:
        return None
    shapely.prepare(poly)
    return poly
