"""Area matching of CAP alerts against the demo township 濉溪县刘桥镇 (20 terminals, one FM transmitter).

Pure: the demo config and hand-built ``Info``/``Area`` objects (as the parser produces them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.alerts.area import AreaMatch, great_circle_km, match_area
from controller.alerts.cap import Area, Circle, Info, Severity
from controller.broadcast.model import Targets
from controller.broadcast.targets import resolve
from controller.config import Config, load_config

DEMO = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
ALL_TERMINALS = tuple(f"t{i:02d}" for i in range(1, 21))


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(DEMO)


def info_with(*areas: Area) -> Info:
    return Info(language="zh-CN", event="暴雨", urgency="Immediate", severity=Severity.SEVERE,
                certainty="Likely", areas=areas)


def codes(*area_codes: str, desc: str = "区域") -> Area:
    return Area(desc=desc, area_codes=area_codes)


def rect(south: float, west: float, north: float, east: float) -> tuple[tuple[float, float], ...]:
    """A closed CAP polygon (lat, lon points) for a lat/lon box."""
    return ((south, west), (south, east), (north, east), (north, west), (south, west))


# ------------------------------------------------------------------------------ area codes

def test_county_code_reaches_every_terminal_and_means_the_whole_gateway(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621000000", desc="濉溪县")))
    assert got.terminals == ALL_TERMINALS
    assert got.whole_gateway and got.applicable
    assert got.why["t07"] == "area code 340621000000"
    assert got.villages[:3] == ("刘桥村", "前李村", "后李村")
    assert len(got.villages) == 19  # 刘桥村 has two terminals, named once


def test_township_code_is_the_whole_gateway(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621105000")))
    assert got.terminals == ALL_TERMINALS
    assert got.whole_gateway


def test_village_code_reaches_only_that_villages_terminals(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621105201", desc="刘桥村")))
    assert got.terminals == ("t01", "t02")
    assert got.villages == ("刘桥村",)
    assert not got.whole_gateway
    assert got.why == {"t01": "area code 340621105201", "t02": "area code 340621105201"}


def test_several_village_codes_keep_config_order(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621105219", "340621105203"), codes("340621105210")))
    assert got.terminals == ("t04", "t11", "t20")
    assert got.villages == ("后李村", "蒋庄村", "新庄村")


@pytest.mark.parametrize("code", ["340622000000", "340621106000", "340600000001", "110000000000"])
def test_another_county_or_township_is_not_applicable(cfg: Config, code: str) -> None:
    got = match_area(cfg, info_with(codes(code)))
    assert got.terminals == () and got.villages == ()
    assert not got.whole_gateway and not got.applicable
    assert got.targets() is None


def test_six_and_nine_digit_codes_work_once_widened_by_the_parser(cfg: Config) -> None:
    county = Area(desc="濉溪县", geocodes=(("", "340621"),), area_codes=("340621000000",))
    township = Area(desc="刘桥镇", geocodes=(("", "340621105"),), area_codes=("340621105000",))
    assert match_area(cfg, info_with(county)).terminals == ALL_TERMINALS
    assert match_area(cfg, info_with(township)).whole_gateway


def test_a_code_that_is_not_twelve_digits_is_not_read_as_a_wide_prefix(cfg: Config) -> None:
    """Only the parser widens codes; a stray '34' must not mean all of Anhui."""
    got = match_area(cfg, info_with(Area(desc="?", area_codes=("34", "3406211"))))
    assert not got.applicable


def test_geocodes_that_are_not_area_codes_reach_nothing(cfg: Config) -> None:
    got = match_area(cfg, info_with(Area(desc="Kent County", geocodes=(("FIPS6", "006113"),))))
    assert not got.applicable


def test_no_area_at_all_is_not_applicable(cfg: Config) -> None:
    assert not match_area(cfg, info_with()).applicable


# ------------------------------------------------------------------------------ polygons and circles

def test_polygon_around_liuqiao_village_reaches_its_two_terminals_only(cfg: Config) -> None:
    area = Area(desc="刘桥村低洼地带", polygons=(rect(33.900, 116.741, 33.904, 116.747),))
    got = match_area(cfg, info_with(area))
    assert got.terminals == ("t01", "t02")
    assert got.villages == ("刘桥村",)
    assert got.why["t01"] == "polygon '刘桥村低洼地带'"
    assert not got.whole_gateway  # a polygon never keys the township FM transmitter
    assert got.targets() == Targets(devices=["t01", "t02"])


def test_polygon_is_read_as_lat_lon_not_lon_lat(cfg: Config) -> None:
    """CAP writes 'lat,lon'; swapping them would put the box in the Indian Ocean."""
    swapped = tuple((lon, lat) for lat, lon in rect(33.900, 116.741, 33.904, 116.747))
    assert not match_area(cfg, info_with(Area(desc="x", polygons=(swapped,)))).applicable


def test_a_terminal_on_the_polygon_boundary_is_inside(cfg: Config) -> None:
    # 前李村 t03 is at 33.9105, 116.7512: on the south edge of this box ...
    on_edge = Area(desc="北片", polygons=(rect(33.9105, 116.7400, 33.9200, 116.7600),))
    assert match_area(cfg, info_with(on_edge)).terminals == ("t03", "t04")
    # ... at a vertex of this triangle ...
    vertex = Area(desc="顶点", polygons=(((33.9105, 116.7512), (33.95, 116.70), (33.95, 116.72),
                                           (33.9105, 116.7512)),))
    assert match_area(cfg, info_with(vertex)).terminals == ("t03",)
    # ... and on a slanted edge (33.9025,116.7422 → 33.9265,116.7692 passes through it exactly),
    # where float rounding alone puts it 2e-15° outside.
    slanted = Area(desc="斜边", polygons=(((33.9025, 116.7422), (33.9265, 116.7692), (33.9265, 116.7422),
                                           (33.9025, 116.7422)),))
    assert match_area(cfg, info_with(slanted)).terminals == ("t03", "t04")


def test_a_self_intersecting_polygon_is_repaired_not_trusted(cfg: Config) -> None:
    """A hand-drawn bow-tie still covers the two lobes it encloses."""
    bowtie = ((33.899, 116.740), (33.906, 116.749), (33.899, 116.749), (33.906, 116.740), (33.899, 116.740))
    got = match_area(cfg, info_with(Area(desc="bow-tie", polygons=(bowtie,))))
    assert got.terminals == ("t01", "t02")  # t01 in the west lobe, t02 in the east one


def test_a_degenerate_polygon_reaches_nothing(cfg: Config) -> None:
    line = ((33.9012, 116.7421), (33.9031, 116.7465), (33.9012, 116.7421))
    assert not match_area(cfg, info_with(Area(desc="line", polygons=(line,)))).applicable


def test_circle_uses_great_circle_distance(cfg: Config) -> None:
    # Around 马桥村河口泵站 (t14); 徐楼村 t15 is 1.14 km away, 吴庄村 t16 2.18 km.
    t14 = next(d for d in cfg.devices if d.id == "t14").location
    small = Area(desc="泵站周边1公里", circles=(Circle(t14.lat, t14.lon, 1.0),))
    wider = Area(desc="泵站周边1.2公里", circles=(Circle(t14.lat, t14.lon, 1.2),))
    assert match_area(cfg, info_with(small)).terminals == ("t14",)
    got = match_area(cfg, info_with(wider))
    assert got.terminals == ("t14", "t15")
    assert got.villages == ("马桥村", "徐楼村")
    assert got.why["t15"] == "circle '泵站周边1.2公里'"


def test_great_circle_distance_is_right() -> None:
    # One degree of latitude is ~111.2 km anywhere; Beijing–Shanghai is ~1067 km.
    assert great_circle_km(33.0, 116.8, 34.0, 116.8) == pytest.approx(111.19, abs=0.01)
    assert great_circle_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1067, abs=3)


def test_first_reason_found_is_kept_and_areas_combine(cfg: Config) -> None:
    """A terminal reached several ways is listed once, with the first reason (areas in CAP order)."""
    code = codes("340621105201", desc="刘桥村")
    poly = Area(desc="刘桥村低洼地带", polygons=(rect(33.900, 116.741, 33.904, 116.747),))
    t20 = next(d for d in cfg.devices if d.id == "t20").location
    circle = Area(desc="新庄村", circles=(Circle(t20.lat, t20.lon, 0.1),))
    got = match_area(cfg, info_with(poly, code, circle))
    assert got.terminals == ("t01", "t02", "t20")
    assert got.why == {"t01": "polygon '刘桥村低洼地带'", "t02": "polygon '刘桥村低洼地带'",
                       "t20": "circle '新庄村'"}


# ------------------------------------------------------------------------------ targets

def test_whole_gateway_targets_include_the_fm_transmitter(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621000000")))
    targets = got.targets()
    assert targets == Targets(area_codes=["340621105000"])
    reached = resolve(cfg, targets)
    assert tuple(reached.terminals) == ALL_TERMINALS
    assert reached.transmitters == ("fm1",)


def test_village_targets_reach_exactly_its_terminals_and_not_the_fm(cfg: Config) -> None:
    got = match_area(cfg, info_with(codes("340621105201")))
    targets = got.targets()
    assert targets is not None
    reached = resolve(cfg, targets)
    assert reached.device_ids == ["t01", "t02"]  # the FM transmitter, also in 刘桥村, is not keyed


def test_area_match_can_be_built_by_hand() -> None:
    """The inbox rebuilds a plan from stored values; the contract's three fields are enough."""
    match = AreaMatch(terminals=("t01",), villages=("刘桥村",), whole_gateway=False)
    assert match.applicable and match.targets() == Targets(devices=["t01"])
    assert not AreaMatch((), (), False).applicable
    whole = AreaMatch(terminals=ALL_TERMINALS, villages=("刘桥村",), whole_gateway=True)
    assert whole.targets() == Targets(all=True)  # still keys the FM transmitter
