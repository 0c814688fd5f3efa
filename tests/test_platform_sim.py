"""The county-platform stand-in (simulator/platform_sim.py) against itself and against gmssl.

Two stand-ins that register each other play platform and gateway; that checks the package, the
signature and the answer codes end to end before the stand-in is trusted to judge the real gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Iterator

import pytest
import soundfile as sf
from gmssl import sm2

from simulator.platform_sim import (
    DEFAULT_USER_ID,
    PlatformError,
    PlatformSim,
    Received,
    generate_keypair,
    main,
    make_test_mp3,
    read_package,
    sm2_sign,
    sm2_verify,
    sm2_z,
    write_package,
)

PLATFORM = "43210020000000314010101"
GATEWAY = "53210020000000314010101"


def _pair(**gateway_options: object) -> tuple[PlatformSim, PlatformSim]:
    platform = PlatformSim(ebrid=PLATFORM, private_key_hex=generate_keypair()[0])
    gateway = PlatformSim(ebrid=GATEWAY, private_key_hex=generate_keypair()[0], **gateway_options)
    platform.start()
    gateway.start()
    platform.register_gateway(GATEWAY, gateway.url, gateway.public_key)
    gateway.register_gateway(PLATFORM, platform.url, platform.public_key)
    return platform, gateway


@pytest.fixture
def pair() -> Iterator[tuple[PlatformSim, PlatformSim]]:
    platform, gateway = _pair()
    yield platform, gateway
    platform.stop()
    gateway.stop()


# ------------------------------------------------------------------------------------------ SM2 / SM3

def test_signature_matches_gmssl_for_the_default_user_id():
    private, public = generate_keypair()
    message = "应急广播 EBDB bytes".encode()
    ours = sm2_sign(private, public, message)
    gm = sm2.CryptSM2(private_key=private, public_key=public)
    assert len(ours) == 64
    assert gm.verify_with_sm3(ours.hex(), message)
    assert sm2_verify(public, message, bytes.fromhex(gm.sign_with_sm3(message)))
    der = sm2.CryptSM2(private_key=private, public_key=public, asn1=True).sign_with_sm3(message)
    assert sm2_verify(public, message, bytes.fromhex(der))
    assert not sm2_verify(public, message + b"!", ours)
    assert not sm2_verify(generate_keypair()[1], message, ours)


def test_user_id_goes_into_z():
    private, public = generate_keypair()
    signed = sm2_sign(private, public, b"m", user_id="ALICE123@YAHOO.COM")
    assert sm2_verify(public, b"m", signed, user_id="ALICE123@YAHOO.COM")
    assert not sm2_verify(public, b"m", signed, user_id=DEFAULT_USER_ID)
    assert sm2_z(public) != sm2_z(public, "ALICE123@YAHOO.COM")


def test_keypair_is_a_point_of_the_private_key():
    private, public = generate_keypair()
    assert re.fullmatch(r"[0-9a-f]{64}", private) and re.fullmatch(r"[0-9a-f]{128}", public)
    gm = sm2.CryptSM2(private_key=private, public_key="")
    assert gm._kg(int(private, 16), sm2.default_ecc_table["g"]) == public


# ------------------------------------------------------------------------------------------ receiving

def test_connection_check_is_signed_verified_and_answered(pair):
    platform, gateway = pair
    sent = platform.connection_check()
    assert (sent.http_status, sent.result_code, sent.response_signature_ok) == (200, 1, True)
    assert sent.ebdid == "01" + PLATFORM + "0" * 16
    beat = gateway.wait_for(lambda r: r.ebd_type == "ConnectionCheck", 5)
    assert (beat.ebdid, beat.src_ebrid, beat.signature_ok) == (sent.ebdid, PLATFORM, True)
    assert beat.result_code == 1
    assert beat.text("DEST/EBRID") == GATEWAY and beat.text("SRC/URL") == platform.url
    assert beat.xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert b"xmlns" not in beat.xml
    answer = read_package_root(sent.response_xml)
    assert answer.text("RelatedEBD/EBDID") == sent.ebdid and answer.text("EBDType") == "EBDResponse"


def read_package_root(xml: bytes | None) -> Received:
    import defusedxml.ElementTree as SafeET
    assert xml is not None
    return Received("", "", None, "", xml, SafeET.fromstring(xml), None, 0.0)


def test_tampered_signature_is_answered_4(pair):
    platform, gateway = pair
    ebdid, tar = platform.build_package("EBMStateRequest", {"EBM": {"EBMID": "x"}}, tamper=True)
    sent = platform.send_raw(tar)
    assert (sent.ebdid, sent.result_code, sent.response_signature_ok) == (ebdid, 4, True)
    got = gateway.received_of("EBMStateRequest")
    assert [(r.ebdid, r.signature_ok, r.result_code) for r in got] == [(ebdid, False, 4)]


def test_missing_signature_fails_except_on_heartbeats(pair):
    platform, gateway = pair
    _, unsigned_request = platform.build_package("EBMStateRequest", {"EBM": {"EBMID": "x"}}, sign=False)
    assert platform.send_raw(unsigned_request).result_code == 4
    _, unsigned_beat = platform.build_package("ConnectionCheck", {"RptTime": "2024-01-01 00:00:00"},
                                              sign=False)
    assert platform.send_raw(unsigned_beat).result_code == 1
    assert gateway.received_of("ConnectionCheck")[0].signature_ok is None


@pytest.mark.parametrize(("form", "encoding", "der"),
                         [("new", "hex", False), ("new", "base64", True), ("old", "base64", False),
                          ("old", "hex", True)])
def test_every_signature_form_and_encoding_verifies(form, encoding, der):
    platform, gateway = _pair()
    try:
        signer = PlatformSim(ebrid=PLATFORM, private_key_hex=platform.private_key, signature_form=form,
                             signature_encoding=encoding, signature_der=der)
        signer.register_gateway(GATEWAY, gateway.url, gateway.public_key)
        _, tar = signer.build_package("ConnectionCheck", {"RptTime": "2024-01-01 00:00:00"})
        signature = read_package(tar).ebds or b""
        assert (b"<SignatureCert>" in signature) == (form == "old")
        assert signer.send_raw(tar).result_code == 1
        assert gateway.received[-1].signature_ok is True
        signer.stop()
    finally:
        platform.stop()
        gateway.stop()


def test_key_none_means_not_checked(pair):
    platform, gateway = pair
    gateway.register_gateway(PLATFORM, platform.url, None)
    _, tar = platform.build_package("EBMStateRequest", {"EBM": {"EBMID": "x"}}, tamper=True)
    assert platform.send_raw(tar).result_code == 1
    assert gateway.received[-1].signature_ok is None


def test_set_down_answers_503_and_records_nothing(pair):
    platform, gateway = pair
    gateway.set_down(True)
    sent = platform.connection_check()
    assert (sent.http_status, sent.result_code) == (503, None)
    assert gateway.received == []
    gateway.set_down(False)
    assert platform.connection_check().result_code == 1


def test_garbage_is_answered_2_and_strangers_5(pair):
    platform, gateway = pair
    sent = platform.send_raw(b"not a tar at all")
    assert (sent.http_status, sent.result_code, sent.response_signature_ok) == (200, 2, True)
    only_media = io.BytesIO()
    with tarfile.open(fileobj=only_media, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    assert platform.send_raw(only_media.getvalue()).result_code == 2
    assert platform.send_raw(write_package("1", b"<EBD><unclosed></EBD>", None)).result_code == 2
    stranger = PlatformSim(ebrid="43999999999999999999999", private_key_hex=generate_keypair()[0])
    stranger.register_gateway(GATEWAY, gateway.url, None)
    assert stranger.connection_check().result_code == 5
    stranger.stop()
    assert [r.result_code for r in gateway.received] == [5]


def test_package_without_its_content_element_is_answered_3(pair):
    platform, _ = pair
    ebdid, tar = platform.build_package("EBMStateRequest", None)
    tar = write_package(ebdid, read_package(tar).ebdb.replace(b"<EBMStateRequest />", b""), None)
    assert platform.send_raw(tar).result_code == 3


# ------------------------------------------------------------------------------------------ sending

def test_identifiers_follow_the_documented_shapes(pair):
    platform, _ = pair
    sent = platform.play(area_codes=["321002000000"], text="t")
    day = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
    assert re.fullmatch(rf"{PLATFORM}{day}\d{{4}}", sent.ebmid or "")
    assert re.fullmatch(rf"10{PLATFORM}{day}\d{{8}}", sent.ebdid)
    # the next id follows on; a new run starts further into the day, never reusing an earlier run's
    assert int(platform.next_ebmid()[-4:]) == int((sent.ebmid or "")[-4:]) + 1


def test_play_ships_the_audio_with_size_and_digest(pair):
    platform, gateway = pair
    mp3 = make_test_mp3(1.0)
    wav = os.urandom(50_000) + b"\r\n--\r\n\r\n" + os.urandom(1000)  # what a naive multipart split breaks
    sent = platform.play(area_codes=["321002000000", "321002001000"], text="请注意", title="测试", severity=4,
                         mp3=mp3, wav=wav)
    assert sent.accepted and sent.ebmid
    ebm = gateway.received_of("EBM")[0]
    assert ebm.text("EBM/EBMID") == sent.ebmid and ebm.text("EBM/MsgBasicInfo/MsgType") == "1"
    assert ebm.text("EBM/MsgContent/AreaCode") == "321002000000,321002001000"
    assert ebm.text("EBM/MsgContent/MsgDesc") == "请注意"
    auxiliaries = {a.findtext("AuxiliaryType"): a for a in ebm.all("EBM/MsgContent/Auxiliary")}
    for aux_type, data in (("2", mp3), ("3", wav)):
        name = auxiliaries[aux_type].findtext("AuxiliaryDesc")
        assert ebm.media[name] == data
        assert auxiliaries[aux_type].findtext("Size") == str(len(data))
        assert auxiliaries[aux_type].findtext("Digest") == hashlib.sha256(data).hexdigest()


def test_cancel_reuses_the_ebmid(pair):
    platform, gateway = pair
    played = platform.play(area_codes="321002000000", text="t")
    platform.cancel(played.ebmid)
    cancel = gateway.received_of("EBM")[1]
    assert cancel.text("EBM/EBMID") == cancel.text("EBM/RelatedInfo/EBMID") == played.ebmid
    assert cancel.text("EBM/MsgBasicInfo/MsgType") == "2"
    assert cancel.text("EBM/MsgBasicInfo/EventType") == "11B03000"


def _answer_requests(gateway: PlatformSim) -> None:
    """Make ``gateway`` answer state and OMD requests the national way: a separate POST back."""
    def answer(item: Received) -> None:
        if item.ebd_type == "EBMStateRequest":
            body = {"RptTime": "2024-01-01 00:00:00", "BrdStateCode": 3, "BrdStateDesc": "ok",
                    "EBM": {"EBMID": item.text("EBMStateRequest/EBM/EBMID")}}
            kind = "EBMStateResponse"
        elif item.ebd_type == "OMDRequest":
            kind = item.text("OMDRequest/OMDType") or ""
            body = {"EBRDT": [{"RptTime": "2024-01-01 00:00:00", "EBRID": f"6321002000000{n:010d}",
                               "EBRName": f"喇叭{n}", "StateCode": 1} for n in (1, 2)]}
        else:
            return
        _, tar = gateway.build_package(kind, body, related_ebdid=item.ebdid)
        threading.Thread(target=gateway.send_raw, args=(tar,), daemon=True).start()
    gateway.on_receive = answer


def test_request_state_and_omd_wait_for_the_separate_answer(pair):
    platform, gateway = pair
    _answer_requests(gateway)
    state = platform.request_state_and_wait("X" * 35, timeout=5)
    assert state.signature_ok is True and state.text("EBMStateResponse/BrdStateCode") == "3"
    info = platform.omd_and_wait("EBRDTInfo", timeout=5)
    assert info.ebd_type == "EBRDTInfo" and len(info.all("EBRDTInfo/EBRDT")) == 2
    request = gateway.received_of("OMDRequest")[0]
    assert request.text("OMDRequest/Params/RptType") == "Full"
    assert request.text("OMDRequest/Params/RptStartTime") and request.text("OMDRequest/Params/RptEndTime")


def test_a_refused_request_does_not_wait(pair):
    platform, gateway = pair
    gateway.register_gateway(PLATFORM, platform.url, generate_keypair()[1])  # a key that will not verify
    with pytest.raises(PlatformError, match="ResultCode 4"):
        platform.request_state_and_wait("X" * 35, timeout=5)


async def test_usable_from_async_code(pair):
    platform, gateway = pair
    sent = await asyncio.to_thread(platform.connection_check)
    got = await asyncio.to_thread(gateway.wait_for, lambda r: r.ebdid == sent.ebdid, 5)
    assert got.signature_ok is True


# ------------------------------------------------------------------------------------------ audio and CLI

@pytest.mark.parametrize(("seconds", "rate", "kbps"), [(2.0, 16000, None), (1.5, 44100, 128)])
def test_make_test_mp3_reads_back_with_its_duration(seconds, rate, kbps):
    data = make_test_mp3(seconds, sample_rate=rate, bitrate_kbps=kbps)
    samples, sample_rate = sf.read(io.BytesIO(data))
    assert sample_rate == rate
    assert abs(len(samples) / sample_rate - seconds) < 0.05
    if kbps:
        assert abs(len(data) * 8 / seconds / 1000 - kbps) < kbps * 0.15


def test_keygen_writes_a_private_file(tmp_path, capsys):
    out = tmp_path / "platform.key"
    assert main(["keygen", "--out", str(out)]) == 0
    public = capsys.readouterr().out.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert PlatformSim(ebrid=PLATFORM, private_key_hex=out.read_text()).public_key == public


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_follows_a_broadcast_to_its_final_state(tmp_path, capsys):
    key = tmp_path / "platform.key"
    main(["keygen", "--out", str(key)])
    platform_public = capsys.readouterr().out.strip()
    port = _free_port()
    gateway = PlatformSim(ebrid=GATEWAY, private_key_hex=generate_keypair()[0])
    gateway.start()
    gateway.register_gateway(PLATFORM, f"http://127.0.0.1:{port}/ebd", platform_public)
    _answer_requests(gateway)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.2):
            try:
                gateway.connection_check()
            except Exception:  # the platform is not listening yet
                continue
    beats = threading.Thread(target=heartbeat, daemon=True)
    beats.start()
    try:
        status = main(["demo", "--ebrid", PLATFORM, "--key-file", str(key), "--port", str(port),
                       "--gateway-ebrid", GATEWAY, "--gateway-url", gateway.url,
                       "--gateway-public-key", gateway.public_key, "--area-code", "321002000000",
                       "--wait", "10", "--timeout", "10", "--poll", "0.2", "--exit-after-demo"])
    finally:
        stop.set()
        beats.join()
        gateway.stop()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ConnectionCheck" in out and "BrdStateCode 3 播发成功 succeeded" in out
    assert "终端信息 terminal info (EBRDTInfo): 2 terminals" in out
    assert "终端状态 terminal state (EBRDTState): 2 terminals — 2 正常 normal" in out
    assert "0 failed" in out
