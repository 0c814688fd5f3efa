"""The national-platform store: ids never repeat (reopen, new day, kill -9), answered EBDs, EBM links."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from simkit import REPO

from controller.uplink.national.codes import EBDID_RE, EBMID_RE
from controller.uplink.national.store import (
    CounterExhaustedError,
    NationalStore,
    NationalStoreError,
    platform_day,
)

SENDER = "53201020010000314010101"
PLATFORM = "43210020000000314010101"
HANG_GUARD_S = 60.0


def at(text: str) -> datetime:
    """An aware instant from 'YYYY-MM-DD HH:MM' in UTC."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "national.sqlite3"


def test_file_is_owner_only_and_wal(path: Path):
    store = NationalStore(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert NationalStore.in_state_dir(path.parent).path == path


def test_ebdids_count_per_day_and_never_repeat_across_reopen(path: Path):
    now = at("2024-05-01 02:00")  # 10:00 in Beijing
    store = NationalStore(path)
    first = [store.next_ebdid(SENDER, now) for _ in range(3)]
    assert first == [f"10{SENDER}20240501{n:08d}" for n in (1, 2, 3)]
    store.close()

    store = NationalStore(path)  # a restart
    assert store.next_ebdid(SENDER, now) == f"10{SENDER}2024050100000004"
    # another sender has its own counter; a new day starts again at 1
    assert store.next_ebdid(PLATFORM, now) == f"10{PLATFORM}2024050100000001"
    assert store.next_ebdid(SENDER, now + timedelta(days=1)) == f"10{SENDER}2024050200000001"
    # the clock set back to the earlier day continues that day's counter
    assert store.next_ebdid(SENDER, now) == f"10{SENDER}2024050100000005"
    store.close()

    store = NationalStore(path)
    assert store.next_ebdid(SENDER, now + timedelta(days=1)) == f"10{SENDER}2024050200000002"
    store.close()


def test_day_boundary_is_beijing_time(path: Path):
    store = NationalStore(path)
    # 2024-04-30 16:00 UTC is already 2024-05-01 00:00 in Beijing
    assert store.next_ebdid(SENDER, at("2024-04-30 15:59"))[25:33] == "20240430"
    assert store.next_ebdid(SENDER, at("2024-04-30 16:00"))[25:] == "2024050100000001"
    # a naive time is Beijing time
    assert store.next_ebdid(SENDER, datetime(2024, 5, 1, 0, 0))[25:] == "2024050100000002"
    assert EBDID_RE.fullmatch(store.next_ebdid(SENDER))
    store.close()
    assert platform_day(at("2024-12-31 16:00")) == "2025-01-01"


def test_ebmids_have_their_own_four_digit_counter(path: Path):
    now = at("2024-05-01 02:00")
    store = NationalStore(path)
    store.next_ebdid(PLATFORM, now)
    assert store.next_ebmid(PLATFORM, now) == f"{PLATFORM}202405010001"
    assert store.next_ebmid(PLATFORM, now) == f"{PLATFORM}202405010002"
    store.close()
    store = NationalStore(path)
    ebmid = store.next_ebmid(PLATFORM, now)
    assert ebmid == f"{PLATFORM}202405010003" and EBMID_RE.fullmatch(ebmid)
    assert store.next_ebmid(PLATFORM, now + timedelta(days=1)) == f"{PLATFORM}202405020001"
    store.close()


def test_counter_overflow_is_a_clear_error_and_uses_up_nothing(path: Path):
    now = at("2024-05-01 02:00")
    store = NationalStore(path)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO counters VALUES ('EBMID', ?, '2024-05-01', 9999)", (PLATFORM,))
        conn.execute("INSERT INTO counters VALUES ('EBDID', ?, '2024-05-01', 99999999)", (SENDER,))
    store = NationalStore(path)
    with pytest.raises(CounterExhaustedError, match=r"EBMID counter .* 2024-05-01 .*used up.*9,999"):
        store.next_ebmid(PLATFORM, now)
    with pytest.raises(CounterExhaustedError, match=r"EBDID counter .*99,999,999"):
        store.next_ebdid(SENDER, now)
    assert isinstance(CounterExhaustedError("x"), NationalStoreError)
    assert store.next_ebmid(PLATFORM, now + timedelta(days=1)).endswith("202405020001")
    with pytest.raises(CounterExhaustedError):  # still used up, not wrapped round
        store.next_ebmid(PLATFORM, now)
    store.close()


def test_malformed_ebrid_is_refused(path: Path):
    store = NationalStore(path)
    with pytest.raises(ValueError, match="must be 23 digits"):
        store.next_ebdid("123")
    with pytest.raises(ValueError, match="must be 23 digits"):
        store.next_ebmid(PLATFORM + "0")
    store.close()


def test_ids_are_unique_across_threads(path: Path):
    store = NationalStore(path)
    out: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        got = [store.next_ebdid(SENDER) for _ in range(25)]
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    assert len(out) == 100 and len(set(out)) == 100
    store.close()


def test_seen_and_remember_round_trip_and_first_answer_stays(path: Path):
    store = NationalStore(path)
    eid = f"10{SENDER}2024050100000001"
    assert store.seen(eid) is None
    store.remember(eid, "EBM", 1, b"tar-1\x00\xff")
    store.remember(eid, "EBM", 5, b"tar-2")  # a duplicate gets the first answer
    assert store.seen(eid) == b"tar-1\x00\xff"
    store.close()
    store = NationalStore(path)
    assert store.seen(eid) == b"tar-1\x00\xff"
    store.close()


def test_seen_rows_older_than_a_week_are_pruned_on_open(path: Path):
    store = NationalStore(path)
    store.remember("old", "EBM", 1, b"a")
    store.remember("new", "EBM", 1, b"b")
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE seen SET at=? WHERE ebdid='old'", (time.time() - 8 * 86400,))
    store = NationalStore(path)
    assert store.seen("old") is None and store.seen("new") == b"b"
    store.close()


def test_ebm_links_round_trip(path: Path):
    store = NationalStore(path)
    assert store.broadcast_of("e1") is None and store.ebmid_of("b1") is None and store.ebm_links() == []
    before = time.time()
    store.link_ebm("e1", "b1", "d1")
    store.link_ebm("e2", "b2", "d2")
    assert store.broadcast_of("e1") == "b1" and store.ebmid_of("b2") == "e2"
    store.close()

    store = NationalStore(path)
    links = store.ebm_links()
    assert [(e, b) for e, b, _ in links] == [("e1", "b1"), ("e2", "b2")]
    assert all(before <= ts <= time.time() for _, _, ts in links)
    assert store.ebm_links(since=links[1][2]) == [links[1]]
    assert store.ebm_links(since=time.time() + 60) == []
    store.link_ebm("e1", "b3", "d3")  # relinked: the latest play counts
    assert store.broadcast_of("e1") == "b3" and store.ebmid_of("b3") == "e1"
    store.link_ebm("e4", "b3", "d4")
    assert store.ebmid_of("b3") == "e4"
    store.close()


def test_unusable_file_is_a_store_error(tmp_path: Path):
    bad = tmp_path / "national.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(NationalStoreError, match="not a usable SQLite database"):
        NationalStore(bad)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NationalStoreError, match="cannot create"):
        NationalStore(blocker / "sub" / "national.sqlite3")


WRITER = """
import sys
from controller.uplink.national.store import NationalStore
store = NationalStore(sys.argv[1])
while True:
    print(store.next_ebdid("53201020010000314010101"), flush=True)
"""


def test_sigkilled_writer_never_repeats_an_ebdid(path: Path):
    """Every EBDID handed out before kill -9 is below the first one handed out after the restart."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    issued: list[str] = []
    deadline = time.monotonic() + HANG_GUARD_S
    while len(issued) < 200 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        issued.append(line.strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(HANG_GUARD_S)
    issued += proc.stdout.read().split()
    assert len(issued) >= 200, "the writer did not get going"
    assert len(set(issued)) == len(issued)

    store = NationalStore(path)
    after = store.next_ebdid(SENDER)
    if after[25:33] == issued[-1][25:33]:  # same day (not run across Beijing midnight)
        assert int(after[33:]) > max(int(i[33:]) for i in issued)
    assert after not in issued
    store.close()
