"""The shipper delivers a spool to the Cloud in order, once, through every failure it meets."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from spooler import __version__
from spooler.client import CloudClient
from spooler.config import Config
from spooler.receiver import Faults, Receiver
from spooler.shipper import Shipper
from spooler.spool import COUNTER_NAMES, Spool, SpoolBatch, SpoolStats
from tests.cloud import CountingCloud
from tests.conftest import files_size, free_port, make_entry, wait_for

KEY = "sk_test_SH1PPER_b1ff4e07c2d9"


def now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def fresh(i: int, *, name: str = "order.placed") -> dict[str, object]:
    """make_entry(i) stamped now: the shipper ages a row by its timestamp."""
    return dict(make_entry(i, name=name), timestamp=now_iso())


def event_requests(receiver: Receiver) -> list[dict[str, Any]]:
    return [r for r in receiver.requests() if r["path"] == "/events"]


def event_ids(receiver: Receiver) -> list[object]:
    return [e["event_id"] for e in receiver.entries()]


def dead_letters(path: str) -> list[tuple[int, int | None, str]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT id, status, entry FROM dead_letters ORDER BY id").fetchall()
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


class Sleeps:
    """An injected sleep: records every backoff wait and returns at once."""

    def __init__(self, then: Callable[[], object] | None = None) -> None:
        self.waits: list[float] = []
        self._then = then

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._then is not None:
            self._then()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db") as r:
        yield r


def make_config(endpoint: str, spool_path: str, **changes: Any) -> Config:
    values: dict[str, Any] = {
        "api_key": KEY,
        "endpoint": endpoint,
        "spool_path": spool_path,
        "spool_max_bytes": 4 << 20,
        "batch_size": 5,
        "flush_interval": 60.0,
        "app_name": "shop",
    }
    values.update(changes)
    return Config(**values)


@contextmanager
def shipping(receiver: Receiver, spool: Spool, **kwargs: Any) -> Iterator[Shipper]:
    """A Shipper on ``spool`` towards ``receiver``; config options and Shipper options mixed."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in Config.__dataclass_fields__}
    shipper = Shipper(make_config(receiver.url, spool.path, **options), spool=spool, **kwargs)
    try:
        yield shipper
    finally:
        shipper.stop()


# -- delivery --------------------------------------------------------------------------


def test_entries_arrive_once_in_order_with_entry_ids_and_headers(
    receiver: Receiver, spool: Spool
) -> None:
    """Appended entries reach the Cloud once each, in append order, with entry_id and headers."""
    spool.append_many([make_entry(i) for i in range(12)])
    with shipping(receiver, spool, sleep=Sleeps()) as shipper:
        result = shipper.drain()

    assert (result.shipped, result.batches, result.error) == (12, 3, None)
    assert event_ids(receiver) == list(range(12))
    ids = receiver.entry_ids()
    assert len(set(ids)) == 12 and all(ids)
    assert receiver.duplicate_count() == 0
    stats = spool.stats()
    assert stats.depth == 0 and stats.counters["shipped"] == 12
    sent = event_requests(receiver)
    assert [r["entries"] for r in sent] == [5, 5, 2]
    for r in sent:
        assert r["status"] == 202
        assert r["authorized"] == 1
        assert r["content_type"] == "application/json"
        assert r["gem_version"] == __version__
        assert "spooler/" in r["user_agent"] and "Python" in r["user_agent"]
    assert len({r["idempotency_key"] for r in sent}) == 3 and all(
        r["idempotency_key"] for r in sent
    )


def test_a_retried_batch_keeps_its_idempotency_key(receiver: Receiver, spool: Spool) -> None:
    """A batch sent again after a failure carries the same Idempotency-Key every time."""
    receiver.set_faults(Faults(status=503, first_n=2))
    spool.append_many([make_entry(i) for i in range(3)])
    sleeps = Sleeps()
    with shipping(receiver, spool, sleep=sleeps) as shipper:
        result = shipper.cycle(heartbeat=False)

    sent = event_requests(receiver)
    assert [r["status"] for r in sent] == [503, 503, 202]
    assert len({r["idempotency_key"] for r in sent}) == 1
    assert result.retries == 2 and len(sleeps.waits) == 2
    assert event_ids(receiver) == [0, 1, 2]


# -- when it sends --------------------------------------------------------------------


def test_a_full_batch_goes_at_once_when_the_watcher_sees_it(
    receiver: Receiver, spool: Spool
) -> None:
    """batch_size waiting rows are sent at once, woken by the WAL watcher (the heartbeat
    and flush_interval are 60 s away)."""
    with shipping(receiver, spool, batch_size=5, flush_interval=60.0) as shipper:
        assert shipper.start()
        assert wait_for(lambda: shipper.watching), "the WAL watcher never started"
        spool.append_many([fresh(i) for i in range(5)])
        assert wait_for(lambda: receiver.entry_count() == 5)
    assert [r["entries"] for r in event_requests(receiver)] == [5]
    assert event_ids(receiver) == list(range(5))


class FakeClock:
    """A settable clock for the monotonic and the wall time a shipper reads."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


STAMP = "2027-01-15T08:00:00.000Z"  # 1_800_000_000 s after the epoch: clocked()'s wall time


@contextmanager
def clocked(receiver: Receiver, spool: Spool) -> Iterator[tuple[Shipper, FakeClock, FakeClock]]:
    """A shipper (batch_size 5, flush_interval 10 s, polling) on injected clocks:
    (shipper, wall clock at STAMP, monotonic clock)."""
    wall = FakeClock(1_800_000_000.0)
    mono = FakeClock(50.0)
    with shipping(
        receiver,
        spool,
        batch_size=5,
        flush_interval=10.0,
        watch=False,
        clock=mono,
        wall_clock=wall,
    ) as shipper:
        yield shipper, wall, mono


def test_a_partial_batch_waits_exactly_flush_interval(receiver: Receiver, spool: Spool) -> None:
    """With injected clocks: rows younger than flush_interval stay, tick() says how long
    until they are due, and at flush_interval they go; a full batch goes at once."""
    spool.append_many([dict(make_entry(i), timestamp=STAMP) for i in range(3)])
    with clocked(receiver, spool) as (shipper, wall, mono):
        wall.now += 9.75
        assert shipper.tick() == pytest.approx(0.25)  # sends the first heartbeat only
        assert receiver.entry_count() == 0
        wall.now += 0.24
        mono.now += 0.24
        assert shipper.tick() == pytest.approx(0.01)
        assert receiver.entry_count() == 0
        wall.now += 0.01
        mono.now += 0.01
        shipper.tick()
        assert receiver.entry_count() == 3
        young = "2027-01-15T08:00:10.000Z"  # the wall clock's now: age 0
        spool.append_many([dict(make_entry(i), timestamp=young) for i in range(3, 8)])
        shipper.tick()  # a full batch does not wait
        assert receiver.entry_count() == 8
    assert [r["entries"] for r in event_requests(receiver)] == [3, 5]


def test_rows_due_by_number_go_in_full_batches_and_the_rest_waits(
    receiver: Receiver, spool: Spool
) -> None:
    """Rows due only because batch_size of them wait go out in full batches; the rows
    short of one more wait for their flush_interval (a request costs about as much for
    2 rows as for 500), then go. The rows short of a batch are not even read until then."""
    spool.append_many([dict(make_entry(i), timestamp=STAMP) for i in range(12)])
    read: list[int] = []
    read_body = spool.read_body

    def counted_read_body(limit: int, **kwargs: Any) -> SpoolBatch | None:
        batch = read_body(limit, **kwargs)
        read.append(0 if batch is None else batch.count)
        return batch

    spool.read_body = counted_read_body  # type: ignore[method-assign]
    with clocked(receiver, spool) as (shipper, wall, mono):
        shipper.tick()
        assert [r["entries"] for r in event_requests(receiver)] == [5, 5]
        assert read == [5, 5]
        wall.now += 9.0
        mono.now += 9.0
        shipper.tick()
        assert receiver.entry_count() == 10
        wall.now += 1.0
        mono.now += 1.0
        shipper.tick()
    assert [r["entries"] for r in event_requests(receiver)] == [5, 5, 2]
    assert event_ids(receiver) == list(range(12))


def test_commits_in_this_process_wake_the_loop_only_when_they_may_fill_a_batch(
    receiver: Receiver, spool: Spool
) -> None:
    """notify() after every commit (the writer's, or each immediate-mode call) wakes the
    loop for the first rows in an empty spool and for a full batch, not for each commit:
    every look costs two queries."""
    looks: list[int] = []
    peek = spool.peek

    def counted_peek(limit: int) -> tuple[int, str | None]:
        looks.append(limit)
        return peek(limit)

    spool.peek = counted_peek  # type: ignore[method-assign]
    with shipping(receiver, spool, batch_size=500, flush_interval=60.0, watch=False) as shipper:
        assert shipper.start()
        assert wait_for(lambda: len(receiver.heartbeats()) >= 1)
        before = len(looks)
        began = time.monotonic()
        for start in range(0, 400, 10):
            spool.append_many([fresh(i) for i in range(start, start + 10)])
            shipper.notify(10)
            time.sleep(0.02)
        trickled = len(looks) - before
        seconds = time.monotonic() - began
        assert receiver.entry_count() == 0
        spool.append_many([fresh(i) for i in range(400, 500)])
        shipper.notify(100)
        assert wait_for(lambda: receiver.entry_count() == 500)
    # 40 commits: a look for the first (the spool was empty), one a second polling
    # (plus one for a second begun), none for the others; waking for each would be 40.
    assert trickled <= 3 + int(seconds), (trickled, seconds)
    assert event_ids(receiver) == list(range(500))


def test_the_loop_maintains_the_spool_at_most_every_maintain_interval(
    receiver: Receiver, spool: Spool
) -> None:
    """drain() gives freed pages back at once; the loop (tick) at most every
    MAINTAIN_INTERVAL, at its next cycle once that has passed (a heartbeat's, here)."""
    from spooler.shipper import MAINTAIN_INTERVAL

    def freed_pages() -> int:
        with closing(sqlite3.connect(f"file:{spool.path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("PRAGMA freelist_count").fetchone()[0])

    def fill(start: int) -> None:  # ~1.5 MiB of rows: far more than maintain()'s 64-page floor
        spool.append_many([make_entry(i) for i in range(start, start + 4000)])

    mono = FakeClock(100.0)
    fill(0)
    with shipping(
        receiver, spool, batch_size=500, flush_interval=30.0, watch=False, clock=mono
    ) as shipper:
        assert shipper.drain().shipped == 4000
        assert freed_pages() == 0  # drained, then maintained at once

        fill(4000)
        mono.now += 1.0
        shipper.tick()  # full batches are due: all go; maintained moments ago, so not now
        assert receiver.entry_count() == 8000
        assert freed_pages() > 64

        mono.now += MAINTAIN_INTERVAL
        shipper.tick()  # nothing waits and no heartbeat is due: no cycle, nothing done
        assert freed_pages() > 64

        mono.now += 30.0
        shipper.tick()  # the heartbeat's cycle: past the interval, so it maintains
        assert freed_pages() == 0


def test_without_watching_new_rows_are_found_by_polling(receiver: Receiver, spool: Spool) -> None:
    """With watch=False the loop polls, so a full batch still goes long before flush_interval."""
    with shipping(receiver, spool, batch_size=5, flush_interval=60.0, watch=False) as shipper:
        assert shipper.start()
        spool.append_many([fresh(i) for i in range(5)])
        assert wait_for(lambda: receiver.entry_count() == 5)
        assert shipper.watching is False


# -- faults ---------------------------------------------------------------------------


def test_a_500_is_retried_then_delivered(receiver: Receiver, spool: Spool) -> None:
    """A 500 answer is transient: the batch is retried after a backoff and then delivered."""
    receiver.set_faults(Faults(status=500, first_n=2))
    spool.append_many([make_entry(i) for i in range(4)])
    sleeps = Sleeps()
    with shipping(receiver, spool, sleep=sleeps) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert len(sleeps.waits) == 2
    assert (result.shipped, result.error) == (4, None)
    assert event_ids(receiver) == [0, 1, 2, 3]
    assert spool.stats().depth == 0


def test_a_429_waits_at_least_what_retry_after_asks(receiver: Receiver, spool: Spool) -> None:
    """A 429 with Retry-After makes the next try wait at least that long."""
    receiver.set_faults(Faults(status=429, first_n=1, retry_after="7"))
    spool.append_many([make_entry(i) for i in range(2)])
    sleeps = Sleeps()
    with shipping(receiver, spool, sleep=sleeps, backoff_initial=0.01) as shipper:
        shipper.cycle(heartbeat=False)
    assert len(sleeps.waits) == 1 and sleeps.waits[0] >= 7.0
    assert event_ids(receiver) == [0, 1]


def test_a_413_splits_the_batch_until_the_halves_fit(receiver: Receiver, spool: Spool) -> None:
    """A batch over the size limit is halved until the parts fit; all arrive, in order."""
    spool.append_many([make_entry(i) for i in range(8)])
    # One entry is about 380 bytes on the wire: two fit in 1000, four do not.
    receiver.set_faults(Faults(max_body_bytes=1000))
    with shipping(receiver, spool, batch_size=8, sleep=Sleeps()) as shipper:
        result = shipper.cycle(heartbeat=False)
    sent = event_requests(receiver)
    assert [r["status"] for r in sent].count(413) == 3  # 8, then 4 and 4
    assert [r["entries"] for r in sent if r["status"] == 202] == [2, 2, 2, 2]
    assert (result.shipped, result.rejected) == (8, 0)
    assert event_ids(receiver) == list(range(8))
    assert dead_letters(spool.path) == []


def test_an_entry_too_large_on_its_own_is_dead_lettered(receiver: Receiver, spool: Spool) -> None:
    """An entry that alone passes the size limit is moved to dead_letters with status 413."""
    spool.append_many([make_entry(i) for i in range(2)])
    receiver.set_faults(Faults(max_body_bytes=100))
    with shipping(receiver, spool, sleep=Sleeps()) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert result.rejected == 2
    assert [(d[0], d[1]) for d in dead_letters(spool.path)] == [(1, 413), (2, 413)]
    assert spool.stats().counters["dead_lettered"] == 2


def test_rejected_entries_are_bisected_out_dead_lettered_and_never_resent(
    receiver: Receiver, spool: Spool
) -> None:
    """On 422 the batch is bisected: only the poisoned entries land in dead_letters."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"poison"})))
    names = ["poison" if i in (3, 6) else "order.placed" for i in range(10)]
    spool.append_many([make_entry(i, name=n) for i, n in enumerate(names)])
    with shipping(receiver, spool, batch_size=10, sleep=Sleeps()) as shipper:
        result = shipper.cycle(heartbeat=False)
        assert (result.shipped, result.rejected) == (8, 2)
        assert event_ids(receiver) == [0, 1, 2, 4, 5, 7, 8, 9]
        letters = dead_letters(spool.path)
        assert [(d[0], d[1]) for d in letters] == [(4, 422), (7, 422)]
        assert all('"poison"' in d[2] for d in letters)
        counters = spool.stats().counters
        assert (counters["dead_lettered"], counters["shipped"]) == (2, 8)

        before = len(event_requests(receiver))
        spool.append(make_entry(10))
        shipper.cycle(heartbeat=False)
    later = event_requests(receiver)[before:]
    assert [(r["entries"], r["status"]) for r in later] == [(1, 202)]
    assert event_ids(receiver)[-1] == 10
    assert spool.stats().counters["dead_lettered"] == 2


def test_a_400_answer_is_bisected_like_a_rejection(receiver: Receiver, spool: Spool) -> None:
    """A 400 is not retried as is: bisecting finds the entry it sticks to and dead-letters it."""
    # 400 for [0..3], then [0, 1], then [0]; [1] and [2, 3] are taken.
    receiver.set_faults(Faults(status=400, first_n=3))
    spool.append_many([make_entry(i) for i in range(4)])
    sleeps = Sleeps()
    with shipping(receiver, spool, batch_size=4, sleep=sleeps) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert sleeps.waits == []
    assert (result.shipped, result.rejected) == (3, 1)
    assert [(d[0], d[1]) for d in dead_letters(spool.path)] == [(1, 400)]
    assert event_ids(receiver) == [1, 2, 3]


def test_a_refused_key_stops_sending_keeps_the_spool_and_logs_once_without_the_key(
    receiver: Receiver, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """On 401 a cycle sends nothing more (no retry, no heartbeat), rows stay, one error line."""
    caplog.set_level(logging.DEBUG)
    receiver.set_faults(Faults(status=401, rate=1.0))
    spool.append_many([make_entry(i) for i in range(10)])
    sleeps = Sleeps()
    with shipping(receiver, spool, sleep=sleeps, backoff_max=30.0) as shipper:
        for _ in range(3):
            result = shipper.cycle()
            assert result.auth_failed and result.shipped == 0
    assert len(receiver.requests()) == 3  # one refused /events per cycle, nothing else
    assert sleeps.waits == []
    stats = spool.stats()
    assert stats.depth == 10
    assert stats.last_error is not None and "refused the API key" in stats.last_error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the API key" in errors[0].getMessage()
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_delivery_resumes_when_the_key_is_accepted_again(
    receiver: Receiver, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """While the key is refused the shipper probes again later; once accepted, all arrive."""
    caplog.set_level(logging.INFO)
    receiver.set_faults(Faults(status=401, rate=1.0))
    spool.append_many([make_entry(i) for i in range(7)])
    with shipping(receiver, spool, flush_interval=0.05, backoff_max=0.2) as shipper:
        assert shipper.start()
        assert wait_for(lambda: [r["status"] for r in event_requests(receiver)].count(401) >= 3)
        assert spool.stats().depth == 7 and receiver.entry_count() == 0
        receiver.set_faults(None)
        assert wait_for(lambda: receiver.entry_count() == 7)
    assert event_ids(receiver) == list(range(7))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the API key" in errors[0]
    assert any("delivery resumed" in r.getMessage() for r in caplog.records)


def test_a_dropped_connection_is_transient(receiver: Receiver, spool: Spool) -> None:
    """A connection closed without an answer is retried, and the batch then arrives."""
    receiver.set_faults(Faults(close_rate=1.0))
    spool.append_many([make_entry(i) for i in range(3)])
    sleeps = Sleeps(then=lambda: receiver.set_faults(None))
    with shipping(receiver, spool, sleep=sleeps) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert len(sleeps.waits) == 1
    assert [r["fault"] for r in event_requests(receiver)] == ["close", None]
    assert (result.shipped, result.error) == (3, None)
    assert event_ids(receiver) == [0, 1, 2]


def test_an_answer_slower_than_the_client_timeout_is_transient(
    receiver: Receiver, spool: Spool
) -> None:
    """A Cloud slower than the client timeout is retried; the entries then arrive once."""
    receiver.set_faults(Faults(delay=1.0))
    spool.append_many([make_entry(i) for i in range(3)])
    sleeps = Sleeps(then=lambda: receiver.set_faults(None))
    client = CloudClient(api_key=KEY, endpoint=receiver.url, timeout=0.2)
    with shipping(receiver, spool, sleep=sleeps, client=client) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert len(sleeps.waits) == 1
    assert (result.shipped, result.error) == (3, None)
    assert event_ids(receiver) == [0, 1, 2]


def test_the_api_key_never_reaches_a_log_line(
    receiver: Receiver, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """Over cycles with retries, drops, rejections, refusals and successes, no log has the key."""
    caplog.set_level(logging.DEBUG)
    spool.append_many([make_entry(i, name="poison" if i == 4 else "x") for i in range(8)])
    faults = iter(
        [
            Faults(close_rate=1.0),
            Faults(status=429, first_n=1, retry_after="1"),
            Faults(reject_event_names=frozenset({"poison"})),
        ]
    )
    sleeps = Sleeps(then=lambda: receiver.set_faults(next(faults, None)))
    receiver.set_faults(Faults(status=503, first_n=1))
    with shipping(receiver, spool, sleep=sleeps) as shipper:
        shipper.drain()
        receiver.set_faults(Faults(status=401, rate=1.0))
        spool.append(make_entry(8))
        shipper.drain()
        receiver.set_faults(None)
        shipper.drain()
    assert receiver.entry_count() == 8 and spool.stats().counters["dead_lettered"] == 1
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "refused the API key" in text and "HTTP 503" in text
    assert KEY not in text


# -- backoff --------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter(receiver: Receiver, spool: Spool) -> None:
    """The n-th wait is uniform in [0, initial * 2**n]: within it, spread, reaching its top half."""
    receiver.set_faults(Faults(status=503, rate=1.0))
    spool.append(make_entry(0))
    sleeps = Sleeps()
    runs = 10
    with shipping(
        receiver, spool, sleep=sleeps, backoff_initial=1.0, backoff_max=1000.0, max_attempts=8
    ) as shipper:
        for _ in range(runs):
            assert shipper.cycle(heartbeat=False).error == "HTTP 503"
    assert len(sleeps.waits) == runs * 7
    upper_half = 0
    for i, wait in enumerate(sleeps.waits):
        n = i % 7 + 1
        assert 0.0 <= wait <= 2.0**n, (n, wait)
        upper_half += wait > 2.0 ** (n - 1)
    # Each wait lands in its top half with probability 1/2: none in 70 is a 2**-70 event.
    assert upper_half > 0
    assert len(set(sleeps.waits)) == len(sleeps.waits)


def test_backoff_never_passes_backoff_max(receiver: Receiver, spool: Spool) -> None:
    """However many failures, no wait is longer than backoff_max."""
    receiver.set_faults(Faults(status=503, rate=1.0))
    spool.append(make_entry(0))
    sleeps = Sleeps()
    with shipping(
        receiver, spool, sleep=sleeps, backoff_initial=1.0, backoff_max=3.0, max_attempts=12
    ) as shipper:
        shipper.cycle(heartbeat=False)
    assert len(sleeps.waits) == 11
    assert all(0.0 <= w <= 3.0 for w in sleeps.waits)


def test_backoff_starts_small_again_after_a_success(receiver: Receiver, spool: Spool) -> None:
    """After a delivery, the next failing batch's first wait is back in the first window."""
    receiver.set_faults(Faults(status=503, first_n=6))
    spool.append(make_entry(0))
    sleeps = Sleeps()
    with shipping(
        receiver, spool, sleep=sleeps, backoff_initial=1.0, backoff_max=1000.0
    ) as shipper:
        assert shipper.cycle(heartbeat=False).shipped == 1
        assert len(sleeps.waits) == 6
        receiver.set_faults(Faults(status=503, first_n=1))
        spool.append(make_entry(1))
        assert shipper.cycle(heartbeat=False).shipped == 1
    # Without a reset this window would be [0, 128]; in it, <= 2 has odds of 1 in 64.
    assert len(sleeps.waits) == 7 and sleeps.waits[6] <= 2.0


def test_stop_interrupts_a_backoff_sleep(receiver: Receiver, spool: Spool) -> None:
    """A shipper sleeping out a long backoff (real sleep) stops as soon as stop() is called."""
    receiver.set_faults(Faults(status=503, rate=1.0))
    spool.append_many([make_entry(i) for i in range(3)])
    shipper = Shipper(
        make_config(receiver.url, spool.path, flush_interval=0.05),
        spool=spool,
        backoff_initial=100.0,
        backoff_max=1000.0,
    )
    try:
        assert shipper.start()
        # The error is recorded just before the shipper goes to sleep.
        assert wait_for(lambda: spool.stats().last_error == "HTTP 503")
        assert shipper.running
        # stop() joins for at most 1 s: the thread must be gone by then.
        assert shipper.stop() is False
        assert not shipper.running
    finally:
        shipper.stop()
    assert spool.stats().depth == 3
    assert len(event_requests(receiver)) == 1


# -- heartbeat ------------------------------------------------------------------------


def test_heartbeats_keep_coming_while_the_spool_is_empty(receiver: Receiver, spool: Spool) -> None:
    """Every flush cycle sends a heartbeat with the spool counters, rows or no rows."""
    with shipping(receiver, spool, flush_interval=0.05) as shipper:
        assert shipper.start()
        assert wait_for(lambda: len(receiver.heartbeats()) >= 3)
    assert event_requests(receiver) == []
    for beat in receiver.heartbeats():
        counters = beat["spool"]
        assert counters["depth"] == 0 and counters["oldest_entry_age_seconds"] is None
        assert counters["bytes"] > 0
        assert {"evicted", "invalid", "dropped", "dead_lettered"} <= set(counters)
        assert beat["app_name"] == "shop"


def test_the_heartbeat_carries_the_spool_counters(receiver: Receiver, spool: Spool) -> None:
    """The heartbeat reports depth, bytes, oldest age and every counter as the spool has them."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"poison"})))
    spool.append_many([make_entry(i, name="poison" if i == 2 else "x") for i in range(5)])
    spool.count("dropped", 2)
    with shipping(receiver, spool, sleep=Sleeps()) as shipper:
        assert shipper.cycle(heartbeat=True).heartbeat
        first = receiver.heartbeats()[-1]["spool"]
        spool.append_many([make_entry(i) for i in range(5, 8)])
        assert shipper.cycle(send_all=False, heartbeat=True).heartbeat
        second = receiver.heartbeats()[-1]["spool"]
    assert set(COUNTER_NAMES) <= set(first)
    assert first["depth"] == 0 and first["oldest_entry_age_seconds"] is None
    assert (first["appended"], first["shipped"], first["dead_lettered"]) == (5, 4, 1)
    assert (first["dropped"], first["evicted"], first["invalid"]) == (2, 0, 0)
    assert 0 < first["bytes"] <= first["max_bytes"] == 4 << 20
    assert second["depth"] == 3 and second["appended"] == 8
    assert second["oldest_entry_age_seconds"] > 0


# -- one shipper per spool ------------------------------------------------------------


def test_only_one_shipper_ships_a_spool(receiver: Receiver, spool: Spool) -> None:
    """A second shipper on the same spool does not start until the first has stopped."""
    config = make_config(receiver.url, spool.path)
    first = Shipper(config, spool=spool)
    second = Shipper(config, spool=spool)
    try:
        assert first.start() is True
        assert second.start() is False and not second.running
        first.stop()
        assert second.start() is True
    finally:
        first.stop()
        second.stop()


# -- outage ---------------------------------------------------------------------------


@dataclass
class Outage:
    """What an outage run saw: the largest spool size, final stats, what arrived."""

    biggest: int
    tried: int
    stats: SpoolStats
    arrived: list[object]
    distinct: int


def run_outage(tmp_path: Path, spool_path: str, cap: int) -> Outage:
    """Append 4x the cap while the Cloud is down, measuring the files; then bring it up."""
    port = free_port()
    config = make_config(
        f"http://127.0.0.1:{port}",
        spool_path,
        spool_max_bytes=cap,
        batch_size=100,
        flush_interval=0.05,
    )
    appender = Spool(spool_path, max_bytes=cap)
    shipper = Shipper(config, backoff_initial=0.01, backoff_max=0.1)
    tried = 0
    biggest = 0
    try:
        assert shipper.start()
        for i in range(0, 15_000, 50):
            tried += 50
            appender.append_many([make_entry(j) for j in range(i, i + 50)])
            biggest = max(biggest, files_size(spool_path))
        assert shipper.last_cycle is None or shipper.last_cycle.shipped == 0
        with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db", port=port) as receiver:
            drained = wait_for(lambda: appender.stats().depth == 0, timeout=30)
            biggest = max(biggest, files_size(spool_path))
            assert drained, appender.stats()
            assert shipper.stop()
            arrived = event_ids(receiver)
            distinct = receiver.entry_count()
    finally:
        shipper.stop()
        stats = appender.stats()
        appender.close()
    return Outage(biggest, tried, stats, arrived, distinct)


@pytest.mark.slow
def test_an_outage_past_the_cap_loses_only_counted_entries(tmp_path: Path, spool_path: str) -> None:
    """After an outage past the cap every entry either arrived or is counted as evicted."""
    run = run_outage(tmp_path, spool_path, 1 << 20)
    c = run.stats.counters
    assert c["evicted"] > 0  # the outage did pass the cap
    assert run.tried == c["appended"] + c["dropped"]
    assert c["appended"] == c["shipped"] + c["evicted"] + run.stats.depth + c["dead_lettered"]
    assert run.distinct == c["shipped"]  # nothing evicted arrived
    assert run.arrived == sorted(run.arrived)


@pytest.mark.slow
def test_an_outage_past_the_cap_keeps_the_files_within_it(tmp_path: Path, spool_path: str) -> None:
    """While a shipper retries through an outage, db + wal + shm never pass the cap."""
    cap = 1 << 20
    run = run_outage(tmp_path, spool_path, cap)
    assert run.biggest <= cap, run.biggest


def test_the_request_body_splices_entry_ids_into_the_stored_json(spool_path: str) -> None:
    """Row by row (after a 422 split the batch), each body built from the spool's JSON text is
    valid JSON with one entry_id per entry, also for an empty object and text with trailing
    spaces; a retried request carries the same body and Idempotency-Key."""
    import json

    spool = Spool(spool_path)
    spool.append_many([make_entry(1), make_entry(2)])
    con = sqlite3.connect(spool_path)
    con.execute("INSERT INTO entries(kind, created_at, entry) VALUES ('x', 'now', '{}')")
    con.execute("INSERT INTO entries(kind, created_at, entry) VALUES ('x', 'now', '{\"a\": 1}  ')")
    con.commit()
    con.close()
    rows = spool.read_batch(10)
    # The batch is refused, so the shipper sends halves built from the rows; the first
    # half fails once (503) and goes again.
    with CountingCloud(answers=[422, 503]) as cloud:
        shipper = Shipper(
            make_config(cloud.url, spool_path), spool=spool, watch=False, sleep=Sleeps()
        )
        try:
            result = shipper.cycle(heartbeat=False)
        finally:
            shipper.close()
            spool.close()
        sent = cloud.event_bodies()
    assert (result.shipped, result.rejected, result.retries) == (4, 0, 1)
    assert len(sent) == 4  # the batch, the first half twice, the second half
    assert sent[1] == sent[2]  # the same rows again: the same body and key
    entries = [e for body, _ in sent[2:] for e in json.loads(body)["entries"]]
    assert [e["entry_id"] for e in entries] == [f"{spool.spool_id}-{r.id}" for r in rows]
    assert [e.get("event_id") for e in entries] == [1, 2, None, None]
    assert entries[3]["a"] == 1
    assert sent[2][1] != sent[3][1]  # each half has its own key


def test_rows_that_are_not_json_objects_are_set_aside_and_the_rest_delivered(
    receiver: Receiver, spool: Spool
) -> None:
    """Text that is not spooler's JSON (written by hand with sqlite3) is moved to
    dead_letters; every other row arrives once, in order, with its entry_id."""
    spool.append_many([make_entry(i) for i in range(3)])
    with closing(sqlite3.connect(spool.path)) as conn:
        for text in ("not json", "{}", "[1, 2]"):
            conn.execute(
                "INSERT INTO entries(kind, created_at, entry) VALUES ('emitted', 'now', ?)",
                (text,),
            )
        conn.commit()
    spool.append_many([make_entry(i) for i in range(3, 6)])
    with shipping(receiver, spool, batch_size=50, sleep=Sleeps()) as shipper:
        result = shipper.cycle(heartbeat=False)
    assert event_ids(receiver) == list(range(6))
    kept = [text for _, _, text in dead_letters(spool.path)]
    assert sorted(kept) == sorted(["not json", "{}", "[1, 2]"])
    assert result.shipped == 6
    ids = [e["entry_id"] for e in receiver.entries()]
    assert len(set(ids)) == 6 and all(i.startswith(f"{spool.spool_id}-") for i in ids)


def test_a_drain_goes_on_sending_while_a_checkpoint_runs_on_its_own_thread(
    spool_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipper's own spool checkpoints on the "spooler.checkpoint" thread. Delivered
    batches are acknowledged as one range per ACK_GROUP entries; while a checkpoint runs
    more wait (at most ACK_BACKLOG batches) and the next ones go out. Every entry
    arrives once, in order, and is counted shipped once."""
    import threading

    import spooler._checkpointer as checkpointer_module
    from spooler.shipper import ACK_BACKLOG, ACK_GROUP

    seen: list[tuple[str, int, int]] = []  # (thread, posts at start, posts at end)

    class SlowDisk(Spool):
        """A real checkpoint after 0.1 s: a disk slow to take the copy."""

        def checkpoint(self, **kwargs: Any) -> bool:
            before = cloud.event_posts()
            time.sleep(0.1)
            done = super().checkpoint(**kwargs)
            seen.append((threading.current_thread().name, before, cloud.event_posts()))
            return done

    monkeypatch.setattr(checkpointer_module, "Spool", SlowDisk)
    n, batch = 3000, 20
    with Spool(spool_path, max_bytes=2 << 20) as s:
        assert s.append_many([make_entry(i) for i in range(n)]) == n
        sid = s.spool_id
    with CountingCloud() as cloud:
        shipper = Shipper(
            make_config(cloud.url, spool_path, batch_size=batch, spool_max_bytes=2 << 20),
            watch=False,
        )
        acks: list[int] = []
        real_ack = shipper.spool.ack_range

        def ack_range(first: int, last: int, count: int, **kw: Any) -> int:
            acks.append(count)
            return real_ack(first, last, count, **kw)

        monkeypatch.setattr(shipper.spool, "ack_range", ack_range)
        try:
            first = shipper.drain()
            ends = len(acks)  # each drain's last acknowledgement may be short of a group
            # A second spoolful through the same shipper: one drain of 3,000 rows fits
            # two slowed checkpoints only most of the time.
            with Spool(spool_path, max_bytes=2 << 20) as s:
                assert s.append_many([make_entry(i) for i in range(n, 2 * n)]) == n
            result = shipper.drain()
            runs = shipper._checkpointer.runs if shipper._checkpointer else 0
        finally:
            shipper.close()
        ids = cloud.event_ids()
    assert first.error is None and result.error is None
    n *= 2
    assert first.shipped + result.shipped == n
    assert ids == [f"{sid}-{i}" for i in range(1, n + 1)]  # once each, in order
    assert runs >= 2 and {name for name, _, _ in seen} == {"spooler.checkpoint"}
    # Requests went out while a checkpoint ran, and their batches were acknowledged
    # together afterwards: past a group, never more than ACK_BACKLOG batches.
    assert max(end - start for _, start, end in seen) >= 2
    assert max(acks) > ACK_GROUP
    assert all(ACK_GROUP <= a <= ACK_BACKLOG * batch for a in acks[: ends - 1] + acks[ends:-1])
    assert sum(acks) == n
    with Spool(spool_path, max_bytes=2 << 20) as s:
        stats = s.stats()
    assert stats.depth == 0
    assert stats.counters["shipped"] == stats.counters["appended"] == n
