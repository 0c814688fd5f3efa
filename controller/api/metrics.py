"""Prometheus ``/metrics``: what the gateway exposes and where each family comes from.

Families (every one with HELP and TYPE; formatting and label escaping by ``prometheus_client``):

* journal (controller/storage/journal.py): ``ebc_broadcasts{state}``, the histogram
  ``ebc_broadcast_duration_seconds{class}`` of on-air time (last start to end) of finished broadcasts
* device registry: ``ebc_devices{kind}``, ``ebc_devices_online{kind}``, ``ebc_device_up{device}``
* health monitor (controller/devices/health.py): ``ebc_device_state{device}`` (GD/J 083 state code,
  0 unknown),
  ``ebc_device_faults{device,fault}`` (active faults by code)
* line arbiters: ``ebc_line_{requests,timeouts,crc_errors,retries,failures,reconnects}_total{line}``,
  ``ebc_line_latency_avg_ms{line}``
* county commands (controller/uplink/commands.py): ``ebc_county_commands_total{command,result}``
* outbox (controller/uplink/outbox.py): ``ebc_outbox_depth``, ``ebc_outbox_dropped_{health,events}_total``
* ``ebc_uptime_seconds``

The sources are read when scraped, never copied: a scrape shows the state of that moment.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from controller.config import Config
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.storage.journal import Store

log = logging.getLogger(__name__)


class HealthApi(Protocol):
    """What /metrics reads from the health monitor (controller/devices/health.py: HealthMonitor)."""

    def device_health(self, device_id: str) -> dict[str, Any]: ...


class CountyCommandsApi(Protocol):
    """What /metrics reads from the county command handler (controller/uplink/commands.py: CountyCommands)."""

    def counts(self) -> Mapping[tuple[str, str], int]: ...


class OutboxApi(Protocol):
    """What /metrics reads from the durable outbox (controller/uplink/outbox.py: Outbox)."""

    @property
    def depth(self) -> int: ...


class MetricSources(Protocol):
    """Where the families come from (controller/api/deps.py's ApiServices has all of it)."""

    cfg: Config
    store: Store
    registry: DeviceRegistry
    hardware: Hardware | None
    health: HealthApi | None
    county: CountyCommandsApi | None
    outbox: OutboxApi | None
    started_at: float


DURATION_BUCKETS_S = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
"""Histogram bounds for broadcast on-air time: a chime and a sentence … an hour-long program."""

_LINE_COUNTERS = (("requests", "Transactions sent"), ("timeouts", "Attempts met with silence"),
                  ("crc_errors", "Garbled replies"), ("retries", "Retried attempts"),
                  ("failures", "Transactions given up"), ("reconnects", "Line reconnects"))


class _Scrape:
    """One /metrics answer: every family built from the live sources when collected.

    The optional sources (health monitor, county commands, outbox) may be absent or broken: their
    families are then left out and the failure logged, never a 500 for the whole scrape.
    """

    def __init__(self, services: MetricSources) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        yield from self._broadcasts()
        yield from self._devices()
        for source in (self._health, self._lines, self._county, self._outbox):
            try:
                yield from list(source())
            except Exception:
                log.exception("metrics: %s failed; its families are left out", source.__name__)
        yield GaugeMetricFamily("ebc_uptime_seconds", "Seconds since the daemon started",
                                value=round(time.time() - self.services.started_at, 1))

    def _broadcasts(self) -> Iterator[Metric]:
        store = self.services.store
        states = GaugeMetricFamily("ebc_broadcasts", "Broadcasts in the journal by state", labels=["state"])
        for state, n in store.broadcast_counts().items():
            states.add_metric([state.name.lower()], n)
        yield states
        durations = HistogramMetricFamily(
            "ebc_broadcast_duration_seconds",
            "On-air time of finished broadcasts (last start to end), from the journal", labels=["class"])
        for cls, (cumulative, count, total) in sorted(store.broadcast_durations(DURATION_BUCKETS_S).items()):
            buckets = [(floatToGoString(bound), n) for bound, n in zip(DURATION_BUCKETS_S, cumulative,
                                                                         strict=True)]
            durations.add_metric([cls], [*buckets, ("+Inf", count)], total)
        yield durations

    def _devices(self) -> Iterator[Metric]:
        views = list(self.services.registry.devices.values())
        kinds = sorted({v.kind for v in views})
        configured = GaugeMetricFamily("ebc_devices", "Configured devices by kind", labels=["kind"])
        online = GaugeMetricFamily("ebc_devices_online", "Devices answering their polls, by kind",
                                   labels=["kind"])
        for kind in kinds:
            configured.add_metric([kind], sum(1 for v in views if v.kind == kind))
            online.add_metric([kind], sum(1 for v in views if v.kind == kind and v.online))
        up = GaugeMetricFamily("ebc_device_up", "1 if the device answers, 0 if offline or not polled yet",
                               labels=["device"])
        for v in views:
            up.add_metric([v.id], 1 if v.online else 0)
        yield from (configured, online, up)

    def _health(self) -> Iterator[Metric]:
        health = self.services.health
        if health is None:
            return
        state = GaugeMetricFamily(
            "ebc_device_state", "Device state code: 1 normal, 2 off/offline, 3 fault, 4 fault recovered, "
                                "5 broadcasting, 0 unknown (not answered yet)", labels=["device"])
        faults = GaugeMetricFamily("ebc_device_faults", "Active faults of a device by fault code "
                                                        "(line faults count one per zone)",
                                   labels=["device", "fault"])
        for dev in self.services.cfg.devices:
            try:
                view = health.device_health(dev.id)
            except KeyError:
                continue
            state.add_metric([dev.id], view.get("state") or 0)
            codes = Counter(str(f.get("fault")) for f in view.get("faults") or ())
            for code, n in sorted(codes.items()):
                faults.add_metric([dev.id, code], n)
        yield from (state, faults)

    def _lines(self) -> Iterator[Metric]:
        if self.services.hardware is None:
            return
        arbiters = self.services.hardware.arbiters
        for attr, help_text in _LINE_COUNTERS:
            family = CounterMetricFamily(f"ebc_line_{attr}", f"{help_text}, per line", labels=["line"])
            for line_id, arbiter in arbiters.items():
                family.add_metric([line_id], getattr(arbiter.stats, attr))
            yield family
        latency = GaugeMetricFamily("ebc_line_latency_avg_ms", "Average transaction latency, per line",
                                    labels=["line"])
        for line_id, arbiter in arbiters.items():
            latency.add_metric([line_id], arbiter.stats.latency_avg_ms)
        yield latency

    def _county(self) -> Iterator[Metric]:
        county = self.services.county
        if county is None:
            return
        family = CounterMetricFamily("ebc_county_commands", "County commands handled since start, by "
                                                            "command and result (ok or the refusal code)",
                                     labels=["command", "result"])
        for (command, result), n in sorted(county.counts().items()):
            family.add_metric([command, result], n)
        yield family

    def _outbox(self) -> Iterator[Metric]:
        outbox = self.services.outbox
        if outbox is None:
            return
        yield GaugeMetricFamily("ebc_outbox_depth", "Events and outcomes written but not yet acknowledged "
                                                    "by the broker", value=outbox.depth)
        stats = getattr(outbox, "stats", None)
        if callable(stats):
            s = stats()
            yield CounterMetricFamily("ebc_outbox_dropped_health", "Periodic health snapshots dropped by "
                                                                   "the outbox bound since start",
                                      value=s.dropped_droppable)
            yield CounterMetricFamily("ebc_outbox_dropped_events", "Events and outcomes dropped on outbox "
                                                                   "overflow since start (each reported)",
                                      value=s.dropped_kept)


def exposition(services: MetricSources) -> str:
    """Prometheus text exposition of the gateway (HELP, TYPE and label escaping by prometheus_client)."""
    return generate_latest(_Scrape(services)).decode("utf-8")
