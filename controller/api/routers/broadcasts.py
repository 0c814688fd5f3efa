"""``/api/v1/broadcasts``: submit, list, follow and cancel broadcasts (the engine journals and audits)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from controller.api.deps import MAX_OFFSET, PREFIX, Operator, Services, Viewer
from controller.api.models import AUTH_ERRORS, BroadcastAccepted, BroadcastOut, errors, ok
from controller.broadcast.model import FINAL_STATES, BroadcastRequest, BroadcastState
from controller.core.errors import Conflict, NotFound
from controller.storage.journal import Store

router = APIRouter(prefix=PREFIX, tags=["broadcasts"])

StateFilter = Literal["not_processed", "waiting", "playing", "succeeded", "failed", "cancelled",
                      "0", "1", "2", "3", "4", "5"]
"""A broadcast state by name or national code, as ``GET /broadcasts?state=`` takes it."""


def state_name(state: BroadcastState) -> str:
    return state.name.lower()


def location(broadcast_id: str) -> str:
    return f"{PREFIX}/broadcasts/{broadcast_id}"


def broadcast_out(record: dict[str, Any]) -> dict[str, Any]:
    state: BroadcastState = record["state"]
    return {**record, "state": state_name(state), "state_code": int(state),
            "location": location(record["id"])}


def _parse_state(value: StateFilter | None) -> BroadcastState | None:
    if value is None:
        return None
    return BroadcastState(int(value)) if value.isdigit() else BroadcastState[value.upper()]


def _broadcast_or_404(store: Store, broadcast_id: str) -> dict[str, Any]:
    record = store.get_broadcast(broadcast_id)
    if record is None:
        raise NotFound(f"no broadcast '{broadcast_id}'")
    return record


@router.post("/broadcasts", status_code=202, response_model=BroadcastAccepted,
             responses=errors(*AUTH_ERRORS, 413, 422))
async def create_broadcast(body: BroadcastRequest, actor: Operator, services: Services) -> JSONResponse:
    """Accept a broadcast; 202 once it is journalled (it is never lost after this answer).

    The engine journals and audits it (with this actor: name, token id, remote address), so
    broadcasts from schedules, the county and CAP feeds are audited the same way.
    """
    broadcast_id = await services.engine.submit(body, actor)  # Invalid (422) names what it refused
    record = services.store.get_broadcast(broadcast_id)
    state = record["state"] if record else BroadcastState.WAITING
    where = location(broadcast_id)
    return JSONResponse({"id": broadcast_id, "state": state_name(state), "location": where},
                        status_code=202, headers={"Location": where})


@router.get("/broadcasts", response_model=None,
            responses={**ok(list[BroadcastOut]), **errors(*AUTH_ERRORS, 422)})
async def list_broadcasts(_: Viewer, services: Services, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                          offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                          state: Annotated[StateFilter | None, Query(description="name or code")] = None
                          ) -> list[dict[str, Any]]:
    """Newest first."""
    return [broadcast_out(b) for b in services.store.list_broadcasts(limit, offset, _parse_state(state))]


@router.get("/broadcasts/{broadcast_id}", response_model=None,
            responses={**ok(BroadcastOut), **errors(*AUTH_ERRORS, 404)})
async def get_broadcast(broadcast_id: str, _: Viewer, services: Services) -> dict[str, Any]:
    """One broadcast with its per-terminal outcomes and coverage."""
    return broadcast_out(_broadcast_or_404(services.store, broadcast_id))


@router.post("/broadcasts/{broadcast_id}/cancel", response_model=None,
             responses={**ok(BroadcastOut), **errors(*AUTH_ERRORS, 404, 409)})
async def cancel_broadcast(broadcast_id: str, actor: Operator, services: Services) -> dict[str, Any]:
    """Stop a waiting or playing broadcast (the engine audits it); 409 if it is already final."""
    store = services.store
    record = _broadcast_or_404(store, broadcast_id)
    if record["state"] in FINAL_STATES:
        raise Conflict(f"broadcast '{broadcast_id}' is already {state_name(record['state'])}")
    if not await services.engine.cancel(broadcast_id, actor):
        now = store.get_broadcast(broadcast_id) or record
        raise Conflict(f"broadcast '{broadcast_id}' could not be cancelled "
                       f"(it is {state_name(now['state'])})")
    return broadcast_out(store.get_broadcast(broadcast_id) or record)
