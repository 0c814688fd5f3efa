"""The ``county`` and ``mqtt`` sections: the link to the county centre (controller/uplink/).

``mqtt`` says how events and health go up; ``county`` whose signed commands come down.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from controller.config.common import KeySource, Strict

CountyCommand = Literal["broadcast", "cancel", "rebirth", "line_check", "alert"]
"""Commands the county centre may send on ``<prefix>/<gw>/cmd/<name>`` (docs/county-commands.md)."""


class CountyKey(KeySource):
    """One public key of the county centre; a command names it in ``key_id``."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                    description="Key id the county puts in a command's key_id")
    # signing.KeyType, spelt out: importing signing would load cryptography for every config read
    type: Literal["ed25519", "sm2"] = Field(description="ed25519, or sm2 (SM2 over SM3, 国密)")
    commands: list[CountyCommand] | None = Field(
        default=None, description="Commands this key may give (default: all); least privilege")

class CountySettings(Strict):
    """Signed commands from the county centre: whose keys, how fresh, how long nonces are kept."""

    keys: list[CountyKey] = Field(min_length=1, description="The county's public keys")
    max_skew_s: float = Field(default=300, gt=0, le=3600,
                              description="Largest accepted difference between a command's ts and now")
    nonce_ttl_s: float | None = Field(default=None,
                                      description="How long a seen nonce is refused (≥ 2 × max_skew_s; "
                                                  "default 2 × max_skew_s)")
    command_ttl_s: float = Field(default=86400, gt=0,
                                 description="How long an executed broadcast/cancel/alert is remembered by "
                                             "correlation id, so a retry is answered, not run again "
                                             "(≥ nonce_ttl_s)")

    @model_validator(mode="after")
    def _consistent(self) -> CountySettings:
        ids = [k.id for k in self.keys]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate key id(s): {', '.join(dupes)}")
        if self.nonce_ttl_s is not None and self.nonce_ttl_s < 2 * self.max_skew_s:
            raise ValueError(f"nonce_ttl_s must be at least 2 × max_skew_s ({2 * self.max_skew_s:g} s), "
                             f"or a replayed command could be accepted again")
        if self.command_ttl_s < self.nonce_ttl:
            raise ValueError(f"command_ttl_s must be at least nonce_ttl_s ({self.nonce_ttl:g} s), or a "
                             f"retry of a command could run it again while it is still valid")
        return self

    @property
    def nonce_ttl(self) -> float:
        return self.nonce_ttl_s if self.nonce_ttl_s is not None else 2 * self.max_skew_s

    def key_problems(self, base: Path) -> list[str]:
        """Every key that cannot be read or is not a valid key of its type (for config check)."""
        from controller.uplink.signing import KeyFormatError, load_public_key  # cryptography only when used

        problems = []
        for i, key in enumerate(self.keys):
            where = f"county.keys[{i}]({key.id})"
            try:
                load_public_key(key.type, key.key_text(base))
            except OSError as exc:
                problems.append(f"{where}.public_key_file: cannot read {key.public_key_file}: {exc.strerror}")
            except KeyFormatError as exc:
                field = "public_key" if key.public_key is not None else "public_key_file"
                problems.append(f"{where}.{field}: {exc}")
        return problems


BROKER_URL = re.compile(r"^(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?/?$")
DEFAULT_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerAddress(BaseModel):
    """One broker node parsed from ``mqtt://host:port`` / ``mqtts://host:port``."""

    url: str
    tls: bool
    host: str
    port: int


def parse_broker_url(url: str) -> BrokerAddress:
    match = BROKER_URL.match(url)
    if not match:
        raise ValueError(f"'{url}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
    port = int(match["port"]) if match["port"] else DEFAULT_MQTT_PORTS[match["scheme"]]
    if not 1 <= port <= 65535:
        raise ValueError(f"'{url}': port must be 1..65535")
    return BrokerAddress(url=url, tls=match["scheme"] == "mqtts", host=match["host"].strip("[]"), port=port)


class MqttSettings(Strict):
    """Reporting to the county centre over MQTT (controller/uplink/mqtt.py; topics in docs/mqtt.md)."""

    brokers: list[str] = Field(min_length=1,
                               description="Broker URLs (mqtt://host:port or mqtts://host:port), tried in "
                                           "turn: any node of a cluster will do")
    prefix: str = Field(default="ebc", pattern=r"^[^#+/\s]+(/[^#+/\s]+)*$",
                        description="First topic level(s): <prefix>/<gateway id>/...")
    client_id: str | None = Field(default=None, min_length=1, max_length=128,
                                  description="MQTT client id (default: the gateway id)")
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, description="Prefer password_file: config files get copied")
    password_file: str | None = Field(default=None, description="File holding the password (relative to "
                                                                "this file); trailing newline ignored")
    ca_file: str | None = Field(default=None, description="mqtts: CA bundle that signed the broker's "
                                                          "certificate (default: the system's)")
    cert_file: str | None = Field(default=None, description="mqtts: client certificate (PEM)")
    key_file: str | None = Field(default=None,
                                 description="mqtts: client private key (PEM), if not in cert_file")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive; the Will fires after "
                                                                    "1.5 × this without traffic")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=300, description="First wait after a failure")
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait (doubles up to it)")
    health_interval_s: float = Field(default=60.0, ge=1, le=86400, description="Period of the health topic")
    inflight: int = Field(default=100, ge=1, le=10000,
                          description="Outbox messages sent but not yet acknowledged, at most")
    outbox_max_rows: int = Field(default=100_000, ge=100, le=10_000_000,
                                 description="Outbox bound; over it health snapshots, then the oldest "
                                             "events are dropped (and reported)")
    outbox_max_health_rows: int = Field(default=1_000, ge=0, le=1_000_000,
                                        description="Unsent health snapshots kept, newest")

    @field_validator("brokers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        parsed = [parse_broker_url(url) for url in value]
        if len({b.tls for b in parsed}) > 1:
            raise ValueError("use either mqtt:// or mqtts:// for all brokers, not both")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give at most one of password and password_file")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        if not self.addresses()[0].tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file and cert_file need mqtts:// brokers")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def addresses(self) -> list[BrokerAddress]:
        return [parse_broker_url(url) for url in self.brokers]

    def file(self, name: str, base: Path) -> Path | None:
        """The path of file setting ``name`` (relative paths are relative to ``base``)."""
        value = getattr(self, name)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else base / path

    def read_password(self, base: Path) -> str | None:
        if self.password_file is None:
            return self.password
        path = self.file("password_file", base)
        assert path is not None
        return path.read_text(encoding="utf-8").rstrip("\r\n")

    def file_problems(self, base: Path) -> list[str]:
        """Files named in this section that cannot be read (for config check)."""
        problems = []
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            path = self.file(name, base)
            if path is not None and not os.access(path, os.R_OK):
                problems.append(f"mqtt.{name}: cannot read {path}")
        return problems
