"""The live county picture in memory: every gateway, every device, the open faults.

Rebuilt at start from the database (what the last run knew), then kept current by the ingest from
the retained topics (status, birth, device states) and the stored history. Lives on the event loop
thread: the ingest calls it there, the API reads it there. Every change is also put on the
subscribers' queues (:meth:`Picture.subscriber_queue`), which the API streams as Server-Sent Events.

Each change is JSON-encoded once, for every client, and only when a client is connected. The stream
carries what the console uses, compact: a stored report's ``event`` omits the ``data`` of health
snapshots (the console reloads the gateway's board from the API), and the retained device states
re-read after a (re)subscription are applied quietly (``quiet=True``), followed by one ``resync``
per burst (:meth:`Picture.end_quiet`) instead of one ``device.state`` per terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from county.store import Store

FAULT_SEVERITY: dict[str, int] = {
    "mains_lost": 100, "supply_fault": 100,            # no power: silent when it matters
    "amp_fault": 90,
    "line_short": 85, "line_open": 85, "line_down": 85,  # speakers or the device unreachable
    "high_vswr": 80, "pll_unlocked": 80, "no_audio_input": 75,
    "release_pending": 70, "state_unwritable": 70,
    "impedance_deviation": 60,
    "low_battery": 50,
    "over_temperature": 40,
    "tamper": 30,
    "disk_low": 20,
}
"""Fault code → severity rank, higher first: power, amplifier and line faults above the rest,
tamper and temperature below. A code not listed ranks :data:`UNKNOWN_SEVERITY`."""
UNKNOWN_SEVERITY = 50

SUBSCRIBER_QUEUE = 1000
"""Changes queued per SSE client; a client that falls this far behind gets a ``resync`` instead."""

QUIET_KINDS = frozenset({"gateway.health"})
"""Report kinds whose ``data`` is left out of the SSE ``event`` (large, and the console does not read it)."""

Change = tuple[str, str]
"""One change as queued for the SSE clients: (event type, its JSON text, encoded once for all)."""


def encode(change: dict[str, Any]) -> Change:
    return (str(change.get("type", "change")),
            orjson.dumps(change, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


@dataclass
class DeviceView:
    id: str
    name: str | None = None
    village: str | None = None
    area_code: str | None = None
    lat: float | None = None
    lon: float | None = None
    kind: str | None = None
    state: int | None = None
    state_name: str | None = None
    online: bool | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "village": self.village, "area_code": self.area_code,
                "lat": self.lat, "lon": self.lon, "kind": self.kind, "state": self.state,
                "state_name": self.state_name, "online": self.online, "faults": self.faults,
                "updated_at": self.updated_at}


@dataclass
class GatewayView:
    id: str
    name: str | None = None
    area_code: str | None = None
    location: dict[str, Any] | None = None
    status: str = "unknown"
    since: float | None = None
    last_seen: float | None = None
    devices: dict[str, DeviceView] = field(default_factory=dict)
    last_seq: int | None = None
    malformed: int = 0
    gaps_unexplained: int = 0
    gaps_explained: int = 0

    def counts(self) -> dict[str, int]:
        by_state: dict[str, int] = {}
        for d in self.devices.values():
            key = "unknown" if d.state is None else str(d.state)
            by_state[key] = by_state.get(key, 0) + 1
        return by_state

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "area_code": self.area_code, "location": self.location,
                "status": self.status, "since": self.since, "last_seen": self.last_seen,
                "devices": len(self.devices), "by_state": self.counts(),
                "open_faults": sum(len(d.faults) for d in self.devices.values()),
                "last_seq": self.last_seq, "malformed": self.malformed,
                "gaps": {"unexplained": self.gaps_unexplained, "explained": self.gaps_explained}}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Picture:
    """See the module docstring."""

    def __init__(self) -> None:
        self.gateways: dict[str, GatewayView] = {}
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._hushed = False

    # -- building ---------------------------------------------------------------------------------------

    def rebuild(self, store: Store) -> None:
        """Everything the database knows, before the retained topics arrive again."""
        self.gateways.clear()
        for row in store.gateways():
            self.gateways[row["id"]] = GatewayView(
                id=row["id"], name=row["name"], area_code=row["area_code"], location=row["location"],
                status=row["status"], since=row["status_since"], last_seen=row["last_seen"])
        for row in store.devices():
            gw = self.gateway(row["gateway"])
            gw.devices[row["device"]] = DeviceView(
                id=row["device"], name=row["name"], village=row["village"], area_code=row["area_code"],
                lat=row["lat"], lon=row["lon"], kind=row["kind"], state=row["state"],
                state_name=row["state_name"], online=row["online"], faults=row["faults"],
                updated_at=row["updated_at"])
        for gw_id, seq in store.last_seqs().items():
            self.gateway(gw_id).last_seq = seq
        for gap in store.gaps():
            gw = self.gateway(gap["gateway"])
            if gap["explained_by"] == "unexplained":
                gw.gaps_unexplained += 1
            else:
                gw.gaps_explained += 1

    def gateway(self, gw_id: str) -> GatewayView:
        view = self.gateways.get(gw_id)
        if view is None:
            view = self.gateways[gw_id] = GatewayView(gw_id)
        return view

    # -- updates from the ingest ------------------------------------------------------------------------

    def seen(self, gw_id: str, at: float) -> None:
        self.gateway(gw_id).last_seen = at

    def set_status(self, gw_id: str, status: str, at: float) -> None:
        gw = self.gateway(gw_id)
        if gw.status != status or gw.since is None:
            gw.status, gw.since = status, at
            self._emit({"type": "gateway.status", "gateway": gw_id, "status": status, "since": at})

    def set_birth(self, gw_id: str, birth: dict[str, Any]) -> None:
        gw = self.gateway(gw_id)
        info = birth.get("gateway") if isinstance(birth.get("gateway"), dict) else {}
        gw.name, gw.area_code = info.get("name"), info.get("area_code")
        gw.location = info.get("location") if isinstance(info.get("location"), dict) else None
        devices: dict[str, DeviceView] = {}
        for dev in birth.get("devices") or []:
            old = gw.devices.get(dev["id"])
            loc = dev.get("location") if isinstance(dev.get("location"), dict) else {}
            view = old or DeviceView(dev["id"])
            view.name, view.village = dev.get("name"), dev.get("village")
            view.area_code = dev.get("area_code")
            view.lat, view.lon, view.kind = _float(loc.get("lat")), _float(loc.get("lon")), dev.get("kind")
            devices[dev["id"]] = view
        gw.devices = devices
        self._emit({"type": "gateway.birth", "gateway": gw_id, "devices": len(devices)})

    def set_device_state(self, gw_id: str, doc: dict[str, Any], at: float, quiet: bool = False) -> None:
        """One device's state; ``quiet``: no ``device.state`` now, a ``resync`` at :meth:`end_quiet`."""
        gw = self.gateway(gw_id)
        dev = gw.devices.get(doc["id"])
        if dev is None:
            dev = gw.devices[doc["id"]] = DeviceView(doc["id"])
        for key in ("name", "village", "area_code", "kind"):
            if isinstance(doc.get(key), str):
                setattr(dev, key, doc[key])
        state = doc.get("state")
        dev.state = state if isinstance(state, int) and not isinstance(state, bool) else None
        dev.state_name = doc.get("state_name") if isinstance(doc.get("state_name"), str) else None
        dev.online = doc.get("online") if isinstance(doc.get("online"), bool) else None
        dev.faults = [f for f in doc.get("faults") or [] if isinstance(f, dict)]
        dev.updated_at = at
        if quiet:
            self._hushed = True
        elif self._subscribers:
            self._emit({"type": "device.state", "gateway": gw_id, "device": dev.as_dict()})

    def add_event(self, gw_id: str, event: dict[str, Any]) -> None:
        """A report stored for the first time (never a duplicate)."""
        gw = self.gateway(gw_id)
        if gw.last_seq is None or event["seq"] > gw.last_seq:
            gw.last_seq = event["seq"]
        if not self._subscribers:
            return
        if event.get("kind") in QUIET_KINDS:
            event = {k: v for k, v in event.items() if k != "data"}
        self._emit({"type": "event", "gateway": gw_id, **event})

    def set_gaps(self, gw_id: str, unexplained: int, explained: int) -> None:
        gw = self.gateway(gw_id)
        if (gw.gaps_unexplained, gw.gaps_explained) != (unexplained, explained):
            gw.gaps_unexplained, gw.gaps_explained = unexplained, explained
            self._emit({"type": "gateway.gaps", "gateway": gw_id,
                        "gaps": {"unexplained": unexplained, "explained": explained}})

    def count_malformed(self, gw_id: str | None) -> None:
        if gw_id is not None:
            self.gateway(gw_id).malformed += 1

    # -- change stream ----------------------------------------------------------------------------------

    def notify(self, change: dict[str, Any]) -> None:
        """A change that is not the picture's own (a county broadcast's report) for the SSE clients."""
        self._emit(change)

    def end_quiet(self) -> None:
        """After a burst of quiet device states: one ``resync`` for the clients if there were any."""
        if self._hushed:
            self._hushed = False
            if self._subscribers:
                self._emit({"type": "resync"})

    def _emit(self, change: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        at = change.setdefault("at", time.time())
        encoded = encode(change)
        for queue in list(self._subscribers):
            if queue.full():  # a slow client: tell it to reload instead of growing without bound
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait(encode({"type": "resync", "at": at}))
            else:
                queue.put_nowait(encoded)

    def subscriber_queue(self) -> asyncio.Queue[Change]:
        """A raw queue of encoded changes (remove it with :meth:`unsubscribe`)."""
        queue: asyncio.Queue[Change] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._subscribers.discard(queue)

    # -- snapshots for the API --------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        by_status = {"online": 0, "offline": 0, "unknown": 0}
        by_state: dict[str, int] = {}
        terminals = 0
        for gw in self.gateways.values():
            by_status[gw.status if gw.status in by_status else "unknown"] += 1
            for key, n in gw.counts().items():
                by_state[key] = by_state.get(key, 0) + n
            terminals += len(gw.devices)
        return {"gateways": {"total": len(self.gateways), **by_status},
                "terminals": {"total": terminals, "by_state": by_state},
                "open_faults": sum(len(d.faults) for g in self.gateways.values() for d in g.devices.values()),
                "unexplained_gaps": sum(gw.gaps_unexplained for gw in self.gateways.values()),
                "offline_gateways": sorted(({"id": gw.id, "name": gw.name, "since": gw.since}
                                            for gw in self.gateways.values() if gw.status == "offline"),
                                           key=lambda g: g["since"] or 0)}

    def gateway_list(self) -> list[dict[str, Any]]:
        return [self.gateways[k].summary() for k in sorted(self.gateways)]

    def gateway_detail(self, gw_id: str) -> dict[str, Any] | None:
        gw = self.gateways.get(gw_id)
        if gw is None:
            return None
        return {**gw.summary(), "devices": [gw.devices[k].as_dict() for k in sorted(gw.devices)]}

    def faults(self) -> list[dict[str, Any]]:
        """Open faults, most severe first, then oldest first."""
        out = []
        for gw in self.gateways.values():
            for dev in gw.devices.values():
                for f in dev.faults:
                    code = str(f.get("fault"))
                    out.append({"gateway": gw.id, "township": gw.name, "village": dev.village,
                                "device": dev.id, "device_name": dev.name, "fault": code,
                                "zone": f.get("zone"),
                                "reason": f.get("reason"), "reason_zh": f.get("reason_zh"),
                                "since": _float(f.get("since")),
                                "severity": FAULT_SEVERITY.get(code, UNKNOWN_SEVERITY),
                                "gateway_status": gw.status})
        never = float("inf")
        return sorted(out, key=lambda f: (-f["severity"], never if f["since"] is None else f["since"],
                                          f["gateway"], f["device"]))

    def map_points(self) -> list[dict[str, Any]]:
        return [{"gateway": gw.id, "township": gw.name, "device": d.id, "name": d.name, "village": d.village,
                 "lat": d.lat, "lon": d.lon, "state": d.state, "state_name": d.state_name, "online": d.online,
                 "gateway_status": gw.status}
                for gw in self.gateways.values() for d in gw.devices.values()
                if d.lat is not None and d.lon is not None]
