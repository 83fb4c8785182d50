"""Append throughput and per-call latency: spooler's spool beside raw sqlite3 and two peers.

Every case writes the same ~330-byte entries (built by ``spooler.serializer.build_entry``)
into a fresh temporary folder; each call is timed with ``time.perf_counter_ns``. Every
case pays for turning the dict into bytes (JSON, or pickle for persist-queue) inside the
timed call, as spooler does.

    python benchmarks/bench_append.py            # N = 20,000; a 4 MiB cap filled 5x over
    python benchmarks/bench_append.py --quick    # N = 2,000; a 2 MiB cap filled 2x over
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from _common import header, markdown_table, percentiles_us, sample_entries, write_json

from spooler.spool import Spool

BATCH = 100
CAP_BYTES = 4 << 20
CAP_FILL = 5  # fill the capped spool this many times over

_SCHEMA = (
    "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
    "created_at TEXT NOT NULL, entry TEXT NOT NULL)"
)
_INSERT = "INSERT INTO entries(kind, created_at, entry) VALUES (?, ?, ?)"


@contextmanager
def _tmpdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        yield folder


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _time_calls(call: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[int], int]:
    """Call ``call(item)`` for each item; per-call ns and the loop's total ns."""
    samples = [0] * len(items)
    clock = time.perf_counter_ns
    gc.collect()
    start = clock()
    for i, item in enumerate(items):
        t0 = clock()
        call(item)
        samples[i] = clock() - t0
    return samples, clock() - start


def _batches(entries: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


def _row(
    name: str, n_entries: int, per_call: int, samples: list[int], total_ns: int, note: str = ""
) -> list[Any]:
    p50, p99 = percentiles_us(samples)
    return [name, n_entries, per_call, n_entries / (total_ns / 1e9), p50, p99, note]


def _raw_connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    assert mode == "wal", mode
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(_SCHEMA)
    return conn


# -- cases ---------------------------------------------------------------------------


def spooler_single(entries: list[dict[str, Any]], max_bytes: int = 64 << 20) -> tuple[Any, ...]:
    with _tmpdir() as folder, Spool(os.path.join(folder, "spool.db"), max_bytes=max_bytes) as sp:
        samples, total = _time_calls(sp.append, entries)
        stats = sp.stats()
    return samples, total, stats


def spooler_batched(entries: list[dict[str, Any]], max_bytes: int = 64 << 20) -> tuple[Any, ...]:
    with _tmpdir() as folder, Spool(os.path.join(folder, "spool.db"), max_bytes=max_bytes) as sp:
        samples, total = _time_calls(sp.append_many, _batches(entries, BATCH))
        stats = sp.stats()
    return samples, total, stats


def raw_single(entries: list[dict[str, Any]], synchronous: str = "NORMAL") -> tuple[int, ...]:
    with _tmpdir() as folder:
        conn = _raw_connect(os.path.join(folder, "raw.db"), synchronous)

        def call(entry: dict[str, Any]) -> None:
            # Autocommit: one statement, one transaction, one commit.
            conn.execute(_INSERT, ("emitted", _now(), json.dumps(entry, separators=(",", ":"))))

        samples, total = _time_calls(call, entries)
        count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        conn.close()
    return samples, total, count


def raw_batched(entries: list[dict[str, Any]]) -> tuple[int, ...]:
    with _tmpdir() as folder:
        conn = _raw_connect(os.path.join(folder, "raw.db"), "NORMAL")

        def call(batch: list[dict[str, Any]]) -> None:
            created = _now()
            rows = [("emitted", created, json.dumps(e, separators=(",", ":"))) for e in batch]
            conn.execute("BEGIN")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")

        samples, total = _time_calls(call, _batches(entries, BATCH))
        count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        conn.close()
    return samples, total, count


def sqlite_utils_single(entries: list[dict[str, Any]]) -> tuple[int, ...]:
    import sqlite_utils

    with _tmpdir() as folder:
        db = sqlite_utils.Database(os.path.join(folder, "su.db"))
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(_SCHEMA)
        table = db.table("entries")

        def call(entry: dict[str, Any]) -> None:
            table.insert(
                {
                    "kind": "emitted",
                    "created_at": _now(),
                    "entry": json.dumps(entry, separators=(",", ":")),
                }
            )

        samples, total = _time_calls(call, entries)
        count = table.count
        db.close()
    return samples, total, count


def persist_queue_put(entries: list[dict[str, Any]]) -> tuple[int, ...]:
    import persistqueue

    with _tmpdir() as folder:
        # Its defaults: pickle, WAL, synchronous left at Python's FULL, commit per put.
        q = persistqueue.SQLiteAckQueue(os.path.join(folder, "pq"))
        samples, total = _time_calls(q.put, entries)
        count = q.qsize()
        q._getter.close()  # no public close in 1.1
    return samples, total, count


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 2,000, a 2 MiB cap 2x over")
    parser.add_argument("-n", type=int, default=None, help="entries per case (default 20,000)")
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    n = args.n or (2_000 if args.quick else 20_000)
    cap_bytes = (2 << 20) if args.quick else CAP_BYTES
    cap_fill = 2 if args.quick else CAP_FILL
    cap_mib = cap_bytes >> 20
    entries = sample_entries(n)
    entry_bytes = sum(len(json.dumps(e, separators=(",", ":"))) for e in entries) // n
    started = time.monotonic()

    rows: list[list[Any]] = []
    samples, total, stats = spooler_single(entries)
    rows.append(_row("spooler `append`", n, 1, samples, total, f"stored {stats.depth:,}"))
    samples, total, stats = spooler_batched(entries)
    rows.append(_row("spooler `append_many`", n, BATCH, samples, total, f"stored {stats.depth:,}"))
    samples, total, count = raw_single(entries)
    rows.append(
        _row("raw sqlite3, 1 row/commit (NORMAL)", n, 1, samples, total, f"stored {count:,}")
    )
    samples, total, count = raw_single(entries, "FULL")
    rows.append(
        _row(
            "raw sqlite3, 1 row/commit (FULL, Python's default)",
            n,
            1,
            samples,
            total,
            f"stored {count:,}",
        )
    )
    samples, total, count = raw_batched(entries)
    rows.append(
        _row("raw sqlite3, 100 rows/transaction", n, BATCH, samples, total, f"stored {count:,}")
    )
    samples, total, count = sqlite_utils_single(entries)
    rows.append(_row("sqlite-utils `Table.insert`", n, 1, samples, total, f"stored {count:,}"))
    samples, total, count = persist_queue_put(entries)
    rows.append(
        _row(
            "persist-queue `SQLiteAckQueue.put` (FULL, pickle)",
            n,
            1,
            samples,
            total,
            f"stored {count:,}",
        )
    )

    # At the cap: enough entries to fill a small spool cap_fill times over.
    n_cap = cap_fill * cap_bytes // entry_bytes
    cap_entries = sample_entries(n_cap)
    for name, fn, per_call in (
        (f"spooler `append` at a {cap_mib} MiB cap", spooler_single, 1),
        (f"spooler `append_many` at a {cap_mib} MiB cap", spooler_batched, BATCH),
    ):
        samples, total, stats = fn(cap_entries, cap_bytes)
        c = stats.counters
        note = (
            f"{cap_fill}x over: kept {stats.depth:,}, evicted {c['evicted']:,}, "
            f"dropped {c['dropped']:,}, {stats.bytes_on_disk / 2**20:.2f} MiB on disk"
        )
        rows.append(_row(name, n_cap, per_call, samples, total, note))

    headers = [
        "case",
        "entries",
        "entries/call",
        "entries/s",
        "p50 µs/call",
        "p99 µs/call",
        "check",
    ]
    seconds = time.monotonic() - started
    print(header(f"Append: {n:,} entries of ~{entry_bytes} bytes per case"))
    print(markdown_table(headers, rows))
    print(f"\n(ran in {seconds:.1f} s)")
    write_json(
        args.json,
        {"n": n, "entry_bytes": entry_bytes, "headers": headers, "rows": rows, "seconds": seconds},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
