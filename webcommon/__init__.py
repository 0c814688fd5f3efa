"""The front-end files both web consoles share (the gateway's and the county centre's): static files only.

``static/`` holds the shell (login, header, nav, hash router, language switch), the DOM helpers, the
i18n mechanism, the API client (bearer token, JSON, the SSE stream) and the base stylesheet. Both
console servers serve it under ``/ui/common/`` with their own strict Content-Security-Policy; each
console keeps its own views, message tables and index.html. This package holds no other code, so
either service may import it without depending on the other.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The shared console files (pyproject: tool.setuptools.package-data)."""
ASSETS_PATH = "/ui/common"
"""Where both consoles serve them."""
