"""Opening a spool file: the folder, the file, WAL mode, the schema, damage.

:func:`open_db` is the one way spooler gets a connection to a spool file. It
creates the folder (0700) and the file (0600, so ``-wal`` and ``-shm`` inherit
the mode), puts the database in WAL mode, creates the schema once, and moves a
damaged file aside (with its ``-wal`` and ``-shm``) before starting afresh.

The schema is meant to be read with the plain ``sqlite3`` CLI::

    entries(id, kind, created_at, entry)       -- waiting rows, entry is JSON text
    dead_letters(id, kind, created_at, entry, rejected_at, status, reason)
    counters(name, value)                      -- shipped, evicted, dropped, invalid, ...
    meta(key, value)                           -- spool_id, last_delivery_at, last_error, ...
    spool_counters                             -- view: every counter, appended and waiting included
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from datetime import datetime, timezone

from spooler.errors import SpoolError

__all__ = [
    "COUNTER_NAMES",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "is_corrupt",
    "is_full",
    "open_db",
    "spool_files",
]

logger = logging.getLogger("spooler.spool")

SCHEMA_VERSION = 1
PAGE_SIZE = 4096
# SQLite result codes (sqlite3 exposes them only from Python 3.11).
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_OPEN_TIMEOUT = 2.0

#: Every counter a spool keeps, in the order ``status`` prints them.
COUNTER_NAMES = (
    "appended",
    "shipped",
    "evicted",
    "invalid",
    "dropped",
    "dead_lettered",
    "publish_batches",
    "publish_batch_events",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- append order, never reused
    kind       TEXT NOT NULL,                      -- emitted | published | dead_lettered
    created_at TEXT NOT NULL,                      -- the entry's timestamp, ISO 8601 UTC
    entry      TEXT NOT NULL                       -- the metadata entry as JSON
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,               -- the id it had in entries
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    entry       TEXT NOT NULL,
    rejected_at TEXT NOT NULL,
    status      INTEGER,                           -- HTTP status of the rejection
    reason      TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
CREATE VIEW IF NOT EXISTS spool_counters AS
    SELECT 'appended' AS name,
           COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0) AS value
    UNION ALL SELECT 'waiting', (SELECT count(*) FROM entries)
    UNION ALL SELECT 'dead_letters_kept', (SELECT count(*) FROM dead_letters)
    UNION ALL SELECT name, value FROM counters;
"""

_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "fuse.sshfs",
    "afs",
    "ceph",
    "glusterfs",
}


def spool_files(path: str | os.PathLike[str]) -> list[str]:
    """The database file and its ``-wal`` and ``-shm`` companions."""
    p = os.fspath(path)
    return [p, p + "-wal", p + "-shm"]


def now_iso() -> str:
    """The current UTC time as entries carry it: ``2026-01-15T10:30:00.123Z``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def is_full(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLITE_FULL (the cap or the disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code == _SQLITE_FULL)
    return "full" in str(exc)


class _CorruptError(sqlite3.DatabaseError):
    """PRAGMA quick_check found damage."""


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` means the file is damaged or not a database."""
    if isinstance(exc, _CorruptError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "not a database" in str(exc) or "malformed" in str(exc)


def open_db(
    path: str, *, wal_pages: int, busy_timeout: float, check: bool
) -> tuple[sqlite3.Connection, str | None]:
    """Open (creating if needed) the spool at ``path``; returns the connection and spool id.

    ``check`` runs ``PRAGMA quick_check`` on an existing file. A file that is not
    a database or fails the check is moved aside and a fresh spool starts.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _warn_network_fs(folder)
    try:
        return _connect(path, wal_pages=wal_pages, busy_timeout=busy_timeout, check=check)
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        _quarantine(path, str(exc))
        return _connect(path, wal_pages=wal_pages, busy_timeout=busy_timeout, check=False)


def _connect(
    path: str, *, wal_pages: int, busy_timeout: float, check: bool
) -> tuple[sqlite3.Connection, str | None]:
    fresh = _create_file(path)
    # Opening may wait for another process creating the schema; the caller's
    # (shorter) busy timeout applies from then on.
    conn = sqlite3.connect(
        path,
        timeout=max(busy_timeout, _OPEN_TIMEOUT),
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        if fresh or conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Must precede the first table; a no-op once tables exist.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"could not put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {wal_pages * PAGE_SIZE}")
        if check and not fresh:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _CorruptError(f"quick_check: {str(result)[:200]}")
        spool_id = _init_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn, spool_id


def _create_file(path: str) -> bool:
    """Create the database file 0600 so its -wal and -shm inherit the mode."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _init_schema(conn: sqlite3.Connection, path: str) -> str | None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('spool_id', ?), "
                    "('created_at', ?), ('schema_version', ?)",
                    (uuid.uuid4().hex, now_iso(), str(SCHEMA_VERSION)),
                )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    elif version > SCHEMA_VERSION:
        raise SpoolError(
            f"{path} has schema version {version}; this spooler reads {SCHEMA_VERSION}"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
    return row[0] if row else None


def _quarantine(path: str, reason: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for name in spool_files(path):
        # Move the database *with* its -wal and -shm, never one alone.
        with contextlib.suppress(FileNotFoundError):
            os.replace(name, f"{name}.corrupt-{stamp}")
    logger.error(
        "spool %s was unreadable (%s); moved it aside as *.corrupt-%s and started a fresh one",
        path,
        reason,
        stamp,
    )


def _warn_network_fs(folder: str) -> None:
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            rows = [line.split()[1:3] for line in mounts if line.strip()]
    except OSError:
        return
    real = os.path.realpath(folder)
    best = max(
        (r for r in rows if real == r[0] or real.startswith(r[0].rstrip("/") + "/")),
        key=lambda r: len(r[0]),
        default=None,
    )
    if best and best[1] in _NETWORK_FS:
        logger.warning(
            "spool folder %s is on a %s network filesystem; SQLite WAL needs a local disk",
            folder,
            best[1],
        )
