"""The county centre's configuration file (``ebc county --config county.yaml``).

Validated strictly (unknown keys and non-finite numbers are errors), and every problem is reported
at once with its key path, as the gateway's config does. Relative file names (password, CA, signing
key, map outline, the SQLite file) are relative to the config file, so a config directory can be
moved as a whole.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

BROKER_URL = re.compile(r"^(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?/?$")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
IDENT = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class CountyConfigError(Exception):
    """Every problem found in a county config file, one line each: ``key.path: what is wrong``."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Broker(BaseModel):
    """One broker node parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    url: str
    tls: bool
    host: str
    port: int


def parse_broker(url: str) -> Broker:
    match = BROKER_URL.match(url)
    if not match:
        raise ValueError(f"'{url}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[match["scheme"]]
    if not 1 <= port <= 65535:
        raise ValueError(f"'{url}': port must be 1..65535")
    return Broker(url=url, tls=match["scheme"] == "mqtts", host=match["host"].strip("[]"), port=port)


class CountyIdentity(Strict):
    id: str = Field(pattern=IDENT, description="Short id (in MQTT client ids and logs)")
    name: str = Field(min_length=1, max_length=100)
    area_code: str = Field(pattern=r"^\d{12}$", description="12-digit area code (行政区划代码)")


class CountyMqtt(Strict):
    brokers: list[str] = Field(min_length=1, description="Broker URLs, tried in turn")
    prefix: str = Field(default="ebc", pattern=r"^[^#+/\s$]+(/[^#+/\s]+)*$")
    client_id: str | None = Field(default=None, min_length=1, max_length=128,
                                  description="Set it for a persistent session (the broker queues events "
                                              "while the county restarts); default county-<id>-<random>, "
                                              "a clean session")
    username: str | None = Field(default=None, min_length=1)
    password_file: str | None = None
    ca_file: str | None = None
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                    description="Events, broadcasts and health through $share/<group>/… "
                                                "(several county instances share the stream)")
    keepalive_s: int = Field(default=30, ge=2, le=3600)

    @field_validator("brokers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        parsed = [parse_broker(url) for url in value]
        if len({b.tls for b in parsed}) > 1:
            raise ValueError("use either mqtt:// or mqtts:// for all brokers, not both")
        return value

    def addresses(self) -> list[Broker]:
        return [parse_broker(url) for url in self.brokers]


class Storage(Strict):
    url: str = Field(default="sqlite://county.sqlite3",
                     description="sqlite://<file> (relative to the config file; sqlite:///abs/path) or "
                                 "postgresql://user@host:port/db")
    retention_days: int = Field(default=90, ge=1, le=36500)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.startswith("sqlite://"):
            if not value.removeprefix("sqlite://"):
                raise ValueError("sqlite:// needs a file name, e.g. sqlite://county.sqlite3")
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        raise ValueError("must start with sqlite:// or postgresql://")

    @property
    def is_postgres(self) -> bool:
        return not self.url.startswith("sqlite://")


class ApiSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535, description="0: any free port (tests)")


class Signing(Strict):
    type: Literal["ed25519", "sm2"] = "ed25519"
    key_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    private_key_file: str


class MapSettings(Strict):
    outline_geojson: str | None = Field(default=None, description="GeoJSON file of the county outline")


class CountyConfig(Strict):
    county: CountyIdentity
    mqtt: CountyMqtt
    storage: Storage = Field(default_factory=Storage)
    api: ApiSettings = Field(default_factory=ApiSettings)
    signing: Signing | None = Field(default=None, description="The county's signing key (county-wide "
                                                              "broadcasts); none: monitoring only")
    map: MapSettings = Field(default_factory=MapSettings)

    _base: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base(self) -> Path:
        """The directory relative file names start from (the config file's)."""
        return self._base

    def file(self, name: str | None) -> Path | None:
        if name is None:
            return None
        path = Path(name)
        return path if path.is_absolute() else self._base / path

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (``sqlite:///abs`` is absolute, ``sqlite://rel`` relative to the config)."""
        path = self.file(self.storage.url.removeprefix("sqlite://"))
        assert path is not None
        return path

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"county-{self.county.id}-{secrets.token_hex(4)}"

    def read_password(self) -> str | None:
        path = self.file(self.mqtt.password_file)
        return None if path is None else path.read_text(encoding="utf-8").rstrip("\r\n")

    def outline(self) -> dict[str, Any] | None:
        """The county outline GeoJSON (checked at load), or None."""
        path = self.file(self.map.outline_geojson)
        return None if path is None else json.loads(path.read_text(encoding="utf-8"))


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _file_problems(cfg: CountyConfig) -> list[str]:
    problems = []
    files = {"mqtt.password_file": cfg.mqtt.password_file, "mqtt.ca_file": cfg.mqtt.ca_file,
             "signing.private_key_file": cfg.signing.private_key_file if cfg.signing else None,
             "map.outline_geojson": cfg.map.outline_geojson}
    for key, name in files.items():
        path = cfg.file(name)
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{key}: cannot read {path}")
    if cfg.mqtt.password_file and not cfg.mqtt.username:
        problems.append("mqtt.password_file: a password needs mqtt.username")
    if cfg.mqtt.ca_file and not cfg.mqtt.addresses()[0].tls:
        problems.append("mqtt.ca_file: needs mqtts:// brokers")
    outline = cfg.file(cfg.map.outline_geojson)
    if outline is not None and os.access(outline, os.R_OK):
        try:
            doc = json.loads(outline.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"map.outline_geojson: {outline} is not valid JSON ({exc})")
        else:
            if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
                problems.append(f"map.outline_geojson: {outline} is not a GeoJSON object (no 'type')")
    return problems


def parse_county_config(data: object, source: str = "<config>", base: Path | None = None) -> CountyConfig:
    """Validate a loaded YAML document; raises CountyConfigError listing every problem."""
    if not isinstance(data, dict):
        raise CountyConfigError(source, ["(top level): expected a mapping of sections"])
    try:
        cfg = CountyConfig.model_validate(data)
    except ValidationError as exc:
        raise CountyConfigError(source, [f"{_key_path(e['loc'])}: {_message(e)}" for e in exc.errors()]) \
            from None
    cfg._base = (base or Path.cwd()).resolve()
    problems = _file_problems(cfg)
    if problems:
        raise CountyConfigError(source, problems)
    return cfg


def load_county_config(path: str | Path) -> CountyConfig:
    """Read and validate a county config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CountyConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CountyConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_county_config(data, str(path), path.parent)
