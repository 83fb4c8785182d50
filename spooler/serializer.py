"""The metadata allowlist: notification payload -> entry, heartbeat, schema fingerprints.

Only the fields named in ``ENTRY_FIELDS`` (plus ``error_class``, and ``error_message``
when the host opts in, for dead-lettered events) ever leave the host. Each one is read
by name from the notification payload and coerced to a plain JSON scalar; nothing else
is copied, so ``payload``, ``metadata`` and request or user context cannot leak however
the host shapes its notification.

``build_entry`` runs on the host's hot path: it never raises, returns ``None`` for an
entry it cannot build, and sticks to cheap type checks (no regex) for the common types
(ISO 8601 strings are the exception: a precompiled regex).
Every value it returns survives ``json.dumps(entry, allow_nan=False)`` and UTF-8 encoding.

Why one file of a little over 500 lines: the allowlist, the coercion of each field and
the heartbeat are what a privacy review reads, top to bottom, in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from uuid import UUID

from spooler._version import __version__
from spooler.timestamps import UTC, instant, now_iso, to_iso
from spooler.timestamps import stamp as wall_stamp

__all__ = [
    "AGGREGATE_FIELDS",
    "DEAD_LETTER_FIELDS",
    "ENTRY_FIELDS",
    "MAX_TEXT_LENGTH",
    "STATUSES",
    "build_entry",
    "build_heartbeat",
    "capture",
    "detect_framework",
    "entry_from_capture",
    "load_schemas",
    "schema_fingerprint",
    "to_iso",
]

logger = logging.getLogger(__name__)

ENTRY_FIELDS: tuple[str, ...] = (
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
)
DEAD_LETTER_FIELDS: tuple[str, ...] = ("error_class", "error_message")
#: Added to emitted entries only (the Ruby reporter sends them since February 2026).
AGGREGATE_FIELDS: tuple[str, ...] = ("aggregate_type", "aggregate_id", "aggregate_version")
STATUSES = ("emitted", "published", "dead_lettered")

#: Longest string kept for names, ids and classes; longer ones are cut to this many characters.
MAX_TEXT_LENGTH = 200

# Integers travel as JSON numbers; beyond signed 64 bits many consumers lose precision.
_MIN_INT = -(1 << 63)
_MAX_INT = (1 << 63) - 1
_MAX_INT_DIGITS = 19

# (module, distribution), checked in this order. fastapi comes before starlette
# because importing fastapi imports starlette.
_FRAMEWORKS = (
    ("django", "Django"),
    ("flask", "Flask"),
    ("fastapi", "fastapi"),
    ("starlette", "starlette"),
)


def build_entry(
    status: str,
    payload: Mapping[str, Any],
    *,
    send_error_message: bool = False,
    error_message_max_length: int = 200,
    now: datetime | float | None = None,
) -> dict[str, Any] | None:
    """Allowlisted metadata entry for one notification, or None if it cannot be built. Never raises.

    The entry has exactly the keys of ``ENTRY_FIELDS`` (``None`` when unknown); a
    ``dead_lettered`` entry adds ``error_class``, and ``error_message`` (cut to
    ``error_message_max_length`` characters) only when ``send_error_message`` is true.
    ``None`` is returned for an unknown ``status``, a ``payload`` that is not a mapping,
    or a missing or blank ``event_name``.

    Coercions: ``event_id`` is an int, or a string id; digit strings without leading
    zeros that fit in 64 bits become ints ("007" stays a string). ``event_version`` and
    ``attempts`` are non-negative ints (digit strings accepted, bools refused). Text
    fields take str, int, float or UUID, stripped and cut to ``MAX_TEXT_LENGTH``;
    ``error_class`` also takes an exception class or instance and reports its qualified
    class name. Any other value becomes ``None``: containers are never copied, and host
    objects' ``__str__`` is never called (except an opted-in exception message).
    Integers outside signed 64 bits become ``None``.

    Times go through :func:`to_iso`. ``now`` (default, or when unusable: the current UTC
    time) is the entry's ``timestamp``, and stands in for ``published_at`` /
    ``dead_lettered_at`` when a published / dead-lettered payload lacks it. ``latency_ms``
    is the whole milliseconds between the reported ``occurred_at`` and that time; it is
    ``None`` when either end is unknown, on emitted entries, and when it would be
    negative (clock skew between hosts), because a made-up zero would skew percentiles.
    """
    try:
        if status not in STATUSES:
            logger.debug("dropped an entry: unknown status")
            return None
        if type(payload) is not dict and not isinstance(payload, Mapping):
            logger.debug("dropped a %s entry: payload is not a mapping", status)
            return None
        get = payload.get
        event_name = _text(get("event_name"))
        if event_name is None:
            logger.debug("dropped a %s entry: no usable event_name", status)
            return None

        timestamp, occurred, published, dead_lettered, latency = _times(
            status, get("occurred_at"), get("published_at"), get("dead_lettered_at"), now
        )
        entry: dict[str, Any] = {
            "event_id": _event_id(get("event_id")),
            "event_name": event_name,
            "event_type": _text(get("event_type")),
            "event_version": _count(get("event_version")),
            "idempotency_key": _text(get("idempotency_key")),
            "status": status,
            "attempts": _count(get("attempts")),
            "occurred_at": occurred,
            "published_at": published,
            "dead_lettered_at": dead_lettered,
            "latency_ms": latency,
            "timestamp": timestamp,
        }
        if status == "emitted":
            entry["aggregate_type"] = _text(get("aggregate_type"))
            entry["aggregate_id"] = _event_id(get("aggregate_id"))
            entry["aggregate_version"] = _count(get("aggregate_version"))
        elif status == "dead_lettered":
            entry["error_class"] = _error_class(get("error_class"))
            if send_error_message:
                entry["error_message"] = _error_message(
                    get("error_message"), error_message_max_length
                )
        return entry
    except Exception as exc:
        # The exception's message may quote payload values, so only its type is logged.
        logger.debug("dropped an entry: %s while building it", type(exc).__name__)
        return None


_Instant = tuple[str, int]  # (ISO 8601 text, epoch milliseconds)


def _times(
    status: str,
    occurred_at: object,
    published_at: object,
    dead_lettered_at: object,
    now: datetime | float | None,
) -> tuple[str, str | None, str | None, str | None, int | None]:
    """timestamp, occurred_at, published_at, dead_lettered_at and latency_ms of an entry.

    Each time is formatted once and compared as epoch milliseconds. ``now`` stands in
    for the end a published / dead-lettered payload lacks.
    """
    stamp: _Instant | None = wall_stamp(now) if type(now) is float else None
    if stamp is None:
        stamp = (instant(now) if now is not None else None) or wall_stamp(time.time())
    occurred = instant(occurred_at)
    published = instant(published_at)
    dead_lettered = instant(dead_lettered_at)
    end = None
    if status == "published":
        end = published = published or stamp
    elif status == "dead_lettered":
        end = dead_lettered = dead_lettered or stamp
    latency = None
    if occurred is not None and end is not None and end[1] >= occurred[1]:
        latency = end[1] - occurred[1]
    return (
        stamp[0],
        None if occurred is None else occurred[0],
        None if published is None else published[0],
        None if dead_lettered is None else dead_lettered[0],
        latency,
    )


# What the host's thread copies out of a notification, in this order, for the writer thread
# to turn into an entry (see capture). Every other key is never read.
_CAPTURED = (
    "event_id",
    "event_name",
    "event_type",
    "event_version",
    "idempotency_key",
    "attempts",
    "occurred_at",
    "published_at",
    "dead_lettered_at",
    *AGGREGATE_FIELDS,
)
# Immutable scalars build_entry reads the same later as now; a value of any other type
# (a container, a subclass, a host object) is never kept: the entry is built at once.
_KEEPABLE = frozenset({str, int, float, type(None), UUID, datetime, date})
#: What :func:`capture` returns: (status, wall time, the captured values, error_class,
#: error_message), or an entry already built.
Captured = tuple[str, float, tuple[object, ...], "str | None", "str | None"]


def capture(
    status: str,
    payload: Mapping[str, Any],
    *,
    now: float,
    send_error_message: bool = False,
    error_message_max_length: int = 200,
) -> Captured | dict[str, Any] | None:
    """The host thread's share of :func:`build_entry`: the least that keeps its meaning.

    Copies the allowlisted values (immutable scalars only, never a container or any
    other reference into the host's objects), reduces an exception passed as
    ``error_class`` to its class name (and ``error_message`` to text when opted in) so
    no exception or traceback is kept alive, and checks what decides validity
    (``event_name``). :func:`entry_from_capture` finishes on the writer thread.
    Returns None exactly when :func:`build_entry` would; an entry built at once (a
    value of an unusual type) is returned as a dict. Never raises.
    """
    try:
        if (type(payload) is not dict and not isinstance(payload, Mapping)) or (
            status not in STATUSES
        ):
            return None
        get = payload.get
        values = tuple(map(get, _CAPTURED))
        if not _KEEPABLE.issuperset(map(type, values)):
            # Values that are not plain scalars: build the entry here, on the host's
            # thread, so no reference to the host's objects is kept.
            return _build(status, payload, now, send_error_message, error_message_max_length)
        if _text(values[1]) is None:
            logger.debug("dropped a %s entry: no usable event_name", status)
            return None
        error_class = error_message = None
        if status == "dead_lettered":
            error_class = _error_class(get("error_class"))
            if send_error_message:
                error_message = _error_message(get("error_message"), error_message_max_length)
        return (status, now, values, error_class, error_message)
    except Exception as exc:
        logger.debug("dropped an entry: %s while reading it", type(exc).__name__)
        return None


def entry_from_capture(
    captured: Captured, *, send_error_message: bool = False, error_message_max_length: int = 200
) -> dict[str, Any] | None:
    """The entry :func:`build_entry` would have built from what :func:`capture` kept."""
    status, now, values, error_class, error_message = captured
    payload: dict[str, Any] = dict(zip(_CAPTURED, values, strict=True))
    if status == "dead_lettered":
        payload["error_class"] = error_class
        payload["error_message"] = error_message
    return _build(status, payload, now, send_error_message, error_message_max_length)


# The JSON text encode_row gives an entry of entry_from_capture, written out directly:
# every value there is null, an int or a str, so it is the same text (a test holds them
# equal), at a third to half of the cost of a dict and the encoder.
_ROW = (
    '{"event_id":%s,"event_name":%s,"event_type":%s,"event_version":%s,'
    '"idempotency_key":%s,"status":"%s","attempts":%s,"occurred_at":%s,'
    '"published_at":%s,"dead_lettered_at":%s,"latency_ms":%s,"timestamp":"%s"'
)
_ROW_AGGREGATES = ',"aggregate_type":%s,"aggregate_id":%s,"aggregate_version":%s}'
_ROW_ERROR_CLASS = ',"error_class":%s}'
_ROW_ERROR = ',"error_class":%s,"error_message":%s}'
_PLAIN = frozenset({str, int, type(None)})
_json_text = json.encoder.encode_basestring_ascii  # what the encoder uses for every str
_json_int = int.__repr__


def _json(value: int | str | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):  # never a bool here
        return _json_int(value)
    return _json_text(value)


def row_from_capture(
    captured: Captured, *, send_error_message: bool = False, error_message_max_length: int = 200
) -> tuple[str, str, str] | None:
    """``encode_row(entry_from_capture(captured, ...))``, the writer thread's hot path.

    Values that are not None, int or str (a float, UUID or datetime) go that long way;
    None exactly when :func:`entry_from_capture` gives None. Raises what encoding does.
    """
    status, now, values, error_class, error_message = captured
    if not _PLAIN.issuperset(map(type, values)) or type(now) is not float:
        entry = entry_from_capture(
            captured,
            send_error_message=send_error_message,
            error_message_max_length=error_message_max_length,
        )
        return None if entry is None else encode_row(entry)
    (
        event_id,
        event_name,
        event_type,
        version,
        key,
        attempts,
        occurred_at,
        published_at,
        dead_lettered_at,
        aggregate_type,
        aggregate_id,
        aggregate_version,
    ) = values
    name = _text(event_name)
    if name is None or status not in STATUSES:
        return None
    timestamp, occurred, published, dead_lettered, latency = _times(
        status, occurred_at, published_at, dead_lettered_at, now
    )
    text = _ROW % (
        "null" if event_id is None else _json(_event_id(event_id)),
        _json_text(name),
        "null" if event_type is None else _json(_text(event_type)),
        "null" if version is None else _json(_count(version)),
        "null" if key is None else _json(_text(key)),
        status,
        "null" if attempts is None else _json(_count(attempts)),
        "null" if occurred is None else _json_text(occurred),
        "null" if published is None else _json_text(published),
        "null" if dead_lettered is None else _json_text(dead_lettered),
        "null" if latency is None else _json_int(latency),
        timestamp,
    )
    if status == "emitted":
        text += _ROW_AGGREGATES % (
            "null" if aggregate_type is None else _json(_text(aggregate_type)),
            "null" if aggregate_id is None else _json(_event_id(aggregate_id)),
            "null" if aggregate_version is None else _json(_count(aggregate_version)),
        )
    elif status == "dead_lettered":
        error_class = _json(_error_class(error_class))
        if send_error_message:
            limit = error_message_max_length
            text += _ROW_ERROR % (error_class, _json(_error_message(error_message, limit)))
        else:
            text += _ROW_ERROR_CLASS % error_class
    else:
        text += "}"
    return (status, timestamp, text)


def _build(
    status: str, payload: Mapping[str, Any], now: float, send: bool, max_length: int
) -> dict[str, Any] | None:
    return build_entry(
        status, payload, send_error_message=send, error_message_max_length=max_length, now=now
    )


def _compact_encoder() -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":")).encode``, same text, without building
    its C encoder anew on every call (3 of its 8 us for one entry on this VM).

    The C encoder is built once, without the circular-reference check: anything it
    cannot encode (a cycle ends in RecursionError) goes to the stock encoder, which
    raises its usual error. Pythons without the C accelerator use the stock encoder.
    """
    stock = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return stock.encode

    def refuse(value: object) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    # (markers, default, encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan)
    ascii_text = json.encoder.encode_basestring_ascii
    fast = make(None, refuse, ascii_text, None, ":", ",", False, False, True)

    def encode(value: Any) -> str:
        if type(value) is not dict:
            return stock.encode(value)
        try:
            return "".join(fast(value, 0))
        except (RecursionError, TypeError, ValueError):
            return stock.encode(value)

    return encode


#: Compact JSON text of an entry (a dict), as the spool stores it.
encode_json = _compact_encoder()


def encode_row(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """An entry as the row the spool stores: (kind, created_at, JSON text)."""
    created = entry.get("timestamp")
    if not isinstance(created, str):
        created = now_iso()
    return (str(entry.get("status") or "unknown"), created, encode_json(entry))


def schema_fingerprint(schema: Any) -> str:
    """SHA-256 hex digest of ``schema`` as canonical JSON (sorted keys, compact).

    Values JSON cannot encode fall back to ``str()``; raises ``TypeError`` / ``ValueError``
    for schemas that cannot be encoded at all (mixed-type keys, cycles, lone surrogates).
    """
    canonical = json.dumps(
        schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_schemas(source: Mapping[str, Any] | str | os.PathLike[str] | None) -> dict[str, str]:
    """Event name -> schema fingerprint, from a mapping or a directory of ``*.json`` files.

    A mapping maps event names to schema objects. In a directory every ``*.json`` file
    (not hidden, not in subdirectories, in name order) is one schema, named by its
    top-level ``"event_name"`` string if it has one, else by the file stem
    (``order.placed.json`` -> ``order.placed``). Unreadable or invalid files, names that
    are not strings, and repeated event names (the first one wins) are skipped with a
    warning that never quotes file content. A missing directory gives ``{}`` and a
    warning; a ``source`` of any other type raises ``TypeError``.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _load_mapping(source)
    folder = Path(os.fspath(source))
    if not folder.is_dir():
        logger.warning("schema directory %s does not exist; no schema fingerprints", folder)
        return {}
    fingerprints: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            if not path.is_file():
                continue
            schema = json.loads(path.read_text(encoding="utf-8"))
            fingerprint = schema_fingerprint(schema)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            logger.warning("skipped schema file %s: %s", path, _describe(exc))
            continue
        name = schema.get("event_name") if isinstance(schema, dict) else None
        name = name.strip() if isinstance(name, str) else ""
        _add_fingerprint(fingerprints, name or path.stem, fingerprint, str(path))
    return fingerprints


def detect_framework() -> tuple[str | None, str | None]:
    """``(framework, version)`` for the first web framework the host already imported.

    Checks ``sys.modules`` only (a framework is never imported here) for django, flask,
    fastapi and starlette, in that order; ``(None, None)`` when none is loaded. The
    version comes from the installed distribution's metadata, None if unknown.
    """
    for module, distribution in _FRAMEWORKS:
        if sys.modules.get(module) is not None:
            return module, _distribution_version(distribution)
    return None, None


def build_heartbeat(
    *,
    app_name: str,
    environment: str,
    uptime_seconds: float,
    schema_fingerprints: Mapping[str, str] | None = None,
    spool: Mapping[str, Any] | None = None,
    framework: tuple[str | None, str | None] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The periodic heartbeat: who is reporting, on what, with which schemas.

    ``framework=None`` detects it with :func:`detect_framework`. ``uptime_seconds`` is
    reported in whole seconds (0 for negative or non-finite values); ``now`` (default:
    the current UTC time) becomes ``timestamp``.
    """
    name, version = detect_framework() if framework is None else framework
    return {
        "type": "heartbeat",
        "app_name": app_name,
        "environment": environment,
        "gem_version": __version__,
        "python_version": platform.python_version(),
        "framework": name,
        "framework_version": version,
        "schema_fingerprints": dict(schema_fingerprints or {}),
        "uptime_seconds": _whole_seconds(uptime_seconds),
        "timestamp": to_iso(datetime.now(UTC) if now is None else now),
        "spool": dict(spool or {}),
    }


def _text(value: object, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A stripped, non-empty, capped string from a str, int, float or UUID; else None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = str.strip(value)  # never calls a subclass's methods; returns an exact str
    elif isinstance(value, int):
        if isinstance(value, bool) or not _MIN_INT <= value <= _MAX_INT:
            return None
        text = int.__repr__(value)
    elif isinstance(value, float):
        text = float.__repr__(value)
    elif isinstance(value, UUID):
        text = UUID.__str__(value)
    else:
        return None
    if not text:
        return None
    text = text[:limit]
    return text if text.isascii() else _utf8_safe(text)


def _utf8_safe(text: str) -> str:
    # Lone surrogates pass json.dumps but break the UTF-8 encoding of the request body.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _count(value: object) -> int | None:
    """A non-negative int from an int or a digit string; else None."""
    if value is None:
        return None
    if type(value) is int:
        return value if 0 <= value <= _MAX_INT else None
    if isinstance(value, str):
        text = str.strip(value)
        if text.isascii() and text.isdigit() and len(text) <= _MAX_INT_DIGITS:
            number = int(text)
            return number if number <= _MAX_INT else None
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _count(int(value))
    return None


def _event_id(value: object) -> int | str | None:
    """An int id, or a string id (canonical digit strings become ints); else None."""
    if value is None:
        return None
    if type(value) is int:
        return value if _MIN_INT <= value <= _MAX_INT else None
    if isinstance(value, str):
        text = str.strip(value)
        # "007" stays a string: turning it into 7 would change the id.
        if (
            text.isascii()
            and text.isdigit()
            and len(text) <= _MAX_INT_DIGITS
            and (text[0] != "0" or text == "0")
        ):
            number = int(text)
            if number <= _MAX_INT:
                return number
        return _text(text)
    if isinstance(value, int) and not isinstance(value, bool):
        return _event_id(int(value))
    if isinstance(value, UUID):
        return _text(value)
    return None


def _error_class(value: object) -> str | None:
    """A class name from a string, an exception class or an exception instance."""
    if isinstance(value, BaseException):
        value = type(value)
    if isinstance(value, type) and issubclass(value, BaseException):
        module = getattr(value, "__module__", None)
        name = value.__qualname__
        return _text(name if module in (None, "builtins") else f"{module}.{name}")
    return _text(value)


def _error_message(value: object, limit: int) -> str | None:
    if isinstance(value, BaseException):
        try:
            value = str(value)
        except Exception:
            return None
    return _text(value, max(0, limit))


def _whole_seconds(value: float) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return int(value)


@cache
def _distribution_version(distribution: str) -> str | None:
    # Read once per process: the imported code does not change when a wheel is upgraded.
    try:
        return metadata.version(distribution)
    except Exception:
        return None


def _load_mapping(source: Mapping[str, Any]) -> dict[str, str]:
    fingerprints: dict[str, str] = {}
    for name, schema in source.items():
        if not isinstance(name, str) or not name.strip():
            logger.warning("skipped a schema whose event name is not a non-empty string")
            continue
        try:
            fingerprint = schema_fingerprint(schema)
        except (ValueError, TypeError, RecursionError) as exc:
            logger.warning("skipped the schema of %s: %s", name.strip(), _describe(exc))
            continue
        _add_fingerprint(fingerprints, name.strip(), fingerprint, "the schemas mapping")
    return fingerprints


def _add_fingerprint(
    fingerprints: dict[str, str], name: str, fingerprint: str, origin: str
) -> None:
    if name in fingerprints:
        logger.warning("skipped a second schema for %s in %s; keeping the first", name, origin)
        return
    fingerprints[name] = fingerprint


def _describe(exc: BaseException) -> str:
    # Positions and OS reasons only: exception messages can quote the file's content.
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
