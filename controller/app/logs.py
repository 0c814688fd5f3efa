"""Daemon logging: readable text by default, one JSON object per line for log collectors.

Whatever the format, every handler gets the redacting filter (controller/core/redaction.py), so a bearer
token that slips into a message or traceback is written as ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from controller.core.redaction import RedactingFilter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "exc"?}`` per record; non-ASCII kept readable."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: LogFormat = "text", *, verbose: bool = False) -> None:
    """Replace the root handlers with one stderr handler in ``fmt``, redacting secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # uvicorn's access log names method, path and status, never headers; keep it at INFO.
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
