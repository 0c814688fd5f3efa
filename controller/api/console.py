"""API routes the web console needs beyond the core API: who am I, templates, speech preview,
recorded audio of a broadcast, and gateway health in one call.

They follow the rules of controller/api/app.py (bearer token from the Authorization header only, least
privilege, JSON errors naming the field). A speech preview uses the engine's own SpeechService —
the one warmed pyttsx3 worker of the daemon (pyttsx3 is not thread-safe, DESIGN §5) — and its cache,
so a previewed text that is then broadcast is not synthesised twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.api.app import PREFIX, ApiError, ApiServices
from controller.api.auth import require
from controller.api.models import AUTH_ERRORS, WAV_CONTENT, SessionOut, errors
from controller.core.actors import Actor, Role
from controller.speech.text import SpeechText
from controller.speech.tts import SpeechError, TextTooLong, wav_seconds

log = logging.getLogger(__name__)

Viewer = Annotated[Actor, Depends(require(Role.VIEWER))]
Operator = Annotated[Actor, Depends(require(Role.OPERATOR))]

BROADCAST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""What a broadcast id may look like (the engine's are ``20261128-031502-a1b2c3``): no dots, no
slashes, so an id can never name a file outside the evidence directory."""
PENDING_ALERTS_LIMIT = 1000


class PreviewIn(BaseModel):
    """Text to hear before broadcasting it, spoken exactly as a broadcast would speak it."""

    model_config = ConfigDict(extra="forbid")
    text: SpeechText = Field(description="Text to speak (cleaned and checked as in a broadcast request)")
    language: Literal["zh", "en"] = "zh"


def console_router(services: ApiServices) -> APIRouter:
    """The console's routes over ``services`` (included by :func:`controller.api.app.create_app`)."""
    router = APIRouter(prefix=PREFIX, tags=["console"], responses=errors(*AUTH_ERRORS))
    cfg, store = services.cfg, services.store
    previewing = asyncio.Lock()
    """At most one preview waits for the speech worker, so a broadcast's speech never queues behind
    many of them (the worker does one synthesis at a time)."""

    @router.get("/session", response_model=SessionOut)
    async def session(actor: Viewer) -> dict[str, Any]:
        """Who this token is, so the console shows only what the role may do, and the gateway's
        time zone, which the console shows every time in (not the browser's)."""
        return {"name": actor.name, "role": actor.role.value if actor.role else None,
                "token_id": actor.token_id, "timezone": cfg.gateway.timezone}

    @router.get("/templates")
    async def templates(_: Viewer) -> list[dict[str, Any]]:
        """Ready-made announcements from the config (``broadcast.templates``); ``tone`` is the one
        that will play (the configured one, else the default for the class and severity)."""
        out = []
        for template in cfg.broadcast.templates:
            item = template.model_dump(mode="json", by_alias=True)
            item["tone"] = template.request({"all": True}).effective_tone.value
            out.append(item)
        return out

    @router.post("/speech/preview", response_class=FileResponse,
                 responses={200: {"content": WAV_CONTENT, "description": "the speech as WAV"},
                            **errors(413, 422, 503)})
    async def speech_preview(body: PreviewIn, _: Operator) -> FileResponse:
        """The speech for ``text`` as a WAV file (22050 Hz mono), as a broadcast would play it.

        422 naming ``text`` when it is empty or longer than the speech limit; 503 when the gateway
        has no speech service or synthesis failed.
        """
        speech = services.speech
        if speech is None:
            raise ApiError(503, "speech is not available on this gateway")
        try:
            speech.check_length(body.text)
            async with previewing:
                path = await speech.synthesize(body.text, body.language)
        except TextTooLong as exc:
            raise ApiError(422, f"text: {exc}", "text") from None
        except SpeechError as exc:
            log.warning("speech preview failed: %s", exc)
            raise ApiError(503, f"speech synthesis failed: {exc}") from None
        except ValueError as exc:  # nothing speakable left after normalisation
            raise ApiError(422, f"text: {exc}", "text") from None
        return FileResponse(path, media_type="audio/wav",
                            headers={"Cache-Control": "no-store",
                                     "X-Audio-Seconds": f"{wav_seconds(path):.2f}"})

    @router.get("/broadcasts/{broadcast_id}/audio", response_class=FileResponse,
                responses={200: {"content": WAV_CONTENT, "description": "the program as played"},
                           **errors(404)})
    async def broadcast_audio(broadcast_id: str, _: Viewer) -> FileResponse:
        """The program as it went out on the line (evidence WAV); 404 until it has played, or after
        ``broadcast.evidence_retention_days``."""
        if not BROADCAST_ID.fullmatch(broadcast_id) or store.get_broadcast(broadcast_id) is None:
            raise ApiError(404, f"no broadcast '{broadcast_id}'")
        evidence_dir = getattr(services.engine, "evidence_dir", None)
        path = _evidence_file(evidence_dir, broadcast_id)
        if path is None:
            raise ApiError(404, f"no recorded audio for broadcast '{broadcast_id}' (it has not played, "
                                f"or its recording is older than "
                                f"{cfg.broadcast.evidence_retention_days} days)")
        return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})

    @router.get("/gateway")
    async def gateway(_: Viewer) -> dict[str, Any]:
        """Gateway health in one call: host figures, engine, lines and devices (as reported to the
        county), the MQTT uplink, CAP feeds and pending alerts."""
        return gateway_status(services)

    return router


def _evidence_file(evidence_dir: Path | str | None, broadcast_id: str) -> Path | None:
    """``<evidence_dir>/<id>.wav`` if it exists and really lies in that directory."""
    if evidence_dir is None:
        return None
    base = Path(evidence_dir).resolve()
    path = (base / f"{broadcast_id}.wav").resolve()
    if path.parent != base or not path.is_file():
        return None
    return path


def gateway_status(services: ApiServices) -> dict[str, Any]:
    """HealthMonitor's snapshot plus identity, uplink, feeds, alerts and speech (each when present)."""
    cfg, gw = services.cfg, services.cfg.gateway
    snapshot = getattr(services.health, "snapshot", None)
    out: dict[str, Any] = dict(snapshot()) if callable(snapshot) else {"ts": time.time()}
    out["gateway"] = {"id": gw.id, "name": gw.name, "area_code": gw.area_code,
                      "location": {"lat": gw.location.lat, "lon": gw.location.lon}, "timezone": gw.timezone}
    out["api_started_at"] = services.started_at
    reporter = services.mqtt
    out["mqtt"] = {"enabled": cfg.mqtt is not None,
                   "connected": bool(reporter.connected) if reporter is not None else False,
                   "broker": reporter.broker if reporter is not None else None}
    if services.feeds is not None:
        try:
            out["feeds"] = services.feeds.snapshot()
        except Exception:
            log.exception("CAP feeds snapshot failed")
            out["feeds"] = None
    alerts = getattr(services, "alerts", None)
    if alerts is not None:
        try:
            pending = alerts.list(disposition="pending", limit=PENDING_ALERTS_LIMIT)
            out["alerts"] = {"pending": len(pending)}
        except Exception:
            log.exception("counting pending alerts failed")
            out["alerts"] = {"pending": None}
    if services.speech is not None:
        out["speech"] = {"worker_pid": getattr(services.speech, "worker_pid", None),
                         "restarts": getattr(services.speech, "restarts", None)}
    return out
