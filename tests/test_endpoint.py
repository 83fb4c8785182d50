"""The payload fetch endpoint: its answers, each security rule, both adapters on real servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import decimal
import enum
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
import uvicorn

from spooler.config import Config
from spooler.endpoint import PayloadEndpoint, Response, asgi_app, wsgi_app
from spooler.errors import ConfigError

KEY = "sk_live_Zx81endpointTESTkey0042"
AUTH = {"Authorization": f"Bearer {KEY}"}
DASHBOARD = "https://app.eventengine.dev"
EVENT_UUID = "7d4a1f0e-3b2c-4d5e-8f60-718293a4b5c6"
SECRET_PAYLOAD = "card-4242-PAYLOAD-SECRET"
SECRET_METADATA = "METADATA-SECRET-ip-203.0.113.9"
CLIENT = "198.51.100.7"


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The host's events, with a record of every id the endpoint looked up."""

    def __init__(self) -> None:
        self.events: dict[int | str, Any] = {
            1: {
                "id": 999,
                "event_name": "order.paid",
                "payload": {"card": SECRET_PAYLOAD, "amount": 1250},
                "metadata": {"ip": SECRET_METADATA},
                "internal_notes": "never sent",
            },
            EVENT_UUID: {
                "event_name": "user.signed_up",
                "payload": {"plan": "pro"},
                "metadata": {},
            },
        }
        self.calls: list[int | str] = []
        self.error: Exception | None = None

    def lookup(self, event_id: int | str) -> Any:
        self.calls.append(event_id)
        if self.error is not None:
            raise self.error
        return self.events.get(event_id)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def endpoint(store: Store, clock: Clock) -> PayloadEndpoint:
    return PayloadEndpoint(api_key=KEY, lookup=store.lookup, clock=clock)


def call(
    endpoint: PayloadEndpoint,
    path: str = "/events/1",
    headers: Mapping[str, str] = AUTH,
    *,
    method: str = "GET",
    remote: str | None = CLIENT,
) -> Response:
    return endpoint.handle(method, path, headers, remote)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(endpoint: PayloadEndpoint) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, wsgi_app(endpoint), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@contextlib.contextmanager
def serve_asgi(endpoint: PayloadEndpoint) -> Iterator[str]:
    config = uvicorn.Config(
        asgi_app(endpoint), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


SERVERS = {"wsgiref": serve_wsgi, "uvicorn": serve_asgi}


@pytest.fixture(params=sorted(SERVERS))
def base_url(request: pytest.FixtureRequest, endpoint: PayloadEndpoint) -> Iterator[str]:
    with SERVERS[request.param](endpoint) as url:
        yield url


def raw_status(base_url: str, request: bytes) -> int:
    """Send ``request`` as raw bytes and return the answer's status; fails on a hang."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2, f"no HTTP answer to {request[:60]!r}: {data[:60]!r}"
    return int(status_line[1])


# --- answers ---------------------------------------------------------------------------------


def test_get_answers_the_event_as_json_over_both_real_servers(base_url: str) -> None:
    """An authenticated GET answers 200 with exactly id, event_name, payload and metadata."""
    with httpx.Client(base_url=base_url) as client:
        response = client.get("/events/1", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "id": 1,
        "event_name": "order.paid",
        "payload": {"card": SECRET_PAYLOAD, "amount": 1250},
        "metadata": {"ip": SECRET_METADATA},
    }


def test_decimal_ids_reach_the_lookup_as_int_and_uuids_as_lowercase_str(
    endpoint: PayloadEndpoint, store: Store
) -> None:
    """Decimal ids are passed as int; UUIDs in any case as the lowercase canonical string."""
    assert call(endpoint, "/events/1").status == 200
    response = call(endpoint, f"/events/{EVENT_UUID.upper()}")
    assert response.status == 200
    assert json.loads(response.body)["id"] == EVENT_UUID
    assert store.calls == [1, EVENT_UUID]


def test_answer_takes_only_the_three_fields_and_the_id_from_the_request(
    endpoint: PayloadEndpoint,
) -> None:
    """The lookup's own id and extra keys are ignored; missing fields come back as null."""
    assert set(json.loads(call(endpoint).body)) == {"id", "event_name", "payload", "metadata"}
    assert json.loads(call(endpoint).body)["id"] == 1
    sparse = PayloadEndpoint(api_key=KEY, lookup=lambda _id: {"event_name": "x"})
    assert json.loads(call(sparse).body) == {
        "id": 1,
        "event_name": "x",
        "payload": None,
        "metadata": None,
    }


class Colour(enum.Enum):
    RED = "red"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_values_json_cannot_carry_are_encoded_not_fatal() -> None:
    """Datetimes, decimals, UUIDs, bytes, sets, odd floats, keys, cycles and objects all encode."""
    cycle: list[Any] = [1]
    cycle.append(cycle)
    payload = {
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2026, 1, 2),
        "time": datetime.time(3, 4),
        "price": decimal.Decimal("12.50"),
        "uid": uuid.UUID(EVENT_UUID),
        "text_bytes": "héllo".encode(),
        "raw_bytes": b"\xff\x00\xfe",
        "tags": {"b", "a"},
        "mixed": frozenset({1, "x"}),
        "nan": float("nan"),
        "inf": float("-inf"),
        "colour": Colour.RED,
        "tuple": (1, 2),
        "object": object.__new__(Unprintable),
        "cycle": cycle,
        1: "int key",
        (1, 2): "tuple key",
        None: "none key",
    }
    endpoint = PayloadEndpoint(
        api_key=KEY, lookup=lambda _id: {"event_name": b"bytes.name", "payload": payload}
    )
    response = call(endpoint)
    assert response.status == 200
    body = json.loads(response.body)
    encoded = body["payload"]
    assert body["event_name"] == "bytes.name"
    assert encoded["at"] == "2026-01-02T03:04:05+00:00"
    assert encoded["day"] == "2026-01-02"
    assert encoded["time"] == "03:04:00"
    assert encoded["price"] == "12.50"
    assert encoded["uid"] == EVENT_UUID
    assert encoded["text_bytes"] == "héllo"
    assert encoded["raw_bytes"] == {"$base64": base64.b64encode(b"\xff\x00\xfe").decode()}
    assert encoded["tags"] == ["a", "b"]
    assert sorted(map(str, encoded["mixed"])) == ["1", "x"]
    assert (encoded["nan"], encoded["inf"]) == ("NaN", "-Infinity")
    assert encoded["colour"] == "red"
    assert encoded["tuple"] == [1, 2]
    assert encoded["object"] == "[unprintable Unprintable]"
    assert encoded["cycle"] == [1, "[circular]"]
    assert (encoded["1"], encoded["[1,2]"], encoded["null"]) == ("int key", "tuple key", "none key")


def test_very_deep_nesting_is_cut_not_fatal() -> None:
    """A payload nested far deeper than JSON readers handle is cut at a marker, not a crash."""
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    endpoint = PayloadEndpoint(api_key=KEY, lookup=lambda _id: {"payload": deep})
    response = call(endpoint)
    assert response.status == 200
    assert b"[too deep]" in response.body


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {base64.b64encode(KEY.encode()).decode()}",
        f"Token {KEY}",
        f"Bearer {KEY[:-1]}",
        f"Bearer {KEY}x",
        f"Bearer {KEY} extra",
        f"Bearer {KEY.upper()}",
        f"{KEY}",
        "Bearer \u00e9\u00e9\u00e9",
    ],
    ids=lambda v: repr(v)[:24],
)
def test_missing_malformed_or_wrong_keys_get_the_same_401(
    endpoint: PayloadEndpoint, authorization: str | None
) -> None:
    """Any failed authentication is 401 with WWW-Authenticate: Bearer and one identical body."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = call(endpoint, headers=headers)
    reference = call(endpoint, headers={}, remote="192.0.2.1")
    assert response.status == 401
    assert response.header("WWW-Authenticate") == "Bearer"
    assert response.body == reference.body == b'{"error":"unauthorized"}'


def test_bearer_scheme_is_case_insensitive(endpoint: PayloadEndpoint) -> None:
    """The auth scheme name matches in any case, as RFC 7235 says; the key itself does not."""
    assert call(endpoint, headers={"authorization": f"bearer {KEY}"}).status == 200
    assert call(endpoint, headers={"AUTHORIZATION": f"BEARER {KEY}"}).status == 200


def test_key_is_compared_with_hmac_compare_digest_on_bytes(
    endpoint: PayloadEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key check, right or wrong or missing, goes through hmac.compare_digest on bytes."""
    seen: list[tuple[type, type]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert call(endpoint).status == 200
    assert call(endpoint, headers={"Authorization": "Bearer nope"}).status == 401
    assert call(endpoint, headers={}).status == 401
    assert seen == [(bytes, bytes)] * 3


def test_authentication_comes_before_any_lookup(base_url: str, store: Store) -> None:
    """Unauthenticated callers get the same 401 for existing, unknown and invalid ids, unlooked."""
    bodies = set()
    with httpx.Client(base_url=base_url) as client:
        for path in ("/events/1", "/events/2", f"/events/{EVENT_UUID}", "/events/x", "/nope"):
            response = client.get(path, headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 401, path
            bodies.add(response.content)
    assert len(bodies) == 1
    assert store.calls == []


def test_unknown_ids_get_404_after_authentication(endpoint: PayloadEndpoint, store: Store) -> None:
    """A valid id the lookup does not know answers 404 once the caller is authenticated."""
    response = call(endpoint, "/events/2")
    assert response.status == 404
    assert json.loads(response.body) == {"error": "not_found"}
    assert store.calls == [2]


@pytest.mark.parametrize(
    "path",
    [
        "/events/",
        "/events",
        "/events/1/",
        "/events/01",
        "/events/-1",
        "/events/+1",
        "/events/1.0",
        "/events/1e3",
        "/events/0x1",
        "/events/1_000",
        "/events/ 1",
        "/events/1\n",
        "/events/\u0661\u0662",
        "/events/\uff11",
        "/events/9223372036854775808",
        "/events/" + "9" * 20,
        "/events/1;DROP",
        "/events/..",
        "/events/../events/1",
        "/events/1\x00",
        "/events/" + EVENT_UUID.replace("-", ""),
        "/events/{" + EVENT_UUID + "}",
        "/EVENTS/1",
        "//events/1",
        "/events/1/payload",
        "",
    ],
    ids=repr,
)
def test_invalid_id_forms_get_404_and_never_reach_the_lookup(
    endpoint: PayloadEndpoint, store: Store, path: str
) -> None:
    """Paths that are not /events/<decimal id or UUID> answer 404 without calling the lookup."""
    assert call(endpoint, path).status == 404
    assert store.calls == []


def test_largest_int64_id_is_still_valid(endpoint: PayloadEndpoint, store: Store) -> None:
    """The id range ends exactly at 2**63 - 1, the largest id a SQL BIGINT holds."""
    assert call(endpoint, "/events/9223372036854775807").status == 404
    assert call(endpoint, "/events/0").status == 404
    assert store.calls == [9223372036854775807, 0]


# --- methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "TRACE", "get"])
def test_methods_other_than_get_and_options_get_405_with_allow(
    endpoint: PayloadEndpoint, store: Store, method: str
) -> None:
    """Every other method answers 405 with Allow: GET, OPTIONS and never reaches the lookup."""
    response = call(endpoint, method=method)
    assert response.status == 405
    assert response.header("Allow") == "GET, OPTIONS"
    assert store.calls == []


def test_wrong_methods_with_bodies_get_405_over_both_real_servers(base_url: str) -> None:
    """Over real servers, POST/PUT/PATCH/DELETE with a body are answered 405, not reset."""
    with httpx.Client(base_url=base_url) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = client.request(method, "/events/1", headers=AUTH, content=b"x" * 60_000)
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, OPTIONS"


# --- CORS ------------------------------------------------------------------------------------


def test_preflight_from_an_allowed_origin_is_answered(base_url: str) -> None:
    """OPTIONS from a dashboard origin gets 204 echoing it, with methods, headers and max-age."""
    headers = {
        "Origin": DASHBOARD,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with httpx.Client(base_url=base_url) as client:
        response = client.options("/events/1", headers=headers)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == DASHBOARD
    assert response.headers["vary"] == "Origin"
    assert response.headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert response.headers["access-control-allow-headers"] == "Authorization"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.eventengine.dev.evil.example",
        "http://app.eventengine.dev",
        "https://app.eventengine.dev:8443",
        "null",
        "*",
        "",
    ],
)
def test_disallowed_origins_get_no_cors_headers(endpoint: PayloadEndpoint, origin: str) -> None:
    """Preflight and GET from an origin outside the allowlist carry no Access-Control header."""
    preflight = call(endpoint, headers={"Origin": origin}, method="OPTIONS")
    get = call(endpoint, headers={**AUTH, "Origin": origin})
    assert preflight.status == 204
    assert get.status == 200
    for response in (preflight, get):
        assert not [k for k, _ in response.headers if k.lower().startswith("access-control-")]


def test_actual_answers_to_an_allowed_origin_echo_it_and_never_a_wildcard(
    endpoint: PayloadEndpoint,
) -> None:
    """Answers to a dashboard origin echo it; none says * or allows credentials."""
    for headers, status in [
        ({**AUTH, "Origin": DASHBOARD}, 200),
        ({"Origin": DASHBOARD}, 401),
    ]:
        response = call(endpoint, headers=headers)
        assert response.status == status
        assert response.header("Access-Control-Allow-Origin") == DASHBOARD
        assert response.header("Vary") == "Origin"
        assert response.header("Access-Control-Allow-Credentials") is None
    assert call(endpoint, "/events/2", {**AUTH, "Origin": DASHBOARD}).header(
        "Access-Control-Allow-Origin"
    ) == (DASHBOARD)


def test_origin_allowlist_comes_from_config_and_refuses_wildcards(store: Store) -> None:
    """Configured origins are the only ones allowed, and a wildcard origin cannot be configured."""
    config = Config(
        api_key=KEY, payload_endpoint=True, dashboard_origins=("https://dash.example.com",)
    )
    endpoint = PayloadEndpoint.from_config(config, store.lookup)
    assert endpoint.allowed_origins == ("https://dash.example.com",)
    allowed = call(endpoint, headers={**AUTH, "Origin": "https://dash.example.com"})
    assert allowed.header("Access-Control-Allow-Origin") == "https://dash.example.com"
    assert (
        call(endpoint, headers={**AUTH, "Origin": DASHBOARD}).header("Access-Control-Allow-Origin")
        is None
    )
    for bad in ("*", "https://*.example.com", "null"):
        with pytest.raises(ConfigError):
            PayloadEndpoint(api_key=KEY, lookup=store.lookup, allowed_origins=(bad,))


# --- headers on every answer -----------------------------------------------------------------


def test_every_answer_is_no_store_and_nosniff(
    endpoint: PayloadEndpoint, store: Store, clock: Clock
) -> None:
    """200, 204, 401, 404, 405, 429 and 500 all carry Cache-Control: no-store and nosniff."""
    answers = [
        call(endpoint),
        call(endpoint, method="OPTIONS", headers={"Origin": DASHBOARD}),
        call(endpoint, headers={}),
        call(endpoint, "/events/2"),
        call(endpoint, method="POST"),
    ]
    for _ in range(11):
        locked = call(endpoint, headers={}, remote="203.0.113.50")
    answers.append(locked)
    store.error = RuntimeError("boom")
    answers.append(call(endpoint))
    assert [a.status for a in answers] == [200, 204, 401, 404, 405, 429, 500]
    for answer in answers:
        assert answer.header("Cache-Control") == "no-store", answer.status
        assert answer.header("X-Content-Type-Options") == "nosniff", answer.status


def test_real_servers_send_no_store_and_nosniff(base_url: str) -> None:
    """The adapters pass the security headers through on success and failure alike."""
    with httpx.Client(base_url=base_url) as client:
        for response in (client.get("/events/1", headers=AUTH), client.get("/events/1")):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
        assert client.get("/events/1").headers["www-authenticate"] == "Bearer"


# --- failed-authentication limit -------------------------------------------------------------


def test_more_than_ten_failures_in_a_minute_lock_the_client_out_for_a_minute(
    endpoint: PayloadEndpoint, clock: Clock, store: Store
) -> None:
    """The 11th failure within 60 s answers 429 with Retry-After; even the right key waits 60 s."""
    wrong = {"Authorization": "Bearer wrong"}
    for _ in range(10):
        clock.now += 1
        assert call(endpoint, headers=wrong).status == 401
    locked = call(endpoint, headers=wrong)
    assert locked.status == 429
    assert locked.header("Retry-After") == "60"
    clock.now += 30
    still = call(endpoint)
    assert still.status == 429
    assert still.header("Retry-After") == "30"
    assert store.calls == []
    clock.now += 30
    assert call(endpoint).status == 200


def test_failures_spread_beyond_the_window_do_not_lock_out(
    endpoint: PayloadEndpoint, clock: Clock
) -> None:
    """Failures older than the window stop counting, so a slow trickle only ever gets 401."""
    for _ in range(40):
        assert call(endpoint, headers={}).status == 401
        clock.now += 7  # about 8.6 failures per minute
    assert call(endpoint).status == 200


def test_lockout_is_per_client_address(endpoint: PayloadEndpoint) -> None:
    """A locked-out address does not lock out another, and a successful login clears the count."""
    for _ in range(11):
        call(endpoint, headers={}, remote="203.0.113.1")
    assert call(endpoint, remote="203.0.113.1").status == 429
    assert call(endpoint, remote="203.0.113.2").status == 200
    for _ in range(10):
        call(endpoint, headers={}, remote="203.0.113.3")
    assert call(endpoint, remote="203.0.113.3").status == 200
    assert call(endpoint, headers={}, remote="203.0.113.3").status == 401


def test_tracked_clients_are_bounded_least_recently_used_first(store: Store, clock: Clock) -> None:
    """With the cap reached, the least recently seen client's failures are forgotten first."""
    endpoint = PayloadEndpoint(api_key=KEY, lookup=store.lookup, clock=clock, max_clients=2)
    for _ in range(10):
        call(endpoint, headers={}, remote="a")
    call(endpoint, headers={}, remote="b")
    call(endpoint, headers={}, remote="c")  # evicts "a", the least recently seen
    assert call(endpoint, headers={}, remote="a").status == 401
    for _ in range(10):
        call(endpoint, headers={}, remote="b")
    assert call(endpoint, headers={}, remote="b").status == 429


def test_a_success_does_not_lift_a_lockout(endpoint: PayloadEndpoint, clock: Clock) -> None:
    """A right key that slips past the lockout check as the lockout starts cannot end it."""
    for _ in range(11):
        call(endpoint, headers={}, remote="a")
    endpoint.failures.succeed("a")  # what a request admitted a moment earlier does on success
    assert call(endpoint, remote="a").status == 429
    clock.now += 60
    assert call(endpoint, remote="a").status == 200


def test_a_locked_out_client_that_keeps_knocking_stays_tracked(store: Store, clock: Clock) -> None:
    """Attempts during a lockout refresh the client's place, so churn cannot evict it early."""
    endpoint = PayloadEndpoint(api_key=KEY, lookup=store.lookup, clock=clock, max_clients=2)
    for _ in range(11):
        call(endpoint, headers={}, remote="a")
    call(endpoint, headers={}, remote="b")
    assert call(endpoint, headers={}, remote="a").status == 429
    call(endpoint, headers={}, remote="c")  # evicts "b", now the least recently seen
    assert call(endpoint, headers={}, remote="a").status == 429


def test_default_tracker_holds_at_most_ten_thousand_clients(endpoint: PayloadEndpoint) -> None:
    """Failures from 12,000 addresses leave at most 10,000 tracked, the newest among them."""
    for n in range(12_000):
        call(endpoint, headers={}, remote=f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    tracker = endpoint.failures
    assert len(tracker) == 10_000
    for _ in range(10):
        call(endpoint, headers={}, remote="10.0.46.223")  # n = 11_999, still tracked
    assert call(endpoint, headers={}, remote="10.0.46.223").status == 429


def test_failure_counting_is_thread_safe(store: Store) -> None:
    """Forty concurrent failures from one address give exactly ten 401s and thirty 429s."""

    def switching_clock() -> float:
        time.sleep(0.0005)  # hand the GIL to another thread mid-update, as a busy server would
        return 1000.0

    endpoint = PayloadEndpoint(api_key=KEY, lookup=store.lookup, clock=switching_clock)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(5):
            status = call(endpoint, headers={"Authorization": "Bearer x"}).status
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * 10 + [429] * 30


# --- lookup failures and logging -------------------------------------------------------------


def test_a_raising_lookup_gets_a_generic_500_logged_by_class_name_only(
    endpoint: PayloadEndpoint, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The 500 body is generic and the log names the exception class and id, not its message."""
    caplog.set_level(logging.DEBUG)
    store.error = KeyError(SECRET_PAYLOAD)
    response = call(endpoint, "/events/77")
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal_error"}
    assert "KeyError" in caplog.text and "77" in caplog.text
    assert SECRET_PAYLOAD not in caplog.text


@pytest.mark.parametrize("result", [[("event_name", "x")], "order.paid", 42, object()])
def test_a_lookup_result_that_is_not_a_mapping_gets_a_generic_500(result: object) -> None:
    """Whatever the lookup returns besides a mapping or None is a 500, not a guess."""
    endpoint = PayloadEndpoint(api_key=KEY, lookup=lambda _id: result)  # type: ignore[arg-type,return-value]
    response = call(endpoint)
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal_error"}


def test_key_payload_and_metadata_never_reach_logs_and_key_never_a_body(
    base_url: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, through success, failures, lockout and errors, no secret leaks anywhere."""
    caplog.set_level(logging.DEBUG)
    bodies = []
    with httpx.Client(base_url=base_url) as client:
        bodies.append(client.get("/events/1", headers=AUTH).content)
        bodies.append(client.get("/events/2", headers=AUTH).content)
        bodies.append(client.options("/events/1", headers={"Origin": DASHBOARD}).content)
        bodies.append(client.post("/events/1", headers=AUTH).content)
        for _ in range(11):
            near = {"Authorization": f"Bearer {KEY[:-2]}"}
            bodies.append(client.get("/events/1", headers=near).content)
        store.error = ValueError(f"{SECRET_PAYLOAD} {SECRET_METADATA} {KEY}")
        bodies.append(client.get("/events/1", headers=AUTH).content)  # 429: locked out
    endpoint = PayloadEndpoint(api_key=KEY, lookup=store.lookup)
    bodies.append(call(endpoint).body)  # 500
    assert SECRET_PAYLOAD.encode() in bodies[0]
    assert bodies[-1] == b'{"error":"internal_error"}'
    assert caplog.records, "expected the failures to be logged"
    for secret in (KEY, KEY[:-2], SECRET_PAYLOAD, SECRET_METADATA):
        assert secret not in caplog.text
    assert not [body for body in bodies if KEY[:-2].encode() in body]


# --- configuration ---------------------------------------------------------------------------


def test_from_config_refuses_unless_turned_on_with_a_key(store: Store) -> None:
    """The endpoint is off by default and needs an API key; both refusals name payload_endpoint."""
    for config in (Config(api_key=KEY), Config(payload_endpoint=True)):
        with pytest.raises(ConfigError) as raised:
            PayloadEndpoint.from_config(config, store.lookup)
        assert raised.value.option == "payload_endpoint"
        assert KEY not in str(raised.value)
    endpoint = PayloadEndpoint.from_config(Config(api_key=KEY, payload_endpoint=True), store.lookup)
    assert call(endpoint).status == 200
    assert endpoint.allowed_origins == (DASHBOARD,)


def test_an_empty_api_key_is_refused(store: Store) -> None:
    """A blank key would authenticate anyone sending 'Bearer ', so it cannot be constructed."""
    for key in ("", "   "):
        with pytest.raises(ConfigError):
            PayloadEndpoint(api_key=key, lookup=store.lookup)


# --- adapters --------------------------------------------------------------------------------


def test_asgi_app_completes_lifespan_startup_and_shutdown(endpoint: PayloadEndpoint) -> None:
    """The ASGI app acknowledges lifespan startup and shutdown, so servers with lifespan=on run."""
    app = asgi_app(endpoint)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Mapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_asgi_app_strips_root_path_when_mounted(endpoint: PayloadEndpoint) -> None:
    """Mounted under a root_path, the app serves <root>/events/<id> and nothing outside it."""

    async def fetch() -> list[int]:
        transport = httpx.ASGITransport(app=asgi_app(endpoint), root_path="/cloud")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                (await client.get(path, headers=AUTH)).status_code
                for path in ("/cloud/events/1", "/cloud/events/2", "/cloudy/events/1")
            ]

    assert asyncio.run(fetch()) == [200, 404, 404]


def test_fastapi_mount_serves_the_endpoint(endpoint: PayloadEndpoint) -> None:
    """FastAPI's app.mount(prefix, asgi_app(endpoint)) serves <prefix>/events/<id>."""
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.mount("/eventengine", asgi_app(endpoint))

    async def fetch() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                (await client.get("/eventengine/events/1", headers=AUTH)).status_code,
                (await client.get("/eventengine/events/1")).status_code,
            ]

    assert asyncio.run(fetch()) == [200, 401]


def test_flask_dispatcher_mount_serves_the_endpoint(endpoint: PayloadEndpoint) -> None:
    """Flask with DispatcherMiddleware({prefix: wsgi_app(endpoint)}) serves <prefix>/events/<id>."""
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = flask.Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/eventengine": wsgi_app(endpoint)})
    client = app.test_client()
    assert client.get("/eventengine/events/1", headers=AUTH).status_code == 200
    assert client.get("/eventengine/events/1").status_code == 401
    assert client.get("/events/1", headers=AUTH).status_code == 404  # Flask's own 404


# --- malformed requests ----------------------------------------------------------------------

_BAD_TARGETS = [
    b"/events/../events/1",
    b"/events/..%2F1",
    b"/events/%2e%2e%2f1",
    b"/events/1%2F2",
    b"/events/1%252F2",
    b"/events/%00",
    b"/events/1%00",
    b"/events/" + b"9" * 19,
    b"/events/" + b"9" * 4000,
    b"/events/%D9%A1%D9%A2",
    "/events/\u0661\u0662".encode(),
    b"/events/%ff%fe",
    b"/events/%c0%ae%c0%ae",
    b"/events/",
    b"/events",
    b"/events/1;DROP",
    b"/events/1%3BDROP%20TABLE",
    b"/events/1%0d%0aX-Injected:%201",
    b"/events/%",
]


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_malformed_requests_get_clean_4xx_and_the_server_keeps_serving(
    server: str, endpoint: PayloadEndpoint, store: Store
) -> None:
    """Bad ids, huge headers, wrong methods and odd encodings get 4xx; a good GET still works."""
    auth_line = f"Authorization: Bearer {KEY}\r\n".encode()
    with SERVERS[server](endpoint) as url:
        requests = [
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: x\r\n"
            + auth_line
            + b"Connection: close\r\n\r\n"
            for target in _BAD_TARGETS
        ]
        requests.append(
            b"GET /events/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + b"A" * 16384
            + b"\r\nConnection: close\r\n\r\n"
        )
        requests.append(
            b"GET /events/x HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-Filler-%d: %s\r\n" % (n, b"f" * 200) for n in range(60))
            + auth_line
            + b"Connection: close\r\n\r\n"
        )
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
            requests.append(
                method
                + b" /events/1 HTTP/1.1\r\nHost: x\r\n"
                + auth_line
                + b"Content-Length: 4\r\nConnection: close\r\n\r\nbody"
            )
        for request in requests:
            status = raw_status(url, request)
            assert 400 <= status < 500, (request[:80], status)
        with httpx.Client(base_url=url) as client:
            assert client.get("/events/1", headers=AUTH).status_code == 200
            unicode_id = client.get("/events/\u0661", headers=AUTH)
            assert unicode_id.status_code == 404
    assert store.calls == [1]
