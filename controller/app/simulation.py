"""Map a gateway config to what the simulator should stand in for.

The simulator never reads config or profile files (it plays another vendor's hardware), so this
is the one place that knows both sides: which lines and devices the config declares, and how each
becomes a :class:`simulator.spec.SimulationSpec`.
"""

from __future__ import annotations

from controller.config import Config, SerialLine, TcpLine
from drivers.profile import AtFmTransmitterProfile
from simulator.spec import (
    DEFAULT_IMPEDANCE_OHM,
    AudioSpec,
    Endpoint,
    FaultStep,
    FmSpec,
    SerialLineSpec,
    SimulationSpec,
    TcpEndpointSpec,
    TerminalSpec,
)


def spec_from_config(cfg: Config) -> SimulationSpec:
    """Build the simulation of every line and device in ``cfg``; needs a ``simulator:`` section."""
    sim = cfg.simulator
    if sim is None:
        raise ValueError("the config has no 'simulator:' section (control and audio endpoints)")
    serial = [SerialLineSpec(id=ln.id, link_path=ln.port, baudrate=ln.baudrate, bytesize=ln.bytesize,
                             parity=ln.parity, stopbits=ln.stopbits,
                             strict_framing=sim.rtu_framing == "strict")
              for ln in cfg.lines if isinstance(ln, SerialLine)]
    tcp = [TcpEndpointSpec(id=ln.id, host=ln.host, port=ln.port)
           for ln in cfg.lines if isinstance(ln, TcpLine)]
    terminals: list[TerminalSpec] = []
    fms: list[FmSpec] = []
    for dev in cfg.devices:
        over = sim.devices.get(dev.id)
        turnaround = over.turnaround_ms if over and over.turnaround_ms is not None else sim.turnaround_ms
        if isinstance(cfg.profiles.get(dev.profile), AtFmTransmitterProfile):
            fms.append(FmSpec(id=dev.id, line=dev.line, name=dev.name, turnaround_ms=turnaround))
            continue
        line = cfg.line(dev.line)
        term = TerminalSpec(
            id=dev.id, name=dev.name, unit_id=dev.unit_id or 1, line=dev.line,
            tcp=(line.host, line.port) if isinstance(line, TcpLine) else None,
            zones=list(dev.zones),
            nominal_impedance_ohm={z: float(dev.commissioned_impedance_ohm.get(z, DEFAULT_IMPEDANCE_OHM))
                                   for z in dev.zones},
            turnaround_ms=turnaround,
        )
        if over and over.warmup_ms is not None:
            term.warmup_ms = over.warmup_ms
        if over and over.battery_full_v is not None:
            term.battery_full_v = over.battery_full_v
        terminals.append(term)
    return SimulationSpec(
        serial_lines=serial,
        tcp_endpoints=tcp,
        terminals=terminals,
        fm_transmitters=fms,
        control=Endpoint(host=sim.control.host, port=sim.control.port),
        audio=AudioSpec(host=sim.audio.host, port=sim.audio.port, sample_rate=sim.audio.sample_rate,
                        record_dir=_resolve(cfg, sim.audio.record_dir)),
        time_scale=sim.time_scale,
        turnaround_ms=sim.turnaround_ms,
        scenarios=[FaultStep(at_s=s.at_s, fault=s.fault, device=s.device, line=s.line, clear=s.clear,
                             zone=s.zone, rate=s.rate, delay_ms=s.delay_ms) for s in sim.scenarios],
    )


def _resolve(cfg: Config, path: str) -> str:
    """Relative paths in a config are relative to the config file, like ``profiles_dir``."""
    if cfg.path is None or path.startswith("/"):
        return path
    return str((cfg.path.parent / path).resolve())
