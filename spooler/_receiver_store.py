"""The receiver's SQLite store: what it accepted, and a row for every request it saw.

Part of the dev tool :mod:`spooler.receiver`, not of the library a host imports. The
schema is meant to be read with the ``sqlite3`` CLI (see the receiver's docstring).
Writes go through one connection, opened while the receiver serves; reads open their own.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

from spooler._receiver_contract import Accepted
from spooler.spoolfile import APPLICATION_ID as SPOOL_APPLICATION_ID

__all__ = ["ReceiverStore"]

logger = logging.getLogger("spooler.receiver")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    event_name TEXT NOT NULL,
    status TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS heartbeats (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    idempotency_key TEXT,
    heartbeat TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    entries INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    gem_version TEXT,
    user_agent TEXT,
    content_type TEXT,
    authorized INTEGER NOT NULL DEFAULT 0,
    connection INTEGER,
    fault TEXT,
    note TEXT
);
"""
_INSERT_ENTRY = (
    "INSERT OR IGNORE INTO entries"
    " (entry_id, received_at, event_name, status, entry) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_HEARTBEAT = (
    "INSERT INTO heartbeats (received_at, idempotency_key, heartbeat) VALUES (?, ?, ?)"
)


class ReceiverStore:
    """The store behind a :class:`~spooler.receiver.Receiver`, and the methods that read it."""

    def __init__(self, db_path: str | os.PathLike[str] | None) -> None:
        if db_path is None:
            fd, path = tempfile.mkstemp(prefix="spooler-receiver-", suffix=".db")
            os.close(fd)
            db_path = path
        self.db_path = os.path.abspath(os.fspath(db_path))
        self._write_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._create_schema()

    # Reading what arrived

    def entry_count(self) -> int:
        """How many distinct entries are stored."""
        return int(self._query("SELECT count(*) FROM entries")[0][0])

    def entries(self) -> list[dict[str, Any]]:
        """The stored entries, in arrival order."""
        return [
            json.loads(row[0]) for row in self._query("SELECT entry FROM entries ORDER BY rowid")
        ]

    def entry_ids(self) -> list[str]:
        """The stored entry ids, in arrival order."""
        return [row[0] for row in self._query("SELECT entry_id FROM entries ORDER BY rowid")]

    def duplicate_count(self) -> int:
        """Entries received again (same entry_id) and dropped."""
        return int(self._query("SELECT coalesce(sum(duplicates), 0) FROM requests")[0][0])

    def heartbeats(self) -> list[dict[str, Any]]:
        """The stored heartbeats, oldest first."""
        return [
            json.loads(row[0])
            for row in self._query("SELECT heartbeat FROM heartbeats ORDER BY id")
        ]

    def requests(self) -> list[dict[str, Any]]:
        """Every request seen, oldest first: path, status, entries, idempotency_key, at, ..."""
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute("SELECT * FROM requests ORDER BY id")]

    # Writing, while the receiver serves

    def _open_writer(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    def _close_writer(self) -> None:
        with self._write_lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _record(self, log: dict[str, Any], accepted: Accepted | None = None) -> int:
        """Store what was accepted and the request's row in one transaction; how many stored.

        Entries already stored (the same ``entry_id``) are dropped and counted in the
        row's ``duplicates``.
        """
        with self._transaction() as conn:
            stored = 0
            if accepted is not None and accepted.kind == "heartbeat":
                text = json.dumps(accepted.documents[0], separators=(",", ":"))
                conn.execute(_INSERT_HEARTBEAT, (log["at"], log["idempotency_key"], text))
                stored = 1
            elif accepted is not None:
                for entry in accepted.documents:
                    text = json.dumps(entry, separators=(",", ":"))
                    row = (entry["entry_id"], log["at"], entry["event_name"], entry["status"], text)
                    stored += conn.execute(_INSERT_ENTRY, row).rowcount
                log["duplicates"] = len(accepted.documents) - stored
            columns = ", ".join(log)
            marks = ", ".join("?" for _ in log)
            conn.execute(f"INSERT INTO requests ({columns}) VALUES ({marks})", tuple(log.values()))
        return stored

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the receiver is not running")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _query(self, sql: str) -> list[Any]:
        with closing(self._connect()) as conn:
            return conn.execute(sql).fetchall()

    def _create_schema(self) -> None:
        with closing(self._connect()) as conn:
            if conn.execute("PRAGMA application_id").fetchone()[0] == SPOOL_APPLICATION_ID:
                # `receive --db .spooler/spool.db` would add the receiver's tables to a spool.
                raise ValueError(
                    f"{self.db_path} is a spooler spool, not a receiver database; "
                    "give the receiver a file of its own"
                )
            mode = conn.execute("PRAGMA journal_mode = wal").fetchone()[0]
            if mode != "wal":
                logger.debug("receiver store %s stays in %s journal mode", self.db_path, mode)
            conn.executescript(_SCHEMA)
