"""The wire dict of every event kind, pinned: keys, values and key order are what the county
(docs/mqtt.md), the outbox and the console's SSE stream have always read, whatever the fields
are called inside (``device_id`` for every device)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.core.events import (
    AlertDecided,
    AlertReceived,
    BroadcastOutcome,
    BroadcastStateChanged,
    DeviceAlarm,
    DeviceCard,
    DeviceEvent,
    DeviceFault,
    DeviceRecovered,
    DeviceState,
    Event,
    EventBus,
    GatewayHealth,
    PlatformExchange,
)

BID = "20261129-010151-ede649"
FAULT: dict[str, Any] = {"fault": "mains_lost", "zone": None,
                         "reason": "mains power lost, on battery 13.60 V",
                         "reason_zh": "市电中断，电池供电 13.60 V",
                         "values": {"battery_v": 13.6, "mains_v": 0.0}, "since": 1795914078.0}
CARD = DeviceCard(name="前李村村委会", village="前李村", area_code="340621105202", line="rs485-1",
                  failure=None, values={"mains_ok": False, "battery_voltage": 13.6},
                  location={"lat": 33.8, "lon": 116.8}, zones=(1, 2))
STATE: dict[str, Any] = {"device_id": "t03", "device_kind": "terminal", "state": 3, "state_name": "fault",
                         "state_name_zh": "故障", "online": True, "last_seen": 1795914078.0,
                         "broadcasting": False, "faults": (FAULT,), "previous_state": 1,
                         "previous_online": True}
FAULT_FIELDS: dict[str, Any] = {"device_id": "t03", "device_kind": "terminal", "name": "前李村村委会",
                                "village": "前李村", "fault": "mains_lost", "zone": None,
                                "values": {"battery_v": 13.6, "mains_v": 0.0}, "since": 1795914078.0}

SAMPLES: list[tuple[Event, str, dict[str, Any]]] = [
    (DeviceState(**STATE, card=CARD), "device.state",
     {"id": "t03", "name": "前李村村委会", "village": "前李村", "area_code": "340621105202",
      "line": "rs485-1", "kind": "terminal", "online": True, "last_seen": 1795914078.0, "failure": None,
      "values": {"mains_ok": False, "battery_voltage": 13.6}, "state": 3, "state_name": "fault",
      "faults": [FAULT], "location": {"lat": 33.8, "lon": 116.8}, "zones": [1, 2],
      "device": "t03", "state_name_zh": "故障", "broadcasting": False, "previous_state": 1,
      "previous_online": True}),
    (DeviceState(**STATE), "device.state",  # a device the registry does not know
     {"id": "t03", "device": "t03", "kind": "terminal", "state": 3, "state_name": "fault",
      "state_name_zh": "故障", "online": True, "last_seen": 1795914078.0, "broadcasting": False,
      "faults": [FAULT], "previous_state": 1, "previous_online": True}),
    (DeviceFault(**FAULT_FIELDS, reason="mains power lost, on battery 13.60 V",
                 reason_zh="市电中断，电池供电 13.60 V"), "device.fault",
     {"device": "t03", "kind": "terminal", "name": "前李村村委会", "village": "前李村", **FAULT}),
    (DeviceRecovered(**FAULT_FIELDS, reason="recovered: mains power lost, on battery 13.55 V",
                     reason_zh="已恢复：市电中断，电池供电 13.55 V", duration_s=23.6), "device.recovered",
     {"device": "t03", "kind": "terminal", "name": "前李村村委会", "village": "前李村",
      "fault": "mains_lost", "zone": None, "reason": "recovered: mains power lost, on battery 13.55 V",
      "reason_zh": "已恢复：市电中断，电池供电 13.55 V", "values": {"battery_v": 13.6, "mains_v": 0.0},
      "since": 1795914078.0, "duration_s": 23.6}),
    (DeviceAlarm(device_id="fm1", bits=5, alarms=("high_vswr", "over_temperature")), "device.alarm",
     {"device_id": "fm1", "bits": 5, "alarms": ["high_vswr", "over_temperature"]}),
    (BroadcastStateChanged(broadcast_id=BID, state=1, name="waiting", reason=None, submitted=True),
     "broadcast.state", {"id": BID, "state": 1, "name": "waiting", "reason": None}),
    (BroadcastStateChanged(broadcast_id=BID, state=2, name="playing", reason=None), "broadcast.state",
     {"id": BID, "state": 2, "name": "playing", "reason": None, "coverage": None}),
    (BroadcastStateChanged(broadcast_id=BID, state=3, name="succeeded", reason="2/2 devices confirmed audio",
                           coverage=1.0), "broadcast.state",
     {"id": BID, "state": 3, "name": "succeeded", "reason": "2/2 devices confirmed audio", "coverage": 1.0}),
    (BroadcastOutcome(broadcast_id=BID, device_id="t01", outcome="succeeded", reason="", joined_late=False,
                      missed_s=0.0, audible_s=22.4, joined_at_s=0.0), "broadcast.outcome",
     {"id": BID, "device": "t01", "outcome": "succeeded", "reason": "", "joined_late": False,
      "missed_s": 0.0, "audible_s": 22.4, "joined_at_s": 0.0}),
    (AlertReceived(alert_id="a-1", disposition="pending", cap_event="暴雨", severity="Severe",
                   headline="暴雨橙色预警", level=2, villages=("刘桥村", "前李村"), broadcast_id=None,
                   reason="rule r1 needs approval"), "alert.received",
     {"id": "a-1", "disposition": "pending", "event": "暴雨", "severity": "Severe",
      "headline": "暴雨橙色预警", "level": 2, "villages": ["刘桥村", "前李村"], "broadcast_id": None,
      "reason": "rule r1 needs approval"}),
    (AlertDecided(alert_id="a-1", disposition="broadcast", by="duty", broadcast_id="b-9",
                  reason="approved by duty"), "alert.decided",
     {"id": "a-1", "disposition": "broadcast", "by": "duty", "broadcast_id": "b-9",
      "reason": "approved by duty"}),
    (PlatformExchange(direction="in", ebd_type="EBM", ebdid="10" + "4" * 23 + "2026120300000001",
                      related_ebdid=None, result_code=1, result_desc="accepted as broadcast b-1",
                      peer="4" * 23, broadcast_id="b-1"), "national.ebd",
     {"direction": "in", "ebd_type": "EBM", "ebdid": "10" + "4" * 23 + "2026120300000001",
      "related_ebdid": None, "result_code": 1, "result_desc": "accepted as broadcast b-1", "peer": "4" * 23,
      "broadcast_id": "b-1"}),
    (GatewayHealth(snapshot={"gateway": "gw-1", "ts": 1.5, "uptime_s": 60.3, "outbox_depth": 0,
                             "devices": {"total": 21, "online": 21}, "faults": []}), "gateway.health",
     {"gateway": "gw-1", "ts": 1.5, "uptime_s": 60.3, "outbox_depth": 0,
      "devices": {"total": 21, "online": 21}, "faults": []}),
]


@pytest.mark.parametrize(("event", "kind", "wire"), SAMPLES,
                         ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(SAMPLES)])
def test_wire_dict_is_pinned(event: Event, kind: str, wire: dict[str, Any]):
    assert event.kind == kind
    assert list(event.wire().items()) == list(wire.items())  # keys, values and their order


def _concrete(cls: type[Event]) -> set[type[Event]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= _concrete(sub)
        if "kind" in vars(sub):
            found.add(sub)
    return found


def test_every_kind_is_pinned():
    classes = _concrete(Event)
    assert {type(e) for e, _, _ in SAMPLES} == classes
    kinds = [c.kind for c in classes]
    assert len(kinds) == len(set(kinds))


def test_device_events_share_device_id():
    device_kinds = {e.kind for e, _, _ in SAMPLES if isinstance(e, DeviceEvent)}
    assert device_kinds == {k for _, k, _ in SAMPLES if k.startswith("device.")}


def test_wire_does_not_share_mutable_state():
    event = SAMPLES[0][0]
    event.wire()["faults"][0]["reason"] = "changed"
    event.wire()["values"]["battery_voltage"] = 0
    assert event.wire() == SAMPLES[0][2]


async def test_listener_sees_it_at_once_and_a_slow_subscriber_is_told_what_it_missed():
    bus = EventBus(queue_size=2)
    heard: list[Event] = []
    bus.add_listener(heard.append)
    stream = bus.subscribe().__aiter__()
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # subscribed
    sent = [bus.publish(DeviceAlarm(device_id="fm1", bits=0, alarms=()))]
    assert (await first) is sent[0]
    sent += [bus.publish(DeviceAlarm(device_id="fm1", bits=i, alarms=())) for i in range(1, 6)]
    assert heard == sent and all(e.dropped_before == 0 for e in heard)
    late, last = await stream.__anext__(), await stream.__anext__()
    assert isinstance(late, DeviceAlarm) and isinstance(last, DeviceAlarm)
    assert (late.bits, late.dropped_before, late.wire()["dropped_before"]) == (4, 3, 3)
    assert late.ts == sent[4].ts and sent[4].dropped_before == 0  # a copy, for this subscriber only
    assert last is sent[5] and "dropped_before" not in last.wire()
