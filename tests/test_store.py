"""The journal (controller/storage/journal.py) against real SQLite files: durability, schema, tokens,
audit."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from controller.broadcast.model import BroadcastState, TerminalOutcome
from controller.core.actors import Actor, Role
from controller.storage.journal import SCHEMA_VERSION, DuplicateError, Store, StoreError

REPO = Path(__file__).resolve().parent.parent
OFFICER = Actor(name="duty-officer", role=Role.OPERATOR, token_id="tk_1", remote="127.0.0.1:5000")


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "ebc.sqlite3")
    yield s
    s.close()


def test_wal_mode_and_schema_version(store: Store):
    assert store.journal_mode() == "wal"
    with sqlite3.connect(store.path) as other:  # persistent: every connection sees WAL
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.path.stat().st_mode & 0o077 == 0, "state file must be owner-only"


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "ebc.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "ebc.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path)


def test_everything_survives_reopening(tmp_path: Path):
    path = tmp_path / "ebc.sqlite3"
    s = Store(path)
    s.add_broadcast("b1", {"class": "drill", "title": "周测", "targets": {"all": True}, "text": "测试"},
                    OFFICER, BroadcastState.WAITING, 1000.0)
    s.set_state("b1", BroadcastState.PLAYING, started_at=1001.0)
    s.set_outcome("b1", "t01", TerminalOutcome.SUCCEEDED)
    s.set_outcome("b1", "t02", TerminalOutcome.UNREACHABLE, "no answer")
    s.add_note("b1", "pre-empted by b2")
    s.save_activation("b1", "t01", {"amp_power": False, "volume": 50})
    s.audit(OFFICER, "broadcast.create", "b1", {"class": "drill"})
    token = s.create_token("alice", Role.VIEWER)
    s.add_schedule("noon", "0 12 * * *", {"class": "daily", "targets": {"all": True}, "text": "午间"})
    s.close()

    s = Store(path)
    b = s.get_broadcast("b1")
    assert b is not None
    assert b["state"] is BroadcastState.PLAYING and b["started_at"] == 1001.0 and b["created_at"] == 1000.0
    assert b["request"]["title"] == "周测" and b["class"] == "drill"
    assert b["actor"] == {"name": "duty-officer", "role": "operator", "token_id": "tk_1",
                          "remote": "127.0.0.1:5000", "via": "api"}
    assert [(o["device_id"], o["outcome"], o["reason"]) for o in b["outcomes"]] == [
        ("t01", TerminalOutcome.SUCCEEDED, ""), ("t02", TerminalOutcome.UNREACHABLE, "no answer")]
    assert b["coverage"] == 0.5
    assert [n["text"] for n in b["notes"]] == ["pre-empted by b2"]
    assert s.pending_activations()[0]["prior_state"] == {"amp_power": False, "volume": 50}
    assert s.list_audit()[0]["action"] == "broadcast.create"
    info = s.verify_token(token)
    assert info is not None and info.name == "alice" and info.role is Role.VIEWER
    assert s.list_schedules()[0]["request"]["text"] == "午间"
    s.close()


WRITER = textwrap.dedent("""
    import sys, time
    from controller.core.actors import Actor, Role
    from controller.broadcast.model import BroadcastState
    from controller.storage.journal import Store
    store = Store(sys.argv[1])
    actor = Actor(name="writer", role=Role.OPERATOR)
    i = 0
    while True:
        store.add_broadcast(f"b{i}", {"n": i}, actor, BroadcastState.WAITING, time.time())
        store.audit(actor, "broadcast.create", f"b{i}")
        print(f"b{i}", flush=True)   # the 202 would go out now
        i += 1
""")


def test_sigkill_right_after_a_write_loses_nothing(tmp_path: Path):
    path = tmp_path / "ebc.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO,
                            text=True)
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(40)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout if line.strip()]
    s = Store(path)
    try:
        for broadcast_id in acknowledged:
            assert s.get_broadcast(broadcast_id) is not None, f"{broadcast_id} acknowledged but lost"
        audited = {a["target"] for a in s.list_audit(limit=10_000)}
        # the audit row follows the broadcast; every one before the last acknowledged is there
        assert set(acknowledged) <= audited
    finally:
        s.close()


def test_states_lists_and_unfinished(store: Store):
    for i, state in enumerate([BroadcastState.WAITING, BroadcastState.PLAYING, BroadcastState.SUCCEEDED,
                               BroadcastState.NOT_PROCESSED, BroadcastState.CANCELLED]):
        store.add_broadcast(f"b{i}", {"class": "daily"}, OFFICER, state, 100.0 + i)
    assert [b["id"] for b in store.list_broadcasts()] == ["b4", "b3", "b2", "b1", "b0"]
    assert [b["id"] for b in store.list_broadcasts(limit=2, offset=1)] == ["b3", "b2"]
    assert [b["id"] for b in store.list_broadcasts(state=BroadcastState.PLAYING)] == ["b1"]
    assert [b["id"] for b in store.unfinished_broadcasts()] == ["b0", "b1", "b3"]
    store.set_state("b1", BroadcastState.FAILED, reason="interrupted by restart", finished_at=200.0,
                    coverage=0.25)
    store.set_state("b1", BroadcastState.FAILED)  # later updates keep what they do not mention
    b = store.get_broadcast("b1")
    assert b is not None
    assert (b["reason"], b["finished_at"], b["coverage"]) == ("interrupted by restart", 200.0, 0.25)
    counts = store.broadcast_counts()
    assert counts[BroadcastState.FAILED] == 1 and counts[BroadcastState.WAITING] == 1
    with pytest.raises(KeyError):
        store.set_state("nope", BroadcastState.FAILED)
    with pytest.raises(DuplicateError):
        store.add_broadcast("b0", {}, OFFICER, BroadcastState.WAITING, 1.0)
    assert store.get_broadcast("nope") is None


def test_outcome_is_upserted_and_activations_cleared(store: Store):
    store.add_broadcast("b", {}, OFFICER, BroadcastState.PLAYING, 1.0)
    store.set_outcome("b", "t01", TerminalOutcome.PENDING)
    store.set_outcome("b", "t01", TerminalOutcome.FAILED, "amp fault")
    b = store.get_broadcast("b")
    assert b is not None and [(o["outcome"], o["reason"]) for o in b["outcomes"]] == [
        (TerminalOutcome.FAILED, "amp fault")]
    store.save_activation("b", "t01", {"x": 1})
    store.save_activation("b", "t02", {"x": 2})
    store.clear_activation("b", "t01")
    assert [(a["broadcast_id"], a["device_id"]) for a in store.pending_activations()] == [("b", "t02")]


def test_tokens_store_only_a_hash(store: Store):
    token = store.create_token("ops", Role.OPERATOR)
    assert token.startswith("ebc_") and len(token) > 40
    assert token not in store.path.read_bytes().decode("latin-1")
    wal = store.path.with_name(store.path.name + "-wal")
    if wal.exists():
        assert token.encode() not in wal.read_bytes()
    assert store.verify_token(token).role is Role.OPERATOR  # type: ignore[union-attr]
    assert store.verify_token(token + "x") is None
    assert store.verify_token("") is None
    with pytest.raises(DuplicateError):
        store.create_token("ops", Role.ADMIN)
    assert [t.name for t in store.list_tokens()] == ["ops"]
    assert store.revoke_token("ops") and not store.revoke_token("ops")
    assert store.verify_token(token) is None
    again = store.create_token("ops", Role.VIEWER)  # the name is free again after revocation
    assert store.verify_token(again).role is Role.VIEWER  # type: ignore[union-attr]


def test_audit_is_newest_first_with_actor_details(store: Store):
    store.audit(OFFICER, "broadcast.create", "b1", {"class": "emergency"})
    store.audit(Actor.system(), "broadcast.recover", "b1")
    rows = store.list_audit()
    assert [r["action"] for r in rows] == ["broadcast.recover", "broadcast.create"]
    assert rows[1]["token_id"] == "tk_1" and rows[1]["remote"] == "127.0.0.1:5000"
    assert rows[1]["details"] == {"class": "emergency"} and rows[0]["via"] == "system"
    assert len(store.list_audit(limit=1, offset=1)) == 1


def test_schedules(store: Store):
    store.add_schedule("a", "0 7 * * *", {"class": "daily"}, enabled=False)
    with pytest.raises(DuplicateError):
        store.add_schedule("a", "0 8 * * *", {})
    assert store.list_schedules()[0]["enabled"] is False
    assert store.delete_schedule("a") and not store.delete_schedule("a")


def test_threads_share_one_store(store: Store):
    def writer(n: int) -> None:
        for i in range(25):
            store.add_broadcast(f"w{n}-{i}", {}, OFFICER, BroadcastState.WAITING, float(i))
            store.audit(OFFICER, "x", f"w{n}-{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list_broadcasts(limit=500)) == 100
    assert len(store.list_audit(limit=500)) == 100
