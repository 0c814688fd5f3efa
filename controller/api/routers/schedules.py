"""``/api/v1/schedules``: the calendar; config-file schedules are read-only here, API ones are not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from controller.api.deps import PREFIX, Admin, ApiServices, Services, Viewer
from controller.api.models import AUTH_ERRORS, ScheduleListed, ScheduleOut, errors, ok
from controller.broadcast.model import BroadcastRequest
from controller.broadcast.scheduler import validate_cron
from controller.broadcast.targets import TargetError, resolve
from controller.config import IDENT, Config
from controller.core.errors import Conflict, Invalid, NotFound
from controller.storage.journal import DuplicateError

router = APIRouter(prefix=PREFIX, tags=["schedules"])


class ScheduleIn(BaseModel):
    """A calendar entry created through the API (config-file schedules are read-only here)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=IDENT, description="Lower-case id: letters, digits, - and _")
    cron: str = Field(min_length=1, max_length=200,
                      description="Five-field cron expression in gateway local time, e.g. '0 7 * * *'")
    enabled: bool = True
    request: BroadcastRequest


def _check_targets(cfg: Config, request: BroadcastRequest, prefix: str) -> None:
    """422 before storing a request that reaches nothing here (the engine resolves the same way)."""
    try:
        resolve(cfg, request.targets)
    except TargetError as exc:
        raise Invalid(exc.message, f"{prefix}{exc.field}") from None


def _reload_scheduler(services: ApiServices) -> None:
    if services.scheduler is not None:
        services.scheduler.reload()


@router.get("/schedules", response_model=None, responses={**ok(list[ScheduleListed]), **errors(*AUTH_ERRORS)})
async def list_schedules(_: Viewer, services: Services) -> list[dict[str, Any]]:
    """Config-file schedules (read-only here) and those created through the API, each with its
    next run or the reason it is not active, as the running scheduler sees it."""
    live = {s["id"]: s for s in services.scheduler.snapshot()} if services.scheduler else {}
    listed = [{**s.model_dump(), "source": "config"} for s in services.cfg.schedules]
    listed += [{**s, "source": "api"} for s in services.store.list_schedules()]
    return [{**s, "next_at": live.get(s["id"], {}).get("next_at"),
             "problem": live.get(s["id"], {}).get("problem")} for s in listed]


@router.post("/schedules", status_code=201, response_model=ScheduleOut,
             responses=errors(*AUTH_ERRORS, 409, 413, 422))
async def add_schedule(body: ScheduleIn, actor: Admin, services: Services) -> dict[str, Any]:
    cfg, store = services.cfg, services.store
    try:
        validate_cron(body.cron)
    except ValueError as exc:
        raise Invalid(str(exc), "cron") from None
    _check_targets(cfg, body.request, "request.")
    if any(s.id == body.id for s in cfg.schedules):
        raise Conflict(f"schedule '{body.id}' is defined in the config file", "id")
    request = body.request.model_dump(mode="json", by_alias=True, exclude_none=True)
    try:
        store.add_schedule(body.id, body.cron, request, body.enabled)
    except DuplicateError as exc:
        raise Conflict(str(exc), "id") from None
    store.audit(actor, "schedule.add", body.id, {"cron": body.cron, "enabled": body.enabled})
    _reload_scheduler(services)
    return {"id": body.id, "cron": body.cron, "enabled": body.enabled, "request": request, "source": "api"}


@router.delete("/schedules/{schedule_id}", status_code=204, responses=errors(*AUTH_ERRORS, 404, 409))
async def delete_schedule(schedule_id: str, actor: Admin, services: Services) -> None:
    if any(s.id == schedule_id for s in services.cfg.schedules):
        raise Conflict(f"schedule '{schedule_id}' is defined in the config file; edit the file")
    if not services.store.delete_schedule(schedule_id):
        raise NotFound(f"no schedule '{schedule_id}'")
    services.store.audit(actor, "schedule.delete", schedule_id)
    _reload_scheduler(services)
