"""One shipper per node: many spools in one folder, one client, fair turns, gone apps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spooler.cli import main
from spooler.config import ENV_VARS
from spooler.errors import ConfigError
from spooler.lock import ShipperLock, holder_pid
from spooler.node import NodeShipper, expand_spool_path, find_spools
from spooler.spool import Spool
from tests.cloud import CountingCloud
from tests.conftest import make_entry, wait_for

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"

# A producer process: appends N entries to its own spool, one commit each, then
# says "done" (or how many appends failed) and stays alive (its connection open)
# until killed. It waits up to 5 s for the write lock: Spool's default (50 ms) is
# short enough to miss on a loaded 2-core CI, and Spool.append counts a miss as
# dropped (the reporter's writer thread instead keeps its entries and tries again).
_PRODUCER = """
import sys, time
from spooler.spool import Spool
path, n = sys.argv[1], int(sys.argv[2])
s = Spool(path, busy_timeout=5.0)
entry = {"event_name": "x", "status": "emitted"}
failed = sum(not s.append({**entry, "event_id": i}) for i in range(n))
print("done" if not failed else f"{failed} appends failed", flush=True)
time.sleep(600)  # alive, its connection open, until the test kills it
"""


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env.update(
        {
            ENV_VARS["api_key"]: KEY,
            ENV_VARS["endpoint"]: url,
            ENV_VARS["flush_interval"]: "0.05",
            ENV_VARS["batch_size"]: "50",
            ENV_VARS["app_name"]: "node-test",
        }
    )
    env.update(extra)
    return env


def producer(path: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, path, str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def node_process(folder: str, url: str, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spooler", "ship", "--spool-dir", folder, *flags],
        cwd=ROOT,
        env=env_for(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # never read: a full pipe must not block it
        text=True,
    )


def by_spool(ids: list[str]) -> dict[str, list[int]]:
    """entry_ids grouped by spool id, row ids in arrival order."""
    out: dict[str, list[int]] = defaultdict(list)
    for entry_id in ids:
        sid, _, row = entry_id.rpartition("-")
        out[sid].append(int(row))
    return out


@pytest.fixture
def folder(tmp_path: Path) -> str:
    path = tmp_path / "spools"
    path.mkdir(mode=0o700)
    return str(path)


def node(folder: str, url: str, **kwargs: Any) -> NodeShipper:
    env = env_for(url)
    kwargs.setdefault("watch", False)
    return NodeShipper(folder, environ=env, **kwargs)


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()
        if p.stderr is not None:
            p.stderr.close()


# -- spool_path placeholders ---------------------------------------------------------


def test_spool_path_placeholders_expand_to_this_host_and_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """{hostname} and {pid} become this process's values, the host name made file-safe."""
    monkeypatch.setattr(socket, "gethostname", lambda: "web-7f9c/x y")
    got = expand_spool_path("/var/spooler/{hostname}-{pid}.db")
    assert got == f"/var/spooler/web-7f9c_x_y-{os.getpid()}.db"
    assert expand_spool_path("/var/spooler/spool.db") == "/var/spooler/spool.db"


@pytest.mark.parametrize("bad", ["/x/{host}.db", "/x/{hostname.db", "/x/{}.db"])
def test_unknown_or_broken_placeholders_are_refused(bad: str) -> None:
    """A placeholder spooler does not know is an error naming spool_path, not a literal."""
    with pytest.raises(ConfigError) as err:
        expand_spool_path(bad)
    assert err.value.option == "spool_path"


# -- which files are spools ----------------------------------------------------------


def test_only_spools_are_shipped_and_other_files_are_left_alone(folder: str) -> None:
    """-wal, -shm, locks, corrupt copies, a non-database and another SQLite database
    are skipped and left byte for byte; the two spools are shipped."""
    for name in ("a.db", "b.db"):
        s = Spool(os.path.join(folder, name))
        s.append(make_entry(1))
        s.close()
    other = os.path.join(folder, "receiver.db")
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE received(x)")
    conn.commit()
    conn.close()
    junk = os.path.join(folder, "notes.db")
    Path(junk).write_bytes(b"not a database at all")
    Path(folder, "old.db.corrupt-20260101").write_bytes(b"x")
    before = {p: Path(p).read_bytes() for p in (other, junk)}
    with CountingCloud() as cloud:
        n = node(folder, cloud.url)
        try:
            n.turn()
            assert n.spools == [os.path.join(folder, "a.db"), os.path.join(folder, "b.db")]
        finally:
            n.close()
    assert {p: Path(p).read_bytes() for p in (other, junk)} == before
    assert not os.path.exists(other + ".ship.lock")
    assert set(find_spools(folder)) >= {other, junk}


# -- fairness --------------------------------------------------------------------------


def test_a_busy_spool_does_not_starve_a_quiet_one(folder: str) -> None:
    """With 5,000 rows waiting in one spool and 10 in another, the quiet spool's rows
    go out in the first turn, while the busy one still has 96 batches to go."""
    busy = Spool(os.path.join(folder, "busy.db"))
    busy.append_many([make_entry(i) for i in range(5000)])
    quiet = Spool(os.path.join(folder, "quiet.db"))
    quiet.append_many([make_entry(i) for i in range(10)])
    quiet_id = quiet.spool_id
    time.sleep(0.1)  # time passes on purpose: older than flush_interval, the quiet rows are due
    with CountingCloud() as cloud:
        n = node(folder, cloud.url)
        try:
            n.turn()
            waiting_busy = busy.peek(1 << 30)[0]
            sent = by_spool(cloud.event_ids())
            assert sent[quiet_id or ""] == list(range(1, 11))
            assert waiting_busy == 5000 - 50 * n.batches_per_turn == 4800
            while busy.peek(1)[0]:
                n.turn()
        finally:
            n.close()
            busy.close()
            quiet.close()
        ids = cloud.event_ids()
    assert len(ids) == len(set(ids)) == 5010


# -- gone apps ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_drained_spool_is_removed_only_after_its_writer_is_gone(folder: str) -> None:
    """A producer still running keeps its drained spool; SIGKILLed, the spool is removed
    once quiet for remove_after. A spool whose rows cannot be delivered is never removed."""
    kept = os.path.join(folder, "app-1.db")
    stuck = os.path.join(folder, "app-2.db")
    procs = [producer(kept, 30)]
    try:
        assert procs[0].stdout is not None and procs[0].stdout.readline().strip() == "done"
        s = Spool(stuck)
        s.append_many([make_entry(i) for i in range(5)])
        s.close()
        with CountingCloud() as cloud:
            n = node(folder, cloud.url, remove_after=0.3, backoff_max=0.2)
            try:

                def turns(seconds: float) -> None:
                    """Turn for ``seconds``: a window in which something must NOT happen."""
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        n.turn()
                        time.sleep(0.02)  # a turn every 20 ms, like the node's loop when idle

                assert wait_for(lambda: (n.turn(), len(by_spool(cloud.event_ids())) == 2)[1], 20)
                # Its writer closed it: removed once quiet for remove_after.
                assert wait_for(lambda: (n.turn(), n.stats.removed == [stuck])[1], 20)
                turns(1.0)  # quiet for longer than remove_after, but the producer lives
                assert os.path.exists(kept)
                assert n.stats.removed == [stuck]
                # Rows that wait are never removed, even with no writer.
                cloud.status = 503
                s = Spool(stuck)
                s.append_many([make_entry(i) for i in range(5)])
                s.close()
                turns(1.5)
                assert os.path.exists(stuck)
                procs[0].kill()
                procs[0].wait(10)
                assert wait_for(lambda: (n.turn(), not os.path.exists(kept))[1], 10)
                assert not os.path.exists(kept + "-wal")
                assert not os.path.exists(kept + ".ship.lock")
                assert os.path.exists(stuck)
            finally:
                n.close()
    finally:
        stop_all(procs)


# -- many producers, one node shipper process ---------------------------------------------


@pytest.mark.slow
def test_twenty_producers_one_node_shipper_every_entry_once_in_order(folder: str) -> None:
    """20 producer processes, 20 spools, one `ship --spool-dir` process: every entry
    arrives exactly once, each spool's in append order; SIGKILL of the node shipper
    mid-delivery and a restart lose nothing and repeat at most one batch."""
    per = 400
    with CountingCloud() as cloud:
        shipper = node_process(folder, cloud.url)
        procs = [producer(os.path.join(folder, f"app-{w:02d}.db"), per) for w in range(20)]
        try:
            # Kill the node shipper while it delivers (requests have started coming).
            assert wait_for(lambda: cloud.event_posts() >= 10, 60)
            shipper.send_signal(signal.SIGKILL)
            shipper.wait(10)
            killed_at = len(cloud.event_ids())
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "done"
            restarted = node_process(folder, cloud.url)
            try:
                assert wait_for(lambda: len(set(cloud.event_ids())) >= 20 * per, 90)
            finally:
                restarted.send_signal(signal.SIGTERM)
                assert restarted.wait(10) == 0
                stop_all([restarted])
        finally:
            stop_all([shipper, *procs])
        ids = cloud.event_ids()
    assert killed_at > 0
    assert len(set(ids)) == 20 * per
    groups = by_spool(ids)
    assert len(groups) == 20
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 50  # at most the one batch in flight at the kill
    for rows in groups.values():
        first_seen = list(dict.fromkeys(rows))
        assert first_seen == sorted(first_seen) == list(range(1, per + 1))


@pytest.mark.slow
def test_two_node_shippers_split_a_folder_without_sending_twice(folder: str) -> None:
    """Two `ship --spool-dir` processes on one folder: each spool is shipped by one of
    them (its ship lock), and every entry arrives exactly once."""
    with CountingCloud() as cloud:
        nodes = [node_process(folder, cloud.url) for _ in range(2)]
        procs = [producer(os.path.join(folder, f"app-{w}.db"), 200) for w in range(6)]
        try:
            assert wait_for(lambda: len(set(cloud.event_ids())) >= 1200, 60)
            holders = {holder_pid(os.path.join(folder, f"app-{w}.db")) for w in range(6)}
            assert holders <= {p.pid for p in nodes}
            time.sleep(0.5)  # time passes on purpose: a late duplicate would arrive in it
            for p in nodes:
                p.send_signal(signal.SIGTERM)
                assert p.wait(10) == 0
        finally:
            stop_all([*nodes, *procs])
        ids = cloud.event_ids()
    assert len(ids) == len(set(ids)) == 1200


# -- stopping ----------------------------------------------------------------------------


class _SilentCloud:
    """A Cloud that accepts connections and reads, but never answers; ``received`` is set
    once a request's first bytes have arrived."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.received = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                self.received.set()

    def close(self) -> None:
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)  # ends the reader's recv before the close
            c.close()


@pytest.mark.slow
def test_sigterm_stops_the_node_shipper_during_a_hanging_request(folder: str) -> None:
    """SIGTERM while the Cloud holds a request open: the node shipper exits well before
    the 15 s request deadline (the shared client's request is aborted)."""
    s = Spool(os.path.join(folder, "a.db"))
    s.append_many([make_entry(i) for i in range(100)])
    s.close()
    cloud = _SilentCloud()
    proc = node_process(folder, cloud.url)
    try:
        assert cloud.received.wait(30)  # a request is in flight, and will never be answered
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5.0  # the deadline (15 s) was not waited out
    finally:
        stop_all([proc])
        cloud.close()
    left = Spool(os.path.join(folder, "a.db"))
    try:
        assert left.peek(1000)[0] == 100  # nothing lost
    finally:
        left.close()


# -- status --------------------------------------------------------------------------------


def test_status_spool_dir_shows_one_line_per_spool_and_a_total(
    folder: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """status --spool-dir: a line per spool and a total; --json has the same numbers."""
    for name, n in (("a.db", 3), ("b.db", 4)):
        s = Spool(os.path.join(folder, name))
        s.append_many([make_entry(i) for i in range(n)])
        s.close()
    Path(folder, "notes.db").write_bytes(b"not a database")
    assert main(["status", "--spool-dir", folder]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["a.db", "b.db", "total"]
    assert "2 spools, waiting 7" in lines[-1]
    assert main(["status", "--spool-dir", folder, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [os.path.basename(r["path"]) for r in data["spools"]] == ["a.db", "b.db"]
    assert data["total"]["waiting"] == 7 and data["total"]["spools"] == 2


def test_ship_spool_dir_refuses_a_missing_folder_and_spool_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder that does not exist, or --spool beside --spool-dir, is one line and exit 2."""
    assert main(["status", "--spool-dir", str(tmp_path / "nope")]) == 2
    assert main(["status", "--spool-dir", str(tmp_path), "--spool", "x.db"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "not both" in err


# -- the deployment examples ---------------------------------------------------------------


def _documents() -> Iterator[tuple[str, Any]]:
    import yaml  # the dev extra's pyyaml

    files = sorted((ROOT / "examples" / "kubernetes").glob("*.yaml"))
    files.append(ROOT / "examples" / "docker-compose.yml")
    assert len(files) >= 3
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                yield f.name, doc


def _env_names(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "env" and isinstance(value, list):
                yield from (e["name"] for e in value)
            elif key == "environment" and isinstance(value, dict):
                yield from value
            else:
                yield from _env_names(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _env_names(item)


def test_deployment_examples_parse_and_use_the_variables_spooler_reads() -> None:
    """Every example is valid YAML, and every EVENT_ENGINE_CLOUD_* it sets is one
    spooler reads; the shipper runs `ship --spool-dir` on the folder the apps write."""
    docs = list(_documents())
    names = {n for _, doc in docs for n in _env_names(doc)}
    ours = {n for n in names if n.startswith("EVENT_ENGINE_CLOUD_")}
    assert ours and ours <= set(ENV_VARS.values())
    assert ENV_VARS["spool_path"] in ours and ENV_VARS["ship_in_process"] in ours
    text = json.dumps([doc for _, doc in docs])
    assert "--spool-dir" in text and "{hostname}" in text
    kinds = {doc.get("kind") for _, doc in docs}
    assert {"DaemonSet", "Deployment"} <= kinds
    compose = next(doc for name, doc in docs if name == "docker-compose.yml")
    assert len(compose["services"]) >= 3


def test_a_spool_locked_by_another_process_is_not_opened(folder: str) -> None:
    """A spool whose ship lock another holder has is left to it and tried again later."""
    path = os.path.join(folder, "a.db")
    s = Spool(path)
    s.append(make_entry(1))
    s.close()
    other = ShipperLock(path)
    other.acquire()
    try:
        with CountingCloud() as cloud:
            # rescan=0: every turn looks at the folder, so "later" is the next turn.
            n = node(folder, cloud.url, lock_retry=0.0, rescan=0.0)
            try:
                n.turn()
                assert n.spools == [] and cloud.requests == []
                other.release()
                n.turn()
                n.turn()
                assert n.spools == [path]
                assert wait_for(lambda: (n.turn(), len(cloud.event_ids()) == 1)[1], 5)
            finally:
                n.close()
    finally:
        other.release()


def test_a_failing_spool_is_parked_not_slept_on(folder: str) -> None:
    """While the Cloud answers 503, one turn tries each spool once and returns: a spool in
    backoff is parked (next try after its wait), never retried in a loop that holds the
    others. Its rows stay, and go once the Cloud is back."""
    for name in ("a.db", "b.db"):
        s = Spool(os.path.join(folder, name))
        s.append_many([make_entry(i) for i in range(60)])
        s.close()
    with CountingCloud(status=503) as cloud:
        n = node(folder, cloud.url, backoff_max=0.05)
        try:
            n.turn()
            tried = by_spool(cloud.event_ids())
            assert len(tried) == 2 and all(len(rows) == 50 for rows in tried.values())
            assert cloud.event_posts() == 2  # one try each, no retry inside the turn
            cloud.status = 200
            assert wait_for(lambda: (n.turn(), len(set(cloud.event_ids())) == 120)[1], 20)
        finally:
            n.close()
