"""The Flask app ``bench_app.py`` serves under gunicorn: two events announced per request.

Every request announces one event emitted and one published on blinker's process-wide
signals, as the README tells an app to; what listens is chosen by ``BENCH_INSTRUMENT``:

* ``none``: nobody (the signals are sent to no receiver);
* ``otel``: OpenTelemetry's batch log pipeline (``LoggerProvider`` +
  ``BatchLogRecordProcessor``) with an exporter that only encodes each batch to OTLP
  protobuf bytes and drops them (no network);
* ``background`` / ``immediate``: spooler in that mode, configured from the environment
  (``EVENT_ENGINE_CLOUD_KEY``, ``..._ENDPOINT`` on 127.0.0.1, ``..._SPOOL_PATH``,
  ``..._SHIP_IN_PROCESS=true``).

At exit the worker writes what it did to ``BENCH_STATS_FILE`` (JSON), if set.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any

import blinker
from flask import Flask, jsonify

MODE = os.environ.get("BENCH_INSTRUMENT", "none")
emitted = blinker.signal("event_engine.event_emitted")
published = blinker.signal("event_engine.event_published")
app = Flask(__name__)
_served = itertools.count()
_stats: dict[str, Any] = {"mode": MODE, "requests": 0}
_at_stats: Any = None  # flushes the instrumentation before the stats are written

if MODE in ("background", "immediate"):
    import spooler

    spooler.configure(spool_mode=MODE)
    assert spooler.start(), "spooler needs EVENT_ENGINE_CLOUD_KEY"
elif MODE == "otel":
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class EncodeOnly(LogRecordExporter):  # type: ignore[misc]
        """Encodes every batch to OTLP protobuf, as the OTLP exporter would, then drops it."""

        def __init__(self) -> None:
            self.records = 0
            self.bytes = 0

        def export(self, batch: Any) -> LogRecordExportResult:
            self.bytes += len(encode_logs(batch).SerializeToString())
            self.records += len(batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    _exporter = EncodeOnly()
    _provider = LoggerProvider()
    _provider.add_log_record_processor(BatchLogRecordProcessor(_exporter))
    _logger = _provider.get_logger("bench.app")
    _meta = ("event_id", "event_version", "idempotency_key", "occurred_at", "published_at")

    def _to_otel(sender: object, **kw: Any) -> None:
        attributes = {k: kw[k] for k in _meta if kw.get(k) is not None}
        _logger.emit(event_name=str(kw.get("event_name")), attributes=attributes)

    emitted.connect(_to_otel, weak=False)
    published.connect(_to_otel, weak=False)

    def _otel_stats() -> None:
        _provider.shutdown()
        _stats.update(exported=_exporter.records, encoded_bytes=_exporter.bytes)

    _at_stats = _otel_stats


@app.route("/order")
def order() -> Any:
    """Place an order: announce it emitted, then published."""
    i = next(_served)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    emitted.send(
        app,
        event_name="order.placed",
        event_version=1,
        event_id=i,
        idempotency_key=str(uuid.uuid4()),
        occurred_at=now,
        payload={"order_id": f"ord_{i:08d}", "total": 59.94, "currency": "EUR"},
    )
    published.send(app, event_name="order.placed", event_id=i, published_at=now)
    _stats["requests"] = i + 1
    return jsonify(ok=True, order=i)


def _write_stats() -> None:
    if _at_stats is not None:
        _at_stats()
    path = os.environ.get("BENCH_STATS_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_stats, f)


# Registered after spooler's own handler; atexit runs last-in first-out, so this runs first
# and spooler's shutdown (flush, then the shipper's last delivery) comes after it.
atexit.register(_write_stats)
