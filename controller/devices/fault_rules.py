"""What counts as a fault and how it is worded: pure rules over one reading of a device.

Kept apart from :mod:`controller.devices.health` (which tracks faults over time and publishes every
transition) so that thresholds and wording are tested from plain values, and a county engineer
finds in one place why a terminal was flagged. Every fault has an English ``reason`` and a
Chinese ``reason_zh`` for the township console and the county's screens, and ``values`` with the
measurements behind it (battery volts, ohms, VSWR) so nobody has to parse the text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.config import HealthSettings
from drivers.fm_transmitter import FmStatus
from drivers.modbus_terminal import LineImpedance


@dataclass(frozen=True)
class Fault:
    """One fault of one device: ``code`` (stable, for machines), reasons (for people), values."""

    code: str
    reason: str
    reason_zh: str
    zone: int | None = None
    """The speaker zone, for line faults."""
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity while active: a zone's line fault is its own fault."""
        return self.code if self.zone is None else f"{self.code}:{self.zone}"

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.code, "zone": self.zone, "reason": self.reason, "reason_zh": self.reason_zh,
                "values": dict(self.values)}


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "?" + unit if value is None else f"{value:.{digits}f} {unit}"


def finite(value: float | None) -> float | None:
    """JSON has no infinity: a VSWR of ∞ (all power reflected) is reported as None."""
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------- terminal status word


def terminal_faults(values: Mapping[str, object], settings: HealthSettings) -> list[Fault]:
    """Faults visible in one status poll of a terminal (profile point names, e.g. ebt-1).

    Points a profile lacks are simply not judged. Over-temperature counts when the terminal
    flags it or its amplifier reaches ``over_temperature_c`` (a terminal that never sets the bit
    is still caught). Low battery is its own fault, also on mains: a flat battery means no
    backup when mains fails (``low_battery_v: 0`` turns it off for terminals without one).
    """
    faults: list[Fault] = []
    if values.get("amp_fault"):
        faults.append(Fault("amp_fault", "amplifier fault", "功放故障"))
    temp = _num(values.get("amp_temperature"))
    limit = settings.over_temperature_c
    if values.get("over_temperature") or (temp is not None and temp >= limit):
        faults.append(Fault("over_temperature", f"amplifier over-temperature ({_fmt(temp, '°C')})",
                            f"功放过温（{_fmt(temp, '°C')}）",
                            values={"temperature_c": temp, "limit_c": limit}))
    battery = _num(values.get("battery_voltage"))
    if values.get("on_battery") or values.get("mains_ok") is False:
        faults.append(Fault("mains_lost", f"mains power lost, on battery {_fmt(battery, 'V', 2)}",
                            f"市电中断，电池供电 {_fmt(battery, 'V', 2)}",
                            values={"battery_v": battery, "mains_v": _num(values.get("mains_voltage"))}))
    low = settings.low_battery_v
    if battery is not None and low > 0 and battery < low:
        faults.append(Fault("low_battery", f"battery low: {battery:.2f} V (below {low:g} V)",
                            f"电池电压低：{battery:.2f} V（低于 {low:g} V）",
                            values={"battery_v": battery, "limit_v": low}))
    if values.get("tamper"):
        faults.append(Fault("tamper", "cabinet opened (tamper switch)", "机箱被打开（防拆报警）"))
    return faults


# ---------------------------------------------------------------------- speaker lines


Verdict = Literal["ok", "open", "short", "deviation", "no_reference"]


@dataclass(frozen=True)
class ZoneCheck:
    """One zone's line-check result against its commissioned impedance."""

    zone: int
    measured: LineImpedance
    commissioned_ohm: float | None
    tolerance: float

    @property
    def deviation_pct(self) -> float | None:
        ohms, ref = self.measured.ohms, self.commissioned_ohm
        if ohms is None or not ref:
            return None
        return round((ohms - ref) / ref * 100, 1)

    @property
    def verdict(self) -> Verdict:
        if self.measured.state != "ok":
            return self.measured.state
        dev = self.deviation_pct
        if dev is None:
            return "no_reference"
        return "deviation" if abs(dev) > self.tolerance * 100 else "ok"

    def fault(self) -> Fault | None:
        z, verdict = self.zone, self.verdict
        values = {"zone": z, "measured_ohm": self.measured.ohms, "commissioned_ohm": self.commissioned_ohm}
        if verdict == "open":
            return Fault("line_open", f"zone {z} speaker line open", f"第{z}路喇叭线路开路", z, values)
        if verdict == "short":
            return Fault("line_short", f"zone {z} speaker line short-circuited", f"第{z}路喇叭线路短路", z,
                         values)
        if verdict == "deviation":
            dev, ref, tol = self.deviation_pct, self.commissioned_ohm, self.tolerance * 100
            return Fault("impedance_deviation",
                         f"zone {z} line impedance {self.measured.ohms} Ω is {dev:+.1f} % from the "
                         f"commissioned {ref:g} Ω (limit ±{tol:g} %)",
                         f"第{z}路线路阻抗 {self.measured.ohms} Ω，偏离开通值 {ref:g} Ω {dev:+.1f}%"
                         f"（允许 ±{tol:g}%）", z,
                         {**values, "deviation_pct": dev, "tolerance_pct": tol})
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"zone": self.zone, "state": self.measured.state, "measured_ohm": self.measured.ohms,
                "commissioned_ohm": self.commissioned_ohm, "deviation_pct": self.deviation_pct,
                "verdict": self.verdict}


def check_zones(measured: Mapping[int, LineImpedance], zones: Iterable[int],
                commissioned: Mapping[int, float], tolerance: float) -> list[ZoneCheck]:
    """Judge the wired ``zones`` (unwired outputs read open by design and are not judged)."""
    return [ZoneCheck(z, measured[z], commissioned.get(z), tolerance) for z in zones if z in measured]


# ---------------------------------------------------------------------- FM transmitter


FM_ALARM_TEXT = {
    "high_vswr": ("high VSWR (antenna or feeder fault)", "驻波比过高（天线或馈线故障）"),
    "over_temperature": ("transmitter over-temperature", "发射机过温"),
    "pll_unlocked": ("PLL unlocked (carrier frequency not stable)", "锁相环失锁（载频不稳）"),
    "supply_fault": ("transmitter power supply fault (mains lost?)", "发射机供电故障（市电中断？）"),
    "no_audio_input": ("carrier on without programme audio", "载波开启但无节目音频输入"),
}


def fm_faults(alarms: Iterable[str], status: FmStatus | None, vswr_max: float) -> list[Fault]:
    """Faults of an FM transmitter from its alarm bit names and, when known, its measurements.

    High VSWR counts when the module raises its alarm bit or the measured ratio exceeds
    ``vswr_max`` (a module whose own threshold is lax is still caught).
    """
    names = list(dict.fromkeys(alarms))
    ratio = status.vswr if status is not None else None
    if ratio is not None and ratio > vswr_max and "high_vswr" not in names:
        names.insert(0, "high_vswr")
    faults: list[Fault] = []
    for name in names:
        text, text_zh = FM_ALARM_TEXT.get(name, (f"transmitter alarm {name}", f"发射机告警 {name}"))
        values: dict[str, Any] = {"alarm": name}
        if name == "high_vswr":
            values.update(vswr=finite(ratio), vswr_max=vswr_max)
            shown = "∞" if ratio is not None and finite(ratio) is None else (f"{ratio:.2f}" if ratio else "?")
            text, text_zh = f"{text}: VSWR {shown}", f"{text_zh}：驻波比 {shown}"
        if status is not None:
            values.update(forward_w=status.forward_w, reflected_w=status.reflected_w,
                          temperature_c=status.temperature_c)
        faults.append(Fault(name, f"FM {text}", f"调频{text_zh}", values=values))
    return faults


# ---------------------------------------------------------------------- lines and the gateway


def line_down_fault(line: str, detail: str) -> Fault:
    """The device's line (serial port or TCP endpoint) is down: nothing can reach it."""
    return Fault("line_down", f"line {line} down: {detail}", f"通信线路 {line} 中断：{detail}",
                 values={"line": line, "detail": detail})


def release_pending_fault(reason: str, broadcast_ids: Iterable[str] = ()) -> Fault:
    """A broadcast has ended but the terminal could not yet be put back to its prior state (its
    amplifier may still be on, its override set): the gateway keeps trying
    (controller/broadcast/release.py)."""
    ids = list(broadcast_ids)
    return Fault("release_pending", f"not restored after its broadcast ended: {reason} (retrying)",
                 f"广播结束后未能复位（功放可能仍开启），正在重试：{reason}",
                 values={"broadcast_ids": ids, "detail": reason})


def gateway_faults(free_mb: float | None, state_dir: str, writable: bool,
                   settings: HealthSettings) -> list[Fault]:
    """The gateway's own faults: a nearly full disk, or a state directory it cannot write."""
    faults: list[Fault] = []
    if free_mb is not None and free_mb < settings.disk_min_free_mb:
        faults.append(Fault("disk_low", f"disk nearly full: {free_mb:.0f} MB free under {state_dir}",
                            f"磁盘空间不足：{state_dir} 仅剩 {free_mb:.0f} MB",
                            values={"free_mb": round(free_mb, 1), "limit_mb": settings.disk_min_free_mb}))
    if not writable:
        faults.append(Fault("state_unwritable", f"state directory {state_dir} is not writable",
                            f"状态目录 {state_dir} 不可写", values={"path": state_dir}))
    return faults
