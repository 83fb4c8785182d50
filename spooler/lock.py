"""The ship lock: one shipper per spool file, an ``flock`` on ``<spool>.ship.lock``.

The holder writes its pid into the file so ``status`` and a refused shipper
can name it; :func:`holder_pid` is the one place that reads it back. The lock
file gets the spool's own care: it is opened with ``O_NOFOLLOW`` in a folder
no other user can write to, and must be a regular file of this user with one
link, so a planted link or hard link can never make spooler truncate another
file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import weakref

from spooler.errors import ShipperLockedError, SpoolError
from spooler.spoolfile import ensure_folder, require_own_file

__all__ = ["ShipperLock", "holder_pid", "lock_path"]


def lock_path(spool_path: str) -> str:
    """The ship lock's file for the spool at ``spool_path``."""
    return spool_path + ".ship.lock"


class ShipperLock:
    """An exclusive, non-blocking ``flock`` on ``<spool>.ship.lock``.

    The kernel drops it when the holder dies (even by SIGKILL), so another
    process can take over at once.
    """

    def __init__(self, spool_path: str) -> None:
        self.path = lock_path(spool_path)
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> None:
        """Take the lock or raise :class:`ShipperLockedError` naming the holder.

        Raises :class:`~spooler.errors.UnsafeSpoolError` for a link or a file
        that is not this user's, and :class:`~spooler.errors.SpoolError` when
        the holder's pid cannot be written (the lock is let go first).
        """
        if self.held:
            # flock conflicts between two descriptors of one process: a second
            # open+flock here would refuse our own lock (``ship`` takes it, then run()).
            return
        ensure_folder(os.path.dirname(self.path))
        fd = _open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ShipperLockedError(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            _write_pid(fd, os.getpid())
        except BaseException as exc:
            # A holder that cannot say who it is must not keep the lock: it would
            # ship nothing and turn every other shipper away.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
            if isinstance(exc, OSError):
                raise SpoolError(
                    f"could not record this shipper in {self.path}: {exc.strerror or exc}; "
                    "let the lock go"
                ) from exc
            raise
        self._fd = fd
        self._pid = os.getpid()
        _held_locks.add(self)

    def release(self) -> None:
        """Let another shipper take over."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        # In a forked child only close our copy: an explicit unlock would
        # release the parent's lock, since both share one open file.
        with contextlib.suppress(OSError):
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None and self._pid == os.getpid()

    def _drop_after_fork(self) -> None:
        if self._fd is not None and self._pid != os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def holder_pid(spool_path: str) -> int | None:
    """The pid of the process shipping the spool at ``spool_path``, if it still runs.

    Read from the ship lock; None when there is no lock file, no pid in it, the
    pid is gone, or the lock file is a link (never read through) or not a
    regular file. A pid since reused by an unrelated process is reported as is.
    """
    try:
        fd = os.open(lock_path(spool_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        # Reading another user's lock is harmless (``sudo spooler status``).
        pid = _read_pid(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def _open(path: str, flags: int) -> int:
    """Open the lock file without following a link (O_NONBLOCK: a FIFO cannot hang us)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            require_own_file(path, os.lstat(path))  # raises UnsafeSpoolError for the link
        raise
    try:
        require_own_file(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        pid = int(os.pread(fd, 32, 0).decode("ascii").strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _write_pid(fd: int, pid: int) -> None:
    data = f"{pid}\n".encode("ascii")
    os.ftruncate(fd, 0)
    if os.pwrite(fd, data, 0) != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_held_locks: weakref.WeakSet[ShipperLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_held_locks):
        lock._drop_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
