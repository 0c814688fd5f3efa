"""What this gateway sends to the upper platform: heartbeats, and reports through a durable outbox.

Reports (EBRDTState on a terminal's state change, EBMStateResponse on a broadcast's, EBRDTInfo at
start, answers to state and OMD requests) are built, given their EBDID and written to their own
outbox file (``national-outbox.sqlite3``, the same durable FIFO as the MQTT one) inside the bus
listener, before ``publish`` returns: a dead county link or a ``kill -9`` loses none of them. The
sender posts them strictly in order, each signed at send time; a row leaves the outbox only when
the platform answered it with an EBDResponse. A refusal (ResultCode 2–5) is final for that report
(sending it again cannot help): it is audited and published, and the next one goes. Transport
failures retry the same row with a doubling back-off.

Heartbeats (ConnectionCheck) go straight out every ``heartbeat_s``: a stale heartbeat is worthless,
so they are never queued. A heartbeat that gets through after an outage restarts the sender at
once, without waiting out its back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx

from controller.config import Config, NationalPlatformSettings
from controller.core.events import PlatformExchange
from controller.uplink.national import ebd
from controller.uplink.national.codes import heartbeat_ebdid
from controller.uplink.national.package import (
    PackageError,
    PackageLimits,
    multipart_body,
    package_name,
    read_package,
    write_package,
)
from controller.uplink.national.signature import (
    Signer,
    Sm2Verifier,
    build_signature_file,
    parse_signature_file,
)
from controller.uplink.national.store import NationalStore
from controller.uplink.outbox import Outbox, OutboxLimits

log = logging.getLogger(__name__)

OUTBOX_NAME = "national-outbox.sqlite3"
POST_TIMEOUT_S = 15.0
EBD_VERSION = "1"


@dataclass
class LinkStatus:
    """How the county link is doing, for /health, metrics and the console."""

    up: bool | None = None
    since: float | None = None
    last_heartbeat_ok: float | None = None
    last_error: str | None = None
    sent: int = 0
    refused: int = 0
    failures: int = 0
    received: int = 0
    last_refusal: dict[str, Any] | None = field(default=None)

    def as_dict(self, depth: int) -> dict[str, Any]:
        return {"up": self.up, "since": self.since, "last_heartbeat_ok": self.last_heartbeat_ok,
                "last_error": self.last_error, "sent": self.sent, "refused": self.refused,
                "failures": self.failures, "received": self.received, "outbox_depth": depth,
                "last_refusal": self.last_refusal}


class Envelope:
    """Builds, signs and packs EBDs from this gateway (heartbeats, reports, responses)."""

    def __init__(self, cfg: Config, settings: NationalPlatformSettings, store: NationalStore,
                 signer: Signer) -> None:
        self.cfg = cfg
        self.settings = settings
        self.store = store
        self.signer = signer
        self.own_url = self._own_url()

    def _own_url(self) -> str:
        """Where the platform reaches us (SRC/URL): ``listen.public_url``, else the listen address."""
        listen = self.settings.listen
        if listen.public_url:
            return listen.public_url
        scheme = "https" if listen.tls_cert_file else "http"
        host = self.cfg.gateway.id if listen.host in ("0.0.0.0", "::") else listen.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{listen.port}{listen.path}"

    def ebdb(self, ebd_type: str, body: ET.Element, *, ebdid: str | None = None,
             related: str | None = None) -> tuple[str, bytes]:
        """(EBDID, EBDB bytes) of a new EBD from this gateway to the upper platform."""
        ebdid = ebdid or self.store.next_ebdid(self.cfg.gateway.ebrid or "")
        header = ebd.Header(version=EBD_VERSION, ebdid=ebdid, ebd_type=ebd_type,
                            src_ebrid=self.cfg.gateway.ebrid or "", src_url=self.own_url,
                            dest_ebrid=self.settings.upper.ebrid, time=datetime.now(UTC),
                            related_ebdid=related)
        return ebdid, ebd.build_ebd(header, body)

    def pack(self, ebdid: str, ebdb: bytes) -> bytes:
        """The signed ``EBDT_<ebdid>.tar``."""
        s = self.settings.signing
        signature = build_signature_file(ebdid, self.signer, ebdb, form=s.form,
                                         value_encoding=s.value_encoding, text_encoding=s.text_encoding)
        return write_package(ebdid, ebdb, signature)

    def response(self, related: str | None, code: int, desc: str) -> bytes:
        ebdid, data = self.ebdb("EBDResponse", ebd.ebd_response(code, desc[:500]), related=related)
        return self.pack(ebdid, data)


class NationalOutbound:
    """Heartbeats and the report outbox → the upper platform's URL."""

    def __init__(self, cfg: Config, settings: NationalPlatformSettings, envelope: Envelope, state_dir: Path,
                 verifiers: dict[str, Sm2Verifier], publish: Callable[[PlatformExchange], None]) -> None:
        self.cfg = cfg
        self.settings = settings
        self.envelope = envelope
        self.verifiers = verifiers
        self.publish = publish
        self.outbox = Outbox(state_dir / OUTBOX_NAME, OutboxLimits(max_rows=settings.outbox_max_rows,
                                                                   max_droppable_rows=0))
        self.status = LinkStatus()
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- queueing (synchronous: called from bus listeners and request handlers) -------------------

    def enqueue(self, ebd_type: str, body: ET.Element, *, related: str | None = None) -> str:
        """Build the report now, store it durably, and wake the sender; returns its EBDID."""
        ebdid, data = self.envelope.ebdb(ebd_type, body, related=related)
        self.outbox.append(ebd_type, "", {"ebdid": ebdid, "ebdb": data.decode("utf-8")})
        self._kick()
        return ebdid

    def _kick(self) -> None:
        with contextlib.suppress(RuntimeError):  # no loop (tests building reports synchronously)
            asyncio.get_running_loop().call_soon_threadsafe(self._wake.set)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        upper = self.settings.upper
        verify: bool | ssl.SSLContext = upper.verify_tls
        if upper.ca_file is not None and upper.verify_tls:
            base = self.cfg.path.parent if self.cfg.path is not None else Path.cwd()
            path = Path(upper.ca_file)
            verify = ssl.create_default_context(cafile=str(path if path.is_absolute() else base / path))
        self._client = httpx.AsyncClient(timeout=POST_TIMEOUT_S, verify=verify, trust_env=False)
        self._tasks = [asyncio.create_task(self._send_loop(), name="national-sender"),
                       asyncio.create_task(self._heartbeat_loop(), name="national-heartbeat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        self.outbox.close()

    # -- sending -----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        backoff = self.settings.retry_initial_s
        while True:
            rows = self.outbox.pending(limit=50)
            if not rows:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self._wake.wait()
                continue
            for row in rows:
                payload = json.loads(row.payload)
                if "ebdb" not in payload:  # the outbox's own overflow record: reports were dropped
                    log.error("national outbox overflowed while the link was down: %s", payload)
                    self.outbox.ack(row.seq)
                    continue
                try:
                    code, desc = await self._post(payload["ebdid"], payload["ebdb"].encode("utf-8"))
                except _LinkDown as exc:
                    self._link(False, str(exc))
                    self.status.failures += 1
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):  # a heartbeat that gets through wakes us
                        async with asyncio.timeout(backoff):
                            await self._wake.wait()
                    backoff = min(backoff * 2, self.settings.retry_max_s)
                    break
                backoff = self.settings.retry_initial_s
                self._link(True)
                self.outbox.ack(row.seq)
                self.status.sent += 1
                if code != 1:
                    self.status.refused += 1
                    self.status.last_refusal = {"ebdid": payload["ebdid"], "ebd_type": row.kind,
                                                "result_code": code, "result_desc": desc}
                    log.warning("the upper platform refused %s %s: %s %s", row.kind, payload["ebdid"],
                                code, desc)
                    self.publish(PlatformExchange(direction="out", ebd_type=row.kind, ebdid=payload["ebdid"],
                                                  related_ebdid=None, result_code=code, result_desc=desc,
                                                  peer=self.settings.upper.ebrid))

    async def _post(self, ebdid: str, ebdb: bytes) -> tuple[int, str]:
        """Post one EBD; (ResultCode, ResultDesc) of the platform's answer, or raise _LinkDown."""
        assert self._client is not None
        package = await asyncio.to_thread(self.envelope.pack, ebdid, ebdb)
        content_type, body = multipart_body(package_name(ebdid), package)
        try:
            reply = await self._client.post(self.settings.upper.url, content=body,
                                            headers={"Content-Type": content_type})
        except httpx.HTTPError as exc:
            raise _LinkDown(f"{type(exc).__name__}: {exc}"[:200]) from None
        if reply.status_code != 200:
            raise _LinkDown(f"HTTP {reply.status_code} from {self.settings.upper.url}")
        return await asyncio.to_thread(self._read_response, reply.content)  # SM2 in pure Python: ~20 ms

    def _read_response(self, data: bytes) -> tuple[int, str]:
        """The platform's EBDResponse; an unreadable or unsigned one counts as not delivered."""
        try:
            package = read_package(data, PackageLimits(max_package_bytes=1024 * 1024))
            document = ebd.parse_ebd(package.ebdb)
        except (PackageError, ebd.EbdError) as exc:
            raise _LinkDown(f"unreadable answer from the platform: {exc}") from None
        if not isinstance(document.body, ebd.EbdResponse):
            raise _LinkDown(f"the platform answered with {document.header.ebd_type}, not EBDResponse")
        if package.signature is not None:
            try:
                sig = parse_signature_file(package.signature)
                verifier = self.verifiers.get(sig.cert_sn)
                ok = verifier is not None and verifier.verify(sig.value, package.ebdb)
            except ValueError:
                ok = False
            if not ok:
                log.warning("the platform's EBDResponse %s does not verify", document.header.ebdid)
        return document.body.result_code, document.body.result_desc

    async def _heartbeat_loop(self) -> None:
        ebrid = self.cfg.gateway.ebrid or ""
        while True:
            ebdid = heartbeat_ebdid(ebrid)
            ebdid, data = self.envelope.ebdb("ConnectionCheck", ebd.connection_check(datetime.now(UTC)),
                                             ebdid=ebdid)
            try:
                await self._post(ebdid, data)
            except _LinkDown as exc:
                self._link(False, str(exc))
            except Exception:
                log.exception("heartbeat failed")
            else:
                was_up = self.status.up
                self.status.last_heartbeat_ok = time.time()
                self._link(True)
                if not was_up:
                    self._wake.set()  # the link is back: flush the backlog now
            await asyncio.sleep(self.settings.heartbeat_s)

    def _link(self, up: bool, error: str | None = None) -> None:
        if self.status.up != up:
            log.log(logging.INFO if up else logging.WARNING, "county platform link %s%s",
                    "up" if up else "down", f": {error}" if error else "")
            self.status.up, self.status.since = up, time.time()
        if error is not None:
            self.status.last_error = error


class _LinkDown(Exception):
    """The report was not delivered (no answer, HTTP error, unreadable answer): retry it."""
