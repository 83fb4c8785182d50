"""``python -m spooler demo``: the whole pipeline on this machine, no Cloud account needed.

It starts a local :class:`~spooler.receiver.Receiver` (the Cloud's stand-in, on a free port
with a fresh key), configures spooler against it, runs the example outbox app at a steady
rate (a share of its payment events is declined by the fake broker and dead-lettered), lets
the in-process shipper deliver, then prints what was emitted, spooled, delivered and lost,
and the delivery delay, with ``sqlite3`` commands to look at each file.

The example app lives in ``examples/outbox_app/app.py`` beside the package (an editable
install). It is loaded by file path under a private module name, so the demo works from any
working directory, never touches ``sys.path``, and cannot pick up some other installed
package named ``examples``. Where the file is absent (a wheel install) a small stand-in
announces the same notifications without a database.

Lines go to the ``out`` callable (the command line passes its terminal writer; default: the log).

At ~550 lines this module is past the ~500 others keep to: it is one command read top to
bottom (the run, the summary, the two traffic producers), and the producers serve
nothing else. They are the piece to move out (``_demo_traffic.py``) if it grows.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import secrets
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import blinker

import spooler
from spooler import hooks
from spooler.config import Config
from spooler.receiver import Receiver
from spooler.reporter import Reporter, configure
from spooler.spool import SpoolStats, read_stats

__all__ = ["DEFAULT_WORKDIR", "run_demo"]

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = os.path.join(".spooler", "demo")
MAX_ATTEMPTS = 3  # broker attempts before the outbox dead-letters an event
TRANSIENT_FAIL_RATE = 0.05  # share of broker calls that fail once and succeed on retry
PUBLISH_EVERY = 0.1  # seconds between outbox publisher passes
DRAIN_TIMEOUT = 3.0  # seconds to wait for the last entries after traffic stops
_APP_MODULE = "_spooler_demo_outbox_app"
# Files of earlier runs; removed by name so a --workdir pointing somewhere odd loses nothing else.
_RUN_FILES = ("spool.db*", "receiver.db*", "outbox.db*")
_GAVE_UP = f"the app gave up after {MAX_ATTEMPTS} broker attempts"


def _log_line(line: str) -> None:
    # Library default; `python -m spooler demo` passes a terminal writer.
    logger.info("%s", line)


def run_demo(
    *,
    seconds: float = 8.0,
    rate: float = 150.0,
    workdir: str | None = None,
    fail_share: float = 0.05,
    quiet: bool = False,
    out: Callable[[str], None] | None = None,
) -> int:
    """Run the demo; 0 when every spooled entry reached the receiver and nothing was dropped.

    ``quiet`` leaves out the per-second progress lines, not the summary.
    """
    if seconds < 0 or rate <= 0 or not 0.0 <= fail_share <= 1.0:
        raise ValueError("need seconds >= 0, rate > 0 and 0 <= fail_share <= 1")
    write = out or _log_line
    progress: Callable[[str], None] = (lambda _line: None) if quiet else write
    folder = Path(workdir or DEFAULT_WORKDIR).resolve()
    _wipe(folder)
    started = time.monotonic()
    with _quiet_shipper_log():
        outcome = _run(folder, write, progress, seconds=seconds, rate=rate, fail_share=fail_share)
    return 0 if _summarize(write, outcome, time.monotonic() - started) else 1


@dataclass(frozen=True)
class _Outcome:
    """What one run announced, spooled and delivered, and where its files are."""

    emitted: int
    published: int
    dead: int
    counters: Mapping[str, int]  # the spool's
    delivered: int
    delays: list[float]
    spool_path: str
    receiver_db: str
    outbox_path: str | None

    @property
    def expected(self) -> int:
        """Entries the app's notifications should have made."""
        return self.emitted + self.published + self.dead

    @property
    def spooled(self) -> int:
        """Entries the spool took in."""
        return self.counters.get("appended", 0)

    @property
    def ok(self) -> bool:
        """Every announced entry was spooled and delivered, and nothing was dropped."""
        dropped = self.counters.get("dropped", 0)
        return self.delivered == self.spooled == self.expected and dropped == 0


@contextmanager
def _quiet_shipper_log() -> Iterator[None]:
    """Keep the shipper's INFO lines out while the demo runs (unless DEBUG is on)."""
    shipper_log = logging.getLogger("spooler.shipper")
    saved_level = shipper_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        shipper_log.setLevel(logging.WARNING)  # a line per batch would drown the progress
    try:
        yield
    finally:
        shipper_log.setLevel(saved_level)


def _run(
    folder: Path,
    write: Callable[[str], None],
    progress: Callable[[str], None],
    *,
    seconds: float,
    rate: float,
    fail_share: float,
) -> _Outcome:
    """Receiver, reporter and traffic up; produce, drain, count; everything down again."""
    spool_path = folder / "spool.db"
    key = "demo-" + secrets.token_urlsafe(18)
    receiver = Receiver(api_key=key, db_path=folder / "receiver.db").start()
    producer: _Producer | None = None
    try:
        reporter = _start_reporter(key, receiver.url, spool_path)
        producer = _make_producer(folder / "outbox.db", fail_share)
        write(
            f"spooler demo: {producer.description}, {rate:g} events/s for {seconds:g} s, "
            f"{fail_share:.0%} set to dead-letter; local receiver at {receiver.url}"
        )
        watch = _Progress(progress, producer, reporter, receiver, str(spool_path))
        _produce(producer, watch, seconds=seconds, rate=rate)
        _finish(producer, watch)
        spooler.shutdown(timeout=2.0)
        stats = _final_stats(str(spool_path))
        emitted, published, dead = producer.counts()
        return _Outcome(
            emitted=emitted,
            published=published,
            dead=dead,
            counters=stats.counters,
            delivered=receiver.entry_count(),
            delays=_delays(receiver.db_path),
            spool_path=str(spool_path),
            receiver_db=receiver.db_path,
            outbox_path=producer.db_path,
        )
    finally:
        spooler.shutdown(timeout=0.5)
        receiver.stop()
        if producer is not None:
            producer.close()


def _start_reporter(key: str, endpoint: str, spool_path: Path) -> Reporter:
    # The demo's own Config, not the environment: a real key or endpoint in
    # EVENT_ENGINE_CLOUD_* must not send demo traffic to the Cloud.
    config = Config(
        api_key=key,
        endpoint=endpoint,
        spool_path=spool_path,
        flush_interval=1.0,
        app_name="spooler-demo",
        environment="demo",
        enabled=True,
    )
    reporter = configure(config)
    reporter.start()
    reporter.ensure_running()
    return reporter


# -- the summary -----------------------------------------------------------------------


def _summarize(write: Callable[[str], None], outcome: _Outcome, elapsed: float) -> bool:
    """Print the counts, the files, the next steps and the verdict; whether the run was OK."""
    write("")
    write(f"summary after {elapsed:.1f} s")
    _write_counts(write, outcome)
    write("")
    _write_files(write, outcome)
    write("")
    _next_steps(write, outcome.spool_path)
    write("")
    if outcome.ok:
        write("OK: every spooled entry reached the receiver; nothing dropped.")
    else:
        write(
            f"INCOMPLETE: {outcome.expected} announced, {outcome.spooled} spooled, "
            f"{outcome.delivered} delivered, {outcome.counters.get('dropped', 0)} dropped; "
            f"see `python -m spooler status --spool {shlex.quote(outcome.spool_path)}`"
        )
    return outcome.ok


def _write_counts(write: Callable[[str], None], outcome: _Outcome) -> None:
    """The counts table: the app's side, then the spool's, then the delivery delay."""
    c = outcome.counters
    rows = [
        ("outbox app (the host)", None, ""),
        ("events emitted", outcome.emitted, "order.placed and payment.captured"),
        ("published", outcome.published, "taken by the fake broker"),
        ("dead-lettered (app)", outcome.dead, _GAVE_UP),
        ("spool (this machine)", None, ""),
        ("entries spooled", outcome.spooled, "one per emitted, published or dead-lettered event"),
        ("delivered", outcome.delivered, "stored by the local receiver"),
        ("rejected (spool)", c.get("dead_lettered", 0), "refused by the receiver, kept aside"),
        ("evicted", c.get("evicted", 0), "oldest rows dropped at the size cap"),
        ("invalid", c.get("invalid", 0), "notifications without a usable event_name"),
        ("dropped", c.get("dropped", 0), "buffer full or spool unwritable"),
    ]
    for label, value, note in rows:
        if value is None:
            write(f"  {label}")
        else:
            write(f"    {label:<22}{value:>7}   {note}")
    write(f"  delivery delay            {_describe_delays(outcome.delays)}")


def _write_files(write: Callable[[str], None], outcome: _Outcome) -> None:
    """Each file the run made, with a ``sqlite3`` command to look into it."""
    files = [
        ("spool", outcome.spool_path, "SELECT * FROM spool_counters"),
        ("receiver", outcome.receiver_db, "SELECT status, count(*) FROM entries GROUP BY status"),
    ]
    if outcome.outbox_path is not None:
        outbox_sql = "SELECT status, count(*) FROM outbox GROUP BY status"
        files.append(("outbox", outcome.outbox_path, outbox_sql))
    for label, path, sql in files:
        write(f"  {label:<9} {path}")
        write(f"            sqlite3 {shlex.quote(path)} {shlex.quote(sql)}")


def _next_steps(write: Callable[[str], None], spool_path: str) -> None:
    write("next steps")
    write("  1. in your app (announce events on blinker signals; no key: spooler does nothing):")
    write("       import spooler; spooler.configure(); spooler.start()")
    write('       blinker.signal("event_engine.event_emitted").send(self, event_name=..., ...)')
    write("     or add spooler.integrations.django / .flask / .fastapi (see README)")
    write(f"  2. look at a spool:   python -m spooler status --spool {shlex.quote(spool_path)}")
    write("  3. ship as a service: EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship")
    write("     (set EVENT_ENGINE_CLOUD_SHIP_IN_PROCESS=false in the app then)")


# -- the run -------------------------------------------------------------------------


def _wipe(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for pattern in _RUN_FILES:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()


@dataclass
class _Progress:
    """One progress line per second: emitted / spooled / delivered / waiting / in memory."""

    write: Callable[[str], None]
    producer: _Producer
    reporter: Reporter
    receiver: Receiver
    spool_path: str
    spooled: int = 0
    waiting: int = 0  # rows in the spool file
    buffered: int = 0  # entries in the writer thread's memory, not yet in the file
    _start: float = field(default_factory=time.monotonic, init=False)
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self._start + 1.0

    def poll(self, *, force: bool = False) -> None:
        """Refresh the numbers; print a line when a second has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = max(self._next + 1.0, now + 0.5)
        self.refresh()
        emitted = self.producer.counts()[0]
        delivered = self.receiver.entry_count()
        self.write(
            f"  {now - self._start:5.1f} s  emitted {emitted:>6}  spooled {self.spooled:>6}  "
            f"delivered {delivered:>6}  waiting in spool {self.waiting:>5}  "
            f"in memory {self.buffered:>4}"
        )

    def refresh(self) -> None:
        """Read the spool's counters (a read-only connection, beside the writer)."""
        try:
            stats = read_stats(self.spool_path)
        except (FileNotFoundError, sqlite3.Error):
            return  # the writer thread is still creating the file
        self.spooled = stats.counters.get("appended", 0)
        self.waiting = stats.depth
        self.buffered = self.reporter.buffered()


def _produce(producer: _Producer, watch: _Progress, *, seconds: float, rate: float) -> None:
    start = time.monotonic()
    end = start + seconds
    next_publish = start
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate)
            while producer.counts()[0] < due and time.monotonic() < end:
                producer.emit_one()
            if now >= next_publish:
                producer.publish()
                next_publish = now + PUBLISH_EVERY
            watch.poll()
            time.sleep(max(0.0, min(0.01, end - time.monotonic())))
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the traffic and delivering what was spooled")


def _finish(producer: _Producer, watch: _Progress) -> None:
    """Publish what is pending (retries included), then wait for the spool to drain."""
    deadline = time.monotonic() + 2.0
    while producer.pending() and time.monotonic() < deadline:
        producer.publish()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        watch.refresh()
        if watch.waiting == 0 and watch.buffered == 0 and watch.spooled >= sum(producer.counts()):
            break
        watch.poll()
        time.sleep(0.05)
    watch.poll(force=True)


def _final_stats(spool_path: str) -> SpoolStats:
    try:
        return read_stats(spool_path)
    except (FileNotFoundError, sqlite3.Error):
        return SpoolStats(spool_path, None, 0, 0, {}, 0, None, None, 0)


def _delays(receiver_db: str) -> list[float]:
    """Seconds from each entry's timestamp (built in the host) to its arrival at the receiver."""
    with closing(sqlite3.connect(receiver_db)) as conn:
        rows = conn.execute(
            "SELECT received_at, json_extract(entry, '$.timestamp') FROM entries"
        ).fetchall()
    return sorted(_seconds(received) - _seconds(stamp) for received, stamp in rows if stamp)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _percentile(values: Sequence[float], share: float) -> float:
    # Nearest rank: the smallest value with at least ``share`` of the values at or below it.
    index = max(0, min(len(values) - 1, math.ceil(share * len(values)) - 1))
    return values[index]


def _describe_delays(delays: Sequence[float]) -> str:
    if not delays:
        return "none delivered"
    p50 = _percentile(delays, 0.50) * 1000
    p99 = _percentile(delays, 0.99) * 1000
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms   (receiver received_at - entry timestamp)"


# -- producers -------------------------------------------------------------------------


class _Producer(Protocol):
    description: str
    db_path: str | None

    def emit_one(self) -> None: ...

    def publish(self) -> None: ...

    def pending(self) -> int: ...

    def counts(self) -> tuple[int, int, int]: ...

    def close(self) -> None: ...


def _make_producer(db_path: Path, fail_share: float) -> _Producer:
    module = _load_outbox_app()
    if module is None:
        return _SignalsOnly(fail_share)
    return _OutboxTraffic(module, str(db_path), fail_share)


def _load_outbox_app() -> ModuleType | None:
    """``examples/outbox_app/app.py`` beside the package, loaded by path; None if absent."""
    loaded = sys.modules.get(_APP_MODULE)
    if loaded is not None:
        return loaded
    path = Path(spooler.__file__).resolve().parents[1] / "examples" / "outbox_app" / "app.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(_APP_MODULE, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_APP_MODULE] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[_APP_MODULE]
        logger.exception("could not load the example app at %s; using a stand-in", path)
        return None
    return module


class _OutboxTraffic:
    """Drives the example outbox app: orders, payments, some of them declined."""

    def __init__(self, module: ModuleType, db_path: str, fail_share: float) -> None:
        self.description = "example outbox app (examples/outbox_app)"
        self.db_path: str | None = db_path
        self._customers: Sequence[tuple[str, str]] = module.CUSTOMERS
        self._app = module.OutboxApp(db_path)
        broker = module.FakeBroker(fail_rate=TRANSIENT_FAIL_RATE)
        self._publisher = module.OutboxPublisher(
            self._app, broker, max_attempts=MAX_ATTEMPTS, batch_size=500
        )
        self._fail_share = fail_share
        self._rng = random.Random()
        self._last_order: int | None = None
        self._emitted = 0

    def emit_one(self) -> None:
        email, address = self._customers[self._emitted % len(self._customers)]
        if self._last_order is not None and self._rng.random() < self._fail_share:
            self._app.capture_payment(self._last_order, "0002", declined=True)
        elif self._last_order is None or self._emitted % 2 == 0:
            amount = self._rng.randrange(500, 50_000)
            self._last_order = self._app.place_order(email, amount, address=address)
        else:
            self._app.capture_payment(self._last_order, "4242")
        self._emitted += 1

    def publish(self) -> None:
        self._publisher.publish_pending()

    def pending(self) -> int:
        return int(self._app.outbox_counts()["pending"])

    def counts(self) -> tuple[int, int, int]:
        outbox = self._app.outbox_counts()
        return self._emitted, int(outbox["published"]), int(outbox["dead_lettered"])

    def close(self) -> None:
        self._app.close()


class _SignalsOnly:
    """Stand-in when the example app is not installed: the same notifications, no database."""

    def __init__(self, fail_share: float) -> None:
        self.description = "built-in event stand-in (examples/ not installed)"
        self.db_path: str | None = None
        self._fail_share = fail_share
        self._rng = random.Random()
        self._pending: dict[int, dict[str, Any]] = {}
        self._emitted = self._published = self._dead = 0

    def emit_one(self) -> None:
        self._emitted += 1
        declined = self._rng.random() < self._fail_share
        event: dict[str, Any] = {
            "event_name": "payment.captured" if declined else "order.placed",
            "event_version": 1,
            "event_id": self._emitted,
            "idempotency_key": secrets.token_hex(16),
            "event_type": "domain",
            "occurred_at": _now(),
        }
        self._pending[self._emitted] = dict(event, attempts=0, declined=declined)
        blinker.signal(hooks.EVENT_EMITTED).send(self, **event)

    def publish(self) -> None:
        done = 0
        for event_id, event in list(self._pending.items()):
            event["attempts"] += 1
            base = {k: event[k] for k in ("event_name", "event_version", "event_id")}
            base.update(occurred_at=event["occurred_at"], attempts=event["attempts"])
            failed = event["declined"] or self._rng.random() < TRANSIENT_FAIL_RATE
            if not failed:
                del self._pending[event_id]
                self._published += 1
                done += 1
                blinker.signal(hooks.EVENT_PUBLISHED).send(self, published_at=_now(), **base)
            elif event["attempts"] >= MAX_ATTEMPTS:
                del self._pending[event_id]
                self._dead += 1
                blinker.signal(hooks.EVENT_DEAD_LETTERED).send(
                    self,
                    dead_lettered_at=_now(),
                    error_class="PaymentDeclined" if event["declined"] else "BrokerUnavailable",
                    error_message="broker refused the event",
                    **base,
                )
        blinker.signal(hooks.PUBLISH_BATCH).send(self, count=done)

    def pending(self) -> int:
        return len(self._pending)

    def counts(self) -> tuple[int, int, int]:
        return self._emitted, self._published, self._dead

    def close(self) -> None:
        self._pending.clear()


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")
