"""The API's HTTP/1.1 connections: uvicorn's h11 protocol with ebc's error shape and a header timeout.

Two things happen below the application, where FastAPI never sees them:

* a request h11 cannot parse is answered by uvicorn with a plain-text 400 and none of the security
  headers every other answer carries (controller/web/console.py). Here it is the API's JSON error body
  (``{"error", "field", "details"}``) with the same headers, and the connection is closed;
* a client that opens a connection and never finishes its request line and headers (slowloris)
  was never timed out: uvicorn's keep-alive timer only runs *between* requests, and any byte
  received stops it. Here every request head must be complete within ``api.header_timeout_s`` of
  the connection opening or of its first byte after an idle keep-alive wait; if some of it came,
  the answer is a JSON 408, else the connection is simply closed.

The keep-alive timeout itself is uvicorn's (``timeout_keep_alive``, from ``api.keepalive_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from controller.api.models import error_body
from controller.web.console import CONSOLE_CSP, SECURITY_HEADERS

DEFAULT_HEADER_TIMEOUT_S = 20.0


def _error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """What every error answer carries: JSON, no caching, the daemon's security headers."""
    headers = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
               "cache-control": "no-store", **SECURITY_HEADERS, "content-security-policy": CONSOLE_CSP}
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class GatewayHttpProtocol(H11Protocol):
    """uvicorn's :class:`H11Protocol` with JSON protocol errors and a request-head timeout.

    Build it with :func:`http_protocol` (uvicorn's ``Config(http=...)`` takes the class).
    """

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the request-head timeout ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # first bytes after a keep-alive wait (uvicorn stops its timer)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._cancel_header_timer()  # the head is complete (or the connection is over)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        received, _ = self.conn.trailing_data
        if received:
            self.logger.warning("request head not complete within %.0f s; closing the connection",
                                self.header_timeout_s)
            self._send_error(408, f"request line and headers not received within {self.header_timeout_s:g} s")
        else:
            self.transport.close()

    # -- answers that never reach the application -----------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 could not parse, as the API's JSON error."""
        self._cancel_header_timer()
        self._send_error(400, "malformed HTTP request: its request line or headers could not be parsed")

    def _send_error(self, status: int, message: str) -> None:
        body = json.dumps(error_body(message)).encode()
        headers = [*self.server_state.default_headers, *_error_headers(body)]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers,
                                                             reason=STATUS_PHRASES[status])) or b"")
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # a response had already begun: nothing more can be said
            pass
        self.transport.close()


def http_protocol(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> type[GatewayHttpProtocol]:
    """The protocol class for uvicorn's ``Config(http=...)`` with this request-head timeout."""
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {"header_timeout_s": header_timeout_s})
