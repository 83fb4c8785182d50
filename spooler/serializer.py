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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any
from uuid import UUID

from spooler._version import __version__

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
# No ISO 8601 timestamp is longer; anything longer is not worth parsing.
_MAX_ISO_LENGTH = 64
# Above this a number is epoch milliseconds: 1e11 seconds is the year 5138, while
# 1e11 milliseconds is March 1973.
_EPOCH_MS_THRESHOLD = 1e11
# The ISO 8601 strings to_iso reads: a date, then optionally "T" (or "t" or a space), a time and
# "Z" or an offset; the date and the time each in extended (2026-01-15, 10:30:00) or basic
# (20260115, 103000) format. Written out rather than left to datetime.fromisoformat(), whose
# grammar changed in 3.11: 3.10 knows no "Z", no basic format and only 3 or 6 fraction digits.
# [0-9], because \d and int() also take non-ASCII digits.
_ISO_8601 = re.compile(
    r"""
    ([0-9]{4}) (-?) ([0-9]{2}) \2 ([0-9]{2})            # year, month, day: both dashes or neither
    (?:
        [Tt\x20] ([0-9]{2})                            # hour
        (?: (:?) ([0-9]{2})                             # minute: both colons or neither
            (?: \6 ([0-9]{2}) (?: [.,] ([0-9]+) )? )?   # second, fraction of any length
        )?
        ( [Zz] | [+-] [0-9:.,]+ )?                     # Z, or an offset checked by _OFFSET
    )?
    """,
    re.VERBOSE,
)
# An offset has the shape of a time: +05, +05:30, +0530, +05:30:15, +05:30:15.5.
_OFFSET = re.compile(r"([+-])([0-9]{2})(?:(:?)([0-9]{2})(?:\3([0-9]{2})(?:[.,]([0-9]+))?)?)?")
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MS = timedelta(milliseconds=1)

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
        if not isinstance(payload, Mapping):
            logger.debug("dropped a %s entry: payload is not a mapping", status)
            return None
        get = payload.get
        event_name = _text(get("event_name"))
        if event_name is None:
            logger.debug("dropped a %s entry: no usable event_name", status)
            return None

        # Times as (ISO text, epoch milliseconds): formatted once, compared as ints.
        if type(now) is float:
            stamp: tuple[str, int] | None = _stamp(now)
        else:
            stamp = _instant(now) if now is not None else None
        if stamp is None:
            stamp = _stamp(time.time())
        occurred = _instant(get("occurred_at"))
        published = _instant(get("published_at"))
        dead_lettered = _instant(get("dead_lettered_at"))
        end = None
        if status == "published":
            if published is None:
                published = stamp
            end = published
        elif status == "dead_lettered":
            if dead_lettered is None:
                dead_lettered = stamp
            end = dead_lettered
        latency = None
        if occurred is not None and end is not None:
            latency = end[1] - occurred[1]
            if latency < 0:
                latency = None

        timestamp = stamp[0]
        entry: dict[str, Any] = {
            "event_id": _event_id(get("event_id")),
            "event_name": event_name,
            "event_type": _text(get("event_type")),
            "event_version": _count(get("event_version")),
            "idempotency_key": _text(get("idempotency_key")),
            "status": status,
            "attempts": _count(get("attempts")),
            "occurred_at": None if occurred is None else occurred[0],
            "published_at": None if published is None else published[0],
            "dead_lettered_at": None if dead_lettered is None else dead_lettered[0],
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
        if not isinstance(payload, Mapping) or status not in STATUSES:
            return None
        get = payload.get
        values = tuple([get(name) for name in _CAPTURED])
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


def _build(
    status: str, payload: Mapping[str, Any], now: float, send: bool, max_length: int
) -> dict[str, Any] | None:
    return build_entry(
        status, payload, send_error_message=send, error_message_max_length=max_length, now=now
    )


def to_iso(value: object) -> str | None:
    """``value`` as ISO 8601 UTC with milliseconds and a ``Z``, or None. Never raises.

    Accepts aware datetimes, naive datetimes (taken as UTC), dates (midnight UTC), ISO
    8601 strings, and epoch seconds as int or float (epoch milliseconds when the
    magnitude exceeds 1e11). Bools, NaN, infinities, unparseable strings and times
    outside years 1-9999 give None. Sub-millisecond digits are truncated, e.g.
    ``"2026-01-15T10:30:00.000Z"``.

    An ISO 8601 string is a date (``2026-01-15`` or ``20260115``), optionally followed by
    ``T``, ``t`` or a space and a time (``10``, ``10:30``, ``10:30:00``, ``10:30:00.5``
    with any number of fraction digits after ``.`` or ``,``, or the same without colons),
    then optionally ``Z``, ``z`` or an offset written like a time (``+05:30``, ``+0530``,
    ``-05``); without either it is taken as UTC. Surrounding whitespace is ignored. Every
    Python version reads these alike, and as Python 3.11+'s ``datetime.fromisoformat``
    does (which also takes week dates and any separator character, but no ``z``).
    """
    moment = _to_utc(value)
    return None if moment is None else _format(moment)


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
        "timestamp": to_iso(datetime.now(_UTC) if now is None else now),
        "spool": dict(spool or {}),
    }


def _to_utc(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        if type(value) is datetime:
            if value.tzinfo is _UTC:
                return value
            moment = value
        elif isinstance(value, datetime):
            moment = value
        elif isinstance(value, str):
            parsed = _parse_iso(value)
            if parsed is None:
                return None
            moment = parsed
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return _from_epoch(value)
        elif isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=_UTC)
        else:
            return None
        if type(moment) is not datetime:
            # Subclasses (pendulum, freezegun, ...) may override replace() or astimezone().
            fields = ("year", "month", "day", "hour", "minute", "second", "microsecond")
            y, mo, d, h, mi, s, us = (int(getattr(moment, f)) for f in fields)
            moment = datetime(y, mo, d, h, mi, s, us, moment.tzinfo)
        if moment.utcoffset() is None:
            return moment.replace(tzinfo=_UTC)
        return moment.astimezone(_UTC)
    except Exception:  # OverflowError near year 1 / 9999, or a host type misbehaving
        return None


def _parse_iso(text: str) -> datetime | None:
    text = str.strip(text)
    if len(text) > _MAX_ISO_LENGTH:
        return None
    match = _ISO_8601.fullmatch(text)
    if match is None:
        return None
    year, _, month, day, hour, _, minute, second, fraction, offset = match.groups()
    try:
        if hour is None:
            return datetime(int(year), int(month), int(day))
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            0 if minute is None else int(minute),
            0 if second is None else int(second),
            _microseconds(fraction),
            None if offset is None else _zone(offset),
        )
    except ValueError:  # 2026-02-30, hour 24, an offset of a day or more, a malformed offset
        return None


def _microseconds(fraction: str | None) -> int:
    # Digits past microseconds are cut, as Python 3.11+'s fromisoformat() does.
    return 0 if fraction is None else int(fraction[:6].ljust(6, "0"))


@lru_cache(maxsize=64)
def _zone(offset: str) -> timezone:
    """The timezone of a ``Z`` or an offset such as ``+05:30``; few distinct ones occur."""
    if offset in ("Z", "z"):
        return _UTC
    match = _OFFSET.fullmatch(offset)
    if match is None:
        raise ValueError("malformed offset")
    sign, hours, _, minutes, seconds, fraction = match.groups()
    delta = timedelta(
        hours=int(hours),
        minutes=0 if minutes is None else int(minutes),
        seconds=0 if seconds is None else int(seconds),
        microseconds=_microseconds(fraction),
    )
    return timezone(-delta if sign == "-" else delta)


def _from_epoch(value: float) -> datetime | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if abs(value) > _EPOCH_MS_THRESHOLD:
        return _EPOCH + timedelta(milliseconds=value)
    return _EPOCH + timedelta(seconds=value)


def _format(moment: datetime) -> str:
    # ``moment`` is in UTC. %-formatting is about twice as fast as an f-string or
    # isoformat(timespec=...) here, and unlike strftime("%Y") it pads years before 1000.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond // 1000,
    )


# The form every entry carries; a value already in it is kept as it is, not re-parsed.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z")


def _instant(value: object) -> tuple[str, int] | None:
    """``value`` as (ISO 8601 UTC text with milliseconds, epoch milliseconds), or None."""
    if type(value) is str and len(value) == 24 and _CANONICAL.fullmatch(value):
        days = _epoch_days(value[:10])
        hour = int(value[11:13])
        if days is not None and hour < 24:
            seconds = ((days * 24 + hour) * 60 + int(value[14:16])) * 60 + int(value[17:19])
            return value, seconds * 1000 + int(value[20:23])
    moment = _to_utc(value)
    if moment is None:
        return None
    return _format(moment), (moment - _EPOCH) // _MS


@lru_cache(maxsize=256)
def _epoch_days(day: str) -> int | None:
    """Days since 1970-01-01 of a ``YYYY-MM-DD`` date, or None for one that does not exist."""
    try:
        return date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None


_last_second: list[Any] = [None, ""]


def _stamp(now: float) -> tuple[str, int]:
    """The wall time ``now`` (epoch seconds) as (ISO text, epoch milliseconds)."""
    ms = int(now * 1000)
    second, milli = divmod(ms, 1000)
    cached = _last_second  # one (second, "YYYY-MM-DDTHH:MM:SS.") pair; a race only recomputes
    prefix = cached[1]
    if cached[0] != second:
        prefix = _format(_EPOCH + timedelta(seconds=second))[:20]
        _last_second[:] = [second, prefix]
    return prefix + "%03dZ" % milli, ms  # noqa: UP031 - %-formatting is the fastest here


def _text(value: object, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A stripped, non-empty, capped string from a str, int, float or UUID; else None."""
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
