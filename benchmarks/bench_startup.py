"""Start-up on a full 64 MiB spool: what the writer's open and ``quick_check`` cost, and what
the host's first ``track_emit`` waits for.

A spool is filled to its 64 MiB cap once (untimed); every measurement runs in a fresh child
process on its own copy, either **warm** (the copy's pages in the OS page cache, as after a
restart) or **cold** (its pages dropped from the page cache with ``posix_fadvise
DONTNEED`` on that file only, as after a reboot). Cases:

* **writer open**: ``Spool(path, quick_check=False)`` (folder and file checks, WAL scan,
  pragmas, schema), then ``Spool.verify()`` (``PRAGMA quick_check``), both timed, on the
  main thread. What spooler's writer thread does at start.
* **immediate / background first call**: ``configure`` + ``start`` on that spool
  (``ship_in_process=False``), then the first ``track_emit``: its return time, then 1,000
  more calls (p50, max). Every ``PRAGMA quick_check`` executed in the process is timed and
  its thread named, through a ``sqlite3.connect`` factory installed in the child only
  (spooler is not modified), so the table says where it ran and when it ended.

    python benchmarks/bench_startup.py            # 3 rounds
    python benchmarks/bench_startup.py --quick    # 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import child_env, header, markdown_table, sample_entries, write_json

API_KEY = "bench"
CAP = 64 << 20
AFTER_CALLS = 1_000


# -- the child ---------------------------------------------------------------------------------


def _install_quick_check_probe(t0: float) -> list[dict[str, Any]]:
    """Time every ``PRAGMA quick_check`` this process runs, with its thread's name."""
    import sqlite3
    import threading

    seen: list[dict[str, Any]] = []

    class Probe(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            if "quick_check" not in sql:
                return super().execute(sql, *args)
            start = time.perf_counter()
            try:
                return super().execute(sql, *args)
            finally:
                seen.append(
                    {
                        "thread": threading.current_thread().name,
                        "start_ms": (start - t0) * 1000,
                        "end_ms": (time.perf_counter() - t0) * 1000,
                    }
                )

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Probe)
        return real_connect(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]
    return seen


def _child(kind: str, path: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    probe = _install_quick_check_probe(t0)
    if kind == "open":
        from spooler.spool import Spool

        a = time.perf_counter()
        spool = Spool(path, max_bytes=CAP, busy_timeout=1.0, quick_check=False)
        b = time.perf_counter()
        healthy = spool.verify()
        c = time.perf_counter()
        depth = spool.stats().depth
        spool.close()
        return {
            "open_ms": (b - a) * 1000,
            "quick_check_ms": (c - b) * 1000,
            "healthy": healthy,
            "depth": depth,
            "quick_checks": probe,
        }
    import spooler

    sample = {
        "event_id": 1,
        "event_name": "order.placed",
        "event_version": 1,
        "idempotency_key": "9b2f6a8e-4c1d-4f3a-8e2b-7d5c6a1b0f3e",
        "occurred_at": "2026-01-15T10:30:00.000Z",
        "payload": {"order_id": 1},
    }
    spooler.configure(
        api_key=API_KEY,
        endpoint="http://127.0.0.1:9",  # never contacted: no shipper here
        spool_path=path,
        spool_mode=kind,
        spool_max_bytes=CAP,
        ship_in_process=False,
    )
    a = time.perf_counter()
    spooler.start()
    b = time.perf_counter()
    first = spooler.track_emit(sample)
    c = time.perf_counter()
    after = []
    accepted = 0
    slowest_at = 0.0
    for i in range(AFTER_CALLS):
        s = time.perf_counter_ns()
        accepted += spooler.track_emit(dict(sample, event_id=i + 2))
        took = time.perf_counter_ns() - s
        if not after or took > max(after):
            slowest_at = (s / 1e9 - t0) * 1000
        after.append(took)
    d = time.perf_counter()
    # Let the writer finish its quick_check before shutting down, so it is recorded.
    deadline = time.monotonic() + 30
    while not probe and time.monotonic() < deadline:
        time.sleep(0.01)
    spooler.shutdown(timeout=0)
    after.sort()
    from spooler.spool import read_stats

    return {
        "evicted": read_stats(path).counters.get("evicted", 0),
        "slowest_at_ms": slowest_at,
        "start_ms": (b - a) * 1000,
        "first_call_ms": (c - b) * 1000,
        "first_ok": first,
        "first_call_at_ms": (c - t0) * 1000,
        "after_p50_us": after[len(after) // 2] / 1000,
        "after_max_us": after[-1] / 1000,
        "after_accepted": accepted,
        "after_done_at_ms": (d - t0) * 1000,
        "quick_checks": probe,
    }


# -- the parent ---------------------------------------------------------------------------------


def fill_full(path: str) -> dict[str, Any]:
    """Fill a spool at ``path`` to its 64 MiB cap (until it starts evicting)."""
    from spooler.spool import Spool

    ring = sample_entries(5_000)
    t0 = time.perf_counter()
    with Spool(path, max_bytes=CAP) as spool:
        i = 0
        while True:
            chunk = [ring[(i + j) % len(ring)] for j in range(1_000)]
            spool.append_many(chunk, timeout=5.0)
            i += 1_000
            if i % 20_000 == 0 and spool.stats().counters.get("evicted", 0) > 0:
                break
        stats = spool.stats()
    return {
        "rows": stats.depth,
        "bytes": sum(
            os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s)
        ),
        "fill_s": time.perf_counter() - t0,
    }


def _copy(template: str, folder: str, *, cold: bool) -> str:
    os.makedirs(folder, mode=0o700)
    path = os.path.join(folder, "spool.db")
    shutil.copyfile(template, path)
    os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if cold:
            # Only this file's cached pages: nothing else on the machine is touched.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        else:
            with os.fdopen(os.dup(fd), "rb") as f:
                while f.read(1 << 20):
                    pass
    finally:
        os.close(fd)
    return path


def run_child(kind: str, path: str) -> dict[str, Any]:
    """One measurement in a fresh process."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, path],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"start-up child {kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _qc(result: dict[str, Any]) -> tuple[str, float, float]:
    checks = result.get("quick_checks") or []
    if not checks:
        return "not run", 0.0, 0.0
    threads = ", ".join(sorted({c["thread"] for c in checks}))
    return threads, sum(c["end_ms"] - c["start_ms"] for c in checks), checks[-1]["end_ms"]


def run(rounds: int, folder: str) -> dict[str, Any]:
    """Every case warm and cold, ``rounds`` times interleaved."""
    template_dir = os.path.join(folder, "template")
    os.makedirs(template_dir, mode=0o700)
    template = os.path.join(template_dir, "spool.db")
    filled = fill_full(template)
    kinds = ("open", "immediate", "background")
    results: dict[str, list[dict[str, Any]]] = {}
    case = 0
    for _ in range(rounds):
        for cache in ("warm", "cold"):
            for kind in kinds:
                case += 1
                path = _copy(template, os.path.join(folder, f"c{case}"), cold=cache == "cold")
                results.setdefault(f"{kind}/{cache}", []).append(run_child(kind, path))
                shutil.rmtree(os.path.dirname(path))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = []
    summary: dict[str, Any] = {}
    for cache in ("warm", "cold"):
        opens = results[f"open/{cache}"]
        open_ms = med([r["open_ms"] for r in opens])
        qc_ms = med([r["quick_check_ms"] for r in opens])
        summary[f"open/{cache}"] = {"open_ms": open_ms, "quick_check_ms": qc_ms}
        rows.append(
            [
                f"writer open, no quick_check ({cache})",
                open_ms,
                "main (measured alone)",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"`PRAGMA quick_check` of the full spool ({cache})",
                qc_ms,
                "main (measured alone)",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        for kind in ("immediate", "background"):
            rs = results[f"{kind}/{cache}"]
            first = med([r["first_call_ms"] for r in rs])
            threads = {_qc(r)[0] for r in rs}
            qc_end = med([_qc(r)[2] for r in rs])
            qc_ms_run = med([_qc(r)[1] for r in rs])
            summary[f"{kind}/{cache}"] = {
                "first_call_ms": first,
                "quick_check_threads": sorted(threads),
                "quick_check_ms": qc_ms_run,
                "quick_check_end_ms": qc_end,
                "after_p50_us": med([r["after_p50_us"] for r in rs]),
                "after_max_us": med([r["after_max_us"] for r in rs]),
                "first_ok": all(r["first_ok"] for r in rs),
                "evicted": med([r["evicted"] for r in rs]),
                "slowest_at_ms": med([r["slowest_at_ms"] for r in rs]),
            }
            s = summary[f"{kind}/{cache}"]
            rows.append(
                [
                    f"{kind}: first `track_emit` returns ({cache})",
                    first,
                    ", ".join(sorted(threads)),
                    qc_ms_run,
                    s["after_p50_us"],
                    s["after_max_us"],
                    f"{s['slowest_at_ms']:.0f} / {qc_end:.0f}",
                    int(s["evicted"]),
                ]
            )
    return {"rounds": rounds, "filled": filled, "rows": rows, "summary": summary, "raw": results}


HEADERS = [
    "what",
    "ms (median)",
    "quick_check ran on thread",
    "its quick_check ms",
    "next 1,000 calls p50 µs",
    "next 1,000 calls max µs",
    "slowest call at / quick_check ended at (ms after launch)",
    "rows evicted (the spool is at its cap)",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(_child(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3)")
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        out = run(rounds, folder)
    out["seconds"] = time.monotonic() - started
    f = out["filled"]
    print(
        header(
            f"Start-up on a full 64 MiB spool ({f['rows']:,} rows, "
            f"{f['bytes'] / 2**20:.1f} MiB on disk), median of {rounds} round(s)"
        )
    )
    print(markdown_table(HEADERS, out["rows"]))
    print(f"\n(ran in {out['seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
