"""Modbus PDU execution against a device's data model, and the RTU CRC.

Hand-written on purpose rather than reusing pymodbus's server: the simulator has to act at the
wire level — stay silent for unknown unit ids and bad CRCs, corrupt or delay single replies, obey
unit id 0 without answering — and pymodbus's server hides exactly that (it answers unknown unit
ids with an exception). The transports (``rtu_line``, ``tcp_server``) own framing and timing; this
module only turns a request PDU into a reply PDU.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Protocol

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})
"""Function codes a device executes when they come broadcast (unit id 0)."""

# Quantity limits of the Modbus application protocol spec v1.1b3 per function code.
_MAX_BITS_READ = 2000
_MAX_REGS_READ = 125
_MAX_BITS_WRITE = 1968
_MAX_REGS_WRITE = 123


class ModbusError(Exception):
    """Raised by a data model to answer with a Modbus exception code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"Modbus exception {code}")
        self.code = code


class DataModel(Protocol):
    """The four Modbus tables of one device; every method raises ModbusError on a bad request."""

    def read_bits(self, table: str, address: int, count: int) -> list[bool]:
        """``table`` is ``"coil"`` or ``"discrete_input"``."""
        ...

    def read_registers(self, table: str, address: int, count: int) -> list[int]:
        """``table`` is ``"holding"`` or ``"input"``."""
        ...

    def write_coils(self, address: int, values: list[bool]) -> None:
        """All or nothing: validate every address and value before changing anything."""
        ...

    def write_registers(self, address: int, values: list[int]) -> None:
        """All or nothing: validate every address and value before changing anything."""
        ...


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    """Append the CRC to an RTU frame (address + PDU)."""
    return frame + struct.pack("<H", crc16(frame))


def crc_ok(frame: bytes) -> bool:
    """True if the last two bytes of an RTU frame are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == struct.unpack("<H", frame[-2:])[0]


def exception_pdu(function: int, code: int) -> bytes:
    return bytes([(function | 0x80) & 0xFF, code])


def _pack_bits(bits: list[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


def _check_quantity(address: int, count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise ModbusError(ILLEGAL_VALUE, f"quantity {count} outside 1..{limit}")
    if address + count > 0x10000:
        raise ModbusError(ILLEGAL_ADDRESS, "address range beyond 65535")


def _execute(model: DataModel, fc: int, body: bytes) -> bytes:
    if fc in (1, 2, 3, 4):
        if len(body) != 4:
            raise ModbusError(ILLEGAL_VALUE, "read request must carry address and quantity")
        address, count = struct.unpack(">HH", body)
        if fc in (1, 2):
            _check_quantity(address, count, _MAX_BITS_READ)
            data = _pack_bits(model.read_bits("coil" if fc == 1 else "discrete_input", address, count))
        else:
            _check_quantity(address, count, _MAX_REGS_READ)
            regs = model.read_registers("holding" if fc == 3 else "input", address, count)
            data = struct.pack(f">{count}H", *regs)
        return bytes([fc, len(data)]) + data
    if fc in (5, 6):
        if len(body) != 4:
            raise ModbusError(ILLEGAL_VALUE, "single write must carry address and value")
        address, value = struct.unpack(">HH", body)
        if fc == 5:
            if value not in (0x0000, 0xFF00):
                raise ModbusError(ILLEGAL_VALUE, "coil value must be 0x0000 or 0xFF00")
            model.write_coils(address, [value == 0xFF00])
        else:
            model.write_registers(address, [value])
        return bytes([fc]) + body  # echo
    if fc in (15, 16):
        if len(body) < 5:
            raise ModbusError(ILLEGAL_VALUE, "multiple write too short")
        address, count, nbytes = struct.unpack(">HHB", body[:5])
        payload = body[5:]
        if fc == 15:
            _check_quantity(address, count, _MAX_BITS_WRITE)
            if nbytes != (count + 7) // 8 or len(payload) != nbytes:
                raise ModbusError(ILLEGAL_VALUE, "byte count does not match quantity")
            model.write_coils(address, _unpack_bits(payload, count))
        else:
            _check_quantity(address, count, _MAX_REGS_WRITE)
            if nbytes != 2 * count or len(payload) != nbytes:
                raise ModbusError(ILLEGAL_VALUE, "byte count does not match quantity")
            model.write_registers(address, list(struct.unpack(f">{count}H", payload)))
        return bytes([fc]) + body[:4]
    raise ModbusError(ILLEGAL_FUNCTION, f"function code {fc} not supported")


def execute_broadcast(models: Iterable[DataModel], pdu: bytes) -> None:
    """Unit id 0: every device executes a write and none answers; a broadcast read means nothing."""
    if pdu and pdu[0] in WRITE_FUNCTIONS:
        for model in models:
            execute(model, pdu)


def execute(model: DataModel, pdu: bytes) -> bytes:
    """Run one request PDU (function code + data) and return the reply PDU, exceptions included."""
    if not pdu:
        raise ValueError("empty PDU")
    fc = pdu[0]
    try:
        return _execute(model, fc, pdu[1:])
    except ModbusError as exc:
        return exception_pdu(fc, exc.code)
