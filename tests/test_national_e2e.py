"""The national platform interface end to end: ``ebc run`` (a subprocess) on the simulator, and the
county platform stand-in (simulator/platform_sim.py, written from NATIONAL-PLATFORM.md alone and
sharing no code with the gateway) on the other side of real HTTP.

What a villager would notice is checked where the simulator sees it (audible spans per terminal);
what the county sees is checked in the EBDs the stand-in received and verified.
"""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from alertkit import LIUQIAO, OTHER_COUNTY, QIANLI
from nationalkit import GATEWAY_EBRID, NationalTownship, national_township, platform_for
from simkit import Daemon, SimProcess, make_token, running_simulator, wait_until

from simulator.platform_sim import PlatformSim, Received, make_test_mp3, sm2_sign

FINAL = ("succeeded", "failed", "cancelled")
LONG_TEXT = "这是县应急广播平台下发的一条较长的测试广播，用来检验取消指令能否立即让所有喇叭停下来。" * 3


@contextlib.contextmanager
def running(town: NationalTownship, tmp_path: Path) -> Iterator[tuple[Daemon, SimProcess, httpx2.Client]]:
    token = make_token(town.sim.path, f"viewer-{time.monotonic_ns()}", "viewer")
    with running_simulator(town.sim) as sim:
        daemon = Daemon(town.sim.path, town.api_port, tmp_path / "daemon.log", verbose=True).start()
        api = httpx2.Client(base_url=f"http://127.0.0.1:{town.api_port}/api/v1",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        try:
            yield daemon, sim, api
        finally:
            api.close()
            assert daemon.stop() == 0, daemon.log()


def spans(sim: SimProcess, device: str) -> list[dict[str, Any]]:
    return list(sim.call("audible", device=device)["spans"])


def final_state(platform: PlatformSim, ebmid: str) -> Received:
    """The first unsolicited EBMStateResponse with a final BrdStateCode for ``ebmid``."""
    def final(r: Received) -> bool:
        return (r.ebd_type == "EBMStateResponse" and r.text("EBMStateResponse/EBM/EBMID") == ebmid
                and r.text("EBMStateResponse/BrdStateCode") in ("3", "4", "5"))

    return platform.wait_for(final, timeout=120)


def broadcasts(api: httpx2.Client) -> list[dict[str, Any]]:
    return list(api.get("/broadcasts").json())


@pytest.fixture
def town(tmp_path: Path) -> NationalTownship:
    return national_township(tmp_path, health={"offline_after_s": 3.0})


def test_county_plays_queries_and_cancels_over_the_national_interface(town: NationalTownship, tmp_path: Path):
    with platform_for(town) as platform, running(town, tmp_path) as (daemon, sim, api):
        # At start: heartbeats, the inventory and the system itself, all signed by the gateway.
        beat = platform.wait_for(lambda r: r.ebd_type == "ConnectionCheck", timeout=30)
        assert beat.src_ebrid == GATEWAY_EBRID and beat.signature_ok is True
        info = platform.wait_for(lambda r: r.ebd_type == "EBRDTInfo", timeout=30)
        assert sorted(e.text for e in info.all("EBRDTInfo/EBRDT/EBRID")) == sorted(town.ebrids.values())
        assert info.signature_ok is True

        # Play: exactly the terminals of the EBM's area code (刘桥村: rtu1, rtu2) are heard.
        sent = platform.play(area_codes=[LIUQIAO], text="濉溪县应急广播平台测试：刘桥村请注意。", severity=3)
        assert sent.result_code == 1, sent.result_desc
        assert sent.response_signature_ok is True
        done = final_state(platform, sent.ebmid or "")
        assert done.text("EBMStateResponse/BrdStateCode") == "3", done.xml.decode()
        assert done.text("EBMStateResponse/Coverage/CoverageRate") == "1.00"
        assert done.signature_ok is True
        for device in ("rtu1", "rtu2"):
            assert spans(sim, device), f"{device} in 刘桥村 was not heard"
        for device in ("rtu3", "tcp1"):
            assert not spans(sim, device), f"{device} is outside the EBM's area but played"
        terminal_rows = {e.findtext("EBRID"): e.findtext("BrdStateCode")
                         for e in done.all("EBMStateResponse/ResBrdInfo/ResBrdItem/EBRDT")}
        assert terminal_rows == {town.ebrids["rtu1"]: "3", town.ebrids["rtu2"]: "3"}
        record = next(b for b in broadcasts(api) if b["actor"]["via"] == "national")
        assert record["state"] == "succeeded" and record["actor"]["name"] == f"platform:{platform.ebrid}"

        # The same EBMID sent again (a new EBDID) is answered and not replayed.
        again = platform.play(area_codes=[LIUQIAO], text="重复", ebmid=sent.ebmid)
        assert again.result_code == 1 and "not played again" in again.result_desc
        assert sum(1 for b in broadcasts(api) if b["actor"]["via"] == "national") == 1

        # State request: answered, then the EBMStateResponse follows with RelatedEBD = the request.
        state = platform.request_state_and_wait(sent.ebmid or "", timeout=30)
        assert state.text("EBMStateResponse/BrdStateCode") == "3"

        # OMD requests: the inventory, the live states and the broadcast log.
        states = platform.omd_and_wait("EBRDTState", timeout=30)
        codes = {e.findtext("EBRID"): e.findtext("StateCode") for e in states.all("EBRDTState/EBRDT")}
        assert set(codes) == set(town.ebrids.values()), codes
        assert set(codes.values()) <= {"1", "2", "3", "4", "5"}, codes
        infos = platform.omd_and_wait("EBRDTInfo", timeout=30)
        assert len(infos.all("EBRDTInfo/EBRDT")) == len(town.ebrids)
        brd_log = platform.omd_and_wait("EBMBrdLog", timeout=30)
        assert sent.ebmid in [e.text for e in brd_log.all("EBMBrdLog/EBMBrdItem/EBM/EBMID")]
        system = platform.omd_and_wait("EBRBSState", timeout=30)
        assert system.text("EBRBSState/EBRBS/EBRID") == GATEWAY_EBRID

        # Cancel while on air: the horns fall silent and the platform hears BrdStateCode 5.
        long = platform.play(area_codes=[QIANLI], text=LONG_TEXT, severity=2)
        assert long.result_code == 1, long.result_desc
        wait_until("rtu3 on air", lambda: sim.call("audible", device="rtu3")["audible_now"], guard_s=60)
        cancelled = platform.cancel(long.ebmid or "")
        assert cancelled.result_code == 1, cancelled.result_desc
        end = final_state(platform, long.ebmid or "")
        assert end.text("EBMStateResponse/BrdStateCode") == "5"
        assert not sim.call("audible", device="rtu3")["audible_now"]

        # Every decision is in the audit trail the console shows.
        audit = api.get("/audit", params={"limit": 200})
        if audit.status_code == 200:
            actions = [a["action"] for a in audit.json()["items"]]
            assert "national.EBM" in actions and "national.OMDRequest" in actions
        assert "Traceback" not in daemon.log()


def test_refusals_play_nothing_and_write_nothing(town: NationalTownship, tmp_path: Path):
    with platform_for(town) as platform, running(town, tmp_path) as (daemon, sim, api):
        platform.wait_for(lambda r: r.ebd_type == "ConnectionCheck", timeout=30)
        state_files = sorted(p.name for p in (tmp_path / "state").iterdir())

        # A bad signature: ResultCode 4, nothing plays.
        ebdid, package = platform.build_package("EBM", _ebm_body(platform, LIUQIAO), tamper=True)
        refused = platform.send_raw(package, ebdid=ebdid)
        assert refused.result_code == 4, refused.result_desc
        # Not for us: an area outside the township.
        outside = platform.play(area_codes=[OTHER_COUNTY], text="不是本镇的区域")
        assert outside.result_code == 5 and "AreaCode" in outside.result_desc

        # Malformed packages: garbage, path traversal, a link, a tar bomb, an oversized member.
        for data, code in ((b"not a tar at all" * 10, 2), (_tar({"../EBDB_1.xml": b"<EBD/>"}), 5),
                           (_tar({}, link="EBDB_1.xml"), 5), (_tar({f"f{i}": b"x" for i in range(40)}), 5),
                           (_tar({"EBDB_1.xml": b"<EBD>" + b" " * (2 * 1024 * 1024) + b"</EBD>"}), 5),
                           (_tar({"EBDB_12.xml": b"<!DOCTYPE x [<!ENTITY a 'b'>]><EBD>&a;</EBD>"}), 2)):
            answer = platform.send_raw(data)
            assert answer.result_code == code, (answer.result_desc, data[:80])
        # An upload from an address outside the allow-list would get 403; a body over the limit 413.
        # A body declared over the limit is refused before it is read.
        with socket.create_connection(("127.0.0.1", town.listen_port), timeout=30) as conn:
            conn.sendall(b"POST /ebd HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n")
            assert conn.recv(200).startswith(b"HTTP/1.1 413")

        assert not [b for b in broadcasts(api) if b["actor"]["via"] == "national"]
        terminals = [d for d in town.ebrids if d != "fm1"]
        assert not any(sim.call("audible", device=d)["audible_now"] for d in terminals)
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == state_files
        assert api.get("/gateway").status_code == 200  # alive
        assert "Traceback" not in daemon.log()


def test_reports_survive_a_county_link_outage_in_order(town: NationalTownship, tmp_path: Path):
    with platform_for(town) as platform, running(town, tmp_path) as (_, sim, api):
        platform.wait_for(lambda r: r.ebd_type == "EBRDTInfo", timeout=30)
        platform.set_down(True)
        time.sleep(1.5)
        before = len(platform.received)
        # While the link is down: a terminal goes off line and comes back, another gets an amplifier fault.
        sim.fault("amp_fault", device="rtu1")
        sim.fault("offline", device="tcp1")
        wait_until("tcp1 judged off", lambda: api.get("/devices/tcp1").json()["state"] == 2, guard_s=60)
        sim.fault("offline", device="tcp1", clear=True)
        wait_until("tcp1 back", lambda: api.get("/devices/tcp1").json()["state"] in (1, 4), guard_s=60)
        assert len(platform.received) == before  # nothing got through
        back = time.time()
        platform.set_down(False)
        terminal = platform.wait_for(lambda r: r.at >= back and r.ebd_type == "EBRDTState" and
                                     r.text("EBRDTState/EBRDT/EBRID") == town.ebrids["tcp1"] and
                                     r.text("EBRDTState/EBRDT/StateCode") in ("1", "4"), timeout=60)
        reports = [r for r in platform.received[before:] if r.ebd_type != "ConnectionCheck"]
        counters = [int(r.ebdid[-8:]) for r in reports]
        assert counters == sorted(counters), "reports arrived out of order"
        tcp1 = [r.text("EBRDTState/EBRDT/StateCode") for r in reports if r.ebd_type == "EBRDTState"
                and r.text("EBRDTState/EBRDT/EBRID") == town.ebrids["tcp1"]]
        assert tcp1[0] in ("2", "3") and terminal.text("EBRDTState/EBRDT/StateCode") in ("1", "4")
        assert any(r.text("EBRDTState/EBRDT/EBRID") == town.ebrids["rtu1"] and
                   r.text("EBRDTState/EBRDT/StateCode") == "3" for r in reports)
        gateway = wait_until("the outbox to drain", lambda: (lambda g: g if g["outbox_depth"] == 0 else None)(
            api.get("/gateway").json()["national_platform"]), guard_s=60)
        assert gateway["up"] is True and gateway["failures"] >= 1 and gateway["refused"] == 0


def _ebm_body(platform: PlatformSim, area: str) -> dict[str, Any]:
    return {"EBMVersion": "1", "EBMID": platform.next_ebmid(),
            "MsgBasicInfo": {"MsgType": "1", "SenderName": "县平台", "SenderCode": platform.ebrid,
                             "EventType": "11B03000", "Severity": "3"},
            "MsgContent": {"LanguageCode": "zho", "MsgTitle": "测试", "MsgDesc": "签名被篡改的消息",
                           "AreaCode": area}}


def _tar(members: dict[str, bytes], *, link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


HAND_BUILT_EBD = """<?xml version="1.0" encoding="UTF-8"?>
<EBD>
  <EBDVersion>1</EBDVersion>
  <EBDID>{ebdid}</EBDID>
  <EBDType>EBM</EBDType>
  <SRC><EBRID>{src}</EBRID><URL>http://127.0.0.1:1/ebd</URL></SRC>
  <DEST><EBRID>{dest}</EBRID></DEST>
  <EBDTime>{now}</EBDTime>
  <EBM>
    <EBMVersion>1</EBMVersion>
    <EBMID>{ebmid}</EBMID>
    <MsgBasicInfo>
      <MsgType>1</MsgType>
      <SenderName>濉溪县应急广播平台</SenderName>
      <SenderCode>{src}</SenderCode>
      <SendTime>{now}</SendTime>
      <EventType>11B04000</EventType>
      <Severity>2</Severity>
      <StartTime>{now}</StartTime>
      <EndTime>{end}</EndTime>
    </MsgBasicInfo>
    <MsgContent>
      <LanguageCode>zho</LanguageCode>
      <MsgTitle>暴雨橙色预警</MsgTitle>
      <MsgDesc>前李村请注意，这是手工编写的应急广播数据包。</MsgDesc>
      <AreaCode>{area}</AreaCode>
    </MsgContent>
  </EBM>
</EBD>
"""

HAND_BUILT_SIGNATURE = """<?xml version="1.0" encoding="UTF-8"?>
<Signature>
  <Version>1</Version>
  <RelatedEBD><EBDID>{ebdid}</EBDID></RelatedEBD>
  <SignatureCert><CertType>01</CertType><IssuerID>{src}</IssuerID><CertSN>PLATFORM-SIM-01</CertSN></SignatureCert>
  <SignatureTime>{now}</SignatureTime>
  <DigestAlgorithm>SM3</DigestAlgorithm>
  <SignatureAlgorithm>SM2</SignatureAlgorithm>
  <SignatureValue>{value}</SignatureValue>
</Signature>
"""


def _hand_built_package(town: NationalTownship, platform: PlatformSim, area: str) -> tuple[str, bytes]:
    """An EBD written out by hand from NATIONAL-PLATFORM.md (literal XML, the older signature form
    with a hex value, a plain ustar tar) — neither the gateway's encoder nor the stand-in's."""
    from datetime import datetime, timedelta, timezone

    cst = datetime.now(timezone(timedelta(hours=8)))
    now, end = cst.strftime("%Y-%m-%d %H:%M:%S"), (cst + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    ebdid = "10" + platform.ebrid + cst.strftime("%Y%m%d") + "90000001"
    ebmid = platform.ebrid + cst.strftime("%Y%m%d") + "9001"
    ebdb = HAND_BUILT_EBD.format(ebdid=ebdid, src=platform.ebrid, dest=GATEWAY_EBRID, now=now, end=end,
                                 ebmid=ebmid, area=area).encode("utf-8")
    value = sm2_sign(town.platform_private, platform.public_key, ebdb).hex()
    ebds = HAND_BUILT_SIGNATURE.format(ebdid=ebdid, src=platform.ebrid, now=now, value=value).encode("utf-8")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((f"EBDB_{ebdid}.xml", ebdb), (f"EBDS_EBDB_{ebdid}.xml", ebds)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return ebdid, buf.getvalue()


def test_a_hand_built_package_and_an_mp3_auxiliary_play(town: NationalTownship, tmp_path: Path):
    with platform_for(town) as platform, running(town, tmp_path) as (daemon, sim, api):
        platform.wait_for(lambda r: r.ebd_type == "ConnectionCheck", timeout=30)

        # Hand-built: accepted, played on 前李村 (rtu3) only; the same EBDID again is not replayed.
        ebdid, package = _hand_built_package(town, platform, QIANLI)
        first = platform.send_raw(package, ebdid=ebdid)
        assert first.result_code == 1, first.result_desc
        second = platform.send_raw(package, ebdid=ebdid)
        assert second.result_code == 1 and second.response_xml == first.response_xml
        (record,) = [b for b in broadcasts(api) if b["actor"]["via"] == "national"]
        def finished() -> dict[str, Any] | None:
            now = api.get(f"/broadcasts/{record['id']}").json()
            return now if now["state"] in FINAL else None

        done = wait_until("the hand-built EBM to finish", finished, guard_s=120)
        assert done["state"] == "succeeded" and done["request"]["severity"] == 2
        assert spans(sim, "rtu3") and not spans(sim, "rtu1")

        # An MP3 auxiliary: decoded and played for its length on 刘桥村 (rtu1, rtu2).
        mp3 = make_test_mp3(4.0, freq=660.0)
        sent = platform.play(area_codes=[LIUQIAO], title="录音广播", mp3=mp3, severity=3)
        assert sent.result_code == 1, sent.result_desc
        final = final_state(platform, sent.ebmid or "")
        assert final.text("EBMStateResponse/BrdStateCode") == "3", final.xml.decode()
        mp3_record = next(b for b in broadcasts(api) if b["actor"]["via"] == "national"
                          and b["request"].get("audio_id"))
        assert mp3_record["request"]["audio_id"].startswith("clip-")
        heard = spans(sim, "rtu1")
        assert heard and max(s["end"] - s["start"] for s in heard) >= 4.0 / 10 * 0.9  # time_scale 10
        assert "Traceback" not in daemon.log()


def test_a_crash_while_the_county_link_is_down_loses_no_report(town: NationalTownship, tmp_path: Path):
    """kill -9 with reports queued: after the restart they go out first, in order, none repeated."""
    with platform_for(town) as platform, running_simulator(town.sim) as sim:
        token = make_token(town.sim.path, "viewer-1", "viewer")
        first = Daemon(town.sim.path, town.api_port, tmp_path / "daemon.log").start()
        api = httpx2.Client(base_url=f"http://127.0.0.1:{town.api_port}/api/v1",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        try:
            platform.wait_for(lambda r: r.ebd_type == "EBRDTInfo", timeout=30)
            platform.set_down(True)
            time.sleep(1.5)
            sim.fault("amp_fault", device="rtu2")
            wait_until("rtu2 judged faulty", lambda: api.get("/devices/rtu2").json()["state"] == 3,
                       guard_s=60)
            assert first.proc is not None
            first.proc.kill()  # kill -9: the queued EBRDTState of rtu2 is only in the outbox file
            first.proc.wait()
            second = Daemon(town.sim.path, town.api_port, tmp_path / "daemon.log").start()
            try:
                back = time.time()
                platform.set_down(False)
                platform.wait_for(lambda r: r.at >= back and r.ebd_type == "EBRDTInfo", timeout=60)
                reports = [r for r in platform.received if r.at >= back and r.ebd_type != "ConnectionCheck"]
                faulty = [r for r in reports if r.ebd_type == "EBRDTState" and
                          r.text("EBRDTState/EBRDT/EBRID") == town.ebrids["rtu2"] and
                          r.text("EBRDTState/EBRDT/StateCode") == "3"]
                assert faulty, "the report queued before the crash was lost"
                ids = [r.ebdid for r in platform.received if r.ebd_type != "ConnectionCheck"]
                assert len(ids) == len(set(ids)), "an EBDID was used twice across the restart"
                counters = [int(r.ebdid[-8:]) for r in reports]
                assert counters == sorted(counters)
            finally:
                assert second.stop() == 0, second.log()
        finally:
            api.close()


def test_tls_listener_and_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mqttkit import make_tls

    tls = make_tls(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # the stand-in's HTTPS client trusts the test CA
    town = national_township(tmp_path, listen=None)
    section = town.sim.data["national_platform"]
    section["listen"] = {"host": "127.0.0.1", "port": town.listen_port, "path": "/ebd",
                         "allow": ["127.0.0.1/32"], "tls_cert_file": str(tls.server_cert),
                         "tls_key_file": str(tls.server_key)}
    town.sim.path.write_text(yaml.safe_dump(town.sim.data, allow_unicode=True, sort_keys=False), "utf-8")
    https = f"https://127.0.0.1:{town.listen_port}/ebd"
    with platform_for(town) as platform, running(town, tmp_path) as (_, _sim, api):
        platform.register_gateway(GATEWAY_EBRID, https, town.gateway_public)
        sent = platform.play(area_codes=[QIANLI], text="经加密连接下发的测试广播。")
        assert sent.result_code == 1, sent.result_desc
        assert final_state(platform, sent.ebmid or "").text("EBMStateResponse/BrdStateCode") == "3"
        with pytest.raises(httpx2.HTTPError):  # plain HTTP is not served on the TLS port
            httpx2.post(f"http://127.0.0.1:{town.listen_port}/ebd", content=b"x", timeout=10)

    # An address outside the allow-list gets 403 and nothing is read.
    section["listen"] = {"host": "127.0.0.1", "port": town.listen_port, "allow": ["10.9.0.0/16"]}
    town.sim.path.write_text(yaml.safe_dump(town.sim.data, allow_unicode=True, sort_keys=False), "utf-8")
    with platform_for(town) as platform, running(town, tmp_path) as (_, _sim, api):
        before = len(broadcasts(api))
        _, package = platform.build_package("EBM", _ebm_body(platform, QIANLI))
        refused = httpx2.post(town.gateway_url, files={"file": ("EBDT_1.tar", package)}, timeout=30)
        assert refused.status_code == 403
        assert len(broadcasts(api)) == before
