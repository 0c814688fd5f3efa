"""The county centre's REST API (``/api/v1``) over the live picture and the history database.

Everything except ``/api/v1/health`` needs ``Authorization: Bearer <token>`` (``ebc county token
create``; only the token's SHA-256 is stored). Roles viewer < operator < admin: reading the picture
needs viewer, sending or cancelling a county-wide broadcast operator, the audit log admin. Errors
are JSON ``{"detail": …, "field": …}`` where ``detail`` names the field at fault. Every response
carries the gateway API's hardening headers (strict CSP, no framing, no sniffing, no caching of
API answers): the county console will be the same kind of target the gateway's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from county.config import CountyConfig
from county.countywide import CountyBroadcasts, NoSigningKey, RequestError
from county.picture import Change, Picture
from county.store import ROLES, Store, TokenInfo

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": CSP,
}


@dataclass
class ApiContext:
    """What the routes read: the picture (event loop), the store (worker threads) and the config."""

    cfg: CountyConfig
    store: Store
    picture: Picture
    mqtt_connected: Callable[[], bool] = lambda: False
    stats: Callable[[], dict[str, Any]] = dict
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    broadcasts: CountyBroadcasts | None = None
    keepalive_s: float = 15.0
    token_check_s: float = 10.0


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class SecurityHeaders:
    """ASGI middleware around the whole stack, so even a 500 leaves with the headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self._names = {k for k, _ in self._headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope.get("path", "").startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in self._names]
                headers += self._headers
                if is_api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecureFastAPI(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def _error(status: int, detail: str, fld: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": fld}, status_code=status, headers=headers)


def _context(request: Request) -> ApiContext:
    return request.app.state.county  # type: ignore[no-any-return]


def require(role: str) -> Callable[[Request], Awaitable[TokenInfo]]:
    """A dependency: the caller's token if valid and its role is at least ``role``."""
    assert role in ROLES

    async def dependency(request: Request) -> TokenInfo:
        header = request.headers.get("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(401, "authentication required: send 'Authorization: Bearer <token>'")
        info = await run_in_threadpool(_context(request).store.verify_token, value.strip())
        if info is None:
            raise AuthError(401, "invalid or revoked token")
        if not info.allows(role):
            raise AuthError(403, f"this needs the {role} role; token '{info.name}' is {info.role}")
        return info

    dependency.__name__ = f"require_{role}"
    return dependency


Viewer = Annotated[TokenInfo, Depends(require("viewer"))]
Operator = Annotated[TokenInfo, Depends(require("operator"))]
Admin = Annotated[TokenInfo, Depends(require("admin"))]
Ctx = Annotated[ApiContext, Depends(_context)]


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
    fld = ".".join(loc) or None
    problem = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return _error(422, f"{fld}: {problem}" if fld else problem, fld)


async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    return _error(exc.status_code, detail, headers=dict(getattr(exc, "headers", None) or {}) or None)


async def _on_auth(_: Request, exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="ebc-county"'} if exc.status == 401 else None
    return _error(exc.status, exc.message, "authorization", headers)


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; see the county service log")


def _sse(change: Change, seq: int) -> str:
    kind, data = change  # encoded once by the picture for every client
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n"


async def _stream(ctx: ApiContext, token: TokenInfo) -> AsyncIterator[str]:
    """Picture changes as SSE, with keep-alives; ends within ``token_check_s`` of a revoke."""
    queue = ctx.picture.subscriber_queue()
    loop = asyncio.get_running_loop()
    seq = 0
    last_out = last_check = loop.time()
    try:
        yield ": connected\n\n"
        while not ctx.stopping.is_set():
            change = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # wake up to check the token and send keep-alives
                    change = await queue.get()
            now = loop.time()
            if now - last_check >= ctx.token_check_s:
                if not await run_in_threadpool(ctx.store.token_active, token.id):
                    yield ": token revoked\n\n"
                    return
                last_check = now
            if change is not None:
                seq += 1
                yield _sse(change, seq)
                last_out = now
            elif now - last_out >= ctx.keepalive_s:
                yield ": keep-alive\n\n"
                last_out = now
    finally:
        ctx.picture.unsubscribe(queue)


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over ``ctx``; OpenAPI at /openapi.json."""
    app = SecureFastAPI(title="ebc county centre", version="1", docs_url=None, redoc_url=None,
                        description="Every endpoint except /api/v1/health needs 'Authorization: Bearer "
                                    "<token>' (`ebc county token create NAME --role R`).")
    app.state.county = ctx
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _on_auth)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_crash)

    @app.get(f"{PREFIX}/health")
    async def health(ctx: Ctx) -> dict[str, Any]:
        """Open: is the service up and connected to a broker."""
        return {"status": "ok", "county": ctx.cfg.county.id, "mqtt_connected": ctx.mqtt_connected(),
                "gateways": len(ctx.picture.gateways)}

    @app.get(f"{PREFIX}/overview")
    async def overview(_: Viewer, ctx: Ctx) -> dict[str, Any]:
        """County identity, gateways by status, terminals by state code, open faults, unexplained gaps."""
        return {"county": ctx.cfg.county.model_dump(), **ctx.picture.overview(),
                "ingest": ctx.stats(), "mqtt_connected": ctx.mqtt_connected()}

    @app.get(f"{PREFIX}/gateways")
    async def gateways(_: Viewer, ctx: Ctx) -> dict[str, Any]:
        """Every gateway: status and since when, device counts by state, open faults, last seq, gaps."""
        return {"gateways": ctx.picture.gateway_list()}

    @app.get(f"{PREFIX}/gateways/{{gateway_id}}")
    async def gateway(gateway_id: str, _: Viewer, ctx: Ctx,
                      events: Annotated[int, Query(ge=0, le=1000)] = 50) -> Any:
        """One gateway's board: its devices, recent reports, gaps and broadcasts."""
        detail = ctx.picture.gateway_detail(gateway_id)
        if detail is None:
            return _error(404, f"gateway_id: no gateway '{gateway_id[:64]}' is known", "gateway_id")
        recent, gaps, broadcasts = await run_in_threadpool(_history, ctx.store, gateway_id, events)
        return {**detail, "recent_events": recent, "gap_list": gaps, "broadcasts": broadcasts}

    @app.get(f"{PREFIX}/faults")
    async def faults(_: Viewer, ctx: Ctx) -> dict[str, Any]:
        """Open faults, most severe first, then oldest, with township and village."""
        return {"faults": ctx.picture.faults()}

    @app.get(f"{PREFIX}/map")
    async def county_map(_: Viewer, ctx: Ctx) -> dict[str, Any]:
        """Every terminal with a position and its state, the gateways, and the county outline if any."""
        outline = await run_in_threadpool(ctx.cfg.outline)
        return {"points": ctx.picture.map_points(),
                "gateways": [{"id": g.id, "name": g.name, "location": g.location, "status": g.status}
                             for g in ctx.picture.gateways.values()],
                "outline": outline}

    @app.get(f"{PREFIX}/broadcasts")
    async def broadcasts(_: Viewer, ctx: Ctx,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Broadcast history across gateways, newest first, with per-terminal outcomes."""
        return {"broadcasts": await run_in_threadpool(ctx.store.broadcasts, None, limit)}

    @app.post(f"{PREFIX}/county-broadcasts", status_code=201)
    async def county_broadcast_create(request: Request, token: Operator, ctx: Ctx) -> Any:
        """Send one warning to several townships (signed ``broadcast`` commands); the first report.

        Body: ``{"targets": {"gateways": [...], "area_codes": [...]}, "class", "severity", "title",
        "text", "tone", "repeat", "expires_at", "confirm": true}``, or for a CAP alert ``{"alert": "<XML>",
        "targets" (optional), "expires_at", "confirm": true}``. 409 without a signing key."""
        broadcasts = _broadcasts(ctx)
        return await _compose(request, broadcasts, lambda doc: broadcasts.create(doc, token.name))

    @app.post(f"{PREFIX}/county-broadcasts/preview")
    async def county_broadcast_preview(request: Request, _: Operator, ctx: Ctx) -> Any:
        """What ``POST /county-broadcasts`` would send, to which townships, with the same checks; sends
        and stores nothing (``confirm`` is not needed). For the console's confirm step."""
        broadcasts = _broadcasts(ctx)
        return await _compose(request, broadcasts, broadcasts.preview)

    @app.get(f"{PREFIX}/county-broadcasts")
    async def county_broadcast_list(_: Viewer, ctx: Ctx,
                                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """County-wide broadcasts, newest first, each with its report (``live`` while followed)."""
        return {"broadcasts": await _broadcasts(ctx).list(limit)}

    @app.get(f"{PREFIX}/county-broadcasts/{{broadcast_id}}")
    async def county_broadcast_get(broadcast_id: str, _: Viewer, ctx: Ctx) -> Any:
        report = await _broadcasts(ctx).get(broadcast_id)
        return _no_broadcast(broadcast_id) if report is None else report

    @app.post(f"{PREFIX}/county-broadcasts/{{broadcast_id}}/cancel")
    async def county_broadcast_cancel(broadcast_id: str, token: Operator, ctx: Ctx) -> Any:
        """Stop sending it, and send a signed ``cancel`` to every gateway that accepted it and is not
        done. Cancelling twice is harmless (the report, unchanged)."""
        try:
            report = await _broadcasts(ctx).cancel(broadcast_id, token.name)
        except NoSigningKey:
            return _no_key()
        except RequestError as exc:
            return _error(409, str(exc), exc.field)
        return _no_broadcast(broadcast_id) if report is None else report

    @app.get(f"{PREFIX}/events", response_class=StreamingResponse)
    async def events(token: Viewer, ctx: Ctx) -> StreamingResponse:
        """Server-Sent Events of picture changes (``event: <type>``, JSON data); fetch() with the header."""
        return StreamingResponse(_stream(ctx, token), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{PREFIX}/audit")
    async def audit(_: Admin, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
        """Who did what, newest first (admins only)."""
        return {"audit": await run_in_threadpool(ctx.store.list_audit, limit, offset)}

    return app


MAX_BODY = 64 * 1024
"""What a county broadcast request may weigh (the gateways refuse commands over 64 KiB anyway)."""


def _broadcasts(ctx: ApiContext) -> CountyBroadcasts:
    assert ctx.broadcasts is not None, "the service wires the county broadcasts"
    return ctx.broadcasts


def _no_key() -> JSONResponse:
    return _error(409, "signing: no signing key is configured, so the county cannot send commands "
                       "(`ebc county keygen`, then signing: in county.yaml)", "signing")


async def _compose(request: Request, broadcasts: CountyBroadcasts,
                   act: Callable[[Any], Awaitable[dict[str, Any]]]) -> Any:
    """Read a county broadcast request (create or preview) and act on it; refusals as JSON errors."""
    if broadcasts.signer is None:
        return _no_key()
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"body: larger than {MAX_BODY} bytes", "body")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(422, "body: not valid JSON", "body")
    try:
        return await act(doc)
    except RequestError as exc:
        return _error(422, str(exc), exc.field)
    except NoSigningKey:
        return _no_key()


def _no_broadcast(broadcast_id: str) -> JSONResponse:
    return _error(404, f"broadcast_id: no county broadcast '{broadcast_id[:64]}'", "broadcast_id")


def _history(store: Store, gateway: str, events: int) -> tuple[list[Any], list[Any], list[Any]]:
    return store.recent_events(gateway, events), store.gaps(gateway), store.broadcasts(gateway, 50)
