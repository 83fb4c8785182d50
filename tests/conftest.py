"""Shared fixtures: real files under tmp_path."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
