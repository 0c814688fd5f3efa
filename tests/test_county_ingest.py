"""The county ingest against a real Mosquitto and gateways that speak docs/mqtt.md (tests/countykit.py).

Waits are hang guards (``until``), never timing assertions.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from countykit import TAMPER, FakeGateway, until, write_county_config
from mqttkit import Broker

import county.ingest as ingest_module
from county.config import load_county_config
from county.picture import Picture
from county.service import CountyService
from county.store import open_store


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def gateways() -> Iterator[list[FakeGateway]]:
    made: list[FakeGateway] = []
    yield made
    for gw in made:
        gw.client.loop_stop()
        gw.close_socket()


async def _service(path: Path) -> CountyService:
    service = CountyService(load_county_config(path))
    await service.start()
    await until("county subscribed", service.ingest.connected.is_set)
    return service


@pytest.fixture
async def county(tmp_path: Path, broker: Broker) -> AsyncIterator[CountyService]:
    service = await _service(write_county_config(tmp_path / "county", broker))
    yield service
    await service.stop()


def _stored(service: CountyService, gw: str) -> list[int]:
    return sorted(e["seq"] for e in service.store.recent_events(gw, 10_000))


async def test_live_picture_from_retained_and_events(county: CountyService, broker: Broker,
                                                     gateways: list[FakeGateway]) -> None:
    gw = FakeGateway(broker, "gw-340621105").connect()
    gateways.append(gw)
    pic = county.picture
    await until("birth and states", lambda: len(pic.gateways.get(gw.id, None).devices) == 3
                if gw.id in pic.gateways else False)
    await until("online", lambda: pic.gateways[gw.id].status == "online")
    seq = gw.fault("t02")
    await until("fault visible", lambda: pic.faults())
    [fault] = pic.faults()
    assert (fault["gateway"], fault["township"], fault["village"], fault["device"], fault["fault"]) == \
        (gw.id, gw.name, "前李村", "t02", "mains_lost")
    assert fault["reason_zh"].startswith("市电中断")
    await until("event stored", lambda: _stored(county, gw.id) == [seq])
    assert pic.gateways[gw.id].last_seq == seq
    overview = pic.overview()
    assert overview["gateways"] == {"total": 1, "online": 1, "offline": 0, "unknown": 0}
    assert overview["terminals"] == {"total": 3, "by_state": {"1": 2, "3": 1}}
    # the inventory is in the database too
    assert {d["device"] for d in county.store.devices(gw.id)} == {"t01", "t02", "t03"}


async def test_will_marks_a_frozen_gateway_offline(county: CountyService, broker: Broker,
                                                   gateways: list[FakeGateway]) -> None:
    gw = FakeGateway(broker, "gw-frozen", keepalive=2).connect()
    gateways.append(gw)
    await until("online", lambda: gw.id in county.picture.gateways
                and county.picture.gateways[gw.id].status == "online")
    online_since = county.picture.gateways[gw.id].since
    gw.freeze()  # no DISCONNECT, no pings: the broker publishes the Will after 1.5 × keepalive
    await until("offline by Will", lambda: county.picture.gateways[gw.id].status == "offline")
    view = county.picture.gateways[gw.id]
    assert view.since is not None and view.since > online_since
    await until("offline stored", lambda: county.store.gateways()[0]["status"] == "offline")
    assert county.picture.overview()["offline_gateways"][0]["id"] == gw.id


async def test_dedupe_and_gaps(county: CountyService, broker: Broker, gateways: list[FakeGateway]) -> None:
    gw = FakeGateway(broker, "gw-gaps").connect()
    gateways.append(gw)
    first = gw.report("events", "device.state", {"id": "t01"})
    gw.report("events", "device.state", {"id": "t01"}, seq=first, historical=True)  # PUBACK lost: again
    gw.skip(2)  # two health snapshots dropped in an outage ...
    gw.health(dropped_health=2)  # ... and counted in the next one
    gw.report("broadcasts/b1", "broadcast.state", {"id": "b1", "state": 1, "name": "waiting", "reason": None})
    gw.skip(1)  # one report really lost
    last = gw.report("events", "device.state", {"id": "t02"})
    await until("all stored", lambda: last in _stored(county, gw.id))
    assert len(_stored(county, gw.id)) == 4  # the duplicate stored once
    assert county.ingest.stats.duplicates >= 1
    await until("gaps classified", lambda: county.picture.gateways[gw.id].gaps_unexplained == 1
                and county.picture.gateways[gw.id].gaps_explained == 1)
    gaps = {(g["first_missing"], g["last_missing"]): g["explained_by"] for g in county.store.gaps(gw.id)}
    assert gaps == {(first + 1, first + 2): "health_drop", (last - 1, last - 1): "unexplained"}
    assert county.picture.overview()["unexplained_gaps"] == 1
    assert county.store.broadcasts(gw.id)[0]["state_name"] == "waiting"


async def test_malformed_messages_are_counted_not_fatal(county: CountyService, broker: Broker,
                                                        gateways: list[FakeGateway]) -> None:
    gw = FakeGateway(broker, "gw-bad").connect()
    gateways.append(gw)
    gw.raw("events", b"{not json")
    gw.raw("events", b'{"seq": "7", "kind": "device.fault", "data": {}}')
    gw.raw("health", b"[1, 2]")
    gw.raw("status", b"sleeping")
    gw.raw("devices/t01/state", b'{"id": "t09"}')
    gw.raw("birth", b'{"devices": [{"name": "no id"}]}')
    gw.raw("broadcasts/b1", b'{"seq": 5, "kind": "broadcast.state", "data": {"state": 1}}')  # no id
    good = gw.report("events", "device.state", {"id": "t01"})
    await until("good report stored", lambda: good in _stored(county, gw.id))
    assert county.ingest.stats.malformed_by_gateway[gw.id] == 7
    assert county.picture.gateways[gw.id].malformed == 7
    assert county.picture.gateways[gw.id].status == "online"
    assert len(county.picture.gateways[gw.id].devices) == 3  # the bad birth changed nothing


async def test_command_responses_reach_the_callback(tmp_path: Path, broker: Broker,
                                                    gateways: list[FakeGateway]) -> None:
    got: list[tuple[str, str, bytes]] = []
    service = CountyService(load_county_config(write_county_config(tmp_path / "c", broker)),
                            on_response=lambda gw, name, payload: got.append((gw, name, payload)))
    await service.start()
    try:
        await until("subscribed", service.ingest.connected.is_set)
        gw = FakeGateway(broker, "gw-cmd").connect()
        gateways.append(gw)
        gw.raw("cmd/rebirth/response", b'{"correlation_id":"c-1","ok":true}')
        await until("response", lambda: got)
        assert got == [("gw-cmd", "rebirth", b'{"correlation_id":"c-1","ok":true}')]
        assert service.ingest.publish("ebc/gw-cmd/cmd/rebirth", b"{}") is True
    finally:
        await service.stop()


async def test_picture_after_county_restart(tmp_path: Path, broker: Broker,
                                            gateways: list[FakeGateway]) -> None:
    """Rebuilt from the database at once, then from the retained topics; events sent while the county
    was down arrive through its persistent session and are stored once."""
    path = write_county_config(tmp_path / "county", broker, client_id="county-suixi-1")
    service = await _service(path)
    gw = FakeGateway(broker, "gw-restart").connect()
    gateways.append(gw)
    other = FakeGateway(broker, "gw-gone", devices=[]).connect()
    gateways.append(other)
    seq1 = gw.fault("t01")
    await until("fault stored", lambda: seq1 in _stored(service, gw.id))
    await until("gw-gone known", lambda: "gw-gone" in service.picture.gateways)
    await service.stop()

    other.stop()  # leaves while the county is down (offline, retained)
    seq2 = gw.fault("t03", TAMPER)  # a new fault while the county is down
    gw.report("events", "device.fault", {"device": "t01"}, seq=seq1, historical=True)  # a replayed copy

    # what a restart rebuilds from the database alone, before any MQTT message
    store = open_store(load_county_config(path))
    rebuilt = Picture()
    rebuilt.rebuild(store)
    store.close()
    assert rebuilt.gateways[gw.id].name == gw.name and rebuilt.gateways[gw.id].last_seq == seq1
    assert rebuilt.gateways[gw.id].status == "online" and len(rebuilt.gateways[gw.id].devices) == 3
    assert [f["fault"] for f in rebuilt.faults()] == ["mains_lost"]

    again = CountyService(load_county_config(path))
    await again.start()
    try:
        await until("subscribed", again.ingest.connected.is_set)
        await until("new fault from retained state", lambda: len(again.picture.faults()) == 2)
        assert [f["fault"] for f in again.picture.faults()] == ["mains_lost", "tamper"]  # by severity
        await until("queued event stored", lambda: seq2 in _stored(again, gw.id))
        assert _stored(again, gw.id) == [seq1, seq2]
        await until("gw-gone offline", lambda: again.picture.gateways["gw-gone"].status == "offline")
        assert again.picture.gateways[gw.id].gaps_unexplained == 0
    finally:
        await again.stop()


async def test_dropped_connection_loses_nothing_with_a_persistent_session(
        tmp_path: Path, broker: Broker, gateways: list[FakeGateway]) -> None:
    """The county's connection cut mid-stream (no DISCONNECT): what was in flight and what the broker
    queued while it was gone all arrive on the reconnect, every report stored once, no gap."""
    service = await _service(write_county_config(tmp_path / "county", broker, client_id="county-suixi-1"))
    try:
        gw = FakeGateway(broker, "gw-cut").connect()
        gateways.append(gw)
        # the event loop is held while these are published, so the county cannot reconnect before the
        # second half: those reach it only through its session on the broker
        before = [gw.health() for _ in range(300)]
        client = service.ingest._client
        assert client is not None and client.socket() is not None
        client.socket().shutdown(socket.SHUT_RDWR)
        after = [gw.health() for _ in range(300)]
        await until("every report stored", lambda: _stored(service, gw.id) == before + after)
        assert service.ingest.stats.connects == 2
        assert service.ingest.stats.stored == 600
        await until("gap scan", lambda: service.ingest._scan_pending == set())
        assert service.store.gaps(gw.id) == []
    finally:
        await service.stop()


async def test_a_backlog_waits_at_the_broker_not_in_memory(
        tmp_path: Path, broker: Broker, gateways: list[FakeGateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """While the county cannot keep up, at most INBOX_MAX messages wait in its memory; the rest wait
    at the broker (unacknowledged) and every report is still stored once."""
    monkeypatch.setattr(ingest_module, "INBOX_MAX", 50)
    monkeypatch.setattr(ingest_module, "DRAIN_CHUNK", 10)
    monkeypatch.setattr(ingest_module, "OPS_MAX", 20)
    service = await _service(write_county_config(tmp_path / "county", broker, client_id="county-suixi-1"))
    try:
        gw = FakeGateway(broker, "gw-busy").connect()
        gateways.append(gw)
        seqs = [gw.health() for _ in range(400)]  # the event loop is held meanwhile: nothing is parsed
        assert len(service.ingest._inbox) <= 50
        await until("every report stored", lambda: _stored(service, gw.id) == seqs)
        assert service.ingest.stats.connects == 1 and service.ingest.stats.duplicates == 0
    finally:
        await service.stop()


async def test_two_instances_share_the_event_stream(tmp_path: Path, broker: Broker,
                                                    gateways: list[FakeGateway]) -> None:
    """$share/<group>/…: every report stored once in the one database, both pictures the same."""
    db = f"sqlite://{tmp_path / 'shared.sqlite3'}"
    a = await _service(write_county_config(tmp_path / "a", broker, storage_url=db, share_group="county"))
    b = await _service(write_county_config(tmp_path / "b", broker, storage_url=db, share_group="county"))
    try:
        gw = FakeGateway(broker, "gw-shared").connect()
        gateways.append(gw)
        seqs = [gw.report("events", "device.state", {"id": "t01", "n": i}) for i in range(40)]
        await until("all stored", lambda: _stored(a, gw.id) == seqs)
        # the counters move on each loop once its write returns, a moment after the commit
        await until("all counted", lambda: a.ingest.stats.stored + b.ingest.stats.stored >= 40)
        assert a.ingest.stats.stored + b.ingest.stats.stored == 40
        assert a.ingest.stats.stored > 0 and b.ingest.stats.stored > 0  # both took a share
        await until("same picture", lambda: a.picture.gateway_list() and
                    [(g["id"], g["status"], g["devices"]) for g in a.picture.gateway_list()] ==
                    [(g["id"], g["status"], g["devices"]) for g in b.picture.gateway_list()])
        await a.ingest.rescan()
        assert a.store.gaps(gw.id) == []
    finally:
        await a.stop()
        await b.stop()
