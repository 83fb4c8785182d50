"""Run every benchmark with its peers in one run; write ``results.md`` and the plots.

Each ``bench_*.py`` runs as its own process (exactly as when run by hand, plus ``--json``),
one after another, so nothing measured shares a process with the report. Then this writes
``benchmarks/results.md`` (machine, commit, issue 9's goals with verdicts, every table) and
``benchmarks/plots/*.png`` (matplotlib):

* ``hook_cdf.png``: the hook's latency distribution, spooler's modes beside its peers;
* ``drain_batch.png``: drain entries/s against batch size, the naive loop as the ceiling;
* ``outage_bytes.png``: spool bytes over time while the Cloud is down, against the cap;
* ``drain_rss.png`` (full run only): the shipper's RSS while draining 1,000,000 rows.

    python benchmarks/report.py            # the full run (about 12 minutes on 2 cores)
    python benchmarks/report.py --quick    # every benchmark small (under a minute)
    python benchmarks/report.py --only hook,drain --out /tmp/r.md --plots /tmp/plots

Nothing here asserts a timing: goals are reported as met or missed, never enforced.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import HERE, child_env, git_commit, machine_info, markdown_table

#: name -> (script, full-run arguments, --quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "hook": ("bench_hook.py", ["--rounds", "3"], ["--quick"]),
    "append": ("bench_append.py", [], ["--quick", "-n", "1000"]),
    "drain": (
        "bench_drain.py",
        ["--batch-sizes", "10,50,100,500,1000,2000", "--rounds", "3", "--rss-rows", "1000000"],
        ["-n", "5000", "--batch-sizes", "10,50,500,2000", "--rounds", "1"],
    ),
    "producers": ("bench_producers.py", [], ["--quick"]),
    "startup": ("bench_startup.py", [], ["--quick"]),
    "outage": ("bench_outage.py", [], ["--quick", "--fill", "2"]),
    "app": ("bench_app.py", [], ["--quick", "--duration", "1"]),
}
PEERS = (
    "httpx",
    "sqlite-utils",
    "persist-queue",
    "opentelemetry-sdk",
    "segment-analytics-python",
    "flask",
    "gunicorn",
    "matplotlib",
)
RSS_LIMIT_MB = 60.0


# -- running -------------------------------------------------------------------------------------


def run_bench(name: str, quick: bool, folder: str) -> dict[str, Any]:
    """Run one benchmark script; its JSON results, stdout, stderr and wall time."""
    script, full_args, quick_args = BENCHES[name]
    out = os.path.join(folder, f"{name}.json")
    cmd = [sys.executable, os.path.join(HERE, script), *(quick_args if quick else full_args)]
    shown = "python benchmarks/" + " ".join([script, *(quick_args if quick else full_args)])
    print(f"[report] {shown}", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--json", out], capture_output=True, text=True, env=child_env(), check=False
    )
    seconds = time.monotonic() - started
    print(f"[report]   done in {seconds:.1f} s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"command": shown, "seconds": seconds, "stderr": proc.stderr}
    if proc.returncode != 0 or not os.path.exists(out):
        result["error"] = (proc.stderr or proc.stdout).strip()[-2000:]
        return result
    with open(out, encoding="utf-8") as f:
        result["data"] = json.load(f)
    return result


def _versions() -> str:
    found = []
    for name in PEERS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    wrk = shutil.which("wrk")
    if wrk:
        line = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
        found.append("wrk " + (line.split()[1] if len(line.split()) > 1 else "?"))
    return ", ".join(found)


# -- plots -----------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


HOOK_STYLE = {
    "background": ("spooler background", "-", 2.2),
    "background_ship": ("spooler background + shipper", ":", 1.6),
    "immediate": ("spooler immediate", "-", 2.2),
    "otel": ("OTel Logger.emit (batch)", "--", 1.6),
    "segment": ("Segment track", "--", 1.6),
    "persist_queue": ("persist-queue put", "--", 1.6),
    "queue": ("queue.put_nowait", "-.", 1.6),
    "raw_sqlite": ("raw sqlite3 INSERT+commit", "-.", 1.6),
}


def plot_hook(data: dict[str, Any], path: str) -> None:
    """CDF of per-call latency (log x), one line per case."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for case, (label, style, width) in HOOK_STYLE.items():
        c = data["cases"].get(case)
        if not c or not c["quantiles_us"]:
            continue
        q = c["quantiles_us"]
        ys = [i / (len(q) - 1) for i in range(len(q))]
        ax.plot(
            [max(v, 0.05) for v in q],
            ys,
            style,
            lw=width,
            label=f"{label} (p50 {c['p50_us']:.1f} µs)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("latency of one call in the host's thread (µs, log scale)")
    ax.set_ylabel("share of calls at most this slow")
    ax.set_title(f"Hook latency CDF ({data['n']:,} calls x {data['rounds']} round(s) per case)")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.99, color="grey", lw=0.5)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _drain_medians(data: dict[str, Any]) -> dict[str, dict[int, float]]:
    by: dict[str, dict[int, list[float]]] = {"shipper": {}, "naive": {}}
    for r in data["results"]:
        by[r["kind"]].setdefault(r["batch_size"], []).append(r["shipped"] / r["wall"])
    return {k: {b: statistics.median(v) for b, v in sorted(d.items())} for k, d in by.items()}


def plot_drain(data: dict[str, Any], path: str) -> None:
    """Entries/s against batch size: the shipper, the naive loop as ceiling, 0.9x of it."""
    plt = _plt()
    med = _drain_medians(data)
    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = list(med["naive"])
    ax.plot(sizes, [med["naive"][b] for b in sizes], "k--", marker="s", label="naive loop")
    ax.plot(
        sizes,
        [0.9 * med["naive"][b] for b in sizes],
        color="grey",
        lw=0.8,
        ls=":",
        label="0.9x naive (goal)",
    )
    ax.plot(
        sizes,
        [med["shipper"][b] for b in sizes],
        "-",
        marker="o",
        lw=2.2,
        label="spooler shipper",
    )
    for r in data["results"]:
        if r["kind"] == "shipper" and data["rounds"] > 1:
            ax.plot(r["batch_size"], r["shipped"] / r["wall"], "o", ms=3, color="C0", alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("batch size (entries per request, log scale)")
    ax.set_ylabel("entries/s delivered")
    ax.set_title(
        f"Drain {data['n']:,} rows into the minimal receiver "
        f"(median of {data['rounds']} round(s); dots: each round)"
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_outage(data: dict[str, Any], path: str) -> None:
    """db + -wal + -shm over time for each mode, with the cap and cap + 5 %."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    cap_mib = data["cap"] / 2**20
    for r in data["results"]:
        xs = [t for t, _ in r["samples"]]
        ys = [b / 2**20 for _, b in r["samples"]]
        ax.plot(xs, ys, lw=1.4, label=f"spooler {r['mode']}")
    ax.axhline(cap_mib, color="red", lw=1.5, label=f"cap ({cap_mib:g} MiB)")
    ax.axhline(cap_mib * 1.05, color="red", lw=0.8, ls=":", label="cap + 5 %")
    ax.set_xlabel("seconds since the first append (the Cloud is down throughout)")
    ax.set_ylabel("spool.db + -wal + -shm (MiB)")
    ax.set_title(
        f"Outage: {data['fill']:g}x the cap written at {data['rate']:,} track_emit calls/s"
    )
    ax.set_ylim(bottom=0, top=cap_mib * 1.25)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(case: dict[str, Any], path: str) -> None:
    """The shipper's RSS over the big drain, against the 60 MB line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [t for t, _ in case["rss_samples"]]
    ys = [mib * 2**20 / 1e6 for _, mib in case["rss_samples"]]
    ax.plot(xs, ys, lw=1.6, label="shipper RSS")
    ax.axhline(RSS_LIMIT_MB, color="red", lw=1.2, label=f"{RSS_LIMIT_MB:g} MB (goal)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"Shipper draining {case['n']:,} rows, batch {case['batch_size']}")
    ax.set_ylim(bottom=0, top=max([RSS_LIMIT_MB, *ys]) * 1.2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the document ------------------------------------------------------------------------------


def _verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "**missed**"


def goals(res: dict[str, dict[str, Any]], quick: bool) -> list[list[Any]]:
    """Issue 9's goals: [goal, target, measured, verdict]."""
    rows: list[list[Any]] = []
    hook = res.get("hook", {}).get("data")
    if hook:
        c = hook["cases"]
        bg, otel = c["background"], c["otel"]
        rows.append(
            [
                "1. background hook p50 < OTel `Logger.emit` p50 / 3",
                f"< {otel['p50_us'] / 3:.2f} µs",
                f"{bg['p50_us']:.2f} µs (OTel p50 {otel['p50_us']:.2f} µs; ratio "
                f"{otel['p50_us'] / bg['p50_us']:.1f}x)",
                _verdict(bg["p50_us"] < otel["p50_us"] / 3),
            ]
        )
        rows.append(
            [
                "1. background hook p50 < OTel `Logger.emit` p99",
                f"< {otel['p99_us']:.1f} µs",
                f"{bg['p50_us']:.2f} µs",
                _verdict(bg["p50_us"] < otel["p99_us"]),
            ]
        )
        im, raw = c["immediate"], c["raw_sqlite"]
        rows.append(
            [
                "2. immediate hook p50 <= 1.5x raw sqlite3 autocommit INSERT+commit p50",
                f"<= {1.5 * raw['p50_us']:.1f} µs",
                f"{im['p50_us']:.1f} µs ({im['p50_us'] / raw['p50_us']:.2f}x raw "
                f"{raw['p50_us']:.1f} µs)",
                _verdict(im["p50_us"] <= 1.5 * raw["p50_us"]),
            ]
        )
    drain = res.get("drain", {}).get("data")
    if drain:
        for b in ("50", "500"):
            ratio = drain["median_ratio"].get(b)
            each = ", ".join(f"{r:.2f}" for r in drain["all_ratios"].get(b, []))
            rows.append(
                [
                    f"3. drain at batch {b} >= 0.9x the naive loop",
                    ">= 0.90x",
                    "not measured" if ratio is None else f"{ratio:.2f}x (rounds: {each})",
                    _verdict(None if ratio is None else ratio >= 0.9),
                ]
            )
        big = drain.get("rss_case")
        if big:
            peak_mb = big["rss_peak_kib"] * 1024 / 1e6
            rows.append(
                [
                    f"3. shipper RSS while draining {big['n']:,} rows",
                    f"flat, peak < {RSS_LIMIT_MB:g} MB",
                    f"peak {peak_mb:.1f} MB",
                    _verdict(peak_mb < RSS_LIMIT_MB),
                ]
            )
        else:
            rows.append(
                [
                    "3. shipper RSS while draining 1,000,000 rows",
                    f"flat, peak < {RSS_LIMIT_MB:g} MB",
                    "full run only" if quick else "not run",
                    "not measured",
                ]
            )
    prod = res.get("producers", {}).get("data")
    if prod:
        for r in prod["results"]:
            if r["procs"] == 1:
                continue
            one = next(x for x in prod["results"] if x["mode"] == r["mode"] and x["procs"] == 1)
            rows.append(
                [
                    f"4. 8 processes, {r['mode']}",
                    "reported (no target)",
                    f"{r['committed_per_s']:,.0f} entries/s committed "
                    f"({r['committed_per_s'] / one['committed_per_s']:.2f}x one process); "
                    f"{100 * r['false_share']:.2f} % returned False, dropped {r['dropped']:,}",
                    "reported",
                ]
            )
    start = res.get("startup", {}).get("data")
    if start:
        s = start["summary"]
        threads = sorted(
            {
                t
                for k, v in s.items()
                if "quick_check_threads" in v
                for t in v["quick_check_threads"]
            }
        )
        host_free = all(t != "MainThread" for t in threads) and bool(threads)
        rows.append(
            [
                "5. quick_check of a full 64 MiB spool never on the host's thread",
                "writer thread only",
                f"ran on: {', '.join(threads) or 'nothing seen'}; alone it costs "
                f"{s['open/warm']['quick_check_ms']:.0f} ms warm, "
                f"{s['open/cold']['quick_check_ms']:.0f} ms cold",
                _verdict(host_free),
            ]
        )
        for mode in ("immediate", "background"):
            rows.append(
                [
                    f"5. {mode}: first `track_emit` on a full spool vs the writer's open",
                    "reported",
                    f"{s[f'{mode}/warm']['first_call_ms']:.2f} ms warm, "
                    f"{s[f'{mode}/cold']['first_call_ms']:.2f} ms cold (open without "
                    f"quick_check {s['open/warm']['open_ms']:.1f} / "
                    f"{s['open/cold']['open_ms']:.1f} ms); slowest of the next 1,000 calls "
                    f"{s[f'{mode}/cold']['after_max_us'] / 1000:.1f} ms cold",
                    "reported",
                ]
            )
    app = res.get("app", {}).get("data")
    if app:
        for variant in ("otel", "background", "immediate"):
            v = app["summary"][variant]
            rows.append(
                [
                    f"6. Flask + gunicorn cost: {variant}",
                    "reported",
                    f"{v['cost_pct']:.1f} % of uninstrumented req/s "
                    f"({v['rps']:,.0f} vs {app['summary']['none']['rps']:,.0f})",
                    "reported",
                ]
            )
        otel, background = app["summary"]["otel"], app["summary"]["background"]
        half = otel["cost_pct"] / 2
        rows.append(
            [
                "6. background costs at most half of what OTel's pipeline costs",
                f"<= {half:.1f} %",
                f"{background['cost_pct']:.1f} % (OTel {otel['cost_pct']:.1f} %)",
                _verdict(background["cost_pct"] <= half),
            ]
        )
        if background.get("cpu_cost_pct") == background.get("cpu_cost_pct"):  # not NaN
            rows.append(
                [
                    "6. the same on the worker's CPU per request (steadier than req/s)",
                    "reported",
                    f"background +{background['cpu_cost_pct']:.1f} %, OTel "
                    f"+{otel['cpu_cost_pct']:.1f} %, immediate "
                    f"+{app['summary']['immediate']['cpu_cost_pct']:.1f} % over uninstrumented "
                    f"{app['summary']['none']['cpu_us_per_request']:.0f} µs; background / OTel "
                    f"{background['cpu_cost_pct'] / otel['cpu_cost_pct']:.2f}",
                    "reported",
                ]
            )
        rows.append(
            [
                "6. background p99 no worse than OTel's",
                f"<= {otel['p99_ms']:.2f} ms",
                f"{background['p99_ms']:.2f} ms",
                _verdict(background["p99_ms"] <= otel["p99_ms"]),
            ]
        )
    return rows


def _section_error(name: str, r: dict[str, Any]) -> str:
    return f"**{name} failed** (`{r['command']}`):\n\n```\n{r['error']}\n```\n"


def _warnings(r: dict[str, Any]) -> str:
    lines = [line for line in r.get("stderr", "").splitlines() if line.strip()]
    if not lines:
        return ""
    distinct = sorted(set(lines))[:4]
    return (
        "\nOn stderr (spooler's warnings; expected where a spool hits its cap): "
        + "; ".join(f"`{line[:140]}`" for line in distinct)
        + "\n"
    )


def loadavg() -> str:
    """The 1-minute load average (other work on the machine shows up here)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def document(
    res: dict[str, dict[str, Any]],
    quick: bool,
    seconds: float,
    plots: str,
    load: tuple[str, str],
    where: str = HERE,
) -> str:
    """The whole results.md, written into the folder ``where`` (image links are relative)."""
    rel = os.path.relpath(plots, where)
    out = []
    cmd = "python benchmarks/report.py" + (" --quick" if quick else "")
    out.append("# Benchmark results\n")
    out.append(
        f"Generated by `{cmd}` in {seconds / 60:.1f} minutes"
        + (" (**quick run**: small N, one round; numbers are rough)" if quick else "")
        + ". Do not edit by hand: rerun it.\n"
    )
    out.append(f"- Machine: {machine_info()}")
    out.append(f"- Measured: commit {git_commit()}")
    out.append(f"- Peers: {_versions()}")
    out.append(
        f"- 1-minute load average: {load[0]} before the run, {load[1]} after it (2 cores; "
        "anything above what the benchmarks themselves cause is other work on the machine)"
    )
    out.append(
        "- This VM has 2 shared cores and a virtual disk: numbers move by ±30-50 % between runs. "
        "Compare rows within one run (the ratios), not across runs; where a benchmark runs "
        "interleaved rounds the table shows each round.\n"
    )
    out.append("## Issue 9's goals\n")
    out.append('Reported, never asserted. "reported" rows have no target in the issue.\n')
    out.append(markdown_table(["goal", "target", "measured", "verdict"], goals(res, quick)))
    out.append("")

    # 1 + 2: hook
    out.append("## 1-2. The hook: one `track_emit` in the host's thread\n")
    r = res.get("hook")
    if r and "data" in r:
        d = r["data"]
        out.append(
            f"`{r['command']}` ({d['n']:,} timed calls per case per round after 1,000 warm-up, "
            f"{d['rounds']} round(s) interleaved, each case in a fresh process; percentiles "
            f"pool the rounds; {r['seconds']:.0f} s)\n"
        )
        out.append(
            markdown_table(["case", "calls", "calls/s", "p50 µs", "p99 µs", "check"], d["rows"])
        )
        if d["rounds"] > 1:
            per = [
                f"{d['cases'][c]['label']}: "
                + ", ".join(f"{v:.2f}" for v in d["cases"][c]["p50_rounds_us"])
                for c in ("background", "immediate", "raw_sqlite", "otel")
                if c in d["cases"]
            ]
            out.append("\np50 µs in each round: " + "; ".join(per) + ".\n")
        out.append(f"\n![hook latency CDF]({rel}/hook_cdf.png)\n")
        out.append(
            "- The timer floor row is the cost of timing a call that does nothing.\n"
            "- raw sqlite3 gets the entry prebuilt and pays only `json.dumps` + one autocommit "
            "INSERT in WAL with `synchronous=NORMAL` (spooler's settings); immediate mode also "
            "validates and builds the entry from the notification.\n"
            "- Peers run with their own defaults: persist-queue fsyncs every put "
            "(`synchronous=FULL`); Segment's consumer thread never starts (so it pays no GIL "
            "competition, while OTel's and spooler's background threads do); `queue.put_nowait` "
            "has no consumer.\n"
        )
    elif r:
        out.append(_section_error("bench_hook.py", r))

    # append
    out.append("## Append: the spool beside raw sqlite3 and peers (issue 2)\n")
    r = res.get("append")
    if r and "data" in r:
        d = r["data"]
        out.append(
            f"`{r['command']}` ({d['n']:,} entries of ~{d['entry_bytes']} bytes per case; "
            f"{r['seconds']:.0f} s)\n"
        )
        out.append(markdown_table(d["headers"], d["rows"]))
        out.append(_warnings(r))
    elif r:
        out.append(_section_error("bench_append.py", r))

    # 3: drain
    out.append("## 3. Drain: the shipper beside a naive loop, into the minimal receiver\n")
    r = res.get("drain")
    if r and "data" in r:
        d = r["data"]
        out.append(
            f"`{r['command']}` ({d['n']:,} rows per case, each case on a copy of the same "
            f"spool, {d['rounds']} interleaved round(s); {r['seconds']:.0f} s)\n"
        )
        from bench_drain import HEADERS as DRAIN_HEADERS
        from bench_drain import rss_table

        out.append(markdown_table(DRAIN_HEADERS, d["rows"]))
        out.append(
            "\nMedian shipper / naive ratio per batch size: "
            + ", ".join(f"{b}: {v:.2f}x" for b, v in d["median_ratio"].items())
            + ".\n"
        )
        out.append(f"\n![drain entries/s against batch size]({rel}/drain_batch.png)\n")
        out.append(
            "- Receiver: `benchmarks/minimal_receiver.py` in its own process (counts "
            '`"entry_id"`, answers 200; its CPU column shows it is not the bottleneck). '
            '"arrived" is its count.\n'
            "- Naive loop: `SELECT id, entry ... LIMIT batch`, join the stored JSON (entry_id "
            "spliced in), POST with one keep-alive `httpx.Client`, `DELETE WHERE id <= last`; no "
            "retries, accounting or idempotency key. Both import httpx before the clock "
            "starts; the shipper also opens and checks the spool before it, and its drain "
            "includes creating its HTTP client, one heartbeat and the final `maintain` "
            "(`PRAGMA incremental_vacuum`, which gives the freed pages back to the file).\n"
        )
        if d.get("rss_case"):
            out.append(
                f"\nThe shipper draining {d['rss_case']['n']:,} rows, RSS sampled every 0.2 s:\n"
            )
            out.append(rss_table(d["rss_case"]))
            out.append(f"\n![shipper RSS over the 1M-row drain]({rel}/drain_rss.png)\n")
        else:
            out.append("\nThe 1,000,000-row RSS case runs in the full report only.\n")
    elif r:
        out.append(_section_error("bench_drain.py", r))

    # 4: producers
    out.append("## 4. Many producers: 8 processes into one spool\n")
    r = res.get("producers")
    if r and "data" in r:
        d = r["data"]
        from bench_producers import HEADERS as PROD_HEADERS

        out.append(
            f"`{r['command']}` ({d['m']:,} timed `track_emit` calls per process, "
            f"`ship_in_process=False`; {r['seconds']:.0f} s)\n"
        )
        out.append(markdown_table(PROD_HEADERS, d["rows"]))
        out.append(
            "\n- calls/s: all calls over the time from the first process's start to the last "
            "one's end; committed entries/s: rows in the spool over the time until the last "
            "`shutdown()` returned (background mode flushes its buffer there).\n"
            '- "returned False" counts calls that returned False; the dropped counter is '
            "the spool's. The check compares every accepted entry (warm-up included) with the "
            "rows in the spool.\n"
        )
        out.append(_warnings(r))
    elif r:
        out.append(_section_error("bench_producers.py", r))

    # 5: start-up
    out.append("## 5. Start-up on a full 64 MiB spool\n")
    r = res.get("startup")
    if r and "data" in r:
        d = r["data"]
        from bench_startup import HEADERS as START_HEADERS

        f = d["filled"]
        out.append(
            f"`{r['command']}` ({f['rows']:,} rows, {f['bytes'] / 2**20:.1f} MiB on disk; "
            f"median of {d['rounds']} round(s); {r['seconds']:.0f} s)\n"
        )
        out.append(markdown_table(START_HEADERS, d["rows"]))
        out.append(
            "\n- warm: the spool's pages in the page cache (a restart); cold: that file's pages "
            "dropped with `posix_fadvise(DONTNEED)` (a reboot).\n"
            '- "quick_check ran on thread" comes from timing every `PRAGMA quick_check` the '
            "child process executes (a `sqlite3.connect` factory installed by the benchmark); "
            "`MainThread` there would mean the host's thread paid for it.\n"
            "- The next 1,000 calls run while the writer may still be checking; the spool is "
            "at its cap, so they also evict (last column). A slowest call ending where the "
            "quick_check ends means the host waited for the writer thread.\n"
        )
    elif r:
        out.append(_section_error("bench_startup.py", r))

    # outage
    out.append("## Outage past the cap: spool bytes over time\n")
    r = res.get("outage")
    if r and "data" in r:
        d = r["data"]
        from bench_outage import HEADERS as OUT_HEADERS

        out.append(f"`{r['command']}` ({r['seconds']:.0f} s)\n")
        out.append(markdown_table(OUT_HEADERS, d["rows"]))
        out.append(f"\n![spool bytes during an outage]({rel}/outage_bytes.png)\n")
        out.append(
            "- The endpoint is a port on 127.0.0.1 where nothing listens: every request is "
            "refused and the in-process shipper backs off. Sizes are sampled every 10 ms from "
            "another process.\n"
        )
    elif r:
        out.append(_section_error("bench_outage.py", r))

    # 6: app
    out.append("## 6. Inside a real app: Flask under gunicorn, loaded by wrk\n")
    r = res.get("app")
    if r and "data" in r:
        d = r["data"]
        from bench_app import HEADERS as APP_HEADERS
        from bench_app import SUMMARY_HEADERS

        out.append(
            f"`{r['command']}` (one sync worker, two events per request, `wrk -t1 -c2`, "
            f"{d['rounds']} interleaved round(s) of {d['seconds']:g} s; {r['seconds']:.0f} s)\n"
        )
        out.append(markdown_table(SUMMARY_HEADERS, d["summary_rows"]))
        out.append("\nEach run:\n")
        out.append(markdown_table(APP_HEADERS, d["rows"]))
        out.append(
            "\n- cost = 1 - variant req/s / uninstrumented req/s of the same round. Worker CPU "
            "= the gunicorn worker's CPU time (all its threads: spooler's writer and shipper, "
            "OTel's export thread) over the 10 s of load, per request served; its cost is the "
            "same round's share over uninstrumented. Latency is "
            "wrk's, with two connections on one worker (one request waits while the other is "
            "served).\n"
            "- spooler: `EVENT_ENGINE_CLOUD_KEY=bench`, endpoint = the minimal receiver, "
            "`ship_in_process=true`, a fresh spool per run; the check compares what the app "
            "announced with what arrived plus what still waits. OTel: `BatchLogRecordProcessor` "
            "with an exporter that encodes each batch to OTLP protobuf and drops it.\n"
        )
    elif r:
        out.append(_section_error("bench_app.py", r))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, one round (< 1 minute)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {list(BENCHES)}")
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results.md"), help="benchmarks/results.md"
    )
    parser.add_argument("--plots", default=os.path.join(HERE, "plots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {unknown}")
    started = time.monotonic()
    load_before = loadavg()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="spooler-report-") as folder:
        for name in names:
            results[name] = run_bench(name, args.quick, folder)
    os.makedirs(args.plots, exist_ok=True)
    plotters = (
        ("hook", plot_hook, "hook_cdf.png"),
        ("drain", plot_drain, "drain_batch.png"),
        ("outage", plot_outage, "outage_bytes.png"),
    )
    for name, plot, filename in plotters:
        if "data" in results.get(name, {}):
            plot(results[name]["data"], os.path.join(args.plots, filename))
    big = results.get("drain", {}).get("data", {}).get("rss_case")
    if big:
        plot_rss(big, os.path.join(args.plots, "drain_rss.png"))
    seconds = time.monotonic() - started
    text = document(
        results,
        args.quick,
        seconds,
        args.plots,
        (load_before, loadavg()),
        os.path.dirname(os.path.abspath(args.out)),
    )
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    failed = [n for n, r in results.items() if "error" in r]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M UTC")
    print(
        f"[report] wrote {args.out} and plots in {args.plots} at {stamp} "
        f"({seconds:.0f} s){'; FAILED: ' + ', '.join(failed) if failed else ''}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
