"""The durable local spool: one size-capped SQLite file in WAL mode.

Appenders (the host's hooks, in any number of threads and processes) add
entries; one shipper reads them in primary-key order, acknowledges what the
Cloud took (rows are deleted), moves what it rejected to ``dead_letters`` and
checkpoints the WAL. When the file would pass its cap the oldest rows are
evicted, and every loss is counted in ``counters``.

The class is built from three parts, one idea each: :mod:`spooler._spool_core`
(state, the connection, transactions, the cap), :mod:`spooler._spool_append`
(appending) and :mod:`spooler._spool_ship` (the shipper's side). Opening the
file and its schema live in :mod:`spooler.spoolfile`; reading a snapshot of it
in :mod:`spooler.stats`.

Size: ``max_page_count`` caps the main file, checkpoints (only ever run with the
write lock held: see ``SpoolCore._checkpoint``) and ``journal_size_limit`` bound
the WAL, and ``auto_vacuum=INCREMENTAL`` lets a drained spool give pages back.
See README "How the cap works".
"""

from __future__ import annotations

import logging
import os
import sqlite3

from spooler._spool_append import SpoolAppending
from spooler._spool_core import _OPEN_WAIT
from spooler._spool_ship import SpoolBatch, SpoolRow, SpoolShipping
from spooler.serializer import encode_row
from spooler.spoolfile import (
    COUNTER_NAMES,
    SCHEMA_VERSION,
    quarantine,
    spool_files,
    verify,
)
from spooler.stats import SpoolStats, collect_stats, iso_epoch, read_stats
from spooler.timestamps import now_iso

__all__ = [
    "COUNTER_NAMES",
    "SCHEMA_VERSION",
    "Spool",
    "SpoolBatch",
    "SpoolRow",
    "SpoolStats",
    "encode_row",
    "iso_epoch",
    "now_iso",
    "read_stats",
    "spool_files",
]

logger = logging.getLogger(__name__)


class Spool(SpoolAppending, SpoolShipping):
    """A size-capped SQLite WAL spool, safe for many threads and processes.

    Writes never raise into the caller: ``append``/``append_many`` return how
    much was accepted and count the rest as ``dropped``.
    """

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
            self._close_fence()
            conn.close()
            self._conn = None
            quarantine(self.path, problem)
            self._conn = self._open(check=False)
        return False

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
            self._close_fence()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._lock.release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
