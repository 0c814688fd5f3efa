"""The CAP alert inbox (controller/alerts/inbox.py) with a real Store on disk and the real BroadcastEngine.

The engine journals, audits and queues what the inbox submits, but its playing loop is not started
(no hardware here): a submitted broadcast stays waiting, which is what Update/Cancel act on. What a
listener hears is in tests/test_alerts_e2e.py (simulator + daemon).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertkit import (
    GUIDANCE_LIUQIAO,
    LIUQIAO,
    OTHER_COUNTY,
    QIANLI,
    TOWNSHIP,
    CapDoc,
    alert_township,
    cn_alert,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.alerts.cap import CapError, parse_cap
from controller.alerts.inbox import AlertService
from controller.broadcast.engine import BroadcastEngine
from controller.broadcast.model import BroadcastRequest, BroadcastState
from controller.config import Config, load_config
from controller.core.actors import Actor, Role
from controller.core.errors import Conflict, Invalid, NotFound
from controller.core.events import Event, EventBus
from controller.devices.hardware import Hardware
from controller.devices.registry import DeviceRegistry
from controller.speech.tts import SpeechService
from controller.storage.journal import Store
from controller.uplink.commands import CountyCommands

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 30.0
"""Only a guard against a hung test, never a performance claim."""
OFFICER = Actor(name="duty-zhang", role=Role.OPERATOR, token_id="tk_1", remote="127.0.0.1:5000")
FEED = Actor(name="feed:county-met", via="cap")


class Gateway:
    """Store, bus, engine (loop not started) and the inbox, wired as the daemon wires them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store.in_state_dir(cfg.state_dir)
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.add_listener(self.events.append)
        registry = DeviceRegistry(cfg, self.bus)
        hardware = Hardware.from_config(cfg, on_poll=registry.on_poll)  # never started
        speech = SpeechService(Path(cfg.state_dir) / "speech-cache", cfg.speech.rate_wpm,
                               cfg.speech.max_chars)
        self.engine = BroadcastEngine(cfg, hardware, self.store, speech, None, self.bus, registry)
        self.alerts = AlertService(cfg, self.store, self.engine, self.bus)

    async def ingest(self, doc: CapDoc | bytes, actor: Actor = FEED, **kwargs: Any) -> dict[str, Any]:
        document = doc.xml if isinstance(doc, CapDoc) else doc
        return await self.alerts.ingest(document, source="test", actor=actor, **kwargs)

    def broadcast(self, broadcast_id: str) -> dict[str, Any]:
        record = self.store.get_broadcast(broadcast_id)
        assert record is not None
        return record

    def audit(self, action: str) -> list[dict[str, Any]]:
        return [a for a in self.store.list_audit(1000) if a["action"] == action]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e.wire() for e in self.events if e.kind == kind]  # as published


def config(tmp_path: Path, **overrides: Any) -> Config:
    sim = alert_township(tmp_path, **overrides)
    return load_config(sim.path)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = Gateway(config(tmp_path))
    yield g
    await g.alerts.stop()
    g.store.close()


async def wait_for(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


# -- a real warning for our villages plays at once on exactly their terminals ---------------------------


async def test_red_rainstorm_broadcasts_on_exactly_the_affected_terminals(gw: Gateway):
    record = await gw.ingest(cn_alert(geocodes=(LIUQIAO,)))
    assert record["disposition"] == "broadcast" and record["duplicate"] is False, record
    assert record["rule"] == "red-orange-auto" and "red-orange-auto" in record["reason"]
    assert record["severity"] == "Extreme" and record["level"] == 1 and record["colour"] == "Red"
    assert record["event_type"] == "11B03" and record["dialect"] == "cn" and record["id"].startswith("al-")
    plan = record["plan"]
    assert plan["terminals"] == ["rtu1", "rtu2"] and plan["villages"] == ["刘桥村"]
    assert plan["why"] == {"rtu1": f"area code {LIUQIAO}", "rtu2": f"area code {LIUQIAO}"}
    broadcast = gw.broadcast(record["broadcast_id"])
    request = broadcast["request"]
    assert request["targets"]["devices"] == ["rtu1", "rtu2"]
    assert request["class"] == "emergency" and request["severity"] == 1 and request["tone"] == "siren"
    assert request["text"] == plan["text"]
    assert "刘桥村" in request["text"] and GUIDANCE_LIUQIAO.rstrip("。") in request["text"]
    assert "前李村" not in request["text"]
    assert broadcast["actor"]["name"] == FEED.name and broadcast["actor"]["via"] == "cap"
    received = gw.audit("alert.received")
    assert received[0]["target"] == record["id"] and received[0]["actor"] == FEED.name
    decided = gw.audit("alert.broadcast")
    assert decided[0]["details"]["broadcast_id"] == record["broadcast_id"]
    assert decided[0]["details"]["terminals"] == ["rtu1", "rtu2"]
    events = gw.kinds("alert.received")
    assert events == [{"id": record["id"], "disposition": "broadcast", "event": "暴雨", "severity": "Extreme",
                       "headline": record["headline"], "level": 1, "villages": ["刘桥村"],
                       "broadcast_id": record["broadcast_id"], "reason": record["reason"]}]


async def test_whole_township_code_targets_the_township_with_the_fm_transmitter(gw: Gateway):
    record = await gw.ingest(cn_alert(geocodes=(TOWNSHIP,), area_desc="濉溪县刘桥镇"))
    assert record["plan"]["whole_gateway"] is True
    assert record["plan"]["villages"] == ["刘桥村", "前李村", "张庄村"]
    assert gw.broadcast(record["broadcast_id"])["request"]["targets"]["area_codes"] == [TOWNSHIP]


async def test_polygon_only_alert_reaches_the_terminal_inside(gw: Gateway):
    ring = "33.910,116.750 33.911,116.750 33.911,116.752 33.910,116.752 33.910,116.750"  # around rtu3
    record = await gw.ingest(cn_alert(geocodes=(), polygon=ring, area_desc="前李村沿河"))
    assert record["disposition"] == "broadcast", record
    assert record["plan"]["terminals"] == ["rtu3"]
    assert record["plan"]["why"] == {"rtu3": "polygon '前李村沿河'"}


# -- what never plays, and says why ---------------------------------------------------------------------


async def test_another_countys_warning_is_not_applicable(gw: Gateway):
    record = await gw.ingest(cn_alert(geocodes=(OTHER_COUNTY,), area_desc="萧县"))
    assert record["disposition"] == "not_applicable", record
    assert "touches none of this gateway's terminals" in record["reason"] and "萧县" in record["reason"]
    assert record["plan"] is None and record["broadcast_id"] is None
    assert gw.store.list_broadcasts() == []
    assert gw.audit("alert.not_applicable")[0]["target"] == record["id"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"status": "Test"}, "status Test"),
    ({"status": "Exercise"}, "status Exercise"),
    ({"status": "Draft"}, "Draft"),
    ({"status": "System"}, "System"),
    ({"expires": timedelta(minutes=-5)}, "expired"),
    ({"msg_type": "Ack"}, "Ack"),
])
async def test_never_played_as_a_real_emergency(gw: Gateway, kwargs: dict[str, Any], words: str):
    record = await gw.ingest(cn_alert(**kwargs))
    assert record["disposition"] == "recorded", record
    assert words in record["reason"]
    assert gw.store.list_broadcasts() == []


async def test_test_message_plays_as_a_drill_only_under_a_drill_rule(tmp_path: Path):
    rules = [{"id": "drill", "match": {"status": ["Test"]}, "action": "broadcast", "drill": True}]
    g = Gateway(config(tmp_path, rules=rules))
    try:
        record = await g.ingest(cn_alert(status="Test"))
        assert record["disposition"] == "broadcast", record
        request = g.broadcast(record["broadcast_id"])["request"]
        assert request["class"] == "drill" and "severity" not in request
    finally:
        g.store.close()


async def test_duplicate_is_answered_with_the_stored_record_and_not_played_again(gw: Gateway):
    doc = cn_alert()
    first = await gw.ingest(doc)
    again = await gw.ingest(doc.xml.decode("utf-8"))  # the same document as text
    assert again["duplicate"] is True and again["id"] == first["id"]
    assert again["disposition"] == "broadcast"
    assert len(gw.store.list_broadcasts()) == 1 and len(gw.alerts.list()) == 1
    assert len(gw.audit("alert.received")) == 1


async def test_refused_document_is_audited_and_names_the_element(gw: Gateway):
    bad = cn_alert().xml.replace(b"<status>Actual</status>", b"<status>Real</status>")
    with pytest.raises(CapError) as err:
        await gw.ingest(bad)
    assert err.value.element == "alert/status"
    refused = gw.audit("alert.refused")[0]
    assert refused["details"]["element"] == "alert/status" and refused["details"]["source"] == "test"
    assert refused["actor"] == FEED.name
    assert gw.alerts.list() == []


async def test_entity_attack_is_refused(gw: Gateway):
    xxe = b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<alert><identifier>&x;</identifier></alert>"""
    with pytest.raises(CapError, match="DTD"):
        await gw.ingest(xxe)
    assert gw.alerts.list() == []


async def test_oversized_document_is_refused(gw: Gateway):
    with pytest.raises(CapError, match="bytes"):
        await gw.ingest(b"<alert>" + b" " * (1024 * 1024) + b"</alert>")


# -- the duty officer's approval ---------------------------------------------------------------------


async def test_yellow_waits_with_its_plan_then_approve_plays_the_edited_text(gw: Gateway):
    record = await gw.ingest(cn_alert(severity="Yellow", geocodes=(QIANLI,), area_desc="前李村"))
    assert record["disposition"] == "pending", record
    assert record["plan"]["terminals"] == ["rtu3"] and record["plan"]["villages"] == ["前李村"]
    assert "前李村" in record["plan"]["text"] and record["plan"]["request"]["severity"] == 3
    assert record["approval_deadline"] is not None and record["on_timeout"] == "play"
    assert gw.store.list_broadcasts() == []
    assert [a["id"] for a in gw.alerts.list("pending")] == [record["id"]]

    edited = "前李村村民请注意：暴雨黄色预警，请远离河道。"
    approved = await gw.alerts.approve(record["id"], OFFICER, edited)
    assert approved["disposition"] == "broadcast" and approved["decided_by"] == "duty-zhang"
    assert approved["plan"]["text"] == edited and approved["plan"]["original_text"] == record["plan"]["text"]
    assert "edited" in approved["reason"]
    broadcast = gw.broadcast(approved["broadcast_id"])
    assert broadcast["request"]["text"] == edited and broadcast["actor"]["name"] == "duty-zhang"
    audit = gw.audit("alert.approved")[0]
    assert audit["actor"] == "duty-zhang" and audit["token_id"] == "tk_1" and audit["remote"]
    assert audit["details"]["text_edited"] is True and audit["details"]["text"] == edited
    assert audit["ts"] > 0
    assert gw.kinds("alert.decided")[-1] == {
        "id": record["id"], "disposition": "broadcast", "by": "duty-zhang",
        "broadcast_id": approved["broadcast_id"], "reason": approved["reason"]}
    with pytest.raises(Conflict) as again:
        await gw.alerts.approve(record["id"], OFFICER)
    assert "broadcast, not pending" in again.value.message


async def test_approve_without_text_plays_the_plan(gw: Gateway):
    record = await gw.ingest(cn_alert(severity="Blue"))
    approved = await gw.alerts.approve(record["id"], OFFICER)
    assert gw.broadcast(approved["broadcast_id"])["request"]["text"] == record["plan"]["text"]
    assert gw.audit("alert.approved")[0]["details"]["text_edited"] is False


async def test_reject_is_audited_with_the_reason(gw: Gateway):
    record = await gw.ingest(cn_alert(severity="Yellow"))
    rejected = await gw.alerts.reject(record["id"], OFFICER, "县防指已电话通知，无需重复播报")
    assert rejected["disposition"] == "rejected" and "无需重复播报" in rejected["reason"]
    assert rejected["decided_by"] == "duty-zhang" and rejected["decided_at"]
    assert gw.audit("alert.rejected")[0]["details"]["reason"] == "县防指已电话通知，无需重复播报"
    assert gw.store.list_broadcasts() == []
    with pytest.raises(Conflict):
        await gw.alerts.approve(record["id"], OFFICER)
    with pytest.raises(NotFound):
        await gw.alerts.reject("al-nope", OFFICER)


async def test_edited_text_longer_than_speech_takes_is_refused_and_stays_pending(tmp_path: Path):
    g = Gateway(config(tmp_path, speech={"max_chars": 120}))
    try:
        record = await g.ingest(cn_alert(severity="Yellow"))
        with pytest.raises(Invalid) as err:
            await g.alerts.approve(record["id"], OFFICER, "长" * 121)
        assert err.value.field == "text" and "120" in err.value.message
        with pytest.raises(Invalid) as empty:
            await g.alerts.approve(record["id"], OFFICER, "   ")
        assert empty.value.field == "text"
        assert g.alerts.get(record["id"])["disposition"] == "pending"  # type: ignore[index]
    finally:
        g.store.close()


async def test_approving_an_alert_that_expired_meanwhile_is_refused(gw: Gateway):
    record = await gw.ingest(cn_alert(severity="Yellow", expires=timedelta(seconds=1)))
    assert record["disposition"] == "pending"
    await asyncio.sleep(1.1)  # the CAP expiry passes (no timing is asserted)
    with pytest.raises(Conflict) as err:
        await gw.alerts.approve(record["id"], OFFICER)
    assert "expired" in err.value.message
    assert gw.alerts.get(record["id"])["disposition"] == "expired"  # type: ignore[index]
    assert gw.store.list_broadcasts() == []


# -- approval deadlines ---------------------------------------------------------------------------------


async def test_approval_timeout_plays_when_the_rule_says_so(gw: Gateway):
    await gw.alerts.start()
    record = await gw.ingest(cn_alert(event="大风", event_type="11B06", severity="Orange"))
    assert record["disposition"] == "pending" and record["rule"] == "gale-play"
    done = await wait_for("the timeout to play it",
                          lambda: (a := gw.alerts.get(record["id"])) and a["disposition"] != "pending" and a)
    assert done["disposition"] == "broadcast" and done["decided_by"] == "ebc", done
    assert "on_timeout: play" in done["reason"]
    assert gw.broadcast(done["broadcast_id"])["actor"]["via"] == "system"
    assert gw.audit("alert.approved")[0]["details"]["by_timeout"] is True


async def test_approval_timeout_expires_when_the_rule_says_so(gw: Gateway):
    await gw.alerts.start()
    record = await gw.ingest(cn_alert(event="大雾", event_type="11B17", severity="Yellow"))
    assert record["rule"] == "fog-expire"
    done = await wait_for("the timeout to expire it",
                          lambda: (a := gw.alerts.get(record["id"])) and a["disposition"] != "pending" and a)
    assert done["disposition"] == "expired" and "on_timeout: expire" in done["reason"], done
    assert gw.store.list_broadcasts() == []
    assert gw.audit("alert.expired")[0]["target"] == record["id"]


async def test_pending_alert_whose_cap_expires_is_expired(gw: Gateway):
    await gw.alerts.start()
    record = await gw.ingest(cn_alert(severity="Yellow", expires=timedelta(seconds=1)))
    done = await wait_for("the expiry", lambda: (a := gw.alerts.get(record["id"]))
                          and a["disposition"] != "pending" and a)
    assert done["disposition"] == "expired" and "expired at" in done["reason"], done


# -- Update and Cancel -----------------------------------------------------------------------------------


async def test_update_supersedes_and_cancels_the_old_broadcast(gw: Gateway):
    first = cn_alert(severity="Orange")
    old = await gw.ingest(first)
    update = cn_alert(msg_type="Update", references=(first,), severity="Red",
                      headline="濉溪县气象台升级暴雨红色预警")
    new = await gw.ingest(update)
    assert new["disposition"] == "broadcast" and f"supersedes {old['id']}" in new["reason"], new
    before = gw.alerts.get(old["id"])
    assert before is not None and before["disposition"] == "superseded"
    assert new["id"] in before["reason"] and "was broadcast" in before["reason"]
    assert gw.broadcast(old["broadcast_id"])["state"] is BroadcastState.CANCELLED
    assert gw.broadcast(new["broadcast_id"])["state"] is BroadcastState.WAITING
    assert gw.broadcast(new["broadcast_id"])["request"]["title"] == "濉溪县气象台升级暴雨红色预警"
    assert gw.audit("alert.superseded")[0]["details"]["broadcast_stopped"] is True
    assert {"id": old["id"], "disposition": "superseded"}.items() <= gw.kinds("alert.decided")[0].items()


async def test_reference_written_in_the_other_time_format_still_matches(gw: Gateway):
    first = cn_alert(severity="Yellow")
    old = await gw.ingest(first)
    iso_sent = first.sent.replace(" ", "T")  # 2026-11-28T03:15:00+08:00, as CAP 1.2 writes it
    cancel = cn_alert(msg_type="Cancel", references=(CapDoc(b"", first.sender, first.identifier, iso_sent),))
    await gw.ingest(cancel)
    assert gw.alerts.get(old["id"])["disposition"] == "cancelled"  # type: ignore[index]


async def test_cancel_closes_a_pending_approval_and_is_itself_recorded(gw: Gateway):
    first = cn_alert(severity="Yellow")
    old = await gw.ingest(first)
    cancel = await gw.ingest(cn_alert(msg_type="Cancel", references=(first,)))
    assert cancel["disposition"] == "recorded" and f"cancels {old['id']}" in cancel["reason"], cancel
    closed = gw.alerts.get(old["id"])
    assert closed is not None and closed["disposition"] == "cancelled" and "was pending" in closed["reason"]
    with pytest.raises(Conflict):
        await gw.alerts.approve(old["id"], OFFICER)
    assert gw.store.list_broadcasts() == []


async def test_cancel_stops_a_broadcast_it_caused(gw: Gateway):
    first = cn_alert()
    old = await gw.ingest(first)
    await gw.ingest(cn_alert(msg_type="Cancel", references=(first,)))
    assert gw.alerts.get(old["id"])["disposition"] == "cancelled"  # type: ignore[index]
    assert gw.broadcast(old["broadcast_id"])["state"] is BroadcastState.CANCELLED


async def test_references_from_another_sender_are_ignored(gw: Gateway):
    first = cn_alert()
    old = await gw.ingest(first)
    forged = CapDoc(b"", "别的发布单位", first.identifier, first.sent)
    cancel = await gw.ingest(cn_alert(sender="别的发布单位", msg_type="Cancel", references=(forged, first)))
    assert "of another sender" in cancel["reason"], cancel
    assert gw.alerts.get(old["id"])["disposition"] == "broadcast"  # type: ignore[index]
    assert gw.broadcast(old["broadcast_id"])["state"] is BroadcastState.WAITING


async def test_cancel_of_an_unknown_alert_says_so(gw: Gateway):
    ghost = CapDoc(b"", "濉溪县气象台", "never-seen", "2026-11-28 03:15:00+08:00")
    cancel = await gw.ingest(cn_alert(msg_type="Cancel", references=(ghost,)))
    assert cancel["disposition"] == "recorded" and "not known here" in cancel["reason"]


# China's national system may reference an earlier alert by its identifier alone.

REISSUED = "34062141600000_20261128031500_0"


async def test_identifier_only_cancel_stops_a_broadcast_and_withdraws_a_pending_approval(gw: Gateway):
    red_doc, yellow_doc = cn_alert(), cn_alert(severity="Yellow", geocodes=(QIANLI,))
    red, yellow = await gw.ingest(red_doc), await gw.ingest(yellow_doc)
    assert (red["disposition"], yellow["disposition"]) == ("broadcast", "pending")
    ids = (red_doc.identifier, yellow_doc.identifier)
    cancel = await gw.ingest(cn_alert(msg_type="Cancel", references=ids))
    assert cancel["references"] == [{"sender": red_doc.sender, "identifier": i, "sent": None} for i in ids]
    assert cancel["disposition"] == "recorded", cancel
    assert f"cancels {red['id']}" in cancel["reason"] and f"cancels {yellow['id']}" in cancel["reason"]
    assert gw.broadcast(red["broadcast_id"])["state"] is BroadcastState.CANCELLED
    assert gw.alerts.get(red["id"])["disposition"] == "cancelled"  # type: ignore[index]
    assert gw.alerts.get(yellow["id"])["disposition"] == "cancelled"  # type: ignore[index]
    with pytest.raises(Conflict):
        await gw.alerts.approve(yellow["id"], OFFICER)
    assert [a["details"]["broadcast_stopped"] for a in gw.audit("alert.cancelled")] == [False, True]


async def test_identifier_only_reference_closes_every_sent_of_that_identifier(gw: Gateway):
    """The same identifier re-issued with a new sendTime: both are the alert the Cancel lifts."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    first = await gw.ingest(cn_alert(REISSUED, severity="Yellow", sent=base))
    again = await gw.ingest(cn_alert(REISSUED, severity="Yellow", sent=base + timedelta(minutes=10)))
    assert first["id"] != again["id"] and again["duplicate"] is False
    cancel = await gw.ingest(cn_alert(msg_type="Cancel", references=(REISSUED,)))
    assert f"cancels {first['id']}" in cancel["reason"] and f"cancels {again['id']}" in cancel["reason"]
    assert {gw.alerts.get(a["id"])["disposition"] for a in (first, again)} == {"cancelled"}  # type: ignore[index]


async def test_identifier_only_reference_spares_a_reissue_sent_after_the_cancel(gw: Gateway):
    now = datetime.now(UTC)
    older = await gw.ingest(cn_alert(REISSUED, severity="Yellow", sent=now - timedelta(minutes=20)))
    newer = await gw.ingest(cn_alert(REISSUED, severity="Yellow", sent=now + timedelta(minutes=1)))
    cancel = await gw.ingest(cn_alert(msg_type="Cancel", references=(REISSUED,), sent=now))
    assert f"cancels {older['id']}" in cancel["reason"], cancel
    assert f"{newer['id']} ({REISSUED}, sent {newer['sent']}) was sent after this Cancel" in cancel["reason"]
    assert gw.alerts.get(newer["id"])["disposition"] == "pending"  # type: ignore[index]


async def test_identifier_only_update_supersedes(gw: Gateway):
    first = cn_alert(severity="Orange")
    old = await gw.ingest(first)
    new = await gw.ingest(cn_alert(msg_type="Update", references=(first.identifier,), severity="Red"))
    assert new["disposition"] == "broadcast" and f"supersedes {old['id']}" in new["reason"], new
    assert gw.alerts.get(old["id"])["disposition"] == "superseded"  # type: ignore[index]
    assert gw.broadcast(old["broadcast_id"])["state"] is BroadcastState.CANCELLED


async def test_identifier_only_reference_to_nothing_known_is_recorded_with_the_reason(gw: Gateway):
    live = await gw.ingest(cn_alert())
    cancel = await gw.ingest(cn_alert("34062141600000_self", msg_type="Cancel",
                                      references=("34062141600000_never", "34062141600000_self")))
    assert cancel["disposition"] == "recorded"
    assert ("referenced alert 34062141600000_never (identifier only: any sent time, sender 濉溪县气象台) is "
            "not known here: nothing to cancel") in cancel["reason"], cancel
    # Naming its own identifier finds only itself: that is not an earlier alert either.
    assert "referenced alert 34062141600000_self (identifier only" in cancel["reason"]
    assert gw.alerts.get(live["id"])["disposition"] == "broadcast"  # type: ignore[index]
    update = await gw.ingest(cn_alert(msg_type="Update", references=("34062141600000_never",)))
    assert update["disposition"] == "broadcast"
    assert "34062141600000_never (identifier only" in update["reason"]
    assert "nothing to supersede" in update["reason"]


async def test_national_feed_alert_update_cancel_sequence(gw: Gateway):
    """The parser's samples (tests/cap/): a red warning, its Update to orange for the whole township
    (sent only as <sendTime>, reference time with a space), then a Cancel of both."""
    samples = REPO / "tests" / "cap"
    red = await gw.ingest((samples / "cn_rainstorm_red_alert.xml").read_bytes())
    assert red["disposition"] == "broadcast" and red["plan"]["terminals"] == ["rtu1", "rtu2", "rtu3"], red
    update = await gw.ingest((samples / "cn_rainstorm_update.xml").read_bytes())
    assert update["disposition"] == "broadcast" and f"supersedes {red['id']}" in update["reason"], update
    assert update["sent"] == "2026-11-28 06:10:00+08:00" and update["plan"]["whole_gateway"] is True
    assert gw.alerts.get(red["id"])["disposition"] == "superseded"  # type: ignore[index]
    assert gw.broadcast(red["broadcast_id"])["state"] is BroadcastState.CANCELLED
    cancel = await gw.ingest((samples / "cn_rainstorm_cancel.xml").read_bytes())
    assert cancel["disposition"] == "recorded" and f"cancels {update['id']}" in cancel["reason"], cancel
    assert f"{red['id']} was already superseded" in cancel["reason"]
    assert gw.alerts.get(update["id"])["disposition"] == "cancelled"  # type: ignore[index]
    assert gw.broadcast(update["broadcast_id"])["state"] is BroadcastState.CANCELLED


async def test_cap12_alert_and_its_cancel(gw: Gateway):
    samples = REPO / "tests" / "cap"
    alert = await gw.ingest((samples / "cap12_zh_rainstorm.xml").read_bytes())
    assert alert["dialect"] == "cap1.2" and alert["disposition"] == "broadcast", alert
    assert alert["plan"]["terminals"] == ["rtu1", "rtu2", "rtu3"] and alert["event_type"] == "11B03"
    cancel = await gw.ingest((samples / "cap12_zh_cancel.xml").read_bytes())
    assert f"cancels {alert['id']}" in cancel["reason"], cancel
    assert gw.broadcast(alert["broadcast_id"])["state"] is BroadcastState.CANCELLED


# -- markup in CAP text ------------------------------------------------------------------------------------


async def test_markup_in_cap_text_is_not_spoken_but_kept_in_the_record(gw: Gateway):
    headline = "<b>濉溪县气象台</b>发布暴雨红色预警"
    description = "<p>预计未来3小时刘桥镇将出现100毫米以上强降雨&#xff01;</p><script>alert('x')</script>"
    instruction = "<style>b {color: red}</style>请低洼地带群众立即转移<br>老人&amp;儿童优先&nbsp;"
    record = await gw.ingest(cn_alert(headline=headline, description=description, instruction=instruction))
    assert record["disposition"] == "broadcast", record
    spoken = ("濉溪县气象台发布暴雨红色预警。预计未来3小时刘桥镇将出现100毫米以上强降雨！"
              "请低洼地带群众立即转移，老人&儿童优先。")
    assert record["plan"]["text"].startswith(spoken), record["plan"]["text"]
    request = gw.broadcast(record["broadcast_id"])["request"]
    assert request["text"] == record["plan"]["text"] and request["title"] == "濉溪县气象台发布暴雨红色预警"
    # What was written stays in the record and the document, for the console (escaped there).
    stored = gw.alerts.get(record["id"])
    assert stored is not None
    assert (stored["headline"], stored["description"], stored["instruction"]) == (headline, description,
                                                                                  instruction)
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in stored["document"]


async def test_markup_written_as_xml_elements_is_not_spoken_either(gw: Gateway):
    """<br/> and <script> written unescaped inside <description> are XML elements: their text must
    not be glued together or read out."""
    doc = cn_alert(description="placeholder").xml.replace(
        b"<description>placeholder</description>",
        "<description>预计未来3小时强降雨<br/>局地有雷暴大风<script>alert('x')</script></description>".encode())
    record = await gw.ingest(doc)
    assert "预计未来3小时强降雨，局地有雷暴大风。" in record["plan"]["text"], record["plan"]["text"]
    assert "alert" not in record["plan"]["text"]
    assert record["description"] == "预计未来3小时强降雨<br/>局地有雷暴大风<script>alert('x')</script>"
    assert any("<description> holds XML elements (br, script)" in w for w in record["warnings"])


# -- never lost --------------------------------------------------------------------------------------------


async def test_engine_refusal_is_recorded_as_failed(gw: Gateway):
    class Refusing:
        async def submit(self, request: BroadcastRequest, actor: Actor) -> str:
            raise ValueError("targets: the line to rtu1 is being rewired")

        async def cancel(self, broadcast_id: str, actor: Actor) -> bool:
            return False

    inbox = AlertService(gw.cfg, gw.store, Refusing(), gw.bus)
    record = await inbox.ingest(cn_alert().xml, source="test", actor=FEED)
    assert record["disposition"] == "failed" and "being rewired" in record["reason"], record
    assert record["plan"]["request"]["targets"]["devices"] == ["rtu1", "rtu2"]  # what it would have done
    assert gw.audit("alert.failed")[0]["target"] == record["id"]


async def test_alert_stored_but_not_decided_before_a_crash_is_decided_at_start(gw: Gateway):
    doc = cn_alert(severity="Yellow")
    # What a kill -9 between "stored" and "decided" leaves behind:
    record = gw.alerts._new_record("al-crashed", parse_cap(doc.xml), doc.xml, "test", None)
    gw.store.add_alert(record, FEED)
    assert gw.alerts.get("al-crashed")["disposition"] == "received"  # type: ignore[index]
    await gw.alerts.start()
    after = gw.alerts.get("al-crashed")
    assert after is not None and after["disposition"] == "pending" and after["plan"]["terminals"] == ["rtu1",
                                                                                                      "rtu2"]
    assert after["document"] == doc.xml.decode("utf-8")


async def test_pending_survives_a_restart(tmp_path: Path):
    cfg = config(tmp_path)
    first = Gateway(cfg)
    await first.alerts.start()
    record = await first.ingest(cn_alert(severity="Yellow"))
    await first.alerts.stop()
    first.store.close()
    second = Gateway(cfg)
    try:
        await second.alerts.start()
        assert [a["id"] for a in second.alerts.list("pending")] == [record["id"]]
        approved = await second.alerts.approve(record["id"], OFFICER)
        assert approved["disposition"] == "broadcast"
    finally:
        await second.alerts.stop()
        second.store.close()


async def test_get_shows_the_document_as_received(gw: Gateway):
    doc = cn_alert()
    record = await gw.ingest(doc)
    one = gw.alerts.get(record["id"])
    assert one is not None and one["document"] == doc.xml.decode("utf-8")
    assert gw.alerts.get("al-missing") is None
    gbk = doc.xml.decode("utf-8").replace('encoding="UTF-8"', 'encoding="GBK"').replace(
        doc.identifier, doc.identifier + "-gbk").encode("gbk")
    other = await gw.ingest(gbk)
    assert "刘桥村" in gw.alerts.get(other["id"])["document"]  # type: ignore[index]


# -- the signed county `alert` command --------------------------------------------------------------------


def _signed(name: str, key: Ed25519PrivateKey, args: dict[str, Any], gateway: str = "gw-test") -> bytes:
    """A county command envelope signed as docs/county-commands.md says (built here, not by the code)."""
    env = {"correlation_id": secrets.token_hex(8), "gateway": gateway, "ts": int(time.time()),
           "nonce": secrets.token_hex(16), "key_id": "county-ed", "args": args}
    signed = b"ebc-cmd-v1\n" + name.encode() + b"\n" + json.dumps(
        env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    env["sig"] = base64.b64encode(key.sign(signed)).decode()
    return json.dumps(env, ensure_ascii=False).encode()


async def test_signed_county_alert_command_is_ingested(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sim = alert_township(tmp_path, county={"keys": [{"id": "county-ed", "type": "ed25519",
                                                     "public_key": pem}]})
    g = Gateway(load_config(sim.path))

    async def ingest(document: bytes, actor: Actor, source_level: str) -> dict[str, Any]:
        return await g.alerts.ingest(document, source=f"county:{actor.name}", actor=actor,
                                     source_level=source_level)

    county = CountyCommands(g.cfg, g.store, g.engine, rebirth=lambda: None, line_check=None, alerts=ingest)
    try:
        doc = cn_alert()
        answer = await county.handle("alert", _signed("alert", key, {"cap": doc.xml.decode(),
                                                                    "source_level": "city"}))
        assert answer["ok"] is True and answer["disposition"] == "broadcast", answer
        assert answer["duplicate"] is False and answer["broadcast_id"]
        record = g.alerts.get(answer["alert_id"])
        assert record is not None and record["ingested_by"] == "county-ed"
        assert record["source"] == "county:county-ed"
        request = g.broadcast(answer["broadcast_id"])["request"]
        assert request["source_level"] == 4  # city, as the county relayed it
        received = g.audit("alert.received")[0]
        assert received["via"] == "county" and received["actor"] == "county-ed"
        assert g.audit("county.command")[0]["details"]["alert_id"] == answer["alert_id"]

        again = await county.handle("alert", _signed("alert", key, {"cap": doc.xml.decode()}))
        assert again["ok"] is True and again["duplicate"] is True

        broken = {"cap": "<alert><identifier>x</identifier>"}
        bad = await county.handle("alert", _signed("alert", key, broken))
        assert bad["ok"] is False and bad["error"] == "bad_args" and bad["field"] == "args.cap", bad
        forged = json.loads(_signed("alert", key, {"cap": cn_alert().xml.decode()}))
        forged["args"]["cap"] = forged["args"]["cap"].replace("Red", "Blue")
        refused = await county.handle("alert", json.dumps(forged).encode())
        assert refused["error"] == "bad_signature"
        assert len(g.alerts.list()) == 1
    finally:
        g.store.close()


async def test_county_alert_command_without_an_inbox_is_unavailable(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw().hex()
    sim = alert_township(tmp_path, county={"keys": [{"id": "county-ed", "type": "ed25519",
                                                     "public_key": raw}]})
    g = Gateway(load_config(sim.path))
    try:
        county = CountyCommands(g.cfg, g.store, g.engine, rebirth=lambda: None, line_check=None)
        answer = await county.handle("alert", _signed("alert", key, {"cap": cn_alert().xml.decode()}))
        assert answer["error"] == "unavailable"
    finally:
        g.store.close()


# -- the shipped examples stay true ---------------------------------------------------------------------


async def test_demo_township_plan(tmp_path: Path):
    """config/demo.yaml's 预案 for 刘桥镇 does what its comments say."""
    cfg = load_config(REPO / "config" / "demo.yaml")
    cfg.state_dir = str(tmp_path / "state")
    g = Gateway(cfg)
    try:
        red = await g.ingest(cn_alert(geocodes=("340621105201",)))
        assert red["disposition"] == "broadcast" and red["rule"] == "red-orange-auto", red
        assert red["plan"]["terminals"] == ["t01", "t02"] and red["plan"]["villages"] == ["刘桥村"]
        assert "刘桥镇中心学校安置点" in red["plan"]["text"]  # the village's escape guidance
        assert g.broadcast(red["broadcast_id"])["request"]["repeat"] == 3
        yellow = await g.ingest(cn_alert(severity="Yellow", geocodes=("340621105211",)))
        assert yellow["disposition"] == "pending" and yellow["on_timeout"] == "play"
        assert yellow["plan"]["villages"] == ["周圩村"] and "圩堤" in yellow["plan"]["text"]
        blue = await g.ingest(cn_alert(event="大风", event_type="11B06", severity="Blue"))
        assert blue["disposition"] == "pending" and blue["on_timeout"] == "expire"
        typhoon = await g.ingest(cn_alert(event="台风", event_type="11B01", geocodes=("340621000000",)))
        assert typhoon["plan"]["whole_gateway"] is True and len(typhoon["plan"]["villages"]) == 19
        test = await g.ingest(cn_alert(status="Test"))
        assert test["disposition"] == "recorded"
    finally:
        g.store.close()


def test_docs_config_examples_are_valid():
    """Every ``alerts:`` YAML block in docs/alerts.md is a valid alerts section."""
    from controller.config import AlertsSettings

    text = (REPO / "docs" / "alerts.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    alerts = [yaml.safe_load(b)["alerts"] for b in blocks if b.startswith("alerts:")]
    assert len(alerts) == 3
    for section in alerts:
        AlertsSettings.model_validate(section)
