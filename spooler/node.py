"""One shipper per node: deliver every spool in a folder (``spooler ship --spool-dir``).

Apps in short-lived containers each write their own spool into one shared host
folder (``spool_path`` with ``{hostname}`` or ``{pid}``, see
:func:`expand_spool_path`); one :class:`NodeShipper` per node ships them all,
like a log agent run as a DaemonSet.

* Each spool keeps its own :class:`~spooler.shipper.Shipper` (order, counters,
  heartbeat, last error) and its own ship lock. Two node shippers may share a
  folder: each takes the locks it can and tries the others again every
  ``lock_retry`` seconds.
* One :class:`~spooler.client.CloudClient` (one keep-alive pool) serves all of
  them, one request at a time; SIGTERM aborts the request in flight.
* Fair turns: each turn gives every spool that is due at most a few batches
  (``batches_per_turn``, 4), so a
  busy spool cannot starve a quiet one. A spool whose batch failed for now is
  parked for its backoff (never slept on) while the others go on.
* A spool whose app is gone is drained and then removed (see :meth:`NodeShipper`
  ``_retire`` and README "One shipper per node" for exactly when).

Why one file of a little over 500 lines: the turn scheduler, the parking of a
failing spool and the removal of a drained one share the table of served spools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spooler._threads import repeat, start_thread
from spooler.errors import ConfigError, ShipperLockedError, SpoolError
from spooler.lock import ShipperLock, lock_path
from spooler.spool import Spool, SpoolBatch
from spooler.spoolfile import APPLICATION_ID

if TYPE_CHECKING:
    from spooler.client import CloudClient
    from spooler.config import Config
    from spooler.shipper import Shipper

__all__ = ["NodeShipper", "expand_spool_path", "find_spools"]

logger = logging.getLogger(__name__)

RESCAN_INTERVAL = 1.0  # seconds between looks at the folder (and the polling fallback)
# Batches one spool may send per turn: a few, so the per-cycle chores (a checkpoint
# after each delivery) are shared, yet a quiet spool waits for at most this many
# batches of each busy one.
BATCHES_PER_TURN = 4
LOCK_RETRY = 5.0  # seconds before trying again a spool another shipper holds
REMOVE_AFTER = 300.0  # seconds a drained spool must stay untouched before it is removed
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SPOOL_TABLES = frozenset({"entries", "counters", "meta"})


def expand_spool_path(template: str) -> str:
    """``template`` with ``{hostname}`` and ``{pid}`` replaced by this process's values.

    The host name is made safe as one file name part (anything but letters, digits,
    ``.``, ``_`` and ``-`` becomes ``_``). Any other ``{...}`` raises
    :class:`~spooler.errors.ConfigError`; a path without braces is returned unchanged.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "hostname":
            host = _UNSAFE.sub("_", socket.gethostname()).strip(".") or "host"
            return host
        if name == "pid":
            return str(os.getpid())
        raise ConfigError(
            "spool_path",
            f"unknown placeholder {{{name}}} in {template!r}; use {{hostname}} or {{pid}}",
        )

    if "{" not in template and "}" not in template:
        return template
    expanded = _PLACEHOLDER.sub(value, template)
    if "{" in expanded or "}" in expanded:
        raise ConfigError("spool_path", f"unbalanced braces in {template!r}")
    return expanded


def _is_candidate(path: str) -> bool:
    """A ``*.db`` regular file of this user with one link and some content."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_nlink == 1
        and st.st_size > 0
    )


def find_spools(folder: str) -> list[str]:
    """The spool candidates in ``folder``: ``*.db`` files (not -wal, -shm, locks or
    ``*.corrupt-*``), sorted; whether each is a spool is checked before it is opened."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    paths = [os.path.join(folder, n) for n in names if n.endswith(".db") and not n.startswith(".")]
    return sorted(p for p in paths if _is_candidate(p))


def identify(path: str) -> str | None:
    """None when ``path`` is a spooler spool, else why not (read-only through SQLite;
    this process never opens the file itself, see README "Locks and descriptors")."""
    mode = "mode=ro" if os.path.exists(path + "-wal") else "immutable=1"
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?{mode}", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        return f"cannot open it ({exc})"
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return None
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        return f"not a spool ({exc})"
    finally:
        conn.close()
    if app_id == 0 and tables >= _SPOOL_TABLES:
        return None  # a spool from before application_id
    return "an SQLite database that is not a spool"


class _TurnSpool(Spool):
    """A spool that hands out at most ``budget`` fresh batches; the node sets it before
    each turn, so one cycle of the Shipper sends at most that many batches. Re-reads of a
    batch being retried (``last_id`` given) are not fresh and always answered."""

    budget: int = 1 << 62

    def read_body(
        self, limit: int, *, after_id: int = 0, last_id: int | None = None
    ) -> SpoolBatch | None:
        if last_id is not None:
            return super().read_body(limit, after_id=after_id, last_id=last_id)
        if self.budget <= 0:
            return None
        batch = super().read_body(limit, after_id=after_id)
        if batch is not None:
            self.budget -= 1
        return batch


class _Parked(Exception):
    """A batch failed for now: the shipper asked to sleep ``seconds`` before retrying."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _park(seconds: float) -> None:
    # The per-spool Shipper's backoff sleep: instead of sleeping (which would hold
    # every other spool), end this spool's turn; the node comes back after the wait.
    raise _Parked(seconds)


@dataclass
class _Served:
    """One spool this node ships: its shipper and when to look at it next."""

    path: str
    shipper: Shipper
    spool: _TurnSpool
    next_at: float = 0.0
    failures: int = 0
    fingerprint: tuple[Any, ...] = ()
    quiet_since: float = 0.0
    turns: int = 0


@dataclass
class _Skipped:
    """A path this node does not ship now (locked by another, not a spool)."""

    retry_at: float
    reason: str = ""
    logged: bool = False


@dataclass
class NodeStats:
    """What the node did, for tests and the benchmark."""

    adopted: int = 0
    removed: list[str] = field(default_factory=list)


class NodeShipper:
    """Ships every spool in ``folder`` through one shared Cloud client, fairly."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        client: CloudClient | None = None,
        remove_after: float = REMOVE_AFTER,
        lock_retry: float = LOCK_RETRY,
        rescan: float = RESCAN_INTERVAL,
        backoff_max: float | None = None,
        batches_per_turn: int = BATCHES_PER_TURN,
        watch: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from spooler.client import CloudClient
        from spooler.config import Config
        from spooler.shipper import BACKOFF_MAX

        self.folder = os.path.abspath(os.fspath(folder))
        self._environ = environ
        self._overrides = dict(overrides or {})
        # The node's own config (a spool path inside the folder): key, endpoint, sizes.
        self.config: Config = Config.from_env(
            environ, **{**self._overrides, "spool_path": os.path.join(self.folder, "node.db")}
        )
        if not self.config.api_key:
            raise ConfigError("api_key", "is not set; the node shipper has nothing to send with")
        self.client = client or CloudClient(
            api_key=self.config.api_key, endpoint=self.config.endpoint
        )
        self.remove_after = remove_after
        self.lock_retry = lock_retry
        self.rescan = rescan
        self.backoff_max = BACKOFF_MAX if backoff_max is None else backoff_max
        self.batches_per_turn = max(1, batches_per_turn)
        self._clock = clock
        self._watch = watch
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._served: dict[str, _Served] = {}
        self._skipped: dict[str, _Skipped] = {}
        self._next_scan = 0.0
        self._turn = 0
        self.stats = NodeStats()
        self.watching = False

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Ship until :meth:`request_stop`, then let every spool and the client go."""
        if self._watch:
            start_thread(self._watch_folder, "spooler.node.watch")
        try:
            repeat(
                self._stop,
                self.turn,
                self._idle,
                logger=logger,
                what="spooler node shipper turn",
            )
        finally:
            self.close()

    def _idle(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
            self._wake.clear()

    def request_stop(self) -> None:
        """End the loop now (safe from a signal handler); a request in flight is cut."""
        self._stop.set()
        self._wake.set()
        for served in list(self._served.values()):
            served.shipper.request_stop()
        self.client.abort()

    def close(self) -> None:
        """Release every ship lock, close every spool and the shared client."""
        for served in list(self._served.values()):
            self._let_go(served)
        self._served.clear()
        self.client.close()

    @property
    def spools(self) -> list[str]:
        """The spools this node ships now."""
        return sorted(self._served)

    # -- one turn ----------------------------------------------------------------

    def turn(self) -> float:
        """Look at the folder if due, give every due spool one batch; returns seconds
        until something falls due (at most the rescan interval)."""
        now = self._clock()
        if now >= self._next_scan:
            self._scan(now)
            self._next_scan = now + self.rescan
        paths = sorted(self._served)
        if paths:
            # Start each turn one spool further on, so no spool always goes first.
            start = self._turn % len(paths)
            paths = paths[start:] + paths[:start]
        self._turn += 1
        for path in paths:
            if self._stop.is_set():
                break
            served = self._served.get(path)
            if served is not None and self._clock() >= served.next_at:
                self._serve(served)
        now = self._clock()
        soonest = min((s.next_at for s in self._served.values()), default=now + self.rescan)
        return max(0.0, min(soonest - now, self._next_scan - now, self.rescan))

    def _serve(self, served: _Served) -> None:
        shipper, spool = served.shipper, served.spool
        spool.budget = self.batches_per_turn
        served.turns += 1
        try:
            wait = shipper.tick()
        except _Parked as parked:
            served.failures += 1
            window = min(self.backoff_max, 0.5 * 2**served.failures)
            wait = max(parked.seconds, random.uniform(0, window))
        except Exception:
            logger.exception("spooler node: delivering %s failed; trying again later", served.path)
            wait = 1.0
        else:
            served.failures = 0
            if spool.budget == 0:
                wait = 0.0  # its turn's batches went: there may be more, next turn
            else:
                self._maybe_retire(served)
        served.next_at = self._clock() + min(wait, self.rescan)

    # -- finding spools ----------------------------------------------------------

    def _scan(self, now: float) -> None:
        present = set(find_spools(self.folder))
        for path in list(self._served):
            if path not in present and not os.path.exists(path):
                # Moved aside (damaged) or removed by someone else: let it go.
                self._let_go(self._served.pop(path))
        for path in sorted(present - set(self._served)):
            skipped = self._skipped.get(path)
            if skipped is not None and now < skipped.retry_at:
                continue
            self._adopt(path, now)
        for path in list(self._skipped):
            if path not in present:
                del self._skipped[path]

    def _adopt(self, path: str, now: float) -> None:
        from spooler.config import Config
        from spooler.shipper import SHIPPER_BUSY_TIMEOUT, Shipper

        why = identify(path)
        if why is not None:
            self._skip(path, now + 60.0, f"{path} is {why}; left alone", logging.WARNING)
            return
        lock = ShipperLock(path)
        try:
            lock.acquire()
        except ShipperLockedError:
            self._skip(path, now + self.lock_retry, f"{path} is shipped by another process")
            return
        except SpoolError as exc:
            self._skip(path, now + 60.0, f"not shipping {path}: {exc}", logging.WARNING)
            return
        try:
            if not os.path.exists(path):  # removed since we looked: never create it
                lock.release()
                return
            config = Config.from_env(self._environ, **{**self._overrides, "spool_path": path})
            spool = _TurnSpool(
                path, max_bytes=config.spool_max_bytes, busy_timeout=SHIPPER_BUSY_TIMEOUT
            )
            shipper = Shipper(
                config,
                spool=spool,
                client=self.client,
                sleep=_park,
                watch=False,
                backoff_max=self.backoff_max,
                clock=self._clock,
            )
            shipper.lock = lock  # taken above: a second flock in this process would fail
        except Exception as exc:
            lock.release()
            self._skip(path, now + 60.0, f"not shipping {path}: {exc}", logging.WARNING)
            return
        self._skipped.pop(path, None)
        served = _Served(path, shipper, spool, next_at=now, quiet_since=now)
        self._served[path] = served
        self.stats.adopted += 1
        logger.info("shipping %s", path)

    def _skip(self, path: str, retry_at: float, reason: str, level: int = logging.DEBUG) -> None:
        old = self._skipped.get(path)
        skipped = _Skipped(retry_at, reason, logged=old is not None and old.reason == reason)
        if not skipped.logged:
            logger.log(level, "%s", reason)
            skipped.logged = True
        self._skipped[path] = skipped

    def _let_go(self, served: _Served) -> None:
        with contextlib.suppress(Exception):
            served.shipper.lock.release()
        with contextlib.suppress(Exception):
            served.spool.close()

    # -- spools whose app is gone ------------------------------------------------

    def _fingerprint(self, served: _Served) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name in (served.path, served.path + "-wal"):
            try:
                st = os.stat(name)
                parts.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                parts.append(None)
        parts.append(served.spool.changes()[0])  # another connection committed
        return tuple(parts)

    def _maybe_retire(self, served: _Served) -> None:
        """Remove a spool whose app is gone: see README "One shipper per node"."""
        now = self._clock()
        fingerprint = self._fingerprint(served)
        if fingerprint != served.fingerprint:
            served.fingerprint = fingerprint
            served.quiet_since = now
            return
        if now - served.quiet_since < self.remove_after or served.failures:
            return
        if served.spool.peek(1)[0]:
            return  # rows wait: never
        self._retire(served)

    def _retire(self, served: _Served) -> None:
        path = served.path
        del self._served[path]
        # Our connection is closed first; SQLite's last connection to a WAL database
        # checkpoints and deletes the -wal and -shm on close. If they are still there,
        # another process has the spool open: a writer lives, keep it.
        served.spool.close()
        if os.path.exists(path + "-wal") or os.path.exists(path + "-shm"):
            logger.debug("%s is drained but still open in another process; kept", path)
            served.shipper.lock.release()
            self._skipped[path] = _Skipped(self._clock() + self.lock_retry)
            return
        # Renamed before unlinking: an app that opened the name just now would have
        # created the -wal and -shm by the name, and gets its file back.
        aside = os.path.join(self.folder, f".{os.path.basename(path)}.removing")
        try:
            os.rename(path, aside)
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc)
            served.shipper.lock.release()
            return
        if os.path.exists(path + "-wal") or os.path.exists(path + "-shm"):
            if not os.path.exists(path):
                os.rename(aside, path)
            logger.info("%s was opened again while being removed; kept", path)
            served.shipper.lock.release()
            return
        os.unlink(aside)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(path))
        served.shipper.lock.release()
        self.stats.removed.append(path)
        logger.info(
            "removed %s: drained, and no app had it open for %.0f s", path, self.remove_after
        )

    # -- waking ------------------------------------------------------------------

    def _watch_folder(self) -> None:
        try:
            import watchfiles
        except ImportError:  # pragma: no cover - a declared dependency
            return
        try:
            for changes in watchfiles.watch(
                self.folder,
                debounce=20,
                step=10,
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
                rust_timeout=1000,
                yield_on_timeout=True,
            ):
                self.watching = True
                woken = False
                for _change, changed in changes:
                    base = changed.removesuffix("-wal")
                    served = self._served.get(base)
                    if served is not None:
                        served.next_at = 0.0
                        woken = True
                    elif changed.endswith(".db"):
                        self._next_scan = 0.0
                        woken = True
                if woken:
                    self._wake.set()
        except Exception as exc:
            logger.info("cannot watch %s (%s); polling instead", self.folder, type(exc).__name__)
        finally:
            self.watching = False
