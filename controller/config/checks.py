"""Rules that span entries or sections, which validating one section at a time cannot see.

One function per rule, each returning its error lines (``<key path>: <what is wrong>``). ``cross_check``
runs them in file order, device by device, so a technician reads the problems of one device together;
it only runs once every section is valid on its own (loader.py), as the rules rely on valid fields.
``_Seen`` carries what earlier entries showed (line ids, device ids, unit ids, loaded profiles) to the
rules for later ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.broadcast.model import BroadcastRequest
from controller.config.common import area_prefix
from controller.config.devices import Device
from controller.config.errors import error_message, key_path
from controller.config.gateway import Gateway
from controller.config.root import Config, Profile
from controller.config.simulator import SimFault
from controller.uplink.national.codes import parse_ebrid
from drivers.profile import ModbusTerminalProfile, load_profile


@dataclass
class _Seen:
    """What the entries before the current one showed."""

    line_types: dict[str, str] = field(default_factory=dict)  # line id → serial / tcp
    device_ids: set[str] = field(default_factory=set)
    profiles: dict[str, Profile] = field(default_factory=dict)  # loaded, by name
    bad_profiles: set[str] = field(default_factory=set)  # reported once, then skipped
    units: dict[tuple[str, int], str] = field(default_factory=dict)  # (line, unit id) → device id
    at_lines: dict[str, str] = field(default_factory=dict)  # line id → the AT device on it
    modbus_lines: set[str] = field(default_factory=set)


def cross_check(cfg: Config, base: Path) -> tuple[list[str], dict[str, Profile]]:
    """Every rule below, in file order: the errors, and the device profiles that loaded."""
    seen = _Seen()
    errors = unique_line_ids(cfg, seen)
    profiles_dir = (base / cfg.profiles_dir).resolve()
    for i, dev in enumerate(cfg.devices):
        where = f"devices[{i}]({dev.id})"
        errors += unique_device_id(where, dev, seen)
        errors += device_in_gateway_area(where, dev, cfg.gateway)
        line_errors = device_line_exists(where, dev, seen)
        if line_errors:
            errors += line_errors
            continue
        profile, profile_errors = device_profile_loads(where, dev, profiles_dir, seen)
        errors += profile_errors
        if profile is None:
            continue
        if isinstance(profile, ModbusTerminalProfile):
            seen.modbus_lines.add(dev.line)
            errors += modbus_unit_id_given(where, dev)
            errors += modbus_unit_id_unique(where, dev, seen)
            errors += zones_exist(where, dev, profile)
            errors += commissioned_zones_wired(where, dev)
        else:
            errors += at_device_on_serial_line(where, dev, seen)
            errors += at_device_has_no_unit_id(where, dev)
            errors += one_at_device_per_line(where, dev, seen)
    errors += at_and_modbus_lines_apart(seen)
    if cfg.simulator is not None:
        errors += simulator_devices_exist(cfg, seen)
        for i, step in enumerate(cfg.simulator.scenarios):
            where = f"simulator.scenarios[{i}]"
            errors += scenario_step_target_exists(where, step, seen)
            errors += line_fault_names_a_zone(where, step)
    errors += templates_fit_speech_limit(cfg)
    errors += schedule_requests_valid(cfg)
    errors += sim_line_sink_has_a_port(cfg)
    errors += wav_sink_has_a_dir(cfg)
    errors += county_keys_load(cfg, base)
    errors += mqtt_files_readable(cfg, base)
    if cfg.national_platform is not None:
        errors += resource_codes_valid(cfg)
        errors += national_files_readable(cfg, base)
    return errors, seen.profiles


# ---------------------------------------------------------------------------- lines and devices

def unique_line_ids(cfg: Config, seen: _Seen) -> list[str]:
    """Devices name their line by id, so two lines must not share one."""
    errors = []
    for i, line in enumerate(cfg.lines):
        if line.id in seen.line_types:
            errors.append(f"lines[{i}].id: duplicate line id '{line.id}'")
        seen.line_types[line.id] = line.type
    return errors


def unique_device_id(where: str, dev: Device, seen: _Seen) -> list[str]:
    """Device ids name a terminal in topics, the API and targets: one terminal each."""
    duplicate = dev.id in seen.device_ids
    seen.device_ids.add(dev.id)
    return [f"{where}.id: duplicate device id '{dev.id}'"] if duplicate else []


def device_in_gateway_area(where: str, dev: Device, gateway: Gateway) -> list[str]:
    """A gateway serves its own township: area-code targets must not reach past it."""
    if dev.area_code.startswith(area_prefix(gateway.area_code)):
        return []
    return [f"{where}.area_code: {dev.area_code} is outside the gateway's area {gateway.area_code}"]


def device_line_exists(where: str, dev: Device, seen: _Seen) -> list[str]:
    """The device's line is one of ``lines`` (else its profile is not checked further)."""
    if dev.line in seen.line_types:
        return []
    return [f"{where}.line: no line with id '{dev.line}' (known: {', '.join(seen.line_types) or 'none'})"]


def device_profile_loads(where: str, dev: Device, profiles_dir: Path,
                         seen: _Seen) -> tuple[Profile | None, list[str]]:
    """The profile file exists and is valid; a broken one is reported once, at its first device."""
    if dev.profile in seen.bad_profiles:
        return None, []
    if dev.profile in seen.profiles:
        return seen.profiles[dev.profile], []
    seen.bad_profiles.add(dev.profile)  # until it loads
    path = profiles_dir / f"{dev.profile}.yaml"
    if not path.is_file():
        return None, [f"{where}.profile: no profile file {path}"]
    try:
        profile = load_profile(path)
    except ValidationError as exc:
        return None, [f"{where}.profile: {path}: {key_path(e['loc'][1:], None)}: {error_message(e)}"
                      for e in exc.errors()]
    except yaml.YAMLError as exc:
        return None, [f"{where}.profile: {path} is not valid YAML: {exc}"]
    seen.bad_profiles.discard(dev.profile)
    seen.profiles[dev.profile] = profile
    return profile, []


def modbus_unit_id_given(where: str, dev: Device) -> list[str]:
    """A Modbus terminal is addressed by its unit id."""
    if dev.unit_id is not None:
        return []
    return [f"{where}.unit_id: required for Modbus profile '{dev.profile}'"]


def modbus_unit_id_unique(where: str, dev: Device, seen: _Seen) -> list[str]:
    """Two terminals answering one unit id on one bus would garble each other's replies."""
    if dev.unit_id is None:
        return []
    key = (dev.line, dev.unit_id)
    errors = []
    if key in seen.units:
        errors.append(f"{where}.unit_id: {dev.unit_id} already used on line '{dev.line}' "
                      f"by '{seen.units[key]}'")
    seen.units[key] = dev.id
    return errors


def zones_exist(where: str, dev: Device, profile: ModbusTerminalProfile) -> list[str]:
    """Speaker zones are numbered 1.. the zones the terminal's profile has."""
    return [f"{where}.zones: zone {z} does not exist (profile has 1..{profile.zones})"
            for z in dev.zones if not 1 <= z <= profile.zones]


def commissioned_zones_wired(where: str, dev: Device) -> list[str]:
    """A commissioning impedance is for a zone the device has wired."""
    return [f"{where}.commissioned_impedance_ohm: zone {z} is not in zones {dev.zones}"
            for z in dev.commissioned_impedance_ohm if z not in dev.zones]


def at_device_on_serial_line(where: str, dev: Device, seen: _Seen) -> list[str]:
    """An AT device (the FM transmitter) speaks over a serial port only."""
    if seen.line_types[dev.line] == "serial":
        return []
    return [f"{where}.line: profile '{dev.profile}' needs a serial line, '{dev.line}' is tcp"]


def at_device_has_no_unit_id(where: str, dev: Device) -> list[str]:
    """A unit id on an AT device is a mistake: it would be ignored."""
    if dev.unit_id is None:
        return []
    return [f"{where}.unit_id: profile '{dev.profile}' is not a Modbus device"]


def one_at_device_per_line(where: str, dev: Device, seen: _Seen) -> list[str]:
    """AT commands carry no address: one AT device per line."""
    errors = []
    if dev.line in seen.at_lines:
        errors.append(f"{where}.line: line '{dev.line}' already carries '{seen.at_lines[dev.line]}'")
    seen.at_lines[dev.line] = dev.id
    return errors


def at_and_modbus_lines_apart(seen: _Seen) -> list[str]:
    """AT text and Modbus RTU frames cannot share one bus."""
    return [f"lines({line_id}): an AT device and Modbus devices cannot share one line"
            for line_id in set(seen.at_lines) & seen.modbus_lines]


# ---------------------------------------------------------------------------- simulator

def simulator_devices_exist(cfg: Config, seen: _Seen) -> list[str]:
    """Simulated physics is given per configured device."""
    assert cfg.simulator is not None
    return [f"simulator.devices.{name}: no device with that id"
            for name in cfg.simulator.devices if name not in seen.device_ids]


def scenario_step_target_exists(where: str, step: SimFault, seen: _Seen) -> list[str]:
    """An unplug names a configured line; every other fault a configured device."""
    if step.fault == "unplug":
        if step.line not in seen.line_types:
            return [f"{where}.line: unplug needs the id of a line"]
    elif step.device not in seen.device_ids:
        return [f"{where}.device: no device with id '{step.device}'"]
    return []


def line_fault_names_a_zone(where: str, step: SimFault) -> list[str]:
    """A speaker line opens or shorts in one zone."""
    if step.fault in ("line_open", "line_short") and step.zone is None:
        return [f"{where}.zone: required for {step.fault}"]
    return []


# ---------------------------------------------------------------------------- programs and output

def templates_fit_speech_limit(cfg: Config) -> list[str]:
    """A console template must be speakable: its text within ``speech.max_chars``."""
    limit = cfg.speech.max_chars
    return [f"broadcast.templates[{i}]({template.id}).text: {len(template.text)} characters; "
            f"speech.max_chars allows {limit}"
            for i, template in enumerate(cfg.broadcast.templates) if len(template.text) > limit]


def schedule_requests_valid(cfg: Config) -> list[str]:
    """A schedule's request is a valid broadcast request, found now rather than when it is due."""
    errors: list[str] = []
    for i, sched in enumerate(cfg.schedules):
        try:
            BroadcastRequest.model_validate(sched.request)
        except ValidationError as exc:
            errors.extend(f"schedules[{i}]({sched.id}).request.{key_path(e['loc'], sched.request)}: "
                          f"{error_message(e)}" for e in exc.errors())
    return errors


def sim_line_sink_has_a_port(cfg: Config) -> list[str]:
    """The sim_line sink takes its port from the simulator section unless given one."""
    out = cfg.audio_output
    if out.sink == "sim_line" and out.port is None and cfg.simulator is None:
        return ["audio_output.port: required for sink sim_line when there is no simulator section"]
    return []


def wav_sink_has_a_dir(cfg: Config) -> list[str]:
    """The wav sink writes its files somewhere."""
    if cfg.audio_output.sink == "wav" and not cfg.audio_output.wav_dir:
        return ["audio_output.wav_dir: required for sink wav"]
    return []


# ---------------------------------------------------------------------------- files named in the config

def county_keys_load(cfg: Config, base: Path) -> list[str]:
    """Every county key can be read and is a valid key of its type (files relative to ``base``)."""
    return cfg.county.key_problems(base) if cfg.county is not None else []


def mqtt_files_readable(cfg: Config, base: Path) -> list[str]:
    """Password, CA, certificate and key files named in ``mqtt`` can be read."""
    return cfg.mqtt.file_problems(base) if cfg.mqtt is not None else []


# ---------------------------------------------------------------------------- national platform

def resource_codes_valid(cfg: Config) -> list[str]:
    """With ``national_platform``: the gateway, every device and the upper platform have valid,
    distinct EBRIDs whose level digit and area code agree with what they are and where they stand."""
    errors: list[str] = []
    owners: dict[str, str] = {}
    entries = [("gateway", cfg.gateway.ebrid, cfg.gateway.area_code, True)]
    entries += [(f"devices[{i}]({d.id})", d.ebrid, d.area_code, False) for i, d in enumerate(cfg.devices)]
    for where, code, area, is_gateway in entries:
        if code is None:
            errors.append(f"{where}.ebrid: required with national_platform (propose codes with "
                          f"`ebc platform codes --config <file>`)")
            continue
        try:
            ebrid = parse_ebrid(code)
        except ValueError as exc:
            errors.append(f"{where}.ebrid: {exc}")
            continue
        if ebrid.area_code != area:
            owner = "gateway" if is_gateway else "device"
            errors.append(f"{where}.ebrid: its area code {ebrid.area_code} is not the {owner}'s "
                          f"area_code {area}")
        if is_gateway and ebrid.level != 5:
            errors.append(f"{where}.ebrid: level digit {ebrid.level} — a township broadcast system "
                          f"is level 5")
        if code in owners:
            errors.append(f"{where}.ebrid: {code} is already the code of {owners[code]}")
        owners.setdefault(code, where)
    upper = cfg.national_platform.upper.ebrid if cfg.national_platform else None
    if upper is not None:
        try:
            if parse_ebrid(upper).level >= 5:
                errors.append(f"national_platform.upper.ebrid: level digit {upper[0]} is not a platform "
                              f"above a township (1 national … 4 county)")
        except ValueError as exc:
            errors.append(f"national_platform.upper.ebrid: {exc}")
        if upper in owners:
            errors.append(f"national_platform.upper.ebrid: {upper} is already the code of {owners[upper]}")
    return errors


def national_files_readable(cfg: Config, base: Path) -> list[str]:
    """The signing key, the platform's keys and the TLS files named in ``national_platform`` load."""
    from controller.uplink.national.signature import KeyFormatError, Sm2Verifier, SoftwareSm2Signer

    nat = cfg.national_platform
    if nat is None:
        return []
    errors: list[str] = []

    def resolve(name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else base / path

    try:
        SoftwareSm2Signer(resolve(nat.signing.private_key_file).read_text(encoding="utf-8"),
                          nat.signing.cert_sn, nat.signing.user_id)
    except OSError as exc:
        errors.append(f"national_platform.signing.private_key_file: cannot read "
                      f"{nat.signing.private_key_file}: {exc.strerror}")
    except (KeyFormatError, ValueError) as exc:
        errors.append(f"national_platform.signing.private_key_file: {exc}")
    for i, key in enumerate(nat.upper.keys):
        where = f"national_platform.upper.keys[{i}]({key.cert_sn})"
        try:
            Sm2Verifier(key.key_text(base), nat.upper.user_id)
        except OSError as exc:
            errors.append(f"{where}.public_key_file: cannot read {key.public_key_file}: {exc.strerror}")
        except (KeyFormatError, ValueError) as exc:
            field = "public_key" if key.public_key is not None else "public_key_file"
            errors.append(f"{where}.{field}: {exc}")
    for field_name in ("tls_cert_file", "tls_key_file"):
        name = getattr(nat.listen, field_name)
        if name is not None and not resolve(name).is_file():
            errors.append(f"national_platform.listen.{field_name}: cannot read {name}")
    if nat.upper.ca_file is not None and not resolve(nat.upper.ca_file).is_file():
        errors.append(f"national_platform.upper.ca_file: cannot read {nat.upper.ca_file}")
    return errors
