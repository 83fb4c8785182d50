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
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import socket
import sqlite3
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from spooler.spoolfile import APPLICATION_ID as SPOOL_APPLICATION_ID

__all__ = [
    "EMITTED_ONLY_KEYS",
    "ENTRY_KEYS",
    "ENTRY_STATUSES",
    "REQUIRED_ENTRY_KEYS",
    "Faults",
    "Receiver",
]

logger = logging.getLogger(__name__)

#: Every key an entry may carry; anything else makes the Cloud reject the entry.
ENTRY_KEYS = frozenset(
    {
        "entry_id",
        "event_id",
        "event_name",
        "event_type",
        "event_version",
        "idempotency_key",
        "status",
        "attempts",
        "occurred_at",
        "published_at",
        "dead_lettered_at",
        "latency_ms",
        "timestamp",
        "error_class",
        "error_message",
        "aggregate_type",
        "aggregate_id",
        "aggregate_version",
    }
)
#: Keys only an emitted entry may carry.
EMITTED_ONLY_KEYS = frozenset({"aggregate_type", "aggregate_id", "aggregate_version"})
REQUIRED_ENTRY_KEYS = frozenset({"entry_id", "event_name", "status", "timestamp"})
ENTRY_STATUSES = frozenset({"emitted", "published", "dead_lettered"})

_TIME_KEYS = ("occurred_at", "published_at", "dead_lettered_at")
# Metadata, not payload: a longer string is someone smuggling data out.
_MAX_STRING = 10_000
# Bodies up to this size are read even when refused, so the connection stays usable
# and the client reads our answer instead of a reset.
_DRAIN_LIMIT = 64 << 20
_POLL_INTERVAL = 0.02  # how long stop() may wait for the accept loop
_IDLE_TIMEOUT = 60.0
_REFUSAL_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 405: {"Allow": "POST"}}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    event_name TEXT NOT NULL,
    status TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS heartbeats (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    idempotency_key TEXT,
    heartbeat TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    entries INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    gem_version TEXT,
    user_agent TEXT,
    content_type TEXT,
    authorized INTEGER NOT NULL DEFAULT 0,
    connection INTEGER,
    fault TEXT,
    note TEXT
);
"""


@dataclass(frozen=True)
class Faults:
    """Ways the receiver misbehaves on purpose; the default misbehaves in none."""

    status: int | None = None  # answer this status to a share of requests...
    rate: float = 0.0  # ...with this probability (0..1), or
    first_n: int = 0  # ...to the first n requests after these faults were set
    retry_after: str | None = None  # Retry-After header value sent with injected statuses
    delay: float = 0.0  # seconds to sleep before answering every request
    close_rate: float = 0.0  # probability of closing the connection with no answer
    max_body_bytes: int | None = None  # bodies larger than this get 413
    reject_event_names: frozenset[str] = frozenset()  # entries with these names get 422
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status}")
        for name in ("rate", "close_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.status is None and (self.rate > 0 or self.first_n > 0):
            raise ValueError("rate and first_n need a status to inject")
        if self.first_n < 0:
            raise ValueError(f"first_n must not be negative, got {self.first_n}")
        if not self.delay >= 0.0:
            raise ValueError(f"delay must not be negative, got {self.delay}")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must not be negative, got {self.max_body_bytes}")
        object.__setattr__(self, "reject_event_names", frozenset(self.reject_event_names))


class Receiver:
    """Local Cloud stand-in: validates the contract, stores what it accepts, drops duplicates."""

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
        if db_path is None:
            fd, path = tempfile.mkstemp(prefix="spooler-receiver-", suffix=".db")
            os.close(fd)
            db_path = path
        self.db_path = os.path.abspath(os.fspath(db_path))
        self._host = host
        self._port = port
        self.max_entries_per_request = max_entries_per_request
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._seen_since_faults = 0
        self._connections = 0
        self._lock = threading.Lock()  # faults, counters, the write connection
        self._state = threading.Lock()  # start / stop
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._create_schema()

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the faults at run time; ``first_n`` counts from now."""
        faults = faults or Faults()
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._seen_since_faults = 0

    @property
    def faults(self) -> Faults:
        """The faults in effect."""
        with self._lock:
            return self._faults

    # Reading what arrived

    def entry_count(self) -> int:
        """How many distinct entries are stored."""
        return int(self._query("SELECT count(*) FROM entries")[0][0])

    def entries(self) -> list[dict[str, Any]]:
        """The stored entries, in arrival order."""
        return [
            json.loads(row[0]) for row in self._query("SELECT entry FROM entries ORDER BY rowid")
        ]

    def entry_ids(self) -> list[str]:
        """The stored entry ids, in arrival order."""
        return [row[0] for row in self._query("SELECT entry_id FROM entries ORDER BY rowid")]

    def duplicate_count(self) -> int:
        """Entries received again (same entry_id) and dropped."""
        return int(self._query("SELECT coalesce(sum(duplicates), 0) FROM requests")[0][0])

    def heartbeats(self) -> list[dict[str, Any]]:
        """The stored heartbeats, oldest first."""
        return [
            json.loads(row[0])
            for row in self._query("SELECT heartbeat FROM heartbeats ORDER BY id")
        ]

    def requests(self) -> list[dict[str, Any]]:
        """Every request seen, oldest first: path, status, entries, idempotency_key, at, ..."""
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute("SELECT * FROM requests ORDER BY id")]

    # Internals

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _query(self, sql: str) -> list[Any]:
        with closing(self._connect()) as conn:
            return conn.execute(sql).fetchall()

    def _create_schema(self) -> None:
        with closing(self._connect()) as conn:
            if conn.execute("PRAGMA application_id").fetchone()[0] == SPOOL_APPLICATION_ID:
                # `receive --db .spooler/spool.db` would add the receiver's tables to a spool.
                raise ValueError(
                    f"{self.db_path} is a spooler spool, not a receiver database; "
                    "give the receiver a file of its own"
                )
            mode = conn.execute("PRAGMA journal_mode = wal").fetchone()[0]
            if mode != "wal":
                logger.debug("receiver store %s stays in %s journal mode", self.db_path, mode)
            conn.executescript(_SCHEMA)

    def _open(self) -> _Server:
        with self._state:
            if self._server is not None:
                raise RuntimeError("the receiver is already running")
            self._stopping.clear()
            conn = self._connect()
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                server = _Server((self._host, self._port), _Handler, self)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._server = server
            return server

    def _close(self) -> None:
        with self._state:
            server, self._server = self._server, None
            conn, self._conn = self._conn, None
            self._thread = None
        if server is None:
            return
        self._stopping.set()
        server.drop_connections()
        server.server_close()  # closes the socket and joins the handler threads
        if conn is not None:
            with self._lock:
                conn.close()
        logger.debug("receiver stopped")

    def _draw(self) -> tuple[Faults, bool, bool]:
        """Decide this request's faults: (faults in effect, close it, inject the status)."""
        with self._lock:
            faults = self._faults
            index = self._seen_since_faults
            self._seen_since_faults += 1
            close = faults.close_rate > 0 and self._rng.random() < faults.close_rate
            inject = faults.status is not None and (
                index < faults.first_n or (faults.rate > 0 and self._rng.random() < faults.rate)
            )
            return faults, close, inject

    def _next_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the receiver is not running")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _record(self, log: dict[str, Any], store: Callable[[sqlite3.Connection], None]) -> None:
        with self._transaction() as conn:
            store(conn)
            columns = ", ".join(log)
            marks = ", ".join("?" for _ in log)
            conn.execute(f"INSERT INTO requests ({columns}) VALUES ({marks})", tuple(log.values()))

    def _check_bearer(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Headers arrive decoded as latin-1; compare the raw bytes.
        return hmac.compare_digest(token.strip().encode("latin-1", "replace"), self._key)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its Receiver and can drop its open connections."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        receiver: Receiver,
    ) -> None:
        self.receiver = receiver
        self._open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        request, address = super().get_request()
        with self._sockets_lock:
            self._open_sockets.add(request)
        return request, address

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self._open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Unblock every handler waiting on a keep-alive connection so it can be joined."""
        with self._sockets_lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is normal here; keep it off stderr.
        logger.debug("receiver: error answering %s", client_address, exc_info=True)


class _Refused(Exception):
    """Answer the request with ``status`` and a small JSON body."""

    def __init__(self, status: int, note: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(note)
        self.status = status
        self.note = note
        self.body = body if body is not None else {"error": note}


class _Handler(BaseHTTPRequestHandler):
    """One connection; answers every request through _handle()."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the client pools connections
    timeout = _IDLE_TIMEOUT
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_version = "spooler-receiver"

    def setup(self) -> None:
        super().setup()
        self.connection_number = self.server.receiver._next_connection()

    def do_POST(self) -> None:
        self._handle()

    # Other methods get their 405 (or 404) from the same pipeline.
    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("receiver %s: " + format, self.client_address[0], *args)

    def _handle(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        headers = self.headers
        log: dict[str, Any] = {
            "at": _now(),
            "method": self.command,
            "path": path,
            "idempotency_key": headers.get("Idempotency-Key"),
            "gem_version": headers.get("X-EventEngine-Gem-Version"),
            "user_agent": headers.get("User-Agent"),
            "content_type": headers.get("Content-Type"),
            "authorized": int(receiver._check_bearer(headers.get("Authorization"))),
            "connection": self.connection_number,
        }
        faults, close, inject = receiver._draw()
        if faults.delay > 0 and receiver._stopping.wait(faults.delay):
            self.close_connection = True
            return
        body = self._read_body()
        if close:
            log.update(status=None, fault="close")
            receiver._record(log, _nothing)
            self.close_connection = True
            return
        if inject:
            assert faults.status is not None
            log.update(status=faults.status, fault=f"status {faults.status}")
            receiver._record(log, _nothing)
            extra = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            self._answer(faults.status, {"error": "injected fault"}, extra)
            return
        try:
            status, answer, store = self._accept(receiver, faults, path, body, log)
        except _Refused as refused:
            log.update(status=refused.status, note=refused.note)
            receiver._record(log, _nothing)
            extra = _REFUSAL_HEADERS.get(refused.status, {})
            self._answer(refused.status, refused.body, extra)
            return
        log["status"] = status
        receiver._record(log, store)
        self._answer(status, answer, {})

    def _accept(
        self,
        receiver: Receiver,
        faults: Faults,
        path: str,
        body: bytes | None,
        log: dict[str, Any],
    ) -> tuple[int, dict[str, Any], Callable[[sqlite3.Connection], None]]:
        """Validate one request; return (status, answer, store) or raise _Refused."""
        if path.endswith("/events"):
            kind = "events"
        elif path.endswith("/heartbeat"):
            kind = "heartbeat"
        else:
            raise _Refused(404, "unknown path")
        if self.command != "POST":
            raise _Refused(405, "method not allowed")
        if not log["authorized"]:
            raise _Refused(401, "missing or wrong bearer token")
        if body is None or (
            faults.max_body_bytes is not None and len(body) > faults.max_body_bytes
        ):
            raise _Refused(413, "body too large")
        body = _decode(body, self.headers.get("Content-Encoding"), faults.max_body_bytes)
        content_type = (log["content_type"] or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise _Refused(415, "content type must be application/json")
        if not log["gem_version"]:
            raise _Refused(400, "missing X-EventEngine-Gem-Version")
        if kind == "events" and not log["idempotency_key"]:
            raise _Refused(400, "missing Idempotency-Key")
        try:
            document = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(400, "body is not JSON") from None
        if kind == "heartbeat":
            return self._accept_heartbeat(document, log)
        return self._accept_events(receiver, faults, document, log)

    def _accept_heartbeat(
        self, document: Any, log: dict[str, Any]
    ) -> tuple[int, dict[str, Any], Callable[[sqlite3.Connection], None]]:
        if not isinstance(document, dict):
            raise _Refused(400, "heartbeat must be an object")
        if document.get("type") != "heartbeat":
            raise _Refused(422, 'heartbeat needs "type": "heartbeat"')
        for key in ("schema_fingerprints", "spool"):
            if key in document and not isinstance(document[key], dict):
                raise _Refused(422, f"heartbeat {key} must be an object")
        text = json.dumps(document, separators=(",", ":"))

        def store(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO heartbeats (received_at, idempotency_key, heartbeat) VALUES (?, ?, ?)",
                (log["at"], log["idempotency_key"], text),
            )

        return 202, {"accepted": 1}, store

    def _accept_events(
        self, receiver: Receiver, faults: Faults, document: Any, log: dict[str, Any]
    ) -> tuple[int, dict[str, Any], Callable[[sqlite3.Connection], None]]:
        if not isinstance(document, dict) or set(document) != {"entries"}:
            raise _Refused(400, 'body must be {"entries": [...]} and nothing else')
        entries = document["entries"]
        if not isinstance(entries, list) or not entries:
            raise _Refused(400, "entries must be a non-empty list")
        if len(entries) > receiver.max_entries_per_request:
            raise _Refused(400, f"more than {receiver.max_entries_per_request} entries")
        log["entries"] = len(entries)
        rejected = [
            index
            for index, entry in enumerate(entries)
            if not _valid_entry(entry, faults.reject_event_names)
        ]
        if rejected:
            raise _Refused(
                422, "invalid entries", {"error": "invalid entries", "rejected": rejected}
            )
        answer: dict[str, Any] = {"accepted": 0, "duplicates": 0}

        def store(conn: sqlite3.Connection) -> None:
            stored = 0
            for entry in entries:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO entries"
                    " (entry_id, received_at, event_name, status, entry) VALUES (?, ?, ?, ?, ?)",
                    (
                        entry["entry_id"],
                        log["at"],
                        entry["event_name"],
                        entry["status"],
                        json.dumps(entry, separators=(",", ":")),
                    ),
                )
                stored += cursor.rowcount
            answer["accepted"] = stored
            answer["duplicates"] = log["duplicates"] = len(entries) - stored

        return 202, answer, store

    def _read_body(self) -> bytes | None:
        """The request body; None when it is too large to read (the connection then closes)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # chunked bodies are not supported
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            return b""
        if length < 0:
            self.close_connection = True
            return b""
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(status, _phrase(status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            logger.debug("receiver: client went away before the answer")
            self.close_connection = True


def _decode(body: bytes, encoding: str | None, max_bytes: int | None) -> bytes:
    """The body with its Content-Encoding undone, or _Refused (415, 413 or 400)."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip"):
        raise _Refused(415, "content encoding must be gzip or none")
    limit = _DRAIN_LIMIT if max_bytes is None else max_bytes
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        inflated = inflater.decompress(body, limit + 1)  # never more than one byte past
    except zlib.error:
        raise _Refused(400, "body is not valid gzip") from None
    if len(inflated) > limit:
        raise _Refused(413, "body too large once inflated")
    if not inflater.eof or inflater.unused_data:
        raise _Refused(400, "body is not one complete gzip member")
    return inflated


def _valid_entry(entry: Any, reject_names: frozenset[str]) -> bool:
    if not isinstance(entry, dict):
        return False
    keys = set(entry)
    if not REQUIRED_ENTRY_KEYS <= keys <= ENTRY_KEYS:
        return False
    for value in entry.values():
        # Scalars only: a nested object or list would be a payload leaving the host.
        if isinstance(value, (dict, list)):
            return False
        if isinstance(value, str) and len(value) > _MAX_STRING:
            return False
    for key in ("entry_id", "event_name"):
        if not isinstance(entry[key], str) or not entry[key]:
            return False
    if entry["status"] not in ENTRY_STATUSES or entry["event_name"] in reject_names:
        return False
    timestamp = entry["timestamp"]
    if not isinstance(timestamp, str) or not timestamp.endswith("Z") or not _is_iso(timestamp):
        return False
    for key in _TIME_KEYS:
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not _is_iso(value)):
            return False
    if entry["status"] != "emitted" and keys & EMITTED_ONLY_KEYS:
        return False
    for key in ("attempts", "aggregate_version"):
        count = entry.get(key)
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            return False
    latency = entry.get("latency_ms")
    return latency is None or (
        not isinstance(latency, bool) and isinstance(latency, (int, float)) and latency >= 0
    )


def _is_iso(value: str) -> bool:
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
