"""What one hook call costs the host: spooler's ``track_emit`` beside its peers.

Every case gets the same notifications: ``event_name``, ``event_id``, ``idempotency_key``,
``event_version``, ``occurred_at`` and a nested ``payload`` dict. spooler ignores ``payload``
by design; the peers are handed the five metadata fields only (picked out inside the timed
call, as spooler's serializer does), so nobody is charged for copying the payload.

Each case runs in a fresh child process (no thread or import left over from another case):
1,000 warm-up calls, then N timed calls, each timed with ``time.perf_counter_ns``. With
``--rounds R`` every case runs R times, the cases interleaved; percentiles pool all rounds.

* spooler ``background`` (the default), ``immediate``, and disabled (no key);
  ``ship_in_process=False`` so no shipper competes for the GIL, plus one ``background`` row
  with the in-process shipper delivering to the minimal receiver.
* raw sqlite3: one autocommit ``INSERT`` (its own transaction and commit) of the same entry
  spooler stores, ``json.dumps`` inside the timed call; WAL, ``synchronous=NORMAL`` as
  spooler. Issue 9's yardstick for immediate mode (which also builds and validates the
  entry from the notification; raw gets it prebuilt).
* OpenTelemetry SDK ``Logger.emit`` with a ``BatchLogRecordProcessor`` and an exporter that
  counts and discards.
* Segment ``analytics.Client.track``: built with ``send=False`` so no consumer thread ever
  starts, then ``send`` switched on so ``track`` runs its whole path including the queue
  ``put`` (nothing drains the queue; nothing is sent).
* persist-queue ``SQLiteAckQueue.put`` (durable per call, its defaults: fsync per put).
* ``queue.Queue.put_nowait`` of the metadata dict (unbounded, no consumer): the floor for
  "hand it to another thread".

A socket guard refuses any connection that is not loopback, in every child.

    python benchmarks/bench_hook.py            # N = 50,000, 1 round
    python benchmarks/bench_hook.py --quick    # N = 5,000
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import (
    MinimalReceiver,
    child_env,
    header,
    install_network_guard,
    markdown_table,
    metadata_of,
    percentiles_us,
    quantiles_us,
    sample_payload,
    write_json,
)

WARMUP = 1_000
RING = 1_000  # distinct notifications, cycled
API_KEY = "bench"

#: (key, label) in table order.
CASES = [
    ("floor", "timer floor (no-op function)"),
    ("disabled", "spooler `track_emit`, disabled (no key)"),
    ("background", "spooler `track_emit`, background"),
    ("immediate", "spooler `track_emit`, immediate"),
    ("background_ship", "spooler `track_emit`, background + in-process shipper"),
    ("raw_sqlite", "raw sqlite3 autocommit INSERT + commit (json.dumps incl.)"),
    ("otel", "OpenTelemetry `Logger.emit` (BatchLogRecordProcessor)"),
    ("segment", "Segment `analytics.Client.track`"),
    ("persist_queue", "persist-queue `SQLiteAckQueue.put`"),
    ("queue", "`queue.Queue.put_nowait`"),
]
LABELS = dict(CASES)


# -- timing --------------------------------------------------------------------------------


def time_hook(call: Callable[[dict[str, Any]], Any], n: int) -> tuple[list[int], int]:
    """WARMUP untimed calls, then n timed ones; per-call ns and the timed loop's total ns."""
    ring = [sample_payload(i) for i in range(RING)]
    for i in range(WARMUP):
        call(ring[i % RING])
    samples = [0] * n
    clock = time.perf_counter_ns
    gc.collect()
    start = clock()
    for i in range(n):
        payload = ring[i % RING]
        t0 = clock()
        call(payload)
        samples[i] = clock() - t0
    return samples, clock() - start


@contextmanager
def _tmpdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        yield folder


# -- cases (each runs in its own child process) ---------------------------------------------


def case_floor(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    def noop(payload: dict[str, Any]) -> bool:
        return False

    samples, total = time_hook(noop, n)
    return samples, total, "a Python call that does nothing: the timer's own cost"


def _case_spooler(n: int, mode: str, endpoint: str, *, ship: bool) -> tuple[list[int], int, str]:
    import spooler
    from spooler.spool import read_stats

    with _tmpdir() as folder:
        path = os.path.join(folder, "spool", "spool.db")
        spooler.configure(
            api_key=API_KEY,
            endpoint=endpoint,
            spool_path=path,
            spool_mode=mode,
            ship_in_process=ship,
        )
        assert spooler.start()
        accepted = 0

        def call(payload: dict[str, Any]) -> None:
            nonlocal accepted
            accepted += spooler.track_emit(payload)

        samples, total = time_hook(call, n)
        spooler.shutdown()
        stats = read_stats(path)
    expected = n + WARMUP
    note = f"accepted {accepted:,}/{expected:,}; spool holds {stats.depth:,}"
    shipped = stats.counters.get("shipped", 0)
    if ship:
        note += f", shipped {shipped:,}"
    landed = stats.depth + shipped
    if landed != accepted or accepted != expected:
        dropped = stats.counters.get("dropped", 0)
        note += f"; **{expected - landed:,} missing** (dropped counter {dropped:,})"
    return samples, total, note


def case_background(n: int, endpoint: str) -> tuple[list[int], int, str]:
    return _case_spooler(n, "background", endpoint, ship=False)


def case_immediate(n: int, endpoint: str) -> tuple[list[int], int, str]:
    return _case_spooler(n, "immediate", endpoint, ship=False)


def case_background_ship(n: int, endpoint: str) -> tuple[list[int], int, str]:
    return _case_spooler(n, "background", endpoint, ship=True)


def case_disabled(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    import spooler

    with _tmpdir() as folder:
        path = os.path.join(folder, "spool.db")
        spooler.configure(api_key=None, spool_path=path)
        assert not spooler.start()
        samples, total = time_hook(spooler.track_emit, n)
        spooler.shutdown()
        created = os.listdir(folder)
    return samples, total, f"files created: {len(created)}"


def case_raw_sqlite(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    import sqlite3

    from spooler.serializer import build_entry

    # The entries spooler would store for the ring's notifications, built untimed.
    entries = {}
    for i in range(RING):
        payload = sample_payload(i)
        entries[payload["event_id"]] = build_entry("emitted", payload)
    with _tmpdir() as folder:
        conn = sqlite3.connect(os.path.join(folder, "raw.db"), isolation_level=None)
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
            "created_at TEXT NOT NULL, entry TEXT NOT NULL)"
        )
        insert = "INSERT INTO entries(kind, created_at, entry) VALUES (?, ?, ?)"
        dumps = json.dumps

        def call(payload: dict[str, Any]) -> None:
            entry = entries[payload["event_id"]]
            conn.execute(
                insert, ("emitted", entry["timestamp"], dumps(entry, separators=(",", ":")))
            )

        samples, total = time_hook(call, n)
        count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        conn.close()
    return samples, total, f"stored {count:,} (entry prebuilt; WAL, synchronous=NORMAL)"


def case_otel(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class Discard(LogRecordExporter):  # type: ignore[misc]
        def __init__(self) -> None:
            self.count = 0

        def export(self, batch: Any) -> LogRecordExportResult:
            self.count += len(batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    exporter = Discard()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("bench")

    def call(payload: dict[str, Any]) -> None:
        meta = metadata_of(payload)
        logger.emit(event_name=meta.pop("event_name"), attributes=meta)

    samples, total = time_hook(call, n)
    provider.shutdown()
    expected = n + WARMUP
    note = f"exported {exporter.count:,}/{expected:,}"
    if exporter.count != expected:
        note += f" (**{expected - exporter.count:,} dropped** by its bounded queue)"
    return samples, total, note


def case_segment(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    from segment.analytics.client import Client

    # send=False: no consumer thread, no atexit join; nothing can leave the process.
    client = Client(
        write_key="x",
        host="http://127.0.0.1:9",
        send=False,
        max_queue_size=n + WARMUP + 10,
    )
    assert not any(c.is_alive() for c in client.consumers)
    client.send = True  # run track's full path, queue put included

    def call(payload: dict[str, Any]) -> None:
        meta = metadata_of(payload)
        client.track(user_id="bench-user", event=meta.pop("event_name"), properties=meta)

    samples, total = time_hook(call, n)
    return samples, total, f"queued {client.queue.qsize():,} (never sent)"


def case_persist_queue(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    import persistqueue

    with _tmpdir() as folder:
        q = persistqueue.SQLiteAckQueue(os.path.join(folder, "pq"))

        def call(payload: dict[str, Any]) -> None:
            q.put(metadata_of(payload))

        samples, total = time_hook(call, n)
        note = f"stored {q.qsize():,} (synchronous=FULL, pickle)"
    return samples, total, note


def case_queue(n: int, _endpoint: str) -> tuple[list[int], int, str]:
    import queue

    q: queue.Queue[dict[str, Any]] = queue.Queue()

    def call(payload: dict[str, Any]) -> None:
        q.put_nowait(metadata_of(payload))

    samples, total = time_hook(call, n)
    return samples, total, f"queued {q.qsize():,} (no consumer)"


def _child(case: str, n: int, endpoint: str, out: str) -> int:
    install_network_guard()
    fn = globals()[f"case_{case}"]
    samples, total, note = fn(n, endpoint)
    array.array("q", samples).tofile(open(out, "wb"))  # noqa: SIM115 - closed at exit
    print(json.dumps({"total_ns": total, "note": note}))
    return 0


# -- the parent ------------------------------------------------------------------------------


def run_case(case: str, n: int, endpoint: str, folder: str) -> tuple[list[int], int, str]:
    """One case in a fresh child process: its samples, loop ns and check note."""
    out = os.path.join(folder, f"{case}.bin")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", case, str(n), endpoint, out],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hook case {case} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = array.array("q")
    with open(out, "rb") as f:
        samples.frombytes(f.read())
    os.unlink(out)
    return list(samples), int(result["total_ns"]), str(result["note"])


def run(n: int, n_pq: int, rounds: int, cases: list[str]) -> dict[str, Any]:
    """Every case ``rounds`` times, interleaved; pooled samples per case."""
    pooled: dict[str, list[int]] = {c: [] for c in cases}
    totals: dict[str, int] = {c: 0 for c in cases}
    notes: dict[str, list[str]] = {c: [] for c in cases}
    p50_rounds: dict[str, list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder, MinimalReceiver() as rcv:
        for _ in range(rounds):
            for case in cases:
                count = n_pq if case == "persist_queue" else n
                samples, total, note = run_case(case, count, rcv.url, folder)
                pooled[case] += samples
                totals[case] += total
                notes[case].append(note)
                p50_rounds[case].append(percentiles_us(samples)[0])
    rows = []
    data: dict[str, Any] = {}
    for case in cases:
        samples = pooled[case]
        p50, p99 = percentiles_us(samples)
        calls_per_s = len(samples) / (totals[case] / 1e9)
        note = notes[case][0] if len(set(notes[case])) == 1 else " / ".join(notes[case])
        rows.append([LABELS[case], len(samples), calls_per_s, p50, p99, note])
        data[case] = {
            "label": LABELS[case],
            "calls": len(samples),
            "calls_per_s": calls_per_s,
            "p50_us": p50,
            "p99_us": p99,
            "p50_rounds_us": p50_rounds[case],
            "notes": notes[case],
            "quantiles_us": quantiles_us(samples),
        }
    return {"n": n, "rounds": rounds, "rows": rows, "cases": data}


def targets(cases: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """Issue 9's hook goals: (label, spooler's value, the bound, met)."""
    out = []

    def p(case: str, key: str) -> float | None:
        return cases[case][key] if case in cases else None

    bg, otel50, otel99 = p("background", "p50_us"), p("otel", "p50_us"), p("otel", "p99_us")
    if bg is not None and otel50 is not None and otel99 is not None:
        out.append(("background p50 < OTel emit p50 / 3 (µs)", bg, otel50 / 3, bg < otel50 / 3))
        out.append(("background p50 < OTel emit p99 (µs)", bg, otel99, bg < otel99))
    im, raw = p("immediate", "p50_us"), p("raw_sqlite", "p50_us")
    if im is not None and raw is not None:
        out.append(("immediate p50 <= 1.5 x raw sqlite3 p50 (µs)", im, 1.5 * raw, im <= 1.5 * raw))
    off = p("disabled", "p50_us")
    if off is not None:
        out.append(("disabled p50 < 1 µs (timer included)", off, 1.0, off < 1.0))
    return out


HEADERS = ["case", "calls", "calls/s", "p50 µs", "p99 µs", "check"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], int(argv[2]), argv[3], argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5,000")
    parser.add_argument("-n", type=int, default=None, help="timed calls per case (50,000)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (1)")
    parser.add_argument(
        "--persist-queue-n",
        type=int,
        default=None,
        help="timed calls for persist-queue (default: N; it fsyncs every put)",
    )
    parser.add_argument(
        "--cases", default=",".join(c for c, _ in CASES), help="comma-separated subset"
    )
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.quick else 50_000)
    n_pq = args.persist_queue_n or n
    started = time.monotonic()
    out = run(n, n_pq, args.rounds, args.cases.split(","))
    out["seconds"] = time.monotonic() - started
    rounds = f", {args.rounds} rounds pooled" if args.rounds > 1 else ""
    title = f"Hook: one call in the host's thread, {n:,} timed calls after {WARMUP:,} warm-up"
    print(header(title + rounds))
    print(markdown_table(HEADERS, out["rows"]))
    print("\nIssue 9's goals (reported, not asserted):\n")
    for label, ours, bound, met in targets(out["cases"]):
        print(f"- {label}: {ours:.2f} vs {bound:.2f} -> {'met' if met else 'MISSED'}")
    print(f"\n(ran in {out['seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
