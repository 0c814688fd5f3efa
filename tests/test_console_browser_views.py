"""The console's broadcast, history and alert-inbox views in a real browser against a real township.

A duty officer plays a template to every terminal through the confirmation step and watches the
outcomes arrive live; a viewer sees but cannot play or approve; a CAP alert waiting for approval
shows what it would do, is edited and approved, and its broadcast plays; attacker-controlled text
(CAP headline and description, a device name) stays text; the speech preview gives playable audio.

The township is config/demo.yaml (tests/browserkit.py) with three changes: one alert rule that sends
every real alert to approval (so the inbox has something to decide), audio played 20× faster than
real time (a three-times-repeated warning would otherwise take minutes), and terminal t20 renamed to
markup. Screenshots go to test-output/screenshots/.
"""

# ruff: noqa: F811  (tests take the imported fixtures as parameters of the same name)

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape

import pytest
import yaml
from browserkit import (  # noqa: F401  (browser, context, page: fixtures)
    PHONE,
    Daemon,
    PageProblems,
    Township,
    browser,
    by_testid,
    context,
    login,
    make_tokens,
    new_context,
    no_horizontal_scroll,
    page,
    screenshot,
    write_demo_township,
)
from playwright.sync_api import Browser, Page, expect
from simkit import SimProcess

from controller.core.actors import Role
from controller.storage.journal import Store

PLAY_WAIT_MS = 120_000
"""Guard for a whole broadcast to play out (tone, speech ×3) on slow CI; never a performance claim."""
TEMPLATE = "rainstorm-red-evacuate"
"""The demo's 暴雨红色预警 紧急转移 template: emergency level 1, siren, three times."""
HOSTILE_NAME = '<img src=x onerror="window.__xss=1">新庄村村部'
HOSTILE_VILLAGE = "<script>window.__xss=1</script>新庄村"
XSS_HEADLINE = "<script>window.__xss=1</script>暴雨黄色预警"
XSS_DESCRIPTION = "<img src=x onerror=window.__xss=1>请注意防范"
CST = timezone(timedelta(hours=8))
FINAL_STATE = ", ".join(f'{by_testid("broadcast-state")}[data-state="{code}"]' for code in (3, 4, 5))


@pytest.fixture(scope="module")
def township(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Township]:
    """The demo township with an approval rule, fast audio, a markup device name and a feed token."""
    tmp = tmp_path_factory.mktemp("views")
    config, port = write_demo_township(tmp)
    data: dict[str, Any] = yaml.safe_load(config.path.read_text(encoding="utf-8"))
    data["audio_output"] = {**data.get("audio_output", {}), "time_scale": 20.0}
    data["simulator"]["time_scale"] = 10.0
    for device in data["devices"]:
        if device["id"] == "t20":
            device["name"], device["village"] = HOSTILE_NAME, HOSTILE_VILLAGE
    alerts = data.setdefault("alerts", {})
    alerts["rules"] = [{"id": "console-approve", "match": {"status": ["Actual"]}, "action": "approve",
                        "approval_timeout_s": 3600, "on_timeout": "expire"}]
    config.path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    config.data = data
    state = tmp / "state"
    state.mkdir(parents=True, exist_ok=True)
    tokens = make_tokens(state)
    store = Store.in_state_dir(state)
    try:
        tokens["feed"] = store.create_token("console-feed", Role.FEED)
    finally:
        store.close()
    sim = SimProcess(config, tmp / "sim.log").start()
    daemon = Daemon(config.path, port, tmp / "daemon.log")
    try:
        daemon.start()
        town = Township(config=config, sim=sim, daemon=daemon, tokens=tokens)
        town.wait_all_reporting()
        yield town
    finally:
        daemon.stop()
        sim.stop()


def cn_alert(*, headline: str, description: str, severity: str = "Yellow",
             codes: tuple[str, ...] = ("340621105201", "340621105202"), expires: str | None = None) -> str:
    """A Chinese national-variant CAP document (no namespace, colour severity) for 刘桥村 and 前李村,
    valid for six hours unless ``expires`` (``2099-12-31 23:00:00+08:00``) says otherwise."""
    now = datetime.now(CST)
    sent = now.strftime("%Y-%m-%d %H:%M:%S+08:00")
    expires = expires or (now + timedelta(hours=6)).strftime("%Y-%m-%d %H:%M:%S+08:00")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert>
  <identifier>34062141600000_{uuid.uuid4().hex}</identifier>
  <sender>濉溪县气象台</sender>
  <senderCode>34062141600000</senderCode>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <code></code>
  <note></note>
  <references></references>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <eventType>11B03</eventType>
    <urgency>Expected</urgency>
    <severity>{severity}</severity>
    <certainty>Likely</certainty>
    <effective>{sent}</effective>
    <onset></onset>
    <expires>{expires}</expires>
    <senderName>濉溪县气象台</senderName>
    <headline>{escape(headline)}</headline>
    <description>{escape(description)}</description>
    <instruction></instruction>
    <web></web>
    <area>
      <areaDesc>濉溪县刘桥镇刘桥村、前李村</areaDesc>
      <polygon></polygon>
      <circle></circle>
      <geocode>{",".join(codes)}</geocode>
    </area>
  </info>
</alert>
"""


def post_alert(township: Township, document: str) -> dict[str, Any]:
    """POST the CAP document with the feed token; the alert must be waiting for approval."""
    with township.http("feed") as http:
        r = http.post("/alerts/cap", content=document.encode("utf-8"),
                      headers={"Content-Type": "application/xml"})
    assert r.status_code == 202, r.text
    record: dict[str, Any] = r.json()
    assert record["disposition"] == "pending", record
    return record


def no_xss(page: Page) -> None:
    """Nothing the attacker wrote ran or became an element."""
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#view img").count() == 0
    assert page.locator("#view script").count() == 0


# -- one-key emergency broadcast ------------------------------------------------------------------------


def test_operator_plays_a_template_to_all_and_watches_outcomes_live(township: Township, page: Page):
    with township.http("operator") as http:
        template = next(t for t in http.get("/templates").json() if t["id"] == TEMPLATE)
    login(page, township, "operator")
    page.locator(by_testid("emergency-button")).click()
    page.locator(by_testid(f"template-{TEMPLATE}")).click()
    expect(page.locator(by_testid("target-all"))).to_have_attribute("aria-checked", "true")  # the default
    expect(page.locator(by_testid("broadcast-text"))).to_have_value(template["text"])
    page.locator(by_testid("broadcast-review")).click()

    confirm = page.locator(by_testid("broadcast-confirm"))
    expect(confirm).to_be_visible()
    terminals = len(township.terminals)
    expect(page.locator(by_testid("confirm-terminal-count"))).to_contain_text(str(terminals))
    expect(page.locator(by_testid("confirm-class")).locator('[data-level="1"]')).to_be_visible()
    expect(page.locator(by_testid("confirm-text"))).to_have_text(template["text"])
    expect(page.locator(by_testid("confirm-repeat"))).to_contain_text("3")
    expect(page.locator(by_testid("confirm-summary"))).to_contain_text(str(terminals))
    screenshot(page, "broadcast-confirm")
    page.locator(by_testid("confirm-play")).click()

    page.wait_for_url("**/#/history/*")
    broadcast_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator(by_testid("broadcast-title"))).to_have_text(template["title"])
    expect(page.locator(by_testid("live-indicator"))).to_have_attribute("data-state", "connected")
    # The detail view never polls: the state and outcomes below arrive over the event stream.
    page.locator(FINAL_STATE).wait_for(timeout=PLAY_WAIT_MS)
    state = page.locator(by_testid("broadcast-state"))
    assert state.get_attribute("data-state") == "3", page.locator(by_testid("broadcast-summary")).inner_text()
    for terminal in township.terminals:
        expect(page.locator(by_testid(f"outcome-{terminal}"))).to_have_attribute("data-outcome", "succeeded")
    expect(page.locator(by_testid("broadcast-coverage"))).to_contain_text("100 %")
    expect(page.locator(by_testid("recording"))).to_be_attached()  # the evidence WAV as it went out
    assert page.locator(by_testid("recording")).get_attribute("src").startswith("blob:")
    screenshot(page, "history-detail")
    with township.http("viewer") as http:
        assert http.get(f"/broadcasts/{broadcast_id}").json()["state"] == "succeeded"

    page.locator(by_testid("back-to-history")).click()
    row = page.locator(by_testid(f"history-row-{broadcast_id}"))
    expect(row).to_have_attribute("data-state", "3")
    expect(page.locator(by_testid(f"cancel-{broadcast_id}"))).to_have_count(0)  # final: nothing to cancel
    screenshot(page, "history-list")
    no_xss(page)


def test_api_error_names_the_field(township: Township, page: Page):
    login(page, township, "operator")
    page.goto(f"{township.base_url}/#/broadcast")
    page.locator(by_testid("template-free")).click()
    page.locator(by_testid("broadcast-text")).fill("这是一次控制台测试。")
    page.locator(by_testid("class-drill")).click()
    page.locator(by_testid("repeat-input")).fill("11")
    page.locator(by_testid("broadcast-review")).click()
    page.locator(by_testid("confirm-play")).click()
    error = page.locator(by_testid("confirm-error"))
    expect(error).to_be_visible()
    expect(error).to_contain_text("repeat")
    assert "#/broadcast" in page.url  # nothing was submitted


def test_speech_preview_gives_playable_audio(township: Township, page: Page):
    login(page, township, "operator")
    page.goto(f"{township.base_url}/#/broadcast")
    page.locator(by_testid("template-free")).click()
    page.locator(by_testid("broadcast-text")).fill("刘桥镇应急广播试听。")
    page.locator(by_testid("preview-button")).click()
    audio = page.locator(by_testid("preview-audio"))
    expect(audio).to_be_attached()
    assert audio.get_attribute("src").startswith("blob:")
    duration = audio.evaluate("""a => new Promise((resolve, reject) => {
        if (a.readyState >= 1) return resolve(a.duration);
        a.addEventListener('loadedmetadata', () => resolve(a.duration));
        a.addEventListener('error', () => reject(new Error('audio error ' + (a.error && a.error.code))));
    })""")
    assert duration > 0.5

    # Switching the language re-labels the view and keeps what the officer typed.
    page.locator(by_testid("lang-switch")).click()
    expect(page.locator(by_testid("broadcast-review"))).to_have_text("Review and play")
    expect(page.locator(by_testid("broadcast-text"))).to_have_value("刘桥镇应急广播试听。")
    expect(page.locator(by_testid("preview-audio"))).to_be_attached()


# -- the alert inbox -------------------------------------------------------------------------------------


def test_pending_alert_is_edited_approved_and_played(township: Township, page: Page):
    alert = post_alert(township, cn_alert(headline="濉溪县气象台发布暴雨黄色预警信号",
                                          description="预计未来6小时刘桥村、前李村降雨量将达50毫米以上。"))
    login(page, township, "operator")
    page.locator(by_testid("nav-alerts")).click()
    card = page.locator(by_testid(f"alert-{alert['id']}"))
    expect(card).to_be_visible()
    expect(page.locator(by_testid(f"alert-terminal-count-{alert['id']}"))).to_contain_text("3")
    villages = page.locator(by_testid(f"alert-villages-{alert['id']}"))
    expect(villages).to_contain_text("刘桥村")
    expect(villages).to_contain_text("前李村")
    expect(page.locator(by_testid(f"alert-terminals-{alert['id']}"))).to_contain_text("刘桥村村委会广场")
    expect(page.locator(by_testid(f"alert-text-{alert['id']}"))).to_have_text(alert["plan"]["text"])
    expect(page.locator(by_testid(f"severity-{alert['id']}"))).to_have_attribute("data-level", "3")
    expect(page.locator(by_testid(f"countdown-{alert['id']}"))).to_be_visible()
    screenshot(page, "alert-inbox")

    edited = "刘桥镇应急广播：暴雨黄色预警，请刘桥村、前李村低洼地带群众注意防范。"
    page.locator(by_testid(f"edit-{alert['id']}")).click()
    page.locator(by_testid(f"edit-text-{alert['id']}")).fill(edited)
    page.locator(by_testid(f"approve-edited-{alert['id']}")).click()
    expect(card).to_have_count(0)
    decided = page.locator(by_testid(f"disposition-{alert['id']}"))
    expect(decided).to_have_attribute("data-disposition", "broadcast")
    page.locator(by_testid(f"alert-broadcast-{alert['id']}")).click()

    expect(page.locator(by_testid("broadcast-text"))).to_have_text(edited)
    page.locator(FINAL_STATE).wait_for(timeout=PLAY_WAIT_MS)
    assert page.locator(by_testid("broadcast-state")).get_attribute("data-state") == "3"
    for terminal in ("t01", "t02", "t03"):  # 刘桥村 (two) and 前李村
        expect(page.locator(by_testid(f"outcome-{terminal}"))).to_have_attribute("data-outcome", "succeeded")
    expect(page.locator(by_testid("outcome-t04"))).to_have_count(0)  # 后李村 was not in the alert


def test_rejected_alert_shows_its_reason(township: Township, page: Page):
    alert = post_alert(township, cn_alert(headline="暴雨蓝色预警", description="局地有短时强降雨。",
                                          severity="Blue"))
    login(page, township, "operator")
    page.goto(f"{township.base_url}/#/alerts")
    page.locator(by_testid(f"reject-{alert['id']}")).click()
    page.locator(by_testid(f"reject-reason-{alert['id']}")).fill("雨已停，不需要播放")
    page.locator(by_testid(f"confirm-reject-{alert['id']}")).click()
    expect(page.locator(by_testid(f"alert-{alert['id']}"))).to_have_count(0)
    disposition = page.locator(by_testid(f"disposition-{alert['id']}"))
    expect(disposition).to_have_attribute("data-disposition", "rejected")
    expect(page.locator(by_testid(f"recent-{alert['id']}"))).to_contain_text("雨已停")


def test_viewer_cannot_broadcast_or_decide(township: Township, page: Page):
    alert = post_alert(township, cn_alert(headline="暴雨黄色预警（查看员）", description="查看员只能看。"))
    login(page, township, "viewer")
    expect(page.locator(by_testid("user-info"))).to_have_attribute("data-role", "viewer")
    expect(page.locator(by_testid("emergency-button"))).to_have_count(0)
    expect(page.locator(by_testid("nav-broadcast"))).to_have_count(0)
    page.locator(by_testid("nav-alerts")).click()
    expect(page.locator(by_testid(f"alert-{alert['id']}"))).to_be_visible()
    expect(page.locator(by_testid(f"alert-text-{alert['id']}"))).to_have_text(alert["plan"]["text"])
    decide = '[data-testid^="approve-"], [data-testid^="reject-"], [data-testid^="edit-"]'
    assert page.locator(decide).count() == 0
    page.goto(f"{township.base_url}/#/broadcast")
    expect(page.locator(by_testid("forbidden"))).to_be_visible()
    assert page.locator(by_testid("broadcast-review")).count() == 0
    page.goto(f"{township.base_url}/#/history")
    expect(page.locator(by_testid("history-list"))).to_be_visible()
    assert page.locator('[data-testid^="cancel-"]').count() == 0


def test_times_read_in_the_gateway_zone_on_a_laptop_set_to_utc(township: Township, browser: Browser):
    """An alert valid to 23:00 on 31 December 2099 in the township (Asia/Shanghai, the gateway's
    zone) is spoken as 23:00; a duty officer whose laptop is set to UTC must read the same, with the
    year (not this year) and the zone (not the laptop's), not "12-31 15:00"."""
    alert = post_alert(township, cn_alert(headline="暴雨黄色预警（长期有效）", description="时区测试。",
                                          expires="2099-12-31 23:00:00+08:00"))
    received = datetime.fromisoformat(alert["received_at"]).astimezone(CST)
    context = new_context(browser, timezone_id="UTC")
    try:
        page = context.new_page()
        problems = PageProblems()
        problems.watch(page)
        login(page, township, "viewer")
        assert page.evaluate("new Date(Date.UTC(2099, 11, 31, 15)).getHours()") == 15  # the browser is on UTC
        page.goto(f"{township.base_url}/#/alerts")
        expires = page.locator(by_testid(f"alert-expires-{alert['id']}"))
        expect(expires).to_have_text("2099-12-31 23:00:00 GMT+8")
        expect(page.locator(by_testid(f"alert-received-{alert['id']}"))).to_have_text(
            received.strftime("%m-%d %H:%M:%S GMT+8"))  # this year: no year
        page.goto(f"{township.base_url}/#/gateway")
        expect(page.locator(by_testid("gw-timezone"))).to_contain_text("Asia/Shanghai (GMT+8)")
        assert not problems.errors, problems.errors
    finally:
        context.close()
    context = new_context(browser)  # a browser in the township's own zone: no zone to point out
    try:
        page = context.new_page()
        login(page, township, "viewer")
        page.goto(f"{township.base_url}/#/alerts")
        expect(page.locator(by_testid(f"alert-expires-{alert['id']}"))).to_have_text("2099-12-31 23:00:00")
    finally:
        context.close()


# -- attacker-controlled text ----------------------------------------------------------------------------


def test_markup_in_alerts_and_device_names_stays_text(township: Township, page: Page):
    # The CAP headline is shown as written; CAP markup is never spoken, so the planned announcement
    # has none of it. A village name from the config (t20's) reaches that text as written, so the
    # announcement is attacker-controlled text too.
    alert = post_alert(township, cn_alert(headline=XSS_HEADLINE, description=XSS_DESCRIPTION,
                                          codes=("340621105201", "340621105219")))
    planned = alert["plan"]["text"]
    assert "<img" not in planned and "暴雨黄色预警。请注意防范。" in planned and HOSTILE_VILLAGE in planned
    login(page, township, "operator")
    page.goto(f"{township.base_url}/#/alerts")
    expect(page.locator(by_testid(f"alert-headline-{alert['id']}"))).to_have_text(XSS_HEADLINE)
    text = page.locator(by_testid(f"alert-text-{alert['id']}"))
    expect(text).to_contain_text(HOSTILE_VILLAGE)
    expect(text).to_have_text(planned)
    no_xss(page)

    page.goto(f"{township.base_url}/#/broadcast")
    page.locator(by_testid("target-devices")).click()
    label = page.locator("label", has=page.locator(by_testid("target-device-t20")))
    expect(label).to_contain_text(HOSTILE_NAME)
    screenshot(page, "broadcast-terminals")
    page.locator(by_testid("map-t20")).dispatch_event("click")  # the position map selects as the list does
    expect(page.locator(by_testid("target-device-t20"))).to_be_checked()
    expect(page.locator(by_testid("map-t20"))).to_have_attribute("aria-pressed", "true")
    page.locator(by_testid("target-device-t20")).uncheck()
    page.locator(by_testid("target-villages")).click()
    expect(page.locator(by_testid("village-list"))).to_contain_text(HOSTILE_VILLAGE)
    page.locator(by_testid("target-devices")).click()
    page.locator(by_testid("target-device-t20")).check()
    page.locator(by_testid("broadcast-text")).fill("测试。")
    page.locator(by_testid("broadcast-review")).click()
    expect(page.locator(by_testid("confirm-terminals"))).to_contain_text(HOSTILE_NAME)
    no_xss(page)
    page.goto(f"{township.base_url}/#/board")
    expect(page.locator(by_testid("device-t20"))).to_contain_text(HOSTILE_NAME)
    no_xss(page)


# -- small screens --------------------------------------------------------------------------------------


def test_views_fit_a_phone(township: Township, browser: Browser):
    ctx = new_context(browser, PHONE)
    try:
        tab = ctx.new_page()
        problems = PageProblems()
        problems.watch(tab)
        login(tab, township, "operator")
        for route, ready, name in (("#/broadcast", "broadcast-review", "broadcast-phone"),
                                   ("#/history", "history-list", "history-phone"),
                                   ("#/alerts", "pending-alerts", "alerts-phone")):
            tab.goto(f"{township.base_url}/{route}")
            tab.locator(by_testid(ready)).wait_for()
            width, viewport = no_horizontal_scroll(tab)
            assert width <= viewport, f"{route} scrolls sideways on a phone ({width} > {viewport})"
            screenshot(tab, name)
        assert not problems.errors, problems.errors
    finally:
        ctx.close()
