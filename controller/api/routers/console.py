"""API routes the web console needs beyond the core API: who am I, templates, speech preview and
the recorded audio of a broadcast (gateway health in one call: controller/api/routers/gateway.py).

They follow the API's rules (bearer token from the Authorization header only, least privilege,
JSON errors naming the field). A speech preview uses the engine's own SpeechService — the one
warmed pyttsx3 worker of the daemon (pyttsx3 is not thread-safe, DESIGN §5) — and its cache, so a
previewed text that is then broadcast is not synthesised twice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.api.deps import PREFIX, Operator, Services, Viewer
from controller.api.models import AUTH_ERRORS, WAV_CONTENT, SessionOut, TemplateOut, errors, ok
from controller.core.errors import Invalid, NotFound, Unavailable
from controller.speech.text import SpeechText
from controller.speech.tts import SpeechError, wav_seconds

log = logging.getLogger(__name__)

BROADCAST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""What a broadcast id may look like (the engine's are ``20261128-031502-a1b2c3``): no dots, no
slashes, so an id can never name a file outside the evidence directory."""

router = APIRouter(prefix=PREFIX, tags=["console"], responses=errors(*AUTH_ERRORS))


class PreviewIn(BaseModel):
    """Text to hear before broadcasting it, spoken exactly as a broadcast would speak it."""

    model_config = ConfigDict(extra="forbid")
    text: SpeechText = Field(description="Text to speak (cleaned and checked as in a broadcast request)")
    language: Literal["zh", "en"] = "zh"


@router.get("/session", response_model=SessionOut)
async def session(actor: Viewer, services: Services) -> dict[str, Any]:
    """Who this token is, so the console shows only what the role may do, and the gateway's
    time zone, which the console shows every time in (not the browser's)."""
    return {"name": actor.name, "role": actor.role.value if actor.role else None,
            "token_id": actor.token_id, "timezone": services.cfg.gateway.timezone}


@router.get("/templates", response_model=None, responses=ok(list[TemplateOut]))
async def templates(_: Viewer, services: Services) -> list[dict[str, Any]]:
    """Ready-made announcements from the config (``broadcast.templates``); ``tone`` is the one
    that will play (the configured one, else the default for the class and severity)."""
    out = []
    for template in services.cfg.broadcast.templates:
        item = template.model_dump(mode="json", by_alias=True)
        item["tone"] = template.request({"all": True}).effective_tone.value
        out.append(item)
    return out


@router.post("/speech/preview", response_class=FileResponse,
             responses={200: {"content": WAV_CONTENT, "description": "the speech as WAV"},
                        **errors(413, 422, 503)})
async def speech_preview(body: PreviewIn, _: Operator, services: Services) -> FileResponse:
    """The speech for ``text`` as a WAV file (22050 Hz mono), as a broadcast would play it.

    422 naming ``text`` when it is empty or longer than the speech limit; 503 when the gateway
    has no speech service or synthesis failed.
    """
    speech = services.speech
    if speech is None:
        raise Unavailable("speech is not available on this gateway")
    try:
        speech.check_length(body.text)
        async with services.previewing:
            path = await speech.synthesize(body.text, body.language)
    except SpeechError as exc:
        log.warning("speech preview failed: %s", exc)
        raise Unavailable(f"speech synthesis failed: {exc}") from None
    except ValueError as exc:  # too long (TextTooLong), or nothing speakable left after normalisation
        raise Invalid(str(exc), "text") from None
    return FileResponse(path, media_type="audio/wav",
                        headers={"Cache-Control": "no-store", "X-Audio-Seconds": f"{wav_seconds(path):.2f}"})


@router.get("/broadcasts/{broadcast_id}/audio", response_class=FileResponse,
            responses={200: {"content": WAV_CONTENT, "description": "the program as played"}, **errors(404)})
async def broadcast_audio(broadcast_id: str, _: Viewer, services: Services) -> FileResponse:
    """The program as it went out on the line (evidence WAV); 404 until it has played, or after
    ``broadcast.evidence_retention_days``."""
    if not BROADCAST_ID.fullmatch(broadcast_id) or services.store.get_broadcast(broadcast_id) is None:
        raise NotFound(f"no broadcast '{broadcast_id}'")
    evidence_dir = getattr(services.engine, "evidence_dir", None)
    path = _evidence_file(evidence_dir, broadcast_id)
    if path is None:
        raise NotFound(f"no recorded audio for broadcast '{broadcast_id}' (it has not played, or its "
                       f"recording is older than {services.cfg.broadcast.evidence_retention_days} days)")
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})


def _evidence_file(evidence_dir: Path | str | None, broadcast_id: str) -> Path | None:
    """``<evidence_dir>/<id>.wav`` if it exists and really lies in that directory."""
    if evidence_dir is None:
        return None
    base = Path(evidence_dir).resolve()
    path = (base / f"{broadcast_id}.wav").resolve()
    if path.parent != base or not path.is_file():
        return None
    return path
