"""Starting spooler's background threads the same way everywhere.

Each thread is a named daemon that blocks SIGTERM and SIGINT for itself, so the
kernel hands those signals to a thread that can act on them (the host's main
thread, or ``spooler ship``'s): a signal delivered to a spooler thread would
wait until the main thread's blocking call returns on its own. Python 3.12
refuses new threads while the interpreter shuts down; then None is returned and
the caller does without.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

__all__ = ["repeat", "start_thread"]

_QUIET = {signal.SIGTERM, signal.SIGINT}


def start_thread(target: Callable[[], object], name: str) -> threading.Thread | None:
    """Start ``target`` in a daemon thread called ``name``; None if no thread may start.

    The thread is created with SIGTERM and SIGINT already blocked: the creating thread
    blocks them around ``start()`` (a new thread inherits its creator's mask) and then
    puts its own mask back. Blocking them from inside the new thread left a window, until
    that thread first held the GIL, in which the kernel could hand it a signal that only
    the main thread can act on.
    """
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _QUIET)
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask on this platform
        previous = None
    try:
        thread.start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        return None
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


def repeat(
    stop: threading.Event,
    step: Callable[[], float],
    idle: Callable[[float], object],
    *,
    logger: logging.Logger,
    what: str,
) -> None:
    """Run ``step`` until ``stop`` is set, idling for the seconds it returns.

    A step that raises is logged (with its traceback, as ``"<what> failed;
    continuing"``) and retried after a second: a background loop never dies of
    one bad turn.
    """
    while not stop.is_set():
        try:
            wait = step()
        except Exception:
            logger.exception("%s failed; continuing", what)
            wait = 1.0
        if not stop.is_set():
            idle(wait)
