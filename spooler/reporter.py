"""The in-process lifecycle: configure, start, track_*, shutdown, atexit, fork.

Nothing here runs until a key is configured: without one, ``track_*`` returns
False after one attribute check, and no file, thread or socket is created.

With a key, each process lazily (on its first ``track_*`` call, never in a
pre-fork master) opens its own spool connection, starts a writer thread
(``background`` mode) and, unless ``ship_in_process`` is off, tries to become
the spool's one shipper. Another process may already ship; if it dies, a
surviving process takes the lock over within a few seconds.

Modes:

* ``background`` (default): the hook builds the entry and appends it to a
  bounded in-memory buffer; the writer thread commits it in groups (at least
  every ~100 ms, or as soon as 500 entries wait). A full buffer drops and counts.
  A hard exit (``os._exit``, SIGKILL) loses at most the last ~100 ms.
* ``immediate``: the hook commits in the caller's thread; True means
  committed. Another writer holding the lock is waited for in short steps, up
  to ``IMMEDIATE_TIMEOUT``; past it the entry is dropped, counted, and False
  returned. The host's connection never checkpoints and never runs
  ``quick_check``: the writer thread does both.

Why one file of about 750 lines: the host-facing lifecycle (configure, start,
shutdown, atexit, fork), the hot path and the writer thread share one buffer,
one ``_writing`` lock and one stop event, and their ordering at shutdown and at a
fork is the subtle part; split apart, that ordering would be read across files.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from spooler import hooks
from spooler._process import this_pid
from spooler._threads import start_thread
from spooler._version import __version__
from spooler.config import Config
from spooler.errors import SpoolBusyError, SpoolError
from spooler.serializer import (
    build_entry,
    capture,
    encode_row,
    entry_from_capture,
    load_schemas,
    row_from_capture,
    schema_fingerprint,
)
from spooler.spool import Spool

if TYPE_CHECKING:
    from spooler.metrics import Metrics
    from spooler.shipper import Shipper

__all__ = [
    "Reporter",
    "configure",
    "flush",
    "get_reporter",
    "register_schema",
    "shutdown",
    "start",
    "track_dead_letter",
    "track_emit",
    "track_publish",
    "track_publish_batch",
]

logger = logging.getLogger(__name__)

GROUP_SIZE = 500  # entries that wake the writer before GROUP_WAIT is up
GROUP_WAIT = 0.1  # most seconds an entry waits in the buffer
# A writer behind a busy host takes larger groups: each commit costs a few GIL
# hand-offs (up to 5 ms each while the host thread computes), whatever its size.
MAX_GROUP = 5000
YIELD_EVERY = 32  # rows the writer builds between offers of the GIL to the host's threads
IMMEDIATE_TIMEOUT = 0.5  # immediate mode: the longest the host waits for another writer
MAX_BATCH_COUNT = 10**9  # a publish_batch count above this is not a batch size: invalid
WRITER_BUSY_TIMEOUT = 1.0  # how long the writer thread may wait for it
TAKEOVER_INTERVAL = 5.0  # how often a non-shipping process tries to take shipping over
# Immediate mode's first calls in a process wait for the writer thread's open, up to
# IMMEDIATE_TIMEOUT each and OPEN_GRACE in all; then they stop waiting (see _track_now).
OPEN_GRACE = 5.0
STUCK_AFTER = 10.0  # a writer that has not opened the spool by then is logged as stuck
STUCK_LOG_INTERVAL = 300.0  # and again at most this often


class Reporter:
    """One per process: turns notifications into spooled entries and ships them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.active = False  # the only thing the hot path reads when disabled
        self._pid = -1
        self._lock = threading.Lock()
        # What capture() kept, or entries already built; the writer thread commits them.
        self._buffer: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writing = threading.Lock()
        self._spool: Spool | None = None  # the writer thread's connection
        self._host_spool: Spool | None = None  # immediate mode: the host threads' connection
        self._started_at = time.monotonic()
        self._stuck_logged_at = 0.0  # when _log_if_stuck may log again
        self._ready = threading.Event()  # the writer thread has opened (and checked) the spool
        self._sqlite_answers = threading.Event()  # a SQLite call returned in this process
        self._writer: threading.Thread | None = None
        self._shipper: Shipper | None = None
        self._closed = False
        self._schemas: dict[str, str] = load_schemas(config.schemas) if config.enabled else {}
        self._schemas_dirty = bool(self._schemas)
        self._last_takeover = 0.0
        self._before_send_failed = False
        self._encode_failed = False
        self._metrics: Metrics | None = None
        self._send_error_message = config.send_error_message
        self._error_max = config.error_message_max_length
        self._immediate = config.spool_mode == "immediate"
        self._buffer_size = config.buffer_size
        self._yield_at = max(GROUP_SIZE, config.buffer_size // 2)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> bool:
        """Subscribe to the host's notifications; False (and nothing done) when disabled.

        Files and threads come later, on the first event in each process.
        """
        if not self.config.enabled or self._closed:
            return False
        if self.config.debug:
            _debug_logging()
        hooks.subscribe(self)
        self.active = True
        _install_process_hooks()
        return True

    def ensure_running(self) -> bool:
        """Open the spool and start the threads in this process now, if not yet."""
        if not self.active:
            return False
        if self._pid != this_pid():
            self._start_here()
        return self._spool is not None

    def _start_here(self) -> None:
        with self._lock:
            pid = os.getpid()
            if self._pid == pid or self._closed:
                return
            if self._pid != -1:
                self._reset_after_fork()
            self._pid = pid
            self._started_at = time.monotonic()
            logger.info(
                "spooler %s reporting %s events to %s through %s (%s mode%s)",
                __version__,
                self.config.app_name,
                self.config.endpoint,
                self.config.spool_file,
                self.config.spool_mode,
                "" if self.config.ship_in_process else "; `spooler ship` delivers",
            )
            # Opened on first use by the writer thread, which runs quick_check
            # and the checkpoints, so the host's thread never pays for either.
            self._ready = threading.Event()
            self._sqlite_answers = threading.Event()
            self._spool = Spool.from_config(
                self.config, busy_timeout=WRITER_BUSY_TIMEOUT, lazy=True, quick_check=False
            )
            if self._immediate:
                self._host_spool = Spool.from_config(
                    self.config,
                    busy_timeout=0.0,
                    lazy=True,
                    check=False,
                    checkpoints=False,
                    on_wal_full=self._wake_writer,
                )
            self._stop.clear()
            self._writer = start_thread(self._write_loop, "spooler.writer")

    def _reset_after_fork(self) -> None:
        # Entries in the inherited buffer are the parent's to write.
        self._buffer = collections.deque()
        self._writing = threading.Lock()  # the parent's writer may have held it at the fork
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer = None
        self._shipper = None  # its thread did not survive the fork
        self._metrics = None  # the parent's server; its socket stays the parent's
        for spool in (self._spool, self._host_spool):
            if spool is not None:
                spool.close()  # in the child this only parks the parent's connection
        self._spool = self._host_spool = None

    def _try_ship(self) -> None:
        if not self.config.ship_in_process or self._closed:
            return
        self._last_takeover = time.monotonic()
        try:
            if self._shipper is None:
                from spooler.shipper import Shipper

                # The writer thread quick_checks the file; no need to do it twice. It also
                # tells the shipper of this process's commits (notify): other processes'
                # rows are looked for once a second instead of watching the -wal, which
                # every commit here changes (a watch cost the host 5 us per entry).
                self._shipper = Shipper(
                    self.config, started_at=self._started_at, quick_check=False, watch=False
                )
            started = not self._shipper.running and self._shipper.start()
            if started and self.config.metrics_port is not None:
                # Metrics come from the one process that ships the spool.
                self._shipper.metrics = self._serve_metrics()
        except Exception:
            logger.exception("spooler could not start the in-process shipper")

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush the buffer into the spool, give the shipper ``timeout`` s, stop.

        Never hangs: the whole call is bounded by about ``timeout`` + 2 s.
        Returns True when nothing was left waiting in the spool (whoever ships it).
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._closed:
            return True
        self._closed = True
        self.active = False
        hooks.unsubscribe(self)
        if self._pid != this_pid():
            return True  # nothing was started in this process
        self._stop.set()
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(WRITER_BUSY_TIMEOUT + 1.0)
        if not self._ready.is_set():
            return self._abandon()
        self._flush_buffer(timeout=max(WRITER_BUSY_TIMEOUT, min(timeout, 5.0)))
        self._count_left_behind()
        if self._shipper is None:
            self._shipper = self._final_shipper()
        empty = True
        if self._shipper is not None:
            empty = self._shipper.stop(flush_timeout=timeout, join_timeout=0.5)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._host_spool is not None:
            self._host_spool.close()
        if self._spool is not None:
            with contextlib.suppress(Exception):
                empty = empty and self._spool.peek(1)[0] == 0
            self._spool.close()
        return empty

    def _abandon(self) -> bool:
        """Shut down a process whose writer thread never opened the spool (see
        _log_if_stuck). Nothing here may make this process's first SQLite call, a
        final shipper's included: what waits in memory is counted as dropped."""
        left = self._drop_buffer()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        logger.warning(
            "spooler stopped without having opened its spool; %d entries waiting in "
            "memory are lost (counted as 'dropped')",
            left,
        )
        return False

    def _count_left_behind(self) -> None:
        """Entries still in memory at shutdown (other writers held the spool all along)
        are lost with the process: count them as dropped, and say so."""
        if not self._buffer or self._spool is None:
            return
        left = self._drop_buffer()
        if not left:
            return
        self._spool.flush_counters(timeout=2.0)
        logger.warning(
            "spooler dropped %d entries at shutdown: other writers held the spool past "
            "the deadline (counted as 'dropped')",
            left,
        )

    def _drop_buffer(self) -> int:
        """Empty the in-memory buffer at shutdown, counting its entries as dropped (in
        memory: the caller writes the counters if it can); how many there were."""
        with self._writing:
            left = len(self._buffer)
            self._buffer.clear()
        if left and self._spool is not None:
            self._spool.count("dropped", left)
        return left

    def _serve_metrics(self) -> Metrics | None:
        if self._metrics is None and self.config.metrics_port is not None:
            try:
                from spooler.metrics import serve_metrics

                self._metrics = serve_metrics(
                    self.config.metrics_port,
                    spool_path=self.config.spool_file,
                    max_bytes=self.config.spool_max_bytes,
                )
            except Exception as exc:  # never break the host
                logger.warning(
                    "spooler could not serve metrics on port %s: %s", self.config.metrics_port, exc
                )
        return self._metrics

    def _final_shipper(self) -> Shipper | None:
        """A process that exits before its writer thread got to start the shipper still
        delivers at exit, if it can take the ship lock (no thread is started)."""
        if not self.config.ship_in_process:
            return None
        try:
            from spooler.shipper import Shipper

            shipper = Shipper(
                self.config, started_at=self._started_at, quick_check=False, watch=False
            )
        except Exception:
            return None
        try:
            shipper.lock.acquire()
        except Exception:
            shipper.close()
            return None
        return shipper

    def flush(self, timeout: float | None = None) -> bool:
        """Commit what is buffered and deliver what waits now, within ``timeout`` seconds
        (default ``shutdown_timeout``); True when nothing waits in the spool afterwards.

        When another process ships this spool, waits (up to ``timeout``) for it to
        empty. Never raises; reporting goes on afterwards (unlike :meth:`shutdown`).
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        try:
            if not self.active or self._pid != this_pid() or self._spool is None:
                return True  # nothing was started (or buffered) in this process
            deadline = time.monotonic() + max(0.0, timeout)
            self._flush_buffer(timeout=max(0.0, min(timeout, WRITER_BUSY_TIMEOUT)))
            self._spool.flush_counters(timeout=0.5)
            shipper = self._shipper
            if shipper is not None and shipper.lock.held:
                return shipper.flush(max(0.0, deadline - time.monotonic()))
            while True:
                if self._spool.peek(1)[0] == 0 and not self._buffer:
                    return True
                if time.monotonic() >= deadline:
                    return False
                self._stop.wait(0.05)
        except Exception:
            logger.exception("spooler flush failed")
            return False

    # -- the hot path ------------------------------------------------------------

    def track_emit(self, payload: Mapping[str, Any]) -> bool:
        """Record an emitted event; True if accepted. Never raises, never blocks."""
        return self._track("emitted", payload)

    def track_publish(self, payload: Mapping[str, Any]) -> bool:
        """Record a published event; True if accepted."""
        return self._track("published", payload)

    def track_dead_letter(self, payload: Mapping[str, Any]) -> bool:
        """Record a dead-lettered event; True if accepted."""
        return self._track("dead_lettered", payload)

    def track_publish_batch(self, count: object) -> bool:
        """Count one publisher batch of ``count`` events for the heartbeat.

        ``count`` must be an int from 0 to ``MAX_BATCH_COUNT``; anything else (a
        nanosecond timestamp, 10**30, a string) is counted as invalid.
        """
        try:
            spool = self._spool_here()
            if spool is None:
                return False
            if type(count) is not int or not 0 <= count <= MAX_BATCH_COUNT:
                spool.count("invalid")
                return False
            spool.count("publish_batches", 1)
            spool.count("publish_batch_events", count)
            return True
        except Exception:
            return False

    def _spool_here(self) -> Spool | None:
        """This process's spool, starting the reporter here on its first event."""
        if not self.active:
            return None
        if self._pid != this_pid():
            self._start_here()
        return self._spool

    def _track(self, status: str, payload: Mapping[str, Any]) -> bool:
        try:
            spool = self._spool_here()
            if spool is None:
                return False
            if self._host_spool is not None:
                return self._track_now(status, payload, spool, self._host_spool)
            # Background mode: the host's thread only copies the allowlisted values
            # out; the writer thread validates, formats and encodes them.
            buffer = self._buffer
            waiting = len(buffer)
            if waiting >= self._buffer_size:
                spool.count("dropped")
                return False
            item = capture(
                status,
                payload,
                now=time.time(),
                send_error_message=self._send_error_message,
                error_message_max_length=self._error_max,
            )
            if item is None:
                spool.count("invalid")
                return False
            buffer.append(item)
            if waiting >= GROUP_SIZE:
                self._wake_writer()
                if not self._ready.is_set():
                    self._log_if_stuck()
                if waiting >= self._yield_at:
                    # A host computing flat out starves the writer of the GIL
                    # (it waits 5 ms per hand-off). Past half the buffer, hand the
                    # GIL over cooperatively; this waits for no lock and no I/O.
                    time.sleep(0)
            return True
        except Exception:
            return self._count_drop()

    def _track_now(
        self, status: str, payload: Mapping[str, Any], spool: Spool, host: Spool
    ) -> bool:
        """Immediate mode: build, encode and commit on the host's thread."""
        entry = build_entry(
            status,
            payload,
            send_error_message=self._send_error_message,
            error_message_max_length=self._error_max,
        )
        if entry is None:
            spool.count("invalid")
            return False
        if self.config.before_send is not None:
            # Immediate mode commits before returning: before_send runs here, on the
            # host's thread (in background mode it runs on the writer thread).
            entry = self._before_send(self.config.before_send, entry)
            if entry is None:
                spool.count("filtered")
                return False
        deadline = time.monotonic() + IMMEDIATE_TIMEOUT
        if not self._ready.is_set() and not self._wait_for_open():
            spool.count("dropped")
            self._log_if_stuck()
            return False
        if not host.append_now(encode_row(entry), deadline=deadline):
            return False  # counted as dropped by the spool
        shipper = self._shipper
        if shipper is not None:
            shipper.notify()
        return True

    def _wait_for_open(self) -> bool:
        """Whether the host's thread may go on to the spool, waiting a little for the
        writer thread's open.

        The first calls of a process wait for that open, so rows a damaged WAL lost
        are counted before any id is handed out again: up to IMMEDIATE_TIMEOUT each,
        OPEN_GRACE in all, then without waiting. And the host's thread never makes
        the process's first SQLite call: in a process forked while another thread
        was inside SQLite, SQLite's own mutexes stay held by a thread that does not
        exist here, and that call would never return. The writer thread makes it;
        until it has returned, the entry is dropped.
        """
        left = self._started_at + OPEN_GRACE - time.monotonic()
        opened = self._ready.wait(min(IMMEDIATE_TIMEOUT, max(left, 0.0)))
        return opened or self._sqlite_answers.is_set()

    def _log_if_stuck(self) -> None:
        """ERROR (then at most every STUCK_LOG_INTERVAL) if the writer thread has still
        not opened the spool STUCK_AFTER seconds after this process started it."""
        now = time.monotonic()
        if now - self._started_at < STUCK_AFTER or now < self._stuck_logged_at:
            return
        self._stuck_logged_at = now + STUCK_LOG_INTERVAL
        logger.error(
            "spooler's writer thread has not opened %s in %.0f s; no entry reaches it "
            "meanwhile, and what does not fit in memory is dropped (counted). If this "
            "process was forked while another thread was inside SQLite, SQLite's own "
            "locks stay held in it and never answer: fork before starting threads that "
            "use SQLite",
            self.config.spool_file,
            now - self._started_at,
        )

    def _wake_writer(self) -> None:
        wake = self._wake
        if not wake.is_set():  # set() takes a lock and notifies: only once
            wake.set()

    def _count_drop(self) -> bool:
        try:
            if self._spool is not None:
                self._spool.count("dropped")
        except Exception:
            pass
        return False

    # -- the writer thread ---------------------------------------------------------

    def _open_here(self) -> None:
        """The writer thread's first job: open the spool (counting what a damaged WAL
        lost, before any write), let the host's threads in, then quick_check it."""
        spool = self._spool
        if spool is None:
            return
        with contextlib.suppress(sqlite3.Error):
            spool.first_sqlite_call()  # see _wait_for_open
            self._sqlite_answers.set()
        try:
            spool.ensure_open()
        except SpoolError as exc:
            logger.error("spooler cannot use its spool: %s", exc)
            return
        except Exception:
            logger.exception("spooler could not open its spool; will try again")
            return
        finally:
            self._ready.set()
        self._try_ship()
        start_thread(self._verify, "spooler.verify")

    def _verify(self) -> None:
        """quick_check the spool on a thread of its own: writing and checkpointing go on."""
        spool = self._spool
        if spool is None:
            return
        try:
            if not spool.verify():
                shipper = self._shipper
                for other in (self._host_spool, shipper.spool if shipper else None):
                    if other is not None:
                        other.request_reopen()
        except Exception:
            logger.exception("spooler could not check its spool")

    def _write_loop(self) -> None:
        self._open_here()
        while not self._stop.is_set():
            try:
                self._wake.wait(GROUP_WAIT)
                self._wake.clear()
                self._flush_buffer(timeout=WRITER_BUSY_TIMEOUT)
                spool = self._spool
                if spool is not None:
                    spool.flush_counters(timeout=0.5)
                    if self._host_spool is not None:
                        self._host_spool.flush_counters(timeout=0.5)
                    spool.checkpoint(pause=self._host_spool)
                    if self._schemas_dirty:
                        self._schemas_dirty = False
                        spool.set_meta({"schema_fingerprints": json.dumps(self._schemas)})
                if (
                    self.config.ship_in_process
                    and (self._shipper is None or not self._shipper.running)
                    and time.monotonic() - self._last_takeover >= TAKEOVER_INTERVAL
                ):
                    self._try_ship()
            except Exception:
                logger.exception("spooler writer failed; continuing")
                self._stop.wait(0.5)
        # Stopping: what is still in memory is built (before_send included) and committed
        # here, on the writer thread, not on the thread that called shutdown().
        try:
            self._flush_buffer(timeout=WRITER_BUSY_TIMEOUT)
        except Exception:
            logger.exception("spooler writer's last flush failed")

    def _flush_buffer(self, *, timeout: float) -> int:
        """Build and commit buffered entries in groups; on lock contention keep them."""
        spool = self._spool
        buffer = self._buffer
        written = 0
        # One thread at a time holds entries taken out of the buffer: shutdown waits for
        # the writer's group to be stored or put back before it counts what is left.
        with self._writing:
            written = self._flush_groups(spool, buffer, timeout)
        if written:
            logger.debug("committed %d entries (%d still in memory)", written, len(buffer))
            if self._shipper is not None:
                self._shipper.notify(written)
        return written

    def _flush_groups(
        self, spool: Spool | None, buffer: collections.deque[Any], timeout: float
    ) -> int:
        written = 0
        while buffer and spool is not None:
            group: list[Any] = []
            try:
                while len(group) < MAX_GROUP:
                    group.append(buffer.popleft())
            except IndexError:
                pass
            rows = self._rows(group, spool)
            try:
                written += spool.append_rows(rows, timeout=timeout, raise_on_busy=True)
            except SpoolBusyError as exc:
                # Keep what was not stored, in order and encoded, for the next try.
                written += exc.stored
                buffer.extendleft(reversed(rows[exc.stored :]))
                break
        return written

    def _rows(self, group: list[Any], spool: Spool) -> list[tuple[str, str, str]]:
        """The rows to store for what the host's thread captured (or built already), and
        rows a busy spool sent back; invalid, filtered and unencodable items counted."""
        rows = []
        invalid = filtered = dropped = 0
        before_send = self.config.before_send
        send = self._send_error_message
        limit = self._error_max
        buffer = self._buffer
        for i, item in enumerate(group):
            if i % YIELD_EVERY == YIELD_EVERY - 1 and len(buffer) < self._yield_at:
                # Building a row takes ~10 µs of Python: a group of hundreds would keep
                # the GIL from a host thread back from I/O for milliseconds (it waits
                # up to the 5 ms switch interval). Hand it over every few rows, unless
                # the host fills the buffer flat out (then it hands it over itself).
                time.sleep(0)
            try:
                if type(item) is tuple and len(item) == 3:
                    rows.append(item)  # stored already once: a busy spool sent it back
                    continue
                if before_send is None and type(item) is tuple:
                    row = row_from_capture(
                        item, send_error_message=send, error_message_max_length=limit
                    )
                    if row is None:
                        invalid += 1
                    else:
                        rows.append(row)
                    continue
                entry = (
                    item
                    if type(item) is dict
                    else entry_from_capture(
                        item, send_error_message=send, error_message_max_length=limit
                    )
                )
                if entry is None:
                    invalid += 1
                    continue
                if before_send is not None:
                    entry = self._before_send(before_send, entry)
                    if entry is None:
                        filtered += 1
                        continue
                rows.append(encode_row(entry))
            except Exception as exc:  # an entry that cannot be encoded
                dropped += 1
                if not self._encode_failed:
                    self._encode_failed = True
                    logger.warning(
                        "spooler dropped an entry it could not encode (%s; counted as 'dropped')",
                        type(exc).__name__,
                    )
        if invalid:
            spool.count("invalid", invalid)
        if filtered:
            spool.count("filtered", filtered)
        if dropped:
            spool.count("dropped", dropped)
        return rows

    def _before_send(
        self, before_send: Callable[[dict[str, Any]], Any], entry: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The host's ``before_send`` on one entry: a scrubbed entry, or None to drop it.

        It may change values and drop the entry, not add keys: what comes back is cut to
        the entry's own (allowlisted) keys, values that are not JSON scalars become null.
        An exception drops the entry (it may have needed scrubbing) and is logged once by
        type only.
        """
        try:
            result = before_send(dict(entry))
        except Exception as exc:
            if not self._before_send_failed:
                self._before_send_failed = True
                logger.warning(
                    "before_send raised %s; the entry is dropped (counted as 'filtered')",
                    type(exc).__name__,
                )
            return None
        if not isinstance(result, Mapping):
            return None
        scrubbed = {}
        for key in entry:
            value = result.get(key)
            keep = type(value) in _SCALARS and not (
                isinstance(value, float) and not math.isfinite(value)
            )
            scrubbed[key] = value if keep else None
        scrubbed["status"] = entry["status"]  # the spool and the receiver rely on it
        return scrubbed

    # -- schemas -------------------------------------------------------------------

    def register_schema(self, event_name: str, schema: Any) -> str:
        """Fingerprint ``schema`` for the heartbeat; returns the sha256 hex."""
        fingerprint = schema_fingerprint(schema)
        self._schemas[str(event_name)] = fingerprint
        self._schemas_dirty = True
        return fingerprint

    @property
    def schemas(self) -> dict[str, str]:
        """Event name -> schema fingerprint, as the heartbeat reports them."""
        return dict(self._schemas)

    @property
    def spool(self) -> Spool | None:
        """This process's spool, once started."""
        return self._spool

    @property
    def shipper(self) -> Shipper | None:
        """The in-process shipper, if this process ships."""
        return self._shipper

    def buffered(self) -> int:
        """Entries waiting in memory for the writer thread."""
        return len(self._buffer)


# -- the process-wide reporter -------------------------------------------------------

_reporter: Reporter | None = None
_process_hooks = False


_SCALARS = (str, int, float, bool, type(None))


def _debug_logging() -> None:
    """``debug=True``: spooler's own logs at DEBUG on stderr when the host set up none
    (as sentry's ``debug=True``); a host that configured logging keeps its own setup."""
    log = logging.getLogger("spooler")
    if log.handlers or logging.getLogger().handlers:
        log.setLevel(logging.DEBUG)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def _install_process_hooks() -> None:
    global _process_hooks
    if _process_hooks:
        return
    _process_hooks = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    reporter = _reporter
    if reporter is not None:
        try:
            reporter.shutdown()
        except Exception:
            logger.exception("spooler shutdown failed")


def _after_fork_in_child() -> None:
    # The pid check in _track is the fallback for servers (uWSGI without
    # enable-threads/lazy-apps) that do not run Python's fork hooks.
    reporter = _reporter
    if reporter is not None and reporter._pid not in (-1, os.getpid()):
        reporter._lock = threading.Lock()


def configure(config: Config | None = None, **options: Any) -> Reporter:
    """Set up the process's reporter from ``config`` or options plus the environment.

    Explicit options win over ``EVENT_ENGINE_CLOUD_*`` variables. Raises
    :class:`~spooler.errors.ConfigError` for invalid values. Configuring again
    replaces (and shuts down) the previous reporter, with a warning.
    """
    global _reporter
    cfg = config.replace(**options) if config is not None else Config.from_env(None, **options)
    previous = _reporter
    if previous is not None and previous.active:
        logger.warning(
            "spooler.configure() called again while a reporter runs; replacing it "
            "(configure once per process)"
        )
        previous.shutdown(timeout=0.5)
    _reporter = Reporter(cfg)
    return _reporter


def start() -> bool:
    """Start the configured reporter; False (and nothing at all done) when disabled."""
    reporter = _reporter
    if reporter is None:
        reporter = configure()
    return reporter.start()


def flush(timeout: float | None = None) -> bool:
    """Commit the buffer and deliver what waits now; True if everything was delivered."""
    reporter = _reporter
    return True if reporter is None else reporter.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the reporter (also run at exit); True if nothing was left."""
    reporter = _reporter
    return True if reporter is None else reporter.shutdown(timeout)


def get_reporter() -> Reporter | None:
    """The process's reporter, if configured."""
    return _reporter


def track_emit(payload: Mapping[str, Any]) -> bool:
    """Report an emitted event; True if accepted. Never raises."""
    r = _reporter
    return r.track_emit(payload) if r is not None and r.active else False


def track_publish(payload: Mapping[str, Any]) -> bool:
    """Report a published event; True if accepted. Never raises."""
    r = _reporter
    return r.track_publish(payload) if r is not None and r.active else False


def track_dead_letter(payload: Mapping[str, Any]) -> bool:
    """Report a dead-lettered event; True if accepted. Never raises."""
    r = _reporter
    return r.track_dead_letter(payload) if r is not None and r.active else False


def track_publish_batch(count: int) -> bool:
    """Count one publisher batch of ``count`` events. Never raises."""
    r = _reporter
    return r.track_publish_batch(count) if r is not None and r.active else False


def register_schema(event_name: str, schema: Any) -> str:
    """Fingerprint an event's schema for the heartbeat; returns the sha256 hex."""
    r = _reporter
    if r is None:
        return schema_fingerprint(schema)
    return r.register_schema(event_name, schema)
