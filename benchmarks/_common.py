"""Shared helpers for the benchmark scripts: sample data, percentiles, Markdown, machine info.

Not a test module and not part of the package: the scripts import it from their own folder
(``python benchmarks/bench_append.py`` puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from spooler.serializer import build_entry

HERE = os.path.dirname(os.path.abspath(__file__))

#: The notification fields spooler keeps; the peers get exactly these too.
META_KEYS = ("event_name", "event_id", "idempotency_key", "event_version", "occurred_at")


def sample_payload(i: int) -> dict[str, Any]:
    """One host notification: the metadata spooler keeps plus a ``payload`` it must ignore."""
    return {
        "event_name": "order.placed",
        "event_id": 1_000_000 + i,
        "idempotency_key": f"order-{1_000_000 + i}-{uuid.UUID(int=i)}",
        "event_version": 3,
        "occurred_at": "2026-01-15T10:30:00.000Z",
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
    """The metadata fields of a payload (what a peer gets to store)."""
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


def git_commit() -> str:
    """The commit of the working tree measured, plus "+ uncommitted changes in ..." if dirty."""
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "spooler", "pyproject.toml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    if changed:
        return f"{head} + uncommitted changes in {', '.join(changed)}"
    return head


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


def quantiles_us(samples_ns: Sequence[int], points: int = 1000) -> list[float]:
    """``points + 1`` evenly spaced quantiles (0 .. 1) in µs: enough to draw a CDF."""
    s = sorted(samples_ns)
    n = len(s)
    if not n:
        return []
    return [s[min(n - 1, round(q * (n - 1) / points))] / 1000.0 for q in range(points + 1)]


def write_json(path: str | None, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (for ``report.py``); nothing when path is None."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)


# -- processes ---------------------------------------------------------------------------


def proc_status_kib(pid: int | str, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: benchmarks/ importable, no spooler variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class MinimalReceiver:
    """``minimal_receiver.py`` in its own process: counts entries, answers 200."""

    def __init__(self, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "minimal_receiver.py"), "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            raise RuntimeError("minimal receiver did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def _get(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body and body != b"{}" else {}

    def counts(self) -> dict[str, Any]:
        """``{"entries": N, "requests": R, "cpu": seconds}`` so far."""
        return self._get("GET", "/count")

    def count(self) -> int:
        """Entries received so far."""
        return int(self.counts()["entries"])

    def reset(self) -> None:
        """Zero the counters."""
        self._get("POST", "/reset")

    def stop(self) -> None:
        """Kill the process and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> MinimalReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- guard: loopback only ----------------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family == socket.AF_UNIX:
        return
    host = address[0] if isinstance(address, tuple) else address
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ConnectionRefusedError(f"benchmark network guard: refused {host}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _real_connect_ex(self, address)


def install_network_guard() -> None:
    """Refuse every socket connection that is not loopback, in this process."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
