"""The county console's delivery: ``GET /`` is its page, its files are under ``/ui/``, and who am I.

The console is plain ES modules and CSS in ``county/web/`` (package data, no build step), on the
front-end core it shares with the gateway's console (``webcommon/static/``, served under
``/ui/common/``: shell, DOM helpers, i18n, API client, base stylesheet) and under the same rules:
every response of the county service already carries the strict Content-Security-Policy and
hardening headers of :mod:`county.api` (scripts and styles from this origin only, nothing inline,
never framed), which this module relies on and does not weaken.

``GET /api/v1/session`` tells the page the name and role of its token, so it shows an operator the
compose button and a viewer none (the API refuses a viewer's broadcast anyway).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

import webcommon
from county.api import PREFIX, Viewer

STATIC_DIR = Path(__file__).resolve().parent / "web"
"""The console's files, shipped inside the package."""
ASSETS_PATH = "/ui"

# Module scripts are refused unless served as JavaScript (nosniff makes browsers strict about it);
# do not depend on the host's /etc/mime.types for that.
for _type, _ext in (("text/javascript", ".js"), ("text/css", ".css"), ("image/svg+xml", ".svg")):
    mimetypes.add_type(_type, _ext)


class _Assets(StaticFiles):
    """The console's files; browsers revalidate them (ETag) so an upgrade is seen at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def install_console(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the console on ``app``: ``/`` (never cached), ``/ui/…`` (and ``/ui/common/…``), the session."""
    index = static_dir / "index.html"

    @app.get(f"{PREFIX}/session")
    async def session(token: Viewer) -> dict[str, Any]:
        """The calling token's name and role (viewer, operator or admin)."""
        return {"name": token.name, "role": token.role}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_index() -> Response:
        """The console page. It holds no data; everything comes from the API with a token."""
        if not index.is_file():
            return JSONResponse({"detail": f"the county console is not installed ({index} is missing)",
                                 "field": None}, status_code=503)
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-store"})

    # The shared files first: the mount at /ui would otherwise answer /ui/common/… with a 404.
    app.mount(webcommon.ASSETS_PATH, _Assets(directory=webcommon.STATIC_DIR, check_dir=False),
              name="county-console-common")
    app.mount(ASSETS_PATH, _Assets(directory=static_dir, check_dir=False), name="county-console")
