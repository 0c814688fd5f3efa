"""The gateway itself: ``/api/v1/health`` (open liveness) and ``/api/v1/gateway`` (health in one call)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter

from controller.api.deps import PREFIX, ApiServices, Services, Viewer
from controller.api.models import AUTH_ERRORS, GatewayOut, HealthOut, errors, ok

log = logging.getLogger(__name__)

PENDING_ALERTS_LIMIT = 1000

health_router = APIRouter(prefix=PREFIX, tags=["system"])
"""Open: the only route without a token (first in the description, as before)."""
router = APIRouter(prefix=PREFIX, tags=["console"], responses=errors(*AUTH_ERRORS))


@health_router.get("/health", response_model=HealthOut)
async def health() -> dict[str, str]:
    """Liveness only (open): the daemon answers. No details for anonymous callers."""
    return {"status": "ok"}


@router.get("/gateway", response_model=None, responses=ok(GatewayOut))
async def gateway(_: Viewer, services: Services) -> dict[str, Any]:
    """Gateway health in one call: host figures, engine, lines and devices (as reported to the
    county), the MQTT uplink, CAP feeds and pending alerts."""
    return gateway_status(services)


def gateway_status(services: ApiServices) -> dict[str, Any]:
    """HealthMonitor's snapshot plus identity, uplink, feeds, alerts and speech (each when present)."""
    cfg, gw = services.cfg, services.cfg.gateway
    snapshot = getattr(services.health, "snapshot", None)
    out: dict[str, Any] = dict(snapshot()) if callable(snapshot) else {"ts": time.time()}
    out["gateway"] = {"id": gw.id, "name": gw.name, "area_code": gw.area_code,
                      "location": {"lat": gw.location.lat, "lon": gw.location.lon}, "timezone": gw.timezone}
    out["api_started_at"] = services.started_at
    reporter = services.mqtt
    out["mqtt"] = {"enabled": cfg.mqtt is not None,
                   "connected": bool(reporter.connected) if reporter is not None else False,
                   "broker": reporter.broker if reporter is not None else None}
    if services.national is not None:
        try:
            out["national_platform"] = services.national.status()
        except Exception:
            log.exception("national platform status failed")
            out["national_platform"] = None
    if services.feeds is not None:
        try:
            out["feeds"] = services.feeds.snapshot()
        except Exception:
            log.exception("CAP feeds snapshot failed")
            out["feeds"] = None
    alerts = services.alerts
    if alerts is not None:
        try:
            pending = alerts.list(disposition="pending", limit=PENDING_ALERTS_LIMIT)
            out["alerts"] = {"pending": len(pending)}
        except Exception:
            log.exception("counting pending alerts failed")
            out["alerts"] = {"pending": None}
    if services.speech is not None:
        out["speech"] = {"worker_pid": getattr(services.speech, "worker_pid", None),
                         "restarts": getattr(services.speech, "restarts", None)}
    return out
