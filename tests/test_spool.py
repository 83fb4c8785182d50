"""The SQLite spool: order, acknowledgement, the size cap, permissions, recovery."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spooler.errors import SpoolBusyError, SpoolError
from spooler.spool import SCHEMA_VERSION, Spool, encode_row
from tests.conftest import files_size, make_entry, reap

# -- order and acknowledgement ----------------------------------------------------


def test_rows_come_back_in_append_order_and_ack_deletes_them(spool: Spool) -> None:
    """read_batch returns rows by primary key; ack deletes exactly those and counts them shipped."""
    assert spool.append_many([make_entry(i) for i in range(10)]) == 10
    batch = spool.read_batch(4)
    assert [r.entry["event_id"] for r in batch] == [0, 1, 2, 3]
    assert [r.id for r in batch] == sorted(r.id for r in batch)
    assert spool.ack([r.id for r in batch]) == 4
    rest = spool.read_batch(100)
    assert [r.entry["event_id"] for r in rest] == list(range(4, 10))
    stats = spool.stats()
    assert stats.depth == 6
    assert stats.counters["shipped"] == 4
    assert stats.counters["appended"] == 10
    assert stats.last_delivery_at is not None


def test_ids_are_never_reused_after_the_spool_drains(spool: Spool) -> None:
    """AUTOINCREMENT keeps ids growing, so an id names one entry for the spool's life."""
    spool.append(make_entry(1))
    first = spool.read_batch(1)[0].id
    spool.ack([first])
    spool.append(make_entry(2))
    assert spool.read_batch(1)[0].id > first


def test_ack_of_unknown_ids_counts_nothing(spool: Spool) -> None:
    """Acknowledging rows that are gone (evicted meanwhile) does not inflate shipped."""
    spool.append(make_entry(1))
    assert spool.ack([999_999]) == 0
    assert spool.stats().counters["shipped"] == 0


def test_dead_letters_are_kept_counted_and_never_read_again(spool: Spool) -> None:
    """Rows the Cloud rejected move to dead_letters with the status and reason."""
    spool.append_many([make_entry(i) for i in range(3)])
    rows = spool.read_batch(3)
    assert spool.dead_letter([rows[1].id], status=422, reason="invalid entry") == 1
    assert [r.entry["event_id"] for r in spool.read_batch(10)] == [0, 2]
    con = sqlite3.connect(spool.path)
    kept = con.execute("SELECT id, status, reason, entry FROM dead_letters").fetchall()
    con.close()
    assert kept[0][:3] == (rows[1].id, 422, "invalid entry")
    assert json.loads(kept[0][3])["event_id"] == 1
    assert spool.stats().counters["dead_lettered"] == 1


def test_unreadable_rows_are_dead_lettered_instead_of_blocking_the_queue(spool: Spool) -> None:
    """A row someone edited into invalid JSON moves aside; the rows behind it still ship."""
    spool.append_many([make_entry(0), make_entry(1)])
    con = sqlite3.connect(spool.path)
    con.execute("UPDATE entries SET entry = '{broken' WHERE id = (SELECT min(id) FROM entries)")
    con.commit()
    con.close()
    assert [r.entry["event_id"] for r in spool.read_batch(10)] == [1]
    assert spool.stats().dead_letters == 1


# -- counters ------------------------------------------------------------------


def test_counted_losses_reach_the_file_with_the_next_write(spool: Spool) -> None:
    """count() is in memory first, visible in stats at once and in the file after a write."""
    spool.count("invalid", 3)
    assert spool.stats().counters["invalid"] == 3
    spool.append(make_entry(1))
    con = sqlite3.connect(spool.path)
    value = con.execute("SELECT value FROM counters WHERE name = 'invalid'").fetchone()[0]
    view = dict(con.execute("SELECT name, value FROM spool_counters").fetchall())
    con.close()
    assert value == 3
    assert view["appended"] == 1 and view["waiting"] == 1 and view["invalid"] == 3
    assert spool.stats().counters["invalid"] == 3  # not counted twice


def test_entries_that_cannot_be_encoded_are_dropped_and_counted(spool: Spool) -> None:
    """A value json cannot encode never raises into the caller."""
    assert spool.append({"status": "emitted", "event_name": "x", "bad": object()}) is False
    assert spool.stats().counters["dropped"] == 1


# -- files on disk ---------------------------------------------------------------


def test_files_are_created_private(spool_path: str) -> None:
    """The database, its -wal and -shm are 0600 and the folder 0700."""
    s = Spool(spool_path)
    s.append(make_entry(1))
    try:
        for name in (spool_path, spool_path + "-wal", spool_path + "-shm"):
            assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
        assert stat.S_IMODE(os.stat(os.path.dirname(spool_path)).st_mode) == 0o700
    finally:
        s.close()


def test_schema_is_readable_with_plain_sqlite(spool: Spool) -> None:
    """WAL mode, incremental auto_vacuum, user_version and plain tables a person can query."""
    spool.append(make_entry(7))
    con = sqlite3.connect(spool.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        row = con.execute(
            "SELECT id, kind, created_at, json_extract(entry, '$.event_name') FROM entries"
        ).fetchone()
        assert row[1:2] == ("emitted",) and row[3] == "order.placed"
        assert row[2].endswith("Z")
    finally:
        con.close()


def test_a_newer_schema_is_refused_not_overwritten(spool_path: str) -> None:
    """A file from a newer spooler raises SpoolError and keeps its data."""
    Spool(spool_path).close()
    con = sqlite3.connect(spool_path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SpoolError):
        Spool(spool_path)
    assert os.path.exists(spool_path)


# -- the size cap ------------------------------------------------------------------


def test_filling_far_past_the_cap_keeps_every_file_within_it(spool_path: str) -> None:
    """With no shipper, 12x the cap of entries never makes db + wal + shm pass the cap."""
    cap = 1 << 20
    s = Spool(spool_path, max_bytes=cap)
    biggest = 0
    try:
        for i in range(0, 40_000, 10):
            s.append_many([make_entry(j) for j in range(i, i + 10)])
            if i % 200 == 0:
                biggest = max(biggest, files_size(spool_path))
        biggest = max(biggest, files_size(spool_path))
        stats = s.stats()
    finally:
        s.close()
    assert biggest <= cap, biggest
    c = stats.counters
    assert c["appended"] == 40_000
    assert c["evicted"] > 30_000
    assert c["dropped"] == 0
    assert c["appended"] == c["evicted"] + stats.depth
    # The newest entries survived, the oldest went first.
    s = Spool(spool_path, max_bytes=cap)
    ids = [r.entry["event_id"] for r in s.read_batch(100_000)]
    s.close()
    assert ids == list(range(40_000 - len(ids), 40_000))


def test_single_row_appends_also_respect_the_cap(spool_path: str) -> None:
    """One entry per transaction (the immediate mode's shape) stays within the cap too."""
    cap = 1 << 20
    s = Spool(spool_path, max_bytes=cap)
    biggest = 0
    try:
        for i in range(8_000):
            s.append(make_entry(i))
            if i % 100 == 0:
                biggest = max(biggest, files_size(spool_path))
        stats = s.stats()
    finally:
        s.close()
    assert max(biggest, files_size(spool_path)) <= cap
    assert stats.counters["appended"] == stats.counters["evicted"] + stats.depth


def test_a_drained_spool_gives_its_space_back(spool_path: str) -> None:
    """After acking everything, maintain() vacuums free pages, and the WAL is back to
    journal_size_limit (no TRUNCATE checkpoint: see SpoolCore._checkpoint)."""
    s = Spool(spool_path, max_bytes=8 << 20)
    try:
        for i in range(0, 10_000, 500):
            s.append_many([make_entry(j) for j in range(i, i + 500)])
        full = files_size(spool_path)
        while rows := s.read_batch(1000):
            s.ack([r.id for r in rows])
        result = s.maintain()
        drained = files_size(spool_path)
        wal = os.path.getsize(spool_path + "-wal")
        limit = s._wal_pages * 4096  # journal_size_limit
    finally:
        s.close()
    assert result["vacuumed_pages"] > 0
    assert wal <= limit
    assert drained < full / 4


def test_lowering_the_cap_shrinks_an_existing_file(spool_path: str) -> None:
    """Reopening with a smaller cap evicts the oldest rows until the file fits."""
    s = Spool(spool_path, max_bytes=8 << 20)
    for i in range(0, 12_000, 500):
        s.append_many([make_entry(j) for j in range(i, i + 500)])
    s.close()
    assert files_size(spool_path) > 2 << 20
    s = Spool(spool_path, max_bytes=1 << 20)
    try:
        s.append(make_entry(99_999))
        s.maintain()
        stats = s.stats()
    finally:
        s.close()
    assert stats.counters["evicted"] > 0
    assert files_size(spool_path) <= 1 << 20
    assert stats.counters["appended"] == stats.counters["evicted"] + stats.depth


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 400)),
            st.tuples(st.just("ship"), st.integers(1, 300)),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_counts_always_add_up_and_order_holds(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Under any mix of appends and acks at a small cap: appended = shipped + evicted + waiting,
    and what is shipped comes out in append order with no repeats."""
    path = os.path.join(tmp_path_factory.mktemp("prop"), "s.db")
    s = Spool(path, max_bytes=1 << 20)
    next_id = 0
    shipped: list[int] = []
    try:
        for op, n in ops:
            if op == "append":
                s.append_many([make_entry(i) for i in range(next_id, next_id + n)])
                next_id += n
            else:
                rows = s.read_batch(n)
                s.ack([r.id for r in rows])
                shipped.extend(r.entry["event_id"] for r in rows)
        stats = s.stats()
        c = stats.counters
        assert c["appended"] == next_id
        assert c["appended"] == c["shipped"] + c["evicted"] + stats.depth
        assert shipped == sorted(set(shipped))
        assert files_size(path) <= 1 << 20
    finally:
        s.close()


# -- contention, threads, processes ----------------------------------------------


def test_a_locked_spool_drops_and_counts_instead_of_blocking(spool: Spool) -> None:
    """While another connection holds the write lock, append returns quickly and counts a drop."""
    holder = sqlite3.connect(spool.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        assert spool.append_many([make_entry(1)], timeout=0.05) == 0
        assert time.monotonic() - start < 2.0
        with pytest.raises(SpoolBusyError):
            spool.append_many([make_entry(2)], timeout=0.05, raise_on_busy=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert spool.stats().counters["dropped"] == 1
    assert spool.append(make_entry(3)) is True


def test_many_threads_append_without_errors(spool: Spool) -> None:
    """Eight threads appending at once lose nothing when given the writer's timeout."""

    def work(t: int) -> None:
        for i in range(500):
            assert spool.append_many([make_entry(t * 1000 + i)], timeout=5.0) == 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = spool.stats()
    assert stats.depth == 4000 and stats.counters["dropped"] == 0


_PRODUCER = textwrap.dedent(
    """
    import sys
    from spooler.spool import Spool
    path, producer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = Spool(path, max_bytes=256 << 20, check=False)
    for i in range(n):
        e = {"status": "emitted", "event_name": "p", "event_id": i, "producer": producer}
        if s.append_many([e], timeout=10.0) != 1:
            sys.exit(3)
    s.close()
    """
)


@pytest.mark.slow
def test_four_processes_append_while_a_reader_acks_in_order(spool_path: str) -> None:
    """4 x 5,000 appends from real processes: each entry read once, each producer's order kept."""
    Spool(spool_path, max_bytes=256 << 20).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _PRODUCER, spool_path, str(p), "5000"])
        for p in range(4)
    ]
    reader = Spool(spool_path, max_bytes=256 << 20)
    seen: dict[int, list[int]] = {p: [] for p in range(4)}
    total = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = reader.read_batch(500)
            if rows:
                for r in rows:
                    seen[r.entry["producer"]].append(r.entry["event_id"])
                reader.ack([r.id for r in rows])
                total += len(rows)
                reader.maintain()
            elif all(p.poll() is not None for p in procs):
                if not reader.read_batch(1):
                    break
            else:
                time.sleep(0.005)  # a poll (like wait_for's): nothing to read, producers run
        codes = [p.wait(timeout=60) for p in procs]
        stats = reader.stats()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        reader.close()
    assert codes == [0, 0, 0, 0]
    assert total == 20_000
    for p in range(4):
        assert seen[p] == list(range(5000)), f"producer {p} out of order or missing"
    assert stats.counters["shipped"] == 20_000 and stats.depth == 0


def _libc_fork() -> int:
    # fork(2) straight from C, as uWSGI without enable-threads does: Python's at-fork
    # hooks do not run, so only the kernel can tell the child it is one.
    import ctypes

    return int(ctypes.PyDLL(None).fork())


@pytest.mark.parametrize("fork", [os.fork, _libc_fork], ids=["os.fork", "libc-fork-no-hooks"])
def test_a_forked_child_gets_its_own_connection(spool: Spool, fork: Callable[[], int]) -> None:
    """After a fork the child appends through a fresh connection; the parent's keeps
    working. Also when the fork ran none of Python's at-fork hooks."""
    spool.append(make_entry(1))
    inherited = spool._conn
    spool._wal_size_fast()  # the descriptor kept on the WAL crosses the fork too
    pid = fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            code = 0 if spool.append_many([make_entry(2)], timeout=5.0) == 1 else 1
            if spool._conn is inherited or spool._pid != os.getpid():
                code = 3  # it wrote through the parent's connection
            if spool._wal_size_fast() != os.path.getsize(spool.path + "-wal"):
                code = 4  # the inherited descriptor names another file
            spool.close()
        except BaseException:
            code = 2
        os._exit(code)
    assert reap([pid]) == [0]
    spool.append(make_entry(3))
    assert [r.entry["event_id"] for r in spool.read_batch(10)] == [1, 2, 3]


# -- damage and full disks ---------------------------------------------------------


def test_a_file_that_is_not_a_database_is_moved_aside(
    spool_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage at the spool path is renamed *.corrupt-<time>, a fresh spool starts, logged once."""
    os.makedirs(os.path.dirname(spool_path))
    with open(spool_path, "wb") as f:
        f.write(b"this is not sqlite at all" * 100)
    with caplog.at_level(logging.ERROR, logger="spooler.spool"):
        s = Spool(spool_path)
    try:
        assert s.append(make_entry(1))
        assert s.stats().depth == 1
    finally:
        s.close()
    aside = [n for n in os.listdir(os.path.dirname(spool_path)) if ".corrupt-" in n]
    assert any(n.startswith("spool.db.corrupt-") for n in aside)
    assert len([r for r in caplog.records if "moved it aside" in r.getMessage()]) == 1


def test_a_file_failing_quick_check_is_moved_aside(spool_path: str) -> None:
    """A database whose pages are damaged fails quick_check at open and is replaced."""
    s = Spool(spool_path)
    for i in range(0, 3000, 100):
        s.append_many([make_entry(j) for j in range(i, i + 100)])
    s.maintain()
    s.close()
    size = os.path.getsize(spool_path)
    with open(spool_path, "r+b") as f:
        for offset in range(8192, size, 4096 * 3):
            f.seek(offset + 100)
            f.write(os.urandom(600))
    s = Spool(spool_path)
    try:
        assert s.stats().depth == 0
        assert s.append(make_entry(1))
    finally:
        s.close()
    assert any(".corrupt-" in n for n in os.listdir(os.path.dirname(spool_path)))


_DISK_FULL = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from spooler.spool import Spool
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path = sys.argv[1]
    s = Spool(path, max_bytes=64 << 20)
    e = {"status": "emitted", "event_name": "x", "pad": "p" * 2000}
    s.append(e)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = os.path.getsize(path + "-wal") + 20000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    failed = sum(1 for _ in range(200) if not s.append(e))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    ok_after = sum(1 for _ in range(20) if s.append(e))
    st = s.stats()
    s.close()
    print(json.dumps({"failed": failed, "ok_after": ok_after, "dropped": st.counters["dropped"],
                      "depth": st.depth}))
    """
)


def test_a_full_disk_drops_and_counts_then_recovers(spool_path: str) -> None:
    """When writes fail for lack of space, appends are dropped and counted, never raised,
    and succeed again once space frees (simulated with RLIMIT_FSIZE in a subprocess)."""
    os.makedirs(os.path.dirname(spool_path))
    out = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, spool_path], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] > 0
    assert result["dropped"] == result["failed"]
    assert result["ok_after"] == 20
    assert result["depth"] == 1 + (200 - result["failed"]) + 20


def test_the_cap_holds_while_another_connection_reads_and_writes(spool_path: str) -> None:
    """A shipper-like second connection reading and recording state all the time cannot make
    the WAL outgrow its share: db + wal + shm stay within the cap."""
    cap = 1 << 20
    appender = Spool(spool_path, max_bytes=cap)
    other = Spool(spool_path, max_bytes=cap)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            other.read_batch(100)
            other.set_meta({"last_error": "HTTP 503"})
            time.sleep(0.001)  # on purpose: a busy shipper's pace, not a wait for a state

    thread = threading.Thread(target=churn)
    thread.start()
    biggest = 0
    try:
        for i in range(0, 15_000, 50):
            appender.append_many([make_entry(j) for j in range(i, i + 50)])
            biggest = max(biggest, files_size(spool_path))
    finally:
        stop.set()
        thread.join()
        other.close()
        stats = appender.stats()
        appender.close()
    assert biggest <= cap, biggest
    assert stats.counters["appended"] == stats.counters["evicted"] + stats.depth


def test_past_the_hard_wal_limit_a_write_waits_for_a_read_to_end_and_the_checkpoint_to_land(
    spool_path: str,
) -> None:
    """A read that began before the WAL passed its hard limit holds back the checkpoint.
    The next write keeps trying it (up to its timeout) instead of appending past the
    limit once the first try fails: when the read ends, the WAL is copied and started
    over, and the write lands at its start."""
    cap = 1 << 20
    appender = Spool(spool_path, max_bytes=cap)
    appender.append(make_entry(0))
    reader = sqlite3.connect(spool_path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM entries").fetchone()  # a snapshot, held
    wal = spool_path + "-wal"
    n = 1
    try:
        while os.path.getsize(wal) <= appender._hard_wal:
            appender.append_many([make_entry(j) for j in range(n, n + 50)])
            n += 50
        past = os.path.getsize(wal)
        ended = threading.Timer(0.05, reader.execute, ("COMMIT",))
        ended.start()
        assert appender.append_many([make_entry(n)], timeout=5.0) == 1
        ended.join()
        after = os.path.getsize(wal)
        biggest = files_size(spool_path)
        stats = appender.stats()
    finally:
        reader.close()
        appender.close()
    assert past > appender._hard_wal
    assert after <= appender._soft_wal, (past, after)
    assert biggest <= cap, biggest
    assert stats.depth == n + 1 - stats.counters["evicted"]


def test_past_the_hard_wal_limit_a_spool_that_never_waits_tries_one_checkpoint(
    spool_path: str,
) -> None:
    """The immediate-mode host thread's spool (busy_timeout=0, no checkpoints of its own)
    must not wait out a held read past the hard WAL limit: one try, then the write."""
    cap = 1 << 20
    host = Spool(spool_path, max_bytes=cap, busy_timeout=0.0, checkpoints=False)
    host.append(make_entry(0))
    reader = sqlite3.connect(spool_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM entries").fetchone()  # a snapshot, held
    wal = spool_path + "-wal"
    tries: list[bool] = []
    checkpoint = host._checkpoint

    def counted(conn: sqlite3.Connection, **kwargs: Any) -> bool:
        done = checkpoint(conn, **kwargs)
        tries.append(done)
        return done

    n = 1
    try:
        while os.path.getsize(wal) <= host._hard_wal:
            assert host.append_many([make_entry(j) for j in range(n, n + 50)]) == 50
            n += 50
        host._checkpoint = counted  # type: ignore[method-assign]
        assert host.append_many([make_entry(n)]) == 1
    finally:
        reader.close()
        host.close()
    assert tries == [False]


def test_a_drained_spool_is_rebuilt_and_keeps_its_identity_ids_and_counters(
    spool_path: str,
) -> None:
    """A backlog drained to a few live pages is given back with VACUUM: the file shrinks
    to a few pages, and the spool keeps its id, its counters and its id sequence."""
    with Spool(spool_path, max_bytes=64 << 20) as s:
        s.append_many([make_entry(i) for i in range(30_000)])
        spool_id = s.spool_id
        batch = s.read_body(30_000)
        assert batch is not None
        s.ack_range(batch.first_id, batch.last_id, batch.count)
        s.maintain()
        assert os.path.getsize(spool_path) < 64 * 4096
        assert s.append(make_entry(30_000))
        stats = s.stats()
    with contextlib.closing(sqlite3.connect(spool_path)) as con:
        assert con.execute("SELECT max(id) FROM entries").fetchone()[0] == 30_001
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert app_id != 0
    assert stats.spool_id == spool_id
    assert (stats.counters["shipped"], stats.counters["appended"], stats.depth) == (
        30_000,
        30_001,
        1,
    )


@pytest.mark.slow
def test_a_large_live_spool_gives_space_back_in_bounded_steps(spool_path: str) -> None:
    """With many live rows left, each maintain() frees a bounded number of pages (so the
    write lock is never held for long) and repeated calls keep shrinking the file."""
    with Spool(spool_path, max_bytes=256 << 20) as s:
        for i in range(0, 80_000, 5_000):
            s.append_many([make_entry(j) for j in range(i, i + 5_000)])
        batch = s.read_body(40_000)
        assert batch is not None
        s.ack_range(batch.first_id, batch.last_id, batch.count)
        sizes = [os.path.getsize(spool_path)]
        for _ in range(3):
            s.maintain()
            sizes.append(os.path.getsize(spool_path))
        assert s.stats().depth == 40_000
    steps = [before - after for before, after in itertools.pairwise(sizes)]
    # 1,024 pages per call, plus the pointer-map page that goes with them.
    assert all(0 < step <= 1030 * 4096 for step in steps), steps


_STOCK = json.JSONEncoder(separators=(",", ":"))
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: the stock encoder writes them too
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _JSON_VALUES, max_size=16))
@settings(max_examples=300, deadline=None)
def test_a_stored_row_holds_the_text_the_stock_json_encoder_writes(entry: dict) -> None:
    from spooler.spool import encode_row

    entry["timestamp"] = "2026-11-29T10:00:00.000Z"
    _kind, created, text = encode_row(entry)
    assert text == _STOCK.encode(entry)
    assert created == "2026-11-29T10:00:00.000Z"


def test_an_entry_json_cannot_encode_raises_the_stock_encoders_error() -> None:
    from spooler.spool import encode_row

    looped: dict = {"status": "emitted"}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular reference"):
        encode_row(looped)
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_row({"status": "emitted", "when": object()})
    # The encoder is not left in a bad state by a failure.
    assert encode_row({"status": "emitted", "n": 1})[2] == '{"status":"emitted","n":1}'


# -- immediate mode's WAL: checkpoints that pause the host's connection -----------------


def _fill_past_soft_limit(host: Spool) -> None:
    deadline = time.monotonic() + 10
    i = 0
    while not host.wal_over():
        assert host.append_now(encode_row(make_entry(i)), deadline=deadline)
        i += 1


def test_a_checkpoint_that_pauses_the_host_holds_its_writers_and_restarts_the_wal(
    spool_path: str,
) -> None:
    """checkpoint(pause=host) runs while the host's connection may not write, so every
    frame is copied and the host's next commit starts the WAL over at its start: the
    file goes back to journal_size_limit instead of growing (what makes an immediate
    append cost what a plain autocommit INSERT costs)."""
    host = Spool(spool_path, max_bytes=1 << 20, busy_timeout=0.0, checkpoints=False)
    writer = Spool(spool_path, max_bytes=1 << 20)
    try:
        _fill_past_soft_limit(host)
        grown = os.path.getsize(spool_path + "-wal")
        held: list[bool] = []
        real = writer._checkpoint

        def watched(conn: sqlite3.Connection, *, wait: float | None = None) -> bool:
            held.append(host._lock.locked())
            return real(conn, wait=wait)

        writer._checkpoint = watched  # type: ignore[method-assign]
        writer.checkpoint(pause=host)
        assert held == [True]
        assert not host._lock.locked()
        assert host.append_now(encode_row(make_entry(-1)), deadline=time.monotonic() + 5)
        limit = host._wal_pages * 4096  # journal_size_limit
        assert os.path.getsize(spool_path + "-wal") <= limit < grown
        assert writer.stats().depth == writer.stats().counters["appended"]
    finally:
        host.close()
        writer.close()


def test_a_checkpoint_runs_without_the_pause_when_the_host_holds_its_lock(
    spool_path: str,
) -> None:
    """A host thread holding its connection past PAUSE_WAIT does not stop the checkpoint."""
    from spooler import _spool_core

    host = Spool(spool_path, max_bytes=1 << 20, busy_timeout=0.0, checkpoints=False)
    writer = Spool(spool_path, max_bytes=1 << 20)
    try:
        _fill_past_soft_limit(host)
        grown = os.path.getsize(spool_path + "-wal")
        with host._lock:
            started = time.monotonic()
            writer.checkpoint(pause=host)
            waited = time.monotonic() - started
        assert waited >= _spool_core.PAUSE_WAIT * 0.9
        # Copied without the pause: nothing appended meanwhile, so the WAL started
        # over at its start, trimmed to journal_size_limit.
        assert os.path.getsize(spool_path + "-wal") <= host._wal_pages * 4096 < grown
        assert host.append_now(encode_row(make_entry(-1)), deadline=time.monotonic() + 5)
    finally:
        host.close()
        writer.close()


def test_the_wal_descriptor_is_renewed_without_ever_being_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 64 looks the descriptor kept on the WAL is pointed at the path anew (the WAL
    may have been made anew). Host threads read it without a lock, so its number must
    name an open descriptor on a WAL at every moment: never closed, then reopened."""
    path = str(tmp_path / "spool.db")
    spool = Spool(path, lazy=True)  # only the -wal path is used here
    wal = path + "-wal"
    with open(wal, "wb") as f:
        f.write(b"x" * 100)
    try:
        assert spool._wal_size_fast() == 100
        kept = spool._wal_fd
        assert kept is not None
        os.remove(wal)
        with open(wal, "wb") as f:
            f.write(b"y" * 300)
        real_open = os.open
        open_while_renewing: list[bool] = []

        def watching_open(*args: Any, **kwargs: Any) -> int:
            try:
                os.fstat(kept)
                open_while_renewing.append(True)
            except OSError:
                open_while_renewing.append(False)
            return real_open(*args, **kwargs)

        monkeypatch.setattr(os, "open", watching_open)
        sizes = [spool._wal_size_fast() for _ in range(63)]
        assert sizes[:62] == [100] * 62  # the old file, until the 64th look
        assert sizes[62] == 300
        assert open_while_renewing == [True]
        assert spool._wal_fd == kept
        assert os.fstat(kept).st_ino == os.stat(wal).st_ino
    finally:
        monkeypatch.undo()
        spool.close()


def test_every_checkpoint_runs_while_the_spool_holds_the_write_lock(spool_path: str) -> None:
    """SQLite 3.7.0-3.51.2 can drop committed transactions when a commit starts the WAL
    over while a checkpoint runs (the WAL-reset bug). No spool connection checkpoints on
    its own, and each checkpoint runs while the spool's second connection holds the
    write lock: a commit from anywhere else cannot happen meanwhile."""
    s = Spool(spool_path, max_bytes=1 << 20)
    other = sqlite3.connect(spool_path, timeout=0, isolation_level=None)
    attempts: list[str] = []

    def try_to_commit(sql: str) -> None:
        if "wal_checkpoint" in sql:
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                attempts.append("got the write lock")
            except sqlite3.OperationalError as exc:
                attempts.append(str(exc))

    try:
        s.append_many([make_entry(i) for i in range(50)])
        with s._locked(1.0) as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            conn.set_trace_callback(try_to_commit)
            try:
                assert s._checkpoint(conn)
                # The same probe around an unfenced checkpoint gets in: it can tell.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.set_trace_callback(None)
    finally:
        other.close()
        s.close()
    assert attempts == ["database is locked", "got the write lock"]
