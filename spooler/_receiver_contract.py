"""The wire contract the receiver enforces: what the Cloud accepts and what it refuses.

Part of the dev tool :mod:`spooler.receiver`, not of the library a host imports.
:func:`check_request` runs the checks after the faults, in the order the receiver's
docstring lists; the first that fails raises :class:`Refused` with the status to answer.
The keys an entry may carry are the serializer's allowlist (:mod:`spooler.serializer`),
plus the ``entry_id`` the spool gives each row.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from spooler._receiver_faults import Faults
from spooler.serializer import AGGREGATE_FIELDS, DEAD_LETTER_FIELDS, ENTRY_FIELDS, STATUSES

__all__ = [
    "DRAIN_LIMIT",
    "EMITTED_ONLY_KEYS",
    "ENTRY_KEYS",
    "ENTRY_STATUSES",
    "REQUIRED_ENTRY_KEYS",
    "Accepted",
    "Refused",
    "check_request",
]

#: Every key an entry may carry; anything else makes the Cloud reject the entry.
ENTRY_KEYS = frozenset({"entry_id", *ENTRY_FIELDS, *DEAD_LETTER_FIELDS, *AGGREGATE_FIELDS})
#: Keys only an emitted entry may carry.
EMITTED_ONLY_KEYS = frozenset(AGGREGATE_FIELDS)
REQUIRED_ENTRY_KEYS = frozenset({"entry_id", "event_name", "status", "timestamp"})
ENTRY_STATUSES = frozenset(STATUSES)

#: Bodies up to this size are read even when refused, so the connection stays usable and
#: the client reads our answer instead of a reset; it is also the inflated size limit.
DRAIN_LIMIT = 64 << 20

_TIME_KEYS = ("occurred_at", "published_at", "dead_lettered_at")
# Metadata, not payload: a longer string is someone smuggling data out.
_MAX_STRING = 10_000


class Refused(Exception):
    """Answer the request with ``status`` and a small JSON body."""

    def __init__(self, status: int, note: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(note)
        self.status = status
        self.note = note
        self.body = body if body is not None else {"error": note}


@dataclass(frozen=True)
class Accepted:
    """What passed the contract: the entries of one ``/events`` request, or one heartbeat."""

    kind: Literal["events", "heartbeat"]
    documents: list[dict[str, Any]]


def check_request(
    log: dict[str, Any],
    content_encoding: str | None,
    body: bytes | None,
    faults: Faults,
    max_entries: int,
) -> Accepted:
    """Check one request against the contract; what it carries, or :class:`Refused`.

    ``log`` is the request's row for the ``requests`` table (method, path, the headers that
    matter, whether the bearer matched); the number of entries is filled in. ``body`` is
    None when it was too large to read.
    """
    path = log["path"]
    kind: Literal["events", "heartbeat"]
    if path.endswith("/events"):
        kind = "events"
    elif path.endswith("/heartbeat"):
        kind = "heartbeat"
    else:
        raise Refused(404, "unknown path")
    if log["method"] != "POST":
        raise Refused(405, "method not allowed")
    if not log["authorized"]:
        raise Refused(401, "missing or wrong bearer token")
    if body is None or (faults.max_body_bytes is not None and len(body) > faults.max_body_bytes):
        raise Refused(413, "body too large")
    body = _decode(body, content_encoding, faults.max_body_bytes)
    content_type = (log["content_type"] or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise Refused(415, "content type must be application/json")
    if not log["gem_version"]:
        raise Refused(400, "missing X-EventEngine-Gem-Version")
    if kind == "events" and not log["idempotency_key"]:
        raise Refused(400, "missing Idempotency-Key")
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "body is not JSON") from None
    if kind == "heartbeat":
        return Accepted("heartbeat", [_check_heartbeat(document)])
    return Accepted("events", _check_entries(document, faults, max_entries, log))


def _check_heartbeat(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise Refused(400, "heartbeat must be an object")
    if document.get("type") != "heartbeat":
        raise Refused(422, 'heartbeat needs "type": "heartbeat"')
    for key in ("schema_fingerprints", "spool"):
        if key in document and not isinstance(document[key], dict):
            raise Refused(422, f"heartbeat {key} must be an object")
    return document


def _check_entries(
    document: Any, faults: Faults, max_entries: int, log: dict[str, Any]
) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or set(document) != {"entries"}:
        raise Refused(400, 'body must be {"entries": [...]} and nothing else')
    entries = document["entries"]
    if not isinstance(entries, list) or not entries:
        raise Refused(400, "entries must be a non-empty list")
    if len(entries) > max_entries:
        raise Refused(400, f"more than {max_entries} entries")
    log["entries"] = len(entries)
    rejected = [
        index
        for index, entry in enumerate(entries)
        if not _valid_entry(entry, faults.reject_event_names)
    ]
    if rejected:
        raise Refused(422, "invalid entries", {"error": "invalid entries", "rejected": rejected})
    return entries


def _decode(body: bytes, encoding: str | None, max_bytes: int | None) -> bytes:
    """The body with its Content-Encoding undone, or Refused (415, 413 or 400)."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip"):
        raise Refused(415, "content encoding must be gzip or none")
    limit = DRAIN_LIMIT if max_bytes is None else max_bytes
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        inflated = inflater.decompress(body, limit + 1)  # never more than one byte past
    except zlib.error:
        raise Refused(400, "body is not valid gzip") from None
    if len(inflated) > limit:
        raise Refused(413, "body too large once inflated")
    if not inflater.eof or inflater.unused_data:
        raise Refused(400, "body is not one complete gzip member")
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
