"""``/api/v1/audit``: who did what (admins only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from controller.api.deps import MAX_OFFSET, PREFIX, Admin, Services
from controller.api.models import AUTH_ERRORS, AuditOut, errors, ok

router = APIRouter(prefix=PREFIX, tags=["system"])


@router.get("/audit", response_model=None, responses={**ok(list[AuditOut]), **errors(*AUTH_ERRORS, 422)})
async def list_audit(_: Admin, services: Services, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[dict[str, Any]]:
    """Who did what, newest first."""
    return services.store.list_audit(limit, offset)
