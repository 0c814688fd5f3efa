"""The inbound checks of the national interface, one package at a time, without HTTP: the real
reader, parser, signature check, store and journal; the engine is a recorder behind its port
(controller/broadcast/ports.py) so a test sees exactly what would have played.

Packages are built by the platform stand-in (simulator/platform_sim.py), not by the gateway's encoder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.broadcast.model import BroadcastRequest, BroadcastState
from controller.config import Config, load_config
from controller.core.actors import Actor
from controller.core.events import EventBus, PlatformExchange
from controller.storage.journal import Store
from controller.uplink.national import ebd
from controller.uplink.national.inbound import NationalInbound
from controller.uplink.national.outbound import Envelope
from controller.uplink.national.package import multipart_body, read_package
from controller.uplink.national.signature import Sm2Verifier, SoftwareSm2Signer
from controller.uplink.national.store import NationalStore
from simulator.platform_sim import PlatformSim, generate_keypair

REPO = Path(__file__).resolve().parent.parent
PLATFORM = "43406210000000103010101"
VILLAGE = "340621105201"


class Recorder:
    """The engine's port: records what was submitted and cancelled."""

    def __init__(self) -> None:
        self.submitted: list[BroadcastRequest] = []
        self.cancelled: list[str] = []

    async def submit(self, request: BroadcastRequest, actor: Actor) -> str:
        self.submitted.append(request)
        return f"b-{len(self.submitted)}"

    async def cancel(self, broadcast_id: str, actor: Actor) -> bool:
        self.cancelled.append(broadcast_id)
        return True


class Rig:
    def __init__(self, tmp: Path) -> None:
        gw_private, self.gw_public = generate_keypair()
        pf_private, pf_public = generate_keypair()
        (tmp / "gw.key").write_text(gw_private, encoding="utf-8")
        data = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
        data["profiles_dir"] = str(REPO / "config" / "profiles")
        data["state_dir"] = str(tmp / "state")
        data["national_platform"] = {
            "listen": {"host": "127.0.0.1", "port": 7080, "allow": ["127.0.0.1"]},
            "upper": {"ebrid": PLATFORM, "url": "http://127.0.0.1:9/ebd",
                      "keys": [{"cert_sn": "PLATFORM-SIM-01", "public_key": pf_public}]},
            "signing": {"private_key_file": "gw.key", "cert_sn": "GW-1"}}
        (tmp / "x.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        self.cfg: Config = load_config(tmp / "x.yaml")
        settings_ = self.cfg.national_platform
        assert settings_ is not None
        self.journal = Store.in_state_dir(tmp / "state")
        self.store = NationalStore.in_state_dir(tmp / "state")
        self.bus = EventBus()
        self.events: list[PlatformExchange] = []
        self.bus.add_listener(lambda e: self.events.append(e) if isinstance(e, PlatformExchange) else None)
        self.engine = Recorder()
        self.stored: list[bytes] = []
        self.followups: list[tuple[str, Any, str]] = []
        self.envelope = Envelope(self.cfg, settings_, self.store, SoftwareSm2Signer(gw_private, "GW-1"))
        self.inbound = NationalInbound(
            self.cfg, settings_, journal=self.journal, store=self.store, engine=self.engine, bus=self.bus,
            store_audio=self._store_audio,
            verifiers={"PLATFORM-SIM-01": Sm2Verifier(pf_public)}, respond=self.envelope.response,
            followup=lambda ebdid, req, bid: self.followups.append((ebdid, req, bid)),
            broadcast_state=lambda bid: BroadcastState.PLAYING)
        self.platform = PlatformSim(ebrid=PLATFORM, private_key_hex=pf_private)
        self.platform.register_gateway(self.cfg.gateway.ebrid or "", "http://127.0.0.1:7080/ebd",
                                       self.gw_public)

    def _store_audio(self, data: bytes) -> str:
        self.stored.append(data)
        return "clip-test"

    def post(self, package: bytes, name: str | None = None) -> tuple[int, str, ebd.Document]:
        content_type, body = multipart_body(name or "EBDT_x.tar", package)
        if name is None:
            content_type, body = multipart_body(f"EBDT_{read_package(package).ebdid}.tar", package) \
                if _readable(package) else (content_type, body)
        answer = asyncio.run(self.inbound.handle(content_type, body, "127.0.0.1"))
        reply = read_package(answer.package)
        assert Sm2Verifier(self.gw_public).verify(_signature_value(reply.signature), reply.ebdb)
        document = ebd.parse_ebd(reply.ebdb)
        assert isinstance(document.body, ebd.EbdResponse)
        assert document.body.result_code == answer.result_code
        return answer.result_code, answer.desc, document

    def ebm(self, area: str = VILLAGE, **body: Any) -> dict[str, Any]:
        return {"EBMVersion": "1", "EBMID": body.pop("ebmid", None) or self.platform.next_ebmid(),
                "MsgBasicInfo": {"MsgType": body.pop("msg_type", "1"), "SenderName": "县平台",
                                 "SenderCode": PLATFORM, "EventType": "11B03000", "Severity": "2"},
                "MsgContent": {"LanguageCode": "zho", "MsgTitle": "测试", "MsgDesc": "请注意。",
                               "AreaCode": area},
                **body}

    def close(self) -> None:
        self.store.close()
        self.journal.close()


def _readable(package: bytes) -> bool:
    try:
        read_package(package)
    except ValueError:
        return False
    return True


def _signature_value(signature: bytes | None) -> bytes:
    from controller.uplink.national.signature import parse_signature_file

    assert signature is not None
    return parse_signature_file(signature).value


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_a_signed_ebm_is_submitted_once_and_answered_with_a_signed_response(rig: Rig):
    ebdid, package = rig.platform.build_package("EBM", rig.ebm())
    code, desc, reply = rig.post(package)
    assert code == 1 and "accepted as broadcast b-1" in desc
    assert reply.header.related_ebdid == ebdid and reply.header.dest_ebrid == PLATFORM
    assert reply.header.src_ebrid == rig.cfg.gateway.ebrid
    (request,) = rig.engine.submitted
    assert request.targets.area_codes == [VILLAGE] and request.text == "请注意。"
    # The same package again: the same answer, nothing replayed.
    assert rig.post(package)[0] == 1 and len(rig.engine.submitted) == 1
    assert [a["action"] for a in rig.journal.list_audit(limit=10)].count("national.EBM") == 2
    assert [e.result_code for e in rig.events] == [1, 1]


def test_cancel_by_ebmid(rig: Rig):
    body = rig.ebm()
    rig.post(rig.platform.build_package("EBM", body)[1])
    cancel = rig.ebm(ebmid=body["EBMID"], msg_type="2", RelatedInfo={"EBMID": body["EBMID"]})
    code, desc, _ = rig.post(rig.platform.build_package("EBM", cancel)[1])
    assert code == 1 and rig.engine.cancelled == ["b-1"], desc
    unknown = rig.ebm(msg_type="2")
    assert rig.post(rig.platform.build_package("EBM", unknown)[1])[0] == 5


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"tamper": True}, 4, "does not verify"),
    ({"sign": False}, 4, "not signed"),
    ({"to": "63406211052010314010401"}, 5, "DEST/EBRID"),
])
def test_refusals_name_what_is_wrong(rig: Rig, change: dict[str, Any], code: int, words: str):
    _, package = rig.platform.build_package("EBM", rig.ebm(), **change)
    got, desc, _ = rig.post(package)
    assert got == code and words in desc
    assert rig.engine.submitted == []


def test_only_the_registered_platform_and_its_key_are_heard(rig: Rig):
    other_private, _ = generate_keypair()
    stranger = PlatformSim(ebrid="43406220000000103010101", private_key_hex=other_private)
    got, desc, _ = rig.post(stranger.build_package("EBM", rig.ebm())[1])
    assert got == 5 and "SRC/EBRID" in desc
    impostor = PlatformSim(ebrid=PLATFORM, private_key_hex=other_private)
    got, desc, _ = rig.post(impostor.build_package("EBM", rig.ebm())[1])
    assert got == 4 and rig.engine.submitted == []


def test_heartbeats_need_no_signature_and_each_gets_a_fresh_answer(rig: Rig):
    ebdid = rig.platform.heartbeat_ebdid()
    answers = []
    for _ in range(2):  # every heartbeat carries the same EBDID
        _, package = rig.platform.build_package("ConnectionCheck", {"RptTime": "2026-12-03 10:00:00"},
                                                sign=False, ebdid=ebdid)
        code, _, reply = rig.post(package)
        assert code == 1 and reply.header.related_ebdid == ebdid
        answers.append(reply.header.ebdid)
    assert answers[0] != answers[1] and rig.inbound.heartbeats == 2
    assert not [a for a in rig.journal.list_audit(limit=10) if a["action"] == "national.ConnectionCheck"]


def test_a_refused_ebm_keeps_no_attachment_and_an_accepted_one_plays_it(rig: Rig):
    mp3 = b"ID3" + bytes(200)
    body = rig.ebm(area="340622000000")  # not this township
    body["MsgContent"]["Auxiliary"] = {"AuxiliaryType": "2", "AuxiliaryDesc": "a.mp3", "Size": str(len(mp3))}
    got, desc, _ = rig.post(rig.platform.build_package("EBM", body, media={"a.mp3": mp3})[1])
    assert got == 5 and "AreaCode" in desc and rig.stored == []
    body = rig.ebm()
    body["MsgContent"]["Auxiliary"] = {"AuxiliaryType": "2", "AuxiliaryDesc": "a.mp3", "Size": str(len(mp3))}
    got, desc, _ = rig.post(rig.platform.build_package("EBM", body, media={"a.mp3": mp3})[1])
    assert got == 1 and rig.stored == [mp3] and rig.engine.submitted[-1].audio_id == "clip-test", desc
    body = rig.ebm()
    body["MsgContent"]["Auxiliary"] = {"AuxiliaryType": "2", "AuxiliaryDesc": "missing.mp3"}
    got, desc, _ = rig.post(rig.platform.build_package("EBM", body)[1])
    assert got == 3 and "missing.mp3" in desc


def test_state_and_omd_requests_are_answered_and_followed_up(rig: Rig):
    body = rig.ebm()
    rig.post(rig.platform.build_package("EBM", body)[1])
    ebdid, package = rig.platform.build_package("EBMStateRequest", {"EBM": {"EBMID": body["EBMID"]}})
    assert rig.post(package)[0] == 1
    omd_id, omd = rig.platform.build_package("OMDRequest", {"OMDType": "EBRDTState",
                                                            "Params": {"RptType": "Full"}})
    assert rig.post(omd)[0] == 1
    assert [(f[0], f[2]) for f in rig.followups] == [(ebdid, "b-1"), (omd_id, "")]
    bad = rig.platform.build_package("OMDRequest", {"OMDType": "EBRPSInfo", "Params": {"RptType": "Full"}})[1]
    got, desc, _ = rig.post(bad)
    assert got == 5 and "EBRPSInfo" in desc


def test_a_file_name_that_does_not_match_its_ebdid_is_refused(rig: Rig):
    _, package = rig.platform.build_package("EBM", rig.ebm())
    got, desc, _ = rig.post(package, name="EBDT_1234.tar")
    assert got == 2 and "does not match" in desc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_packages_are_always_answered_and_never_played_unsigned(rig: Rig, data: st.DataObject):
    _, package = rig.platform.build_package("EBM", rig.ebm())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(package) - 1), st.integers(0, 255)), max_size=8))
    mutated = bytearray(package)
    for index, value in flips:
        mutated[index] = value
    cut = data.draw(st.integers(0, len(mutated)))
    before = len(rig.engine.submitted)
    got, _, _ = rig.post(bytes(mutated[:cut]) if data.draw(st.booleans()) else bytes(mutated))
    assert 1 <= got <= 5
    if got != 1:
        assert len(rig.engine.submitted) == before
