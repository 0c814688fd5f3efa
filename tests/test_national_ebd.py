"""EBD XML (controller/uplink/national/ebd.py): hand-written documents as NATIONAL-PLATFORM.md describes them,
every refusal with its ResultCode and element path, build→parse round trips, and fuzzing."""

from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.uplink.national.ebd import (
    SHANGHAI,
    Auxiliary,
    BroadcastReport,
    ConnectionCheck,
    Document,
    EbdError,
    EbdResponse,
    Ebm,
    EbmStateRequest,
    Header,
    OmdRequest,
    TerminalBroadcast,
    TerminalInfo,
    TerminalState,
    Unknown,
    build_ebd,
    connection_check,
    ebd_response,
    ebm_brd_log,
    ebm_element,
    ebm_state_response,
    ebrbs_info,
    ebrbs_state,
    ebrdt_info,
    ebrdt_state,
    format_time,
    parse_ebd,
)

COUNTY = "43210020000000314010101"
TOWNSHIP = "53210020010000314010101"
EBDID = "10" + COUNTY + "2024061500000017"
EBMID = COUNTY + "20240615" + "0001"
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Written by hand from NATIONAL-PLATFORM.md (not by our builder): a county platform's play order.
SAMPLE_EBM = f"""<?xml version="1.0" encoding="UTF-8"?>
<EBD>
  <EBDVersion>1.0</EBDVersion>
  <EBDID>{EBDID}</EBDID>
  <EBDType>EBM</EBDType>
  <SRC>
    <EBRID>{COUNTY}</EBRID>
    <URL>http://10.32.1.5:8080/linkage/access</URL>
  </SRC>
  <DEST>
    <EBRID>{TOWNSHIP}</EBRID>
  </DEST>
  <EBDTime>2024-06-15 08:30:05</EBDTime>
  <EBM>
    <EBMVersion>1.0</EBMVersion>
    <EBMID>{EBMID}</EBMID>
    <MsgBasicInfo>
      <MsgType>1</MsgType>
      <SenderName>某县应急广播平台</SenderName>
      <SenderCode>321002000000</SenderCode>
      <SendTime>2024-06-15 08:30:00</SendTime>
      <EventType>11B03</EventType>
      <Severity>2</Severity>
      <StartTime>2024-06-15 08:35:00</StartTime>
      <EndTime>2024-06-15 10:35:00</EndTime>
    </MsgBasicInfo>
    <MsgContent>
      <LanguageCode>zho</LanguageCode>
      <MsgTitle>暴雨橙色预警</MsgTitle>
      <MsgDesc>县气象台发布暴雨橙色预警信号，请注意防范 &amp; 转移。</MsgDesc>
      <AreaCode> 321002001000, 321002001001 </AreaCode>
      <ProgramNum>1</ProgramNum>
      <Auxiliary>
        <AuxiliaryType>2</AuxiliaryType>
        <AuxiliaryDesc>alert.mp3</AuxiliaryDesc>
        <Size>48213</Size>
        <Digest>9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08</Digest>
      </Auxiliary>
    </MsgContent>
    <Dispatch>
      <LanguageCode>zho</LanguageCode>
      <EBRBS><BrdSysType>5</BrdSysType><BrdSysInfo>{TOWNSHIP}</BrdSysInfo></EBRBS>
    </Dispatch>
  </EBM>
</EBD>
""".encode()


def _beijing(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def _doc(body: str, ebd_type: str, extra_header: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><EBD><EBDVersion>1.0</EBDVersion><EBDID>{EBDID}</EBDID>'
            f"<EBDType>{ebd_type}</EBDType><SRC><EBRID>{COUNTY}</EBRID></SRC>{extra_header}"
            f"<EBDTime>2024-06-15 08:30:05</EBDTime>{body}</EBD>").encode()


def _refused(xml: bytes, code: int, desc: str | None = None, *words: str) -> EbdError:
    with pytest.raises(EbdError) as err:
        _no_files(lambda: parse_ebd(xml))
    assert err.value.result_code == code, err.value.desc
    if desc is not None:
        assert err.value.desc == desc
    for word in words:
        assert word in err.value.desc
    return err.value


# ---------------------------------------------------------------------------------------------
# No file is touched while a document is parsed (an XXE would have to open one)

_watch: list[list[tuple[str, object]]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _watch and (event in ("open", "socket.connect", "urllib.Request")
                   or event.startswith(("os.", "shutil.", "tempfile."))):
        if event == "open" and str(args[0]).endswith((".py", ".pyc")):
            return  # a lazy import of the standard library (strptime loads _strptime on first use)
        _watch[-1].append((event, args[:1]))


sys.addaudithook(_audit)


def _no_files(fn: Callable[[], object]) -> object:
    _watch.append([])
    try:
        return fn()
    finally:
        seen = _watch.pop()
        assert seen == [], f"file or network access while parsing: {seen[:3]}"


@pytest.fixture
def quiet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    yield tmp_path
    assert sorted(os.listdir(tmp_path)) == before


# ---------------------------------------------------------------------------------------------
# Hand-written documents


def test_the_hand_written_play_order_is_read_in_full(quiet_dir: Path):
    doc = _no_files(lambda: parse_ebd(SAMPLE_EBM))
    assert isinstance(doc, Document)
    assert doc.header == Header(version="1.0", ebdid=EBDID, ebd_type="EBM", src_ebrid=COUNTY,
                                src_url="http://10.32.1.5:8080/linkage/access", dest_ebrid=TOWNSHIP,
                                time=_beijing(2024, 6, 15, 8, 30, 5), related_ebdid=None)
    assert doc.body == Ebm(
        version="1.0", ebmid=EBMID, related_ebmid=None, msg_type=1, sender_name="某县应急广播平台",
        sender_code="321002000000", send_time=_beijing(2024, 6, 15, 8, 30), event_type="11B03", severity=2,
        start_time=_beijing(2024, 6, 15, 8, 35), end_time=_beijing(2024, 6, 15, 10, 35), language="zho",
        title="暴雨橙色预警", desc="县气象台发布暴雨橙色预警信号，请注意防范 & 转移。",
        area_codes=("321002001000", "321002001001"), program_num="1",
        auxiliaries=(Auxiliary(type="2", desc="alert.mp3", size=48213,
                               digest="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),))


def test_times_are_beijing_time_and_aware():
    start = parse_ebd(SAMPLE_EBM).body.start_time  # type: ignore[union-attr]
    assert start.utcoffset() == timedelta(hours=8)
    assert start.astimezone(UTC) == datetime(2024, 6, 15, 0, 35, tzinfo=UTC)


def test_a_hand_written_cancel_needs_only_its_ebmid():
    body = (f"<EBM><EBMVersion>1.0</EBMVersion><EBMID>{EBMID}</EBMID><RelatedInfo><EBMID>{EBMID}</EBMID>"
            "</RelatedInfo><MsgBasicInfo><MsgType>2</MsgType></MsgBasicInfo></EBM>")
    ebm = parse_ebd(_doc(body, "EBM")).body
    assert isinstance(ebm, Ebm)
    assert (ebm.msg_type, ebm.ebmid, ebm.related_ebmid) == (2, EBMID, EBMID)
    assert (ebm.severity, ebm.area_codes, ebm.title) == (0, (), "")


def test_a_hand_written_heartbeat():
    heartbeat = ("<?xml version='1.0' encoding='utf-8'?>\n<EBD><EBDVersion>1</EBDVersion>"
                 f"<EBDID>01{COUNTY}0000000000000000</EBDID><EBDType>ConnectionCheck</EBDType>"
                 f"<SRC><EBRID>{COUNTY}</EBRID></SRC><DEST><EBRID>{TOWNSHIP}</EBRID></DEST>"
                 "<EBDTime>2024-06-15 08:30:05</EBDTime>"
                 "<ConnectionCheck><RptTime>2024-06-15 08:30:05</RptTime></ConnectionCheck></EBD>").encode()
    doc = parse_ebd(heartbeat)
    assert doc.header.ebdid == f"01{COUNTY}" + "0" * 16
    assert doc.body == ConnectionCheck(rpt_time=_beijing(2024, 6, 15, 8, 30, 5))


def test_a_hand_written_state_request():
    doc = parse_ebd(_doc(f"<EBMStateRequest><EBM><EBMID>{EBMID}</EBMID></EBM></EBMStateRequest>",
                         "EBMStateRequest"))
    assert doc.body == EbmStateRequest(ebmid=EBMID)


def test_a_hand_written_omd_request():
    body = ("<OMDRequest><OMDType>EBRDTState</OMDType><Params>"
            "<RptStartTime>2024-06-01 00:00:00</RptStartTime><RptEndTime>2024-06-15 00:00:00</RptEndTime>"
            "<RptType>Incremental</RptType></Params></OMDRequest>")
    assert parse_ebd(_doc(body, "OMDRequest")).body == OmdRequest(
        omd_type="EBRDTState", start=_beijing(2024, 6, 1), end=_beijing(2024, 6, 15), rpt_type="Incremental")


def test_an_omd_request_without_params_asks_for_everything():
    body = "<OMDRequest><OMDType>EBMBrdLog</OMDType></OMDRequest>"
    assert parse_ebd(_doc(body, "OMDRequest")).body == OmdRequest("EBMBrdLog", None, None, "Full")


def test_a_hand_written_response_with_its_related_ebd():
    related = "10" + TOWNSHIP + "2024061500000003"
    body = "<EBDResponse><ResultCode>1</ResultCode><ResultDesc>已接收</ResultDesc></EBDResponse>"
    doc = parse_ebd(_doc(body, "EBDResponse", f"<RelatedEBD><EBDID>{related}</EBDID></RelatedEBD>"))
    assert doc.header.related_ebdid == related
    assert doc.body == EbdResponse(result_code=1, result_desc="已接收")


def test_other_types_are_unknown_not_refused():
    doc = parse_ebd(_doc("<EBRPSInfo><EBRPS/></EBRPSInfo>", "EBRPSInfo"))
    assert doc.body == Unknown(element="EBRPSInfo")


def test_a_utf16_document_is_read():
    text = SAMPLE_EBM.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert parse_ebd(text.encode("utf-16")).body == parse_ebd(SAMPLE_EBM).body


# ---------------------------------------------------------------------------------------------
# Refusals: not XML, hostile XML (2)


@pytest.mark.parametrize("xml", [b"", b"not xml", b"<EBD>", b"<EBD></EBX>", b"\xff\xfe\x00",
                                 b"<EBD>\xff</EBD>"],
                         ids=["empty", "text", "unclosed", "mismatched", "bom-junk", "bad-utf8"])
def test_not_well_formed(xml: bytes):
    _refused(xml, 2, None, "XML")


@pytest.mark.parametrize("xml", [
    b'<!DOCTYPE EBD [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><EBD>&xxe;</EBD>',
    b'<!DOCTYPE EBD [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><EBD>&c;</EBD>',
    b'<!DOCTYPE EBD SYSTEM "http://evil.example/ebd.dtd"><EBD/>',
    b'<?xml version="1.0"?><!DOCTYPE EBD><EBD/>',
], ids=["xxe", "billion-laughs", "external-dtd", "plain-doctype"])
def test_dtds_and_entities_are_refused_without_touching_anything(xml: bytes):
    _refused(xml, 2, None, "XML")


def test_the_root_must_be_ebd():
    _refused(b"<Signature/>", 2, "XML root is 'Signature', not EBD")


# ---------------------------------------------------------------------------------------------
# Refusals: required elements (3, naming the path)


def _without(xml: bytes, element: str) -> bytes:
    """The document with the first ``<element>…</element>`` (or its empty form) cut out."""
    text = xml.decode()
    cut = re.sub(rf"<{element}>.*?</{element}>|<{element}/>", "", text, count=1, flags=re.S)
    assert cut != text, element
    return cut.encode()


@pytest.mark.parametrize("element, path", [
    ("EBDVersion", "EBD/EBDVersion"),
    ("EBDID", "EBD/EBDID"),
    ("EBDType", "EBD/EBDType"),
    ("SRC", "EBD/SRC"),
    ("EBM", "EBD/EBM"),
    ("EBMID", "EBD/EBM/EBMID"),
    ("MsgBasicInfo", "EBD/EBM/MsgBasicInfo"),
    ("MsgType", "EBD/EBM/MsgBasicInfo/MsgType"),
    ("EventType", "EBD/EBM/MsgBasicInfo/EventType"),
    ("Severity", "EBD/EBM/MsgBasicInfo/Severity"),
    ("MsgContent", "EBD/EBM/MsgContent"),
    ("AreaCode", "EBD/EBM/MsgContent/AreaCode"),
    ("AuxiliaryType", "EBD/EBM/MsgContent/Auxiliary/AuxiliaryType"),
    ("AuxiliaryDesc", "EBD/EBM/MsgContent/Auxiliary/AuxiliaryDesc"),
])
def test_a_missing_required_element_is_content_missing(element: str, path: str):
    _refused(_without(SAMPLE_EBM, element), 3, f"{path} missing")


def test_a_missing_src_ebrid_is_content_missing():
    _refused(SAMPLE_EBM.replace(f"<EBRID>{COUNTY}</EBRID>".encode(), b"", 1), 3, "EBD/SRC/EBRID missing")


def test_an_empty_element_counts_as_missing():
    xml = re.sub(rb"<MsgType>1</MsgType>", b"<MsgType>  </MsgType>", SAMPLE_EBM)
    _refused(xml, 3, "EBD/EBM/MsgBasicInfo/MsgType missing")


def test_a_play_with_nothing_to_broadcast_is_content_missing():
    xml = _without(_without(SAMPLE_EBM, "MsgDesc"), "Auxiliary")
    _refused(xml, 3, "EBD/EBM/MsgContent/MsgDesc missing (and no Auxiliary)")
    assert parse_ebd(_without(SAMPLE_EBM, "MsgDesc")).body.desc == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("body, ebd_type, path", [
    ("<EBMStateRequest><EBM/></EBMStateRequest>", "EBMStateRequest", "EBD/EBMStateRequest/EBM/EBMID"),
    ("<EBMStateRequest/>", "EBMStateRequest", "EBD/EBMStateRequest/EBM"),
    ("<OMDRequest><Params/></OMDRequest>", "OMDRequest", "EBD/OMDRequest/OMDType"),
    ("<EBDResponse><ResultDesc>x</ResultDesc></EBDResponse>", "EBDResponse", "EBD/EBDResponse/ResultCode"),
    ("", "ConnectionCheck", "EBD/ConnectionCheck"),
])
def test_missing_elements_of_the_other_bodies(body: str, ebd_type: str, path: str):
    _refused(_doc(body, ebd_type), 3, f"{path} missing")


# ---------------------------------------------------------------------------------------------
# Refusals: malformed values (2, naming the element and the value)


def _replace(old: str, new: str) -> bytes:
    assert old.encode() in SAMPLE_EBM
    return SAMPLE_EBM.replace(old.encode(), new.encode(), 1)


@pytest.mark.parametrize("old, new, desc", [
    ("<MsgType>1</MsgType>", "<MsgType>3</MsgType>",
     "EBD/EBM/MsgBasicInfo/MsgType: 3 is neither 1 (play) nor 2 (cancel)"),
    ("<MsgType>1</MsgType>", "<MsgType>play</MsgType>",
     "EBD/EBM/MsgBasicInfo/MsgType: not an integer: 'play'"),
    ("<Severity>2</Severity>", "<Severity>16</Severity>", "EBD/EBM/MsgBasicInfo/Severity: 16 not in 0..15"),
    ("<Severity>2</Severity>", "<Severity>-1</Severity>",
     "EBD/EBM/MsgBasicInfo/Severity: not an integer: '-1'"),
    ("<Severity>2</Severity>", "<Severity>橙</Severity>",
     "EBD/EBM/MsgBasicInfo/Severity: not an integer: '橙'"),
    ("<Severity>2</Severity>", "<Severity>٢</Severity>",
     "EBD/EBM/MsgBasicInfo/Severity: not an integer: '٢'"),
    ("<Size>48213</Size>", "<Size>48 KB</Size>",
     "EBD/EBM/MsgContent/Auxiliary/Size: not an integer: '48 KB'"),
    ("<StartTime>2024-06-15 08:35:00</StartTime>", "<StartTime>2024-06-15T08:35:00+08:00</StartTime>",
     "EBD/EBM/MsgBasicInfo/StartTime: not a time YYYY-MM-DD HH:MM:SS: '2024-06-15T08:35:00+08:00'"),
    ("<EndTime>2024-06-15 10:35:00</EndTime>", "<EndTime>2024-02-30 10:35:00</EndTime>",
     "EBD/EBM/MsgBasicInfo/EndTime: not a time YYYY-MM-DD HH:MM:SS: '2024-02-30 10:35:00'"),
    ("<SendTime>2024-06-15 08:30:00</SendTime>", "<SendTime>" + "9" * 100 + "</SendTime>",
     "EBD/EBM/MsgBasicInfo/SendTime: not a time YYYY-MM-DD HH:MM:SS: '" + "9" * 40 + "…'"),
    ("<EBDTime>2024-06-15 08:30:05</EBDTime>", "<EBDTime>yesterday</EBDTime>",
     "EBD/EBDTime: not a time YYYY-MM-DD HH:MM:SS: 'yesterday'"),
    (f"<EBDID>{EBDID}</EBDID>", "<EBDID>10-43</EBDID>", "EBD/EBDID: not digits: '10-43'"),
    (f"<EBMID>{EBMID}</EBMID>", "<EBMID>x1</EBMID>", "EBD/EBM/EBMID: not digits: 'x1'"),
    ("<EBDType>EBM</EBDType>", "<EBDType>*</EBDType>", "EBD/EBDType: not an element name: '*'"),
])
def test_malformed_values_are_parse_failures(old: str, new: str, desc: str):
    _refused(_replace(old, new), 2, desc)


@pytest.mark.parametrize("areas, bad", [
    ("321002001000,32100200100", "'32100200100'"),
    ("321002001000，321002001001", "'321002001000，321002001001'"),
    ("321002001000;321002001001", "'321002001000;321002001001'"),
    ("321002001000,", "''"),
    ("321002", "'321002'"),
    ("３２１００２００１０００", "'３２１００２００１０００'"),
])
def test_area_codes_are_strict_twelve_digit_lists(areas: str, bad: str):
    xml = _replace(" 321002001000, 321002001001 ", areas)
    _refused(xml, 2, f"EBD/EBM/MsgContent/AreaCode: not a 12-digit area code: {bad}")


def test_area_codes_allow_whitespace_around_each():
    xml = _replace(" 321002001000, 321002001001 ", "\n 321002001000 ,\t321002001001\n")
    assert parse_ebd(xml).body.area_codes == ("321002001000", "321002001001")  # type: ignore[union-attr]


def test_an_omd_request_with_an_odd_report_type():
    body = "<OMDRequest><OMDType>EBRDTInfo</OMDType><Params><RptType>Some</RptType></Params></OMDRequest>"
    _refused(_doc(body, "OMDRequest"), 2,
             "EBD/OMDRequest/Params/RptType: neither Full nor Incremental: 'Some'")


# ---------------------------------------------------------------------------------------------
# Building: exact shapes, then build → parse


NOW = _beijing(2024, 6, 15, 9, 0, 0)
HEADER = Header(version="1.0", ebdid="10" + TOWNSHIP + "2024061500000001", ebd_type="EBDResponse",
                src_ebrid=TOWNSHIP, src_url="http://10.32.9.9:8443/ebd", dest_ebrid=COUNTY, time=NOW,
                related_ebdid=EBDID)


def _tags(el: ET.Element) -> list[str]:
    return [child.tag for child in el]


def _reparse(xml: bytes) -> ET.Element:
    return ET.fromstring(xml)


def test_format_time_writes_beijing_time():
    assert format_time(datetime(2024, 6, 15, 0, 35, tzinfo=UTC)) == "2024-06-15 08:35:00"
    assert format_time(datetime(2024, 6, 15, 8, 35, 7, 999_999)) == "2024-06-15 08:35:07"  # naive = Beijing
    assert format_time(_beijing(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05"


def test_the_header_is_written_in_the_standard_order():
    xml = build_ebd(HEADER, ebd_response(1, "ok"))
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = _reparse(xml)
    assert _tags(root) == ["EBDVersion", "EBDID", "EBDType", "SRC", "DEST", "EBDTime", "RelatedEBD",
                           "EBDResponse"]
    assert _tags(root.find("SRC")) == ["EBRID", "URL"]  # type: ignore[arg-type]
    assert root.findtext("EBDTime") == "2024-06-15 09:00:00"


def test_optional_header_parts_are_left_out_and_the_time_defaults_to_now():
    header = Header("1.0", HEADER.ebdid, "ConnectionCheck", TOWNSHIP, None, None, None, None)
    root = _reparse(build_ebd(header, connection_check(NOW)))
    assert _tags(root) == ["EBDVersion", "EBDID", "EBDType", "SRC", "EBDTime", "ConnectionCheck"]
    written = parse_ebd(build_ebd(header, connection_check(NOW))).header.time
    assert written is not None and abs(written - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_body_must_match_the_type():
    with pytest.raises(ValueError, match="EBDType"):
        build_ebd(HEADER, connection_check(NOW))


def test_text_is_escaped_and_control_characters_dropped():
    doc = parse_ebd(build_ebd(HEADER, ebd_response(5, "a<b>&c\x00\x07\x1b]d\U0001F4E2")))
    assert doc.body == EbdResponse(5, "a<b>&c]d\U0001F4E2")


def test_response_round_trip():
    doc = parse_ebd(build_ebd(HEADER, ebd_response(4, "签名验证失败")))
    assert doc == Document(header=HEADER, body=EbdResponse(result_code=4, result_desc="签名验证失败"))


def test_connection_check_round_trip():
    header = Header("1.0", "01" + TOWNSHIP + "0" * 16, "ConnectionCheck", TOWNSHIP, None, COUNTY, NOW, None)
    assert parse_ebd(build_ebd(header, connection_check(NOW))) == Document(header, ConnectionCheck(NOW))


PLAY = Ebm(version="1.0", ebmid=EBMID, related_ebmid=None, msg_type=1, sender_name="某县应急广播平台",
           sender_code="321002000000", send_time=NOW, event_type="11B03", severity=15, start_time=NOW,
           end_time=NOW + timedelta(hours=2), language="zho", title="测试", desc="这是一次测试广播",
           area_codes=("321002001000", "321002001001"), program_num="2",
           auxiliaries=(Auxiliary("2", "a.mp3", 100, "ab" * 32), Auxiliary("3", "b.wav", None, None)))


def test_ebm_round_trip_and_element_order():
    header = Header("1.0", EBDID, "EBM", COUNTY, "http://c/x", TOWNSHIP, NOW, None)
    xml = build_ebd(header, ebm_element(PLAY))
    assert parse_ebd(xml) == Document(header, PLAY)
    ebm = _reparse(xml).find("EBM")
    assert ebm is not None
    assert _tags(ebm) == ["EBMVersion", "EBMID", "MsgBasicInfo", "MsgContent"]
    assert _tags(ebm.find("MsgBasicInfo")) == ["MsgType", "SenderName", "SenderCode", "SendTime",  # type: ignore[arg-type]
                                               "EventType", "Severity", "StartTime", "EndTime"]
    assert _tags(ebm.find("MsgContent")) == ["LanguageCode", "MsgTitle", "MsgDesc", "AreaCode",  # type: ignore[arg-type]
                                             "ProgramNum", "Auxiliary", "Auxiliary"]
    assert ebm.findtext("MsgContent/AreaCode") == "321002001000,321002001001"


def test_cancel_round_trip():
    cancel = Ebm("1.0", EBMID, EBMID, 2, "", "", None, "", 0, None, None, "", "", "", (), None, ())
    header = Header("1.0", EBDID, "EBM", COUNTY, None, None, NOW, None)
    assert parse_ebd(build_ebd(header, ebm_element(cancel))).body == cancel


def test_terminal_reports_have_the_documented_shape():
    items = [TerminalInfo(TOWNSHIP[:-2] + "41", "村口大喇叭", 119.123456789, 32.5, NOW),
             TerminalInfo(TOWNSHIP[:-2] + "42", "小学", None, None, NOW, rpt_type="Delete")]
    header = Header("1.0", HEADER.ebdid, "EBRDTInfo", TOWNSHIP, None, COUNTY, NOW, None)
    xml = build_ebd(header, ebrdt_info(TOWNSHIP, items))
    assert parse_ebd(xml) == Document(header, Unknown("EBRDTInfo"))
    rows = _reparse(xml).findall("EBRDTInfo/EBRDT")
    assert [_tags(r) for r in rows] == [["RptTime", "RptType", "RelatedEBRPS", "EBRID", "EBRName",
                                         "Longitude", "Latitude"]] * 2
    assert [r.findtext("RelatedEBRPS/EBRID") for r in rows] == [TOWNSHIP, TOWNSHIP]
    assert (rows[0].findtext("Longitude"), rows[0].findtext("Latitude")) == ("119.123457", "32.500000")
    assert (rows[1].findtext("RptType"), rows[1].findtext("Longitude")) == ("Delete", "")
    assert rows[0].findtext("EBRName") == "村口大喇叭"

    states = [TerminalState(TOWNSHIP[:-2] + "41", 5, "broadcasting", NOW)]
    xml = build_ebd(Header("1.0", HEADER.ebdid, "EBRDTState", TOWNSHIP, None, None, NOW, None),
                    ebrdt_state(states))
    row = _reparse(xml).find("EBRDTState/EBRDT")
    assert row is not None and _tags(row) == ["RptTime", "EBRID", "StateCode", "StateDesc"]
    assert (row.findtext("StateCode"), row.findtext("RptTime")) == ("5", "2024-06-15 09:00:00")


def test_broadcast_system_reports_have_the_documented_shape():
    info = ebrbs_info(ebrid=TOWNSHIP, name="某镇应急广播系统", parent_ebrid=COUNTY, rpt_time=NOW,
                      longitude=119.4, latitude=32.4, url="http://10.32.9.9:8443/ebd")
    header = Header("1.0", HEADER.ebdid, "EBRBSInfo", TOWNSHIP, None, None, NOW, None)
    root = _reparse(build_ebd(header, info))
    row = root.find("EBRBSInfo/EBRBS")
    assert row is not None
    assert _tags(row) == ["RptTime", "RptType", "RelatedEBRPS", "EBRID", "EBRName", "Longitude", "Latitude",
                          "URL"]
    assert (row.findtext("RelatedEBRPS/EBRID"), row.findtext("URL")) == (COUNTY, "http://10.32.9.9:8443/ebd")

    state = ebrbs_state(ebrid=TOWNSHIP, state_code=1, state_desc="normal", rpt_time=NOW)
    header = Header("1.0", HEADER.ebdid, "EBRBSState", TOWNSHIP, None, None, NOW, None)
    assert parse_ebd(build_ebd(header, state)).body == Unknown("EBRBSState")
    assert _tags(state.find("EBRBS")) == ["RptTime", "EBRID", "StateCode", "StateDesc"]  # type: ignore[arg-type]


REPORT = BroadcastReport(ebmid=EBMID, state_code=3, state_desc="播发成功", rpt_time=NOW, coverage_rate=0.956,
                         area_codes=("321002001000", "321002001001"), counts=(0, 0, 1, 12),
                         system_ebrid=TOWNSHIP, start=NOW, end=NOW + timedelta(minutes=3),
                         terminals=(TerminalBroadcast("1", 3, "ok"), TerminalBroadcast("2", 4, "offline")))


def test_state_response_has_the_documented_shape():
    header = Header("1.0", HEADER.ebdid, "EBMStateResponse", TOWNSHIP, None, COUNTY, NOW, EBDID)
    xml = build_ebd(header, ebm_state_response(REPORT))
    assert parse_ebd(xml) == Document(header, Unknown("EBMStateResponse"))
    el = _reparse(xml).find("EBMStateResponse")
    assert el is not None
    assert _tags(el) == ["RptTime", "EBM", "BrdStateCode", "BrdStateDesc", "Coverage", "ResBrdInfo"]
    assert el.findtext("EBM/EBMID") == EBMID
    assert [(c.tag, c.text) for c in el.find("Coverage")] == [  # type: ignore[union-attr]
        ("CoverageRate", "0.96"), ("AreaCode", "321002001000,321002001001"), ("ResBrdStat", "0,0,1,12")]
    item = el.find("ResBrdInfo/ResBrdItem")
    assert item is not None and _tags(item) == ["EBRBS", "EBRDT", "EBRDT"]
    assert [(c.tag, c.text) for c in item.find("EBRBS")] == [  # type: ignore[union-attr]
        ("RptTime", "2024-06-15 09:00:00"), ("BrdSysInfo", TOWNSHIP), ("StartTime", "2024-06-15 09:00:00"),
        ("EndTime", "2024-06-15 09:03:00"), ("FileURL", None), ("BrdStateCode", "3"),
        ("BrdStateDesc", "播发成功")]
    terminals = [[c.text for c in row] for row in item.findall("EBRDT")]
    assert terminals == [["1", "3", "ok"], ["2", "4", "offline"]]


def test_state_response_without_a_rate_or_times():
    report = BroadcastReport(EBMID, 1, "waiting", NOW, None, (), (0, 0, 0, 0), TOWNSHIP, None, None, ())
    el = ebm_state_response(report)
    assert el.findtext("Coverage/CoverageRate") == ""
    assert el.findtext("ResBrdInfo/ResBrdItem/EBRBS/StartTime") == ""
    assert el.findtext("Coverage/AreaCode") == ""
    assert ebm_state_response(BroadcastReport(EBMID, 3, "", NOW, 1.7, (), (0, 0, 0, 0), TOWNSHIP, None, None,
                                              ())).findtext("Coverage/CoverageRate") == "1.00"


def test_broadcast_log_items_carry_the_ebm_when_known():
    without = REPORT
    with_ebm = BroadcastReport(**{**REPORT.__dict__, "ebm": PLAY})
    header = Header("1.0", HEADER.ebdid, "EBMBrdLog", TOWNSHIP, None, COUNTY, NOW, EBDID)
    xml = build_ebd(header, ebm_brd_log([without, with_ebm]))
    assert parse_ebd(xml) == Document(header, Unknown("EBMBrdLog"))
    items = _reparse(xml).findall("EBMBrdLog/EBMBrdItem")
    assert [_tags(i) for i in items] == [["EBM", "BrdStateCode", "BrdStateDesc", "Coverage",
                                          "ResBrdInfo"]] * 2
    assert _tags(items[0].find("EBM")) == ["EBMID"]  # type: ignore[arg-type]
    assert _tags(items[1].find("EBM")) == ["EBMID", "MsgBasicInfo", "MsgContent"]  # type: ignore[arg-type]
    assert items[1].findtext("EBM/MsgContent/MsgTitle") == "测试"


# ---------------------------------------------------------------------------------------------
# Fuzzing: only EbdError, never anything else, never a file touched

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)


def _only_ebd_errors(xml: bytes) -> Document | None:
    try:
        return parse_ebd(xml)
    except EbdError as e:
        assert e.result_code in (2, 3)
        assert e.desc
        return None


def test_fuzz_random_bytes(quiet_dir: Path):
    @FUZZ
    @given(st.binary(max_size=2000))
    def run(data: bytes) -> None:
        _no_files(lambda: _only_ebd_errors(data))

    run()


def test_fuzz_mutated_sample(quiet_dir: Path):
    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, len(SAMPLE_EBM) - 1), st.integers(0, 255)),
                    min_size=1, max_size=8),
           st.one_of(st.none(), st.integers(0, len(SAMPLE_EBM))))
    def run(edits: list[tuple[int, int]], cut: int | None) -> None:
        buf = bytearray(SAMPLE_EBM)
        for position, value in edits:
            buf[position] = value
        _no_files(lambda: _only_ebd_errors(bytes(buf[:cut] if cut is not None else buf)))

    run()


_LEAVES = sorted({m.group(1) for m in re.finditer(rb"<(\w+)>[^<]*</\1>", SAMPLE_EBM)})


def test_fuzz_element_texts_and_removals(quiet_dir: Path):
    @FUZZ
    @given(st.dictionaries(st.sampled_from(_LEAVES), _TEXT, max_size=4),
           st.sets(st.sampled_from(_LEAVES), max_size=3))
    def run(texts: dict[bytes, str], removed: set[bytes]) -> None:
        xml = SAMPLE_EBM
        for tag, text in texts.items():
            escaped = text.replace("&", "&amp;").replace("<", "&lt;").encode()
            element = b"<%s>%s</%s>" % (tag, escaped, tag)
            xml = re.sub(rb"<%s>[^<]*</%s>" % (tag, tag), lambda _m, e=element: e, xml, count=1)
        for tag in removed:
            xml = re.sub(rb"<%s>[^<]*</%s>" % (tag, tag), b"", xml, count=1)
        doc = _no_files(lambda: _only_ebd_errors(xml))
        if doc is not None and doc.header.ebd_type == "EBM":
            assert isinstance(doc.body, Ebm)

    run()


_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda dt: dt.replace(microsecond=0, tzinfo=SHANGHAI))


def test_fuzz_ebm_round_trip():
    nonempty = _TEXT.filter(bool)

    @FUZZ
    @given(st.builds(
        Ebm, version=_TEXT, ebmid=st.from_regex(r"[0-9]{35}", fullmatch=True), related_ebmid=st.none(),
        msg_type=st.just(1), sender_name=_TEXT, sender_code=_TEXT, send_time=st.none() | _TIMES,
        event_type=nonempty, severity=st.integers(0, 15), start_time=st.none() | _TIMES,
        end_time=st.none() | _TIMES, language=_TEXT, title=_TEXT, desc=nonempty,
        area_codes=st.lists(st.from_regex(r"[0-9]{12}", fullmatch=True), min_size=1, max_size=5).map(tuple),
        program_num=st.none() | nonempty,
        auxiliaries=st.lists(st.builds(Auxiliary, type=nonempty, desc=nonempty,
                                       size=st.none() | st.integers(0, 10**9), digest=st.none() | nonempty),
                             max_size=3).map(tuple)))
    def run(ebm: Ebm) -> None:
        header = Header("1.0", EBDID, "EBM", COUNTY, None, None, NOW, None)
        assert parse_ebd(build_ebd(header, ebm_element(ebm))).body == ebm

    run()
