"""Who may do what, and who did it: roles and the actor behind every change.

Lessons from the field (DESIGN §3): no default credentials, least privilege, an audit trail of who
played what. Every layer records an :class:`Actor`; none of them needs the web stack for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

TOKEN_PREFIX = "ebc_"

Via = Literal["api", "schedule", "county", "cap", "national", "system"]


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
