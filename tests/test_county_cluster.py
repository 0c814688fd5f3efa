"""Past one machine (issue 14, item 8): two county instances on one PostgreSQL and one Mosquitto.

Both run as separate processes (``python -m county.cli run --config …``) with ``mqtt.share_group``
set, so the broker hands each report (events, broadcasts, health) to one of them
(``$share/<group>/…``), while each receives every retained topic and keeps its own picture. A fleet
of virtual gateways (simulator/fleet.py) publishes; the database must hold every report exactly once
— ``UNIQUE(gateway, seq)`` makes a duplicate impossible, so "once" is: as many rows as the fleet
published reports, with no reconnect that could legitimately resend one — and both consoles must show
the same picture. Then one instance is killed with SIGKILL and the other carries on alone.

Waits are hang guards only, never timing assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from countykit import PostgresServer, postgres_available, write_county_config
from mqttkit import HANG_GUARD_S, Broker
from simkit import free_port

from simulator.fleet import Fleet

REPO = Path(__file__).resolve().parent.parent
GATEWAYS, TERMINALS = 10, 20

pytestmark = pytest.mark.skipif(postgres_available() is not None, reason=postgres_available() or "")


def wait(what: str, check: Callable[[], Any], timeout: float = HANG_GUARD_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


class Instance:
    """One ``ebc county`` process on a fixed loopback port."""

    def __init__(self, folder: Path, broker: Broker, db_url: str) -> None:
        self.config = write_county_config(folder, broker, storage_url=db_url, share_group="county")
        data = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        self.port = data["api"]["port"] = free_port()
        self.config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        self.log = folder / "county.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> Instance:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "county.cli", "run", "--config", str(self.config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait(f"county on port {self.port} subscribed",
             lambda: self._alive() and (self.health() or {}).get("mqtt_connected"))
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"county exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        return True

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(HANG_GUARD_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)

    def get(self, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def health(self) -> dict[str, Any] | None:
        try:
            return self.get("/api/v1/health")  # type: ignore[no-any-return]
        except (OSError, urllib.error.URLError):
            return None

    def picture(self) -> dict[str, Any]:
        """What a console shows: the overview's counts and the open faults."""
        o = self.get("/api/v1/overview")
        faults = sorted((f["gateway"], f["device"], f["fault"]) for f in self.get("/api/v1/faults")["faults"])
        return {"gateways": o["gateways"], "terminals": o["terminals"], "open_faults": o["open_faults"],
                "faults": faults}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


def _rows(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url) as conn:
        dupes = conn.execute("SELECT gateway, seq FROM events GROUP BY gateway, seq "
                             "HAVING COUNT(*) > 1").fetchall()
        assert dupes == []
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])  # type: ignore[index]


def _published(fleet: Fleet) -> int:
    stats = fleet.publish_stats()
    return stats.get("events", 0) + stats.get("health", 0) + stats.get("broadcasts", 0)


def _open_faults(fleet: Fleet) -> list[tuple[str, str, str]]:
    return fleet._call(lambda: sorted((g.id, t.id, f["fault"]) for g in fleet.gateways.values()
                                      for t in g.terminals.values() for f in t.faults.values()))


def test_two_instances_share_one_postgres_and_survive_a_kill(tmp_path: Path, broker: Broker,
                                                             postgres: PostgresServer) -> None:
    db_url = postgres.new_database()
    a, b = Instance(tmp_path / "a", broker, db_url), Instance(tmp_path / "b", broker, db_url)
    token = subprocess.run([sys.executable, "-m", "county.cli", "token", "create", "test", "--role", "viewer",
                            "--config", str(a.config)], cwd=REPO, capture_output=True, check=True,
                           timeout=HANG_GUARD_S).stdout.decode().strip()
    a.token = b.token = token  # one database: a token made through one instance works on both
    fleet = Fleet("127.0.0.1", broker.port, gateways=GATEWAYS, terminals=TERMINALS, seed=14,
                  health_interval_s=1.0, recovery_rate_per_hour=0.0)
    try:
        a.start()
        b.start()
        fleet.start()
        assert fleet.wait_connected(timeout=HANG_GUARD_S)
        gws = sorted(fleet.gateways)
        for i, gw in enumerate(gws):  # two faults per gateway, on different terminals
            assert fleet.inject_fault(gw, f"t{i + 1:02d}", "amp_fault")
            assert fleet.inject_fault(gw, f"t{i + 11:02d}", "mains_lost")
        expected = _open_faults(fleet)
        assert len(expected) == 2 * GATEWAYS

        def same_picture(*instances: Instance) -> list[dict[str, Any]] | None:
            pictures = [i.picture() for i in instances]
            ok = all(p == pictures[0] for p in pictures) and pictures[0]["faults"] == expected and \
                pictures[0]["gateways"]["online"] == GATEWAYS and pictures[0]["terminals"]["total"] == \
                GATEWAYS * TERMINALS
            return pictures if ok else None

        wait("both consoles show every gateway, terminal and fault", lambda: same_picture(a, b))
        # health every second meanwhile: let a few hundred reports flow through the share group
        wait("some health reports stored", lambda: _rows(db_url) >= 10 * GATEWAYS)
        # quiet now: each health tick reschedules itself far off
        fleet._call(lambda: setattr(fleet, "health_interval_s", 1e6))
        time.sleep(1.5)
        published = wait("every report stored exactly once",
                         lambda: (n := _published(fleet)) == _rows(db_url) and n)
        shares = [i.get("/api/v1/overview")["ingest"]["stored"] for i in (a, b)]
        assert all(s > 0 for s in shares), shares  # each instance took part of the stream
        assert sum(shares) == published  # … and none of it twice
        assert fleet.publish_stats().get("disconnects", 0) == 0  # no resends that could hide a duplicate

        # -- one instance killed: the other carries on -------------------------------------------------
        a.kill9()
        stored_b = b.get("/api/v1/overview")["ingest"]["stored"]
        for i, gw in enumerate(gws):
            assert fleet.inject_fault(gw, f"t{i + 6:02d}", "tamper")
            assert fleet.recover(gw, f"t{i + 1:02d}", "amp_fault") == 1
        expected = _open_faults(fleet)
        wait("the survivor shows every new fault and recovery", lambda: same_picture(b))
        total = wait("every new report stored exactly once",
                     lambda: (n := _published(fleet)) == _rows(db_url) and n)
        assert total > published
        assert b.get("/api/v1/overview")["ingest"]["stored"] - stored_b == total - published  # all by b
        wait("no unexplained gap once reports settle",
             lambda: b.get("/api/v1/overview")["unexplained_gaps"] == 0)
    finally:
        fleet.stop()
        a.stop()
        b.stop()


# -- county-wide broadcasts across the share group ------------------------------------------------------


async def _poll(http: Any, bid: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The county broadcast's report once ``check`` holds (a hang guard, never a timing claim)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not check(doc := (await http.get(f"/api/v1/county-broadcasts/{bid}")).json()):
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.1)
    return doc  # type: ignore[no-any-return]


async def test_a_county_broadcast_is_followed_across_the_share_group(tmp_path: Path, broker: Broker,
                                                                     postgres: PostgresServer):
    """Two instances in one process on one PostgreSQL, one share group: the broker hands some of the
    township's ``broadcasts/<id>`` reports to the instance that did not send it, and the sender's report
    still counts every terminal; a cancel asked through the other instance reaches the gateway; when
    the sender stops, the other instance follows what is left."""
    import httpx
    from countykit import FakeGateway, device, keygen_text, until
    from test_county_broadcasts import SIGNING, WARNING, Wire, _auth

    from county.config import load_county_config
    from county.service import CountyService

    db_url = postgres.new_database()
    services: list[CountyService] = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        if name == "a":
            keygen_text("ed25519", folder / "county.key")
        else:
            (folder / "county.key").write_text((tmp_path / "a" / "county.key").read_text())
        path = write_county_config(folder, broker, storage_url=db_url, share_group="county", signing=SIGNING)
        services.append(CountyService(load_county_config(path), lease_s=3.0))
    a, b = services
    devices = [device(f"t{i}", "刘桥村", 33.9, 116.7) for i in range(1, 7)]
    gw = FakeGateway(broker, "gw-340621105", devices=devices)
    wire = Wire(broker)
    heard_by_b: list[str] = []
    try:
        for service in services:
            await service.start()
        assert b.ingest is not None and b.store is not None
        on_report = b.ingest.on_report
        assert on_report is not None

        def b_heard(gateway: str, bid: str, payload: bytes) -> None:
            heard_by_b.append(bid)
            on_report(gateway, bid, payload)

        b.ingest.on_report = b_heard  # watch what the broker handed to b (b still handles it)
        gw.connect()
        await until("both instances see the township", lambda: all(
            len(s.picture.gateways["gw-340621105"].devices) == 6 for s in services
            if "gw-340621105" in s.picture.gateways) and all("gw-340621105" in s.picture.gateways
                                                          for s in services))
        token = b.store.create_token("op", "operator")[1]  # one database: valid on both
        body = {**WARNING, "targets": {"gateways": ["gw-340621105"]}}
        async with httpx.AsyncClient(base_url=a.url, timeout=60, headers=_auth(token)) as via_a, \
                httpx.AsyncClient(base_url=b.url, timeout=60, headers=_auth(token)) as via_b:
            r = await via_a.post("/api/v1/county-broadcasts", json=body)
            assert r.status_code == 201, r.text
            first = r.json()["id"]
            [env] = await until("the command", lambda: wire.to("gw-340621105", "broadcast"))
            wire.answer("gw-340621105", "broadcast", correlation_id=env["correlation_id"], ok=True,
                        broadcast_id="b-1")
            for dev in devices:
                gw.report("broadcasts/b-1", "broadcast.outcome", {"id": "b-1", "device": dev["id"],
                                                                  "outcome": "succeeded"})
            gw.report("broadcasts/b-1", "broadcast.state", {"id": "b-1", "state": 3, "name": "succeeded"})
            await until("b was handed some of the reports", lambda: heard_by_b)
            assert first in a.broadcasts.live and first not in b.broadcasts.live  # type: ignore[union-attr]

            doc = await _poll(via_a, first, lambda d: d["state"] == "done"
                              and d["terminals"]["succeeded"] == 6)
            assert doc["terminals"]["succeeded"] == 6 and doc["coverage"] == 1.0, doc
            on_b = (await via_b.get(f"/api/v1/county-broadcasts/{first}")).json()
            assert on_b["live"] is True  # followed, by the other instance

            # a long one sent through a, cancelled through b
            r = await via_a.post("/api/v1/county-broadcasts", json=body)
            second = r.json()["id"]
            envs = await until("the second command", lambda: wire.to("gw-340621105", "broadcast")[1:])
            wire.answer("gw-340621105", "broadcast", correlation_id=envs[0]["correlation_id"], ok=True,
                        broadcast_id="b-2")
            gw.report("broadcasts/b-2", "broadcast.state", {"id": "b-2", "state": 2, "name": "playing"})
            r = await via_b.post(f"/api/v1/county-broadcasts/{second}/cancel")
            assert r.status_code == 200 and r.json()["cancel_requested_by"] == "op", r.text
            [cancel] = await until("the cancel sent", lambda: wire.to("gw-340621105", "cancel"))
            assert cancel["args"] == {"broadcast_id": "b-2"}
            assert (await via_a.get(f"/api/v1/county-broadcasts/{second}")).json()["cancelled_by"] == "op"

            # a stops cleanly: b follows what is left (the cancel's answer, the gateway's last report)
            await a.stop()
            services.remove(a)
            await until("b follows it", lambda: second in b.broadcasts.live)  # type: ignore[union-attr]
            wire.answer("gw-340621105", "cancel", correlation_id=cancel["correlation_id"], ok=True,
                        broadcast_id="b-2", state="cancelled")
            gw.report("broadcasts/b-2", "broadcast.state", {"id": "b-2", "state": 5, "name": "cancelled"})
            doc = await _poll(via_b, second, lambda d: d["state"] == "done")
            [row] = doc["gateways"]
            assert row["state"] == "cancelled" and row["cancel"]["answer"]["ok"] is True, row
            assert doc["live"] is True and doc["cancelled_by"] == "op"
    finally:
        wire.close()
        gw.stop()
        for service in services:
            await service.stop()
