"""A simulated RS-485 Modbus RTU line: many terminals on one pty, addressed by unit id.

Framing follows the RTU rules on the simulated wire (see ``pty_port``): a frame ends after 3.5
character times of silence (1.75 ms above 19200 baud), the addressed terminal answers after its
turnaround delay, and the reply goes out at the baud. So a transaction costs what it costs on a
real line. As on a real bus, a bad CRC or an unknown or dead unit id gets silence, and unit id 0
is obeyed by every terminal without a reply.

Every device on a bus hears the replies too, so the 3.5-character silence is owed after a reply
as much as after a request (Modbus over Serial Line V1.02, 2.5.1.1). With strict framing (the
default) a request that starts sooner after the end of a reply runs into it: the devices see one
garbled frame and none answers. Lenient framing answers it anyway, for comparison. Both count it
(``early_frames``) and keep the silence each request left after the reply before it
(``idle_after_reply_ms``), so a master's pacing can be read off the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass

from simulator.modbus_pdu import crc_ok, execute, execute_broadcast, with_crc
from simulator.pty_port import PtyPort
from simulator.spec import SerialLineSpec
from simulator.terminal import Terminal

log = logging.getLogger(__name__)

BROADCAST = 0
FAST_BAUD_T35_S = 0.00175
IDLE_WINDOW = 1000
"""How many of the latest reply-to-request silences ``state()`` summarises."""


@dataclass
class LineStats:
    """What a protocol analyser on the line would count."""

    frames: int = 0
    """Request frames seen (good or bad)."""
    bad_frames: int = 0
    """Frames with a bad CRC or too short to be Modbus."""
    replies: int = 0
    corrupted_replies: int = 0
    unanswered: int = 0
    """Good frames nobody answered (unknown or dead unit id)."""
    broadcasts: int = 0
    early_frames: int = 0
    """Request frames that started less than 3.5 characters after the end of the previous reply:
    unanswered with strict framing, answered anyway with lenient framing."""


class RtuLine:
    """One serial line carrying Modbus RTU to the terminals on it."""

    def __init__(self, spec: SerialLineSpec, terminals: list[Terminal]) -> None:
        self.spec = spec
        self.terminals = {t.spec.unit_id: t for t in terminals}
        self.port = PtyPort(spec, self._on_bytes)
        self.t35_s = FAST_BAUD_T35_S if spec.baudrate > 19200 else 3.5 * self.port.char_s
        self.stats = LineStats()
        self._frame = bytearray()
        self._frame_early = False
        """The frame being received started too soon after a reply."""
        self._judged_reply_end = -math.inf
        """End of the latest reply that a request's start was already measured against."""
        self._idle: deque[float] = deque(maxlen=IDLE_WINDOW)
        self._idle_count = 0
        self._frame_end: asyncio.TimerHandle | None = None
        self._frames: asyncio.Queue[tuple[bytes, float, bool]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.port.open()
        self._task = asyncio.create_task(self._serve(), name=f"rtu-{self.spec.id}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.unplug()

    def unplug(self) -> None:
        """Pull the adapter: the pty goes away with its link; a half-received frame is lost."""
        if self._frame_end:
            self._frame_end.cancel()
        self._frame.clear()
        self._frame_early = False
        self.port.close()

    def plug(self) -> None:
        """Plug back in: a new pty behind the same link path."""
        self.port.open()

    def _on_bytes(self, data: bytes, arrived_at: float) -> None:
        if not self._frame:
            self._frame_starts(arrived_at - len(data) * self.port.char_s)
        self._frame += data
        if self._frame_end:
            self._frame_end.cancel()
        loop = asyncio.get_running_loop()
        self._frame_end = loop.call_at(arrived_at + self.t35_s, self._end_of_frame)

    def _frame_starts(self, start: float) -> None:
        """A request frame begins at ``start`` (its first byte on the wire): measure the silence
        since the reply before it. (Silence after a request is enforced by the frame timer: bytes
        within 3.5 characters of a request are part of it.)"""
        reply_end = self.port.tx_end
        self._frame_early = False
        if reply_end <= self._judged_reply_end:
            return  # the previous frame on the bus was a request, not a reply
        self._judged_reply_end = reply_end
        idle = start - reply_end
        self._idle.append(idle)
        self._idle_count += 1
        self._frame_early = idle < self.t35_s

    def _end_of_frame(self) -> None:
        self._frame_end = None
        frame = bytes(self._frame)
        self._frame.clear()
        self._frames.put_nowait((frame, asyncio.get_running_loop().time(), self._frame_early))
        self._frame_early = False

    async def _serve(self) -> None:
        while True:
            frame, detected_at, early = await self._frames.get()
            try:
                await self._handle(frame, detected_at, early)
            except Exception:  # a simulator bug must not take the whole line down
                log.exception("line %s: error handling frame %s", self.spec.id, frame.hex())

    async def _handle(self, frame: bytes, detected_at: float, early: bool) -> None:
        self.stats.frames += 1
        if early:
            self.stats.early_frames += 1
            if self.spec.strict_framing:
                log.debug("line %s: frame %s started within 3.5 characters of a reply: merged with it, "
                          "unanswered", self.spec.id, frame.hex())
                return
        if len(frame) < 4 or not crc_ok(frame):
            self.stats.bad_frames += 1
            log.debug("line %s: bad frame %s", self.spec.id, frame.hex())
            return
        unit, pdu = frame[0], frame[1:-2]
        if unit == BROADCAST:
            self.stats.broadcasts += 1
            execute_broadcast([t for t in self.terminals.values() if t.responsive], pdu)
            return
        term = self.terminals.get(unit)
        if term is None or not term.responsive:
            self.stats.unanswered += 1
            return
        reply = bytearray(with_crc(bytes([unit]) + execute(term, pdu)))
        if term.wire.corrupt_next():
            reply[term.wire.rng.randrange(1, len(reply))] ^= 0x5A  # damaged on the wire: CRC mismatch
            self.stats.corrupted_replies += 1
        loop = asyncio.get_running_loop()
        delay = detected_at + (term.spec.turnaround_ms + term.wire.extra_delay_ms) / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.port.plugged:
            await self.port.send(bytes(reply))
            self.stats.replies += 1

    def idle_after_reply_ms(self) -> dict[str, float | int | None]:
        """The silence masters left between a reply and their next request: how many were
        measured in all, and the least, median and most of the latest ``IDLE_WINDOW``."""
        idle = sorted(self._idle)
        if not idle:
            return {"count": 0, "min": None, "median": None, "max": None}
        return {"count": self._idle_count, "min": round(idle[0] * 1000, 3),
                "median": round(statistics.median(idle) * 1000, 3), "max": round(idle[-1] * 1000, 3)}

    def state(self) -> dict[str, object]:
        return {"id": self.spec.id, "kind": "rtu", "units": sorted(self.terminals),
                "framing": "strict" if self.spec.strict_framing else "lenient",
                "t35_ms": round(self.t35_s * 1000, 3), "char_ms": round(self.port.char_s * 1000, 4),
                **self.port.stats(), **asdict(self.stats), "idle_after_reply_ms": self.idle_after_reply_ms()}
