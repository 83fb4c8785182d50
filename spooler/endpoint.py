"""The secure payload fetch endpoint: the Cloud dashboard reads one event's payload from the host.

Payloads never sit in the Cloud. When someone opens an event in the dashboard, their browser
asks the customer's own app for it: ``GET <mount>/events/<id>`` with
``Authorization: Bearer <api key>``, answered with ``{"id", "event_name", "payload", "metadata"}``.

:class:`PayloadEndpoint` is the framework-neutral core, ``(method, path, headers, remote_addr) ->
Response``; :func:`asgi_app` and :func:`wsgi_app` wrap it, and the framework integrations mount
those. Every request goes through these steps, in this order:

1. ``OPTIONS`` is a CORS preflight: 204, with CORS headers only for an allowed dashboard origin.
2. Any method but ``GET`` (and ``OPTIONS``): 405 with ``Allow: GET, OPTIONS``.
3. A client address locked out for failing authentication: 429 with ``Retry-After``.
4. Bearer authentication, compared in constant time: 401 with ``WWW-Authenticate: Bearer`` and
   one body whatever the reason. More than ``max_failures`` failures within ``failure_window``
   seconds lock the address out for ``lockout`` seconds (that failure already gets the 429).
5. The path must be ``/events/<id>`` with a valid id, else 404; the lookup never sees it.
6. ``lookup(id)``: ``None`` is 404; an exception or a non-mapping result is a generic 500.

Ids come in two forms. A decimal integer without leading zeros that fits a signed 64-bit
integer (``0`` to ``9223372036854775807``) reaches the lookup as ``int``; a hyphenated UUID, in
either case, reaches it as the lowercase canonical ``str``. Anything else is 404, including a
trailing slash. Only ``event_name``, ``payload`` and ``metadata`` are read from the lookup's
mapping; the ``id`` in the answer is the request's validated id.

Values JSON cannot carry are encoded, never fatal: datetimes, dates and times as ISO 8601,
decimals and UUIDs as strings, sets as lists (sorted when their items allow), enums by value,
bytes as UTF-8 text when they decode and otherwise as ``{"$base64": "..."}``, NaN and the
infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, non-string keys as strings,
a container that holds itself as ``"[circular]"``, nesting deeper than 100 as ``"[too deep]"``,
and anything else through ``str()``.

Every answer carries ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff`` and
``Vary: Origin``. ``Access-Control-Allow-Credentials`` is never sent: the dashboard sends the key
in the ``Authorization`` header, which needs no credentialed (cookie) request. Log lines name the
client address, the event id and exception class names; never the key, a payload or metadata.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import decimal
import enum
import hashlib
import hmac
import http
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import Any

from spooler.config import DEFAULT_DASHBOARD_ORIGIN, Config, check_origins
from spooler.errors import ConfigError

__all__ = ["FailureTracker", "PayloadEndpoint", "Response", "asgi_app", "wsgi_app"]

logger = logging.getLogger(__name__)

Lookup = Callable[[int | str], Mapping[str, Any] | None]

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Coroutine[Any, Any, None]]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ALLOWED_METHODS = "GET, OPTIONS"
PREFLIGHT_MAX_AGE = 600
MAX_TRACKED_CLIENTS = 10_000
_MAX_INT_ID = (1 << 63) - 1
_MAX_DEPTH = 100
# A client that sends a body to a GET-only endpoint is read up to this much, so closing the
# connection with unread bytes does not reset it before the client sees our 405.
_MAX_DRAIN_BYTES = 64 << 10

_PATH = re.compile(r"/events/([^/]+)")
_INT_ID = re.compile(r"0|[1-9][0-9]{0,18}")
_UUID_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE | re.ASCII
)
_TOKEN = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([^\s]+)")

_BASE_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Vary", "Origin"),
)


@dataclasses.dataclass(frozen=True)
class Response:
    """One answer: status code, header pairs in order, and the body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class PayloadEndpoint:
    """The framework-neutral core: (method, path, headers, remote_addr) -> Response."""

    def __init__(
        self,
        *,
        api_key: str,
        lookup: Lookup,
        allowed_origins: Sequence[str] = (DEFAULT_DASHBOARD_ORIGIN,),
        max_failures: int = 10,
        failure_window: float = 60.0,
        lockout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError("api_key", "the payload endpoint needs a non-empty API key")
        if not callable(lookup):
            raise TypeError("lookup must be callable: lookup(event_id) -> mapping | None")
        if not isinstance(allowed_origins, str):
            allowed_origins = tuple(allowed_origins)
        # The configuration's own check: explicit http(s) origins, normalised.
        origins = {origin: origin for origin in check_origins(allowed_origins)}
        if max_failures < 1 or max_clients < 1:
            raise ValueError("max_failures and max_clients must be at least 1")
        # Digests have one length whatever the key, so the comparison reveals not even that.
        self._key_digest = hashlib.sha256(api_key.strip().encode("utf-8")).digest()
        self._lookup = lookup
        self._origins = origins
        self._failures = FailureTracker(max_failures, failure_window, lockout, clock, max_clients)

    @property
    def failures(self) -> FailureTracker:
        """Failed authentications per client address, and the lockouts they caused."""
        return self._failures

    @classmethod
    def from_config(cls, config: Config, lookup: Lookup) -> PayloadEndpoint:
        """Build from a :class:`~spooler.config.Config`; ConfigError unless turned on with a key."""
        if not config.payload_endpoint:
            raise ConfigError("payload_endpoint", "is off; set it to true to serve payloads")
        if not config.api_key:
            raise ConfigError("payload_endpoint", "is on but api_key is not set")
        return cls(api_key=config.api_key, lookup=lookup, allowed_origins=config.dashboard_origins)

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """The normalised dashboard origins that get CORS headers."""
        return tuple(self._origins)

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], remote_addr: str | None
    ) -> Response:
        """Answer one request; ``path`` is relative to the mount and excludes the query string."""
        lowered = {k.lower(): v for k, v in headers.items()}
        cors = self._cors_headers(lowered.get("origin"))
        client = remote_addr or "unknown"
        if method == "OPTIONS":
            if cors:
                cors += (
                    ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                    ("Access-Control-Allow-Headers", "Authorization"),
                    ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE)),
                )
            return _answer(204, None, (("Allow", ALLOWED_METHODS), *cors))
        if method != "GET":
            refused = (("Allow", ALLOWED_METHODS), *cors)
            return _answer(405, {"error": "method_not_allowed"}, refused)
        retry_after = self._failures.locked_for(client)
        if retry_after is None and not self._authenticated(lowered.get("authorization")):
            retry_after = self._failures.fail(client)
            if retry_after is None:
                logger.info("payload endpoint: failed authentication from %s", client)
                return _answer(
                    401, {"error": "unauthorized"}, (("WWW-Authenticate", "Bearer"), *cors)
                )
        if retry_after is not None:
            limited = (("Retry-After", str(retry_after)), *cors)
            return _answer(429, {"error": "too_many_requests"}, limited)
        self._failures.succeed(client)
        event_id = _parse_path(path)
        if event_id is None:
            return _answer(404, {"error": "not_found"}, cors)
        return self._fetch(event_id, cors)

    def _authenticated(self, authorization: str | None) -> bool:
        match = _TOKEN.fullmatch(authorization or "")
        token = _header_bytes(match.group(1)) if match else b""
        # Always compare, also for a missing header, so every failure costs the same time.
        ok = hmac.compare_digest(hashlib.sha256(token).digest(), self._key_digest)
        return ok and match is not None

    def _cors_headers(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        allowed = self._origins.get(origin.strip().lower()) if origin else None
        if allowed is None:
            return ()
        return (
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Expose-Headers", "Retry-After"),
        )

    def _fetch(self, event_id: int | str, cors: tuple[tuple[str, str], ...]) -> Response:
        try:
            found = self._lookup(event_id)
        except Exception as exc:
            # The class name only: a message or traceback could quote the payload.
            logger.error("payload endpoint: lookup(%r) raised %s", event_id, type(exc).__name__)
            return _answer(500, {"error": "internal_error"}, cors)
        if found is None:
            return _answer(404, {"error": "not_found"}, cors)
        if not isinstance(found, Mapping):
            logger.error(
                "payload endpoint: lookup(%r) returned %s, not a mapping",
                event_id,
                type(found).__name__,
            )
            return _answer(500, {"error": "internal_error"}, cors)
        try:
            event = {
                "id": event_id,
                "event_name": _jsonable(found.get("event_name")),
                "payload": _jsonable(found.get("payload")),
                "metadata": _jsonable(found.get("metadata")),
            }
            body = json.dumps(event, allow_nan=False, separators=(",", ":")).encode("ascii")
        except Exception as exc:
            logger.error("payload endpoint: encoding %r raised %s", event_id, type(exc).__name__)
            return _answer(500, {"error": "internal_error"}, cors)
        return Response(200, (*_BASE_HEADERS, ("Content-Type", "application/json"), *cors), body)


class FailureTracker:
    """Failed authentications per client address, with lockouts; thread-safe, LRU-bounded."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        lockout: float,
        clock: Callable[[], float],
        max_clients: int,
    ) -> None:
        self._max_failures = max_failures
        self._window = window
        self._lockout = lockout
        self._clock = clock
        self._max_clients = max_clients
        self._lock = threading.Lock()
        # client -> (failure times within the window, locked until)
        self._clients: collections.OrderedDict[str, tuple[collections.deque[float], float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._clients)

    def locked_for(self, client: str) -> int | None:
        """Whole seconds the client must still wait, or None when it is not locked out."""
        with self._lock:
            entry = self._clients.get(client)
            if entry is None:
                return None
            remaining = entry[1] - self._clock()
            if remaining <= 0:
                return None
            # A client still knocking stays tracked, so churn cannot evict it early.
            self._clients.move_to_end(client)
            return max(1, math.ceil(remaining))

    def fail(self, client: str) -> int | None:
        """Record a failure; returns the seconds to wait when the client is now locked out."""
        with self._lock:
            now = self._clock()
            times, locked_until = self._clients.pop(client, (collections.deque(), 0.0))
            started = False
            # A request that passed locked_for just before another thread started the lockout
            # is refused too, without counting towards the next round.
            if locked_until <= now:
                while times and times[0] <= now - self._window:
                    times.popleft()
                times.append(now)
                if len(times) > self._max_failures:
                    times.clear()
                    locked_until = now + self._lockout
                    started = True
            self._clients[client] = (times, locked_until)
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
        if started:
            logger.warning(
                "payload endpoint: %s locked out for %ss after repeated failed authentication",
                client,
                self._lockout,
            )
        return max(1, math.ceil(locked_until - now)) if locked_until > now else None

    def succeed(self, client: str) -> None:
        """Forget the client's failures after a successful authentication, but not a lockout."""
        with self._lock:
            entry = self._clients.get(client)
            if entry is not None and entry[1] <= self._clock():
                del self._clients[client]


def asgi_app(endpoint: PayloadEndpoint) -> ASGIApp:
    """An ASGI 3 app serving ``endpoint``; the lookup runs in a worker thread."""

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if await answer_non_http(scope, receive, send):
            return
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        # ASGI puts the mount in root_path and the full path in path; some older routers strip
        # the mount from path themselves, so strip only when it is there.
        if root_path and (path == root_path or path.startswith(root_path + "/")):
            path = path[len(root_path) :]
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client")
        remote_addr = str(client[0]) if client else None
        response = await asyncio.to_thread(
            endpoint.handle, scope.get("method", "GET"), path, headers, remote_addr
        )
        await send_asgi(send, response)

    return app


async def answer_non_http(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> bool:
    """Deal with a scope that is not an HTTP request; True when ``scope`` was one.

    Lifespan events are acknowledged (mounted apps rarely get them), a websocket is refused,
    any other scope type is ignored.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return True
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008})
        return True
    kind: str = scope["type"]
    return kind != "http"


async def send_asgi(send: ASGISend, response: Response) -> None:
    """Send ``response`` as an ASGI HTTP answer, with its Content-Length."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in (*response.headers, ("Content-Length", str(len(response.body))))
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def wsgi_app(endpoint: PayloadEndpoint) -> WSGIApp:
    """A PEP 3333 WSGI app serving ``endpoint`` (path from PATH_INFO, client from REMOTE_ADDR)."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and isinstance(value, str)
        }
        method = environ.get("REQUEST_METHOD", "GET")
        if method != "GET":
            _drain(environ)
        response = endpoint.handle(
            method, environ.get("PATH_INFO", ""), headers, environ.get("REMOTE_ADDR") or None
        )
        return send_wsgi(start_response, response)

    return app


def send_wsgi(start_response: StartResponse, response: Response) -> list[bytes]:
    """Start ``response`` as a WSGI answer, with its Content-Length; the body to return."""
    status = f"{response.status} {http.HTTPStatus(response.status).phrase}"
    start_response(status, [*response.headers, ("Content-Length", str(len(response.body)))])
    return [response.body]


def _drain(environ: Mapping[str, Any]) -> None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if 0 < length <= _MAX_DRAIN_BYTES:
            environ["wsgi.input"].read(length)
    except Exception:
        pass  # a body we are about to refuse is not worth an error


def _answer(
    status: int, error: Mapping[str, str] | None, extra: Iterable[tuple[str, str]] = ()
) -> Response:
    if error is None:
        return Response(status, (*_BASE_HEADERS, *extra))
    body = json.dumps(error, separators=(",", ":")).encode("ascii")
    return Response(status, (*_BASE_HEADERS, ("Content-Type", "application/json"), *extra), body)


def _parse_path(path: str) -> int | str | None:
    match = _PATH.fullmatch(path)
    if match is None:
        return None
    raw = match.group(1)
    if _INT_ID.fullmatch(raw):
        number = int(raw)
        return number if number <= _MAX_INT_ID else None
    if _UUID_ID.fullmatch(raw):
        return str(uuid.UUID(raw))
    return None


def _header_bytes(value: str) -> bytes:
    # Servers hand headers over decoded as latin-1 (PEP 3333, ASGI); that gives back the bytes
    # that were sent. A caller passing other text gets its UTF-8.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _jsonable(value: Any, depth: int = 0, active: frozenset[int] = frozenset()) -> Any:
    """``value`` made of JSON types only; see the module docstring for each conversion."""
    if value is None or (isinstance(value, (str, bool, int)) and not isinstance(value, enum.Enum)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, depth + 1, active)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, (Mapping, list, tuple, set, frozenset, collections.deque)):
        if id(value) in active:
            return "[circular]"
        inner = active | {id(value)}
        if isinstance(value, Mapping):
            return {_key(k, depth, inner): _jsonable(v, depth + 1, inner) for k, v in value.items()}
        items = value
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(value)
            except TypeError:
                items = list(value)
        return [_jsonable(item, depth + 1, inner) for item in items]
    try:
        return str(value)
    except Exception:
        return f"[unprintable {type(value).__name__}]"


def _key(key: Any, depth: int, active: frozenset[int]) -> str:
    if isinstance(key, str):
        return key
    converted = _jsonable(key, depth + 1, active)
    return converted if isinstance(converted, str) else json.dumps(converted, separators=(",", ":"))
