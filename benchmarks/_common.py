"""Shared helpers for the benchmark scripts: sample data, percentiles, Markdown, machine info.

Not a test module and not part of the package: the scripts import it from their own folder
(``python benchmarks/bench_append.py`` puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from spooler.serializer import build_entry

#: The notification fields spooler keeps; the peers get exactly these too.
META_KEYS = ("event_name", "event_id", "idempotency_key", "event_version")


def sample_payload(i: int) -> dict[str, Any]:
    """One host notification: the metadata spooler keeps plus a ``payload`` it must ignore."""
    return {
        "event_name": "order.placed",
        "event_id": 1_000_000 + i,
        "idempotency_key": f"order-{1_000_000 + i}-{uuid.UUID(int=i)}",
        "event_version": 3,
        "payload": {
            "order_id": f"ord_{i:08d}",
            "customer": {"id": i % 977, "email": f"user{i % 977}@example.com"},
            "items": [{"sku": f"SKU-{j}", "qty": j + 1, "price": 9.99 * (j + 1)} for j in range(3)],
            "total": 59.94,
            "currency": "EUR",
        },
    }


def sample_entries(n: int) -> list[dict[str, Any]]:
    """``n`` realistic spool entries (~330 bytes of JSON each) built by the real serializer."""
    entries = []
    for i in range(n):
        payload = sample_payload(i)
        payload.update(event_type="domain", attempts=0, occurred_at="2026-01-15T10:30:00.123Z")
        entry = build_entry("emitted", payload)
        assert entry is not None
        entries.append(entry)
    return entries


def metadata_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The four metadata fields of a payload (what a peer gets to store)."""
    return {k: payload[k] for k in META_KEYS}


def percentiles_us(samples_ns: Sequence[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    s = sorted(samples_ns)
    n = len(s)
    return s[n // 2] / 1000.0, s[min(n - 1, int(n * 0.99))] / 1000.0


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    rows = [[_cell(v) for v in row] for row in rows]
    align = []
    for col in range(len(headers)):
        numeric = all(_is_number(r[col]) for r in rows if r[col] not in ("", "-"))
        align.append("---:" if numeric and rows else ":---")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def machine_info() -> str:
    """One Markdown line: date, CPU, cores, Python, SQLite, kernel."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{when}; CPU: {cpu}; nproc: {nproc}; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}; {platform.system()} {platform.release()}"
    )


def header(title: str, argv: Sequence[str] | None = None) -> str:
    """The lines printed before a table: title, machine, command."""
    cmd = " ".join(["python", *(argv if argv is not None else sys.argv)])
    return f"## {title}\n\n{machine_info()}\n\n`{cmd}`\n"
