"""The national interface's configuration and mapping rules, without a network: resource codes in the
config, ``ebc platform codes`` / ``keygen``, and how an EBM becomes a broadcast request."""

from __future__ import annotations

import copy
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.broadcast.model import BroadcastClass, SourceLevel, Tone
from controller.config import Config, ConfigError, load_config, parse_config
from controller.uplink.national.ebd import Ebm
from controller.uplink.national.mapping import MappingError, broadcast_report, ebm_request
from controller.uplink.national.signature import generate_keypair

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo.yaml"
PLATFORM = "43406210000000103010101"


def _national(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    private, _ = generate_keypair()
    _, platform_public = generate_keypair()
    (tmp_path / "gw.key").write_text(private, encoding="utf-8")
    return {"listen": {"host": "127.0.0.1", "port": 7080, "allow": ["127.0.0.1"]},
            "upper": {"ebrid": PLATFORM, "url": "http://127.0.0.1:7090/ebd",
                      "keys": [{"cert_sn": "P1", "public_key": platform_public}]},
            "signing": {"private_key_file": "gw.key", "cert_sn": "G1"}, **extra}


def _demo_with_national(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["profiles_dir"] = str(REPO / "config" / "profiles")
    data["national_platform"] = _national(tmp_path, **extra)
    return data


def _errors(data: dict[str, Any], base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "x.yaml", base)
    return info.value.errors


def test_the_demo_codes_validate_with_the_national_section(tmp_path: Path):
    cfg = parse_config(_demo_with_national(tmp_path), "x.yaml", tmp_path)
    assert cfg.national_platform is not None and cfg.gateway.ebrid and cfg.gateway.ebrid[0] == "5"


def test_resource_code_errors_name_the_key(tmp_path: Path):
    data = _demo_with_national(tmp_path)
    bad = copy.deepcopy(data)
    del bad["gateway"]["ebrid"]
    bad["devices"][0]["ebrid"] = bad["devices"][1]["ebrid"]                    # duplicate
    bad["devices"][2]["ebrid"] = "6" + "340621999999" + "0314010401"             # another village
    bad["devices"][3]["ebrid"] = "5" + bad["devices"][3]["area_code"] + "0314010401"  # wrong level
    bad["national_platform"]["upper"]["ebrid"] = "5" + "340621105000" + "0103010101"
    errors = _errors(bad, tmp_path)
    text = "\n".join(errors)
    assert "gateway.ebrid: required with national_platform" in text
    duplicate = data["devices"][1]["ebrid"]
    assert f"devices[1](t02).ebrid: {duplicate} is already the code of devices[0](t01)" in text
    assert "devices[2](t03).ebrid: its area code 340621999999 is not the device's area_code" in text
    assert "devices[3](t04).ebrid:" in text and "level" in text
    assert "national_platform.upper.ebrid: level digit 5 is not a platform above a township" in text


def test_key_files_and_lists_are_checked(tmp_path: Path):
    data = _demo_with_national(tmp_path)
    data["national_platform"]["signing"]["private_key_file"] = "missing.key"
    data["national_platform"]["upper"]["keys"][0]["public_key"] = "00" * 64
    data["national_platform"]["listen"]["allow"] = ["10.0.0.0/8", "not-an-address"]
    errors = "\n".join(_errors(data, tmp_path))
    assert "national_platform.listen.allow: 'not-an-address' is not an IP address" in errors
    data["national_platform"]["listen"]["allow"] = ["10.0.0.0/8"]
    errors = "\n".join(_errors(data, tmp_path))
    assert "national_platform.signing.private_key_file: cannot read missing.key" in errors
    assert "national_platform.upper.keys[0](P1).public_key:" in errors


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.app.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_platform_codes_proposes_codes_that_pass_the_check(tmp_path: Path):
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["profiles_dir"] = str(REPO / "config" / "profiles")
    del data["gateway"]["ebrid"]
    for dev in data["devices"]:
        dev.pop("ebrid", None)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = _run_cli("platform", "codes", "--config", str(path))
    assert out.returncode == 0, out.stderr
    proposal = yaml.safe_load(out.stdout)
    data["gateway"]["ebrid"] = proposal["gateway"]["ebrid"]
    by_id = {item["id"]: item["ebrid"] for item in proposal["devices"]}
    for dev in data["devices"]:
        dev["ebrid"] = by_id[dev["id"]]
    data["national_platform"] = _national(tmp_path)
    cfg = parse_config(data, "site.yaml", tmp_path)
    assert len({d.ebrid for d in cfg.devices}) == len(cfg.devices)
    assert by_id["fm1"][-4:-2] == "03" and by_id["t01"][-4:-2] == "04"


def test_keygen_writes_an_owner_only_key_and_never_overwrites(tmp_path: Path):
    key = tmp_path / "gw.key"
    out = _run_cli("platform", "keygen", "--out", str(key))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    public = out.stdout.rsplit(":", 1)[1].strip()
    assert len(public) == 128
    again = _run_cli("platform", "keygen", "--out", str(key))
    assert again.returncode == 1 and "exists; a key is never overwritten" in again.stderr
    assert "Traceback" not in again.stderr


def test_platform_sim_help_is_its_own():
    out = _run_cli("platform-sim", "--help")
    assert out.returncode == 0 and "serve" in out.stdout and "demo" in out.stdout


# -- EBM → broadcast request ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    tmp = tmp_path_factory.mktemp("national")
    data = _demo_with_national(tmp, event_types={"11B": {"class": "emergency", "tone": "air_raid"},
                                                 "11B03": {"class": "emergency", "tone": "siren",
                                                           "repeat": 3},
                                                 "99": {"class": "daily"}})
    path = tmp / "x.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def _ebm(**fields: Any) -> Ebm:
    now = datetime.now(UTC)
    base: dict[str, Any] = dict(version="1", ebmid=PLATFORM + "202612030001", related_ebmid=None, msg_type=1,
                                sender_name="县平台", sender_code=PLATFORM, send_time=now,
                                event_type="11B03000",
                                severity=2, start_time=now, end_time=now + timedelta(hours=1), language="zho",
                                title="暴雨", desc="请注意防范。", area_codes=("340621105201",),
                                program_num=None,
                                auxiliaries=())
    base.update(fields)
    return Ebm(**base)


def _request(cfg: Config, **fields: Any) -> Any:
    assert cfg.national_platform is not None
    return ebm_request(_ebm(**fields), cfg, cfg.national_platform, source_level=SourceLevel.COUNTY,
                       audio_id=None)


def test_an_ebm_maps_to_a_county_emergency_on_its_area(cfg: Config):
    request = _request(cfg)
    assert request.broadcast_class is BroadcastClass.EMERGENCY and request.severity == 2
    assert request.source_level is SourceLevel.COUNTY and request.source == "县平台"
    assert request.targets.area_codes == ["340621105201"] and request.text == "请注意防范。"
    assert request.tone is Tone.SIREN and request.repeat == 3  # the longest EventType prefix wins
    assert _request(cfg, event_type="11B99000").tone is Tone.AIR_RAID
    assert _request(cfg, event_type="31000000").repeat == cfg.national_platform.repeat  # no plan
    # A whole county's code reaches our terminals; an area beyond ours is dropped from the targets.
    assert _request(cfg, area_codes=("340621000000", "340622000000")).targets.area_codes == ["340621000000"]
    assert _request(cfg, area_codes=("000000000000",)).targets.area_codes == ["000000000000"]  # the nation


@pytest.mark.parametrize(("severity", "klass", "level"), [(1, "emergency", 1), (4, "emergency", 4),
                                                          (0, "emergency", 4), (15, "drill", None)])
def test_severity_codes(cfg: Config, severity: int, klass: str, level: int | None):
    request = _request(cfg, severity=severity)
    assert request.broadcast_class.value == klass and request.severity == level


def test_daily_plan_and_language(cfg: Config):
    request = _request(cfg, event_type="99000000", language="eng", desc="Daily notice.")
    assert request.broadcast_class is BroadcastClass.DAILY and request.severity is None
    assert request.language == "en"


@pytest.mark.parametrize(("fields", "code", "where"), [
    ({"area_codes": ("340622000000",)}, 5, "AreaCode"),
    ({"end_time": datetime.now(UTC) - timedelta(minutes=1)}, 5, "EndTime"),
    ({"desc": "   "}, 3, "MsgDesc"),
    ({"desc": "\u200b\u200b"}, 2, "MsgDesc"),
])
def test_unplayable_ebms_are_refused_naming_the_element(cfg: Config, fields: dict[str, Any], code: int,
                                                         where: str):
    with pytest.raises(MappingError) as info:
        _request(cfg, **fields)
    assert info.value.result_code == code and where in info.value.desc


def test_a_future_start_is_kept(cfg: Config):
    later = datetime.now(UTC) + timedelta(minutes=30)
    assert _request(cfg, start_time=later, end_time=later + timedelta(hours=1)).start_at == later


def test_the_report_of_a_broadcast_counts_only_confirmed_terminals(cfg: Config):
    record = {"state": 4, "reason": "1 of 2 terminals not confirmed", "coverage": 0.5, "started_at": 1.0,
              "finished_at": 2.0, "request": {"targets": {"area_codes": ["340621105201"]}},
              "outcomes": [{"device_id": "t01", "outcome": "succeeded", "reason": ""},
                           {"device_id": "t02", "outcome": "unreachable", "reason": "no answer"}]}
    report = broadcast_report(record, PLATFORM + "202612030001", cfg)
    assert report.state_code == 4 and report.coverage_rate == 0.5 and report.counts == (0, 0, 0, 1)
    codes = {t.ebrid: t.state_code for t in report.terminals}
    t01, t02 = (next(d.ebrid for d in cfg.devices if d.id == i) for i in ("t01", "t02"))
    assert codes == {t01: 3, t02: 4}
