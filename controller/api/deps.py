"""What every router depends on: the ``/api/v1`` prefix, the role dependencies and the services.

Routers reach the gateway only through :class:`ApiServices`, taken from ``request.app.state`` by
the :data:`Services` dependency (set by :func:`controller.api.app.create_app`), so a router module
holds no state of its own and a test can hand the app any services it likes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from controller.api.auth import require
from controller.api.metrics import CountyCommandsApi, HealthApi, OutboxApi
from controller.broadcast.ports import BroadcastPort
from controller.broadcast.scheduler import Scheduler
from controller.config import Config
from controller.core.actors import Actor, Role
from controller.core.events import EventBus
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import Language
from controller.storage.journal import Store

if TYPE_CHECKING:  # the inbox imports the engine; the API only hands it requests
    from controller.alerts.inbox import AlertService

PREFIX = "/api/v1"
KEEPALIVE_S = 15.0
TOKEN_CHECK_S = 2.0
MAX_OFFSET = 1_000_000_000
"""Largest ``offset`` a list accepts: far beyond any gateway's journal, far below SQLite's 2**63."""


class BroadcastEngineApi(BroadcastPort, Protocol):
    """The engine's port plus where uploaded recordings go (controller/broadcast/engine.py)."""

    audio_dir: Path
    """Where uploaded recordings are kept (``audio_id`` in a request names one)."""


class FeedsApi(Protocol):
    """What the API shows of the CAP feed pollers (controller/alerts/feeds.py)."""

    def snapshot(self) -> list[dict[str, Any]]: ...


class SpeechApi(Protocol):
    """What the console's speech preview needs: the engine's SpeechService (controller/speech/tts.py)."""

    def check_length(self, text: str) -> None: ...

    async def synthesize(self, text: str, language: Language) -> Path: ...


class UplinkApi(Protocol):
    """What gateway health shows of the MQTT reporter (controller/uplink/mqtt.py: MqttReporter)."""

    @property
    def connected(self) -> bool: ...

    @property
    def broker(self) -> str | None: ...


class NationalApi(Protocol):
    """What gateway health shows of the national interface (controller/uplink/national/service.py)."""

    def status(self) -> dict[str, Any]: ...


@dataclass
class ApiServices:
    """Everything the routes reach; built by the daemon (or a test) and handed to :func:`create_app`."""

    cfg: Config
    store: Store
    engine: BroadcastEngineApi
    registry: DeviceRegistry
    bus: EventBus
    hardware: Hardware | None = None
    scheduler: Scheduler | None = None
    """Told about API-created schedules (``reload()``); shows next runs (``snapshot()``)."""
    health: HealthApi | None = None
    """Device state codes and active faults, for /metrics."""
    county: CountyCommandsApi | None = None
    """County command counts by result, for /metrics."""
    outbox: OutboxApi | None = None
    """Outbox depth and drops, for /metrics."""
    alerts: AlertService | None = None
    """The CAP alert inbox (controller/alerts/inbox.py; routes in controller/api/routers/alerts.py)."""
    feeds: FeedsApi | None = None
    """CAP feed pollers, for ``GET /api/v1/alerts/feeds``."""
    speech: SpeechApi | None = None
    """The engine's own SpeechService (one worker for broadcasts and console previews)."""
    mqtt: UplinkApi | None = None
    """The MQTT reporter, for the uplink state in ``GET /api/v1/gateway``."""
    national: NationalApi | None = None
    """The national platform interface, for its link state in ``GET /api/v1/gateway``."""
    started_at: float = field(default_factory=time.time)
    keepalive_s: float = KEEPALIVE_S
    token_check_s: float = TOKEN_CHECK_S
    """How often an open event stream checks that its token is still valid."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at shutdown so open event streams end and the server can stop."""
    previewing: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    """At most one speech preview waits for the speech worker, so a broadcast's speech never queues
    behind many of them (the worker does one synthesis at a time)."""


def get_services(request: Request) -> ApiServices:
    """The services the app was created over."""
    services: ApiServices = request.app.state.services
    return services


Services = Annotated[ApiServices, Depends(get_services)]
Viewer = Annotated[Actor, Depends(require(Role.VIEWER))]
Operator = Annotated[Actor, Depends(require(Role.OPERATOR))]
Admin = Annotated[Actor, Depends(require(Role.ADMIN))]
FeedPoster = Annotated[Actor, Depends(require(Role.FEED))]
"""A feed token, or an operator or admin."""
