"""Durable state of the national-platform interface: id counters, answered EBDs, EBM ↔ broadcast links.

Why a store at all: an EBDID or EBMID must never be issued twice (the upper platform drops
duplicates, so a repeated id would silently lose a report), a re-sent EBD must get the very answer
it got the first time (the sender retries when our response was lost), and an EBM state query names
the EBMID, not our broadcast. All three must survive ``kill -9`` and power cuts.

Design decisions, as in controller/uplink/outbox.py:

- Own SQLite file (``national.sqlite3``) in the state directory, WAL mode, created owner-only
  (0600) before SQLite opens it; one connection guarded by one lock, so it is thread-safe.
- Every write is one ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL``: a
  counter value is on disk before the id built from it is returned, so a restart (even after a
  power cut) continues after it and never repeats an id.
- Counters are per (kind, sender EBRID, day), the day taken in Asia/Shanghai — the ``yyyyMMdd``
  inside the ids is Beijing time whatever the gateway's own zone. Counter rows are never pruned
  (one row per day): if the clock is set back to an earlier day, that day's counter continues.
- Answered EBDs (``seen``) older than 7 days are pruned on open: a sender does not retry longer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.storage.sqlite_file import open_wal
from controller.uplink.national.codes import EBRID_RE, MAX_EBDID_COUNTER, MAX_EBMID_COUNTER, ebdid, ebmid

DB_NAME = "national.sqlite3"
PLATFORM_ZONE = ZoneInfo("Asia/Shanghai")
SEEN_RETENTION_S = 7 * 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT NOT NULL,
    ebrid TEXT NOT NULL,
    day TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (kind, ebrid, day)
);
CREATE TABLE IF NOT EXISTS seen (
    ebdid TEXT PRIMARY KEY,
    ebd_type TEXT NOT NULL,
    result_code INTEGER NOT NULL,
    response BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_at ON seen(at);
CREATE TABLE IF NOT EXISTS ebm_links (
    ebmid TEXT PRIMARY KEY,
    broadcast_id TEXT NOT NULL,
    ebdid TEXT NOT NULL,
    linked_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ebm_links_broadcast ON ebm_links(broadcast_id, linked_at);
CREATE INDEX IF NOT EXISTS ebm_links_at ON ebm_links(linked_at);
"""


class NationalStoreError(Exception):
    """The store file cannot be used (not a database, no WAL, cannot be created, ...)."""


class CounterExhaustedError(NationalStoreError):
    """A day's EBDID or EBMID counter is used up; no id can be issued until the next day (Beijing time)."""


def platform_day(now: datetime | None = None) -> str:
    """``yyyy-mm-dd`` of ``now`` in Asia/Shanghai; a naive ``now`` is taken as Asia/Shanghai time."""
    if now is None:
        now = datetime.now(PLATFORM_ZONE)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=PLATFORM_ZONE)
    return now.astimezone(PLATFORM_ZONE).date().isoformat()


def _check_ebrid(ebrid: str) -> None:
    """Refuse a malformed EBRID before a counter value is used up for it."""
    if not EBRID_RE.fullmatch(ebrid):
        raise ValueError(f"EBRID '{ebrid}' must be 23 digits (0-9), got {len(ebrid)} characters")


class NationalStore:
    """Counters, answered EBDs and EBM links in one SQLite file; thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = open_wal(self.path, "national-platform store", NationalStoreError)
        try:
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise NationalStoreError(f"{self.path}: not a usable SQLite database ({exc})") from None
        self._lock = threading.Lock()
        with self._tx() as conn:
            conn.execute("DELETE FROM seen WHERE at < ?", (time.time() - SEEN_RETENTION_S,))

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> NationalStore:
        return cls(Path(state_dir) / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, fsynced (synchronous=FULL) when it commits."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            with self._conn:  # COMMIT, or ROLLBACK if the block raised
                yield self._conn

    # -- ids -------------------------------------------------------------------------------------

    def _next(self, kind: str, ebrid: str, now: datetime | None, maximum: int) -> tuple[date, int]:
        day = platform_day(now)
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM counters WHERE kind=? AND ebrid=? AND day=?",
                               (kind, ebrid, day)).fetchone()
            value = (row[0] if row else 0) + 1
            if value > maximum:
                raise CounterExhaustedError(
                    f"the {kind} counter of {ebrid} for {day} (Asia/Shanghai) is used up: all {maximum:,} "
                    f"ids of that day were issued; the next one can be issued on the following day")
            conn.execute("INSERT INTO counters (kind, ebrid, day, value) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (kind, ebrid, day) DO UPDATE SET value=excluded.value",
                         (kind, ebrid, day, value))
        return date.fromisoformat(day), value

    def next_ebdid(self, sender_ebrid: str, now: datetime | None = None) -> str:
        """A new EBDID for ``sender_ebrid``; on disk before it is returned, so never repeated."""
        _check_ebrid(sender_ebrid)
        day, value = self._next("EBDID", sender_ebrid, now, MAX_EBDID_COUNTER)
        return ebdid(sender_ebrid, day, value)

    def next_ebmid(self, platform_ebrid: str, now: datetime | None = None) -> str:
        """A new EBMID (its own 4-digit daily counter); on disk before it is returned."""
        _check_ebrid(platform_ebrid)
        day, value = self._next("EBMID", platform_ebrid, now, MAX_EBMID_COUNTER)
        return ebmid(platform_ebrid, day, value)

    # -- answered EBDs ---------------------------------------------------------------------------

    def seen(self, ebdid: str) -> bytes | None:
        """The response tar given to ``ebdid`` before, to answer a re-sent EBD identically; else None."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM seen WHERE ebdid=?", (ebdid,)).fetchone()
        return None if row is None else bytes(row[0])

    def remember(self, ebdid: str, ebd_type: str, result_code: int, response: bytes) -> None:
        """Keep the response given to ``ebdid``. The first answer stays: a duplicate gets that one."""
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO seen (ebdid, ebd_type, result_code, response, at) "
                         "VALUES (?, ?, ?, ?, ?)", (ebdid, ebd_type, int(result_code), bytes(response),
                                                    time.time()))

    # -- EBM ↔ broadcast -------------------------------------------------------------------------

    def link_ebm(self, ebmid: str, broadcast_id: str, ebdid: str) -> None:
        """Record that the EBM ``ebmid`` (delivered in ``ebdid``) plays as our broadcast ``broadcast_id``.

        Linking an EBMID again replaces its broadcast (the latest play is the one its state refers to).
        """
        with self._tx() as conn:
            conn.execute("INSERT INTO ebm_links (ebmid, broadcast_id, ebdid, linked_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (ebmid) DO UPDATE SET broadcast_id=excluded.broadcast_id, "
                         "ebdid=excluded.ebdid, linked_at=excluded.linked_at",
                         (ebmid, broadcast_id, ebdid, time.time()))

    def broadcast_of(self, ebmid: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT broadcast_id FROM ebm_links WHERE ebmid=?", (ebmid,)).fetchone()
        return None if row is None else row[0]

    def ebmid_of(self, broadcast_id: str) -> str | None:
        """The EBM a broadcast plays (the latest linked, should several EBMs name one broadcast)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT ebmid FROM ebm_links WHERE broadcast_id=? "
                "ORDER BY linked_at DESC, rowid DESC LIMIT 1",
                (broadcast_id,)).fetchone()
        return None if row is None else row[0]

    def ebm_links(self, since: float | None = None) -> list[tuple[str, str, float]]:
        """(ebmid, broadcast_id, linked_at) in link order, those linked at or after ``since`` (Unix time)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT ebmid, broadcast_id, linked_at FROM ebm_links WHERE ? IS NULL OR linked_at >= ? "
                "ORDER BY linked_at, rowid", (since, since)).fetchall()
        return [(r[0], r[1], float(r[2])) for r in rows]
