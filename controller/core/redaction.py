"""Log redaction: no bearer credential or ``ebc_…`` token survives into any log handler.

Installed on every handler by the daemon's logging setup (controller/app/logs.py) and on the API's
access log, because a token pasted into a URL reaches the access log before any check refuses it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from controller.core.actors import TOKEN_PREFIX

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]{8,}"),
)
_URL_WORD = re.compile(r"[A-Za-z0-9%+._~\-]+")
"""A maximal run of URL characters (linear to scan); those with an escape or a '+' are decoded:
``ebc%5F…``, ``%65%62%63_…``, ``Bearer+…``."""
_UNQUOTE_ROUNDS = 3
"""Escapes are undone up to this often, so a doubly encoded token (``%2565bc_…``) is still found."""


def _has_secret(text: str) -> bool:
    return any(p.search(text) for p in _SECRET_PATTERNS)


def _redact_encoded(match: re.Match[str]) -> str:
    """The whole run as ``[REDACTED]`` if, once URL-decoded, it holds a token or bearer credential."""
    word = decoded = match.group(0)
    if "%" not in word and "+" not in word:
        return word
    for _ in range(_UNQUOTE_ROUNDS):
        decoded, before = unquote_plus(decoded), decoded
        if _has_secret(decoded):
            return "[REDACTED]"
        if decoded == before:
            break
    return word


def redact(text: str) -> str:
    """``text`` with bearer credentials and ``ebc_…`` tokens replaced by ``[REDACTED]``, also when
    they are URL-encoded (a token pasted into a query string reaches the access log that way)."""
    text = _URL_WORD.sub(_redact_encoded, text)  # first: a partly encoded token is redacted whole
    text = _SECRET_PATTERNS[0].sub(r"\1[REDACTED]", text)
    return _SECRET_PATTERNS[1].sub(TOKEN_PREFIX + "[REDACTED]", text)


class RedactingFilter(logging.Filter):
    """Rewrites every record so no token survives into any handler (install on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not silence the record
            message = str(record.msg)
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add the redacting filter to every handler of ``logger`` (default: root) that lacks one."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
