"""The web console's core in a real browser: login and session, layout per role, the live device
board, language switch, gateway health, audit log, phone layout — against the real daemon and the
simulated 刘桥镇 township (tests/browserkit.py), in headless Debian Chromium.

Plus a static check of the console's source: no HTML sinks, no inline code (the CSP forbids it and
device names and CAP text are attacker-controlled).
"""
# ruff: noqa: F811  (tests take the imported fixtures as parameters of the same name)

from __future__ import annotations

import re
import time
from pathlib import Path

from browserkit import (  # noqa: F401  (browser, console_township, context, page: fixtures)
    PHONE,
    Township,
    browser,
    by_testid,
    console_township,
    context,
    login,
    new_context,
    no_horizontal_scroll,
    page,
    screenshot,
)
from playwright.sync_api import Browser, BrowserContext, Page, expect
from simkit import REPO

from controller.core.actors import Role
from controller.storage.journal import Store

STATIC = REPO / "controller" / "web" / "static"
TOKEN_KEY = "ebc.token"


# -- the source itself ------------------------------------------------------------------------------

HTML_SINKS = re.compile(r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\s*\(|"
                        r"new\s+Function\b|\bsetTimeout\s*\(\s*['\"`]|\bsetInterval\s*\(\s*['\"`]|"
                        r"createContextualFragment|DOMParser|javascript:")


COMMON = REPO / "webcommon" / "static"
"""What both consoles share (dom.js, the API client, the shell): checked with the gateway's own."""
COUNTY = REPO / "county" / "web"
SVG_NS = "http://www.w3.org/2000/svg"
"""A namespace name, not something fetched: the map's SVG elements are created in it."""


def _js_files() -> list[Path]:
    return sorted([*(STATIC / "js").rglob("*.js"), *(COMMON / "js").rglob("*.js"),
                   *(COUNTY / "js").rglob("*.js")])


def test_console_js_has_no_html_sinks_and_nothing_remote():
    """Both consoles' code (gateway, county) and what they share."""
    files = _js_files()
    assert {"app.js", "dom.js", "api.js", "i18n.js"} <= {f.name for f in files}
    for path in [*files, STATIC / "app.css", COMMON / "app.css"]:
        text = path.read_text(encoding="utf-8")
        code = path.suffix == ".js"
        if code:
            hits = [m.group(0) for m in HTML_SINKS.finditer(text)]
            assert not hits, f"{path.relative_to(REPO)} uses {hits}: build nodes with h() instead"
        remote = [url for url in re.findall(r"https?://[^\s\"'`)]+", text) if url != SVG_NS]
        assert not remote, f"{path.relative_to(REPO)} refers to {remote}: nothing may come from the internet"
        assert "localStorage.setItem(\"ebc.token" not in text and "document.cookie" not in text


def test_index_html_has_no_inline_code():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in html
    scripts = re.findall(r"<script\b[^>]*>", html, flags=re.I)
    assert scripts == ['<script type="module" src="/ui/js/app.js">'], scripts
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html, flags=re.I) is None, "inline script"
    assert re.search(r"\son[a-z]+\s*=", html, flags=re.I) is None, "inline event handler"
    assert re.search(r"<style\b|\sstyle\s*=", html, flags=re.I) is None, "inline style"
    assert '<link rel="stylesheet" href="/ui/app.css">' in html


# -- helpers ----------------------------------------------------------------------------------------


def _stored_token(page: Page) -> str | None:
    return page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")


def _assert_token_only_in_session_storage(page: Page, context: BrowserContext, token: str) -> None:
    assert token not in page.url
    assert _stored_token(page) == token
    local = page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert token not in local
    assert not [c for c in context.cookies() if token in c["value"]]


def _card(page: Page, device: str):
    return page.locator(by_testid(f"device-{device}"))


# -- login and session ------------------------------------------------------------------------------


def test_operator_sees_every_terminal_with_state_text(console_township: Township, page: Page,
                                                      context: BrowserContext):
    tw = console_township
    tw.wait_all_reporting()
    login(page, tw, "operator")
    _assert_token_only_in_session_storage(page, context, tw.tokens["operator"])
    assert page.url.endswith("/") or "#/board" in page.url
    expect(page.locator(by_testid("user-info"))).to_have_attribute("data-role", "operator")
    expect(page.locator(by_testid("emergency-button"))).to_be_visible()
    expect(page.locator(by_testid("nav-broadcast"))).to_be_visible()
    expect(page.locator(by_testid("nav-audit"))).to_have_count(0)  # admin only
    expect(page.locator(by_testid("live-indicator"))).to_have_attribute("data-state", "connected")
    expect(page.locator(by_testid("gateway-name"))).to_have_text("濉溪县刘桥镇应急广播网关")

    for device in tw.terminals:
        state = _card(page, device).locator(by_testid(f"state-{device}"))
        expect(state).to_have_text(re.compile(r"正常|正在播放"))
    assert len(tw.terminals) == 20
    expect(page.locator(by_testid("count-total"))).to_have_attribute("data-n", "20")
    expect(page.locator(by_testid("count-normal"))).to_have_text("正常 20")
    first = _card(page, "t01")
    expect(first).to_contain_text("刘桥村村委会广场")
    expect(first.locator(".seen")).to_contain_text(re.compile(r"最后通信：\d+ 秒前"))
    expect(page.locator('[data-village="刘桥村"] .card')).to_have_count(2)  # grouped by village
    fm = _card(page, "fm1")
    expect(fm).to_be_visible()
    expect(page.locator(by_testid("fm-area"))).to_contain_text("调频发射机")
    expect(fm.locator(by_testid("fm-power-fm1"))).to_contain_text("W")
    screenshot(page, "board-laptop", full_page=False)


def test_fault_turns_the_card_red_live_and_recovers(console_township: Township, page: Page):
    tw = console_township
    tw.wait_all_reporting()
    login(page, tw, "operator")
    card = _card(page, "t05")
    expect(card).to_have_attribute("data-state", "normal")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    tw.sim.fault("amp_fault", device="t05")
    tw.sim.fault("line_open", device="t09", zone=2)
    try:
        expect(card).to_have_attribute("data-state", "fault")
        expect(card.locator(by_testid("state-t05"))).to_have_text(re.compile("故障"))
        with tw.http("viewer") as http:
            reasons = [f["reason_zh"] for f in http.get("/devices/t05").json()["faults"]]
        assert reasons
        for reason in reasons:
            expect(card.locator(by_testid("faults-t05"))).to_contain_text(reason)
        line_card = _card(page, "t09")  # found by the next speaker-line check
        expect(line_card).to_have_attribute("data-state", "fault")
        expect(line_card.locator(by_testid("faults-t09"))).to_contain_text("第2路喇叭线路开路")
        expect(page.locator(by_testid("count-fault"))).to_have_attribute("data-n", "2")
        assert page.evaluate("window.__sameDocument") is True  # live, without a reload

        page.locator(by_testid("filter-state")).select_option("fault")
        expect(page.locator(".villages .card:visible")).to_have_count(2)
        screenshot(page, "board-fault-filter", full_page=False)
        page.locator(by_testid("filter-state")).select_option("all")
        page.locator(by_testid("filter-search")).fill("马桥")
        expect(page.locator(".villages .card:visible")).to_have_count(1)
        page.locator(by_testid("filter-search")).fill("")
        page.locator(by_testid("filter-village")).select_option("刘桥村")
        expect(page.locator(".villages .card:visible")).to_have_count(2)
        page.locator(by_testid("filter-village")).select_option("")
        screenshot(page, "board-fault", full_page=False)
    finally:
        tw.sim.fault("amp_fault", device="t05", clear=True)
        tw.sim.fault("line_open", device="t09", zone=2, clear=True)
    expect(card).to_have_attribute("data-state", "recovered")  # 4 故障恢复, amber, held for a while
    expect(card.locator(by_testid("state-t05"))).to_have_text(re.compile("故障恢复"))
    assert page.evaluate("window.__sameDocument") is True


def test_wrong_token_is_refused_and_nothing_is_stored(console_township: Township, page: Page):
    tw = console_township
    page.goto(f"{tw.base_url}/")
    bad = "ebc_not-a-real-token-0000000000000000"
    login(page, tw, token=bad, wait=False)
    message = page.locator(by_testid("login-message"))
    expect(message).to_have_class(re.compile("error"))
    expect(message).to_contain_text("令牌无效")
    assert _stored_token(page) is None
    assert bad not in page.url
    expect(page.locator(by_testid("user-info"))).to_have_count(0)
    expect(page.locator(by_testid("login-token"))).to_have_attribute("type", "password")


def test_reload_keeps_the_session_a_new_tab_does_not(console_township: Township, page: Page,
                                                     context: BrowserContext, browser: Browser):
    tw = console_township
    login(page, tw, "viewer")
    page.reload()
    expect(page.locator(by_testid("user-info"))).to_have_attribute("data-role", "viewer")
    assert _stored_token(page) == tw.tokens["viewer"]
    other = context.new_page()  # sessionStorage belongs to one tab
    other.goto(f"{tw.base_url}/")
    expect(other.locator(by_testid("login-token"))).to_be_visible()
    assert _stored_token(other) is None
    other.close()
    fresh = new_context(browser)
    try:
        tab = fresh.new_page()
        tab.goto(f"{tw.base_url}/#/board")
        expect(tab.locator(by_testid("login-token"))).to_be_visible()
    finally:
        fresh.close()
    page.locator(by_testid("logout")).click()
    expect(page.locator(by_testid("login-token"))).to_be_visible()
    assert _stored_token(page) is None


def test_revoked_token_goes_back_to_login(console_township: Township, page: Page):
    tw = console_township
    store = Store.in_state_dir(Path(tw.config.data["state_dir"]))
    try:
        token = store.create_token("console-short-lived", Role.OPERATOR)
    finally:
        store.close()
    login(page, tw, token=token)
    expect(page.locator(by_testid("device-t01"))).to_be_visible()
    store = Store.in_state_dir(Path(tw.config.data["state_dir"]))
    try:
        assert store.revoke_token("console-short-lived")
    finally:
        store.close()
    # The next API call answers 401 (the board's own refresh may get there first).
    page.evaluate("location.hash = '#/gateway'")
    expect(page.locator(by_testid("login-message"))).to_contain_text("登录已失效")
    assert _stored_token(page) is None


# -- roles ------------------------------------------------------------------------------------------


def test_viewer_sees_no_broadcast_controls(console_township: Township, page: Page):
    tw = console_township
    login(page, tw, "viewer")
    expect(page.locator(by_testid("device-t01"))).to_be_visible()
    expect(page.locator(by_testid("emergency-button"))).to_have_count(0)
    expect(page.locator(by_testid("nav-broadcast"))).to_have_count(0)
    expect(page.locator(by_testid("nav-audit"))).to_have_count(0)
    expect(page.locator(by_testid("nav-history"))).to_be_visible()
    page.goto(f"{tw.base_url}/#/broadcast")  # typed by hand: refused in the page as by the API
    expect(page.locator(by_testid("forbidden"))).to_be_visible()
    page.goto(f"{tw.base_url}/#/audit")
    expect(page.locator(by_testid("forbidden"))).to_be_visible()


def test_admin_reads_the_audit_log(console_township: Township, page: Page):
    tw = console_township
    with tw.http("operator") as http:
        r = http.post("/broadcasts", json={"class": "drill", "targets": {"devices": ["t01"]},
                                           "text": "审计测试 <b>不是标记</b>"})
        assert r.status_code == 202, r.text
        broadcast_id = r.json()["id"]
    login(page, tw, "admin")
    expect(page.locator(by_testid("nav-audit"))).to_be_visible()
    expect(page.locator(by_testid("emergency-button"))).to_be_visible()
    page.locator(by_testid("nav-audit")).click()
    table = page.locator(by_testid("audit-table"))
    submit = table.locator(f'tr[data-action="broadcast.submit"]:has-text("{broadcast_id}")')
    expect(submit).to_have_count(1)
    expect(submit).to_contain_text("console-operator")
    expect(submit).to_contain_text("operator")
    expect(table.locator('tr[data-action="token.create"]')).to_have_count(3)
    expect(table.locator("b")).to_have_count(0)  # details are text, never markup
    expect(page.locator(by_testid("audit-prev"))).to_be_disabled()
    screenshot(page, "audit", full_page=False)


# -- language, gateway, phone -----------------------------------------------------------------------


def test_language_switch_relabels_everything(console_township: Township, page: Page):
    tw = console_township
    login(page, tw, "operator")
    expect(page.locator(by_testid("nav-board"))).to_have_text("设备状态")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.locator(by_testid("lang-switch")).click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(by_testid("nav-board"))).to_have_text("Devices")
    expect(page.locator(by_testid("emergency-button"))).to_contain_text("EMERGENCY")
    expect(page.locator(by_testid("state-t01"))).to_have_text(re.compile("Normal|Playing|Fault recovered"))
    expect(page.locator(by_testid("count-total"))).to_have_text("20 terminals")
    page.reload()  # remembered
    expect(page.locator(by_testid("nav-board"))).to_have_text("Devices")
    page.locator(by_testid("lang-switch")).click()
    expect(page.locator(by_testid("nav-board"))).to_have_text("设备状态")


def test_gateway_health(console_township: Township, page: Page):
    tw = console_township
    login(page, tw, "operator")
    page.locator(by_testid("nav-gateway")).click()
    expect(page.locator(by_testid("gw-uptime"))).to_be_visible()
    for tile in ("gw-cpu", "gw-memory", "gw-disk", "gw-queue", "gw-devices", "gw-mqtt"):
        expect(page.locator(by_testid(tile))).to_be_visible()
    expect(page.locator(by_testid("gw-mqtt"))).to_contain_text("未配置")
    lines = page.locator(by_testid("gw-lines"))
    for line in ("rs485-1", "ip-1", "ip-4"):
        expect(lines.locator(f'tr[data-line="{line}"]')).to_contain_text("正常")
    expect(page.locator(by_testid("gw-faults"))).to_be_visible()
    screenshot(page, "gateway", full_page=False)


def test_phone_layout_has_no_horizontal_scroll(console_township: Township, browser: Browser):
    tw = console_township
    phone = new_context(browser, PHONE)
    try:
        tab = phone.new_page()
        tab.goto(f"{tw.base_url}/")
        width, viewport = no_horizontal_scroll(tab)
        assert width <= PHONE["width"], (width, viewport)
        login(tab, tw, "operator")
        expect(tab.locator(by_testid("device-t20"))).to_be_visible()
        expect(tab.locator(by_testid("emergency-button"))).to_be_visible()
        for route in ("board", "gateway", "history", "broadcast", "alerts"):
            tab.goto(f"{tw.base_url}/#/{route}")
            tab.locator(by_testid(f"view-{route}")).wait_for()
            tab.wait_for_timeout(300)  # let the view's first data arrive
            width, viewport = no_horizontal_scroll(tab)
            assert width <= PHONE["width"], (route, width, viewport)
        tab.goto(f"{tw.base_url}/#/board")
        expect(tab.locator(by_testid("device-t20"))).to_be_visible()
        screenshot(tab, "board-phone", full_page=False)
    finally:
        phone.close()


def test_dom_helper_never_parses_markup(console_township: Township, page: Page):
    """h() puts attacker-controlled strings in as text and refuses inline handlers and script URLs."""
    tw = console_township
    page.goto(f"{tw.base_url}/")
    result = page.evaluate("""async () => {
        const { h, mount } = await import('/ui/js/dom.js');
        const evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>';
        const el = h('div', {title: evil, 'data-x': evil}, evil, ['<b>', 3], null, false);
        document.body.appendChild(el);
        const link = h('a', {href: 'javascript:window.__pwned=3'}, 'x');
        const media = h('audio', {src: 'https://example.com/a.wav'});
        let refused = 0;
        for (const bad of [{onclick: 'x()'}, {style: 'color:red'}, {srcdoc: evil}]) {
          try { h('div', bad); } catch (e) { refused += 1; }
        }
        mount(el, evil);
        return {text: el.textContent, children: el.children.length, href: link.getAttribute('href'),
                src: media.getAttribute('src'), refused, pwned: window.__pwned || 0};
    }""")
    assert result["text"] == '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    assert result["children"] == 0
    assert result["href"] == "#"
    assert result["src"] == ""
    assert result["refused"] == 3
    assert result["pwned"] == 0


def test_live_stream_reconnects_after_a_daemon_restart(console_township: Township, page: Page):
    """Runs last in this module: it restarts the shared daemon (and leaves it running)."""
    tw = console_township
    login(page, tw, "viewer")
    indicator = page.locator(by_testid("live-indicator"))
    expect(indicator).to_have_attribute("data-state", "connected")
    page.evaluate("window.__sameDocument = true")
    tw.daemon.stop()
    expect(indicator).to_have_attribute("data-state", "reconnecting")
    tw.sim.fault("amp_fault", device="t12")  # happens while the console cannot hear about it
    try:
        tw.daemon.start()
        expect(indicator).to_have_attribute("data-state", "connected")
        expect(_card(page, "t12")).to_have_attribute("data-state", "fault")
        assert page.evaluate("window.__sameDocument") is True
    finally:
        tw.sim.fault("amp_fault", device="t12", clear=True)
    expect(_card(page, "t12")).to_have_attribute("data-state", "recovered")


PLAY_WAIT_MS = 120_000
FINAL_STATE = ", ".join(f'{by_testid("broadcast-state")}[data-state="{code}"]' for code in (3, 4, 5))
OUTAGE_TEXT = "，".join(["刘桥镇应急广播线路测试，请各村注意收听"] * 3) + "。"
"""About fifteen seconds of program: long enough for the line to come back and go again."""


def test_a_line_outage_shows_late_joins_and_horns_not_yet_restored(console_township: Township, page: Page):
    township = console_township
    """The RS-485 adapter is out when a broadcast comes in and again as it ends: the history says
    which horns joined late and what they missed, the board says which are not yet switched off."""
    sim, line = township.sim, "rs485-1"
    sim.fault("unplug", line=line)
    posted = time.time()
    try:
        with township.http("operator") as http:
            answer = http.post("/broadcasts", json={"class": "drill", "targets": {"all": True},
                                                    "text": OUTAGE_TEXT, "tone": "chime"})
            assert answer.status_code == 202, answer.text
            bid = answer.json()["id"]
        township.wait_until("the program on the air", lambda: any(
            r["started"] >= posted and r["ended"] is None for r in sim.call("audio")["recordings"]),
            every=0.02)
    finally:
        sim.fault("unplug", line=line, clear=True)
    township.wait_until("the horns on the line playing again",
                        lambda: sim.state("t01")["physics"]["audible"], every=0.05)
    time.sleep(1.5)  # the gateway reads each of them back (it reads a line's terminals in turn)
    sim.fault("unplug", line=line)  # out again until the program has ended: they stay switched on
    try:
        login(page, township, "operator")
        page.goto(f"{township.base_url}/#/history/{bid}")
        page.locator(FINAL_STATE).wait_for(timeout=PLAY_WAIT_MS)
        expect(page.locator(by_testid("broadcast-state"))).to_have_attribute("data-state", "4")
        expect(page.locator(by_testid("outcome-t01"))).to_have_attribute("data-outcome", "partial")
        expect(page.locator(by_testid("outcome-t01"))).to_contain_text("部分播出")
        expect(page.locator(by_testid("late-t01"))).to_contain_text("秒加入")
        expect(page.locator(by_testid("outcome-t17"))).to_have_attribute("data-outcome", "succeeded")
        expect(page.locator(by_testid("broadcast-reason"))).to_contain_text("t01")
        screenshot(page, "history-late-join")
        page.goto(f"{township.base_url}/#/board")
        expect(page.locator(by_testid("faults-t01"))).to_contain_text("未能复位", timeout=PLAY_WAIT_MS)
        assert sim.state("t01")["coils"]["amp_power"]  # really still on: the board tells the truth
        screenshot(page, "board-not-restored", full_page=False)
    finally:
        sim.fault("unplug", line=line, clear=True)
    township.wait_until("t01 switched off once the line is back",
                        lambda: not sim.state("t01")["coils"]["amp_power"])
    expect(page.locator(by_testid("faults-t01"))).not_to_contain_text("未能复位", timeout=PLAY_WAIT_MS)
