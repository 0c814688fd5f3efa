"""The plan (预案) applied to CAP alerts: hard gates, first-match rules, announcement text, request.

Pure: the demo township config (濉溪县刘桥镇) with alert settings added, and hand-built alerts as the
parser produces them. Every assertion is something the duty officer or a villager would notice:
whether it plays, why, on which terminals, and what is said.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.alerts.area import AreaMatch, match_area
from controller.alerts.cap import Area, CapAlert, Dialect, Info, MsgType, Severity, Status
from controller.alerts.rules import Action, Decision, build_request, compose_text, decide, emergency_level
from controller.broadcast.model import BroadcastClass, SourceLevel, Targets, Tone
from controller.broadcast.targets import resolve
from controller.config import (
    DEFAULT_TEMPLATE,
    AlertRule,
    AlertsSettings,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

DEMO = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 28, 3, 20, tzinfo=CST)
LIUQIAO = Area(desc="刘桥村", area_codes=("340621105201",))
COUNTY = Area(desc="濉溪县", area_codes=("340621000000",))


@pytest.fixture(scope="module")
def demo() -> Config:
    return load_config(DEMO)


def with_alerts(cfg: Config, **settings: Any) -> Config:
    """The demo config with an ``alerts`` section (validated as if it were in the YAML)."""
    return cfg.model_copy(update={"alerts": AlertsSettings.model_validate(settings)})


def make_info(**over: Any) -> Info:
    fields: dict[str, Any] = dict(
        language="zh-CN", event="暴雨", urgency="Immediate", severity=Severity.SEVERE, certainty="Likely",
        severity_colour="Orange", event_type="11B03", sender_name="濉溪县气象台",
        headline="濉溪县气象台发布暴雨橙色预警", description="预计未来3小时我县将出现50毫米以上降水。",
        instruction="请注意防范。", expires=NOW + timedelta(hours=6), areas=(LIUQIAO,))
    fields.update(over)
    return Info(**fields)


def make_alert(info: Info | None = None, **over: Any) -> CapAlert:
    fields: dict[str, Any] = dict(
        identifier="34062141600000_20261128031500", sender="濉溪县气象台", sent=NOW - timedelta(minutes=5),
        sent_text="2026-11-28 03:15:00+08:00", status=Status.ACTUAL, msg_type=MsgType.ALERT,
        dialect=Dialect.CN, sender_code="34062141600000", infos=(info or make_info(),))
    fields.update(over)
    return CapAlert(**fields)


def rules(*items: dict[str, Any]) -> AlertsSettings:
    return AlertsSettings.model_validate({"rules": list(items)})


AUTO_ALL = {"id": "auto-all", "action": "broadcast"}
"""A rule matching every real alert: the gates must hold even against it."""


def run(settings: AlertsSettings, alert: CapAlert) -> Decision:
    return decide(settings, alert, alert.infos[0] if alert.infos else None, NOW)


# ------------------------------------------------------------------------------ hard gates

@pytest.mark.parametrize("status", [Status.DRAFT, Status.SYSTEM])
def test_draft_and_system_never_play_even_when_a_rule_lists_them(status: Status) -> None:
    settings = rules({"id": "everything", "action": "broadcast", "drill": True,
                      "match": {"status": ["Actual", "Exercise", "System", "Test", "Draft"]}})
    got = run(settings, make_alert(status=status))
    assert got.action is Action.RECORD
    assert got.rule_id is None
    assert f"status {status}" in got.reason and "never played" in got.reason


@pytest.mark.parametrize(("msg_type", "words"), [(MsgType.ACK, "acknowledgement"), (MsgType.ERROR, "error"),
                                                 (MsgType.CANCEL, "stops the alerts it references")])
def test_ack_error_and_cancel_messages_announce_nothing(msg_type: MsgType, words: str) -> None:
    got = run(rules(AUTO_ALL), make_alert(msg_type=msg_type))
    assert got.action is Action.RECORD
    assert f"msgType {msg_type}" in got.reason and words in got.reason


def test_an_alert_without_info_is_recorded() -> None:
    got = run(rules(AUTO_ALL), make_alert(infos=()))
    assert got.action is Action.RECORD and "no info block" in got.reason


@pytest.mark.parametrize("ago", [timedelta(minutes=1), timedelta(0)])
def test_an_expired_alert_never_plays(ago: timedelta) -> None:
    alert = make_alert(make_info(expires=NOW - ago))
    got = run(rules(AUTO_ALL), alert)
    assert got.action is Action.RECORD
    assert got.reason.startswith(f"expired at {(NOW - ago).isoformat(sep=' ', timespec='minutes')}")


def test_expiry_is_compared_across_time_zones() -> None:
    """An alert written in UTC that expires in ten minutes is not expired at 03:20 Beijing time."""
    alert = make_alert(make_info(expires=(NOW + timedelta(minutes=10)).astimezone(UTC)))
    assert run(rules(AUTO_ALL), alert).action is Action.BROADCAST


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(rules(AUTO_ALL), make_alert(), make_info(), datetime(2026, 11, 28, 3, 20))


def test_a_test_alert_without_a_drill_rule_is_recorded_not_played() -> None:
    got = run(rules(AUTO_ALL), make_alert(status=Status.TEST))
    assert got.action is Action.RECORD
    assert got.reason.startswith("status Test: never played as a real emergency")


def test_a_test_alert_matched_by_a_rule_that_is_not_a_drill_rule_is_recorded() -> None:
    settings = rules({"id": "test-too", "action": "broadcast", "match": {"status": ["Actual", "Test"]}})
    got = run(settings, make_alert(status=Status.TEST))
    assert got.action is Action.RECORD
    assert got.rule_id == "test-too"
    assert "not a drill rule" in got.reason


def test_a_test_alert_plays_as_a_drill_under_a_drill_rule(demo: Config) -> None:
    settings = rules(AUTO_ALL, {"id": "test-drill", "action": "broadcast", "drill": True,
                                "match": {"status": ["Test"]}})
    alert = make_alert(status=Status.TEST)
    got = run(settings, alert)
    assert (got.action, got.rule_id, got.drill) == (Action.BROADCAST, "test-drill", True)
    assert "as a drill" in got.reason
    info = alert.infos[0]
    match = match_area(demo, info)
    request = build_request(demo, alert, info, got, match, compose_text(demo, info, match))
    assert request.broadcast_class is BroadcastClass.DRILL
    assert request.severity is None
    assert request.effective_tone is Tone.CHIME  # no siren for a drill


def test_an_exercise_needs_a_rule_that_lists_exercise() -> None:
    test_only = {"id": "test-drill", "action": "approve", "drill": True, "match": {"status": ["Test"]}}
    assert run(rules(test_only), make_alert(status=Status.EXERCISE)).action is Action.RECORD
    exercise = {"id": "exercise", "action": "approve", "drill": True, "match": {"status": ["Exercise"]}}
    got = run(rules(test_only, exercise), make_alert(status=Status.EXERCISE))
    assert (got.action, got.rule_id, got.drill) == (Action.APPROVE, "exercise", True)


def test_a_drill_rule_that_says_record_records() -> None:
    settings = rules({"id": "log-tests", "action": "record", "drill": True, "match": {"status": ["Test"]}})
    got = run(settings, make_alert(status=Status.TEST))
    assert (got.action, got.rule_id, got.drill) == (Action.RECORD, "log-tests", False)
    assert got.reason == "status Test: rule 'log-tests' matched (status Test): record only"


def test_a_drill_rule_does_not_turn_a_real_alert_into_a_drill() -> None:
    """The drill-only rule does not match Actual (status defaults to Actual only): the default applies."""
    settings = rules({"id": "test-drill", "action": "broadcast", "drill": True,
                      "match": {"status": ["Test"]}})
    got = run(settings, make_alert())
    assert (got.action, got.rule_id, got.drill) == (Action.APPROVE, None, False)


# ------------------------------------------------------------------------------ rules

RED_AUTO = {"id": "red-auto", "action": "broadcast", "match": {"severity": ["Extreme"]}, "tone": "siren",
            "repeat": 3}
RAIN_APPROVE = {"id": "rain-approve", "action": "approve", "on_timeout": "play", "approval_timeout_s": 300,
                "match": {"event_types": ["11B03"]}}


def test_first_matching_rule_wins() -> None:
    red_rain = make_alert(make_info(severity=Severity.EXTREME, severity_colour="Red"))
    got = run(rules(RED_AUTO, RAIN_APPROVE), red_rain)
    assert (got.action, got.rule_id, got.tone, got.repeat) == (Action.BROADCAST, "red-auto", "siren", 3)
    assert got.reason == "rule 'red-auto' matched (severity Extreme (Red)): broadcast at once"
    got = run(rules(RAIN_APPROVE, RED_AUTO), red_rain)
    assert (got.action, got.rule_id) == (Action.APPROVE, "rain-approve")
    assert (got.on_timeout, got.approval_timeout_s) == ("play", 300)
    assert got.reason == ("rule 'rain-approve' matched (event type 11B03): waits for duty-officer approval "
                          "(if nobody decides within 300 s it plays)")


def test_a_rule_needs_every_listed_condition() -> None:
    settings = rules({"id": "red-rain", "action": "broadcast",
                      "match": {"event_types": ["11B03"], "severity": ["Extreme"]}})
    assert run(settings, make_alert()).rule_id is None  # rainstorm, but orange
    red = make_alert(make_info(severity=Severity.EXTREME, severity_colour="Red"))
    got = run(settings, red)
    assert got.rule_id == "red-rain"
    assert "event type 11B03, severity Extreme (Red)" in got.reason


@pytest.mark.parametrize(("pattern", "event", "event_type", "words"), [
    ("11B03", "暴雨", "11B03", "event type 11B03"),
    ("11b03", "暴雨", "11B03", "event type 11B03"),
    ("11B*", "大雾", "11B17", "event type 11B17 in 11B*"),
    ("暴雨", "暴雨", None, "event '暴雨'"),
    ("暴雨", "暴雨橙色预警", None, "event '暴雨橙色预警' contains '暴雨'"),
])
def test_event_types_match_by_code_family_or_text(pattern: str, event: str, event_type: str | None,
                                                  words: str) -> None:
    settings = rules({"id": "r", "action": "broadcast", "match": {"event_types": ["11A01", pattern]}})
    got = run(settings, make_alert(make_info(event=event, event_type=event_type)))
    assert got.rule_id == "r"
    assert f"({words})" in got.reason


@pytest.mark.parametrize(("pattern", "event", "event_type"), [
    ("11B03", "暴雨", "11B04"),     # snowstorm is not rainstorm
    ("11A*", "大雾", "11B17"),      # other family
    ("11B0", "暴雨", "11B03"),      # a code prefix without '*' is not a family
    ("台风", "暴雨", "11B03"),
])
def test_event_types_that_do_not_match(pattern: str, event: str, event_type: str) -> None:
    settings = rules({"id": "r", "action": "broadcast", "match": {"event_types": [pattern]}})
    assert run(settings, make_alert(make_info(event=event, event_type=event_type))).rule_id is None


def test_event_codes_of_international_feeds_match_too() -> None:
    """A CAP 1.2 feed's eventCode (e.g. SAME 'TOR') can be named like a GB/T code."""
    info = make_info(event="Tornado", event_type=None, event_codes=(("SAME", "TOR"),))
    settings = rules({"id": "tornado", "action": "broadcast", "match": {"event_types": ["TOR"]}})
    assert run(settings, make_alert(info)).rule_id == "tornado"


@pytest.mark.parametrize("field", ["sender", "sender_name", "sender_code"])
def test_senders_match_by_sender_sender_name_or_sender_code(field: str) -> None:
    settings = rules({"id": "met", "action": "broadcast",
                      "match": {"senders": ["34062141600000", "濉溪县气象台", "met@ah.cma.gov.cn"]}})
    strangers: dict[str, Any] = {"sender": "someone@example.org", "sender_code": None}
    assert run(settings, make_alert(make_info(sender_name=""), **strangers)).rule_id is None
    value = {"sender": "met@ah.cma.gov.cn", "sender_name": "濉溪县气象台",
             "sender_code": "34062141600000"}[field]
    info = make_info(sender_name=value if field == "sender_name" else "")
    alert = make_alert(info, **(strangers | ({} if field == "sender_name" else {field: value})))
    got = run(settings, alert)
    assert got.rule_id == "met"
    assert f"sender '{value}'" in got.reason


def test_urgency_and_certainty_are_matched() -> None:
    settings = rules({"id": "now", "action": "broadcast",
                      "match": {"urgency": ["Immediate"], "certainty": ["Observed", "Likely"]}})
    assert run(settings, make_alert()).rule_id == "now"
    assert run(settings, make_alert(make_info(urgency="Future"))).rule_id is None
    assert run(settings, make_alert(make_info(certainty="Possible"))).rule_id is None


def test_no_rule_gives_the_default_action_with_its_timeout() -> None:
    settings = AlertsSettings.model_validate({"rules": [RED_AUTO], "default_approval_timeout_s": 900})
    got = run(settings, make_alert())
    assert (got.action, got.rule_id, got.on_timeout, got.approval_timeout_s) == (Action.APPROVE, None,
                                                                                 "expire", 900)
    assert got.reason.startswith("no rule matched (event type 11B03 '暴雨', severity Severe (Orange)): "
                                 "default action approve")
    recorder = AlertsSettings.model_validate({"default_action": "record"})
    assert run(recorder, make_alert()).action is Action.RECORD


def test_a_rule_without_conditions_matches_every_real_alert() -> None:
    got = run(rules(AUTO_ALL), make_alert())
    assert got.reason == "rule 'auto-all' matched (it matches every Actual alert): broadcast at once"


@pytest.mark.parametrize(("severity", "colour", "level"), [
    (Severity.EXTREME, "Red", 1), (Severity.SEVERE, "Orange", 2), (Severity.MODERATE, "Yellow", 3),
    (Severity.MINOR, "Blue", 4), (Severity.UNKNOWN, None, 4), (Severity.EXTREME, None, 1),
    (Severity.UNKNOWN, "Red", 1), (Severity.UNKNOWN, "橙", 2),
])
def test_severity_and_colour_map_to_emergency_levels(demo: Config, severity: Severity, colour: str | None,
                                                     level: int) -> None:
    info = make_info(severity=severity, severity_colour=colour)
    assert emergency_level(info) == level
    alert = make_alert(info)
    match = match_area(demo, info)
    request = build_request(demo, alert, info, run(rules(AUTO_ALL), alert), match, "测试文本。")
    assert request.broadcast_class is BroadcastClass.EMERGENCY
    assert request.severity == level
    assert request.effective_tone is (Tone.SIREN if level <= 2 else Tone.CHIME)


# ------------------------------------------------------------------------------ text

TEMPLATES = {
    "11B03": "{sender}发布{event}{colour}预警：{headline}。{description}{instruction}"
             "请{villages}群众注意防范。{guidance}",
    "11B*": "气象灾害预警：{event}。影响范围：{villages}。",
    "大风": "大风预警：{headline}。",
    "default": "{event}预警。{headline}。影响范围：{villages}。{guidance}",
}
GUIDANCE = {"刘桥村": "刘桥村群众请转移到村委会二楼。", "前李村": "请沿李庄路向北撤离到镇中学"}


def text_for(demo: Config, info: Info, match: AreaMatch | None = None, **settings: Any) -> str:
    cfg = with_alerts(demo, **({"templates": TEMPLATES, "guidance": GUIDANCE} | settings))
    return compose_text(cfg, info, match or match_area(cfg, info))


def test_template_chosen_by_event_type_code(demo: Config) -> None:
    assert text_for(demo, make_info()) == (
        "濉溪县气象台发布暴雨橙色预警：濉溪县气象台发布暴雨橙色预警。预计未来3小时我县将出现50毫米以上降水。"
        "请注意防范。请刘桥村群众注意防范。刘桥村群众请转移到村委会二楼。")


def test_template_chosen_by_code_family_then_event_text_then_default(demo: Config) -> None:
    fog = make_info(event="大雾", event_type="11B17")
    assert text_for(demo, fog) == "气象灾害预警：大雾。影响范围：刘桥村。"
    wind = make_info(event="大风", event_type=None, headline="大风蓝色预警")
    assert text_for(demo, wind) == "大风预警：大风蓝色预警。"
    fire = make_info(event="森林火险", event_type="11A01", headline="")
    assert text_for(demo, fire) == "森林火险预警。影响范围：刘桥村。刘桥村群众请转移到村委会二楼。"


def test_default_template_without_any_configured(demo: Config) -> None:
    got = text_for(demo, make_info(), templates={})
    assert DEFAULT_TEMPLATE.startswith("{sender}发布{event}预警。")
    assert got == ("濉溪县气象台发布暴雨预警。濉溪县气象台发布暴雨橙色预警。"
                   "预计未来3小时我县将出现50毫米以上降水。请注意防范。影响范围：刘桥村。"
                   "刘桥村群众请转移到村委会二楼。")


def test_guidance_is_said_per_affected_village(demo: Config) -> None:
    two = make_info(areas=(Area(desc="刘桥村、前李村", area_codes=("340621105201", "340621105202")),))
    got = text_for(demo, two, templates={})
    assert got.endswith("影响范围：刘桥村、前李村。刘桥村：刘桥村群众请转移到村委会二楼。"
                        "前李村：请沿李庄路向北撤离到镇中学。")
    none_configured = make_info(areas=(Area(desc="张庄村", area_codes=("340621105204",)),))
    assert text_for(demo, none_configured, templates={}).endswith("影响范围：张庄村。")


def test_missing_headline_description_and_instruction_leave_no_trace(demo: Config) -> None:
    bare = make_info(headline="", description="", instruction="", sender_name="", severity_colour=None)
    got = text_for(demo, bare, templates={}, guidance={})
    assert got == "暴雨预警。影响范围：刘桥村。"
    nobody = AreaMatch(terminals=(), villages=(), whole_gateway=False)
    got = text_for(demo, bare, nobody, templates={}, guidance={})
    assert got == "暴雨预警。"
    custom = text_for(demo, bare, templates={"11B03": "{sender}发布{event}{colour}预警：{headline}。"
                                                       "{description}{instruction}请{villages}群众注意防范。"})
    assert custom == "暴雨预警。请刘桥村群众注意防范。"  # "：{headline}。" went with the headline
    for text in (got, custom):
        assert "None" not in text and "。。" not in text and "：。" not in text


def test_cap_text_is_folded_into_clean_sentences(demo: Config) -> None:
    messy = make_info(headline="  濉溪县气象台发布\n暴雨橙色预警 。 ",
                      description="  预计未来3小时\n  我县将出现\u300050毫米以上降水  \n",
                      instruction="防御指南：\n1.停止户外作业\n2.转移低洼地带群众\n")
    got = text_for(demo, messy, templates={"default": "{headline}。{description}{instruction}"})
    assert got == ("濉溪县气象台发布暴雨橙色预警。预计未来3小时我县将出现50毫米以上降水。"
                   "防御指南：1.停止户外作业；2.转移低洼地带群众。")


def test_english_text_keeps_its_words_apart(demo: Config) -> None:
    info = make_info(language="en-US", event="Flood", headline="Flood warning", event_type=None,
                     description="The river will\ncrest at 5 m\ntonight", instruction="")
    got = text_for(demo, info, templates={"default": "{headline}。{description}"})
    assert got == "Flood warning。The river will crest at 5 m tonight."


def test_markup_in_cap_text_is_never_spoken(demo: Config) -> None:
    """Feeds paste HTML into CAP text: the announcement, the title and the source are plain."""
    info = make_info(
        headline="<b>濉溪县气象台</b>发布暴雨橙色预警&nbsp;",
        description="<p>预计未来3小时我县将出现50毫米以上降水</p><p>局地可达100毫米&#xff01;</p>"
                    "<script>alert('x')</script><style>p {color: red}</style>",
        instruction="防御指南：<br>1.停止户外作业<br/>2.转移低洼地带群众&amp;老人",
        sender_name="<span>濉溪县气象台</span>",
        areas=(Area(desc="<i>刘桥村</i>", area_codes=LIUQIAO.area_codes),))
    template = "{sender}：{headline}。{description}{instruction}{area}"
    got = text_for(demo, info, templates={"default": template})
    assert got == ("濉溪县气象台：濉溪县气象台发布暴雨橙色预警。预计未来3小时我县将出现50毫米以上降水。"
                   "局地可达100毫米！防御指南：1.停止户外作业，2.转移低洼地带群众&老人。刘桥村")
    alert = make_alert(info)
    request = build_request(demo, alert, info, run(rules(AUTO_ALL), alert), match_area(demo, info), got)
    assert (request.title, request.source) == ("濉溪县气象台发布暴雨橙色预警", "濉溪县气象台")

    english = make_info(language="en-US", event="Flood", event_type=None, headline="<b>Flood</b> warning",
                        description="<p>The river will crest tonight</p><p>Stay away from the banks</p>",
                        instruction="")
    got = text_for(demo, english, templates={"default": "{headline}。{description}"})
    assert got == "Flood warning。The river will crest tonight. Stay away from the banks."


def test_colour_level_expires_and_area_placeholders(demo: Config) -> None:
    info = make_info(expires=datetime(2026, 11, 28, 7, 0, tzinfo=UTC), severity=Severity.EXTREME,
                     severity_colour="Red", areas=(COUNTY,))
    got = text_for(demo, info, templates={"default": "{area}{colour}预警，{level}级，有效期至{expires}。"})
    assert got == "濉溪县红色预警，1级，有效期至11月28日 15:00。"
    # read in the gateway's own zone (gateway.timezone; Xinjiang keeps Ürümqi time, UTC+6)
    gw = demo.gateway.model_copy(update={"timezone": "Asia/Urumqi"})
    urumqi = demo.model_copy(update={"gateway": gw})
    got = text_for(urumqi, info, templates={"default": "有效期至{expires}。"})
    assert got == "有效期至11月28日 13:00。"


def test_long_text_is_cut_at_a_sentence_and_keeps_villages_and_guidance(demo: Config) -> None:
    sentences = [f"第{i}段气象说明，雨量将持续增加。" for i in range(1, 200)]
    info = make_info(description="".join(sentences))
    cfg = with_alerts(demo, guidance=GUIDANCE).model_copy(
        update={"speech": demo.speech.model_copy(update={"max_chars": 200})})
    got = compose_text(cfg, info, match_area(cfg, info))
    assert len(got) <= 200
    assert got.endswith("影响范围：刘桥村。刘桥村群众请转移到村委会二楼。")
    assert "第1段气象说明，雨量将持续增加。" in got
    description = got.split("濉溪县气象台发布暴雨橙色预警。")[1].split("请注意防范。")[0]
    assert description and "".join(sentences).startswith(description)  # whole sentences only
    assert description.endswith("。")


def test_long_text_without_any_sentence_end_is_still_cut(demo: Config) -> None:
    info = make_info(description="雨" * 5000)
    got = text_for(demo, info, templates={"default": "{description}"})
    assert len(got) == min(demo.speech.max_chars, 2000)
    assert got.endswith("。")


def test_text_never_exceeds_what_a_broadcast_accepts(demo: Config) -> None:
    cfg = demo.model_copy(update={"speech": demo.speech.model_copy(update={"max_chars": 10000})})
    info = make_info(description="雨下得很大。" * 2000)
    got = compose_text(cfg, info, match_area(cfg, info))
    assert len(got) <= 2000
    alert = make_alert(info)
    build_request(cfg, alert, info, run(rules(AUTO_ALL), alert), match_area(cfg, info), got)


def test_unknown_placeholder_is_rejected_by_config_validation() -> None:
    with pytest.raises(ValidationError, match=r"template '11B03': unknown placeholder\(s\) \{town\}"):
        AlertsSettings.model_validate({"templates": {"11B03": "{headline}请{town}群众注意。"}})
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["alerts"] = {"templates": {"default": "{headline}{0}"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "demo.yaml", DEMO.parent)
    assert any(e.startswith("alerts.templates") and "{0}" in e for e in caught.value.errors)


def test_format_specs_in_a_template_cannot_inflate_the_text(demo: Config) -> None:
    got = text_for(demo, make_info(), templates={"default": "{event:>100000000}预警。"}, guidance={})
    assert got == "暴雨预警。"


# ------------------------------------------------------------------------------ request

def test_build_request_for_a_village_alert(demo: Config) -> None:
    settings = rules(RED_AUTO)
    info = make_info(severity=Severity.EXTREME, severity_colour="Red", headline="", event="暴雨红色预警")
    alert = make_alert(info)
    decision = run(settings, alert)
    match = match_area(demo, info)
    request = build_request(demo, alert, info, decision, match, "刘桥村请注意。")
    assert request.broadcast_class is BroadcastClass.EMERGENCY and request.severity == 1
    assert request.title == "暴雨红色预警"  # no headline: the event
    assert request.source == "濉溪县气象台"
    assert request.source_level is SourceLevel.COUNTY
    assert request.targets == Targets(devices=["t01", "t02"])
    assert resolve(demo, request.targets).device_ids == ["t01", "t02"]
    assert (request.text, request.language, request.tone, request.repeat) == ("刘桥村请注意。", "zh",
                                                                               Tone.SIREN, 3)
    assert request.expires_at == info.expires


def test_build_request_for_the_whole_county_keys_the_fm_transmitter(demo: Config) -> None:
    info = make_info(areas=(COUNTY,))
    alert = make_alert(info)
    decision = Decision(Action.BROADCAST, "r", "test", source_level="city", tone="none", repeat=1)
    request = build_request(demo, alert, info, decision, match_area(demo, info), "全县注意。",
                            default_source_level="province")
    assert request.source_level is SourceLevel.CITY
    assert request.tone is Tone.NONE and request.repeat == 1
    reached = resolve(demo, request.targets)
    assert len(reached.terminals) == 20 and reached.transmitters == ("fm1",)


def test_build_request_limits_title_and_source_and_picks_the_language(demo: Config) -> None:
    info = make_info(language="en-US", headline="H" * 300, sender_name="")
    alert = make_alert(info, sender="S" * 300)
    decision = Decision(Action.APPROVE, None, "default")
    request = build_request(demo, alert, info, decision, match_area(demo, info), "Take shelter.",
                            default_source_level="township")
    assert len(request.title) == 200 and len(request.source) == 200
    assert request.language == "en"
    assert request.source_level is SourceLevel.TOWNSHIP
    assert request.effective_tone is Tone.SIREN  # level 2 (Severe)


def test_an_english_alert_announced_through_a_chinese_template_is_read_by_the_mandarin_voice(
        demo: Config) -> None:
    info = make_info(language="en-US", event="Flood", headline="Flood warning")
    alert = make_alert(info)
    match = match_area(demo, info)
    text = compose_text(demo, info, match)
    request = build_request(demo, alert, info, Decision(Action.APPROVE, None, "default"), match, text)
    assert "刘桥村" in text and request.language == "zh"


def test_build_request_refuses_an_alert_that_reaches_nothing_here(demo: Config) -> None:
    info = make_info(areas=(Area(desc="濉溪县临涣镇", area_codes=("340621106000",)),))
    alert = make_alert(info)
    with pytest.raises(ValueError, match="touches none of this gateway's terminals"):
        build_request(demo, alert, info, run(rules(AUTO_ALL), alert), match_area(demo, info), "x")


def test_rule_settings_carry_into_the_decision() -> None:
    rule = AlertRule.model_validate({"id": "x", "action": "approve", "source_level": "province",
                                     "tone": "chime", "repeat": 4, "approval_timeout_s": 120,
                                     "on_timeout": "play"})
    got = run(AlertsSettings(rules=[rule]), make_alert())
    assert (got.source_level, got.tone, got.repeat, got.approval_timeout_s, got.on_timeout) == (
        "province", "chime", 4, 120, "play")
