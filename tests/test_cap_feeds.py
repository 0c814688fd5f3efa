"""CAP feed pollers (controller/alerts/feeds.py) against a real HTTP server on loopback, a real folder
and a real Mosquitto (tests/mqttkit.py) for alerts the county pushes over MQTT.

The server serves the shared CAP samples with ETag / Last-Modified and records every request, so
the tests see what a feed provider would see: one download per document, then conditional GETs.
Pollers are stepped with an injected ``sleep`` that records each wait and returns only when the
test says so: back-off is read, not waited for. The inbox is a stand-in around the real parser
(``parse_cap``): it refuses what is not CAP with its CapError and marks repeats as duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import pytest
from mqttkit import HANG_GUARD_S, Broker, Subscriber
from simkit import REPO, free_port
from test_mqtt import Gateway, gateway_config, until

from controller.alerts.cap import MAX_CAP_BYTES, parse_cap
from controller.alerts.feeds import Feeds, parse_index, redact
from controller.config import AlertFeed, AlertsSettings, load_config

SAMPLES = REPO / "tests" / "cap" / "samples" / "google-cap-library"  # copy of ../shared/cap-samples
CAP_NS = "urn:oasis:names:tc:emergency:cap:1.1"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def identifier(document: bytes) -> str:
    root = SafeET.fromstring(document)
    return next(e.text or "" for e in root if e.tag.rsplit("}", 1)[-1] == "identifier")


# -- a CAP server on loopback ----------------------------------------------------------------------


@dataclass
class Resource:
    body: bytes
    content_type: str = "application/cap+xml"
    etag: bool = True
    last_modified: str = field(default_factory=lambda: formatdate(usegmt=True))
    status: int = 200
    hang_s: float = 0.0

    @property
    def tag(self) -> str:
        return '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]
    status: int


class CapServer:
    """http.server in a thread: serves ``resources`` by path (with query), answers conditional GETs."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                res = server.resources.get(self.path)
                status = self._status(res)
                with server.lock:
                    server.hits.append(Hit(self.path, dict(self.headers.items()), status))
                if res is not None and res.hang_s:
                    server.release.wait(res.hang_s)
                if status == 304:
                    self.send_response(304)
                    self.end_headers()
                elif status != 200 or res is None:
                    self.send_error(status)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", res.content_type)
                    self.send_header("Content-Length", str(len(res.body)))
                    self.send_header("Last-Modified", res.last_modified)
                    if res.etag:
                        self.send_header("ETag", res.tag)
                    self.end_headers()
                    self.wfile.write(res.body)

            def _status(self, res: Resource | None) -> int:
                if res is None:
                    return 404
                if res.status != 200:
                    return res.status
                if res.etag and self.headers.get("If-None-Match") == res.tag:
                    return 304
                if not res.etag and self.headers.get("If-Modified-Since") == res.last_modified:
                    return 304
                return 200

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that timed out hung up
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def put(self, path: str, body: bytes, **kw: Any) -> Resource:
        res = self.resources[path] = Resource(body, **kw)
        return res

    def to(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


@pytest.fixture
def server() -> Iterator[CapServer]:
    s = CapServer()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


# -- the inbox stand-in and a stepped clock --------------------------------------------------------


class Inbox:
    """Records what feeds hand over; parses it (CapError for non-CAP); marks repeats as duplicates."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str, str]] = []
        self.accepted: list[tuple[str, str, str]] = []
        """(identifier, source label, source_level) of each alert the parser accepted."""
        self.keys: set[tuple[str, str, str]] = set()

    async def __call__(self, document: bytes, source: str, source_level: str) -> dict[str, Any]:
        self.calls.append((document, source, source_level))
        alert = parse_cap(document)
        duplicate = alert.key in self.keys
        self.keys.add(alert.key)
        self.accepted.append((alert.identifier, source, source_level))
        return {"id": f"al-{len(self.accepted)}", "duplicate": duplicate}

    @property
    def identifiers(self) -> list[str]:
        return [a[0] for a in self.accepted]


class Steps:
    """An injected ``sleep``: records each wait the poller asks for, returns when the test says so."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._go = asyncio.Semaphore(0)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await self._go.acquire()

    async def first(self) -> None:
        await until("the first poll", lambda: self.delays)

    async def next(self) -> None:
        """Let the poller wake and wait until its next poll is over."""
        n = len(self.delays)
        self._go.release()
        await until(f"poll {n + 1}", lambda: len(self.delays) > n)


def feed(**kw: Any) -> AlertFeed:
    return AlertFeed(**{"id": "f1", "interval_s": 1, "timeout_s": 5, **kw})


@contextlib.asynccontextmanager
async def running(*feeds: AlertFeed, base_dir: Path = Path("."),
                  steps: Steps | None = None) -> Any:
    inbox = Inbox()
    kw = {"sleep": steps.sleep} if steps else {}
    f = Feeds(AlertsSettings(feeds=list(feeds)), base_dir, inbox, **kw)
    await f.start()
    try:
        yield f, inbox
    finally:
        await f.stop()


# -- url -------------------------------------------------------------------------------------------


async def test_url_feed_ingests_once_then_gets_304(server: CapServer):
    res = server.put("/cap/current.xml", sample("weather.cap"))
    url = server.url("/cap/current.xml")
    async with running(feed(id="nws", type="url", url=url, source_level="province")) as (feeds, inbox):
        # the real clock: interval_s=1, so a few polls take a few seconds
        await until("two conditional polls", lambda: feeds.snapshot()[0]["not_modified"] >= 2)
        snap = feeds.snapshot()[0]
        assert inbox.calls[0][1:] == (f"feed:nws {url}", "province")
        assert len(inbox.calls) == 1
        hits = server.to("/cap/current.xml")
        assert "If-None-Match" not in hits[0].headers and hits[0].status == 200
        assert all(h.headers.get("If-None-Match") == res.tag and h.status == 304 for h in hits[1:])
        assert snap["documents"]["ingested"] == 1 and snap["not_modified"] >= 2
        assert snap["failures"] == 0 and snap["last_error"] is None and snap["last_ok"]
        assert snap["delay_s"] == 1
        assert snap["next_poll_in_s"] is None or 0 <= snap["next_poll_in_s"] <= 1  # None: polling now

        server.put("/cap/current.xml", sample("canada.cap"))  # the warning changes: new ETag
        await until("the new document", lambda: len(inbox.calls) == 2)
    assert inbox.identifiers == [identifier(sample("weather.cap")), identifier(sample("canada.cap"))]


async def test_last_modified_only_server_gets_if_modified_since(server: CapServer):
    res = server.put("/warn.cap", sample("earthquake.cap"), etag=False)
    steps = Steps()
    async with running(feed(type="url", url=server.url("/warn.cap")), steps=steps) as (_, inbox):
        await steps.first()
        await steps.next()
        hits = server.to("/warn.cap")
        assert hits[1].headers.get("If-Modified-Since") == res.last_modified and hits[1].status == 304
        assert "If-None-Match" not in hits[1].headers
        assert len(inbox.calls) == 1

        # A server that ignores both validators and sends the same bytes: not handed over again.
        server.put("/warn.cap", sample("earthquake.cap"), etag=False, last_modified="")
        await steps.next()
        assert server.to("/warn.cap")[-1].status == 200 and len(inbox.calls) == 1


# -- index -----------------------------------------------------------------------------------------


NWS = "http://www.weather.gov/alerts-beta/wwacapget.php?x="
CT = "CT20100831030400OKXAirQualityAlertOKX20100901031500CT"
DC = "DC20100830203300LWXAirQualityAlertLWX20100901040000DC"
QUAKE_ENTRY = """<entry><id>urn:earthquake-usgs-gov:us:2010apcd</id><title>M 5.3, Tonga</title>
<updated>2010-08-31T00:48:10Z</updated>
<link rel="alternate" type="text/html" href="/quakes/us2010apcd.html"/>
<link rel="related" type="application/cap+xml" href="cap/us2010apcd"/></entry>
</feed>"""


async def test_index_feed_fetches_each_linked_cap_once(server: CapServer):
    """The NWS index sample, its links pointed at this server; a relative link added later."""
    base = server.url("/alerts-beta/wwacapget.php?x=")
    index = sample("weather_index.atom").decode().replace(NWS, base)
    server.put("/feeds/index.atom", index.encode(), content_type="application/atom+xml")
    server.put(f"/alerts-beta/wwacapget.php?x={CT}", sample("weather.cap"))
    server.put(f"/alerts-beta/wwacapget.php?x={DC}", sample("canada.cap"))
    server.put("/feeds/cap/us2010apcd", sample("earthquake.cap"))
    steps = Steps()
    async with running(feed(id="nws", type="index", url=server.url("/feeds/index.atom")),
                       steps=steps) as (feeds, inbox):
        await steps.first()
        # oldest first (DC 16:33 EDT before CT 23:04 EDT), each labelled with its own address
        assert [(i, s) for i, s, _ in inbox.accepted] == [
            (identifier(sample("canada.cap")), f"feed:nws {base}{DC}"),
            (identifier(sample("weather.cap")), f"feed:nws {base}{CT}")]

        await steps.next()  # nothing new: the index answers 304, no document is asked for
        assert server.to("/feeds/index.atom")[-1].status == 304
        assert len(server.to(f"/alerts-beta/wwacapget.php?x={CT}")) == 1

        server.put("/feeds/index.atom", index.replace("</feed>", QUAKE_ENTRY).encode())
        await steps.next()  # only the new entry's CAP link is fetched, resolved against the index
        assert inbox.identifiers[-1] == identifier(sample("earthquake.cap"))
        assert inbox.accepted[-1][1] == f"feed:nws {server.url('/feeds/cap/us2010apcd')}"
        assert not server.to("/quakes/us2010apcd.html")  # the HTML page is not a CAP link

        # The CT entry is updated: its CAP is asked for again, conditionally; same ETag → 304.
        server.put("/feeds/index.atom", index.replace(
            "<updated>2010-08-30T23:04:00-04:00</updated>", "<updated>2010-08-30T23:30:00-04:00</updated>",
            1).replace("</feed>", QUAKE_ENTRY).encode())
        await steps.next()
        ct = server.to(f"/alerts-beta/wwacapget.php?x={CT}")
        assert len(ct) == 2 and ct[1].status == 304 and "If-None-Match" in ct[1].headers

        await steps.next()
        snap = feeds.snapshot()[0]
    for path in (f"/alerts-beta/wwacapget.php?x={DC}", "/feeds/cap/us2010apcd"):
        assert len(server.to(path)) == 1
    assert len(inbox.calls) == 3
    assert snap["documents"] == {"ingested": 3, "duplicates": 0, "bad": 0, "last_bad": None}
    assert snap["failures"] == 0 and snap["polls"] == 5


RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>安徽省气象台 预警信号</title><link>{home}</link>
<item><title>濉溪县气象台发布暴雨黄色预警</title><link>alerts/one.cap</link>
<pubDate>Sat, 28 Nov 2026 03:15:00 +0800</pubDate></item>
<item><title>濉溪县气象台发布大风蓝色预警</title><link>{home}page/two.html</link>
<enclosure url="{home}alerts/two.cap" length="2809" type="application/cap+xml"/>
<pubDate>Sat, 28 Nov 2026 02:00:00 +0800</pubDate></item>
</channel></rss>"""


async def test_rss_index(server: CapServer):
    server.put("/rss/feed.xml", RSS.format(home=server.url("/rss/")).encode(),
               content_type="application/rss+xml")
    server.put("/rss/alerts/one.cap", sample("weather.cap"))
    server.put("/rss/alerts/two.cap", sample("earthquake.cap"))
    steps = Steps()
    async with running(feed(id="ahqx", type="index", url=server.url("/rss/feed.xml")),
                       steps=steps) as (_, inbox):
        await steps.first()
        await steps.next()
    assert inbox.identifiers == [identifier(sample("earthquake.cap")), identifier(sample("weather.cap"))]
    assert len(server.to("/rss/alerts/one.cap")) == len(server.to("/rss/alerts/two.cap")) == 1
    assert not server.to("/rss/page/two.html")  # the enclosure typed as CAP wins over the page link


async def test_cap_embedded_in_atom_entries(server: CapServer):
    """amber.atom and weather.atom carry the alert inside the entry: nothing else is fetched."""
    server.put("/amber.atom", sample("amber.atom"), content_type="application/atom+xml")
    server.put("/weather.atom", sample("weather.atom"), content_type="application/atom+xml")
    steps = Steps()
    async with running(feed(id="amber", type="index", url=server.url("/amber.atom")),
                       steps=steps) as (_, inbox):
        await steps.first()
        await steps.next()
    assert [(i, s) for i, s, _ in inbox.accepted] == [
        ("http://doj.dc.gov/amber12345", f"feed:amber {server.url('/amber.atom')}#http://doj.dc.gov/amber12345")]
    root = SafeET.fromstring(inbox.calls[0][0])  # a CAP document of its own, namespace kept
    assert root.tag == f"{{{CAP_NS}}}alert"

    entries = parse_index(sample("weather.atom"), server.url("/weather.atom"))
    assert len(entries) == 1 and entries[0].link is None and entries[0].embedded is not None
    assert identifier(entries[0].embedded).startswith("NOAA-NWS-ALERTS-MT20120830")
    assert {h.path for h in server.hits} == {"/amber.atom"}


# -- directory -------------------------------------------------------------------------------------


async def test_directory_feed_picks_up_new_and_changed_files(tmp_path: Path):
    steps = Steps()
    folder = tmp_path / "drop"
    async with running(feed(id="drop", type="directory", path="drop", source_level="city", interval_s=3),
                       base_dir=tmp_path, steps=steps) as (feeds, inbox):
        await steps.first()  # the folder is not there yet: a failure, with back-off
        snap = feeds.snapshot()[0]
        assert snap["last_error"] == f"folder {folder} does not exist"
        assert snap["failures"] == 1 and snap["delay_s"] == 6

        folder.mkdir()
        shutil.copy(SAMPLES / "weather.cap", folder / "a-weather.cap")
        await steps.next()
        assert inbox.accepted == [(identifier(sample("weather.cap")), f"feed:drop {folder / 'a-weather.cap'}",
                                   "city")]
        assert feeds.snapshot()[0]["failures"] == 0 and steps.delays[-1] == 3

        await steps.next()  # unchanged: not handed over again
        assert len(inbox.calls) == 1

        # Two files dropped later (the older one first), and files that are not CAP documents.
        shutil.copy(SAMPLES / "canada.cap", folder / "b-canada.XML")
        shutil.copy(SAMPLES / "earthquake.cap", folder / "c-quake.cap")
        os.utime(folder / "c-quake.cap", ns=(10**18, 10**18 - 1))
        os.utime(folder / "b-canada.XML", ns=(10**18, 10**18))
        (folder / "notes.txt").write_text("not an alert")
        shutil.copy(SAMPLES / "australia.cap", folder / ".partial.cap")
        await steps.next()
        assert inbox.identifiers[1:] == [identifier(sample("earthquake.cap")),
                                         identifier(sample("canada.cap"))]

        # A changed file is handed over again; the others are not.
        changed = sample("weather.cap").replace(b"</alert>", b"<!-- v2 --></alert>")
        (folder / "a-weather.cap").write_bytes(changed)
        os.utime(folder / "a-weather.cap", ns=(2 * 10**18, 2 * 10**18))
        await steps.next()
        assert len(inbox.calls) == 4 and inbox.accepted[-1][1].endswith("a-weather.cap")
        await steps.next()
        assert len(inbox.calls) == 4
    assert sorted(p.name for p in folder.iterdir()) == [".partial.cap", "a-weather.cap", "b-canada.XML",
                                                        "c-quake.cap", "notes.txt"]  # left in place


# -- failures --------------------------------------------------------------------------------------


async def test_backoff_grows_on_failure_and_resets_on_success(server: CapServer):
    res = server.put("/cap.xml", sample("weather.cap"), status=500)
    steps = Steps()
    async with running(feed(type="url", url=server.url("/cap.xml"), max_backoff_s=5, timeout_s=0.3),
                       steps=steps) as (feeds, inbox):
        await steps.first()
        snap = feeds.snapshot()[0]
        assert snap["failures"] == 1 and snap["delay_s"] == 2
        assert snap["last_error"] == "HTTP 500 Internal Server Error" and snap["last_ok"] is None
        await steps.next()
        await steps.next()
        assert feeds.snapshot()[0]["failures"] == 3

        res.status, res.hang_s = 200, 5.0  # now it accepts the connection and says nothing
        await steps.next()
        snap = feeds.snapshot()[0]
        assert snap["failures"] == 4 and snap["last_error"] == "no answer within 0.3 s"

        res.hang_s = 0.0
        await steps.next()
        snap = feeds.snapshot()[0]
        assert snap["failures"] == 0 and snap["last_error"] is None and snap["last_ok"] is not None
        assert snap["last_error_at"] is not None and snap["documents"]["ingested"] == 1
    assert steps.delays == [2, 4, 5, 5, 1]  # doubling from the interval, capped, reset by success
    assert len(inbox.calls) == 1


async def test_unreachable_server_is_a_failure():
    steps = Steps()
    async with running(feed(type="index", url=f"http://127.0.0.1:{free_port()}/index.atom"),
                       steps=steps) as (feeds, _):
        await steps.first()
        snap = feeds.snapshot()[0]
    assert snap["failures"] == 1 and "Connection refused" in snap["last_error"]
    assert snap["last_error"].startswith("index: cannot fetch")


async def test_bad_documents_are_reported_and_good_ones_go_through(server: CapServer):
    entries = "".join(
        f"<entry><id>e{i}</id><updated>2026-11-28T0{i}:00:00+08:00</updated><link href='{path}'/></entry>"
        for i, path in enumerate(["good1.cap", "broken.cap", "huge.cap", "gone.cap", "good2.cap"]))
    server.put("/i/index.atom", f"<feed xmlns='http://www.w3.org/2005/Atom'>{entries}</feed>".encode())
    server.put("/i/good1.cap", sample("weather.cap"))
    server.put("/i/broken.cap", sample("weather.cap")[:400])
    server.put("/i/huge.cap", b"<alert>" + b" " * MAX_CAP_BYTES + b"</alert>")
    server.put("/i/good2.cap", sample("canada.cap"))
    steps = Steps()
    async with running(feed(id="mix", type="index", url=server.url("/i/index.atom")),
                       steps=steps) as (feeds, inbox):
        await steps.first()
        snap = feeds.snapshot()[0]
        assert inbox.identifiers == [identifier(sample("weather.cap")), identifier(sample("canada.cap"))]
        assert snap["failures"] == 0 and snap["delay_s"] == 1  # the sender's problem: no back-off
        docs = snap["documents"]
        assert docs["ingested"] == 2 and docs["bad"] == 3
        assert docs["last_bad"]["source"] == server.url("/i/gone.cap")
        assert docs["last_bad"]["reason"] == "HTTP 404 Not Found"
        assert [c[1].rsplit("/", 1)[-1] for c in inbox.calls] == ["good1.cap", "broken.cap", "good2.cap"]
        await steps.next()  # not asked for again until their entry changes
    for name in ("good1", "broken", "huge", "gone", "good2"):
        assert len(server.to(f"/i/{name}.cap")) == 1, name

    # One CAP URL: a broken document is reported; the corrected one goes through on the next poll.
    server.put("/one.cap", b"<html>maintenance</html>")
    steps = Steps()
    async with running(feed(id="one", type="url", url=server.url("/one.cap")), steps=steps) as (feeds, inbox):
        await steps.first()
        snap = feeds.snapshot()[0]
        assert snap["documents"]["bad"] == 1 and snap["failures"] == 0
        assert "html" in snap["documents"]["last_bad"]["reason"]  # the parser's reason
        server.put("/one.cap", sample("earthquake.cap"))
        await steps.next()
        assert inbox.identifiers == [identifier(sample("earthquake.cap"))]


async def test_entity_attacks_in_an_index_are_refused_unread(server: CapServer, tmp_path: Path):
    server.put("/xee.atom", sample("xee.atom"))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    crafted = f"""<?xml version="1.0"?>
<!DOCTYPE feed [
  <!ENTITY % remote SYSTEM "{server.url('/steal.dtd')}">
  <!ENTITY file SYSTEM "file://{secret}">
  <!ENTITY link SYSTEM "{server.url('/steal')}">
  %remote;
]>
<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>&file;</id><link href="&link;"/></entry></feed>"""
    server.put("/crafted.atom", crafted.encode())
    laughs = ('<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
              + ']><feed xmlns="http://www.w3.org/2005/Atom"><title>&i;</title></feed>')
    server.put("/laughs.atom", laughs.encode())
    for name in ("xee", "crafted", "laughs"):
        steps = Steps()
        async with running(feed(id=name, type="index", url=server.url(f"/{name}.atom")),
                           steps=steps) as (feeds, inbox):
            await steps.first()
            snap = feeds.snapshot()[0]
        assert snap["last_error"].startswith("index: refused: the index declares a DTD or entities"), name
        assert not inbox.calls
    assert {h.path for h in server.hits} == {"/xee.atom", "/crafted.atom", "/laughs.atom"}


async def test_credentials_and_tokens_stay_out_of_labels_and_status(server: CapServer,
                                                                    caplog: pytest.LogCaptureFixture):
    server.put("/p/cap?token=s3cret&area=340621", sample("weather.cap"))
    url = server.url("/p/cap?token=s3cret&area=340621").replace("http://", "http://ebc:pa55word@")
    steps = Steps()
    caplog.set_level(logging.INFO, "controller.alerts.feeds")
    async with running(feed(id="prov", type="url", url=url), steps=steps) as (feeds, inbox):
        await steps.first()
        snap = feeds.snapshot()[0]
    shown = server.url("/p/cap?token=***&area=340621")
    assert inbox.calls[0][1] == f"feed:prov {shown}"  # the document's address, credentials apart
    assert snap["target"] == shown.replace("http://", "http://ebc:***@")
    hit = server.to("/p/cap?token=s3cret&area=340621")[0]
    assert hit.headers["Authorization"] == "Basic " + base64.b64encode(b"ebc:pa55word").decode()
    text = json.dumps(snap) + caplog.text
    assert "s3cret" not in text and "pa55word" not in text
    assert redact("https://h/x?apikey=1&signature=2&q=3") == "https://h/x?apikey=***&signature=***&q=3"


# -- MQTT: CAP documents pushed by the county ------------------------------------------------------


async def test_mqtt_alert_topics_reach_the_hook_also_after_reconnect(tmp_path: Path):
    broker = Broker(tmp_path / "broker").start()  # not persistent: the gateway must re-subscribe
    try:
        _, path = gateway_config(tmp_path, {"brokers": [broker.url]},
                                 alerts={"mqtt_topics": ["county/cap/#", "ebc/gw-test/alerts"]})
        gw = Gateway(load_config(path))
        got: list[tuple[bytes, str]] = []
        gw.reporter.on_alert_document = lambda payload, topic: got.append((payload, topic))
        document = sample("weather.cap")
        with Subscriber(broker, ["ebc/gw-test/cmd/+/response"]) as county:

            async def push(topic: str, payload: bytes) -> None:
                """Publish until the hook has it (the gateway's SUBSCRIBE may still be on its way)."""
                async def arrived() -> bool:
                    for _ in range(20):
                        if (payload, topic) in got:
                            return True
                        await asyncio.sleep(0.05)
                    return False
                deadline = time.monotonic() + HANG_GUARD_S
                while time.monotonic() < deadline:
                    county.client.publish(topic, payload, qos=1)
                    if await arrived():
                        return
                raise AssertionError(f"nothing on {topic} reached the hook; got {[t for _, t in got]}")

            await gw.reporter.start()
            try:
                await until("connected", lambda: gw.reporter.connected)
                county.client.publish("county/other", b"<alert>not for us</alert>", qos=1)
                county.client.publish("ebc/gw-test/cmd/ping", b"{}", qos=1)
                await push("county/cap/anhui/huaibei", document)
                await push("ebc/gw-test/alerts", sample("canada.cap"))
                answer = "ebc/gw-test/cmd/ping/response"
                await asyncio.to_thread(county.wait_for, "the command answer",
                                        lambda ms: [m for m in ms if m.topic == answer])
                assert {t for _, t in got} == {"county/cap/anhui/huaibei", "ebc/gw-test/alerts"}
                assert got[0] == (document, "county/cap/anhui/huaibei")  # the bytes as published

                broker.stop()
                await until("the outage noticed", lambda: not gw.reporter.connected)
                broker.start()
                await until("reconnected", lambda: gw.reporter.connected)
                await push("county/cap/anhui", sample("earthquake.cap"))
                assert got[-1] == (sample("earthquake.cap"), "county/cap/anhui")
            finally:
                await gw.stop()
    finally:
        broker.stop()
