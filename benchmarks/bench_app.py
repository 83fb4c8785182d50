"""The cost inside a real app: a Flask app under gunicorn (one sync worker) loaded by wrk.

``flask_app.py`` announces two events per request (emitted, then published) on blinker's
signals. Four variants, each in a fresh gunicorn on 127.0.0.1, in interleaved rounds:

* **none**: nobody listens to the signals (the uninstrumented app);
* **otel**: OpenTelemetry's batch log pipeline with an exporter that only encodes (OTLP
  protobuf) and drops;
* **spooler background** / **spooler immediate**: ``EVENT_ENGINE_CLOUD_KEY=bench``, the
  endpoint on the minimal receiver (its own process), ``ship_in_process=true``, a fresh spool.

Each run: gunicorn starts, wrk warms it up for 1 s (the first request starts spooler's
threads; ``--quick`` sends 20 requests instead), then ``wrk -t1 -c2 --latency`` loads it
for ``--duration`` seconds (two connections keep the one worker busy: while it serves
one, the next waits in the listen backlog, so latencies include that wait). Then gunicorn
stops (SIGTERM) and the check column compares what the app announced with what was
exported, or arrived at the receiver plus what waits in the spool.

Needs ``wrk`` (``apt-get install -y wrk``) and gunicorn (the ``bench`` extra).

    python benchmarks/bench_app.py            # 3 rounds of 10 s per variant
    python benchmarks/bench_app.py --quick    # 1 round of 2 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from _common import (
    HERE,
    MinimalReceiver,
    child_env,
    free_port,
    header,
    markdown_table,
    wait_for_port,
    write_json,
)

VARIANTS = [
    ("none", "no instrumentation"),
    ("otel", "OpenTelemetry batch log pipeline (encode-only exporter)"),
    ("background", "spooler background"),
    ("immediate", "spooler immediate"),
]
LABELS = dict(VARIANTS)
CONNECTIONS = 2

_WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _wrk(url: str, seconds: float, script: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    return out


def _process_cpu(pid: int) -> float:
    """CPU seconds ``pid`` has used so far, all its threads (live and ended) included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pid(master: int) -> int | None:
    """gunicorn's one worker: the master's child process."""
    try:
        with open(f"/proc/{master}/task/{master}/children", encoding="ascii") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def run_variant(
    variant: str,
    receiver: MinimalReceiver,
    seconds: float,
    folder: str,
    script: str,
    *,
    warmup: bool = True,
) -> dict[str, Any]:
    """One gunicorn with this variant, warmed up, loaded, stopped; what wrk and the app saw."""
    from spooler.spool import read_stats

    os.makedirs(folder, mode=0o700)
    spool_path = os.path.join(folder, "spool", "spool.db")
    stats_file = os.path.join(folder, "app-stats.json")
    port = free_port()
    env = child_env(BENCH_INSTRUMENT=variant, BENCH_STATS_FILE=stats_file)
    if variant in ("background", "immediate"):
        env.update(
            EVENT_ENGINE_CLOUD_KEY="bench",
            EVENT_ENGINE_CLOUD_ENDPOINT=receiver.url,
            EVENT_ENGINE_CLOUD_SPOOL_PATH=spool_path,
            EVENT_ENGINE_CLOUD_SPOOL_MODE=variant,
            EVENT_ENGINE_CLOUD_SHIP_IN_PROCESS="true",
        )
    receiver.reset()
    log = open(os.path.join(folder, "gunicorn.log"), "w+", encoding="utf-8")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "1",
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            HERE,
            "--log-level",
            "warning",
            "--graceful-timeout",
            "15",
            "flask_app:app",
        ],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/order"
        if warmup:
            warm = _wrk(url, 1, script)["requests"]
        else:  # --quick: a few requests start spooler's threads, no full second of load
            for _ in range(20):
                with urllib.request.urlopen(url, timeout=10) as answer:
                    answer.read()
            warm = 20
        worker = _worker_pid(server.pid)
        cpu_before = _process_cpu(worker) if worker else None
        result = _wrk(url, seconds, script)
        cpu = _process_cpu(worker) - cpu_before if worker and cpu_before is not None else None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.seek(0)
        server_log = log.read()
        log.close()
    try:
        with open(stats_file, encoding="utf-8") as f:
            app_stats = json.load(f)
    except OSError:
        app_stats = {}
    announced = 2 * app_stats.get("requests", 0)
    check = ""
    if not app_stats:
        check = "**the worker wrote no stats at exit**"
    elif variant == "otel":
        exported = app_stats.get("exported", 0)
        check = f"announced {announced:,}, exported {exported:,}"
        if exported != announced:
            check = f"**{check}**"
    elif variant in ("background", "immediate"):
        arrived = receiver.count()
        stats = read_stats(spool_path) if os.path.exists(spool_path) else None
        waiting = stats.depth if stats else 0
        dropped = stats.counters.get("dropped", 0) if stats else 0
        check = f"announced {announced:,}, arrived {arrived:,}, waiting {waiting:,}"
        if dropped:
            check += f", dropped {dropped:,}"
        if arrived + waiting != announced:
            check = f"**{check}**"
    else:
        check = f"announced {announced:,} to nobody"
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    if errors:
        check += f"; wrk errors {errors:,}"
    warnings = [line for line in server_log.splitlines() if "Traceback" in line or "ERROR" in line]
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "variant": variant,
        "rps": result["rps"],
        "requests": result["requests"],
        "warmup_requests": warm,
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        # The worker's CPU (every thread) per request served under load: what the app pays,
        # and far steadier than req/s, which moves with everything else on the machine.
        "cpu_us_per_request": (
            1e6 * cpu / result["requests"] if cpu and result["requests"] else None
        ),
        "check": check,
        "app_stats": app_stats,
        "server_errors": warnings[:5],
    }


def run(rounds: int, seconds: float, folder: str, *, warmup: bool = True) -> dict[str, Any]:
    """Every variant ``rounds`` times, interleaved; per-run rows and per-variant medians."""
    script = os.path.join(folder, "report.lua")
    with open(script, "w", encoding="utf-8") as f:
        f.write(_WRK_SCRIPT)
    runs: list[dict[str, Any]] = []
    case = 0
    with MinimalReceiver() as receiver:
        for rnd in range(1, rounds + 1):
            base = base_cpu = None
            for variant, _ in VARIANTS:
                case += 1
                r = run_variant(
                    variant,
                    receiver,
                    seconds,
                    os.path.join(folder, f"run{case}"),
                    script,
                    warmup=warmup,
                )
                r["round"] = rnd
                if variant == "none":
                    base = r["rps"]
                    base_cpu = r["cpu_us_per_request"]
                r["cost_pct"] = 100.0 * (1 - r["rps"] / base) if base else float("nan")
                cpu = r["cpu_us_per_request"]
                r["cpu_cost_pct"] = (
                    100.0 * (cpu / base_cpu - 1) if cpu and base_cpu else float("nan")
                )
                runs.append(r)
    rows = [
        [
            r["round"],
            LABELS[r["variant"]],
            r["rps"],
            r["p50_ms"],
            r["p99_ms"],
            f"{r['cost_pct']:.1f} %" if r["variant"] != "none" else "",
            _cpu_cell(r),
            r["check"],
        ]
        for r in runs
    ]
    summary = {}
    summary_rows = []
    for variant, label in VARIANTS:
        rs = [r for r in runs if r["variant"] == variant]
        s = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "cost_pct": statistics.median(r["cost_pct"] for r in rs),
            "cost_pct_rounds": [r["cost_pct"] for r in rs],
            "cpu_us_per_request": _median_or_nan(r["cpu_us_per_request"] for r in rs),
            "cpu_cost_pct": _median_or_nan(r["cpu_cost_pct"] for r in rs),
            "cpu_cost_pct_rounds": [r["cpu_cost_pct"] for r in rs],
        }
        summary[variant] = s
        summary_rows.append(
            [
                label,
                s["rps"],
                s["p50_ms"],
                s["p99_ms"],
                ""
                if variant == "none"
                else f"{s['cost_pct']:.1f} % ("
                + ", ".join(f"{c:.1f}" for c in s["cost_pct_rounds"])
                + ")",
                f"{s['cpu_us_per_request']:.0f}"
                + (
                    ""
                    if variant == "none"
                    else f": +{s['cpu_cost_pct']:.1f} % ("
                    + ", ".join(f"{c:.1f}" for c in s["cpu_cost_pct_rounds"])
                    + ")"
                ),
            ]
        )
    return {
        "rounds": rounds,
        "seconds": seconds,
        "rows": rows,
        "summary_rows": summary_rows,
        "summary": summary,
        "runs": runs,
    }


HEADERS = [
    "round",
    "variant",
    "req/s",
    "p50 ms",
    "p99 ms",
    "cost (of none's req/s)",
    "worker CPU µs/request",
    "check",
]
SUMMARY_HEADERS = [
    "variant",
    "req/s",
    "p50 ms",
    "p99 ms",
    "cost: median (each round)",
    "worker CPU µs/request: median, over none's (each round)",
]


def _median_or_nan(values: Any) -> float:
    known = [v for v in values if v is not None and v == v]
    return statistics.median(known) if known else float("nan")


def _cpu_cell(r: dict[str, Any]) -> str:
    cpu = r["cpu_us_per_request"]
    if cpu is None:
        return ""
    if r["variant"] == "none":
        return f"{cpu:.0f}"
    return f"{cpu:.0f} (+{r['cpu_cost_pct']:.1f} %)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, no warm-up load")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (10)")
    parser.add_argument("--json", default=None, help="also write the results here (report.py)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.duration or (2.0 if args.quick else 10.0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        out = run(rounds, seconds, folder, warmup=not args.quick)
    out["wall_seconds"] = time.monotonic() - started
    print(
        header(
            f"App: Flask under gunicorn (1 sync worker), 2 events per request, "
            f"wrk -t1 -c{CONNECTIONS}, {rounds} round(s) of {seconds:g} s"
        )
    )
    print(markdown_table(SUMMARY_HEADERS, out["summary_rows"]))
    print()
    print(markdown_table(HEADERS, out["rows"]))
    print(f"\n(ran in {out['wall_seconds']:.1f} s)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
