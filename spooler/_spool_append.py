"""Appending to the spool: the writer thread's groups and immediate mode's one row."""

from __future__ import annotations

import functools
import random
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from spooler._process import this_pid
from spooler._spool_core import (
    _INSERT_ONE,
    SpoolCore,
    _is_busy,
    _WalFull,
)
from spooler.errors import SpoolBusyError
from spooler.serializer import encode_row
from spooler.spoolfile import (
    is_full,
)

_MAX_ROWS_PER_INSERT = 256  # 768 bound values: far below SQLite's limit (32,766)


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    """``INSERT ... VALUES (?, ?, ?), ...`` for ``rows`` rows (a power of two)."""
    return "INSERT INTO entries(kind, created_at, entry) VALUES " + ", ".join(["(?, ?, ?)"] * rows)


class SpoolAppending(SpoolCore):
    """``count``, ``append``, ``append_many``, ``append_rows`` and ``append_now``."""

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
                if self._wal_size_fast() > self._soft_wal:
                    size = self._wal_size()  # the path, in case the WAL was made anew
                    if size > self._soft_wal and self.on_wal_full is not None:
                        self.on_wal_full()
                    if size > self._hard_wal:
                        raise _WalFull
                # _locked without the generator: this is the host's hot path.
                if self._pid != this_pid():
                    self._after_fork()
                lock = self._lock
                if not lock.acquire(False) and not lock.acquire(
                    timeout=max(0.0, deadline - time.monotonic())
                ):
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
        # Few statements per group: executemany would release and retake the GIL
        # per row, and a busy host thread then starves the writer (5 ms switch
        # interval per row). Multi-row VALUES in power-of-two sizes (at most 256
        # rows) keep it to a handful of statements, each prepared once and then
        # reused from the connection's statement cache; SQLite parses no JSON.
        size = sum(len(r[2]) + 16 for r in rows)
        self._make_room(conn, size, len(rows))
        i, n = 0, len(rows)
        while i < n:
            k = min(_MAX_ROWS_PER_INSERT, 1 << ((n - i).bit_length() - 1))
            chunk = rows[i : i + k]
            self._insert_chunk(conn, chunk)
            i += k
        return n

    def _insert_chunk(self, conn: sqlite3.Connection, chunk: list[tuple[str, str, str]]) -> None:
        sql = _insert_sql(len(chunk))
        params = [value for row in chunk for value in row]
        for _ in range(4):
            try:
                conn.execute(sql, params)
                return
            except sqlite3.OperationalError as exc:
                if not is_full(exc) or not conn.in_transaction:
                    raise  # SQLITE_FULL that rolled the transaction back: drop, counted
                size = sum(len(r[2]) + 16 for r in chunk)  # only when room must be made
                if not self._at_cap(conn, size) or not self._evict_bytes(conn, size, len(chunk)):
                    raise  # a full disk, not our cap: drop rather than evict
        raise sqlite3.OperationalError("database or disk is full")
