"""``ebc run``: one process wiring config → bus → devices → hardware → speech/audio → engine →
scheduler → API, with a clean shutdown and the systemd notify protocol. With an ``mqtt`` section
also outbox → MQTT reporter → county commands (docs/mqtt.md). CAP alerts (docs/alerts.md): the
inbox starts after the engine it submits to, then the feed pollers and the county's alert topics
feed it; they stop before it, and it before the engine.

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
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from controller.alerts.feeds import Feeds
from controller.alerts.inbox import AlertService
from controller.api.app import ApiServices, create_app
from controller.api.http_protocol import http_protocol
from controller.app.sd_notify import Notifier
from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.release import Releaser
from controller.broadcast.scheduler import Scheduler
from controller.config import Config
from controller.core.actors import Actor
from controller.core.events import EventBus
from controller.devices.hardware import Hardware
from controller.devices.health import HealthMonitor
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import CACHE_SUBDIR, SpeechService
from controller.storage.journal import Store, StoreError
from controller.uplink.commands import CountyCommands
from controller.uplink.mqtt import MqttReporter
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


class Daemon:
    """The whole gateway in one asyncio loop; ``await run()`` until :meth:`request_stop`."""

    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.notifier = notifier or Notifier()
        self.bus = EventBus()
        self.registry = DeviceRegistry(cfg, self.bus)
        self.store = Store.in_state_dir(self.state_dir)
        # The outbox listens on the bus from here on, before anything can publish an event.
        self.outbox: Outbox | None = None
        self.reporter: MqttReporter | None = None
        self.county: CountyCommands | None = None
        if cfg.mqtt is not None:
            self.outbox = Outbox.in_state_dir(self.state_dir, OutboxLimits(
                max_rows=cfg.mqtt.outbox_max_rows, max_droppable_rows=cfg.mqtt.outbox_max_health_rows))
        self.hardware = Hardware.from_config(cfg, on_poll=self._on_poll, on_fm_alarm=self._on_fm_alarm)
        self.health = HealthMonitor(cfg, self.bus, self.hardware, self.registry)
        self.releaser = Releaser(self.hardware, self.store, on_pending=self.health.set_release_pending,
                                 on_note=self.store.add_note)
        if self.outbox is not None:
            outbox = self.outbox
            self.health.set_outbox_depth(lambda: outbox.depth)
            self.reporter = MqttReporter(cfg, self.bus, outbox, self.registry, health=self.health.snapshot)
        self.speech: SpeechService | None = None
        self.player: AudioPlayer | None = None
        self.engine: BroadcastEngine | None = None
        self.scheduler: Scheduler | None = None
        self.alerts: AlertService | None = None
        self.feeds: Feeds | None = None
        self._alert_tasks: set[asyncio.Task[None]] = set()
        """CAP documents from MQTT being ingested (the reporter's hook must not block)."""
        self.services: ApiServices | None = None
        self._server: _Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up; returns once the API listens (READY=1 has been sent)."""
        cfg = self.cfg
        sock = _listen(cfg.api.host, cfg.api.port)  # first: a busy port fails before any device is touched
        try:
            await self._start_parts()
        except BaseException:
            sock.close()
            raise
        assert self.services is not None
        config = uvicorn.Config(create_app(self.services), log_config=None, access_log=True,
                                timeout_graceful_shutdown=5, lifespan="off",
                                http=http_protocol(cfg.api.header_timeout_s),  # JSON 400s, head timeout
                                timeout_keep_alive=cfg.api.keepalive_timeout_s)  # type: ignore[arg-type]
        self._server = _Server(config)
        serving = asyncio.create_task(self._server.serve(sockets=[sock]), name="api")
        while not self._server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.02)
        self._tasks.append(serving)
        if self.notifier.watchdog_s:
            self._tasks.append(asyncio.create_task(self._watchdog(self.notifier.watchdog_s), name="watchdog"))
        log.info("ebc %s (%s) up: API on http://%s:%d, %d devices on %d lines", cfg.gateway.id,
                 cfg.gateway.name, cfg.api.host, cfg.api.port, len(cfg.devices), len(cfg.lines))
        self.notifier.ready(f"serving API on {cfg.api.host}:{cfg.api.port}")

    async def _start_parts(self) -> None:
        """MQTT reporter (connecting in the background), hardware, health, speech, audio, engine
        (which restores devices after a crash), alert inbox, county commands, scheduler, feeds."""
        cfg = self.cfg
        if self.reporter is not None:
            await self.reporter.start()  # connects in the background; the outbox holds reports meanwhile
        await self.hardware.start()
        await self.health.start()
        self.speech = SpeechService(self.state_dir / CACHE_SUBDIR, cfg.speech.rate_wpm, cfg.speech.max_chars)
        await self.speech.start()  # warm the worker now, not on the first emergency
        self.player = self._make_player()
        self.engine = BroadcastEngine(cfg, self.hardware, self.store, self.speech, self.player, self.bus,
                                      self.registry, releaser=self.releaser)
        self.health.set_engine(self.engine)
        await self.engine.start()
        self.alerts = AlertService(cfg, self.store, self.engine, self.bus)
        await self.alerts.start()  # decides what a crash left undecided; watches approval deadlines
        if self.reporter is not None:
            try:
                self.county = CountyCommands(cfg, self.store, self.engine, rebirth=self.reporter.rebirth,
                                             line_check=self.health.run_line_check,
                                             alerts=self._county_alert)
            except ValueError as exc:
                raise StartupError(str(exc)) from None
            self.reporter.commands = self.county
            self.reporter.on_alert_document = self._on_alert_document
        self.scheduler = Scheduler(cfg, self.store, self.engine)
        await self.scheduler.start()
        config_dir = cfg.path.parent if cfg.path is not None else Path.cwd()
        self.feeds = Feeds(cfg.alerts, config_dir, self._feed_ingest)
        await self.feeds.start()
        self.services = ApiServices(cfg=cfg, store=self.store, engine=self.engine, registry=self.registry,
                                    bus=self.bus, hardware=self.hardware, scheduler=self.scheduler,
                                    health=self.health, county=self.county, outbox=self.outbox,
                                    speech=self.speech, mqtt=self.reporter, alerts=self.alerts,
                                    feeds=self.feeds)

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
        """Stop taking requests, end the current broadcast safely, release devices, close lines."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping("shutting down")
        log.info("shutting down")
        if self.services is not None:
            self.services.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks:
            if task.get_name() != "api":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.feeds is not None:
            with contextlib.suppress(Exception):
                await self.feeds.stop()
        for task in list(self._alert_tasks):  # an interrupted ingest stays stored; decided on restart
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # The reporter goes after engine and health, so their last events still go out (or stay queued).
        parts = (("scheduler", self.scheduler), ("alert inbox", self.alerts), ("engine", self.engine),
                 ("releaser", self.releaser), ("health", self.health), ("mqtt reporter", self.reporter))
        for name, part in parts:
            if part is not None:
                try:
                    await part.stop()
                except Exception:
                    log.exception("stopping the %s failed", name)
        await self.hardware.stop()
        if self.speech is not None:
            with contextlib.suppress(Exception):
                await self.speech.stop()
        self.store.close()
        if self.outbox is not None:
            self.outbox.close()
        log.info("stopped")

    # -- CAP alerts from feeds, the county's topics and signed commands ----------------------------------

    async def _feed_ingest(self, document: bytes, source: str, source_level: str) -> dict[str, object]:
        """A feed poller's document; the actor is the feed (``feed:<id>``), its level the feed's."""
        assert self.alerts is not None
        return await self.alerts.ingest(document, source=source, source_level=source_level,
                                        actor=Actor(name=source.split(" ", 1)[0], via="cap"))

    async def _county_alert(self, document: bytes, actor: Actor, source_level: str) -> dict[str, object]:
        """The signed county ``alert`` command: the verified key is the actor."""
        assert self.alerts is not None
        return await self.alerts.ingest(document, source=f"county:{actor.name}", actor=actor,
                                        source_level=source_level)

    def _on_alert_document(self, payload: bytes, topic: str) -> None:
        """A CAP document on one of ``alerts.mqtt_topics``: ingested in a task (the hook must not block)."""
        task = asyncio.create_task(self._mqtt_alert(payload, topic), name=f"mqtt alert {topic[:48]}")
        self._alert_tasks.add(task)
        task.add_done_callback(self._alert_tasks.discard)

    async def _mqtt_alert(self, payload: bytes, topic: str) -> None:
        assert self.alerts is not None
        try:
            record = await self.alerts.ingest(payload, source=f"mqtt:{topic}", source_level="county",
                                              actor=Actor(name="county-mqtt", via="county"))
        except ValueError as exc:  # refused and audited by the inbox; nobody to answer on MQTT
            log.warning("CAP document on MQTT topic %r refused: %s", topic[:128], exc)
            return
        log.info("CAP document on MQTT topic %r: alert %s, %s", topic[:128], record["id"],
                 record["disposition"])

    # -- background duties ----------------------------------------------------------------------------

    async def _watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 at half the systemd interval, from the loop itself: a stuck loop stops it."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s / 2)

    def _on_poll(self, result: PollResult) -> None:
        """Every poll result: health records it in the registry, judges it (and publishes)."""
        self.health.on_poll(result)
        if result.online:
            self.releaser.wake(result.device_id)  # heard again: restore it now if it waits

    def _on_fm_alarm(self, device_id: str, alarm: FmAlarm) -> None:
        """An unsolicited FM alarm: an event at once; health queries the full status and raises faults."""
        self.bus.publish("device.alarm", device_id=device_id, bits=alarm.bits, alarms=list(alarm.names))
        self.health.on_fm_alarm(device_id, alarm)


async def run_daemon(cfg: Config) -> None:
    """``ebc run``: the daemon until SIGTERM or SIGINT, then a graceful stop."""
    try:
        daemon = Daemon(cfg)
    except (StoreError, OutboxError) as exc:
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
