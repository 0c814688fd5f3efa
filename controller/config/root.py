"""The root model: the whole file, one attribute per section.

It validates each section on its own; rules that span sections run after it (checks.py), from
``parse_config`` (loader.py), because they need the file's directory and read the profile files.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PrivateAttr

from controller.config.alerts import AlertsSettings
from controller.config.api import ApiSettings
from controller.config.audio import AudioOutput, SpeechSettings
from controller.config.broadcast import BroadcastSettings, Schedule
from controller.config.common import Strict
from controller.config.devices import Device, Line, SerialLine, TcpLine
from controller.config.gateway import Gateway
from controller.config.health import HealthSettings
from controller.config.national import NationalPlatformSettings
from controller.config.simulator import Simulator
from controller.config.uplink import CountySettings, MqttSettings
from drivers.profile import AtFmTransmitterProfile, ModbusTerminalProfile

Profile = ModbusTerminalProfile | AtFmTransmitterProfile


class Config(Strict):
    gateway: Gateway
    profiles_dir: str = Field(default="profiles", description="Profile directory, relative to this file")
    state_dir: str = Field(default="/var/lib/ebc",
                           description="Journal (SQLite), tokens, speech cache and audio evidence")
    lines: list[Line]
    devices: list[Device]
    api: ApiSettings = ApiSettings()
    audio_output: AudioOutput = AudioOutput()
    speech: SpeechSettings = SpeechSettings()
    broadcast: BroadcastSettings = BroadcastSettings()
    health: HealthSettings = HealthSettings()
    schedules: list[Schedule] = Field(default_factory=list)
    simulator: Simulator | None = None
    county: CountySettings | None = None
    mqtt: MqttSettings | None = None
    alerts: AlertsSettings = AlertsSettings()
    national_platform: NationalPlatformSettings | None = None

    # Filled by parse_config and load_config after validation; not part of the YAML.
    _profiles: dict[str, Profile] = PrivateAttr(default_factory=dict)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def profiles(self) -> dict[str, Profile]:
        return self._profiles

    @property
    def path(self) -> Path | None:
        return self._path

    def line(self, line_id: str) -> SerialLine | TcpLine:
        return next(line for line in self.lines if line.id == line_id)

    def devices_on(self, line_id: str) -> list[Device]:
        return [d for d in self.devices if d.line == line_id]
