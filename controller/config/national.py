"""The ``national_platform`` section: the gateway as a node under the county's emergency-broadcast
platform, speaking the national interface (GD/J 083-2018 / GY/T 384-2023; docs/national-platform.md).

Everything the public record leaves open (the URL path, the heartbeat period, the auxiliary type
codes, the signature's byte encoding and user id, the EventType plan) is a setting here, with the
choice most vendors make as its default, rather than a guess in the code.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from controller.broadcast.model import BroadcastClass, Tone
from controller.config.common import KeySource, Strict

EBRID_PATTERN = r"^\d{23}$"


class NationalListen(Strict):
    """Where the upper platform posts its EBD packages to this gateway."""

    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(default=7080, ge=1, le=65535)
    path: str = Field(default="/ebd", pattern=r"^/[A-Za-z0-9._~/-]*$",
                      description="URL path (not standardised; vendors use e.g. /linkage/access)")
    allow: list[str] = Field(min_length=1, description="IP addresses or networks (CIDR) that may post; "
                                                       "everything else gets 403")
    public_url: str | None = Field(default=None, pattern=r"^https?://\S+$",
                                   description="The URL the platform reaches this listener by (announced as "
                                               "SRC/URL; default: built from host, port and path)")
    tls_cert_file: str | None = Field(default=None, description="PEM certificate: serve HTTPS")
    tls_key_file: str | None = Field(default=None, description="PEM private key of tls_cert_file")
    max_package_mb: float = Field(default=64, gt=0, le=512, description="Largest EBDT tar accepted")
    max_members: int = Field(default=16, ge=2, le=256, description="Most files in one EBDT tar")

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not an IP address or network like 10.3.0.0/16") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> NationalListen:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        return self


class PlatformKey(KeySource):
    """One SM2 public key of the upper platform; a signature file names it by its CertSN."""

    cert_sn: str = Field(min_length=1, max_length=64, description="CertSN the platform's signatures carry")


class UpperPlatform(Strict):
    """The county platform above this gateway: who it is, where reports go, whose signatures count."""

    ebrid: str = Field(pattern=EBRID_PATTERN, description="The platform's 23-digit resource code")
    url: str = Field(pattern=r"^https?://\S+$", description="Where heartbeats and reports are posted")
    keys: list[PlatformKey] = Field(min_length=1, description="The platform's SM2 public keys")
    user_id: str = Field(default="1234567812345678", min_length=1, max_length=64,
                         description="SM2 user id the platform signs with (GM/T 0009 default)")
    verify_tls: bool = Field(default=True, description="Check the platform's HTTPS certificate")
    ca_file: str | None = Field(default=None, description="CA bundle for the platform's HTTPS certificate")


class NationalSigning(Strict):
    """How this gateway signs what it sends (SM2 over SM3 in software; a crypto card can replace it)."""

    private_key_file: str = Field(description="SM2 private key: 64 hex digits or PEM (relative to this "
                                              "file; readable by ebc only)")
    cert_sn: str = Field(min_length=1, max_length=64, description="CertSN written into signature files")
    user_id: str = Field(default="1234567812345678", min_length=1, max_length=64,
                         description="SM2 user id hashed into Z (GM/T 0009 default)")
    form: Literal["new", "old"] = Field(default="new", description="Signature file written: new (CertSN, "
                                        "SM2-SM3) or old (SignatureCert, SignatureTime); both are read")
    value_encoding: Literal["rs", "der"] = Field(default="rs", description="r‖s (64 bytes) or DER")
    text_encoding: Literal["base64", "hex"] = Field(default="base64")


class EventPlan(Strict):
    """What an EBM of one EventType plays as (the township's plan, 预案)."""

    broadcast_class: BroadcastClass = Field(alias="class", description="emergency, drill or daily")
    tone: Tone | None = Field(default=None, description="Attention signal (default by class and severity)")
    repeat: int | None = Field(default=None, ge=1, le=10, description="Times the program plays")


class NationalPlatformSettings(Strict):
    """The national interface: listener, upper platform, signing, and how EBMs map to broadcasts."""

    listen: NationalListen
    upper: UpperPlatform
    signing: NationalSigning
    heartbeat_s: float = Field(default=45, ge=1, le=3600,
                               description="ConnectionCheck period (not standardised; vendors: 5 s, 45 s)")
    verify_heartbeats: bool = Field(default=False,
                                    description="Also require a valid signature on incoming heartbeats")
    auxiliary_types: dict[str, Literal["mp3", "wav"]] = Field(
        default_factory=lambda: {"2": "mp3", "3": "wav"},
        description="AuxiliaryType code → format (vendors disagree; default 2 = MP3, 3 = WAV)")
    event_types: dict[str, EventPlan] = Field(
        default_factory=dict,
        description="EventType code or prefix → plan; the longest matching prefix wins, else emergency")
    test_severities: list[int] = Field(default_factory=lambda: [15],
                                       description="Severity codes that mean a test: played as a drill")
    unknown_severity_as: int = Field(default=4, ge=1, le=4,
                                     description="Our severity for Severity 0 (unknown)")
    repeat: int = Field(default=2, ge=1, le=10, description="Times an EBM program plays unless its plan says")
    retry_initial_s: float = Field(default=1.0, gt=0, le=60, description="First retry after a failed post")
    retry_max_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait between retries")
    outbox_max_rows: int = Field(default=100_000, ge=100, description="Reports kept while the link is down")

    @model_validator(mode="after")
    def _retry_order(self) -> NationalPlatformSettings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self

    def plan_for(self, event_type: str) -> EventPlan | None:
        """The plan of the longest configured prefix of ``event_type``, if any."""
        matches = [code for code in self.event_types if event_type.startswith(code)]
        return self.event_types[max(matches, key=len)] if matches else None
