"""EBD XML (GD/J 082-2018 message format as vendors implement it): the header, the bodies we act on, builders.

The document comes from the network, so it is read with defusedxml (DTDs and entities refused) and
every field is checked before it reaches the caller: a missing required element is
:class:`EbdError` 3 ("content missing"), a malformed one 2 ("parse failed"), each naming the element
path (``EBD/EBM/MsgContent/AreaCode``) and, for bad values, the value — exactly what goes into the
EBDResponse's ``ResultDesc``. An empty element counts as missing.

What is required is what we cannot act without (the official XSDs are not public): the header's
``EBDVersion``, ``EBDID``, ``EBDType``, ``SRC/EBRID``; an EBM's ``EBMID`` and ``MsgBasicInfo/MsgType``,
and for a play (MsgType 1) ``EventType``, ``Severity``, ``MsgContent/AreaCode`` and something to
broadcast (``MsgDesc`` or an ``Auxiliary``). A cancel (MsgType 2) needs only its EBMID. Everything
else defaults (``""``, ``None``, severity 0 "unknown").

Times on the wire are ``YYYY-MM-DD HH:MM:SS`` without a zone, meaning Beijing time; they are returned
aware (Asia/Shanghai) and written in Asia/Shanghai whatever zone they come in.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import defusedxml.ElementTree as SafeET
from defusedxml.common import DefusedXmlException

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

MSG_PLAY, MSG_CANCEL = 1, 2
RPT_TYPES = ("Full", "Incremental")

_DIGITS = re.compile(r"[0-9]{1,64}")
_INT = re.compile(r"[0-9]{1,18}")
_AREA = re.compile(r"[0-9]{12}")
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class EbdError(ValueError):
    """An unusable EBD; ``result_code`` is the EBDResponse code (2 parse failed, 3 content missing)."""

    def __init__(self, result_code: int, desc: str) -> None:
        super().__init__(desc)
        self.result_code = result_code
        self.desc = desc


@dataclass(frozen=True)
class Header:
    version: str
    ebdid: str
    ebd_type: str
    src_ebrid: str
    src_url: str | None
    dest_ebrid: str | None
    time: datetime | None
    related_ebdid: str | None


@dataclass(frozen=True)
class Auxiliary:
    type: str
    desc: str
    """The media member's file name in the package."""
    size: int | None
    digest: str | None


@dataclass(frozen=True)
class Ebm:
    version: str
    ebmid: str
    related_ebmid: str | None
    msg_type: int
    """1 play, 2 cancel."""
    sender_name: str
    sender_code: str
    send_time: datetime | None
    event_type: str
    """GB/T 35561 code, e.g. ``11B03``."""
    severity: int
    """0 unknown, 1 red … 4 blue (0..15 accepted)."""
    start_time: datetime | None
    end_time: datetime | None
    language: str
    title: str
    desc: str
    area_codes: tuple[str, ...]
    program_num: str | None
    auxiliaries: tuple[Auxiliary, ...]


@dataclass(frozen=True)
class EbmStateRequest:
    ebmid: str


@dataclass(frozen=True)
class OmdRequest:
    omd_type: str
    start: datetime | None
    end: datetime | None
    rpt_type: str
    """``Full`` or ``Incremental`` (``Full`` when not given)."""


@dataclass(frozen=True)
class ConnectionCheck:
    rpt_time: datetime | None


@dataclass(frozen=True)
class EbdResponse:
    result_code: int
    result_desc: str


@dataclass(frozen=True)
class Unknown:
    """A body type we do not interpret (reports, responses of other kinds); ``element`` is its tag."""

    element: str


Body = Ebm | EbmStateRequest | OmdRequest | ConnectionCheck | EbdResponse | Unknown


@dataclass(frozen=True)
class Document:
    header: Header
    body: Body


# ---------------------------------------------------------------------------------------------
# Parsing


def _clip(value: str) -> str:
    return repr(value[:40] + "…") if len(value) > 40 else repr(value)


def _text(parent: ET.Element | None, name: str) -> str | None:
    """The stripped text of ``parent``'s first ``name`` child; None when absent or empty."""
    if parent is None:
        return None
    child = parent.find(name)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _required(parent: ET.Element | None, name: str, path: str) -> str:
    value = _text(parent, name)
    if value is None:
        raise EbdError(3, f"{path}/{name} missing")
    return value


def _child(parent: ET.Element, name: str, path: str, *, required: bool) -> ET.Element | None:
    child = parent.find(name)
    if child is None and required:
        raise EbdError(3, f"{path}/{name} missing")
    return child


def _int(value: str | None, where: str, low: int | None = None, high: int | None = None) -> int | None:
    if value is None:
        return None
    if not _INT.fullmatch(value):
        raise EbdError(2, f"{where}: not an integer: {_clip(value)}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise EbdError(2, f"{where}: {number} not in {low}..{high}")
    return number


def parse_time(value: str | None, where: str) -> datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` (Beijing time) → aware datetime; None stays None."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=SHANGHAI)
    except ValueError:
        raise EbdError(2, f"{where}: not a time YYYY-MM-DD HH:MM:SS: {_clip(value)}") from None


def parse_area_codes(value: str, where: str) -> tuple[str, ...]:
    """Comma-separated 12-digit area codes (whitespace around each allowed, nothing else)."""
    codes = tuple(code.strip() for code in value.split(","))
    for code in codes:
        if not _AREA.fullmatch(code):
            raise EbdError(2, f"{where}: not a 12-digit area code: {_clip(code)}")
    return codes


def _digits(value: str, where: str) -> str:
    if not _DIGITS.fullmatch(value):
        raise EbdError(2, f"{where}: not digits: {_clip(value)}")
    return value


def parse_ebd(xml: bytes) -> Document:
    """The header and typed body of an EBDB file; :class:`EbdError` for anything unusable."""
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as e:
        raise EbdError(2, f"XML refused: {type(e).__name__}") from None
    except (ET.ParseError, ValueError, UnicodeError, LookupError) as e:  # LookupError: unknown encoding
        raise EbdError(2, f"XML not well-formed: {e}"[:200]) from None
    if root.tag != "EBD":
        raise EbdError(2, f"XML root is {_clip(str(root.tag))}, not EBD")
    header = _header(root)
    return Document(header=header, body=_body(root, header.ebd_type))


def _header(root: ET.Element) -> Header:
    version = _required(root, "EBDVersion", "EBD")
    ebdid = _digits(_required(root, "EBDID", "EBD"), "EBD/EBDID")
    ebd_type = _required(root, "EBDType", "EBD")
    if not ebd_type.isidentifier():
        raise EbdError(2, f"EBD/EBDType: not an element name: {_clip(ebd_type)}")
    src = _child(root, "SRC", "EBD", required=True)
    related_ebdid = _text(root.find("RelatedEBD"), "EBDID")
    return Header(
        version=version,
        ebdid=ebdid,
        ebd_type=ebd_type,
        src_ebrid=_digits(_required(src, "EBRID", "EBD/SRC"), "EBD/SRC/EBRID"),
        src_url=_text(src, "URL"),
        dest_ebrid=_text(root.find("DEST"), "EBRID"),
        time=parse_time(_text(root, "EBDTime"), "EBD/EBDTime"),
        related_ebdid=_digits(related_ebdid, "EBD/RelatedEBD/EBDID") if related_ebdid else None,
    )


def _body(root: ET.Element, ebd_type: str) -> Body:
    parsers = {"EBM": _ebm, "EBMStateRequest": _ebm_state_request, "OMDRequest": _omd_request,
               "ConnectionCheck": _connection_check, "EBDResponse": _ebd_response}
    parser = parsers.get(ebd_type)
    if parser is None:
        return Unknown(element=ebd_type)
    element = _child(root, ebd_type, "EBD", required=True)
    assert element is not None
    return parser(element, f"EBD/{ebd_type}")


def _ebm(el: ET.Element, path: str) -> Ebm:
    ebmid = _digits(_required(el, "EBMID", path), f"{path}/EBMID")
    basic = _child(el, "MsgBasicInfo", path, required=True)
    bpath = f"{path}/MsgBasicInfo"
    msg_type = _int(_required(basic, "MsgType", bpath), f"{bpath}/MsgType")
    if msg_type not in (MSG_PLAY, MSG_CANCEL):
        raise EbdError(2, f"{bpath}/MsgType: {msg_type} is neither 1 (play) nor 2 (cancel)")
    play = msg_type == MSG_PLAY
    content = _child(el, "MsgContent", path, required=play)
    cpath = f"{path}/MsgContent"

    def pick(parent: ET.Element | None, name: str, where: str) -> str | None:
        return _required(parent, name, where) if play else _text(parent, name)

    severity = _int(pick(basic, "Severity", bpath), f"{bpath}/Severity", 0, 15)
    areas = pick(content, "AreaCode", cpath)
    auxiliaries = tuple(_auxiliary(aux, f"{cpath}/Auxiliary")
                        for aux in (content.findall("Auxiliary") if content is not None else ()))
    desc = _text(content, "MsgDesc") or ""
    if play and not desc and not auxiliaries:
        raise EbdError(3, f"{cpath}/MsgDesc missing (and no Auxiliary)")
    related = el.find("RelatedInfo")
    related_ebmid = _text(related, "EBMID")
    return Ebm(
        version=_text(el, "EBMVersion") or "",
        ebmid=ebmid,
        related_ebmid=_digits(related_ebmid, f"{path}/RelatedInfo/EBMID") if related_ebmid else None,
        msg_type=msg_type,
        sender_name=_text(basic, "SenderName") or "",
        sender_code=_text(basic, "SenderCode") or "",
        send_time=parse_time(_text(basic, "SendTime"), f"{bpath}/SendTime"),
        event_type=pick(basic, "EventType", bpath) or "",
        severity=severity or 0,
        start_time=parse_time(_text(basic, "StartTime"), f"{bpath}/StartTime"),
        end_time=parse_time(_text(basic, "EndTime"), f"{bpath}/EndTime"),
        language=_text(content, "LanguageCode") or "",
        title=_text(content, "MsgTitle") or "",
        desc=desc,
        area_codes=parse_area_codes(areas, f"{cpath}/AreaCode") if areas else (),
        program_num=_text(content, "ProgramNum"),
        auxiliaries=auxiliaries,
    )


def _auxiliary(el: ET.Element, path: str) -> Auxiliary:
    return Auxiliary(type=_required(el, "AuxiliaryType", path), desc=_required(el, "AuxiliaryDesc", path),
                     size=_int(_text(el, "Size"), f"{path}/Size", 0, None),
                     digest=_text(el, "Digest"))


def _ebm_state_request(el: ET.Element, path: str) -> EbmStateRequest:
    ebm = _child(el, "EBM", path, required=True)
    return EbmStateRequest(ebmid=_digits(_required(ebm, "EBMID", f"{path}/EBM"), f"{path}/EBM/EBMID"))


def _omd_request(el: ET.Element, path: str) -> OmdRequest:
    params = el.find("Params")
    ppath = f"{path}/Params"
    rpt_type = _text(params, "RptType") or "Full"
    if rpt_type not in RPT_TYPES:
        raise EbdError(2, f"{ppath}/RptType: neither Full nor Incremental: {_clip(rpt_type)}")
    return OmdRequest(omd_type=_required(el, "OMDType", path),
                      start=parse_time(_text(params, "RptStartTime"), f"{ppath}/RptStartTime"),
                      end=parse_time(_text(params, "RptEndTime"), f"{ppath}/RptEndTime"),
                      rpt_type=rpt_type)


def _connection_check(el: ET.Element, path: str) -> ConnectionCheck:
    return ConnectionCheck(rpt_time=parse_time(_text(el, "RptTime"), f"{path}/RptTime"))


def _ebd_response(el: ET.Element, path: str) -> EbdResponse:
    code = _int(_required(el, "ResultCode", path), f"{path}/ResultCode", 0, 99)
    assert code is not None
    return EbdResponse(result_code=code, result_desc=_text(el, "ResultDesc") or "")


# ---------------------------------------------------------------------------------------------
# Building


def format_time(dt: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Beijing time (a naive ``dt`` is taken as Beijing time already)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(SHANGHAI)
    return dt.strftime(TIME_FORMAT)


def _xml_text(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot carry (control characters), so the output parses."""
    return _NOT_XML_CHAR.sub("", value)


def _sub(parent: ET.Element, tag: str, text: str | int | float | datetime | None = None) -> ET.Element:
    """Append ``<tag>text</tag>``; None gives an empty element (the field is there, its value unknown)."""
    child = ET.SubElement(parent, tag)
    if isinstance(text, datetime):
        child.text = format_time(text)
    elif text is not None:
        child.text = _xml_text(str(text))
    return child


def _with_ebrid(parent: ET.Element, tag: str, ebrid: str) -> None:
    _sub(_sub(parent, tag), "EBRID", ebrid)


def _serialise(root: ET.Element) -> bytes:
    return XML_DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8")


def build_ebd(header: Header, body: ET.Element) -> bytes:
    """The EBDB file: header elements in the standard order, then ``body`` (whose tag must be the EBDType).

    ``header.time`` None writes the current time: ``EBDTime`` is always on the wire.
    """
    if body.tag != header.ebd_type:
        raise ValueError(f"body <{body.tag}> does not match EBDType {header.ebd_type!r}")
    root = ET.Element("EBD")
    _sub(root, "EBDVersion", header.version)
    _sub(root, "EBDID", header.ebdid)
    _sub(root, "EBDType", header.ebd_type)
    src = _sub(root, "SRC")
    _sub(src, "EBRID", header.src_ebrid)
    if header.src_url is not None:
        _sub(src, "URL", header.src_url)
    if header.dest_ebrid is not None:
        _with_ebrid(root, "DEST", header.dest_ebrid)
    _sub(root, "EBDTime", header.time if header.time is not None else datetime.now(SHANGHAI))
    if header.related_ebdid is not None:
        _sub(_sub(root, "RelatedEBD"), "EBDID", header.related_ebdid)
    root.append(body)
    return _serialise(root)


def ebd_response(result_code: int, desc: str) -> ET.Element:
    el = ET.Element("EBDResponse")
    _sub(el, "ResultCode", result_code)
    _sub(el, "ResultDesc", desc)
    return el


def connection_check(rpt_time: datetime) -> ET.Element:
    el = ET.Element("ConnectionCheck")
    _sub(el, "RptTime", rpt_time)
    return el


@dataclass(frozen=True)
class TerminalState:
    ebrid: str
    state_code: int
    """1 normal, 2 off, 3 fault, 4 fault recovered, 5 broadcasting."""
    state_desc: str
    rpt_time: datetime


@dataclass(frozen=True)
class TerminalInfo:
    ebrid: str
    name: str
    longitude: float | None
    latitude: float | None
    rpt_time: datetime
    rpt_type: str = "Sync"
    """``Sync`` (add or update) or ``Delete``."""


def _coordinate(value: float | None) -> str | None:
    return None if value is None else f"{value:.6f}"


def ebrdt_info(parent_ebrid: str, items: Sequence[TerminalInfo]) -> ET.Element:
    """``EBRDTInfo``: our terminals as resources under the township system ``parent_ebrid``."""
    el = ET.Element("EBRDTInfo")
    for item in items:
        row = _sub(el, "EBRDT")
        _sub(row, "RptTime", item.rpt_time)
        _sub(row, "RptType", item.rpt_type)
        _with_ebrid(row, "RelatedEBRPS", parent_ebrid)
        _sub(row, "EBRID", item.ebrid)
        _sub(row, "EBRName", item.name)
        _sub(row, "Longitude", _coordinate(item.longitude))
        _sub(row, "Latitude", _coordinate(item.latitude))
    return el


def ebrdt_state(items: Sequence[TerminalState]) -> ET.Element:
    """``EBRDTState``: each terminal's state code."""
    el = ET.Element("EBRDTState")
    for item in items:
        row = _sub(el, "EBRDT")
        _sub(row, "RptTime", item.rpt_time)
        _sub(row, "EBRID", item.ebrid)
        _sub(row, "StateCode", item.state_code)
        _sub(row, "StateDesc", item.state_desc)
    return el


def ebrbs_info(*, ebrid: str, name: str, parent_ebrid: str, rpt_time: datetime,
               longitude: float | None = None, latitude: float | None = None, url: str | None = None,
               rpt_type: str = "Sync") -> ET.Element:
    """``EBRBSInfo``: the township broadcast system itself, a resource under the platform ``parent_ebrid``."""
    el = ET.Element("EBRBSInfo")
    row = _sub(el, "EBRBS")
    _sub(row, "RptTime", rpt_time)
    _sub(row, "RptType", rpt_type)
    _with_ebrid(row, "RelatedEBRPS", parent_ebrid)
    _sub(row, "EBRID", ebrid)
    _sub(row, "EBRName", name)
    _sub(row, "Longitude", _coordinate(longitude))
    _sub(row, "Latitude", _coordinate(latitude))
    _sub(row, "URL", url)
    return el


def ebrbs_state(*, ebrid: str, state_code: int, state_desc: str, rpt_time: datetime) -> ET.Element:
    """``EBRBSState``: the township broadcast system's own state."""
    el = ET.Element("EBRBSState")
    row = _sub(el, "EBRBS")
    _sub(row, "RptTime", rpt_time)
    _sub(row, "EBRID", ebrid)
    _sub(row, "StateCode", state_code)
    _sub(row, "StateDesc", state_desc)
    return el


@dataclass(frozen=True)
class TerminalBroadcast:
    ebrid: str
    state_code: int
    state_desc: str


@dataclass(frozen=True)
class BroadcastReport:
    """How one EBM was broadcast here (an EBMStateResponse, or one EBMBrdLog item)."""

    ebmid: str
    state_code: int
    """BrdStateCode: 0 not processed, 1 waiting, 2 playing, 3 succeeded, 4 failed, 5 cancelled."""
    state_desc: str
    rpt_time: datetime
    coverage_rate: float | None
    area_codes: tuple[str, ...]
    counts: tuple[int, int, int, int]
    """Resources that took part: platforms, adapters, devices, terminals."""
    system_ebrid: str
    start: datetime | None
    end: datetime | None
    terminals: tuple[TerminalBroadcast, ...]
    ebm: Ebm | None = None
    """The message itself, for EBMBrdLog items."""


def _coverage(parent: ET.Element, report: BroadcastReport) -> None:
    coverage = _sub(parent, "Coverage")
    rate = None if report.coverage_rate is None else f"{min(max(report.coverage_rate, 0.0), 1.0):.2f}"
    _sub(coverage, "CoverageRate", rate)
    _sub(coverage, "AreaCode", ",".join(report.area_codes))
    _sub(coverage, "ResBrdStat", ",".join(str(n) for n in report.counts))


def _res_brd_info(parent: ET.Element, report: BroadcastReport) -> None:
    item = _sub(_sub(parent, "ResBrdInfo"), "ResBrdItem")
    system = _sub(item, "EBRBS")
    _sub(system, "RptTime", report.rpt_time)
    _sub(system, "BrdSysInfo", report.system_ebrid)
    _sub(system, "StartTime", report.start)
    _sub(system, "EndTime", report.end)
    _sub(system, "FileURL")
    _sub(system, "BrdStateCode", report.state_code)
    _sub(system, "BrdStateDesc", report.state_desc)
    for terminal in report.terminals:  # our documented extension: per-terminal detail
        row = _sub(item, "EBRDT")
        _sub(row, "EBRID", terminal.ebrid)
        _sub(row, "BrdStateCode", terminal.state_code)
        _sub(row, "BrdStateDesc", terminal.state_desc)


def ebm_state_response(report: BroadcastReport) -> ET.Element:
    """``EBMStateResponse``: the answer to an EBMStateRequest."""
    el = ET.Element("EBMStateResponse")
    _sub(el, "RptTime", report.rpt_time)
    _sub(_sub(el, "EBM"), "EBMID", report.ebmid)
    _sub(el, "BrdStateCode", report.state_code)
    _sub(el, "BrdStateDesc", report.state_desc)
    _coverage(el, report)
    _res_brd_info(el, report)
    return el


def ebm_brd_log(reports: Sequence[BroadcastReport]) -> ET.Element:
    """``EBMBrdLog``: the broadcast log, one ``EBMBrdItem`` per report (with the EBM when it is known)."""
    el = ET.Element("EBMBrdLog")
    for report in reports:
        item = _sub(el, "EBMBrdItem")
        if report.ebm is not None:
            item.append(_ebm_tree(report.ebm, with_version=False))
        else:
            _sub(_sub(item, "EBM"), "EBMID", report.ebmid)
        _sub(item, "BrdStateCode", report.state_code)
        _sub(item, "BrdStateDesc", report.state_desc)
        _coverage(item, report)
        _res_brd_info(item, report)
    return el


def ebm_element(ebm: Ebm) -> ET.Element:
    """The ``EBM`` body of an EBD (what a platform sends; the stand-in platform and tests use it)."""
    return _ebm_tree(ebm, with_version=True)


def _ebm_tree(ebm: Ebm, *, with_version: bool) -> ET.Element:
    el = ET.Element("EBM")
    if with_version:
        _sub(el, "EBMVersion", ebm.version)
    _sub(el, "EBMID", ebm.ebmid)
    if ebm.related_ebmid is not None:
        _sub(_sub(el, "RelatedInfo"), "EBMID", ebm.related_ebmid)
    basic = _sub(el, "MsgBasicInfo")
    _sub(basic, "MsgType", ebm.msg_type)
    _sub(basic, "SenderName", ebm.sender_name)
    _sub(basic, "SenderCode", ebm.sender_code)
    _sub(basic, "SendTime", ebm.send_time)
    _sub(basic, "EventType", ebm.event_type)
    _sub(basic, "Severity", ebm.severity)
    _sub(basic, "StartTime", ebm.start_time)
    _sub(basic, "EndTime", ebm.end_time)
    content = _sub(el, "MsgContent")
    _sub(content, "LanguageCode", ebm.language)
    _sub(content, "MsgTitle", ebm.title)
    _sub(content, "MsgDesc", ebm.desc)
    _sub(content, "AreaCode", ",".join(ebm.area_codes))
    if ebm.program_num is not None:
        _sub(content, "ProgramNum", ebm.program_num)
    for aux in ebm.auxiliaries:
        row = _sub(content, "Auxiliary")
        _sub(row, "AuxiliaryType", aux.type)
        _sub(row, "AuxiliaryDesc", aux.desc)
        _sub(row, "Size", aux.size)
        _sub(row, "Digest", aux.digest)
    return el
