"""CAP feed pollers: fetch warnings from the places the config names and hand each new one to the inbox.

One asyncio task per ``alerts.feeds`` entry (controller/config/alerts.py: AlertFeed):

``url``        one CAP document at an http(s) address, polled with a conditional GET (ETag /
               If-None-Match, Last-Modified / If-Modified-Since; 304 means nothing new).
``index``      an Atom or RSS 2.0 document listing CAP alerts (e.g. the NWS ``weather_index.atom``).
               Per entry the CAP is taken from, in order: a ``link``/``enclosure`` typed
               ``application/cap+xml``, a CAP ``alert`` embedded in the Atom ``content``, the entry
               link (Atom rel ``alternate``, RSS ``link``). A link is fetched once; again only when
               its entry's ``updated``/``pubDate`` changes. Relative links resolve against the index URL.
               Entries go to the inbox oldest first when all are dated (an Alert before its Update).
``directory``  ``*.xml`` and ``*.cap`` files in a folder (relative to the config file). Each new or
               changed file (name, size, mtime) is ingested once, oldest first; files stay in place,
               so writers should write then rename.

HTTP uses the standard library (urllib.request on a small thread pool of our own): the gateway has
no HTTP client among its runtime dependencies (httpx2 is test-only) and the needs are plain GETs.
The opener knows only http and https (no file:, ftp: or data: links, not even via a redirect).
Credentials in the feed URL (``https://user:password@host/…``) are sent as HTTP Basic auth, to that
origin only; addresses are shown (logs, source labels, ``snapshot``) without passwords or token-like
query values.
Untrusted XML is read with defusedxml with DTDs forbidden, so an index such as ``xee.atom`` is
refused before any entity is resolved. Documents are limited to ``controller.alerts.cap.MAX_CAP_BYTES``,
indexes to :data:`MAX_INDEX_BYTES`; the feed's ``timeout_s`` bounds connecting, each wait for data
and the whole body.

A poll that fails (no connection, timeout, HTTP error, unreadable index or folder) waits
``interval_s`` doubled per consecutive failure, up to ``max_backoff_s``; one good poll resets it.
A bad document (ingest raises ValueError, e.g. CapError; too large; a linked CAP answering 4xx) is
logged with its reason and counted, and is not retried until it changes: it is the sender's
problem, not the feed's, so it neither stops the feed nor backs it off.

What was seen lives in memory only: after a restart everything current is handed over again, and
the inbox's de-duplication by (sender, identifier, sent) makes that harmless.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import importlib.metadata
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from controller.alerts.cap import MAX_CAP_BYTES
from controller.config import AlertFeed, AlertsSettings
from controller.core.lifecycle import cancel_and_wait

log = logging.getLogger(__name__)

Ingest = Callable[[bytes, str, str], Awaitable[Any]]
"""(document, source label, source_level) → the inbox's record; raises ValueError on a bad document."""
Sleep = Callable[[float], Awaitable[None]]

MAX_INDEX_BYTES = 8 * 1024 * 1024
"""Largest Atom/RSS index accepted (a national index of a few hundred entries is ~1–3 MB)."""
MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024
CAP_TYPES = frozenset({"application/cap+xml", "application/vnd.cap+xml", "application/cap"})
DOCUMENT_SUFFIXES = (".xml", ".cap")
ATOM = "{http://www.w3.org/2005/Atom}"
ACCEPT_CAP = "application/cap+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
ACCEPT_INDEX = ("application/atom+xml, application/rss+xml, application/xml;q=0.9, text/xml;q=0.9, "
                "*/*;q=0.1")
_SECRET_PARAMS = ("token", "key", "secret", "pass", "sig", "auth", "credential")
_T = TypeVar("_T")


def _version() -> str:
    try:
        return importlib.metadata.version("ebc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


USER_AGENT = f"ebc/{_version()} (CAP feed poller)"


def redact(url: str) -> str:
    """``url`` fit for logs, labels and the status page: no password, no token-like query values."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{k}={'***' if any(s in k.lower() for s in _SECRET_PARAMS) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` part, and that part as a Basic ``Authorization`` value.

    urllib does not use credentials written in a URL; feeds behind HTTP Basic auth put them there.
    """
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode())
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), "Basic " + token.decode("ascii")


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- HTTP ------------------------------------------------------------------------------------------


class FetchError(Exception):
    """A request that brought no document; ``permanent`` when asking again will not help (4xx)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Validators:
    """What the server told us about the version we have, for the next conditional GET."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class HttpResult:
    not_modified: bool
    body: bytes
    validators: Validators
    url: str
    """Where the answer came from, after redirects (relative links resolve against it)."""
    refused: str | None = None
    """Why the body was not read (too large), else None."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS


def _opener() -> urllib.request.OpenerDirector:
    """http and https only: unknown schemes (file:, ftp:, data:) fail, also as a redirect target."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(context=ssl.create_default_context()),
                    urllib.request.HTTPDefaultErrorHandler(), _Redirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


def http_get(url: str, validators: Validators, *, timeout_s: float, limit: int, accept: str,
             authorization: str | None = None) -> HttpResult:
    """One conditional GET (blocking; run it in a thread). ``timeout_s`` bounds each socket operation
    and the body read as a whole. ``authorization`` is not repeated to a redirect's target."""
    headers = {"User-Agent": USER_AGENT, "Accept": accept}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    request = urllib.request.Request(url, headers=headers)
    if authorization:
        request.add_unredirected_header("Authorization", authorization)
    deadline = time.monotonic() + timeout_s
    try:
        with _OPENER.open(request, timeout=timeout_s) as resp:
            got = Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
            final = resp.geturl()
            if resp.status != 200:
                raise FetchError(f"unexpected HTTP {resp.status}")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                why = f"larger than the {limit} byte limit ({length} bytes)"
                return HttpResult(False, b"", got, final, why)
            chunks: list[bytes] = []
            size = 0
            while chunk := resp.read1(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    return HttpResult(False, b"", got, final, f"larger than the {limit} byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(f"answer not complete within {timeout_s:g} s")
                chunks.append(chunk)
            return HttpResult(False, b"".join(chunks), got, final)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 304:
                return HttpResult(True, b"", validators, url)
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 425, 429)
            raise FetchError(f"HTTP {exc.code} {exc.reason}", permanent=permanent) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no answer within {timeout_s:g} s") from None
        raise FetchError(f"cannot fetch: {reason}") from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"cannot fetch: {exc.__class__.__name__}: {exc}") from None


# -- indexes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """One alert listed by an index: a link to fetch, or the CAP document embedded in the entry."""

    key: str
    """The resolved link, or ``<index url>#<entry id>`` for an embedded document."""
    version: str
    """Entry ``updated``/``pubDate`` text: a change means the alert behind the link changed."""
    link: str | None = None
    embedded: bytes | None = None
    when: datetime | None = None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(elem: ET.Element | None) -> str:
    return (elem.text or "").strip() if elem is not None else ""


def _when(text: str) -> datetime | None:
    """An Atom (RFC 3339) or RSS (RFC 822) date, for processing entries oldest first."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _serialise(alert: ET.Element) -> bytes:
    """An embedded ``alert`` as a document of its own, keeping its namespace as the default one."""
    ns = alert.tag[1:].split("}", 1)[0] if alert.tag.startswith("{") else None
    alert.tail = None
    if ns:
        with contextlib.suppress(ValueError):  # some child outside the namespace: keep prefixes
            return ET.tostring(alert, encoding="utf-8", default_namespace=ns)
    return ET.tostring(alert, encoding="utf-8")


def parse_index(data: bytes, base_url: str) -> list[IndexEntry]:
    """The CAP alerts an Atom feed or RSS 2.0 channel lists, oldest first when every entry is dated.

    Raises ValueError naming what is wrong: a DTD or entity (refused before anything is resolved),
    XML that is not well-formed, or a root that is neither ``feed`` nor ``rss``/``RDF``.
    """
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ValueError(f"refused: the index declares a DTD or entities ({exc.__class__.__name__}); "
                         "feeds never need them and they are how XXE attacks work") from None
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None
    kind = _local(root.tag)
    if kind == "feed":
        entries = [_atom_entry(e, base_url, i) for i, e in enumerate(root) if _local(e.tag) == "entry"]
    elif kind in ("rss", "RDF"):
        entries = [_rss_item(e, base_url, i) for i, e in enumerate(root.iter()) if _local(e.tag) == "item"]
    else:
        raise ValueError(f"expected an Atom <feed> or RSS <rss>, got <{kind}>"
                         + (" (a CAP document: use a feed of type url)" if kind == "alert" else ""))
    found = [e for e in entries if e is not None]
    if found and all(e.when is not None for e in found):
        found.sort(key=lambda e: e.when or datetime.min.replace(tzinfo=UTC))
    return found


def _atom_entry(entry: ET.Element, base_url: str, position: int) -> IndexEntry | None:
    ident = _text(_child(entry, "id")) or f"entry[{position}]"
    version = _text(_child(entry, "updated")) or _text(_child(entry, "published"))
    when = _when(version)
    links = [c for c in entry if _local(c.tag) == "link" and c.get("href")]
    cap = next((c for c in links if (c.get("type") or "").split(";")[0].strip() in CAP_TYPES), None)
    if cap is not None:
        href = urllib.parse.urljoin(base_url, cap.get("href", "").strip())
        return IndexEntry(href, version, link=href, when=when)
    content = _child(entry, "content")
    alert = next((c for c in content if _local(c.tag) == "alert"), None) if content is not None else None
    if alert is not None:
        return IndexEntry(f"{base_url}#{ident}", version, embedded=_serialise(alert), when=when)
    alt = next((c for c in links if (c.get("rel") or "alternate") == "alternate"), None)
    if alt is None:
        return None
    href = urllib.parse.urljoin(base_url, alt.get("href", "").strip())
    return IndexEntry(href, version, link=href, when=when)


def _rss_item(item: ET.Element, base_url: str, position: int) -> IndexEntry | None:
    version = _text(_child(item, "pubDate")) or _text(_child(item, "date")) or _text(_child(item, "guid"))
    enclosures = [c for c in item if _local(c.tag) == "enclosure" and c.get("url")]
    cap = next((c for c in enclosures if (c.get("type") or "").split(";")[0].strip() in CAP_TYPES), None)
    href = (cap.get("url", "") if cap is not None else "") or _text(_child(item, "link")) or (
        enclosures[0].get("url", "") if enclosures else "")
    if not href.strip():
        return None
    link = urllib.parse.urljoin(base_url, href.strip())
    return IndexEntry(link, version, link=link, when=_when(version))


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


# -- pollers ---------------------------------------------------------------------------------------


class PollError(Exception):
    """This poll failed as a whole (transport, index, folder): the feed backs off."""


@dataclass
class _Seen:
    """One document we handled: how to ask for it conditionally and what it was."""

    version: str = ""
    validators: Validators = field(default_factory=Validators)
    digest: str = ""


@dataclass
class _Counts:
    ingested: int = 0
    duplicates: int = 0
    bad: int = 0
    last_bad: dict[str, str] | None = None


class _Runner(Protocol):
    """Runs blocking I/O off the event loop."""

    def __call__(self, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


class _Poller:
    """One feed's loop and state; see the module docstring for what each type does."""

    def __init__(self, feed: AlertFeed, base_dir: Path, ingest: Ingest, sleep: Sleep,
                 clock: Callable[[], float], run: _Runner) -> None:
        self.feed = feed
        self.folder = (base_dir / feed.path) if feed.path is not None else None
        self.target = redact(feed.url) if feed.url is not None else str(self.folder)
        self.url, self._authorization = split_credentials(feed.url) if feed.url else ("", None)
        """The feed's address without credentials; they go (as Basic auth) to its origin only."""
        self._ingest_fn = ingest
        self._sleep = sleep
        self._clock = clock
        self._run = run
        self.polls = 0
        self.failures = 0
        self.delay_s: float | None = None
        self.due: float | None = None
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.not_modified = 0
        self.counts = _Counts()
        self._docs: dict[str, _Seen] = {}
        self._index = _Seen()
        self._entries: list[IndexEntry] = []
        self._files: dict[str, tuple[int, int]] = {}

    def label(self, where: str) -> str:
        return f"feed:{self.feed.id} {where}"

    async def run(self) -> None:
        """Poll now, then every ``interval_s`` (longer while failing), until cancelled."""
        log.info("feed %s: polling %s %s every %g s", self.feed.id, self.feed.type, self.target,
                 self.feed.interval_s)
        while True:
            self.due = None
            await self.poll()
            self.delay_s = self.next_delay()
            self.due = self._clock() + self.delay_s
            await self._sleep(self.delay_s)

    def next_delay(self) -> float:
        """``interval_s`` when healthy; doubled per consecutive failure up to ``max_backoff_s``."""
        f = self.feed
        if not self.failures:
            return f.interval_s
        return max(f.interval_s, min(f.interval_s * 2 ** min(self.failures, 32), f.max_backoff_s))

    async def poll(self) -> None:
        """One poll; failures are recorded (and logged), never raised."""
        self.polls += 1
        try:
            if self.feed.type == "url":
                await self._poll_url()
            elif self.feed.type == "index":
                await self._poll_index()
            else:
                await self._poll_directory()
        except PollError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a bug must not end the feed; it is retried with back-off
            log.exception("feed %s: poll failed unexpectedly", self.feed.id)
            self._failed(f"internal error: {exc.__class__.__name__}: {exc}")
        else:
            if self.failures:
                log.info("feed %s: %s works again after %d failed poll(s)", self.feed.id, self.target,
                         self.failures)
            self.failures = 0
            self.last_ok = time.time()
            self.last_error = None

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self.last_error_at = time.time()
        log.warning("feed %s: %s; failure %d in a row, next poll in %g s", self.feed.id, reason,
                    self.failures, self.next_delay())

    # -- handing over ------------------------------------------------------------------------------

    async def _hand_over(self, document: bytes, where: str) -> None:
        """Give one document to the inbox. A refusal (ValueError) is counted as a bad document;
        anything else is our problem: the poll fails and the document is offered again next time."""
        try:
            record = await self._ingest_fn(document, self.label(where), self.feed.source_level)
        except ValueError as exc:
            self._bad(where, str(exc) or exc.__class__.__name__)
            return
        except Exception as exc:
            log.exception("feed %s: the alert inbox failed on %s", self.feed.id, where)
            raise PollError(f"could not hand {where} to the alert inbox: {exc.__class__.__name__}: {exc}"
                            ) from exc
        if isinstance(record, dict) and record.get("duplicate"):
            self.counts.duplicates += 1
            log.info("feed %s: %s is an alert already received", self.feed.id, where)
        else:
            self.counts.ingested += 1
            ident = record.get("id") if isinstance(record, dict) else None
            log.info("feed %s: new document %s handed to the inbox%s", self.feed.id, where,
                     f" as {ident}" if ident else "")

    def _bad(self, where: str, reason: str) -> None:
        self.counts.bad += 1
        self.counts.last_bad = {"source": where, "reason": reason, "at": _iso(time.time()) or ""}
        log.warning("feed %s: bad document %s: %s", self.feed.id, where, reason)

    async def _get(self, url: str, seen: _Seen, limit: int, accept: str) -> HttpResult:
        """GET in our thread pool; FetchError for a transport or HTTP failure."""
        auth = self._authorization if _origin(url) == _origin(self.url) else None
        return await self._run(partial(http_get, url, seen.validators, timeout_s=self.feed.timeout_s,
                                       limit=limit, accept=accept, authorization=auth))

    async def _document(self, url: str, seen: _Seen) -> bool:
        """Fetch one CAP document conditionally and hand it over if it is new. Updates ``seen`` only
        once the document is dealt with; returns False when it was not modified."""
        where = redact(url)
        result = await self._get(url, seen, MAX_CAP_BYTES, ACCEPT_CAP)
        if result.not_modified:
            self.not_modified += 1
            return False
        if result.refused:
            self._bad(where, result.refused)
        else:
            digest = hashlib.sha256(result.body).hexdigest()
            if digest == seen.digest:
                self.not_modified += 1  # the server does no conditional GET, but nothing changed
            else:
                await self._hand_over(result.body, where)
                seen.digest = digest
        seen.validators = result.validators
        return True

    # -- the three kinds ---------------------------------------------------------------------------

    async def _poll_url(self) -> None:
        seen = self._docs.setdefault(self.url, _Seen())
        try:
            await self._document(self.url, seen)
        except FetchError as exc:
            raise PollError(str(exc)) from None

    async def _poll_index(self) -> None:
        try:
            result = await self._get(self.url, self._index, MAX_INDEX_BYTES, ACCEPT_INDEX)
        except FetchError as exc:
            raise PollError(f"index: {exc}") from None
        if result.not_modified:
            self.not_modified += 1
        elif result.refused:
            raise PollError(f"index: {result.refused}")
        else:
            try:  # in a thread: a large index is a few MB of XML
                self._entries = await self._run(partial(parse_index, result.body, result.url))
            except ValueError as exc:
                raise PollError(f"index: {exc}") from None
            self._index = _Seen(validators=result.validators)
        errors: list[str] = []
        for entry in self._entries:
            seen = self._docs.get(entry.key)
            if seen is not None and seen.version == entry.version:
                continue
            fresh = seen is None
            seen = seen or _Seen()
            if entry.embedded is not None:
                digest = hashlib.sha256(entry.embedded).hexdigest()
                if digest != seen.digest:
                    await self._hand_over(entry.embedded, redact(entry.key))
                    seen.digest = digest
            elif entry.link is None or urllib.parse.urlsplit(entry.link).scheme not in ("http", "https"):
                self._bad(redact(entry.link or entry.key), "link is not an http(s) address; not fetched")
            else:
                try:
                    await self._document(entry.link, seen)
                except FetchError as exc:
                    if not exc.permanent:
                        errors.append(f"{redact(entry.link)}: {exc}")
                        continue  # not marked: fetched again next poll
                    self._bad(redact(entry.link), str(exc))
            seen.version = entry.version
            if fresh:
                self._docs[entry.key] = seen
        listed = {e.key for e in self._entries}
        for gone in [k for k in self._docs if k not in listed]:
            del self._docs[gone]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PollError(f"linked document {errors[0]}{more}")

    async def _poll_directory(self) -> None:
        folder = self.folder
        assert folder is not None
        try:
            listing = await self._run(partial(_scan, folder))
        except OSError as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else (
                "is not a folder" if isinstance(exc, NotADirectoryError) else f"cannot be read ({exc})")
            raise PollError(f"folder {folder} {reason}") from None
        errors: list[str] = []
        for name, size, mtime_ns in listing:
            signature = (size, mtime_ns)
            if self._files.get(name) == signature:
                continue
            path = folder / name
            if size > MAX_CAP_BYTES:
                self._bad(str(path), f"larger than the {MAX_CAP_BYTES} byte limit ({size} bytes)")
            else:
                try:
                    data = await self._run(partial(_read, path, MAX_CAP_BYTES))
                except FileNotFoundError:
                    continue  # removed since the listing
                except OSError as exc:
                    errors.append(f"{path}: {exc.strerror or exc}")
                    continue
                if len(data) > MAX_CAP_BYTES:
                    self._bad(str(path), f"larger than the {MAX_CAP_BYTES} byte limit (grew while read)")
                else:
                    await self._hand_over(data, str(path))
            self._files[name] = signature
        present = {name for name, _, _ in listing}
        for gone in [n for n in self._files if n not in present]:
            del self._files[gone]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PollError(f"cannot read {errors[0]}{more}")

    # -- status ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        due = self.due
        return {
            "id": self.feed.id,
            "type": self.feed.type,
            "target": self.target,
            "source_level": self.feed.source_level,
            "last_ok": _iso(self.last_ok),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "failures": self.failures,
            "delay_s": self.delay_s,
            "next_poll_in_s": None if due is None else round(max(0.0, due - self._clock()), 1),
            "polls": self.polls,
            "not_modified": self.not_modified,
            "documents": {"ingested": self.counts.ingested, "duplicates": self.counts.duplicates,
                          "bad": self.counts.bad, "last_bad": self.counts.last_bad},
        }


def _scan(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the CAP files in ``folder``, oldest first (Alert before its Update)."""
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.name.lower().endswith(DOCUMENT_SUFFIXES):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            found.append((entry.name, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: (f[2], f[0]))
    return found


def _read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


class Feeds:
    """Every configured feed, polled in the background; ``snapshot()`` for the status page."""

    def __init__(self, settings: AlertsSettings, base_dir: Path, ingest: Ingest, *,
                 sleep: Sleep = asyncio.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        """``sleep`` and ``clock`` are for tests that step the pollers instead of waiting."""
        self.settings = settings
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pollers = [_Poller(f, base_dir, ingest, sleep, clock, self._in_thread) for f in settings.feeds]
        self._tasks: list[asyncio.Task[None]] = []

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """Blocking I/O on our own pool, so a hung feed cannot starve the loop's default executor."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, len(self._pollers)), thread_name_prefix="cap-feed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self) -> None:
        """Start one poller task per feed; each polls at once."""
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._guard(p), name=f"cap feed {p.feed.id}")
                       for p in self._pollers]

    async def _guard(self, poller: _Poller) -> None:
        try:
            await poller.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # run() records poll failures itself; this is a bug in the loop
            log.exception("feed %s stopped", poller.feed.id)

    async def stop(self) -> None:
        """Cancel the pollers; a request in flight ends by its own timeout in the background."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def snapshot(self) -> list[dict[str, Any]]:
        """Per feed, in config order: id, type, target (redacted), last_ok / last_error (+ _at, ISO
        UTC), failures in a row, delay_s, next_poll_in_s, polls, not_modified, and documents
        {ingested, duplicates, bad, last_bad {source, reason, at}}."""
        return [p.snapshot() for p in self._pollers]
