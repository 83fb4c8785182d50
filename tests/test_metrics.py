"""Prometheus metrics: scraped over real HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from spooler.metrics import Metrics, serve_metrics
from spooler.spool import Spool
from spooler.stats import iso_epoch, read_stats
from tests.conftest import make_entry

parser = pytest.importorskip("prometheus_client.parser")

MAX_BYTES = 4 << 20
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """GET /metrics from 127.0.0.1 and parse it: (sample name, sorted labels) -> value."""
    # trust_env=False: a proxy variable on the test machine must not route a loopback scrape.
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5.0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def filled_spool(spool_path: str) -> Iterator[str]:
    """A spool where 5 entries were appended, 2 shipped, and drops and rejections counted."""
    spool = Spool(spool_path, max_bytes=MAX_BYTES)
    assert spool.append_many([make_entry(i) for i in range(5)]) == 5
    rows = spool.read_batch(2)
    assert spool.ack([row.id for row in rows]) == 2
    spool.count("dropped", 3)
    spool.count("invalid", 1)
    assert spool.flush_counters()
    spool.close()
    yield spool_path


@pytest.fixture
def served(filled_spool: str) -> Iterator[Metrics]:
    metrics = serve_metrics(0, spool_path=filled_spool, max_bytes=MAX_BYTES)
    yield metrics
    metrics.close()


def test_a_scrape_reports_the_spools_counters_and_gauges(
    served: Metrics, filled_spool: str
) -> None:
    """Every counter of the spool appears as spooler_entries_total{reason}, with depth, bytes,
    the bound, the oldest entry's age and the last success, all equal to read_stats'."""
    samples = scrape(served.port or 0)
    stats = read_stats(filled_spool, max_bytes=MAX_BYTES)
    assert stats.counters["appended"] == 5 and stats.counters["shipped"] == 2
    for reason, value in stats.counters.items():
        if not reason.startswith("publish_"):
            assert samples[("spooler_entries_total", (("reason", reason),))] == value, reason
    assert samples[("spooler_entries_total", (("reason", "dropped"),))] == 3
    assert samples[("spooler_entries_total", (("reason", "invalid"),))] == 1
    assert samples[("spooler_spool_depth", ())] == stats.depth == 3
    assert samples[("spooler_spool_bytes", ())] == stats.bytes_on_disk > 0
    assert samples[("spooler_spool_max_bytes", ())] == MAX_BYTES
    assert samples[("spooler_spool_oldest_age_seconds", ())] > 0
    assert samples[("spooler_spool_readable", ())] == 1
    assert stats.last_delivery_at is not None
    assert samples[("spooler_last_success_timestamp_seconds", ())] == pytest.approx(
        iso_epoch(stats.last_delivery_at)
    )


def test_each_scrape_reads_the_spool_afresh(served: Metrics, filled_spool: str) -> None:
    """Numbers follow the file between scrapes: nothing is cached or counted per event."""
    before = scrape(served.port or 0)
    spool = Spool(filled_spool, max_bytes=MAX_BYTES)
    spool.append_many([make_entry(i) for i in range(10, 14)])
    spool.close()
    after = scrape(served.port or 0)
    appended = ("spooler_entries_total", (("reason", "appended"),))
    assert (before[appended], after[appended]) == (5, 9)
    assert after[("spooler_spool_depth", ())] == 7


def test_deliveries_reported_by_the_shipper_fill_the_histograms(served: Metrics) -> None:
    """observe_delivery feeds the latency and batch-size histograms; delivered_at moves the
    last success forward (never back)."""
    served.observe_delivery(0.03, 10)
    served.observe_delivery(2.0, 50)
    later = time.time() + 60
    served.delivered_at(later)
    served.delivered_at(later - 3600)
    samples = scrape(served.port or 0)
    assert samples[("spooler_delivery_seconds_count", ())] == 2
    assert samples[("spooler_delivery_seconds_sum", ())] == pytest.approx(2.03)
    assert samples[("spooler_delivery_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("spooler_delivery_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("spooler_delivery_batch_entries_sum", ())] == 60
    assert samples[("spooler_last_success_timestamp_seconds", ())] == pytest.approx(later)


def test_bad_observations_never_raise(served: Metrics) -> None:
    """The shipper's calls cannot break delivery, whatever they are given."""
    served.observe_delivery("soon", None)  # type: ignore[arg-type]
    served.delivered_at("yesterday")  # type: ignore[arg-type]
    assert ("spooler_delivery_seconds_count", ()) in scrape(served.port or 0)


def test_a_missing_spool_still_scrapes(spool_path: str) -> None:
    """Before the spool exists (or when it cannot be read) the scrape answers 200 with
    spooler_spool_readable 0 instead of failing."""
    with serve_metrics(0, spool_path=spool_path, max_bytes=MAX_BYTES) as metrics:
        samples = scrape(metrics.port or 0)
    assert samples[("spooler_spool_readable", ())] == 0
    assert ("spooler_spool_depth", ()) not in samples


def test_the_registry_is_private(served: Metrics, filled_spool: str) -> None:
    """spooler never registers with prometheus_client's global REGISTRY, so two Metrics in one
    process do not clash and the host's own /metrics shows nothing of spooler's."""
    from prometheus_client import REGISTRY, generate_latest

    assert served.registry is not REGISTRY
    assert b"spooler_" not in generate_latest(REGISTRY)
    with serve_metrics(0, spool_path=filled_spool, max_bytes=MAX_BYTES) as second:
        assert second.port != served.port
        assert ("spooler_spool_depth", ()) in scrape(second.port or 0)


def test_close_frees_the_port(filled_spool: str) -> None:
    """After close() nothing listens on the port any more."""
    metrics = serve_metrics(0, spool_path=filled_spool, max_bytes=MAX_BYTES)
    port = metrics.port
    assert port
    metrics.close()
    assert metrics.port is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=2.0)


def test_without_prometheus_client_metrics_explain_what_to_install(
    monkeypatch: pytest.MonkeyPatch, spool_path: str
) -> None:
    """A host without prometheus_client gets an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"spooler\[metrics\]"):
        Metrics(spool_path=spool_path)


def test_importing_spooler_does_not_import_prometheus_client() -> None:
    """prometheus_client is imported only when metrics are asked for."""
    code = (
        "import sys, spooler, spooler.metrics, spooler.config;"
        "assert 'prometheus_client' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
