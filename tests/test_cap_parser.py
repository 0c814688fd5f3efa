"""CAP parsing: every shared sample, our Chinese-variant and CAP 1.x fixtures, dialect rules, entity
attacks and property-based fuzzing (the parser only ever returns an alert or a clear CapError)."""

from __future__ import annotations

import http.server
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.alerts.cap import (
    MAX_CAP_BYTES,
    CapAlert,
    CapError,
    Circle,
    Dialect,
    MsgType,
    Severity,
    Status,
    parse_cap,
    widen_area_code,
)

SHARED = Path(__file__).resolve().parent / "cap" / "samples"  # copy of ../shared/cap-samples
SAMPLES = SHARED / "google-cap-library"
FIXTURES = Path(__file__).resolve().parent / "cap"
CST = timezone(timedelta(hours=8))


def load(name: str) -> CapAlert:
    path = FIXTURES / name if (FIXTURES / name).exists() else SAMPLES / name
    return parse_cap(path.read_bytes())


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def variant(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; fails loudly if a fixture no longer contains ``old``."""
    assert old in text, f"fixture no longer contains {old!r}"
    return text.replace(old, new, 1)


def refused(document: str | bytes) -> CapError:
    with pytest.raises(CapError) as caught:
        parse_cap(document)
    return caught.value


RED = fixture_text("cn_rainstorm_red_alert.xml")
CAP12 = fixture_text("cap12_zh_rainstorm.xml")


# --- Every shared sample -------------------------------------------------------------------------

PARSED = {
    # file: identifier, sender, status, msgType, dialect,
    #       [(language, severity, areas, polygon points, expires)]
    "australia.cap": ("tag:www.rfs.nsw.gov.au2011-10-06:40184", "webmaster@rfs.nsw.gov.au", Status.ACTUAL,
                      MsgType.ALERT, Dialect.CAP12,
                      [("en-AU", Severity.MINOR, 1, [], "2011-10-06T23:04:00+10:00")] * 2),
    "canada.cap": ("2.49.0.1.124.6bddbc91.2012", "cap@ec.gc.ca", Status.ACTUAL, MsgType.UPDATE, Dialect.CAP12,
                   [("en-CA", Severity.MINOR, 2, [17, 38], "2012-05-03T00:20:00+00:00"),
                    ("fr-CA", Severity.MINOR, 2, [17, 38], "2012-05-03T00:20:00+00:00")]),
    "canada_signed.cap": ("2.49.0.1.124.f2c83f5f.2013", "cap-pac@ec.gc.ca", Status.ACTUAL, MsgType.UPDATE,
                          Dialect.CAP12,
                          [("en-CA", Severity.MODERATE, 2, [38, 37], "2013-01-25T13:26:00+00:00"),
                           ("fr-CA", Severity.MODERATE, 2, [38, 37], "2013-01-25T13:26:00+00:00")]),
    "earthquake.cap": ("USGS-earthquakes-us2010apcd.6.20100831T000925.496Z",
                       "http://earthquake.usgs.gov/research/monitoring/anss/neic/", Status.ACTUAL,
                       MsgType.ALERT, Dialect.CAP11,
                       [("en-US", Severity.UNKNOWN, 1, [], "2010-09-02T00:09:25-05:00")]),
    "earthquake-iso8859-1.cap": ("USGS-earthquakes-usB000D5T4.3947362.7.20121014T225304.360Z.0",
                                 "http://earthquake.usgs.gov/research/monitoring/anss/neic/", Status.ACTUAL,
                                 MsgType.ALERT, Dialect.CAP12,
                                 [("en-US", Severity.UNKNOWN, 1, [], "2012-10-21T22:53:04+00:00")]),
    "no_optional_fields.cap": ("USGS-earthquakes-us2010apcd.6.20100831T000925.496Z",
                               "http://earthquake.usgs.gov/research/monitoring/anss/neic/", Status.ACTUAL,
                               MsgType.ALERT, Dialect.CAP11, []),
    "wcatwc-warning.cap": ("PAAQ-2-lqw6d6", "http://newwcatwc.arh.noaa.gov/tsuPortal/", Status.ACTUAL,
                           MsgType.UPDATE, Dialect.CAP12,
                           [("en-US", Severity.EXTREME, 1, [], "2011-09-02T12:36:50+00:00")]),
    "weather.cap": ("NOAA-NWS-ALERTS-MT20100830100700TFXFlashFloodWatchTFX20100830180000MT",
                    "w-nws.webmaster@noaa.gov", Status.ACTUAL, MsgType.ALERT, Dialect.CAP11,
                    [("en-US", Severity.SEVERE, 1, [], "2010-08-30T12:00:00-06:00")]),
}

REFUSED = {
    # file: (element named, words the message must contain)
    "invalid.cap": ("alert/scope", ["<scope>", "missing"]),
    "canada_errors.cap": ("alert/references", ["<references> is empty"]),
    "noaa_errors.cap": ("alert/references", ["<references> is empty", "alert/info[0]/severity",
                                             "alert/info[0]/area[0]/polygon[0]",
                                             "point 7 '+40.85,-118.09,'"]),
    "amber.atom": (None, ["root element is feed, not alert"]),
    "earthquake_index.atom": (None, ["root element is feed, not alert"]),
    "weather.atom": (None, ["root element is feed, not alert"]),
    "weather_index.atom": (None, ["root element is feed, not alert"]),
    "xee.cap": (None, ["DTD/entity declarations are not accepted"]),
    "xee.atom": (None, ["DTD/entity declarations are not accepted"]),
}


def test_every_shared_sample_is_covered() -> None:
    on_disk = {p.name for p in SAMPLES.iterdir() if p.suffix in (".cap", ".atom")}
    assert on_disk == set(PARSED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(PARSED))
def test_sample_is_parsed_with_its_key_facts(name: str) -> None:
    identifier, sender, status, msg_type, dialect, infos = PARSED[name]
    alert = load(name)
    assert (alert.identifier, alert.sender, alert.status, alert.msg_type, alert.dialect) == (
        identifier, sender, status, msg_type, dialect)
    assert alert.key == (sender, identifier, alert.sent_text)
    assert alert.sent.tzinfo is not None
    got = [(i.language, i.severity, len(i.areas), [len(p) for a in i.areas for p in a.polygons],
            i.expires) for i in alert.infos]
    assert got == [(lang, sev, areas, points, datetime.fromisoformat(exp))
                   for lang, sev, areas, points, exp in infos]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_sample_is_refused_with_the_reason(name: str) -> None:
    element, words = REFUSED[name]
    error = refused((SAMPLES / name).read_bytes())
    assert error.element == element
    for word in words:
        assert word in str(error)


def test_sample_details_survive_parsing() -> None:
    australia = load("australia.cap")  # cap: prefix, circle, empty parameter value
    area = australia.infos[0].areas[0]
    assert area.circles == (Circle(-35.3888, 147.0598, 25.0),)
    assert ("AllocatedResources", "") in australia.infos[0].parameters
    assert australia.infos[0].categories == ("Fire", "Met")

    canada = load("canada.cap")
    assert [(r.sender, r.identifier, r.sent) for r in canada.references] == [
        ("cap@ec.gc.ca", "2.49.0.1.124.a3f342a4.2012", "2012-05-02T21:45:05-00:00"),
        ("cap@ec.gc.ca", "2.49.0.1.124.60f31a3a.2012", "2012-05-02T21:55:21-00:00")]
    assert canada.infos[0].areas[0].polygons[0][0] == (42.3481, -82.9314)
    assert canada.infos[0].areas[0].area_codes == ()  # Canadian location codes are not Chinese codes
    assert canada.info_for(["fr"]) is canada.infos[1]

    quake = parse_cap((SAMPLES / "earthquake-iso8859-1.cap").read_bytes())
    assert "Usulután" in quake.infos[0].headline  # declared ISO-8859-1, decoded right

    signed = load("canada_signed.cap")
    assert len(signed.references) == 9
    assert any("signature" in w.lower() and "not verified" in w for w in signed.warnings)

    weather = load("weather.cap")
    assert weather.infos[0].areas[0].area_codes == ()  # FIPS6 030049 is not widened
    assert ("WMOHEADER", "") in weather.infos[0].parameters
    assert weather.infos[0].event_codes == (("SAME", "FFA"),)

    assert load("no_optional_fields.cap").info_for(["zh-CN"]) is None
    assert load("wcatwc-warning.cap").references[0].sender == "PAAQ"


def test_noaa_errors_names_every_problem_and_warns_about_the_rest() -> None:
    error = refused((SAMPLES / "noaa_errors.cap").read_bytes())
    assert error.message.startswith("<references> is empty")
    assert "required element <severity> is missing" in error.message


# --- Our Chinese-variant fixtures ------------------------------------------------------------------

def test_cn_red_rainstorm_alert() -> None:
    alert = load("cn_rainstorm_red_alert.xml")
    assert alert.dialect is Dialect.CN
    assert (alert.identifier, alert.sender, alert.sender_code) == (
        "34062141600000_20261128031500", "濉溪县气象台", "34062141600000")
    assert alert.sent == datetime(2026, 11, 28, 3, 15, tzinfo=CST)
    assert alert.sent_text == "2026-11-28 03:15:00+08:00"
    assert (alert.status, alert.msg_type, alert.scope) == (Status.ACTUAL, MsgType.ALERT, "Public")
    assert alert.references == () and alert.note == "" and alert.warnings == ()
    info = alert.info_for(["zh-CN", "en-US"])
    assert info is not None
    assert (info.language, info.event, info.event_type) == ("zh-CN", "暴雨", "11B03")
    assert (info.severity, info.severity_colour, info.urgency, info.certainty) == (
        Severity.EXTREME, "Red", "Immediate", "Observed")
    assert info.expires is None and info.onset is None and info.web == ""  # empty elements = absent
    assert info.headline == "濉溪县气象台发布暴雨红色预警信号"
    (area,) = info.areas
    assert area.area_codes == ("340621105201", "340621105202", "340621105203")
    assert area.geocodes == (("", "340621105201"), ("", "340621105202"), ("", "340621105203"))
    assert area.polygons == () and area.circles == ()


def test_cn_update_and_cancel_reference_the_alert() -> None:
    red, update, cancel = (load(f"cn_rainstorm_{n}.xml") for n in ("red_alert", "update", "cancel"))
    assert update.msg_type is MsgType.UPDATE and cancel.msg_type is MsgType.CANCEL
    assert update.sent_text == "2026-11-28 06:10:00+08:00"  # from <sendTime>, <sent> being empty
    assert [(r.sender, r.identifier, r.sent) for r in update.references] == [red.key]
    assert [(r.sender, r.identifier, r.sent) for r in cancel.references] == [red.key, update.key]
    assert all(r.sent_at is not None for r in cancel.references)
    info = update.infos[0]
    assert (info.severity, info.severity_colour) == (Severity.SEVERE, "Orange")  # 橙色
    assert info.areas[0].geocodes == (("行政区划代码", "340621105000"),)
    assert info.areas[0].area_codes == ("340621105000",)


def test_cn_test_other_county_expired_polygon() -> None:
    test = load("cn_test.xml")
    assert test.status is Status.TEST  # written "test"
    assert test.sent == datetime(2026, 11, 28, 10, 0, tzinfo=CST)  # ISO "T" form
    assert test.infos[0].severity_colour == "Yellow"

    other = load("cn_other_county.xml")
    codes = [c for a in other.infos[0].areas for c in a.area_codes]
    assert codes == ["341321100000", "341321104000", "341321000000"]
    assert not any(c.startswith("340621") for c in codes)
    assert other.infos[0].severity_colour == "Red"  # 红

    expired = load("cn_expired.xml")
    assert expired.infos[0].expires == datetime(2025, 7, 22, 20, 0, tzinfo=CST)
    assert expired.infos[0].expires < datetime.now(UTC)
    assert expired.infos[0].onset == datetime(2025, 7, 21, 8, 0, tzinfo=CST)

    polygon = load("cn_polygon_only.xml")
    (area,) = polygon.infos[0].areas
    assert area.geocodes == () and area.area_codes == ()
    (ring,) = area.polygons
    assert len(ring) == 5 and ring[0] == ring[-1] == (33.8950, 116.7350)


def test_cn_multilingual_alert_picks_the_preferred_language() -> None:
    alert = load("cn_multilang.xml")
    english, chinese = alert.infos
    assert (english.language, chinese.language) == ("en-US", "zh-CN")
    assert chinese.areas[0].area_codes == ("340621105000",)  # 9-digit 340621105 widened
    assert alert.info_for(["zh-CN", "en-US"]) is chinese
    assert alert.info_for(["zh"]) is chinese
    assert alert.info_for(["ZH_cn"]) is chinese
    assert alert.info_for(["en"]) is english
    assert alert.info_for(["fr-FR", "de"]) is english  # nothing matches: the first block
    assert alert.info_for([]) is english
    assert alert.info_for("zh-CN") is chinese  # a bare string is one preference, not characters


@pytest.mark.parametrize(("written", "preferences", "index"), [
    (["en-US", "zh"], ["zh-CN"], 1),              # zh-CN also matches a bare zh block
    (["en-US", "zh-Hans"], ["zh"], 1),
    (["zh", "zh-CN"], ["zh-CN"], 1),              # the exact tag beats the related one
    (["en-US", "zh-TW"], ["zh-CN", "en-US"], 0),  # zh-TW is not zh-CN
])
def test_info_for_language_matching(written: list[str], preferences: list[str], index: int) -> None:
    doc = fixture_text("cn_multilang.xml")
    doc = variant(doc, "<language>en-US</language>", f"<language>{written[0]}</language>")
    doc = variant(doc, "<language>zh-CN</language>", f"<language>{written[1]}</language>")
    alert = parse_cap(doc)
    assert alert.info_for(preferences) is alert.infos[index]


def test_cap12_and_cap11_fixtures_in_chinese() -> None:
    alert = load("cap12_zh_rainstorm.xml")
    assert alert.dialect is Dialect.CAP12
    info = alert.infos[0]
    assert info.event_type == "11B03"  # from eventCode "GB/T 35561"
    assert info.severity_colour is None and info.severity is Severity.EXTREME
    assert info.areas[0].area_codes == ("340621105201", "340621105202")
    assert info.areas[1].circles == (Circle(33.9012, 116.7421, 1.5),)
    assert len(info.areas[1].polygons[0]) == 5

    cancel = load("cap12_zh_cancel.xml")
    assert [(r.sender, r.identifier, r.sent) for r in cancel.references] == [alert.key]

    cold = load("cap11_zh_cold_wave.xml")
    assert cold.dialect is Dialect.CAP11
    assert cold.infos[0].areas[0].area_codes == ("340621000000",)
    assert cold.info_for(["en-US"]) is cold.infos[1]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("cap1*.xml")))
def test_cap_fixtures_are_valid_against_the_oasis_schema(name: str) -> None:
    xsd = "cap12.xsd" if name.startswith("cap12") else "cap11.xsd"
    schema = xmlschema.XMLSchema(str(SHARED / xsd))
    schema.validate(str(FIXTURES / name))  # raises with the reason if not


def test_every_fixture_parses_without_warnings() -> None:
    for path in sorted(FIXTURES.glob("*.xml")):
        alert = parse_cap(path.read_bytes())
        assert alert.warnings == (), path.name


# --- Dialect rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "severity", "colour"), [
    ("Red", Severity.EXTREME, "Red"), ("orange", Severity.SEVERE, "Orange"),
    ("YELLOW", Severity.MODERATE, "Yellow"), ("Blue", Severity.MINOR, "Blue"),
    ("红", Severity.EXTREME, "Red"), ("橙色", Severity.SEVERE, "Orange"), ("黄", Severity.MODERATE, "Yellow"),
    ("蓝色", Severity.MINOR, "Blue"), ("extreme", Severity.EXTREME, None), ("Minor", Severity.MINOR, None),
    ("unknown", Severity.UNKNOWN, None),
])
def test_severity_words_and_colours(written: str, severity: Severity, colour: str | None) -> None:
    info = parse_cap(variant(RED, "<severity>Red</severity>", f"<severity>{written}</severity>")).infos[0]
    assert (info.severity, info.severity_colour) == (severity, colour)


@pytest.mark.parametrize(("old", "new", "element", "words"), [
    ("<severity>Red</severity>", "<severity>Purple</severity>", "alert/info[0]/severity",
     "unknown severity 'Purple'"),
    ("<severity>Red</severity>", "<severity></severity>", "alert/info[0]/severity",
     "required element <severity> is missing"),
    ("<status>Actual</status>", "<status>Real</status>", "alert/status", "unknown status 'Real'"),
    ("<msgType>Alert</msgType>", "<msgType>Warning</msgType>", "alert/msgType", "unknown msgType 'Warning'"),
])
def test_values_that_decide_safety_are_never_guessed(old: str, new: str, element: str, words: str) -> None:
    error = refused(variant(RED, old, new))
    assert error.element == element
    assert words in error.message


def test_lenient_values_are_kept_with_a_warning() -> None:
    doc = variant(RED, "<urgency>Immediate</urgency>", "<urgency>Soon</urgency>")
    doc = variant(doc, "<certainty>Observed</certainty>", "<certainty>very likely</certainty>")
    doc = variant(doc, "<scope>Public</scope>", "<scope>public</scope>")
    alert = parse_cap(doc)
    assert (alert.infos[0].urgency, alert.infos[0].certainty, alert.scope) == ("Soon", "Likely", "Public")
    assert any(w.startswith("alert/info[0]/urgency:") and "'Soon'" in w for w in alert.warnings)

    missing = parse_cap(variant(RED, "<urgency>Immediate</urgency>", "<urgency/>"))
    assert missing.infos[0].urgency == "Unknown"
    assert any("urgency" in w for w in missing.warnings)


@pytest.mark.parametrize("name", ["identifier", "sender", "status", "msgType"])
def test_missing_required_element_is_named(name: str) -> None:
    start = RED.index(f"<{name}>")
    end = RED.index(f"</{name}>") + len(f"</{name}>")
    error = refused(RED[:start] + RED[end:])
    assert error.element == f"alert/{name}"
    assert f"<{name}>" in error.message


def test_missing_sent_and_send_time_is_named_and_every_problem_is_listed() -> None:
    doc = variant(RED, "<sent>2026-11-28 03:15:00+08:00</sent>", "<sent></sent>")
    doc = variant(doc, "<sender>濉溪县气象台</sender>", "")
    error = refused(doc)
    assert error.element == "alert/sender"
    assert "alert/sent" in error.message and "<sendTime>" in error.message


def test_scope_is_required_in_cap_but_optional_in_the_chinese_variant() -> None:
    assert parse_cap(variant(RED, "<scope>Public</scope>", "")).scope == ""
    assert refused(variant(CAP12, "<scope>Public</scope>", "")).element == "alert/scope"


@pytest.mark.parametrize(("written", "expected"), [
    ("2026-11-28 03:15:00+08:00", datetime(2026, 11, 28, 3, 15, tzinfo=CST)),
    ("2026-11-28T03:15:00+08:00", datetime(2026, 11, 28, 3, 15, tzinfo=CST)),
    ("2026-11-27T19:15:00-00:00", datetime(2026, 11, 27, 19, 15, tzinfo=UTC)),
    ("2026-11-27T19:15:00Z", datetime(2026, 11, 27, 19, 15, tzinfo=UTC)),
    ("2026-11-28T03:15:00.250+0800", datetime(2026, 11, 28, 3, 15, 0, 250000, tzinfo=CST)),
])
def test_times_in_both_forms(written: str, expected: datetime) -> None:
    alert = parse_cap(variant(RED, "<sent>2026-11-28 03:15:00+08:00</sent>", f"<sent>{written}</sent>"))
    assert alert.sent == expected and alert.sent_text == written


@pytest.mark.parametrize(("written", "words"), [
    ("2026-11-28 03:15:00", "no UTC offset"),
    ("2026-11-28", "is not a time"),
    ("2026-02-30 03:15:00+08:00", "not a valid calendar time"),
    ("2026-11-28 03:15:00+25:00", "impossible UTC offset"),
    ("0001-01-01T00:00:00+08:00", "implausible year"),
])
def test_bad_times_are_refused(written: str, words: str) -> None:
    error = refused(variant(RED, "<sent>2026-11-28 03:15:00+08:00</sent>", f"<sent>{written}</sent>"))
    assert error.element == "alert/sent" and words in error.message
    expires = refused(variant(RED, "<expires></expires>", f"<expires>{written}</expires>"))
    assert expires.element == "alert/info[0]/expires"


POLYGON = "33.8950,116.7350 33.8950,116.7520 33.9080,116.7520 33.9080,116.7350 33.8950,116.7350"


@pytest.mark.parametrize(("polygon", "words"), [
    ("33.8950,116.7350 33.8950,116.7520 33.8950,116.7350", "3 point(s); CAP needs at least 4"),
    ("33.8950,116.7350 33.8950,116.7520 33.9080,116.7520 33.9080,116.7350", "not closed"),
    ("91,116.7350 33.8950,116.7520 33.9080,116.7520 91,116.7350", "point 1 '91,116.7350' is out of range"),
    ("33.8950,116.7350 33.8950;116.7520 33.9080,116.7520 33.8950,116.7350", "point 2 '33.8950;116.7520'"),
    ("33.8950,116.7350 nan,nan 33.9080,116.7520 33.8950,116.7350", "point 2 'nan,nan'"),
])
def test_bad_polygons_are_refused_with_the_element_path(polygon: str, words: str) -> None:
    error = refused(variant(CAP12, POLYGON, polygon))
    assert error.element == "alert/info[0]/area[1]/polygon[0]"
    assert words in error.message


@pytest.mark.parametrize(("circle", "words"), [
    ("33.9012,116.7421", "is not 'lat,lon radius_km'"),
    ("33.9012 116.7421 1.5", "is not 'lat,lon radius_km'"),
    ("33.9012,196.7421 1.5", "out of range"),
    ("33.9012,116.7421 -1", "radius -1 km is out of range"),
])
def test_bad_circles_are_refused(circle: str, words: str) -> None:
    error = refused(variant(CAP12, "33.9012,116.7421 1.5", circle))
    assert error.element == "alert/info[0]/area[1]/circle[0]" and words in error.message


def test_geocode_lists_are_read_generously_and_odd_tokens_warned_about() -> None:
    doc = variant(RED, "340621105201,340621105202,340621105203",
                  "340621105201，340621105202 340621105203;340621105201, 濉溪县")
    alert = parse_cap(doc)
    area = alert.infos[0].areas[0]
    assert area.area_codes == ("340621105201", "340621105202", "340621105203")  # deduplicated
    assert ("", "濉溪县") in area.geocodes
    assert any("alert/info[0]/area[0]/geocode[0]" in w and "'濉溪县'" in w for w in alert.warnings)


@pytest.mark.parametrize(("text", "widened"), [
    ("340621", "340621000000"), ("340621105", "340621105000"), ("340621105201", "340621105201"),
    (" 340621105201 ", "340621105201"), ("3406211052", None), ("34062110520", None), ("", None),
    ("006037", None), ("abcdef", None), ("３４０６２１", None), ("3406211052011", None),
])
def test_widen_area_code(text: str, widened: str | None) -> None:
    assert widen_area_code(text) == widened


def test_event_type_comes_from_event_type_or_a_gbt35561_event_code() -> None:
    lower = parse_cap(variant(RED, "<eventType>11B03</eventType>", "<eventType>11b03</eventType>"))
    assert lower.infos[0].event_type == "11B03"
    text = parse_cap(variant(RED, "<eventType>11B03</eventType>", "<eventType>暴雨</eventType>"))
    assert text.infos[0].event_type == "暴雨"
    assert any("eventType" in w and "not a GB/T 35561 code" in w for w in text.warnings)
    none = parse_cap(variant(RED, "<eventType>11B03</eventType>", "<eventType></eventType>"))
    assert none.infos[0].event_type is None
    assert load("weather.cap").infos[0].event_type is None  # SAME code FFA is not GB/T 35561


def test_references() -> None:
    bad = refused(variant(CAP12, "<scope>Public</scope>", "<scope>Public</scope>\n  "
                                 "<references>sxqxt@ahqx.gov.cn,only-two</references>"))
    assert bad.element == "alert/references" and "entry 1 'sxqxt@ahqx.gov.cn,only-two'" in bad.message
    lonely = parse_cap(variant(RED, "<msgType>Alert</msgType>", "<msgType>Update</msgType>"))
    assert lonely.references == ()
    assert any("Update without <references>" in w for w in lonely.warnings)


CN_CANCEL = fixture_text("cn_rainstorm_cancel.xml")
CAP11 = fixture_text("cap11_zh_cold_wave.xml")
RED_ID, UPDATE_ID = "34062141600000_20261128031500", "34062141600000_20261128061000"
CN_REFS = ("濉溪县气象台,34062141600000_20261128031500,2026-11-28 03:15:00+08:00 "
           "濉溪县气象台,34062141600000_20261128061000,2026-11-28 06:10:00+08:00")


def cn_cancel(references: str) -> str:
    """The national feed's Cancel (tests/cap/cn_rainstorm_cancel.xml) with other ``<references>``."""
    return variant(CN_CANCEL, f"<references>{CN_REFS}</references>", f"<references>{references}</references>")


def test_cn_reference_may_be_an_identifier_alone_from_the_same_sender() -> None:
    cancel = parse_cap(cn_cancel(RED_ID))
    (ref,) = cancel.references
    assert (ref.sender, ref.identifier, ref.sent, ref.sent_at) == ("濉溪县气象台", RED_ID, None, None)
    assert ref.identifier_only and cancel.warnings == ()


def test_cn_references_mix_identifiers_and_triples() -> None:
    later = "34062141600000_20261128080000"
    written = f"  {RED_ID}\n 濉溪县气象台,{UPDATE_ID},2026-11-28 06:10:00+08:00\t{later} "
    cancel = parse_cap(cn_cancel(written))
    assert [(r.sender, r.identifier, r.sent) for r in cancel.references] == [
        ("濉溪县气象台", RED_ID, None),
        ("濉溪县气象台", UPDATE_ID, "2026-11-28 06:10:00+08:00"),
        ("濉溪县气象台", later, None)]
    assert cancel.references[1].sent_at == datetime(2026, 11, 28, 6, 10, tzinfo=CST)


@pytest.mark.parametrize(("written", "words"), [
    ("濉溪县气象台,34062141600000_20261128031500", "entry 1 '濉溪县气象台,34062141600000_20261128031500' is "
                                                  "neither sender,identifier,sent nor an identifier alone"),
    (f"{RED_ID} 濉溪县气象台,,2026-11-28T03:15:00+08:00", "entry 2"),
    (f"{RED_ID},", "is neither sender,identifier,sent"),
    (f"濉溪县气象台，{RED_ID}，2026-11-28T03:15:00+08:00", "full-width comma"),
    # A date the rejoin cannot read leaves its time half behind: never taken as an identifier.
    (f"濉溪县气象台,{RED_ID},2026/11/28 03:15:00+08:00",
     "entry 2 '03:15:00+08:00' is a time, not an identifier"),
])
def test_cn_malformed_reference_is_refused_naming_the_element(written: str, words: str) -> None:
    error = refused(cn_cancel(written))
    assert error.element == "alert/references"
    assert words in error.message
    assert str(error).startswith("alert/references: ")


@pytest.mark.parametrize("fixture", ["cap12", "cap11"])
def test_cap1x_requires_the_full_triple(fixture: str) -> None:
    """OASIS CAP 1.2 and 1.1 define references as sender,identifier,sent; a bare identifier there is
    not the national short form but a broken document, and a guess could cancel the wrong warning."""
    text = CAP12 if fixture == "cap12" else CAP11
    doc = variant(text, "<scope>Public</scope>",
                  "<scope>Public</scope><references>CN-AH-HB-SX-20261128-0315-RS</references>")
    error = refused(doc)
    assert error.element == "alert/references"
    version = "1.2" if fixture == "cap12" else "1.1"
    assert f"is not sender,identifier,sent: CAP {version} requires all three" in error.message
    assert "only in China's national variant" in error.message


def test_xml_elements_inside_text_fields_are_kept_as_markup() -> None:
    """A sender that writes <br/> or <b> unescaped makes them XML elements; joining their text alone
    would glue lines and keep a script's code. Kept as markup, announcements strip them."""
    old = "<instruction>停止集会"
    doc = variant(RED, old, "<instruction>请<b>立即</b>转移 &amp; 避险<br/><script>x()</script>停止集会")
    info = parse_cap(doc).infos[0]
    assert info.instruction.startswith("请<b>立即</b>转移 &amp; 避险<br/><script>x()</script>停止集会、停课")
    assert any(w.startswith("alert/info[0]/instruction: <instruction> holds XML elements (b, br, script)")
               for w in parse_cap(doc).warnings)
    deep = variant(RED, old, f"<instruction>{'<b>' * 5000}转移{'</b>' * 5000}停止集会")
    # Nesting cannot exhaust the stack: below 40 levels only the text is kept.
    assert ("<b>" * 40 + "转移" + "</b>" * 40 + "停止集会") in parse_cap(deep).infos[0].instruction


def test_duplicated_elements() -> None:
    twice = variant(RED, "<status>Actual</status>", "<status>Actual</status><status>Test</status>")
    assert refused(twice).element == "alert/status"
    same = parse_cap(variant(RED, "<status>Actual</status>", "<status>Actual</status>" * 2))
    assert same.status is Status.ACTUAL
    headline = parse_cap(variant(RED, "<web></web>", "<headline>second</headline>"))
    assert headline.infos[0].headline == "濉溪县气象台发布暴雨红色预警信号"
    assert any("headline" in w and "first is used" in w for w in headline.warnings)


@pytest.mark.parametrize(("root", "words"), [
    ('<alert xmlns="urn:oasis:names:tc:emergency:cap:1.0">', "CAP 1.0"),
    ('<alert xmlns="http://www.incident.com/cap/1.0">', "CAP 1.0"),
    ('<alert xmlns="urn:example:not-cap">', "unknown namespace 'urn:example:not-cap'"),
])
def test_other_namespaces_are_refused(root: str, words: str) -> None:
    error = refused(variant(CAP12, '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">', root))
    assert words in error.message


@pytest.mark.parametrize("encoding", ["GBK", "GB2312", "GB18030", "UTF-16", "UTF-8"])
def test_declared_encodings_are_honoured(encoding: str) -> None:
    doc = variant(RED, 'encoding="UTF-8"', f'encoding="{encoding}"')
    alert = parse_cap(doc.encode(encoding.lower()))
    assert alert.sender == "濉溪县气象台" and "刘桥村" in alert.infos[0].description


def test_leading_whitespace_before_the_declaration_is_tolerated() -> None:
    assert parse_cap("\n\n  " + RED).identifier == "34062141600000_20261128031500"
    assert parse_cap(b"\r\n" + RED.encode()).identifier == "34062141600000_20261128031500"


def test_text_input_ignores_the_declared_encoding() -> None:
    text = (SAMPLES / "earthquake-iso8859-1.cap").read_bytes().decode("iso-8859-1")
    assert "Usulután" in parse_cap(text).infos[0].headline


@pytest.mark.parametrize(("document", "words"), [
    (b"", "document is empty"),
    (b"   \n", "document is empty"),
    (b"not xml at all", "not well-formed XML"),
    (b"<alert><identifier>x</alert>", "not well-formed XML"),
    (b'<?xml version="1.0" encoding="x-no-such"?><alert/>', "character encoding"),
    (b'<?xml version="1.0" encoding="Shift_JIS"?><alert/>', "character encoding"),
    ('<?xml version="1.0" encoding="GBK"?><alert>\xff\xfe</alert>'.encode("latin-1"), "not valid GBK"),
    ("<alert>\ud800</alert>", "lone surrogate"),
    (b"<alert>&xxe;</alert>", "undefined entity"),
])
def test_unreadable_documents(document: bytes | str, words: str) -> None:
    assert words in refused(document).message


def test_size_limit_is_enforced_before_parsing() -> None:
    padding = "<!-- " + "x" * (MAX_CAP_BYTES - len(RED.encode()) - 20) + " -->"
    assert parse_cap(RED.replace("<alert>", padding + "<alert>", 1)).identifier  # just under: fine
    too_big = RED.replace("<alert>", "<!-- " + "x" * MAX_CAP_BYTES + " --><alert>", 1)
    for document in (too_big, too_big.encode()):
        assert f"{MAX_CAP_BYTES}-byte limit" in refused(document).message
    with pytest.raises(TypeError):
        parse_cap(12345)  # type: ignore[arg-type]


# --- Entity attacks ---------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback recording every request: a parse must never reach it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<!ENTITY % send SYSTEM "http://127.0.0.1/x">')

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def attack_documents(secret: Path, base: str) -> dict[str, str]:
    body = RED.split("?>", 1)[1]
    return {
        "xxe file": f'<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file://{secret}">]>'
                    + variant(body, "<headline>", "<headline>&xxe;"),
        "parameter entity": f'<!DOCTYPE alert [<!ENTITY % p SYSTEM "file://{secret}"> %p;]>' + body,
        "external dtd": f'<!DOCTYPE alert SYSTEM "{base}/evil.dtd">' + body,
        "remote entity": f'<!DOCTYPE alert [<!ENTITY % r SYSTEM "{base}/p2"> %r; %send;]>' + body,
        "billion laughs": '<!DOCTYPE alert [<!ENTITY lol0 "lol">'
                          + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
                          + "]>" + variant(body, "<headline>", "<headline>&lol9;"),
        "quadratic blowup": '<!DOCTYPE alert [<!ENTITY a "' + "a" * 50_000 + '">]>'
                            + variant(body, "<headline>", "<headline>" + "&a;" * 10_000),
    }


def test_entity_attacks_are_refused_without_reading_files_or_fetching(
        tmp_path: Path, listener: tuple[str, list[str]]) -> None:
    base, hits = listener
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a", encoding="utf-8")
    for name, document in attack_documents(secret, base).items():
        for form in (document, document.encode()):
            error = refused(form)
            assert "DTD/entity declarations are not accepted" in error.message, name
            assert "TOP-SECRET" not in str(error), name
    xee = refused((SAMPLES / "xee.cap").read_bytes())
    assert "/etc/passwd" not in str(xee) and "root:" not in str(xee)
    assert hits == []


def test_xinclude_and_schema_location_are_never_followed(listener: tuple[str, list[str]]) -> None:
    base, hits = listener
    doc = variant(CAP12, "<identifier>",
                  f'<x xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{base}/inc"/></x>'
                  f'<y xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                  f'xsi:schemaLocation="urn:x {base}/a.xsd">a</y><identifier>')
    alert = parse_cap(doc)
    assert alert.identifier == "CN-AH-HB-SX-20261128-0315-RS"
    assert hits == []


# --- Property-based fuzzing -----------------------------------------------------------------------

FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_outcome(document: bytes | str) -> None:
    """The parser's whole promise: a sound alert, or a CapError with a message and a sane element."""
    try:
        alert = parse_cap(document)
    except CapError as exc:
        assert exc.message.strip()
        assert exc.element is None or exc.element.startswith("alert")
        return
    assert alert.identifier and alert.sender and alert.sent.tzinfo is not None
    assert isinstance(alert.status, Status) and isinstance(alert.msg_type, MsgType)
    for info in alert.infos:
        assert isinstance(info.severity, Severity)
        for when in (info.effective, info.onset, info.expires):
            assert when is None or when.tzinfo is not None
        for area in info.areas:
            for ring in area.polygons:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in ring)
            assert all(len(code) == 12 and code.isdigit() for code in area.area_codes)
            assert all(c.radius_km >= 0 for c in area.circles)


XMLISH = st.lists(st.sampled_from(
    [*"<>/=\"' &;#!?-[]:,.\n", "alert", "info", "area", "polygon", "severity", "sent", "xmlns",
     "<!DOCTYPE", "<!ENTITY", "%", "Red", "12", "+08:00", "340621105201"]), max_size=60).map("".join)


@FUZZ
@given(st.one_of(st.binary(max_size=1500), st.text(max_size=1500), XMLISH))
def test_fuzz_arbitrary_input_gives_an_alert_or_a_clear_error(document: bytes | str) -> None:
    check_outcome(document)


SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.xml"))] + [
    (SAMPLES / n).read_bytes() for n in sorted(PARSED)] + [
    (SAMPLES / n).read_bytes() for n in ("invalid.cap", "canada_errors.cap", "noaa_errors.cap")]

XML_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\n\t "),
                   max_size=40)
ODD_VALUES = st.sampled_from([
    "", " ", "2026-02-30 25:61:00+08:00", "2026-11-28 03:15:00", "9998-12-31T23:59:59+14:00",
    "1900-01-01T00:00:00-23:59", "2026-11-28T03:15:00+99:99", "91,181 0,0", "nan,nan 1,1 2,2 nan,nan",
    "1e999,0 0,0 0,1 1e999,0", "33.9,116.7 33.9,116.7 33.9,116.7 33.9,116.7", "-0,-0 0,0 0,-0 -0,-0",
    "9" * 400 + ",0 0,0 1,1 " + "9" * 400 + ",0", "33.9,116.7 0", "33.9,116.7 " + "9" * 400, "Red", "红色",
    "Actual", "Cancel", "Update", "a,b,c d,e,f", "a,b,2026-11-28 03:15:00+08:00", ",,", "340621",
    "340621105201,,340621", "000000000000", "11B03", "zh", "EXTREME", "Very Likely",
])


def mutate(root: ET.Element, data: st.DataObject) -> None:
    """One structural change somewhere in the tree: drop, duplicate, move, rename or rewrite text."""
    nodes = list(root.iter())
    parents = {child: parent for parent in nodes for child in parent}
    node = data.draw(st.sampled_from(nodes))
    op = data.draw(st.sampled_from(["drop", "duplicate", "text", "odd", "move", "rename", "empty"]))
    if op == "drop" and node in parents:
        parents[node].remove(node)
    elif op == "duplicate" and node in parents:
        parents[node].append(ET.fromstring(ET.tostring(node)))
    elif op == "text":
        node.text = data.draw(XML_TEXT)
    elif op == "odd":
        node.text = data.draw(ODD_VALUES)
    elif op == "move" and node in parents:
        inside = set(node.iter())  # never into its own subtree (a cycle)
        target = data.draw(st.sampled_from([n for n in nodes if n not in inside]))
        parents[node].remove(node)
        target.append(node)
    elif op == "rename":
        ns = node.tag[: node.tag.index("}") + 1] if node.tag.startswith("{") else ""
        node.tag = ns + data.draw(st.sampled_from(
            ["alert", "info", "area", "polygon", "circle", "geocode", "value", "valueName", "references",
             "severity", "sent", "sendTime", "expires", "eventType", "feed", "x"]))
    elif op == "empty":
        node.clear()


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_mutated_alerts_give_an_alert_or_a_clear_error(seed: bytes, data: st.DataObject) -> None:
    root = ET.fromstring(seed)  # our own fixtures and the shared samples (no DTDs among them)
    for _ in range(data.draw(st.integers(1, 4))):
        mutate(root, data)
    check_outcome(ET.tostring(root, encoding="utf-8"))
