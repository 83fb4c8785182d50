"""Logging spooler does for itself: quiet when healthy, loud (and bounded) when not.

* :class:`Throttle` lets a recurring WARNING through once, then at most once per
  interval, so an outage of hours costs a handful of lines, not one per retry.
* :func:`keep_out_of_host_logs` filters the records httpx, httpcore and watchfiles
  emit *because of spooler* (from spooler's own threads) out of the host's logs,
  while the host's own use of those libraries logs as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Throttle", "keep_out_of_host_logs"]

#: Loggers whose records from spooler's threads never reach the host's handlers.
THIRD_PARTY = ("httpx", "httpcore.connection", "httpcore.http11", "watchfiles.main")


class Throttle:
    """True the first time a key is seen, then at most once per ``interval`` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True

    def forget(self, key: str) -> None:
        """Let the next call with ``key`` through again (the trouble ended)."""
        with self._lock:
            self._last.pop(key, None)


class _FromSpoolerThreads(logging.Filter):
    """Drops records logged on a thread spooler started (their names begin "spooler.")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith("spooler.")


_FILTER = _FromSpoolerThreads()


def keep_out_of_host_logs() -> None:
    """Install the filter on the third-party loggers spooler drives (idempotent)."""
    for name in THIRD_PARTY:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
