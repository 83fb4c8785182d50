"""A real local ingest server: the Cloud's stand-in for development, tests and demos.

:class:`Receiver` speaks the wire contract over HTTP on a local port, rejects what
the Cloud would reject, stores what it accepts in SQLite (dropping re-sent
``entry_id`` values as duplicates), and can misbehave on purpose through
:class:`Faults`: injected statuses, Retry-After, delays, dropped connections, a
body size limit and entries it refuses.

Order of checks for one request (the first that applies answers)::

    delay -> close (no answer) -> injected status       faults, like a proxy in front
    404 path -> 405 method -> 401 bearer -> 413 size -> 415 content encoding
    -> 413 inflated size / 400 broken gzip -> 415 content type
    -> 400 headers / JSON / shape -> 422 invalid entries -> 202

A body sent with ``Content-Encoding: gzip`` is inflated first, and the size limit
(``Faults.max_body_bytes``, else 64 MiB) applies to what it inflates to as well:
inflating stops one byte past the limit, so a small gzip bomb costs no more memory
than an honest body at the limit. Other encodings get 415.

The store is meant to be read with the ``sqlite3`` CLI::

    entries(entry_id PRIMARY KEY, received_at, event_name, status, entry JSON)
    heartbeats(id, received_at, idempotency_key, heartbeat JSON)
    requests(id, at, method, path, status, entries, duplicates, idempotency_key,
             gem_version, user_agent, content_type, authorized, connection, fault, note)

Neither the API key nor the Authorization header is ever stored or logged.

This is a development tool, not part of the library a host imports to report: nothing in
spooler's reporting path imports it. Its parts live beside it: the faults in
:mod:`spooler._receiver_faults`, the contract checks in :mod:`spooler._receiver_contract`,
the store in :mod:`spooler._receiver_store`, the HTTP server and handler in
:mod:`spooler._receiver_http`; this module holds the lifecycle and the public names.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable

from spooler._receiver_contract import (
    EMITTED_ONLY_KEYS,
    ENTRY_KEYS,
    ENTRY_STATUSES,
    REQUIRED_ENTRY_KEYS,
)
from spooler._receiver_faults import FaultDice, Faults
from spooler._receiver_http import ReceiverServer
from spooler._receiver_store import ReceiverStore

__all__ = [
    "EMITTED_ONLY_KEYS",
    "ENTRY_KEYS",
    "ENTRY_STATUSES",
    "REQUIRED_ENTRY_KEYS",
    "Faults",
    "Receiver",
]

logger = logging.getLogger(__name__)

_POLL_INTERVAL = 0.02  # how long stop() may wait for the accept loop


class Receiver(ReceiverStore):
    """Local Cloud stand-in: validates the contract, stores what it accepts, drops duplicates.

    The methods that read what arrived (``entries()``, ``requests()``, ...) come from
    :class:`~spooler._receiver_store.ReceiverStore`.
    """

    def __init__(
        self,
        *,
        api_key: str,
        db_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        max_entries_per_request: int = 5000,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._key = api_key.encode("utf-8")
        super().__init__(db_path)
        self._host = host
        self._port = port
        self.max_entries_per_request = max_entries_per_request
        self._dice = FaultDice(faults)
        self._state = threading.Lock()  # start / stop
        self._stopping = threading.Event()
        self._server: ReceiverServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"Receiver({where}, db_path={self.db_path!r})"

    @property
    def url(self) -> str:
        """The base URL a client uses as its endpoint, e.g. ``http://127.0.0.1:54321``."""
        server = self._server
        if server is None:
            raise RuntimeError("the receiver is not running; call start() first")
        host, port = server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # Lifecycle

    def start(self) -> Receiver:
        """Listen and serve in a background thread (``spooler.receiver``); return self."""
        server = self._open()
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="spooler.receiver",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        logger.debug("receiver listening on %s", self.url)
        return self

    def serve_forever(self, *, on_ready: Callable[[Receiver], None] | None = None) -> None:
        """Listen and serve in this thread until stop() or KeyboardInterrupt.

        ``on_ready`` is called once the socket is bound (so ``url`` is known), e.g. to print it.
        """
        server = self._open()
        try:
            if on_ready is not None:
                on_ready(self)
            logger.debug("receiver listening on %s", self.url)
            server.serve_forever(poll_interval=_POLL_INTERVAL)
        except KeyboardInterrupt:
            logger.debug("receiver interrupted")
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, drop open connections, join the threads and close the store."""
        with self._state:
            server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in an injected delay
        server.shutdown()
        if thread is not None:
            thread.join()
        self._close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the faults at run time; ``first_n`` counts from now."""
        self._dice.set(faults)

    @property
    def faults(self) -> Faults:
        """The faults in effect."""
        return self._dice.faults

    # Internals

    def _open(self) -> ReceiverServer:
        with self._state:
            if self._server is not None:
                raise RuntimeError("the receiver is already running")
            self._stopping.clear()
            self._open_writer()
            try:
                server = ReceiverServer((self._host, self._port), self)
            except BaseException:
                self._close_writer()
                raise
            self._server = server
            return server

    def _close(self) -> None:
        with self._state:
            server, self._server = self._server, None
            self._thread = None
            self._close_writer()  # a request still in flight now fails instead of storing
        if server is None:
            return
        self._stopping.set()
        server.drop_connections()
        server.server_close()  # closes the socket and joins the handler threads
        logger.debug("receiver stopped")

    def _check_bearer(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Headers arrive decoded as latin-1; compare the raw bytes.
        return hmac.compare_digest(token.strip().encode("latin-1", "replace"), self._key)
