"""The few things the county needs to know about a CAP alert before fanning it out to the townships.

The gateways parse the document fully and decide what it does (docs/alerts.md): the county only
reads enough to refuse what no gateway would take, to pick the townships it concerns (the Chinese
area codes of its ``<area><geocode>`` elements) and to know until when it is worth delivering
(``<expires>``). That is a small reader of its own, not the gateway's parser: the county shares no
code with the gateway beyond the signing contract (tests/test_layering.py). It reads the same three
dialects — OASIS CAP 1.2 and 1.1 (namespaced, geocodes as valueName/value pairs) and China's
national variant (no namespace, a geocode is a bare list of 12-digit codes) — with defusedxml, DTDs
and entities refused, and every error names the element, e.g. ``alert/info[0]/severity``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml.common import DefusedXmlException

MAX_CAP_BYTES = 60_000
"""A signed command is at most 64 KiB, the document travels in it as a JSON string (real warnings
are a few kB); this leaves room for the envelope and JSON escaping of quotes and line breaks."""
NAMESPACES = {"urn:oasis:names:tc:emergency:cap:1.2": "cap1.2",
              "urn:oasis:names:tc:emergency:cap:1.1": "cap1.1", "": "cn"}
SEVERITIES = frozenset({"Extreme", "Severe", "Moderate", "Minor", "Unknown", "Red", "Orange", "Yellow",
                        "Blue", "红色", "橙色", "黄色", "蓝色", "红", "橙", "黄", "蓝"})
STATUSES = frozenset({"Actual", "Exercise", "System", "Test", "Draft"})
MSG_TYPES = frozenset({"Alert", "Update", "Cancel", "Ack", "Error"})
_AREA_DIGITS = re.compile(r"[0-9]{6}(?:[0-9]{3}){0,2}")
_PROVINCES = frozenset({"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36",
                        "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62",
                        "63", "64", "65", "71", "81", "82"})
"""GB/T 2260 province prefixes: keeps foreign 6-digit geocodes (US FIPS6 ``006037``) out."""
_AREA_CODE_NAMES = frozenset({"", "行政区划代码", "行政区划编码", "区划代码", "行政区域代码", "areacode",
                              "adcode", "admincode", "regioncode", "cnareacode", "gbt2260", "gb2260"})
"""geocode valueNames (squashed, lower case) that carry Chinese area codes — the gateway's list."""
_LIST_SPLIT = re.compile(r"[\s,，;；、]+")
_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(?:\.[0-9]+)?\s*"
                   r"(Z|[+-][0-9]{2}:?[0-9]{2})$")
_DECLARATION = re.compile(r"\A(\ufeff?\s*<\?xml\s[^>]{0,200}?encoding\s*=\s*)([\"'])[^\"']*\2")


class CapError(ValueError):
    """Not a CAP alert the county can fan out; ``element`` names where (``alert/info[0]/severity``)."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.element = element


@dataclass(frozen=True)
class CapSummary:
    """What the county shows and decides with; the gateways read everything else."""

    dialect: str
    identifier: str
    sender: str
    sent: str
    status: str
    msg_type: str
    event: str
    severity: str
    headline: str
    expires: datetime | None
    """The latest ``<expires>`` of its info blocks; None when one has none (valid until cancelled)."""
    area_codes: tuple[str, ...]
    """Chinese area codes of every geocode, widened to 12 digits, in document order."""
    text: str
    """The document as sent to the gateways: its XML declaration, if any, says UTF-8."""

    def view(self) -> dict[str, object]:
        return {"dialect": self.dialect, "identifier": self.identifier, "sender": self.sender,
                "sent": self.sent, "status": self.status, "msg_type": self.msg_type, "event": self.event,
                "severity": self.severity,
                "headline": self.headline, "expires": self.expires.isoformat() if self.expires else None,
                "area_codes": list(self.area_codes)}


def read_cap(text: object) -> CapSummary:
    """Check and summarise one CAP document given as text; :class:`CapError` names the element."""
    if not isinstance(text, str) or not text.strip():
        raise CapError("alert", "paste the CAP document (XML text)")
    size = len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"))
    if size > MAX_CAP_BYTES:
        raise CapError("alert", f"the document takes {size} bytes in a command; a county command carries "
                                f"at most {MAX_CAP_BYTES} of CAP (64 KiB in all)")
    # The gateways get the text as UTF-8 (inside the JSON command): a declaration naming another
    # encoding (GB2312, ISO-8859-1…) would make them decode it wrongly.
    text = _DECLARATION.sub(lambda m: f"{m.group(1)}{m.group(2)}UTF-8{m.group(2)}",
                            text.lstrip("\ufeff \t\r\n"), count=1)
    try:
        root = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise CapError("alert", "DTD/entity declarations are not accepted (CAP needs none)") from None
    except ParseError as exc:
        raise CapError("alert", f"not well-formed XML: {exc}") from None
    ns, local = _split(root.tag)
    if local != "alert":
        raise CapError(local or "alert", "the root element must be <alert>")
    if ns not in NAMESPACES:
        raise CapError("alert", f"namespace {ns!r} is not CAP 1.2, CAP 1.1 or China's national variant")
    reader = _Reader(ns)
    identifier = reader.required(root, "identifier", "alert")
    sender = reader.required(root, "sender", "alert")
    sent = reader.required(root, "sent", "alert") if ns or reader.text(root, "sent") else \
        reader.required(root, "sendTime", "alert")
    _time(sent, "alert/sent")
    status = _word(reader.required(root, "status", "alert"), STATUSES)
    if status not in STATUSES:
        raise CapError("alert/status", f"unknown status {status[:40]!r} "
                                       "(Actual, Exercise, System, Test, Draft)")
    msg_type = _word(reader.required(root, "msgType", "alert"), MSG_TYPES)
    if msg_type not in MSG_TYPES:
        raise CapError("alert/msgType", f"unknown msgType {msg_type[:40]!r} "
                                        "(Alert, Update, Cancel, Ack, Error)")
    infos = reader.children(root, "info")  # none: the gateways record it (nothing to announce)
    codes: list[str] = []
    expiries: list[datetime | None] = []
    event = severity = headline = ""
    for i, info in enumerate(infos):
        path = f"alert/info[{i}]"
        this_event = reader.required(info, "event", path)
        this_severity = _word(reader.required(info, "severity", path), SEVERITIES)
        if this_severity not in SEVERITIES:
            raise CapError(f"{path}/severity", f"unknown severity {this_severity[:40]!r} (Extreme, Severe, "
                                               "Moderate, Minor, Unknown, or Red, Orange, Yellow, Blue)")
        expires = reader.text(info, "expires")
        expiries.append(_time(expires, f"{path}/expires") if expires else None)
        if i == 0:
            event, severity, headline = this_event, this_severity, reader.text(info, "headline")
        for j, area in enumerate(reader.children(info, "area")):
            for k, geo in enumerate(reader.children(area, "geocode")):
                codes.extend(reader.area_codes(geo, f"{path}/area[{j}]/geocode[{k}]"))
    expires_at = None if not expiries or None in expiries else max(e for e in expiries if e is not None)
    return CapSummary(NAMESPACES[ns], identifier, sender, sent, status, msg_type, event, severity, headline,
                      expires_at, tuple(dict.fromkeys(codes)), text)


class _Reader:
    def __init__(self, ns: str) -> None:
        self.ns = ns

    def children(self, el: Element, name: str) -> list[Element]:
        return [c for c in el if _split(c.tag) == (self.ns, name)]

    def text(self, el: Element, name: str) -> str:
        found = self.children(el, name)
        return "".join(found[0].itertext()).strip() if found else ""

    def required(self, el: Element, name: str, path: str) -> str:
        value = self.text(el, name)
        if not value:
            raise CapError(f"{path}/{name}", "missing or empty")
        return value

    def area_codes(self, geo: Element, path: str) -> list[str]:
        """valueName/value pairs (CAP) or a bare list of codes (the national variant)."""
        if self.children(geo, "value") or self.children(geo, "valueName"):
            name = re.sub(r"[\s_\-/.]", "", self.text(geo, "valueName")).lower()
            if self.ns and name not in _AREA_CODE_NAMES:
                return []  # another geocode scheme (FIPS, SAME, EMMA…): not a township of ours
            text = self.text(geo, "value")
        else:
            text = "".join(geo.itertext())
        codes = []
        for token in _LIST_SPLIT.split(text.strip()):
            if token and _AREA_DIGITS.fullmatch(token) and token[:2] in _PROVINCES:
                codes.append(token.ljust(12, "0"))
        return codes


def _word(text: str, words: frozenset[str]) -> str:
    """The vocabulary's spelling of ``text``, compared without case as the gateways do."""
    return next((w for w in words if w.lower() == text.lower()), text)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _time(text: str, element: str) -> datetime:
    match = _TIME.match(text.strip())
    if match is None:
        raise CapError(element, f"{text[:40]!r} is not a time with a zone (2026-11-28T03:15:00+08:00)")
    zone = match.group(3).replace("Z", "+00:00")
    if ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        return datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}{zone}")
    except ValueError as exc:
        raise CapError(element, f"{text[:40]!r} is not a valid time ({exc})") from None
