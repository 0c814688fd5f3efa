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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
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
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._generation = 0
        self._port_identity: PortIdentity | tuple[()] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retry_s = settings.reconnect_interval_s
        self._dropped = asyncio.Event()  # wakes the supervisor at once when the line goes down
        self._decoder = DecodePDU(False)
        # state of the attempt on the wire (set by the worker, read by the trace callbacks)
        self._abort: asyncio.Future[str] | None = None
        self._expect_unit = -1
        self._rx_bytes = 0
        self._quiet_until = 0.0
        if isinstance(settings, SerialLineSettings):
            self._char_s = settings.char_s
            self._t35_s = 3.5 * self._char_s if settings.baudrate <= 19200 else 0.00175
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

    # ------------------------------------------------------------------ public requests

    async def read(self, unit: int, block: ReadBlock, *, priority: Priority = Priority.POLL,
                   timeout_s: float | None = None) -> list[Raw]:
        """Read one block; returns ``block.count`` bools (bit tables) or register ints."""
        result: list[Raw] = await self._submit(unit, block, priority, timeout_s)
        return result

    async def write(self, unit: int, block: WriteBlock, *, priority: Priority = Priority.COMMAND,
                    timeout_s: float | None = None) -> None:
        """Write one block to one unit and wait for its acknowledgement."""
        if unit == BROADCAST_UNIT:
            raise ValueError("use broadcast() for unit id 0")
        await self._submit(unit, block, priority, timeout_s)

    async def broadcast(self, block: WriteBlock, *, priority: Priority = Priority.COMMAND) -> None:
        """Write one block to unit id 0: every terminal on the line executes it, none replies.

        Returns once the frame and the mandated silence after it have passed, so the next
        transaction on the line finds the terminals ready. Delivery cannot be confirmed on the wire.
        """
        await self._submit(BROADCAST_UNIT, block, priority, None)

    def _submit(self, unit: int, block: ReadBlock | WriteBlock, priority: Priority,
                timeout_s: float | None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._tasks:
            future.set_exception(LineDownError(f"line {self.name} is not started"))
        elif self._client is None:
            self._stats.line_down += 1
            future.set_exception(self._down_error())
        else:
            self._queue.put_nowait(_Job(int(priority), next(self._seq), unit, block,
                                        timeout_s or self.settings.timeout_s, future))
        return future

    def _down_error(self) -> LineDownError:
        return LineDownError(f"line {self.name} is down: {self._link.reason} "
                             f"(retrying every {self._retry_s:g} s)")

    # ------------------------------------------------------------------ worker

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
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
                if job.attempts <= self.settings.retries and not job.future.done():
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
        delay = self._quiet_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        self._abort = loop.create_future()
        self._expect_unit, self._rx_bytes = job.unit, 0
        broadcast = job.unit == BROADCAST_UNIT
        started = time.monotonic()
        try:
            call = asyncio.ensure_future(_call(client, job.unit, job.block, broadcast))
        except (ConnectionException, ModbusException) as exc:
            self._drop_client(f"send failed: {exc}")
            raise self._down_error() from None
        if broadcast:
            await call
            self._stats.broadcasts += 1
            turnaround = (self.settings.broadcast_turnaround_s
                          if isinstance(self.settings, SerialLineSettings) else 0.0)
            self._quiet_until = started + _request_size(job.block) * self._char_s + self._t35_s + turnaround
            await asyncio.sleep(max(0.0, self._quiet_until - time.monotonic()))
            return None
        wire = (_request_size(job.block) + _reply_size(job.block)) * self._char_s
        done, _ = await asyncio.wait({call, self._abort}, timeout=job.timeout_s + wire,
                                     return_when=asyncio.FIRST_COMPLETED)
        self._quiet_until = time.monotonic() + self._t35_s
        if call not in done:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
            if self._abort.done() and self._abort.result() == "down":
                raise self._down_error()
            if self._abort.done() or self._rx_bytes:
                self._stats.crc_errors += 1
                raise _Garbled()
            self._stats.timeouts += 1
            raise NoResponseError("timeout")
        try:
            response = call.result()
        except ConnectionException:
            self._drop_client("connection lost")
            raise self._down_error() from None
        except ModbusException:  # pymodbus could not decode what came back
            self._stats.crc_errors += 1
            raise _Garbled() from None
        if response.isError():
            raise DeviceExceptionError(
                f"unit {job.unit} on line {self.name} refused {_describe(job.block)}: "
                f"Modbus exception {response.exception_code}", code=response.exception_code)
        if not _answers(response, job.block):  # a late reply to an earlier request
            self._stats.crc_errors += 1
            raise _Garbled()
        self._record_latency((time.monotonic() - started) * 1000)
        self._stats.successes += 1
        if isinstance(job.block, ReadBlock):
            data = response.bits if is_bit_table(job.block.table) else response.registers
            return list(data[:job.block.count])
        return None

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
        self._rx_bytes += len(data)
        if self.is_serial and self._abort is not None and not self._abort.done() \
                and _rtu_crc_failed(self._decoder, data, self._expect_unit):
            self._abort.set_result("crc")
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
        client, self._client = self._client, None
        self._generation += 1
        self._dropped.set()
        self._link.set_down(reason, notify=notify)
        if self._abort is not None and not self._abort.done():
            self._abort.set_result("down")
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()

    async def _supervise(self) -> None:
        """Reconnect when the line is down; notice a vanished port even while the line is idle.

        A missing serial path is looked for every ``reconnect_interval_s``; failed open/connect
        attempts back off exponentially up to ``reconnect_max_s`` (each is logged by pymodbus).
        While the line is up, the path of a serial port is checked every ``vanish_check_interval_s``
        (a TCP line needs no check); a drop wakes this loop at once.
        """
        while True:
            if self._client is None:
                await asyncio.sleep(self._retry_s)
            else:
                self._dropped.clear()
                check_s = (self.settings.vanish_check_interval_s
                           if isinstance(self.settings, SerialLineSettings) else None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dropped.wait(), check_s)
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
