"""The in-process reporter: zero impact when off, modes, lifecycle, fork safety, pitfalls."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blinker
import pytest

import spooler
from spooler import hooks, reporter
from spooler.lock import holder_pid
from spooler.receiver import Receiver
from spooler.serializer import schema_fingerprint
from tests.conftest import reap, receiver_process, wait_for

KEY = "test-key-7f3a9c"


def spooled(path: str) -> list[dict[str, Any]]:
    """Entries waiting in a spool file, read with a separate plain connection."""
    if not os.path.exists(path):
        return []
    con = sqlite3.connect(path)
    try:
        return [json.loads(r[0]) for r in con.execute("SELECT entry FROM entries ORDER BY id")]
    except sqlite3.OperationalError:  # the writer is still creating the schema
        return []
    finally:
        con.close()


def counters(path: str) -> dict[str, int]:
    """The counters table of a spool file."""
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT name, value FROM counters").fetchall())
    finally:
        con.close()


@pytest.fixture(autouse=True)
def _clean_reporter() -> Iterator[None]:
    yield
    spooler.shutdown(timeout=0.5)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "spool" / "spool.db")


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_name": "order.placed",
        "event_id": i,
        "event_version": 1,
        "idempotency_key": f"k-{i}",
        "payload": {"email": "alice@example.com", "card": "4111-1111"},
        "metadata": {"ip": "10.1.2.3"},
        **extra,
    }


# -- zero impact when unconfigured ------------------------------------------------

_UNCONFIGURED = textwrap.dedent(
    """
    import json, os, sys, threading
    def sockets():
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return n
    def control():
        # The counter itself must see a socket when there is one.
        import socket
        n = sockets()
        with socket.socket():
            return sockets() - n
    before = sockets()
    import blinker, spooler
    never_configured = [
        spooler.track_emit({"event_name": "x", "event_id": 0}),
        spooler.track_publish({"event_name": "x", "event_id": 0}),
        spooler.track_dead_letter({"event_name": "x", "event_id": 0}),
        spooler.track_publish_batch(3),
        spooler.get_reporter(),
    ]
    spooler.configure()
    started = spooler.start()
    results = [spooler.track_emit({"event_name": "x", "event_id": i}) for i in range(1000)]
    blinker.signal("event_engine.event_emitted").send(None, event_name="x", event_id=1)
    spooler.track_publish_batch(3)
    spooler.shutdown()
    print(json.dumps({
        "never_configured": never_configured,
        "started": started,
        "accepted": sum(results),
        "threads": threading.active_count(),
        "new_sockets": sockets() - before,
        "control": control(),
        "files": sorted(os.listdir(".")),
        "httpx_loaded": "httpx" in sys.modules,
    }))
    """
)


def test_unconfigured_means_no_file_no_thread_no_socket(tmp_path: Path) -> None:
    """Without a key (or before configure): start() declines, hooks accept nothing, and
    nothing is created."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    out = subprocess.run(
        [sys.executable, "-c", _UNCONFIGURED],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {
        "never_configured": [False, False, False, False, None],
        "started": False,
        "accepted": 0,
        "threads": 1,
        "new_sockets": 0,
        "control": 1,
        "files": [],
        "httpx_loaded": False,
    }


def test_the_disabled_hook_does_no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """When off, track_* never builds an entry: the call is one attribute check."""
    calls: list[object] = []
    monkeypatch.setattr(reporter, "build_entry", lambda *a, **k: calls.append(a))
    spooler.configure(api_key=None)
    spooler.start()
    assert spooler.track_emit(event(1)) is False
    assert spooler.track_dead_letter(event(1)) is False
    assert spooler.track_publish(event(1)) is False
    assert spooler.track_publish_batch(1) is False
    assert calls == []


# -- modes --------------------------------------------------------------------------


def test_background_mode_commits_in_groups_from_the_writer_thread(path: str) -> None:
    """Background hooks return at once; the writer commits the entries within ~100 ms."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    assert spooler.start() is True
    for i in range(300):
        assert spooler.track_emit(event(i)) is True
    assert wait_for(lambda: len(spooled(path)) == 300)
    names = {t.name for t in threading.enumerate()}
    assert "spooler.writer" in names
    entries = spooled(path)
    assert [e["event_id"] for e in entries] == list(range(300))
    assert all(e["status"] == "emitted" for e in entries)


def test_the_writer_offers_the_gil_between_rows_unless_the_host_fills_the_buffer(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building rows is Python that holds the GIL. The writer hands it over every
    YIELD_EVERY rows, so a host thread back from I/O waits for a few rows at most, not
    for a whole group; while the host fills the buffer flat out, it does not."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    assert spooler.start() is True
    assert spooler.track_emit(event(0)) is True  # the writer starts on the first event
    r = spooler.get_reporter()
    assert r is not None and r._spool is not None
    real_sleep = time.sleep
    writer_yields = []
    me = threading.get_ident()

    def sleep(seconds: float) -> None:
        if seconds == 0 and threading.get_ident() == me:
            writer_yields.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(reporter.time, "sleep", sleep)
    group = [
        reporter.capture("emitted", event(i), now=time.time())
        for i in range(4 * reporter.YIELD_EVERY)
    ]
    with r._writing:  # the writer thread waits: this thread builds as it would
        rows = r._rows(group, r._spool)
        calm = len(writer_yields)
        r._buffer.extend(group * (r._yield_at // len(group) + 1))
        writer_yields.clear()
        rows_in_a_flood = r._rows(group, r._spool)
        flooded = len(writer_yields)
    monkeypatch.undo()
    assert len(rows) == len(rows_in_a_flood) == len(group)
    assert calm == 4
    assert flooded == 0
    spooler.shutdown(timeout=2.0)
    assert len(spooled(path)) == 1 + len(group) * (r._yield_at // len(group) + 1)


def test_spoolers_threads_block_sigterm_and_sigint_before_running_any_code(path: str) -> None:
    """Attacks "signals reach the host's main thread": each of spooler's threads already
    blocks SIGTERM and SIGINT when it runs its first Python call (a trace hook reads the
    mask there), so the kernel can never hand one of them a signal only the main thread
    can handle."""
    import signal

    seen: dict[str, set[int]] = {}

    def first_call(_frame: object, _event: str, _arg: object) -> None:
        name = threading.current_thread().name
        # The receiver here is the test's Cloud, not part of the host's reporter.
        if name.startswith("spooler.") and not name.startswith("spooler.receiver"):
            seen.setdefault(name, set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    threading.settrace(first_call)  # type: ignore[arg-type]
    try:
        with Receiver(api_key=KEY) as cloud:
            spooler.configure(api_key=KEY, spool_path=path, endpoint=cloud.url, batch_size=1)
            assert spooler.start() is True
            assert spooler.track_emit(event(1)) is True
            assert wait_for(lambda: cloud.entry_count() == 1)  # writer, shipper, client
            spooler.shutdown()
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert {"spooler.writer", "spooler.shipper", "spooler.client.deadline"} <= set(seen), seen
    for name, blocked in seen.items():
        assert {signal.SIGTERM, signal.SIGINT} <= blocked, name
    # The thread that started them got its own mask back.
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_nothing_outside_the_allowlist_reaches_the_spool(path: str) -> None:
    """payload, metadata and unknown keys in a notification never reach the file."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    spooler.track_dead_letter(event(1, error_message="card 4111-1111 declined", error_class="E"))
    spooler.shutdown()
    raw = (
        Path(path).read_bytes() + Path(path + "-wal").read_bytes()
        if os.path.exists(path + "-wal")
        else Path(path).read_bytes()
    )
    for secret in (b"alice@example.com", b"4111-1111", b"10.1.2.3"):
        assert secret not in raw
    assert spooled(path)[0]["error_class"] == "E"


def test_no_connection_outlives_shutdown_even_with_a_quick_check_in_flight(path: str) -> None:
    """shutdown() returns only when every connection spooler opened is closed: the last
    close removes the -wal, so it is gone right then (a quick_check still running on a
    connection of its own used to close later and remove it under the caller's feet)."""
    from spooler.spool import Spool

    with Spool(path) as s:  # large enough that quick_check takes a while
        s.append_many([{"event_id": i, "event_name": "x" * 400} for i in range(20_000)])
    for _ in range(10):
        spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
        spooler.start()
        spooler.track_emit(event(1))
        # The writer thread has opened the file: its quick_check starts about now.
        assert wait_for(lambda: os.path.exists(path + "-wal"), 5)
        spooler.shutdown()  # False: 20,000 entries wait for a shipper
        assert not os.path.exists(path + "-wal")
        assert not any(t.name == "spooler.verify" for t in threading.enumerate())


def test_shutdown_flushes_the_buffer_into_the_spool(path: str) -> None:
    """Entries still buffered at shutdown are written, not lost."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    for i in range(50):
        spooler.track_emit(event(i))
    spooler.shutdown()
    assert len(spooled(path)) == 50


def test_immediate_mode_is_durable_when_the_call_returns(path: str) -> None:
    """In immediate mode the entry is committed before track_* returns."""
    spooler.configure(api_key=KEY, spool_path=path, spool_mode="immediate", ship_in_process=False)
    spooler.start()
    assert spooler.track_emit(event(1)) is True
    assert [e["event_id"] for e in spooled(path)] == [1]
    assert spooler.track_publish(event(2)) is True
    assert [e["status"] for e in spooled(path)] == ["emitted", "published"]


def test_immediate_mode_waits_out_a_brief_lock_and_true_means_committed(path: str) -> None:
    """A writer holding the lock briefly is waited for: True only once the row is committed."""
    spooler.configure(api_key=KEY, spool_path=path, spool_mode="immediate", ship_in_process=False)
    spooler.start()
    spooler.track_emit(event(0))  # opens the spool
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.05, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        assert spooler.track_emit(event(1)) is True
        # Read right away through another connection: nothing is left in memory.
        assert [e["event_id"] for e in spooled(path)] == [0, 1]
        r = spooler.get_reporter()
        assert r is not None and r.buffered() == 0
    finally:
        release.join()
        holder.close()


def test_immediate_mode_never_says_true_for_an_entry_it_did_not_commit(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held past the bound gives False and a counted drop; the entry never appears."""
    monkeypatch.setattr(reporter, "IMMEDIATE_TIMEOUT", 0.2)
    spooler.configure(api_key=KEY, spool_path=path, spool_mode="immediate", ship_in_process=False)
    spooler.start()
    spooler.track_emit(event(0))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert spooler.track_emit(event(1)) is False
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    spooler.shutdown()
    assert [e["event_id"] for e in spooled(path)] == [0]
    assert counters(path)["dropped"] == 1


def test_a_full_buffer_drops_and_counts(path: str) -> None:
    """With the writer blocked, entries past buffer_size are refused and counted as dropped."""
    spooler.configure(api_key=KEY, spool_path=path, buffer_size=10, ship_in_process=False)
    spooler.start()
    spooler.track_emit(event(0))
    assert wait_for(lambda: len(spooled(path)) == 1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        results = [spooler.track_emit(event(i)) for i in range(1, 26)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert results.count(True) == 10 and results.count(False) == 15
    spooler.shutdown()
    assert len(spooled(path)) == 11
    assert counters(path)["dropped"] == 15


def test_bad_event_data_is_dropped_and_counted_never_raised(path: str) -> None:
    """Non-mappings, missing names and hostile objects return False and count as invalid."""

    class Hostile(dict[str, Any]):
        def get(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("boom")

        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    assert spooler.track_emit(None) is False  # type: ignore[arg-type]
    assert spooler.track_emit({"event_id": 1}) is False
    assert spooler.track_emit(Hostile(event_name="x")) is False
    assert spooler.track_publish_batch("many") is False  # type: ignore[arg-type]
    spooler.shutdown()
    c = counters(path)
    assert c.get("invalid", 0) + c.get("dropped", 0) == 4
    assert c["invalid"] >= 3


# -- hooks ------------------------------------------------------------------------


def test_blinker_signals_reach_the_spool_without_importing_spooler(path: str) -> None:
    """The four named signals feed the reporter; publish_batch only feeds counters."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    blinker.signal("event_engine.event_emitted").send(object(), **event(1))
    blinker.signal("event_engine.event_published").send(None, **event(1))
    blinker.signal("event_engine.event_dead_lettered").send(
        None, **event(2, attempts=5, error_class="Timeout", error_message="x")
    )
    blinker.signal("event_engine.publish_batch").send(None, count=7)
    spooler.shutdown()
    assert [e["status"] for e in spooled(path)] == ["emitted", "published", "dead_lettered"]
    c = counters(path)
    assert (c["publish_batches"], c["publish_batch_events"]) == (1, 7)


def test_subscribing_twice_does_not_double_report(path: str) -> None:
    """start() twice and a second subscribe keep one receiver per signal."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    spooler.start()
    r = spooler.get_reporter()
    hooks.subscribe(r)
    blinker.signal("event_engine.event_emitted").send(None, **event(1))
    spooler.shutdown()
    assert len(spooled(path)) == 1


def test_shutdown_unsubscribes(path: str) -> None:
    """After shutdown no spooler receiver stays connected to the host's signals."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    assert hooks.subscribed()
    spooler.shutdown()
    assert not hooks.subscribed()
    for name in hooks.SIGNAL_NAMES:
        assert all(
            getattr(r, "__module__", "") != "spooler.hooks"
            for r in blinker.signal(name).receivers.values()
        )


def test_a_second_configure_warns_and_replaces(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """Configuring again while running warns once and leaves one reporter (no thread leak)."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    spooler.track_emit(event(1))
    with caplog.at_level(logging.WARNING, logger="spooler.reporter"):
        spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    assert any("called again" in r.getMessage() for r in caplog.records)
    spooler.start()
    spooler.track_emit(event(2))
    assert wait_for(lambda: len(spooled(path)) == 2)
    writers = [t for t in threading.enumerate() if t.name == "spooler.writer"]
    assert len(writers) == 1


def test_registered_schemas_reach_the_heartbeat(path: str) -> None:
    """register_schema fingerprints reach the spool's meta, where a shipper reads them."""
    with Receiver(api_key=KEY) as rcv:
        spooler.configure(api_key=KEY, spool_path=path, endpoint=rcv.url, flush_interval=0.2)
        spooler.start()
        fp = spooler.register_schema("order.placed", {"type": "object", "required": ["id"]})
        spooler.track_emit(event(1))
        spooler.track_publish_batch(4)
        assert wait_for(
            lambda: any(
                h["schema_fingerprints"].get("order.placed") == fp for h in rcv.heartbeats()
            )
        )
        assert wait_for(
            lambda: any(h["spool"]["publish_batch_events"] == 4 for h in rcv.heartbeats())
        )
        assert fp == schema_fingerprint({"required": ["id"], "type": "object"})


# -- shipping in-process and exit paths ---------------------------------------------


def test_in_process_shipping_delivers_to_the_cloud(path: str) -> None:
    """With a key and default settings, events reach the receiver exactly once."""
    with Receiver(api_key=KEY) as rcv:
        spooler.configure(api_key=KEY, spool_path=path, endpoint=rcv.url, flush_interval=0.2)
        spooler.start()
        for i in range(120):
            spooler.track_emit(event(i))
        assert wait_for(lambda: rcv.entry_count() == 120)
        assert spooler.shutdown() is True
        assert sorted(e["event_id"] for e in rcv.entries()) == list(range(120))
        assert rcv.duplicate_count() == 0


def test_the_in_process_shipper_watches_no_file_and_finds_other_processes_rows(
    path: str,
) -> None:
    """In an app process the writer tells the shipper of its own commits; rows another
    process (a prefork worker without the ship lock) commits are found by a look once a
    second, without a watch thread that every commit of the app would wake."""
    with Receiver(api_key=KEY) as rcv:
        spooler.configure(
            api_key=KEY, spool_path=path, endpoint=rcv.url, batch_size=50, flush_interval=60
        )
        spooler.start()
        for i in range(50):
            assert spooler.track_emit(event(i))
        assert wait_for(lambda: rcv.entry_count() == 50)
        names = {t.name for t in threading.enumerate()}
        assert "spooler.shipper" in names
        assert "spooler.shipper.watch" not in names
        code = (
            "import sys; from spooler.spool import Spool; "
            "from tests.conftest import make_entry; "
            "s = Spool(sys.argv[1]); "
            "s.append_many([make_entry(i) for i in range(50, 100)]); s.close()"
        )
        root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60, cwd=root)
        assert wait_for(lambda: rcv.entry_count() == 100, timeout=10)
        assert spooler.shutdown() is True
        assert sorted(e["event_id"] for e in rcv.entries()) == list(range(100))


def test_shutdown_is_bounded_when_the_cloud_hangs(path: str) -> None:
    """A Cloud that never answers cannot make shutdown wait past its deadline; rows stay."""
    with socket.create_server(("127.0.0.1", 0)) as cloud:  # accepts, reads, never answers
        cloud.settimeout(10.0)
        endpoint = f"http://127.0.0.1:{cloud.getsockname()[1]}"
        spooler.configure(
            api_key=KEY, spool_path=path, endpoint=endpoint, flush_interval=0.1, batch_size=5
        )
        spooler.start()
        for i in range(20):
            spooler.track_emit(event(i))
        conn, _ = cloud.accept()
        with conn:
            conn.settimeout(10.0)
            assert conn.recv(1)  # the shipper is in a request the Cloud will never answer
            start = time.monotonic()
            left_nothing = spooler.shutdown(timeout=0.5)
            elapsed = time.monotonic() - start
    assert left_nothing is False
    assert elapsed < 6.0  # a hang detector, not a speed target: 0.5 s flush + joins
    assert len(spooled(path)) == 20


_EXIT_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys, spooler
    # A listener that accepts and never answers: the worst Cloud for an exit path.
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
    port = s.getsockname()[1]
    spooler.configure(api_key="k", spool_path=sys.argv[1], endpoint=f"http://127.0.0.1:{port}",
                      flush_interval=0.05, batch_size=1, shutdown_timeout=float(sys.argv[2]))
    spooler.start()
    for i in range(25):
        spooler.track_emit({"event_name": "x", "event_id": i})
    # exit normally: atexit must flush locally and give up on the network in time
    """
)


def test_atexit_never_hangs_and_keeps_entries_for_the_next_run(path: str) -> None:
    """A process exiting against an unresponsive Cloud exits within the deadline; entries stay."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, path, "1.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 20
    assert len(spooled(path)) == 25


_EXIT_REFUSING_THREADS = textwrap.dedent(
    """
    import sys, threading, time, spooler
    from spooler.spool import read_stats
    def committed():
        try:
            return read_stats(sys.argv[1]).depth
        except Exception:  # not created yet
            return 0
    spooler.configure(api_key="k", spool_path=sys.argv[1], ship_in_process=False)
    spooler.start()
    spooler.track_emit({"event_name": "x", "event_id": 1})
    deadline = time.monotonic() + 10
    while committed() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the writer has committed the first entry
    spooler.track_emit({"event_name": "x", "event_id": 2})
    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")
    threading.Thread.start = refuse
    # exit normally: spooler's atexit hook must commit entry 2 without a new thread
    """
)


def test_shutdown_at_exit_starts_no_thread(path: str) -> None:
    """The atexit path never starts a thread (Python 3.12 refuses that at shutdown)."""
    out = subprocess.run(
        [sys.executable, "-c", _EXIT_REFUSING_THREADS, path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "failed" not in out.stderr, out.stderr
    assert [e["event_id"] for e in spooled(path)] == [1, 2]


def test_nothing_is_started_before_the_first_event(path: str) -> None:
    """start() only subscribes: a pre-fork master opens no file and starts no thread."""
    before = {t.name for t in threading.enumerate()}
    spooler.configure(api_key=KEY, spool_path=path)
    spooler.start()
    assert not os.path.exists(path)
    assert {t.name for t in threading.enumerate()} == before


# -- fork safety ------------------------------------------------------------------


def test_forked_children_each_get_their_own_writer_and_every_entry_arrives(path: str) -> None:
    """Parent and 3 forked children append; each entry is spooled once, none duplicated."""
    spooler.configure(api_key=KEY, spool_path=path, ship_in_process=False)
    spooler.start()
    for i in range(10):
        spooler.track_emit(event(i))  # leaves entries in the parent's buffer across the fork
    children = []
    for c in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                ok = all(spooler.track_emit(event(1000 * (c + 1) + i)) for i in range(100))
                names = {t.name for t in threading.enumerate()}
                spooler.shutdown()
                code = 0 if ok and "spooler.writer" in names else 2
            finally:
                os._exit(code)
        children.append(pid)
    codes = reap(children)
    spooler.shutdown()
    assert codes == [0, 0, 0]
    ids = [e["event_id"] for e in spooled(path)]
    expected = list(range(10)) + [1000 * (c + 1) + i for c in range(3) for i in range(100)]
    assert sorted(ids) == sorted(expected)


def test_a_prefork_server_has_one_shipper_and_delivers_everything(
    path: str, tmp_path: Path
) -> None:
    """Four forked workers append; exactly one process ships; the receiver gets each once."""
    tried_r, tried_w = os.pipe()  # a byte from each worker that has tried for the ship lock
    go_r, go_w = os.pipe()  # then a byte to each: all have tried, carry on
    # The receiver runs in a process of its own: see receiver_process.
    with receiver_process(tmp_path, KEY) as (url, rcv):
        spooler.configure(api_key=KEY, spool_path=path, endpoint=url, flush_interval=0.2)
        spooler.start()  # the "master": subscribes, starts nothing
        pids = []
        for w in range(4):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    for i in range(50):
                        spooler.track_emit(event(w * 100 + i))
                    r = spooler.get_reporter()
                    assert r is not None
                    # Tried: ships, or has a shipper that found the lock held by another.
                    wait_for(
                        lambda r=r: (
                            r.shipper is not None
                            and (r.shipper.running or holder_pid(path) not in (None, os.getpid()))
                        )
                    )
                    os.write(tried_w, b"x")
                    # No worker stops (letting the lock go) before all four have tried.
                    os.read(go_r, 1)
                    ships = int(r.shipper is not None and r.shipper.running)
                    spooler.shutdown(timeout=3.0)
                    code = 10 + ships
                finally:
                    os._exit(code)
            pids.append(pid)
        try:
            tried = 0
            while tried < 4 and select.select([tried_r], [], [], 30)[0]:
                tried += len(os.read(tried_r, 4 - tried))
        finally:
            os.write(go_w, b"x" * 4)  # never leave a worker waiting
            for fd in (tried_r, tried_w, go_r, go_w):
                os.close(fd)
        codes = reap(pids)
        assert tried == 4
        assert sorted(codes) == [10, 10, 10, 11]
        # whatever the last shipper left behind, a fresh one delivers
        spooler.track_emit(event(999))
        assert wait_for(lambda: rcv.entry_count() == 201, timeout=15)
        assert rcv.duplicate_count() == 0


def test_another_process_takes_shipping_over_when_the_shipper_dies(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the shipping process is SIGKILLed, a surviving process takes the lock over."""
    monkeypatch.setattr(reporter, "TAKEOVER_INTERVAL", 0.2)
    script = textwrap.dedent(
        """
        import sys, time, spooler
        spooler.configure(api_key="k", spool_path=sys.argv[1], endpoint=sys.argv[2],
                          flush_interval=0.2)
        spooler.start()
        spooler.track_emit({"event_name": "x", "event_id": -1})
        print("ready", flush=True)
        time.sleep(60)  # ships until the test kills it
        """
    )
    with Receiver(api_key="k") as rcv:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, path, rcv.url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            assert wait_for(lambda: rcv.entry_count() == 1)
            spooler.configure(api_key="k", spool_path=path, endpoint=rcv.url, flush_interval=0.2)
            spooler.start()
            spooler.track_emit(event(1))
            r = spooler.get_reporter()
            assert r is not None
            # Time passes on purpose: over two takeover intervals, this process must not
            # take shipping from the live one.
            time.sleep(0.5)
            assert r.shipper is None or not r.shipper.running
            proc.kill()
            proc.wait(10)
            assert wait_for(lambda: r.shipper is not None and r.shipper.running, timeout=10)
            assert wait_for(lambda: rcv.entry_count() == 2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


# -- secrets --------------------------------------------------------------------------


def test_the_key_never_reaches_logs_or_the_spool(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a full cycle, including a refused key, the key is in no log line and no file."""
    secret = "sk-live-" + "9" * 24
    with caplog.at_level(logging.DEBUG), Receiver(api_key="another-key") as rcv:
        spooler.configure(api_key=secret, spool_path=path, endpoint=rcv.url, flush_interval=0.1)
        spooler.start()
        spooler.track_emit(event(1))
        assert wait_for(lambda: any(r.status == 401 for r in _requests(rcv)))
        spooler.shutdown(timeout=0.2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text
    for name in os.listdir(os.path.dirname(path)):
        assert secret.encode() not in Path(os.path.dirname(path), name).read_bytes()


class _Req:
    def __init__(self, row: dict[str, Any]) -> None:
        self.status = row.get("status")


def _requests(rcv: Receiver) -> list[_Req]:
    return [_Req(r) for r in rcv.requests()]


_HARD_EXIT = textwrap.dedent(
    """
    import os, sys, time, spooler
    spooler.configure(api_key="k", spool_path=sys.argv[1], spool_mode=sys.argv[2],
                      ship_in_process=False)
    spooler.start()
    for i in range(200):
        spooler.track_emit({"event_name": "x", "event_id": i})
    time.sleep(0.5)  # time passes on purpose: these 200 are older than the 100 ms group window
    for i in range(200, 210):
        spooler.track_emit({"event_name": "x", "event_id": i})
    os._exit(0)  # skips atexit, like a multiprocessing or Celery pool child
    """
)


@pytest.mark.parametrize("mode", ["immediate", "background"])
def test_a_hard_exit_loses_at_most_the_last_group_window(path: str, mode: str) -> None:
    """os._exit skips atexit: immediate mode loses nothing, background only the last ~100 ms."""
    out = subprocess.run(
        [sys.executable, "-c", _HARD_EXIT, path, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    ids = [e["event_id"] for e in spooled(path)]
    if mode == "immediate":
        assert ids == list(range(210))
    else:
        # What arrived is a prefix of what was sent: in order, nothing twice, the
        # first 200 (older than the group window) all there.
        assert len(ids) >= 200 and ids == list(range(len(ids)))


def _sqlite_library() -> str | None:
    """The path of the SQLite library this Python's sqlite3 module runs on, if it is a
    shared library (a statically linked one cannot be reached from ctypes)."""
    sqlite3.connect(":memory:").close()  # loaded and initialised
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                name = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(name).startswith("libsqlite3"):
                    return name
    except OSError:
        pass
    return None


@pytest.mark.parametrize("mode", ["background", "immediate"])
def test_a_child_forked_while_sqlite_is_busy_never_blocks_its_host(
    path: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked while another thread held one of SQLite's own mutexes inherits it
    held forever, and its first SQLite call never returns. The host's calls there still
    return at once (immediate mode: False, counted as dropped), an ERROR says why, and
    shutdown() is bounded."""
    library = _sqlite_library()
    if library is None:
        pytest.skip("sqlite3 is not linked against a shared libsqlite3 here")
    lib = ctypes.CDLL(library)  # the same handle the sqlite3 module uses
    lib.sqlite3_mutex_alloc.restype = ctypes.c_void_p
    lib.sqlite3_mutex_alloc.argtypes = [ctypes.c_int]
    lib.sqlite3_mutex_enter.argtypes = [ctypes.c_void_p]
    lib.sqlite3_mutex_leave.argtypes = [ctypes.c_void_p]
    mem = lib.sqlite3_mutex_alloc(3)  # SQLITE_MUTEX_STATIC_MEM: every allocation takes it
    monkeypatch.setattr(reporter, "STUCK_AFTER", 1.0)
    monkeypatch.setattr(reporter, "OPEN_GRACE", 1.0)
    spooler.configure(api_key=KEY, spool_path=path, spool_mode=mode, ship_in_process=False)
    spooler.start()
    log_r, log_w = os.pipe()
    lib.sqlite3_mutex_enter(mem)  # nothing here touches SQLite until it is left
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                # The precondition, or the test proves nothing: SQLite does not answer here.
                probe = threading.Thread(target=lambda: sqlite3.connect(":memory:"), daemon=True)
                probe.start()
                probe.join(1.0)
                if not probe.is_alive():
                    os._exit(3)
                handler = logging.StreamHandler(os.fdopen(log_w, "w", encoding="utf-8"))
                logging.getLogger("spooler").addHandler(handler)
                results = [spooler.track_emit(event(i)) for i in range(3)]
                time.sleep(1.2)  # past STUCK_AFTER: the next calls say why nothing is written
                # (in background mode, those that find a group's worth left unwritten)
                more = range(3, 4 + reporter.GROUP_SIZE)
                results += [spooler.track_emit(event(i)) for i in more]
                r = spooler.get_reporter()
                assert r is not None and r._spool is not None
                began = time.monotonic()
                spooler.shutdown(timeout=1.0)
                took = time.monotonic() - began
                handler.flush()
                # Immediate mode: each call False and counted; background mode: each
                # accepted into memory, then counted as lost when shutdown gives up.
                dropped = r._spool._pending.get("dropped", 0)
                accepted = all(results) if mode == "background" else not any(results)
                # A hang detector, not a speed target: shutdown() promises timeout + ~2 s.
                code = 0 if accepted and dropped == len(results) and took < 10 else 2
            finally:
                os._exit(code)
    finally:
        lib.sqlite3_mutex_leave(mem)
    os.close(log_w)
    [code] = reap([pid], timeout=60)  # a child whose host call hangs is killed: -6
    with os.fdopen(log_r, encoding="utf-8") as log:
        logged = log.read()
    if code == 3:
        pytest.skip("this SQLite build allocates without its memory mutex")
    assert code == 0, logged
    assert "has not opened" in logged and "forked while another thread" in logged, logged
    assert "stopped without having opened its spool" in logged, logged
