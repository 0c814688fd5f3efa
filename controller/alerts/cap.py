"""CAP alerts: the parsed form of OASIS CAP 1.2 / 1.1 and China's national variant (GB/T 35965.1).

One vocabulary for the parser, area matching, rules and the alert inbox. The parser turns the
three dialects into the same frozen objects: times are timezone-aware, severity is the CAP word
(the Chinese colour is kept beside it), 6- and 9-digit Chinese area codes are widened to 12 digits.
Untrusted input: XML is read with defusedxml, so entity tricks (XXE, billion laughs) are refused.
What each dialect may write, and what is refused or only warned about: docs/cap-parsing.md.
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml.common import DefusedXmlException, DTDForbidden

MAX_CAP_BYTES = 1024 * 1024
"""Largest CAP document accepted (real warnings are a few kB)."""


class CapError(ValueError):
    """A document that is not a usable CAP alert; ``element`` names where, e.g. ``alert/info[0]/severity``."""

    def __init__(self, message: str, element: str | None = None) -> None:
        super().__init__(f"{element}: {message}" if element else message)
        self.message = message
        self.element = element


class Dialect(StrEnum):
    CAP12 = "cap1.2"
    CAP11 = "cap1.1"
    CN = "cn"  # China's national variant: no namespace, senderCode/sendTime/eventType, colour severity


class Status(StrEnum):
    ACTUAL = "Actual"
    EXERCISE = "Exercise"
    SYSTEM = "System"
    TEST = "Test"
    DRAFT = "Draft"


class MsgType(StrEnum):
    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"
    ACK = "Ack"
    ERROR = "Error"


class Severity(StrEnum):
    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


SEVERITY_BY_COLOUR = {"red": Severity.EXTREME, "orange": Severity.SEVERE, "yellow": Severity.MODERATE,
                      "blue": Severity.MINOR, "红": Severity.EXTREME, "橙": Severity.SEVERE,
                      "黄": Severity.MODERATE, "蓝": Severity.MINOR}
"""China writes severity as the warning colour (GB/T 35965.1)."""

EMERGENCY_LEVEL = {Severity.EXTREME: 1, Severity.SEVERE: 2, Severity.MODERATE: 3, Severity.MINOR: 4}
"""CAP severity → emergency level 1 特别重大/红 … 4 一般/蓝 (DESIGN §3). Unknown has none."""


@dataclass(frozen=True)
class Reference:
    """One entry of ``<references>``: the earlier alert an Update or Cancel acts on."""

    sender: str
    identifier: str
    sent: str | None
    """As written (the dedup key uses the text; compare with :attr:`CapAlert.sent_text`). None when
    the entry is an identifier alone (China's national variant only): it then names every alert of
    that sender with that identifier, whatever its ``sent``, and ``sender`` is the referencing
    alert's own."""
    sent_at: datetime | None = None
    """``sent`` parsed, when it is a valid time: lets a reference written as ``…T03:15:00+08:00``
    find an alert whose ``sent`` was written ``… 03:15:00+08:00`` (the two dialects differ)."""

    @property
    def identifier_only(self) -> bool:
        """Written as a bare identifier (the national variant's short form), not a full triple."""
        return self.sent is None


@dataclass(frozen=True)
class Circle:
    lat: float
    lon: float
    radius_km: float


@dataclass(frozen=True)
class Area:
    desc: str
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()
    """Each polygon as (lat, lon) points, closed (first == last), as CAP writes them."""
    circles: tuple[Circle, ...] = ()
    geocodes: tuple[tuple[str, str], ...] = ()
    """(valueName, value) as written; the Chinese variant's bare list gives valueName ``""``."""
    area_codes: tuple[str, ...] = ()
    """Chinese administrative area codes found in the geocodes, widened to 12 digits."""


@dataclass(frozen=True)
class Info:
    language: str
    """As written, default ``en-US`` (CAP's default); the Chinese variant defaults to ``zh-CN``."""
    event: str
    urgency: str
    severity: Severity
    certainty: str
    categories: tuple[str, ...] = ()
    severity_colour: str | None = None
    """Red / Orange / Yellow / Blue when the document wrote a colour."""
    event_type: str | None = None
    """GB/T 35561 code (e.g. ``11B03`` rainstorm) from ``eventType`` or an ``eventCode`` that holds one."""
    event_codes: tuple[tuple[str, str], ...] = ()
    sender_name: str = ""
    headline: str = ""
    description: str = ""
    instruction: str = ""
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    web: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    areas: tuple[Area, ...] = ()


@dataclass(frozen=True)
class CapAlert:
    identifier: str
    sender: str
    sent: datetime
    sent_text: str
    """``sent`` exactly as written: part of the dedup key (sender, identifier, sent)."""
    status: Status
    msg_type: MsgType
    dialect: Dialect
    scope: str = ""
    source: str = ""
    note: str = ""
    sender_code: str | None = None
    references: tuple[Reference, ...] = ()
    infos: tuple[Info, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    """Non-fatal oddities (unknown element values accepted leniently), for the record."""

    @property
    def key(self) -> tuple[str, str, str]:
        """The dedup key: an alert is the same alert when sender, identifier and sent agree."""
        return (self.sender, self.identifier, self.sent_text)

    def info_for(self, languages: Sequence[str]) -> Info | None:
        """The info block to act on: the first of ``languages`` (``zh-CN``, then fallbacks; a bare
        ``zh`` matches ``zh-CN``/``zh-Hans``…), else the first block; None if there is none."""
        if not self.infos:
            return None
        wanted = [languages] if isinstance(languages, str) else list(languages)
        have = [_norm_lang(info.language) for info in self.infos]
        for pref in (_norm_lang(w) for w in wanted):
            if not pref:
                continue
            for i, lang in enumerate(have):  # an exact tag beats a related one
                if lang == pref:
                    return self.infos[i]
            for i, lang in enumerate(have):
                if lang.startswith(pref + "-") or pref.startswith(lang + "-"):
                    return self.infos[i]
        return self.infos[0]


def _norm_lang(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


# --- Public helpers -------------------------------------------------------------------------------

_AREA_DIGITS = re.compile(r"[0-9]{6}(?:[0-9]{3}){0,2}")
_PROVINCES = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42",
    "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82",
})
"""GB/T 2260 province prefixes: keeps foreign 6-digit geocodes (US FIPS6 ``006037``) out."""


def widen_area_code(text: str) -> str | None:
    """A 6-, 9- or 12-digit Chinese area code as 12 digits (zeros cover the region), else None.

    6 digits are county level (GB/T 2260), 9 township level; targets compare 12-digit codes.
    """
    code = text.strip()
    if not _AREA_DIGITS.fullmatch(code) or code[:2] not in _PROVINCES:
        return None
    return code.ljust(12, "0")


GBT35561_CODE = re.compile(r"[0-9]{2}[A-Z][0-9]{2}")
"""A GB/T 35561 event code as the national feed writes it: two digits, a letter, two digits (11B03)."""


# --- Parsing --------------------------------------------------------------------------------------

NS_CAP12 = "urn:oasis:names:tc:emergency:cap:1.2"
NS_CAP11 = "urn:oasis:names:tc:emergency:cap:1.1"
_NS_CAP10 = ("http://www.incident.com/cap/1.0", "urn:oasis:names:tc:emergency:cap:1.0")
_NS_XMLDSIG = "http://www.w3.org/2000/09/xmldsig#"
_DIALECTS = {NS_CAP12: Dialect.CAP12, NS_CAP11: Dialect.CAP11, "": Dialect.CN}

_DECLARED_ENCODING = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*<\?xml\s[^>]{0,200}?encoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._-]{0,39})[\"']")
_DECODE_IN_PYTHON = {"gb2312": "gb18030", "gbk": "gb18030", "gb18030": "gb18030", "big5": "big5",
                     "big5hkscs": "big5hkscs"}
"""Multi-byte encodings expat cannot read; Chinese feeds use them. GB18030 is a superset of GBK/GB2312."""

_ENUMS = {
    "urgency": ("Immediate", "Expected", "Future", "Past", "Unknown"),
    "certainty": ("Observed", "Likely", "Possible", "Unlikely", "Unknown"),
    "scope": ("Public", "Restricted", "Private"),
}
_COLOUR_NAMES = {"red": "Red", "orange": "Orange", "yellow": "Yellow", "blue": "Blue",
                 "红": "Red", "橙": "Orange", "黄": "Yellow", "蓝": "Blue"}
_AREA_CODE_NAMES = frozenset({"", "行政区划代码", "行政区划编码", "区划代码", "行政区域代码", "areacode",
                              "adcode", "admincode", "regioncode", "cnareacode", "gbt2260", "gb2260"})
"""geocode valueNames (lower case, without spaces, ``_``, ``-``, ``/``, ``.``) whose values are Chinese
area codes in a namespaced document; in the Chinese variant every geocode value is tried."""
_FREE_TEXT = frozenset({"headline", "description", "instruction", "event", "senderName", "areaDesc"})
"""Human-readable text the announcement is made of: XML elements inside are taken as markup."""
_MARKUP_DEPTH = 40
_CRITICAL = frozenset({"identifier", "sender", "sent", "sendTime", "status", "msgType", "severity",
                       "expires", "references"})
"""Single-valued elements that decide what plays: two different values make the alert ambiguous."""

_NUM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_POINT = re.compile(rf"({_NUM}),({_NUM})")
_CIRCLE = re.compile(rf"({_NUM}),({_NUM})\s+({_NUM})")
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
                   r"\s*(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_REF_DATE_HALF = re.compile(r"[^,]*,[^,]*,[0-9]{4}-[0-9]{2}-[0-9]{2}")
_REF_TIME_HALF = re.compile(r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_LIST_SPLIT = re.compile(r"[\s,，;；、]+")


def parse_cap(data: bytes | str) -> CapAlert:
    """Parse one CAP document (any of the three dialects); raise :class:`CapError` naming the element."""
    root = _read_xml(data)
    ns, local = _split_tag(root.tag)
    if local != "alert":
        hint = ""
        if local in ("feed", "rss", "RDF"):
            hint = (": this is an Atom/RSS index, not a CAP document — configure it as a feed of "
                    "type index, or post the CAP documents it links to or embeds")
        raise CapError(f"root element is {_clip(local)}, not alert{hint}")
    if ns in _NS_CAP10:
        raise CapError(f"CAP 1.0 (namespace {ns}) is not accepted: ask the sender for CAP 1.2 or 1.1",
                       "alert")
    if ns not in _DIALECTS:
        raise CapError(f"unknown namespace '{ns}': expected CAP 1.2 ({NS_CAP12}), CAP 1.1 ({NS_CAP11}) "
                       "or none (China's national variant)", "alert")
    return _Reader(ns, _DIALECTS[ns]).alert(root)


def _read_xml(data: bytes | str) -> Element:
    """Bytes or text → element tree, refusing DTDs (so no entity expansion or external fetch ever runs)."""
    source: bytes | str
    if isinstance(data, str):
        if len(data) > MAX_CAP_BYTES:
            raise CapError(f"document is larger than the {MAX_CAP_BYTES}-byte limit")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise CapError("document text is not valid Unicode (it holds a lone surrogate)") from None
        source = data
    elif isinstance(data, bytes | bytearray | memoryview):
        source = bytes(data)
        size = len(source)
    else:
        raise TypeError(f"parse_cap takes bytes or str, not {type(data).__name__}")
    if size > MAX_CAP_BYTES:
        raise CapError(f"document is {size} bytes, larger than the {MAX_CAP_BYTES}-byte limit")
    if not source.strip():
        raise CapError("document is empty")
    if isinstance(source, bytes):
        stripped = source.lstrip(b" \t\r\n")
        if stripped.startswith(b"<"):  # some servers send a newline before <?xml, which expat refuses
            source = stripped
        source = _decode_if_needed(source)
    elif source.lstrip().startswith("<"):
        source = source.lstrip()
    try:
        return SafeET.fromstring(source, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden:
        raise CapError("DTD/entity declarations are not accepted: a <!DOCTYPE> is how XXE and "
                       "entity-expansion (billion laughs) attacks get in, and CAP needs none") from None
    except DefusedXmlException as exc:
        raise CapError(f"DTD/entity declarations are not accepted ({type(exc).__name__})") from None
    except ParseError as exc:
        raise CapError(f"not well-formed XML: {exc}") from None
    except (LookupError, ValueError) as exc:  # unknown or multi-byte encoding expat cannot read
        raise CapError(f"cannot read the document's character encoding: {exc}") from None


def _decode_if_needed(raw: bytes) -> bytes | str:
    """Decode GBK/GB18030/Big5 documents here: expat reads UTF-8/16 and single-byte encodings only."""
    match = _DECLARED_ENCODING.match(raw)
    if not match:
        return raw
    declared = match.group(1).decode("ascii")
    try:
        codec = _DECODE_IN_PYTHON.get(codecs.lookup(declared).name)
    except LookupError:
        return raw  # expat names the unknown encoding
    if codec is None:
        return raw
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise CapError(f"document declares encoding {declared} but byte {exc.start} is not valid "
                       f"{declared}") from None


def _split_tag(tag: object) -> tuple[str, str]:
    if not isinstance(tag, str):
        return "", str(tag)
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _text(el: Element) -> str:
    return "".join(el.itertext()).strip()


def _markup(el: Element, depth: int = 0) -> str:
    """An element's mixed content as the HTML its sender meant (``a<br/>b`` written unescaped).

    Joining the text alone would glue lines together and keep a ``<script>``'s code as text; as
    markup, announcements drop it like any escaped HTML (``controller/speech/markup.py``). Below
    ``_MARKUP_DEPTH`` levels only the text is kept, so hostile nesting cannot exhaust the stack.
    """
    if depth >= _MARKUP_DEPTH:
        return html.escape("".join(el.itertext()), quote=False)
    parts = [html.escape(el.text or "", quote=False)]
    for child in el:
        _, local = _split_tag(child.tag)
        inner = _markup(child, depth + 1)
        parts.append(f"<{local}>{inner}</{local}>" if inner else f"<{local}/>")
        parts.append(html.escape(child.tail or "", quote=False))
    return "".join(parts)


class _Reader:
    """One document's parse: collects every fatal problem (reported together) and the warnings."""

    def __init__(self, ns: str, dialect: Dialect) -> None:
        self.ns = ns
        self.dialect = dialect
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []

    # -- plumbing --

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def children(self, parent: Element, name: str) -> list[Element]:
        return parent.findall(f"{{{self.ns}}}{name}" if self.ns else name)

    def one(self, parent: Element, name: str, path: str) -> str | None:
        """Text of a single-valued child; empty counts as absent (the Chinese variant writes ``<x/>``)."""
        found = self.children(parent, name)
        if not found:
            return None
        if len(found) > 1:
            texts = {_text(el) for el in found}
            if name in _CRITICAL and len(texts) > 1:
                self.fail(f"{path}/{name}", f"<{name}> appears {len(found)} times with different values; "
                                            "CAP allows one")
            else:
                self.warn(f"{path}/{name}", f"<{name}> appears {len(found)} times; the first is used")
        first = found[0]
        if name in _FREE_TEXT and len(first):
            tags = ", ".join(dict.fromkeys(_split_tag(child.tag)[1] for child in first.iter()
                                           if child is not first))
            self.warn(f"{path}/{name}", f"<{name}> holds XML elements ({_clip(tags)}): kept as the markup "
                                        "they are, which announcements do not read aloud")
            return _markup(first).strip() or None
        return _text(first) or None

    def required(self, parent: Element, name: str, path: str) -> str | None:
        value = self.one(parent, name, path)
        if value is None:
            self.fail(f"{path}/{name}", f"required element <{name}> is missing or empty")
        return value

    def time(self, text: str | None, path: str) -> datetime | None:
        if text is None:
            return None
        try:
            return _parse_time(text)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def pairs(self, parent: Element, name: str, path: str) -> tuple[tuple[str, str], ...]:
        """``eventCode``/``parameter``: (valueName, value) as written; a pair with neither is dropped."""
        out = []
        for el in self.children(parent, name):
            pair = (self.one(el, "valueName", path) or "", self.one(el, "value", path) or "")
            if pair != ("", ""):
                out.append(pair)
        return tuple(out)

    def enum(self, parent: Element, name: str, path: str, text: str | None = None) -> str:
        """urgency/certainty/scope: case-insensitive; absent → Unknown, unknown words kept (lenient)."""
        if text is None:
            text = self.one(parent, name, path)
        allowed = _ENUMS[name]
        if text is None:
            self.warn(f"{path}/{name}", f"<{name}> is missing; taken as Unknown")
            return "Unknown"
        for word in allowed:
            if text.lower() == word.lower():
                return word
        if name == "certainty" and text.lower() == "very likely":  # CAP 1.0's word, = Likely since 1.1
            return "Likely"
        self.warn(f"{path}/{name}", f"unknown value '{text}' kept as written (expected {', '.join(allowed)})")
        return text

    # -- the document --

    def alert(self, root: Element) -> CapAlert:
        p = "alert"
        identifier = self.required(root, "identifier", p)
        sender = self.required(root, "sender", p)
        sent_text = self.one(root, "sent", p)
        sent_path = f"{p}/sent"
        if sent_text is None:
            sent_text = self.one(root, "sendTime", p)
            sent_path = f"{p}/sendTime"
            if sent_text is None:
                self.fail(f"{p}/sent", "required element <sent> (or the Chinese variant's <sendTime>) "
                                       "is missing or empty")
        sent = self.time(sent_text, sent_path)
        status = self._status(root, p)
        msg_type = self._msg_type(root, p)
        scope = self._scope(root, p)
        for name, value in (("identifier", identifier), ("sender", sender)):
            if value and re.search(r"[\s,<&]", value):
                self.warn(f"{p}/{name}", f"'{value}' holds a space, comma, < or &, which CAP forbids "
                                         "(a later Update cannot reference it)")
        references = self._references(root, p, sender or "")
        if msg_type in (MsgType.UPDATE, MsgType.CANCEL) and not references:
            self.warn(f"{p}/references", f"{msg_type} without <references> acts on no earlier alert")
        infos = tuple(self._info(el, f"{p}/info[{i}]") for i, el in enumerate(self.children(root, "info")))
        if any(_split_tag(child.tag) == (_NS_XMLDSIG, "Signature") for child in root):
            self.warn(f"{p}/Signature", "XML signature present but not verified (the gateway trusts its "
                                        "feeds by transport, see docs/cap-parsing.md)")
        if self.problems:
            raise self._error()
        assert identifier and sender and sent_text and sent and status and msg_type  # no problems → all set
        return CapAlert(
            identifier=identifier, sender=sender, sent=sent, sent_text=sent_text, status=status,
            msg_type=msg_type, dialect=self.dialect, scope=scope, source=self.one(root, "source", p) or "",
            note=self.one(root, "note", p) or "", sender_code=self.one(root, "senderCode", p),
            references=references, infos=infos, warnings=tuple(self.warnings))

    def _has(self, parent: Element, name: str) -> bool:
        return bool(self.children(parent, name))

    def _error(self) -> CapError:
        (path, message), rest = self.problems[0], self.problems[1:]
        if rest:
            shown = "; ".join(f"{where}: {what}" for where, what in rest[:5])
            more = f"; and {len(rest) - 5} more" if len(rest) > 5 else ""
            message = f"{message} (also {shown}{more})"
        return CapError(message, path)

    def _status(self, root: Element, p: str) -> Status | None:
        text = self.required(root, "status", p)
        if text is None:
            return None
        for status in Status:
            if text.lower() == status.value.lower():
                return status
        self.fail(f"{p}/status", f"unknown status '{text}' (expected {', '.join(Status)}); it decides "
                                 "whether the alert may play, so it is not guessed")
        return None

    def _msg_type(self, root: Element, p: str) -> MsgType | None:
        text = self.required(root, "msgType", p)
        if text is None:
            return None
        for kind in MsgType:
            if text.lower() == kind.value.lower():
                return kind
        self.fail(f"{p}/msgType", f"unknown msgType '{text}' (expected {', '.join(MsgType)}); it decides "
                                  "whether the alert plays, replaces or cancels, so it is not guessed")
        return None

    def _scope(self, root: Element, p: str) -> str:
        text = self.one(root, "scope", p)
        if text is None:
            if self.dialect is Dialect.CN:
                return ""
            self.fail(f"{p}/scope", "required element <scope> is missing or empty (Public, Restricted or "
                                    "Private)")
            return ""
        return self.enum(root, "scope", p, text)

    def _references(self, root: Element, p: str, sender: str) -> tuple[Reference, ...]:
        """``sender,identifier,sent`` entries, whitespace-separated; in the national variant an entry
        may also be an identifier alone, meaning an earlier alert of this same ``sender``.

        CAP 1.2 and 1.1 require the triple, so a bare identifier is refused there: acting on a
        guess about another dialect's short form could cancel the wrong warning.
        """
        path = f"{p}/references"
        text = self.one(root, "references", p)
        if text is None:
            if self._has(root, "references") and self.dialect is not Dialect.CN:
                self.fail(path, "<references> is empty: list the earlier alerts as sender,identifier,sent "
                                "(space-separated), or leave the element out")
            return ()
        refs = []
        for n, entry in enumerate(_reference_entries(text), 1):
            ref = self._reference(entry, n, path, sender)
            if ref is not None:
                refs.append(ref)
        return tuple(refs)

    def _reference(self, entry: str, n: int, path: str, sender: str) -> Reference | None:
        shown = _clip(entry)
        cn = self.dialect is Dialect.CN
        if "，" in entry:
            alone = ", or the identifier alone" if cn else ""
            self.fail(path, f"entry {n} '{shown}' holds a full-width comma '，': write "
                            f"sender,identifier,sent with ASCII commas{alone}")
            return None
        parts = entry.split(",")
        if len(parts) == 1 and cn:
            if _REF_TIME_HALF.fullmatch(entry):  # the time of a triple whose date half was unreadable
                self.fail(path, f"entry {n} '{shown}' is a time, not an identifier: the reference before "
                                "it is not sender,identifier,sent")
                return None
            return Reference(sender, entry, None)
        if len(parts) != 3 or not all(parts):
            if cn:
                self.fail(path, f"entry {n} '{shown}' is neither sender,identifier,sent nor an identifier "
                                "alone (no commas)")
            else:
                version = self.dialect.value.removeprefix("cap")
                self.fail(path, f"entry {n} '{shown}' is not sender,identifier,sent: CAP {version} "
                                "requires all three (an identifier alone is accepted only in China's "
                                "national variant, which has no namespace)")
            return None
        try:
            sent_at: datetime | None = _parse_time(parts[2])
        except ValueError:
            sent_at = None
            self.warn(path, f"entry {n}: sent '{parts[2]}' is not a valid time")
        return Reference(parts[0], parts[1], parts[2], sent_at)

    # -- info --

    def _info(self, el: Element, p: str) -> Info:
        default_lang = "zh-CN" if self.dialect is Dialect.CN else "en-US"
        severity, colour = self._severity(el, p)
        event = self.one(el, "event", p)
        if event is None:
            self.warn(f"{p}/event", "<event> is missing")
        event_codes = self.pairs(el, "eventCode", f"{p}/eventCode")
        return Info(
            language=self.one(el, "language", p) or default_lang,
            event=event or "",
            urgency=self.enum(el, "urgency", p),
            severity=severity,
            certainty=self.enum(el, "certainty", p),
            categories=tuple(t for t in (_text(c) for c in self.children(el, "category")) if t),
            severity_colour=colour,
            event_type=self._event_type(el, p, event_codes),
            event_codes=event_codes,
            sender_name=self.one(el, "senderName", p) or "",
            headline=self.one(el, "headline", p) or "",
            description=self.one(el, "description", p) or "",
            instruction=self.one(el, "instruction", p) or "",
            effective=self.time(self.one(el, "effective", p), f"{p}/effective"),
            onset=self.time(self.one(el, "onset", p), f"{p}/onset"),
            expires=self.time(self.one(el, "expires", p), f"{p}/expires"),
            web=self.one(el, "web", p) or "",
            parameters=self.pairs(el, "parameter", f"{p}/parameter"),
            areas=tuple(self._area(a, f"{p}/area[{i}]") for i, a in enumerate(self.children(el, "area"))),
        )

    def _severity(self, el: Element, p: str) -> tuple[Severity, str | None]:
        path = f"{p}/severity"
        text = self.required(el, "severity", p)
        if text is None:
            return Severity.UNKNOWN, None
        for severity in Severity:
            if text.lower() == severity.value.lower():
                return severity, None
        key = text.lower().removesuffix("色")
        if key in SEVERITY_BY_COLOUR:
            return SEVERITY_BY_COLOUR[key], _COLOUR_NAMES[key]
        self.fail(path, f"unknown severity '{text}' (expected {', '.join(Severity)} or a colour Red, "
                        "Orange, Yellow, Blue / 红, 橙, 黄, 蓝); it sets the emergency level, so it is not "
                        "guessed")
        return Severity.UNKNOWN, None

    def _event_type(self, el: Element, p: str, event_codes: tuple[tuple[str, str], ...]) -> str | None:
        written = self.one(el, "eventType", p)
        if written is not None:
            code = written.upper()
            if GBT35561_CODE.fullmatch(code):
                return code
            self.warn(f"{p}/eventType", f"'{written}' is not a GB/T 35561 code like 11B03; kept as written")
            return written
        for _, value in event_codes:
            if GBT35561_CODE.fullmatch(value.upper()):
                return value.upper()
        return None

    # -- area --

    def _area(self, el: Element, p: str) -> Area:
        desc = self.one(el, "areaDesc", p)
        if desc is None:
            self.warn(f"{p}/areaDesc", "<areaDesc> is missing")
        polygons = []
        for i, poly in enumerate(self.children(el, "polygon")):
            points = self._polygon(_text(poly), f"{p}/polygon[{i}]")
            if points:
                polygons.append(points)
        circles = []
        for i, circ in enumerate(self.children(el, "circle")):
            circle = self._circle(_text(circ), f"{p}/circle[{i}]")
            if circle:
                circles.append(circle)
        geocodes: list[tuple[str, str]] = []
        codes: list[str] = []
        for i, geo in enumerate(self.children(el, "geocode")):
            self._geocode(geo, f"{p}/geocode[{i}]", geocodes, codes)
        return Area(desc=desc or "", polygons=tuple(polygons), circles=tuple(circles),
                    geocodes=tuple(geocodes), area_codes=tuple(dict.fromkeys(codes)))

    def _polygon(self, text: str, path: str) -> tuple[tuple[float, float], ...] | None:
        if not text:
            return None  # empty = absent
        points = []
        for n, token in enumerate(text.split(), 1):
            point = self._point(token, n, path)
            if point is None:
                return None
            points.append(point)
        if len(points) < 4:
            self.fail(path, f"polygon has {len(points)} point(s); CAP needs at least 4 (a closed ring: "
                            "the first point repeated at the end)")
            return None
        if points[0] != points[-1]:
            self.fail(path, f"polygon is not closed: the first point {_fmt(points[0])} differs from the "
                            f"last {_fmt(points[-1])}")
            return None
        return tuple(points)

    def _point(self, token: str, n: int, path: str) -> tuple[float, float] | None:
        match = _POINT.fullmatch(token)
        if not match:
            self.fail(path, f"point {n} '{_clip(token)}' is not 'lat,lon' (decimal degrees)")
            return None
        lat, lon = float(match.group(1)), float(match.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            self.fail(path, f"point {n} '{_clip(token)}' is out of range (lat -90…90, lon -180…180)")
            return None
        return lat, lon

    def _circle(self, text: str, path: str) -> Circle | None:
        if not text:
            return None
        match = _CIRCLE.fullmatch(text)
        if not match:
            self.fail(path, f"circle '{_clip(text)}' is not 'lat,lon radius_km'")
            return None
        lat, lon, radius = (float(g) for g in match.groups())
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            self.fail(path, f"circle centre {_fmt((lat, lon))} is out of range (lat -90…90, lon -180…180)")
            return None
        if not 0 <= radius <= 20040:  # half the Earth's circumference: anything more is a typo
            self.fail(path, f"circle radius {match.group(3)} km is out of range (0…20040)")
            return None
        return Circle(lat, lon, radius)

    def _geocode(self, el: Element, path: str, geocodes: list[tuple[str, str]], codes: list[str]) -> None:
        """valueName/value pairs (CAP) or a bare comma list of 12-digit codes (the Chinese variant)."""
        if self._has(el, "valueName") or self._has(el, "value"):
            name = self.one(el, "valueName", path) or ""
            value = self.one(el, "value", path)
            if value is None:
                return  # empty = absent
            geocodes.append((name, value))
            if self.dialect is Dialect.CN or _squash(name) in _AREA_CODE_NAMES:
                self._area_codes(value, path, codes)
            return
        text = _text(el)
        for token in _LIST_SPLIT.split(text):
            if token:
                geocodes.append(("", token))
        self._area_codes(text, path, codes)

    def _area_codes(self, text: str, path: str, codes: list[str]) -> None:
        for token in _LIST_SPLIT.split(text):
            if not token:
                continue
            code = widen_area_code(token)
            if code is None:
                self.warn(path, f"'{_clip(token)}' is not a 6-, 9- or 12-digit Chinese area code; ignored "
                                "for area matching")
            else:
                codes.append(code)


def _reference_entries(text: str) -> list[str]:
    """``<references>`` split at whitespace, rejoining the national variant's space inside a time
    (``…,2026-11-28 03:15:00+08:00``), which would otherwise look like two entries."""
    tokens = text.split()
    entries: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if (i + 1 < len(tokens) and _REF_DATE_HALF.fullmatch(token)
                and _REF_TIME_HALF.fullmatch(tokens[i + 1])):
            token = f"{token} {tokens[i + 1]}"
            i += 1
        entries.append(token)
        i += 1
    return entries


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-/.]", "", name).lower()


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _fmt(point: tuple[float, float]) -> str:
    return f"{point[0]:g},{point[1]:g}"


def _parse_time(text: str) -> datetime:
    """CAP ``2026-11-28T03:15:00+08:00`` or the Chinese ``2026-11-28 03:15:00+08:00``; a zone is required."""
    text = text.strip()
    match = _TIME.fullmatch(text)
    if not match:
        raise ValueError(f"'{_clip(text)}' is not a time like 2026-11-28T03:15:00+08:00 "
                         "or 2026-11-28 03:15:00+08:00")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    if not 1900 <= int(year) <= 9998:  # keeps later arithmetic (offsets, comparisons) from overflowing
        raise ValueError(f"time '{text}' has an implausible year {year}")
    if zone is None:
        raise ValueError(f"time '{text}' has no UTC offset (write e.g. {text}+08:00): without one the "
                         "moment is ambiguous")
    if zone == "Z":
        tz = UTC
    else:
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"time '{text}' has an impossible UTC offset {zone}")
        offset = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                        int((frac or "0")[:6].ljust(6, "0")), tzinfo=tz)
    except ValueError:
        raise ValueError(f"'{text}' is not a valid calendar time") from None
