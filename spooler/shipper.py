"""The delivery loop: wake on new rows, send batches in order, retry, acknowledge.

One shipper per spool file (an ``flock`` on ``<spool>.ship.lock``); it runs as a
thread inside an app (:meth:`Shipper.start`) or as its own process
(``python -m spooler ship``). Rows are deleted only after the Cloud took them:
at-least-once delivery, in append order. Each entry carries a stable
``entry_id`` and each batch a stable ``Idempotency-Key``, so a batch re-sent
after a crash is recognised and dropped by the Cloud.

Backoff for transient failures is exponential with full jitter (tenacity's
``wait_random_exponential``): the n-th wait is uniform in
``[0, min(60, 0.5 * 2**n)]`` seconds, i.e. up to 1 s, 2 s, 4 s ... 60 s.
Short first waits ride out a brief blip; the 60 s ceiling means a recovered
Cloud sees data within a minute; full jitter keeps thousands of apps from
retrying in step. A ``Retry-After`` answer is honoured when it asks for longer.

Why one file of about 800 lines: :class:`Shipper` is one state machine (waking,
the loop, one batch, retries, pauses, the heartbeat) whose parts share its stop
event, ship lock, retry state and trouble log; the 413 split and 400/422 bisect
only make sense next to the retry loop they run inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import tenacity

from spooler._checkpointer import Checkpointer
from spooler._logging import Throttle, keep_out_of_host_logs
from spooler._threads import repeat, start_thread
from spooler.client import CloudClient
from spooler.config import Config
from spooler.errors import (
    AuthError,
    DeliveryError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RejectedError,
    ShipperLockedError,
    SpoolError,
    TransientDeliveryError,
)
from spooler.lock import ShipperLock
from spooler.serializer import build_heartbeat, load_schemas
from spooler.spool import Spool, SpoolBatch, SpoolRow
from spooler.timestamps import iso_epoch, now_iso

if TYPE_CHECKING:
    from spooler.metrics import Metrics

__all__ = ["BACKOFF_INITIAL", "BACKOFF_MAX", "CycleResult", "Shipper", "ShipperLock"]

logger = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5  # seconds; the first wait is uniform in [0, 2 * BACKOFF_INITIAL]
BACKOFF_MAX = 60.0  # seconds; also the interval between probes while the key is refused
TROUBLE_LOG_INTERVAL = 300.0  # seconds between WARNINGs while the same trouble lasts
# How long the shipper's spool waits for the write lock (acknowledging, dead-lettering):
# it is never the host's thread, and a missed ack means the batch is sent again.
SHIPPER_BUSY_TIMEOUT = 5.0
_WATCH_TIMEOUT_MS = 1000  # the watcher reports it is in place within this long
# A change of the -wal makes the loop look at the spool at most this often: every commit
# (this process's own included) changes it, and each look costs two queries.
WATCH_QUIET = 0.5
# The loop gives freed pages back and truncates the WAL at most this often (a drain
# and ``cycle()`` do it at once): after every delivery it cost a busy app's shipper
# a sixth of its time, for space the writer would mostly have reused anyway.
MAINTAIN_INTERVAL = 5.0
# A shipper with a spool of its own acknowledges delivered batches together, one
# range delete per ACK_GROUP entries or more (a commit's fixed cost and its WAL pages
# are paid once for several small batches), and while a checkpoint runs on its own
# thread up to ACK_BACKLOG batches (ACK_BACKLOG_ENTRIES entries) wait for the write
# lock. That is what a SIGKILL may send twice, each entry with its stable entry_id.
ACK_GROUP = 500
ACK_BACKLOG = 32
ACK_BACKLOG_ENTRIES = 16_000


@dataclass
class CycleResult:
    """What one delivery cycle did."""

    shipped: int = 0
    batches: int = 0
    rejected: int = 0
    waiting: int = 0
    error: str | None = None
    auth_failed: bool = False
    seconds: float = 0.0
    heartbeat: bool = False
    retries: int = 0
    sleeps: list[float] = field(default_factory=list)


class _Stopped(Exception):
    """The shipper was stopped while sleeping out a backoff."""


@dataclass
class _Request:
    """One request's body, key and entry count, and the rows or range it carries."""

    body: bytes
    key: str
    count: int
    rows: list[SpoolRow] = field(default_factory=list)
    batch: SpoolBatch | None = None


class _Gone(Exception):
    """Every row of a batch left the spool (evicted at the cap) before it could be resent."""


class _Wait(tenacity.wait.wait_base):
    """Full-jitter exponential backoff that never waits less than Retry-After asks."""

    def __init__(self, initial: float, maximum: float) -> None:
        # tenacity's n-th window is multiplier * 2**(n-1): doubling the multiplier gives the
        # documented [0, initial * 2**n], i.e. up to 1 s, 2 s, 4 s ... with the defaults.
        self._jitter = tenacity.wait_random_exponential(multiplier=2 * initial, max=maximum)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self._jitter(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TransientDeliveryError) and exc.retry_after:
            # Already capped where it is parsed (client.MAX_RETRY_AFTER, 300 s).
            wait = max(wait, exc.retry_after)
        return wait


class Shipper:
    """Delivers a spool's rows to the Cloud in order; one per spool file."""

    def __init__(
        self,
        config: Config,
        *,
        spool: Spool | None = None,
        client: CloudClient | None = None,
        sleep: Callable[[float], object] | None = None,
        watch: bool = True,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        started_at: float | None = None,
        quick_check: bool = True,
    ) -> None:
        if not config.api_key:
            raise ValueError("a Shipper needs config.api_key")
        self.config = config
        self._own_spool = spool is None
        # A spool of its own checkpoints on a thread of its own (see _checkpointer),
        # so that a drain's requests go on while the disk catches up.
        self._checkpointer: Checkpointer | None = None
        if spool is None:
            spool = Spool.from_config(
                config,
                busy_timeout=SHIPPER_BUSY_TIMEOUT,
                quick_check=quick_check,
                checkpoints=False,
            )
            self._checkpointer = Checkpointer(
                spool.path, max_bytes=spool.max_bytes, busy_timeout=SHIPPER_BUSY_TIMEOUT
            )
        self.spool = spool
        self._client = client
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sleep_fn = sleep or self._stop.wait
        self._watch = watch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_attempts = max_attempts
        self.lock = ShipperLock(self.spool.path)
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        # Uptime counts from when spooler started in this process (the reporter's
        # start, or the ``ship`` command's), not from an import.
        self.started_at = clock() if started_at is None else started_at
        self._last_heartbeat = -1e18
        self._paused_until = 0.0
        self._pause_logged: str | None = None
        self._notified = False
        # Rows committed in this process since the loop last looked (notify), and how
        # many make it worth looking again: one in an empty spool, else a full batch.
        self._unseen = 0
        self._wake_at = 1
        self._looked_at = -1e18
        self._seen_changes: tuple[int, int] | None = None
        self._final_deadline: float | None = None
        self._schemas = load_schemas(config.schemas)
        self.last_cycle: CycleResult | None = None
        self.watching = False
        # Trouble is logged when it starts, then at most every TROUBLE_LOG_INTERVAL.
        self._throttle = Throttle(TROUBLE_LOG_INTERVAL, clock)
        self._sending = threading.Lock()
        #: Prometheus metrics this shipper feeds (``ship --metrics-port``), if any.
        self.metrics: Metrics | None = None
        self._failing_since: float | None = None
        self._rejected_unlogged = 0
        self._untidy = False  # rows left the spool since the last maintain()
        self._maintained_at = -1e18
        keep_out_of_host_logs()

    # -- lifecycle -------------------------------------------------------------

    @property
    def client(self) -> CloudClient:
        """The Cloud client, created on first use (no socket before then)."""
        if self._client is None:
            assert self.config.api_key is not None
            self._client = CloudClient(
                api_key=self.config.api_key,
                endpoint=self.config.endpoint,
                proxy=self.config.proxy,
                ca_bundle=self.config.ca_bundle,
                compress=self.config.compress,
            )
        return self._client

    def start(self) -> bool:
        """Ship from a daemon thread; False if another shipper holds the spool."""
        if self._thread is not None and self._thread.is_alive():
            return True
        try:
            self.lock.acquire()
        except ShipperLockedError as exc:
            logger.debug("not shipping in this process: %s", exc)
            return False
        except SpoolError as exc:  # an unsafe lock file, or the holder's pid unwritable
            logger.error("not shipping in this process: %s", exc)
            return False
        self._stop.clear()
        self._start_watcher()
        self._thread = start_thread(self._run, "spooler.shipper")
        if self._thread is None:
            self.lock.release()
            return False
        return True

    def run(self) -> None:
        """Ship in the calling thread until :meth:`stop` (the ``ship`` command)."""
        self.lock.acquire()
        self._start_watcher()
        self._run()

    @property
    def running(self) -> bool:
        """Whether the shipping thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the loop to end now (safe from a signal handler); rows in flight stay.

        A request in flight is interrupted, not waited for.
        """
        self._stop.set()
        self._wake.set()
        client = self._client
        if client is not None:
            client.abort()

    def notify(self, rows: int = 1) -> None:
        """Say that ``rows`` rows were committed in this process; wakes the loop when
        they may fill a batch, or are the first in an empty spool (for their
        ``flush_interval`` the loop keeps time itself).

        Called after every commit, on the host's thread in immediate mode: waking the
        loop for each would cost two queries per entry.
        """
        self._unseen += rows  # a race loses a count: the timer still sends them
        if self._unseen < self._wake_at:
            return
        self._notified = True
        wake = self._wake
        if not wake.is_set():  # set() takes a lock and notifies: once per wake-up is enough
            wake.set()

    def stop(self, flush_timeout: float = 0.0, join_timeout: float | None = None) -> bool:
        """Stop, first spending up to ``flush_timeout`` s delivering what waits.

        Only the holder of the ship lock ever sends: a shipper that never got the
        lock stops without a word to the Cloud. Returns True when nothing was left
        waiting in the spool. Never waits longer than ``flush_timeout`` plus
        ``join_timeout`` (default 1 s).
        """
        self._final_deadline = self._clock() + flush_timeout if flush_timeout > 0 else None
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(flush_timeout + (1.0 if join_timeout is None else join_timeout))
            if thread.is_alive() and self._client is not None:
                self._client.abort()  # a request past the deadline: cut it
                thread.join(0.5)
        if thread is None and self._final_deadline is not None and self.lock.held:
            self._final_flush()
        self._thread = None
        left = self._waiting()
        if thread is None or not thread.is_alive():
            self.close()
        return left == 0

    def close(self) -> None:
        """Release the lock, the client and (if ours) the spool."""
        self.lock.release()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._own_spool:
            self.spool.close()

    def _waiting(self) -> int:
        try:
            return self.spool.peek(1 << 62)[0]
        except Exception:
            return -1

    # -- waking ------------------------------------------------------------------

    def _start_watcher(self) -> None:
        if not self._watch or self._watcher is not None:
            return
        self._watcher = start_thread(self._watch_wal, "spooler.shipper.watch")

    def _watch_wal(self) -> None:
        try:
            import watchfiles
        except ImportError:  # pragma: no cover - a declared dependency
            return
        wal = self.spool.path + "-wal"
        folder = os.path.dirname(self.spool.path)

        def only_wal(_change: object, path: str) -> bool:
            return path == wal

        try:
            for changes in watchfiles.watch(
                folder,
                watch_filter=only_wal,
                debounce=20,
                step=10,
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
                rust_timeout=_WATCH_TIMEOUT_MS,
                yield_on_timeout=True,
            ):
                if not self.watching:
                    # The first yield proves the watch is in place. Only now may the loop
                    # sleep long; wake it once for rows that came before the watch did.
                    self.watching = True
                    self._notified = True
                    self._wake.set()
                elif changes:
                    self._wake.set()
        except Exception as exc:
            # Fall back to polling (see _idle_wait) where watching is impossible.
            logger.info("cannot watch %s (%s); polling instead", folder, type(exc).__name__)
        finally:
            self.watching = False

    def _others_wrote(self) -> bool:
        """Whether another connection (or an append through this spool) committed since
        the last look; the shipper's own acknowledgements and meta writes do not count."""
        try:
            changes = self.spool.changes()
        except Exception:
            return True
        if changes == self._seen_changes:
            return False
        self._seen_changes = changes
        return True

    def _idle_wait(self, seconds: float) -> None:
        deadline = self._clock() + max(0.0, seconds)
        while not self._stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            if not self.watching:
                # Polling (the in-process shipper, or where watching is impossible): a
                # look every second, and a tick only when something may have changed.
                woken = self._wake.wait(min(remaining, 1.0))
                self._wake.clear()
                if woken or self._stop.is_set() or self._others_wrote():
                    self._notified = False
                    return
                continue
            woken = self._wake.wait(remaining)
            self._wake.clear()
            if not woken or self._notified or self._stop.is_set():
                self._notified = False
                return
            # A change of the -wal: only another writer's commit is news. Our own
            # writes (acks, last_error) must not make us resend in a loop, and a busy
            # spool changes it many times a second: look once the quiet time is over.
            quiet_until = self._looked_at + WATCH_QUIET
            if self._clock() < quiet_until:
                deadline = min(deadline, quiet_until)
                continue
            if self._others_wrote():
                return

    # -- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            repeat(
                self._stop,
                self.tick,
                self._idle_wait,
                logger=logger,
                what="spooler shipper cycle",
            )
            if self._final_deadline is not None:
                self._final_flush()
        finally:
            if self._thread is None or self._thread is threading.current_thread():
                self.lock.release()

    def tick(self) -> float:
        """Send what is due now (a full batch, rows ``flush_interval`` old, a heartbeat);
        returns how many seconds until the next thing falls due."""
        now = self._clock()
        self._looked_at = now
        if now < self._paused_until:
            return self._paused_until - now
        interval = self.config.flush_interval
        batch_size = self.config.batch_size
        self._unseen = 0  # before the look: rows notified after it are counted
        self._others_wrote()  # what we are about to read is no news later
        waiting, oldest = self.spool.peek(batch_size)
        self._wake_when(waiting)
        age = self._wall_clock() - _epoch_or_zero(oldest) if waiting and oldest is not None else 0.0
        due = waiting >= batch_size or (waiting > 0 and age >= interval)
        heartbeat_due = now - self._last_heartbeat >= interval
        if due or heartbeat_due:
            # Rows due only by their number go out in full batches: the rows that came
            # in meanwhile wait for theirs (a request costs the same for 50 as for 500).
            result = self.cycle(
                send_all=due,
                heartbeat=heartbeat_due,
                maintain=False,
                full_batches_only=age < interval,
            )
            if due and result.waiting >= 0:
                self._wake_when(result.waiting)
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        next_heartbeat = self._last_heartbeat + interval - now
        if waiting and not due:
            return max(0.01, min(next_heartbeat, interval - age))
        return max(0.01, next_heartbeat)

    def _wake_when(self, waiting: int) -> None:
        """Let notify() wake the loop once the rows committed here since this look may
        fill a batch with the ``waiting`` ones, or are the first in an empty spool."""
        self._wake_at = max(1, self.config.batch_size - waiting) if waiting else 1

    def cycle(
        self,
        *,
        send_all: bool = True,
        heartbeat: bool = True,
        maintain: bool = True,
        full_batches_only: bool = False,
    ) -> CycleResult:
        """One delivery cycle: send what waits (all of it, or with ``full_batches_only``
        every full batch and no partial one), then a heartbeat.

        After rows left the spool it is maintained (WAL checkpointed, freed pages given
        back): now, or with ``maintain=False`` (the loop) once ``MAINTAIN_INTERVAL`` has
        passed since the last time.

        Takes the ship lock first if this shipper does not hold it yet (raises
        :class:`~spooler.errors.ShipperLockedError` when another process ships).
        """
        self.lock.acquire()
        start = self._clock()
        result = CycleResult()
        if send_all:
            with self._sending:  # flush() from another thread takes turns with the loop
                self._send_batches(result, final=False, full_only=full_batches_only)
        if heartbeat and not result.auth_failed and not self._stop.is_set():
            result.heartbeat = self._send_heartbeat()
        if result.rejected:
            self._rejected_unlogged += result.rejected
            if self._throttle("rejected"):
                logger.warning(
                    "EventEngine Cloud rejected %d entries (moved to the spool's dead_letters, "
                    "never resent; see `spooler status`)",
                    self._rejected_unlogged,
                )
                self._rejected_unlogged = 0
        if result.shipped or result.rejected:
            self._untidy = True
        if self._untidy and (maintain or start - self._maintained_at >= MAINTAIN_INTERVAL):
            self._untidy = False
            self._maintained_at = start
            self.spool.maintain()
        result.waiting = self._waiting()
        result.seconds = self._clock() - start
        self.last_cycle = result
        if result.shipped or result.rejected or result.error:
            logger.debug(
                "delivered %d entries in %d batches (%d rejected, %d waiting, %d retries) "
                "in %.0f ms%s",
                result.shipped,
                result.batches,
                result.rejected,
                result.waiting,
                result.retries,
                result.seconds * 1000,
                f"; last error: {result.error}" if result.error else "",
            )
        return result

    def drain(self) -> CycleResult:
        """Deliver everything waiting now (retrying per the backoff), then a heartbeat."""
        return self.cycle(send_all=True, heartbeat=True)

    def flush(self, timeout: float) -> bool:
        """Deliver what waits now, from the calling thread, within ``timeout`` seconds
        (one try per batch, taking turns with the loop); True when nothing waits after.

        Only the holder of the ship lock sends; another process's spool is left to it.
        """
        deadline = self._clock() + max(0.0, timeout)
        if not self.lock.held or not self._sending.acquire(timeout=max(0.0, timeout)):
            return self._waiting() == 0
        try:
            self._send_batches(CycleResult(), final=True, deadline=deadline)
        except Exception:
            logger.exception("spooler flush failed")
        finally:
            self._sending.release()
        return self._waiting() == 0

    def _final_flush(self) -> None:
        if self._final_deadline is None or not self.lock.held:
            return
        result = CycleResult()
        try:
            with self._sending:
                self._send_batches(result, final=True, deadline=self._final_deadline)
        except Exception:
            logger.exception("spooler final flush failed")
        if result.shipped:
            logger.debug("delivered %d entries at shutdown", result.shipped)

    def _send_batches(
        self,
        result: CycleResult,
        *,
        final: bool,
        deadline: float | None = None,
        full_only: bool = False,
    ) -> None:
        # Batches the Cloud took whose rows are still spooled (see _deliver_batch).
        held: list[SpoolBatch] = []
        try:
            self._send_loop(result, held, final=final, deadline=deadline, full_only=full_only)
        except BaseException:
            with contextlib.suppress(Exception):  # not acknowledged: sent again later
                self._ack_held(held)
            raise
        self._ack_held(held)

    def _send_loop(
        self,
        result: CycleResult,
        held: list[SpoolBatch],
        *,
        final: bool,
        deadline: float | None,
        full_only: bool,
    ) -> None:
        size = self.config.batch_size
        after_id = 0
        while True:
            if final:
                if deadline is None or self._clock() >= deadline:
                    return
            elif self._stop.is_set():
                return
            if full_only and after_id and not self.spool.fills_batch(size, after_id=after_id):
                return  # what came in meanwhile waits for a full batch: never read it twice
            try:
                batch = self.spool.read_body(size, after_id=after_id)
            except ValueError:
                # A row that is not JSON: read_batch moves it to dead_letters.
                self._ack_held(held)
                rows = self.spool.read_batch(size, after_id=after_id)
                if rows and not self._deliver(rows, result, final=final):
                    return
                if rows:
                    after_id = rows[-1].id
                continue
            if batch is None or (full_only and batch.count < size):
                return
            if not self._deliver_batch(batch, result, held, final=final):
                return
            after_id = batch.last_id

    def _ack_held(self, held: list[SpoolBatch]) -> None:
        """Acknowledge the delivered batches ``held`` as one range, then ask for a
        checkpoint if the WAL wants one.

        They were read one after the other (each above the last id of the one before),
        so no waiting row lies between them: rows with ids in the range that are gone
        were evicted in flight, and no row can be added there.
        """
        if not held:
            return
        count = sum(b.count for b in held)
        self.spool.ack_range(held[0].first_id, held[-1].last_id, count)
        held.clear()
        checkpointer = self._checkpointer
        if checkpointer is not None and self.spool.wal_over() and not checkpointer.request():
            self.spool.checkpoint()  # no thread to run it on: inline, as other writers do

    # -- one batch -----------------------------------------------------------------

    def _body(self, rows: Sequence[SpoolRow]) -> tuple[bytes, str]:
        """The request body and its Idempotency-Key, both stable for the same rows.

        Each stored entry is a JSON object; ``entry_id`` is spliced in before its
        closing brace, so the text is never parsed and encoded again.
        """
        sid = self.spool.spool_id or "spool"
        parts = []
        for r in rows:
            text = r.text.rstrip()
            tail = f'"entry_id":"{sid}-{r.id}"}}'
            parts.append(text[:-1] + ("," if text[:-1].strip() != "{" else "") + tail)
        body = ('{"entries":[' + ",".join(parts) + "]}").encode("utf-8")
        digest = hashlib.sha256(f"{sid}:{','.join(str(r.id) for r in rows)}".encode())
        return body, digest.hexdigest()[:40]

    def _deliver_batch(
        self, batch: SpoolBatch, result: CycleResult, held: list[SpoolBatch], *, final: bool
    ) -> bool:
        """The common case: a batch SQLite built as one body, acknowledged as one range.
        A rejection falls back to rows, which can be split and bisected.

        Once delivered, the batch joins ``held``. A shipper with a spool of its own
        acknowledges them together once they hold ``ACK_GROUP`` entries, or when the
        sending stops; while a checkpoint holds the write lock on its own thread, up to
        ``ACK_BACKLOG`` batches (``ACK_BACKLOG_ENTRIES`` entries) wait, and the next
        request goes out meanwhile. Other shippers acknowledge each batch at once.
        """
        sid = self.spool.spool_id or "spool"

        def prepare(again: bool) -> _Request | None:
            current: SpoolBatch | None = batch
            if again:  # evicted meanwhile? send only what is still spooled
                current = self.spool.read_body(
                    batch.count, after_id=batch.first_id - 1, last_id=batch.last_id
                )
            if current is None:
                return None
            key = f"{sid}:{current.first_id}-{current.last_id}:{current.count}"
            digest = hashlib.sha256(key.encode()).hexdigest()[:40]
            return _Request(current.body.encode("utf-8"), digest, current.count, batch=current)

        try:
            sent = self._send_with_retry(prepare, result, final=final)
        except _Gone:
            return True
        except (PayloadTooLargeError, RejectedError) as exc:
            self._ack_held(held)
            rows = self.spool.read_batch(batch.count, after_id=batch.first_id - 1)
            rows = [r for r in rows if r.id <= batch.last_id]
            return self._split(rows, exc, result, final=final) if rows else True
        except (DeliveryError, tenacity.RetryError) as exc:
            return self._failed(exc, result)
        assert sent.batch is not None
        held.append(sent.batch)
        checkpointer = self._checkpointer
        entries = sum(b.count for b in held)
        if (
            checkpointer is None
            or (entries >= ACK_GROUP and not checkpointer.running)
            or len(held) >= ACK_BACKLOG
            or entries >= ACK_BACKLOG_ENTRIES
        ):
            self._ack_held(held)
        self._delivered(sent.count, result)
        return True

    def _deliver(self, rows: Sequence[SpoolRow], result: CycleResult, *, final: bool) -> bool:
        """Send rows (splitting or bisecting as the Cloud asks); False to stop this cycle."""

        def prepare(again: bool) -> _Request | None:
            current = self.spool.still_waiting(rows) if again else list(rows)
            if not current:
                return None
            body, key = self._body(current)
            return _Request(body, key, len(current), rows=current)

        try:
            sent = self._send_with_retry(prepare, result, final=final)
        except _Gone:
            return True  # evicted meanwhile: counted as evicted, nothing to send
        except (PayloadTooLargeError, RejectedError) as exc:
            return self._split(rows, exc, result, final=final)
        except (DeliveryError, tenacity.RetryError) as exc:
            return self._failed(exc, result)
        self.spool.ack([r.id for r in sent.rows])
        self._delivered(sent.count, result)
        return True

    def _split(
        self,
        rows: Sequence[SpoolRow],
        exc: PayloadTooLargeError | RejectedError,
        result: CycleResult,
        *,
        final: bool,
    ) -> bool:
        """413 halves the batch; 400/422 bisect it down to the entries the Cloud rejects,
        which move to dead_letters (one alone that is too large, too)."""
        if len(rows) == 1:
            reason = "too large" if isinstance(exc, PayloadTooLargeError) else "rejected"
            result.rejected += self.spool.dead_letter(
                [rows[0].id], status=exc.status, reason=f"Cloud answered {exc.status}: {reason}"
            )
            return True
        half = len(rows) // 2
        return self._deliver(rows[:half], result, final=final) and self._deliver(
            rows[half:], result, final=final
        )

    def _delivered(self, count: int, result: CycleResult) -> None:
        result.shipped += count
        result.batches += 1
        self._resume()
        if self._failing_since is not None:
            logger.info(
                "delivery to EventEngine Cloud recovered after %.0f s; %d entries delivered "
                "in this batch, %d still waiting",
                self._clock() - self._failing_since,
                count,
                self._waiting(),
            )
            self._failing_since = None
            self._throttle.forget("failing")

    def _failed(self, exc: BaseException, result: CycleResult) -> bool:
        """A batch the Cloud did not take (and will not, as it stands): always False."""
        if isinstance(exc, PermanentDeliveryError):
            self._pause(exc, result)
        else:
            self._record_error(_describe(exc), result)
            self._trouble(_describe(exc))
        return False

    def _trouble(self, reason: str) -> None:
        """A transient failure: WARNING when delivery starts failing, then at most every
        TROUBLE_LOG_INTERVAL while it lasts, with what waits."""
        first = self._failing_since is None
        if first:
            self._failing_since = self._clock()
        if self._throttle("failing"):
            waiting = self._waiting()
            if first:
                logger.warning(
                    "cannot deliver to EventEngine Cloud (%s); %d entries wait in the spool, "
                    "retrying with backoff",
                    reason,
                    waiting,
                )
            else:
                logger.warning(
                    "still cannot deliver to EventEngine Cloud after %.0f s (%s); "
                    "%d entries wait in the spool",
                    self._clock() - self._failing_since,  # type: ignore[operator]
                    reason,
                    waiting,
                )

    def _send_with_retry(
        self,
        prepare: Callable[[bool], _Request | None],
        result: CycleResult,
        *,
        final: bool,
    ) -> _Request:
        """Send what ``prepare`` builds until the Cloud takes it; returns what it took.

        Before each retry ``prepare(True)`` reads the batch again: rows evicted at the
        cap during an outage are not sent (they are counted as evicted, and must not
        arrive too); None when none is left.
        """
        failures: list[BaseException] = []
        current: _Request | None = None
        attempts = 0

        def attempt() -> None:
            nonlocal current, attempts
            attempts += 1
            current = prepare(attempts > 1)
            if current is None:
                raise _Gone
            if not final and self._stop.is_set():
                raise _Stopped  # a stop between the checks and the send: do not start it
            started = self._clock()
            self.client.send_entries_json(
                current.body, count=current.count, idempotency_key=current.key
            )
            metrics = self.metrics
            if metrics is not None:
                metrics.observe_delivery(self._clock() - started, current.count)
                metrics.delivered_at(self._wall_clock())

        def before_sleep(state: tenacity.RetryCallState) -> None:
            result.retries += 1
            wait = state.next_action.sleep if state.next_action else 0.0
            result.sleeps.append(wait)
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None:
                failures.append(exc)
            self._record_error(_describe(exc), None)
            self._trouble(_describe(exc))
            logger.debug("delivery failed (%s); retrying in %.1f s", _describe(exc), wait)

        first: TransientDeliveryError | None = None

        def again() -> None:
            nonlocal first
            if first is not None:  # the failure of the try made before tenacity
                failed, first = first, None
                raise failed
            attempt()

        try:
            try:
                # Most batches go through on the first try: that one costs no tenacity
                # machinery. Its failure is replayed as tenacity's first attempt, so the
                # waits, the stop conditions and the retry count stay tenacity's.
                attempt()
            except TransientDeliveryError as exc:
                first = exc
                stop: Any = tenacity.stop_when_event_set(self._stop)
                if final:
                    stop = tenacity.stop_after_attempt(1)
                elif self._max_attempts is not None:
                    stop = stop | tenacity.stop_after_attempt(self._max_attempts)
                tenacity.Retrying(
                    retry=tenacity.retry_if_exception_type(TransientDeliveryError),
                    wait=_Wait(self._backoff_initial, self._backoff_max),
                    stop=stop,
                    sleep=self._sleep,
                    before_sleep=before_sleep,
                    reraise=True,
                )(again)
        except _Stopped:
            if failures:
                raise failures[-1] from None
            raise TransientDeliveryError("stopped before sending", status=None) from None
        assert current is not None
        return current

    def _sleep(self, seconds: float) -> None:
        self._sleep_fn(seconds)
        if self._stop.is_set():
            # Stopped during the backoff: give up now. tenacity would send once more
            # before looking at its stop condition, and that request may hang.
            raise _Stopped

    def _pause(self, exc: PermanentDeliveryError, result: CycleResult) -> None:
        """A refused key or a permanent error: keep the spool, log once, probe again later.

        Resending the same batch cannot help, so nothing is sent until the backoff
        ceiling has passed (then one probe), however often the loop is woken.
        """
        auth = isinstance(exc, AuthError)
        result.auth_failed = result.auth_failed or auth
        what = "refused the API key" if auth else "answered a permanent error"
        message = (
            f"Cloud {what} (HTTP {exc.status}); spool kept, probing every {self._backoff_max:g} s"
        )
        self._record_error(message, result)
        if self._throttle(message):
            logger.error(
                "EventEngine Cloud %s (HTTP %s): delivery paused, entries stay in the spool; "
                "probing again every %g s",
                what,
                exc.status,
                self._backoff_max,
            )
        self._pause_logged = message
        self._paused_until = self._clock() + self._backoff_max

    def _resume(self) -> None:
        if self._pause_logged is not None:
            logger.warning("EventEngine Cloud accepts deliveries again; delivery resumed")
            self._throttle.forget(self._pause_logged)
            self._pause_logged = None

    def _record_error(self, message: str, result: CycleResult | None) -> None:
        if result is not None:
            result.error = message
        with contextlib.suppress(Exception):
            self.spool.set_meta({"last_error": message, "last_error_at": now_iso()}, timeout=1.0)

    def _send_heartbeat(self) -> bool:
        self._last_heartbeat = self._clock()
        try:
            stats = self.spool.stats()
            schemas = dict(self._schemas)
            stored = self.spool.get_meta("schema_fingerprints")
            if stored:
                schemas.update(json.loads(stored))
            heartbeat = build_heartbeat(
                app_name=self.config.app_name,
                environment=self.config.environment,
                uptime_seconds=max(0.0, self._clock() - self.started_at),
                schema_fingerprints=schemas,
                spool=stats.heartbeat_counters(),
            )
            if self._stop.is_set():
                return False
            self.client.send_heartbeat(heartbeat)
            return True
        except AuthError as exc:
            self._pause(exc, CycleResult())
        except DeliveryError as exc:
            logger.debug("heartbeat not delivered: %s", _describe(exc))
        except Exception:
            logger.exception("could not build or send the heartbeat")
        return False


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, tenacity.RetryError):
        inner = exc.last_attempt.exception() if exc.last_attempt else None
        return _describe(inner)
    if isinstance(exc, DeliveryError) and exc.status:
        return f"HTTP {exc.status}"
    return type(exc).__name__ + (f": {exc}" if isinstance(exc, DeliveryError) else "")


def _epoch_or_zero(value: str) -> float:
    # Unparseable counts as old, so the row is sent rather than held.
    return iso_epoch(value) or 0.0
