"""Each README promise, attacked: one shipper, nothing lost or counted twice, the cap at
every instant, hostile numbers, and True meaning committed in immediate mode.

Deliveries are counted by tests/cloud.py, a Cloud that shares no code with spooler.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import blinker
import pytest

import spooler
from spooler.config import Config
from spooler.receiver import Faults, Receiver
from spooler.shipper import Shipper
from spooler.spool import Spool, read_stats
from tests.cloud import CountingCloud
from tests.conftest import files_size, free_port, make_entry, reap, wait_for

KEY = "sk_test_PROMISES_5e1f0c"
ROOT = Path(__file__).resolve().parent.parent


def event(i: int) -> dict[str, Any]:
    return {"event_id": i, "event_name": "order.placed", "event_version": 1}


def config(path: str, endpoint: str, **changes: Any) -> Config:
    values: dict[str, Any] = {
        "api_key": KEY,
        "endpoint": endpoint,
        "spool_path": path,
        "app_name": "shop",
        "flush_interval": 0.05,
        "batch_size": 50,
    }
    values.update(changes)
    return Config(**values)


def spooled_ids(path: str) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT json_extract(entry, '$.event_id') FROM entries ORDER BY id"
        ).fetchall()
    return [int(r[0]) for r in rows]


def counters(path: str) -> dict[str, int]:
    return dict(read_stats(path).counters)


@pytest.fixture(autouse=True)
def _no_reporter_left() -> Iterator[None]:
    yield
    spooler.shutdown(timeout=0)


def run_child(code: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- one shipper per spool ---------------------------------------------------------------


def test_a_shipper_without_the_lock_sends_nothing_at_stop(spool_path: str) -> None:
    """stop(flush_timeout) of a shipper that never got the ship lock sends no request."""
    with CountingCloud() as cloud:
        spool = Spool(spool_path)
        spool.append_many([make_entry(i) for i in range(20)])
        holder = Shipper(config(spool_path, cloud.url, flush_interval=3600), watch=False)
        loser = Shipper(config(spool_path, cloud.url, flush_interval=3600), watch=False)
        try:
            holder.lock.acquire()
            assert loser.start() is False
            assert loser.stop(flush_timeout=1.0) is False  # rows wait; it did not send them
            assert cloud.requests == []
        finally:
            holder.stop()
            spool.close()


@pytest.mark.slow
def test_eight_worker_processes_deliver_each_entry_once_in_order(tmp_path: Path) -> None:
    """8 processes append and each tries to ship; exactly one sends, nothing arrives twice."""
    path = str(tmp_path / "spool" / "spool.db")
    with CountingCloud() as cloud:
        code = f"""
            import sys, spooler
            w = int(sys.argv[1])
            spooler.configure(api_key={KEY!r}, endpoint={cloud.url!r}, spool_path={path!r},
                              flush_interval=0.05, batch_size=20, shutdown_timeout=1.0)
            spooler.start()
            for i in range(300):
                spooler.track_emit({{"event_id": w * 1000 + i, "event_name": "x"}})
            spooler.shutdown()
        """
        procs = [
            subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(w)], cwd=ROOT)
            for w in range(8)
        ]
        assert [p.wait(60) for p in procs] == [0] * 8
        # What is left ships from one more shipper; it must not duplicate anything either.
        last = Shipper(config(path, cloud.url), watch=False)
        try:
            last.drain()
        finally:
            last.stop()
        ids = cloud.event_ids()
    assert len(ids) == len(set(ids)) == 2400
    numbers = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert numbers == sorted(numbers)  # append order, one shipper at a time
    c = counters(path)
    assert c["shipped"] == 2400 and c["appended"] == 2400


# -- nothing lost, nothing counted twice ---------------------------------------------------


@pytest.mark.slow
def test_an_outage_past_the_cap_counts_each_entry_exactly_once(tmp_path: Path) -> None:
    """Every accepted entry ends in exactly one of shipped, evicted, dead-lettered, waiting,
    and what arrived (counted independently) is exactly what is counted as shipped."""
    path = str(tmp_path / "spool" / "spool.db")
    port = free_port()
    cfg = config(path, f"http://127.0.0.1:{port}", spool_max_bytes=1 << 20, batch_size=50)
    appender = Spool(path, max_bytes=1 << 20)
    shipper = Shipper(cfg, backoff_initial=0.005, backoff_max=0.05)
    try:
        assert shipper.start()
        for i in range(0, 25_000, 50):
            appender.append_many([make_entry(j) for j in range(i, i + 50)])
        with CountingCloud(port=port) as cloud:
            assert wait_for(lambda: appender.stats().depth == 0, timeout=60)
            assert shipper.stop()
            ids = cloud.event_ids()
    finally:
        shipper.stop()
        appender.close()
    c = counters(path)
    assert c["evicted"] > 0  # the outage did pass the cap
    assert c["appended"] + c["dropped"] == 25_000
    assert c["appended"] == c["shipped"] + c["evicted"] + c["dead_lettered"]
    assert len(set(ids)) == c["shipped"]


@pytest.mark.slow
def test_every_status_snapshot_keeps_the_identity(tmp_path: Path) -> None:
    """While producers append past the cap and a shipper delivers, every read_stats
    snapshot satisfies appended = shipped + evicted + dead_lettered + lost + waiting."""
    path = str(tmp_path / "spool" / "spool.db")
    with CountingCloud() as cloud:
        cfg = config(path, cloud.url, spool_max_bytes=1 << 20, batch_size=100)
        appender = Spool(path, max_bytes=1 << 20)
        shipper = Shipper(cfg)
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                appender.append_many([make_entry(i + j) for j in range(100)])
                i += 100

        thread = threading.Thread(target=produce)
        snapshots = []
        try:
            assert shipper.start()
            thread.start()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                snapshots.append(read_stats(path))
        finally:
            stop.set()
            thread.join()
            shipper.stop()
            appender.close()
    assert len(snapshots) > 20
    for s in snapshots:
        c = s.counters
        assert c["appended"] == (
            c["shipped"] + c["evicted"] + c["dead_lettered"] + c.get("lost", 0) + s.depth
        ), s


def test_hostile_batch_counts_never_poison_later_writes(spool_path: str) -> None:
    """10**30, nanosecond timestamps and strings as publish_batch counts are counted as
    invalid; every entry before and after is stored and nothing else is dropped."""
    spooler.configure(api_key=KEY, spool_path=spool_path, ship_in_process=False)
    spooler.start()
    assert spooler.track_emit(event(1))
    assert spooler.track_publish_batch(10**30) is False
    for _ in range(3):
        blinker.signal("event_engine.publish_batch").send(None, count=time.time_ns())
    assert spooler.track_publish_batch(-5) is False
    assert spooler.track_publish_batch(7) is True
    assert all(spooler.track_emit(event(i)) for i in range(2, 50))
    spooler.shutdown()
    c = counters(spool_path)
    assert spooled_ids(spool_path) == list(range(1, 50))
    assert c["dropped"] == 0 and c["invalid"] == 5
    assert (c["publish_batches"], c["publish_batch_events"]) == (1, 7)


def test_counter_steps_out_of_range_never_reach_sqlite(spool_path: str) -> None:
    """Spool.count ignores steps SQLite cannot hold; later appends still commit."""
    with Spool(spool_path) as spool:
        spool.count("publish_batch_events", 10**30)
        spool.count("invalid", -1)
        spool.count("invalid", 2)
        assert spool.append_many([make_entry(i) for i in range(5)]) == 5
        assert spool.append(make_entry(5))
        c = spool.stats().counters
    assert c["publish_batch_events"] == 0 and c["invalid"] == 2 and c["dropped"] == 0


def test_shutdown_is_true_only_when_nothing_waits(spool_path: str) -> None:
    """A process that never shipped leaves rows waiting: shutdown() says so with False."""
    spooler.configure(api_key=KEY, spool_path=spool_path, ship_in_process=False)
    spooler.start()
    assert all(spooler.track_emit(event(i)) for i in range(5))
    assert spooler.shutdown() is False
    assert len(spooled_ids(spool_path)) == 5


def test_shutdown_is_true_once_everything_was_delivered(spool_path: str) -> None:
    """With a reachable Cloud and a shipper here, shutdown() delivers and returns True."""
    with CountingCloud() as cloud:
        spooler.configure(
            api_key=KEY, endpoint=cloud.url, spool_path=spool_path, flush_interval=3600
        )
        spooler.start()
        assert all(spooler.track_emit(event(i)) for i in range(5))
        assert wait_for(lambda: (r := spooler.get_reporter()) is not None and r.shipper is not None)
        assert spooler.shutdown(timeout=5) is True
        assert len(cloud.event_ids()) == 5


# -- the cap at every instant ------------------------------------------------------------


class Sampler:
    """Samples db + wal + shm every 2 ms in a thread; keeps the largest sum."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, files_size(self.path))
            time.sleep(0.002)  # the sampling period

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, files_size(self.path))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["background", "immediate"])
@pytest.mark.parametrize("cap", [1 << 20, 4 << 20])
def test_the_cap_holds_at_every_instant(tmp_path: Path, mode: str, cap: int) -> None:
    """Flooding a spool 10x past its cap while a shipper reads and retries (Cloud down):
    db + wal + shm, sampled every 2 ms, never pass the cap + 5 %."""
    path = str(tmp_path / "spool" / "spool.db")
    cfg = config(
        path,
        f"http://127.0.0.1:{free_port()}",
        spool_max_bytes=cap,
        spool_mode=mode,
        batch_size=100,
    )
    reporter = spooler.configure(cfg)
    reporter.start()
    # 10x the cap in background mode; 3x in immediate mode, where each entry is a commit.
    entries = cap * (10 if mode == "background" else 3) // 300
    with Sampler(path) as sampler:
        accepted = sum(reporter.track_emit(event(i)) for i in range(entries))
        reporter.shutdown(timeout=0)
    c = counters(path)
    assert c["evicted"] > 0
    assert accepted == c["appended"]
    assert sampler.peak <= cap * 1.05, (sampler.peak, cap)


# -- immediate mode: True means committed --------------------------------------------------


@pytest.mark.slow
def test_immediate_mode_threads_past_the_cap_keep_every_true_and_the_cap(tmp_path: Path) -> None:
    """Four host threads append flat out in immediate mode, 3x past a 1 MiB cap: the writer
    thread's checkpoints pause them (they share one connection) and the cap evicts. Every
    True is a committed row (kept, or evicted and counted), every False is counted as
    dropped, the files never pass the cap, and the waits stay within the bound (goal: no
    False; under 1 % allowed for a loaded CI machine)."""
    path = str(tmp_path / "spool" / "spool.db")
    cap = 1 << 20
    cfg = config(
        path,
        "http://127.0.0.1:9",
        spool_max_bytes=cap,
        spool_mode="immediate",
        ship_in_process=False,
    )
    reporter = spooler.configure(cfg)
    reporter.start()
    per_thread = cap * 3 // 300 // 4
    trues: list[int] = []

    def produce(w: int) -> None:
        trues.append(sum(reporter.track_emit(event(w * 1_000_000 + i)) for i in range(per_thread)))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    with Sampler(path) as sampler:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reporter.shutdown(timeout=0)
    c = counters(path)
    falses = 4 * per_thread - sum(trues)
    assert c["appended"] == sum(trues)
    assert c["dropped"] == falses <= 4 * per_thread // 100
    assert c["evicted"] > 0
    assert len(spooled_ids(path)) + c["evicted"] == c["appended"]
    assert sampler.peak <= cap * 1.05, (sampler.peak, cap)


_PRODUCER = """
import os, sys, spooler
w, n = int(sys.argv[1]), int(sys.argv[2])
spooler.configure(api_key="k", endpoint="http://127.0.0.1:9", spool_path=sys.argv[3],
                  spool_mode="immediate", ship_in_process=False)
spooler.start()
out = os.fdopen(1, "w", buffering=1)
false = 0
for i in range(n):
    if spooler.track_emit({"event_id": w * 1_000_000 + i, "event_name": "x"}):
        out.write(f"{w * 1_000_000 + i}\\n")
    else:
        false += 1
out.write(f"false {false}\\n")
"""


@pytest.mark.slow
def test_immediate_mode_true_survives_sigkill_under_contention(tmp_path: Path) -> None:
    """8 immediate-mode producers on one spool; half are SIGKILLed in the middle of their
    run. Every entry whose track_emit returned True is in the spool, in each producer's
    order."""
    path = str(tmp_path / "spool" / "spool.db")
    Spool(path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, str(w), "4000", path],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(8)
    ]
    lines: list[str] = []
    for p in procs[::2]:
        # Killed mid-run: once 200 of its 4,000 entries were acknowledged.
        assert p.stdout is not None
        first = [p.stdout.readline().strip() for _ in range(200)]
        assert all(line.isdigit() for line in first), first[-1]  # not ended, not crashed
        p.send_signal(signal.SIGKILL)
        lines += first
    for p in procs:
        out, _ = p.communicate(timeout=120)
        lines += out.splitlines()
    acknowledged: list[int] = []
    falses = 0
    for line in lines:
        if line.startswith("false"):
            falses += int(line.split()[1])
        elif line:
            acknowledged.append(int(line))
    stored = spooled_ids(path)
    assert set(acknowledged) <= set(stored)
    for w in range(8):
        mine = [i for i in stored if i // 1_000_000 == w]
        assert mine == sorted(mine)
    # Contention is waited out, not turned into drops (goal: under 0.1 %).
    assert falses <= len(acknowledged) // 100, falses


# -- a hostile Cloud -----------------------------------------------------------------------


def test_a_permanent_error_is_not_resent_in_a_loop(spool_path: str, tmp_path: Path) -> None:
    """A 404 pauses delivery until the backoff ceiling; the shipper's own writes (its
    last_error) do not wake it into resending the batch."""
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db") as receiver:
        receiver.set_faults(Faults(status=404, rate=1.0))
        spool = Spool(spool_path)
        spool.append_many([make_entry(i) for i in range(60)])
        shipper = Shipper(
            config(spool_path, receiver.url, flush_interval=0.05), spool=spool, backoff_max=60
        )
        try:
            assert shipper.start()
            assert wait_for(lambda: spool.stats().last_error is not None)
            time.sleep(2.0)  # room for a resend loop to show itself
            posts = [r for r in receiver.requests() if r["path"] == "/events"]
            last_error = spool.stats().last_error
        finally:
            shipper.stop()
            spool.close()
    assert len(posts) == 1
    assert "404" in (last_error or "")


def test_no_heartbeat_starts_once_a_stop_is_requested(spool_path: str) -> None:
    """After request_stop a cycle sends neither entries nor a heartbeat."""
    with CountingCloud() as cloud:
        shipper = Shipper(config(spool_path, cloud.url), watch=False)
        try:
            shipper.request_stop()
            result = shipper.cycle()
            assert not result.heartbeat
            assert cloud.requests == []
        finally:
            shipper.stop()


class FakeClock:
    """A settable clock for the monotonic and the wall time a shipper reads."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_uptime_counts_from_when_spooler_started_in_the_process(
    spool_path: str, tmp_path: Path
) -> None:
    """uptime_seconds is the injected clock's time since started_at, not since an import."""
    clock = FakeClock(1000.0)
    with Receiver(api_key=KEY, db_path=tmp_path / "r.db") as receiver:
        shipper = Shipper(config(spool_path, receiver.url), watch=False, clock=clock)
        try:
            clock.now = 1042.0
            assert shipper.cycle(send_all=False).heartbeat
            clock.now = 1100.0
            assert shipper.cycle(send_all=False).heartbeat
        finally:
            shipper.stop()
        assert [b["uptime_seconds"] for b in receiver.heartbeats()] == [42, 100]


# -- forks -----------------------------------------------------------------------------------


def test_forks_while_another_thread_writes_leave_children_able_to_write(
    spool_path: str,
) -> None:
    """Children forked while another thread is inside spool transactions can write to
    the spool themselves, never close the parent's connection, and the file stays intact."""
    spool = Spool(spool_path)
    stop = threading.Event()
    written = 0

    def writer() -> None:
        nonlocal written
        i = 0
        while not stop.is_set():
            written += spool.append_many([make_entry(i + j) for j in range(200)])
            i += 200

    thread = threading.Thread(target=writer)
    thread.start()
    children = []
    try:
        for c in range(10):
            time.sleep(0.02)  # forks spread over the writer's transactions, not bunched
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    stored = spool.append_many(
                        [make_entry(1_000_000 + 10 * c + i) for i in range(5)], timeout=5.0
                    )
                    spool.close()
                    code = 0 if stored == 5 else 2
                finally:
                    os._exit(code)
            children.append(pid)
    finally:
        stop.set()
        thread.join()
    codes = reap(children)
    spool.close()
    assert codes == [0] * 10
    with closing(sqlite3.connect(spool_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        total = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert total == written + 50


def test_the_hosts_thread_never_runs_quick_check_or_checkpoints(
    spool_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In immediate mode the first track_* commits on the host's thread without quick_check
    or a checkpoint; a thread of spooler's own runs quick_check (on its own connection, so
    writes go on)."""
    ran: list[tuple[str, str]] = []  # (thread, SQL) of every statement spooler sends SQLite
    real_connect = sqlite3.connect

    def tracing_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: ran.append((threading.current_thread().name, sql)))
        return conn

    def threads_running(word: str) -> list[str]:
        return [thread for thread, sql in list(ran) if word in sql.lower()]

    Spool(spool_path).close()  # an existing spool: quick_check would run on it
    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    reporter = spooler.configure(
        api_key=KEY, spool_path=spool_path, spool_mode="immediate", ship_in_process=False
    )
    reporter.start()
    assert reporter.track_emit(event(1))
    assert wait_for(lambda: threads_running("quick_check") == ["spooler.verify"])
    host = threading.current_thread().name
    assert host in threads_running("insert into entries")  # committed on the host's thread
    assert host not in threads_running("wal_checkpoint")
    with closing(real_connect(spool_path)) as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1


def test_opening_the_spool_again_keeps_this_processes_sqlite_locks(spool_path: str) -> None:
    """A second open in a process (the shipper beside the writer) must not drop the POSIX
    locks the first connection holds: otherwise another process closing its connection
    thinks it is the last one and deletes the WAL under us, losing committed rows."""
    first = Spool(spool_path)
    first.append_many([make_entry(i) for i in range(50)])
    second = Spool(spool_path)
    try:
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "c.execute('SELECT count(*) FROM entries').fetchone(); c.close()",
                spool_path,
            ],
            timeout=30,
        )
        assert other.returncode == 0
        # Our connections are open: nobody may have checkpointed and removed the WAL.
        assert os.path.exists(spool_path + "-wal")
        assert first.append_many([make_entry(i) for i in range(50, 60)]) == 10
    finally:
        second.close()
        first.close()
    assert spooled_ids(spool_path) == list(range(60))


def test_spool_counters_lists_every_counter_with_zeros(spool_path: str) -> None:
    """The view people query with sqlite3 shows every counter status shows, zeros included."""
    from spooler.spool import COUNTER_NAMES

    Spool(spool_path).close()
    with closing(sqlite3.connect(spool_path)) as conn:
        rows = dict(conn.execute("SELECT name, value FROM spool_counters").fetchall())
    assert set(COUNTER_NAMES) <= set(rows)
    assert {"waiting", "dead_letters_kept"} <= set(rows)
    assert set(rows.values()) == {0}


def test_dead_letters_evicted_at_the_cap_are_counted(spool_path: str) -> None:
    """Dead letters removed at the cap (or never kept, for want of room) are counted:
    dead_lettered = dead_letters_kept + dead_letters_evicted."""
    with Spool(spool_path, max_bytes=1 << 20) as spool:
        spool.append_many([make_entry(i, pad=2000) for i in range(120)])
        moved = spool.dead_letter([r.id for r in spool.read_batch(200)], status=422, reason="x")
        assert moved == 120
        # Fill past the cap: waiting rows go first, then kept dead letters.
        for i in range(0, 3000, 100):
            spool.append_many([make_entry(1000 + i + j, pad=2000) for j in range(100)])
        c = spool.stats().counters
        kept = spool.stats().dead_letters
    assert c["dead_letters_evicted"] > 0
    assert c["dead_lettered"] == c["dead_letters_evicted"] + kept == 120


def test_flush_delivers_what_waits_now_and_reporting_goes_on(spool_path: str) -> None:
    """spooler.flush() commits the buffer and delivers at once (flush_interval is an hour
    away); True means nothing waits; events after it are still reported."""
    with CountingCloud() as cloud:
        spooler.configure(
            api_key=KEY, endpoint=cloud.url, spool_path=spool_path, flush_interval=3600
        )
        spooler.start()
        assert all(spooler.track_emit(event(i)) for i in range(20))
        reporter = spooler.get_reporter()
        assert reporter is not None
        assert wait_for(lambda: reporter.shipper is not None and reporter.shipper.running)
        assert spooler.flush(5.0) is True
        assert len(cloud.event_ids()) == 20
        assert spooler.track_emit(event(20))
        assert spooler.flush(5.0) is True
        assert len(set(cloud.event_ids())) == 21


def test_flush_says_false_when_the_cloud_is_down_and_returns_in_time(spool_path: str) -> None:
    """With nobody listening, flush(0.5) gives False and returns about when it said."""
    spooler.configure(
        api_key=KEY,
        endpoint=f"http://127.0.0.1:{free_port()}",
        spool_path=spool_path,
        flush_interval=3600,
    )
    spooler.start()
    assert spooler.track_emit(event(1))
    started = time.monotonic()
    assert spooler.flush(0.5) is False
    assert time.monotonic() - started < 3.0  # a bound that proves no retry loop ran
    assert spooled_ids(spool_path) == [1]


CALLS = 40_000
_BURST = """
import sys, spooler
spooler.configure(api_key="k", endpoint="http://127.0.0.1:9", spool_path=sys.argv[2],
                  ship_in_process=False)
spooler.start()
w = int(sys.argv[1])
n = int(sys.argv[3])
accepted = sum(spooler.track_emit({"event_id": w * 10**6 + i, "event_name": "x"}) for i in range(n))
spooler.shutdown()
print(accepted)
"""


@pytest.mark.slow
def test_eight_background_producers_lose_nothing_they_accepted_silently(tmp_path: Path) -> None:
    """8 processes flood one spool in background mode and shut down normally: every entry
    that returned True is in the spool or counted as dropped; nothing vanishes uncounted."""
    path = str(tmp_path / "spool" / "spool.db")
    Spool(path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BURST, str(w), path, str(CALLS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(8)
    ]
    accepted = 0
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0
        accepted += int(out.strip().splitlines()[-1])
    stored = len(spooled_ids(path))
    refused = 8 * CALLS - accepted  # returned False: counted as dropped when refused
    c = counters(path)
    # Accepted entries are stored (or evicted past the cap) or counted as dropped later.
    assert stored + c["evicted"] + (c["dropped"] - refused) == accepted
    assert c["appended"] == stored + c["evicted"]


def test_before_send_scrubs_or_drops_off_the_hosts_thread(spool_path: str) -> None:
    """before_send runs on the writer thread in background mode; it may blank values or
    drop an entry (counted as filtered), never add keys; its exceptions never reach the host."""
    threads: list[str] = []

    def before_send(entry: dict[str, Any]) -> dict[str, Any] | None:
        threads.append(threading.current_thread().name)
        if entry["event_id"] == 2:
            return None
        if entry["event_id"] == 3:
            raise RuntimeError("a bug in the host's hook")
        return dict(entry, idempotency_key=None, smuggled={"card": "4111"})

    spooler.configure(
        api_key=KEY, spool_path=spool_path, ship_in_process=False, before_send=before_send
    )
    spooler.start()
    for i in range(1, 5):
        assert spooler.track_emit(dict(event(i), idempotency_key=f"k-{i}"))
    spooler.shutdown()
    assert set(threads) == {"spooler.writer"}
    with closing(sqlite3.connect(spool_path)) as conn:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT entry FROM entries ORDER BY id")]
    assert [e["event_id"] for e in stored] == [1, 4]
    assert all(e["idempotency_key"] is None and "smuggled" not in e for e in stored)
    assert counters(spool_path)["filtered"] == 2


def test_entries_a_busy_spool_sends_back_are_scrubbed_once_and_kept_in_order(
    spool_path: str,
) -> None:
    """Another process holds the spool's write lock past the writer's wait: the writer
    keeps the rows it built, in order, and stores them once the lock is free, without
    running before_send on them a second time (it may not be idempotent)."""
    calls: list[int] = []

    def before_send(entry: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(entry["event_id"])
        return dict(entry, idempotency_key=f"scrubbed-{len(calls)}")

    spooler.configure(
        api_key=KEY, spool_path=spool_path, ship_in_process=False, before_send=before_send
    )
    spooler.start()
    assert spooler.track_emit(event(0))

    def rows() -> int:
        if not os.path.exists(spool_path):
            return 0
        try:  # read-only: the writer may still be creating the file
            with closing(sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True)) as conn:
                return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # no table yet

    assert wait_for(lambda: rows() == 1)
    with closing(sqlite3.connect(spool_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        for i in range(1, 6):
            assert spooler.track_emit(event(i))
        # The writer gives up after WRITER_BUSY_TIMEOUT (1 s) and keeps its rows.
        assert wait_for(lambda: calls == [0, 1, 2, 3, 4, 5], timeout=10)
        time.sleep(2.5)
        assert rows() == 1
        other.execute("COMMIT")
    assert wait_for(lambda: rows() == 6)
    spooler.shutdown()
    assert calls == [0, 1, 2, 3, 4, 5]
    with closing(sqlite3.connect(spool_path)) as conn:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT entry FROM entries ORDER BY id")]
    assert [(e["event_id"], e["idempotency_key"]) for e in stored] == [
        (i, f"scrubbed-{i + 1}") for i in range(6)
    ]
    assert counters(spool_path).get("dropped", 0) == 0


def test_debug_logs_spooler_at_debug_on_stderr_when_the_host_set_up_no_logging(
    tmp_path: Path,
) -> None:
    """EVENT_ENGINE_CLOUD_DEBUG=true: spooler's own DEBUG lines on stderr, as sentry's debug."""
    code = (
        "import spooler; spooler.configure(spool_path=__import__('sys').argv[1]); "
        "spooler.start(); spooler.track_emit({'event_name': 'x'}); spooler.shutdown(0)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env.update(
        EVENT_ENGINE_CLOUD_KEY=KEY,
        EVENT_ENGINE_CLOUD_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        EVENT_ENGINE_CLOUD_DEBUG="true",
        EVENT_ENGINE_CLOUD_SHIP_IN_PROCESS="false",
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s" / "spool.db")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert " DEBUG spooler." in out.stderr and " INFO spooler.reporter" in out.stderr
    assert KEY not in out.stderr


def test_spool_path_placeholders_are_expanded_by_config(tmp_path: Path) -> None:
    """{hostname} and {pid} in spool_path give each app instance a file of its own."""
    cfg = Config(spool_path=str(tmp_path / "{hostname}-{pid}.db"))
    name = os.path.basename(cfg.spool_file)
    assert "{" not in name and name.endswith(f"-{os.getpid()}.db")


def test_the_shipper_feeds_delivery_metrics(spool_path: str) -> None:
    """A shipper given a Metrics records each delivery's latency and size for scraping."""
    pytest.importorskip("prometheus_client")
    from spooler.metrics import Metrics

    with CountingCloud() as cloud:
        spool = Spool(spool_path)
        spool.append_many([make_entry(i) for i in range(30)])
        shipper = Shipper(config(spool_path, cloud.url, batch_size=10), spool=spool, watch=False)
        metrics = Metrics(spool_path=spool_path)
        shipper.metrics = metrics
        try:
            assert shipper.cycle(heartbeat=False).shipped == 30
            text = metrics.render().decode()
        finally:
            shipper.stop()
            metrics.close()
            spool.close()
    assert "spooler_delivery_seconds_count 3.0" in text
    assert "spooler_delivery_batch_entries_sum 30.0" in text
