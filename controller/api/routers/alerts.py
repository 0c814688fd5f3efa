"""REST endpoints of the CAP alert inbox (``/api/v1/alerts``): post a CAP document, list, approve, reject.

A warning centre's push client posts with a *feed* token, which can do nothing else; duty officers
read the inbox with a viewer token and decide with an operator token. Errors use the API's JSON
shape; a refused CAP document is 422 with ``field`` naming the CAP element (``alert/info[0]/expires``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.alerts.cap import CapError
from controller.alerts.inbox import AlertService, Disposition
from controller.api.deps import MAX_OFFSET, PREFIX, ApiServices, FeedPoster, Operator, Services, Viewer
from controller.api.models import AUTH_ERRORS, AlertOut, FeedOut, errors, ok
from controller.core.errors import Invalid, NotFound, Unavailable
from controller.speech.text import SpeechText

CAP_PATH = f"{PREFIX}/alerts/cap"
"""Where CAP documents are posted (its body limit is the parser's, not the API's JSON limit)."""

router = APIRouter(tags=["alerts"], responses=errors(*AUTH_ERRORS, 503))


class ApproveIn(BaseModel):
    """Approve a pending alert; give ``text`` to play an edited announcement instead of the planned one."""

    model_config = ConfigDict(extra="forbid")
    text: SpeechText | None = Field(default=None, description="Edited announcement (default: the planned "
                                                              "text), cleaned and checked as in a broadcast")


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500, description="Why it is not played (audited)")


class CapRefused(Invalid):
    """A CAP document refused: the message already names the element (CapError's own text)."""

    def explain(self) -> str:
        return self.message


def inbox(services: ApiServices) -> AlertService:
    """The inbox, or 503 while the gateway runs without one (called in the route, so a request that
    is invalid anyway is still answered 422)."""
    if services.alerts is None:
        raise Unavailable("CAP alerts are not running on this gateway")
    return services.alerts


def _location(alert_id: str) -> str:
    return f"{PREFIX}/alerts/{alert_id}"


@router.post(CAP_PATH, status_code=202, response_model=None, responses={
    **ok(AlertOut, "The alert record once it is stored and decided", 202),
    200: {"model": AlertOut, "description": "Already received (duplicate: true); nothing new was done"},
    **errors(413, 422, e422="Not a usable CAP alert: `field` names the CAP element")},
    openapi_extra={"requestBody": {
    "required": True, "content": {"application/xml": {"schema": {"type": "string"}}}}})
async def post_cap(request: Request, actor: FeedPoster, services: Services) -> JSONResponse:
    """Ingest one CAP document (OASIS CAP 1.2/1.1 or China's national variant) as the request body.

    **202** with the alert record once it is stored and decided; **200** with ``duplicate: true``
    if this (sender, identifier, sent) was already received; **422** naming the CAP element that
    is wrong; **413** over the size limit.
    """
    service = inbox(services)
    body = await request.body()
    try:
        record = await service.ingest(body, source="api", actor=actor)
    except CapError as exc:
        raise CapRefused(f"not a usable CAP alert: {exc}", exc.element) from None
    location = _location(record["id"])
    return JSONResponse({**record, "location": location}, status_code=200 if record["duplicate"] else 202,
                        headers={"Location": location})


@router.get(f"{PREFIX}/alerts", response_model=None, responses={**ok(list[AlertOut]), **errors(422)})
async def list_alerts(_: Viewer, services: Services, disposition: Annotated[Disposition | None, Query(
                          description="only this disposition, e.g. pending")] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[dict[str, Any]]:
    """Newest first: each alert with its disposition, reason and plan (terminals, villages, text)."""
    return inbox(services).list(disposition, limit, offset)


@router.get(f"{PREFIX}/alerts/feeds", response_model=None, responses=ok(list[FeedOut]))
async def list_feeds(_: Viewer, services: Services) -> list[dict[str, Any]]:
    """Each configured feed: last success, last error, failures in a row, next poll, documents seen."""
    return services.feeds.snapshot() if services.feeds is not None else []


@router.get(f"{PREFIX}/alerts/{{alert_id}}", response_model=None, responses={**ok(AlertOut), **errors(404)})
async def get_alert(alert_id: str, _: Viewer, services: Services) -> dict[str, Any]:
    """One alert with its plan and the CAP ``document`` as received."""
    record = inbox(services).get(alert_id)
    if record is None:
        raise NotFound(f"no alert '{alert_id}'")
    return record


@router.post(f"{PREFIX}/alerts/{{alert_id}}/approve", response_model=None,
             responses={**ok(AlertOut), **errors(404, 409, 413, 422)})
async def approve(alert_id: str, actor: Operator, services: Services,
                  body: ApproveIn | None = None) -> dict[str, Any]:
    """Play a pending alert now (optionally with edited ``text``); 409 if it is not pending."""
    return await inbox(services).approve(alert_id, actor, body.text if body else None)


@router.post(f"{PREFIX}/alerts/{{alert_id}}/reject", response_model=None,
             responses={**ok(AlertOut), **errors(404, 409, 413, 422)})
async def reject(alert_id: str, actor: Operator, services: Services,
                 body: RejectIn | None = None) -> dict[str, Any]:
    """Decide a pending alert is not played (with an optional ``reason``); 409 if it is not pending."""
    return await inbox(services).reject(alert_id, actor, body.reason if body else None)
