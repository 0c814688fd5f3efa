"""One router per resource; :func:`controller.api.app.create_app` includes them in this order."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.routers import (
    alerts,
    audio,
    audit,
    broadcasts,
    console,
    devices,
    events,
    gateway,
    metrics,
    schedules,
    tokens,
)

ROUTERS: tuple[APIRouter, ...] = (
    gateway.health_router, devices.router, broadcasts.router, audio.router, schedules.router, audit.router,
    tokens.router, events.router, metrics.router, alerts.router, console.router, gateway.router,
)
