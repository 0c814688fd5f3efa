"""The ``broadcast`` and ``schedules`` sections: how broadcasts play, console templates, timed programs.

Templates and schedule requests follow the rules of a broadcast request (controller/broadcast/model.py):
a template here, a schedule's request in checks.py (its errors then carry the request's key path).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.broadcast.model import BroadcastClass, BroadcastRequest, Tone
from controller.config.common import IDENT, Strict
from controller.speech.text import SpeechText


class BroadcastTemplate(Strict):
    """A ready-made announcement the web console offers: one click fills class, severity, tone, repeat
    and text, so a duty officer at 3 a.m. only picks the targets (the request minus its targets)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = Field(pattern=IDENT, description="Lower-case id: letters, digits, - and _")
    title: str = Field(min_length=1, max_length=200, description="What the console lists, e.g. 防汛紧急通知")
    broadcast_class: BroadcastClass = Field(alias="class", description="emergency, drill or daily")
    severity: int | None = Field(default=None, ge=1, le=4,
                                 description="Emergency level 1 特别重大/红 … 4 一般/蓝 (emergency only)")
    tone: Tone | None = Field(default=None, description="Attention signal; default by class and severity")
    repeat: int = Field(default=1, ge=1, le=10, description="How many times the program plays")
    text: SpeechText = Field(description="Text to speak (cleaned and checked as in a broadcast request)")
    language: Literal["zh", "en"] = "zh"

    @model_validator(mode="after")
    def _playable(self) -> BroadcastTemplate:
        """The same rules as a broadcast request (severity only for emergencies, text not blank)."""
        self.request({"all": True})
        return self

    def request(self, targets: dict[str, Any]) -> BroadcastRequest:
        """This template as a broadcast request to ``targets``; ValueError says what is wrong."""
        data = {**self.model_dump(by_alias=True, exclude={"id"}), "targets": targets}
        try:
            return BroadcastRequest.model_validate(data)
        except ValidationError as exc:
            raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ")
                                       for e in exc.errors())) from None


class BroadcastSettings(Strict):
    daily_volume: int = Field(default=70, ge=0, le=100, description="Volume when a request names none")
    ready_timeout_s: float = Field(default=15.0, gt=0, le=120,
                                   description="Longest wait for amplifiers to report ready")
    ready_hold_s: float = Field(default=2.0, ge=0, le=30,
                                description="After the first terminal is ready, how long the program "
                                            "(its attention tone) waits for the others still warming up")
    prior_state_max_age_s: float = Field(default=90.0, ge=0, le=3600,
                                         description="Journal a terminal's prior state from the health "
                                                     "polls' settings when they are at most this old and "
                                                     "nothing wrote it since (0: read it first, always)")
    success_threshold: float = Field(default=1.0, gt=0, le=1,
                                     description="Share of the reachable targeted devices that must play a "
                                                 "complete repetition for the broadcast to succeed")
    evidence_retention_days: int = Field(default=90, ge=1, le=3650,
                                         description="How long played program audio is kept")
    templates: list[BroadcastTemplate] = Field(default_factory=list,
                                               description="Ready-made announcements the web console offers")

    @field_validator("templates")
    @classmethod
    def _unique_ids(cls, value: list[BroadcastTemplate]) -> list[BroadcastTemplate]:
        seen: set[str] = set()
        for template in value:
            if template.id in seen:
                raise ValueError(f"duplicate template id '{template.id}'")
            seen.add(template.id)
        return value


class Schedule(Strict):
    """A broadcast on a calendar: daily programs and routine system tests."""

    id: str = Field(pattern=IDENT)
    cron: str = Field(description="Five-field cron expression in gateway local time, e.g. '0 7 * * *'")
    enabled: bool = True
    request: dict[str, Any] = Field(description="The broadcast request, as for POST /api/v1/broadcasts")
