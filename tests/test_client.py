"""CloudClient against a real local Receiver; classify / parse_retry_after as units."""

from __future__ import annotations

import gzip
import json
import logging
import os
import platform
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest

from spooler import __version__
from spooler.client import CloudClient, classify, parse_retry_after
from spooler.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RejectedError,
    TransientDeliveryError,
)
from spooler.receiver import Faults, Receiver
from tests.conftest import reap, wait_for

KEY = "sk_test_S3CRET_d41d8cd98f00b204"
WRONG_KEY = "sk_test_WR0NG_e9800998ecf8427e"
# Stands in for metadata that must never reach a message or a log line.
MARKER = "Marker-7f3c-never-log-me"
# httpx's default transport with one shared TLS context: loading the CA bundle
# costs ~40 ms per client, which would dominate this file.
TLS = ssl.create_default_context(cafile=certifi.where())


def entry(entry_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entry_id": entry_id,
        "event_name": "OrderPlaced",
        "status": "published",
        "attempts": 1,
        "timestamp": "2024-05-01T12:00:00.000Z",
        "error_message": MARKER,
    }
    base.update(changes)
    return base


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db") as running:
        yield running


@pytest.fixture
def make_client(receiver: Receiver) -> Iterator[Callable[..., CloudClient]]:
    made: list[CloudClient] = []

    def make(**options: Any) -> CloudClient:
        options.setdefault("api_key", KEY)
        options.setdefault("endpoint", receiver.url)
        options.setdefault("transport", httpx.HTTPTransport(verify=TLS))
        client = CloudClient(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., CloudClient]) -> CloudClient:
    return make_client()


# Delivery


def test_entries_are_delivered_and_stored(receiver: Receiver, client: CloudClient) -> None:
    """A 2xx answer returns quietly and the receiver holds the entries in order."""
    client.send_entries([entry("e1"), entry("e2")], idempotency_key="batch-1")

    assert receiver.entry_ids() == ["e1", "e2"]
    assert receiver.entries()[0] == entry("e1")


def test_contract_headers_are_sent(receiver: Receiver, client: CloudClient) -> None:
    """Every request carries the bearer key, JSON type, gem version, user agent and given key."""
    client.send_entries([entry("e1")], idempotency_key="batch-42")

    [logged] = receiver.requests()
    assert logged["authorized"] == 1
    assert logged["content_type"] == "application/json"
    assert logged["gem_version"] == __version__
    assert logged["user_agent"] == f"spooler/{__version__} (Python {platform.python_version()})"
    assert logged["idempotency_key"] == "batch-42"
    assert logged["path"] == "/events"


def test_endpoint_base_path_is_kept(receiver: Receiver, make_client: Callable[..., Any]) -> None:
    """An endpoint with a path (and a trailing slash) gets /events appended to that path."""
    make_client(endpoint=receiver.url + "/v1/ingest/").send_entries(
        [entry("e1")], idempotency_key="k"
    )

    assert [r["path"] for r in receiver.requests()] == ["/v1/ingest/events"]


def test_heartbeat_is_delivered_with_a_fresh_idempotency_key(
    receiver: Receiver, client: CloudClient
) -> None:
    """Each heartbeat is stored and goes out under its own generated Idempotency-Key."""
    heartbeat = {"type": "heartbeat", "app_name": "shop", "spool": {"pending": 3}}
    client.send_heartbeat(heartbeat)
    client.send_heartbeat(heartbeat)

    assert receiver.heartbeats() == [heartbeat, heartbeat]
    keys = [r["idempotency_key"] for r in receiver.requests()]
    assert all(keys) and keys[0] != keys[1]


def test_duplicate_entry_ids_are_dropped_and_counted(
    receiver: Receiver, client: CloudClient
) -> None:
    """Re-sending an entry_id stores it once and the receiver counts the duplicate."""
    client.send_entries([entry("e1"), entry("e2")], idempotency_key="k1")
    client.send_entries([entry("e2"), entry("e3")], idempotency_key="k2")

    assert receiver.entry_ids() == ["e1", "e2", "e3"]
    assert receiver.duplicate_count() == 1


def test_one_connection_is_reused(receiver: Receiver, client: CloudClient) -> None:
    """Consecutive calls reuse the pooled keep-alive connection."""
    client.send_entries([entry("e1")], idempotency_key="k1")
    client.send_heartbeat({"type": "heartbeat"})
    client.send_entries([entry("e2")], idempotency_key="k2")

    assert {r["connection"] for r in receiver.requests()} == {1}


def test_empty_batch_is_a_programming_error(client: CloudClient) -> None:
    """An empty batch or idempotency key raises ValueError before anything is sent."""
    with pytest.raises(ValueError):
        client.send_entries([], idempotency_key="k")
    with pytest.raises(ValueError):
        client.send_entries([entry("e1")], idempotency_key="")


@pytest.mark.parametrize("key", ["", "has space", "caf\u00e9", "tab\there"])
def test_unusable_key_is_refused_up_front(key: str) -> None:
    """A key that cannot travel in a header is a ConfigError that does not quote it."""
    with pytest.raises(ConfigError) as caught:
        CloudClient(api_key=key, endpoint="http://127.0.0.1:9")

    assert caught.value.option == "api_key"
    if key:
        assert key not in str(caught.value)


# Deadline machinery: zero impact until used, one watchdog per client


def _watchdogs() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "spooler.client.deadline")


def test_nothing_is_opened_before_the_first_request(receiver: Receiver) -> None:
    """A client aborted and closed without sending opens no file or socket and starts no thread."""
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()

    client = CloudClient(api_key=KEY, endpoint=receiver.url)
    client.abort()
    opened = (len(os.listdir("/proc/self/fd")) - fds, threading.active_count() - threads)
    client.close()

    assert opened == (0, 0)


def test_one_watchdog_thread_serves_every_request_and_stops_at_close(
    receiver: Receiver, client: CloudClient
) -> None:
    """Many requests start one watchdog thread, not one each; close() ends it."""
    before = _watchdogs()
    for i in range(30):
        client.send_entries([entry(f"e{i}")], idempotency_key=f"k{i}")

    running = _watchdogs() - before
    client.close()

    assert running == 1
    assert wait_for(lambda: _watchdogs() == before, timeout=5.0)


def test_abort_between_requests_leaves_the_next_one_alone(
    receiver: Receiver, client: CloudClient
) -> None:
    """abort() with nothing in flight only drops idle connections: the next request goes through."""
    client.send_entries([entry("e1")], idempotency_key="k1")
    client.abort()
    client.send_entries([entry("e2")], idempotency_key="k2")

    assert receiver.entry_ids() == ["e1", "e2"]


def test_abort_in_a_forked_child_leaves_the_parents_connection_alone(
    receiver: Receiver, client: CloudClient
) -> None:
    """A child's abort() does not shut down the socket it shares with its parent."""
    client.send_entries([entry("e1")], idempotency_key="k1")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            client.abort()
            code = 0
        finally:
            os._exit(code)
    [code] = reap([pid])
    client.send_entries([entry("e2")], idempotency_key="k2")

    assert code == 0
    assert {r["connection"] for r in receiver.requests()} == {1}


def test_a_closed_client_cannot_send(client: CloudClient) -> None:
    """After close() a request is a programming error (RuntimeError), not a delivery failure."""
    client.close()

    with pytest.raises(RuntimeError):
        client.send_heartbeat({"type": "heartbeat"})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("deadline", 0),
        ("deadline", -1.0),
        ("deadline", float("nan")),
        ("deadline", float("inf")),
        ("max_response_bytes", -1),
        ("max_response_bytes", 1.5),
    ],
)
def test_unusable_deadline_or_bound_is_refused(option: str, value: Any) -> None:
    """A deadline that is not a positive finite number, or a negative bound, is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        CloudClient(api_key=KEY, endpoint="http://127.0.0.1:9", **{option: value})

    assert caught.value.option == option


class _EndlessBody(httpx.SyncByteStream):
    """A response body that never ends; counts what was pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.pulled += 4096
            yield b"x" * 4096

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("status", "expected"), [(200, None), (503, TransientDeliveryError)])
def test_an_endless_body_is_read_up_to_the_bound_and_the_status_decides(
    status: int, expected: type[DeliveryError] | None
) -> None:
    """At most max_response_bytes (plus one chunk) of a body are read, then it is closed; the
    status alone classifies the answer (a 2xx is accepted, a 503 keeps its Retry-After)."""
    body = _EndlessBody()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "7"}, stream=body)

    transport = httpx.MockTransport(handler)
    with CloudClient(
        api_key=KEY, endpoint="https://api.example", transport=transport, max_response_bytes=10_000
    ) as client:
        if expected is None:
            client.send_entries([entry("e1")], idempotency_key="k")
        else:
            with pytest.raises(expected) as caught:
                client.send_entries([entry("e1")], idempotency_key="k")
            assert caught.value.retry_after == 7.0  # type: ignore[attr-defined]

    assert 10_000 < body.pulled <= 10_000 + 4096
    assert body.closed


# Failures through the real receiver


def test_server_error_is_transient(receiver: Receiver, client: CloudClient) -> None:
    """500 raises TransientDeliveryError with the status and stores nothing."""
    receiver.set_faults(Faults(status=500, first_n=1))

    with pytest.raises(TransientDeliveryError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.status == 500
    assert caught.value.retry_after is None
    assert str(caught.value) == "POST /events answered 500"
    assert receiver.entry_count() == 0


def test_429_carries_retry_after_seconds(receiver: Receiver, client: CloudClient) -> None:
    """429 with Retry-After: 7 raises TransientDeliveryError(retry_after=7)."""
    receiver.set_faults(Faults(status=429, first_n=1, retry_after="7"))

    with pytest.raises(TransientDeliveryError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)


def test_retry_after_http_date_is_converted(receiver: Receiver, client: CloudClient) -> None:
    """A Retry-After HTTP-date one minute ahead becomes about 60 seconds."""
    when = datetime.now(timezone.utc) + timedelta(seconds=60)
    receiver.set_faults(Faults(status=503, first_n=1, retry_after=format_datetime(when, True)))

    with pytest.raises(TransientDeliveryError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.retry_after is not None
    assert 50.0 <= caught.value.retry_after <= 60.0


def test_retry_after_is_capped(receiver: Receiver, make_client: Callable[..., Any]) -> None:
    """A Retry-After above max_retry_after is cut down to it."""
    receiver.set_faults(Faults(status=503, first_n=1, retry_after="86400"))

    with pytest.raises(TransientDeliveryError) as caught:
        make_client(max_retry_after=30.0).send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.retry_after == 30.0


def test_body_over_the_limit_is_payload_too_large(receiver: Receiver, client: CloudClient) -> None:
    """A body over max_body_bytes raises PayloadTooLargeError, and a smaller batch still goes."""
    receiver.set_faults(Faults(max_body_bytes=2_000))
    batch = [entry(f"e{i}") for i in range(30)]

    with pytest.raises(PayloadTooLargeError) as caught:
        client.send_entries(batch, idempotency_key="k")
    client.send_entries(batch[:2], idempotency_key="k-half")

    assert caught.value.status == 413
    assert receiver.entry_ids() == ["e0", "e1"]


def test_rejected_event_name_is_rejected_error(receiver: Receiver, client: CloudClient) -> None:
    """422 for one invalid entry raises RejectedError and stores none of the batch."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"Poison"})))

    with pytest.raises(RejectedError) as caught:
        client.send_entries([entry("e1"), entry("e2", event_name="Poison")], idempotency_key="k")

    assert caught.value.status == 422
    assert receiver.entry_count() == 0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_auth_errors(
    receiver: Receiver, make_client: Callable[..., Any], status: int
) -> None:
    """A wrong key (401) and an injected 403 both raise AuthError, which is permanent."""
    if status == 403:
        receiver.set_faults(Faults(status=403, first_n=1))
        client = make_client()
    else:
        client = make_client(api_key=WRONG_KEY)

    with pytest.raises(AuthError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.status == status
    assert isinstance(caught.value, PermanentDeliveryError)


def test_closed_connection_is_transient(receiver: Receiver, client: CloudClient) -> None:
    """A connection closed without an answer raises TransientDeliveryError(status=None)."""
    receiver.set_faults(Faults(close_rate=1.0))

    with pytest.raises(TransientDeliveryError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.status is None
    assert str(caught.value).startswith("POST /events failed: ")


def test_slow_answer_times_out_as_transient(
    receiver: Receiver, make_client: Callable[..., Any]
) -> None:
    """An answer slower than the client timeout raises TransientDeliveryError(status=None)."""
    receiver.set_faults(Faults(delay=2.0))

    with pytest.raises(TransientDeliveryError) as caught:
        make_client(timeout=0.2).send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.status is None
    assert str(caught.value) == "POST /events failed: ReadTimeout"


def test_refused_connection_is_transient(tmp_path: Path) -> None:
    """Nothing listening on the port raises TransientDeliveryError(status=None)."""
    with Receiver(api_key=KEY, db_path=tmp_path / "gone.db") as gone:
        url = gone.url

    with (
        CloudClient(api_key=KEY, endpoint=url) as client,
        pytest.raises(TransientDeliveryError) as caught,
    ):
        client.send_heartbeat({"type": "heartbeat"})

    assert caught.value.status is None
    assert str(caught.value) == "POST /heartbeat failed: ConnectError"


def test_client_recovers_after_faults(receiver: Receiver, client: CloudClient) -> None:
    """After a dropped connection and a 503 the same client delivers again."""
    receiver.set_faults(Faults(close_rate=1.0))
    with pytest.raises(TransientDeliveryError):
        client.send_entries([entry("e1")], idempotency_key="k")
    receiver.set_faults(Faults(status=503, first_n=1))
    with pytest.raises(TransientDeliveryError):
        client.send_entries([entry("e1")], idempotency_key="k")
    receiver.set_faults(None)

    client.send_entries([entry("e1")], idempotency_key="k")

    assert receiver.entry_ids() == ["e1"]


# Secrets


_SCENARIOS: dict[str, tuple[Faults | None, dict[str, Any]]] = {
    "500": (Faults(status=500, first_n=1), {}),
    "429": (Faults(status=429, first_n=1, retry_after="3"), {}),
    "413": (Faults(max_body_bytes=10), {}),
    "422": (Faults(reject_event_names=frozenset({"OrderPlaced"})), {}),
    "401": (None, {"api_key": WRONG_KEY}),
    "close": (Faults(close_rate=1.0), {}),
    "timeout": (Faults(delay=2.0), {"timeout": 0.2}),
    "refused": (None, {"endpoint": "http://127.0.0.1:1"}),
}


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
def test_failures_never_reveal_the_key_or_the_body(
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
    caplog: pytest.LogCaptureFixture,
    scenario: str,
) -> None:
    """No failure puts the key or an entry in the exception, its chain, repr(client) or any log."""
    faults, options = _SCENARIOS[scenario]
    receiver.set_faults(faults)
    for name in ("", "httpx", "httpcore", "spooler"):
        caplog.set_level(logging.DEBUG, logger=name)
    client = make_client(**options)

    with pytest.raises(DeliveryError) as caught:
        client.send_entries([entry("e1")], idempotency_key="k")

    exc = caught.value
    assert exc.__cause__ is None and exc.__context__ is None
    shown = [str(exc), repr(exc), repr(client), caplog.text]
    shown += [record.getMessage() for record in caplog.records]
    for secret in (KEY, WRONG_KEY, MARKER):
        for text in shown:
            assert secret not in text
    assert any(r.name.startswith("spooler.client") for r in caplog.records)


def test_repr_hides_the_key(client: CloudClient) -> None:
    """repr(client) names the endpoint and not the key."""
    assert KEY not in repr(client)
    assert "CloudClient(endpoint='http://127.0.0.1:" in repr(client)


# classify and parse_retry_after, as units


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "https://api.example/v1/ingest/events?x=1")
    return httpx.Response(status, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (202, None),
        (204, None),
        (408, TransientDeliveryError),
        (429, TransientDeliveryError),
        (500, TransientDeliveryError),
        (502, TransientDeliveryError),
        (599, TransientDeliveryError),
        (413, PayloadTooLargeError),
        (400, RejectedError),
        (422, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (404, PermanentDeliveryError),
        (409, PermanentDeliveryError),
        (301, PermanentDeliveryError),
        (304, PermanentDeliveryError),
    ],
)
def test_classify_maps_every_status(status: int, expected: type[DeliveryError] | None) -> None:
    """classify returns on 2xx and raises exactly the documented class for every other status."""
    if expected is None:
        classify(_response(status))  # returns quietly
        return
    with pytest.raises(DeliveryError) as caught:
        classify(_response(status))

    assert type(caught.value) is expected
    assert caught.value.status == status
    assert str(caught.value) == f"POST /v1/ingest/events answered {status}"


def test_classify_reads_retry_after_only_for_transient_answers() -> None:
    """Retry-After is parsed and capped on 503 and ignored (no attribute) on permanent answers."""
    with pytest.raises(TransientDeliveryError) as caught:
        classify(_response(503, {"Retry-After": "900"}), max_retry_after=60.0)
    assert caught.value.retry_after == 60.0

    with pytest.raises(RejectedError) as rejected:
        classify(_response(400, {"Retry-After": "5"}))
    assert not hasattr(rejected.value, "retry_after")


def test_classify_works_without_a_request() -> None:
    """A hand-built response without a request still gets a readable message."""
    with pytest.raises(TransientDeliveryError, match="request answered 503"):
        classify(httpx.Response(503))


def test_redirects_are_not_followed() -> None:
    """A 302 is a PermanentDeliveryError and the Location is never requested."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(302, headers={"Location": "https://elsewhere.example/steal"})

    transport = httpx.MockTransport(handler)
    with (
        CloudClient(api_key=KEY, endpoint="https://api.example", transport=transport) as client,
        pytest.raises(PermanentDeliveryError) as caught,
    ):
        client.send_entries([entry("e1")], idempotency_key="k")

    assert caught.value.status == 302
    assert seen == ["/events"]


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("301", 300.0),
        ("9" * 400, 300.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),
        ("Wed, 01 May 2024 13:00:00 GMT", 300.0),
        ("Wed, 01 May 2024 12:00:10 -0000", 10.0),
        ("Wed, 32 Foo 2024 99:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After seconds and HTTP-dates become capped, non-negative seconds; garbage is None."""
    assert parse_retry_after(value, now=NOW, cap=300.0) == expected


def test_parse_retry_after_treats_naive_now_as_utc() -> None:
    """A naive ``now`` is taken as UTC rather than failing to compare."""
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=naive) == 30.0


def test_compress_gzips_the_body_the_same_way_on_every_retry() -> None:
    """compress=True sends Content-Encoding: gzip with a body that inflates to the JSON, and a
    retried batch compresses to the same bytes; the default sends the JSON as is."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"accepted": 1})

    for compress in (True, False):
        with CloudClient(
            api_key=KEY,
            endpoint="http://127.0.0.1:9",
            transport=httpx.MockTransport(answer),
            compress=compress,
        ) as client:
            for _ in range(2):
                client.send_entries([entry("e-1")], idempotency_key="k-1")
    gzipped, plain = seen[:2], seen[2:]
    assert [r.headers.get("Content-Encoding") for r in seen] == ["gzip", "gzip", None, None]
    assert gzipped[0].content == gzipped[1].content
    assert json.loads(gzip.decompress(gzipped[0].content)) == json.loads(plain[0].content)
    assert json.loads(plain[0].content)["entries"][0]["entry_id"] == "e-1"
