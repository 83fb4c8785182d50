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

Safety. spooler never writes through a symbolic link and never writes into a
file it did not create. Before SQLite sees the path:

* the folder is created 0700; an existing one must belong to this user (or
  root) and must not be writable by group or others, sticky ones like /tmp
  included: whoever can add names there can swap the spool for a link. This is
  what keeps the file checks below true until SQLite opens the files;
* the database and its ``-wal``, ``-shm`` and ``-journal`` must each be absent
  or a regular file of this user with one link (``lstat``; the database is also
  opened with ``O_NOFOLLOW``). Python's sqlite3 cannot pass
  SQLITE_OPEN_NOFOLLOW: it has no open flags, and a ``?nofollow=1`` URI
  parameter is silently ignored (checked on Python 3.10-3.13, SQLite 3.40);
* an existing database must be a spool (spooler's ``application_id``, an older
  spool's tables, or empty). Any other database is refused untouched.

Damage. A file that passed those checks but is not a database, or fails
``PRAGMA quick_check``, is renamed ``*.corrupt-<stamp>`` with its companions
(never written, never deleted) and a fresh spool starts.

Lost WAL frames. SQLite's recovery stops at the first damaged ``-wal`` frame
and silently drops every later one, committed or not. With ``check`` the WAL is
read before SQLite opens it; committed frames beyond what SQLite kept are
counted (``lost``), ``entries``' AUTOINCREMENT sequence is moved past them so no
``entry_id`` is ever reused, and one ERROR is logged.

Why one file of about 650 lines: every check that keeps a link, another user's
file or a foreign database from being opened is here, in the order it runs, so a
security review reads one file from the folder check to the schema.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from spooler.errors import SpoolError, UnsafeSpoolError
from spooler.timestamps import now_iso
from spooler.walscan import WalLoss, WalSnapshot, header_salts, read_wal, scan_lost

__all__ = [
    "APPLICATION_ID",
    "COUNTER_NAMES",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "OpenedSpool",
    "ensure_folder",
    "is_corrupt",
    "is_full",
    "open_db",
    "open_spool",
    "quarantine",
    "require_own_file",
    "spool_files",
    "verify",
]

logger = logging.getLogger("spooler.spool")

SCHEMA_VERSION = 2  # 2: spool_counters lists every counter, zeros included
PAGE_SIZE = 4096
#: ``PRAGMA application_id`` of every spool ("SPLR"); older spools get it at their next open.
APPLICATION_ID = 0x53504C52
# SQLite result codes (sqlite3 exposes them only from Python 3.11).
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_OPEN_TIMEOUT = 2.0
# Held while a new database file is created and its descriptor closed again.
_CREATING = threading.Lock()
_CREATING_FORK_WAIT = 1.0


def _creating_before_fork() -> None:
    global _held_at_fork
    _held_at_fork = _CREATING.acquire(timeout=_CREATING_FORK_WAIT)


def _creating_after_fork_in_parent() -> None:
    if _held_at_fork:
        _CREATING.release()


def _creating_after_fork_in_child() -> None:
    global _CREATING
    _CREATING = threading.Lock()  # another thread may have held it at the fork


_held_at_fork = False
os.register_at_fork(
    before=_creating_before_fork,
    after_in_parent=_creating_after_fork_in_parent,
    after_in_child=_creating_after_fork_in_child,
)
_SPOOL_TABLES = frozenset({"entries", "dead_letters", "counters", "meta"})
_COMPANIONS = ("-wal", "-shm", "-journal")
_BUMP = (
    "INSERT INTO counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)

#: Every counter a spool keeps, in the order ``status`` prints them.
COUNTER_NAMES = (
    "appended",
    "shipped",
    "evicted",
    "invalid",
    "dropped",
    "dead_lettered",
    "lost",
    "dead_letters_evicted",
    "filtered",
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
"""

_STORED_COUNTERS = ", ".join(f"('{name}')" for name in COUNTER_NAMES if name != "appended")
# Every counter, zeros included, in status order; then any other the table holds.
_COUNTERS_VIEW = f"""
DROP VIEW IF EXISTS spool_counters;
CREATE VIEW spool_counters AS
    SELECT 'appended' AS name,
           COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0) AS value
    UNION ALL SELECT 'waiting', (SELECT count(*) FROM entries)
    UNION ALL SELECT 'dead_letters_kept', (SELECT count(*) FROM dead_letters)
    UNION ALL SELECT * FROM (
        SELECT n.column1, COALESCE(c.value, 0)
        FROM (VALUES {_STORED_COUNTERS}) AS n LEFT JOIN counters AS c ON c.name = n.column1
    )
    UNION ALL SELECT name, value FROM counters
        WHERE name NOT IN (SELECT column1 FROM (VALUES {_STORED_COUNTERS}));
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


@dataclass(frozen=True)
class OpenedSpool:
    """A connection to a spool file, its spool id, and what opening it found lost."""

    conn: sqlite3.Connection
    spool_id: str | None
    #: Entries committed before a hard exit that SQLite dropped from a damaged WAL
    #: at this open (already added to the ``lost`` counter).
    lost: int = 0
    #: Committed transactions dropped with them.
    lost_transactions: int = 0


def open_db(
    path: str, *, wal_pages: int, busy_timeout: float, check: bool
) -> tuple[sqlite3.Connection, str | None]:
    """Open (creating if needed) the spool at ``path``; returns the connection and spool id.

    :func:`open_spool` with the result as a tuple; see there.
    """
    opened = open_spool(path, wal_pages=wal_pages, busy_timeout=busy_timeout, check=check)
    return opened.conn, opened.spool_id


def open_spool(
    path: str,
    *,
    wal_pages: int,
    busy_timeout: float,
    check: bool,
    quick_check: bool | None = None,
) -> OpenedSpool:
    """Open (creating if needed) the spool at ``path``.

    Raises :class:`~spooler.errors.UnsafeSpoolError` for a link, a file of
    another user or application, or a folder others may write to (see the
    module docstring). ``check`` runs ``PRAGMA quick_check`` on an existing
    file and counts committed transactions a damaged WAL lost. A file that is
    not a database or fails the check is moved aside and a fresh spool starts.
    ``quick_check=False`` leaves out the O(size) ``quick_check`` but still counts
    what the WAL lost (run :func:`verify` later, off the host's thread).
    """
    quick = check if quick_check is None else quick_check
    absolute = os.path.abspath(path)
    folder = ensure_folder(os.path.dirname(absolute))
    _warn_network_fs(folder)
    # The real folder: a link among its ancestors cannot be swapped between the
    # checks and SQLite's open.
    real = os.path.join(folder, os.path.basename(absolute))
    try:
        return _connect(
            real, wal_pages=wal_pages, busy_timeout=busy_timeout, check=check, quick=quick
        )
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        # Only reached for a regular file of this user with one link in a private
        # folder: _prepare refused anything else before SQLite saw it.
        _quarantine(real, str(exc))
        return _connect(
            real, wal_pages=wal_pages, busy_timeout=busy_timeout, check=False, quick=False
        )


def verify(conn: sqlite3.Connection) -> str | None:
    """``PRAGMA quick_check`` on an open spool: None when healthy, else what it found."""
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        return str(exc)
    return None if result == "ok" else str(result)[:200]


def quarantine(path: str, reason: str) -> None:
    """Move a damaged spool aside with its -wal and -shm (the caller closed it)."""
    _quarantine(path, reason)


def ensure_folder(folder: str) -> str:
    """Create ``folder`` 0700 if missing, else check that no other user can write to it.

    Returns its real path. Raises :class:`~spooler.errors.UnsafeSpoolError`
    naming the folder, its mode and the fix; never changes a folder's mode.
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    real = os.path.realpath(folder)
    st = os.stat(real)
    euid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSpoolError(folder, f"spool folder {folder} is not a folder")
    if st.st_uid not in (euid, 0):
        raise UnsafeSpoolError(
            folder,
            f"spool folder {folder} belongs to uid {st.st_uid}, but spooler runs as uid {euid}: "
            "its owner could swap the spool for a link to another file; "
            "give the spool a folder of this user's own",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if mode & stat.S_ISVTX:
            raise UnsafeSpoolError(
                folder,
                f"spool folder {folder} is shared by all users (mode {mode:04o}, like /tmp): "
                "others can create files there under the spool's names; give the spool a "
                f"folder of its own, e.g. {os.path.join(folder, 'spooler', 'spool.db')}",
            )
        raise UnsafeSpoolError(
            folder,
            f"spool folder {folder} is writable by other users (mode {mode:04o}): they could "
            f"swap the spool for a link to another file; fix: chmod 700 {folder}",
        )
    return real


def require_own_file(path: str, st: os.stat_result) -> None:
    """Raise :class:`~spooler.errors.UnsafeSpoolError` unless ``st`` (an ``lstat`` or
    ``fstat`` of ``path``) is a regular file of this user with a single link."""
    if stat.S_ISLNK(st.st_mode):
        target = ""
        with contextlib.suppress(OSError):
            target = f" to {os.readlink(path)}"
        raise UnsafeSpoolError(
            path,
            f"{path} is a symbolic link{target}; spooler never writes through a link "
            "(remove the link and spooler creates its own file)",
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeSpoolError(path, f"{path} is not a regular file; spooler leaves it alone")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeSpoolError(
            path,
            f"{path} belongs to uid {st.st_uid}, but spooler runs as uid {euid}; "
            "spooler only writes files it created",
        )
    if st.st_nlink != 1:
        raise UnsafeSpoolError(
            path,
            f"{path} has {st.st_nlink} hard links; writing to it would change "
            "a file under another name too",
        )


def _lstat_own(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    require_own_file(path, st)
    return st


def _connect(
    path: str, *, wal_pages: int, busy_timeout: float, check: bool, quick: bool
) -> OpenedSpool:
    fresh = _prepare(path)
    # Read before SQLite opens the file: its recovery decides which frames count.
    wal = read_wal(path + "-wal") if check and not fresh else None
    # Opening may wait for another process creating the schema; the caller's
    # (shorter) busy timeout applies from then on.
    timeout = max(busy_timeout, _OPEN_TIMEOUT)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    lost = WalLoss()
    try:
        if fresh or conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Must precede the first table; a no-op once tables exist.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"could not put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints run only fenced, from SpoolCore._checkpoint (the WAL-reset bug).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {wal_pages * PAGE_SIZE}")
        if quick and not fresh:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _CorruptError(f"quick_check: {str(result)[:200]}")
        if wal is not None:
            lost = _count_lost_frames(conn, path, wal)
        spool_id = _init_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return OpenedSpool(conn, spool_id, lost.rows, lost.transactions)


def _prepare(path: str) -> bool:
    """Check the spool's files and create the database 0600 (so its -wal and -shm
    inherit the mode); True when it was created now.

    An existing database is never opened with ``os.open`` here: closing that
    descriptor would drop every POSIX lock this process's SQLite connections hold
    on the file (sqlite.org/howtocorrupt.html, 2.2), and another process could
    then take the spool for unused, checkpoint and delete its WAL under us.
    SQLite itself reads the header (its VFS keeps such descriptors open).
    """
    for suffix in _COMPANIONS:
        _lstat_own(path + suffix)
    for _ in range(3):
        with _CREATING:
            try:
                # O_EXCL also refuses a link, a dangling one included.
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                pass
            else:
                # No connection can have this inode yet: this close drops nothing.
                os.close(fd)
                return True
        st = _lstat_own(path)
        if st is None:
            continue  # moved aside by another process meanwhile
        _identify(path, st)
        return False
    raise SpoolError(f"{path} kept disappearing while spooler opened it")


def _identify(path: str, st: os.stat_result) -> None:
    """Raise unless the database file is a spool, an empty database, or not a database."""
    if st.st_size == 0:
        return  # empty: a spool being created, or one that never got its schema
    # Read-only through SQLite. immutable=1 creates no -wal/-shm beside a file
    # that has none, i.e. that nobody has open in WAL mode.
    mode = "mode=ro" if os.path.exists(path + "-wal") else "immutable=1"
    uri = f"file:{urllib.parse.quote(path)}?{mode}"
    conn = sqlite3.connect(uri, uri=True, timeout=_OPEN_TIMEOUT)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise _CorruptError(str(exc)) from None
        raise
    finally:
        conn.close()
    if app_id:
        raise _foreign(path, app_id, None, None)
    tables.discard("sqlite_sequence")
    if version == 0 and not tables:
        return
    if version >= 1 and tables >= _SPOOL_TABLES:
        return  # a spool from before application_id; stamped by _init_schema
    raise _foreign(path, app_id, version, sorted(tables))


def _foreign(
    path: str, app_id: int, version: int | None, tables: list[str] | None
) -> UnsafeSpoolError:
    what = f"application_id {app_id:#010x}" if app_id else f"user_version {version}"
    if tables:
        shown = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "")
        what += f", tables {shown}"
    return UnsafeSpoolError(
        path,
        f"{path} is an SQLite database that is not a spool ({what}); spooler leaves it "
        "untouched. Point spool_path at a file of spooler's own",
    )


_SCHEMA_META = (
    "INSERT OR IGNORE INTO meta(key, value) VALUES ('spool_id', ?), "
    "('created_at', ?), ('schema_version', ?)"
)


def _create_schema(conn: sqlite3.Connection) -> None:
    """The tables, a new spool id and the version stamps; inside the caller's transaction."""
    for statement in (_SCHEMA + _COUNTERS_VIEW).split(";\n"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(_SCHEMA_META, (uuid.uuid4().hex, now_iso(), str(SCHEMA_VERSION)))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a spool written by an older spooler to this schema (in one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            for statement in _COUNTERS_VIEW.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _init_schema(conn: sqlite3.Connection, path: str) -> str | None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                _create_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    elif version > SCHEMA_VERSION:
        raise SpoolError(
            f"{path} has schema version {version}; this spooler reads {SCHEMA_VERSION}"
        )
    elif version < SCHEMA_VERSION:
        _migrate(conn)
    elif conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # a spool from before it
    row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
    return row[0] if row else None


def _quarantine(path: str, reason: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for name in [path] + [path + suffix for suffix in _COMPANIONS]:
        # Move the database *with* its -wal and -shm, never one alone.
        with contextlib.suppress(FileNotFoundError):
            os.replace(name, f"{name}.corrupt-{stamp}")
    logger.error(
        "spool %s was unreadable (%s); moved it aside as *.corrupt-%s and started a fresh one",
        path,
        reason,
        stamp,
    )


# -- lost WAL frames ------------------------------------------------------------------


def _count_lost_frames(conn: sqlite3.Connection, path: str, wal: WalSnapshot) -> WalLoss:
    """Count (and record) committed frames SQLite's recovery dropped from ``wal``."""
    try:
        # The write lock: no commit is half published while SQLite's count is read.
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        logger.warning("could not check %s-wal for lost transactions: %s", path, exc)
        return WalLoss()
    try:
        valid = _valid_frames(path)
        now = header_salts(path + "-wal")
        if valid < 0 or now != wal.salts:
            # Restarted or removed since it was read: another connection got there first.
            logger.debug("spool %s: WAL changed while being checked; no loss counted", path)
            conn.execute("COMMIT")
            return WalLoss()
        seq = _entries_seq(conn)
        loss = scan_lost(wal, valid, seq)
        if loss.rows:
            _record_loss(conn, loss)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if loss.rows:
        logger.error(
            "spool %s: its WAL was damaged after a hard exit; SQLite dropped %d committed "
            "transaction(s) holding %d entries (ids %d to %d), now counted as 'lost'. "
            "`sqlite3 %s .recover` cannot bring them back: they never reached the database",
            path,
            loss.transactions,
            loss.rows,
            seq + 1,
            loss.highest_id,
            path,
        )
    elif loss.transactions:
        logger.warning(
            "spool %s: its WAL was damaged after a hard exit; SQLite dropped %d committed "
            "transaction(s) holding no new entries (acknowledged rows may be sent again)",
            path,
            loss.transactions,
        )
    return loss


def _valid_frames(path: str) -> int:
    """How many WAL frames SQLite holds valid (``wal_checkpoint``'s log column).

    A second connection: the pragma refuses to run inside the caller's transaction.
    """
    other = sqlite3.connect(path, timeout=_OPEN_TIMEOUT, isolation_level=None)
    try:
        _busy, log, _done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        other.close()
    return int(log)


def _entries_seq(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
    except sqlite3.OperationalError:
        return 0  # no schema (yet): it was in the lost frames too
    return int(row[0]) if row else 0


def _record_loss(conn: sqlite3.Connection, loss: WalLoss) -> None:
    """Count the lost rows and move the id sequence past them, in the caller's transaction."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
        _create_schema(conn)  # the schema itself was in the lost frames
    conn.execute(_BUMP, ("lost", loss.rows))
    moved = conn.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'entries'", (loss.highest_id,)
    ).rowcount
    if not moved:
        conn.execute(
            "INSERT INTO sqlite_sequence(name, seq) VALUES ('entries', ?)", (loss.highest_id,)
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
