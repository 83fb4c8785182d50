"""The shipper's checkpoints, run on a thread of their own while it goes on sending.

A checkpoint copies the WAL into the database file and fsyncs it: 30-40 ms per 4 MiB
on a small VM, mostly waiting for the disk. Run inline after an acknowledgement, the
checkpoints took a third of a drain's wall time at batch 500. On this thread, with its
own connection (and fence), they overlap the shipper's requests: the shipper reads and
sends the next batches meanwhile and holds their acknowledgements back (see
``Shipper._send_batches``) until the write lock is free again.
"""

from __future__ import annotations

import logging
import threading

from spooler._process import this_pid
from spooler._threads import start_thread
from spooler.spool import Spool

logger = logging.getLogger("spooler")

__all__ = ["Checkpointer"]

_JOIN_WAIT = 1.0  # seconds close() waits for a checkpoint under way (shutdown is bounded)


class Checkpointer:
    """Runs ``Spool.checkpoint`` for the spool at ``path`` on a daemon thread, on request.

    The thread and its connection exist only once a checkpoint was asked for. ``running``
    is True from a request until the checkpoint it asked for is over: the shipper holds
    acknowledgements back while it is. Never raises into the caller.
    """

    def __init__(self, path: str, *, max_bytes: int, busy_timeout: float) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._busy_timeout = busy_timeout
        self._spool: Spool | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = this_pid()
        #: A checkpoint was asked for and is not over yet.
        self.running = False
        #: Checkpoints this thread ran (for tests and debugging).
        self.runs = 0

    def request(self) -> bool:
        """Ask for a checkpoint now; False when no thread can run it (do it inline)."""
        if self._pid != this_pid():
            self._after_fork()
        if self._closed:
            return False
        thread = self._thread
        if thread is None or not thread.is_alive():
            thread = self._thread = start_thread(self._run, "spooler.checkpoint")
            if thread is None:  # interpreter shutdown (3.12+)
                return False
        self.running = True  # before the wake-up: the next acknowledgement waits at once
        self._wake.set()
        return True

    def close(self) -> None:
        """Stop the thread (waiting for a checkpoint under way) and close its connection."""
        if self._pid != this_pid():
            self._after_fork()
            self._closed = True
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_WAIT)
            if thread.is_alive():
                # Still waiting for the disk: its connection stays with it (a daemon
                # thread), and closes with the process.
                logger.debug("background checkpoint still running at close")
                return
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                self.running = False
                return
            try:
                if self._spool is None:
                    self._spool = Spool(
                        self._path,
                        max_bytes=self._max_bytes,
                        busy_timeout=self._busy_timeout,
                        check=False,
                    )
                self._spool.checkpoint(timeout=self._busy_timeout)
                self.runs += 1
            except Exception as exc:  # the shipper's next maintain() checkpoints inline
                logger.debug("background checkpoint failed: %s", exc)
            finally:
                if not self._wake.is_set():
                    self.running = False

    def _after_fork(self) -> None:
        # The parent's thread does not exist here; its connection is the parent's
        # (Spool parks it on first use in this process).
        self._pid = this_pid()
        self._wake = threading.Event()
        self._thread = None
        self.running = False
