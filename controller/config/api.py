"""The ``api`` section: where the HTTP API and web console listen, and how long a client may dawdle."""

from __future__ import annotations

from pydantic import Field

from controller.config.common import Strict


class ApiSettings(Strict):
    host: str = Field(default="127.0.0.1", description="Listen address; loopback unless you mean it")
    port: int = Field(default=8080, ge=1, le=65535)
    header_timeout_s: float = Field(
        default=20.0, gt=0, le=300,
        description="A connection must send a complete request line and headers within this many "
                    "seconds (of opening, or of its first byte after a keep-alive wait), else it is "
                    "closed (a 408 if part of a request came): clients that never finish hold nothing")
    keepalive_timeout_s: float = Field(default=5.0, gt=0, le=300,
                                       description="An idle keep-alive connection is closed after this")
