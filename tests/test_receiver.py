"""The local Receiver keeps the Cloud's contract: what it refuses, what it stores, how it fails."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from spooler.client import CloudClient
from spooler.errors import TransientDeliveryError
from spooler.receiver import Faults, Receiver
from spooler.spool import Spool

KEY = "sk_test_R3CEIVER_0cc175b9c0f1b6a8"

Post = Callable[..., httpx.Response]


def entry(entry_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entry_id": entry_id,
        "event_name": "OrderPlaced",
        "status": "published",
        "timestamp": "2024-05-01T12:00:00Z",
    }
    base.update(changes)
    return base


def headers(**changes: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "X-EventEngine-Gem-Version": "0.1.0",
        "Idempotency-Key": "idem-1",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db", max_entries_per_request=3) as r:
        yield r


@pytest.fixture
def post(receiver: Receiver) -> Iterator[Post]:
    """POST raw requests, so each test controls headers and body exactly."""
    with httpx.Client(base_url=receiver.url, timeout=5.0, verify=False) as http:

        def send(
            path: str = "/events",
            body: Any = None,
            *,
            content: bytes | None = None,
            method: str = "POST",
            **header_changes: str | None,
        ) -> httpx.Response:
            if content is None and body is not None:
                content = json.dumps(body).encode()
            hdrs = headers(**{k.replace("_", "-"): v for k, v in header_changes.items()})
            return http.request(method, path, content=content, headers=hdrs)

        yield send


# Accepting


def test_valid_batch_is_accepted_and_counted(receiver: Receiver, post: Post) -> None:
    """A valid batch answers 202 with accepted and duplicates counts."""
    first = post(body={"entries": [entry("a"), entry("b")]})
    again = post(body={"entries": [entry("b"), entry("c"), entry("c")]})

    assert (first.status_code, first.json()) == (202, {"accepted": 2, "duplicates": 0})
    assert (again.status_code, again.json()) == (202, {"accepted": 1, "duplicates": 2})
    assert receiver.entry_ids() == ["a", "b", "c"]
    assert receiver.duplicate_count() == 2


def test_every_allowed_key_is_accepted(receiver: Receiver, post: Post) -> None:
    """An entry using every key of the contract, nulls included, is stored as sent."""
    full = entry(
        "a",
        event_id="evt-1",
        event_type="domain",
        event_version=2,
        idempotency_key="ik",
        status="dead_lettered",
        attempts=3,
        occurred_at="2024-05-01T11:59:59.123456Z",
        published_at=None,
        dead_lettered_at="2024-05-01T12:00:00+00:00",
        latency_ms=12.5,
        error_class="TimeoutError",
        error_message="upstream timed out",
    )

    assert post(body={"entries": [full]}).status_code == 202
    assert receiver.entries() == [full]


def test_heartbeat_is_stored_with_extra_keys(receiver: Receiver, post: Post) -> None:
    """A heartbeat needs only its type; unknown extra keys are kept."""
    heartbeat = {"type": "heartbeat", "spool": {"pending": 1}, "new_field": True}

    response = post("/heartbeat", heartbeat, Idempotency_Key=None)

    assert response.status_code == 202
    assert receiver.heartbeats() == [heartbeat]


@pytest.mark.parametrize(
    "heartbeat", [{"app_name": "x"}, {"type": "event"}, {"type": "heartbeat", "spool": [1]}]
)
def test_heartbeat_without_its_shape_is_422(
    receiver: Receiver, post: Post, heartbeat: dict[str, Any]
) -> None:
    """A heartbeat without type=heartbeat or with a non-object counter block is refused."""
    assert post("/heartbeat", heartbeat).status_code == 422
    assert receiver.heartbeats() == []


def test_base_path_prefix_is_accepted(receiver: Receiver, post: Post) -> None:
    """Any base path in front of /events works, as for a real endpoint like /v1/ingest."""
    assert post("/v1/ingest/events", {"entries": [entry("a")]}).status_code == 202
    assert receiver.entry_ids() == ["a"]


# Refusing


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (entry("x", payload={"card": "4111"}), "unknown key"),
        (entry("x", user_email="a@b.c"), "unknown scalar key"),
        ({k: v for k, v in entry("x").items() if k != "entry_id"}, "no entry_id"),
        ({k: v for k, v in entry("x").items() if k != "timestamp"}, "no timestamp"),
        (entry("x", status="delivered"), "unknown status"),
        (entry("x", timestamp="2024-05-01T12:00:00+00:00"), "timestamp without Z"),
        (entry("x", timestamp="yesterdayZ"), "timestamp not ISO"),
        (entry("x", timestamp=1714564800), "timestamp not a string"),
        ({**entry("x"), "entry_id": ""}, "empty entry_id"),
        (entry("x", event_name=7), "event_name not a string"),
        (entry("x", error_message=["a", "b"]), "list value"),
        (entry("x", error_message="x" * 10_001), "oversized string"),
        (entry("x", attempts=-1), "negative attempts"),
        (entry("x", attempts=True), "boolean attempts"),
        (entry("x", latency_ms="12"), "latency not a number"),
        (entry("x", occurred_at="noon"), "occurred_at not ISO"),
        ("just a string", "not an object"),
    ],
)
def test_invalid_entry_refuses_the_whole_request(
    receiver: Receiver, post: Post, bad: Any, why: str
) -> None:
    """One invalid entry answers 422 naming its index, and nothing of the request is stored."""
    response = post(body={"entries": [entry("ok-1"), bad, entry("ok-2")]})

    assert response.status_code == 422, why
    assert response.json() == {"error": "invalid entries", "rejected": [1]}
    assert receiver.entry_count() == 0


def test_rejected_event_names_are_all_listed(receiver: Receiver, post: Post) -> None:
    """reject_event_names makes every entry with that name invalid, each index listed."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"Poison"})))
    batch = [entry("a", event_name="Poison"), entry("b"), entry("c", event_name="Poison")]

    response = post(body={"entries": batch})

    assert response.status_code == 422
    assert response.json()["rejected"] == [0, 2]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(post: Post, content_type: str | None) -> None:
    """A body not declared as application/json answers 415."""
    response = post(body={"entries": [entry("a")]}, Content_Type=content_type)
    assert response.status_code == 415


def test_content_type_parameters_are_allowed(post: Post) -> None:
    """application/json with a charset parameter is accepted."""
    response = post(body={"entries": [entry("a")]}, Content_Type="application/json; charset=utf-8")
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("/events", "X-EventEngine-Gem-Version"),
        ("/events", "Idempotency-Key"),
        ("/heartbeat", "X-EventEngine-Gem-Version"),
    ],
)
def test_missing_required_header_is_400(
    receiver: Receiver, post: Post, path: str, missing: str
) -> None:
    """A missing gem version header, or Idempotency-Key on /events, answers 400."""
    body = {"entries": [entry("a")]} if path == "/events" else {"type": "heartbeat"}

    response = post(path, body, **{missing.replace("-", "_"): None})

    assert response.status_code == 400
    assert receiver.entry_count() == 0


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer"]
)
def test_missing_or_wrong_bearer_is_401(
    receiver: Receiver, post: Post, authorization: str | None
) -> None:
    """Without exactly the right bearer token the answer is 401 and nothing is stored."""
    response = post(body={"entries": [entry("a")]}, Authorization=authorization)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert receiver.entry_count() == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(post: Post, method: str) -> None:
    """Anything but POST on a contract path answers 405."""
    response = post(method=method)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/", "/event", "/events/extra", "/heartbeats"])
def test_unknown_path_is_404(post: Post, path: str) -> None:
    """Paths that do not end in /events or /heartbeat answer 404."""
    assert post(path, {"entries": [entry("a")]}).status_code == 404


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"\xff\xfe",
        b'{"entries": [NaN]}',
        b"[]",
        b'{"entries": []}',
        b'{"entries": {"entry_id": "a"}}',
        b'{"entries": [], "extra": 1}',
        json.dumps({"entries": [entry("a")], "payload": {}}).encode(),
        json.dumps({"entries": [entry(str(i)) for i in range(4)]}).encode(),
    ],
)
def test_malformed_body_is_400(receiver: Receiver, post: Post, content: bytes) -> None:
    """Junk, non-JSON constants, a wrong shape, extra top-level keys or too many entries: 400."""
    assert post(content=content).status_code == 400
    assert receiver.entry_count() == 0


def test_body_limit_answers_413_and_keeps_the_connection(receiver: Receiver, post: Post) -> None:
    """A body over max_body_bytes answers 413 and the next small request on it still works."""
    receiver.set_faults(Faults(max_body_bytes=300))

    big = post(body={"entries": [entry("a"), entry("b"), entry("c")]})
    small = post(body={"entries": [entry("a")]})

    assert (big.status_code, small.status_code) == (413, 202)
    assert {r["connection"] for r in receiver.requests()} == {1}


# Faults


def test_first_n_fails_exactly_n_requests(receiver: Receiver, post: Post) -> None:
    """first_n injects the status, with Retry-After, on the next n requests only."""
    receiver.set_faults(Faults(status=503, first_n=2, retry_after="4"))

    answers = [post(body={"entries": [entry("a")]}) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 202]
    assert answers[0].headers["Retry-After"] == "4"
    assert [r["fault"] for r in receiver.requests()] == ["status 503", "status 503", None]


def test_injected_status_comes_before_validation(receiver: Receiver, post: Post) -> None:
    """An injected status answers even an unauthenticated junk request, like a proxy in front."""
    receiver.set_faults(Faults(status=503, first_n=1))

    injected = post(content=b"junk", Authorization=None)
    validated = post(content=b"junk", Authorization=None)

    assert (injected.status_code, validated.status_code) == (503, 401)


def test_seeded_rate_is_reproducible(tmp_path: Path) -> None:
    """The same seed and rate fail the same requests, and roughly that share of them."""
    runs = []
    for name in ("one", "two"):
        faults = Faults(status=500, rate=0.5, seed=1234)
        with (
            Receiver(api_key=KEY, db_path=tmp_path / f"{name}.db", faults=faults) as r,
            httpx.Client(base_url=r.url, verify=False) as http,
        ):
            codes = [
                http.post("/events", content=b"{}", headers=headers()).status_code
                for _ in range(40)
            ]
        runs.append(codes)

    assert runs[0] == runs[1]
    assert 8 <= runs[0].count(500) <= 32
    assert set(runs[0]) == {400, 500}


def test_faults_are_validated() -> None:
    """Out-of-range probabilities, statuses or a rate without a status raise ValueError."""
    for bad in (
        {"rate": 1.5, "status": 500},
        {"close_rate": -0.1},
        {"status": 42},
        {"rate": 0.5},
        {"first_n": 2},
        {"delay": -1.0},
        {"max_body_bytes": -1},
    ):
        with pytest.raises(ValueError):
            Faults(**bad)


def test_stop_interrupts_delays_and_idle_connections(tmp_path: Path) -> None:
    """stop() returns promptly although a request sleeps in a delay and a client keeps a socket."""
    receiver = Receiver(api_key=KEY, db_path=tmp_path / "cloud.db").start()
    with CloudClient(api_key=KEY, endpoint=receiver.url, timeout=30.0) as client:
        client.send_heartbeat({"type": "heartbeat"})  # leaves a keep-alive connection open
        receiver.set_faults(Faults(delay=60.0))
        failures: list[BaseException] = []

        def send() -> None:
            try:
                client.send_heartbeat({"type": "heartbeat"})
            except TransientDeliveryError as exc:
                failures.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        # Requests are logged after their delay, so there is nothing to poll; give it time to land.
        threading.Event().wait(0.3)
        stopper = threading.Thread(target=receiver.stop)
        stopper.start()
        stopper.join(timeout=5.0)
        sender.join(timeout=5.0)

    assert not stopper.is_alive() and not sender.is_alive()
    assert len(failures) == 1


def test_receiver_can_be_started_again(tmp_path: Path) -> None:
    """A stopped receiver starts again on the same store and keeps what it had."""
    receiver = Receiver(api_key=KEY, db_path=tmp_path / "cloud.db")
    for entry_id in ("a", "b"):
        with receiver, CloudClient(api_key=KEY, endpoint=receiver.url) as client:
            client.send_entries([entry(entry_id)], idempotency_key=entry_id)

    assert receiver.entry_ids() == ["a", "b"]
    with pytest.raises(RuntimeError):
        receiver.url  # noqa: B018 - the property raises when stopped


def test_serve_forever_blocks_until_stopped(tmp_path: Path) -> None:
    """serve_forever() reports its URL through on_ready, serves, and returns after stop()."""
    receiver = Receiver(api_key=KEY, db_path=tmp_path / "cloud.db")
    ready = threading.Event()
    urls: list[str] = []

    def on_ready(r: Receiver) -> None:
        urls.append(r.url)
        ready.set()

    server = threading.Thread(target=receiver.serve_forever, kwargs={"on_ready": on_ready})
    server.start()
    assert ready.wait(5.0)
    with CloudClient(api_key=KEY, endpoint=urls[0]) as client:
        client.send_entries([entry("a")], idempotency_key="k")
    receiver.stop()
    server.join(timeout=5.0)

    assert not server.is_alive()
    assert receiver.entry_ids() == ["a"]


# Concurrency and the store


def test_concurrent_posts_are_stored_once(receiver: Receiver) -> None:
    """Eight threads sending overlapping batches store every entry_id exactly once."""
    receiver.max_entries_per_request = 100
    ids = [f"e{i}" for i in range(60)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with CloudClient(api_key=KEY, endpoint=receiver.url) as client:
                for start in range(0, len(ids), 10):
                    chunk = ids[(start + offset) % 60 :][:10] or ids[:10]
                    batch = [entry(i) for i in chunk]
                    client.send_entries(batch, idempotency_key=f"{offset}-{start}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 5,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    sent = sum(r["entries"] for r in receiver.requests())
    assert errors == []
    assert sorted(receiver.entry_ids()) == sorted(ids)
    assert receiver.duplicate_count() == sent - len(ids)
    assert len(receiver.requests()) == 8 * 6


def test_store_is_readable_and_never_holds_the_key(receiver: Receiver, post: Post) -> None:
    """The SQLite store uses WAL and plain tables, and its files never contain the key."""
    post(body={"entries": [entry("a")]})
    post(body={"entries": [entry("a")]}, Authorization="Bearer wrong")
    post("/heartbeat", {"type": "heartbeat"})

    with closing(sqlite3.connect(receiver.db_path)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
        stored = conn.execute("SELECT event_name, status, json(entry) FROM entries").fetchall()

    assert mode == "wal"
    assert {"entries", "heartbeats", "requests"} <= tables
    assert columns == {"entry_id", "received_at", "event_name", "status", "entry"}
    assert stored == [("OrderPlaced", "published", json.dumps(entry("a"), separators=(",", ":")))]
    for suffix in ("", "-wal"):
        data = Path(receiver.db_path + suffix).read_bytes()
        assert KEY.encode() not in data
    assert [r["authorized"] for r in receiver.requests()] == [1, 0, 1]


def test_nothing_is_logged_to_stderr(
    post: Post, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The server's access log goes to logging at DEBUG, never to stderr, and never has the key."""
    caplog.set_level("DEBUG", logger="spooler.receiver")

    post(body={"entries": [entry("a")]})
    post(method="GET")

    assert capfd.readouterr().err == ""
    assert "POST /events" in caplog.text
    assert KEY not in caplog.text


def test_aggregate_fields_are_accepted_on_emitted_entries_only(post: Post) -> None:
    """The receiver's contract follows the allowlist: aggregate_* on emitted entries
    (integer version), never on published or dead-lettered ones."""
    emitted = entry(
        "sid-1",
        status="emitted",
        aggregate_type="Order",
        aggregate_id=42,
        aggregate_version=3,
    )
    assert post(body={"entries": [emitted]}).status_code in (200, 202)
    for bad in (
        entry("sid-2", aggregate_type="Order"),  # published
        entry("sid-3", status="emitted", aggregate_version=-1),
        entry("sid-4", status="emitted", aggregate_version="3"),
        entry("sid-5", status="emitted", aggregate_id={"nested": "payload"}),
    ):
        assert post(body={"entries": [bad]}).status_code == 422, bad


# Compressed bodies


def _gzip(document: Any) -> bytes:
    return gzip.compress(json.dumps(document).encode(), mtime=0)


def test_a_gzip_body_is_inflated_and_accepted(receiver: Receiver, post: Post) -> None:
    """Content-Encoding: gzip (any case) is inflated before the contract checks."""
    response = post(content=_gzip({"entries": [entry("e-1")]}), Content_Encoding="GZip")
    assert response.status_code == 202
    assert receiver.entry_ids() == ["e-1"]


def test_identity_encoding_is_the_plain_body(receiver: Receiver, post: Post) -> None:
    """Content-Encoding: identity is accepted as no encoding at all."""
    response = post(body={"entries": [entry("e-1")]}, Content_Encoding="identity")
    assert response.status_code == 202


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
def test_an_unknown_encoding_is_415(receiver: Receiver, post: Post, encoding: str) -> None:
    """Encodings other than gzip are refused with 415, and nothing is stored."""
    response = post(content=_gzip({"entries": [entry("e-1")]}), Content_Encoding=encoding)
    assert response.status_code == 415
    assert receiver.entry_count() == 0


@pytest.mark.parametrize(
    "content",
    [
        b"not gzip at all",
        gzip.compress(b'{"entries": []}', mtime=0)[:-6],  # cut short
        gzip.compress(b"{}", mtime=0) + b"trailing",
        b"",
    ],
    ids=["garbage", "truncated", "trailing", "empty"],
)
def test_a_broken_gzip_body_is_400(receiver: Receiver, post: Post, content: bytes) -> None:
    """Bytes that do not inflate to exactly one gzip member are 400, not a server error."""
    assert post(content=content, Content_Encoding="gzip").status_code == 400
    assert receiver.entry_count() == 0


def test_the_size_limit_applies_to_the_inflated_body(receiver: Receiver, post: Post) -> None:
    """A gzip body small on the wire but over max_body_bytes once inflated is 413."""
    receiver.set_faults(Faults(max_body_bytes=1000))
    document = {"entries": [entry("e-1", event_name="x" * 2000)]}
    compressed = _gzip(document)
    assert len(compressed) < 1000 < len(json.dumps(document))
    assert post(content=compressed, Content_Encoding="gzip").status_code == 413
    small = _gzip({"entries": [entry("e-2")]})
    assert post(content=small, Content_Encoding="gzip").status_code == 202
    assert receiver.entry_ids() == ["e-2"]


def test_a_gzip_bomb_is_refused_without_inflating_it(
    receiver: Receiver, post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a limit of its own the receiver stops inflating one byte past 64 MiB: a ~64 KiB
    body that would inflate to 64 MiB + 1 KiB answers 413 and only limit + 1 bytes are made."""
    made: list[int] = []
    real = zlib.decompressobj

    class Recording:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = real(*args, **kwargs)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inner.decompress(data, max_length)
            made.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Recording)
    bomb = gzip.compress(b"\0" * ((64 << 20) + 1024), compresslevel=9, mtime=0)
    assert len(bomb) < 100_000
    assert post(content=bomb, Content_Encoding="gzip").status_code == 413
    assert made == [(64 << 20) + 1]


def test_compressing_client_delivers_end_to_end(receiver: Receiver) -> None:
    """CloudClient(compress=True) sends gzip bodies the receiver inflates and stores."""
    with CloudClient(api_key=KEY, endpoint=receiver.url, compress=True) as client:
        client.send_entries([entry("e-1"), entry("e-2")], idempotency_key="k-1")
        client.send_heartbeat({"type": "heartbeat"})
    assert receiver.entry_ids() == ["e-1", "e-2"]
    assert len(receiver.heartbeats()) == 1


# The store


def test_a_spool_is_refused_as_a_receiver_database(tmp_path: Path) -> None:
    """`receive --db .spooler/spool.db` fails with a clear ValueError and leaves the spool as is."""
    path = tmp_path / "spool.db"
    Spool(str(path), max_bytes=4 << 20).close()
    with closing(sqlite3.connect(path)) as conn:
        before = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    with pytest.raises(ValueError, match="is a spooler spool, not a receiver database"):
        Receiver(api_key=KEY, db_path=path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == before
