"""One shipper per node: drain rate over 20 spools beside one spool of the same total size,
and how long a quiet spool waits while another takes a heavy stream.

Every case drains into ``minimal_receiver.py`` (its own process) from this process:

* **single shipper, 1 spool**: ``Shipper(config, watch=False).drain()``, the baseline.
* **node, 1 spool** and **node, 20 spools**: ``NodeShipper`` on a folder, ``turn()``
  in a loop until every spool is empty (up to 4 batches per due spool per turn, one
  client).
* **fairness**: a thread streams 100 rows every 10 ms into one spool (~6,000 rows/s on
  the 2-core VM) while 19 quiet spools get one row every 50 ms; the oldest waiting row of
  every spool is sampled every 50 ms for 10 s (3 s with ``--quick``).

    python benchmarks/bench_node.py            # N = 40,000, batch 50
    python benchmarks/bench_node.py --quick    # N = 4,000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from _common import MinimalReceiver, header, install_network_guard, markdown_table, sample_entries

from spooler.config import Config
from spooler.node import NodeShipper
from spooler.shipper import Shipper
from spooler.spool import Spool, now_iso

KEY = "bench-key"


def fill(folder: str, spools: int, total: int, entries: list[dict[str, Any]]) -> list[str]:
    os.makedirs(folder, mode=0o700, exist_ok=True)
    paths = []
    per = total // spools
    for s in range(spools):
        path = os.path.join(folder, f"app-{s:02d}.db")
        spool = Spool(path, max_bytes=1 << 30)
        for start in range(0, per, 1000):
            spool.append_many(entries[start : min(per, start + 1000)])
        spool.close()
        paths.append(path)
    return paths


def env(url: str, batch: int) -> dict[str, str]:
    return {
        "EVENT_ENGINE_CLOUD_KEY": KEY,
        "EVENT_ENGINE_CLOUD_ENDPOINT": url,
        "EVENT_ENGINE_CLOUD_BATCH_SIZE": str(batch),
        "EVENT_ENGINE_CLOUD_FLUSH_INTERVAL": "3600",
        "EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES": "1GiB",
        "EVENT_ENGINE_CLOUD_APP_NAME": "bench",
    }


def drain_node(folder: str, url: str, batch: int) -> float:
    node = NodeShipper(folder, environ=env(url, batch), watch=False)
    started = time.perf_counter()
    try:
        node.turn()
        while any(s.spool.peek(1)[0] for s in node._served.values()):
            node.turn()
    finally:
        node.close()
    return time.perf_counter() - started


def drain_single(path: str, url: str, batch: int) -> float:
    config = Config.from_env(env(url, batch), spool_path=path)
    shipper = Shipper(config, watch=False)
    started = time.perf_counter()
    try:
        shipper.drain()
    finally:
        shipper.stop()
    return time.perf_counter() - started


def fairness(root: str, url: str, seconds: float, batch: int, entries: list[dict[str, Any]]) -> str:
    folder = os.path.join(root, "fair")
    os.makedirs(folder, mode=0o700)
    heavy = Spool(os.path.join(folder, "heavy.db"), max_bytes=1 << 30, busy_timeout=1.0)
    quiet = [Spool(os.path.join(folder, f"quiet-{q:02d}.db"), busy_timeout=1.0) for q in range(19)]
    stop = threading.Event()
    appended = [0]

    def stream() -> None:  # 100 rows every 10 ms into the heavy spool (~6,000 rows/s here)
        i = 0
        while not stop.is_set():
            stamp = now_iso()  # created_at is the entry's timestamp: age counts from now
            heavy.append_many(
                [dict(e, timestamp=stamp) for e in entries[i % 1000 : i % 1000 + 100]]
            )
            appended[0] += 100
            i += 100
            stop.wait(0.01)

    def trickle() -> None:  # one row every 50 ms into each quiet spool
        i = 0
        while not stop.is_set():
            for q in quiet:
                q.append(dict(entries[i % len(entries)], timestamp=now_iso()))
            i += 1
            stop.wait(0.05)

    e = env(url, batch)
    e["EVENT_ENGINE_CLOUD_FLUSH_INTERVAL"] = "1"
    node = NodeShipper(folder, environ=e, watch=False)
    heavy_ages: list[float] = []
    quiet_ages: list[float] = []
    threads = [threading.Thread(target=f, daemon=True) for f in (stream, trickle)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    last_sample = 0.0
    try:
        while time.perf_counter() - started < seconds:
            node.turn()
            now = time.perf_counter()
            if now - last_sample >= 0.05:
                last_sample = now
                heavy_ages.append(heavy.stats().oldest_age_seconds or 0.0)
                quiet_ages.extend(q.stats().oldest_age_seconds or 0.0 for q in quiet)
    finally:
        stop.set()
        for t in threads:
            t.join()
        node.close()
        heavy_left = heavy.peek(1 << 40)[0]
        heavy.close()
        for q in quiet:
            q.close()

    def p(values: list[float], share: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(share * len(ordered)))]:.2f}" if values else "-"

    return markdown_table(
        ["spool", "rows appended", "oldest age p50 s", "p99 s", "max s"],
        [
            [
                "heavy (streamed)",
                f"{appended[0]:,} ({heavy_left:,} left)",
                p(heavy_ages, 0.5),
                p(heavy_ages, 0.99),
                p(heavy_ages, 1.0),
            ],
            [
                "19 quiet (20 rows/s each)",
                f"{19 * int(20 * seconds):,} (about)",
                p(quiet_ages, 0.5),
                p(quiet_ages, 0.99),
                p(quiet_ages, 1.0),
            ],
        ],
    ) + (
        f"\n\nflush_interval 1 s (a quiet spool's rows are due once 1 s old), batch {batch}, "
        f"{seconds:.0f} s, oldest waiting row sampled every 50 ms."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    install_network_guard()
    import httpcore  # noqa: F401  # imported when the first client is built: not timed
    import httpx  # noqa: F401

    total = 4_000 if args.quick else 40_000
    entries = sample_entries(total)
    print(header("Node shipper: 20 spools beside 1"))
    root = tempfile.mkdtemp(prefix="bench-node-")
    os.chmod(root, 0o700)
    rows = []
    try:
        with MinimalReceiver() as receiver:
            for name, spools, how in (
                ("single shipper, 1 spool", 1, "single"),
                ("node, 1 spool", 1, "node"),
                ("node, 20 spools", 20, "node"),
            ):
                folder = os.path.join(root, f"{how}-{spools}")
                paths = fill(folder, spools, total, entries)
                receiver.reset()
                if how == "single":
                    seconds = drain_single(paths[0], receiver.url, args.batch)
                else:
                    seconds = drain_node(folder, receiver.url, args.batch)
                got = receiver.count()
                rows.append([name, spools, f"{got:,}", f"{seconds:.2f}", f"{got / seconds:,.0f}"])
                shutil.rmtree(folder)
            print(markdown_table(["case", "spools", "entries", "seconds", "entries/s"], rows))
            print()
            receiver.reset()
            print(fairness(root, receiver.url, 3.0 if args.quick else 10.0, args.batch, entries))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
