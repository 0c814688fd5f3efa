"""What to simulate, as plain dataclasses.

The controller builds a :class:`SimulationSpec` from a gateway config (``controller.app.simulation``);
the simulator only ever sees this spec, so it stays independent of the config models and of the
device profiles — like real hardware, it knows its own register map, not the gateway's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_IMPEDANCE_OHM = 100.0
"""Line impedance of a zone whose commissioning value is unknown (a typical 100 V line load)."""


@dataclass
class Endpoint:
    """A loopback TCP endpoint the simulator listens on."""

    host: str
    port: int


@dataclass
class AudioSpec(Endpoint):
    """The audio line: the gateway's sound output arrives here as PCM over TCP."""

    sample_rate: int = 16000
    record_dir: str = "/tmp/ebc-sim-audio"


@dataclass
class SerialLineSpec:
    """One RS-485/RS-232 line, simulated as a pseudo-terminal linked at ``link_path``."""

    id: str
    link_path: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    strict_framing: bool = True
    """Modbus RTU: a request that starts less than 3.5 characters after the previous frame (a
    reply included) runs into it and goes unanswered, as on a real bus; False answers it anyway."""


@dataclass
class TcpEndpointSpec(Endpoint):
    """One Modbus TCP endpoint (an IP/4G terminal's address)."""

    id: str = ""


@dataclass
class TerminalSpec:
    """One ebt-1 loudspeaker terminal: where it hangs and its physical properties."""

    id: str
    unit_id: int
    line: str
    """Id of its serial line or TCP endpoint."""
    name: str = ""
    tcp: tuple[str, int] | None = None
    """(host, port) when the terminal is on Modbus TCP, else None."""
    zones: list[int] = field(default_factory=lambda: [1])
    nominal_impedance_ohm: dict[int, float] = field(default_factory=dict)
    turnaround_ms: float = 3.0
    warmup_ms: int = 2000
    battery_full_v: float = 13.6


@dataclass
class FmSpec:
    """One ebr-fm1 FM transmitter module on its own serial line."""

    id: str
    line: str
    name: str = ""
    turnaround_ms: float = 3.0


@dataclass
class FaultStep:
    """One step of a scripted fault scenario (seconds after simulator start)."""

    at_s: float
    fault: str
    device: str | None = None
    line: str | None = None
    clear: bool = False
    zone: int | None = None
    rate: float | None = None
    delay_ms: float | None = None


@dataclass
class SimulationSpec:
    """Everything one simulator process stands in for."""

    serial_lines: list[SerialLineSpec]
    tcp_endpoints: list[TcpEndpointSpec]
    terminals: list[TerminalSpec]
    fm_transmitters: list[FmSpec]
    control: Endpoint
    audio: AudioSpec
    time_scale: float = 1.0
    """Physics speed-up (warm-up, heating, battery, line checks); wire timing is never scaled."""
    turnaround_ms: float = 3.0
    scenarios: list[FaultStep] = field(default_factory=list)
