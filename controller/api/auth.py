"""Bearer-token checks for the API: the role dependency every route declares.

Tokens are opaque random strings handed out once by ``ebc token create``; only their SHA-256 is
stored (controller/storage/journal.py). A token must never reach a log line, a URL or an error body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from fastapi import Request

from controller.core.actors import Actor, Role, TokenInfo


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
