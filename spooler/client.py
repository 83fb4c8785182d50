"""The Cloud API over httpx: send entries and heartbeats, classify every answer.

One :class:`CloudClient` holds one pooled ``httpx.Client`` for its whole life, so
consecutive batches reuse a keep-alive connection. Every call either returns
(2xx) or raises a :class:`~spooler.errors.DeliveryError` subclass the shipper can
act on::

    2xx                         return
    408, 429, 5xx               TransientDeliveryError(status=, retry_after=)
    connection errors, timeouts TransientDeliveryError(status=None)
    413                         PayloadTooLargeError    split the batch
    400, 422                    RejectedError           bisect the batch
    401, 403                    AuthError               stop; the key is wrong or revoked
    anything else (3xx, 4xx)    PermanentDeliveryError

Messages and log lines name the method, the path and the status only: never the
API key, a request body or an entry. httpx's own exceptions are not chained (they
hold the request, headers included), only their class name is kept.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx

from spooler._version import __version__
from spooler.errors import (
    AuthError,
    ConfigError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RejectedError,
    TransientDeliveryError,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_RETRY_AFTER", "CloudClient", "classify", "parse_retry_after"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
#: The longest Retry-After we honour; a misconfigured proxy must not park the shipper for a day.
MAX_RETRY_AFTER = 300.0

_TRANSIENT_STATUSES = frozenset({408, 429})
_DELTA_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
# Visible ASCII only: anything else would either break the header or end up in an
# encoding error message that quotes it.
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")


class CloudClient:
    """The Cloud API over one pooled httpx.Client (keep-alive)."""

    def __init__(
        self,
        *,
        api_key: str,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT,
        max_retry_after: float = MAX_RETRY_AFTER,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not _KEY_CHARS.match(api_key):
            raise ConfigError("api_key", "must be a non-empty string of visible ASCII characters")
        self._endpoint = endpoint.rstrip("/")
        self._max_retry_after = max_retry_after
        self._client = httpx.Client(
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "X-EventEngine-Gem-Version": __version__,
                "User-Agent": user_agent(),
            },
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"CloudClient(endpoint={self._endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL requests go to, without a trailing slash."""
        return self._endpoint

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

    def close(self) -> None:
        """Close the pooled connections; the client cannot send afterwards."""
        self._client.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, path: str, body: bytes, idempotency_key: str, *, count: int) -> None:
        started = time.monotonic()
        failure: str | None = None
        try:
            response = self._client.post(
                self._endpoint + path,
                content=body,
                headers={"Idempotency-Key": idempotency_key},
            )
        except httpx.HTTPError as exc:
            # Keep the class name only, and raise outside this block so neither
            # __cause__ nor __context__ holds httpx's exception (and its request).
            failure = type(exc).__name__
        elapsed_ms = (time.monotonic() - started) * 1000
        if failure is not None:
            where = httpx.URL(self._endpoint + path).path
            logger.debug("POST %s failed after %.0f ms: %s", where, elapsed_ms, failure)
            raise TransientDeliveryError(f"POST {where} failed: {failure}", status=None)
        logger.debug(
            "POST %s (%d entries) answered %d in %.0f ms",
            path,
            count,
            response.status_code,
            elapsed_ms,
        )
        classify(response, max_retry_after=self._max_retry_after)


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
