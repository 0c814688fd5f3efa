"""``/api/v1/metrics`` and ``/metrics``: Prometheus text (families and sources: controller/api/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from controller.api.deps import PREFIX, Services, Viewer
from controller.api.metrics import exposition
from controller.api.models import AUTH_ERRORS, errors

router = APIRouter(tags=["system"])


@router.get(f"{PREFIX}/metrics", response_class=PlainTextResponse, responses={
    200: {"description": "Prometheus text exposition format 0.0.4"}, **errors(*AUTH_ERRORS)})
@router.get("/metrics", include_in_schema=False)
async def metrics(_: Viewer, services: Services) -> PlainTextResponse:
    """Prometheus text format (also at /metrics, where scrapers look by default)."""
    return PlainTextResponse(exposition(services), media_type="text/plain; version=0.0.4")
