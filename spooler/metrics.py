"""Prometheus metrics for a spool and its shipper, served over HTTP from a private registry.

Optional: needs ``prometheus_client`` (``pip install 'spooler[metrics]'``), imported only
when metrics are asked for, so a host without it is unaffected. Everything lives in a
registry of spooler's own, never prometheus_client's global ``REGISTRY``: the host's own
metrics and whatever it serves stay untouched.

The spool's numbers are read at scrape time from its file (:func:`spooler.spool.read_stats`,
read-only), so recording them costs nothing per event::

    spooler_entries_total{reason}              counter  the spool's counters by reason:
                                                        appended, shipped, evicted, invalid,
                                                        dropped, dead_lettered, lost,
                                                        dead_letters_evicted, filtered
                                                        (any counter the spool adds later
                                                        appears here too)
    spooler_publish_batches_total              counter  host publish batches seen
    spooler_publish_batch_events_total         counter  events in those batches
    spooler_spool_depth                        gauge    entries waiting
    spooler_spool_bytes                        gauge    bytes on disk (db, -wal, -shm)
    spooler_spool_max_bytes                    gauge    the configured bound
    spooler_spool_oldest_age_seconds           gauge    age of the oldest waiting entry (0: none)
    spooler_spool_dead_letters                 gauge    dead-lettered entries kept
    spooler_last_success_timestamp_seconds     gauge    last accepted delivery (absent: never)
    spooler_last_error_timestamp_seconds       gauge    last failed delivery (absent: never)
    spooler_spool_readable                     gauge    1, or 0 when the spool could not be read

and from the shipper, as it delivers (:meth:`Metrics.observe_delivery`)::

    spooler_delivery_seconds                   histogram  seconds per accepted request
    spooler_delivery_batch_entries             histogram  entries per accepted request
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from spooler.stats import read_stats
from spooler.timestamps import iso_epoch

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.core import Metric

__all__ = ["DELIVERY_BUCKETS", "Metrics", "serve_metrics"]

logger = logging.getLogger(__name__)

#: Seconds; one request to the Cloud takes tens of ms when healthy, up to the 15 s deadline.
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Spool counters that are not outcomes of entries get metrics of their own.
_OWN_COUNTERS = {
    "publish_batches": "host publish batches seen",
    "publish_batch_events": "events in the host's publish batches",
}
_NAME = re.compile(r"[^a-zA-Z0-9_]")
_INSTALL_HINT = "spooler's metrics need prometheus_client: pip install 'spooler[metrics]'"


class Metrics:
    """Spooler's metrics in a private registry; optionally served over HTTP.

    The spool's numbers are read when scraped; the shipper reports deliveries through
    :meth:`observe_delivery` and :meth:`delivered_at`, which never raise.
    """

    def __init__(self, *, spool_path: str | os.PathLike[str], max_bytes: int = 0) -> None:
        try:
            from prometheus_client import CollectorRegistry, Histogram
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self.spool_path = os.path.abspath(os.fspath(spool_path))
        self.max_bytes = max_bytes
        self._last_success: float | None = None
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self._latency: Histogram = Histogram(
            "spooler_delivery_seconds",
            "Seconds per request the Cloud accepted",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self._batch: Histogram = Histogram(
            "spooler_delivery_batch_entries",
            "Entries per request the Cloud accepted",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SpoolCollector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = f"port={self.port}" if self._server is not None else "not served"
        return f"Metrics(spool_path={self.spool_path!r}, {where})"

    # The shipper's side

    def observe_delivery(self, seconds: float, entries: int) -> None:
        """Record one request the Cloud accepted: how long it took and how many entries."""
        try:
            self._latency.observe(max(0.0, float(seconds)))
            self._batch.observe(max(0, int(entries)))
        except Exception:  # a metric must never break delivery
            logger.debug("could not record a delivery", exc_info=True)

    def delivered_at(self, ts: float) -> None:
        """Note a successful delivery at ``ts`` (seconds since the epoch)."""
        try:
            ts = float(ts)
        except (TypeError, ValueError):
            return
        last = self._last_success
        if last is None or ts > last:
            self._last_success = ts

    # Serving

    @property
    def port(self) -> int | None:
        """The port metrics are served on, or None when not served."""
        server = self._server
        return None if server is None else int(server.server_address[1])

    def render(self) -> bytes:
        """The metrics in Prometheus' text format, as a scrape would get them."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, *, host: str = "127.0.0.1") -> Metrics:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        from prometheus_client import make_wsgi_app

        if self._server is not None:
            raise RuntimeError(f"metrics are already served on port {self.port}")
        server_class = _IPv6Server if ":" in host else _Server
        server = make_server(
            host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler
        )
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="spooler.metrics",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        logger.info("serving metrics on http://%s:%d/metrics", host, self.port)
        return self

    def close(self) -> None:
        """Stop serving and free the port (the registry stays readable)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    port: int, *, spool_path: str | os.PathLike[str], max_bytes: int, host: str = "127.0.0.1"
) -> Metrics:
    """Serve the spool's and the shipper's metrics on ``host:port``; ``port`` 0 picks one.

    Returns the :class:`Metrics` (``.port`` is the port bound; ``.close()`` stops it) for
    the shipper to report deliveries to.
    """
    return Metrics(spool_path=spool_path, max_bytes=max_bytes).serve(port, host=host)


class _SpoolCollector:
    """Reads the spool file at scrape time; a spool that cannot be read is reported, not raised."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self._metrics
        readable = GaugeMetricFamily(
            "spooler_spool_readable", "1 when the spool file could be read at this scrape"
        )
        try:
            stats = read_stats(metrics.spool_path, max_bytes=metrics.max_bytes)
        except Exception as exc:  # missing, locked, corrupt: the scrape itself must succeed
            logger.debug("metrics: spool %s unreadable (%s)", metrics.spool_path, exc)
            readable.add_metric([], 0)
            yield readable
            yield from self._last_success(None)
            return
        readable.add_metric([], 1)
        yield readable

        entries = CounterMetricFamily(
            "spooler_entries", "Entries by what became of them", labels=["reason"]
        )
        for name, value in sorted(stats.counters.items()):
            if name in _OWN_COUNTERS:
                yield CounterMetricFamily(
                    f"spooler_{_NAME.sub('_', name)}", _OWN_COUNTERS[name], value=value
                )
            else:
                entries.add_metric([name], value)
        yield entries

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, value=value)

        yield gauge("spooler_spool_depth", "Entries waiting in the spool", stats.depth)
        yield gauge("spooler_spool_bytes", "Bytes the spool takes on disk", stats.bytes_on_disk)
        yield gauge("spooler_spool_max_bytes", "The spool's size bound", stats.max_bytes)
        yield gauge(
            "spooler_spool_oldest_age_seconds",
            "Age of the oldest waiting entry (0 when none waits)",
            stats.oldest_age_seconds or 0.0,
        )
        yield gauge("spooler_spool_dead_letters", "Dead-lettered entries kept", stats.dead_letters)
        yield from self._last_success(stats.last_delivery_at)
        error_at = iso_epoch(stats.last_error_at) if stats.last_error_at else None
        if error_at is not None:
            yield gauge(
                "spooler_last_error_timestamp_seconds",
                "When a delivery last failed (seconds since the epoch)",
                error_at,
            )

    def _last_success(self, recorded: str | None) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        times = [self._metrics._last_success, iso_epoch(recorded) if recorded else None]
        known = [t for t in times if t is not None]
        if known:
            yield GaugeMetricFamily(
                "spooler_last_success_timestamp_seconds",
                "When the Cloud last accepted a delivery (seconds since the epoch)",
                value=max(known),
            )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a line each on stderr."""
