"""The spool's core: its state, its one connection per process, transactions, the cap.

:class:`SpoolCore` holds what every part of :class:`~spooler.spool.Spool` shares:
opening the file (schema in :mod:`spooler.spoolfile`), one connection per process
behind a lock (fork-safe), write transactions that carry pending counters, the
WAL's share of the cap and eviction of the oldest rows. Appending lives in
:mod:`spooler._spool_append`, the shipper's side in :mod:`spooler._spool_ship`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from spooler._logging import Throttle
from spooler._process import this_pid
from spooler.errors import SpoolBusyError, SpoolError
from spooler.spoolfile import (
    PAGE_SIZE,
    open_spool,
)

logger = logging.getLogger("spooler.spool")

_WAL_FRAME = PAGE_SIZE + 24
_SHM_BYTES = 32 * 1024
DEAD_LETTER_KEEP = 10_000


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
#: Seconds checkpoint() waits to pause another connection's writers (see there).
PAUSE_WAIT = 0.1
_INSERT_ONE = "INSERT INTO entries(kind, created_at, entry) VALUES (?, ?, ?)"


_LIVE: weakref.WeakSet[SpoolCore] = weakref.WeakSet()
_FORK_WAIT = 1.0  # how long a fork waits for a spool transaction in another thread to end
_held_for_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # A child forked while SQLite's in-process lock state says "inside a transaction"
    # could never write to the spool (SQLite shares that state between connections of
    # one process). Let a transaction in another thread finish first.
    # The same for a quick_check running on its own connection: a child forked while
    # another thread is inside SQLite could hang on SQLite's own mutexes.
    for spool in list(_LIVE):
        if spool._pid != this_pid():
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


class _WalFull(Exception):
    """The WAL is past its hard limit; wait for the writer thread's checkpoint."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


_S = TypeVar("_S", bound="SpoolCore")


class SpoolCore:
    """State, connection handling, transactions and the cap shared by every Spool part."""

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
        # A second connection that holds SQLite's write lock while _checkpoint runs.
        self._fence: sqlite3.Connection | None = None
        _LIVE.add(self)
        if not lazy:
            self._conn = self._open(check=check)

    @classmethod
    def from_config(cls: type[_S], config: Any, **kwargs: Any) -> _S:
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
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def ensure_open(self) -> None:
        """Open the file now (with ``quick_check`` if this spool checks) if not yet open."""
        with self._locked(_OPEN_WAIT):
            pass

    def first_sqlite_call(self) -> None:
        """One SQLite call, under this spool's lock so that a fork waits for it (see
        _before_fork). The reporter's writer thread makes it, so that no host thread
        makes a process's first SQLite call."""
        with self._lock:
            sqlite3.connect(":memory:").close()

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

    # -- connection handling -------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout: float | None) -> Iterator[sqlite3.Connection]:
        if self._pid != this_pid():
            self._after_fork()
        wait = self.busy_timeout if timeout is None else timeout
        if not self._lock.acquire(timeout=wait):
            raise SpoolBusyError("spool is busy in this process")
        try:
            if self._reopen and self._conn is not None:
                self._reopen = False
                self._close_fence()
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
        for conn in (self._conn, self._fence):
            if conn is not None:
                _INHERITED.append(conn)
        self._conn = self._fence = None  # reopened on first use in this process

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
            conn.execute("BEGIN IMMEDIATE")
            if self._wal_size() > self._hard_wal:
                conn.execute("ROLLBACK")
                # With every frame copied, this transaction's first write starts the
                # WAL over at its start and its commit trims the file.
                self._shrink_wal(conn, timeout)
                conn.execute("BEGIN IMMEDIATE")
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
        if self.checkpoints and self._wal_size() > self._soft_wal:
            self._checkpoint(conn)  # what wal_autocheckpoint did (see _checkpoint)
        return result

    def _shrink_wal(self, conn: sqlite3.Connection, timeout: float | None) -> None:
        """Checkpoint until the WAL is back under its hard limit, for at most ``timeout``
        (at least 0.25 s; one try for a spool that never waits, the immediate-mode host
        thread's with ``busy_timeout=0``); then the write goes on regardless.

        One try may not be enough: another connection's read that began before the
        copy holds back the frames it may still read, and the restart that trims the
        file, until it ends (spooler's reads end at once). Once, in CI on 3.13, the
        files reached 1.5x the cap while a second connection read every millisecond
        (test_the_cap_holds_while_another_connection_reads_and_writes): with one try
        per write, each lost race let the next write append past the limit.
        """
        wait = self.busy_timeout if timeout is None else timeout
        deadline = time.monotonic() + (max(0.25, wait) if wait > 0 else 0.0)
        delay = 0.001
        while True:
            self._checkpoint(conn)
            if self._wal_size() <= self._hard_wal or time.monotonic() >= deadline:
                return
            time.sleep(delay)
            delay = min(2 * delay, 0.02)

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

    # -- the WAL's share of the cap ------------------------------------------

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _wal_size_fast(self) -> int:
        """The WAL's size through a descriptor kept open on it: one lseek (a path lookup
        costs 4 us on a small VM). SQLite puts no locks on the -wal file, so this
        descriptor cannot disturb them, and a forked child may go on using the copy it
        inherited (it names the same file; closing it there closes the child's only).
        Every 64 looks it is pointed at the path anew, in case the WAL was removed and
        created again meanwhile: with dup2, so the number another host thread may be
        using at that moment never names a closed descriptor (or a file some other code
        opened in its place)."""
        self._wal_looks += 1
        fd = self._wal_fd
        try:
            if fd is None:
                fd = self._wal_fd = self._open_wal()
            elif self._wal_looks & 63 == 0:
                fresh = self._open_wal()
                try:
                    os.dup2(fresh, fd, inheritable=False)
                finally:
                    os.close(fresh)
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            return 0  # no WAL now (a kept descriptor is looked at again next time)

    def _open_wal(self) -> int:
        return os.open(self._wal_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _close_wal_fd(self) -> None:
        fd, self._wal_fd = self._wal_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def wal_over(self) -> bool:
        """Whether the WAL has passed its soft limit and wants a checkpoint."""
        return self._wal_size() > self._soft_wal

    def checkpoint(self, *, timeout: float = 1.0, pause: SpoolCore | None = None) -> bool:
        """Copy the WAL into the database when it has passed its soft limit (never on
        the host's thread: the reporter's writer thread and the shipper call this).
        The next commit then starts the WAL over at its start, trimmed to
        ``journal_size_limit``. Returns whether the WAL is within its soft limit
        afterwards. Never raises.

        ``pause`` is another spool object of this process whose connection never
        checkpoints (immediate mode's host connection): its writers wait for this
        checkpoint (up to ``PAUSE_WAIT`` to begin it, else it runs beside them), and
        the checkpoint waits at most ``PAUSE_WAIT`` for another process's writer.
        """
        if self._wal_size() <= self._soft_wal:
            return True
        try:
            with self._locked(timeout) as conn:
                held = (
                    pause is not None
                    and pause._pid == this_pid()
                    and pause._lock.acquire(timeout=PAUSE_WAIT)
                )
                try:
                    done = self._checkpoint(conn, wait=PAUSE_WAIT if held else None)
                finally:
                    if held:
                        assert pause is not None
                        pause._lock.release()
                if not done and held and self._wal_size() > self._hard_wal:
                    self._checkpoint(conn)  # the file must shrink: wait, unpaused
        except Exception as exc:
            self._log_once("checkpoint", "spool checkpoint failed: %s", exc)
        return not self.wal_over()

    def _checkpoint(self, conn: sqlite3.Connection, *, wait: float | None = None) -> bool:
        """A PASSIVE checkpoint run while this spool's second connection (the fence)
        holds SQLite's write lock; whether every frame was copied.

        SQLite 3.7.0 to 3.51.2 has the "WAL-reset bug" (sqlite.org/wal.html#walresetbug):
        a checkpoint that starts right after a complete one, while another connection
        commits and so starts the WAL over, records frames as copied that never were,
        and a later restart drops those committed transactions. Spool tests saw it
        (8 immediate-mode processes lost 573 acknowledged entries once). With the
        write lock held no commit can run during a checkpoint, so every checkpoint of
        a spool goes through here: no connection auto-checkpoints, and FULL, RESTART
        and TRUNCATE are never used (each falls back to an unfenced PASSIVE when it
        cannot get the write lock). The fence waits ``wait`` (default: this spool's
        busy timeout) for another writer; past it nothing is copied this time.
        """
        fence = self._fence
        if fence is None:
            fence = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            fence.execute("PRAGMA wal_autocheckpoint = 0")
            fence.execute(f"PRAGMA journal_size_limit = {self._wal_pages * PAGE_SIZE}")
            self._fence = fence
        wait = self.busy_timeout if wait is None else wait
        fence.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        try:
            fence.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # another writer held on: the next call tries again
        complete = False
        try:
            for attempt in range(5):
                busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy:
                    complete = log == done
                    break
                # Another connection was checkpointing; that lock has no busy handler.
                time.sleep(0.001 * (attempt + 1))
        except sqlite3.Error:
            pass
        finally:
            fence.execute("ROLLBACK")
        if complete:
            self._restart_wal(fence)
        return complete

    @staticmethod
    def _restart_wal(fence: sqlite3.Connection) -> None:
        """Start the WAL over now, trimming the file to ``journal_size_limit``: a write
        by the fence that begins after the copy, so it reads no frame and may restart
        the log. It sets ``user_version`` to itself. No checkpoint can run meanwhile
        (each needs the write lock this holds). Another writer getting there first
        restarts it as well."""
        try:
            fence.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return
        try:
            version = int(fence.execute("PRAGMA user_version").fetchone()[0])
            fence.execute(f"PRAGMA user_version = {version}")
            fence.execute("COMMIT")
        except sqlite3.Error:
            if fence.in_transaction:
                fence.execute("ROLLBACK")

    def _close_fence(self) -> None:
        fence, self._fence = self._fence, None
        if fence is not None:
            fence.close()

    # -- the cap: evicting the oldest rows -----------------------------------

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

    # -- counters ------------------------------------------------------------

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
