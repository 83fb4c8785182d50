"""Shared fixtures: real files under tmp_path."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spooler._receiver_store import ReceiverStore
from spooler.spool import Spool


@pytest.fixture
def spool_path(tmp_path: Path) -> str:
    """A spool path inside a folder that does not exist yet."""
    return os.path.join(tmp_path, "spool", "spool.db")


@pytest.fixture
def spool(spool_path: str) -> Iterator[Spool]:
    """An open 4 MiB spool, closed after the test."""
    s = Spool(spool_path, max_bytes=4 << 20)
    yield s
    s.close()


def make_entry(
    i: int, *, name: str = "order.placed", status: str = "emitted", pad: int = 200
) -> dict[str, object]:
    """An entry shaped like the serializer's, about 300 bytes as JSON."""
    return {
        "event_id": i,
        "event_name": name,
        "event_type": "domain",
        "event_version": 1,
        "idempotency_key": f"key-{i:08d}-" + "x" * max(0, pad - 150),
        "status": status,
        "attempts": None,
        "occurred_at": "2026-01-15T10:30:00.000Z",
        "published_at": None,
        "dead_lettered_at": None,
        "latency_ms": None,
        "timestamp": "2026-01-15T10:30:00.000Z",
    }


def files_size(path: str) -> int:
    """Bytes on disk of a spool and its -wal and -shm (one that is absent counts 0: the
    last connection to close removes the -wal and -shm at any moment)."""
    total = 0
    for p in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(p)
    return total


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``check`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)  # the poll interval
    return check()


def free_port() -> int:
    """A loopback port nobody listens on (for a Cloud that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reap(pids: list[int], timeout: float = 60.0) -> list[int]:
    """Exit codes of forked children, waiting at most ``timeout`` for all of them.

    A child still running then is sent SIGABRT first: pytest's faulthandler, inherited
    across the fork, prints every thread's stack in it, so a hang shows where it
    hangs. Then SIGKILL; its code is the signal's, negated (-6 or -9).
    """
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)  # the poll interval
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGABRT)
            time.sleep(1.0)  # time for faulthandler to write the stacks
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return [codes[pid] for pid in pids]


@contextlib.contextmanager
def receiver_process(folder: Path, api_key: str) -> Iterator[tuple[str, ReceiverStore]]:
    """``python -m spooler receive`` in a process of its own: its URL, and its store to read.

    For tests that fork. A receiver thread in the test's own process is inside SQLite
    at some fork sooner or later, and the child then inherits SQLite's mutexes held by
    a thread it does not have: its first SQLite call never returns.
    """
    db, log = folder / "receiver.db", folder / "receiver.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env["EVENT_ENGINE_CLOUD_KEY"] = api_key
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spooler", "receive", "--port", "0", "--db", str(db)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        first = ""
        if wait_for(lambda: log.read_text(encoding="utf-8").endswith("\n"), timeout=30):
            first = log.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("receiving on http://127.0.0.1:"), log.read_text(encoding="utf-8")
        yield first.split()[2], ReceiverStore(db)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
