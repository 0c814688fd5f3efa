"""The gateway as a node under the county platform: one service that owns the listener, the
inbound checks, the report outbox and heartbeats, and turns bus events into reports.

Started after the engine (it submits to it) and stopped before it; its HTTP listener is its own
server on its own port, apart from the REST API, so the platform's address can be opened in the
firewall without exposing the duty officers' API, and an IP allow-list guards it besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from controller.broadcast.model import BroadcastState
from controller.broadcast.ports import BroadcastPort
from controller.config import Config
from controller.core.actors import Actor
from controller.core.events import BroadcastStateChanged, DeviceState, Event, EventBus, PlatformExchange
from controller.devices.registry import DeviceRegistry
from controller.storage.journal import Store
from controller.uplink.national import ebd
from controller.uplink.national.ebd import EbmStateRequest, OmdRequest
from controller.uplink.national.inbound import NationalInbound, StoreAudio
from controller.uplink.national.mapping import broadcast_report, terminal_infos, terminal_states
from controller.uplink.national.outbound import Envelope, NationalOutbound
from controller.uplink.national.signature import Sm2Verifier, SoftwareSm2Signer
from controller.uplink.national.store import NationalStore

log = logging.getLogger(__name__)

BROADCAST_LOG_LIMIT = 500
"""Most broadcasts in one EBMBrdLog answer (newest first within the requested window)."""


class ListenError(RuntimeError):
    """The listener cannot bind its port; the message says what to change."""


class NationalPlatform:
    """The national interface as one part of the daemon (``national_platform`` in the config)."""

    def __init__(self, cfg: Config, *, journal: Store, engine: BroadcastPort, registry: DeviceRegistry,
                 bus: EventBus, state_dir: Path, store_audio: StoreAudio) -> None:
        settings = cfg.national_platform
        assert settings is not None, "national_platform is not configured"
        self.cfg = cfg
        self.settings = settings
        self.journal = journal
        self.registry = registry
        self.bus = bus
        base = cfg.path.parent if cfg.path is not None else Path.cwd()
        key_path = Path(settings.signing.private_key_file)
        key_text = (key_path if key_path.is_absolute() else base / key_path).read_text(encoding="utf-8")
        self.store = NationalStore.in_state_dir(state_dir)
        signer = SoftwareSm2Signer(key_text, settings.signing.cert_sn, settings.signing.user_id)
        self.verifiers = {key.cert_sn: Sm2Verifier(key.key_text(base), settings.upper.user_id)
                          for key in settings.upper.keys}
        self.envelope = Envelope(cfg, settings, self.store, signer)
        self.outbound = NationalOutbound(cfg, settings, self.envelope, state_dir, self.verifiers,
                                         self._on_refused)
        self.inbound = NationalInbound(cfg, settings, journal=journal, store=self.store, engine=engine,
                                       bus=bus,
                                       store_audio=store_audio, verifiers=self.verifiers,
                                       respond=self.envelope.response, followup=self._followup,
                                       broadcast_state=self._broadcast_state)
        self._networks = [ipaddress.ip_network(a, strict=False) for a in settings.listen.allow]
        self._last_log_at: datetime | None = None
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        bus.add_listener(self._on_event)  # reports are queued from here on, durably, in order

    # -- lifecycle ---------------------------------------------------------------------------------

    def listen(self) -> None:
        """Bind the listener's port now (a busy port fails before any device is touched)."""
        listen = self.settings.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot listen on {listen.host}:{listen.port} for the national platform: "
                              f"{exc.strerror} (change national_platform.listen.port)") from None
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock

    async def start(self) -> None:
        if self._sock is None:
            self.listen()
        self._queue_inventory()
        await self.outbound.start()
        listen = self.settings.listen
        base = self.cfg.path.parent if self.cfg.path is not None else Path.cwd()
        tls: dict[str, Any] = {}
        if listen.tls_cert_file and listen.tls_key_file:
            tls = {"ssl_certfile": str(base / listen.tls_cert_file),
                   "ssl_keyfile": str(base / listen.tls_key_file)}
        app = Starlette(routes=[Route(listen.path, self._endpoint, methods=["POST"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_keep_alive=15, timeout_graceful_shutdown=5, **tls)
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="national-listener")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ListenError("the national platform listener stopped while starting")
            await asyncio.sleep(0.02)
        log.info("national platform interface on %s://%s:%d%s, reporting to %s",
                 "https" if tls else "http", listen.host, listen.port, listen.path, self.settings.upper.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.outbound.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Close the files (after :meth:`stop`, with the journal)."""
        self.outbound.close()
        self.store.close()

    def status(self) -> dict[str, Any]:
        """For ``GET /api/v1/gateway`` and the console."""
        return {"ebrid": self.cfg.gateway.ebrid, "upper": self.settings.upper.ebrid,
                "url": self.settings.upper.url, "heartbeats_received": self.inbound.heartbeats,
                **self.outbound.status.as_dict(self.outbound.outbox.depth)}

    def _on_refused(self, event: PlatformExchange) -> None:
        """A report the platform answered with ResultCode 2–5: audited and published (not retried)."""
        try:
            self.journal.audit(Actor.system("ebc national"), f"national.{event.ebd_type}.refused"[:64],
                               event.ebdid, {"result_code": event.result_code,
                                             "result_desc": event.result_desc})
        except Exception:
            log.exception("cannot audit the refused report %s", event.ebdid)
        self.bus.publish(event)

    # -- the listener ------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        client = request.client.host if request.client else ""
        if not self._allowed(client):
            log.warning("national platform listener: %s is not in national_platform.listen.allow", client)
            return PlainTextResponse("forbidden: address not allowed\n", status_code=403)
        limit = self.inbound.limits.max_package_bytes + 64 * 1024  # the tar plus multipart framing
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return PlainTextResponse(f"request body over {limit} bytes\n", status_code=413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return PlainTextResponse(f"request body over {limit} bytes\n", status_code=413)
            chunks.append(chunk)
        self.outbound.status.received += 1
        answer = await self.inbound.handle(request.headers.get("content-type", ""), b"".join(chunks), client)
        return Response(answer.package, media_type="application/x-tar")

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    # -- reports -----------------------------------------------------------------------------------

    def _queue_inventory(self) -> None:
        """At start: the system itself (EBRBSInfo) and the inventory (EBRDTInfo Sync); device states
        follow as the health monitor judges each device."""
        gw = self.cfg.gateway
        now = datetime.now(UTC)
        self.outbound.enqueue("EBRBSInfo", self._ebrbs_info(now))
        self.outbound.enqueue("EBRDTInfo", ebd.ebrdt_info(gw.ebrid or "", terminal_infos(self.cfg, now)))

    def _ebrbs_info(self, now: datetime) -> Any:
        gw = self.cfg.gateway
        return ebd.ebrbs_info(ebrid=gw.ebrid or "", name=gw.name, parent_ebrid=self.settings.upper.ebrid,
                              rpt_time=now, longitude=gw.location.lon, latitude=gw.location.lat,
                              url=self.envelope.own_url)

    def _ebrbs_state(self, now: datetime) -> Any:
        devices = list(self.registry.devices.values())
        faulty = sum(1 for d in devices if d.state == 3)
        offline = sum(1 for d in devices if d.online is False)
        code = 5 if any(d.state == 5 for d in devices) else 1
        desc = f"终端 {len(devices)} 台，故障 {faulty} 台，离线 {offline} 台"
        return ebd.ebrbs_state(ebrid=self.cfg.gateway.ebrid or "", state_code=code, state_desc=desc,
                               rpt_time=now)

    def _on_event(self, event: Event) -> None:
        """Bus listener (synchronous, inside ``publish``): queue the report this change calls for."""
        if isinstance(event, DeviceState):
            changed = event.state != event.previous_state or event.online != event.previous_online
            dev = self.registry.devices.get(event.device_id)
            if changed and dev is not None:
                rows = terminal_states([{**dev.as_dict(), "state": event.state, "online": event.online,
                                         "state_name_zh": event.state_name_zh}], self.cfg)
                if rows:
                    self.outbound.enqueue("EBRDTState", ebd.ebrdt_state(rows))
        elif isinstance(event, BroadcastStateChanged):
            record = self.journal.get_broadcast(event.broadcast_id)
            if record is not None:
                report = broadcast_report(record, self._ebmid_for(event.broadcast_id), self.cfg)
                self.outbound.enqueue("EBMStateResponse", ebd.ebm_state_response(report))

    def _ebmid_for(self, broadcast_id: str) -> str:
        """The EBMID of a broadcast: the platform's for its own EBMs (linked while it is submitted),
        else one minted from this gateway's EBRID the first time the broadcast is reported."""
        ebmid = self.store.ebmid_of(broadcast_id)
        if ebmid is not None:
            return ebmid
        submitting = self.inbound.submitting
        if submitting is not None:  # the engine announces the broadcast before submit() returns
            ebmid, ebdid = submitting
            self.store.link_ebm(ebmid, broadcast_id, ebdid)
            return ebmid
        ebmid = self.store.next_ebmid(self.cfg.gateway.ebrid or "")
        self.store.link_ebm(ebmid, broadcast_id, "")
        return ebmid

    def _followup(self, request_ebdid: str, request: OmdRequest | EbmStateRequest, broadcast_id: str) -> None:
        now = datetime.now(UTC)
        if isinstance(request, EbmStateRequest):
            record = self.journal.get_broadcast(broadcast_id)
            if record is not None:
                report = broadcast_report(record, request.ebmid, self.cfg, rpt_time=now)
                self.outbound.enqueue("EBMStateResponse", ebd.ebm_state_response(report),
                                      related=request_ebdid)
            return
        kind = request.omd_type
        if kind == "EBRDTInfo":
            body = ebd.ebrdt_info(self.cfg.gateway.ebrid or "", terminal_infos(self.cfg, now))
        elif kind == "EBRDTState":
            body = ebd.ebrdt_state(terminal_states([d.as_dict() for d in self.registry.devices.values()],
                                                   self.cfg, now))
        elif kind == "EBRBSInfo":
            body = self._ebrbs_info(now)
        elif kind == "EBRBSState":
            body = self._ebrbs_state(now)
        else:
            body = ebd.ebm_brd_log(self._broadcast_log(request, now))
        self.outbound.enqueue(kind, body, related=request_ebdid)

    def _broadcast_log(self, request: OmdRequest, now: datetime) -> list[ebd.BroadcastReport]:
        """Broadcasts created in the window; Incremental without a start: since the last answer."""
        start = request.start
        if start is None and request.rpt_type == "Incremental":
            start = self._last_log_at
        self._last_log_at = now
        reports = []
        for row in self.journal.list_broadcasts(limit=BROADCAST_LOG_LIMIT):
            created = datetime.fromtimestamp(row["created_at"], UTC)
            if (start is not None and created < start) or (request.end is not None and created > request.end):
                continue
            record = self.journal.get_broadcast(row["id"])
            if record is not None:
                reports.append(broadcast_report(record, self._ebmid_for(row["id"]), self.cfg, rpt_time=now))
        return reports

    def _broadcast_state(self, broadcast_id: str) -> BroadcastState | None:
        record = self.journal.get_broadcast(broadcast_id)
        return None if record is None else BroadcastState(record["state"])


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
