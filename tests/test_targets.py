"""Target resolution: all, zones, devices and hierarchical area codes (pure: config only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from simkit import write_sim_config

from controller.broadcast.model import Targets
from controller.broadcast.targets import TargetError, area_covers, resolve
from controller.config import Config, load_config

VILLAGE_A = "340621105201"
VILLAGE_B = "340621105202"
VILLAGE_C = "340621105203"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Township 340621105 (刘桥镇): rtu1+rtu2 in village A, rtu3 in B, tcp1 (zone 1 only) in C, fm1."""
    sim = write_sim_config(tmp_path_factory.mktemp("targets"), rtu_terminals=3, tcp_terminals=1)
    for dev, code in zip(sim.data["devices"], (VILLAGE_A, VILLAGE_A, VILLAGE_B, VILLAGE_C, VILLAGE_C),
                         strict=True):
        dev["area_code"] = code
    Path(sim.path).write_text(yaml.safe_dump(sim.data, allow_unicode=True), encoding="utf-8")
    return load_config(sim.path)


def test_area_covers_is_hierarchical() -> None:
    assert area_covers("340000000000", VILLAGE_A)       # province
    assert area_covers("340600000000", VILLAGE_A)       # city
    assert area_covers("340621000000", VILLAGE_A)       # county 濉溪县
    assert area_covers("340621105000", VILLAGE_A)       # township 刘桥镇
    assert area_covers(VILLAGE_A, VILLAGE_A)            # the village itself
    assert not area_covers(VILLAGE_B, VILLAGE_A)
    assert not area_covers("340621106000", VILLAGE_A)   # the neighbouring township
    assert not area_covers("340622000000", VILLAGE_A)   # another county


def test_all_reaches_every_terminal_on_all_its_zones_and_the_transmitter(cfg: Config) -> None:
    got = resolve(cfg, Targets(all=True))
    assert got.terminals == {"rtu1": (1, 2), "rtu2": (1, 2), "rtu3": (1, 2), "tcp1": (1,)}
    assert got.transmitters == ("fm1",)
    assert got.device_ids == ["rtu1", "rtu2", "rtu3", "tcp1", "fm1"]


@pytest.mark.parametrize("region", ["340000000000", "340621000000", "340621105000"])
def test_a_region_covering_the_township_reaches_everything(cfg: Config, region: str) -> None:
    got = resolve(cfg, Targets(area_codes=[region]))
    assert set(got.terminals) == {"rtu1", "rtu2", "rtu3", "tcp1"}
    assert got.transmitters == ("fm1",)


def test_a_village_code_reaches_only_that_village_and_not_the_fm_transmitter(cfg: Config) -> None:
    got = resolve(cfg, Targets(area_codes=[VILLAGE_A]))
    assert got.terminals == {"rtu1": (1, 2), "rtu2": (1, 2)}
    assert got.transmitters == ()


def test_codes_of_other_townships_are_ignored_when_one_matches(cfg: Config) -> None:
    """A county-wide request lists many townships; this gateway plays its own part."""
    got = resolve(cfg, Targets(area_codes=["340621106000", "340621107000", VILLAGE_B]))
    assert got.terminals == {"rtu3": (1, 2)}


def test_a_request_for_another_township_only_is_rejected_naming_targets(cfg: Config) -> None:
    with pytest.raises(TargetError, match="340621106000") as info:
        resolve(cfg, Targets(area_codes=["340621106000"]))
    assert info.value.field == "targets"
    assert isinstance(info.value, ValueError)  # the API maps it to 422


def test_zones_reach_those_zones_on_every_terminal_that_has_them(cfg: Config) -> None:
    got = resolve(cfg, Targets(zones=[2]))
    assert got.terminals == {"rtu1": (2,), "rtu2": (2,), "rtu3": (2,)}  # tcp1 has zone 1 only
    assert got.transmitters == ()


def test_zones_nobody_has_are_rejected(cfg: Config) -> None:
    with pytest.raises(TargetError, match=r"zones \[5, 6\]"):
        resolve(cfg, Targets(zones=[6, 5]))


def test_unknown_device_ids_are_named(cfg: Config) -> None:
    with pytest.raises(TargetError, match=r"unknown device id.*rtu9.*nope"):
        resolve(cfg, Targets(devices=["rtu1", "rtu9", "nope"]))


def test_devices_and_the_transmitter_by_id(cfg: Config) -> None:
    assert resolve(cfg, Targets(devices=["rtu2"])).terminals == {"rtu2": (1, 2)}
    fm_only = resolve(cfg, Targets(devices=["fm1"]))
    assert fm_only.terminals == {} and fm_only.transmitters == ("fm1",)


def test_a_union_gives_named_terminals_all_zones_and_zone_matches_their_zone(cfg: Config) -> None:
    got = resolve(cfg, Targets(devices=["rtu1"], zones=[2], area_codes=[VILLAGE_C]))
    assert got.terminals == {"rtu1": (1, 2), "rtu2": (2,), "rtu3": (2,), "tcp1": (1,)}
