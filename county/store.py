"""The county's history database: SQLite by default, PostgreSQL when ``storage.url`` says so.

One small internal interface (:class:`_Db`: ``execute``/``query``/``transaction`` with ``?``
placeholders) hides the two drivers, so the SQL below is written once. It is the common subset
of both (``ON CONFLICT … DO UPDATE … WHERE``, JSON kept as text, booleans as 0/1).

Dedupe is the database's job as much as the ingest's: ``UNIQUE(gateway, seq)`` on events, so a
report stored once stays stored once across county restarts and across several county instances
writing to one PostgreSQL (``insert_event`` says whether the row was new). Broadcast rows keep the
``seq`` of the report they come from and are only overwritten by a later one, so reports applied
out of order (shared subscriptions) still end in the right state.

Schema migrations: numbered steps in :data:`MIGRATIONS`, applied in order at open, each in its own
transaction with its row in ``schema_version``; on PostgreSQL under an advisory lock, so two
instances starting together do not race. Every method is thread-safe (one connection, one lock):
the ingest writes from a worker thread while the API reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROLES = ("viewer", "operator", "admin")
"""Lowest first: a role allows everything a lower one does."""

_PG_LOCK_ID = 0x0EBC_C0DE
"""pg_advisory_lock key serialising migrations between county instances."""

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", [
        """CREATE TABLE gateways (id TEXT PRIMARY KEY, name TEXT, area_code TEXT, location TEXT,
             status TEXT NOT NULL DEFAULT 'unknown', status_since DOUBLE PRECISION,
             last_seen DOUBLE PRECISION, birth TEXT, scanned_seq BIGINT, updated_at DOUBLE PRECISION)""",
        """CREATE TABLE devices (gateway TEXT NOT NULL, device TEXT NOT NULL, name TEXT, village TEXT,
             area_code TEXT, lat DOUBLE PRECISION, lon DOUBLE PRECISION, kind TEXT, state INTEGER,
             state_name TEXT, online INTEGER, faults TEXT NOT NULL DEFAULT '[]', data TEXT,
             updated_at DOUBLE PRECISION, PRIMARY KEY (gateway, device))""",
        """CREATE TABLE events (id {pk}, gateway TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
             ts DOUBLE PRECISION, historical INTEGER NOT NULL, data TEXT NOT NULL,
             received_at DOUBLE PRECISION NOT NULL, UNIQUE (gateway, seq))""",
        "CREATE INDEX events_received ON events (received_at)",
        "CREATE INDEX events_kind ON events (gateway, kind, seq)",
        """CREATE TABLE gaps (id {pk}, gateway TEXT NOT NULL, first_missing BIGINT NOT NULL,
             last_missing BIGINT NOT NULL, detected_at DOUBLE PRECISION NOT NULL,
             explained_by TEXT NOT NULL, UNIQUE (gateway, first_missing))""",
        """CREATE TABLE broadcasts (gateway TEXT NOT NULL, broadcast_id TEXT NOT NULL, seq BIGINT NOT NULL,
             state INTEGER, state_name TEXT, reason TEXT, coverage DOUBLE PRECISION, data TEXT NOT NULL,
             first_ts DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL,
             PRIMARY KEY (gateway, broadcast_id))""",
        """CREATE TABLE broadcast_outcomes (gateway TEXT NOT NULL, broadcast_id TEXT NOT NULL,
             device TEXT NOT NULL, seq BIGINT NOT NULL, outcome TEXT, data TEXT NOT NULL,
             updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (gateway, broadcast_id, device))""",
        """CREATE TABLE tokens (id {pk}, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
             created_at DOUBLE PRECISION NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
             revoked_at DOUBLE PRECISION)""",
        """CREATE TABLE audit (id {pk}, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
             action TEXT NOT NULL, target TEXT, details TEXT)""",
        "CREATE INDEX audit_ts ON audit (ts)",
    ]),
    (2, "county-wide broadcasts", [
        """CREATE TABLE county_broadcasts (id TEXT PRIMARY KEY, request TEXT NOT NULL,
             created_by TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, report TEXT NOT NULL,
             updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX county_broadcasts_created ON county_broadcasts (created_at)",
    ]),
    (3, "county-wide broadcasts survive a restart", [
        # state: what the following instance needs to carry on (NULL once nobody needs to follow it);
        # owner/lease_until: which instance follows it, until when unless it renews (another one, or
        # the same after a restart, takes it over then); cancel_requested_by: a cancel asked through
        # an instance that does not follow it, for the one that does.
        "ALTER TABLE county_broadcasts ADD COLUMN state TEXT",
        "ALTER TABLE county_broadcasts ADD COLUMN owner TEXT",
        "ALTER TABLE county_broadcasts ADD COLUMN lease_until DOUBLE PRECISION",
        "ALTER TABLE county_broadcasts ADD COLUMN cancel_requested_by TEXT",
    ]),
]
"""Numbered schema steps, applied in order; add new ones at the end, never edit an applied one."""


INSERT_ROWS = 100
"""Reports per ``INSERT`` statement (7 parameters each: under SQLite's oldest limit of 999)."""
SQLITE_CACHE_KB = 32 * 1024
"""SQLite's page cache per connection (see :class:`_Sqlite`)."""


def _dumps(value: Any) -> str:
    """Compact UTF-8 JSON (orjson: the ingest encodes every report's ``data`` with it)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # rows written before orjson may hold NaN, which json reads
        return json.loads(text)


class _NotAllNew(Exception):
    """Some of the reports of an ``executemany`` were already stored (undo it, go one by one)."""


def token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


# -- the two drivers --------------------------------------------------------------------------------


class _Db:
    """What the store needs from a driver: statements with ``?`` placeholders, dict rows, transactions."""

    dialect: str
    pk: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement for every row; the number of rows changed in all."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """Inside a transaction: what the block did is undone if it raises."""
        raise NotImplementedError

    def migration_lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        raise NotImplementedError


class _Sqlite(_Db):
    dialect = "sqlite"
    pk = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = path.with_name(path.name + ".migrate-lock")
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        with self.migration_lock():  # switching to WAL while another opener does fails at once
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # the events indexes lead with the gateway, so a busy county inserts all over them: keep their
        # pages in memory (SQLite's default cache is 2 MB)
        self.conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")
        self.conn.row_factory = lambda cur, row: {d[0]: v for d, v in zip(cur.description, row, strict=True)}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """An exclusive lock file beside the database: instances (or threads) starting together
        switch to WAL and migrate one after the other (SQLite's own locks refuse, not wait, there)."""
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT ebc_many")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO ebc_many")
            self.conn.execute("RELEASE ebc_many")
            raise
        self.conn.execute("RELEASE ebc_many")

    def close(self) -> None:
        self.conn.close()


class _Postgres(_Db):
    dialect = "postgresql"
    pk = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str) -> None:
        import psycopg  # only when configured: SQLite needs nothing installed
        from psycopg.rows import dict_row

        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(self._sql(sql), params).rowcount  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)  # type: ignore[arg-type]
            return cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.conn.execute(self._sql(sql), params).fetchall()  # type: ignore[arg-type,return-value]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        with self.conn.transaction():  # nested in a transaction: a savepoint
            yield

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        self.conn.execute("SELECT pg_advisory_lock(%s)", (_PG_LOCK_ID,))
        try:
            yield
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_LOCK_ID,))

    def close(self) -> None:
        self.conn.close()


# -- the store ----------------------------------------------------------------------------------------


class Store:
    """History and tokens; see the module docstring. ``Store.open(url, sqlite_path)`` or ``open_store``."""

    def __init__(self, db: _Db) -> None:
        self.db = db
        self._lock = threading.RLock()
        self._depth = 0
        self.migrate()

    @classmethod
    def open(cls, url: str, sqlite_path: Path | None = None) -> Store:
        """``postgresql://…`` or ``postgres://…`` → PostgreSQL; else SQLite at ``sqlite_path``."""
        if url.startswith(("postgresql://", "postgres://")):
            return cls(_Postgres(url))
        if sqlite_path is None:
            sqlite_path = Path(url.removeprefix("sqlite://"))
        return cls(_Sqlite(sqlite_path))

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several calls (the ingest writes a burst of reports at once)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with self.db.transaction():
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self.db.execute(sql, params)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self.db.query(sql, params)

    # -- migrations -------------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the steps not applied yet, in order; the versions applied now."""
        applied: list[int] = []
        with self._lock, self.db.migration_lock():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                            "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            done = {r["version"] for r in self.db.query("SELECT version FROM schema_version")}
            for version, name, steps in MIGRATIONS:
                if version in done:
                    continue
                with self.db.transaction():
                    for step in steps:
                        self.db.execute(step.replace("{pk}", self.db.pk))
                    self.db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                                    (version, name, time.time()))
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) AS v FROM schema_version")
        return int(rows[0]["v"] or 0)

    # -- gateways and devices (the retained picture) ----------------------------------------------------

    def set_status(self, gateway: str, status: str, at: float) -> None:
        """``status`` online/offline; ``status_since`` moves only when the status changes."""
        self._exec("""INSERT INTO gateways (id, status, status_since, last_seen, updated_at)
                      VALUES (?, ?, ?, ?, ?)
                      ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                        status_since = CASE WHEN gateways.status = excluded.status
                                            THEN gateways.status_since ELSE excluded.status_since END,
                        updated_at = excluded.updated_at""",
                   (gateway, status, at, at, at))

    _TOUCH = """INSERT INTO gateways (id, last_seen, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen
                WHERE gateways.last_seen IS NULL OR gateways.last_seen < excluded.last_seen"""

    def touch(self, gateway: str, at: float) -> None:
        self._exec(self._TOUCH, (gateway, at, at))

    def touch_many(self, seen: dict[str, float]) -> None:
        """:meth:`touch` for every (gateway, last seen) in one statement."""
        if seen:
            with self._lock:
                self.db.executemany(self._TOUCH, [(gw, at, at) for gw, at in seen.items()])

    def save_birth(self, gateway: str, birth: dict[str, Any], at: float) -> None:
        """The inventory replaces the previous one: devices not in it are forgotten."""
        gw = birth.get("gateway") or {}
        with self.batch():
            self._exec("""INSERT INTO gateways (id, name, area_code, location, birth, updated_at)
                          VALUES (?, ?, ?, ?, ?, ?)
                          ON CONFLICT (id) DO UPDATE SET name = excluded.name, area_code = excluded.area_code,
                            location = excluded.location, birth = excluded.birth,
                            updated_at = excluded.updated_at""",
                       (gateway, gw.get("name"), gw.get("area_code"), _dumps(gw.get("location")),
                        _dumps(birth), at))
            ids = []
            for dev in birth.get("devices") or []:
                loc = dev.get("location") or {}
                ids.append(dev["id"])
                self._exec("""INSERT INTO devices (gateway, device, name, village, area_code, lat, lon, kind,
                                updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                              ON CONFLICT (gateway, device) DO UPDATE SET name = excluded.name,
                                village = excluded.village, area_code = excluded.area_code,
                                lat = excluded.lat, lon = excluded.lon, kind = excluded.kind""",
                           (gateway, dev["id"], dev.get("name"), dev.get("village"), dev.get("area_code"),
                            loc.get("lat"), loc.get("lon"), dev.get("kind"), at))
            known = {r["device"] for r in
                     self._query("SELECT device FROM devices WHERE gateway = ?", (gateway,))}
            for gone in known - set(ids):
                self._exec("DELETE FROM devices WHERE gateway = ? AND device = ?", (gateway, gone))

    _SAVE_STATE = """INSERT INTO devices (gateway, device, name, village, area_code, kind, state, state_name,
                        online, faults, data, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                      ON CONFLICT (gateway, device) DO UPDATE SET
                        name = COALESCE(excluded.name, devices.name),
                        village = COALESCE(excluded.village, devices.village),
                        area_code = COALESCE(excluded.area_code, devices.area_code),
                        kind = COALESCE(excluded.kind, devices.kind), state = excluded.state,
                        state_name = excluded.state_name, online = excluded.online, faults = excluded.faults,
                        data = excluded.data, updated_at = excluded.updated_at"""

    @staticmethod
    def _state_row(gateway: str, doc: dict[str, Any], at: float, text: str | None = None) -> tuple[Any, ...]:
        """``text``: the document's JSON as received, stored as is instead of encoding ``doc`` again."""
        online = doc.get("online")
        return (gateway, doc["id"], doc.get("name"), doc.get("village"), doc.get("area_code"),
                doc.get("kind"), doc.get("state"), doc.get("state_name"),
                None if online is None else int(bool(online)), _dumps(doc.get("faults") or []),
                _dumps(doc) if text is None else text, at)

    def save_device_state(self, gateway: str, doc: dict[str, Any], at: float) -> None:
        """One device's retained state (docs/mqtt.md ``devices/<dev>/state``)."""
        self._exec(self._SAVE_STATE, self._state_row(gateway, doc, at))

    def save_device_states(self, states: Sequence[tuple[Any, ...]]) -> None:
        """Several (gateway, state, at[, text as received]) in one statement, in order (a later one for
        a device wins)."""
        if states:
            with self._lock:
                self.db.executemany(self._SAVE_STATE, [self._state_row(*s) for s in states])

    def gateways(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM gateways ORDER BY id")
        for r in rows:
            r["location"] = _loads(r["location"])
            r["birth"] = _loads(r["birth"])
        return rows

    def devices(self, gateway: str | None = None) -> list[dict[str, Any]]:
        if gateway is None:
            rows = self._query("SELECT * FROM devices ORDER BY gateway, device")
        else:
            rows = self._query("SELECT * FROM devices WHERE gateway = ? ORDER BY device", (gateway,))
        for r in rows:
            r["faults"] = _loads(r["faults"]) or []
            r["data"] = _loads(r["data"])
            r["online"] = None if r["online"] is None else bool(r["online"])
        return rows

    # -- history --------------------------------------------------------------------------------------

    _INSERT_EVENT = """INSERT INTO events (gateway, seq, kind, ts, historical, data, received_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, seq) DO NOTHING"""

    def insert_event(self, gateway: str, seq: int, kind: str, ts: float | None, historical: bool,
                     data: Any, received_at: float) -> bool:
        """Store one report; False if (gateway, seq) was already stored (by us or another instance)."""
        return self._exec(self._INSERT_EVENT,
                          (gateway, seq, kind, ts, int(historical), _dumps(data), received_at)) == 1

    def insert_events(self, rows: Sequence[tuple[str, int, str, float | None, bool, Any, float]]
                      ) -> list[bool]:
        """Store several reports (the arguments of :meth:`insert_event` each) in one statement; per
        report, whether it was new. If some were already stored, the statement is undone and the
        reports are stored one by one to tell which (rare: the ingest drops most duplicates first)."""
        if not rows:
            return []
        params = [(gw, seq, kind, ts, int(historical), _dumps(data), at)
                  for gw, seq, kind, ts, historical, data, at in rows]
        with self.batch():
            with contextlib.suppress(_NotAllNew), self.db.savepoint():
                inserted = 0
                for i in range(0, len(params), INSERT_ROWS):
                    chunk = params[i:i + INSERT_ROWS]
                    inserted += self.db.execute(self._insert_events_sql(len(chunk)),
                                                [value for row in chunk for value in row])
                if inserted != len(params):
                    raise _NotAllNew
                return [True] * len(params)
            return [self.db.execute(self._INSERT_EVENT, p) == 1 for p in params]

    @staticmethod
    def _insert_events_sql(n: int) -> str:
        """One ``INSERT`` of ``n`` reports: with ``executemany`` SQLite gives the GIL up and takes it back
        for every row, which a busy county (three threads) paid for in waits."""
        return ("INSERT INTO events (gateway, seq, kind, ts, historical, data, received_at) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n) + " ON CONFLICT (gateway, seq) DO NOTHING")

    def save_broadcast_state(self, gateway: str, seq: int, data: dict[str, Any], at: float) -> None:
        coverage = data.get("coverage")
        self._exec("""INSERT INTO broadcasts (gateway, broadcast_id, seq, state, state_name, reason, coverage,
                        data, first_ts, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                      ON CONFLICT (gateway, broadcast_id) DO UPDATE SET seq = excluded.seq,
                        state = excluded.state, state_name = excluded.state_name, reason = excluded.reason,
                        coverage = COALESCE(excluded.coverage, broadcasts.coverage), data = excluded.data,
                        updated_at = excluded.updated_at
                      WHERE excluded.seq > broadcasts.seq""",
                   (gateway, str(data["id"]), seq, data.get("state"), data.get("name"), data.get("reason"),
                    coverage if isinstance(coverage, int | float) else None, _dumps(data), at, at))

    def save_broadcast_outcome(self, gateway: str, seq: int, data: dict[str, Any], at: float) -> None:
        self._exec("""INSERT INTO broadcast_outcomes (gateway, broadcast_id, device, seq, outcome, data,
                        updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                      ON CONFLICT (gateway, broadcast_id, device) DO UPDATE SET seq = excluded.seq,
                        outcome = excluded.outcome, data = excluded.data, updated_at = excluded.updated_at
                      WHERE excluded.seq > broadcast_outcomes.seq""",
                   (gateway, str(data["id"]), str(data["device"]), seq, data.get("outcome"), _dumps(data),
                    at))

    def recent_events(self, gateway: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if gateway is None:
            rows = self._query("SELECT * FROM events ORDER BY received_at DESC, seq DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM events WHERE gateway = ? ORDER BY seq DESC LIMIT ?",
                               (gateway, limit))
        return [self._event(r) for r in rows]

    @staticmethod
    def _event(row: dict[str, Any]) -> dict[str, Any]:
        return {"gateway": row["gateway"], "seq": row["seq"], "kind": row["kind"], "ts": row["ts"],
                "historical": bool(row["historical"]), "data": _loads(row["data"]),
                "received_at": row["received_at"]}

    def event_at(self, gateway: str, seq: int) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM events WHERE gateway = ? AND seq = ?", (gateway, seq))
        return self._event(rows[0]) if rows else None

    def count_events(self, gateway: str | None = None) -> int:
        if gateway is None:
            return int(self._query("SELECT COUNT(*) AS n FROM events")[0]["n"])
        return int(self._query("SELECT COUNT(*) AS n FROM events WHERE gateway = ?", (gateway,))[0]["n"])

    def last_seqs(self) -> dict[str, int]:
        return {r["gateway"]: int(r["s"]) for r in
                self._query("SELECT gateway, MAX(seq) AS s FROM events GROUP BY gateway")}

    def broadcasts(self, gateway: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE gateway = ?", [gateway]) if gateway else ("", [])
        rows = self._query(f"SELECT * FROM broadcasts {where} ORDER BY updated_at DESC LIMIT ?",
                           (*params, limit))
        out = []
        for r in rows:
            outcomes = self._query("SELECT device, outcome, data FROM broadcast_outcomes "
                                   "WHERE gateway = ? AND broadcast_id = ? ORDER BY device",
                                   (r["gateway"], r["broadcast_id"]))
            out.append({"gateway": r["gateway"], "id": r["broadcast_id"], "state": r["state"],
                        "state_name": r["state_name"], "reason": r["reason"], "coverage": r["coverage"],
                        "first_ts": r["first_ts"], "updated_at": r["updated_at"],
                        "outcomes": {o["device"]: _loads(o["data"]) for o in outcomes}})
        return out

    # -- county-wide broadcasts ---------------------------------------------------------------------------

    def save_county_broadcast(self, broadcast_id: str, request: Any, created_by: str, created_at: float,
                              report: Any, state: Any = None, owner: str | None = None,
                              lease_until: float | None = None) -> None:
        self._exec("""INSERT INTO county_broadcasts (id, request, created_by, created_at, report, updated_at,
                        state, owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                   (broadcast_id, _dumps(request), created_by, created_at, _dumps(report), time.time(),
                    None if state is None else _dumps(state), owner, lease_until))

    def update_county_broadcast(self, broadcast_id: str, report: Any, state: Any = None,
                                owner: str | None = None) -> None:
        """The new report and (``state`` None: it needs no following any more) state. With ``owner``,
        only while that instance still follows it (another may have taken it over)."""
        if owner is None:
            self._exec("UPDATE county_broadcasts SET report = ?, updated_at = ?, state = ?, owner = NULL "
                       "WHERE id = ?", (_dumps(report), time.time(), None, broadcast_id))
            return
        self._exec("UPDATE county_broadcasts SET report = ?, updated_at = ?, state = ? "
                   "WHERE id = ? AND owner = ?",
                   (_dumps(report), time.time(), None if state is None else _dumps(state), broadcast_id,
                    owner))

    def claim_county_broadcasts(self, owner: str, now: float, lease_until: float) -> list[dict[str, Any]]:
        """Take over the county broadcasts still to follow whose follower let go (a stop) or stopped
        renewing (a crash); the rows this instance follows now, with their ``state``."""
        self._exec("""UPDATE county_broadcasts SET owner = ?, lease_until = ?
                      WHERE state IS NOT NULL
                        AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?)""",
                   (owner, lease_until, now))
        rows = self._query("SELECT * FROM county_broadcasts WHERE owner = ? AND state IS NOT NULL", (owner,))
        return [{**self._county_broadcast(r), "state": _loads(r["state"])} for r in rows]

    def renew_county_broadcasts(self, owner: str, ids: Sequence[str], lease_until: float
                                ) -> dict[str, str | None]:
        """Extend this instance's lease on ``ids``; id → cancel_requested_by of those it still follows."""
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        with self.batch():
            self._exec(f"UPDATE county_broadcasts SET lease_until = ? WHERE owner = ? AND id IN ({marks})",
                       (lease_until, owner, *ids))
            rows = self._query(f"SELECT id, cancel_requested_by FROM county_broadcasts "
                               f"WHERE owner = ? AND id IN ({marks})", (owner, *ids))
        return {r["id"]: r["cancel_requested_by"] for r in rows}

    def release_county_broadcasts(self, owner: str) -> int:
        """Let go of them now (a clean stop), so that the next instance to start takes them over at once."""
        return self._exec("UPDATE county_broadcasts SET owner = NULL, lease_until = NULL WHERE owner = ?",
                          (owner,))

    def request_county_broadcast_cancel(self, broadcast_id: str, actor: str) -> None:
        self._exec("UPDATE county_broadcasts SET cancel_requested_by = COALESCE(cancel_requested_by, ?) "
                   "WHERE id = ?", (actor, broadcast_id))

    def gateway_broadcast_reports(self, pairs: Sequence[tuple[str, str]], since: float | None = None
                                  ) -> list[tuple[str, str, dict[str, Any]]]:
        """The stored ``broadcasts/<id>`` reports of these (gateway, broadcast id), as (gateway, id,
        report): the state and every terminal's outcome, whichever county instance received them;
        with ``since``, only those stored (or updated) from then on. A few queries for any number."""
        wanted = set(pairs)
        ids = sorted({bid for _, bid in wanted})
        out: list[tuple[str, str, dict[str, Any]]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            after, params = ("", chunk) if since is None else (" AND updated_at >= ?", [*chunk, since])
            for table, kind in (("broadcasts", "broadcast.state"),
                                ("broadcast_outcomes", "broadcast.outcome")):
                for r in self._query(f"SELECT gateway, broadcast_id, seq, data FROM {table} "
                                     f"WHERE broadcast_id IN ({marks}){after}", params):
                    if (r["gateway"], r["broadcast_id"]) in wanted:
                        out.append((r["gateway"], r["broadcast_id"],
                                    {"seq": int(r["seq"]), "kind": kind, "data": _loads(r["data"])}))
        return out

    def gateway_events(self, gateway: str, kind: str, after_seq: int) -> list[tuple[int, dict[str, Any]]]:
        """(seq, data) of the gateway's stored reports of one kind after ``after_seq``, in order."""
        return [(int(r["seq"]), _loads(r["data"])) for r in self._query(
            "SELECT seq, data FROM events WHERE gateway = ? AND kind = ? AND seq > ? ORDER BY seq LIMIT 1000",
            (gateway, kind, after_seq))]

    def county_broadcasts(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: id, request, created_by, created_at, report (the last one stored), updated_at."""
        rows = self._query("SELECT * FROM county_broadcasts ORDER BY created_at DESC, id LIMIT ?", (limit,))
        return [self._county_broadcast(r) for r in rows]

    def county_broadcast(self, broadcast_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM county_broadcasts WHERE id = ?", (broadcast_id,))
        return self._county_broadcast(rows[0]) if rows else None

    @staticmethod
    def _county_broadcast(row: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in row.items() if k != "state"}, "request": _loads(row["request"]),
                "report": _loads(row["report"]), "following": row.get("state") is not None}

    # -- gaps -------------------------------------------------------------------------------------------

    def scan_state(self) -> dict[str, int]:
        """Per gateway, the highest seq the gap scan has looked at."""
        return {r["id"]: int(r["scanned_seq"]) for r in
                self._query("SELECT id, scanned_seq FROM gateways WHERE scanned_seq IS NOT NULL")}

    def gateways_with_unexplained_gaps(self) -> set[str]:
        return {r["gateway"] for r in
                self._query("SELECT DISTINCT gateway FROM gaps WHERE explained_by = 'unexplained'")}

    def seqs_after(self, gateway: str, after: int, received_before: float) -> list[int]:
        return [int(r["seq"]) for r in self._query(
            "SELECT seq FROM events WHERE gateway = ? AND seq > ? AND received_at <= ? ORDER BY seq",
            (gateway, after, received_before))]

    def set_scanned(self, gateway: str, seq: int) -> None:
        self._exec("""INSERT INTO gateways (id, scanned_seq) VALUES (?, ?)
                      ON CONFLICT (id) DO UPDATE SET scanned_seq = excluded.scanned_seq
                      WHERE gateways.scanned_seq IS NULL OR gateways.scanned_seq < excluded.scanned_seq""",
                   (gateway, seq))

    def add_gap(self, gateway: str, first: int, last: int, at: float) -> bool:
        return self._exec("""INSERT INTO gaps (gateway, first_missing, last_missing, detected_at,
                               explained_by) VALUES (?, ?, ?, ?, 'unexplained')
                             ON CONFLICT (gateway, first_missing) DO NOTHING""",
                          (gateway, first, last, at)) == 1

    def explain_gap(self, gap_id: int, explained_by: str) -> None:
        self._exec("UPDATE gaps SET explained_by = ? WHERE id = ?", (explained_by, gap_id))

    def gaps(self, gateway: str | None = None, unexplained_only: bool = False) -> list[dict[str, Any]]:
        clauses, params = [], []
        if gateway is not None:
            clauses.append("gateway = ?")
            params.append(gateway)
        if unexplained_only:
            clauses.append("explained_by = 'unexplained'")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._query(f"SELECT id, gateway, first_missing, last_missing, detected_at, explained_by "
                           f"FROM gaps {where} ORDER BY gateway, first_missing", params)

    def events_of_kind(self, gateway: str, kind: str) -> list[dict[str, Any]]:
        return [self._event(r) for r in self._query(
            "SELECT * FROM events WHERE gateway = ? AND kind = ? ORDER BY seq", (gateway, kind))]

    def health_around(self, gateway: str, first: int, last: int) -> tuple[dict[str, Any] | None,
                                                                          dict[str, Any] | None]:
        """The health report just before ``first`` and the first one after ``last`` (either may be None)."""
        before = self._query("SELECT * FROM events WHERE gateway = ? AND kind = 'gateway.health' AND seq < ? "
                             "ORDER BY seq DESC LIMIT 1", (gateway, first))
        after = self._query("SELECT * FROM events WHERE gateway = ? AND kind = 'gateway.health' AND seq > ? "
                            "ORDER BY seq LIMIT 1", (gateway, last))
        return (self._event(before[0]) if before else None, self._event(after[0]) if after else None)

    # -- tokens and audit -------------------------------------------------------------------------------

    def create_token(self, name: str, role: str) -> tuple[int, str]:
        """A new bearer token; returns (id, plaintext). Only its SHA-256 is kept."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not name.strip():
            raise ValueError("name must not be empty")
        plaintext = "ebcc_" + secrets.token_urlsafe(32)
        with self.batch():
            self._exec("INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                       (name, role, token_hash(plaintext), time.time()))
            rows = self._query("SELECT id FROM tokens WHERE hash = ?", (token_hash(plaintext),))
            token_id = int(rows[0]["id"])
        return token_id, plaintext

    def verify_token(self, plaintext: str) -> TokenInfo | None:
        rows = self._query("SELECT id, name, role FROM tokens WHERE hash = ? AND revoked = 0",
                           (token_hash(plaintext),))
        return TokenInfo(int(rows[0]["id"]), rows[0]["name"], rows[0]["role"]) if rows else None

    def token_active(self, token_id: int) -> bool:
        return bool(self._query("SELECT 1 AS ok FROM tokens WHERE id = ? AND revoked = 0", (token_id,)))

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, name, role, created_at, revoked, revoked_at FROM tokens ORDER BY id")
        for r in rows:
            r["revoked"] = bool(r["revoked"])
        return rows

    def revoke_token(self, token_id: int) -> bool:
        return self._exec("UPDATE tokens SET revoked = 1, revoked_at = ? WHERE id = ? AND revoked = 0",
                          (time.time(), token_id)) == 1

    def audit(self, actor: str, action: str, target: str | None = None, details: Any = None) -> None:
        self._exec("INSERT INTO audit (ts, actor, action, target, details) VALUES (?, ?, ?, ?, ?)",
                   (time.time(), actor, action, target, None if details is None else _dumps(details)))

    def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM audit ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?", (limit, offset))
        for r in rows:
            r["details"] = _loads(r["details"])
        return rows

    # -- retention --------------------------------------------------------------------------------------

    def prune(self, retention_days: float, now: float | None = None) -> dict[str, int]:
        """Delete history older than ``retention_days``; rows deleted per table."""
        cutoff = (now if now is not None else time.time()) - retention_days * 86400
        deleted = {}
        with self.batch():
            for table, column in (("events", "received_at"), ("broadcasts", "updated_at"),
                                  ("broadcast_outcomes", "updated_at"), ("gaps", "detected_at"),
                                  ("audit", "ts"), ("county_broadcasts", "updated_at")):
                deleted[table] = self._exec(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,))
        return deleted


def open_store(cfg: Any) -> Store:
    """The store a :class:`county.config.CountyConfig` names."""
    return Store.open(cfg.storage.url, None if cfg.storage.is_postgres else cfg.sqlite_path)
