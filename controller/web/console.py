"""The web console's delivery: static files from the package, and security headers on every response.

The console is plain ES modules and CSS in ``controller/web/static/`` (package data, no build step):
``GET /`` is its index.html, everything else is under ``/ui/``; the front-end core it shares with the
county console (shell, DOM helpers, i18n, API client, base stylesheet) is ``webcommon/static/``,
served under ``/ui/common/``. Web consoles are where emergency
alerting systems were broken into (the 2022 DASDEC advisories were XSS), so every response of the
daemon — API, console, errors, 404s and the SSE stream alike — carries a strict
Content-Security-Policy (scripts and styles only from this origin, no inline code, no framing) and
the usual hardening headers. The headers are added by the outermost layer of the application
(:class:`SecureFastAPI`), outside even the 500 handler, so no response escapes them.

Only the interactive API docs (``/docs``, ``/redoc``) get a looser policy: FastAPI's Swagger UI and
ReDoc pages load their scripts from a CDN and configure them with an inline script. Those pages need
internet access on the browser's side; the console never does.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import webcommon

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The console's files, shipped inside the package (pyproject: tool.setuptools.package-data)."""
ASSETS_PATH = "/ui"

CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "media-src 'self' blob:; connect-src 'self'; font-src 'self'; manifest-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""For everything the daemon serves: only this origin's files run, nothing inline, never framed."""

DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
            "font-src 'self' https://fonts.gstatic.com; worker-src blob:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""For FastAPI's own /docs and /redoc pages only (fixed HTML, CDN scripts, an inline configuration)."""

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

# Module scripts are refused unless served as JavaScript (and nosniff makes browsers strict about
# it); do not depend on the host's /etc/mime.types for that.
for _type, _ext in (("text/javascript", ".js"), ("text/javascript", ".mjs"), ("text/css", ".css"),
                    ("image/svg+xml", ".svg"), ("application/manifest+json", ".webmanifest")):
    mimetypes.add_type(_type, _ext)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class SecurityHeaders:
    """ASGI middleware: sets the security headers on every HTTP response as it starts.

    Headers the application set itself under the same names are replaced, so no route can weaken
    them. API responses also get ``Cache-Control: no-store`` unless they chose a policy: device
    states and audit rows should not linger in a shared duty-room browser's cache.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._common = _encoded(SECURITY_HEADERS)
        self._names = {name for name, _ in self._common} | {b"content-security-policy"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = (DOCS_CSP if path in DOCS_PATHS else CONSOLE_CSP).encode("latin-1")
        is_api = path.startswith("/api/") or path == "/metrics"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in self._names]
                headers += [*self._common, (b"content-security-policy", csp)]
                if is_api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecureFastAPI(FastAPI):
    """FastAPI with :class:`SecurityHeaders` around the whole middleware stack.

    ``add_middleware`` would place it inside Starlette's ServerErrorMiddleware, so a 500 page would
    leave without the headers; wrapping the built stack covers every response.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


class _Assets(StaticFiles):
    """The console's files; browsers revalidate them (ETag) so an upgrade is seen at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def install_console(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the console: ``GET /`` is index.html (never cached), its files under ``/ui/``, the shared
    ones (webcommon) under ``/ui/common/``."""
    index = static_dir / "index.html"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_index() -> Response:
        """The console page. It holds no data; everything comes from the API with a token."""
        if not index.is_file():
            return JSONResponse({"error": f"the web console is not installed ({index} is missing)",
                                 "field": None, "details": []}, status_code=503)
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-store"})

    # The shared files first: the mount at /ui would otherwise answer /ui/common/… with a 404.
    app.mount(webcommon.ASSETS_PATH, _Assets(directory=webcommon.STATIC_DIR, check_dir=False),
              name="console-common")
    app.mount(ASSETS_PATH, _Assets(directory=static_dir, check_dir=False), name="console-assets")
