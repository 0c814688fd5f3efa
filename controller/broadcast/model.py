"""What a broadcast is: the request, its priority, its states and per-terminal outcomes.

One vocabulary shared by the engine, the journal, the API and (later) MQTT and CAP alerts.
Priority follows DESIGN §3 (应急广播 practice): emergency before drill before daily
(应急优先于日常), then higher source level before lower (上级优先于下级), then the more severe
emergency first. A strictly higher priority pre-empts; equal priority queues.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.speech.text import MAX_TEXT_CHARS as MAX_TEXT_CHARS  # re-exported for its users
from controller.speech.text import SpeechText

AREA_CODE = re.compile(r"^\d{12}$")
AUDIO_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""What an uploaded clip's id may look like (the upload makes ``clip-<hash>``): never a path."""


class BroadcastClass(StrEnum):
    EMERGENCY = "emergency"
    DRILL = "drill"
    DAILY = "daily"


CLASS_RANK = {BroadcastClass.EMERGENCY: 3, BroadcastClass.DRILL: 2, BroadcastClass.DAILY: 1}


class SourceLevel(IntEnum):
    """Who ordered it; higher value outranks lower (上级优先于下级)."""

    VILLAGE = 1
    TOWNSHIP = 2
    COUNTY = 3
    CITY = 4
    PROVINCE = 5
    NATIONAL = 6


class Tone(StrEnum):
    """Attention signal played before the speech (DESIGN §3)."""

    NONE = "none"
    CHIME = "chime"                          # two-tone chime before announcements
    SIREN = "siren"                          # rising/falling siren, severity 1–2
    AIR_DEFENCE_WARNING = "air_defence_warning"  # 预先警报: 36 s on / 24 s off × 3
    AIR_RAID = "air_raid"                    # 空袭警报: 6 s on / 6 s off × 15
    ALL_CLEAR = "all_clear"                  # 解除警报: 3 min continuous


class BroadcastState(IntEnum):
    """Broadcast state codes (DESIGN §3)."""

    NOT_PROCESSED = 0
    WAITING = 1
    PLAYING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


FINAL_STATES = frozenset({BroadcastState.SUCCEEDED, BroadcastState.FAILED, BroadcastState.CANCELLED})


class TerminalOutcome(StrEnum):
    """A device's outcome for one broadcast, judged from read-back evidence
    (controller/broadcast/evidence.py)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"      # audio confirmed throughout at least one complete repetition
    PARTIAL = "partial"          # audible part of the time (joined late, dropped out), no whole repetition
    FAILED = "failed"            # answered, but never confirmed audible (reason says why)
    UNREACHABLE = "unreachable"  # no read-back answered: nothing known of what it played


class Targets(BaseModel):
    """Which terminals play. ``all`` or any union of zones, device ids and area codes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [  # what _something() checks
        {"properties": {"all": {"const": True}}, "required": ["all"]},
        *({"properties": {key: {"minItems": 1}}, "required": [key]}
          for key in ("zones", "devices", "area_codes")),
    ]})
    all: bool = Field(default=False, description="Every terminal of this gateway")
    zones: list[Annotated[int, Field(ge=1, le=8)]] = Field(
        default_factory=list, description="Speaker zones (1-8) on every terminal")
    devices: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, description="Device ids")
    area_codes: list[str] = Field(default_factory=list,
                                  description="12-digit area codes; trailing zeros cover the whole region")

    @field_validator("area_codes")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not AREA_CODE.match(code):
                raise ValueError(f"'{code}' is not a 12-digit area code")
        return value

    @model_validator(mode="after")
    def _something(self) -> Targets:
        if not (self.all or self.zones or self.devices or self.area_codes):
            raise ValueError("name at least one target: all, zones, devices or area_codes")
        return self


class BroadcastRequest(BaseModel):
    """A request to play something, from a duty officer, the county, a feed or a schedule."""

    broadcast_class: BroadcastClass = Field(alias="class", description="emergency, drill or daily")
    severity: int | None = Field(default=None, ge=1, le=4,
                                 description="Emergency level 1 特别重大/红 … 4 一般/蓝 (emergency only)")
    source_level: SourceLevel = Field(default=SourceLevel.TOWNSHIP, description="Who ordered it")
    source: str = Field(default="", max_length=200, description="Sender name, e.g. 刘桥镇应急办")
    title: str = Field(default="", max_length=200)
    targets: Targets
    text: SpeechText | None = Field(default=None, description="Text to speak; control and invisible "
                                    "characters are removed, and it must hold a letter or digit")
    audio_id: str | None = Field(default=None, pattern=AUDIO_ID,
                                 description="An uploaded audio clip (POST /audio) instead of text")
    language: Literal["zh", "en"] = "zh"
    tone: Tone | None = Field(default=None, description="Attention signal; default by class and severity")
    repeat: int = Field(default=1, ge=1, le=10, description="How many times the program plays")
    gap_s: float = Field(default=3.0, ge=0, le=600, description="Silence between repeats")
    volume: int | None = Field(default=None, ge=0, le=100,
                               description="Volume for non-emergency broadcasts (emergency is always max)")
    start_at: datetime | None = Field(default=None, description="Do not start before (default: now)")
    expires_at: datetime | None = Field(default=None, description="Never play after this time")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    """Floats must be finite: NaN compares false with every bound, so its message would mislead."""

    @field_validator("start_at", "expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-28T03:15:00+08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BroadcastRequest:
        if (self.text is None) == (self.audio_id is None):
            raise ValueError("give either text or audio_id")
        if self.broadcast_class is BroadcastClass.EMERGENCY and self.severity is None:
            raise ValueError("severity (1-4) is required for an emergency broadcast")
        if self.broadcast_class is not BroadcastClass.EMERGENCY and self.severity is not None:
            raise ValueError("severity applies to emergency broadcasts only")
        if self.start_at and self.expires_at and self.expires_at <= self.start_at:
            raise ValueError("expires_at must be after start_at")
        return self

    @property
    def effective_tone(self) -> Tone:
        """The chosen tone, or the default: siren for severity 1–2, chime otherwise."""
        if self.tone is not None:
            return self.tone
        if self.broadcast_class is BroadcastClass.EMERGENCY and (self.severity or 4) <= 2:
            return Tone.SIREN
        return Tone.CHIME

    @property
    def priority(self) -> tuple[int, int, int]:
        """Sort key, larger plays first: class, then source level, then severity (1 is most severe)."""
        severity_rank = 5 - self.severity if self.severity else 0
        return (CLASS_RANK[self.broadcast_class], int(self.source_level), severity_rank)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at
