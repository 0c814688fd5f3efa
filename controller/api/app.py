"""The local REST API (``/api/v1``): the application, its middleware and its error answers.

Everything except ``/api/v1/health`` needs a bearer token (controller/api/auth.py); there are no default
credentials, so a gateway with no token created answers 401 to all of it. Every change is audited
with the actor, remote address and token id. Errors are JSON ``{"error", "field", "details"}``
with the right 4xx code, so a duty officer's console and the county's scripts can show the cause:
the routes (controller/api/routers/) raise the errors of controller/core/errors.py and this module
maps each kind to its status, once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.alerts.cap import MAX_CAP_BYTES
from controller.api.auth import AuthError
from controller.api.deps import PREFIX, ApiServices
from controller.api.models import error_body, finish_openapi
from controller.api.routers import ROUTERS
from controller.api.routers.alerts import CAP_PATH
from controller.api.routers.audio import AUDIO_PATH
from controller.core.errors import Conflict, EbcError, Invalid, NotFound, Unavailable
from controller.web.console import SecureFastAPI, install_console

__all__ = ["MAX_AUDIO_BYTES", "MAX_BODY_BYTES", "PREFIX", "ApiServices", "BodyLimit", "create_app",
           "error_body"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_AUDIO_BYTES = 32 * 1024 * 1024

STATUS: dict[type[EbcError], int] = {NotFound: 404, Conflict: 409, Invalid: 422, Unavailable: 503}
"""Each kind of refusal and its HTTP status: the one place the API maps them."""


# -- error answers ----------------------------------------------------------------------------------


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
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI keeps an included router as one entry (``original_router``),
    and the routers are included without a further prefix, so their routes match as they are."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


async def _on_auth(_: Request, exc: AuthError) -> JSONResponse:
    headers = None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="ebc"'}
    return _error(exc.status, exc.message, headers=headers)


async def _on_refusal(_: Request, exc: EbcError) -> JSONResponse:
    status = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
    return _error(status, exc.explain(), exc.field)


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


# -- the application ----------------------------------------------------------------------------------


def create_app(services: ApiServices) -> FastAPI:
    """The FastAPI application over ``services``; OpenAPI at /docs and /openapi.json."""
    app = SecureFastAPI(title="ebc — township emergency broadcast gateway", version="1",
                        description="Local API of one gateway. Every endpoint except /api/v1/health needs "
                                    "'Authorization: Bearer <token>' (create one with `ebc token create`).")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES,
                       per_path={AUDIO_PATH: MAX_AUDIO_BYTES, CAP_PATH: MAX_CAP_BYTES})
    app.state.services = services  # the routers' Services dependency (controller/api/deps.py)
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _on_auth)  # type: ignore[arg-type]
    for kind in STATUS:
        app.add_exception_handler(kind, _on_refusal)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_crash)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for router in ROUTERS:
        app.include_router(router)
    install_console(app)  # GET / and /ui/: the web console (security headers: SecureFastAPI)
    return app
