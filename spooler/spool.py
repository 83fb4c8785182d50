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
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spooler.errors import SpoolBusyError, SpoolError
from spooler.spoolfile import (
    COUNTER_NAMES,
    PAGE_SIZE,
    SCHEMA_VERSION,
    is_full,
    now_iso,
    open_db,
    spool_files,
)
from spooler.stats import SpoolStats, collect_stats, iso_epoch, read_stats

__all__ = [
    "COUNTER_NAMES",
    "SCHEMA_VERSION",
    "Spool",
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
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = int(max_bytes)
        self.busy_timeout = float(busy_timeout)
        self._wal_pages = max(16, min(1024, self.max_bytes // 8 // PAGE_SIZE))
        # The WAL peaks near its checkpoint threshold plus one transaction (at most
        # half the threshold, see _chunks) plus a few pages of eviction bookkeeping.
        reserve = _SHM_BYTES + 32 + (self._wal_pages * 2 + 8) * _WAL_FRAME
        self._max_pages = max(32, (self.max_bytes - reserve) // PAGE_SIZE)
        self._wal_limit = int(self._wal_pages * 1.5) * _WAL_FRAME + 32
        self._writes = 0
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._logged: set[str] = set()
        self._pid = os.getpid()
        self.spool_id: str | None = None
        self._check = check
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        if not lazy:
            self._conn = self._open(check=check)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Spool:
        """Open the spool a :class:`~spooler.config.Config` names."""
        return cls(config.spool_path, max_bytes=config.spool_max_bytes, **kwargs)

    def _open(self, *, check: bool) -> sqlite3.Connection:
        conn, self.spool_id = open_db(
            self.path, wal_pages=self._wal_pages, busy_timeout=self.busy_timeout, check=check
        )
        try:
            self._apply_cap(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

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
        # A SQLite connection or lock must never cross a fork: abandon the
        # parent's (closing it here could disturb the parent) and open anew.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = {}
        self._check = False
        self._conn = None  # reopened on first use in this process

    def _write(self, conn: sqlite3.Connection, work: Any, timeout: float | None) -> Any:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE transaction with pending counters."""
        if timeout == self.busy_timeout:
            timeout = None  # already in force: skip two PRAGMA round trips
        if timeout is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
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
        return result

    def _transaction(self, work: Any, timeout: float | None) -> Any:
        """``work(conn)`` in one write transaction on this process's connection."""
        with self._locked(timeout) as conn:
            return self._write(conn, work, timeout)

    def _flush_pending(self, conn: sqlite3.Connection) -> None:
        with self._pending_lock:
            pending = dict(self._pending)
        if pending:
            conn.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                pending.items(),
            )
            self._flushed = pending
        else:
            self._flushed = {}

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

    # -- appending -------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter; it reaches the file with the next write. Never raises."""
        if n:
            with self._pending_lock:
                self._pending[name] = self._pending.get(name, 0) + n

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
        set and another writer held the lock past ``timeout`` (the caller then
        keeps the entries, nothing is counted). Anything else that fails is
        counted as ``dropped``.
        """
        if not entries:
            return 0
        try:
            now: str | None = None
            rows = []
            for e in entries:
                # An entry's creation time is its notification timestamp.
                created = e.get("timestamp")
                if not isinstance(created, str):
                    created = now = now or now_iso()
                rows.append((str(e.get("status") or "unknown"), created, _encode(e)))
        except Exception as exc:  # an entry that cannot be encoded
            self.count("dropped", len(entries))
            self._log_once("encode", "spool dropped entries it could not encode: %s", exc)
            return 0
        stored = 0
        for chunk in self._chunks(rows):
            try:
                with self._locked(timeout) as conn:
                    stored += self._store(conn, chunk, timeout)
                    continue
            except SpoolBusyError:
                if raise_on_busy and not stored:
                    raise
                self._log_once("busy", "spool dropped entries: another writer held the lock")
            except sqlite3.OperationalError as exc:
                if raise_on_busy and not stored and "locked" in str(exc):
                    raise SpoolBusyError("spool is locked by another writer") from None
                self._log_once(type(exc).__name__ + str(exc), "spool dropped entries: %s", exc)
            except Exception as exc:
                self._log_once(type(exc).__name__, "spool dropped entries: %s", exc)
            self.count("dropped", len(chunk))
            # Later chunks may wait longer: part of this call is already stored.
            timeout = max(timeout or self.busy_timeout, 1.0)
        return stored

    def _store(
        self, conn: sqlite3.Connection, rows: list[tuple[str, str, str]], timeout: float | None
    ) -> int:
        stored = 0
        if len(rows) == 1 and not self._pending and timeout in (None, self.busy_timeout):
            # One row and nothing else to write: a single autocommit statement
            # is its own transaction (one round trip instead of three).
            try:
                conn.execute(_INSERT_ONE, rows[0])
                stored = 1
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise  # at the cap: evict in a transaction below
        if not stored:
            stored = int(self._write(conn, lambda c: self._insert(c, rows), timeout))
        self._writes += 1
        if len(rows) > 1 or self._writes % 16 == 0:
            self._bound_wal(conn)
        return stored

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """Restart the WAL when readers kept the automatic checkpoint from doing so.

        A checkpoint cannot rewind the WAL while another connection (the
        shipper's reads) still uses it, so with overlapping readers it only
        grows. Past 1.5x its threshold, a TRUNCATE checkpoint waits (busy
        timeout) for those brief readers and gives the space back.
        """
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size <= self._wal_limit:
            return
        for attempt in range(5):
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error:
                return
            if not busy:
                return
            # Another connection was checkpointing; that lock has no busy handler.
            time.sleep(0.001 * (attempt + 1))

    def _chunks(self, rows: list[tuple[str, str, str]]) -> Iterator[list[tuple[str, str, str]]]:
        """Split rows so one transaction stays well inside the WAL budget."""
        limit = self._wal_pages * PAGE_SIZE // 2
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
        evict = 0
        for _ in range(8):
            try:
                if evict and not self._evict(conn, evict):
                    raise sqlite3.OperationalError("database or disk is full")
                conn.execute(sql, params)
                return len(rows)
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                # SQLITE_FULL may roll back the statement or the whole
                # transaction (evictions too); carry on in a transaction either way.
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                size = sum(len(r[2]) + 16 for r in rows)
                if not self._at_cap(conn, size):
                    raise  # a full disk, not our cap: drop rather than evict
                evict = max(2 * evict, 2 * len(rows), 16, self._evict_chunk(conn, size))
        raise sqlite3.OperationalError("database or disk is full")

    def _at_cap(self, conn: sqlite3.Connection, batch_bytes: int) -> bool:
        """Whether ``batch_bytes`` more would pass max_page_count (else the disk is full)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        needed = batch_bytes * 5 // 4 // PAGE_SIZE + 4
        return bool(pages - free + needed >= self._max_pages)

    def _evict_chunk(self, conn: sqlite3.Connection, batch_bytes: int) -> int:
        # Free about 1/32 of the cap at once, so eviction is rare and amortised.
        depth_row = conn.execute("SELECT max(id) - min(id) + 1 FROM entries").fetchone()
        depth = depth_row[0] or 0
        return max(depth // 32, batch_bytes // 64)

    def _evict(self, conn: sqlite3.Connection, n: int) -> int:
        removed = conn.execute(
            "DELETE FROM entries WHERE id IN (SELECT id FROM entries ORDER BY id LIMIT ?)", (n,)
        ).rowcount
        if removed:
            self._bump(conn, "evicted", removed)
            self._log_once(
                "evict", "spool %s reached its cap; evicting the oldest entries", self.path
            )
            return int(removed)
        removed = conn.execute(
            "DELETE FROM dead_letters WHERE id IN "
            "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
            (n,),
        ).rowcount
        return int(removed)

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str, n: int) -> None:
        conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

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

    def ack(self, ids: Iterable[int], *, timeout: float | None = 5.0) -> int:
        """Delete acknowledged rows and count them as shipped; returns rows deleted."""
        id_list = json.dumps(sorted(set(ids)))

        def work(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            ).rowcount
            if n:
                self._bump(conn, "shipped", n)
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_delivery_at', ?)",
                (now_iso(),),
            )
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
        """Move rows the Cloud rejected to ``dead_letters`` (kept, never resent)."""
        id_list = json.dumps(sorted(set(ids)))

        def work(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters"
                "(id, kind, created_at, entry, rejected_at, status, reason) "
                "SELECT id, kind, created_at, entry, ?, ?, ? FROM entries "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (now_iso(), status, reason[:500], id_list),
            )
            n = conn.execute(
                "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            ).rowcount
            if n:
                self._bump(conn, "dead_lettered", n)
            conn.execute(
                "DELETE FROM dead_letters WHERE id <= "
                "(SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (DEAD_LETTER_KEEP,),
            )
            return int(n)

        return int(self._transaction(work, timeout))

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
            self._conn = None  # the parent's connection: never touch it here
            self._closed = True
            return
        if self._conn is not None or self._pending:
            self.flush_counters(timeout=1.0)
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
