"""The metadata allowlist: what an entry may contain, and nothing more."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import types
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

import spooler
from spooler.serializer import (
    AGGREGATE_FIELDS,
    DEAD_LETTER_FIELDS,
    ENTRY_FIELDS,
    STATUSES,
    build_entry,
    build_heartbeat,
    detect_framework,
    load_schemas,
    schema_fingerprint,
    to_iso,
)
from spooler.timestamps import parse_iso

UTC = timezone.utc
NOW = datetime(2026, 1, 15, 10, 30, 1, tzinfo=UTC)
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = "sentinel-3f9c1e-never-leaves-the-host"
ERROR_SECRET = "sentinel-error-message-b71d04"
TIME_FIELDS = ("occurred_at", "published_at", "dead_lettered_at", "timestamp")
FRAMEWORK_MODULES = ("django", "flask", "fastapi", "starlette")


def entry(status: str = "published", /, **payload: Any) -> dict[str, Any]:
    """Build an entry that is expected to be valid, with a fixed ``now``."""
    payload.setdefault("event_name", "order.placed")
    built = build_entry(status, payload, now=NOW)
    assert built is not None
    return built


def expected_keys(status: str, send_error_message: bool) -> set[str]:
    keys = set(ENTRY_FIELDS)
    if status == "emitted":
        keys |= set(AGGREGATE_FIELDS)
    if status == "dead_lettered":
        keys.add("error_class")
        if send_error_message:
            keys.add("error_message")
    return keys


class Unprintable:
    """An object every dunder of which blows up."""

    def __str__(self) -> str:
        raise RuntimeError(SECRET)

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError(SECRET)

    def __hash__(self) -> int:
        raise RuntimeError(SECRET)


class ExplodingMapping(Mapping[str, Any]):
    """A mapping whose every read raises with a message quoting payload data."""

    def __getitem__(self, key: str) -> Any:
        raise ValueError(f"cannot read {SECRET}")

    def __iter__(self) -> Iterator[str]:
        raise ValueError(f"cannot iterate {SECRET}")

    def __len__(self) -> int:
        return 1


# -- the allowlist ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
field_values = (
    json_values
    | st.datetimes(timezones=st.none() | offsets)
    | st.dates()
    | st.uuids()
    | st.text(alphabet="0123456789 ", max_size=25)
    | st.sampled_from(["2026-01-15T10:30:00Z", "2026-01-15T12:30:00+02:00", "1e3", "-1"])
    | st.just([SECRET])
    | st.just({"nested": SECRET})
)
other_keys = st.text(max_size=12).filter(lambda k: k not in ENTRY_FIELDS + DEAD_LETTER_FIELDS)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = draw(st.dictionaries(other_keys, json_values, max_size=5))
    for key in ("payload", "metadata", "user", "request"):
        payload[key] = {"secret": SECRET, "random": draw(json_values), "list": [SECRET]}
    for key in (*ENTRY_FIELDS, *DEAD_LETTER_FIELDS):
        if draw(st.booleans()):
            payload[key] = draw(field_values)
    if draw(st.booleans()):
        payload["error_message"] = ERROR_SECRET
    if draw(st.booleans()):
        payload["event_name"] = draw(st.text(min_size=1, max_size=300) | st.integers())
    return payload


@settings(database=None, deadline=None, max_examples=300)
@given(
    status=st.sampled_from(STATUSES),
    payload=payloads(),
    send_error_message=st.booleans(),
    max_length=st.integers(min_value=0, max_value=300),
)
def test_entry_keys_are_exactly_the_allowlist_and_nothing_else_leaks(
    status: str, payload: dict[str, Any], send_error_message: bool, max_length: int
) -> None:
    """Any payload gives None or just the allowlisted keys as strict JSON, with no planted data."""
    out = build_entry(
        status,
        payload,
        send_error_message=send_error_message,
        error_message_max_length=max_length,
        now=NOW,
    )
    if out is None:
        return
    assert set(out) == expected_keys(status, send_error_message)
    text = json.dumps(out, allow_nan=False)
    text.encode("utf-8")
    assert SECRET not in text
    if not (status == "dead_lettered" and send_error_message):
        assert ERROR_SECRET not in text
    assert out["status"] == status
    assert isinstance(out["event_name"], str)
    assert 0 < len(out["event_name"]) <= 200
    assert out["timestamp"] == "2026-01-15T10:30:01.000Z"
    for key in TIME_FIELDS:
        assert out[key] is None or ISO_Z.match(out[key]), key
    for key in ("event_version", "attempts", "latency_ms"):
        assert out[key] is None or (type(out[key]) is int and out[key] >= 0), key
    assert out["event_id"] is None or type(out["event_id"]) in (int, str)
    for key in ("event_type", "idempotency_key", "error_class"):
        value = out.get(key)
        assert value is None or (isinstance(value, str) and len(value) <= 200), key


def test_plan_example_round_trips_to_the_documented_shape() -> None:
    """The plan's published example yields exactly the documented entry."""
    out = build_entry(
        "published",
        {
            "event_id": 12345,
            "event_name": "order.placed",
            "event_type": "domain",
            "event_version": 2,
            "idempotency_key": "3b0c8a52-2d6c-4a8e-9d0e-1f2a3b4c5d6e",
            "attempts": 1,
            "occurred_at": "2026-01-15T10:30:00Z",
            "published_at": "2026-01-15T10:30:01Z",
            "payload": {"total": 99},
        },
        now=NOW,
    )
    assert out == {
        "event_id": 12345,
        "event_name": "order.placed",
        "event_type": "domain",
        "event_version": 2,
        "idempotency_key": "3b0c8a52-2d6c-4a8e-9d0e-1f2a3b4c5d6e",
        "status": "published",
        "attempts": 1,
        "occurred_at": "2026-01-15T10:30:00.000Z",
        "published_at": "2026-01-15T10:30:01.000Z",
        "dead_lettered_at": None,
        "latency_ms": 1000,
        "timestamp": "2026-01-15T10:30:01.000Z",
    }
    assert list(out) == list(ENTRY_FIELDS)


def test_business_and_context_keys_are_dropped_even_when_flat() -> None:
    """payload, metadata, user, request and unknown keys never appear in the entry."""
    out = entry(
        payload={"card": SECRET},
        metadata={"ip": SECRET},
        user=SECRET,
        request={"headers": {"Authorization": SECRET}},
        database_url=SECRET,
    )
    assert set(out) == set(ENTRY_FIELDS)
    assert SECRET not in json.dumps(out)


def test_emitted_entry_reports_unknown_fields_as_null() -> None:
    """An emitted entry with only a name has every other field null except status and time."""
    out = entry("emitted")
    assert {k: v for k, v in out.items() if v is not None} == {
        "event_name": "order.placed",
        "status": "emitted",
        "timestamp": "2026-01-15T10:30:01.000Z",
    }


def test_non_finite_floats_never_reach_the_entry() -> None:
    """NaN and infinities become null or text, so strict JSON encoding always works."""
    out = entry(
        event_id=math.nan,
        event_version=math.inf,
        attempts=-math.inf,
        occurred_at=math.nan,
        published_at=math.inf,
        event_type=math.nan,
    )
    json.dumps(out, allow_nan=False)
    assert out["event_id"] is None
    assert out["event_version"] is None
    assert out["attempts"] is None
    assert out["occurred_at"] is None
    assert out["event_type"] == "nan"


def test_lone_surrogates_are_replaced_so_the_entry_encodes_as_utf8() -> None:
    """A lone surrogate in a text field is replaced rather than breaking the request body."""
    out = entry(event_name="order\ud800placed", idempotency_key="k\udfff")
    assert out["event_name"] == "order?placed"
    assert out["idempotency_key"] == "k?"
    json.dumps(out, ensure_ascii=False).encode("utf-8")


def test_non_ascii_text_is_kept() -> None:
    """Valid non-ASCII names pass through unchanged."""
    assert entry(event_name="commande.passée")["event_name"] == "commande.passée"


# -- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 15, 10, 30, tzinfo=UTC), "2026-01-15T10:30:00.000Z"),
        (
            datetime(2026, 1, 15, 12, 30, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-15T10:30:00.000Z",
        ),
        (datetime(2026, 1, 15, 10, 30, 0, 123999), "2026-01-15T10:30:00.123Z"),
        (datetime(1, 1, 1), "0001-01-01T00:00:00.000Z"),
        (date(2026, 1, 15), "2026-01-15T00:00:00.000Z"),
        ("2026-01-15T10:30:00Z", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10:30:00.5z", "2026-01-15T10:30:00.500Z"),
        ("2026-01-15T05:30:00-05:00", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10:30:00.123456+00:00", "2026-01-15T10:30:00.123Z"),
        ("2026-01-15 10:30:00", "2026-01-15T10:30:00.000Z"),
        ("  2026-01-15T10:30:00  ", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15", "2026-01-15T00:00:00.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (1768473000, "2026-01-15T10:30:00.000Z"),
        (1768473000.25, "2026-01-15T10:30:00.250Z"),
        (1768473000250, "2026-01-15T10:30:00.250Z"),
        (1768473000250.0, "2026-01-15T10:30:00.250Z"),
        (-86400, "1969-12-31T00:00:00.000Z"),
    ],
)
def test_to_iso_normalises_to_utc_milliseconds_with_z(value: object, expected: str) -> None:
    """Datetimes, dates, ISO strings and epoch numbers all become UTC ISO 8601 ending in Z."""
    assert to_iso(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        "",
        "   ",
        "not a date",
        "2026-13-01T00:00:00Z",
        "2026-01-15T10:30:00Z" + "0" * 100,
        "1768473000",
        b"2026-01-15",
        math.nan,
        math.inf,
        -math.inf,
        1e20,
        10**400,
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
        Unprintable(),
        [2026, 1, 15],
        {"at": "2026-01-15"},
    ],
)
def test_to_iso_returns_none_for_garbage_and_out_of_range(value: object) -> None:
    """Unparseable, boolean, non-finite or out-of-range input gives None instead of raising."""
    assert to_iso(value) is None


@settings(database=None, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.floats(),
        st.integers(),
        st.datetimes(timezones=st.none() | offsets),
        st.dates(),
        st.booleans(),
    )
)
def test_to_iso_never_raises_and_always_ends_in_z(value: object) -> None:
    """Whatever to_iso is given, it returns None or a well-formed UTC timestamp."""
    out = to_iso(value)
    assert out is None or ISO_Z.match(out)


def test_to_iso_agrees_with_the_aware_datetime_it_parses() -> None:
    """A converted offset time denotes the same instant as the input."""
    local = datetime(2026, 6, 1, 23, 59, 59, 999000, tzinfo=timezone(timedelta(hours=-7)))
    out = to_iso(local)
    assert out is not None
    assert datetime.fromisoformat(out.replace("Z", "+00:00")) == local


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20260115T103000Z", "2026-01-15T10:30:00.000Z"),
        ("20260115", "2026-01-15T00:00:00.000Z"),
        ("2026-01-15t10:30:00z", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10:30:00.1Z", "2026-01-15T10:30:00.100Z"),
        ("2026-01-15T10:30:00.12Z", "2026-01-15T10:30:00.120Z"),
        ("2026-01-15T10:30:00.1234Z", "2026-01-15T10:30:00.123Z"),
        ("2026-01-15T10:30:00.1239999999Z", "2026-01-15T10:30:00.123Z"),
        ("2026-01-15T10:30:00,25Z", "2026-01-15T10:30:00.250Z"),
        ("2026-01-15T16:00:00+05:30", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T16:00:00+0530", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T15:30:00+05", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T16:00:15+05:30:15", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T00:30:00-10:00", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10:30:00.5-00:00", "2026-01-15T10:30:00.500Z"),
        ("2026-01-15T1030", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10:30", "2026-01-15T10:30:00.000Z"),
        ("2026-01-15T10", "2026-01-15T10:00:00.000Z"),
        ("20260115 103000.5", "2026-01-15T10:30:00.500Z"),
    ],
)
def test_to_iso_reads_every_documented_iso_8601_form_on_every_python(
    value: str, expected: str
) -> None:
    """Basic and extended formats, z, any offset shape, any fraction length, on every Python."""
    assert to_iso(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-15T24:00:00",
        "2026-02-30",
        "2026-01-15T10:30:60",
        "2026-01-15T10:30:00+24:00",
        "2026-01-15Z",
        "2026-01-15+05:00",
        "2026-0115",
        "2026-01-15T10:3000",
        "2026-01-15T10:30:00.",
        "2026-01-15T10.5",
        "2026-01-15T10:30:00+05:30Z",
        "2026-01-15T10:30:00 +05:30",
        "2026-01-15x10:30:00",
        "2026-W03-4",
        "\uff12\uff10\uff12\uff16-01-15",
        "2026-01-15T1\u0660:30:00",
    ],
)
def test_to_iso_rejects_iso_look_alikes(value: str) -> None:
    """Impossible times, dangling offsets, mixed separators and non-ASCII digits give None."""
    assert to_iso(value) is None


def two_digits(high: int) -> st.SearchStrategy[str]:
    """Zero-padded numbers from 00 to ``high``, past the valid range to reach the errors."""
    return st.integers(min_value=0, max_value=high).map("{:02d}".format)


@st.composite
def clock_texts(draw: st.DrawFn, max_hour: int) -> str:
    """HH[:MM[:SS[.f...]]] or the same without colons (or, to be refused, with one colon)."""
    text = draw(two_digits(max_hour))
    parts = 1
    for high in (60, 61):
        if not draw(st.booleans()):
            break
        text += draw(st.sampled_from([":", ""])) + draw(two_digits(high))
        parts += 1
    if parts == 3 and draw(st.booleans()):
        text += draw(st.sampled_from(".,")) + draw(st.text("0123456789", min_size=1, max_size=9))
    return text


@st.composite
def iso_texts(draw: st.DrawFn) -> str:
    """Strings in the forms to_iso documents, with out-of-range fields now and then."""
    dashes = st.sampled_from(["-", "-", ""])
    year = draw(st.integers(min_value=0, max_value=9999))
    text = f"{year:04d}{draw(dashes)}{draw(two_digits(13))}{draw(dashes)}{draw(two_digits(32))}"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["T", "t", " "])) + draw(clock_texts(max_hour=24))
        zone = draw(st.sampled_from(["", "Z", "z", "+", "-"]))
        text += zone + (draw(clock_texts(max_hour=25)) if zone in ("+", "-") else "")
    return text


@settings(database=None, deadline=None)
@given(
    st.datetimes(timezones=st.none() | offsets),
    st.sampled_from(["T", " "]),
    st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]),
)
def test_isoformat_output_reads_back_as_the_same_instant(
    moment: datetime, separator: str, timespec: str
) -> None:
    """Whatever datetime.isoformat() writes, to_iso reads back to the same time on every Python."""
    # isoformat() cuts the local time, not the UTC one: with an offset that has
    # microseconds the cut moves the instant, so compare with the cut local time.
    cut = {"seconds": 1_000_000, "milliseconds": 1000}.get(timespec, 1)
    written = moment.replace(microsecond=moment.microsecond // cut * cut)
    assert to_iso(moment.isoformat(separator, timespec)) == to_iso(written)


def _canonical_shapes() -> st.SearchStrategy[str]:
    # Every field a little past its range, and sometimes one character replaced by
    # another digit (non-ASCII ones too) or a letter.
    fields = st.tuples(
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 29),
        st.integers(0, 61),
        st.integers(0, 61),
        st.integers(0, 999),
    ).map(lambda f: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % f)  # noqa: UP031

    def replace(text: str, at: int, char: str | None) -> str:
        return text if char is None else text[:at] + char + text[at + 1 :]

    odd = st.sampled_from([None, None, None, "\u0663", "\uff11", "a", " ", ":", "5", "9"])
    return st.builds(replace, fields, st.integers(0, 23), odd)


@settings(database=None, deadline=None, max_examples=2000)
@given(_canonical_shapes())
def test_the_canonical_fast_path_reads_what_the_parser_reads(text: str) -> None:
    """instant() reads a text of the canonical shape (its minute cached) exactly as the
    general parser does: the same text and epoch milliseconds, or None for the same
    texts (2026-02-30, hour 24, second 60, non-ASCII digits)."""
    from spooler import timestamps

    moment = timestamps._to_utc(text)
    expected = None
    if moment is not None:
        expected = (timestamps._format(moment), (moment - timestamps._EPOCH) // timestamps._MS)
    assert timestamps.instant(text) == expected
    assert timestamps.instant(text) == expected  # the minute now comes from the cache


@pytest.mark.skipif(sys.version_info < (3, 11), reason="fromisoformat() reads ISO 8601 from 3.11")
@settings(database=None, deadline=None, max_examples=1000)
@given(iso_texts())
def test_iso_strings_parse_exactly_as_fromisoformat_does_on_311_and_later(text: str) -> None:
    """spooler reads a documented ISO 8601 string as Python 3.11+ does, to the microsecond."""
    try:
        # fromisoformat() only knows an upper-case Z.
        reference: datetime | None = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        reference = None
    parsed = parse_iso(text)
    assert parsed == reference
    if parsed is not None and reference is not None:
        assert parsed.utcoffset() == reference.utcoffset()
        assert to_iso(text) == to_iso(reference)


@freeze_time("2026-01-15 10:30:01.5")
def test_timestamp_defaults_to_the_current_utc_time() -> None:
    """Without now=, the entry's timestamp is the wall clock in UTC."""
    out = build_entry("emitted", {"event_name": "order.placed"})
    assert out is not None
    assert out["timestamp"] == "2026-01-15T10:30:01.500Z"


def test_naive_now_is_taken_as_utc() -> None:
    """A naive now= is treated as UTC rather than local time."""
    out = build_entry("emitted", {"event_name": "x"}, now=datetime(2026, 1, 15, 10, 30))
    assert out is not None
    assert out["timestamp"] == "2026-01-15T10:30:00.000Z"


def test_missing_completion_time_defaults_to_now_per_status() -> None:
    """published_at / dead_lettered_at default to now only for their own status."""
    assert entry("emitted")["published_at"] is None
    assert entry("emitted")["dead_lettered_at"] is None
    assert entry("published")["published_at"] == "2026-01-15T10:30:01.000Z"
    assert entry("published")["dead_lettered_at"] is None
    assert entry("dead_lettered")["dead_lettered_at"] == "2026-01-15T10:30:01.000Z"
    assert entry("dead_lettered")["published_at"] is None


def test_payload_completion_time_wins_over_now() -> None:
    """A published_at given by the host is reported instead of now."""
    out = entry("published", published_at="2026-01-15T10:29:00Z")
    assert out["published_at"] == "2026-01-15T10:29:00.000Z"


# -- latency ---------------------------------------------------------------------------------


def test_latency_runs_from_occurred_to_published() -> None:
    """latency_ms is the milliseconds between occurred_at and published_at."""
    out = entry(
        "published",
        occurred_at=datetime(2026, 1, 15, 10, 30, tzinfo=UTC),
        published_at="2026-01-15T10:30:01.250Z",
    )
    assert out["latency_ms"] == 1250


def test_latency_runs_from_occurred_to_dead_lettered() -> None:
    """A dead-lettered entry measures to dead_lettered_at, not published_at."""
    out = entry(
        "dead_lettered",
        occurred_at="2026-01-15T10:00:00Z",
        published_at="2026-01-15T10:00:01Z",
        dead_lettered_at="2026-01-15T10:00:05Z",
    )
    assert out["latency_ms"] == 5000


def test_latency_uses_now_when_completion_time_is_missing() -> None:
    """Without published_at, latency runs to now, the time of the notification."""
    assert entry("published", occurred_at=NOW - timedelta(seconds=2))["latency_ms"] == 2000


def test_latency_matches_the_reported_millisecond_timestamps() -> None:
    """Latency is the difference of the truncated timestamps, so the entry is self-consistent."""
    out = entry(
        "published",
        occurred_at=datetime(2026, 1, 15, 10, 30, 0, 900, tzinfo=UTC),
        published_at=datetime(2026, 1, 15, 10, 30, 0, 1100, tzinfo=UTC),
    )
    assert (out["occurred_at"], out["published_at"]) == (
        "2026-01-15T10:30:00.000Z",
        "2026-01-15T10:30:00.001Z",
    )
    assert out["latency_ms"] == 1


def test_negative_latency_from_clock_skew_is_null() -> None:
    """A completion time before occurred_at gives a null latency, not a negative or zero one."""
    out = entry("published", occurred_at=NOW + timedelta(seconds=3))
    assert out["latency_ms"] is None
    assert out["occurred_at"] == "2026-01-15T10:30:04.000Z"


def test_latency_is_null_without_occurred_at_or_for_emitted() -> None:
    """Latency needs both ends and a completion status."""
    assert entry("published")["latency_ms"] is None
    emitted = entry(
        "emitted", occurred_at="2026-01-15T10:00:00Z", published_at="2026-01-15T10:00:01Z"
    )
    assert emitted["latency_ms"] is None


# -- dead letters ----------------------------------------------------------------------------


def test_error_message_is_absent_unless_opted_in() -> None:
    """By default a dead-lettered entry carries error_class but never the error message."""
    out = entry("dead_lettered", error_class="TimeoutError", error_message=ERROR_SECRET)
    assert set(out) == set(ENTRY_FIELDS) | {"error_class"}
    assert out["error_class"] == "TimeoutError"
    assert ERROR_SECRET not in json.dumps(out)


def test_error_message_opt_in_truncates_to_max_length() -> None:
    """With send_error_message the message is included, cut to error_message_max_length."""
    out = build_entry(
        "dead_lettered",
        {"event_name": "x", "error_message": "connection refused by broker"},
        send_error_message=True,
        error_message_max_length=10,
        now=NOW,
    )
    assert out is not None
    assert out["error_message"] == "connection"


def test_error_message_opt_in_default_length_is_200() -> None:
    """The default cap on an opted-in message is 200 characters."""
    out = build_entry(
        "dead_lettered",
        {"event_name": "x", "error_message": "e" * 500},
        send_error_message=True,
        now=NOW,
    )
    assert out is not None
    assert out["error_message"] == "e" * 200


def test_error_message_opt_in_without_a_message_is_null() -> None:
    """Opting in when the payload has no message still emits the key, as null."""
    out = build_entry("dead_lettered", {"event_name": "x"}, send_error_message=True, now=NOW)
    assert out is not None
    assert out["error_message"] is None
    assert out["error_class"] is None


def test_error_fields_only_appear_on_dead_lettered_entries() -> None:
    """Published entries drop error_class and error_message even when opted in."""
    out = build_entry(
        "published",
        {"event_name": "x", "error_class": "E", "error_message": ERROR_SECRET},
        send_error_message=True,
        now=NOW,
    )
    assert out is not None
    assert set(out) == set(ENTRY_FIELDS)


def test_error_class_accepts_exception_classes_and_instances() -> None:
    """An exception class or instance is reported by its qualified class name."""
    assert entry("dead_lettered", error_class=ValueError)["error_class"] == "ValueError"
    assert entry("dead_lettered", error_class=KeyError("k"))["error_class"] == "KeyError"
    decode_error = json.JSONDecodeError("msg", "doc", 0)
    assert entry("dead_lettered", error_class=decode_error)["error_class"] == (
        "json.decoder.JSONDecodeError"
    )


def test_exception_error_message_with_broken_str_becomes_null() -> None:
    """An exception whose __str__ raises yields a null message, not a lost entry."""

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    out = build_entry(
        "dead_lettered",
        {"event_name": "x", "error_class": Broken, "error_message": Broken()},
        send_error_message=True,
        now=NOW,
    )
    assert out is not None
    assert out["error_message"] is None
    assert out["error_class"].endswith("Broken")


# -- coercions -------------------------------------------------------------------------------

SAMPLE_UUID = uuid.UUID("3b0c8a52-2d6c-4a8e-9d0e-1f2a3b4c5d6e")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345, 12345),
        ("12345", 12345),
        (" 42 ", 42),
        ("0", 0),
        (-7, -7),
        ("007", "007"),
        ("-7", "-7"),
        ("9" * 30, "9" * 30),
        (SAMPLE_UUID, str(SAMPLE_UUID)),
        ("evt_abc", "evt_abc"),
        ("x" * 500, "x" * 200),
        ("", None),
        (True, None),
        (1.0, None),
        (2**63, None),
        ([1], None),
        ({"id": 1}, None),
        (b"12", None),
    ],
)
def test_event_id_is_an_int_or_a_string_id(value: object, expected: object) -> None:
    """event_id keeps ints and ids, turns canonical digit strings into ints, and nulls the rest."""
    assert entry(event_id=value)["event_id"] == expected


@pytest.mark.parametrize("field", ["event_version", "attempts"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, 2),
        (0, 0),
        ("3", 3),
        (" 3 ", 3),
        ("03", 3),
        (True, None),
        (False, None),
        (-1, None),
        ("-1", None),
        (2.0, None),
        ("2.0", None),
        ("\uff12", None),
        ("9" * 30, None),
        (2**64, None),
        ([2], None),
        ({"v": 2}, None),
        ("", None),
    ],
)
def test_counts_are_non_negative_ints(field: str, value: object, expected: int | None) -> None:
    """event_version and attempts take ints and ASCII digit strings; bools and the rest are null."""
    out = entry(**{field: value})
    assert out[field] == expected
    assert out[field] is None or type(out[field]) is int


@pytest.mark.parametrize("field", ["event_type", "idempotency_key", "error_class"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("domain", "domain"),
        ("  domain  ", "domain"),
        (5, "5"),
        (1.5, "1.5"),
        (SAMPLE_UUID, str(SAMPLE_UUID)),
        ("y" * 201, "y" * 200),
        ("   ", None),
        (True, None),
        (None, None),
        (["domain"], None),
        ({"t": "domain"}, None),
        (Unprintable(), None),
    ],
)
def test_text_fields_take_scalars_and_cap_length(field: str, value: object, expected: Any) -> None:
    """Text fields keep strings (stripped, capped at 200) and str() of numbers and UUIDs only."""
    assert entry("dead_lettered", **{field: value})[field] == expected


def test_event_name_is_stripped_capped_and_coerced_from_int() -> None:
    """event_name is stripped, cut to 200 characters, and ints become their decimal text."""
    assert entry(event_name="  order.placed\n")["event_name"] == "order.placed"
    assert entry(event_name="n" * 300)["event_name"] == "n" * 200
    assert entry(event_name=42)["event_name"] == "42"


def test_int_and_str_subclasses_come_out_as_plain_types() -> None:
    """Enum-like subclasses are reported as their plain int or str value."""

    class Kind(str):
        def __str__(self) -> str:
            raise RuntimeError("subclass methods are not called")

    class Version(int):
        def __repr__(self) -> str:
            raise RuntimeError("subclass methods are not called")

    out = entry(event_type=Kind("domain"), event_version=Version(3), event_id=Version(9))
    assert type(out["event_type"]) is str
    assert out["event_type"] == "domain"
    assert type(out["event_version"]) is int
    assert out["event_version"] == 3
    assert type(out["event_id"]) is int


# -- invalid entries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"event_name": ""},
        {"event_name": "   "},
        {"event_name": None},
        {"event_name": True},
        {"event_name": ["order.placed"]},
        {"event_name": {"name": "order.placed"}},
        {"event_name": Unprintable()},
        {"name": "order.placed"},
    ],
)
def test_entry_without_a_usable_event_name_is_none(payload: dict[str, Any]) -> None:
    """An entry needs a non-blank scalar event_name."""
    assert build_entry("published", payload, now=NOW) is None


@pytest.mark.parametrize(
    "payload", [None, "order.placed", 42, [("event_name", "order.placed")], Unprintable()]
)
def test_non_mapping_payload_is_none(payload: Any) -> None:
    """Only a Mapping payload can yield an entry."""
    assert build_entry("published", payload, now=NOW) is None


@pytest.mark.parametrize("status", ["sent", "", "Published", None, 1, Unprintable()])
def test_unknown_status_is_none(status: Any) -> None:
    """A status outside STATUSES yields None, even one that cannot be compared."""
    assert build_entry(status, {"event_name": "order.placed"}, now=NOW) is None


def test_hostile_values_null_their_field_but_keep_the_entry() -> None:
    """Objects whose dunders raise are dropped field by field without raising."""
    hostile = Unprintable()
    out = entry(
        "dead_lettered",
        event_id=hostile,
        event_type=hostile,
        event_version=hostile,
        idempotency_key=hostile,
        attempts=hostile,
        occurred_at=hostile,
        dead_lettered_at=hostile,
        error_class=hostile,
    )
    assert {k for k, v in out.items() if v is not None} == {
        "event_name",
        "status",
        "dead_lettered_at",
        "timestamp",
    }


def test_failure_inside_the_payload_is_swallowed_and_logged_without_payload_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payload that raises on read gives None, and the debug log does not quote it."""
    caplog.set_level(logging.DEBUG, logger="spooler.serializer")
    assert build_entry("published", ExplodingMapping(), now=NOW) is None
    assert "ValueError" in caplog.text
    assert SECRET not in caplog.text


def test_garbage_now_falls_back_to_the_clock() -> None:
    """An unusable now= still yields an entry stamped with the current time."""
    out = build_entry("emitted", {"event_name": "x"}, now="soon")  # type: ignore[arg-type]
    assert out is not None
    assert ISO_Z.match(out["timestamp"])
    earliest = to_iso(datetime.now(UTC) - timedelta(minutes=1))
    assert earliest is not None
    assert out["timestamp"] >= earliest


# -- schemas ---------------------------------------------------------------------------------

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "sku": {"type": "string"}},
    "required": ["total"],
}


def test_schema_fingerprint_ignores_key_order() -> None:
    """Reordering a schema's keys does not change its fingerprint."""
    reordered = {
        "required": ["total"],
        "properties": {"sku": {"type": "string"}, "total": {"type": "number"}},
        "type": "object",
    }
    assert schema_fingerprint(ORDER_SCHEMA) == schema_fingerprint(reordered)


def test_schema_fingerprint_is_sha256_of_canonical_json() -> None:
    """The fingerprint is the SHA-256 of compact, sorted, UTF-8 JSON."""
    schema = {"b": "é", "a": [1, 2]}
    canonical = '{"a":[1,2],"b":"é"}'.encode()
    assert schema_fingerprint(schema) == hashlib.sha256(canonical).hexdigest()


def test_schema_fingerprint_changes_with_content() -> None:
    """A different schema gets a different fingerprint."""
    changed = {**ORDER_SCHEMA, "required": ["total", "sku"]}
    assert schema_fingerprint(ORDER_SCHEMA) != schema_fingerprint(changed)


def test_load_schemas_from_a_mapping() -> None:
    """A name -> schema mapping gives name -> fingerprint."""
    assert load_schemas({"order.placed": ORDER_SCHEMA, "payment.processed": {}}) == {
        "order.placed": schema_fingerprint(ORDER_SCHEMA),
        "payment.processed": schema_fingerprint({}),
    }


def test_load_schemas_of_none_is_empty() -> None:
    """No schemas configured means no fingerprints."""
    assert load_schemas(None) == {}


def test_load_schemas_from_a_directory_skips_broken_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each *.json file is one schema named by event_name or stem; broken files are skipped."""
    (tmp_path / "order.placed.json").write_text(json.dumps(ORDER_SCHEMA, indent=4))
    named = {"event_name": "payment.processed", "type": "object"}
    (tmp_path / "payment.json").write_text(json.dumps(named))
    (tmp_path / "broken.json").write_text('{"type": "object", "secret": "' + SECRET)
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    (tmp_path / "notes.txt").write_text("{}")
    (tmp_path / ".hidden.json").write_text("{}")
    (tmp_path / "nested.json").mkdir()
    caplog.set_level(logging.WARNING, logger="spooler.serializer")

    assert load_schemas(tmp_path) == {
        "order.placed": schema_fingerprint(ORDER_SCHEMA),
        "payment.processed": schema_fingerprint(named),
    }
    assert "broken.json" in caplog.text
    assert "latin1.json" in caplog.text
    assert SECRET not in caplog.text


def test_load_schemas_accepts_a_string_path(tmp_path: Path) -> None:
    """A directory given as a str works like a Path."""
    (tmp_path / "order.placed.json").write_text(json.dumps(ORDER_SCHEMA))
    assert load_schemas(str(tmp_path)) == {"order.placed": schema_fingerprint(ORDER_SCHEMA)}


def test_load_schemas_keeps_the_first_of_two_files_for_one_event(tmp_path: Path) -> None:
    """Two files claiming one event name keep the first in file-name order."""
    first = {"event_name": "order.placed", "v": 1}
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps({"event_name": "order.placed", "v": 2}))
    assert load_schemas(tmp_path) == {"order.placed": schema_fingerprint(first)}


def test_load_schemas_of_a_missing_directory_is_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory that vanished gives no fingerprints and a warning instead of an error."""
    caplog.set_level(logging.WARNING, logger="spooler.serializer")
    assert load_schemas(tmp_path / "gone") == {}
    assert "gone" in caplog.text


def test_load_schemas_skips_unencodable_mapping_entries() -> None:
    """Schemas that cannot be canonicalised, or non-string names, are skipped."""
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    source: dict[Any, Any] = {"ok": {}, "cyclic": cyclic, "mixed": {1: "a", "b": 2}, 7: {}}
    assert load_schemas(source) == {"ok": schema_fingerprint({})}


# -- heartbeat and framework -----------------------------------------------------------------


@pytest.fixture
def no_frameworks(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Hide every supported framework from sys.modules for one test."""
    for name in FRAMEWORK_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return monkeypatch


def test_detect_framework_is_none_when_nothing_is_loaded(no_frameworks: pytest.MonkeyPatch) -> None:
    """With no framework imported, detection reports none and imports none."""
    assert detect_framework() == (None, None)
    assert not any(name in sys.modules for name in FRAMEWORK_MODULES)


@pytest.mark.parametrize(
    ("module", "distribution"),
    [("django", "Django"), ("flask", "Flask"), ("fastapi", "fastapi"), ("starlette", "starlette")],
)
def test_detect_framework_reports_a_loaded_framework_and_its_version(
    no_frameworks: pytest.MonkeyPatch, module: str, distribution: str
) -> None:
    """A framework present in sys.modules is reported with its installed version."""
    no_frameworks.setitem(sys.modules, module, types.ModuleType(module))
    assert detect_framework() == (module, metadata.version(distribution))


def test_detect_framework_prefers_fastapi_over_the_starlette_it_imports(
    no_frameworks: pytest.MonkeyPatch,
) -> None:
    """fastapi wins over starlette, which every fastapi app also has loaded."""
    no_frameworks.setitem(sys.modules, "starlette", types.ModuleType("starlette"))
    no_frameworks.setitem(sys.modules, "fastapi", types.ModuleType("fastapi"))
    assert detect_framework()[0] == "fastapi"


def test_heartbeat_has_the_documented_shape() -> None:
    """The heartbeat carries identity, versions, fingerprints, uptime, time and spool stats."""
    spool = {"pending": 3, "bytes": 4096}
    beat = build_heartbeat(
        app_name="MyApp",
        environment="production",
        uptime_seconds=3600.9,
        schema_fingerprints={"order.placed": "ab" * 32},
        spool=spool,
        framework=("django", "5.2"),
        now=NOW,
    )
    assert beat == {
        "type": "heartbeat",
        "app_name": "MyApp",
        "environment": "production",
        "gem_version": spooler.__version__,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "framework": "django",
        "framework_version": "5.2",
        "schema_fingerprints": {"order.placed": "ab" * 32},
        "uptime_seconds": 3600,
        "timestamp": "2026-01-15T10:30:01.000Z",
        "spool": {"pending": 3, "bytes": 4096},
    }
    assert beat["spool"] is not spool
    json.dumps(beat, allow_nan=False)


def test_heartbeat_detects_the_framework_when_not_given(no_frameworks: pytest.MonkeyPatch) -> None:
    """framework=None fills framework and framework_version from sys.modules."""
    no_frameworks.setitem(sys.modules, "flask", types.ModuleType("flask"))
    beat = build_heartbeat(app_name="a", environment="e", uptime_seconds=1)
    assert (beat["framework"], beat["framework_version"]) == ("flask", metadata.version("flask"))
    assert beat["schema_fingerprints"] == {}
    assert beat["spool"] == {}


@pytest.mark.parametrize("uptime", [-5.0, math.nan, math.inf])
def test_heartbeat_uptime_is_never_negative_or_non_finite(uptime: float) -> None:
    """Nonsense uptimes are reported as 0 so the heartbeat stays strict JSON."""
    beat = build_heartbeat(
        app_name="a", environment="e", uptime_seconds=uptime, framework=(None, None)
    )
    assert beat["uptime_seconds"] == 0


@freeze_time("2026-01-15 10:30:01")
def test_heartbeat_timestamp_defaults_to_now() -> None:
    """Without now=, the heartbeat is stamped with the current UTC time."""
    beat = build_heartbeat(app_name="a", environment="e", uptime_seconds=1, framework=(None, None))
    assert beat["timestamp"] == "2026-01-15T10:30:01.000Z"


# -- capture: the host's share in background mode ---------------------------------------

# Every key a notification's payload may carry that build_entry reads, and one it never does.
_PAYLOAD_KEYS = [
    *(f for f in ENTRY_FIELDS if f not in ("status", "latency_ms", "timestamp")),
    *AGGREGATE_FIELDS,
    *DEAD_LETTER_FIELDS,
    "payload",
]

_field_values = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(timezone.utc)),
    st.sampled_from(["2026-01-15T10:30:00.000Z", "2026-02-30T10:30:00.000Z", " 7 ", "007"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(ValueError("boom")),
    st.just(KeyError),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["emitted", "published", "dead_lettered"]),
    st.dictionaries(st.sampled_from(_PAYLOAD_KEYS), _field_values),
    st.booleans(),
)
def test_capture_then_build_gives_what_build_entry_gives(
    status: str, payload: dict[str, Any], send_error_message: bool
) -> None:
    """Splitting build_entry between the host's thread and the writer changes nothing:
    same entry, and None exactly when build_entry says None."""
    from spooler.serializer import capture, entry_from_capture

    now = 1_768_473_000.123
    direct = build_entry(status, payload, send_error_message=send_error_message, now=now)
    kept = capture(status, payload, now=now, send_error_message=send_error_message)
    if kept is None or isinstance(kept, dict):
        assert kept == direct
    else:
        assert entry_from_capture(kept, send_error_message=send_error_message) == direct


_row_values = st.one_of(
    _field_values,
    st.text(alphabet=st.characters(), max_size=260),  # past MAX_TEXT_LENGTH, surrogates
    st.sampled_from(["", "   ", "\t x \n", "é", "\ud800", "9" * 19, "9" * 20, "-1", "0", "00"]),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from(["2026-01-15T10:30:00.999Z", "2026-01-15T10:31:00.000Z", "1999-12-31"]),
    st.uuids(),
)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(["emitted", "published", "dead_lettered"]),
    st.dictionaries(st.sampled_from(_PAYLOAD_KEYS), _row_values),
    st.booleans(),
    st.integers(min_value=0, max_value=300),
    st.floats(min_value=0, max_value=4e9),
)
def test_the_writers_row_is_the_text_encode_row_gives_the_entry(
    status: str, payload: dict[str, Any], send_error_message: bool, limit: int, now: float
) -> None:
    """row_from_capture writes the JSON text itself (the writer thread's hot path): the
    very row encode_row gives the entry build_entry builds, and None exactly when that
    entry is None."""
    from spooler.serializer import capture, encode_row, row_from_capture

    options = {"send_error_message": send_error_message, "error_message_max_length": limit}
    payload.setdefault("event_name", "order.placed")
    direct = build_entry(status, payload, now=now, **options)
    kept = capture(status, payload, now=now, **options)
    if kept is None or isinstance(kept, dict):
        assert kept == direct
        return
    row = row_from_capture(kept, **options)
    if direct is None:
        assert row is None
    else:
        assert row == encode_row(direct)
        assert json.loads(row[2]) == direct


def test_capture_keeps_no_reference_to_the_hosts_objects() -> None:
    """What the host's thread keeps holds no container, no exception and no traceback."""
    from spooler.serializer import capture

    try:
        raise TimeoutError("payment service down for alice@example.com")
    except TimeoutError as exc:
        error = exc
    payload = {
        "event_name": "order.placed",
        "event_id": 7,
        "occurred_at": "2026-01-15T10:30:00.000Z",
        "payload": {"email": "alice@example.com"},
        "metadata": ["ip"],
        "error_class": error,
        "error_message": error,
    }
    kept = capture("dead_lettered", payload, now=1_768_473_000.0)
    assert isinstance(kept, tuple)

    def leaves(value: object) -> Iterator[object]:
        if isinstance(value, tuple):
            for item in value:
                yield from leaves(item)
        else:
            yield value

    for leaf in leaves(kept):
        assert type(leaf) in (str, int, float, type(None)), leaf
    assert "TimeoutError" in kept
    assert "alice@example.com" not in repr(kept)  # the message stays out unless opted in


def test_emitted_entries_carry_the_aggregate_fields_and_only_they_do() -> None:
    """aggregate_type, aggregate_id and aggregate_version (as the Ruby reporter sends them)
    ride on emitted entries, coerced like the event's own; other statuses never carry them."""
    out = entry(
        "emitted",
        aggregate_type=" Order ",
        aggregate_id="42",
        aggregate_version=3,
        payload={"aggregate_id": SECRET},
    )
    assert (out["aggregate_type"], out["aggregate_id"], out["aggregate_version"]) == (
        "Order",
        42,
        3,
    )
    uuid_id = uuid.UUID(int=7)
    odd = entry("emitted", aggregate_id=uuid_id, aggregate_version=-1, aggregate_type={"x": 1})
    assert (odd["aggregate_type"], odd["aggregate_id"], odd["aggregate_version"]) == (
        None,
        str(uuid_id),
        None,
    )
    for status in ("published", "dead_lettered"):
        assert not set(AGGREGATE_FIELDS) & set(entry(status, aggregate_type="Order"))
