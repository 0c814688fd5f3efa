"""The ``health`` section: when a device counts as offline or faulty, and how often the gateway reports."""

from __future__ import annotations

from pydantic import Field

from controller.config.common import Strict


class HealthSettings(Strict):
    """Device and gateway health supervision (controller/devices/health.py)."""

    offline_after_s: float = Field(default=20.0, gt=0, le=3600,
                                   description="A device is offline after this long without a good answer")
    line_check_interval_s: float = Field(default=90.0, ge=0, le=86400,
                                         description="Speaker-line impedance check of every terminal this "
                                                     "often, spread over the interval (0: only on demand)")
    line_check_timeout_s: float = Field(default=10.0, gt=0, le=120,
                                        description="Longest wait for a terminal to finish a line check")
    impedance_tolerance: float = Field(default=0.15, gt=0, le=1,
                                       description="Line fault when impedance deviates more than this "
                                                   "fraction from the commissioned value")
    low_battery_v: float = Field(default=11.5, ge=0, le=100,
                                 description="Low-battery fault below this battery voltage (0: never)")
    over_temperature_c: float = Field(default=80.0, ge=0, le=200,
                                      description="Over-temperature fault at this amplifier temperature, "
                                                  "also when the terminal does not flag it")
    fm_poll_interval_s: float = Field(default=5.0, gt=0, le=300,
                                      description="FM transmitter status query interval")
    fm_vswr_max: float = Field(default=2.0, gt=1, le=100,
                               description="High-VSWR fault above this ratio (also without the alarm bit)")
    report_interval_s: float = Field(default=60.0, gt=0, le=86400,
                                     description="Gateway health snapshot (gateway.health event) interval")
    fault_recovered_hold_s: float = Field(default=60.0, ge=0, le=86400,
                                          description="State 4 (fault recovered) is shown this long after "
                                                      "the last fault of a device cleared")
    disk_min_free_mb: float = Field(default=200.0, ge=0, le=1_000_000,
                                    description="Gateway disk_low fault when the state directory's disk "
                                                "has less free space")
