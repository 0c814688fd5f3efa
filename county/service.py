"""The county service: the store, the picture rebuilt from it, the MQTT ingest, the API and retention,
and the county-wide broadcasts (:mod:`county.countywide`) signed with the configured key.

``CountyService(cfg)``; ``await start()`` (the API listens on its own socket before it returns,
so ``port`` is known even when the config asks for port 0), ``await stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI

from county.api import ApiContext, create_app
from county.commands import CountySigner, SigningKeyError
from county.config import CountyConfig, CountyConfigError
from county.countywide import LEASE_S, CountyBroadcasts
from county.ingest import SETTLE_SHARED_S, Ingest
from county.picture import Picture
from county.store import Store, open_store
from county.web import install_console

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


class CountyService:
    """See the module docstring. ``routers`` are added to the API (e.g. the commands module's);
    ``on_response`` also gets every gateway's command response (gateway, command, payload);
    ``answer_timeout_s`` and ``retry_after_s`` are the county broadcasts' resend delays, ``lease_s`` how
    long another instance waits before it takes over the broadcasts of one that stopped renewing."""

    def __init__(self, cfg: CountyConfig, *, routers: Sequence[APIRouter] = (),
                 on_response: Callable[[str, str, bytes], None] | None = None,
                 answer_timeout_s: float = 15.0, retry_after_s: float = 2.0,
                 lease_s: float = LEASE_S) -> None:
        self.cfg = cfg
        self.routers = list(routers)
        self.on_response = on_response
        self.picture = Picture()
        self.store: Store | None = None
        self.ingest: Ingest | None = None
        self.broadcasts: CountyBroadcasts | None = None
        self._timing = {"answer_timeout_s": answer_timeout_s, "retry_after_s": retry_after_s,
                        "lease_s": lease_s}
        self.app: FastAPI | None = None
        self.context: ApiContext | None = None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def port(self) -> int:
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.cfg.api.host}:{self.port}"

    def signer(self) -> CountySigner | None:
        """The county's key from ``signing``; CountyConfigError naming the key file if unusable."""
        signing = self.cfg.signing
        if signing is None:
            return None
        path = self.cfg.file(signing.private_key_file)
        assert path is not None
        try:
            return CountySigner(signing.type, signing.key_id, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SigningKeyError) as exc:
            raise CountyConfigError("signing", [f"signing.private_key_file: {path}: {exc}"]) from None

    def _on_response(self, gateway: str, command: str, payload: bytes) -> None:
        if self.broadcasts is not None:
            self.broadcasts.on_response(gateway, command, payload)
        if self.on_response is not None:
            self.on_response(gateway, command, payload)

    def _on_report(self, gateway: str, broadcast_id: str, payload: bytes) -> None:
        if self.broadcasts is not None:
            self.broadcasts.on_report(gateway, broadcast_id, payload)

    def _on_status(self, gateway: str, status: str) -> None:
        if self.broadcasts is not None:
            self.broadcasts.on_status(gateway, status)

    async def start(self) -> None:
        signer = await asyncio.to_thread(self.signer)
        store = self.store = await asyncio.to_thread(open_store, self.cfg)
        await asyncio.to_thread(self.picture.rebuild, store)
        ingest = self.ingest = Ingest(self.cfg, store, self.picture, on_response=self._on_response,
                                      on_report=self._on_report, on_status=self._on_status)
        broadcasts = self.broadcasts = CountyBroadcasts(store, self.picture, ingest.publish,
                                                        self.cfg.mqtt.prefix, signer, **self._timing,
                                                        connected=ingest.connected.is_set)
        await ingest.start()
        await broadcasts.take_over()  # what was in flight before a restart is followed again at once
        self.context = ApiContext(self.cfg, store, self.picture, mqtt_connected=ingest.connected.is_set,
                                  stats=lambda: {k: v for k, v in asdict(ingest.stats).items()
                                                 if k != "malformed_by_gateway"},
                                  broadcasts=broadcasts)
        app = self.app = create_app(self.context)
        for router in self.routers:
            app.include_router(router)
        install_console(app)
        family = socket.AF_INET6 if ":" in self.cfg.api.host else socket.AF_INET
        sock = self._socket = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.api.host, self.cfg.api.port))
        sock.listen(128)
        sock.setblocking(False)
        server = self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=3, access_log=False))
        self._tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name="county api"))
        while not server.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # raises why it could not start
                raise RuntimeError("the county API server stopped at start")
            await asyncio.sleep(0.02)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="county retention"))
        self._tasks.append(asyncio.create_task(broadcasts.run(), name="county broadcasts"))
        log.info("county %s: API on %s, brokers %s, storage %s", self.cfg.county.id, self.url,
                 ", ".join(self.cfg.mqtt.brokers), store.dialect)

    async def _housekeeping(self) -> None:
        """Retention every hour; with a share group, gap scans of reports other instances stored."""
        assert self.store is not None and self.ingest is not None
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= next_prune:
                try:
                    deleted = await asyncio.to_thread(self.store.prune, self.cfg.storage.retention_days)
                    if any(deleted.values()):
                        log.info("retention (%d days): deleted %s", self.cfg.storage.retention_days, deleted)
                except Exception:
                    log.exception("retention pruning failed")
                next_prune = loop.time() + RETENTION_INTERVAL_S
            if self.cfg.mqtt.share_group:
                try:
                    await self.ingest.rescan()
                except Exception:
                    log.exception("gap scan failed")
            await asyncio.sleep(SETTLE_SHARED_S if self.cfg.mqtt.share_group else RETENTION_INTERVAL_S)

    async def stop(self) -> None:
        if self.context is not None:
            self.context.stopping.set()  # SSE streams end, so the server can
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._socket is not None:
            self._socket.close()
        if self.ingest is not None:
            await self.ingest.stop()
        if self.store is not None:
            self.store.close()


async def run_service(cfg: CountyConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    service = CountyService(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    print(f"county {cfg.county.id}: API on {service.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()
