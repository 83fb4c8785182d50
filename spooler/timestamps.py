"""Timestamps: every time an entry carries, as ISO 8601 UTC text with milliseconds.

One parser for every supported Python (3.10's ``datetime.fromisoformat`` reads less
than 3.11's), one formatter, and the fast paths the host's hot path needs: a value
already in the canonical form is kept as it is, and the wall clock's text is cached
per second. Nothing here raises: what cannot be read is None.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

__all__ = ["UTC", "instant", "iso_epoch", "now_iso", "parse_iso", "stamp", "to_iso"]

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
UTC = _UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MS = timedelta(milliseconds=1)


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
            parsed = parse_iso(value)
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


def parse_iso(text: str) -> datetime | None:
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
_CANONICAL_MINUTE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-2][0-9]:[0-5][0-9]:")


def instant(value: object) -> tuple[str, int] | None:
    """``value`` as (ISO 8601 UTC text with milliseconds, epoch milliseconds), or None."""
    if value is None:
        return None
    # The canonical form (2026-01-15T10:30:00.123Z) is kept as it is: its minute is
    # read once (cached) and only the seconds and milliseconds are read per call.
    if (
        type(value) is str
        and len(value) == 24
        and value[19] == "."
        and value[23] == "Z"
        and value.isascii()
    ):
        minute = _minute_ms(value[:17])
        tail = value[17:19] + value[20:23]  # SSmmm
        if minute is not None and tail.isdigit():
            millis = int(tail)
            if millis < 60_000:
                return value, minute + millis
    moment = _to_utc(value)
    if moment is None:
        return None
    return _format(moment), (moment - _EPOCH) // _MS


@lru_cache(maxsize=256)
def _minute_ms(prefix: str) -> int | None:
    """Epoch milliseconds of a canonical ``YYYY-MM-DDTHH:MM:`` prefix, or None."""
    if not _CANONICAL_MINUTE.fullmatch(prefix):
        return None
    days = _epoch_days(prefix[:10])
    hour = int(prefix[11:13])
    if days is None or hour >= 24:
        return None
    return ((days * 24 + hour) * 60 + int(prefix[14:16])) * 60_000


def _epoch_days(day: str) -> int | None:
    """Days since 1970-01-01 of a ``YYYY-MM-DD`` date, or None for one that does not exist."""
    try:
        return date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None


_last_second: list[Any] = [None, ""]


def stamp(now: float) -> tuple[str, int]:
    """The wall time ``now`` (epoch seconds) as (ISO text, epoch milliseconds)."""
    ms = int(now * 1000)
    second, milli = divmod(ms, 1000)
    cached = _last_second  # one (second, "YYYY-MM-DDTHH:MM:SS.") pair; a race only recomputes
    prefix = cached[1]
    if cached[0] != second:
        prefix = _format(_EPOCH + timedelta(seconds=second))[:20]
        _last_second[:] = [second, prefix]
    return prefix + "%03dZ" % milli, ms  # noqa: UP031 - %-formatting is the fastest here


def now_iso() -> str:
    """The current UTC time as entries carry it: ``2026-01-15T10:30:00.123Z``."""
    return _format(datetime.now(UTC))


def iso_epoch(value: str) -> float | None:
    """Seconds since the epoch for an ISO 8601 time (no zone: UTC); None if unreadable."""
    moment = _to_utc(value) if isinstance(value, str) else None
    return None if moment is None else (moment - _EPOCH).total_seconds()
