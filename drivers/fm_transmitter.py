"""Driver for an AT-command FM transmitter module (profile type ``at-fm-transmitter``).

The module may speak at any time — ``+ALARM:<bits>`` arrives unsolicited, also between the lines
of a command's reply — so a dedicated reader thread owns the port's receive side and hands every
line to the asyncio loop, where it is either part of the pending command's reply or an alarm for
the ``on_alarm`` callback. Commands are serialised by an asyncio lock, time out after the profile's
``command_timeout_s`` and are retried (all are idempotent) when the reply is missing or garbled.
The reader thread also reopens the port by itself after it vanished (adapter pulled).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import serial

from drivers.errors import AtCommandError, LineDownError, NoResponseError
from drivers.link_state import LineDriver, LineStateCallback, LinkState
from drivers.profile import AtFmTransmitterProfile
from drivers.serial_port import PortIdentity, SerialPortSettings, port_identity

log = logging.getLogger(__name__)
T = TypeVar("T")

_LINE_REST_MAX_CHARS = 64
"""Longest wait for the rest of a line, in character times (see ``FmTransmitter._rest_s``)."""


@dataclass(frozen=True)
class FmLineSettings(SerialPortSettings):
    """The serial line of the module (the profile's ``serial`` section has the usual framing)."""

    retries: int = 1
    """Extra attempts after a timeout or a garbled reply."""


@dataclass(frozen=True)
class FmAlarm:
    """Alarm bits as the module reported them, decoded through the profile's ``alarm_bits``."""

    bits: int
    names: tuple[str, ...]
    timestamp: float = field(default_factory=time.time)
    unsolicited: bool = True


@dataclass(frozen=True)
class FmStatus:
    forward_w: float
    reflected_w: float
    vswr: float | None
    """None while there is no forward power (carrier off)."""
    temperature_c: float
    alarm: FmAlarm


@dataclass
class FmStats:
    commands: int = 0
    successes: int = 0
    timeouts: int = 0
    garbled: int = 0
    retries: int = 0
    errors: int = 0
    """``ERROR:<code>`` replies."""
    alarms: int = 0
    reconnects: int = 0
    latency_last_ms: float = 0.0
    latency_max_ms: float = 0.0


def vswr(forward_w: float, reflected_w: float) -> float | None:
    """Voltage standing-wave ratio from forward and reflected power."""
    if forward_w <= 0:
        return None
    gamma = math.sqrt(min(reflected_w / forward_w, 1.0))
    return math.inf if gamma >= 1.0 else round((1 + gamma) / (1 - gamma), 2)


class _Garbled(Exception):
    """Internal: the reply did not parse (a character damaged on the wire)."""


class FmTransmitter(LineDriver):
    """One FM transmitter module on its own serial line."""

    def __init__(self, settings: FmLineSettings, profile: AtFmTransmitterProfile, *,
                 on_alarm: Callable[[FmAlarm], object] | None = None,
                 on_line_state: LineStateCallback | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.name = settings.name or settings.port
        self.on_alarm = on_alarm
        self._link = LinkState(f"FM {self.name}", on_line_state)
        self._stats = FmStats()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serial: serial.Serial | None = None
        self._identity: PortIdentity | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reply: asyncio.Future[list[str]] | None = None
        self._reply_lines: list[str] = []
        self._command_text = ""
        self._callbacks: set[asyncio.Future[object]] = set()
        self._ever_opened = False
        self._last_alarm: FmAlarm | None = None
        self._line_chars: dict[bytes, int] = {}
        """Length of the last line received per first two characters (reader thread only)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the reader thread; it opens the port now or as soon as it appears."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._reader, name=f"fm reader {self.name}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Stop the reader thread and release the port."""
        self._stop.set()
        port = self._serial
        if port is not None:
            with contextlib.suppress(Exception):
                port.cancel_read()  # end the reader's blocking read now rather than at its timeout
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
        self._close_port("closed", from_loop=True)

    @property
    def connected(self) -> bool:
        return self._serial is not None

    @property
    def stats(self) -> FmStats:
        return replace(self._stats)

    @property
    def last_alarm(self) -> FmAlarm | None:
        """The most recent alarm bits seen (unsolicited or from ``status()``)."""
        return self._last_alarm

    # ------------------------------------------------------------------ commands

    async def ping(self) -> None:
        """Liveness: the module answers ``AT`` with ``OK``."""
        await self._ok("AT")

    async def set_frequency(self, frequency_10khz: int) -> None:
        """Carrier frequency in 10 kHz units (9850 = 98.50 MHz)."""
        p = self.profile
        _check_range("frequency", frequency_10khz, p.frequency_min, p.frequency_max)
        await self._ok(f"AT+FREQ={frequency_10khz}")

    async def get_frequency(self) -> int:
        return await self._command("AT+FREQ?", "FREQ", _int)

    async def set_power(self, percent: int) -> None:
        _check_range("power", percent, self.profile.power_min, self.profile.power_max)
        await self._ok(f"AT+PWR={percent}")

    async def get_power(self) -> int:
        return await self._command("AT+PWR?", "PWR", _int)

    async def set_tx(self, on: bool) -> None:
        """Carrier on/off (the module refuses ``on`` during a thermal or supply fault: ERROR)."""
        await self._ok(f"AT+TX={int(bool(on))}")

    async def get_tx(self) -> bool:
        return await self._command("AT+TX?", "TX", _bit)

    async def set_rds_ps(self, text: str) -> None:
        """RDS programme service name (station name shown on receivers)."""
        _check_text("RDS PS", text, self.profile.rds_ps_max)
        await self._ok(f"AT+RDS=PS,{text}")

    async def set_rds_rt(self, text: str) -> None:
        """RDS radio text."""
        _check_text("RDS RT", text, self.profile.rds_rt_max)
        await self._ok(f"AT+RDS=RT,{text}")

    async def status(self) -> FmStatus:
        """Forward/reflected power, VSWR, temperature and alarms in one query."""
        fields = await self._command("AT+STAT?", "STAT", _stat_fields)
        fwd, ref, temp = fields["fwd"] / 10, fields["ref"] / 10, fields["temp"] / 10
        alarm = self._alarm(fields["alarm"], unsolicited=False)
        self._last_alarm = alarm
        return FmStatus(fwd, ref, vswr(fwd, ref), temp, alarm)

    def _alarm(self, bits: int, *, unsolicited: bool) -> FmAlarm:
        names = tuple(name for bit, name in sorted(self.profile.alarm_bits.items()) if bits >> bit & 1)
        unknown = bits & ~sum(1 << b for b in self.profile.alarm_bits)
        if unknown:
            names += tuple(f"bit{b}" for b in range(unknown.bit_length()) if unknown >> b & 1)
        return FmAlarm(bits, names, unsolicited=unsolicited)

    async def _ok(self, command: str) -> None:
        """Send a command that is answered by a plain ``OK``."""
        await self._command(command, None, str)

    async def _command(self, command: str, key: str | None, parse: Callable[[str], T]) -> T:
        """Send one command; return its parsed ``+KEY:`` value (``parse("")`` when none is expected).

        A missing or unparsable value counts as garbled and the command is sent again.
        """
        async with self._lock:
            self._stats.commands += 1
            attempts = self.settings.retries + 1
            for attempt in range(attempts):
                if attempt:
                    self._stats.retries += 1
                try:
                    return parse(await self._attempt(command, key))
                except TimeoutError:
                    self._stats.timeouts += 1
                except _Garbled:
                    self._stats.garbled += 1
            raise NoResponseError(f"FM transmitter on {self.name} gave no usable answer to {command!r} "
                                  f"({attempts} attempt(s))", attempts=attempts)

    async def _attempt(self, command: str, key: str | None) -> str:
        port = self._serial
        if port is None:
            raise LineDownError(f"FM line {self.name} is down: {self._link.reason or 'port closed'} "
                                f"(looking for it every {self.settings.reconnect_interval_s:g} s)")
        loop = asyncio.get_running_loop()
        self._reply = loop.create_future()
        self._reply_lines = []
        self._command_text = command
        data = (command + self.profile.line_ending).encode("ascii")
        started = time.monotonic()
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            self._reply = None
            raise LineDownError(f"FM line {self.name}: write failed: {exc}") from None
        try:
            lines = await asyncio.wait_for(self._reply, self.profile.command_timeout_s)
        finally:
            self._reply = None
        ms = (time.monotonic() - started) * 1000
        self._stats.latency_last_ms, self._stats.latency_max_ms = ms, max(ms, self._stats.latency_max_ms)
        if key is None:
            self._stats.successes += 1
            return ""
        prefix = f"+{key}:"
        for line in lines:
            if line.upper().startswith(prefix):
                self._stats.successes += 1
                return line[len(prefix):]
        raise _Garbled()

    # ------------------------------------------------------------------ received lines (loop thread)

    def _on_line(self, line: str) -> None:
        if line.upper().startswith("+ALARM:"):
            try:
                bits = int(line[7:])
            except ValueError:
                log.warning("FM %s: garbled alarm line %r", self.name, line)
                return
            self._stats.alarms += 1
            alarm = self._alarm(bits, unsolicited=True)
            self._last_alarm = alarm
            self._deliver_alarm(alarm)
            return
        reply = self._reply
        if reply is None or reply.done():
            log.debug("FM %s: line outside a command: %r", self.name, line)
            return
        upper = line.strip().upper()
        if upper == "OK":
            reply.set_result(self._reply_lines)
        elif upper.startswith("ERROR:"):
            self._stats.errors += 1
            reply.set_exception(AtCommandError(self._command_text, line.strip()[6:]))
        else:
            self._reply_lines.append(line)

    def _deliver_alarm(self, alarm: FmAlarm) -> None:
        if self.on_alarm is None:
            return
        try:
            outcome = self.on_alarm(alarm)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)
        except Exception:
            log.exception("FM alarm subscriber failed")

    def _on_down(self, reason: str) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(LineDownError(f"FM line {self.name} went down: {reason}"))
        self._link.set_down(reason)

    # ------------------------------------------------------------------ reader thread

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop shutting down
                self._loop.call_soon_threadsafe(fn, *args)

    def _reader(self) -> None:
        """Own the receive side: (re)open the port, split lines, hand them to the loop."""
        buffer = b""
        last_check = 0.0
        why_not = ""
        while not self._stop.is_set():
            port = self._serial
            if port is None:
                reason = self._open()
                if not reason:
                    buffer = b""
                    continue
                if reason != why_not:  # tell the loop once per new reason, not every poll
                    why_not = reason
                    self._call(self._link.set_down, reason)
                self._stop.wait(self.settings.reconnect_interval_s)
                continue
            why_not = ""
            now = time.monotonic()
            if now - last_check >= self.settings.vanish_check_interval_s:
                last_check = now
                if port_identity(self.settings.port) != self._identity:
                    self._close_port(f"serial port {self.name} vanished or was replaced")
                    continue
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                self._close_port(f"serial port error: {exc}")
                continue
            buffer += data
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                if raw.strip():
                    self._call(self._on_line, raw.decode("ascii", errors="replace"))
            if len(buffer) > 1024:
                buffer = b""
            for raw in lines:
                if len(raw) >= 2:
                    self._line_chars[raw[:2]] = len(raw) + 2  # with its CR LF
            if buffer:  # inside a line: let the rest arrive rather than wake for every piece of it
                self._stop.wait(self._rest_s(buffer))

    def _rest_s(self, partial: bytes) -> float:
        """How long the rest of a line that begins with ``partial`` is expected to take on the wire.

        The reader is woken by the first byte of every line; waiting for the rest instead of
        reading each piece as the port delivers it makes a 40-character ``+STAT`` reply cost the
        thread two or three wake-ups instead of a dozen. A line is expected to be as long as the
        last one that began with the same two characters (``OK``, ``+STAT``, ``+TX``…); for the
        very first of its kind nothing is waited for beyond its first two characters, so no reply
        is ever later than its own wire time plus a character or two.
        """
        expected = self._line_chars.get(partial[:2], 0) if len(partial) >= 2 else 2
        return min(max(expected - len(partial), 0), _LINE_REST_MAX_CHARS) * self.settings.char_s

    def _open(self) -> str:
        """Open the port (reader thread); returns "" or why it could not be opened."""
        identity = port_identity(self.settings.port)
        if identity is None:
            return f"serial port {self.name} does not exist"
        s = self.settings
        try:
            port = serial.Serial(s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                                 stopbits=s.stopbits, timeout=s.vanish_check_interval_s, write_timeout=1.0,
                                 exclusive=True)  # the longest blocking read; close() cancels it
        except (serial.SerialException, OSError, ValueError) as exc:
            return f"cannot open {self.name}: {exc}"
        port.reset_input_buffer()
        self._serial, self._identity = port, identity
        if self._ever_opened:
            self._stats.reconnects += 1
        self._ever_opened = True
        self._call(self._link.set_up)
        return ""

    def _close_port(self, reason: str, *, from_loop: bool = False) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        with contextlib.suppress(Exception):
            port.close()
        if from_loop:
            self._link.set_down(reason, notify=False)
        else:
            self._call(self._on_down, reason)


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: expects a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what}: {value} is outside {low}..{high}")


def _check_text(what: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ValueError(f"{what}: {len(text)} characters, at most {limit} allowed")
    bad = sorted({c for c in text if not " " <= c <= "~"})
    if bad:
        raise ValueError(f"{what}: only printable ASCII is allowed, not {''.join(bad)!r}")


def _int(value: str) -> int:
    if not value.isdigit():
        raise _Garbled()
    return int(value)


def _bit(value: str) -> bool:
    if value not in ("0", "1"):
        raise _Garbled()
    return value == "1"


def _stat_fields(value: str) -> dict[str, int]:
    """``fwd=400,ref=4,temp=312,alarm=0`` → ints; anything else is garbled."""
    try:
        fields = {k: int(v) for k, v in (part.split("=", 1) for part in value.split(","))}
    except ValueError:
        raise _Garbled() from None
    if not {"fwd", "ref", "temp", "alarm"} <= fields.keys():
        raise _Garbled()
    return fields
