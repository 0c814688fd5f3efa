"""Live state of every device: the latest poll of each terminal, as the API and engine see it.

The registry only keeps data; it publishes nothing. It has one writer, controller/devices/health.py
(poll results, FM status, state codes and faults), which also owns ``device.state`` events, so a
device's view and what the county is told cannot disagree; everyone else only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.config import Config
from controller.core.events import DeviceCard, EventBus
from drivers.line_poller import PollResult


@dataclass
class DeviceView:
    id: str
    name: str
    village: str
    area_code: str
    line: str
    kind: str
    """``terminal`` or ``fm_transmitter``."""
    online: bool | None = None
    """Answers its polls (the line poller's rule: offline after N failed polls in a row, fast, so the
    engine skips dead terminals). None until the first poll. The county's heartbeat rule (offline
    after ``health.offline_after_s`` without a good answer) is the ``online`` of device.state events."""
    last_seen: float | None = None
    """Wall-clock time of the last good answer."""
    failure: str | None = None
    values: dict[str, Any] | None = None
    state: int | None = None
    """Terminal state code from HealthMonitor (1 normal, 2 off, 3 fault, 4 recovered, 5 broadcasting)."""
    state_name: str | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    """Active faults with reasons, from HealthMonitor."""
    location: dict[str, float] | None = None
    """``{"lat", "lon"}`` from the config, so the console can place the device on a map."""
    zones: list[int] = field(default_factory=list)
    """Speaker zones wired at a terminal (targets by zone); empty for the FM transmitter."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "village": self.village, "area_code": self.area_code,
                "line": self.line, "kind": self.kind, "online": self.online, "last_seen": self.last_seen,
                "failure": self.failure, "values": self.values, "state": self.state,
                "state_name": self.state_name, "faults": self.faults, "location": self.location,
                "zones": list(self.zones)}

    def card(self) -> DeviceCard:
        """A copy for a ``device.state`` event: the view goes on changing after it is published."""
        return DeviceCard(self.name, self.village, self.area_code, self.line, self.failure,
                          None if self.values is None else dict(self.values),
                          None if self.location is None else dict(self.location), tuple(self.zones))


class DeviceRegistry:
    """Keeps the newest poll result per device; written by HealthMonitor (which announces changes)."""

    def __init__(self, cfg: Config, bus: EventBus | None = None) -> None:
        """``bus`` is unused (kept for existing callers): HealthMonitor publishes device.state."""
        del bus
        self.devices: dict[str, DeviceView] = {}
        for dev in cfg.devices:
            kind = "terminal" if cfg.profiles[dev.profile].type == "modbus-terminal" else "fm_transmitter"
            self.devices[dev.id] = DeviceView(
                dev.id, dev.name, dev.village, dev.area_code, dev.line, kind,
                location={"lat": dev.location.lat, "lon": dev.location.lon},
                zones=list(dev.zones) if kind == "terminal" else [])

    def on_poll(self, result: PollResult) -> None:
        snap = result.snapshot
        failure = None if snap.online else (f"{snap.failure}: {snap.error}" if snap.failure else snap.error)
        self.record(result.device_id, online=result.online, timestamp=snap.timestamp,
                    values=dict(snap.values) if snap.online else None, failure=failure)

    def record(self, device_id: str, *, online: bool, timestamp: float, values: dict[str, Any] | None,
               failure: str | None) -> None:
        """One reading of a device: ``values`` when it answered, else ``failure`` says why not."""
        view = self.devices[device_id]
        view.online = online
        if values is not None:
            view.last_seen, view.values, view.failure = timestamp, values, None
        else:
            view.failure = failure
