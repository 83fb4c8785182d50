"""What one hook call costs the host: spooler's ``track_emit`` beside OTel, Segment, persist-queue.

Every case gets the same notifications: ``event_name``, ``event_id``, ``idempotency_key``,
``event_version`` and a nested ``payload`` dict. spooler ignores ``payload`` by design; the
peers are handed the four metadata fields only (picked out inside the timed call, as
spooler's serializer does), so nobody is charged for copying the payload.

Cases (each warmed up with 1,000 calls first, then N timed calls):

* spooler ``background`` (the default), ``immediate``, and disabled (no API key);
  ``ship_in_process=False`` so no shipper competes for the GIL, plus one extra
  ``background`` row with the in-process shipper delivering to a local Receiver.
* OpenTelemetry SDK ``Logger.emit`` with a ``BatchLogRecordProcessor`` and an
  exporter that counts and discards.
* Segment ``analytics.Client.track``: built with ``send=False`` so no consumer thread
  ever starts, then ``send`` switched on so ``track`` runs its whole path including the
  queue ``put`` (nothing drains the queue; nothing is sent).
* persist-queue ``SQLiteAckQueue.put`` (durable per call, its defaults).

A socket guard refuses any connection that is not loopback for the whole run.

    python benchmarks/bench_hook.py            # N = 50,000
    python benchmarks/bench_hook.py --quick    # N = 5,000
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import header, markdown_table, metadata_of, percentiles_us, sample_payload

import spooler
from spooler.spool import read_stats

WARMUP = 1_000
RING = 1_000  # distinct notifications, cycled
API_KEY = "bench-key"


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


# -- timing --------------------------------------------------------------------------------


def time_hook(call: Callable[[dict[str, Any]], Any], n: int) -> tuple[list[int], int]:
    """WARMUP untimed calls, then n timed ones; per-call ns and the timed loop's total ns."""
    ring = [sample_payload(i) for i in range(RING)]
    for i in range(WARMUP):
        call(ring[i % RING])
    samples = [0] * n
    clock = time.perf_counter_ns
    gc.collect()
    start = clock()
    for i in range(n):
        payload = ring[i % RING]
        t0 = clock()
        call(payload)
        samples[i] = clock() - t0
    return samples, clock() - start


@contextmanager
def _tmpdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="spooler-bench-") as folder:
        yield folder


# -- cases -----------------------------------------------------------------------------------


def case_floor(n: int) -> tuple[list[int], int, str]:
    def noop(payload: dict[str, Any]) -> bool:
        return False

    samples, total = time_hook(noop, n)
    return samples, total, "a Python call that does nothing: the timer's own cost"


def case_spooler(n: int, mode: str, *, ship: bool = False) -> tuple[list[int], int, str]:
    from spooler.receiver import Receiver

    with _tmpdir() as folder:
        path = os.path.join(folder, "spool.db")
        receiver = Receiver(api_key=API_KEY, db_path=os.path.join(folder, "r.db")).start()
        try:
            spooler.configure(
                api_key=API_KEY,
                endpoint=receiver.url,
                spool_path=path,
                spool_mode=mode,
                ship_in_process=ship,
            )
            assert spooler.start()
            accepted = 0

            def call(payload: dict[str, Any]) -> None:
                nonlocal accepted
                accepted += spooler.track_emit(payload)

            samples, total = time_hook(call, n)
            spooler.shutdown()
            arrived = receiver.entry_count()
        finally:
            receiver.stop()
        stats = read_stats(path)
    expected = n + WARMUP
    landed = stats.depth + arrived
    note = f"accepted {accepted:,}/{expected:,}; spool holds {stats.depth:,}"
    if ship:
        note += f", receiver got {arrived:,}"
    if landed != expected:
        dropped = stats.counters["dropped"]
        note += f"; **{expected - landed:,} missing** (dropped counter {dropped:,})"
    return samples, total, note


def case_disabled(n: int) -> tuple[list[int], int, str]:
    with _tmpdir() as folder:
        path = os.path.join(folder, "spool.db")
        spooler.configure(api_key=None, spool_path=path)
        assert not spooler.start()
        samples, total = time_hook(spooler.track_emit, n)
        spooler.shutdown()
        created = os.listdir(folder)
    return samples, total, f"files created: {len(created)}"


def case_otel(n: int) -> tuple[list[int], int, str]:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class Discard(LogRecordExporter):  # type: ignore[misc]
        def __init__(self) -> None:
            self.count = 0

        def export(self, batch: Any) -> LogRecordExportResult:
            self.count += len(batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    exporter = Discard()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("bench")

    def call(payload: dict[str, Any]) -> None:
        meta = metadata_of(payload)
        logger.emit(event_name=meta.pop("event_name"), attributes=meta)

    samples, total = time_hook(call, n)
    provider.shutdown()
    expected = n + WARMUP
    note = f"exported {exporter.count:,}/{expected:,}"
    if exporter.count != expected:
        note += f" (**{expected - exporter.count:,} dropped** by its bounded queue)"
    return samples, total, note


def case_segment(n: int) -> tuple[list[int], int, str]:
    from segment.analytics.client import Client

    # send=False: no consumer thread, no atexit join; nothing can leave the process.
    client = Client(
        write_key="x",
        host="http://127.0.0.1:9",
        send=False,
        max_queue_size=n + WARMUP + 10,
    )
    assert not any(c.is_alive() for c in client.consumers)
    client.send = True  # run track's full path, queue put included

    def call(payload: dict[str, Any]) -> None:
        meta = metadata_of(payload)
        client.track(user_id="bench-user", event=meta.pop("event_name"), properties=meta)

    samples, total = time_hook(call, n)
    return samples, total, f"queued {client.queue.qsize():,} (never sent)"


def case_persist_queue(n: int) -> tuple[list[int], int, str]:
    import persistqueue

    with _tmpdir() as folder:
        q = persistqueue.SQLiteAckQueue(os.path.join(folder, "pq"))

        def call(payload: dict[str, Any]) -> None:
            q.put(metadata_of(payload))

        samples, total = time_hook(call, n)
        note = f"stored {q.qsize():,}"
    return samples, total, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5,000")
    parser.add_argument("-n", type=int, default=None, help="timed calls per case (50,000)")
    parser.add_argument(
        "--persist-queue-n",
        type=int,
        default=None,
        help="timed calls for persist-queue (default: N; it commits with fsync per call)",
    )
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.quick else 50_000)
    n_pq = args.persist_queue_n or n
    install_network_guard()
    started = time.monotonic()

    cases: list[tuple[str, int, Callable[[], tuple[list[int], int, str]]]] = [
        ("timer floor (no-op function)", n, lambda: case_floor(n)),
        ("spooler `track_emit`, disabled (no key)", n, lambda: case_disabled(n)),
        ("spooler `track_emit`, background", n, lambda: case_spooler(n, "background")),
        ("spooler `track_emit`, immediate", n, lambda: case_spooler(n, "immediate")),
        (
            "spooler `track_emit`, background + in-process shipper",
            n,
            lambda: case_spooler(n, "background", ship=True),
        ),
        ("OpenTelemetry `Logger.emit` (BatchLogRecordProcessor)", n, lambda: case_otel(n)),
        ("Segment `analytics.Client.track`", n, lambda: case_segment(n)),
        ("persist-queue `SQLiteAckQueue.put`", n_pq, lambda: case_persist_queue(n_pq)),
    ]
    rows = []
    for name, count, run in cases:
        samples, total, note = run()
        p50, p99 = percentiles_us(samples)
        rows.append([name, count, count / (total / 1e9), p50, p99, note])

    title = f"Hook: one call in the host's thread, {n:,} timed calls after {WARMUP:,} warm-up"
    print(header(title))
    print(markdown_table(["case", "calls", "calls/s", "p50 µs", "p99 µs", "check"], rows))
    by_name = {r[0]: r for r in rows}

    def p50(name: str) -> float:
        return float(by_name[name][3])

    bg = p50("spooler `track_emit`, background")
    im = p50("spooler `track_emit`, immediate")
    off = p50("spooler `track_emit`, disabled (no key)")
    otel = p50("OpenTelemetry `Logger.emit` (BatchLogRecordProcessor)")
    seg = p50("Segment `analytics.Client.track`")
    print("\nTargets (p50, reported, not asserted):\n")
    for label, ours, theirs in (
        ("background < OTel emit", bg, otel),
        ("immediate < Segment track", im, seg),
        ("disabled < 1 µs (timer included)", off, 1.0),
    ):
        verdict = "met" if ours < theirs else "MISSED"
        print(f"- {label}: {ours:.2f} vs {theirs:.2f} µs -> {verdict}")
    print(f"\n(ran in {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
