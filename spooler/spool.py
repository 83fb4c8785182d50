"""The durable local spool: one size-capped SQLite file in WAL mode.

Appenders (the host's hooks, in any number of threads and processes) add
entries; one shipper reads them in primary-key order, acknowledges what the
Cloud took (rows are deleted), moves what it rejected to ``dead_letters`` and
checkpoints the WAL. When the file would pass its cap the oldest rows are
evicted, and every loss is counted in ``counters``.

Opening the file and its schema live in :mod:`spooler.spoolfile`; reading a
snapshot of it in :mod:`spooler.stats`.

Size: ``max_page_count`` caps the main file, ``wal_autocheckpoint`` and
``journal_size_limit`` bound the WAL, and ``auto_vacuum=INCREMENTAL`` lets a
drained spool give pages back. See README "How the cap works".
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spooler._logging import Throttle
from spooler.errors import SpoolBusyError, SpoolError
from spooler.spoolfile import (
    COUNTER_NAMES,
    PAGE_SIZE,
    SCHEMA_VERSION,
    is_full,
    now_iso,
    open_spool,
    quarantine,
    spool_files,
    verify,
)
from spooler.stats import SpoolStats, collect_stats, iso_epoch, read_stats

__all__ = [
    "COUNTER_NAMES",
    "SCHEMA_VERSION",
    "Spool",
    "SpoolBatch",
    "SpoolRow",
    "SpoolStats",
    "iso_epoch",
    "now_iso",
    "read_stats",
    "spool_files",
]

logger = logging.getLogger(__name__)

_WAL_FRAME = PAGE_SIZE + 24
_SHM_BYTES = 32 * 1024
DEAD_LETTER_KEEP = 10_000
_encode = json.JSONEncoder(separators=(",", ":")).encode
_BUMP = (
    "INSERT INTO counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)
_MAX_STEP = 1 << 31  # the largest step one count() may add
_MAX_PENDING = 1 << 53  # pending counters saturate here instead of overflowing SQLite
# Handles inherited across a fork: kept alive and unused (SQLite forbids closing them).
_OPEN_WAIT = 5.0
_TROUBLE_LOG_INTERVAL = 300.0  # seconds between WARNINGs while the cap keeps evicting
_INHERITED: list[sqlite3.Connection] = []
_INSERT_ONE = "INSERT INTO entries(kind, created_at, entry) VALUES (?, ?, ?)"
# Positional placeholders in order: numbered ones bound to a sequence are
# deprecated from Python 3.12 and refused from 3.14.
_INSERT_MANY = (
    "INSERT INTO entries(kind, created_at, entry) "
    "SELECT coalesce(json_extract(value, '$.status'), 'unknown'), "
    "coalesce(json_extract(value, '$.timestamp'), ?), value "
    "FROM json_each(?) ORDER BY key"
)


@dataclass(frozen=True)
class SpoolRow:
    """One waiting entry as read back from the spool: its JSON text, parsed on demand."""

    id: int
    kind: str
    created_at: str
    text: str

    @property
    def entry(self) -> dict[str, Any]:
        """The entry as a dict (parsed from ``text`` on each access)."""
        value = json.loads(self.text)
        if not isinstance(value, dict):
            raise ValueError("entry is not a JSON object")
        return value


_LIVE: weakref.WeakSet[Spool] = weakref.WeakSet()
_FORK_WAIT = 1.0  # how long a fork waits for a spool transaction in another thread to end
_held_for_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # A child forked while SQLite's in-process lock state says "inside a transaction"
    # could never write to the spool (SQLite shares that state between connections of
    # one process). Let a transaction in another thread finish first.
    # The same for a quick_check running on its own connection: a child forked while
    # another thread is inside SQLite could hang on SQLite's own mutexes.
    for spool in list(_LIVE):
        if spool._pid != os.getpid():
            continue
        for lock in (spool._lock, spool._verifying):
            if lock.acquire(timeout=_FORK_WAIT):
                _held_for_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_for_fork.clear()  # the child replaces each spool's lock on first use


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


@dataclass(frozen=True)
class SpoolBatch:
    """A batch read as one request body: rows ``first_id..last_id``, ``count`` of them."""

    first_id: int
    last_id: int
    count: int
    body: str


class _WalFull(Exception):
    """The WAL is past its hard limit; wait for the writer thread's checkpoint."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def encode_row(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """An entry as the row the spool stores: (kind, created_at, JSON text)."""
    created = entry.get("timestamp")
    if not isinstance(created, str):
        created = now_iso()
    return (str(entry.get("status") or "unknown"), created, _encode(entry))


class Spool:
    """A size-capped SQLite WAL spool, safe for many threads and processes.

    Writes never raise into the caller: ``append``/``append_many`` return how
    much was accepted and count the rest as ``dropped``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 64 << 20,
        busy_timeout: float = 0.05,
        check: bool = True,
        lazy: bool = False,
        checkpoints: bool = True,
        on_wal_full: Callable[[], object] | None = None,
        quick_check: bool | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = int(max_bytes)
        self.busy_timeout = float(busy_timeout)
        self._wal_path = self.path + "-wal"
        self._wal_fd: int | None = None
        self._wal_fd_pid = 0
        self._wal_looks = 0
        # The WAL's share of the cap. A write starts only while the WAL is under its
        # hard limit (1.5x the checkpoint threshold) and one transaction writes at
        # most half a threshold: the WAL peaks at 2x the threshold plus a few pages.
        self._wal_pages = max(16, min(1024, self.max_bytes // 8 // PAGE_SIZE))
        reserve = _SHM_BYTES + 32 + (self._wal_pages * 2 + 8) * _WAL_FRAME
        self._max_pages = max(32, (self.max_bytes - reserve) // PAGE_SIZE)
        self._soft_wal = self._wal_pages * _WAL_FRAME + 32
        self._hard_wal = int(self._wal_pages * 1.5) * _WAL_FRAME + 32
        # Entry text per transaction: with eviction and b-tree bookkeeping this
        # stays under half a threshold of WAL frames.
        self._txn_bytes = self._wal_pages * PAGE_SIZE // 4
        self.checkpoints = checkpoints
        self.on_wal_full = on_wal_full
        self._appends = 0
        self._lock = threading.Lock()
        self._verifying = threading.Lock()  # held while quick_check runs (see _before_fork)
        self._checker: sqlite3.Connection | None = None  # its connection, for close()
        self._delivery_noted = -1e9  # time.monotonic() of the last last_delivery_at written
        self._pending_lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._logged: set[str] = set()
        self._throttle = Throttle(_TROUBLE_LOG_INTERVAL)
        self._evicted_unlogged = 0
        self._pid = os.getpid()
        self.spool_id: str | None = None
        self._check = check
        self._quick = check if quick_check is None else quick_check
        self._reopen = False
        #: Entries a damaged WAL had lost, found (and counted as ``lost``) at open.
        self.lost_at_open = 0
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        _LIVE.add(self)
        if not lazy:
            self._conn = self._open(check=check)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Spool:
        """Open the spool a :class:`~spooler.config.Config` names."""
        return cls(config.spool_path, max_bytes=config.spool_max_bytes, **kwargs)

    def _open(self, *, check: bool) -> sqlite3.Connection:
        opened = open_spool(
            self.path,
            wal_pages=self._wal_pages,
            busy_timeout=self.busy_timeout,
            check=check,
            quick_check=check and self._quick,
        )
        conn, self.spool_id = opened.conn, opened.spool_id
        self.lost_at_open += opened.lost
        try:
            self._apply_cap(conn)
            if not self.checkpoints:
                # The host's connection: checkpoints happen on the writer thread.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def ensure_open(self) -> None:
        """Open the file now (with ``quick_check`` if this spool checks) if not yet open."""
        with self._locked(_OPEN_WAIT):
            pass

    def verify(self) -> bool:
        """``PRAGMA quick_check`` the file (O(size): never on the host's thread).

        The check runs on a connection of its own, so this spool keeps writing and
        checkpointing meanwhile. A damaged file is moved aside with its -wal and
        -shm and a fresh spool opened in its place. Returns True when it was healthy.
        """
        with self._verifying:
            if self._closed:
                return True  # closed meanwhile: no connection may outlive close()
            checker = sqlite3.connect(self.path, timeout=_OPEN_WAIT, isolation_level=None)
            self._checker = checker
            try:
                problem = verify(checker)
            except sqlite3.OperationalError:
                if self._closed:  # close() interrupted the check: not a verdict
                    return True
                raise
            finally:
                self._checker = None
                checker.close()  # SQLite's own close: it keeps the locks of other connections
        if problem is None:
            return True
        with self._locked(_OPEN_WAIT) as conn:
            conn.close()
            self._conn = None
            quarantine(self.path, problem)
            self._conn = self._open(check=False)
        return False

    def request_reopen(self) -> None:
        """Open the file anew on next use (another connection moved a damaged one aside)."""
        self._reopen = True

    def _apply_cap(self, conn: sqlite3.Connection) -> None:
        got = conn.execute(f"PRAGMA max_page_count = {self._max_pages}").fetchone()[0]
        if got <= self._max_pages:
            return
        # The file is already larger than this cap (the cap was lowered):
        # evict the oldest rows until the data fits, then give pages back.
        logger.warning("spool %s is larger than its cap; evicting the oldest entries", self.path)
        while True:
            used = (
                conn.execute("PRAGMA page_count").fetchone()[0]
                - conn.execute("PRAGMA freelist_count").fetchone()[0]
            )
            if used <= self._max_pages * 0.9:
                break
            conn.execute("BEGIN IMMEDIATE")
            removed = self._evict(conn, 512)
            conn.execute("COMMIT")
            if not removed:
                break
        conn.executescript("PRAGMA incremental_vacuum;")
        conn.execute(f"PRAGMA max_page_count = {self._max_pages}")

    # -- connection handling ---------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout: float | None) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():
            self._after_fork()
        wait = self.busy_timeout if timeout is None else timeout
        if not self._lock.acquire(timeout=wait):
            raise SpoolBusyError("spool is busy in this process")
        try:
            if self._reopen and self._conn is not None:
                self._reopen = False
                self._conn.close()
                self._conn = None
            if self._conn is None:
                if self._closed:
                    raise SpoolError("spool is closed")
                try:
                    self._conn = self._open(check=self._check)
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise SpoolBusyError("spool is being created by another process") from None
                    raise
            yield self._conn
        finally:
            self._lock.release()

    def _after_fork(self) -> None:
        # A SQLite connection or lock must never cross a fork. Closing the
        # parent's connection here is forbidden too (SQLite may unlock or delete
        # what the parent still uses): park it, never to be touched or freed.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._verifying = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = {}
        self._check = False
        self._checker = None
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None  # reopened on first use in this process

    def _write(self, conn: sqlite3.Connection, work: Any, timeout: float | None) -> Any:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE transaction with pending counters.

        The WAL is measured once the write lock is held (no other writer can grow
        it then): past its hard limit nothing is written until a checkpoint has
        given the space back, so db + wal + shm stay within the cap at every instant.
        """
        if timeout == self.busy_timeout:
            timeout = None  # already in force: skip two PRAGMA round trips
        if timeout is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            for attempt in range(3):
                conn.execute("BEGIN IMMEDIATE")
                if self._wal_size() <= self._hard_wal or attempt == 2:
                    break
                conn.execute("ROLLBACK")
                self._checkpoint(conn, "TRUNCATE")
            try:
                result = work(conn)
                self._flush_pending(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if timeout is not None:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        self._clear_pending()
        return result

    def _transaction(self, work: Any, timeout: float | None) -> Any:
        """``work(conn)`` in one write transaction on this process's connection."""
        with self._locked(timeout) as conn:
            return self._write(conn, work, timeout)

    def _flush_pending(self, conn: sqlite3.Connection) -> None:
        with self._pending_lock:
            pending = dict(self._pending)
        self._flushed = {}
        if not pending:
            return
        try:
            conn.executemany(_BUMP, pending.items())
        except sqlite3.Error as exc:
            # Counters must never cost an entry its place: keep them for the next write.
            self._log_once("counters", "spool could not record its counters yet: %s", exc)
            return
        self._flushed = pending

    def _clear_pending(self) -> None:
        flushed = getattr(self, "_flushed", {})
        if flushed:
            with self._pending_lock:
                for name, n in flushed.items():
                    left = self._pending.get(name, 0) - n
                    if left:
                        self._pending[name] = left
                    else:
                        self._pending.pop(name, None)
            self._flushed = {}

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(message, *args)

    # -- the WAL's share of the cap --------------------------------------------------

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _wal_size_fast(self) -> int:
        """The WAL's size through a descriptor kept open on it: one lseek (a path lookup
        costs 4 us on a small VM). SQLite puts no locks on the -wal file, so this
        descriptor cannot disturb them; it is opened anew every 64 looks, in case the
        WAL was removed and created again meanwhile."""
        self._wal_looks += 1
        fd = self._wal_fd
        if fd is not None and (self._wal_looks & 63 == 0 or self._wal_fd_pid != os.getpid()):
            self._close_wal_fd()
            fd = None
        if fd is None:
            try:
                fd = os.open(self._wal_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return 0
            self._wal_fd, self._wal_fd_pid = fd, os.getpid()
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            return 0

    def _close_wal_fd(self) -> None:
        fd, self._wal_fd = self._wal_fd, None
        if fd is not None and self._wal_fd_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)

    def wal_over(self) -> bool:
        """Whether the WAL has passed its soft limit and wants a checkpoint."""
        return self._wal_size() > self._soft_wal

    def checkpoint(self, *, timeout: float = 1.0) -> bool:
        """Give the WAL's space back when it has passed its soft limit (never on the
        host's thread: the reporter's writer thread and the shipper call this).

        A TRUNCATE checkpoint waits up to ``timeout`` for readers to move on. Returns
        whether the WAL is within its soft limit afterwards. Never raises.
        """
        size = self._wal_size()
        if size <= self._soft_wal:
            return True
        # PASSIVE copies what it can without blocking writers; the next write then
        # restarts the WAL from its start. TRUNCATE (which holds writers back while
        # it waits for readers) only when the file itself has grown past its limit.
        mode = "TRUNCATE" if size > self._hard_wal else "PASSIVE"
        try:
            with self._locked(timeout) as conn:
                self._checkpoint(conn, mode)
        except Exception as exc:
            self._log_once("checkpoint", "spool checkpoint failed: %s", exc)
        return not self.wal_over()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        for attempt in range(5):
            try:
                busy = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
            except sqlite3.Error:
                return
            if not busy:
                return
            # Another connection was checkpointing; that lock has no busy handler.
            time.sleep(0.001 * (attempt + 1))

    # -- appending -------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter; it reaches the file with the next write. Never raises.

        ``n`` must be an int from 0 to 2**31; anything else is ignored (and logged
        once), so no value from the host can reach SQLite or spoil another write.
        """
        if type(n) is not int or not 0 <= n <= _MAX_STEP:
            self._log_once("count:" + name, "spool ignored a bad step for counter %s", name)
            return
        if n:
            with self._pending_lock:
                self._pending[name] = min(self._pending.get(name, 0) + n, _MAX_PENDING)

    def append(self, entry: Mapping[str, Any]) -> bool:
        """Append one entry; False (and counted as dropped) if it could not be stored."""
        return self.append_many((entry,)) == 1

    def append_many(
        self,
        entries: Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
        raise_on_busy: bool = False,
    ) -> int:
        """Append entries (in as few transactions as the WAL budget allows); returns how many
        were stored.

        Never raises, except :class:`SpoolBusyError` when ``raise_on_busy`` is
        set and another writer held the lock past ``timeout``: its ``stored``
        says how many of the first entries were stored before that; the caller
        keeps the rest (nothing is counted). Anything else that fails is counted
        as ``dropped``.
        """
        if not entries:
            return 0
        try:
            rows = [encode_row(e) for e in entries]
        except Exception as exc:  # an entry that cannot be encoded
            self.count("dropped", len(entries))
            self._log_once("encode", "spool dropped entries it could not encode: %s", exc)
            return 0
        return self.append_rows(rows, timeout=timeout, raise_on_busy=raise_on_busy)

    def append_rows(
        self,
        rows: Sequence[tuple[str, str, str]],
        *,
        timeout: float | None = None,
        raise_on_busy: bool = False,
    ) -> int:
        """:meth:`append_many` for rows already encoded by :func:`encode_row`."""
        stored = 0
        for chunk in self._chunks(rows):
            try:
                with self._locked(timeout) as conn:
                    work = functools.partial(self._insert, rows=chunk)
                    stored += int(self._write(conn, work, timeout))
                    self._appends += 1
                    continue
            except SpoolBusyError:
                if raise_on_busy:
                    raise SpoolBusyError("spool is busy", stored=stored) from None
                self._log_once("busy", "spool dropped entries: another writer held the lock")
            except sqlite3.OperationalError as exc:
                if raise_on_busy and _is_busy(exc):
                    raise SpoolBusyError(
                        "spool is locked by another writer", stored=stored
                    ) from None
                self._log_once(type(exc).__name__ + str(exc), "spool dropped entries: %s", exc)
            except Exception as exc:
                self._log_once(type(exc).__name__, "spool dropped entries: %s", exc)
            self.count("dropped", len(chunk))
            # Later chunks may wait longer: part of this call is already stored.
            timeout = max(timeout or self.busy_timeout, 1.0)
        return stored

    def append_now(self, row: tuple[str, str, str], *, deadline: float) -> bool:
        """Commit one encoded row before returning (immediate mode, the host's thread).

        True means committed. Another writer holding the lock is waited for in
        short jittered steps (not SQLite's busy handler, whose first sleeps are
        whole milliseconds) until ``deadline`` (``time.monotonic()``); then the
        entry is counted as dropped and False returned. This connection never
        checkpoints: past the WAL's soft limit ``on_wal_full`` asks the writer
        thread to, and past its hard limit the call waits for that.
        """
        delay = 5e-5
        while True:
            try:
                if self._wal_size_fast() > self._soft_wal and self._wal_size() > self._soft_wal:
                    if self.on_wal_full is not None:
                        self.on_wal_full()
                    if self._wal_size() > self._hard_wal:
                        raise _WalFull
                # _locked without the generator: this is the host's hot path.
                if self._pid != os.getpid():
                    self._after_fork()
                lock = self._lock
                if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise SpoolBusyError("spool is busy in this process")
                try:
                    conn = self._conn
                    if conn is None or self._reopen:
                        lock.release()
                        with self._locked(max(0.0, deadline - time.monotonic())):
                            pass  # opens (or reopens) the connection
                        lock.acquire()
                        conn = self._conn
                        assert conn is not None
                    try:
                        conn.execute(_INSERT_ONE, row)
                    except sqlite3.OperationalError as exc:
                        if not is_full(exc):
                            raise
                        self._write(conn, lambda c: self._insert(c, [row]), None)
                finally:
                    lock.release()
                self._appends += 1
                return True
            except (_WalFull, SpoolBusyError, sqlite3.OperationalError) as exc:
                if isinstance(exc, sqlite3.OperationalError) and not _is_busy(exc):
                    self._log_once("now" + str(exc), "spool dropped an entry: %s", exc)
                    break
            except Exception as exc:
                self._log_once("now" + type(exc).__name__, "spool dropped an entry: %s", exc)
                break
            if time.monotonic() + delay > deadline:
                self._log_once("busy", "spool dropped entries: another writer held the lock")
                break
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2e-3)
        self.count("dropped")
        return False

    def _chunks(self, rows: Sequence[tuple[str, str, str]]) -> Iterator[list[tuple[str, str, str]]]:
        """Split rows so one transaction stays well inside the WAL budget."""
        limit = self._txn_bytes
        chunk: list[tuple[str, str, str]] = []
        size = 0
        for row in rows:
            if chunk and size + len(row[2]) > limit:
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += len(row[2]) + 16
        if chunk:
            yield chunk

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> int:
        # One statement for the whole group: executemany would release and
        # retake the GIL per row, and a busy host thread then starves the writer
        # (5 ms switch interval per row). json_each keeps it to one round trip.
        params: tuple[str, ...]
        if len(rows) == 1:
            sql, params = _INSERT_ONE, rows[0]
        else:
            sql = _INSERT_MANY
            params = (rows[0][1], "[" + ",".join(r[2] for r in rows) + "]")
        size = sum(len(r[2]) + 16 for r in rows)
        self._make_room(conn, size, len(rows))
        for _ in range(4):
            try:
                conn.execute(sql, params)
                return len(rows)
            except sqlite3.OperationalError as exc:
                if not is_full(exc) or not conn.in_transaction:
                    raise  # SQLITE_FULL that rolled the transaction back: drop, counted
                if not self._at_cap(conn, size) or not self._evict_bytes(conn, size, len(rows)):
                    raise  # a full disk, not our cap: drop rather than evict
        raise sqlite3.OperationalError("database or disk is full")

    def _used_pages(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free)

    def _at_cap(self, conn: sqlite3.Connection, batch_bytes: int) -> bool:
        """Whether ``batch_bytes`` more would pass max_page_count (else the disk is full)."""
        needed = batch_bytes * 5 // 4 // PAGE_SIZE + 4
        return self._used_pages(conn) + needed >= self._max_pages

    def _make_room(self, conn: sqlite3.Connection, batch_bytes: int, batch_rows: int) -> None:
        """Evict the oldest rows first when this batch would pass the cap, so the insert
        does not fail and retry (every retry rewrites pages the WAL must hold)."""
        if self._at_cap(conn, batch_bytes):
            self._evict_bytes(conn, batch_bytes, batch_rows)

    def _evict_bytes(self, conn: sqlite3.Connection, batch_bytes: int, batch_rows: int) -> int:
        # Free room for the batch and a little more (about 1/32 of the cap, within
        # one transaction's WAL budget), so eviction is rare and amortised.
        want = min(max(batch_bytes * 2, self.max_bytes // 32), self._txn_bytes)
        per_row = max(64, batch_bytes // max(1, batch_rows))
        return self._evict(conn, max(1, want // per_row))

    def _evict(self, conn: sqlite3.Connection, n: int) -> int:
        # Kept dead letters (already counted, never resent) make room before rows
        # that still wait to be delivered.
        removed = self._evict_dead_letters(conn, n)
        if removed:
            return removed
        removed = conn.execute(
            "DELETE FROM entries WHERE id IN (SELECT id FROM entries ORDER BY id LIMIT ?)", (n,)
        ).rowcount
        if removed:
            self._bump(conn, "evicted", removed)
            self._evicted_unlogged += int(removed)
            if self._throttle("evict"):
                logger.warning(
                    "spool %s is at its cap: evicted the %d oldest entries waiting for the "
                    "Cloud (counted as 'evicted'; see `spooler status`)",
                    self.path,
                    self._evicted_unlogged,
                )
                self._evicted_unlogged = 0
        return int(removed)

    def _evict_dead_letters(self, conn: sqlite3.Connection, n: int) -> int:
        removed = conn.execute(
            "DELETE FROM dead_letters WHERE id IN "
            "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
            (n,),
        ).rowcount
        if removed:
            self._bump(conn, "dead_letters_evicted", removed)
        return int(removed)

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str, n: int) -> None:
        conn.execute(_BUMP, (name, n))

    def flush_counters(self, *, timeout: float | None = None) -> bool:
        """Write pending in-memory counters to the file now. Never raises."""
        with self._pending_lock:
            if not self._pending:
                return True
        try:
            self._transaction(lambda c: None, timeout)
            return True
        except Exception:
            return False

    # -- reading and acknowledging (the shipper's side) ------------------------

    def read_batch(self, limit: int, *, after_id: int = 0) -> list[SpoolRow]:
        """Up to ``limit`` waiting rows in append order (ids above ``after_id``)."""
        with self._locked(5.0) as conn:
            # fetchall ends the read transaction at once: never hold a
            # snapshot open across network I/O (checkpoint starvation).
            # SQLite checks the JSON in C; the shipper splices the text into the
            # request body without parsing it in Python.
            raw = conn.execute(
                "SELECT id, kind, created_at, entry, CASE WHEN json_valid(entry) "
                "THEN json_type(entry) = 'object' ELSE 0 END "
                "FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        rows: list[SpoolRow] = []
        unreadable: list[int] = []
        for id_, kind, created_at, text, valid in raw:
            if valid:
                rows.append(SpoolRow(id_, kind, created_at, text))
            else:
                unreadable.append(id_)
        if unreadable:
            self.dead_letter(unreadable, status=None, reason="unreadable JSON in spool")
        return rows

    def read_body(
        self, limit: int, *, after_id: int = 0, last_id: int | None = None
    ) -> SpoolBatch | None:
        """The next batch as a ready request body.

        Up to ``limit`` rows above ``after_id`` (and up to ``last_id`` if given), each
        with its ``entry_id`` (``<spool id>-<row id>``) spliced in before the closing
        brace of the stored JSON object (spooler's own encoding: never parsed again),
        joined in id order. None when nothing waits there. Raises
        :class:`ValueError` when a row does not look like a JSON object: read those
        rows with :meth:`read_batch`, which checks each and moves bad ones aside.
        """
        upper = (1 << 62) if last_id is None else last_id
        with self._locked(5.0) as conn:
            # fetchall ends the read transaction at once: never hold a snapshot open
            # across network I/O (checkpoint starvation).
            rows = conn.execute(
                "SELECT id, entry FROM entries WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, upper, limit),
            ).fetchall()
        if not rows:
            return None
        prefix = ',"entry_id":"' + (self.spool_id or "spool") + "-"
        # One pass, in C as far as Python allows: spooler writes every object as
        # '{"' ... '}' (compact, at least one key), so a row that does not start and
        # end that way is not one of its own and is never sent as it is.
        try:
            parts = [
                f'{text[:-1]}{prefix}{id_}"}}'
                for id_, text in rows
                if text[-1] == "}" and text[:2] == '{"'
            ]
        except (TypeError, IndexError):
            parts = []
        if len(parts) != len(rows):
            raise ValueError("a row does not hold a JSON object as spooler writes it")
        body = '{"entries":[' + ",".join(parts) + "]}"
        return SpoolBatch(int(rows[0][0]), int(rows[-1][0]), len(rows), body)

    def ack_range(
        self, first_id: int, last_id: int, count: int, *, timeout: float | None = None
    ) -> int:
        """Delete the batch ``first_id..last_id`` of ``count`` rows the Cloud took.

        Ids only grow, so the rows in that range are exactly the batch read: one
        range delete. Rows gone meanwhile were evicted in flight and count as shipped.
        ``timeout`` (seconds to wait for the write lock) defaults to the spool's
        ``busy_timeout``, which costs no statement to put in force.
        """

        def work(conn: sqlite3.Connection) -> int:
            n = int(
                conn.execute(
                    "DELETE FROM entries WHERE id BETWEEN ? AND ?", (first_id, last_id)
                ).rowcount
            )
            self._count_shipped(conn, count, n)
            return n

        return int(self._transaction(work, timeout))

    def _count_shipped(self, conn: sqlite3.Connection, sent: int, deleted: int) -> None:
        """``sent`` rows reached the Cloud, ``deleted`` were still here: the rest were
        evicted while in flight and move from ``evicted`` to ``shipped``."""
        if sent:
            self._bump(conn, "shipped", sent)
        if sent > deleted:
            self._bump(conn, "evicted", deleted - sent)
        # At most once a second: a drain acknowledges hundreds of batches a second,
        # and status needs the time to the second, not one more write per batch.
        now = time.monotonic()
        if now - self._delivery_noted >= 1.0:
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_delivery_at', ?)",
                (now_iso(),),
            )
            self._delivery_noted = now

    def ack(self, ids: Iterable[int], *, timeout: float | None = 5.0) -> int:
        """Delete rows the Cloud took and count them as shipped; returns rows deleted.

        A row already gone was evicted at the cap while its request was in flight
        (only the one shipper deletes otherwise): the Cloud has it, so it moves
        from ``evicted`` to ``shipped`` and is counted once.
        """
        unique = sorted(set(ids))
        id_list = json.dumps(unique)

        def work(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            ).rowcount
            # Ids above the sequence were never appended: nothing to count.
            known = conn.execute(
                "SELECT count(*) FROM json_each(?) WHERE value <= "
                "(SELECT seq FROM sqlite_sequence WHERE name = 'entries')",
                (id_list,),
            ).fetchone()[0]
            self._count_shipped(conn, int(known), int(n))
            return int(n)

        return int(self._transaction(work, timeout))

    def dead_letter(
        self,
        ids: Iterable[int],
        *,
        status: int | None,
        reason: str,
        timeout: float | None = 5.0,
    ) -> int:
        """Move rows the Cloud rejected to ``dead_letters`` (kept, never resent).

        Rows move a few at a time, so a spool at its cap never holds a row twice over;
        when even that does not fit, the oldest kept dead letters make room (counted
        as ``dead_letters_evicted``), and failing that the row is not kept at all.
        """
        unique = sorted(set(ids))
        rejected_at = now_iso()

        def move(conn: sqlite3.Connection, chunk: list[int]) -> int:
            id_list = json.dumps(chunk)
            kept = False
            for _ in range(3):
                try:
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters"
                        "(id, kind, created_at, entry, rejected_at, status, reason) "
                        "SELECT id, kind, created_at, entry, ?, ?, ? FROM entries "
                        "WHERE id IN (SELECT value FROM json_each(?))",
                        (rejected_at, status, reason[:500], id_list),
                    )
                    kept = True
                    break
                except sqlite3.OperationalError as exc:
                    if not is_full(exc) or not conn.in_transaction:
                        raise
                    if not self._evict_dead_letters(conn, 2 * len(chunk)):
                        break  # nothing left to make room with
            n = int(
                conn.execute(
                    "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))",
                    (id_list,),
                ).rowcount
            )
            if n and not kept:
                self._bump(conn, "dead_letters_evicted", n)  # counted, no copy kept
            return n

        def work(conn: sqlite3.Connection) -> int:
            n = sum(move(conn, unique[i : i + 8]) for i in range(0, len(unique), 8))
            if n:
                self._bump(conn, "dead_lettered", n)
            trimmed = conn.execute(
                "DELETE FROM dead_letters WHERE id <= "
                "(SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (DEAD_LETTER_KEEP,),
            ).rowcount
            if trimmed:
                self._bump(conn, "dead_letters_evicted", trimmed)
            return n

        return int(self._transaction(work, timeout))

    def still_waiting(self, rows: Sequence[SpoolRow]) -> list[SpoolRow]:
        """The rows of ``rows`` that are still in the spool (not evicted meanwhile)."""
        if not rows:
            return []
        id_list = json.dumps([r.id for r in rows])
        with self._locked(5.0) as conn:
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM entries WHERE id IN (SELECT value FROM json_each(?))",
                    (id_list,),
                )
            }
        return [r for r in rows if r.id in present]

    def changes(self) -> tuple[int, int]:
        """A token that changes whenever rows may have been added: another connection
        committed (``PRAGMA data_version``) or entries were appended through this object.

        The shipper compares it to tell news from the echo of its own writes.
        """
        with self._locked(5.0) as conn:
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        return version, self._appends

    def set_meta(self, values: Mapping[str, str | None], *, timeout: float | None = 5.0) -> None:
        """Record shipper state (last delivery, last error) for ``status``."""

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items())
            )

        self._transaction(work, timeout)

    def maintain(self) -> dict[str, int]:
        """Checkpoint the WAL and give free pages back; the shipper's routine chore.

        Returns the checkpoint's result and the pages freed. Never raises.
        """
        out = {"busy": 0, "wal_frames": 0, "checkpointed": 0, "vacuumed_pages": 0}
        try:
            with self._locked(1.0) as conn:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                if free > 64 and free * 4 > pages:
                    conn.executescript("PRAGMA incremental_vacuum;")
                    after = conn.execute("PRAGMA freelist_count").fetchone()[0]
                    out["vacuumed_pages"] = free - after
                empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM entries)").fetchone()[0]
                mode = "TRUNCATE" if empty else "PASSIVE"
                busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                out.update(busy=busy, wal_frames=frames, checkpointed=done)
        except Exception as exc:
            self._log_once("maintain", "spool maintenance failed: %s", exc)
        return out

    # -- looking ---------------------------------------------------------------

    def peek(self, limit: int) -> tuple[int, str | None]:
        """How many rows wait (counted up to ``limit``) and when the oldest was spooled."""
        with self._locked(5.0) as conn:
            n = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM entries LIMIT ?)", (limit,)
            ).fetchone()[0]
            oldest = conn.execute("SELECT created_at FROM entries ORDER BY id LIMIT 1").fetchone()
        return int(n), (oldest[0] if oldest else None)

    def get_meta(self, key: str) -> str | None:
        """One value from the ``meta`` table."""
        with self._locked(5.0) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def stats(self) -> SpoolStats:
        """Depth, bytes on disk, oldest entry age, every counter, last outcomes."""
        with self._locked(5.0) as conn:
            stats = collect_stats(conn, self.path, self.max_bytes)
        with self._pending_lock:
            for name, n in self._pending.items():
                stats.counters[name] = stats.counters.get(name, 0) + n
        return stats

    def close(self) -> None:
        """Flush pending counters and close the connection."""
        if self._pid != os.getpid():
            self._after_fork()  # the parent's connection: park it, never close it here
            self._closed = True
            return
        if self._conn is not None or self._pending:
            self.flush_counters(timeout=1.0)
        self._closed = True
        # A quick_check in flight holds a connection of its own: when close() returns,
        # no connection of this spool is left (the last one to close removes the -wal).
        checker = self._checker
        if checker is not None:
            checker.interrupt()  # a quick_check of a large file may take seconds
        if self._verifying.acquire(timeout=_OPEN_WAIT):
            self._verifying.release()
        # Bounded: a thread stuck inside the spool must not hang the host's exit.
        if not self._lock.acquire(timeout=_OPEN_WAIT):
            logger.warning("spool %s still busy at close; leaving its connection open", self.path)
            return
        try:
            self._close_wal_fd()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._lock.release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
