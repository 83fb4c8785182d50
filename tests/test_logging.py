"""Quiet when healthy, loud when not: what a host at INFO sees from spooler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cloud import CountingCloud
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent

_HOST = """
import logging, sys, time, httpx, spooler
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(threadName)s: %(message)s")
endpoint, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
spooler.configure(api_key="sk_test_logs", endpoint=endpoint, spool_path=path,
                  flush_interval=0.1, batch_size=5)
spooler.start()
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    spooler.track_emit({"event_name": "order.placed", "event_id": i}); i += 1
    time.sleep(0.01)  # time passes on purpose: a host emitting ~100 events a second
try:
    httpx.post(endpoint + "/heartbeat", content=b"{}")  # the host's own use of httpx
except httpx.ConnectError:
    pass
spooler.shutdown(timeout=2)
"""


def run_host(endpoint: str, path: str, seconds: float) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_HOST), endpoint, path, str(seconds)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.splitlines()


@pytest.mark.slow
def test_a_healthy_host_at_info_sees_one_line_from_spooler(tmp_path: Path) -> None:
    """Deliveries, heartbeats and spool writes for 2 s: one start line from spooler, no
    httpx or watchfiles record caused by spooler; the host's own httpx request still logs."""
    with CountingCloud() as cloud:
        lines = run_host(cloud.url, str(tmp_path / "spool" / "spool.db"), 2.0)
        assert cloud.event_ids()  # it did deliver meanwhile
    ours = [line for line in lines if " spooler" in line.split(":")[0]]
    assert len(ours) == 1 and ours[0].startswith("INFO spooler.reporter"), lines
    third = [line for line in lines if line.split(" ")[1].startswith(("httpx", "watchfiles"))]
    assert len(third) == 1 and "MainThread" in third[0], third  # the host's own request


@pytest.mark.slow
def test_an_outage_is_one_warning_not_one_per_retry(tmp_path: Path) -> None:
    """With the Cloud down and retries every few ms, the host sees one WARNING naming the
    reason and what waits (and nothing at INFO per retry)."""
    lines = run_host(f"http://127.0.0.1:{free_port()}", str(tmp_path / "spool" / "spool.db"), 2.0)
    warnings = [line for line in lines if line.startswith("WARNING spooler")]
    assert len(warnings) == 1, lines
    assert "cannot deliver to EventEngine Cloud" in warnings[0] and "wait" in warnings[0]
    assert not [line for line in lines if line.startswith("INFO spooler.shipper")]
