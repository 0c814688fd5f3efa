"""The county console in headless Chromium: a real Mosquitto, a real county service (SQLite) and three
fake township gateways speaking docs/mqtt.md (tests/countykit.py), driven through the page.

The service runs on an event loop in a thread of its own, because Playwright's sync API (see
tests/browserkit.py) refuses to start inside a running loop. The tests of this module share one
county and run in file order: the gateway frozen to fire its Will is the last one.
"""

# ruff: noqa: F811
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from browserkit import browser, by_testid, context, page, screenshot  # noqa: F401  (fixtures)
from countykit import TAMPER, FakeGateway, device, write_county_config
from mqttkit import HANG_GUARD_S, Broker
from playwright.sync_api import Page, expect

from county.commands import keygen
from county.config import load_county_config
from county.service import CountyService

HOSTILE = "<img src=x onerror=alert(1)>"
OUTLINE = {"type": "Feature", "properties": {"name": "濉溪县"},
           "geometry": {"type": "Polygon", "coordinates": [[[116.5, 33.6], [117.0, 33.6], [117.0, 34.1],
                                                            [116.5, 34.1], [116.5, 33.6]]]}}


@dataclass
class County:
    """The running county, its gateways and a token per role."""

    service: CountyService
    loop: asyncio.AbstractEventLoop
    gateways: dict[str, FakeGateway]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.service.url

    def get(self, path: str, role: str = "viewer") -> Any:
        response = httpx.get(f"{self.url}/api/v1{path}", timeout=HANG_GUARD_S,
                             headers={"Authorization": f"Bearer {self.tokens[role]}"})
        response.raise_for_status()
        return response.json()

    def has_endpoint(self, method: str, path: str) -> bool:
        schema = httpx.get(f"{self.url}/openapi.json", timeout=HANG_GUARD_S).json()
        return method.lower() in schema.get("paths", {}).get(f"/api/v1{path}", {})


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    """Poll until truthy (a hang guard, never a timing claim)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _gateways(broker: Broker) -> dict[str, FakeGateway]:
    hostile = device("t02", "前李村", 33.9101, 116.7602)
    hostile["name"] = HOSTILE
    gw_a = FakeGateway(broker, "gw-a", "刘桥镇", [device("t01", "刘桥村", 33.9012, 116.7421), hostile,
                                                device("t03", "后李村", 33.9155, 116.7710)])
    gw_b = FakeGateway(broker, "gw-b", "五沟镇", [device("u01", "五沟村", 33.70, 116.60, "340621106201"),
                                                device("u02", "高李村", 33.72, 116.63, "340621106202")])
    gw_c = FakeGateway(broker, "gw-c", "韩村镇", [device("v01", "韩村", 34.00, 116.90, "340621107201"),
                                                device("v02", "毛营村", 34.02, 116.92, "340621107202")],
                       keepalive=2)
    return {g.id: g for g in (gw_a, gw_b, gw_c)}


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Iterator[County]:
    tmp = tmp_path_factory.mktemp("county-console")
    broker = Broker(tmp / "broker").start()
    path = write_county_config(tmp / "county", broker, outline=OUTLINE)
    keygen("ed25519", tmp / "county" / "county-ed25519.key")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["signing"] = {"type": "ed25519", "key_id": "county-1", "private_key_file": "county-ed25519.key"}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    service = CountyService(load_county_config(path))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="county loop", daemon=True)
    thread.start()
    gateways: dict[str, FakeGateway] = {}
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(HANG_GUARD_S)
        assert service.store is not None
        site = County(service, loop, gateways,
                      {role: service.store.create_token(f"console-{role}", role)[1]
                       for role in ("viewer", "operator", "admin")})
        gateways.update(_gateways(broker))
        for gw in gateways.values():
            gw.connect()
        gateways["gw-a"].set_state("t02", 3, [TAMPER])
        wait_for("every gateway and terminal in the county picture", lambda: (
            {g["id"]: (g["status"], g["devices"]) for g in site.get("/gateways")["gateways"]}
            == {"gw-a": ("online", 3), "gw-b": ("online", 2), "gw-c": ("online", 2)}
            and site.get("/overview")["open_faults"] == 1))
        yield site
    finally:
        for gw in gateways.values():
            gw.client.loop_stop()
            gw.close_socket()
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(HANG_GUARD_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(HANG_GUARD_S)
        broker.stop()


def login(page: Page, county: County, role: str) -> None:
    page.goto(f"{county.url}/")
    page.locator(by_testid("login-token")).fill(county.tokens[role])
    page.locator(by_testid("login-submit")).click()
    expect(page.locator(by_testid("user-info"))).to_have_attribute("data-role", role)


def test_console_is_served_with_a_strict_policy(county: County) -> None:
    for path, kind in (("/", "text/html"), ("/ui/js/app.js", "text/javascript"),
                       ("/ui/county.css", "text/css")):
        response = httpx.get(f"{county.url}{path}", timeout=HANG_GUARD_S)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{county.url}/api/v1/session", timeout=HANG_GUARD_S).status_code == 401
    assert county.get("/session", "operator") == {"name": "console-operator", "role": "operator"}


def test_a_wrong_token_is_refused_and_nothing_is_kept(county: County, page: Page) -> None:
    page.goto(f"{county.url}/")
    page.locator(by_testid("login-token")).fill("not-a-token")
    page.locator(by_testid("login-submit")).click()
    expect(page.locator(by_testid("login-message"))).to_have_class("login-message error")
    assert page.evaluate("sessionStorage.length") == 0


def test_overview_counts_match_the_api(county: County, page: Page) -> None:
    login(page, county, "viewer")
    api = county.get("/overview")
    assert api["terminals"]["total"] == 7 and api["gateways"]["online"] == 3
    for testid, value in (("ov-terminals", 7), ("ov-gateways", 3), ("ov-online", 3), ("ov-offline", 0),
                          ("ov-faults", 1), ("ov-gaps", api["unexplained_gaps"]),
                          ("ov-count-normal", 6), ("ov-count-fault", 1)):
        expect(page.locator(by_testid(testid))).to_have_attribute("data-n", str(value))
    assert page.evaluate("sessionStorage.getItem('ebc.county.token')") == county.tokens["viewer"]
    screenshot(page, "county-overview")


def test_map_has_one_mark_per_terminal_coloured_by_state(county: County, page: Page) -> None:
    login(page, county, "viewer")
    page.goto(f"{county.url}/#/map")
    expect(page.locator("svg.county-map circle.mark")).to_have_count(7)
    expect(page.locator(by_testid("mark-gw-a-t02"))).to_have_class("mark st-fault")
    for gw, dev in (("gw-a", "t01"), ("gw-a", "t03"), ("gw-b", "u01"), ("gw-b", "u02"), ("gw-c", "v01")):
        expect(page.locator(by_testid(f"mark-{gw}-{dev}"))).to_have_class("mark st-normal")
    expect(page.locator(by_testid("map-outline"))).to_have_count(1)
    expect(page.locator(by_testid("legend-fault"))).to_have_attribute("data-n", "1")
    expect(page.locator(by_testid("legend-normal"))).to_have_attribute("data-n", "6")
    # positions follow lat/lon: the northernmost terminal (gw-c v02) is drawn highest
    ys = {dev: float(page.locator(by_testid(f"mark-{gw}-{dev}")).get_attribute("cy") or 0)
          for gw, dev in (("gw-c", "v02"), ("gw-b", "u01"))}
    assert ys["v02"] < ys["u01"]
    screenshot(page, "county-map")


def test_a_new_fault_appears_without_reload(county: County, page: Page) -> None:
    login(page, county, "viewer")
    page.goto(f"{county.url}/#/faults")
    expect(page.locator(by_testid("faults-count"))).to_have_attribute("data-n", "1")
    expect(page.locator(by_testid("live-indicator"))).to_have_attribute("data-state", "connected")
    page.evaluate("window.__sameDocument = true")
    county.gateways["gw-b"].fault("u01")
    row = page.locator(by_testid("fault-gw-b-u01-mains_lost"))
    expect(row).to_be_visible()
    expect(row).to_contain_text("五沟镇")
    expect(row).to_contain_text("五沟村")
    # mains lost (no power) ranks above tamper
    expect(page.locator("[data-testid=faults-table] tbody tr").first).to_have_attribute(
        "data-testid", "fault-gw-b-u01-mains_lost")
    assert page.evaluate("window.__sameDocument") is True  # the live stream, not a reload
    county.gateways["gw-b"].set_state("u01", 1, [])
    expect(row).to_have_count(0)
    assert page.evaluate("window.__sameDocument") is True


def test_hostile_names_are_shown_as_text(county: County, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, county, "viewer")
    for route in ("#/gateway/gw-a", "#/faults", "#/map"):
        page.goto(f"{county.url}/{route}")
        page.locator(by_testid(f"view-{route.split('/')[1]}")).wait_for()
        if route == "#/gateway/gw-a":
            expect(page.locator(by_testid("device-name-t02"))).to_have_text(HOSTILE)
        elif route == "#/faults":
            expect(page.locator(by_testid("fault-device-gw-a-t02"))).to_have_text(HOSTILE)
        else:
            expect(page.locator(by_testid("mark-gw-a-t02")).locator("title")).to_contain_text(HOSTILE)
        assert page.locator("#app img").count() == 0
    assert dialogs == []


def test_drill_down_to_a_gateway_board(county: County, page: Page) -> None:
    login(page, county, "viewer")
    page.goto(f"{county.url}/#/gateways")
    page.locator(by_testid("gws-all")).locator(by_testid("gwlink-gw-b")).click()
    expect(page.locator(by_testid("gw-title"))).to_contain_text("五沟镇")
    expect(page.locator("[data-testid=gw-devices] article")).to_have_count(2)
    expect(page.locator(by_testid("state-u02"))).to_have_attribute("data-state", "normal")
    expect(page.locator(by_testid("gw-events"))).to_be_visible()  # the fault and recovery reports
    screenshot(page, "county-gateway-board")


def test_english_switch(county: County, page: Page) -> None:
    login(page, county, "viewer")
    expect(page.locator(by_testid("nav-overview"))).to_have_text("全县概况")
    page.locator(by_testid("lang-switch")).click()
    expect(page.locator(by_testid("nav-overview"))).to_have_text("Overview")
    expect(page.locator(by_testid("nav-faults"))).to_have_text("Open faults")
    assert page.evaluate("document.documentElement.lang") == "en"
    expect(page.locator(by_testid("ov-terminals"))).to_contain_text("Terminals")
    page.locator(by_testid("lang-switch")).click()
    expect(page.locator(by_testid("nav-overview"))).to_have_text("全县概况")


def test_a_viewer_has_no_compose_button(county: County, page: Page) -> None:
    login(page, county, "viewer")
    expect(page.locator(by_testid("nav-county"))).to_be_visible()
    assert page.locator(by_testid("compose-button")).count() == 0
    assert page.locator(by_testid("nav-compose")).count() == 0
    page.goto(f"{county.url}/#/county")
    page.locator(by_testid("view-county")).locator("h1").wait_for()
    assert page.locator(by_testid("compose-open")).count() == 0
    page.goto(f"{county.url}/#/compose")
    expect(page.locator(by_testid("forbidden"))).to_be_visible()


def _fill_compose(page: Page, county: County) -> None:
    page.locator(by_testid("compose-button")).click()
    page.locator(by_testid("compose-form")).wait_for()
    page.locator(by_testid("pick-gw-a")).locator("input").check()
    page.locator(by_testid("pick-gw-b")).locator("input").check()
    page.locator(by_testid("compose-areas")).fill("340621107000")
    page.locator(by_testid("compose-cls")).select_option("drill")
    page.locator(by_testid("compose-severity")).select_option("3")
    page.locator(by_testid("compose-tone")).select_option("chime")
    page.locator(by_testid("compose-repeat")).fill("3")
    page.locator(by_testid("compose-text")).fill(f"防汛演练 {HOSTILE}")


def test_compose_checks_then_confirms(county: County, page: Page) -> None:
    login(page, county, "operator")
    page.locator(by_testid("compose-button")).click()
    page.locator(by_testid("compose-review")).click()
    expect(page.locator(by_testid("compose-error"))).to_be_visible()  # no target, no text
    assert page.locator(by_testid("compose-confirm")).count() == 0
    _fill_compose(page, county)
    page.locator(by_testid("compose-review")).click()
    confirm = page.locator(by_testid("compose-confirm"))
    expect(confirm).to_be_visible()
    expect(page.locator(by_testid("confirm-gw-gw-a"))).to_contain_text("刘桥镇")
    expect(page.locator(by_testid("confirm-gw-gw-b"))).to_contain_text("五沟镇")
    expect(page.locator(by_testid("confirm-areas"))).to_have_text("340621107000")
    expect(page.locator(by_testid("confirm-repeat"))).to_have_text("3")
    expect(page.locator(by_testid("confirm-text"))).to_have_text(f"防汛演练 {HOSTILE}")
    screenshot(page, "county-compose-confirm")
    assert page.locator("#app img").count() == 0
    # back keeps the draft
    page.locator(by_testid("compose-back")).click()
    expect(page.locator(by_testid("compose-text"))).to_have_value(f"防汛演练 {HOSTILE}")
    expect(page.locator(by_testid("pick-gw-a")).locator("input")).to_be_checked()
    expect(page.locator(by_testid("compose-tone"))).to_have_value("chime")


def test_compose_sends_and_shows_the_report(county: County, page: Page) -> None:
    assert county.has_endpoint("post", "/county-broadcasts")
    login(page, county, "operator")
    _fill_compose(page, county)
    page.locator(by_testid("compose-review")).click()
    page.locator(by_testid("compose-send")).click()
    page.wait_for_url("**/#/county/*")
    expect(page.locator(by_testid("cb-gw-gw-a"))).to_be_visible()
    expect(page.locator(by_testid("cb-gw-gw-b"))).to_be_visible()
    expect(page.locator(by_testid("cb-coverage"))).to_be_visible()
    expect(page.locator(by_testid("cb-text"))).to_contain_text(HOSTILE)
    assert page.locator("#app img").count() == 0
    bid = page.url.rsplit("/", 1)[1]
    report = county.get(f"/county-broadcasts/{bid}")
    assert report["request"]["class"] == "drill" and report["request"]["repeat"] == 3
    expect(page.locator(by_testid("cb-total-targeted"))).to_have_attribute(
        "data-n", str(county.get(f"/county-broadcasts/{bid}")["terminals"]["targeted"]))
    page.goto(f"{county.url}/#/county")
    expect(page.locator(by_testid(f"cb-row-{bid}"))).to_be_visible()


def test_compose_relays_a_cap_alert(county: County, page: Page) -> None:
    """Paste a CAP document: the confirm step shows what it says (as text), the county sends it to the
    township its area codes concern, and the report shows the alert rather than a text."""
    escaped = HOSTILE.replace("<", "&lt;").replace(">", "&gt;")
    cap = (Path(__file__).parent / "cap" / "cn_rainstorm_red_alert.xml").read_text(encoding="utf-8")
    cap = cap.replace("<headline>濉溪县气象台发布暴雨红色预警信号</headline>",
                      f"<headline>暴雨红色预警 {escaped}</headline>")
    login(page, county, "operator")
    page.locator(by_testid("compose-button")).click()
    page.locator(by_testid("compose-mode-cap")).check()
    expect(page.locator(by_testid("compose-text"))).to_have_count(0)  # the townships' plans decide that
    page.locator(by_testid("compose-cap")).fill("<alert><identifier>broken")
    page.locator(by_testid("compose-review")).click()
    expect(page.locator(by_testid("compose-error"))).to_contain_text("alert: not well-formed XML")
    page.locator(by_testid("compose-cap")).fill(cap)
    page.locator(by_testid("compose-review")).click()
    expect(page.locator(by_testid("compose-confirm"))).to_be_visible()
    expect(page.locator(by_testid("confirm-cap-id"))).to_have_text("34062141600000_20261128031500")
    expect(page.locator(by_testid("confirm-cap-areas"))).to_have_text(
        "340621105201, 340621105202, 340621105203")
    expect(page.locator(by_testid("confirm-gw-gw-a"))).to_contain_text("刘桥镇")
    assert page.locator(by_testid("confirm-gw-gw-b")).count() == 0  # 五沟镇 is not in the alert's area
    expect(page.locator(by_testid("confirm-cap-headline"))).to_contain_text(HOSTILE)
    expect(page.locator(by_testid("confirm-cap-doc"))).to_contain_text(escaped)
    assert page.locator("#app img").count() == 0
    screenshot(page, "county-compose-cap-confirm")
    page.locator(by_testid("compose-send")).click()
    page.wait_for_url("**/#/county/*")
    expect(page.locator(by_testid("cb-gw-gw-a"))).to_be_visible()  # 刘桥镇: the alert's villages
    expect(page.locator(by_testid("cb-alert"))).to_contain_text(HOSTILE)
    assert page.locator("#app img").count() == 0
    report = county.get(f"/county-broadcasts/{page.url.rsplit('/', 1)[1]}")
    assert report["command"] == "alert" and [g["gateway"] for g in report["gateways"]] == ["gw-a"]


def test_a_frozen_gateway_shows_offline(county: County, page: Page) -> None:
    login(page, county, "viewer")
    page.goto(f"{county.url}/#/gateways")
    expect(page.locator(by_testid("gw-status-gw-c")).first).to_have_attribute("data-status", "online")
    page.evaluate("window.__sameDocument = true")
    county.gateways["gw-c"].freeze()  # the broker fires its Will after 1.5 × keepalive (2 s)
    expect(page.locator(by_testid("gws-offline")).locator(by_testid("gw-row-gw-c"))).to_be_visible()
    expect(page.locator(by_testid("gw-status-gw-c")).first).to_have_attribute("data-status", "offline")
    assert page.evaluate("window.__sameDocument") is True
    page.goto(f"{county.url}/#/overview")
    expect(page.locator(by_testid("ov-offline"))).to_have_attribute("data-n", "1")
    expect(page.locator(by_testid("ov-offline-gw-c"))).to_contain_text("韩村镇")
    page.goto(f"{county.url}/#/map")
    expect(page.locator(by_testid("mark-gw-c-v01"))).to_have_class("mark st-normal stale")
