"""REST endpoints of the CAP alert inbox (``/api/v1/alerts``): post a CAP document, list, approve, reject.

A warning centre's push client posts with a *feed* token, which can do nothing else; duty officers
read the inbox with a viewer token and decide with an operator token. Errors use the API's JSON
shape; a refused CAP document is 422 with ``field`` naming the CAP element (``alert/info[0]/expires``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.alerts.cap import CapError
from controller.alerts.inbox import AlertActionError, AlertService, Disposition
from controller.api.app import MAX_OFFSET, PREFIX, ApiError, ApiServices, Operator, Viewer
from controller.api.auth import require
from controller.api.models import AUTH_ERRORS, errors
from controller.core.actors import Actor, Role
from controller.speech.text import SpeechText

CAP_PATH = f"{PREFIX}/alerts/cap"
"""Where CAP documents are posted (its body limit is the parser's, not the API's JSON limit)."""

CapPoster = Annotated[Actor, Depends(require(Role.FEED))]
"""A feed token, or an operator or admin."""

_STATUS = {"not_found": 404, "conflict": 409, "invalid": 422}


class ApproveIn(BaseModel):
    """Approve a pending alert; give ``text`` to play an edited announcement instead of the planned one."""

    model_config = ConfigDict(extra="forbid")
    text: SpeechText | None = Field(default=None, description="Edited announcement (default: the planned "
                                                              "text), cleaned and checked as in a broadcast")


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500, description="Why it is not played (audited)")


def _location(alert_id: str) -> str:
    return f"{PREFIX}/alerts/{alert_id}"


def alert_routes(services: ApiServices) -> APIRouter:
    """The alert endpoints over ``services.alerts`` (503 while the gateway runs without an inbox)."""
    router = APIRouter(tags=["alerts"], responses=errors(*AUTH_ERRORS, 503))

    def inbox() -> AlertService:
        if services.alerts is None:
            raise ApiError(503, "CAP alerts are not running on this gateway")
        return services.alerts

    @router.post(CAP_PATH, status_code=202, responses={
        200: {"description": "Already received (duplicate: true); nothing new was done"},
        **errors(413, 422, e422="Not a usable CAP alert: `field` names the CAP element")},
        openapi_extra={"requestBody": {
        "required": True, "content": {"application/xml": {"schema": {"type": "string"}}}}})
    async def post_cap(request: Request, actor: CapPoster) -> JSONResponse:
        """Ingest one CAP document (OASIS CAP 1.2/1.1 or China's national variant) as the request body.

        **202** with the alert record once it is stored and decided; **200** with ``duplicate: true``
        if this (sender, identifier, sent) was already received; **422** naming the CAP element that
        is wrong; **413** over the size limit.
        """
        service = inbox()
        body = await request.body()
        try:
            record = await service.ingest(body, source="api", actor=actor)
        except CapError as exc:
            raise ApiError(422, f"not a usable CAP alert: {exc}", exc.element) from None
        location = _location(record["id"])
        return JSONResponse({**record, "location": location}, status_code=200 if record["duplicate"] else 202,
                            headers={"Location": location})

    @router.get(f"{PREFIX}/alerts", responses=errors(422))
    async def list_alerts(_: Viewer, disposition: Annotated[Disposition | None, Query(
                              description="only this disposition, e.g. pending")] = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50,
                          offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[dict[str, Any]]:
        """Newest first: each alert with its disposition, reason and plan (terminals, villages, text)."""
        return inbox().list(disposition, limit, offset)

    @router.get(f"{PREFIX}/alerts/feeds")
    async def list_feeds(_: Viewer) -> list[dict[str, Any]]:
        """Each configured feed: last success, last error, failures in a row, next poll, documents seen."""
        return services.feeds.snapshot() if services.feeds is not None else []

    @router.get(f"{PREFIX}/alerts/{{alert_id}}", responses=errors(404))
    async def get_alert(alert_id: str, _: Viewer) -> dict[str, Any]:
        """One alert with its plan and the CAP ``document`` as received."""
        record = inbox().get(alert_id)
        if record is None:
            raise ApiError(404, f"no alert '{alert_id}'")
        return record

    @router.post(f"{PREFIX}/alerts/{{alert_id}}/approve", responses=errors(404, 409, 413, 422))
    async def approve(alert_id: str, actor: Operator, body: ApproveIn | None = None) -> dict[str, Any]:
        """Play a pending alert now (optionally with edited ``text``); 409 if it is not pending."""
        try:
            return await inbox().approve(alert_id, actor, body.text if body else None)
        except AlertActionError as exc:
            raise ApiError(_STATUS[exc.kind], exc.message, exc.field) from None

    @router.post(f"{PREFIX}/alerts/{{alert_id}}/reject", responses=errors(404, 409, 413, 422))
    async def reject(alert_id: str, actor: Operator, body: RejectIn | None = None) -> dict[str, Any]:
        """Decide a pending alert is not played (with an optional ``reason``); 409 if it is not pending."""
        try:
            return await inbox().reject(alert_id, actor, body.reason if body else None)
        except AlertActionError as exc:
            raise ApiError(_STATUS[exc.kind], exc.message, exc.field) from None

    return router
