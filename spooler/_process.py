"""This process's id without a system call on the hot path.

Spooler checks "am I still the process that opened this?" on every call from the
host: a SQLite connection or a lock must never be used on both sides of a fork.
``os.getpid()`` is a system call (glibc stopped caching it): 0.34 us on this
project's VM, three times per immediate-mode call. Python's at-fork hooks are not
enough to cache it, because some servers fork from C without running them (uWSGI
without ``enable-threads``).

So the pid is cached beside one private anonymous page marked
``MADV_WIPEONFORK`` (Linux 4.14+): the kernel hands any child, however it was
forked, that page filled with zeros. A non-zero byte there means the cached pid
is still this process's; a zero means a fork happened, and the pid is asked
again. Where the advice does not exist (other systems, older kernels),
:func:`this_pid` is ``os.getpid()``.
"""

from __future__ import annotations

import mmap
import os
import sys

__all__ = ["this_pid"]


def _armed_page() -> mmap.mmap | None:
    # The constant is Linux's (uapi/asm-generic/mman-common.h); some Python builds lack it.
    advice = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)
    if advice is None:
        return None
    try:
        page = mmap.mmap(
            -1,
            mmap.PAGESIZE,
            flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20),
        )
        page.madvise(advice)
    except (OSError, ValueError):
        return None
    page[0] = 1
    return page


_page = _armed_page()
_pid = os.getpid()


def this_pid() -> int:
    """``os.getpid()``, answered from memory until the process forks (see the module)."""
    page = _page
    if page is not None and page[0]:
        return _pid
    return _renew()


def _renew() -> int:
    global _pid
    pid = os.getpid()
    if _page is not None:
        # No lock: one held by another thread at a fork would never be released in
        # the child. Threads renewing at once write the same values, the pid first,
        # so whoever sees the page armed also sees the new pid.
        _pid = pid
        _page[0] = 1  # the child keeps the advice: armed again for its own children
    return pid
