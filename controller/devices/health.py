"""Device and gateway health: state codes, faults with reasons, line checks, periodic reports.

The county must see within seconds that a horn has an open speaker line or a terminal lost
mains power, so every change is an event on the bus (the MQTT outbox listens there):

``device.fault``      a fault was raised (code, zone, reason in English and Chinese, values)
``device.recovered``  it cleared
``device.state``      a device's state code, online flag or set of active faults changed — this
                      module is the only publisher of ``device.state`` and the only writer of the
                      registry (controller/devices/registry.py keeps the data)
``gateway.health``    a snapshot of the gateway every ``health.report_interval_s``

State codes (GD/J 083 practice), judged in this order:

* **3 fault** — any active fault. Faults a device showed stay active while it is offline (last
  known; nothing can clear them without an answer).
* **2 off** — not online: no good answer for ``health.offline_after_s`` (heartbeat rule, time
  since the last good answer, not the poller's failure count), or never answered since start.
* **5 broadcasting** — a terminal's amplifier is powered (status bit ``amp_on``; the gateway
  powers amplifiers only for broadcasts, and a terminal relaying FM by itself also counts), or
  the FM transmitter's carrier is on. Amplifier power rather than "audio present", so the state
  does not flap in the gaps of a repeated message.
* **4 fault recovered** — for ``health.fault_recovered_hold_s`` after the last fault cleared,
  so a county screen refreshing once a minute still sees that something happened.
* **1 normal** — otherwise. ``None`` ("unknown") until the first answer or ``offline_after_s``.

Where faults come from, each source replacing only its own faults when it reports:

* status polls (every poll result, so a fault is raised in the poll cycle that first reads it):
  amplifier fault, over-temperature, mains lost / on battery, low battery, tamper;
* speaker-line checks: open, short, impedance deviation per zone against
  ``commissioned_impedance_ohm``. Only checks this monitor ran are judged — a terminal's
  impedance registers after a reboot may hold anything. Checks run every
  ``health.line_check_interval_s`` per terminal, spread over the interval, at poll priority (a
  broadcast's frames always go first) and never on a terminal that is broadcasting or offline or
  while the engine has a broadcast on air; :meth:`HealthMonitor.run_line_check` runs one now;
* the line: ``line_down`` as soon as a poll finds the serial port gone or the endpoint refused;
* release: ``release_pending`` while a broadcast has ended but the device could not yet be put
  back to its prior state (controller/broadcast/release.py retries until it is; :meth:`set_release_pending`);
* the FM transmitter: every alarm bit, and high VSWR also from the measured ratio. This monitor
  is the one poller of FM status (every ``health.fm_poll_interval_s``, and at once on an
  unsolicited ``+ALARM``); it keeps the registry's view of the transmitter up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from controller.broadcast.ports import BroadcastView
from controller.config import Config, Device
from controller.core.events import DeviceFault, DeviceRecovered, DeviceState, EventBus, GatewayHealth
from controller.core.lifecycle import cancel_and_wait
from controller.devices.fault_rules import (
    Fault,
    check_zones,
    finite,
    fm_faults,
    gateway_faults,
    line_down_fault,
    release_pending_fault,
    terminal_faults,
)
from controller.devices.gateway_stats import ProcessSampler, line_counters
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from drivers.errors import DriverError, LineDownError
from drivers.fm_transmitter import FmAlarm, FmStatus
from drivers.line_arbiter import Priority
from drivers.line_poller import PollResult
from drivers.modbus_terminal import FailureKind, LineImpedance, ModbusTerminal

log = logging.getLogger(__name__)

LINE_CHECK_POLL_S = 0.5
"""A running line check is first asked whether it finished after the profile's
``line_check_duration_s`` (ebt-1: 1.5 s), then every 0.5 s: each question is a transaction on a
shared line, so none are spent before the answer can be yes."""
LINE_BIT_RECHECK_S = 30.0
"""Shortest time between two checks a terminal's own line-fault bit asks for (see on_poll)."""
CLOCK_SLACK_S = 0.01
"""The state clock wakes this long after the moment a device's state changes by time alone."""
CLOCK_MAX_SLEEP_S = 60.0
"""Longest sleep of the state clock (a safety net: it is woken whenever a closer moment appears)."""


class TerminalState(IntEnum):
    NORMAL = 1
    OFF = 2
    FAULT = 3
    FAULT_RECOVERED = 4
    BROADCASTING = 5


STATE_NAMES_ZH = {TerminalState.NORMAL: "正常", TerminalState.OFF: "关机/离线", TerminalState.FAULT: "故障",
                  TerminalState.FAULT_RECOVERED: "故障恢复", TerminalState.BROADCASTING: "播出中"}


def _state_names(state: TerminalState | None) -> tuple[int | None, str, str]:
    """Code, name and Chinese name of a state (None: not judged yet)."""
    if state is None:
        return None, "unknown", "未知"
    return int(state), state.name.lower(), STATE_NAMES_ZH[state]


@dataclass
class _Active:
    fault: Fault
    source: str
    since: float
    """Wall-clock time it was raised."""

    def as_dict(self) -> dict[str, Any]:
        return {**self.fault.as_dict(), "since": self.since}


@dataclass
class _Device:
    cfg: Device
    kind: str
    """``terminal``, ``fm_transmitter`` or ``gateway``."""
    last_good: float | None = None
    """Monotonic time of the last good answer."""
    last_seen: float | None = None
    """Wall-clock time of the last good answer."""
    online: bool | None = None
    broadcasting: bool = False
    faults: dict[str, _Active] = field(default_factory=dict)
    recovered_at: float | None = None
    state: TerminalState | None = None
    published: tuple[TerminalState | None, bool | None, frozenset[str]] = (None, None, frozenset())
    last_check: dict[str, Any] | None = None
    last_check_at: float | None = None
    """Monotonic time the last line check of this monitor ended."""


class HealthMonitor:
    """Health of every device and of the gateway; see the module doc for the rules.

    Wiring (controller/app/daemon.py): call :meth:`on_poll` for every poll result (it also records
    it in the registry) and :meth:`on_fm_alarm` for every unsolicited FM alarm; ``await start()``
    after the hardware has started and ``await stop()`` before it stops. ``clock`` (monotonic
    seconds) is for tests.
    """

    def __init__(self, cfg: Config, bus: EventBus, hardware: Hardware, registry: DeviceRegistry, *,
                 engine: BroadcastView | None = None, outbox_depth: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.settings = cfg.health
        self.bus = bus
        self.hardware = hardware
        self.registry = registry
        self.engine = engine
        self.outbox_depth = outbox_depth
        self._clock = clock
        self._started = clock()
        self._devices: dict[str, _Device] = {}
        for dev in cfg.devices:
            kind = "terminal" if dev.id in hardware.terminals else "fm_transmitter"
            self._devices[dev.id] = _Device(dev, kind)
        gw = cfg.gateway
        self._gateway = _Device(Device(id=gw.id, name=gw.name, area_code=gw.area_code, location=gw.location,
                                       line="", profile=""), "gateway")
        self._check_locks = {dev_id: asyncio.Lock() for dev_id in hardware.terminals}
        self._fm_busy: set[str] = set()
        self._sampler = ProcessSampler(cfg.state_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._wake_at = math.inf
        """When the state clock next re-judges (the earliest moment time alone changes a state)."""
        self._clock_moved: asyncio.Event | None = None

    # ------------------------------------------------------------------ inputs

    def on_poll(self, result: PollResult) -> None:
        """Judge one terminal poll: status faults now, line down at once, state and online. The
        registry's live view is written first, here, so device state has this one writer."""
        dev = self._devices.get(result.device_id)
        if dev is None:
            return
        self.registry.on_poll(result)
        snap, now = result.snapshot, self._clock()
        if snap.online:
            dev.last_good, dev.last_seen = now, snap.timestamp
            dev.broadcasting = bool(snap.values.get("amp_on"))
            self._set_faults(dev, "status", terminal_faults(snap.values, self.settings), now)
            self._set_faults(dev, "link", [], now)
            self._recheck_if_bit_disagrees(dev, bool(snap.values.get("line_fault")), now)
        elif snap.failure is FailureKind.LINE_DOWN:
            self._set_faults(dev, "link", [line_down_fault(dev.cfg.line, snap.error)], now)
        self._update(dev, now)

    def _recheck_if_bit_disagrees(self, dev: _Device, bit: bool, now: float) -> None:
        """A terminal that supervises its lines itself may flag (or clear) a line fault between our
        checks: when its status bit disagrees with our last verdict, check that terminal soon."""
        ours = any(a.source == "line_check" for a in dev.faults.values())
        recent = dev.last_check_at is not None and now - dev.last_check_at < LINE_BIT_RECHECK_S
        if bit != ours and not recent and self._tasks and not self._check_locks[dev.cfg.id].locked() \
                and self._why_not_check(dev.cfg.id) is None:
            dev.last_check_at = now  # one request per window, even if this check fails
            self._spawn(self._check_terminal(dev.cfg.id))

    def on_fm_alarm(self, device_id: str, alarm: FmAlarm) -> None:
        """An unsolicited ``+ALARM``: query the full status now (VSWR and power with the bits)."""
        if device_id in self._devices and device_id in self.hardware.transmitters:
            log.info("FM transmitter %s alarm bits %d: %s", device_id, alarm.bits,
                     ", ".join(alarm.names) or "cleared")
            self._spawn(self._poll_fm(device_id, alarm))

    def on_fm_status(self, device_id: str, status: FmStatus | None, error: Exception | None = None) -> None:
        """One FM status query: its measurements, or the error that stopped it."""
        dev = self._devices[device_id]
        now, wall = self._clock(), time.time()
        if status is not None:
            dev.last_good, dev.last_seen = now, wall
            dev.broadcasting = status.forward_w > 0
            self._set_faults(dev, "fm", fm_faults(status.alarm.names, status, self.settings.fm_vswr_max), now)
            self._set_faults(dev, "link", [], now)
            self.registry.record(device_id, online=True, timestamp=wall, failure=None, values={
                "forward_w": status.forward_w, "reflected_w": status.reflected_w, "vswr": finite(status.vswr),
                "temperature_c": status.temperature_c, "alarm_bits": status.alarm.bits,
                "alarms": list(status.alarm.names)})
        else:
            if isinstance(error, LineDownError):
                self._set_faults(dev, "link", [line_down_fault(dev.cfg.line, str(error))], now)
            self.registry.record(device_id, online=False, timestamp=wall, values=None, failure=str(error))
        self._update(dev, now)

    def set_release_pending(self, device_id: str, reason: str | None,
                            broadcast_ids: Iterable[str] = ()) -> None:
        """A device could not be put back after its broadcast (``reason``), or now is (None): shown
        as a ``release_pending`` fault until then (controller/broadcast/release.py keeps retrying)."""
        dev = self._devices.get(device_id)
        if dev is None:
            return
        now = self._clock()
        faults = [] if reason is None else [release_pending_fault(reason, broadcast_ids)]
        self._set_faults(dev, "release", faults, now)
        self._update(dev, now)

    def refresh(self) -> None:
        """Re-judge what time alone changes: offline after silence, the end of 'fault recovered'."""
        now = self._clock()
        for dev in self._devices.values():
            self._update(dev, now)

    # ------------------------------------------------------------------ faults and state

    def _set_faults(self, dev: _Device, source: str, faults: Iterable[Fault], now: float) -> None:
        """Replace the faults ``source`` reports for ``dev``; publish each raise and each clear."""
        new = {f.key: f for f in faults}
        had_faults = bool(dev.faults)
        for key, active in list(dev.faults.items()):
            if active.source == source and key not in new:
                del dev.faults[key]
                self._publish_fault(dev, active, cleared=True)
        wall = time.time()
        for key, fault in new.items():
            active = dev.faults.get(key)
            if active is None:
                dev.faults[key] = active = _Active(fault, source, wall)
                log.warning("%s fault: %s", dev.cfg.id, fault.reason)
                self._publish_fault(dev, active, cleared=False)
            else:
                active.fault = fault  # same fault, fresh values (battery volts, temperature)
        if had_faults and not dev.faults:
            dev.recovered_at = now

    def _publish_fault(self, dev: _Device, active: _Active, *, cleared: bool) -> None:
        f = active.fault
        who = {"device_id": dev.cfg.id, "device_kind": dev.kind, "name": dev.cfg.name,
               "village": dev.cfg.village, "fault": f.code, "zone": f.zone, "values": dict(f.values),
               "since": active.since}
        if cleared:
            log.info("%s recovered: %s", dev.cfg.id, f.reason)
            self.bus.publish(DeviceRecovered(**who, reason=f"recovered: {f.reason}",
                                             reason_zh=f"已恢复：{f.reason_zh}",
                                             duration_s=round(time.time() - active.since, 1)))
        else:
            self.bus.publish(DeviceFault(**who, reason=f.reason, reason_zh=f.reason_zh))

    def _online(self, dev: _Device, now: float) -> bool | None:
        if dev.last_good is not None:
            return now - dev.last_good <= self.settings.offline_after_s
        return False if now - self._started > self.settings.offline_after_s else None

    def _judge(self, dev: _Device, now: float) -> TerminalState | None:
        if dev.faults:
            return TerminalState.FAULT
        if not dev.online:
            return None if dev.online is None else TerminalState.OFF
        if dev.broadcasting:
            return TerminalState.BROADCASTING
        if dev.recovered_at is not None and now - dev.recovered_at < self.settings.fault_recovered_hold_s:
            return TerminalState.FAULT_RECOVERED
        return TerminalState.NORMAL

    def _update(self, dev: _Device, now: float) -> None:
        """Recompute online and state; mirror into the registry; publish device.state on change."""
        dev.online = self._online(dev, now)
        dev.state = self._judge(dev, now)
        due = self._time_change(dev, now)
        if due < self._wake_at:  # the state clock must wake sooner than it planned
            self._wake_at = due
            if self._clock_moved is not None:
                self._clock_moved.set()
        current = (dev.state, dev.online, frozenset(dev.faults))
        if current == dev.published:
            return
        before, dev.published = dev.published, current
        view = self.registry.devices.get(dev.cfg.id)
        faults = [a.as_dict() for a in dev.faults.values()]
        if view is not None:
            view.state = None if dev.state is None else int(dev.state)
            view.state_name = None if dev.state is None else dev.state.name.lower()
            view.faults = faults
        code, name, name_zh = _state_names(dev.state)
        previous = before[0]
        self.bus.publish(DeviceState(
            device_id=dev.cfg.id, device_kind=dev.kind, state=code, state_name=name, state_name_zh=name_zh,
            online=dev.online, last_seen=dev.last_seen, broadcasting=dev.broadcasting, faults=tuple(faults),
            previous_state=None if previous is None else int(previous), previous_online=before[1],
            card=view.card() if view is not None else None))

    def _time_change(self, dev: _Device, now: float) -> float:
        """The next moment time alone changes ``dev``'s judgement (inf: none): it goes offline
        ``offline_after_s`` after its last good answer (or after start, never heard of), and
        "fault recovered" ends ``fault_recovered_hold_s`` after its last fault cleared."""
        due = math.inf
        limit = self.settings.offline_after_s
        if dev.last_good is not None:
            if now - dev.last_good <= limit:
                due = dev.last_good + limit
        elif now - self._started <= limit:
            due = self._started + limit
        hold = self.settings.fault_recovered_hold_s
        if dev.recovered_at is not None and now - dev.recovered_at < hold:
            due = min(due, dev.recovered_at + hold)
        return due

    def _state_fields(self, dev: _Device) -> dict[str, Any]:
        code, name, name_zh = _state_names(dev.state)
        return {"device": dev.cfg.id, "kind": dev.kind, "state": code, "state_name": name,
                "state_name_zh": name_zh, "online": dev.online, "last_seen": dev.last_seen,
                "broadcasting": dev.broadcasting}

    # ------------------------------------------------------------------ queries

    def device_health(self, device_id: str) -> dict[str, Any]:
        """State code, online, active faults with reasons, last seen and the last line check.

        Raises KeyError for an unknown device.
        """
        dev = self._devices[device_id]
        now = self._clock()
        return {**self._state_fields(dev), "name": dev.cfg.name, "village": dev.cfg.village,
                "silent_s": None if dev.last_good is None else round(now - dev.last_good, 1),
                "faults": [a.as_dict() for a in dev.faults.values()],
                "recovered_s_ago": None if dev.recovered_at is None else round(now - dev.recovered_at, 1),
                "last_line_check": dev.last_check}

    def snapshot(self) -> dict[str, Any]:
        """Gateway health: uptime, CPU, memory, disk, load, engine queue, lines, device summary."""
        sample = self._sampler.sample()
        devices = list(self._devices.values())
        by_state: dict[str, int] = {}
        for d in devices:
            name = "unknown" if d.state is None else d.state.name.lower()
            by_state[name] = by_state.get(name, 0) + 1
        engine = None
        if self.engine is not None:
            queue = self.engine.queue_snapshot()
            engine = {"current": self.engine.current(),
                      "queue_depth": sum(1 for e in queue if e.get("state") == "waiting")}
        outbox = None
        if self.outbox_depth is not None:
            try:
                outbox = self.outbox_depth()
            except Exception:
                log.exception("outbox depth callable failed")
        return {"gateway": self.cfg.gateway.id, "ts": time.time(), **sample, "engine": engine,
                "outbox_depth": outbox, "lines": line_counters(self.hardware),
                "devices": {"total": len(devices), "online": sum(1 for d in devices if d.online),
                            "with_faults": sum(1 for d in devices if d.faults), "by_state": by_state},
                "faults": [a.as_dict() for a in self._gateway.faults.values()]}

    def check_gateway(self) -> None:
        """Raise or clear the gateway's own faults (disk nearly full, state dir not writable)."""
        free_mb, writable = self._sampler.disk()
        faults = gateway_faults(free_mb, str(self._sampler.state_dir), writable, self.settings)
        self._set_faults(self._gateway, "gateway", faults, self._clock())

    # ------------------------------------------------------------------ line checks

    async def run_line_check(self, device_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Check speaker lines now (the county's "line check" command); all terminals if None.

        Returns per device ``{device, ok, zones: [{zone, state, measured_ohm, commissioned_ohm,
        deviation_pct, verdict}], faults, checked_at}``, or ``{device, ok: False, error}`` /
        ``{device, ok: False, skipped}`` for unknown, offline or broadcasting devices. Faults found
        are raised (and cleared) exactly as by the periodic checks.
        """
        ids = list(self.hardware.terminals) if device_ids is None else list(dict.fromkeys(device_ids))
        results: dict[str, dict[str, Any]] = {}
        jobs: dict[str, asyncio.Task[dict[str, Any]]] = {}
        for dev_id in ids:
            if dev_id not in self._devices:
                results[dev_id] = {"device": dev_id, "ok": False, "error": "no such device"}
            elif dev_id not in self.hardware.terminals:
                results[dev_id] = {"device": dev_id, "ok": False, "error": "no speaker lines"}
            elif (why := self._why_not_check(dev_id)) is not None:
                results[dev_id] = {"device": dev_id, "ok": False, "skipped": why}
            else:
                jobs[dev_id] = asyncio.create_task(self._check_terminal(dev_id), name=f"line check {dev_id}")
        if jobs:
            await asyncio.wait(jobs.values())
        results.update({dev_id: task.result() for dev_id, task in jobs.items()})
        return {dev_id: results[dev_id] for dev_id in ids}

    def _why_not_check(self, dev_id: str) -> str | None:
        dev, view = self._devices[dev_id], self.registry.devices.get(dev_id)
        if not dev.online or (view is not None and view.online is False):
            return "offline"
        if dev.broadcasting:
            return "broadcasting"
        return None

    async def _check_terminal(self, dev_id: str) -> dict[str, Any]:
        """One terminal's line check at poll priority; its zone faults replace the previous ones."""
        term = self.hardware.terminals[dev_id]
        dev = self._devices[dev_id]
        try:
            async with self._check_locks[dev_id]:
                measured = await _measure_lines(term, self.settings.line_check_timeout_s)
        except (DriverError, TimeoutError) as exc:
            log.info("line check of %s failed: %s", dev_id, exc)
            return {"device": dev_id, "ok": False, "error": str(exc) or type(exc).__name__}
        checks = check_zones(measured, dev.cfg.zones, dev.cfg.commissioned_impedance_ohm,
                             self.settings.impedance_tolerance)
        faults = [f for f in (c.fault() for c in checks) if f is not None]
        now = self._clock()
        dev.last_check_at = now
        self._set_faults(dev, "line_check", faults, now)
        self._update(dev, now)
        dev.last_check = {"device": dev_id, "ok": not faults, "checked_at": time.time(),
                          "zones": [c.as_dict() for c in checks], "faults": [f.as_dict() for f in faults]}
        return dev.last_check

    # ------------------------------------------------------------------ background duties

    async def start(self) -> None:
        """Start the background duties: state clock, FM polling, line checks, reports."""
        if self._tasks:
            return
        self._started = self._clock()  # devices unheard of go "off" offline_after_s from here
        duties: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("health clock", self._state_clock()),
            ("health report", self._every(self.settings.report_interval_s, self._report, at_once=False)),
        ]
        if self.hardware.transmitters:
            duties.append(("fm status", self._fm_loop()))
        if self.hardware.terminals and self.settings.line_check_interval_s > 0:
            duties.append(("line checks", self._line_check_loop()))
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in duties]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, *self._spawned)
        self._tasks = []
        self._spawned.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    @staticmethod
    async def _every(interval_s: float, duty: Callable[[], None], *, at_once: bool = True) -> None:
        if not at_once:
            await asyncio.sleep(interval_s)
        while True:
            try:
                duty()
            except Exception:  # a bug in one judgement must not stop health supervision
                log.exception("health duty %r failed", duty)
            await asyncio.sleep(interval_s)

    async def _state_clock(self) -> None:
        """Re-judge every device when time alone changes a state — a device falls silent for
        ``offline_after_s``, "fault recovered" runs out — rather than on a fixed tick: an idle
        gateway whose terminals all answer wakes for this only every ``offline_after_s`` or so."""
        self._clock_moved = moved = asyncio.Event()
        try:
            while True:
                self._wake_at = math.inf
                try:
                    self.refresh()  # every _update lowers _wake_at to its device's next change
                except Exception:  # a bug in one judgement must not stop health supervision
                    log.exception("health state clock failed")
                moved.clear()
                sleep_s = min(self._wake_at - self._clock(), CLOCK_MAX_SLEEP_S)
                # not asyncio.wait_for: on Python 3.11 it can swallow a cancel that arrives as
                # ``moved`` is set, and this loop would then outlive stop() (seen in CI)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(sleep_s, 0.0) + CLOCK_SLACK_S):
                        await moved.wait()
        finally:
            self._clock_moved = None

    def _report(self) -> None:
        self.check_gateway()
        self.bus.publish(GatewayHealth(snapshot=self.snapshot()))

    async def _fm_loop(self) -> None:
        while True:
            for fm_id in self.hardware.transmitters:
                await self._poll_fm(fm_id)
            await asyncio.sleep(self.settings.fm_poll_interval_s)

    async def _poll_fm(self, fm_id: str, alarm: FmAlarm | None = None) -> None:
        """Query one transmitter's status (one query at a time per transmitter)."""
        if fm_id in self._fm_busy:
            return
        self._fm_busy.add(fm_id)
        try:
            status = await self.hardware.transmitters[fm_id].status()
        except DriverError as exc:
            self.on_fm_status(fm_id, None, exc)
            if alarm is not None:  # the bits alone, when the status cannot be read
                now = self._clock()
                self._set_faults(self._devices[fm_id], "fm", fm_faults(alarm.names, None,
                                                                      self.settings.fm_vswr_max), now)
                self._update(self._devices[fm_id], now)
        else:
            self.on_fm_status(fm_id, status)
        finally:
            self._fm_busy.discard(fm_id)

    async def _line_check_loop(self) -> None:
        """Each terminal once per interval, evenly spread, so checks never bunch up on a line."""
        ids = list(self.hardware.terminals)
        slot = self.settings.line_check_interval_s / len(ids)
        while True:
            for dev_id in ids:
                await asyncio.sleep(slot)
                if self.engine is not None and self.engine.current() is not None:
                    continue  # a broadcast is being activated or on air: leave the lines to it
                if self._why_not_check(dev_id) is None and not self._check_locks[dev_id].locked():
                    self._spawn(self._check_terminal(dev_id))


async def _measure_lines(term: ModbusTerminal, timeout_s: float) -> dict[int, LineImpedance]:
    """Start a check and read the impedances once done — every frame at poll priority.

    (``ModbusTerminal.run_line_check`` sends its start at command priority; supervision must
    never compete with a broadcast's commands.)
    """
    await term.start_line_check(Priority.POLL)
    deadline = time.monotonic() + timeout_s
    wait = term.profile.line_check_duration_s
    while True:
        await asyncio.sleep(wait)
        wait = LINE_CHECK_POLL_S
        if not (await term.read_points(["line_check"], Priority.POLL))["line_check"]:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{term.device_id}: line check did not finish within {timeout_s:g} s")
    return await term.read_line_impedance(Priority.POLL)
