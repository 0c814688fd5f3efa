"""How the national interface's vocabulary maps onto ours, both ways (tables in
docs/national-platform.md): an EBM becomes a broadcast request; a broadcast record and the live
device states become EBMStateResponse and EBRDTState/Info reports.

Pure functions over config and records, so every mapping rule is tested without a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller.broadcast.model import (
    BroadcastClass,
    BroadcastRequest,
    BroadcastState,
    SourceLevel,
    Targets,
    TerminalOutcome,
)
from controller.broadcast.targets import area_covers
from controller.config import Config, NationalPlatformSettings
from controller.uplink.national.ebd import (
    BroadcastReport,
    Ebm,
    TerminalBroadcast,
    TerminalInfo,
    TerminalState,
)

SOURCE_LEVEL_OF_EBRID_LEVEL = {1: SourceLevel.NATIONAL, 2: SourceLevel.PROVINCE, 3: SourceLevel.CITY,
                               4: SourceLevel.COUNTY, 5: SourceLevel.TOWNSHIP, 6: SourceLevel.VILLAGE}
"""The EBRID's first digit (1 national … 6 village) as our source level (上级优先于下级)."""

STATE_DESC = {BroadcastState.NOT_PROCESSED: "未处理", BroadcastState.WAITING: "等待播发",
              BroadcastState.PLAYING: "正在播发", BroadcastState.SUCCEEDED: "播发成功",
              BroadcastState.FAILED: "播发失败", BroadcastState.CANCELLED: "已取消"}
"""BrdStateCode descriptions: the national codes are DESIGN §3's broadcast state codes."""

OUTCOME_CODE = {TerminalOutcome.PENDING: (BroadcastState.PLAYING, "等待确认"),
                TerminalOutcome.SUCCEEDED: (BroadcastState.SUCCEEDED, "播发成功"),
                TerminalOutcome.PARTIAL: (BroadcastState.FAILED, "部分时段可闻"),
                TerminalOutcome.FAILED: (BroadcastState.FAILED, "未确认可闻"),
                TerminalOutcome.UNREACHABLE: (BroadcastState.FAILED, "终端无应答")}
"""A terminal's outcome as a BrdStateCode: only a confirmed whole repetition counts as succeeded."""

LANGUAGES = {"zho": "zh", "chi": "zh", "zh": "zh", "cmn": "zh", "zh-cn": "zh",
             "eng": "en", "en": "en", "en-us": "en", "en-gb": "en"}


class MappingError(ValueError):
    """The EBM cannot be played here; ``result_code`` and ``desc`` go into the EBDResponse."""

    def __init__(self, result_code: int, desc: str) -> None:
        super().__init__(desc)
        self.result_code = result_code
        self.desc = desc


def ebm_request(ebm: Ebm, cfg: Config, settings: NationalPlatformSettings, *, source_level: SourceLevel,
                audio_id: str | None, now: datetime | None = None) -> BroadcastRequest:
    """The broadcast an EBM (MsgType 1) asks for, on the terminals of its area codes.

    Severity 1–4 (red … blue) is our emergency level 1–4; a test severity plays as a drill; 0
    (unknown) as ``unknown_severity_as``. EventType selects the plan (class, tone, repeat).
    """
    covered = [code for code in ebm.area_codes if _covers_any(code, cfg)]
    if not covered:
        raise MappingError(5, f"EBM/MsgContent/AreaCode {','.join(ebm.area_codes) or '(empty)'} covers no "
                              f"terminal of this gateway ({cfg.gateway.area_code})")
    plan = settings.plan_for(ebm.event_type)
    klass = plan.broadcast_class if plan else BroadcastClass.EMERGENCY
    if ebm.severity in settings.test_severities:
        klass = BroadcastClass.DRILL
    severity = None
    if klass is BroadcastClass.EMERGENCY:
        severity = ebm.severity if 1 <= ebm.severity <= 4 else settings.unknown_severity_as
    now = now or datetime.now(UTC)
    expires = ebm.end_time
    if expires is not None and expires <= now:
        raise MappingError(5, f"EBM/MsgBasicInfo/EndTime {expires.isoformat()} has already passed")
    start = ebm.start_time if ebm.start_time is not None and ebm.start_time > now else None
    if start is not None and expires is not None and expires <= start:
        raise MappingError(2, "EBM/MsgBasicInfo/EndTime is not after StartTime")
    text = None if audio_id else ebm.desc.strip()
    if not audio_id and not text:
        raise MappingError(3, "EBM/MsgContent/MsgDesc is empty and no Auxiliary audio is attached")
    fields: dict[str, Any] = {
        "class": klass, "severity": severity, "source_level": source_level,
        "source": (ebm.sender_name or ebm.sender_code)[:200], "title": ebm.title[:200],
        "targets": Targets(area_codes=covered), "text": text, "audio_id": audio_id,
        "language": LANGUAGES.get(ebm.language.lower(), "zh"),
        "repeat": (plan.repeat if plan and plan.repeat else settings.repeat),
        "start_at": start, "expires_at": expires,
    }
    if plan is not None and plan.tone is not None:
        fields["tone"] = plan.tone
    try:
        return BroadcastRequest.model_validate(fields)
    except ValueError as exc:  # e.g. MsgDesc with nothing speakable in it
        first = exc.errors()[0] if hasattr(exc, "errors") else None  # type: ignore[union-attr]
        what = first["msg"] if first else str(exc)
        where = "EBM/MsgContent/MsgDesc" if first and first["loc"][:1] == ("text",) else "EBM"
        raise MappingError(2, f"{where}: {what}") from None


def _covers_any(code: str, cfg: Config) -> bool:
    """Does the EBM's area code reach one of our devices (hierarchical rule, as Targets uses it)?"""
    return any(area_covers(code, dev.area_code) for dev in cfg.devices)


def broadcast_report(record: Mapping[str, Any], ebmid: str, cfg: Config, *,
                     rpt_time: datetime | None = None) -> BroadcastReport:
    """An EBMStateResponse of one broadcast record (``Store.get_broadcast``): its state, the
    coverage from evidence, counts and one EBRDT line per targeted terminal."""
    state = BroadcastState(record["state"])
    ebrids = {d.id: d.ebrid for d in cfg.devices}
    terminals = []
    for outcome in record.get("outcomes", []):
        code, desc = OUTCOME_CODE[TerminalOutcome(outcome["outcome"])]
        if state is BroadcastState.CANCELLED and outcome["outcome"] == TerminalOutcome.PENDING:
            code, desc = BroadcastState.CANCELLED, STATE_DESC[BroadcastState.CANCELLED]
        reason = outcome.get("reason") or ""
        terminals.append(TerminalBroadcast(ebrid=ebrids.get(outcome["device_id"]) or outcome["device_id"],
                                           state_code=int(code), state_desc=f"{desc} {reason}".strip()[:200]))
    done = sum(1 for o in record.get("outcomes", []) if o["outcome"] == TerminalOutcome.SUCCEEDED)
    coverage = record.get("coverage")
    request = record.get("request") or {}
    areas = tuple((request.get("targets") or {}).get("area_codes") or (cfg.gateway.area_code,))
    reason = record.get("reason")
    desc = STATE_DESC[state] + (f"：{reason}" if reason else "")
    return BroadcastReport(
        ebmid=ebmid, state_code=int(state), state_desc=desc[:500], rpt_time=rpt_time or datetime.now(UTC),
        coverage_rate=None if coverage is None else round(float(coverage), 4), area_codes=areas,
        counts=(0, 0, 0, done), system_ebrid=cfg.gateway.ebrid or "",
        start=_time(record.get("started_at")), end=_time(record.get("finished_at")),
        terminals=tuple(terminals))


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def terminal_states(devices: Sequence[Mapping[str, Any]], cfg: Config,
                    rpt_time: datetime | None = None) -> list[TerminalState]:
    """EBRDTState rows for registry views (``as_dict``): the state codes are DESIGN §3's."""
    ebrids = {d.id: d.ebrid for d in cfg.devices}
    now = rpt_time or datetime.now(UTC)
    rows = []
    for dev in devices:
        ebrid = ebrids.get(dev["id"])
        if ebrid is None:
            continue
        code = dev.get("state") or (1 if dev.get("online") else 2)
        faults = "; ".join(str(f.get("reason_zh") or f.get("reason") or f.get("fault")) for f in
                           dev.get("faults") or [])
        desc = (dev.get("state_name_zh") or STATE_NAMES_ZH.get(code, "")) + (f"：{faults}" if faults else "")
        rows.append(TerminalState(ebrid=ebrid, state_code=int(code), state_desc=desc[:200], rpt_time=now))
    return rows


STATE_NAMES_ZH = {1: "正常", 2: "关机/离线", 3: "故障", 4: "故障恢复", 5: "播发中"}


def terminal_infos(cfg: Config, rpt_time: datetime | None = None) -> list[TerminalInfo]:
    """EBRDTInfo (Sync) rows: every configured device with its code, name and position."""
    now = rpt_time or datetime.now(UTC)
    return [TerminalInfo(ebrid=d.ebrid, name=f"{d.village}{d.name}" if d.village else d.name,
                         longitude=d.location.lon, latitude=d.location.lat, rpt_time=now)
            for d in cfg.devices if d.ebrid]
