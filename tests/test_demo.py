"""``python -m spooler demo``: delivers everything it spools, leaks no business data, reruns."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from examples.outbox_app import CUSTOMERS
from spooler import demo

# What the outbox app writes into payloads and metadata and must never leave the host.
BUSINESS_DATA = [text for customer in CUSTOMERS for text in customer] + [
    "customer_email",
    "shipping_address",
    "card_last4",
    "amount_cents",
    "request_id",
    '"declined"',
]


def run_demo_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "spooler", "demo", "--seconds", "2", "--rate", "100", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def count(label: str, output: str) -> int:
    match = re.search(rf"^\s+{re.escape(label)}\s+(\d+)\s", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return int(match.group(1))


def receiver_text(path: Path) -> str:
    """Everything the receiver stored, as SQL text (entries, heartbeats, request log)."""
    with closing(sqlite3.connect(path)) as conn:
        return "\n".join(conn.iterdump())


@pytest.mark.slow
def test_demo_delivers_every_entry_without_business_data_and_runs_twice(tmp_path: Path) -> None:
    """Two runs in one folder each exit 0 with delivered == spooled, and no payload text arrives."""
    for _ in range(2):
        result = run_demo_process(tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        emitted = count("events emitted", out)
        spooled = count("entries spooled", out)
        assert emitted >= 150  # about 2 s at 100 events/s; a rerun starts from zero
        assert count("delivered", out) == spooled
        assert spooled == emitted + count("published", out) + count("dead-lettered (app)", out)
        assert count("dropped", out) == 0
        assert re.search(r"p50 \d+ ms, p99 \d+ ms", out)
        assert "OK: every spooled entry reached the receiver" in out
    workdir = tmp_path / ".spooler" / "demo"
    assert f"sqlite3 {workdir / 'receiver.db'}" in out
    stored = receiver_text(workdir / "receiver.db")
    assert '"status":"emitted"' in stored and '"status":"dead_lettered"' in stored
    for secret in BUSINESS_DATA:
        assert secret not in stored
    # The host's own outbox does hold the data, so the search above could have found it.
    with closing(sqlite3.connect(workdir / "outbox.db")) as conn:
        outbox = "\n".join(conn.iterdump())
    assert CUSTOMERS[0][0] in outbox and "card_last4" in outbox


def test_demo_counts_a_stand_in_run_without_the_example_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without examples/ on disk the demo still runs, on built-in notifications, and succeeds."""
    monkeypatch.setattr(demo, "_load_outbox_app", lambda: None)
    lines: list[str] = []
    code = demo.run_demo(seconds=0.5, rate=200, workdir=str(tmp_path), quiet=True, out=lines.append)
    out = "\n".join(lines)
    assert code == 0, out
    assert "built-in event stand-in" in out
    assert count("delivered", out) == count("entries spooled", out) > 0
    assert "outbox.db" not in out  # no outbox file to point at


def test_demo_refuses_nonsense_arguments(tmp_path: Path) -> None:
    """A negative duration or a share above 1 is a usage error, before anything starts."""
    with pytest.raises(ValueError):
        demo.run_demo(seconds=-1, workdir=str(tmp_path))
    with pytest.raises(ValueError):
        demo.run_demo(fail_share=1.5, workdir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_demo_tells_spool_from_memory_and_ends_with_next_steps(tmp_path: Path) -> None:
    """Progress lines name what waits in the spool and what is still in memory; the run
    ends with how to wire spooler into an app, look at a spool and ship as a service."""
    lines: list[str] = []
    assert demo.run_demo(seconds=1.0, rate=50, workdir=str(tmp_path), out=lines.append) == 0
    progress = [line for line in lines if " emitted " in line and " s " in line]
    assert progress and all("waiting in spool" in p and "in memory" in p for p in progress)
    text = "\n".join(lines)
    assert "next steps" in text
    assert "spooler.configure()" in text and "python -m spooler status --spool" in text
    assert "python -m spooler ship" in text
