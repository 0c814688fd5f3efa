"""Who may do what: roles, the actor behind every change, bearer-token checks and log redaction.

Lessons from the field (DESIGN §3): no default credentials, least privilege, an audit trail of who
played what. Tokens are opaque random strings handed out once by ``ebc token create``; only their
SHA-256 is stored (controller/store.py). A token must never reach a log line, a URL or an error body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol
from urllib.parse import unquote_plus

from fastapi import Request

TOKEN_PREFIX = "ebc_"

Via = Literal["api", "schedule", "county", "cap", "system"]


class Role(StrEnum):
    """Least privilege: a viewer watches, an operator plays and cancels, an admin manages.

    A feed token (a warning centre's push client) may only post CAP alerts: it stands outside the
    viewer < operator < admin chain, so a leaked feed token can neither read the gateway nor play
    anything directly — what it posts still goes through the rules (预案) and approval.
    """

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    FEED = "feed"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        """True if this role may do what ``required`` may (operators and admins may do a feed's job)."""
        if self is Role.FEED:
            return required is Role.FEED
        if required is Role.FEED:
            return self.rank >= _RANK[Role.OPERATOR]
        return self.rank >= required.rank


_RANK = {Role.FEED: 0, Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True)
class Actor:
    """Whoever caused a change, as the audit trail records it (never the token itself)."""

    name: str
    role: Role | None = None
    token_id: str | None = None
    remote: str | None = None
    """Client address for API calls ("127.0.0.1:53122"); None for internal actors."""
    via: Via = "api"

    @classmethod
    def system(cls, name: str = "ebc") -> Actor:
        """The daemon itself (restart recovery, expiry)."""
        return cls(name=name, role=Role.ADMIN, via="system")


@dataclass(frozen=True)
class TokenInfo:
    """A stored token's public facts (no secret, no hash)."""

    id: str
    name: str
    role: Role
    created_at: float


class AuthError(Exception):
    """Raised by :func:`require`; the API turns it into 401 (with WWW-Authenticate) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenVerifier(Protocol):
    """What the auth dependency needs from the store (kept narrow so auth does not import it)."""

    def verify_token(self, plaintext: str) -> TokenInfo | None: ...


def bearer_token(header: str | None) -> str | None:
    """The token from an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require(role: Role) -> Callable[[Request], Awaitable[Actor]]:
    """A FastAPI dependency: the calling Actor if its token is valid and its role is at least ``role``.

    The token is read from the Authorization header only — never from the URL, where it would end
    up in access logs and browser history.
    """

    async def dependency(request: Request) -> Actor:
        verifier: TokenVerifier = request.app.state.services.store
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise AuthError(401, "authentication required: send 'Authorization: Bearer <token>'")
        info = verifier.verify_token(token)
        if info is None:
            raise AuthError(401, "invalid or revoked token")
        if not info.role.allows(role):
            needed = "operator role or a feed token" if role is Role.FEED else f"{role.value} role"
            raise AuthError(403, f"this needs the {needed}; token '{info.name}' is {info.role.value}")
        client = request.client
        remote = f"{client.host}:{client.port}" if client else None
        return Actor(name=info.name, role=info.role, token_id=info.id, remote=remote, via="api")

    dependency.__name__ = f"require_{role.value}"
    return dependency


# ---------------------------------------------------------------------------------------------
# Log redaction

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
