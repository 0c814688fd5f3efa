"""JSON-lines control interface of the simulator, and a small synchronous client.

Tests, benchmarks and technicians use it to look inside the simulated hardware (registers,
physics, audible spans, line counters) and to inject faults — things no wire protocol offers.
One JSON object per line each way: request ``{"op": "...", ...}``, reply ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}`` with a message that names the offending field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from simulator.faults import ALL_FAULTS, RequestError

if TYPE_CHECKING:
    from simulator.runner import Simulation

log = logging.getLogger(__name__)

Reply = dict[str, Any]


_KINDS: dict[str, tuple[type, ...]] = {"a string": (str,), "an integer": (int,), "a number": (int, float),
                                       "true or false": (bool,)}


def _field(req: dict[str, Any], name: str, kind: str, required: bool = True) -> Any:
    """``req[name]`` checked against ``kind`` (a key of _KINDS); None when optional and absent."""
    value = req.get(name)
    if value is None:
        if required:
            raise RequestError(f"missing field '{name}'")
        return None
    if (isinstance(value, bool) and kind != "true or false") or not isinstance(value, _KINDS[kind]):
        raise RequestError(f"field '{name}' must be {kind}, got {json.dumps(value)}")
    return value


class ControlServer:
    """Serves the control ops of one :class:`simulator.runner.Simulation`."""

    def __init__(self, sim: Simulation, host: str, port: int) -> None:
        self.sim = sim
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._ops: dict[str, Callable[[dict[str, Any]], Reply | Awaitable[Reply]]] = {
            "ping": lambda req: {"pong": True},
            "list": lambda req: sim.inventory(),
            "state": self._state,
            "fault": self._fault,
            "audible": self._audible,
            "audio": lambda req: sim.audio.state(),
            "stats": self._stats,
        }

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True,
                                                  limit=1 << 20)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                reply = await self.handle_line(line)
                writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def handle_line(self, line: bytes) -> Reply:
        """Parse and run one request line; never raises."""
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"request is not valid JSON: {exc}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object with an 'op' field"}
        try:
            op = _field(req, "op", "a string")
            handler = self._ops.get(op)
            if handler is None:
                raise RequestError(f"field 'op': unknown op {op!r} (known: {', '.join(self._ops)})")
            result = handler(req)
            if asyncio.iscoroutine(result):
                result = await result
            return {"ok": True, **result}  # type: ignore[dict-item]
        except RequestError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a simulator bug: say so rather than hang the client
            log.exception("control request %r failed", req)
            return {"ok": False, "error": f"internal error: {exc}"}

    def _state(self, req: dict[str, Any]) -> Reply:
        return {"state": self.sim.device_state(_field(req, "device", "a string"))}

    def _fault(self, req: dict[str, Any]) -> Reply:
        fault = _field(req, "fault", "a string")
        if fault not in ALL_FAULTS:
            raise RequestError(f"field 'fault': unknown fault {fault!r} (known: {', '.join(ALL_FAULTS)})")
        applied = self.sim.apply_fault(
            fault,
            device=_field(req, "device", "a string", required=False),
            line=_field(req, "line", "a string", required=False),
            clear=bool(_field(req, "clear", "true or false", required=False)),
            zone=_field(req, "zone", "an integer", required=False),
            rate=_field(req, "rate", "a number", required=False),
            delay_ms=_field(req, "delay_ms", "a number", required=False),
        )
        return {"applied": applied}

    def _audible(self, req: dict[str, Any]) -> Reply:
        device = _field(req, "device", "a string")
        self.sim.terminal(device)  # validates the id
        return self.sim.audio.spans_of(device)

    def _stats(self, req: dict[str, Any]) -> Reply:
        line = _field(req, "line", "a string", required=False)
        if line is None:
            return {"lines": [self.sim.line_state(lid) for lid in self.sim.line_ids()]}
        return {"stats": self.sim.line_state(line)}


class ControlError(RuntimeError):
    """The simulator refused a control request."""


class ControlClient:
    """Blocking client for tests and tools: ``ControlClient(host, port).call("state", device="t01")``."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def request(self, op: str, **fields: Any) -> Reply:
        """Send one request and return the raw reply (``ok`` may be false)."""
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            self._sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("simulator closed the control connection")
                self._buf += chunk
        except OSError:
            self.close()
            raise
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, op: str, **fields: Any) -> Reply:
        """Like :meth:`request` but raises :class:`ControlError` when the simulator says no."""
        reply = self.request(op, **fields)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply
