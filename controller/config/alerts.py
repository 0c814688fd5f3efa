"""The ``alerts`` section: CAP feeds, the township's plan (预案) as rules, and announcement templates."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from controller.alerts.cap import Severity, Status
from controller.config.common import IDENT, Strict

TEMPLATE_FIELDS = ("headline", "description", "instruction", "event", "villages", "guidance", "sender",
                   "area", "level", "colour", "expires")
"""Placeholders an announcement template may use (docs/alerts.md)."""

DEFAULT_TEMPLATE = ("{sender}发布{event}预警。{headline}。{description}{instruction}"
                    "影响范围：{villages}。{guidance}")

SourceLevelName = Literal["village", "township", "county", "city", "province", "national"]
"""``SourceLevel`` (controller/broadcast/model.py) by name, as YAML writes it: the enum's values are its
ranks, so the enum itself would ask for numbers (tests/test_config.py keeps the two in step)."""

RuleAction = Literal["broadcast", "approve", "record"]
"""``Action`` of controller/alerts/rules.py, which imports this package (hence not the enum itself)."""

AlertTone = Literal["none", "chime", "siren"]
"""The ``Tone``s an alert may start with (not the air-raid signals). pydantic words an error for a
``Literal`` of enum members as ``<Tone.NONE: 'none'>``, so the values are spelt out."""


class AlertMatch(Strict):
    """When a rule applies: every list given must contain the alert's value (an empty list matches all)."""

    event_types: list[str] = Field(default_factory=list,
                                   description="GB/T 35561 codes (11B03) or event texts (暴雨); "
                                               "a code prefix ending in '*' matches a family, e.g. 11B*")
    severity: list[Severity] = Field(
        default_factory=list, description="CAP severity; colours map Red→Extreme … Blue→Minor")
    # cap.py keeps urgency and certainty as the alert's text (no enum): the CAP values are spelt out here
    urgency: list[Literal["Immediate", "Expected", "Future", "Past", "Unknown"]] = Field(default_factory=list)
    certainty: list[Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]] = Field(
        default_factory=list)
    status: list[Status] = Field(default_factory=lambda: [Status.ACTUAL],
                                 description="Default: real alerts only")
    senders: list[str] = Field(default_factory=list,
                               description="CAP sender, senderName or senderCode; any one equal matches")


class AlertRule(Strict):
    """One line of the township's plan (预案): which alerts do what. The first matching rule wins."""

    id: str = Field(pattern=IDENT)
    match: AlertMatch = AlertMatch()
    action: RuleAction = Field(
        description="broadcast at once; queue for duty-officer approval; or record only")
    on_timeout: Literal["play", "expire"] = Field(
        default="expire", description="approve: what happens when nobody decides in time")
    approval_timeout_s: float = Field(default=600, gt=0, le=86400,
                                      description="approve: how long a pending alert waits for a decision")
    drill: bool = Field(default=False,
                        description="Play Test/Exercise alerts as a drill (never as emergency)")
    tone: AlertTone | None = Field(
        default=None, description="Attention signal; default siren for level 1–2, chime otherwise")
    repeat: int = Field(default=2, ge=1, le=10, description="How many times the announcement plays")
    source_level: SourceLevelName | None = Field(
        default=None, description="Who the alert counts as (priority); default: the feed's, else county")


class AlertFeed(Strict):
    """A source of CAP documents the gateway polls."""

    id: str = Field(pattern=IDENT)
    type: Literal["url", "index", "directory"] = Field(
        description="url: one CAP document; index: an Atom/RSS list of CAP links; "
                    "directory: *.xml/*.cap files")
    url: str | None = Field(default=None, description="url/index: http(s) address")
    path: str | None = Field(default=None, description="directory: folder to watch (relative to this file)")
    interval_s: float = Field(default=60, ge=1, le=86400, description="Time between polls")
    timeout_s: float = Field(default=10, gt=0, le=300, description="Per HTTP request")
    max_backoff_s: float = Field(default=900, ge=1, le=86400,
                                 description="Longest wait after repeated failures (doubles up to it)")
    source_level: SourceLevelName = Field(
        default="county", description="Who this feed's alerts count as, for priority")

    @model_validator(mode="after")
    def _where(self) -> AlertFeed:
        if self.type in ("url", "index"):
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError(f"type {self.type} needs url: an http:// or https:// address")
        elif not self.path:
            raise ValueError("type directory needs path")
        return self


class AlertsSettings(Strict):
    """CAP alerts from weather and warning feeds (docs/alerts.md): feeds, rules (预案), templates."""

    languages: list[str] = Field(default_factory=lambda: ["zh-CN", "en-US"],
                                 description="Info block preference, first wins; 'zh' matches zh-CN")
    feeds: list[AlertFeed] = Field(default_factory=list)
    mqtt_topics: list[str] = Field(default_factory=list,
                                   description="Topics on the county broker carrying CAP documents")
    rules: list[AlertRule] = Field(default_factory=list, description="First match wins")
    default_action: Literal["approve", "record"] = Field(
        default="approve", description="For a real alert no rule matches")
    default_approval_timeout_s: float = Field(default=600, gt=0, le=86400)
    templates: dict[str, str] = Field(
        default_factory=dict, description="Announcement text per event type (GB/T 35561 code or event "
                                          "text), key 'default' for the rest; placeholders in {braces}")
    guidance: dict[str, str] = Field(default_factory=dict,
                                     description="Escape guidance (逃生明白纸) per village name")

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        import string

        for key, text in value.items():
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
            except ValueError as exc:
                raise ValueError(f"template '{key}': {exc}") from None
            bad = [n for n in names if n not in TEMPLATE_FIELDS]
            if bad:
                shown = ", ".join("{" + b + "}" for b in bad)
                raise ValueError(f"template '{key}': unknown placeholder(s) {shown} "
                                 f"(known: {', '.join(TEMPLATE_FIELDS)})")
        return value

    @model_validator(mode="after")
    def _unique(self) -> AlertsSettings:
        for what, ids in (("rule", [r.id for r in self.rules]), ("feed", [f.id for f in self.feeds])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} id(s): {', '.join(dupes)}")
        return self
