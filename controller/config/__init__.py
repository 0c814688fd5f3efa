"""Gateway configuration: one YAML file validated as a whole.

Every model forbids unknown keys so a typo never silently falls back to a default, and every
error names its key path (``devices[3].unit_id``) so a technician can fix the file without
reading code. ``load_config`` reports all errors at once.

One module per section (gateway, devices, audio, broadcast, health, simulator, api, uplink, alerts),
the root model in root.py, the rules between sections in checks.py, reading the file in loader.py.
Import from here: ``from controller.config import Config, load_config``.
"""

from __future__ import annotations

from controller.config.alerts import (
    DEFAULT_TEMPLATE,
    TEMPLATE_FIELDS,
    AlertFeed,
    AlertMatch,
    AlertRule,
    AlertsSettings,
)
from controller.config.api import ApiSettings
from controller.config.audio import AudioOutput, SpeechSettings
from controller.config.broadcast import BroadcastSettings, BroadcastTemplate, Schedule
from controller.config.common import AREA_CODE, IDENT, Location, area_prefix
from controller.config.devices import Device, Line, SerialLine, TcpLine
from controller.config.errors import ConfigError
from controller.config.gateway import DEFAULT_TIMEZONE, Gateway
from controller.config.health import HealthSettings
from controller.config.loader import load_config, parse_config
from controller.config.national import (
    EventPlan,
    NationalListen,
    NationalPlatformSettings,
    NationalSigning,
    PlatformKey,
    UpperPlatform,
)
from controller.config.root import Config, Profile
from controller.config.simulator import Endpoint, SimAudio, SimDevice, SimFault, Simulator
from controller.config.uplink import (
    BrokerAddress,
    CountyCommand,
    CountyKey,
    CountySettings,
    MqttSettings,
    parse_broker_url,
)

__all__ = [
    "AREA_CODE",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TIMEZONE",
    "IDENT",
    "TEMPLATE_FIELDS",
    "AlertFeed",
    "AlertMatch",
    "AlertRule",
    "AlertsSettings",
    "ApiSettings",
    "AudioOutput",
    "BroadcastSettings",
    "BroadcastTemplate",
    "BrokerAddress",
    "Config",
    "ConfigError",
    "CountyCommand",
    "CountyKey",
    "CountySettings",
    "Device",
    "Endpoint",
    "EventPlan",
    "Gateway",
    "HealthSettings",
    "Line",
    "Location",
    "MqttSettings",
    "NationalListen",
    "NationalPlatformSettings",
    "NationalSigning",
    "PlatformKey",
    "Profile",
    "Schedule",
    "SerialLine",
    "SimAudio",
    "SimDevice",
    "SimFault",
    "Simulator",
    "SpeechSettings",
    "TcpLine",
    "UpperPlatform",
    "area_prefix",
    "load_config",
    "parse_broker_url",
    "parse_config",
]
