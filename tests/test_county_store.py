"""The county history store on real SQLite and a real PostgreSQL 15 (started by the test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from countykit import PostgresServer, postgres_available

from county.gaps import GapScanner
from county.store import MIGRATIONS, Store, token_hash


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer | None]:
    if postgres_available() is not None:
        yield None
        return
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'county.sqlite3'}"
    if postgres is None:
        pytest.skip(postgres_available() or "")
    return postgres.new_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.close()


def test_migrations_apply_once_and_in_order(db_url: str) -> None:
    first = Store.open(db_url)
    assert first.schema_version() == MIGRATIONS[-1][0]
    assert first.migrate() == []  # idempotent: nothing left to apply
    first.close()
    again = Store.open(db_url)
    assert again.schema_version() == MIGRATIONS[-1][0]
    again.close()


def test_concurrent_starts_migrate_once(db_url: str) -> None:
    """Two county instances starting together on one database (advisory lock on PostgreSQL)."""
    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_one() -> None:
        try:
            stores.append(Store.open(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(s.schema_version() == MIGRATIONS[-1][0] for s in stores)
    rows = stores[0]._query("SELECT version FROM schema_version")
    assert sorted(r["version"] for r in rows) == [v for v, _, _ in MIGRATIONS]
    for s in stores:
        s.close()


def test_event_stored_once_across_instances(db_url: str) -> None:
    a, b = Store.open(db_url), Store.open(db_url)
    now = time.time()
    assert a.insert_event("gw-1", 100, "device.fault", now, False, {"device": "t01"}, now) is True
    assert a.insert_event("gw-1", 100, "device.fault", now, True, {"device": "t01"}, now) is False
    assert b.insert_event("gw-1", 100, "device.fault", now, True, {"device": "t01"}, now) is False
    assert b.insert_event("gw-2", 100, "device.fault", now, False, {}, now) is True  # per gateway
    assert a.count_events() == 2
    event = a.recent_events("gw-1")[0]
    assert event == {"gateway": "gw-1", "seq": 100, "kind": "device.fault", "ts": now, "historical": False,
                     "data": {"device": "t01"}, "received_at": now}
    assert a.last_seqs() == {"gw-1": 100, "gw-2": 100}
    a.close()
    b.close()


def test_reports_stored_in_one_statement_say_which_were_new(store: Store) -> None:
    """insert_events: a burst in one executemany; with a duplicate among them, undone and one by one."""
    assert store.insert_events([("gw", 1, "k", 1.0, False, {"a": 1}, 1.0),
                                ("gw", 2, "k", None, True, {}, 1.0)]) == [True, True]
    with store.batch():
        assert store.insert_events([("gw", 2, "k", None, False, {}, 2.0),
                                    ("gw", 3, "k", None, False, {"b": "三"}, 2.0)]) == [False, True]
    assert store.count_events("gw") == 3
    assert [(e["seq"], e["data"], e["historical"]) for e in store.recent_events("gw")] == [
        (3, {"b": "三"}, False), (2, {}, True), (1, {"a": 1}, False)]
    store.save_device_states([("gw", {"id": "d1", "state": 1}, 1.0), ("gw", {"id": "d1", "state": 3}, 2.0)])
    assert [(d["device"], d["state"]) for d in store.devices("gw")] == [("d1", 3)]


def test_status_since_moves_only_on_change(store: Store) -> None:
    store.set_status("gw-1", "online", 1000.0)
    store.set_status("gw-1", "online", 2000.0)
    assert store.gateways()[0]["status_since"] == 1000.0
    store.set_status("gw-1", "offline", 3000.0)
    row = store.gateways()[0]
    assert (row["status"], row["status_since"]) == ("offline", 3000.0)


def test_birth_replaces_inventory_and_keeps_state(store: Store) -> None:
    def dev(i: str) -> dict:
        return {"id": i, "name": f"n{i}", "village": "刘桥村", "area_code": "340621105201",
                "location": {"lat": 33.9, "lon": 116.7}, "kind": "terminal"}

    store.save_birth("gw-1", {"gateway": {"name": "刘桥镇", "area_code": "340621105000",
                                          "location": {"lat": 33.9, "lon": 116.78}},
                              "devices": [dev("t01"), dev("t02")]}, 1.0)
    store.save_device_state("gw-1", {"id": "t01", "state": 3, "state_name": "fault", "online": True,
                                     "faults": [{"fault": "mains_lost"}]}, 2.0)
    store.save_birth("gw-1", {"gateway": {"name": "刘桥镇"}, "devices": [dev("t01"), dev("t03")]}, 3.0)
    devices = {d["device"]: d for d in store.devices("gw-1")}
    assert set(devices) == {"t01", "t03"}
    assert devices["t01"]["state"] == 3 and devices["t01"]["faults"] == [{"fault": "mains_lost"}]
    assert devices["t01"]["online"] is True and devices["t01"]["lat"] == 33.9
    assert devices["t03"]["state"] is None
    assert store.gateways()[0]["name"] == "刘桥镇"


def test_broadcast_rows_keep_the_latest_report(store: Store) -> None:
    done = {"id": "b1", "state": 3, "name": "succeeded", "coverage": 1.0}
    store.save_broadcast_state("gw-1", 10, done, 2.0)
    store.save_broadcast_state("gw-1", 5, {"id": "b1", "state": 1, "name": "waiting"}, 3.0)  # late copy
    store.save_broadcast_outcome("gw-1", 7, {"id": "b1", "device": "t01", "outcome": "succeeded"}, 2.0)
    store.save_broadcast_outcome("gw-1", 9, {"id": "b1", "device": "t01", "outcome": "partial"}, 2.5)
    [row] = store.broadcasts()
    assert (row["state"], row["state_name"], row["coverage"]) == (3, "succeeded", 1.0)
    assert row["outcomes"]["t01"]["outcome"] == "partial"


def _ev(store: Store, seq: int, kind: str = "device.state", data: dict | None = None) -> None:
    now = time.time()
    store.insert_event("gw-1", seq, kind, now, False, data or {}, now)


def _health(store: Store, seq: int, dropped: int) -> None:
    _ev(store, seq, "gateway.health", {"outbox": {"dropped_health": dropped}})


def test_gaps_found_and_explained(store: Store) -> None:
    scanner = GapScanner(store)
    for seq in (1, 2, 5):
        _ev(store, seq)
    assert scanner.scan("gw-1") is True
    assert [(g["first_missing"], g["last_missing"], g["explained_by"]) for g in store.gaps()] == \
        [(3, 4, "unexplained")]
    _health(store, 6, dropped=2)  # the next health report counts both dropped snapshots
    assert scanner.scan("gw-1") is True
    assert store.gaps()[0]["explained_by"] == "health_drop"

    _ev(store, 7)
    _ev(store, 9)  # 8 lost; the next health report does not account for it
    _health(store, 10, dropped=2)
    scanner.scan("gw-1")
    assert store.gaps(unexplained_only=True)[0]["first_missing"] == 8

    _ev(store, 20)  # 11..19 dropped by an overflow, reported later
    scanner.scan("gw-1")
    _ev(store, 21, "outbox.overflow", {"dropped": 9, "first_seq": 11, "last_seq": 19})
    scanner.scan("gw-1")
    by_first = {g["first_missing"]: g["explained_by"] for g in store.gaps()}
    assert by_first == {3: "health_drop", 8: "unexplained", 11: "overflow"}

    # a restarted scanner (county restart) continues where the last one stopped: no duplicate gaps
    again = GapScanner(store)
    _ev(store, 22)
    assert again.scan("gw-1") is False
    assert len(store.gaps()) == 3


def test_gap_after_new_outbox_file_is_a_reset(store: Store) -> None:
    scanner = GapScanner(store)
    _ev(store, 1_000)
    scanner.scan("gw-1")
    new_start = int(time.time() * 1000)  # a new outbox file starts at the current time in ms
    _ev(store, new_start)
    scanner.scan("gw-1")
    assert store.gaps()[0]["explained_by"] == "outbox_reset"


def test_tokens_hashed_roles_and_revoke(store: Store) -> None:
    token_id, plaintext = store.create_token("duty", "operator")
    assert plaintext not in str(store._query("SELECT * FROM tokens"))
    assert store._query("SELECT hash FROM tokens")[0]["hash"] == token_hash(plaintext)
    info = store.verify_token(plaintext)
    assert info is not None and info.id == token_id and info.role == "operator"
    assert info.allows("viewer") and info.allows("operator") and not info.allows("admin")
    assert store.verify_token(plaintext + "x") is None
    assert store.revoke_token(token_id) is True
    assert store.verify_token(plaintext) is None and not store.token_active(token_id)
    assert store.revoke_token(token_id) is False
    with pytest.raises(ValueError, match="role"):
        store.create_token("x", "root")


def test_retention_prunes_old_history(store: Store) -> None:
    old, now = time.time() - 40 * 86400, time.time()
    store.insert_event("gw-1", 1, "device.fault", old, False, {}, old)
    store.insert_event("gw-1", 2, "device.fault", now, False, {}, now)
    store.save_broadcast_state("gw-1", 1, {"id": "old", "state": 3}, old)
    store.audit("cli", "token.create", "token:1")
    deleted = store.prune(30)
    assert deleted["events"] == 1 and deleted["broadcasts"] == 1 and deleted["audit"] == 0
    assert [e["seq"] for e in store.recent_events("gw-1")] == [2]
    assert store.list_audit()[0]["action"] == "token.create"


def test_county_broadcast_leases(store: Store) -> None:
    """One instance follows a county broadcast at a time: a live lease is not taken, a released or
    lapsed one is (a restart, a crash), the old owner then learns it lost it, and a finished one
    (state NULL) is never taken again. A cancel asked elsewhere reaches the owner on renewal."""
    store.save_county_broadcast("cb1", {"text": "x"}, "op", 100.0, {"id": "cb1"}, {"bc": 1}, "a", 130.0)
    store.save_county_broadcast("cb2", {"text": "y"}, "op", 101.0, {"id": "cb2"}, None, None, None)
    assert store.claim_county_broadcasts("b", now=110.0, lease_until=140.0) == []  # a's lease is live
    assert store.renew_county_broadcasts("a", ["cb1"], 160.0) == {"cb1": None}
    store.request_county_broadcast_cancel("cb1", "op-2")
    assert store.renew_county_broadcasts("a", ["cb1"], 160.0) == {"cb1": "op-2"}
    [row] = store.claim_county_broadcasts("b", now=170.0, lease_until=200.0)  # a stopped renewing
    assert row["id"] == "cb1" and row["state"] == {"bc": 1} and row["cancel_requested_by"] == "op-2"
    assert store.renew_county_broadcasts("a", ["cb1"], 230.0) == {}  # a learns it lost it
    store.update_county_broadcast("cb1", {"id": "cb1", "v": 2}, {"bc": 2}, owner="a")  # ignored: not a's
    assert store.county_broadcast("cb1")["report"] == {"id": "cb1"}  # type: ignore[index]
    assert store.release_county_broadcasts("b") == 1
    [row] = store.claim_county_broadcasts("c", now=171.0, lease_until=201.0)  # released: taken at once
    assert row["id"] == "cb1"
    store.update_county_broadcast("cb1", {"id": "cb1", "done": True})  # retired: nobody follows it
    assert store.claim_county_broadcasts("d", now=1e12, lease_until=2e12) == []
    stored = store.county_broadcast("cb1")
    assert stored is not None and stored["following"] is False and stored["owner"] is None
