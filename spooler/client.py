"""The Cloud API over httpx: send entries and heartbeats, classify every answer.

One :class:`CloudClient` holds one pooled ``httpx.Client`` for its whole life, so
consecutive batches reuse a keep-alive connection. Every call either returns
(2xx) or raises a :class:`~spooler.errors.DeliveryError` subclass the shipper can
act on::

    2xx                         return
    408, 429, 5xx               TransientDeliveryError(status=, retry_after=)
    connection errors, timeouts TransientDeliveryError(status=None)
    deadline passed, abort()    TransientDeliveryError(status=None)
    413                         PayloadTooLargeError    split the batch
    400, 422                    RejectedError           bisect the batch
    401, 403                    AuthError               stop; the key is wrong or revoked
    anything else (3xx, 4xx)    PermanentDeliveryError

A Cloud that misbehaves cannot hold the shipper:

* **Deadline.** httpx's timeouts are per operation, so a server sending one byte
  every few seconds never trips them. Each request therefore also has a total
  ``deadline`` (connect, send, headers and body together, default 15 s). One
  watchdog thread per client, started by the first request, shuts down the
  socket of a request that passes it; the request then raises
  TransientDeliveryError naming the deadline.
* **Bounded answers.** The answer is streamed and at most ``max_response_bytes``
  of its body are read (and thrown away: only the status and headers matter).
  A longer body, or one declared longer by Content-Length, is not drained: the
  connection is dropped and the next request opens a new one.
* **2xx means taken.** Once the status line and headers have arrived, the status
  decides. A 2xx whose body is too long, too slow, cut at the deadline or by
  :meth:`CloudClient.abort`, or broken off counts as accepted: the Cloud said it
  took the batch, and sending it again would only make a duplicate. Headers that
  never complete are a TransientDeliveryError at the deadline.
* **Abort.** :meth:`CloudClient.abort` shuts down every socket the client has
  open, which wakes a ``recv``/``send`` blocked on it in any thread. It takes no
  lock, so it is safe in a signal handler running on the very thread that is
  blocked in the request. The pool throws the dead connections away and the
  next request connects afresh.

Limits: a name lookup (``getaddrinfo``) cannot be interrupted, and a TCP connect
has no socket to shut down before it completes; both are bounded by the connect
timeout (at most the deadline), and a request cut meanwhile fails as soon as the
connection is up.

Messages and log lines name the method, the path and the status only: never the
API key, a request body or an entry. httpx's own exceptions are not chained (they
hold the request, headers included), only their class name is kept.

Why one file of about 590 lines: the deadline watchdog and the bounded read only
make sense beside the requests they cut, and the classification table below is
the contract the shipper acts on.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import platform
import re
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx

from spooler._threads import start_thread
from spooler._version import __version__
from spooler.config import check_proxy
from spooler.errors import (
    AuthError,
    ConfigError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RejectedError,
    TransientDeliveryError,
)

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_AFTER",
    "CloudClient",
    "classify",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
#: Seconds one request may take in all (connect, send, headers, body).
DEFAULT_DEADLINE = 15.0
#: Bytes of an answer's body read at most; the Cloud's answers are a few bytes of JSON.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
#: The longest Retry-After we honour; a misconfigured proxy must not park the shipper for a day.
MAX_RETRY_AFTER = 300.0

_TRANSIENT_STATUSES = frozenset({408, 429})
_DELTA_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
# Visible ASCII only: anything else would either break the header or end up in an
# encoding error message that quotes it.
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")
# httpcore trace events whose return value is the new network stream of a connection
# (plain TCP, then the TLS stream wrapped around it; proxies use other prefixes).
_STREAM_EVENTS = ("connect_tcp.complete", "connect_unix_socket.complete", "start_tls.complete")
_ABORTED = "aborted"
_DEADLINE = "deadline"


class CloudClient:
    """The Cloud API over one pooled httpx.Client (keep-alive), each request within a deadline.

    Nothing is opened before the first request: no socket, no thread, no file
    (not even the CA bundle).

    Like every httpx client it honours ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` (``trust_env``). ``proxy``
    (``http(s)://[user:password@]host:port``) replaces the environment's proxies for
    every request; ``ca_bundle`` (a PEM file) replaces the trusted CAs for an https
    endpoint, e.g. with a private CA or a TLS-inspecting proxy's. ``compress`` gzips
    request bodies (``Content-Encoding: gzip``).
    """

    def __init__(
        self,
        *,
        api_key: str,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retry_after: float = MAX_RETRY_AFTER,
        transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        compress: bool = False,
    ) -> None:
        if not isinstance(api_key, str) or not _KEY_CHARS.match(api_key):
            raise ConfigError("api_key", "must be a non-empty string of visible ASCII characters")
        if not (isinstance(deadline, (int, float)) and deadline > 0 and math.isfinite(deadline)):
            raise ConfigError("deadline", "must be a positive number of seconds")
        if not isinstance(max_response_bytes, int) or max_response_bytes < 0:
            raise ConfigError("max_response_bytes", "must be a whole number of bytes, at least 0")
        self._endpoint = endpoint.rstrip("/")
        self._proxy = check_proxy(proxy or None)
        self._ca_bundle = os.fspath(ca_bundle) if ca_bundle is not None else None
        self._compress = bool(compress)
        self._max_retry_after = max_retry_after
        self._deadline = float(deadline)
        self._max_response_bytes = max_response_bytes
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "X-EventEngine-Gem-Version": __version__,
            "User-Agent": user_agent(),
        }
        # The connect phase has no socket to shut down until it completes, so it must
        # not outlast the deadline by itself; nor may waiting for a pooled connection.
        self._timeout = httpx.Timeout(
            timeout, connect=min(timeout, self._deadline), pool=self._deadline
        )
        self._transport = transport
        self._client: httpx.Client | None = None
        self._in_flight: _InFlight | None = None
        self._closed = False
        self._open_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CloudClient(endpoint={self._endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL requests go to, without a trailing slash."""
        return self._endpoint

    @property
    def deadline(self) -> float:
        """Seconds one request may take in all before it is abandoned."""
        return self._deadline

    def send_entries(self, entries: Sequence[Mapping[str, Any]], *, idempotency_key: str) -> None:
        """POST ``{"entries": [...]}`` to ``/events``; raise a DeliveryError unless it was taken.

        The same ``idempotency_key`` must be sent again when the same batch is retried.
        """
        if not entries:
            raise ValueError("entries must not be empty")
        if not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        body = _encode({"entries": [dict(entry) for entry in entries]})
        self._post("/events", body, idempotency_key, count=len(entries))

    def send_entries_json(self, body: bytes, *, count: int, idempotency_key: str) -> None:
        """POST an already encoded ``{"entries": [...]}`` body of ``count`` entries.

        The shipper builds it from the spool's JSON text without parsing it again.
        """
        if not body or count < 1:
            raise ValueError("body must hold at least one entry")
        if not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        self._post("/events", body, idempotency_key, count=count)

    def send_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        """POST one heartbeat object to ``/heartbeat`` under a fresh idempotency key."""
        self._post("/heartbeat", _encode(dict(heartbeat)), str(uuid.uuid4()), count=0)

    def abort(self) -> None:
        """Interrupt every request in flight now; it raises TransientDeliveryError.

        Safe from any thread and from a signal handler, including one that runs on
        the thread blocked in the request: it takes no lock, logs nothing and only
        shuts down this client's sockets. Idle pooled connections are cut too, so
        the next request connects afresh; requests started after ``abort()``
        returns are not affected. A request whose 2xx status already arrived still
        returns as accepted. Does nothing before the first request or after close.
        """
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.abort()

    def close(self) -> None:
        """Close the pooled connections and stop the watchdog; the client cannot send afterwards."""
        with self._open_lock:
            self._closed = True
            client, self._client = self._client, None
            in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.close()
        if client is not None:
            client.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> tuple[httpx.Client, _InFlight]:
        client, in_flight = self._client, self._in_flight
        if client is not None and in_flight is not None:
            return client, in_flight
        with self._open_lock:
            if self._closed:
                raise RuntimeError("the CloudClient is closed")
            if self._client is None or self._in_flight is None:
                self._in_flight = _InFlight(self._deadline)
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                    transport=self._transport,
                    proxy=self._proxy,
                    trust_env=True,
                    verify=self._verify(),
                )
            return self._client, self._in_flight

    def _verify(self) -> ssl.SSLContext | bool:
        """What httpx checks certificates with: the CA bundle, httpx's default, or nothing."""
        tls_proxy = self._proxy is not None and self._proxy.lower().startswith("https:")
        if not self._endpoint.startswith("https:") and not tls_proxy:
            # Plain http (loopback only, see Config) has no certificate to check:
            # skip loading the CA bundle (tens of ms at start).
            return False
        if self._ca_bundle is not None:
            return ssl.create_default_context(cafile=self._ca_bundle)
        return True  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR (httpx's trust_env)

    def _post(self, path: str, body: bytes, idempotency_key: str, *, count: int) -> None:
        client, in_flight = self._open()
        headers = {"Idempotency-Key": idempotency_key}
        if self._compress:
            # mtime=0: the same batch compresses to the same bytes when it is retried.
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        started = time.monotonic()
        flight = in_flight.begin()
        failure: str | None = None
        status = 0
        try:
            request = client.build_request(
                "POST",
                self._endpoint + path,
                content=body,
                headers=headers,
                extensions={"trace": flight.trace},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as exc:
                # Keep the class name only, and raise outside this block so neither
                # __cause__ nor __context__ holds httpx's exception (and its request).
                failure = type(exc).__name__
            else:
                status = response.status_code
                flight.add_stream(response.extensions.get("network_stream"))
                unread = self._read_bounded(response, flight)
                if unread is not None:
                    logger.debug(
                        "POST %s answered %d; rest of the body not read (%s), connection dropped",
                        path,
                        status,
                        unread,
                    )
        finally:
            in_flight.end(flight)
        elapsed_ms = (time.monotonic() - started) * 1000
        if failure is not None:
            where = httpx.URL(self._endpoint + path).path
            if flight.cut == _ABORTED:
                message = f"POST {where} aborted"
            elif flight.cut == _DEADLINE:
                message = f"POST {where} abandoned at the {self._deadline:g} s deadline"
            else:
                message = f"POST {where} failed: {failure}"
            logger.debug("%s after %.0f ms (%s)", message, elapsed_ms, failure)
            raise TransientDeliveryError(message, status=None)
        logger.debug("POST %s (%d entries) answered %d in %.0f ms", path, count, status, elapsed_ms)
        classify(response, max_retry_after=self._max_retry_after)

    def _read_bounded(self, response: httpx.Response, flight: _Flight) -> str | None:
        """Read and discard the body up to the bound; why the rest was left, or None.

        Reading a short body to its end is what lets the connection go back to the
        pool. Anything cut short closes the connection instead of draining it.
        """
        limit = self._max_response_bytes
        if response.is_stream_consumed:  # a transport that answers with the body in memory
            return None
        try:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return f"Content-Length over {limit} bytes"
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > limit:
                    return f"over {limit} bytes"
                if flight.cut is not None:
                    return flight.cut
                if time.monotonic() >= flight.deadline:
                    return _DEADLINE
            return None
        except httpx.HTTPError as exc:
            return flight.cut or type(exc).__name__
        finally:
            with contextlib.suppress(httpx.HTTPError):  # closing only drops the connection
                response.close()


class _Flight:
    """One request in progress: its deadline, the sockets it is known to use, why it was cut."""

    __slots__ = ("cut", "deadline", "in_flight", "sockets")

    def __init__(self, in_flight: _InFlight, deadline: float) -> None:
        self.in_flight = in_flight
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.cut: str | None = None

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's per-request ``trace`` extension: note each new connection's socket."""
        if event.endswith(_STREAM_EVENTS):
            self.add_stream(info.get("return_value"))

    def add_stream(self, stream: object) -> None:
        """Note the socket under an httpcore network stream (nothing if there is none)."""
        try:
            sock = stream.get_extra_info("socket")  # type: ignore[attr-defined]
        except Exception:  # another transport (MockTransport) or a stream already gone
            return
        if isinstance(sock, socket.socket):
            self.in_flight.add_socket(self, sock)


class _InFlight:
    """A client's requests in flight, the sockets its connections use, and one watchdog thread.

    Registration takes a lock and publishes new tuples; :meth:`abort` only reads
    the current tuples and never blocks, which is what makes it safe in a signal
    handler that interrupted a thread holding the lock.
    """

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._pid = os.getpid()
        self._wakeup = threading.Condition()
        self._flights: tuple[_Flight, ...] = ()
        self._sockets: tuple[weakref.ref[socket.socket], ...] = ()
        self._thread: threading.Thread | None = None
        self._idle = False
        self._closed = False

    def begin(self) -> _Flight:
        """Register a request starting now; the watchdog cuts it at the deadline."""
        if self._pid != os.getpid():
            self._after_fork()
        flight = _Flight(self, time.monotonic() + self._deadline)
        with self._wakeup:
            self._flights = (*self._flights, flight)
            if self._thread is None or not self._thread.is_alive():
                # None at interpreter shutdown (3.12+): the request then has the
                # per-read timeouts and the bounded body read, not the total deadline.
                self._thread = start_thread(self._watch, "spooler.client.deadline")
            elif self._idle:
                # Every deadline is the same length, so a newer flight never falls due
                # before one the watchdog already sleeps towards: only an idle one needs waking.
                self._wakeup.notify()
        return flight

    def end(self, flight: _Flight) -> None:
        """The request is over, however it ended."""
        with self._wakeup:
            self._flights = tuple(f for f in self._flights if f is not flight)

    def add_socket(self, flight: _Flight, sock: socket.socket) -> None:
        """Remember ``sock`` as used by ``flight`` (and by this client until it is closed)."""
        with self._wakeup:
            if not any(s is sock for s in flight.sockets):
                flight.sockets.append(sock)
            alive = [ref for ref in self._sockets if _is_open(ref())]
            if not any(ref() is sock for ref in alive):
                alive.append(weakref.ref(sock))
            self._sockets = tuple(alive)
        # Written after the socket is published, read before abort() reads the sockets:
        # a flight cut while its connection was being set up is cut here.
        if flight.cut is not None:
            _shut_down(sock)

    def abort(self) -> None:
        """Cut every request in flight and every connection; lock-free (see the class)."""
        if self._pid != os.getpid():
            return  # what is registered belongs to the parent process (see _after_fork)
        for flight in self._flights:
            if flight.cut is None:
                flight.cut = _ABORTED
        for ref in self._sockets:
            sock = ref()
            if sock is not None:
                _shut_down(sock)

    def close(self) -> None:
        """Stop the watchdog thread."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    def _watch(self) -> None:
        with self._wakeup:
            while not self._closed:
                now = time.monotonic()
                waiting = [f for f in self._flights if f.cut is None]
                due = [f for f in waiting if f.deadline <= now]
                for flight in due:
                    self._cut_at_deadline(flight)
                if due:
                    continue
                self._idle = not waiting
                self._wakeup.wait(min(f.deadline for f in waiting) - now if waiting else None)
                self._idle = False

    def _cut_at_deadline(self, flight: _Flight) -> None:
        flight.cut = _DEADLINE
        targets = list(flight.sockets)
        if not targets:
            # A reused keep-alive connection is not announced by a trace event before
            # its answer arrives. Cut every connection no other request is known to
            # use: in the shipper's one-request-at-a-time use that is this one (and
            # idle ones, which the pool then replaces).
            claimed = {id(s) for f in self._flights if f is not flight for s in f.sockets}
            targets = [s for ref in self._sockets if (s := ref()) is not None]
            targets = [s for s in targets if id(s) not in claimed]
        for sock in targets:
            _shut_down(sock)

    def _after_fork(self) -> None:
        # The parent's lock may have been held at the fork, its watchdog thread does not
        # exist here, and shutting down an inherited socket would cut the parent's
        # connection too (shutdown acts on the shared socket, not on this descriptor).
        self._wakeup = threading.Condition()
        self._flights = ()
        self._sockets = ()
        self._thread = None
        self._idle = False
        self._pid = os.getpid()


def _is_open(sock: socket.socket | None) -> bool:
    # A closed socket, or the plain one a TLS socket took over (detached), has fileno -1.
    return sock is not None and sock.fileno() >= 0


def _shut_down(sock: socket.socket) -> None:
    """Wake whatever is blocked on ``sock``: reads see end of file, writes fail.

    The plain socket method on purpose, for TLS sockets too: ``SSLSocket.shutdown``
    would also drop its SSL object under a thread that may be reading through it.
    Shutting down the descriptor under the TLS layer makes a blocked ``SSL_read``
    see end of file, which httpcore reports as a ReadError. The socket is left for
    its owner to close, so its descriptor cannot be reused under anyone's feet.
    """
    with contextlib.suppress(OSError):  # closed, not connected yet, or detached by TLS
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def user_agent() -> str:
    """The User-Agent spooler sends, e.g. ``spooler/0.1.0 (Python 3.11.7)``."""
    return f"spooler/{__version__} (Python {platform.python_version()})"


def classify(response: httpx.Response, *, max_retry_after: float = MAX_RETRY_AFTER) -> None:
    """Return on 2xx; otherwise raise the DeliveryError subclass the status calls for."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"{_describe(response)} answered {status}"
    if status in _TRANSIENT_STATUSES or 500 <= status < 600:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), cap=max_retry_after)
        raise TransientDeliveryError(message, status=status, retry_after=retry_after)
    if status == 413:
        raise PayloadTooLargeError(message, status=status)
    if status in (400, 422):
        raise RejectedError(message, status=status)
    if status in (401, 403):
        raise AuthError(message, status=status)
    raise PermanentDeliveryError(message, status=status)


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date).

    ``None`` when the header is absent or unreadable; never negative; at most ``cap``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.match(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:  # Python < 3.10 returned None instead of raising
            return None
        if when.tzinfo is None:  # "-0000" zone: UTC by RFC 5322
            when = when.replace(tzinfo=timezone.utc)
        current = now if now is not None else datetime.now(timezone.utc)
        if current.tzinfo is None:
            current = current.replace(tzinfo=timezone.utc)
        seconds = (when - current).total_seconds()
    return max(0.0, min(seconds, cap))


def _describe(response: httpx.Response) -> str:
    # Method and path only: the query string and host are left out on purpose.
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand has no request
        return "request"
    return f"{request.method} {request.url.path}"


def _encode(document: Any) -> bytes:
    # allow_nan=False: NaN is not JSON and the Cloud would answer 400 for the whole batch.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
