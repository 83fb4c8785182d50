"""The ship lock: one holder per spool, never through a link, never kept by a holder
that could not record itself, never released by a forked child."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from spooler.cli import main
from spooler.errors import SpoolError, UnsafeSpoolError
from spooler.lock import ShipperLock, holder_pid, lock_path
from spooler.spool import Spool
from tests.conftest import reap

_TRY_LOCK = textwrap.dedent(
    """
    import sys
    from spooler.errors import ShipperLockedError
    from spooler.lock import ShipperLock
    lock = ShipperLock(sys.argv[1])
    try:
        lock.acquire()
    except ShipperLockedError as exc:
        print(exc.holder_pid)
        sys.exit(3)
    lock.release()
    """
)


def other_process_locks(spool_path: str) -> int:
    """Exit status of another process trying the lock: 0 it got it, 3 it was refused."""
    out = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, spool_path], capture_output=True, text=True, timeout=60
    )
    assert out.returncode in (0, 3), out.stderr
    return out.returncode


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_one_holder_at_a_time_across_processes(spool_path: str) -> None:
    """While held, another process is refused (naming our pid); after release it gets it."""
    lock = ShipperLock(spool_path)
    assert lock.path == spool_path + ".ship.lock" == lock_path(spool_path)
    lock.acquire()
    try:
        assert lock.held
        lock.acquire()  # taking it again in the holding process is a no-op
        out = subprocess.run(
            [sys.executable, "-c", _TRY_LOCK, spool_path], capture_output=True, text=True
        )
        assert out.returncode == 3 and out.stdout.strip() == str(os.getpid())
    finally:
        lock.release()
    assert not lock.held
    assert other_process_locks(spool_path) == 0


def test_holder_pid_names_the_live_holder_only(spool_path: str) -> None:
    """The pid while held; None after release, for a dead pid, or without a lock file."""
    assert holder_pid(spool_path) is None
    lock = ShipperLock(spool_path)
    lock.acquire()
    try:
        assert holder_pid(spool_path) == os.getpid()
    finally:
        lock.release()
    assert holder_pid(spool_path) is None
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(lock_path(spool_path)).write_text(f"{dead}\n")
    assert holder_pid(spool_path) is None


# -- hostile lock files ---------------------------------------------------------------------


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(
    tmp_path: Path, spool_path: str
) -> None:
    """acquire() raises UnsafeSpoolError instead of truncating what the link points at."""
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 500)
    before = digest(victim)
    os.symlink(victim, lock_path(spool_path))
    lock = ShipperLock(spool_path)
    with pytest.raises(UnsafeSpoolError, match="symbolic link"):
        lock.acquire()
    assert not lock.held
    assert digest(victim) == before


def test_holder_pid_never_reads_through_a_link(tmp_path: Path, spool_path: str) -> None:
    """A link to a file holding a live pid does not make a shipper appear to run."""
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    decoy = tmp_path / "decoy"
    decoy.write_text(f"{os.getpid()}\n")
    os.symlink(decoy, lock_path(spool_path))
    assert holder_pid(spool_path) is None


def test_status_reads_the_holder_through_holder_pid(
    tmp_path: Path, spool_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status`` reports no shipper for a linked lock file, and the real holder otherwise."""
    Spool(spool_path).close()
    decoy = tmp_path / "decoy"
    decoy.write_text(f"{os.getpid()}\n")
    os.symlink(decoy, lock_path(spool_path))
    assert main(["status", "--spool", spool_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shipper_pid"] is None
    os.remove(lock_path(spool_path))
    lock = ShipperLock(spool_path)
    lock.acquire()
    try:
        assert main(["status", "--spool", spool_path, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["shipper_pid"] == os.getpid()
    finally:
        lock.release()


def test_a_hard_linked_lock_file_is_refused(tmp_path: Path, spool_path: str) -> None:
    """A second name for the lock file would be truncated with it: refused."""
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    other = tmp_path / "other"
    other.write_bytes(b"keep me")
    os.link(other, lock_path(spool_path))
    with pytest.raises(UnsafeSpoolError, match="hard links"):
        ShipperLock(spool_path).acquire()
    assert other.read_bytes() == b"keep me"


def test_a_fifo_as_lock_file_is_refused_without_hanging(spool_path: str) -> None:
    """Not a regular file: refused at once (opened non-blocking)."""
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    os.mkfifo(lock_path(spool_path))
    with pytest.raises(UnsafeSpoolError, match="not a regular file"):
        ShipperLock(spool_path).acquire()
    assert holder_pid(spool_path) is None


def test_the_lock_refuses_a_folder_others_can_write(spool_path: str) -> None:
    """The lock file gets the spool folder's check too."""
    folder = os.path.dirname(spool_path)
    os.makedirs(folder)
    os.chmod(folder, 0o777)
    with pytest.raises(UnsafeSpoolError, match=f"chmod 700 {folder}"):
        ShipperLock(spool_path).acquire()
    assert not os.path.exists(lock_path(spool_path))


# -- failures after flock ----------------------------------------------------------------------


@pytest.mark.parametrize("call", ["pwrite", "ftruncate"])
def test_a_holder_that_cannot_record_its_pid_lets_the_lock_go(
    spool_path: str, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A failing write after flock releases the lock, closes the descriptor and raises,
    so another shipper can take over instead of exiting 3 forever."""

    def fail(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    lock = ShipperLock(spool_path)
    os.makedirs(os.path.dirname(spool_path), mode=0o700)
    fds = open_fds()
    monkeypatch.setattr(os, call, fail)
    with pytest.raises(SpoolError, match="No space left"):
        lock.acquire()
    monkeypatch.undo()
    assert not lock.held
    assert open_fds() == fds
    assert other_process_locks(spool_path) == 0


def test_a_short_pid_write_counts_as_a_failure(
    spool_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite writing fewer bytes than the pid is a failure too."""
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    lock = ShipperLock(spool_path)
    with pytest.raises(SpoolError):
        lock.acquire()
    monkeypatch.undo()
    assert other_process_locks(spool_path) == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[str]:
    """A spool path on a 64 KiB tmpfs filled to the last byte (needs mount rights)."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    point = tmp_path / "tiny"
    point.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (point / "spool").mkdir(mode=0o700)
        fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield str(point / "spool" / "spool.db")
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_on_a_full_disk_the_lock_is_let_go(full_disk: str) -> None:
    """A real ENOSPC writing the pid: the holder raises and another process can lock."""
    fds = open_fds()
    lock = ShipperLock(full_disk)
    with pytest.raises(SpoolError, match="No space left"):
        lock.acquire()
    assert not lock.held
    assert open_fds() == fds
    os.remove(os.path.join(os.path.dirname(os.path.dirname(full_disk)), "filler"))
    assert other_process_locks(full_disk) == 0


# -- fork --------------------------------------------------------------------------------------


def test_a_forked_child_never_releases_the_parents_lock(spool_path: str) -> None:
    """The child does not hold it, and its release() leaves the parent's flock alone."""
    lock = ShipperLock(spool_path)
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1 if lock.held else 0
            lock.release()
            os._exit(code)
        assert reap([pid]) == [0]
        assert lock.held
        assert other_process_locks(spool_path) == 3
    finally:
        lock.release()
    assert other_process_locks(spool_path) == 0
