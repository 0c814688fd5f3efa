"""Modbus TCP (MBAP) listener for the terminals behind one IP endpoint.

Each endpoint answers the unit ids of its terminals and 255 (the "this device" id of a lone
terminal); any other unit id is met with silence, as is a terminal that is offline. Unit id 0
writes are obeyed without a reply. TCP has its own checksums, so the ``crc_errors`` fault shows
up the way a flaky 4G link does: the reply is lost and the client times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import asdict, dataclass

from simulator.modbus_pdu import execute, execute_broadcast
from simulator.spec import TcpEndpointSpec
from simulator.terminal import Terminal

log = logging.getLogger(__name__)

ANY_UNIT = 255
MAX_PDU = 253


@dataclass
class TcpStats:
    connections: int = 0
    frames: int = 0
    bad_frames: int = 0
    replies: int = 0
    dropped_replies: int = 0
    unanswered: int = 0
    broadcasts: int = 0


class TcpEndpoint:
    """One listening socket serving one (or a few) terminals."""

    def __init__(self, spec: TcpEndpointSpec, terminals: list[Terminal]) -> None:
        self.spec = spec
        self.terminals = {t.spec.unit_id: t for t in terminals}
        self.stats = TcpStats()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.spec.host, self.spec.port,
                                                  reuse_address=True)

    async def stop(self) -> None:
        server = self._server
        self.unplug()
        if server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    @property
    def plugged(self) -> bool:
        return self._server is not None

    def unplug(self) -> None:
        """The IP link goes down: connections drop and new ones are refused."""
        if self._server:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    def plug(self) -> None:
        """The link comes back: listen again (in the background; a failure is logged)."""
        if self._server is None:
            task = asyncio.get_running_loop().create_task(self.start())
            task.add_done_callback(self._plugged)

    def _plugged(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception():
            log.error("endpoint %s: cannot listen again: %s", self.spec.id, task.exception())

    def _target(self, unit: int) -> Terminal | None:
        if unit == ANY_UNIT and len(self.terminals) == 1:
            return next(iter(self.terminals.values()))
        return self.terminals.get(unit)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", header)
                if proto != 0 or not 2 <= length <= MAX_PDU + 1:
                    self.stats.bad_frames += 1
                    break  # not Modbus: drop the connection like a real stack would
                pdu = await reader.readexactly(length - 1)
                self.stats.frames += 1
                reply = await self._execute(unit, pdu)
                if reply is not None:
                    writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                    await writer.drain()
                    self.stats.replies += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _execute(self, unit: int, pdu: bytes) -> bytes | None:
        if unit == 0:
            self.stats.broadcasts += 1
            execute_broadcast([t for t in self.terminals.values() if t.responsive], pdu)
            return None
        term = self._target(unit)
        if term is None or not term.responsive:
            self.stats.unanswered += 1
            return None
        reply = execute(term, pdu)
        delay = (term.spec.turnaround_ms + term.wire.extra_delay_ms) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        if term.wire.corrupt_next():
            self.stats.dropped_replies += 1
            return None
        return reply

    def state(self) -> dict[str, object]:
        return {"id": self.spec.id, "kind": "tcp", "host": self.spec.host, "port": self.spec.port,
                "plugged": self.plugged, "units": sorted(self.terminals), **asdict(self.stats)}
