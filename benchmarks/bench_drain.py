"""Drain throughput: a shipper in its own process empties a full spool into the local receiver.

For each batch size: fill a fresh spool with N entries (untimed), start a real
``spooler.receiver.Receiver`` in this process, then run ``Shipper(config, watch=False).drain()``
in a child process that reports its own wall time, CPU time (``time.process_time``) and
peak RSS (``VmHWM`` from ``/proc/self/status``). The parent counts what the receiver stored
("arrived") and its own CPU time while the child ran (the receiver's cost: HTTP parsing,
validation, SQLite writes).

    python benchmarks/bench_drain.py            # N = 100,000
    python benchmarks/bench_drain.py --quick    # N = 10,000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import header, markdown_table, sample_entries

from spooler.receiver import Receiver
from spooler.spool import Spool

API_KEY = "bench-key"
SPOOL_BYTES = 512 << 20  # far above what N entries need: nothing is evicted

# Runs in the child: only the shipper, nothing else in the process.
_CHILD = r"""
import json, sys, time
from spooler.config import Config
from spooler.shipper import Shipper

def hwm_kib():
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over
    # fork + exec on Linux and report the benchmark driver's memory, not the shipper's.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

endpoint, spool_path = sys.argv[1], sys.argv[2]
batch_size, max_bytes = int(sys.argv[3]), int(sys.argv[4])
config = Config(api_key="bench-key", endpoint=endpoint, spool_path=spool_path,
                batch_size=batch_size, flush_interval=3600.0, spool_max_bytes=max_bytes)
shipper = Shipper(config, watch=False)
rss_before = hwm_kib()
cpu0, wall0 = time.process_time(), time.perf_counter()
result = shipper.drain()
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
rss_peak = hwm_kib()
shipper.close()
print(json.dumps({"shipped": result.shipped, "batches": result.batches, "waiting": result.waiting,
                  "error": result.error, "wall": wall, "cpu": cpu,
                  "rss_before_kib": rss_before, "rss_peak_kib": rss_peak}))
"""


def _fill(path: str, n: int) -> None:
    entries = sample_entries(n)
    with Spool(path, max_bytes=SPOOL_BYTES) as spool:
        for i in range(0, n, 1000):
            stored = spool.append_many(entries[i : i + 1000], timeout=5.0)
            assert stored == len(entries[i : i + 1000]), "prefill lost entries"


def run_case(n: int, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        spool_path = os.path.join(folder, "spool.db")
        _fill(spool_path, n)
        with Receiver(api_key=API_KEY, db_path=os.path.join(folder, "receiver.db")) as receiver:
            cpu0 = time.process_time()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    receiver.url,
                    spool_path,
                    str(batch_size),
                    str(SPOOL_BYTES),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            receiver_cpu = time.process_time() - cpu0
            arrived = receiver.entry_count()
            duplicates = receiver.duplicate_count()
        if proc.returncode != 0:
            raise RuntimeError(f"shipper child failed:\n{proc.stderr}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(
        n=n,
        batch_size=batch_size,
        arrived=arrived,
        duplicates=duplicates,
        receiver_cpu=receiver_cpu,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10,000")
    parser.add_argument("-n", type=int, default=None, help="entries in the spool (100,000)")
    parser.add_argument("--batch-sizes", default="50,500", help="comma-separated (50,500)")
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    started = time.monotonic()
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        r = run_case(n, batch_size)
        lost = r["n"] - r["arrived"]
        rows.append(
            [
                batch_size,
                r["n"],
                r["arrived"],
                "none" if lost == 0 else f"**{lost:,} MISSING**",
                r["duplicates"],
                r["shipped"] / r["wall"],
                r["wall"],
                r["cpu"],
                r["cpu"] / r["shipped"] * 1e6 if r["shipped"] else 0.0,
                r["rss_peak_kib"] / 1024,
                r["rss_before_kib"] / 1024,
                r["receiver_cpu"],
                r["waiting"],
            ]
        )
        if r["error"]:
            print(f"batch_size {batch_size}: shipper reported {r['error']}", file=sys.stderr)
    print(header(f"Drain: {n:,} spooled entries to the local receiver"))
    print(
        markdown_table(
            [
                "batch_size",
                "spooled",
                "arrived",
                "lost",
                "duplicates",
                "entries/s",
                "drain s",
                "shipper CPU s",
                "shipper CPU µs/entry",
                "peak RSS MiB",
                "peak RSS before drain MiB",
                "receiver CPU s",
                "left in spool",
            ],
            rows,
        )
    )
    print(f"\n(ran in {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
