"""``/api/v1/audio``: upload a recorded announcement, played later by ``audio_id``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from controller.api.deps import PREFIX, Operator, Services
from controller.api.models import AUTH_ERRORS, RECORDING_CONTENT, AudioClipOut, errors
from controller.broadcast.program import store_uploaded_audio
from controller.core.errors import Invalid

AUDIO_PATH = f"{PREFIX}/audio"
"""Where recordings are posted (its body limit is larger than the API's JSON limit)."""

router = APIRouter(tags=["broadcasts"])


@router.post(AUDIO_PATH, status_code=201, response_model=AudioClipOut,
             responses=errors(*AUTH_ERRORS, 413, 422),
             openapi_extra={"requestBody": {"required": True, "content": RECORDING_CONTENT}})
async def upload_audio(request: Request, actor: Operator, services: Services) -> dict[str, Any]:
    """Upload a recorded announcement (body: a PCM WAV or MP3 file); play it with ``audio_id``."""
    try:
        clip = store_uploaded_audio(await request.body(), services.engine.audio_dir)
    except ValueError as exc:
        raise Invalid(str(exc), "body") from None
    services.store.audit(actor, "audio.upload", clip.audio_id,
                         {"bytes": clip.bytes, "duration_s": clip.duration_s, "format": clip.format})
    return asdict(clip)
