"""``ebc run``: one process wiring config → bus → devices → hardware → speech/audio → engine →
scheduler → API, with a clean shutdown and the systemd notify protocol. With an ``mqtt`` section
also outbox → MQTT reporter → county commands (docs/mqtt.md). CAP alerts (docs/alerts.md): the
inbox starts after the engine it submits to, then the feed pollers and the county's alert topics
feed it (controller/alerts/ingress.py); they stop before it, and it before the engine.

Start order is the dependency order; stop is the reverse: the API stops taking requests, the
scheduler stops firing, the engine ends the current broadcast safely and releases every terminal,
and only then are the lines closed. The engine journals before it touches hardware and restores
terminals after a kill -9 itself (``engine.start()``); the daemon only keeps the order right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import uvicorn

from controller.alerts.feeds import Feeds
from controller.alerts.inbox import AlertService
from controller.alerts.ingress import AlertIngress
from controller.api.app import ApiServices, create_app
from controller.api.http_protocol import http_protocol
from controller.app.sd_notify import Notifier
from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.program import store_uploaded_audio
from controller.broadcast.release import Releaser
from controller.broadcast.scheduler import Scheduler
from controller.config import Config
from controller.core.events import DeviceAlarm, EventBus
from controller.core.lifecycle import Service, cancel_and_wait
from controller.devices.hardware import Hardware
from controller.devices.health import HealthMonitor
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import CACHE_SUBDIR, SpeechService
from controller.storage.journal import Store, StoreError
from controller.uplink.commands import CountyCommands
from controller.uplink.mqtt import MqttReporter
from controller.uplink.national.service import ListenError, NationalPlatform
from controller.uplink.outbox import Outbox, OutboxError, OutboxLimits
from drivers.audio_output import AlsaSink, AudioPlayer, AudioSink, SimLineSink, WavSink
from drivers.fm_transmitter import FmAlarm
from drivers.line_poller import PollResult

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start as configured (busy port, ...); the message says what to fix."""


API_TICK_S = 1.0
"""How often the API server's main loop wakes by itself (uvicorn's own: 0.1 s)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the daemon decides when to stop) and without its
    10 Hz tick.

    uvicorn's main loop wakes every 0.1 s to see whether it should exit and, on every 10th tick,
    to refresh the ``Date`` header; on an idle gateway those ten wake-ups a second were the largest
    share of the CPU left once polling was cheap (bench/footprint.py, docs/benchmarks.md). Here it
    ticks once a second — each tick refreshes the header, so it stays exact to the second — and
    setting ``should_exit`` wakes it at once, so a stop is as prompt as with uvicorn's loop.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_requested = False
        self._wake: asyncio.Event | None = None
        super().__init__(config)

    @property
    def should_exit(self) -> bool:  # type: ignore[override]  # uvicorn's is a plain attribute
        return self._exit_requested

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_requested = value
        if value and self._wake is not None:
            self._wake.set()

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # uvicorn refreshes the Date header when counter % 10 == 0
            tick_s = API_TICK_S - asyncio.get_running_loop().time() % API_TICK_S  # with the lines' checks
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):  # not wait_for: 3.11's can lose a cancel
                    await self._wake.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """Bind the API socket ourselves so a busy port is a clear error, not uvicorn's sys.exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} for the API: {exc.strerror} "
                           f"(another ebc running? change api.port)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ApiServer:
    """The REST API and web console as a service. :meth:`listen` comes before any other part
    starts (a busy port fails before a device is touched); it serves from :meth:`start`."""

    def __init__(self, cfg: Config, services: ApiServices) -> None:
        self.cfg = cfg
        self.services = services
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def listen(self) -> None:
        self._sock = _listen(self.cfg.api.host, self.cfg.api.port)

    def close(self) -> None:
        """Give the socket back unless the server is still using it."""
        if self._sock is not None and (self._task is None or self._task.done()):
            self._sock.close()
            self._sock = None

    async def start(self) -> None:
        """Serve on the socket from :meth:`listen`; returns once the server has started."""
        assert self._sock is not None, "listen() first"
        api = self.cfg.api
        config = uvicorn.Config(create_app(self.services), log_config=None, access_log=True,
                                timeout_graceful_shutdown=5, lifespan="off",
                                http=http_protocol(api.header_timeout_s),  # JSON 400s, head timeout
                                timeout_keep_alive=api.keepalive_timeout_s)  # type: ignore[arg-type]
        self._server = _Server(config)
        self._task = serving = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="api")
        while not self._server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop taking requests; open event streams end, requests in flight get 5 s to finish."""
        self.services.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("the API server failed")
        self.close()


class _Watchdog:
    """WATCHDOG=1 at half the systemd interval, from the loop itself: a stuck loop stops it."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.notifier.watchdog_s:
            self._task = asyncio.create_task(self._run(self.notifier.watchdog_s), name="watchdog")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self, interval_s: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s / 2)


class Daemon:
    """The whole gateway in one asyncio loop; ``await run()`` until :meth:`request_stop`.

    Every part is built here, each with what it needs (no wiring after construction), and kept in
    :attr:`parts`, the one start order; :meth:`stop` goes through it in reverse.
    """

    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        """Raises StoreError, OutboxError or StartupError (config the parts cannot run with)."""
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.notifier = notifier or Notifier()
        self.bus = EventBus()
        self.registry = DeviceRegistry(cfg, self.bus)
        self.store = Store.in_state_dir(self.state_dir)
        self.outbox: Outbox | None = None
        try:
            if cfg.mqtt is not None:
                self.outbox = Outbox.in_state_dir(self.state_dir, OutboxLimits(
                    max_rows=cfg.mqtt.outbox_max_rows, max_droppable_rows=cfg.mqtt.outbox_max_health_rows))
            self.parts = self._build()
        except BaseException:
            self._close_storage()
            raise
        self._started: list[tuple[str, Service]] = []
        self._stop_requested = asyncio.Event()
        self._stopped = False

    def _build(self) -> list[tuple[str, Service]]:
        """Construct every part in dependency order; returns them in start order."""
        cfg, outbox = self.cfg, self.outbox
        self.hardware = Hardware.from_config(cfg, on_poll=self._on_poll, on_fm_alarm=self._on_fm_alarm)
        self.releaser = Releaser(self.hardware, self.store, on_pending=self._on_release_pending,
                                 on_note=self.store.add_note)
        self.speech = SpeechService(self.state_dir / CACHE_SUBDIR, cfg.speech.rate_wpm, cfg.speech.max_chars)
        self.player = self._make_player()
        self.engine = BroadcastEngine(cfg, self.hardware, self.store, self.speech, self.player, self.bus,
                                      self.registry, releaser=self.releaser)
        self.health = HealthMonitor(cfg, self.bus, self.hardware, self.registry, engine=self.engine,
                                    outbox_depth=None if outbox is None else (lambda: outbox.depth))
        self.alerts = AlertService(cfg, self.store, self.engine, self.bus)
        self.ingress = AlertIngress(self.alerts)
        self.county: CountyCommands | None = None
        self.reporter: MqttReporter | None = None
        if outbox is not None:
            try:
                self.county = CountyCommands(cfg, self.store, self.engine, rebirth=self._rebirth,
                                             line_check=self.health.run_line_check,
                                             alerts=self.ingress.from_county_command, wait_for_start=True)
            except ValueError as exc:
                raise StartupError(str(exc)) from None
            # The reporter listens on the bus from here on, before anything can publish an event.
            self.reporter = MqttReporter(cfg, self.bus, outbox, self.registry, health=self.health.snapshot,
                                         commands=self.county, on_alert_document=self.ingress.from_mqtt)
        self.national: NationalPlatform | None = None
        if cfg.national_platform is not None:
            try:
                self.national = NationalPlatform(cfg, journal=self.store, engine=self.engine,
                                                 registry=self.registry, bus=self.bus,
                                                 state_dir=self.state_dir,
                                                 store_audio=self._store_audio)
            except (OSError, ValueError) as exc:
                raise StartupError(f"national_platform: {exc}") from None
        self.scheduler = Scheduler(cfg, self.store, self.engine)
        config_dir = cfg.path.parent if cfg.path is not None else Path.cwd()
        self.feeds = Feeds(cfg.alerts, config_dir, self.ingress.from_feed)
        self.api_services = ApiServices(cfg=cfg, store=self.store, engine=self.engine, registry=self.registry,
                                        bus=self.bus, hardware=self.hardware, scheduler=self.scheduler,
                                        health=self.health, county=self.county, outbox=outbox,
                                        speech=self.speech, mqtt=self.reporter, alerts=self.alerts,
                                        feeds=self.feeds, national=self.national)
        self.api = ApiServer(cfg, self.api_services)
        # Start order is dependency order. The reporter comes first (it connects in the background;
        # the outbox holds reports meanwhile) so that it stops last and the final events of the
        # engine and health still go out. It subscribes and announces ``online`` only once the
        # county commands have started (after the engine, the inbox and the alert ingress), so a
        # command sent the moment the county sees ``online`` is executed, not refused.
        parts: list[tuple[str, Service | None]] = [
            ("mqtt reporter", self.reporter),
            ("hardware", self.hardware),
            ("health", self.health),
            ("speech", self.speech),  # warms the worker now, not on the first emergency
            ("engine", self.engine),  # restores devices a crash left on; starts and stops the releaser
            ("alert inbox", self.alerts),  # decides what a crash left undecided; approval deadlines
            ("alert ingress", self.ingress),
            ("county commands", self.county),
            ("national platform", self.national),  # after the engine it submits to; reports queue from now
            ("scheduler", self.scheduler),
            ("feeds", self.feeds),
            ("api", self.api),
            ("watchdog", _Watchdog(self.notifier)),
        ]
        return [(name, part) for name, part in parts if part is not None]

    def _make_player(self) -> AudioPlayer:
        out = self.cfg.audio_output
        sink: AudioSink
        if out.sink == "sim_line":
            sim = self.cfg.simulator
            port = out.port if out.port is not None else (sim.audio.port if sim else None)
            if port is None:  # config validation already insists on one
                raise StartupError("audio_output.port: no audio port for sink sim_line")
            sink = SimLineSink(out.host, port)
        elif out.sink == "alsa":
            sink = AlsaSink(out.alsa_device)
        else:
            sink = WavSink(out.wav_dir or self.state_dir / "wav-out")  # config check requires wav_dir
        return AudioPlayer(sink, out.time_scale)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up; returns once the API serves (READY=1 has been sent)."""
        cfg = self.cfg
        self.api.listen()  # first: a busy port fails before any device is touched
        if self.national is not None:
            try:
                self.national.listen()
            except ListenError as exc:
                self.api.close()
                raise StartupError(str(exc)) from None
        try:
            for name, part in self.parts:
                self._started.append((name, part))  # stopped even if its start fails half-way
                await part.start()
        except BaseException:
            self.api.close()
            raise
        log.info("ebc %s (%s) up: API on http://%s:%d, %d devices on %d lines", cfg.gateway.id,
                 cfg.gateway.name, cfg.api.host, cfg.api.port, len(cfg.devices), len(cfg.lines))
        self.notifier.ready(f"serving API on {cfg.api.host}:{cfg.api.port}")

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (signal handlers call this)."""
        self._stop_requested.set()

    async def run(self) -> None:
        """Start, serve until asked to stop, then stop cleanly (also if cancelled)."""
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await asyncio.shield(self.stop())

    async def stop(self) -> None:
        """Stop every started part in reverse start order — the API stops taking requests first, the
        engine ends the current broadcast safely and releases every terminal before the lines close
        — then close the journal and the outbox."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping("shutting down")
        log.info("shutting down")
        for name, part in reversed(self._started):
            try:
                await part.stop()
            except Exception:
                log.exception("stopping the %s failed", name)
        self._close_storage()
        log.info("stopped")

    def _store_audio(self, data: bytes) -> str:
        """A recording the national platform attached (WAV or MP3), kept like an uploaded clip."""
        return store_uploaded_audio(data, self.engine.audio_dir).audio_id

    def _close_storage(self) -> None:
        if getattr(self, "national", None) is not None:
            self.national.close()  # type: ignore[union-attr]
        self.store.close()
        if self.outbox is not None:
            self.outbox.close()

    # -- inputs the parts built earlier give to those built later ----------------------------------------

    def _on_poll(self, result: PollResult) -> None:
        """Every poll result: health records it in the registry, judges it (and publishes)."""
        self.health.on_poll(result)
        if result.online:
            self.releaser.wake(result.device_id)  # heard again: restore it now if it waits

    def _on_fm_alarm(self, device_id: str, alarm: FmAlarm) -> None:
        """An unsolicited FM alarm: an event at once; health queries the full status and raises faults."""
        self.bus.publish(DeviceAlarm(device_id=device_id, bits=alarm.bits, alarms=tuple(alarm.names)))
        self.health.on_fm_alarm(device_id, alarm)

    def _on_release_pending(self, device_id: str, reason: str | None,
                            broadcast_ids: Iterable[str] = ()) -> None:
        """The releaser (built before health, which looks at the engine that owns it) reports here."""
        self.health.set_release_pending(device_id, reason, broadcast_ids)

    async def _rebirth(self) -> None:
        """The county's ``rebirth`` command (the commands are built before the reporter they answer on)."""
        assert self.reporter is not None
        await self.reporter.rebirth()


async def run_daemon(cfg: Config) -> None:
    """``ebc run``: the daemon until SIGTERM or SIGINT, then a graceful stop."""
    try:
        daemon = Daemon(cfg)
    except (StoreError, OutboxError, StartupError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.run()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
