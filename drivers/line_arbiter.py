"""One arbiter per physical line: the only owner of a pymodbus client.

An RS-485 line is half duplex and multi-drop: exactly one transaction may be on the wire, and an
emergency command must not wait for a health-polling cycle to finish. So every request on a line
goes through one priority queue served by one worker (Home Assistant's Modbus hub does the same
with a lock); commands (``Priority.COMMAND``) are taken before polls and retries are re-queued, so
a command waits at most for the one transaction already on the wire.

What pymodbus 3.16 does, and how the arbiter uses it (read from its source):

* ``retries=0``: the arbiter retries itself so it can count retries and let commands in between.
* Its own reply timeout (``timeout``) is also the connect timeout and is global per client, so the
  arbiter sets it high and enforces per-request (per-device) timeouts itself by cancelling the
  pending ``execute`` (pymodbus releases its lock on cancellation).
* A reply with a bad CRC is silently discarded by ``FramerRTU.decode`` (the whole buffer is
  dropped) and the request would simply time out. The arbiter watches received bytes through
  ``trace_packet``: a complete frame from the addressed unit whose CRC fails ends the attempt at
  once as a CRC error, and an attempt that times out after receiving bytes is counted as garbled
  (CRC/framing) rather than as silence.
* A serial port that disappears raises ``SerialException`` in the transport's reader; pymodbus
  closes the transport and reports it via ``trace_connect(False)``. With ``reconnect_delay=0`` it
  does not reconnect by itself; the arbiter polls the port path and builds a fresh client.
* Broadcast = device id 0 with ``no_response_expected=True`` (execute returns at once); the
  arbiter then keeps the line silent for the frame's wire time, 3.5 characters and the turnaround
  delay so terminals can act before the next frame.
* Its serial transport reads whatever the port has each time the event loop reports it readable,
  so a reply trickling in at 9600 baud wakes the loop once per few bytes (the simulator's pty
  delivers 4 ms chunks; USB adapters deliver at their latency timer). pymodbus offers no option for
  larger reads and stubs ``pause_reading()``; :class:`_ReplyHold` gets the same effect for health
  polls: once a reply's first bytes are in, the arbiter knows its length and stops watching the
  port until the rest has had its wire time, so a reply costs two wake-ups instead of one per chunk.
* The 3.5-character silence before the next request counts from when the reply left the wire,
  bounded from when its bytes arrived (:class:`_ReplyEnd`), not from when pymodbus handed the
  decoded reply over; the request never goes out sooner (a strict RTU bus would merge it into
  the reply and nobody would answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.errors import DeviceExceptionError, LineDownError, NoResponseError
from drivers.link_state import LineDriver, LineStateCallback, LinkState
from drivers.modbus_codec import Raw, ReadBlock, WriteBlock, is_bit_table
from drivers.serial_port import PortIdentity, SerialPortSettings, port_identity

log = logging.getLogger(__name__)

BROADCAST_UNIT = 0
COMMAND_GRACE_S = 0.005
"""After a command (or emergency) transaction, polls wait this long for the next command: the same
caller's next request is normally submitted within a millisecond (see ``LineArbiter._next_job``)."""
GARBLE_SLACK_S = 0.03
"""Delivery slack after a reply's wire time before it counts as garbled (a USB adapter's latency
timer holds bytes up to 16 ms; a pty delivers in 4 ms chunks)."""
_CLIENT_TIMEOUT_S = 60.0  # pymodbus's own timeout: never reached, the arbiter cancels first


class Priority(IntEnum):
    """Lower value is served first; equal priorities in submission order."""

    EMERGENCY = 0
    """Emergency activation: ahead even of routine commands (emergency before daily)."""
    COMMAND = 5
    POLL = 10


@dataclass(frozen=True)
class SerialLineSettings(SerialPortSettings):
    """An RS-485/RS-232 Modbus RTU line (the controller maps its config onto this)."""

    timeout_s: float = 0.3
    """Reply timeout: silence allowed after the request left the wire (before the reply's wire time)."""
    retries: int = 2
    broadcast_turnaround_s: float = 0.1
    """Silence kept after a broadcast write so every terminal has executed it."""
    reconnect_max_s: float = 5.0
    """Failed open attempts back off up to this interval."""
    hold_replies: bool = True
    """Read the rest of a poll's reply in one go once its wire time has passed (see
    :class:`_ReplyHold`) instead of waking for every chunk the port delivers; False only to
    compare (bench, tests)."""


@dataclass(frozen=True)
class TcpLineSettings:
    """A Modbus TCP endpoint."""

    host: str
    port: int
    timeout_s: float = 1.0
    retries: int = 2
    reconnect_interval_s: float = 0.5
    reconnect_max_s: float = 5.0
    """Failed connection attempts back off up to this interval."""
    name: str = ""


LineSettings = SerialLineSettings | TcpLineSettings


@dataclass
class LineStats:
    """Per-line counters since start (``requests`` counts transactions, not attempts)."""

    requests: int = 0
    successes: int = 0
    timeouts: int = 0
    """Attempts met with silence."""
    crc_errors: int = 0
    """Attempts whose reply arrived garbled (bad CRC, truncated or wrong function)."""
    retries: int = 0
    exceptions: int = 0
    """Modbus exception replies (the device refused)."""
    failures: int = 0
    """Transactions given up after every retry."""
    line_down: int = 0
    """Transactions refused at once because the line was down."""
    broadcasts: int = 0
    reconnects: int = 0
    latency_last_ms: float = 0.0
    latency_avg_ms: float = 0.0
    latency_max_ms: float = 0.0


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    unit: int = field(compare=False)
    block: ReadBlock | WriteBlock = field(compare=False)
    timeout_s: float = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    attempts: int = field(default=0, compare=False)
    garbled: int = field(default=0, compare=False)
    retries: int = field(default=0, compare=False)


class LineArbiter(LineDriver):
    """Serialises every Modbus transaction of one line through a priority queue.

    Use :meth:`start` once, then :meth:`read`, :meth:`write` and :meth:`broadcast` from any task.
    Failures raise :class:`~drivers.errors.NoResponseError`,
    :class:`~drivers.errors.DeviceExceptionError` or :class:`~drivers.errors.LineDownError`.
    """

    def __init__(self, settings: LineSettings, *, on_line_state: LineStateCallback | None = None) -> None:
        self.settings = settings
        self.name = settings.name or (settings.port if isinstance(settings, SerialLineSettings)
                                      else f"{settings.host}:{settings.port}")
        self.is_serial = isinstance(settings, SerialLineSettings)
        self._link = LinkState(self.name, on_line_state)
        self._stats = LineStats()
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._writes: dict[int, int] = {}
        self._broadcast_writes = 0
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._generation = 0
        self._port_identity: PortIdentity | tuple[()] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retry_s = settings.reconnect_interval_s
        self._dropped = asyncio.Event()  # wakes the supervisor at once when the line goes down
        self._decoder = DecodePDU(False)
        # state of the attempt on the wire (set by the worker, read by the trace callbacks)
        self._deadline: asyncio.Timeout | None = None
        """The timeout of the reply being waited for (rescheduled to now to abort the wait)."""
        self._abort_reason: str | None = None
        self._expect_unit = -1
        self._expect_block: ReadBlock | WriteBlock | None = None
        """The request on the wire, while an attempt waits for its reply."""
        self._rx_bytes = 0
        self._command_grace_until = 0.0
        """Monotonic time until which a poll gives way to a command that may still come."""
        self._quiet_until = 0.0
        """No frame may start before this (monotonic): 3.5 characters after the last one."""
        self._reply_end: _ReplyEnd | None = None
        self._hold: _ReplyHold | None = None
        self._holding = False
        """The reply on the wire is read whole (a poll, see :class:`_ReplyHold`)."""
        if isinstance(settings, SerialLineSettings):
            self._char_s = settings.char_s
            self._t35_s = 3.5 * self._char_s if settings.baudrate <= 19200 else 0.00175
            self._reply_end = _ReplyEnd(self._char_s, self._t35_s)
            if settings.hold_replies:
                self._hold = _ReplyHold(self._char_s, self._t35_s, self._reply_end)
        else:
            self._char_s = self._t35_s = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the line if possible and start the worker; a missing port is retried in the background."""
        if self._tasks:
            return
        await self._open()
        self._tasks = [asyncio.create_task(self._worker(), name=f"arbiter {self.name}"),
                       asyncio.create_task(self._supervise(), name=f"arbiter {self.name} reconnect")]

    async def close(self) -> None:
        """Stop the worker, fail queued requests and close the port."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(LineDownError(f"line {self.name} closed"))
        self._drop_client("closed", notify=False)

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def stats(self) -> LineStats:
        """A copy of the counters."""
        return replace(self._stats)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def write_count(self, unit: int) -> int:
        """Writes submitted so far that reach ``unit`` (its own and unit-id-0 broadcasts), sent
        or not: a value that changed since a read of its settings means they may be stale."""
        return self._writes.get(unit, 0) + self._broadcast_writes

    # ------------------------------------------------------------------ public requests

    async def read(self, unit: int, block: ReadBlock, *, priority: Priority = Priority.POLL,
                   timeout_s: float | None = None, retries: int | None = None) -> list[Raw]:
        """Read one block; returns ``block.count`` bools (bit tables) or register ints.

        ``retries`` overrides the line's (0: one attempt — a probe of a unit that has not been
        answering costs one timeout of line time, not three)."""
        result: list[Raw] = await self._submit(unit, block, priority, timeout_s, retries)
        return result

    async def write(self, unit: int, block: WriteBlock, *, priority: Priority = Priority.COMMAND,
                    timeout_s: float | None = None, retries: int | None = None) -> None:
        """Write one block to one unit and wait for its acknowledgement (``retries`` as for read)."""
        if unit == BROADCAST_UNIT:
            raise ValueError("use broadcast() for unit id 0")
        await self._submit(unit, block, priority, timeout_s, retries)

    async def broadcast(self, block: WriteBlock, *, priority: Priority = Priority.COMMAND) -> None:
        """Write one block to unit id 0: every terminal on the line executes it, none replies.

        Returns once the frame and the mandated silence after it have passed, so the next
        transaction on the line finds the terminals ready. Delivery cannot be confirmed on the wire.
        """
        await self._submit(BROADCAST_UNIT, block, priority, None)

    def _submit(self, unit: int, block: ReadBlock | WriteBlock, priority: Priority,
                timeout_s: float | None, retries: int | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(block, WriteBlock):  # counted even if it fails: it may have been executed
            if unit == BROADCAST_UNIT:
                self._broadcast_writes += 1
            else:
                self._writes[unit] = self._writes.get(unit, 0) + 1
        if not self._tasks:
            future.set_exception(LineDownError(f"line {self.name} is not started"))
        elif self._client is None:
            self._stats.line_down += 1
            future.set_exception(self._down_error())
        else:
            self._queue.put_nowait(_Job(int(priority), next(self._seq), unit, block,
                                        timeout_s or self.settings.timeout_s, future,
                                        retries=self.settings.retries if retries is None else retries))
        return future

    def _down_error(self) -> LineDownError:
        return LineDownError(f"line {self.name} is down: {self._link.reason} "
                             f"(retrying every {self._retry_s:g} s)")

    # ------------------------------------------------------------------ worker

    async def _next_job(self) -> _Job:
        """The next request; a poll waits up to :data:`COMMAND_GRACE_S` after a command, in case the
        same caller's next command is on its way (an activation's frames and read-backs come one
        after another: a health poll slipped in between each pair made it 1.3× slower)."""
        job = await self._queue.get()
        wait = self._command_grace_until - time.monotonic()
        if job.priority < Priority.POLL or wait <= 0:
            return job
        try:
            async with asyncio.timeout(wait):
                other = await self._queue.get()
        except TimeoutError:
            return job
        if other.priority < Priority.POLL:
            self._queue.put_nowait(job)  # the poll keeps its place in the queue
            return other
        self._queue.put_nowait(other)
        return job

    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            if job.future.done():  # the caller gave up while queued
                continue
            try:
                result = await self._attempt(job)
            except asyncio.CancelledError:  # close() while on the wire: the caller must not hang
                self._settle(job, LineDownError(f"line {self.name} closed"))
                raise
            except (NoResponseError, _Garbled) as exc:
                job.attempts += 1
                if isinstance(exc, _Garbled):
                    job.garbled += 1
                if job.attempts <= job.retries and not job.future.done():
                    self._stats.retries += 1
                    self._queue.put_nowait(job)  # same place among polls; commands go first
                    continue
                self._stats.failures += 1
                self._settle(job, NoResponseError(
                    f"unit {job.unit} on line {self.name} did not answer {_describe(job.block)} "
                    f"({job.attempts} attempt(s), {job.garbled} garbled)",
                    attempts=job.attempts, garbled=job.garbled))
            except LineDownError as exc:
                self._stats.line_down += 1
                self._settle(job, exc)
            except DeviceExceptionError as exc:
                self._stats.exceptions += 1
                self._settle(job, exc)
            except Exception as exc:  # never let one bad request kill the line
                log.exception("line %s: unexpected error", self.name)
                self._settle(job, exc)
            else:
                self._settle(job, None, result)
            if job.priority < Priority.POLL:
                self._command_grace_until = time.monotonic() + COMMAND_GRACE_S

    @staticmethod
    def _settle(job: _Job, exc: BaseException | None, result: object = None) -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    async def _attempt(self, job: _Job) -> object:
        """Put one request on the wire and classify the outcome."""
        client = self._client
        if client is None or not self._port_still_there():
            raise self._down_error()
        if job.attempts == 0 and job.unit != BROADCAST_UNIT:
            self._stats.requests += 1
        if self._hold is not None:
            self._hold.next_request(time.monotonic())
        delay = self._quiet_until - time.monotonic()
        if delay > 0:  # never sooner: on a strict bus the request would run into the last frame
            await asyncio.sleep(delay)
        self._abort_reason = None
        self._expect_unit, self._rx_bytes = job.unit, 0
        started = time.monotonic()
        if job.unit != BROADCAST_UNIT:
            self._expect_block = job.block
            # only health polling (and line checks) trades a few ms per reply for fewer wake-ups;
            # a broadcast's commands and read-backs get every reply as soon as it is in
            self._holding = self._hold is not None and job.priority >= Priority.POLL
            if self._reply_end is not None:
                self._reply_end.new_reply()
            if self._hold is not None:
                self._hold.new_reply()
            try:
                return await self._reply(client, job, started)
            finally:
                self._expect_block, self._holding = None, False
                if self._hold is not None:
                    self._hold.release()  # never leave the port unwatched after an attempt
        try:
            await _call(client, job.unit, job.block, True)
        except (ConnectionException, ModbusException) as exc:
            self._drop_client(f"send failed: {exc}")
            raise self._down_error() from None
        self._stats.broadcasts += 1
        turnaround = (self.settings.broadcast_turnaround_s
                      if isinstance(self.settings, SerialLineSettings) else 0.0)
        self._quiet_until = started + _request_size(job.block) * self._char_s + self._t35_s + turnaround
        await asyncio.sleep(max(0.0, self._quiet_until - time.monotonic()))
        return None

    async def _reply(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, job: _Job,
                     started: float) -> object:
        """Send the request, wait for its reply and classify it.

        pymodbus's ``execute`` is awaited in this task under :func:`asyncio.timeout` (no task of its
        own, no ``asyncio.wait``: each of those costs the idle gateway a loop iteration per
        transaction); a bad CRC or a dropped line ends the wait at once by rescheduling the
        timeout to now (:meth:`_abort_attempt`).
        """
        wire = (_request_size(job.block) + _reply_size(job.block)) * self._char_s
        try:
            async with asyncio.timeout(job.timeout_s + wire) as self._deadline:
                response = await _call(client, job.unit, job.block, False)
        except TimeoutError:
            self._quiet_until = time.monotonic() + self._t35_s
            if self._abort_reason == "down":
                raise self._down_error() from None
            if self._abort_reason is not None or self._rx_bytes:
                self._stats.crc_errors += 1
                raise _Garbled() from None
            self._stats.timeouts += 1
            raise NoResponseError("timeout") from None
        except ConnectionException:
            self._deadline = None  # the wait is over: nothing left to abort (a finished timeout refuses)
            self._drop_client("connection lost")
            raise self._down_error() from None
        except ModbusException:  # pymodbus could not decode what came back
            self._quiet_until = time.monotonic() + self._t35_s
            self._stats.crc_errors += 1
            raise _Garbled() from None
        finally:
            self._deadline = None
        now = time.monotonic()
        self._quiet_until = (self._reply_end.end(now) if self._reply_end is not None else now) + self._t35_s
        if response.isError():
            raise DeviceExceptionError(
                f"unit {job.unit} on line {self.name} refused {_describe(job.block)}: "
                f"Modbus exception {response.exception_code}", code=response.exception_code)
        if not _answers(response, job.block):  # a late reply to an earlier request
            self._stats.crc_errors += 1
            raise _Garbled()
        self._record_latency((now - started) * 1000)
        self._stats.successes += 1
        if isinstance(job.block, ReadBlock):
            data = response.bits if is_bit_table(job.block.table) else response.registers
            return list(data[:job.block.count])
        return None

    def _garble_deadline(self, received: int) -> None:
        """A reply has begun: it is on the wire as one continuous stream, so it is complete within
        its own wire time (plus the silence that ends it and some delivery slack). One that is not
        decodable by then was damaged — a bad header hides its CRC failure — and is retried now,
        not after the whole reply timeout (which is for silence)."""
        assert self._deadline is not None and self._expect_block is not None
        rest = max(0, _reply_size(self._expect_block) - received) * self._char_s
        limit = asyncio.get_running_loop().time() + rest + self._t35_s + GARBLE_SLACK_S
        when = self._deadline.when()
        if when is None or limit < when:
            self._deadline.reschedule(limit)

    def _abort_attempt(self, reason: str) -> None:
        """End the wait for the current reply now (``crc``: garbled; ``down``: the line dropped)."""
        if self._deadline is not None and self._abort_reason is None:
            self._abort_reason = reason
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def _record_latency(self, ms: float) -> None:
        s = self._stats
        s.latency_last_ms = ms
        s.latency_max_ms = max(s.latency_max_ms, ms)
        s.latency_avg_ms += (ms - s.latency_avg_ms) / (s.successes + 1)

    # ------------------------------------------------------------------ pymodbus callbacks

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Watch the received bytes: a complete frame with a bad CRC ends the attempt at once."""
        if sending:
            return data
        first = self._rx_bytes == 0
        self._rx_bytes += len(data)
        if first and self.is_serial and self._deadline is not None and self._expect_block is not None:
            self._garble_deadline(len(data))
        if self.is_serial and self._deadline is not None \
                and _rtu_crc_failed(self._decoder, data, self._expect_unit):
            self._abort_attempt("crc")
        elif self._reply_end is not None and self._expect_block is not None:
            size = _rtu_reply_size(data, self._expect_unit, self._expect_block)
            held = self._hold is not None and self._hold.deferred
            self._reply_end.received(time.monotonic(), len(data), size, after_hold=held)
            if self._holding and self._hold is not None and self._client is not None:
                self._hold.received(self._client, data, size)
        return data

    def _trace_connect(self, generation: int, up: bool) -> None:
        if not up and generation == self._generation and self._client is not None:
            self._drop_client("connection lost" if not self.is_serial else "serial port closed")

    # ------------------------------------------------------------------ connection

    def _identity(self) -> PortIdentity | tuple[()] | None:
        """What the port path points at now (TCP: always the same)."""
        if isinstance(self.settings, SerialLineSettings):
            return port_identity(self.settings.port)
        return ()

    def _port_still_there(self) -> bool:
        if not self.is_serial or self._identity() == self._port_identity:
            return True
        self._drop_client(f"serial port {self.name} vanished or was replaced")
        return False

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        self._generation += 1
        generation = self._generation

        def on_connect(up: bool) -> None:
            self._trace_connect(generation, up)

        s = self.settings
        if isinstance(s, SerialLineSettings):
            return AsyncModbusSerialClient(
                s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits,
                name=self.name, reconnect_delay=0, timeout=_CLIENT_TIMEOUT_S, retries=0,
                trace_packet=self._trace_packet, trace_connect=on_connect)
        return AsyncModbusTcpClient(
            s.host, port=s.port, name=self.name, reconnect_delay=0, timeout=_CLIENT_TIMEOUT_S, retries=0,
            trace_packet=self._trace_packet, trace_connect=on_connect)

    async def _open(self) -> bool:
        """Try once to open the line; True when it is up."""
        identity = self._identity()
        if identity is None:
            self._link.set_down(f"serial port {self.name} does not exist")
            return False
        client = self._new_client()
        try:
            ok = await asyncio.wait_for(client.connect(), self.settings.timeout_s + 2.0)
        except (TimeoutError, OSError):
            ok = False
        if not ok:
            client.close()
            self._link.set_down(f"cannot {'open' if self.is_serial else 'connect to'} {self.name}")
            return False
        client.set_max_no_responses(1 << 30)  # silence of one device must never close a TCP line
        self._client, self._port_identity = client, identity
        self._quiet_until = time.monotonic() + self._t35_s
        self._link.set_up()
        return True

    def _drop_client(self, reason: str, *, notify: bool = True) -> None:
        if self._hold is not None:
            self._hold.release()
        client, self._client = self._client, None
        self._generation += 1
        self._dropped.set()
        self._link.set_down(reason, notify=notify)
        self._abort_attempt("down")
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()

    async def _supervise(self) -> None:
        """Reconnect when the line is down; notice a vanished port even while the line is idle.

        A missing serial path is looked for every ``reconnect_interval_s``; failed open/connect
        attempts back off exponentially up to ``reconnect_max_s`` (each is logged by pymodbus).
        While the line is up, the path of a serial port is checked every ``vanish_check_interval_s``
        (a TCP line needs no check), at whole multiples of it on the monotonic clock so that the
        checks of all lines (and the API's tick) share one wake-up; a drop wakes this loop at once.
        """
        while True:
            if self._client is None:
                await asyncio.sleep(self._retry_s)
            else:
                self._dropped.clear()
                check_s = (self.settings.vanish_check_interval_s
                           if isinstance(self.settings, SerialLineSettings) else None)
                if check_s is not None:  # on the whole-interval grid: the lines check together
                    check_s -= time.monotonic() % check_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(check_s):  # not wait_for: 3.11's can lose a cancel
                        await self._dropped.wait()
                if self._client is None:
                    await asyncio.sleep(self._retry_s)
            if self._client is None:
                if await self._open():
                    self._stats.reconnects += 1
                    self._retry_s = self.settings.reconnect_interval_s
                elif self._identity() is not None:  # it exists but does not open or connect
                    self._retry_s = min(self._retry_s * 2, self.settings.reconnect_max_s)
            else:
                self._port_still_there()


class _Garbled(Exception):
    """Internal: a reply arrived but was unusable (bad CRC, truncated, wrong function)."""


class _ReplyEnd:
    """When the reply being received left the wire: the silence before the next request counts
    from there.

    Why: 3.5 characters of silence are owed after the reply's last byte *on the wire*; a request
    sooner runs into the reply on a multi-drop bus and nobody answers it. Counting them from when
    pymodbus handed the decoded reply over (as before) adds the reply's delivery, its decoding and
    a task hop or two to every transaction without need.

    How: bytes reach the host no earlier than they were on the wire, and a Modbus RTU frame is
    sent as one continuous stream (Modbus over Serial Line V1.02, 2.5.1.1), so whenever ``have``
    of a reply's ``size`` bytes are in, it has left the wire by now + (size - have) character
    times. The earliest such bound is :attr:`bound`. It is trusted only if the reply was
    complete by ``bound`` + 3.5 characters (for a held reply: if the rest was all there at the
    first read after the hold); otherwise (a device pausing mid-frame, an adapter delivering late)
    the silence counts from when the reply was complete. A reply whose size its header does not
    tell counts from when it was handed over.
    """

    def __init__(self, char_s: float, t35_s: float) -> None:
        self.char_s, self.t35_s = char_s, t35_s
        self.new_reply()

    def new_reply(self) -> None:
        """A request went out: forget the previous reply."""
        self.bound = math.inf
        """Monotonic time by which the reply has left the wire (if :attr:`trusted`)."""
        self.complete_at: float | None = None
        self.trusted = True
        self._deferred = False

    def received(self, now: float, have: int, size: int, *, after_hold: bool) -> None:
        """``have`` bytes of the reply are in at ``now``; ``size``: the whole reply (0: unknown);
        ``after_hold``: they were left waiting on purpose (:class:`_ReplyHold`), so ``now`` says
        nothing about when they arrived."""
        if not size:
            return
        if after_hold:
            if not self._deferred:  # the first read after a hold: the rest must all be there
                self._deferred = True
                self.trusted = self.trusted and have >= size
        else:
            self.bound = min(self.bound, now + max(size - have, 0) * self.char_s)
        if have >= size and self.complete_at is None:
            self.complete_at = now
            if not self._deferred and now > self.bound + self.t35_s:
                self.trusted = False

    def end(self, now: float) -> float:
        """The reply's end to count the silence from; ``now``: it has just been handed over."""
        if self.complete_at is None:
            return now
        return min(self.bound, self.complete_at) if self.trusted else self.complete_at


class _ReplyHold:
    """Stop watching a serial port while the rest of a reply is still on the wire.

    Why: pymodbus 3.16's ``SerialTransport`` registers ``intern_read_ready`` as the event loop's
    reader for the port and reads whatever has arrived each time the port is readable; at 9600 baud
    a 43-byte reply arrives over 45 ms, in as many pieces as the port delivers (the simulator's pty:
    one per 4 ms), and every piece wakes the process — on an idle gateway the wake-ups, not the
    Modbus work, are most of the CPU. pymodbus has no option for fewer, larger reads, and its
    transport's ``pause_reading()``/``resume_reading()`` (the asyncio API for exactly this) are
    empty stubs.

    How: when the first bytes of a reply are in, their header says how many are still to come
    (:func:`_rtu_reply_size`); this removes the transport's reader from the loop and puts the very
    same callback back once they have had their wire time. Nothing in pymodbus is replaced or
    patched: the bytes wait in the kernel's buffer and pymodbus reads them all at once, exactly
    as it would have read them piecemeal. The attempt always releases the hold when it ends, and
    a transport that pymodbus closed meanwhile is never re-registered. It relies on two attributes
    of pymodbus's transport (``sync_serial``, ``intern_read_ready``); if a pymodbus release lacks
    them, holding switches itself off and replies are read as before (tests/test_drivers.py checks
    that holding is in effect with the pinned pymodbus).

    Only requests at ``Priority.POLL`` are held — idle-time health polling and line checks, where
    wake-ups are the cost; releasing at the end of the silence below makes each reply available
    a few milliseconds later, which a broadcast's commands and read-backs must not pay (a slower
    read-back pass can miss a terminal's audio in a pause of the program and confirm it a whole
    pass later: bench/trigger_to_air.py).

    The 3.5-character silence owed after the reply is folded into the same wake-up: the reply has
    left the wire by :attr:`_ReplyEnd.bound` (its first bytes' arrival + the wire time of the
    rest), and the hold ends 3.5 characters after that, *less the time the gateway then takes to
    have the next request ready* (reading the rest, decoding, the poller's turn: :meth:`lead`), so
    that work overlaps the silence instead of following it. Two wake-ups per transaction (first
    bytes; rest + next request) instead of one per chunk plus one for the silence. The arbiter
    still waits out whatever is left of the silence before it sends, so a release that came too
    early costs one more wake-up, never a request too soon. If the rest is not all there by then,
    the end is not trusted for that reply (see :class:`_ReplyEnd`).
    """

    MIN_CHARS = 3
    """Not worth a timer for fewer outstanding characters than this."""
    MARGIN_CHARS = 0.5
    """Slack after the expected end of a reply whose end is not trusted, in character times."""
    LEAD_WINDOW = 16
    """The lead is the shortest release-to-next-request time of this many latest releases."""

    def __init__(self, char_s: float, t35_s: float, reply_end: _ReplyEnd) -> None:
        self.char_s, self.t35_s = char_s, t35_s
        self.enabled = True
        self.holds = 0
        """Replies held so far (for tests and benchmarks)."""
        self.deferred = False
        """A hold happened during the current reply: later reads come late on purpose."""
        self._end = reply_end
        self._timer: asyncio.TimerHandle | None = None
        self._held: tuple[Any, Any, int, Any] | None = None
        self._due: float | None = None
        """When the pending release timer is due (trusted end only)."""
        self._released_due: float | None = None
        """Due time of the latest release by timer, until the next request is ready."""
        self._ready_after: deque[float] = deque(maxlen=self.LEAD_WINDOW)

    @property
    def holding(self) -> bool:
        return self._held is not None

    def lead(self) -> float:
        """How much sooner than the end of the silence to release a held reply."""
        return max(0.0, min(min(self._ready_after, default=0.0), self.t35_s / 2))

    def new_reply(self) -> None:
        """A request went out: forget what was known about the previous reply."""
        self.deferred = False

    def next_request(self, now: float) -> None:
        """The next request is ready to be sent (before waiting out the silence): learn how long
        after a release that took."""
        if self._released_due is not None:
            self._ready_after.append(now - self._released_due)
            self._released_due = None

    def received(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, buffer: bytes,
                 size: int) -> None:
        """Bytes of the reply arrived (``buffer``: all so far; ``size``: the whole reply, 0 unknown)."""
        missing = size - len(buffer)
        if missing >= self.MIN_CHARS and self._held is None and self.enabled:
            self._hold(client, missing)

    def _hold(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, missing: int) -> None:
        transport = getattr(client.ctx, "transport", None)
        port = getattr(transport, "sync_serial", None)
        reader = getattr(transport, "intern_read_ready", None)
        if port is None or reader is None:
            if transport is not None:
                self.enabled = False
                log.warning("pymodbus serial transport has no sync_serial/intern_read_ready: "
                            "replies are read as they trickle in")
            return
        loop = asyncio.get_running_loop()
        fd = port.fileno()
        # asyncio says False when nothing was registered (then leave it alone); uvloop says None
        if loop.remove_reader(fd) is False:
            return
        self._held = (transport, port, fd, reader)
        self.holds += 1
        self.deferred = True
        if self._end.trusted and self._end.bound < math.inf:
            self._due = max(loop.time(), self._end.bound + self.t35_s - self.lead())
            self._timer = loop.call_at(self._due, self._release_on_time)
        else:
            self._due = None
            self._timer = loop.call_later((missing + self.MARGIN_CHARS) * self.char_s, self.release)

    def _release_on_time(self) -> None:
        self._released_due, self._timer = self._due, None
        self.release()

    def release(self) -> None:
        """Watch the port again (at once if the attempt ended early); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, None
        if held is None:
            return
        transport, port, fd, reader = held
        if transport.sync_serial is port and port.is_open:  # pymodbus has not closed it meanwhile
            asyncio.get_running_loop().add_reader(fd, reader)


def _describe(block: ReadBlock | WriteBlock) -> str:
    if isinstance(block, ReadBlock):
        return f"read {block.table} {block.address}+{block.count}"
    return f"write {block.table} {block.address}+{len(block.values)}"


def _request_size(block: ReadBlock | WriteBlock) -> int:
    """Bytes of the RTU request frame (unit, function, data, CRC)."""
    if isinstance(block, ReadBlock) or block.function_code in (5, 6):
        return 8
    n = len(block.values)
    return 9 + (math.ceil(n / 8) if block.function_code == 15 else 2 * n)


def _reply_size(block: ReadBlock | WriteBlock) -> int:
    """Bytes of the expected RTU reply (for the wire time added to the reply timeout)."""
    if isinstance(block, WriteBlock):
        return 8
    payload = math.ceil(block.count / 8) if is_bit_table(block.table) else 2 * block.count
    return 5 + payload


def _rtu_reply_size(buffer: bytes, unit: int, block: ReadBlock | WriteBlock) -> int:
    """Length of the RTU reply to ``block`` that ``buffer`` starts, as far as its first bytes tell
    (0: not a reply from ``unit`` to this request, or too few bytes to say)."""
    if len(buffer) < 2 or buffer[0] != unit:
        return 0
    function = buffer[1]
    if function == block.function_code | 0x80:
        return 5  # exception reply: unit, function, code, CRC
    if function != block.function_code:
        return 0
    if isinstance(block, WriteBlock):
        return 8
    return 5 + buffer[2] if len(buffer) >= 3 else _reply_size(block)


def _answers(response: Any, block: ReadBlock | WriteBlock) -> bool:
    """Whether ``response`` is the reply to ``block`` (not a late reply to another request).

    A slow device may answer a timed-out request while the next one is pending; on a multi-drop
    line that reply would otherwise be taken for the new one. Function, size and echoed address
    must fit (a late reply to an identical request is indistinguishable, and equally valid).
    """
    if response.function_code != block.function_code:
        return False
    if isinstance(block, ReadBlock):
        if is_bit_table(block.table):
            return len(response.bits) == 8 * math.ceil(block.count / 8)
        return len(response.registers) == block.count
    if response.address != block.address:
        return False
    return block.function_code in (5, 6) or response.count == len(block.values)


def _rtu_crc_failed(decoder: DecodePDU, buffer: bytes, unit: int) -> bool:
    """True when ``buffer`` holds a complete RTU frame from ``unit`` whose CRC is wrong."""
    if len(buffer) < FramerRTU.MIN_SIZE or buffer[0] != unit:
        return False
    pdu_class = decoder.lookupPduClass(buffer)
    if pdu_class is None:
        return False
    size = pdu_class.calculateRtuFrameSize(buffer)
    if not size or len(buffer) < size:
        return False
    return not FramerRTU.check_CRC(buffer[:size - 2], int.from_bytes(buffer[size - 2:size], "big"))


def _call(client: AsyncModbusSerialClient | AsyncModbusTcpClient, unit: int,
          block: ReadBlock | WriteBlock, broadcast: bool) -> Any:
    """The pymodbus call for one block (returns its awaitable)."""
    if isinstance(block, ReadBlock):
        reader = {"coil": client.read_coils, "discrete_input": client.read_discrete_inputs,
                  "holding": client.read_holding_registers, "input": client.read_input_registers}
        return reader[block.table](block.address, count=block.count, device_id=unit)
    fc, address, values = block.function_code, block.address, block.values
    if fc == 5:
        return client.write_coil(address, bool(values[0]), device_id=unit, no_response_expected=broadcast)
    if fc == 15:
        return client.write_coils(address, [bool(v) for v in values], device_id=unit,
                                  no_response_expected=broadcast)
    if fc == 6:
        return client.write_register(address, int(values[0]), device_id=unit, no_response_expected=broadcast)
    return client.write_registers(address, [int(v) for v in values], device_id=unit,
                                  no_response_expected=broadcast)
