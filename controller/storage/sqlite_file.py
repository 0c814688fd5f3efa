"""How every SQLite file of the gateway is opened: owner-only from its first byte, in WAL mode.

The journal (token hashes, audit), the MQTT outbox and the national-platform store all hold what
must survive a kill -9 and must not be readable by other users; one function opens them the same
way so no file is ever created with the umask's permissions or left in rollback-journal mode.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_wal(path: Path, what: str, error: type[Exception]) -> sqlite3.Connection:
    """A connection (autocommit, usable from any thread under the caller's lock) to ``path``,
    created 0600 in a 0700 directory if missing, switched to WAL with a 5 s busy timeout.

    Raises ``error`` with a message naming the file and ``what`` it is for.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise error(f"{path}: cannot create the {what} ({exc.strerror})") from None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.DatabaseError as exc:
        raise error(f"{path}: not a usable SQLite database ({exc})") from None
    if str(mode).lower() != "wal":
        conn.close()
        raise error(f"{path}: cannot switch to WAL mode (got {mode})")
    return conn
