"""The gateway's own vital signs: process, system, disk, and the counters of every line.

A county engineer watching hundreds of gateways wants to tell "this box is sick" (memory creeping
up, disk full, a line with rising CRC errors) from "its terminals are sick" without logging in.
psutil reads the process and system figures the same way on every Linux the gateway may run on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from controller.devices.hardware import Hardware

MB = 1024 * 1024
_MIN_CPU_WINDOW_S = 1.0
"""CPU % is averaged since the previous sample; a shorter window repeats the previous figure."""


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the state dir may not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


class ProcessSampler:
    """CPU (averaged between samples), memory, disk and load of this daemon and its machine."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self._proc = psutil.Process()
        self._started = time.monotonic()
        self._last: tuple[float, float] = (self._started, self._cpu_s())
        self._cpu_pct = 0.0
        psutil.cpu_percent(None)  # primes the system-wide figure (the first call returns 0)

    def _cpu_s(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def disk(self) -> tuple[float | None, bool]:
        """Free MB on the state directory's disk, and whether the directory is writable."""
        try:
            usage = shutil.disk_usage(_existing(self.state_dir))
        except OSError:
            return None, False
        target = self.state_dir if self.state_dir.exists() else _existing(self.state_dir)
        return usage.free / MB, os.access(target, os.W_OK)

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), self._cpu_s()
        last_t, last_cpu = self._last
        if now - last_t >= _MIN_CPU_WINDOW_S:
            self._cpu_pct = round((cpu - last_cpu) / (now - last_t) * 100, 2)
            self._last = (now, cpu)
        rss = self._proc.memory_info().rss
        children_rss = 0
        for child in self._proc.children(recursive=True):  # the speech worker
            with contextlib.suppress(psutil.Error):
                children_rss += child.memory_info().rss
        vm = psutil.virtual_memory()
        free_mb, writable = self.disk()
        total_mb = None
        with contextlib.suppress(OSError):
            total_mb = round(shutil.disk_usage(_existing(self.state_dir)).total / MB, 1)
        load = os.getloadavg()
        return {
            "uptime_s": round(self.uptime_s(), 1),
            "process": {"pid": self._proc.pid, "cpu_percent": self._cpu_pct, "rss_mb": round(rss / MB, 1),
                        "children_rss_mb": round(children_rss / MB, 1), "threads": self._proc.num_threads()},
            "system": {"cpu_percent": psutil.cpu_percent(None), "cpus": psutil.cpu_count(),
                       "memory_total_mb": round(vm.total / MB, 1),
                       "memory_available_mb": round(vm.available / MB, 1), "memory_percent": vm.percent,
                       "load_1m": round(load[0], 2), "load_5m": round(load[1], 2),
                       "load_15m": round(load[2], 2)},
            "disk": {"path": str(self.state_dir), "free_mb": None if free_mb is None else round(free_mb, 1),
                     "total_mb": total_mb, "writable": writable},
        }


def line_counters(hardware: Hardware) -> dict[str, dict[str, Any]]:
    """Per line: up or down, request/timeout/CRC/retry counters, latency, poll cycle times."""
    out: dict[str, dict[str, Any]] = {}
    for line_id, arbiter in hardware.arbiters.items():
        entry: dict[str, Any] = {"kind": "serial" if arbiter.is_serial else "tcp", "up": arbiter.connected,
                                 "down_reason": arbiter.down_reason or None,
                                 "queue_depth": arbiter.queue_depth, **asdict(arbiter.stats)}
        poller = hardware.pollers.get(line_id)
        if poller is not None:
            cycle = poller.stats
            entry["poll"] = {"cycles": cycle.cycles, "last_cycle_s": round(cycle.last_cycle_s, 3),
                             "max_cycle_s": round(cycle.max_cycle_s, 3), "polled": cycle.last_polled,
                             "skipped_offline": cycle.last_skipped, "failed": cycle.last_failed}
        out[line_id] = entry
    for fm in hardware.transmitters.values():
        out[fm.name] = {"kind": "fm_serial", "up": fm.connected, "down_reason": fm.down_reason or None,
                        **asdict(fm.stats)}
    return out
