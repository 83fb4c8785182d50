"""Hostile and damaged files at the spool's path: links, foreign databases, open folders,
and a WAL damaged after a hard exit. spooler refuses what it did not create, leaving it
byte-for-byte unchanged, and counts what SQLite's recovery silently dropped."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spooler.errors import SpoolError, UnsafeSpoolError
from spooler.spool import Spool
from spooler.spoolfile import APPLICATION_ID, open_spool

from .conftest import make_entry

NOBODY = 65534


def digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def open_and_write(spool_path: str) -> None:
    """What a host does: open the spool and append (today's code writes through links)."""
    s = Spool(spool_path)
    try:
        s.append(make_entry(1))
    finally:
        s.close()


def host_db(path: Path) -> None:
    """A host application's own database, the kind a misplaced link points at."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    con.executemany("INSERT INTO orders(total) VALUES (?)", [(i,) for i in range(50)])
    con.commit()
    con.close()


@pytest.fixture
def folder(spool_path: str) -> Path:
    """The spool's folder, made the way spooler makes it (0700)."""
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    return Path(os.path.dirname(spool_path))


# -- links ---------------------------------------------------------------------------


def test_a_spool_path_linked_to_a_host_database_is_refused_and_the_database_untouched(
    tmp_path: Path, folder: Path, spool_path: str
) -> None:
    """spool.db -> app.db raises UnsafeSpoolError; app.db gains no table, no WAL, no -wal/-shm."""
    app = tmp_path / "app.db"
    host_db(app)
    before = digest(app)
    os.symlink(app, spool_path)
    with pytest.raises(UnsafeSpoolError, match="symbolic link"):
        open_and_write(spool_path)
    assert digest(app) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("app.db")) == ["app.db"]


def test_a_spool_path_linked_to_an_empty_file_does_not_turn_it_into_a_database(
    tmp_path: Path, folder: Path, spool_path: str
) -> None:
    """spool.db -> an empty file: refused, the file stays empty."""
    target = tmp_path / "empty"
    target.touch()
    os.symlink(target, spool_path)
    with pytest.raises(UnsafeSpoolError):
        open_and_write(spool_path)
    assert target.stat().st_size == 0


def test_a_dangling_spool_link_does_not_create_its_target(
    tmp_path: Path, folder: Path, spool_path: str
) -> None:
    """spool.db -> a missing file: refused, the target is not created."""
    target = tmp_path / "elsewhere.db"
    os.symlink(target, spool_path)
    with pytest.raises(UnsafeSpoolError):
        open_and_write(spool_path)
    assert not target.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-spool", "existing-spool"])
def test_companion_files_planted_as_links_are_refused(
    tmp_path: Path, folder: Path, spool_path: str, suffix: str, existing: bool
) -> None:
    """A -wal, -shm or -journal someone pre-created as a link is never written through."""
    if existing:
        open_and_write(spool_path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(spool_path + suffix)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious bytes " * 1000)
    before = digest(victim)
    os.symlink(victim, spool_path + suffix)
    with pytest.raises(UnsafeSpoolError, match=suffix):
        open_and_write(spool_path)
    assert digest(victim) == before


def test_a_hard_linked_spool_is_refused_not_moved_aside(
    tmp_path: Path, folder: Path, spool_path: str
) -> None:
    """A spool file with a second name elsewhere is refused (writing would change the
    other name too), even when it is not a database: it is not moved aside either."""
    other = tmp_path / "other-name"
    other.write_bytes(b"not a database at all" * 100)
    os.link(other, spool_path)
    before = digest(other)
    with pytest.raises(UnsafeSpoolError, match="hard links"):
        open_and_write(spool_path)
    assert digest(spool_path) == before
    assert not [n for n in os.listdir(folder) if ".corrupt-" in n]


def test_a_file_of_another_user_is_refused_not_moved_aside(folder: Path, spool_path: str) -> None:
    """Garbage at the spool path that belongs to another user is not spooler's to move."""
    Path(spool_path).write_bytes(b"someone else's notes" * 100)
    os.chown(spool_path, NOBODY, NOBODY)
    before = digest(spool_path)
    with pytest.raises(UnsafeSpoolError, match=f"uid {NOBODY}"):
        open_and_write(spool_path)
    assert digest(spool_path) == before
    assert os.listdir(folder) == ["spool.db"]


def test_a_fifo_at_the_spool_path_is_refused_without_hanging(folder: Path, spool_path: str) -> None:
    """A named pipe is not a regular file: refused at once, never opened for reading."""
    os.mkfifo(spool_path)
    with pytest.raises(UnsafeSpoolError, match="not a regular file"):
        open_and_write(spool_path)


# -- databases that are not spools -------------------------------------------------------


def test_a_database_of_the_host_at_the_spool_path_is_refused_untouched(
    folder: Path, spool_path: str
) -> None:
    """A real file holding user_version 0 and tables of its own gains no table."""
    host_db(Path(spool_path))
    before = digest(spool_path)
    with pytest.raises(UnsafeSpoolError, match=r"not a spool.*orders"):
        open_and_write(spool_path)
    assert digest(spool_path) == before
    assert os.listdir(folder) == ["spool.db"]


def test_a_database_with_another_application_id_is_refused_untouched(
    folder: Path, spool_path: str
) -> None:
    """Another application's id is refused even when its tables look like a spool's."""
    Spool(spool_path).close()
    con = sqlite3.connect(spool_path)
    con.execute("PRAGMA application_id = 0x12345678")
    con.close()
    before = digest(spool_path)
    with pytest.raises(UnsafeSpoolError, match="0x12345678"):
        open_and_write(spool_path)
    assert digest(spool_path) == before


def test_a_foreign_wal_mode_database_is_refused_without_leaving_files_beside_it(
    folder: Path, spool_path: str
) -> None:
    """Looking at a closed WAL-mode database creates no -wal or -shm next to it."""
    host_db(Path(spool_path))
    con = sqlite3.connect(spool_path)
    con.execute("PRAGMA journal_mode = WAL")
    con.close()
    before = digest(spool_path)
    with pytest.raises(UnsafeSpoolError):
        open_and_write(spool_path)
    assert digest(spool_path) == before
    assert os.listdir(folder) == ["spool.db"]


def test_a_spool_from_before_application_id_is_kept_and_stamped(spool_path: str) -> None:
    """An older spool (application_id 0, user_version 1, spool tables) opens with its rows."""
    with Spool(spool_path) as s:
        s.append(make_entry(1))
    con = sqlite3.connect(spool_path)
    con.execute("PRAGMA application_id = 0")
    con.close()
    with Spool(spool_path) as s:
        assert [r.entry["event_id"] for r in s.read_batch(10)] == [1]
    con = sqlite3.connect(spool_path)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        con.close()


def test_a_spool_in_a_folder_reached_through_a_link_opens(tmp_path: Path) -> None:
    """A link among the folder's ancestors is the user's choice, not an attack."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "via").symlink_to(real)
    with Spool(tmp_path / "via" / "spool.db") as s:
        assert s.append(make_entry(1))
    assert (real / "spool.db").is_file()


# -- folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=["0777", "0770", "0702"])
def test_a_folder_other_users_can_write_is_refused_and_left_as_is(
    folder: Path, spool_path: str, mode: int
) -> None:
    """The error names the folder, its mode and ``chmod 700``; spooler changes nothing."""
    os.chmod(folder, mode)
    with pytest.raises(UnsafeSpoolError) as info:
        open_and_write(spool_path)
    message = str(info.value)
    assert str(folder) in message and f"{mode:04o}" in message
    assert f"chmod 700 {folder}" in message
    assert info.value.path == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == mode
    assert os.listdir(folder) == []


def test_a_sticky_shared_folder_like_tmp_is_refused(folder: Path, spool_path: str) -> None:
    """/tmp-like folders (1777): others can pre-create the spool's names; use a folder of
    its own."""
    os.chmod(folder, 0o1777)
    with pytest.raises(UnsafeSpoolError, match="folder of its own"):
        open_and_write(spool_path)
    assert os.listdir(folder) == []


def test_a_folder_of_another_user_is_refused(folder: Path, spool_path: str) -> None:
    """Its owner could swap the spool for a link at any time."""
    os.chown(folder, NOBODY, NOBODY)
    os.chmod(folder, 0o755)
    with pytest.raises(UnsafeSpoolError, match=f"uid {NOBODY}"):
        open_and_write(spool_path)


def test_a_private_existing_folder_is_used_as_is(folder: Path, spool_path: str) -> None:
    """0755 of this user is fine (nobody else can write there) and is not chmodded."""
    os.chmod(folder, 0o755)
    open_and_write(spool_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


# -- a WAL damaged after a hard exit ---------------------------------------------------------

_WRITE_THEN_DIE = textwrap.dedent(
    """
    import os, sys
    from spooler.spoolfile import open_db
    path, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn, _ = open_db(path, wal_pages=1000, busy_timeout=1.0, check=False)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    sql = "INSERT INTO entries(kind, created_at, entry) VALUES ('emitted', 'now', ?)"
    def insert(i):
        conn.execute(sql, ('{"event_id": %d, "pad": "%s"}' % (i, "x" * 200),))
    for i in range(n):
        insert(i)
    if how == "restart":
        # Everything checkpointed, then a few more commits: the WAL restarts from its
        # start with new salts and the older frames stay behind the new end.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        for i in range(n, n + 3):
            insert(i)
    elif how == "uncommitted":
        # A big transaction spills pages into the WAL, then the process dies before COMMIT.
        conn.execute("PRAGMA cache_size = 2")
        conn.execute("BEGIN")
        for i in range(n, n + 2000):
            insert(i)
    os._exit(0)
    """
)


def write_then_die(spool_path: str, n: int, how: str = "plain") -> None:
    """Commit ``n`` rows one by one with checkpoints off, then leave by os._exit."""
    out = subprocess.run(
        [sys.executable, "-c", _WRITE_THEN_DIE, spool_path, str(n), how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert os.path.getsize(spool_path + "-wal") > 0


def wal_frames(spool_path: str) -> tuple[int, int]:
    """(page size, frames) of the spool's WAL."""
    wal = spool_path + "-wal"
    page_size = struct.unpack(">I", Path(wal).read_bytes()[8:12])[0]
    return page_size, (os.path.getsize(wal) - 32) // (page_size + 24)


def flip(path: str, offset: int, n: int) -> None:
    """Invert ``n`` bytes at ``offset``: guaranteed different from what was there."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def reopen(spool_path: str) -> tuple[int, int, int]:
    """open_spool(check=True): (lost it reported, entries still there, the lost counter)."""
    opened = open_spool(spool_path, wal_pages=1000, busy_timeout=1.0, check=True)
    try:
        count = opened.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        row = opened.conn.execute("SELECT value FROM counters WHERE name = 'lost'").fetchone()
    finally:
        opened.conn.close()
    return opened.lost, count, row[0] if row else 0


def test_committed_rows_dropped_from_a_damaged_wal_are_counted_logged_and_never_reused(
    spool_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes overwritten mid-WAL after a hard exit: SQLite keeps only the frames before them.
    The rest is added to ``lost``, logged once as an ERROR, and the next id is above them."""
    write_then_die(spool_path, 1100)
    page_size, frames = wal_frames(spool_path)
    middle = 32 + (frames // 2) * (page_size + 24) + 24 + page_size // 2
    flip(spool_path + "-wal", middle, 16)
    with caplog.at_level(logging.ERROR, logger="spooler.spool"):
        lost, kept, counter = reopen(spool_path)
    assert 0 < kept < 1100
    assert lost == counter == 1100 - kept
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert spool_path in errors[0] and f"{lost} entries" in errors[0] and ".recover" in errors[0]
    with Spool(spool_path, check=False) as s:
        s.append(make_entry(1))
        assert [r.id for r in s.read_batch(2000)][-1] == 1101
        c = s.stats().counters
    # appended = shipped + evicted + dead_lettered + lost + waiting
    assert c["appended"] == 1101 == c["lost"] + kept + 1


def test_a_clean_wal_left_by_a_hard_exit_reports_nothing_lost(
    spool_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every committed row is recovered and no loss is claimed."""
    write_then_die(spool_path, 300)
    with caplog.at_level(logging.WARNING, logger="spooler.spool"):
        assert reopen(spool_path) == (0, 300, 0)
    assert not caplog.records


def test_a_wal_reused_after_a_restart_reports_nothing_lost(spool_path: str) -> None:
    """Older frames (older salts) behind the valid end of a restarted WAL are not losses."""
    write_then_die(spool_path, 400, "restart")
    assert wal_frames(spool_path)[1] > 100  # the old frames are still there
    assert reopen(spool_path) == (0, 403, 0)


def test_an_uncommitted_transaction_in_the_wal_is_not_a_loss(spool_path: str) -> None:
    """Pages a transaction spilled before the process died were never committed."""
    write_then_die(spool_path, 100, "uncommitted")
    assert reopen(spool_path) == (0, 100, 0)


def test_a_commit_frame_torn_at_the_end_of_the_wal_is_not_a_loss(spool_path: str) -> None:
    """A kill between a commit frame's header and its page leaves a frame whose checksum
    fails: that transaction never committed, so nothing is counted."""
    write_then_die(spool_path, 50)
    page_size, frames = wal_frames(spool_path)
    last_page = 32 + (frames - 1) * (page_size + 24) + 24
    with open(spool_path + "-wal", "r+b") as f:
        f.seek(last_page)
        f.write(b"\0" * page_size)
    assert reopen(spool_path) == (0, 49, 0)


def test_open_db_still_returns_the_connection_and_spool_id(spool_path: str) -> None:
    """The tuple callers unpack today."""
    from spooler.spoolfile import open_db

    conn, spool_id = open_db(spool_path, wal_pages=100, busy_timeout=0.1, check=True)
    try:
        assert isinstance(spool_id, str) and len(spool_id) == 32
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        conn.close()


def test_unsafe_spool_errors_are_spool_errors() -> None:
    """Callers catching SpoolError also catch refusals."""
    assert issubclass(UnsafeSpoolError, SpoolError)


_WRITE_FOREVER = textwrap.dedent(
    """
    import sys
    from spooler.spoolfile import open_db
    conn, _ = open_db(sys.argv[1], wal_pages=1000, busy_timeout=1.0, check=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA wal_autocheckpoint = 1000")  # spooler's own checkpoints are not here
    sql = "INSERT INTO entries(kind, created_at, entry) VALUES ('emitted', 'now', ?)"
    print("ready", flush=True)
    i = 0
    while True:
        conn.execute(sql, ('{"event_id": %d, "pad": "%s"}' % (i, "x" * 200),))
        i += 1
    """
)


@pytest.mark.slow
def test_checks_while_another_process_commits_or_is_killed_claim_no_loss(spool_path: str) -> None:
    """A live writer's commits are never mistaken for lost frames, nor is a writer
    killed mid-commit (SIGKILL) while its WAL is checked afterwards."""
    for _ in range(3):
        with subprocess.Popen(
            [sys.executable, "-c", _WRITE_FOREVER, spool_path], stdout=subprocess.PIPE, text=True
        ) as writer:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            try:
                for _ in range(20):
                    opened = open_spool(spool_path, wal_pages=1000, busy_timeout=1.0, check=True)
                    opened.conn.close()
                    assert (opened.lost, opened.lost_transactions) == (0, 0)
            finally:
                writer.kill()
        opened = open_spool(spool_path, wal_pages=1000, busy_timeout=1.0, check=True)
        opened.conn.close()
        assert (opened.lost, opened.lost_transactions) == (0, 0)
