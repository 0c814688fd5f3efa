"""Gateway configuration: one YAML file validated as a whole.

Every model forbids unknown keys so a typo never silently falls back to a default, and every
error names its key path (``devices[3].unit_id``) so a technician can fix the file without
reading code. ``load_config`` reports all errors at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.broadcast.model import BroadcastClass, BroadcastRequest, Tone
from controller.speech.text import SpeechText
from drivers.profile import AtFmTransmitterProfile, ModbusTerminalProfile, load_profile

AREA_CODE = re.compile(r"^\d{12}$")
DEFAULT_TIMEZONE = "Asia/Shanghai"
"""China's one time zone (no daylight saving): the default of ``gateway.timezone``."""
IDENT = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # ids end up in MQTT topics and URLs


class _Strict(BaseModel):
    """Unknown keys are errors; numbers must be finite (YAML's .nan and .inf are refused as such)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_area_code(value: str) -> str:
    if not AREA_CODE.match(value):
        raise ValueError("must be a 12-digit administrative area code (行政区划代码), e.g. 340621103000")
    return value


def area_prefix(code: str) -> str:
    """The significant part of a hierarchical area code (trailing zero groups cover the region)."""
    for width in (2, 4, 6, 9):
        if code[width:] == "0" * (12 - width):
            return code[:width]
    return code


class Location(_Strict):
    lat: float = Field(ge=-90, le=90, description="Latitude, degrees north")
    lon: float = Field(ge=-180, le=180, description="Longitude, degrees east")


class Gateway(_Strict):
    id: str = Field(pattern=IDENT, description="Gateway id used in MQTT topics (lower case, digits, - _)")
    name: str = Field(min_length=1, description="Human name, e.g. 濉溪县刘桥镇应急广播网关")
    area_code: str = Field(description="12-digit area code of the township this gateway serves")
    location: Location
    timezone: str = Field(default=DEFAULT_TIMEZONE,
                          description="IANA time zone of the township, e.g. Asia/Shanghai: schedules, times "
                                      "in announcements and in the web console are read in it")

    _area = field_validator("area_code")(_check_area_code)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{value}' is not an IANA time zone name such as Asia/Shanghai or Asia/Urumqi "
                             "(not an offset like UTC+8)") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The township's time zone."""
        return ZoneInfo(self.timezone)


class _LinePolicy(_Strict):
    """How the arbiter and poller of any line treat its devices."""

    retries: int = Field(default=2, ge=0, le=5, description="Retries after a timeout or CRC error")
    offline_after_failures: int = Field(default=3, ge=1, le=20,
                                        description="Consecutive failed polls before a device is offline")
    offline_poll_every: int = Field(default=5, ge=1, le=100,
                                    description="Poll an offline device only every N cycles")
    poll_interval_s: float = Field(default=5.0, ge=0, le=300,
                                   description="Shortest time between the starts of two health-poll cycles")


class SerialLine(_LinePolicy):
    """An RS-485 (or RS-232) port; one arbiter serves every device on it."""

    type: Literal["serial"]
    id: str = Field(pattern=IDENT)
    port: str = Field(min_length=1, description="Device path, e.g. /dev/ttyUSB0 or the simulator's pty link")
    baudrate: int = Field(default=9600, description="Bits per second")
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(default=0.3, gt=0, le=10, description="Reply timeout per request")

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, value: int) -> int:
        if value not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            raise ValueError("must be a standard rate: 1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200")
        return value


class TcpLine(_LinePolicy):
    """A Modbus TCP endpoint (an IP / 4G terminal); one arbiter per endpoint."""

    type: Literal["tcp"]
    id: str = Field(pattern=IDENT)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="Reply timeout per request")


Line = Annotated[SerialLine | TcpLine, Field(discriminator="type")]


class Device(_Strict):
    id: str = Field(pattern=IDENT, description="Device id used in topics, API and logs")
    name: str = Field(min_length=1)
    village: str = Field(default="", description="Village (村) the device serves")
    area_code: str
    location: Location
    line: str = Field(description="Id of the line (serial port or TCP endpoint) the device is on")
    profile: str = Field(description="Profile name from the profiles directory, e.g. ebt-1")
    unit_id: int | None = Field(default=None, ge=1, le=247, description="Modbus unit id (Modbus devices)")
    zones: list[int] = Field(default_factory=lambda: [1], description="Speaker zones wired at this terminal")
    commissioned_impedance_ohm: dict[int, float] = Field(
        default_factory=dict, description="Line impedance per zone measured at commissioning")

    _area = field_validator("area_code")(_check_area_code)


class SimFault(_Strict):
    """One step of a scripted fault scenario for the simulator."""

    at_s: float = Field(ge=0, description="Seconds after simulator start")
    device: str | None = Field(default=None, description="Device id (omit for line faults)")
    line: str | None = Field(default=None, description="Line id, for unplug/replug")
    fault: Literal["offline", "crc_errors", "slow_replies", "line_open", "line_short", "mains_failure",
                   "over_temperature", "amp_fault", "tamper", "high_vswr", "unplug"]
    clear: bool = Field(default=False, description="Clear this fault instead of raising it")
    zone: int | None = Field(default=None, ge=1, le=32)
    rate: float | None = Field(default=None, ge=0, le=1, description="Fraction of replies corrupted")
    delay_ms: float | None = Field(default=None, ge=0, le=10000, description="Extra reply delay")


class SimDevice(_Strict):
    """Physical properties of one simulated device (defaults model a healthy terminal)."""

    turnaround_ms: float | None = Field(default=None, ge=0, le=1000)
    warmup_ms: int | None = Field(default=None, ge=0, le=60000)
    battery_full_v: float | None = None


class Endpoint(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class SimAudio(Endpoint):
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    record_dir: str = Field(description="Where received audio is kept as WAV")


class Simulator(_Strict):
    control: Endpoint = Field(description="JSON-lines control interface (fault injection, queries)")
    audio: SimAudio = Field(description="The audio line the gateway's output feeds")
    time_scale: float = Field(default=1.0, gt=0, le=100, description="Physics speed-up (tests only)")
    turnaround_ms: float = Field(default=3.0, ge=0, le=1000, description="Default reply turnaround")
    rtu_framing: Literal["strict", "lenient"] = Field(
        default="strict",
        description="strict: a request starting less than 3.5 characters after the previous frame on "
                    "the bus (a reply too) runs into it and goes unanswered, as on RS-485 hardware; "
                    "lenient: answer it anyway (to compare)")
    devices: dict[str, SimDevice] = Field(default_factory=dict)
    scenarios: list[SimFault] = Field(default_factory=list)


class ApiSettings(_Strict):
    host: str = Field(default="127.0.0.1", description="Listen address; loopback unless you mean it")
    port: int = Field(default=8080, ge=1, le=65535)
    header_timeout_s: float = Field(
        default=20.0, gt=0, le=300,
        description="A connection must send a complete request line and headers within this many "
                    "seconds (of opening, or of its first byte after a keep-alive wait), else it is "
                    "closed (a 408 if part of a request came): clients that never finish hold nothing")
    keepalive_timeout_s: float = Field(default=5.0, gt=0, le=300,
                                       description="An idle keep-alive connection is closed after this")


class AudioOutput(_Strict):
    """Where the gateway's program audio goes (the line-out that feeds amplifiers and the FM)."""

    sink: Literal["sim_line", "alsa", "wav"] = Field(
        default="sim_line",
        description="sim_line: the simulator's audio line; alsa: a sound card; wav: files")
    host: str = Field(default="127.0.0.1", description="sim_line: the simulator's audio host")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="sim_line: audio port (default: simulator.audio.port)")
    alsa_device: str = Field(default="default", description="alsa: PCM device name, e.g. hw:0,0")
    wav_dir: str | None = Field(default=None, description="wav: directory the played programs go to")
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    time_scale: float = Field(default=1.0, gt=0, le=100,
                              description="Play faster than real time (tests and simulator only)")


class SpeechSettings(_Strict):
    rate_wpm: int = Field(default=150, ge=60, le=400, description="Speaking rate, words per minute")
    max_chars: int = Field(default=2000, ge=1, le=10000, description="Longest text accepted for speech")


class BroadcastTemplate(_Strict):
    """A ready-made announcement the web console offers: one click fills class, severity, tone, repeat
    and text, so a duty officer at 3 a.m. only picks the targets (the request minus its targets)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = Field(pattern=IDENT, description="Lower-case id: letters, digits, - and _")
    title: str = Field(min_length=1, max_length=200, description="What the console lists, e.g. 防汛紧急通知")
    broadcast_class: BroadcastClass = Field(alias="class", description="emergency, drill or daily")
    severity: int | None = Field(default=None, ge=1, le=4,
                                 description="Emergency level 1 特别重大/红 … 4 一般/蓝 (emergency only)")
    tone: Tone | None = Field(default=None, description="Attention signal; default by class and severity")
    repeat: int = Field(default=1, ge=1, le=10, description="How many times the program plays")
    text: SpeechText = Field(description="Text to speak (cleaned and checked as in a broadcast request)")
    language: Literal["zh", "en"] = "zh"

    @model_validator(mode="after")
    def _playable(self) -> BroadcastTemplate:
        """The same rules as a broadcast request (severity only for emergencies, text not blank)."""
        self.request({"all": True})
        return self

    def request(self, targets: dict[str, Any]) -> BroadcastRequest:
        """This template as a broadcast request to ``targets``; ValueError says what is wrong."""
        data = {**self.model_dump(by_alias=True, exclude={"id"}), "targets": targets}
        try:
            return BroadcastRequest.model_validate(data)
        except ValidationError as exc:
            raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ")
                                       for e in exc.errors())) from None


class BroadcastSettings(_Strict):
    daily_volume: int = Field(default=70, ge=0, le=100, description="Volume when a request names none")
    ready_timeout_s: float = Field(default=15.0, gt=0, le=120,
                                   description="Longest wait for amplifiers to report ready")
    ready_hold_s: float = Field(default=2.0, ge=0, le=30,
                                description="After the first terminal is ready, how long the program "
                                            "(its attention tone) waits for the others still warming up")
    prior_state_max_age_s: float = Field(default=90.0, ge=0, le=3600,
                                         description="Journal a terminal's prior state from the health "
                                                     "polls' settings when they are at most this old and "
                                                     "nothing wrote it since (0: read it first, always)")
    success_threshold: float = Field(default=1.0, gt=0, le=1,
                                     description="Share of the reachable targeted devices that must play a "
                                                 "complete repetition for the broadcast to succeed")
    evidence_retention_days: int = Field(default=90, ge=1, le=3650,
                                         description="How long played program audio is kept")
    templates: list[BroadcastTemplate] = Field(default_factory=list,
                                               description="Ready-made announcements the web console offers")

    @field_validator("templates")
    @classmethod
    def _unique_ids(cls, value: list[BroadcastTemplate]) -> list[BroadcastTemplate]:
        seen: set[str] = set()
        for template in value:
            if template.id in seen:
                raise ValueError(f"duplicate template id '{template.id}'")
            seen.add(template.id)
        return value


class HealthSettings(_Strict):
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


class Schedule(_Strict):
    """A broadcast on a calendar: daily programs and routine system tests."""

    id: str = Field(pattern=IDENT)
    cron: str = Field(description="Five-field cron expression in gateway local time, e.g. '0 7 * * *'")
    enabled: bool = True
    request: dict[str, Any] = Field(description="The broadcast request, as for POST /api/v1/broadcasts")


CountyCommand = Literal["broadcast", "cancel", "rebirth", "line_check", "alert"]
"""Commands the county centre may send on ``<prefix>/<gw>/cmd/<name>`` (docs/county-commands.md)."""


class CountyKey(_Strict):
    """One public key of the county centre; a command names it in ``key_id``."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                    description="Key id the county puts in a command's key_id")
    type: Literal["ed25519", "sm2"] = Field(description="ed25519, or sm2 (SM2 over SM3, 国密)")
    public_key: str | None = Field(default=None,
                                   description="PEM public key, or the raw key in hex or base64")
    public_key_file: str | None = Field(default=None,
                                        description="File holding the public key (relative to this file)")
    commands: list[CountyCommand] | None = Field(
        default=None, description="Commands this key may give (default: all); least privilege")

    @model_validator(mode="after")
    def _one_source(self) -> CountyKey:
        if (self.public_key is None) == (self.public_key_file is None):
            raise ValueError("give exactly one of public_key and public_key_file")
        return self

    def key_text(self, base: Path) -> str:
        """The key as written in the config or read from ``public_key_file`` (relative to ``base``)."""
        if self.public_key is not None:
            return self.public_key
        path = Path(self.public_key_file or "")
        return (path if path.is_absolute() else base / path).read_text(encoding="utf-8")


class CountySettings(_Strict):
    """Signed commands from the county centre: whose keys, how fresh, how long nonces are kept."""

    keys: list[CountyKey] = Field(min_length=1, description="The county's public keys")
    max_skew_s: float = Field(default=300, gt=0, le=3600,
                              description="Largest accepted difference between a command's ts and now")
    nonce_ttl_s: float | None = Field(default=None,
                                      description="How long a seen nonce is refused (≥ 2 × max_skew_s; "
                                                  "default 2 × max_skew_s)")

    @model_validator(mode="after")
    def _consistent(self) -> CountySettings:
        ids = [k.id for k in self.keys]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate key id(s): {', '.join(dupes)}")
        if self.nonce_ttl_s is not None and self.nonce_ttl_s < 2 * self.max_skew_s:
            raise ValueError(f"nonce_ttl_s must be at least 2 × max_skew_s ({2 * self.max_skew_s:g} s), "
                             f"or a replayed command could be accepted again")
        return self

    @property
    def nonce_ttl(self) -> float:
        return self.nonce_ttl_s if self.nonce_ttl_s is not None else 2 * self.max_skew_s

    def key_problems(self, base: Path) -> list[str]:
        """Every key that cannot be read or is not a valid key of its type (for config check)."""
        from controller.uplink.signing import KeyFormatError, load_public_key  # cryptography only when used

        problems = []
        for i, key in enumerate(self.keys):
            where = f"county.keys[{i}]({key.id})"
            try:
                load_public_key(key.type, key.key_text(base))
            except OSError as exc:
                problems.append(f"{where}.public_key_file: cannot read {key.public_key_file}: {exc.strerror}")
            except KeyFormatError as exc:
                field = "public_key" if key.public_key is not None else "public_key_file"
                problems.append(f"{where}.{field}: {exc}")
        return problems


TEMPLATE_FIELDS = ("headline", "description", "instruction", "event", "villages", "guidance", "sender",
                   "area", "level", "colour", "expires")
"""Placeholders an announcement template may use (docs/alerts.md)."""

DEFAULT_TEMPLATE = ("{sender}发布{event}预警。{headline}。{description}{instruction}"
                    "影响范围：{villages}。{guidance}")


class AlertMatch(_Strict):
    """When a rule applies: every list given must contain the alert's value (an empty list matches all)."""

    event_types: list[str] = Field(default_factory=list,
                                   description="GB/T 35561 codes (11B03) or event texts (暴雨); "
                                               "a code prefix ending in '*' matches a family, e.g. 11B*")
    severity: list[Literal["Extreme", "Severe", "Moderate", "Minor", "Unknown"]] = Field(
        default_factory=list, description="CAP severity; colours map Red→Extreme … Blue→Minor")
    urgency: list[Literal["Immediate", "Expected", "Future", "Past", "Unknown"]] = Field(default_factory=list)
    certainty: list[Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]] = Field(
        default_factory=list)
    status: list[Literal["Actual", "Exercise", "System", "Test", "Draft"]] = Field(
        default_factory=lambda: ["Actual"], description="Default: real alerts only")
    senders: list[str] = Field(default_factory=list,
                               description="CAP sender, senderName or senderCode; any one equal matches")


class AlertRule(_Strict):
    """One line of the township's plan (预案): which alerts do what. The first matching rule wins."""

    id: str = Field(pattern=IDENT)
    match: AlertMatch = AlertMatch()
    action: Literal["broadcast", "approve", "record"] = Field(
        description="broadcast at once; queue for duty-officer approval; or record only")
    on_timeout: Literal["play", "expire"] = Field(
        default="expire", description="approve: what happens when nobody decides in time")
    approval_timeout_s: float = Field(default=600, gt=0, le=86400,
                                      description="approve: how long a pending alert waits for a decision")
    drill: bool = Field(default=False,
                        description="Play Test/Exercise alerts as a drill (never as emergency)")
    tone: Literal["none", "chime", "siren"] | None = Field(
        default=None, description="Attention signal; default siren for level 1–2, chime otherwise")
    repeat: int = Field(default=2, ge=1, le=10, description="How many times the announcement plays")
    source_level: Literal["village", "township", "county", "city", "province", "national"] | None = Field(
        default=None, description="Who the alert counts as (priority); default: the feed's, else county")


class AlertFeed(_Strict):
    """A source of CAP documents the gateway polls."""

    id: str = Field(pattern=IDENT)
    type: Literal["url", "index", "directory"] = Field(
        description="url: one CAP document; index: an Atom/RSS list of CAP links; "
                    "directory: *.xml/*.cap files")
    url: str | None = Field(default=None, description="url/index: http(s) address")
    path: str | None = Field(default=None, description="directory: folder to watch (relative to this file)")
    interval_s: float = Field(default=60, ge=1, le=86400, description="Time between polls")
    timeout_s: float = Field(default=10, gt=0, le=300, description="Per HTTP request")
    max_backoff_s: float = Field(default=900, ge=1, le=86400,
                                 description="Longest wait after repeated failures (doubles up to it)")
    source_level: Literal["village", "township", "county", "city", "province", "national"] = Field(
        default="county", description="Who this feed's alerts count as, for priority")

    @model_validator(mode="after")
    def _where(self) -> AlertFeed:
        if self.type in ("url", "index"):
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError(f"type {self.type} needs url: an http:// or https:// address")
        elif not self.path:
            raise ValueError("type directory needs path")
        return self


class AlertsSettings(_Strict):
    """CAP alerts from weather and warning feeds (docs/alerts.md): feeds, rules (预案), templates."""

    languages: list[str] = Field(default_factory=lambda: ["zh-CN", "en-US"],
                                 description="Info block preference, first wins; 'zh' matches zh-CN")
    feeds: list[AlertFeed] = Field(default_factory=list)
    mqtt_topics: list[str] = Field(default_factory=list,
                                   description="Topics on the county broker carrying CAP documents")
    rules: list[AlertRule] = Field(default_factory=list, description="First match wins")
    default_action: Literal["approve", "record"] = Field(
        default="approve", description="For a real alert no rule matches")
    default_approval_timeout_s: float = Field(default=600, gt=0, le=86400)
    templates: dict[str, str] = Field(
        default_factory=dict, description="Announcement text per event type (GB/T 35561 code or event "
                                          "text), key 'default' for the rest; placeholders in {braces}")
    guidance: dict[str, str] = Field(default_factory=dict,
                                     description="Escape guidance (逃生明白纸) per village name")

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        import string

        for key, text in value.items():
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
            except ValueError as exc:
                raise ValueError(f"template '{key}': {exc}") from None
            bad = [n for n in names if n not in TEMPLATE_FIELDS]
            if bad:
                shown = ", ".join("{" + b + "}" for b in bad)
                raise ValueError(f"template '{key}': unknown placeholder(s) {shown} "
                                 f"(known: {', '.join(TEMPLATE_FIELDS)})")
        return value

    @model_validator(mode="after")
    def _unique(self) -> AlertsSettings:
        for what, ids in (("rule", [r.id for r in self.rules]), ("feed", [f.id for f in self.feeds])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} id(s): {', '.join(dupes)}")
        return self


BROKER_URL = re.compile(r"^(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?/?$")
DEFAULT_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerAddress(BaseModel):
    """One broker node parsed from ``mqtt://host:port`` / ``mqtts://host:port``."""

    url: str
    tls: bool
    host: str
    port: int


def parse_broker_url(url: str) -> BrokerAddress:
    match = BROKER_URL.match(url)
    if not match:
        raise ValueError(f"'{url}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
    port = int(match["port"]) if match["port"] else DEFAULT_MQTT_PORTS[match["scheme"]]
    if not 1 <= port <= 65535:
        raise ValueError(f"'{url}': port must be 1..65535")
    return BrokerAddress(url=url, tls=match["scheme"] == "mqtts", host=match["host"].strip("[]"), port=port)


class MqttSettings(_Strict):
    """Reporting to the county centre over MQTT (controller/uplink/mqtt.py; topics in docs/mqtt.md)."""

    brokers: list[str] = Field(min_length=1,
                               description="Broker URLs (mqtt://host:port or mqtts://host:port), tried in "
                                           "turn: any node of a cluster will do")
    prefix: str = Field(default="ebc", pattern=r"^[^#+/\s]+(/[^#+/\s]+)*$",
                        description="First topic level(s): <prefix>/<gateway id>/...")
    client_id: str | None = Field(default=None, min_length=1, max_length=128,
                                  description="MQTT client id (default: the gateway id)")
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, description="Prefer password_file: config files get copied")
    password_file: str | None = Field(default=None, description="File holding the password (relative to "
                                                                "this file); trailing newline ignored")
    ca_file: str | None = Field(default=None, description="mqtts: CA bundle that signed the broker's "
                                                          "certificate (default: the system's)")
    cert_file: str | None = Field(default=None, description="mqtts: client certificate (PEM)")
    key_file: str | None = Field(default=None,
                                 description="mqtts: client private key (PEM), if not in cert_file")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive; the Will fires after "
                                                                    "1.5 × this without traffic")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=300, description="First wait after a failure")
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait (doubles up to it)")
    health_interval_s: float = Field(default=60.0, ge=1, le=86400, description="Period of the health topic")
    inflight: int = Field(default=100, ge=1, le=10000,
                          description="Outbox messages sent but not yet acknowledged, at most")
    outbox_max_rows: int = Field(default=100_000, ge=100, le=10_000_000,
                                 description="Outbox bound; over it health snapshots, then the oldest "
                                             "events are dropped (and reported)")
    outbox_max_health_rows: int = Field(default=1_000, ge=0, le=1_000_000,
                                        description="Unsent health snapshots kept, newest")

    @field_validator("brokers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        parsed = [parse_broker_url(url) for url in value]
        if len({b.tls for b in parsed}) > 1:
            raise ValueError("use either mqtt:// or mqtts:// for all brokers, not both")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give at most one of password and password_file")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        if not self.addresses()[0].tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file and cert_file need mqtts:// brokers")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def addresses(self) -> list[BrokerAddress]:
        return [parse_broker_url(url) for url in self.brokers]

    def file(self, name: str, base: Path) -> Path | None:
        """The path of file setting ``name`` (relative paths are relative to ``base``)."""
        value = getattr(self, name)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else base / path

    def read_password(self, base: Path) -> str | None:
        if self.password_file is None:
            return self.password
        path = self.file("password_file", base)
        assert path is not None
        return path.read_text(encoding="utf-8").rstrip("\r\n")

    def file_problems(self, base: Path) -> list[str]:
        """Files named in this section that cannot be read (for config check)."""
        problems = []
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            path = self.file(name, base)
            if path is not None and not os.access(path, os.R_OK):
                problems.append(f"mqtt.{name}: cannot read {path}")
        return problems


class Config(_Strict):
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

    # Filled by load_config after validation; not part of the YAML.
    _profiles: dict[str, ModbusTerminalProfile | AtFmTransmitterProfile] = PrivateAttr(default_factory=dict)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def profiles(self) -> dict[str, ModbusTerminalProfile | AtFmTransmitterProfile]:
        return self._profiles

    @property
    def path(self) -> Path | None:
        return self._path

    def line(self, line_id: str) -> SerialLine | TcpLine:
        return next(line for line in self.lines if line.id == line_id)

    def devices_on(self, line_id: str) -> list[Device]:
        return [d for d in self.devices if d.line == line_id]


class ConfigError(Exception):
    """All problems found in a configuration file, each naming its key path."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


def _key_path(loc: tuple[int | str, ...], data: object) -> str:
    """Render a pydantic location as ``devices[3](t04).unit_id``, skipping union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                out += f"({node['id']})"
        elif isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # discriminated-union tag, not a key in the file
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _message(error: Any) -> str:
    """pydantic's message, phrased for someone editing a YAML file."""
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _cross_check(cfg: Config, base: Path) -> list[str]:
    """Consistency between sections that single-field validation cannot see."""
    errors: list[str] = []
    seen: dict[str, str] = {}
    for i, line in enumerate(cfg.lines):
        if line.id in seen:
            errors.append(f"lines[{i}].id: duplicate line id '{line.id}'")
        seen[line.id] = line.type
    gw_prefix = area_prefix(cfg.gateway.area_code)
    profiles_dir = (base / cfg.profiles_dir).resolve()
    profiles: dict[str, ModbusTerminalProfile | AtFmTransmitterProfile] = {}
    bad_profiles: set[str] = set()
    ids: set[str] = set()
    units: dict[tuple[str, int], str] = {}
    fm_lines: dict[str, str] = {}
    modbus_lines: set[str] = set()
    for i, dev in enumerate(cfg.devices):
        where = f"devices[{i}]({dev.id})"
        if dev.id in ids:
            errors.append(f"{where}.id: duplicate device id '{dev.id}'")
        ids.add(dev.id)
        if not dev.area_code.startswith(gw_prefix):
            errors.append(f"{where}.area_code: {dev.area_code} is outside the gateway's area "
                          f"{cfg.gateway.area_code}")
        if dev.line not in seen:
            errors.append(f"{where}.line: no line with id '{dev.line}' (known: {', '.join(seen) or 'none'})")
            continue
        if dev.profile in bad_profiles:
            continue
        if dev.profile not in profiles:
            bad_profiles.add(dev.profile)  # until it loads: report a broken profile once
            path = profiles_dir / f"{dev.profile}.yaml"
            if not path.is_file():
                errors.append(f"{where}.profile: no profile file {path}")
                continue
            try:
                profiles[dev.profile] = load_profile(path)
                bad_profiles.discard(dev.profile)
            except ValidationError as exc:
                errors.extend(f"{where}.profile: {path}: {_key_path(e['loc'][1:], None)}: {_message(e)}"
                              for e in exc.errors())
                continue
            except yaml.YAMLError as exc:
                errors.append(f"{where}.profile: {path} is not valid YAML: {exc}")
                continue
        profile = profiles[dev.profile]
        line_type = seen[dev.line]
        if isinstance(profile, ModbusTerminalProfile):
            modbus_lines.add(dev.line)
            if dev.unit_id is None:
                errors.append(f"{where}.unit_id: required for Modbus profile '{dev.profile}'")
            else:
                key = (dev.line, dev.unit_id)
                if key in units:
                    errors.append(f"{where}.unit_id: {dev.unit_id} already used on line '{dev.line}' "
                                  f"by '{units[key]}'")
                units[key] = dev.id
            for z in dev.zones:
                if not 1 <= z <= profile.zones:
                    errors.append(f"{where}.zones: zone {z} does not exist (profile has 1..{profile.zones})")
            for z in dev.commissioned_impedance_ohm:
                if z not in dev.zones:
                    errors.append(f"{where}.commissioned_impedance_ohm: zone {z} is not in zones {dev.zones}")
        else:
            if line_type != "serial":
                errors.append(f"{where}.line: profile '{dev.profile}' needs a serial line, "
                              f"'{dev.line}' is tcp")
            if dev.unit_id is not None:
                errors.append(f"{where}.unit_id: profile '{dev.profile}' is not a Modbus device")
            if dev.line in fm_lines:
                errors.append(f"{where}.line: line '{dev.line}' already carries '{fm_lines[dev.line]}'")
            fm_lines[dev.line] = dev.id
    for line_id in set(fm_lines) & modbus_lines:
        errors.append(f"lines({line_id}): an AT device and Modbus devices cannot share one line")
    if cfg.simulator:
        for name in cfg.simulator.devices:
            if name not in ids:
                errors.append(f"simulator.devices.{name}: no device with that id")
        for i, step in enumerate(cfg.simulator.scenarios):
            where = f"simulator.scenarios[{i}]"
            if step.fault == "unplug":
                if step.line not in seen:
                    errors.append(f"{where}.line: unplug needs the id of a line")
            elif step.device not in ids:
                errors.append(f"{where}.device: no device with id '{step.device}'")
            if step.fault in ("line_open", "line_short") and step.zone is None:
                errors.append(f"{where}.zone: required for {step.fault}")
    for i, template in enumerate(cfg.broadcast.templates):
        if len(template.text) > cfg.speech.max_chars:
            errors.append(f"broadcast.templates[{i}]({template.id}).text: {len(template.text)} characters; "
                          f"speech.max_chars allows {cfg.speech.max_chars}")
    for i, sched in enumerate(cfg.schedules):
        try:
            BroadcastRequest.model_validate(sched.request)
        except ValidationError as exc:
            errors.extend(f"schedules[{i}]({sched.id}).request.{_key_path(e['loc'], sched.request)}: "
                          f"{_message(e)}" for e in exc.errors())
    if cfg.audio_output.sink == "sim_line" and cfg.audio_output.port is None and cfg.simulator is None:
        errors.append("audio_output.port: required for sink sim_line when there is no simulator section")
    if cfg.audio_output.sink == "wav" and not cfg.audio_output.wav_dir:
        errors.append("audio_output.wav_dir: required for sink wav")
    if cfg.county is not None:
        errors.extend(cfg.county.key_problems(base))
    if cfg.mqtt is not None:
        errors.extend(cfg.mqtt.file_problems(base))
    cfg._profiles = profiles
    return errors


def parse_config(data: object, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate a loaded YAML document; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_key_path(e['loc'], data)}: {_message(e)}" for e in exc.errors()]
        raise ConfigError(source, problems) from None
    errors = _cross_check(cfg, base or Path.cwd())
    if errors:
        raise ConfigError(source, errors)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read, validate and cross-check a configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    cfg = parse_config(data, str(path), path.parent)
    cfg._path = path.resolve()
    return cfg
