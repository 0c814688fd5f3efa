"""Shared helpers for the CAP alert inbox tests: warnings written the way China's national warning
centre writes them, and a small township whose plan (预案) the tests exercise.

``cn_alert`` produces the non-namespaced national variant (GB/T 35965.1): ``senderCode``,
``sendTime`` as ``2026-11-28 03:15:00+08:00``, ``eventType``, the colour as severity, empty
elements for absent values, a bare comma list of 12-digit area codes as ``geocode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import yaml
from simkit import SimConfig, write_sim_config

CST = timezone(timedelta(hours=8))
SENDER = "濉溪县气象台"
LIUQIAO = "340621105201"   # 刘桥村: rtu1, rtu2
QIANLI = "340621105202"    # 前李村: rtu3
ZHANGZHUANG = "340621105204"  # 张庄村: tcp1
TOWNSHIP = "340621105000"  # the whole gateway (FM transmitter too)
OTHER_COUNTY = "340622000000"  # 萧县: not ours

GUIDANCE_LIUQIAO = "沿刘桥大街向北转移到刘桥镇中心学校安置点。"
GUIDANCE_QIANLI = "沿村西水泥路转移到前李村村委会安置点。"


def cn_time(moment: datetime) -> str:
    """The national variant's time format: ``2026-11-28 03:15:00+08:00``."""
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S+08:00")


@dataclass(frozen=True)
class CapDoc:
    xml: bytes
    sender: str
    identifier: str
    sent: str

    @property
    def ref(self) -> str:
        """This alert as a ``<references>`` entry of a later Update or Cancel."""
        return f"{self.sender},{self.identifier},{self.sent}"


_counter = [0]


def cn_alert(identifier: str | None = None, *, sender: str = SENDER, status: str = "Actual",
             msg_type: str = "Alert", references: tuple[CapDoc | str, ...] = (), event: str = "暴雨",
             event_type: str = "11B03", severity: str = "Red", headline: str | None = None,
             description: str = "预计未来3小时内刘桥镇将出现100毫米以上强降雨。",
             instruction: str = "请低洼地带群众立即转移。", area_desc: str = "濉溪县刘桥镇刘桥村",
             geocodes: tuple[str, ...] = (LIUQIAO,), polygon: str = "", circle: str = "",
             sent: datetime | None = None, expires: datetime | timedelta | None = timedelta(hours=6)
             ) -> CapDoc:
    """One national-variant CAP document; ``expires`` relative to now (or absolute, or None).

    ``references`` are earlier documents (written as full triples) or text written as is (an
    identifier alone, as China's national system may write it).
    """
    if identifier is None:
        _counter[0] += 1
        identifier = f"34062141600000_{_counter[0]:06d}"
    now = datetime.now(UTC)
    sent_text = cn_time(sent or now)
    expiry = "" if expires is None else cn_time(now + expires if isinstance(expires, timedelta) else expires)
    colour = {"Red": "红色", "Orange": "橙色", "Yellow": "黄色", "Blue": "蓝色"}.get(severity, "")
    headline = headline if headline is not None else f"{sender}发布{event}{colour}预警"
    refs = " ".join(r if isinstance(r, str) else r.ref for r in references)
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<alert>
  <identifier>{escape(identifier)}</identifier>
  <sender>{escape(sender)}</sender>
  <senderCode>34062141600000</senderCode>
  <sendTime>{sent_text}</sendTime>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  <code/>
  <note/>
  <references>{escape(refs)}</references>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>{escape(event)}</event>
    <eventType>{event_type}</eventType>
    <urgency>Immediate</urgency>
    <severity>{severity}</severity>
    <certainty>Observed</certainty>
    <effective>{sent_text}</effective>
    <onset/>
    <expires>{expiry}</expires>
    <senderName>{escape(sender)}</senderName>
    <headline>{escape(headline)}</headline>
    <description>{escape(description)}</description>
    <instruction>{escape(instruction)}</instruction>
    <web/>
    <area>
      <areaDesc>{escape(area_desc)}</areaDesc>
      <polygon>{polygon}</polygon>
      <circle>{circle}</circle>
      <geocode>{",".join(geocodes)}</geocode>
    </area>
  </info>
</alert>
"""
    return CapDoc(text.encode("utf-8"), sender, identifier, sent_text)


RULES: list[dict[str, Any]] = [
    # A red typhoon plays ten times: long enough to be cancelled while it is on air.
    {"id": "typhoon-red-long", "match": {"event_types": ["11B01"], "severity": ["Extreme"]},
     "action": "broadcast", "repeat": 10},
    {"id": "red-orange-auto", "match": {"event_types": ["11B03", "暴雨"], "severity": ["Extreme", "Severe"]},
     "action": "broadcast", "repeat": 1},
    {"id": "gale-play", "match": {"event_types": ["11B06"]}, "action": "approve", "approval_timeout_s": 0.5,
     "on_timeout": "play", "repeat": 1},
    {"id": "fog-expire", "match": {"event_types": ["11B17"]}, "action": "approve", "approval_timeout_s": 0.5,
     "on_timeout": "expire"},
    {"id": "yellow-approve", "match": {"severity": ["Moderate"]}, "action": "approve",
     "approval_timeout_s": 600, "on_timeout": "play", "repeat": 1},
    {"id": "blue-approve", "match": {"severity": ["Minor"]}, "action": "approve", "approval_timeout_s": 600,
     "on_timeout": "expire", "repeat": 1},
]
TEMPLATES = {"11B03": "{headline}。{description}{instruction}请{villages}的群众注意防范。{guidance}",
             "default": "{headline}。{description}影响范围：{villages}。{guidance}"}


def alert_township(tmp_path: Path, *, rules: list[dict[str, Any]] | None = None, time_scale: float = 10.0,
                   api_port: int | None = None, alerts: dict[str, Any] | None = None,
                   **extra: Any) -> SimConfig:
    """A simulated township (3 RTU + 1 TCP terminal + FM) with villages, area codes and a test plan.

    rtu1, rtu2 are in 刘桥村 (340621105201), rtu3 in 前李村 (…202), tcp1 in 张庄村 (…204);
    ``alerts`` adds keys to the ``alerts`` section, ``extra`` top-level sections.
    """
    sim = write_sim_config(tmp_path, rtu_terminals=3, tcp_terminals=1, fm=True, time_scale=time_scale)
    data = dict(sim.data)
    places = {"rtu1": ("刘桥村", LIUQIAO, 33.9012, 116.7421),
              "rtu2": ("刘桥村", LIUQIAO, 33.9031, 116.7465),
              "rtu3": ("前李村", QIANLI, 33.9105, 116.7512),
              "tcp1": ("张庄村", ZHANGZHUANG, 33.8954, 116.7603)}
    for dev in data["devices"]:
        if dev["id"] in places:
            village, code, lat, lon = places[dev["id"]]
            dev.update(village=village, area_code=code, location={"lat": lat, "lon": lon})
    data["state_dir"] = str(tmp_path / "state")
    data["alerts"] = {"rules": RULES if rules is None else rules, "templates": TEMPLATES,
                      "guidance": {"刘桥村": GUIDANCE_LIUQIAO, "前李村": GUIDANCE_QIANLI}, **(alerts or {})}
    if api_port is not None:
        data["api"] = {"host": "127.0.0.1", "port": api_port}
    data.update(extra)
    sim.path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sim.data.clear()
    sim.data.update(data)
    return sim
