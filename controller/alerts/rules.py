"""The township's plan (预案) applied to one CAP alert: play it, ask the duty officer, or only record it.

Pure functions over the config and the parsed alert, so every "why did (or didn't) this play" is
answerable from a unit test and from the ``reason`` a duty officer reads in the inbox.

:func:`decide` first applies hard gates no rule can override, because a wrong emergency broadcast
does harm of its own (people stop trusting the horn): acknowledgements, errors and cancellations
announce nothing; Draft and System messages never play; an alert with nothing to act on or already
expired never plays; Test and Exercise play only as a *drill*, and only when a rule explicitly lists
that status with ``drill: true``. Then the rules are tried in order and the first match wins; no
match falls back to ``alerts.default_action``.

:func:`compose_text` turns the alert into what is spoken, from a Chinese template per event type
(CAP text passes :func:`clean`, which strips HTML so tags and entities are never read aloud);
:func:`build_request` makes the broadcast request the engine plays.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Literal

from controller.alerts.area import AreaMatch
from controller.alerts.cap import EMERGENCY_LEVEL, SEVERITY_BY_COLOUR, CapAlert, Info, MsgType, Status
from controller.broadcast.model import MAX_TEXT_CHARS, BroadcastClass, BroadcastRequest, SourceLevel, Tone
from controller.config import DEFAULT_TEMPLATE, AlertMatch, AlertRule, AlertsSettings, Config
from controller.speech.markup import speech_text

TITLE_MAX = 200
SOURCE_MAX = 200


class Action(StrEnum):
    BROADCAST = "broadcast"
    APPROVE = "approve"
    RECORD = "record"


@dataclass(frozen=True)
class Decision:
    """What to do with one alert and, in plain words, why (shown to the duty officer and audited)."""

    action: Action
    rule_id: str | None
    reason: str
    drill: bool = False
    """Play as a drill (Test/Exercise under a drill rule), never as an emergency."""
    on_timeout: Literal["play", "expire"] = "expire"
    approval_timeout_s: float = 600
    tone: str | None = None
    repeat: int = 2
    source_level: str | None = None


# ---------------------------------------------------------------------------------- decide

_SILENT_TYPES = {
    MsgType.ACK: "msgType Ack: an acknowledgement, nothing to announce",
    MsgType.ERROR: "msgType Error: an error report about another message, nothing to announce",
    MsgType.CANCEL: "msgType Cancel: it stops the alerts it references; nothing new to announce",
}
_NEVER_PLAYED = {
    Status.DRAFT: "status Draft: a draft is never played",
    Status.SYSTEM: "status System: a system message is never played",
}
_DRILL_STATUSES = (Status.TEST, Status.EXERCISE)


def decide(settings: AlertsSettings, alert: CapAlert, info: Info | None, now: datetime) -> Decision:
    """Apply the hard gates, then the first matching rule, then the default action.

    ``info`` is the block chosen for this gateway's languages (None when the alert has none);
    ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if alert.msg_type in _SILENT_TYPES:
        return _record(_SILENT_TYPES[alert.msg_type])
    if alert.status in _NEVER_PLAYED:
        return _record(_NEVER_PLAYED[alert.status])
    if info is None:
        return _record("no info block: the alert says nothing to announce")
    if info.expires is not None and info.expires <= now:
        return _record(f"expired at {_when(info.expires)}: an expired alert is never played")
    found = _first_rule(settings.rules, alert, info)
    if alert.status in _DRILL_STATUSES:
        return _drill_decision(alert.status, found)
    if found is None:
        return _default(settings, info)
    rule, matched = found
    return _rule_decision(rule, f"rule '{rule.id}' matched ({matched})", drill=False)


def _record(reason: str, rule_id: str | None = None) -> Decision:
    return Decision(Action.RECORD, rule_id, reason)


def _drill_decision(status: Status, found: tuple[AlertRule, str] | None) -> Decision:
    """Test/Exercise: only a rule that lists the status and says ``drill: true`` may play it, as a drill."""
    if found is None:
        return _record(f"status {status}: never played as a real emergency (no rule for {status} with "
                       f"drill: true matches)")
    rule, matched = found
    if rule.action == Action.RECORD:
        return _rule_decision(rule, f"status {status}: rule '{rule.id}' matched ({matched})", drill=False)
    if not rule.drill:
        return _record(f"status {status}: rule '{rule.id}' matched ({matched}) but is not a drill rule "
                       f"(drill: true), and a {status} is never played as a real emergency", rule.id)
    return _rule_decision(rule, f"status {status}: rule '{rule.id}' matched ({matched}) and plays it as a "
                                f"drill, never as a real emergency", drill=True)


def _rule_decision(rule: AlertRule, why: str, *, drill: bool) -> Decision:
    action = Action(rule.action)
    return Decision(action, rule.id, f"{why}: {_what(action, rule.approval_timeout_s, rule.on_timeout)}",
                    drill=drill and action is not Action.RECORD, on_timeout=rule.on_timeout,
                    approval_timeout_s=rule.approval_timeout_s, tone=rule.tone, repeat=rule.repeat,
                    source_level=rule.source_level)


def _default(settings: AlertsSettings, info: Info) -> Decision:
    action = Action(settings.default_action)
    what = _what(action, settings.default_approval_timeout_s, "expire")
    return Decision(action, None, f"no rule matched ({_describe(info)}): default action {action}, {what}",
                    approval_timeout_s=settings.default_approval_timeout_s, on_timeout="expire")


def _what(action: Action, timeout_s: float, on_timeout: str) -> str:
    if action is Action.BROADCAST:
        return "broadcast at once"
    if action is Action.APPROVE:
        then = "plays" if on_timeout == "play" else "expires"
        return f"waits for duty-officer approval (if nobody decides within {timeout_s:g} s it {then})"
    return "record only"


def _first_rule(rules: list[AlertRule], alert: CapAlert, info: Info) -> tuple[AlertRule, str] | None:
    """The first rule whose match holds, with what matched in words."""
    for rule in rules:
        matched = _matches(rule.match, alert, info)
        if matched is not None:
            return rule, matched
    return None


def _matches(m: AlertMatch, alert: CapAlert, info: Info) -> str | None:
    """What of ``m`` the alert satisfied (e.g. "event type 11B03, severity Extreme"), or None."""
    said: list[str] = []
    if str(alert.status) not in m.status:
        return None
    if m.event_types:
        hit = next((w for p in m.event_types if (w := _event_hit(p, info)) is not None), None)
        if hit is None:
            return None
        said.append(hit)
    if m.severity:
        if str(info.severity) not in m.severity:
            return None
        said.append(f"severity {_severity_words(info)}")
    for name, wanted, value in (("urgency", m.urgency, info.urgency),
                                ("certainty", m.certainty, info.certainty)):
        if wanted:
            if value.strip().lower() not in {w.lower() for w in wanted}:
                return None
            said.append(f"{name} {value.strip()}")
    if m.senders:
        wanted_senders = {s.strip() for s in m.senders}
        sender = next((s for s in (alert.sender, info.sender_name, alert.sender_code or "")
                       if s.strip() and s.strip() in wanted_senders), None)
        if sender is None:
            return None
        said.append(f"sender '{sender.strip()}'")
    if m.status != ["Actual"]:
        said.append(f"status {alert.status}")
    return ", ".join(said) or f"it matches every {alert.status} alert"


def _event_hit(pattern: str, info: Info) -> str | None:
    """Match one ``event_types`` entry: a code (or ``11B*`` family) or an event text, in words."""
    pattern = pattern.strip()
    codes = [c for c in (info.event_type, *(v for _, v in info.event_codes)) if c]
    if pattern.endswith("*"):
        family = pattern[:-1].upper()
        code = next((c for c in codes if c.upper().startswith(family)), None)
        return f"event type {code} in {pattern}" if code else None
    code = next((c for c in codes if c.upper() == pattern.upper()), None)
    if code:
        return f"event type {code}"
    if pattern and pattern in info.event:
        if pattern == info.event:
            return f"event '{info.event}'"
        return f"event '{info.event}' contains '{pattern}'"
    return None


def _severity_words(info: Info) -> str:
    return f"{info.severity} ({info.severity_colour})" if info.severity_colour else str(info.severity)


def _describe(info: Info) -> str:
    event = f"event type {info.event_type} '{info.event}'" if info.event_type else f"event '{info.event}'"
    return f"{event}, severity {_severity_words(info)}"


def _when(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="minutes")


def emergency_level(info: Info) -> int:
    """Emergency level 1 (特别重大/红, Extreme) … 4 (一般/蓝, Minor).

    Severity ``Unknown`` (and a colour we cannot read) gives 4: an alert a rule chose to play is
    still an emergency, at the lowest level, so it never pre-empts a known severe one.
    """
    level = EMERGENCY_LEVEL.get(info.severity)
    if level is None and info.severity_colour:
        colour = SEVERITY_BY_COLOUR.get(info.severity_colour.strip().lower())
        level = EMERGENCY_LEVEL.get(colour) if colour else None
    return level or 4


# ---------------------------------------------------------------------------------- text

_STRONG = "。！？!?；;"
"""Sentence ends (a ';' closes a numbered item in Chinese warnings, and is a fine place to cut)."""
_WEAK = "，,、：:"
_CJK = r"\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
_SENTENCE_FIELDS = frozenset({"description", "instruction", "guidance"})
"""Fields that are whole sentences of their own (they end with their own 。)."""
_SHRINK_ORDER = ("description", "instruction", "guidance", "area")
"""What gives way first when the text is too long: the forecaster's detail before the escape advice."""
_COLOUR_ZH = {"red": "红色", "orange": "橙色", "yellow": "黄色", "blue": "蓝色",
              "红": "红色", "橙": "橙色", "黄": "黄色", "蓝": "蓝色",
              "红色": "红色", "橙色": "橙色", "黄色": "黄色", "蓝色": "蓝色"}
_LIST_ITEM = re.compile(r"^(?:\d{1,2}[.、．）)]|[（(]\d{1,2}[）)]|[一二三四五六七八九十]、)")
_BOUNDARY = re.compile(rf"[{re.escape(_STRONG)}]|\.(?=\s|$)")
_CLAUSE = re.compile(rf"[{re.escape(_WEAK)}]")


def compose_text(cfg: Config, info: Info, match: AreaMatch) -> str:
    """The announcement for ``info`` on the affected villages, from the configured Chinese template.

    Empty parts disappear with their words (no "影响范围：。" without villages), CAP text is
    folded into clean sentences, and the result fits ``speech.max_chars``: the description is
    shortened first, at a sentence boundary, so the villages and escape guidance survive.
    """
    settings = cfg.alerts
    template = _template(settings, info)
    values = _values(settings, info, match, cfg.gateway.tz)
    limit = min(cfg.speech.max_chars, MAX_TEXT_CHARS)
    text = _render(template, values)
    if not text:  # a template made only of parts this alert lacks: say at least what it is
        text = _render(DEFAULT_TEMPLATE, values)
    for name in _SHRINK_ORDER:
        over = len(text) - limit
        if over <= 0:
            break
        if values[name]:
            values[name] = _cut(values[name], max(0, len(values[name]) - over))
            text = _render(template, values) or _render(DEFAULT_TEMPLATE, values)
    return _cut(text, limit)


def _template(settings: AlertsSettings, info: Info) -> str:
    """Template by event type code, then code family (``11B*``), then event text, then ``default``."""
    templates = settings.templates
    code = (info.event_type or "").upper()
    if code:
        exact = next((t for k, t in templates.items() if k.upper() == code), None)
        if exact is not None:
            return exact
        families = sorted((k for k in templates if k.endswith("*") and code.startswith(k[:-1].upper())),
                          key=len, reverse=True)
        if families:
            return templates[families[0]]
    event = info.event.strip()
    if event:
        if event in templates:
            return templates[event]
        texts = sorted((k for k in templates if k != "default" and not k.endswith("*") and k in event),
                       key=len, reverse=True)
        if texts:
            return templates[texts[0]]
    return templates.get("default", DEFAULT_TEMPLATE)


def _values(settings: AlertsSettings, info: Info, match: AreaMatch, tz: tzinfo) -> dict[str, str]:
    """The template's placeholders; times are read in the gateway's time zone ``tz``."""
    guided = [(v, g) for v in match.villages if (g := _sentence(settings.guidance.get(v, "")))]
    distinct = list(dict.fromkeys(g for _, g in guided))
    # Several villages' different advice: say whose is whose.
    guidance = "".join(f"{v}：{g}" for v, g in guided) if len(distinct) > 1 else "".join(distinct)
    colour = _COLOUR_ZH.get((info.severity_colour or "").strip().lower(), "")
    expires = info.expires.astimezone(tz) if info.expires else None
    return {
        "headline": _phrase(info.headline),
        "description": _sentence(info.description),
        "instruction": _sentence(info.instruction),
        "event": _phrase(info.event),
        "villages": "、".join(match.villages),
        "guidance": guidance,
        "sender": _phrase(info.sender_name),
        "area": "、".join(dict.fromkeys(d for a in info.areas if (d := _phrase(a.desc)))),
        "level": str(emergency_level(info)),
        "colour": colour,
        "expires": f"{expires.month}月{expires.day}日 {expires:%H:%M}" if expires else "",
    }


def clean(text: str) -> str:
    """CAP text as one tidy line to speak: HTML markup stripped (``controller/speech/markup.py``; the stored
    alert keeps what was written), layout whitespace gone, line breaks turned into joins or pauses.

    Every CAP field an announcement, a broadcast title or its source is made of passes here.
    """
    lines = [" ".join(line.split()) for line in speech_text(text).splitlines()]
    out = ""
    for line in (ln for ln in lines if ln):
        if not out:
            out = line
        elif _LIST_ITEM.match(line) and out[-1] not in _STRONG + _WEAK:
            out += ("；" if _is_cjk(out[-1]) else "; ") + line  # a numbered item starts: pause before it
        elif _is_cjk(out[-1]) or _is_cjk(line[0]):
            out += line  # Chinese is written without spaces; a break there is only layout
        else:
            out += " " + line
    return re.sub(rf"(?<=[{_CJK}]) +| +(?=[{_CJK}])", "", out)


def _phrase(text: str) -> str:
    """A piece the template puts inside a sentence: no sentence end of its own."""
    return clean(text).rstrip(_STRONG + _WEAK + ". ")


def _sentence(text: str) -> str:
    """Whole sentences, ending with a full stop (。 after Chinese, '.' after Latin text)."""
    out = clean(text).rstrip(_WEAK + " ")
    if not out or out[-1] in _STRONG or out.endswith("."):
        return out
    return out + ("。" if _is_cjk(out[-1]) or not out[-1].isascii() else ".")


def _speech_language(info: Info, text: str) -> str:
    """zh for a Chinese block, and also for any text with Chinese in it: the templates are Chinese,
    so an English alert announced through one must still be read by the Mandarin voice."""
    if info.language.strip().lower().startswith("zh") or any(_is_cjk(c) for c in text):
        return "zh"
    return "en"


def _is_cjk(char: str) -> bool:
    return re.match(rf"[{_CJK}]", char) is not None


def _render(template: str, values: dict[str, str]) -> str:
    """Fill ``template`` clause by clause, dropping clauses whose placeholders are all empty.

    A clause runs to a sentence end; sentence fields (description, instruction, guidance) are
    clauses of their own. Format specs and conversions are ignored (values are plain text), so a
    template cannot pad a field to gigabytes.
    """
    clauses: list[list[tuple[str, str | None]]] = [[]]
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        for piece in re.split(rf"(?<=[{re.escape(_STRONG)}\n])", literal):
            if piece:
                clauses[-1].append((piece, None))
                if piece[-1] in _STRONG + "\n":
                    clauses.append([])
        if name is not None:
            if name in _SENTENCE_FIELDS:
                clauses.extend([[(name, name)], []])
            else:
                clauses[-1].append((name, name))
    out = []
    for clause in clauses:
        fields = [v for v, f in clause if f is not None]
        if fields and not any(values.get(f, "") for f in fields):
            continue
        parts = []
        for i, (text, name) in enumerate(clause):
            if name is None:
                if i == 1 and clause[0][1] == "sender" and not values.get("sender"):
                    text = text.removeprefix("发布")  # "{sender}发布…" without a sender
                parts.append(text)
            else:
                parts.append(values.get(name, ""))
        out.append("".join(parts))
    return _tidy("".join(out))


def _tidy(text: str) -> str:
    """Collapse what empty parts leave behind: doubled or dangling punctuation, stray spaces."""
    text = " ".join(text.split())
    text = text.replace("预警预警", "预警")  # "{event}预警" when the event already says 预警
    text = re.sub(rf"[{re.escape(_WEAK)}\s]+(?=[。！？；])", "", text)
    text = re.sub(r"([。！？；!?.])[。；]+", r"\1", text)
    text = re.sub(rf"(?<=[{_CJK}]) +(?=[{_CJK}])", "", text)  # keeps a template's "11月28日 15:00"
    return text.lstrip(_STRONG + _WEAK + ". ")


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending at a sentence end where that keeps at least half.

    Else at a clause boundary (comma), closed with a full stop; else a hard cut.
    """
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    head = text[:limit]
    ends = [m.end() for m in _BOUNDARY.finditer(head)]
    if ends and ends[-1] >= limit / 2:
        return head[: ends[-1]].rstrip()
    stop = "。" if _is_cjk(text[0]) or not text[0].isascii() else "."
    commas = [m.start() for m in _CLAUSE.finditer(head[: limit - 1])]
    if commas and commas[-1] >= limit / 2:
        return head[: commas[-1]] + stop
    if ends:
        return head[: ends[-1]].rstrip()
    return head[: limit - 1].rstrip(_WEAK + " ") + stop


# ---------------------------------------------------------------------------------- request

def build_request(cfg: Config, alert: CapAlert, info: Info, decision: Decision, match: AreaMatch,
                  text: str, *, default_source_level: str = "county") -> BroadcastRequest:
    """The broadcast the engine plays for a decided alert (``text`` as composed or edited).

    An emergency at :func:`emergency_level`, or a drill (no severity) when the decision says so;
    targets exactly the matched terminals (the whole township, FM included, for a covering code).
    Raises ValueError when the alert reaches nothing here, pydantic's ValidationError for a bad text.
    """
    targets = match.targets()
    if targets is None:
        raise ValueError("the alert touches none of this gateway's terminals: nothing to broadcast")
    level = emergency_level(info)
    source_level = decision.source_level or default_source_level
    try:
        ranked = SourceLevel[source_level.upper()]
    except KeyError:
        raise ValueError(f"unknown source level '{source_level}' "
                         f"(known: {', '.join(s.name.lower() for s in SourceLevel)})") from None
    if decision.tone is not None:
        tone = Tone(decision.tone)
    elif not decision.drill and level <= 2:
        tone = Tone.SIREN
    else:
        tone = Tone.CHIME
    title = _phrase(info.headline) or _phrase(info.event) or "预警"
    return BroadcastRequest.model_validate({
        "class": BroadcastClass.DRILL if decision.drill else BroadcastClass.EMERGENCY,
        "severity": None if decision.drill else level,
        "source_level": ranked,
        "source": (_phrase(info.sender_name) or clean(alert.sender))[:SOURCE_MAX],
        "title": title[:TITLE_MAX],
        "targets": targets,
        "text": text,
        "language": _speech_language(info, text),
        "tone": tone,
        "repeat": decision.repeat,
        "expires_at": info.expires,
    })
