"""``/api/v1/tokens``: the active tokens (created and revoked with ``ebc token``, never over HTTP)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import PREFIX, Admin, Services
from controller.api.models import AUTH_ERRORS, TokenOut, errors

router = APIRouter(prefix=PREFIX, tags=["system"])


@router.get("/tokens", response_model=list[TokenOut], responses=errors(*AUTH_ERRORS))
async def list_tokens(_: Admin, services: Services) -> list[dict[str, Any]]:
    """Active tokens: id, name, role, created (never the secret)."""
    return [{"id": t.id, "name": t.name, "role": t.role.value, "created_at": t.created_at}
            for t in services.store.list_tokens()]
