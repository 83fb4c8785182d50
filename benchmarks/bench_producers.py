"""Many producers: 8 processes calling ``track_emit`` flat out into one spool, beside one.

For each mode (``background``, ``immediate``) and each process count (1, then 8), fresh
child processes configure spooler on the same new spool (``ship_in_process=False``: only
appenders, no shipper; a 1 GiB cap so nothing is evicted), make 200 untimed calls (which
open the spool and start the writer thread), wait at a barrier, then make M timed calls as
fast as they can and call ``spooler.shutdown()`` (which flushes background mode's buffer).

Per case: the calls' aggregate rate (all calls / from the first start to the last end), the
committed rate (rows in the spool / until the last ``shutdown`` returned), per-call p50/p99
pooled over all processes, the share of calls that returned False, the spool's ``dropped``
counter, and whether every accepted entry is in the spool.

    python benchmarks/bench_producers.py            # M = 20,000 calls per process
    python benchmarks/bench_producers.py --quick    # M = 2,000
"""

from __future__ import annotations

import argparse
import array
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import (
    child_env,
    header,
    markdown_table,
    percentiles_us,
    sample_payload,
    write_json,
)

API_KEY = "bench"
WARMUP = 200
RING = 1_000
SPOOL_BYTES = 1 << 30
MODES = ("background", "immediate")
PROCESS_COUNTS = (1, 8)


def _child(mode: str, spool_path: str, m: int, out: str) -> int:
    import spooler

    spooler.configure(
        api_key=API_KEY,
        endpoint="http://127.0.0.1:9",  # never contacted: no shipper in these processes
        spool_path=spool_path,
        spool_mode=mode,
        ship_in_process=False,
        spool_max_bytes=SPOOL_BYTES,
    )
    assert spooler.start()
    ring = [sample_payload(os.getpid() * RING + i) for i in range(RING)]
    warm_true = sum(spooler.track_emit(ring[i % RING]) for i in range(WARMUP))
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: the parent writes one line to every child at once
    samples = array.array("q", bytes(8 * m))
    clock = time.perf_counter_ns
    track = spooler.track_emit
    true = 0
    start = time.monotonic()
    for i in range(m):
        t0 = clock()
        ok = track(ring[i % RING])
        samples[i] = clock() - t0
        true += ok
    end = time.monotonic()
    spooler.shutdown(timeout=0)
    flushed = time.monotonic()
    with open(out, "wb") as f:
        samples.tofile(f)
    print(
        json.dumps(
            {
                "true": true,
                "false": m - true,
                "warm_true": warm_true,
                "start": start,
                "end": end,
                "flushed": flushed,
            }
        )
    )
    return 0


def run_case(mode: str, procs: int, m: int, folder: str) -> dict[str, Any]:
    """``procs`` children appending ``m`` entries each into one new spool."""
    from spooler.spool import read_stats

    case_dir = os.path.join(folder, f"{mode}-{procs}")
    os.makedirs(case_dir, mode=0o700)
    path = os.path.join(case_dir, "spool.db")
    children = []
    for i in range(procs):
        out = os.path.join(case_dir, f"samples-{i}.bin")
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", mode, path, str(m), out],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        children.append((proc, out))
    for proc, _ in children:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"producer failed to start:\n{proc.communicate()[1]}")
    for proc, _ in children:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    samples: list[int] = []
    for proc, out in children:
        stdout, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"producer failed:\n{stderr}")
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
        chunk = array.array("q")
        with open(out, "rb") as f:
            chunk.frombytes(f.read())
        samples += chunk
    stats = read_stats(path)
    start = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    flushed = max(r["flushed"] for r in reports)
    calls = procs * m
    true = sum(r["true"] for r in reports)
    false = sum(r["false"] for r in reports)
    accepted = true + sum(r["warm_true"] for r in reports)
    warm_false = procs * WARMUP - sum(r["warm_true"] for r in reports)
    p50, p99 = percentiles_us(samples)
    return {
        "mode": mode,
        "procs": procs,
        "calls": calls,
        "true": true,
        "false": false,
        "false_share": false / calls,
        "dropped": stats.counters.get("dropped", 0),
        "depth": stats.depth,
        "accepted": accepted,
        "warm_false": warm_false,
        "calls_per_s": calls / (end - start),
        "committed_per_s": stats.depth / (flushed - start),
        "timed_s": end - start,
        "flushed_s": flushed - start,
        "p50_us": p50,
        "p99_us": p99,
    }


def _check(r: dict[str, Any]) -> str:
    """Did every entry that returned True land, and is every loss counted?"""
    missing = r["accepted"] - r["depth"]
    if missing == 0:
        return f"spool holds all {r['accepted']:,} accepted"
    # The dropped counter also counts the calls that returned False; past those, it
    # counted entries that had returned True and were dropped later (at shutdown).
    counted = r["dropped"] - r["false"] - r["warm_false"]
    if counted == missing:
        return f"**{missing:,} returned True but were dropped later (counted as dropped)**"
    return (
        f"**{missing:,} returned True but are not in the spool; "
        f"{max(0, counted):,} of them counted as dropped**"
    )


HEADERS = [
    "mode",
    "processes",
    "calls",
    "calls/s (all)",
    "committed entries/s",
    "vs 1 process",
    "p50 µs",
    "p99 µs",
    "returned False",
    "dropped counter",
    "check",
]


def run(m: int, folder: str) -> dict[str, Any]:
    """Every mode x process count; rows and raw results."""
    results = []
    rows = []
    for mode in MODES:
        base = None
        for procs in PROCESS_COUNTS:
            r = run_case(mode, procs, m, folder)
            results.append(r)
            base = base or r["committed_per_s"]
            check = _check(r)
            rows.append(
                [
                    mode,
                    procs,
                    r["calls"],
                    r["calls_per_s"],
                    r["committed_per_s"],
                    f"{r['committed_per_s'] / base:.2f}x",
                    r["p50_us"],
                    r["p99_us"],
                    f"{r['false']:,} ({100 * r['false_share']:.2f} %)",
                    r["dropped"],
                    check,
                ]
            )
    return {"m": m, "rows": rows, "results": results}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2], int(argv[3]), argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="M = 2,000")
    parser.add_argument("-m", type=int, default=None, help="timed calls per process (20,000)")
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    m = args.m or (2_000 if args.quick else 20_000)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        out = run(m, folder)
    out["seconds"] = time.monotonic() - started
    print(header(f"Many producers: {m:,} `track_emit` calls per process into one spool"))
    print(markdown_table(HEADERS, out["rows"]))
    print(f"\n(ran in {out['seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
