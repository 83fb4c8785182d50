"""An outage past the cap: spool bytes over time while the Cloud is down, against the cap.

For each mode (``background``, ``immediate``) a child process configures spooler with a small
cap and an endpoint on 127.0.0.1 where nothing listens (the Cloud is down: every request is
refused, the in-process shipper backs off and retries), then calls ``track_emit`` at a steady
rate until it has written ``--fill`` times the cap's worth of entries. This process samples
the size of ``spool.db`` + ``-wal`` + ``-shm`` every 10 ms meanwhile. The child reports the
spool's counters at the end (``evicted``, ``dropped``, what waits).

The README promises db + ``-wal`` + ``-shm`` within the cap + 5 % at every instant; the table
shows the largest sample against that.

    python benchmarks/bench_outage.py            # 8 MiB cap, 3x over, 5,000 entries/s
    python benchmarks/bench_outage.py --quick    # 2 MiB cap
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _common import child_env, free_port, header, markdown_table, sample_payload, write_json

API_KEY = "bench"
BYTES_PER_ENTRY = 420  # what one entry takes in a full spool here (bench_startup measures it)
MODES = ("background", "immediate")
TICK = 0.01


def _child(mode: str, path: str, endpoint: str, cap: int, total: int, rate: int) -> int:
    import spooler
    from spooler.spool import read_stats

    spooler.configure(
        api_key=API_KEY,
        endpoint=endpoint,
        spool_path=path,
        spool_mode=mode,
        spool_max_bytes=cap,
        ship_in_process=True,
        flush_interval=1.0,
        shutdown_timeout=0.0,
    )
    assert spooler.start()
    ring = [sample_payload(i) for i in range(1_000)]
    per_tick = max(1, int(rate * TICK))
    accepted = 0
    print("start", flush=True)
    t0 = time.monotonic()
    i = 0
    tick = 0
    while i < total:
        for _ in range(min(per_tick, total - i)):
            accepted += spooler.track_emit(ring[i % 1_000])
            i += 1
        tick += 1
        delay = t0 + tick * TICK - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - t0
    spooler.shutdown(timeout=0)
    stats = read_stats(path)
    print(
        json.dumps(
            {
                "calls": total,
                "accepted": accepted,
                "seconds": elapsed,
                "depth": stats.depth,
                "counters": dict(stats.counters),
            }
        )
    )
    return 0


def _size(path: str) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(path + suffix).st_size
    return total


def run_mode(mode: str, cap: int, fill: float, rate: int, folder: str) -> dict[str, Any]:
    """One outage: the child appends, this process samples the spool's size."""
    case_dir = os.path.join(folder, mode)
    os.makedirs(case_dir, mode=0o700)
    path = os.path.join(case_dir, "spool.db")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the Cloud is down
    total = int(fill * cap / BYTES_PER_ENTRY)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            mode,
            path,
            endpoint,
            str(cap),
            str(total),
            str(rate),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "start":
        raise RuntimeError(f"outage child failed:\n{proc.communicate()[1]}")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, _size(path)))
            stop.wait(0.01)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    out, err = proc.communicate(timeout=600)
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"outage child failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        mode=mode,
        cap=cap,
        samples=samples,
        max_bytes=max(b for _, b in samples),
        warnings=[line for line in err.splitlines() if line.strip()][:5],
    )
    return result


HEADERS = [
    "mode",
    "cap MiB",
    "written (x cap)",
    "calls",
    "accepted",
    "entries/s",
    "largest sample MiB",
    "largest / cap",
    "within cap + 5 %",
    "waiting",
    "evicted",
    "dropped",
    "check",
]


def run(cap: int, fill: float, rate: int, folder: str) -> dict[str, Any]:
    """Both modes; rows and raw results (samples included, for the plot)."""
    results = [run_mode(mode, cap, fill, rate, folder) for mode in MODES]
    rows = []
    for r in results:
        c = r["counters"]
        accounted = r["depth"] + c.get("evicted", 0) + c.get("shipped", 0) + c.get("lost", 0)
        check = (
            "accepted = waiting + evicted"
            if accounted == r["accepted"]
            else f"**accepted {r['accepted']:,} but waiting + evicted + shipped = {accounted:,}**"
        )
        rows.append(
            [
                r["mode"],
                r["cap"] / 2**20,
                fill,
                r["calls"],
                r["accepted"],
                r["calls"] / r["seconds"],
                r["max_bytes"] / 2**20,
                f"{r['max_bytes'] / r['cap']:.3f}",
                "yes" if r["max_bytes"] <= r["cap"] * 1.05 else "**no**",
                r["depth"],
                c.get("evicted", 0),
                c.get("dropped", 0),
                check,
            ]
        )
    return {"cap": cap, "fill": fill, "rate": rate, "rows": rows, "results": results}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        mode, path, endpoint = argv[1], argv[2], argv[3]
        return _child(mode, path, endpoint, int(argv[4]), int(argv[5]), int(argv[6]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 MiB cap")
    parser.add_argument("--cap-mib", type=float, default=None, help="the cap (8 MiB)")
    parser.add_argument("--fill", type=float, default=3.0, help="write this many caps (3)")
    parser.add_argument("--rate", type=int, default=5_000, help="track_emit calls/s (5,000)")
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    cap = int((args.cap_mib or (2 if args.quick else 8)) * 2**20)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        out = run(cap, args.fill, args.rate, folder)
    out["seconds"] = time.monotonic() - started
    print(
        header(
            f"Outage: the Cloud down, {args.fill:g}x a {cap / 2**20:g} MiB cap written "
            f"at {args.rate:,} calls/s"
        )
    )
    print(markdown_table(HEADERS, out["rows"]))
    print(f"\n(ran in {out['seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
