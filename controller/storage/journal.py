"""The journal: broadcasts and their outcomes, activations in flight, audit trail, tokens, schedules.

SQLite in WAL mode with ``synchronous=FULL``: when a method returns, the record is on disk, so a
202 that was answered survives a power cut or kill -9. One connection behind a threading lock —
every call is a few milliseconds, so async code may call it directly. The schema is versioned
with ``PRAGMA user_version``; :data:`MIGRATIONS` takes an older file forward step by step.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from controller.broadcast.model import BroadcastState, TerminalOutcome
from controller.core.actors import TOKEN_PREFIX, Actor, Role, TokenInfo
from controller.storage.sqlite_file import open_wal

DB_NAME = "ebc.sqlite3"

UNFINISHED = (BroadcastState.NOT_PROCESSED, BroadcastState.WAITING, BroadcastState.PLAYING)

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE broadcasts (
        id TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        state INTEGER NOT NULL,
        reason TEXT,
        actor TEXT NOT NULL,
        actor_role TEXT,
        actor_token_id TEXT,
        actor_remote TEXT,
        actor_via TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        coverage REAL
    );
    CREATE INDEX broadcasts_state ON broadcasts(state);
    CREATE INDEX broadcasts_created ON broadcasts(created_at);
    CREATE TABLE outcomes (
        broadcast_id TEXT NOT NULL REFERENCES broadcasts(id),
        device_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (broadcast_id, device_id)
    );
    CREATE TABLE notes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        broadcast_id TEXT NOT NULL REFERENCES broadcasts(id),
        ts REAL NOT NULL,
        text TEXT NOT NULL
    );
    CREATE TABLE activations (
        broadcast_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        prior_state TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (broadcast_id, device_id)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        role TEXT,
        token_id TEXT,
        remote TEXT,
        via TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked_at IS NULL;
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        cron TEXT NOT NULL,
        request TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: nonces of signed county commands, kept until they can no longer pass the freshness check
    """
    CREATE TABLE county_nonces (
        key_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (key_id, nonce)
    );
    CREATE INDEX county_nonces_expiry ON county_nonces(expires_at);
    """,
    # 3: the CAP alert inbox (controller/alerts/inbox.py): every alert received, raw document kept
    """
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        identifier TEXT NOT NULL,
        sent TEXT NOT NULL,
        msg_type TEXT NOT NULL,
        status TEXT NOT NULL,
        dialect TEXT NOT NULL,
        source TEXT NOT NULL,
        source_level TEXT,
        actor TEXT NOT NULL,
        actor_role TEXT,
        actor_token_id TEXT,
        actor_remote TEXT,
        actor_via TEXT NOT NULL,
        received_at REAL NOT NULL,
        expires_at REAL,
        summary TEXT NOT NULL,
        document BLOB NOT NULL,
        disposition TEXT NOT NULL,
        reason TEXT,
        rule TEXT,
        broadcast_id TEXT,
        plan TEXT,
        decided_by TEXT,
        decided_at REAL,
        approval_deadline REAL,
        on_timeout TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (sender, identifier, sent)
    );
    CREATE INDEX alerts_disposition ON alerts(disposition);
    CREATE INDEX alerts_received ON alerts(received_at);
    CREATE INDEX alerts_broadcast ON alerts(broadcast_id);
    """,
]
MIGRATIONS.append(
    # 4: the evidence behind each device outcome (joined_late, missed_s, audible_s, joined_at_s)
    "ALTER TABLE outcomes ADD COLUMN detail TEXT NOT NULL DEFAULT '{}'",
)
MIGRATIONS.append(
    # 5: county commands executed, by (verified key, correlation id): a retry is answered, not re-run
    """
    CREATE TABLE county_commands (
        key_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        command TEXT NOT NULL,
        args_sha256 TEXT NOT NULL,
        response TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (key_id, correlation_id)
    );
    CREATE INDEX county_commands_expiry ON county_commands(expires_at);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The state file cannot be used (newer schema, not a database, ...)."""


class DuplicateError(StoreError):
    """A record with that id or name already exists."""


def token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class Store:
    """The gateway's durable state in one SQLite file under ``state_dir``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # owner-only from the first byte: it holds token hashes and the audit trail
        self._conn = open_wal(self.path, "state database", StoreError)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> Store:
        return cls(Path(state_dir) / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- plumbing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (and fsynced) before the caller continues."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        version = self._query("PRAGMA user_version")[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this ebc "
                             f"understands ({SCHEMA_VERSION}); upgrade ebc")
        for step in range(version, SCHEMA_VERSION):
            with self._tx() as conn:
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={step + 1}")

    def journal_mode(self) -> str:
        return str(self._query("PRAGMA journal_mode")[0][0])

    # -- broadcasts ------------------------------------------------------------------------------

    def add_broadcast(self, broadcast_id: str, request: dict[str, Any], actor: Actor, state: BroadcastState,
                      created_at: float) -> None:
        """Journal a new broadcast; durable when this returns (the API answers 202 only after)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO broadcasts (id, request, state, actor, actor_role, actor_token_id,"
                    " actor_remote, actor_via, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (broadcast_id, _json(request), int(state), *_actor_columns(actor), created_at,
                     time.time()))
        except sqlite3.IntegrityError:
            raise DuplicateError(f"broadcast '{broadcast_id}' already exists") from None

    def set_state(self, broadcast_id: str, state: BroadcastState, *, reason: str | None = None,
                  started_at: float | None = None, finished_at: float | None = None,
                  coverage: float | None = None) -> None:
        """Record a state change; fields left None keep their stored value."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE broadcasts SET state=?, reason=COALESCE(?, reason),"
                " started_at=COALESCE(?, started_at), finished_at=COALESCE(?, finished_at),"
                " coverage=COALESCE(?, coverage), updated_at=? WHERE id=?",
                (int(state), reason, started_at, finished_at, coverage, time.time(), broadcast_id))
            if cur.rowcount == 0:
                raise KeyError(f"no broadcast '{broadcast_id}'")

    def set_outcome(self, broadcast_id: str, device_id: str, outcome: TerminalOutcome,
                    reason: str = "", detail: dict[str, Any] | None = None) -> None:
        """A device's outcome with the evidence figures behind it (controller/broadcast/evidence.py)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO outcomes (broadcast_id, device_id, outcome, reason, updated_at, detail)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (broadcast_id, device_id) DO UPDATE SET"
                " outcome=excluded.outcome, reason=excluded.reason, updated_at=excluded.updated_at,"
                " detail=excluded.detail",
                (broadcast_id, device_id, str(outcome), reason, time.time(), _json(detail or {})))

    def add_note(self, broadcast_id: str, text: str) -> None:
        """A free-text line in a broadcast's history (pre-empted, resumed, retried, ...)."""
        with self._tx() as conn:
            conn.execute("INSERT INTO notes (broadcast_id, ts, text) VALUES (?,?,?)",
                         (broadcast_id, time.time(), text))

    def get_broadcast(self, broadcast_id: str) -> dict[str, Any] | None:
        """One broadcast with its per-terminal ``outcomes``, ``notes`` and ``coverage``."""
        rows = self._query("SELECT * FROM broadcasts WHERE id=?", (broadcast_id,))
        if not rows:
            return None
        outcomes = [{"device_id": r["device_id"], "outcome": TerminalOutcome(r["outcome"]),
                     "reason": r["reason"], "updated_at": r["updated_at"], **json.loads(r["detail"])}
                    for r in self._query(
            "SELECT device_id, outcome, reason, updated_at, detail FROM outcomes WHERE broadcast_id=?"
            " ORDER BY device_id",
            (broadcast_id,))]
        notes = [{"ts": r["ts"], "text": r["text"]}
                 for r in self._query("SELECT ts, text FROM notes WHERE broadcast_id=? ORDER BY seq",
                                      (broadcast_id,))]
        out = _broadcast_dict(rows[0])
        if out["coverage"] is None and outcomes:
            done = sum(1 for o in outcomes if o["outcome"] is TerminalOutcome.SUCCEEDED)
            out["coverage"] = done / len(outcomes)
        return {**out, "outcomes": outcomes, "notes": notes}

    def list_broadcasts(self, limit: int = 50, offset: int = 0,
                        state: BroadcastState | None = None) -> list[dict[str, Any]]:
        """Newest first, without outcomes (use :meth:`get_broadcast` for one in full)."""
        where, params = ("WHERE state=?", (int(state),)) if state is not None else ("", ())
        rows = self._query(f"SELECT * FROM broadcasts {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                           (*params, limit, offset))
        return [_broadcast_dict(r) for r in rows]

    def unfinished_broadcasts(self) -> list[dict[str, Any]]:
        """Broadcasts not yet in a final state, oldest first (what a restart must deal with)."""
        marks = ",".join("?" * len(UNFINISHED))
        rows = self._query(f"SELECT id FROM broadcasts WHERE state IN ({marks}) ORDER BY created_at, id",
                           tuple(int(s) for s in UNFINISHED))
        return [b for r in rows if (b := self.get_broadcast(r["id"])) is not None]

    def broadcast_counts(self) -> dict[BroadcastState, int]:
        """How many broadcasts are in each state (for /metrics)."""
        counts = {state: 0 for state in BroadcastState}
        for row in self._query("SELECT state, COUNT(*) AS n FROM broadcasts GROUP BY state"):
            counts[BroadcastState(row["state"])] = row["n"]
        return counts

    def broadcast_durations(self, bounds: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
        """On-air time (last start to finish) of finished broadcasts, per class, for a histogram:
        ``{class: (cumulative count ≤ each bound, count, sum of seconds)}``."""
        marks = "".join(", SUM(d <= ?)" for _ in bounds)
        rows = self._query(
            f"SELECT cls, COUNT(*), TOTAL(d){marks} FROM (SELECT json_extract(request, '$.class') AS cls,"
            " MAX(finished_at - started_at, 0) AS d FROM broadcasts"
            " WHERE started_at IS NOT NULL AND finished_at IS NOT NULL) GROUP BY cls",
            tuple(bounds))
        return {str(r[0]): ([int(n) for n in tuple(r)[3:]], int(r[1]), float(r[2])) for r in rows}

    # -- activations in flight (kill -9 recovery) -------------------------------------------------

    def save_activation(self, broadcast_id: str, device_id: str, prior_state: dict[str, Any]) -> None:
        """Remember a terminal's state before it is touched, so a restart can put it back."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO activations (broadcast_id, device_id, prior_state, saved_at)"
                         " VALUES (?,?,?,?)", (broadcast_id, device_id, json.dumps(prior_state), time.time()))

    def clear_activation(self, broadcast_id: str, device_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM activations WHERE broadcast_id=? AND device_id=?",
                         (broadcast_id, device_id))

    def pending_activations(self) -> list[dict[str, Any]]:
        return [{"broadcast_id": r["broadcast_id"], "device_id": r["device_id"],
                 "prior_state": json.loads(r["prior_state"]), "saved_at": r["saved_at"]}
                for r in self._query("SELECT * FROM activations ORDER BY saved_at")]

    # -- audit trail -------------------------------------------------------------------------------

    def audit(self, actor: Actor, action: str, target: str = "",
              details: dict[str, Any] | None = None) -> None:
        """Record who did what, when, from where and with which token id (never the token)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO audit (ts, actor, role, token_id, remote, via, action, target, details)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), *_actor_columns(actor), action, target, _json(details or {})))

    def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""
        rows = self._query("SELECT * FROM audit ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]

    # -- nonces of signed county commands (replay protection) -------------------------------------

    def claim_nonce(self, key_id: str, nonce: str, expires_at: float, now: float) -> bool:
        """Hold ``nonce`` of ``key_id`` until ``expires_at``; False if it is already held (a replay).

        Durable before it returns, so a restart does not reopen the replay window. Check and insert
        are one transaction, so two deliveries of one command cannot both pass; nonces that expired
        by ``now`` are pruned in the same step.
        """
        with self._tx() as conn:
            conn.execute("DELETE FROM county_nonces WHERE expires_at <= ?", (now,))
            cur = conn.execute("INSERT OR IGNORE INTO county_nonces (key_id, nonce, expires_at)"
                               " VALUES (?,?,?)", (key_id, nonce, expires_at))
            return cur.rowcount == 1

    # -- county commands by correlation id (idempotent execution) ---------------------------------

    def claim_command(self, key_id: str, correlation_id: str, command: str, args_sha256: str,
                      expires_at: float, now: float) -> dict[str, Any] | None:
        """Claim (key, correlation id) for executing ``command``; None if claimed now, else the row
        already held: ``command``, ``args_sha256`` and ``response`` (None while it runs, or if the
        gateway stopped before it finished).

        Durable before it returns and one transaction with the check, like :meth:`claim_nonce`, so
        a restart cannot run a command twice; rows expired by ``now`` are pruned in the same step.
        """
        with self._tx() as conn:
            conn.execute("DELETE FROM county_commands WHERE expires_at <= ?", (now,))
            cur = conn.execute(
                "INSERT OR IGNORE INTO county_commands (key_id, correlation_id, command, args_sha256,"
                " created_at, expires_at) VALUES (?,?,?,?,?,?)",
                (key_id, correlation_id, command, args_sha256, now, expires_at))
            if cur.rowcount == 1:
                return None
            row = conn.execute("SELECT command, args_sha256, response, created_at FROM county_commands"
                               " WHERE key_id=? AND correlation_id=?", (key_id, correlation_id)).fetchone()
        return {"command": row["command"], "args_sha256": row["args_sha256"], "created_at": row["created_at"],
                "response": None if row["response"] is None else json.loads(row["response"])}

    def finish_command(self, key_id: str, correlation_id: str, response: dict[str, Any] | None) -> None:
        """Keep the response of a claimed command; None releases the claim (it was not executed)."""
        with self._tx() as conn:
            if response is None:
                conn.execute("DELETE FROM county_commands WHERE key_id=? AND correlation_id=?",
                             (key_id, correlation_id))
            else:
                conn.execute("UPDATE county_commands SET response=? WHERE key_id=? AND correlation_id=?",
                             (_json(response), key_id, correlation_id))

    # -- CAP alert inbox ---------------------------------------------------------------------------

    def add_alert(self, record: dict[str, Any], actor: Actor) -> None:
        """Keep a received alert (and its raw document) before anything acts on it.

        ``record`` has the columns of the ``alerts`` table (``summary`` and ``plan`` as dicts).
        Raises DuplicateError when (sender, identifier, sent) is already stored: the dedup key.
        """
        row = {**record, "summary": _json(record["summary"]),
               "plan": None if record.get("plan") is None else _json(record["plan"])}
        row.update(zip(("actor", "actor_role", "actor_token_id", "actor_remote", "actor_via"),
                       _actor_columns(actor), strict=True))
        row["updated_at"] = time.time()
        names = ", ".join(row)
        try:
            with self._tx() as conn:
                conn.execute(f"INSERT INTO alerts ({names}) VALUES ({','.join('?' * len(row))})",
                             tuple(row.values()))
        except sqlite3.IntegrityError:
            raise DuplicateError(f"alert ({record['sender']}, {record['identifier']}, {record['sent']}) "
                                 f"is already stored") from None

    _ALERT_FIELDS = frozenset({"disposition", "reason", "rule", "broadcast_id", "plan", "decided_by",
                               "decided_at", "approval_deadline", "on_timeout"})

    def update_alert(self, alert_id: str, *, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Change an alert's decision fields; with ``expect``, only while its disposition is one of
        those (so a timeout and a duty officer cannot both decide one alert). True if it changed."""
        unknown = set(fields) - self._ALERT_FIELDS
        if unknown:
            raise ValueError(f"not an alert decision field: {', '.join(sorted(unknown))}")
        values = {k: (_json(v) if k == "plan" and v is not None else v) for k, v in fields.items()}
        sets = ", ".join(f"{k}=?" for k in values)
        where, params = "id=?", [alert_id]
        if expect is not None:
            where += f" AND disposition IN ({','.join('?' * len(expect))})"
            params += list(expect)
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE alerts SET {sets}, updated_at=? WHERE {where}",
                               (*values.values(), time.time(), *params))
            return cur.rowcount == 1

    def get_alert(self, alert_id: str, *, document: bool = False) -> dict[str, Any] | None:
        """One alert; with ``document`` also its raw CAP document (bytes, as received)."""
        rows = self._query("SELECT * FROM alerts WHERE id=?", (alert_id,))
        return _alert_dict(rows[0], document) if rows else None

    def find_alerts(self, sender: str, identifier: str, sent: str | None = None) -> list[dict[str, Any]]:
        """Alerts with this sender and identifier (and ``sent`` as written, if given), oldest first."""
        if sent is None:
            rows = self._query("SELECT * FROM alerts WHERE sender=? AND identifier=? ORDER BY received_at",
                               (sender, identifier))
        else:
            rows = self._query("SELECT * FROM alerts WHERE sender=? AND identifier=? AND sent=?",
                               (sender, identifier, sent))
        return [_alert_dict(r) for r in rows]

    def list_alerts(self, disposition: str | Sequence[str] | None = None, limit: int = 50,
                    offset: int = 0, *, oldest_first: bool = False) -> list[dict[str, Any]]:
        """Newest first (or oldest first), optionally only those with the given disposition(s)."""
        wanted = [disposition] if isinstance(disposition, str) else list(disposition or [])
        where = f"WHERE disposition IN ({','.join('?' * len(wanted))})" if wanted else ""
        order = "ASC" if oldest_first else "DESC"
        rows = self._query(f"SELECT * FROM alerts {where} ORDER BY received_at {order}, id {order}"
                           f" LIMIT ? OFFSET ?", (*wanted, limit, offset))
        return [_alert_dict(r) for r in rows]

    def alert_counts(self) -> dict[str, int]:
        """How many alerts have each disposition."""
        return {r["disposition"]: r["n"] for r in
                self._query("SELECT disposition, COUNT(*) AS n FROM alerts GROUP BY disposition")}

    # -- tokens ------------------------------------------------------------------------------------

    def create_token(self, name: str, role: Role) -> str:
        """A new bearer token; the plaintext is returned once and only its SHA-256 is kept."""
        if not name.strip():
            raise ValueError("a token needs a name")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._tx() as conn:
                conn.execute("INSERT INTO tokens (id, name, role, sha256, created_at) VALUES (?,?,?,?,?)",
                             ("tk_" + secrets.token_hex(6), name, Role(role).value, token_hash(plaintext),
                              time.time()))
        except sqlite3.IntegrityError:
            raise DuplicateError(f"a token named '{name}' already exists (revoke it first)") from None
        return plaintext

    def verify_token(self, plaintext: str) -> TokenInfo | None:
        """The active token matching ``plaintext``; every stored hash is compared in constant time."""
        digest = token_hash(plaintext)
        found: TokenInfo | None = None
        for row in self._query("SELECT * FROM tokens WHERE revoked_at IS NULL"):
            if hmac.compare_digest(row["sha256"], digest):
                found = _token_info(row)
        return found

    def token_active(self, token_id: str) -> bool:
        """True while the token ``token_id`` exists and is not revoked (also by another process:
        ``ebc token revoke`` writes this file, and every read sees its last commit)."""
        return bool(self._query("SELECT 1 FROM tokens WHERE id=? AND revoked_at IS NULL", (token_id,)))

    def list_tokens(self) -> list[TokenInfo]:
        """Active tokens (names, roles, ids; never secrets)."""
        return [_token_info(r) for r in
                self._query("SELECT * FROM tokens WHERE revoked_at IS NULL ORDER BY created_at, name")]

    def revoke_token(self, name: str) -> bool:
        """Revoke the active token called ``name``; False if there is none."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE tokens SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
                               (time.time(), name))
            return cur.rowcount > 0

    # -- schedules created through the API -----------------------------------------------------------

    def list_schedules(self) -> list[dict[str, Any]]:
        return [{**dict(r), "request": json.loads(r["request"]), "enabled": bool(r["enabled"])}
                for r in self._query("SELECT * FROM schedules ORDER BY id")]

    def add_schedule(self, id: str, cron: str, request: dict[str, Any], enabled: bool = True) -> None:
        try:
            with self._tx() as conn:
                conn.execute("INSERT INTO schedules (id, cron, request, enabled, created_at)"
                             " VALUES (?,?,?,?,?)", (id, cron, _json(request), int(enabled), time.time()))
        except sqlite3.IntegrityError:
            raise DuplicateError(f"schedule '{id}' already exists") from None

    def delete_schedule(self, id: str) -> bool:
        with self._tx() as conn:
            return conn.execute("DELETE FROM schedules WHERE id=?", (id,)).rowcount > 0


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _actor_columns(actor: Actor) -> tuple[str, str | None, str | None, str | None, str]:
    """name, role, token id, remote address, via — in the column order both tables use."""
    return actor.name, actor.role.value if actor.role else None, actor.token_id, actor.remote, actor.via


def _broadcast_dict(row: sqlite3.Row) -> dict[str, Any]:
    request = json.loads(row["request"])
    return {
        "id": row["id"],
        "class": request.get("class"),
        "title": request.get("title", ""),
        "request": request,
        "state": BroadcastState(row["state"]),
        "reason": row["reason"],
        "actor": {"name": row["actor"], "role": row["actor_role"], "token_id": row["actor_token_id"],
                  "remote": row["actor_remote"], "via": row["actor_via"]},
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "updated_at": row["updated_at"],
        "coverage": row["coverage"],
    }


def _alert_dict(row: sqlite3.Row, document: bool = False) -> dict[str, Any]:
    hidden = ("document", "actor", "actor_role", "actor_token_id", "actor_remote", "actor_via")
    out = {k: v for k, v in dict(row).items() if k not in hidden}
    out["summary"] = json.loads(row["summary"])
    out["plan"] = json.loads(row["plan"]) if row["plan"] is not None else None
    out["actor"] = {"name": row["actor"], "role": row["actor_role"], "token_id": row["actor_token_id"],
                    "remote": row["actor_remote"], "via": row["actor_via"]}
    if document:
        out["document"] = bytes(row["document"])
    return out


def _token_info(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(id=row["id"], name=row["name"], role=Role(row["role"]), created_at=row["created_at"])
