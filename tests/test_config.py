"""Config validation: a technician must learn every mistake, with its key path, in one run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from controller.alerts.rules import Action
from controller.broadcast.model import SourceLevel, Tone
from controller.config import ConfigError, load_config, parse_config
from controller.config.alerts import AlertTone, RuleAction, SourceLevelName

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo.yaml"


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))


def _errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml", DEMO.parent)
    return info.value.errors


def test_demo_config_models_the_township():
    cfg = load_config(DEMO)
    rs485 = [d for d in cfg.devices if d.line == "rs485-1"]
    tcp = [d for d in cfg.devices if cfg.line(d.line).type == "tcp"]
    assert len(rs485) >= 16 and cfg.line("rs485-1").baudrate == 9600
    assert len(tcp) >= 4
    assert any(cfg.profiles[d.profile].type == "at-fm-transmitter" for d in cfg.devices)
    assert all(d.area_code.startswith("340621") for d in cfg.devices)
    assert all(33.5 < d.location.lat < 34.3 and 116.4 < d.location.lon < 117.2 for d in cfg.devices)


def test_every_error_is_reported_at_once_with_its_key_path():
    data = _demo()
    data["gateway"]["area_code"] = "34062"
    data["lines"][0]["baudrate"] = 9601
    data["lines"][0]["parityy"] = "N"
    data["devices"][3]["unit_id"] = 300
    del data["devices"][5]["name"]
    errors = _errors(data)
    joined = "\n".join(errors)
    assert len(errors) == 5, joined
    assert "gateway.area_code: must be a 12-digit" in joined
    assert "lines[0](rs485-1).baudrate: must be a standard rate" in joined
    assert "lines[0](rs485-1).parityy: unknown key" in joined
    assert "devices[3](t04).unit_id" in joined
    assert "devices[5](t06).name: required key is missing" in joined


def test_gateway_time_zone_is_an_iana_name_shanghai_by_default():
    assert load_config(DEMO).gateway.timezone == "Asia/Shanghai"
    data = _demo()
    data["gateway"]["timezone"] = "Asia/Urumqi"
    assert parse_config(data, "test.yaml", DEMO.parent).gateway.tz.key == "Asia/Urumqi"
    for bad in ("UTC+8", "Beijing", "../../etc/passwd", ""):
        data["gateway"]["timezone"] = bad
        errors = _errors(data)
        assert len(errors) == 1 and errors[0].startswith("gateway.timezone: "), errors
        assert "IANA time zone" in errors[0]


def test_cross_references_are_checked():
    data = _demo()
    data["devices"][1]["unit_id"] = 1          # same unit id as t01 on the same line
    data["devices"][2]["line"] = "rs485-9"     # unknown line
    data["devices"][4]["profile"] = "nope-1"   # no such profile file
    data["devices"][5]["area_code"] = "340622105201"  # another county
    data["devices"][6]["zones"] = [1, 9]       # ebt-1 has 8 zones
    joined = "\n".join(_errors(data))
    assert "devices[1](t02).unit_id: 1 already used on line 'rs485-1' by 't01'" in joined
    assert "devices[2](t03).line: no line with id 'rs485-9'" in joined
    assert "devices[4](t05).profile: no profile file" in joined
    assert "devices[5](t06).area_code: 340622105201 is outside the gateway's area" in joined
    assert "devices[6](t07).zones: zone 9 does not exist" in joined


def test_fm_transmitter_cannot_share_a_modbus_line():
    data = _demo()
    fm = next(d for d in data["devices"] if d["profile"] == "ebr-fm1")
    fm["line"] = "rs485-1"
    assert any("cannot share one line" in e for e in _errors(data))


def test_broken_profile_is_reported_with_its_point(tmp_path: Path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    fm = REPO / "config/profiles/ebr-fm1.yaml"
    (profiles / "ebr-fm1.yaml").write_text(fm.read_text("utf-8"), "utf-8")
    doc = yaml.safe_load((REPO / "config/profiles/ebt-1.yaml").read_text(encoding="utf-8"))

    def errors_for(profile: dict) -> str:
        (profiles / "ebt-1.yaml").write_text(yaml.safe_dump(profile, allow_unicode=True), "utf-8")
        with pytest.raises(ConfigError) as info:
            parse_config(_demo(), "x.yaml", tmp_path)
        return "\n".join(info.value.errors)

    doc["points"]["volume"]["tabel"] = "holding"
    joined = errors_for(doc)
    assert "points.volume.tabel: unknown key" in joined
    assert joined.count("tabel") == 1, "a broken profile is reported once, not per device"
    del doc["points"]["volume"]["tabel"]
    del doc["points"]["mute"]
    assert "points missing that every terminal needs: mute" in errors_for(doc)


def test_config_check_cli_prints_errors_and_fails(tmp_path: Path):
    data = _demo()
    data["simulator"]["scenarios"] = [{"at_s": 5, "device": "t99", "fault": "offline"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (tmp_path / "profiles").symlink_to(REPO / "config" / "profiles")
    run = subprocess.run([sys.executable, "-m", "controller.app.cli", "config", "check", str(bad)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert "simulator.scenarios[0].device: no device with id 't99'" in run.stderr

    good = subprocess.run([sys.executable, "-m", "controller.app.cli", "config", "check", str(DEMO)],
                          capture_output=True, text=True, check=False)
    assert good.returncode == 0 and "21 devices" in good.stdout


def test_unreadable_and_non_yaml_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_non_finite_numbers_are_refused_as_such():
    data = _demo()
    data["gateway"]["location"]["lat"] = float("nan")                 # YAML .nan
    data["broadcast"] = {**data.get("broadcast", {}), "ready_timeout_s": float("inf")}  # YAML .inf
    joined = "\n".join(_errors(data))
    assert "gateway.location.lat: Input should be a finite number" in joined, joined
    assert "broadcast.ready_timeout_s: Input should be a finite number" in joined, joined


def test_spelt_out_vocabularies_follow_their_enums():
    """Where config keeps a Literal instead of the enum (see controller/config/alerts.py), they agree."""
    assert list(get_args(SourceLevelName)) == [level.name.lower() for level in SourceLevel]
    assert list(get_args(RuleAction)) == [action.value for action in Action]
    assert set(get_args(AlertTone)) <= {tone.value for tone in Tone}
