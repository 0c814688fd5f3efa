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
