"""What a spool holds, read without changing it: depth, bytes, counters, last outcomes.

:func:`read_stats` opens the file read-only (``spooler status``); a live
:class:`~spooler.spool.Spool` uses :func:`collect_stats` on its own connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from spooler.errors import UnsafeSpoolError
from spooler.spoolfile import COUNTER_NAMES, spool_files
from spooler.timestamps import iso_epoch

__all__ = ["SpoolStats", "collect_stats", "iso_epoch", "read_stats"]


@dataclass(frozen=True)
class SpoolStats:
    """A snapshot of a spool: depth, size on disk, counters and last outcomes."""

    path: str
    spool_id: str | None
    depth: int
    bytes_on_disk: int
    file_bytes: dict[str, int]
    max_bytes: int
    oldest_created_at: str | None
    oldest_age_seconds: float | None
    dead_letters: int
    counters: dict[str, int] = field(default_factory=dict)
    last_delivery_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def heartbeat_counters(self) -> dict[str, Any]:
        """The counters the heartbeat's ``spool`` object carries."""
        c = self.counters
        return {
            "depth": self.depth,
            "bytes": self.bytes_on_disk,
            "max_bytes": self.max_bytes,
            "oldest_entry_age_seconds": self.oldest_age_seconds,
            **{name: c.get(name, 0) for name in COUNTER_NAMES},
        }


def collect_stats(conn: sqlite3.Connection, path: str, max_bytes: int) -> SpoolStats:
    """A snapshot of the spool behind ``conn``, read in one read transaction so that
    appended = shipped + evicted + dead_lettered + lost + waiting holds in it."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # deferred: a read transaction, one snapshot for all below
    try:
        depth = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        oldest = conn.execute("SELECT created_at FROM entries ORDER BY id LIMIT 1").fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        if own:
            conn.execute("COMMIT")
    counters["appended"] = seq[0] if seq else 0
    for name in COUNTER_NAMES:
        counters.setdefault(name, 0)
    files = {}
    for name in spool_files(path):
        with contextlib.suppress(FileNotFoundError):
            files[os.path.basename(name)] = os.stat(name).st_size
    age = None
    if oldest:
        epoch = iso_epoch(oldest[0])
        if epoch is not None:
            age = max(0.0, time.time() - epoch)
    return SpoolStats(
        path=path,
        spool_id=meta.get("spool_id"),
        depth=depth,
        bytes_on_disk=sum(files.values()),
        file_bytes=files,
        max_bytes=max_bytes,
        oldest_created_at=oldest[0] if oldest else None,
        oldest_age_seconds=age,
        dead_letters=dead,
        counters=counters,
        last_delivery_at=meta.get("last_delivery_at"),
        last_error=meta.get("last_error"),
        last_error_at=meta.get("last_error_at"),
    )


def read_stats(path: str | os.PathLike[str], *, max_bytes: int = 0) -> SpoolStats:
    """Stats of a spool file without changing it (read-only; for ``spooler status``).

    Raises :class:`FileNotFoundError` when there is no spool at ``path``.
    """
    p = os.path.abspath(os.fspath(path))
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    if os.path.islink(p):
        raise UnsafeSpoolError(p, f"{p} is a symbolic link; spooler never reads through one")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0, isolation_level=None)
    try:
        return collect_stats(conn, p, max_bytes)
    finally:
        conn.close()
