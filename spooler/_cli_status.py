"""``spooler status``: a spool's state (or every spool's in a folder), read without changing it."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from typing import Any

from spooler._cli_common import (
    EXIT_LEFT,
    EXIT_OK,
    Out,
    UserError,
    config_from_args,
    dir_overrides,
)
from spooler.config import ENV_VARS


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    """``status``: one spool's state as lines or ``--json``; ``--spool-dir`` lists a folder's."""
    from spooler.lock import holder_pid
    from spooler.stats import read_stats
    from spooler.timestamps import iso_epoch

    if args.spool_dir is not None:
        return _status_dir(args, out)
    config = config_from_args(args)
    try:
        stats = read_stats(config.spool_path, max_bytes=config.spool_max_bytes)
    except FileNotFoundError:
        if args.json:
            out(json.dumps({"path": config.spool_file, "exists": False}))
        else:
            out(f"no spool at {config.spool_file}")
        return EXIT_LEFT
    except sqlite3.Error as exc:
        raise UserError(_unreadable(config.spool_file, exc)) from exc
    data = stats.as_dict()
    data["exists"] = True
    data["shipper_pid"] = holder_pid(config.spool_file)
    data["endpoint"] = config.endpoint
    data["enabled"] = config.enabled
    if args.json:
        out(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    c = stats.counters
    age = stats.oldest_age_seconds
    pid = data["shipper_pid"]
    shipper = f"running, pid {pid}" if pid else "not running"
    last_error = "none"
    if stats.last_error:
        error_epoch = iso_epoch(stats.last_error_at or "")
        when = stats.last_error_at or "unknown time"
        if error_epoch is not None:
            when += f", {_age(max(0.0, time.time() - error_epoch))}"
        last_error = f"{stats.last_error} (at {when})"
    lines = [
        f"spool          {stats.path}",
        f"spool id       {stats.spool_id}",
        f"endpoint       {config.endpoint} ({'enabled' if config.enabled else 'no API key'})",
        f"shipper        {shipper}",
        f"waiting        {stats.depth} entries, oldest {_age(age)}",
        f"on disk        {_size(stats.bytes_on_disk)} of {_size(stats.max_bytes)} cap "
        + "("
        + ", ".join(f"{k} {_size(v)}" for k, v in stats.file_bytes.items())
        + ")",
        f"dead letters   {stats.dead_letters} kept for inspection",
        "counters       " + ", ".join(f"{name} {c[name]}" for name in _counter_order(c)),
        f"last delivery  {stats.last_delivery_at or 'never'}",
        f"last error     {last_error}",
    ]
    out("\n".join(lines))
    return EXIT_OK


def _status_dir(args: argparse.Namespace, out: Out) -> int:
    """``status --spool-dir``: one line per spool in the folder and a total."""
    from spooler.lock import holder_pid
    from spooler.node import find_spools, identify
    from spooler.stats import read_stats

    dir_overrides(args)
    rows: list[dict[str, Any]] = []
    for path in find_spools(args.spool_dir):
        if identify(path) is not None:
            continue
        try:
            stats = read_stats(path)
        except (FileNotFoundError, sqlite3.Error):
            continue  # removed or busy meanwhile
        data = stats.as_dict()
        data["shipper_pid"] = holder_pid(path)
        rows.append(data)
    total = {
        "spools": len(rows),
        "waiting": sum(r["depth"] for r in rows),
        "bytes_on_disk": sum(r["bytes_on_disk"] for r in rows),
        "dead_letters": sum(r["dead_letters"] for r in rows),
        "oldest_age_seconds": max(
            (r["oldest_age_seconds"] for r in rows if r["oldest_age_seconds"] is not None),
            default=None,
        ),
        "shipped": sum(r["counters"].get("shipped", 0) for r in rows),
    }
    if args.json:
        folder = os.path.abspath(args.spool_dir)
        out(json.dumps({"folder": folder, "spools": rows, "total": total}, indent=2))
        return EXIT_OK
    for r in rows:
        pid = r["shipper_pid"]
        out(
            f"{os.path.basename(r['path'])}  waiting {r['depth']}, oldest "
            f"{_age(r['oldest_age_seconds'])}, {_size(r['bytes_on_disk'])}, "
            f"shipped {r['counters'].get('shipped', 0)}, dead letters {r['dead_letters']}, "
            f"shipper {f'pid {pid}' if pid else 'none'}"
        )
    out(
        f"total  {total['spools']} spools, waiting {total['waiting']}, oldest "
        f"{_age(total['oldest_age_seconds'])}, {_size(total['bytes_on_disk'])}, "
        f"shipped {total['shipped']}, dead letters {total['dead_letters']}"
    )
    return EXIT_OK


def _unreadable(path: str, exc: sqlite3.Error) -> str:
    """One line saying why ``path`` could not be read as a spool, and what to do."""
    reason = str(exc)
    fix = f"point --spool or {ENV_VARS['spool_path']} at the spool (default .spooler/spool.db)"
    if "not a database" in reason:
        return (
            f"{path} is not an SQLite database ({reason}), so not a spool; {fix}. A damaged "
            "spool is moved aside by the app or `spooler ship` when they open it"
        )
    if reason.startswith(("no such table", "no such column")):
        return f"{path} is an SQLite database but not a spooler spool ({reason}); {fix}"
    if "locked" in reason or "busy" in reason:
        return f"{path} is locked by another process ({reason}); try again in a moment"
    return f"cannot read {path} as a spool ({reason}); check the file and its permissions"


def _counter_order(counters: dict[str, int]) -> list[str]:
    from spooler.spool import COUNTER_NAMES

    return [n for n in COUNTER_NAMES if n in counters] + sorted(
        n for n in counters if n not in COUNTER_NAMES
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
