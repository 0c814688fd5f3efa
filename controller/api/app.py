"""The local REST API (``/api/v1``): devices, broadcasts, schedules, audit, tokens, events, metrics.

Everything except ``/api/v1/health`` needs a bearer token (controller/api/auth.py); there are no default
credentials, so a gateway with no token created answers 401 to all of it. Every change is audited
with the actor, remote address and token id. Errors are JSON ``{"error", "field", "details"}``
with the right 4xx code, so a duty officer's console and the county's scripts can show the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.auth import AuthError, require
from controller.api.metrics import CountyCommandsApi, HealthApi, OutboxApi, exposition
from controller.api.models import (
    AUTH_ERRORS,
    WAV_CONTENT,
    AudioClipOut,
    BroadcastAccepted,
    HealthOut,
    ScheduleOut,
    TokenOut,
    errors,
    finish_openapi,
)
from controller.broadcast.model import FINAL_STATES, BroadcastRequest, BroadcastState
from controller.broadcast.ports import BroadcastPort
from controller.broadcast.program import store_uploaded_audio
from controller.broadcast.scheduler import Scheduler, validate_cron
from controller.broadcast.targets import TargetError, resolve
from controller.config import IDENT, Config
from controller.core.actors import Actor, Role
from controller.core.events import Event, EventBus
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import Language, TextTooLong
from controller.storage.journal import DuplicateError, Store
from controller.web.console import SecureFastAPI, install_console

if TYPE_CHECKING:  # the alert inbox imports this module's helpers for its routes
    from controller.alerts.inbox import AlertService

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY_BYTES = 256 * 1024
MAX_AUDIO_BYTES = 32 * 1024 * 1024
AUDIO_PATH = f"{PREFIX}/audio"
KEEPALIVE_S = 15.0
TOKEN_CHECK_S = 2.0
MAX_OFFSET = 1_000_000_000
"""Largest ``offset`` a list accepts: far beyond any gateway's journal, far below SQLite's 2**63."""


class BroadcastEngineApi(BroadcastPort, Protocol):
    """The engine's port plus where uploaded recordings go (controller/broadcast/engine.py)."""

    audio_dir: Path
    """Where uploaded recordings are kept (``audio_id`` in a request names one)."""


class FeedsApi(Protocol):
    """What the API shows of the CAP feed pollers (controller/alerts/feeds.py)."""

    def snapshot(self) -> list[dict[str, Any]]: ...


class SpeechApi(Protocol):
    """What the console's speech preview needs: the engine's SpeechService (controller/speech/tts.py)."""

    def check_length(self, text: str) -> None: ...

    async def synthesize(self, text: str, language: Language) -> Path: ...


class UplinkApi(Protocol):
    """What gateway health shows of the MQTT reporter (controller/uplink/mqtt.py: MqttReporter)."""

    @property
    def connected(self) -> bool: ...

    @property
    def broker(self) -> str | None: ...


@dataclass
class ApiServices:
    """Everything the routes reach; built by the daemon (or a test) and handed to :func:`create_app`."""

    cfg: Config
    store: Store
    engine: BroadcastEngineApi
    registry: DeviceRegistry
    bus: EventBus
    hardware: Hardware | None = None
    scheduler: Scheduler | None = None
    """Told about API-created schedules (``reload()``); shows next runs (``snapshot()``)."""
    health: HealthApi | None = None
    """Device state codes and active faults, for /metrics."""
    county: CountyCommandsApi | None = None
    """County command counts by result, for /metrics."""
    outbox: OutboxApi | None = None
    """Outbox depth and drops, for /metrics."""
    alerts: AlertService | None = None
    """The CAP alert inbox (controller/alerts/inbox.py; routes in controller/api/alerts.py)."""
    feeds: FeedsApi | None = None
    """CAP feed pollers, for ``GET /api/v1/alerts/feeds``."""
    speech: SpeechApi | None = None
    """The engine's own SpeechService (one worker for broadcasts and console previews)."""
    mqtt: UplinkApi | None = None
    """The MQTT reporter, for the uplink state in ``GET /api/v1/gateway``."""
    started_at: float = field(default_factory=time.time)
    keepalive_s: float = KEEPALIVE_S
    token_check_s: float = TOKEN_CHECK_S
    """How often an open event stream checks that its token is still valid."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at shutdown so open event streams end and the server can stop."""


class ApiError(Exception):
    """A client error with a clear message and, where it applies, the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class ScheduleIn(BaseModel):
    """A calendar entry created through the API (config-file schedules are read-only here)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=IDENT, description="Lower-case id: letters, digits, - and _")
    cron: str = Field(min_length=1, max_length=200,
                      description="Five-field cron expression in gateway local time, e.g. '0 7 * * *'")
    enabled: bool = True
    request: BroadcastRequest


Viewer = Annotated[Actor, Depends(require(Role.VIEWER))]
Operator = Annotated[Actor, Depends(require(Role.OPERATOR))]
Admin = Annotated[Actor, Depends(require(Role.ADMIN))]


# -- error bodies -----------------------------------------------------------------------------------


def error_body(message: str, field: str | None = None, details: list[Any] | None = None) -> dict[str, Any]:
    """Every error answer's body (also those the HTTP layer sends itself, controller/api/http_protocol.py)."""
    return {"error": message, "field": field, "details": details or []}


def _error(status: int, message: str, field: str | None = None, details: list[Any] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, field, details), status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str | None:
    """``("body", "targets", "area_codes", 0)`` → ``targets.area_codes.0``."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(map(str, loc)) or None


def _problem(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field (check its spelling)"
    if kind == "missing":
        return "required field is missing"
    if kind == "json_invalid":
        return f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})"
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    details = []
    for err in exc.errors():
        path = None if err.get("type") == "json_invalid" else _field_path(tuple(err.get("loc", ())))
        details.append({"field": path, "problem": _problem(err)})
    first = details[0] if details else {"field": None, "problem": "invalid request"}
    message = f"{first['field']}: {first['problem']}" if first["field"] else first["problem"]
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return _error(422, message, first["field"], details)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = "no such endpoint" if exc.status_code == 404 else None
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # FastAPI could not decode the body
        problem = f"request body is not valid JSON ({exc.__cause__.__class__.__name__}: send UTF-8 JSON)"
        return _error(422, problem, details=[{"field": None, "problem": problem}])
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"method {request.method} not allowed here; this endpoint allows {headers['Allow']}"
    return _error(exc.status_code, message or str(exc.detail), headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: FastAPI makes one route per method, and
    Starlette's 405 names only the first route it tried (``OPTIONS /schedules`` said ``GET``)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _on_auth(_: Request, exc: AuthError) -> JSONResponse:
    headers = None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="ebc"'}
    return _error(exc.status, exc.message, headers=headers)


async def _on_api(_: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.field)


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; see the gateway log")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413: by Content-Length up front, else while reading.

    Past the limit, reading the body raises HTTPException(413), which FastAPI passes through to the
    JSON error handler; a declared length over the limit is answered without reading anything.
    """

    def __init__(self, app: ASGIApp, limit: int, per_path: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.per_path = app, limit, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path", ""), self.limit)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _error(413, _too_large(limit))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int = MAX_BODY_BYTES) -> str:
    return f"request body too large (limit {limit // 1024} KiB)"


# -- representations ----------------------------------------------------------------------------------


def _state_name(state: BroadcastState) -> str:
    return state.name.lower()


def _broadcast_out(record: dict[str, Any]) -> dict[str, Any]:
    state: BroadcastState = record["state"]
    return {**record, "state": _state_name(state), "state_code": int(state),
            "location": f"{PREFIX}/broadcasts/{record['id']}"}


StateFilter = Literal["not_processed", "waiting", "playing", "succeeded", "failed", "cancelled",
                      "0", "1", "2", "3", "4", "5"]
"""A broadcast state by name or national code, as ``GET /broadcasts?state=`` takes it."""


def _parse_state(value: StateFilter | None) -> BroadcastState | None:
    if value is None:
        return None
    return BroadcastState(int(value)) if value.isdigit() else BroadcastState[value.upper()]


def _check_targets(cfg: Config, request: BroadcastRequest, prefix: str = "") -> None:
    """422 before journalling a request that reaches nothing here (the engine resolves the same way)."""
    try:
        resolve(cfg, request.targets)
    except TargetError as exc:
        where = prefix + exc.field
        raise ApiError(422, f"{where}: {exc}", where) from None


def _refusal(exc: ValueError, body: BroadcastRequest) -> tuple[str, str | None]:
    """Message and field for a request the engine refused."""
    if isinstance(exc, TargetError):
        field: str | None = exc.field
    elif isinstance(exc, TextTooLong):
        field = "text"
    else:
        field = "audio_id" if body.audio_id is not None else None
    return (f"{field}: {exc}" if field else str(exc)), field


def _sse(event: Event, seq: int) -> str:
    data = json.dumps({**event.wire(), "ts": event.ts}, ensure_ascii=False, default=str)
    return f"id: {seq}\nevent: {event.kind}\ndata: {data}\n\n"


async def _event_stream(services: ApiServices, actor: Actor) -> AsyncIterator[str]:
    """SSE from the event bus, with a keep-alive comment so proxies and clients see the link live.

    The stream lives as long as the client wants, so the token that opened it is checked again
    before every event and every ``token_check_s``: ``ebc token revoke`` (another process) ends an
    open stream within seconds instead of letting it flow on.
    """
    events = services.bus.subscribe().__aiter__()
    stopping = asyncio.ensure_future(services.stopping.wait())
    pending: asyncio.Future[Event] | None = None
    loop = asyncio.get_running_loop()
    seq = 0
    next_keepalive = next_check = loop.time()
    try:
        yield ": connected\n\n"
        next_keepalive += services.keepalive_s
        next_check += services.token_check_s
        while not services.stopping.is_set():
            if pending is None:
                pending = asyncio.ensure_future(events.__anext__())
            timeout = max(0.0, min(next_keepalive, next_check) - loop.time())
            done, _ = await asyncio.wait({pending, stopping}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            if pending in done or now >= next_check:
                if not _still_valid(services, actor):
                    yield ": token revoked\n\n"
                    return
                next_check = now + services.token_check_s
            if pending in done:
                event, pending = pending.result(), None
                seq += 1
                yield _sse(event, seq)
            elif now >= next_keepalive:
                yield ": keep-alive\n\n"
                next_keepalive = now + services.keepalive_s
    finally:
        stopping.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()


def _still_valid(services: ApiServices, actor: Actor) -> bool:
    """The stream's token is still active (revoked or deleted ends it)."""
    return actor.token_id is None or services.store.token_active(actor.token_id)


def _metrics(services: ApiServices) -> str:
    """Prometheus text for /metrics (families and sources: controller/api/metrics.py)."""
    return exposition(services)


# -- the application ----------------------------------------------------------------------------------


def create_app(services: ApiServices) -> FastAPI:
    """The FastAPI application over ``services``; OpenAPI at /docs and /openapi.json."""
    app = SecureFastAPI(title="ebc — township emergency broadcast gateway", version="1",
                  description="Local API of one gateway. Every endpoint except /api/v1/health needs "
                              "'Authorization: Bearer <token>' (create one with `ebc token create`).",
                  )
    from controller.alerts.cap import MAX_CAP_BYTES
    from controller.api.alerts import CAP_PATH, alert_routes  # it builds on this module's helpers

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES,
                       per_path={AUDIO_PATH: MAX_AUDIO_BYTES, CAP_PATH: MAX_CAP_BYTES})
    app.state.services = services
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _on_auth)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _on_api)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_crash)

    store, cfg = services.store, services.cfg
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(f"{PREFIX}/health", tags=["system"], response_model=HealthOut)
    async def health() -> dict[str, str]:
        """Liveness only (open): the daemon answers. No details for anonymous callers."""
        return {"status": "ok"}

    @app.get(f"{PREFIX}/devices", tags=["devices"], responses=errors(*AUTH_ERRORS))
    async def list_devices(_: Viewer) -> list[dict[str, Any]]:
        """Every terminal and transmitter with its latest polled state."""
        return [v.as_dict() for v in services.registry.devices.values()]

    @app.get(f"{PREFIX}/devices/{{device_id}}", tags=["devices"], responses=errors(*AUTH_ERRORS, 404))
    async def get_device(device_id: str, _: Viewer) -> dict[str, Any]:
        view = services.registry.devices.get(device_id)
        if view is None:
            raise ApiError(404, f"no device '{device_id}' on this gateway")
        return view.as_dict()

    @app.post(f"{PREFIX}/broadcasts", status_code=202, tags=["broadcasts"], response_model=BroadcastAccepted,
              responses=errors(*AUTH_ERRORS, 413, 422))
    async def create_broadcast(body: BroadcastRequest, actor: Operator) -> JSONResponse:
        """Accept a broadcast; 202 once it is journalled (it is never lost after this answer).

        The engine journals and audits it (with this actor: name, token id, remote address), so
        broadcasts from schedules, the county and CAP feeds are audited the same way.
        """
        try:
            broadcast_id = await services.engine.submit(body, actor)
        except ValueError as exc:  # targets reach nothing here, text too long, unknown audio id
            raise ApiError(422, *_refusal(exc, body)) from None
        record = store.get_broadcast(broadcast_id)
        state = record["state"] if record else BroadcastState.WAITING
        location = f"{PREFIX}/broadcasts/{broadcast_id}"
        return JSONResponse({"id": broadcast_id, "state": _state_name(state), "location": location},
                            status_code=202, headers={"Location": location})

    @app.get(f"{PREFIX}/broadcasts", tags=["broadcasts"], responses=errors(*AUTH_ERRORS, 422))
    async def list_broadcasts(_: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                              state: Annotated[StateFilter | None, Query(description="name or code")] = None
                              ) -> list[dict[str, Any]]:
        """Newest first."""
        return [_broadcast_out(b) for b in store.list_broadcasts(limit, offset, _parse_state(state))]

    @app.post(AUDIO_PATH, status_code=201, tags=["broadcasts"], response_model=AudioClipOut,
              responses=errors(*AUTH_ERRORS, 413, 422),
              openapi_extra={"requestBody": {"required": True, "content": WAV_CONTENT}})
    async def upload_audio(request: Request, actor: Operator) -> dict[str, Any]:
        """Upload a recorded announcement (body: a PCM WAV file); play it with ``audio_id``."""
        try:
            clip = store_uploaded_audio(await request.body(), services.engine.audio_dir)
        except ValueError as exc:
            raise ApiError(422, f"body: {exc}", "body") from None
        store.audit(actor, "audio.upload", clip.audio_id,
                    {"bytes": clip.bytes, "duration_s": clip.duration_s})
        return asdict(clip)

    def _broadcast_or_404(broadcast_id: str) -> dict[str, Any]:
        record = store.get_broadcast(broadcast_id)
        if record is None:
            raise ApiError(404, f"no broadcast '{broadcast_id}'")
        return record

    @app.get(f"{PREFIX}/broadcasts/{{broadcast_id}}", tags=["broadcasts"],
             responses=errors(*AUTH_ERRORS, 404))
    async def get_broadcast(broadcast_id: str, _: Viewer) -> dict[str, Any]:
        """One broadcast with its per-terminal outcomes and coverage."""
        return _broadcast_out(_broadcast_or_404(broadcast_id))

    @app.post(f"{PREFIX}/broadcasts/{{broadcast_id}}/cancel", tags=["broadcasts"],
              responses=errors(*AUTH_ERRORS, 404, 409))
    async def cancel_broadcast(broadcast_id: str, actor: Operator) -> dict[str, Any]:
        """Stop a waiting or playing broadcast (the engine audits it); 409 if it is already final."""
        record = _broadcast_or_404(broadcast_id)
        if record["state"] in FINAL_STATES:
            raise ApiError(409, f"broadcast '{broadcast_id}' is already {_state_name(record['state'])}")
        if not await services.engine.cancel(broadcast_id, actor):
            now = store.get_broadcast(broadcast_id) or record
            raise ApiError(409, f"broadcast '{broadcast_id}' could not be cancelled "
                                f"(it is {_state_name(now['state'])})")
        return _broadcast_out(store.get_broadcast(broadcast_id) or record)

    @app.get(f"{PREFIX}/schedules", tags=["schedules"], responses=errors(*AUTH_ERRORS))
    async def list_schedules(_: Viewer) -> list[dict[str, Any]]:
        """Config-file schedules (read-only here) and those created through the API, each with its
        next run or the reason it is not active, as the running scheduler sees it."""
        live = {s["id"]: s for s in services.scheduler.snapshot()} if services.scheduler else {}
        listed = [{**s.model_dump(), "source": "config"} for s in cfg.schedules]
        listed += [{**s, "source": "api"} for s in store.list_schedules()]
        return [{**s, "next_at": live.get(s["id"], {}).get("next_at"),
                 "problem": live.get(s["id"], {}).get("problem")} for s in listed]

    @app.post(f"{PREFIX}/schedules", status_code=201, tags=["schedules"], response_model=ScheduleOut,
              responses=errors(*AUTH_ERRORS, 409, 413, 422))
    async def add_schedule(body: ScheduleIn, actor: Admin) -> dict[str, Any]:
        try:
            validate_cron(body.cron)
        except ValueError as exc:
            raise ApiError(422, f"cron: {exc}", "cron") from None
        _check_targets(cfg, body.request, "request.")
        if any(s.id == body.id for s in cfg.schedules):
            raise ApiError(409, f"schedule '{body.id}' is defined in the config file", "id")
        request = body.request.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            store.add_schedule(body.id, body.cron, request, body.enabled)
        except DuplicateError as exc:
            raise ApiError(409, str(exc), "id") from None
        store.audit(actor, "schedule.add", body.id, {"cron": body.cron, "enabled": body.enabled})
        _reload_scheduler(services)
        return {"id": body.id, "cron": body.cron, "enabled": body.enabled, "request": request,
                "source": "api"}

    @app.delete(f"{PREFIX}/schedules/{{schedule_id}}", status_code=204, tags=["schedules"],
                responses=errors(*AUTH_ERRORS, 404, 409))
    async def delete_schedule(schedule_id: str, actor: Admin) -> None:
        if any(s.id == schedule_id for s in cfg.schedules):
            raise ApiError(409, f"schedule '{schedule_id}' is defined in the config file; edit the file")
        if not store.delete_schedule(schedule_id):
            raise ApiError(404, f"no schedule '{schedule_id}'")
        store.audit(actor, "schedule.delete", schedule_id)
        _reload_scheduler(services)

    @app.get(f"{PREFIX}/audit", tags=["system"], responses=errors(*AUTH_ERRORS, 422))
    async def list_audit(_: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[dict[str, Any]]:
        """Who did what, newest first."""
        return store.list_audit(limit, offset)

    @app.get(f"{PREFIX}/tokens", tags=["system"], response_model=list[TokenOut],
             responses=errors(*AUTH_ERRORS))
    async def list_tokens(_: Admin) -> list[dict[str, Any]]:
        """Active tokens: id, name, role, created (never the secret)."""
        return [{"id": t.id, "name": t.name, "role": t.role.value, "created_at": t.created_at}
                for t in store.list_tokens()]

    @app.get(f"{PREFIX}/events", tags=["system"], response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "event: <kind> / data: <JSON> blocks and : keep-alive comments"},
        **errors(*AUTH_ERRORS)})
    async def events(actor: Viewer) -> StreamingResponse:
        """Server-Sent Events (``event: <kind>``, JSON data). Use fetch() with the Authorization header.
        The stream ends within ``token_check_s`` of its token being revoked."""
        return StreamingResponse(_event_stream(services, actor), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{PREFIX}/metrics", tags=["system"], response_class=PlainTextResponse,
             responses=errors(*AUTH_ERRORS))
    @app.get("/metrics", include_in_schema=False)
    async def metrics(_: Viewer) -> PlainTextResponse:
        """Prometheus text format (also at /metrics, where scrapers look by default)."""
        return PlainTextResponse(_metrics(services), media_type="text/plain; version=0.0.4")

    app.include_router(alert_routes(services))
    from controller.api.console import console_router  # it builds on this module's helpers

    app.include_router(console_router(services))
    install_console(app)  # GET / and /ui/: the web console (security headers: SecureFastAPI)
    return app


def _reload_scheduler(services: ApiServices) -> None:
    if services.scheduler is not None:
        services.scheduler.reload()
