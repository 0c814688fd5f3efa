"""Shared pieces for the web console's browser tests: a real township, a real browser.

A module's browser tests share one simulated township and one daemon (``console_township``, module
scope: starting both takes a few seconds) and one headless Debian Chromium (``browser``, module
scope), and get a fresh browser context per test (``context``/``page``: empty sessionStorage, so
every test logs in through the page itself).

* The township is config/demo.yaml (刘桥镇: 20 terminals in 19 villages, an FM transmitter, the
  broadcast templates) rewritten to free loopback ports, pty links and a state dir under the test's
  temporary directory, with fast polling, no MQTT broker and no CAP feeds. The simulator and the
  daemon (``python -m controller.app.cli run``) run as child processes, as in tests/test_daemon.py.
* Tokens for the three roles are made with the Store (``township.tokens["viewer"|"operator"|"admin"]``),
  audited as ``token.create`` like ``ebc token create`` does.
* Playwright's **sync** API drives Chromium. pytest-asyncio runs in auto mode, but only ``async def``
  tests get a running loop; these fixtures and the browser tests are plain ``def`` functions, so the
  sync API (which refuses to start inside a running loop) works. Do not make browser tests async.
  Chromium is Debian's (``/usr/bin/chromium``): never ``playwright install``.

Use it from a test module (importing a fixture makes pytest use it there; ruff's F811 then needs
silencing, as each test takes the fixture as a parameter of the same name)::

    # ruff: noqa: F811
    from browserkit import browser, console_township, context, page  # noqa: F401  (fixtures)
    from browserkit import by_testid, login, screenshot

    def test_something(console_township, page):
        login(page, console_township, "operator")
        page.locator(by_testid("device-t01")).wait_for()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)
from simkit import PROFILES_DIR, REPO, Daemon, SimConfig, SimProcess, free_port, wait_until

from controller.core.actors import Actor, Role
from controller.storage.journal import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = REPO / "test-output" / "screenshots"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
HANG_GUARD_S = 60.0
"""Only a guard against a hung test (daemon start-up, a page wait), never a performance claim."""
WAIT_MS = 30_000
"""Default Playwright wait: generous, as CI machines are slow; a wait that passes returns at once."""
ROLES = ("viewer", "operator", "admin")

expect.set_options(timeout=WAIT_MS)


def by_testid(name: str) -> str:
    """CSS selector for ``data-testid="name"`` (the console's stable hooks; no Chinese text needed)."""
    return f'[data-testid="{name}"]'


# -- the township ------------------------------------------------------------------------------------


def write_demo_township(tmp: Path) -> tuple[SimConfig, int]:
    """config/demo.yaml moved onto free ports and paths under ``tmp``; returns it and the API port.

    Polling is fast (1 s) and a terminal counts as offline after 5 s of silence, so a fault or an
    outage reaches the board within a few seconds; every speaker line is checked every 10 s (a
    simulated open line shows only in a line check, as on real hardware).
    """
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    host = "127.0.0.1"
    dev_dir = tmp / "dev"
    tcp_ports: dict[str, int] = {}
    rtu_link: Path | None = None
    fm_link: Path | None = None
    for line in data["lines"]:
        if line["type"] == "serial":
            link = dev_dir / Path(line["port"]).name
            line["port"] = str(link)
            if line["id"].startswith("fm"):
                fm_link = link
            else:
                rtu_link = rtu_link or link
        else:
            line["host"] = host
            line["port"] = tcp_ports[line["id"]] = free_port(host)
        line["poll_interval_s"] = 1.0
    api_port, control_port, audio_port = free_port(host), free_port(host), free_port(host)
    sim = data["simulator"]
    sim["control"] = {"host": host, "port": control_port}
    sim["audio"] = {**sim.get("audio", {}), "host": host, "port": audio_port,
                    "record_dir": str(tmp / "audio")}
    data.update(profiles_dir=str(PROFILES_DIR), state_dir=str(tmp / "state"),
                api={"host": host, "port": api_port},
                health={**data.get("health", {}), "offline_after_s": 5.0, "fm_poll_interval_s": 2.0,
                        "report_interval_s": 5.0, "line_check_interval_s": 10.0})
    data.pop("mqtt", None)  # no broker in these tests; the uplink tile then says "not configured"
    if isinstance(data.get("alerts"), dict):
        data["alerts"].pop("feeds", None)  # nothing polls the outside world
    path = tmp / "township.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    assert rtu_link is not None
    devices = data["devices"]
    fm_ids = [d["id"] for d in devices if d["line"].startswith("fm")]
    config = SimConfig(path=path, data=data, rtu_link=rtu_link, fm_link=fm_link, control_port=control_port,
                       audio_port=audio_port, record_dir=tmp / "audio",
                       rtu_ids=[d["id"] for d in devices if d["line"].startswith("rs485")],
                       tcp_ids=[d["id"] for d in devices if d["line"] in tcp_ports],
                       tcp_ports={d["id"]: tcp_ports[d["line"]] for d in devices if d["line"] in tcp_ports},
                       fm_id=fm_ids[0] if fm_ids else None, host=host)
    return config, api_port


@dataclass
class Township:
    """A running simulated township with its daemon, and a token per role."""

    config: SimConfig
    sim: SimProcess
    daemon: Daemon
    tokens: dict[str, str] = field(default_factory=dict)
    """Role → bearer token (token names: ``console-viewer``, ``console-operator``, ``console-admin``)."""

    @property
    def base_url(self) -> str:
        return self.daemon.base_url

    @property
    def terminals(self) -> list[str]:
        return [*self.config.rtu_ids, *self.config.tcp_ids]

    def http(self, role: str = "admin") -> httpx2.Client:
        """An API client with the role's token (close it, or use it in a ``with``)."""
        return httpx2.Client(base_url=f"{self.base_url}/api/v1", timeout=HANG_GUARD_S,
                             headers={"Authorization": f"Bearer {self.tokens[role]}"})

    def wait_until(self, what: str, check: Any, every: float = 0.2) -> Any:
        """Poll ``check`` until it returns something truthy; AssertionError after the hang guard,
        with the daemon's log tail."""
        try:
            return wait_until(what, check, every, guard_s=HANG_GUARD_S)
        except AssertionError as exc:
            tail = self.daemon.log()[-3000:]
            raise AssertionError(f"{exc}\n--- daemon log tail ---\n{tail}") from None

    def wait_all_reporting(self) -> None:
        """Until every terminal has a state code (the board then shows no 'waiting for data')."""
        with self.http("viewer") as http:
            self.wait_until("every terminal to report a state", lambda: all(
                d["state"] is not None for d in http.get("/devices").json()))


def make_tokens(state_dir: Path) -> dict[str, str]:
    """One token per role, made with the Store and audited as the CLI does."""
    store = Store.in_state_dir(state_dir)
    try:
        tokens = {}
        for role in ROLES:
            name = f"console-{role}"
            tokens[role] = store.create_token(name, Role(role))
            store.audit(Actor(name="cli:test", role=Role.ADMIN, via="system"), "token.create", name,
                        {"role": role})
        return tokens
    finally:
        store.close()


@contextlib.contextmanager
def running_township(tmp: Path) -> Iterator[Township]:
    """Simulator + daemon on the demo township under ``tmp``; both stopped afterwards."""
    config, port = write_demo_township(tmp)
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    tokens = make_tokens(tmp / "state")
    sim = SimProcess(config, tmp / "sim.log").start()
    daemon = Daemon(config.path, port, tmp / "daemon.log")
    try:
        daemon.start()
        yield Township(config=config, sim=sim, daemon=daemon, tokens=tokens)
    finally:
        daemon.stop()
        sim.stop()


# -- the browser ------------------------------------------------------------------------------------


@dataclass
class PageProblems:
    """What went wrong inside the page: uncaught errors and console errors (CSP violations show here)."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            text = message.text
            # A 401/403/404 the console handles itself (wrong token, probing) is logged by Chromium
            # as "Failed to load resource"; that is not a page bug.
            if "Failed to load resource" not in text:
                self.errors.append(f"console: {text}")


def launch(pw: Playwright) -> Browser:
    """Headless Debian Chromium with the flags CI needs (no sandbox in containers, no network chatter)."""
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def new_context(browser: Browser, viewport: dict[str, int] | None = None, *,
                timezone_id: str = "Asia/Shanghai") -> BrowserContext:
    """A fresh profile; ``timezone_id`` is the browser's own zone (the township's by default)."""
    context = browser.new_context(viewport=viewport or LAPTOP, locale="zh-CN", timezone_id=timezone_id)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    return context


def login(page: Page, township: Township, role: str = "operator", *, token: str | None = None,
          wait: bool = True) -> None:
    """Open the console and log in through the form with the role's token (or ``token``)."""
    if not page.url.startswith(township.base_url):
        page.goto(f"{township.base_url}/")
    page.locator(by_testid("login-token")).fill(token if token is not None else township.tokens[role])
    page.locator(by_testid("login-submit")).click()
    if wait:
        page.locator(by_testid("user-info")).wait_for()


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save ``test-output/screenshots/<name>.png`` (kept for the README and for a human to look at)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def no_horizontal_scroll(page: Page) -> tuple[int, int]:
    """(scrollWidth, viewport width) of the page; equal or smaller means no horizontal scrollbar."""
    width = page.evaluate("document.scrollingElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    return int(width), int(viewport)


# -- fixtures (import them into a test module) --------------------------------------------------------


@pytest.fixture(scope="module")
def console_township(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Township]:
    """The demo township and its daemon, shared by a module's tests (undo the faults you raise)."""
    with running_township(tmp_path_factory.mktemp("console")) as township:
        yield township


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module (sync Playwright: see the module doc)."""
    with sync_playwright() as pw:
        chromium = launch(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (empty sessionStorage and localStorage) at laptop size."""
    ctx = new_context(browser)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab in ``context``; uncaught page errors fail the test."""
    tab = context.new_page()
    problems = PageProblems()
    problems.watch(tab)
    yield tab
    assert not problems.errors, problems.errors
