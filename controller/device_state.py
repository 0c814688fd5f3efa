"""Live state of every device: the latest poll of each terminal, as the API and engine see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.config import Config
from controller.events import EventBus
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
    """None until the first poll."""
    last_seen: float | None = None
    """Wall-clock time of the last good answer."""
    failure: str | None = None
    values: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "village": self.village, "area_code": self.area_code,
                "line": self.line, "kind": self.kind, "online": self.online, "last_seen": self.last_seen,
                "failure": self.failure, "values": self.values}


class DeviceRegistry:
    """Keeps the newest poll result per device and announces availability changes on the bus."""

    def __init__(self, cfg: Config, bus: EventBus) -> None:
        self._bus = bus
        self.devices: dict[str, DeviceView] = {}
        for dev in cfg.devices:
            kind = "terminal" if cfg.profiles[dev.profile].type == "modbus-terminal" else "fm_transmitter"
            self.devices[dev.id] = DeviceView(dev.id, dev.name, dev.village, dev.area_code, dev.line, kind)

    def on_poll(self, result: PollResult) -> None:
        view = self.devices[result.device_id]
        snap = result.snapshot
        was = view.online
        view.online = result.online
        if snap.online:
            view.last_seen = snap.timestamp
            view.values = dict(snap.values)
            view.failure = None
        else:
            view.failure = f"{snap.failure}: {snap.error}" if snap.failure else snap.error
        if was != view.online:
            self._bus.publish("device.state", **view.as_dict())
