"""Drain throughput: spooler's shipper beside a naive loop, into the same minimal receiver.

For each batch size, two drainers each empty a copy of the same full spool (filled once,
untimed) in a child process of their own, one after the other, into ``minimal_receiver.py``
(its own process; it only counts ``"entry_id"`` and answers 200, so it is not what is
measured):

* **shipper**: ``Shipper(config, watch=False).drain()`` (httpx and httpcore imported, the
  spool opened and checked before the clock starts; the drain includes creating its HTTP
  client, its one heartbeat and the final ``maintain``, which gives freed pages back).
* **naive loop**: plain sqlite3 + httpx: ``SELECT id, entry ... ORDER BY id LIMIT batch``, join
  the stored JSON texts (``entry_id`` spliced in, so the receiver sees the same contract),
  ``POST`` with one keep-alive ``httpx.Client``, ``DELETE ... WHERE id <= last``; autocommit,
  ``synchronous=NORMAL`` like spooler. No retries, no idempotency key, no accounting: the
  ceiling a shipper could reach on this machine.

Each child reports its own wall time, CPU (``time.process_time``) and peak RSS (``VmHWM``);
the receiver reports how many entries arrived. With ``--rounds R`` the pairs are repeated
R times, interleaved, and the table shows every round plus the median ratio.

``--rss-rows N`` (the full report uses 1,000,000) adds one more case: the shipper draining
N rows (batch 500) while this process samples its ``VmRSS`` every 0.2 s, to show whether
its memory stays flat.

    python benchmarks/bench_drain.py                 # N = 100,000; batch 50 and 500; 3 rounds
    python benchmarks/bench_drain.py --quick         # N = 10,000, 1 round
    python benchmarks/bench_drain.py --rss-rows 1000000
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
import threading
import time
from typing import Any

from _common import (
    MinimalReceiver,
    child_env,
    header,
    markdown_table,
    proc_status_kib,
    sample_entries,
    write_json,
)

from spooler.spool import Spool

API_KEY = "bench"
SPOOL_BYTES = 1 << 30  # far above what N entries need: nothing is evicted
RSS_LIMIT_MB = 60.0  # issue 9's bound for the shipper's RSS while draining 1M rows
RSS_BATCH = 500


# -- the children (run as ``bench_drain.py --child KIND ...``) -------------------------------


def _hwm_kib() -> int:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over
    # fork + exec on Linux and report the benchmark driver's memory, not the drainer's.
    return proc_status_kib("self", "VmHWM")


def _child_shipper(endpoint: str, spool_path: str, batch_size: int) -> dict[str, Any]:
    # spooler imports httpx lazily and httpx imports httpcore when its first client is
    # built (~0.2 s here, once per process); the naive loop builds its client before its
    # clock starts, so the shipper's child imports both first.
    import httpcore  # noqa: F401
    import httpx  # noqa: F401

    from spooler.config import Config
    from spooler.shipper import Shipper

    config = Config(
        api_key=API_KEY,
        endpoint=endpoint,
        spool_path=spool_path,
        batch_size=batch_size,
        flush_interval=3600.0,
        spool_max_bytes=SPOOL_BYTES,
    )
    shipper = Shipper(config, watch=False)
    rss_before = _hwm_kib()
    print("ready", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = shipper.drain()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss_peak = _hwm_kib()
    shipper.close()
    return {
        "shipped": result.shipped,
        "waiting": result.waiting,
        "error": result.error,
        "wall": wall,
        "cpu": cpu,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
    }


def _child_naive(endpoint: str, spool_path: str, batch_size: int) -> dict[str, Any]:
    import sqlite3

    import httpx

    conn = sqlite3.connect(spool_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    sid = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()[0]
    client = httpx.Client(
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=15.0,
    )
    rss_before = _hwm_kib()
    print("ready", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    shipped = 0
    error = None
    select = "SELECT id, entry FROM entries ORDER BY id LIMIT ?"
    while True:
        rows = conn.execute(select, (batch_size,)).fetchall()
        if not rows:
            break
        body = (
            '{"entries":['
            + ",".join(f'{text[:-1]},"entry_id":"{sid}-{rid}"}}' for rid, text in rows)
            + "]}"
        )
        answer = client.post(endpoint + "/events", content=body.encode())
        if answer.status_code != 200:
            error = f"answered {answer.status_code}"
            break
        conn.execute("DELETE FROM entries WHERE id <= ?", (rows[-1][0],))
        shipped += len(rows)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    waiting = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    client.close()
    conn.close()
    return {
        "shipped": shipped,
        "waiting": waiting,
        "error": error,
        "wall": wall,
        "cpu": cpu,
        "rss_before_kib": rss_before,
        "rss_peak_kib": _hwm_kib(),
    }


# -- the parent ------------------------------------------------------------------------------


def fill_template(path: str, n: int) -> None:
    """A spool holding ``n`` entries, closed (WAL checkpointed into the main file)."""
    ring = sample_entries(min(n, 10_000))
    with Spool(path, max_bytes=SPOOL_BYTES) as spool:
        for i in range(0, n, 1000):
            chunk = [ring[(i + j) % len(ring)] for j in range(min(1000, n - i))]
            stored = spool.append_many(chunk, timeout=5.0)
            assert stored == len(chunk), "prefill lost entries"


def _copy_spool(template: str, folder: str) -> str:
    os.makedirs(folder, mode=0o700)
    path = os.path.join(folder, "spool.db")
    shutil.copyfile(template, path)
    os.chmod(path, 0o600)
    return path


def run_drainer(
    kind: str,
    receiver: MinimalReceiver,
    spool_path: str,
    batch_size: int,
    n: int,
    *,
    sample_rss: bool = False,
) -> dict[str, Any]:
    """One drainer child on one spool copy; what it reports plus what arrived."""
    receiver.reset()
    before = receiver.counts()
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            kind,
            receiver.url,
            spool_path,
            str(batch_size),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    ready = proc.stdout.readline().strip() == "ready"

    def sampler() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            kib = proc_status_kib(proc.pid, "VmRSS")
            if kib:
                rss.append((time.perf_counter() - t0, kib / 1024))
            stop.wait(0.2)

    thread = threading.Thread(target=sampler, daemon=True)
    if sample_rss and ready:
        thread.start()
    out, err = proc.communicate()
    stop.set()
    if thread.is_alive():
        thread.join()
    if proc.returncode != 0 or not ready:
        raise RuntimeError(f"{kind} child failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    after = receiver.counts()
    result.update(
        kind=kind,
        batch_size=batch_size,
        n=n,
        arrived=after["entries"] - before["entries"],
        requests=after["requests"] - before["requests"],
        receiver_cpu=after["cpu"] - before["cpu"],
        rss_samples=rss,
    )
    return result


def _row(r: dict[str, Any], rnd: int, ratio: str) -> list[Any]:
    lost = r["n"] - r["arrived"]
    return [
        r["batch_size"],
        "spooler shipper" if r["kind"] == "shipper" else "naive loop",
        rnd,
        r["n"],
        r["arrived"] if lost == 0 else f"**{r['arrived']:,} ({lost:,} missing)**",
        r["shipped"] / r["wall"],
        ratio,
        r["wall"],
        r["cpu"] / r["shipped"] * 1e6 if r["shipped"] else 0.0,
        r["rss_peak_kib"] / 1024,
        r["receiver_cpu"],
        r["waiting"],
    ]


HEADERS = [
    "batch",
    "drainer",
    "round",
    "spooled",
    "arrived",
    "entries/s",
    "shipper / naive",
    "drain s",
    "CPU µs/entry",
    "peak RSS MiB",
    "receiver CPU s",
    "left",
]


def run(
    n: int, batch_sizes: list[int], rounds: int, rss_rows: int, *, folder: str
) -> dict[str, Any]:
    """Every case; a dict with the raw results, the table and the per-batch median ratios."""
    template = os.path.join(folder, "template", "spool.db")
    os.makedirs(os.path.dirname(template), mode=0o700)
    t0 = time.perf_counter()
    fill_template(template, n)
    fill_seconds = time.perf_counter() - t0
    results: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    ratios: dict[int, list[float]] = {b: [] for b in batch_sizes}
    case = 0
    with MinimalReceiver() as receiver:
        for rnd in range(1, rounds + 1):
            for batch in batch_sizes:
                pair = {}
                # Alternate which drainer goes first, so neither always gets the warmer cache.
                kinds = ("shipper", "naive") if rnd % 2 else ("naive", "shipper")
                for kind in kinds:
                    case += 1
                    path = _copy_spool(template, os.path.join(folder, f"case{case}"))
                    pair[kind] = run_drainer(kind, receiver, path, batch, n)
                    shutil.rmtree(os.path.dirname(path))
                ratio = (pair["shipper"]["shipped"] / pair["shipper"]["wall"]) / (
                    pair["naive"]["shipped"] / pair["naive"]["wall"]
                )
                ratios[batch].append(ratio)
                for kind in ("naive", "shipper"):
                    results.append(pair[kind])
                    rows.append(_row(pair[kind], rnd, f"{ratio:.2f}" if kind == "shipper" else ""))
        rss_case = None
        if rss_rows:
            big = os.path.join(folder, "big", "spool.db")
            os.makedirs(os.path.dirname(big), mode=0o700)
            t1 = time.perf_counter()
            fill_template(big, rss_rows)
            big_fill = time.perf_counter() - t1
            rss_case = run_drainer("shipper", receiver, big, RSS_BATCH, rss_rows, sample_rss=True)
            rss_case["fill_seconds"] = big_fill
    rows.sort(key=lambda r: (r[0], r[2], r[1] != "naive loop"))
    return {
        "n": n,
        "batch_sizes": batch_sizes,
        "rounds": rounds,
        "fill_seconds": fill_seconds,
        "results": results,
        "rows": rows,
        "median_ratio": {str(b): statistics.median(v) for b, v in ratios.items()},
        "all_ratios": {str(b): v for b, v in ratios.items()},
        "rss_case": rss_case,
    }


def rss_summary(case: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS and the RSS at 10 % and 90 % of the drain (flat means they are close)."""
    samples = case["rss_samples"]
    values = [mb for _, mb in samples]
    at = (lambda q: values[min(len(values) - 1, int(q * len(values)))]) if values else None
    return {
        "rows": case["n"],
        "arrived": case["arrived"],
        "entries_per_s": case["shipped"] / case["wall"] if case["wall"] else 0.0,
        "drain_s": case["wall"],
        "peak_rss_mb": case["rss_peak_kib"] / 1024,
        "rss_before_mb": case["rss_before_kib"] / 1024,
        "rss_10_mb": at(0.1) if at else 0.0,
        "rss_90_mb": at(0.9) if at else 0.0,
        "samples": len(values),
    }


def rss_table(case: dict[str, Any]) -> str:
    """The 1M-row case as a one-row table."""
    s = rss_summary(case)
    verdict = "met" if s["peak_rss_mb"] < RSS_LIMIT_MB else "**missed**"
    lost = s["rows"] - s["arrived"]
    return markdown_table(
        [
            "rows",
            "batch",
            "arrived",
            "entries/s",
            "drain s",
            "RSS before MiB",
            "RSS at 10 % MiB",
            "RSS at 90 % MiB",
            "peak RSS MiB",
            f"peak < {RSS_LIMIT_MB:.0f} MB",
        ],
        [
            [
                s["rows"],
                RSS_BATCH,
                s["arrived"] if not lost else f"**{s['arrived']:,} ({lost:,} missing)**",
                s["entries_per_s"],
                s["drain_s"],
                s["rss_before_mb"],
                s["rss_10_mb"],
                s["rss_90_mb"],
                s["peak_rss_mb"],
                verdict,
            ]
        ],
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, endpoint, spool_path, batch = argv[1], argv[2], argv[3], int(argv[4])
        child = _child_shipper if kind == "shipper" else _child_naive
        print(json.dumps(child(endpoint, spool_path, batch)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10,000, 1 round")
    parser.add_argument("-n", type=int, default=None, help="entries in the spool (100,000)")
    parser.add_argument("--batch-sizes", default="50,500", help="comma-separated (50,500)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument(
        "--rss-rows", type=int, default=0, help="also drain this many rows sampling RSS (0: off)"
    )
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    rounds = args.rounds or (1 if args.quick else 3)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        out = run(n, batch_sizes, rounds, args.rss_rows, folder=folder)
    out["seconds"] = time.monotonic() - started
    print(header(f"Drain: {n:,} spooled entries into the minimal receiver"))
    print(markdown_table(HEADERS, out["rows"]))
    print("\nMedian shipper / naive entries/s ratio (goal: 0.9 or more):\n")
    for b, ratio in out["median_ratio"].items():
        each = ", ".join(f"{r:.2f}" for r in out["all_ratios"][b])
        print(f"- batch {b}: {ratio:.2f} (rounds: {each})")
    for r in out["results"]:
        if r["error"]:
            print(f"{r['kind']} batch {r['batch_size']}: reported {r['error']}", file=sys.stderr)
    if out["rss_case"]:
        print(f"\nShipper draining {args.rss_rows:,} rows (batch {RSS_BATCH}), RSS sampled:\n")
        print(rss_table(out["rss_case"]))
    print(f"\n(ran in {out['seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
