"""The durable outbox: seq never repeats, PUBACK deletes, the bound policy, and kill -9 of a writer."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from simkit import REPO

from controller.uplink.outbox import OVERFLOW_KIND, Outbox, OutboxLimits, event_record

HANG_GUARD_S = 60.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


def test_seq_never_repeats_across_reopen_even_when_emptied(path: Path):
    before = int(time.time() * 1000)
    box = Outbox(path)
    first = [box.append("device.fault", "events", {"n": i}) for i in range(3)]
    assert first == sorted(first) and len(set(first)) == 3
    assert first[0] > before  # a new file starts at the clock in ms, not at 1
    assert box.ack_many(first) == 3 and box.depth == 0
    box.close()

    box = Outbox(path)
    again = box.append("device.fault", "events", {"n": 3})
    assert again > max(first)
    assert box.last_seq() == again
    box.close()
    assert path.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pending_in_seq_order_and_ack_removes(path: Path):
    box = Outbox(path)
    seqs = [box.append("device.state", "events", event_record("device.state", {"i": i})) for i in range(5)]
    rows = box.pending()
    assert [r.seq for r in rows] == seqs
    assert json.loads(rows[0].payload)["data"] == {"i": 0} and rows[0].topic == "events"
    assert [r.seq for r in box.pending(after=seqs[1], limit=2)] == seqs[2:4]
    assert box.ack(seqs[1]) and not box.ack(seqs[1])  # the second PUBACK of a duplicate: nothing left
    assert box.ack_many([seqs[0], seqs[3], 12345]) == 2
    assert [r.seq for r in box.pending()] == [seqs[2], seqs[4]]
    assert box.depth == 2
    box.close()
    box = Outbox(path)  # the count is rebuilt from the file
    assert box.depth == 2 and [r.seq for r in box.pending()] == [seqs[2], seqs[4]]
    box.close()


def test_unicode_payload_round_trips(path: Path):
    box = Outbox(path)
    box.append("device.fault", "events", {"reason_zh": "扬声器线路开路", "values": {"v": 1.5}})
    assert json.loads(box.pending()[0].payload)["reason_zh"] == "扬声器线路开路"
    box.close()


def test_health_snapshots_are_dropped_first_oldest_first(path: Path):
    box = Outbox(path, OutboxLimits(max_rows=100, max_droppable_rows=5))
    health = [box.append("gateway.health", "health", {"n": i}, droppable=True) for i in range(8)]
    # Only the newest 5 snapshots are kept, whatever the total.
    assert [r.seq for r in box.pending()] == health[3:]
    assert box.stats().dropped_droppable == 3
    events = [box.append("device.fault", "events", {"n": i}) for i in range(95)]
    assert box.depth == 100 and box.stats().dropped_kept == 0
    # Over the bound: the health snapshots go, oldest first, before any event.
    more = [box.append("device.fault", "events", {"n": 95 + i}) for i in range(5)]
    left = [r.seq for r in box.pending(limit=1000)]
    assert left == events + more
    stats = box.stats()
    assert stats.dropped_droppable == 8 and stats.droppable_depth == 0 and stats.dropped_kept == 0
    box.close()


def test_events_over_the_hard_cap_are_dropped_and_reported(path: Path):
    box = Outbox(path, OutboxLimits(max_rows=200, max_droppable_rows=10))
    box.append("gateway.health", "health", {"n": 0}, droppable=True)
    events = [box.append("device.fault", "events", {"n": i}) for i in range(250)]
    rows = box.pending(limit=1000)
    assert len(rows) <= 200
    overflows = [r for r in rows if r.kind == OVERFLOW_KIND]
    assert len(overflows) == 1, "one outage, one report: later drops are merged into it"
    stats = box.stats()
    assert stats.overflows == 1 and stats.dropped_droppable == 1
    report = json.loads(overflows[0].payload)["data"]
    kept = {r.seq for r in rows}
    gone = [s for s in events if s not in kept]
    assert report["dropped"] == stats.dropped_kept == len(gone) > 0
    assert report["kinds"] == {"device.fault": len(gone)} and overflows[0].topic == "events"
    # The report covers exactly the events that are gone: the oldest, one seq range.
    assert gone == events[:len(gone)]
    assert (report["first_seq"], report["last_seq"]) == (gone[0], gone[-1])

    # Once that report has been read for sending it is never amended: the next drop gets its own.
    more = [box.append("device.fault", "events", {"n": i}) for i in range(10)]
    rows = box.pending(limit=1000)
    reports = [json.loads(r.payload)["data"] for r in rows if r.kind == OVERFLOW_KIND]
    assert len(reports) == 2 and reports[0] == report
    assert reports[1]["first_seq"] > report["last_seq"] and box.stats().overflows == 2
    assert {r.seq for r in rows} >= set(more)
    box.close()


WRITER = """
import sys
from controller.uplink.outbox import Outbox
box = Outbox(sys.argv[1])
i = 0
while True:
    seq = box.append("device.fault", "events", {"n": i, "text": "线路开路" * 10})
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
    i += 1
"""


def test_sigkilled_writer_loses_nothing_it_reported(path: Path):
    """Every seq a writer got back from append() is in the file after kill -9 in mid-stream."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO,
                            text=True)
    assert proc.stdout is not None
    confirmed: list[int] = []
    deadline = time.monotonic() + HANG_GUARD_S
    while len(confirmed) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        confirmed.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait(HANG_GUARD_S)
    confirmed += [int(line) for line in proc.stdout.read().split()]  # whatever it wrote before dying
    assert len(confirmed) >= 300, "the writer did not get going"

    box = Outbox(path)
    stored = [r.seq for r in box.pending(limit=100_000)]
    assert set(confirmed) <= set(stored)
    assert stored == sorted(set(stored))
    assert len(stored) - len(confirmed) <= 1  # at most the one being written when it was killed
    assert box.append("device.fault", "events", {}) > max(stored)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    box.close()
