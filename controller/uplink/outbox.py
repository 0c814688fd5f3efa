"""The durable MQTT outbox: every report to the county is written here before it is sent.

paho keeps unacknowledged messages in memory only, so a 4G uplink that is down for an hour, or a
``kill -9`` of the daemon, would lose them; this table does not. The reporter
(controller/uplink/mqtt.py) sends only rows of this table, in ``seq`` order, and deletes a row when the
broker's PUBACK for it arrives — delivery is at least once, and ``seq`` lets the county drop
duplicates.

Design decisions:

- Own SQLite file (``outbox.sqlite3``) next to the journal, WAL mode: its own lock and WAL, so
  flushing a backlog of thousands of deletes never holds up a journal write (a 202 on the API).
- ``seq`` is ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite never hands out a number twice in one
  file, even after the rows were deleted. A *new* file starts its sequence at the current Unix
  time in milliseconds, so even a replaced SD card (state directory lost) does not restart at 1
  and make the county discard new events as duplicates of old ones.
- Durability per row kind: a kept row (event, broadcast outcome) is committed with
  ``synchronous=FULL`` — on disk, power cut included, when :meth:`Outbox.append` returns. A
  droppable health snapshot and the PUBACK deletes use ``NORMAL`` (durable against ``kill -9``,
  not a power cut): losing a snapshot or un-deleting a delivered row (a duplicate, which
  at-least-once allows) is harmless, and skipping that fsync is what makes flushing fast.
  Measured on the 2-core dev box: FULL ≈ 0.2 ms per append, NORMAL ≈ 0.015 ms (docs/mqtt.md).
- Bound policy (:class:`OutboxLimits`): at most ``max_droppable_rows`` periodic health snapshots
  are kept (oldest dropped first; a week-long outage does not need 10,000 one-minute snapshots),
  and at most ``max_rows`` rows in all. Over ``max_rows`` the oldest health snapshots go first;
  only if none are left are the oldest kept rows dropped — a chunk of 1 % of the bound at once —
  and an ``outbox.overflow`` event (kept, never itself dropped) says how many, of which kinds, in
  which seq range. While that report has not been read for sending, later drops are merged into
  it, so one outage yields one report, not thousands. Dropped counts are exposed for /metrics
  (:meth:`Outbox.stats`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.storage.sqlite_file import open_wal

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite3"
OVERFLOW_KIND = "outbox.overflow"
OVERFLOW_TOPIC = "events"
_ACK_CHUNK = 500  # bound parameters per DELETE

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    droppable INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_droppable ON outbox(seq) WHERE droppable = 1;
"""


def event_record(kind: str, data: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """The payload of an ``events`` row: what happened, when, and its details."""
    return {"kind": kind, "ts": time.time() if ts is None else ts, "data": data}


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


class OutboxError(Exception):
    """The outbox file cannot be used (not a database, no WAL, ...)."""


@dataclass(frozen=True)
class OutboxLimits:
    """How big the outbox may grow while the uplink is down (see the module docstring)."""

    max_rows: int = 100_000
    max_droppable_rows: int = 1_000

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_droppable_rows < 0:
            raise ValueError("outbox limits must be positive")


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    kind: str
    topic: str
    """Below ``<prefix>/<gateway>/``, e.g. ``events`` or ``broadcasts/<id>``."""
    payload: str
    """A JSON object, as appended (without ``seq``; the reporter adds it)."""
    created_at: float
    droppable: bool


@dataclass(frozen=True)
class OutboxStats:
    """For /metrics and the health snapshot."""

    depth: int
    droppable_depth: int
    dropped_droppable: int
    """Health snapshots dropped by the bound policy since this process opened the outbox."""
    dropped_kept: int
    """Events and outcomes dropped on overflow (each drop is also an ``outbox.overflow`` event)."""
    overflows: int
    last_seq: int


class Outbox:
    """A bounded, durable FIFO of reports for the county; thread-safe (one connection, one lock)."""

    durable_acks = False
    """PUBACK deletes commit with NORMAL: losing one on a power cut only re-sends (a duplicate)."""

    def __init__(self, path: str | Path, limits: OutboxLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or OutboxLimits()
        self._conn = open_wal(self.path, "outbox", OutboxError)  # owner-only, like the journal
        try:
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise OutboxError(f"{self.path}: not a usable SQLite database ({exc})") from None
        self._lock = threading.Lock()
        self._sync = ""
        with self._tx(durable=True) as conn:
            if conn.execute("SELECT 1 FROM sqlite_sequence WHERE name='outbox'").fetchone() is None:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                             (int(time.time() * 1000),))
            self._depth = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            self._droppable = conn.execute("SELECT COUNT(*) FROM outbox WHERE droppable=1").fetchone()[0]
        self.dropped_droppable = 0
        self.dropped_kept = 0
        self.overflows = 0
        self._handed_out = self.last_seq()
        """Rows up to here may have been read for sending: an overflow report there is not amended."""

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, limits: OutboxLimits | None = None) -> Outbox:
        return cls(Path(state_dir) / DB_NAME, limits)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable`` fsyncs it (FULL), else NORMAL (see module docstring)."""
        with self._lock:
            sync = "FULL" if durable else "NORMAL"
            if sync != self._sync:
                self._conn.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            self._conn.execute("BEGIN IMMEDIATE")
            with self._conn:  # COMMIT, or ROLLBACK if the block raised
                yield self._conn

    # -- writing ---------------------------------------------------------------------------------

    def append(self, kind: str, topic: str, payload: dict[str, Any], *, droppable: bool = False) -> int:
        """Store one report and return its ``seq``; a kept row is on disk when this returns."""
        text = _dumps(payload)
        with self._tx(durable=not droppable) as conn:
            seq = self._insert(conn, kind, topic, text, droppable)
            self._enforce_bounds(conn)
        return seq

    def _insert(self, conn: sqlite3.Connection, kind: str, topic: str, text: str, droppable: bool) -> int:
        cur = conn.execute("INSERT INTO outbox (kind, topic, payload, droppable, created_at)"
                           " VALUES (?,?,?,?,?)", (kind, topic, text, int(droppable), time.time()))
        self._depth += 1
        self._droppable += int(droppable)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _drop_droppable(self, conn: sqlite3.Connection, count: int) -> None:
        if count <= 0 or self._droppable == 0:
            return
        cur = conn.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE droppable=1"
                           " ORDER BY seq LIMIT ?)", (count,))
        self._depth -= cur.rowcount
        self._droppable -= cur.rowcount
        self.dropped_droppable += cur.rowcount

    def _enforce_bounds(self, conn: sqlite3.Connection) -> None:
        limits = self.limits
        self._drop_droppable(conn, self._droppable - limits.max_droppable_rows)
        self._drop_droppable(conn, self._depth - limits.max_rows)
        excess = self._depth - limits.max_rows
        if excess <= 0:
            return
        # No health snapshot is left: drop the oldest events, never an overflow report.
        chunk = max(excess + 1, limits.max_rows // 100)
        rows = conn.execute("SELECT seq, kind FROM outbox WHERE kind != ? ORDER BY seq LIMIT ?",
                            (OVERFLOW_KIND, chunk)).fetchall()
        if not rows:
            return  # nothing but overflow reports (a bound far too small): keep them
        first, last = rows[0][0], rows[-1][0]
        conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND kind != ?",
                     (first, last, OVERFLOW_KIND))
        kinds: dict[str, int] = {}
        for _, kind in rows:
            kinds[kind] = kinds.get(kind, 0) + 1
        self._depth -= len(rows)
        self.dropped_kept += len(rows)
        self._report_overflow(conn, len(rows), first, last, kinds)
        log.warning("outbox full (%d rows): dropped the %d oldest reports, seq %d..%d (%s)",
                    limits.max_rows, len(rows), first, last, kinds)

    def _report_overflow(self, conn: sqlite3.Connection, dropped: int, first: int, last: int,
                         kinds: dict[str, int]) -> None:
        """One ``outbox.overflow`` event per outage: merged into the last one while it is unsent."""
        now = time.time()
        row = conn.execute("SELECT seq, payload FROM outbox WHERE kind=? AND seq > ?"
                           " ORDER BY seq DESC LIMIT 1", (OVERFLOW_KIND, self._handed_out)).fetchone()
        if row is not None:
            report = json.loads(row[1])
            data = report["data"]
            data["dropped"] += dropped
            data["first_seq"], data["last_seq"] = min(data["first_seq"], first), max(data["last_seq"], last)
            for kind, n in kinds.items():
                data["kinds"][kind] = data["kinds"].get(kind, 0) + n
            data["until"] = now
            conn.execute("UPDATE outbox SET payload=? WHERE seq=?", (_dumps(report), row[0]))
            return
        self.overflows += 1
        report = event_record(OVERFLOW_KIND, {"dropped": dropped, "first_seq": first, "last_seq": last,
                                              "kinds": kinds, "max_rows": self.limits.max_rows,
                                              "since": now, "until": now}, now)
        self._insert(conn, OVERFLOW_KIND, OVERFLOW_TOPIC, _dumps(report), False)

    # -- reading and acknowledging ------------------------------------------------------------------

    def pending(self, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``seq > after``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, topic, payload, created_at, droppable FROM outbox WHERE seq > ?"
                " ORDER BY seq LIMIT ?", (after, limit)).fetchall()
            if rows:
                self._handed_out = max(self._handed_out, rows[-1][0])
        return [OutboxRow(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def ack(self, seq: int) -> bool:
        """The broker has it (PUBACK): forget the row. False if it was already gone."""
        return self.ack_many((seq,)) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Forget many delivered rows in one transaction (one PUBACK burst); returns how many went."""
        batch = list(seqs)
        if not batch:
            return 0
        gone = droppable = 0
        with self._tx(durable=self.durable_acks) as conn:
            for start in range(0, len(batch), _ACK_CHUNK):
                chunk = batch[start:start + _ACK_CHUNK]
                marks = ",".join("?" * len(chunk))
                flags = conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING droppable",
                                     chunk).fetchall()
                gone += len(flags)
                droppable += sum(f[0] for f in flags)
        self._depth -= gone
        self._droppable -= droppable
        return gone

    def last_seq(self) -> int:
        """The highest seq ever handed out by this file (also when that row is gone)."""
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return int(row[0]) if row else 0

    @property
    def depth(self) -> int:
        return self._depth

    def stats(self) -> OutboxStats:
        return OutboxStats(self._depth, self._droppable, self.dropped_droppable, self.dropped_kept,
                           self.overflows, self.last_seq())
