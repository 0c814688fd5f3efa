"""The errors a request can meet, whoever makes it (API, county command, CAP feed, scheduler).

Raisers say *what* is wrong (not found, conflicts with the state, invalid, not available) and name
the offending field; the API maps each kind to its HTTP status once (controller/api/app.py), so no
caller has to sniff exception types or carry a status table.
"""

from __future__ import annotations


class EbcError(Exception):
    """A refusal with a message a person can act on and, where it applies, the field it concerns."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field

    def explain(self) -> str:
        """The message as a client reads it (the API's ``error``)."""
        return self.message


class NotFound(EbcError):
    """No such resource (the message names the id)."""


class Conflict(EbcError):
    """The request conflicts with the resource's state (already final, defined in the config file …)."""


class Invalid(EbcError, ValueError):
    """The request is unusable; ``field`` is its dotted path (``request.targets``).

    A ValueError too: the broadcast engine's callers outside the API (CAP inbox, county commands,
    scheduler) catch ValueError for every refused request.
    """

    def explain(self) -> str:
        """Field first (``targets: unknown device id(s) …``), so the message alone says where."""
        return f"{self.field}: {self.message}" if self.field else self.message


class Unavailable(EbcError):
    """The part of the gateway this needs is not running here (no inbox, no speech)."""
