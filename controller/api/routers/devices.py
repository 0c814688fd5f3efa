"""``/api/v1/devices``: every terminal and transmitter with its latest polled state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import PREFIX, Services, Viewer
from controller.api.models import AUTH_ERRORS, DeviceOut, errors, ok
from controller.core.errors import NotFound

router = APIRouter(prefix=PREFIX, tags=["devices"])


@router.get("/devices", response_model=None, responses={**ok(list[DeviceOut]), **errors(*AUTH_ERRORS)})
async def list_devices(_: Viewer, services: Services) -> list[dict[str, Any]]:
    """Every terminal and transmitter with its latest polled state."""
    return [v.as_dict() for v in services.registry.devices.values()]


@router.get("/devices/{device_id}", response_model=None,
            responses={**ok(DeviceOut), **errors(*AUTH_ERRORS, 404)})
async def get_device(device_id: str, _: Viewer, services: Services) -> dict[str, Any]:
    view = services.registry.devices.get(device_id)
    if view is None:
        raise NotFound(f"no device '{device_id}' on this gateway")
    return view.as_dict()
