"""The example outbox app: atomic outbox writes, announce after commit, retry, dead-letter."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import blinker
import pytest

from examples.outbox_app import (
    CUSTOMERS,
    EVENT_DEAD_LETTERED,
    EVENT_EMITTED,
    EVENT_PUBLISHED,
    PUBLISH_BATCH,
    BrokerUnavailable,
    FakeBroker,
    OutboxApp,
    OutboxPublisher,
)
from spooler.serializer import build_entry

EMAIL, ADDRESS = CUSTOMERS[0]


class Recorder:
    """Collects (signal name, keyword payload) for the four outbox signals."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._receivers = {}
        for name in (EVENT_EMITTED, EVENT_PUBLISHED, EVENT_DEAD_LETTERED, PUBLISH_BATCH):

            def receiver(_sender: object, _name: str = name, **payload: Any) -> None:
                self.calls.append((_name, payload))

            self._receivers[name] = receiver
            blinker.signal(name).connect(receiver, weak=False)

    def close(self) -> None:
        for name, receiver in self._receivers.items():
            blinker.signal(name).disconnect(receiver)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [payload for n, payload in self.calls if n == name]


@pytest.fixture
def signals() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[OutboxApp]:
    with OutboxApp(str(tmp_path / "outbox.db")) as shop:
        yield shop


def outbox_rows(app: OutboxApp) -> list[dict[str, Any]]:
    con = sqlite3.connect(app.db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM outbox ORDER BY id")]
    finally:
        con.close()


class FlakyBroker:
    """Fails the first ``failures`` calls, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise BrokerUnavailable("connection reset")


def test_order_and_outbox_row_commit_together_and_announce_after_commit(
    app: OutboxApp, signals: Recorder
) -> None:
    """A placed order leaves one pending outbox row with its business data and one announcement."""
    order_id = app.place_order(EMAIL, 4200, address=ADDRESS)
    rows = outbox_rows(app)
    assert [r["event_name"] for r in rows] == ["order.placed"]
    assert rows[0]["status"] == "pending" and EMAIL in rows[0]["payload"]
    (emitted,) = signals.of(EVENT_EMITTED)
    assert emitted["event_id"] == rows[0]["id"]
    assert emitted["idempotency_key"] == rows[0]["idempotency_key"]
    found = app.lookup(rows[0]["id"])
    assert found is not None
    assert found["event_name"] == "order.placed" and found["status"] == "pending"
    assert found["payload"] == {
        "order_id": order_id,
        "customer_email": EMAIL,
        "amount_cents": 4200,
        "currency": "EUR",
        "shipping_address": ADDRESS,
    }
    assert found["metadata"]["customer_email"] == EMAIL


def test_failed_business_write_leaves_no_outbox_row_and_announces_nothing(
    app: OutboxApp, signals: Recorder
) -> None:
    """An order the database refuses (amount must be positive) rolls back its outbox row too."""
    with pytest.raises(sqlite3.IntegrityError):
        app.place_order(EMAIL, -5)
    with pytest.raises(LookupError):
        app.capture_payment(999, "4242")
    assert outbox_rows(app) == []
    assert signals.calls == []


def test_an_exception_inside_the_transaction_rolls_back_both_writes(
    app: OutboxApp, signals: Recorder
) -> None:
    """Whatever fails after emit() inside the transaction, neither row nor announcement survives."""
    with pytest.raises(RuntimeError), app.transaction() as tx:
        tx.conn.execute(
            "INSERT INTO orders (customer_email, amount_cents, currency, shipping_address,"
            " created_at) VALUES (?, 1, 'EUR', '', 'now')",
            (EMAIL,),
        )
        tx.emit("order.placed", {"customer_email": EMAIL})
        raise RuntimeError("crash before commit")
    con = sqlite3.connect(app.db_path)
    try:
        assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    finally:
        con.close()
    assert outbox_rows(app) == []
    assert signals.calls == []


def test_publisher_retries_on_later_passes_until_the_broker_takes_it(
    app: OutboxApp, signals: Recorder
) -> None:
    """Two transient failures, then success: published once with attempts 3, no dead letter."""
    app.place_order(EMAIL, 100)
    publisher = OutboxPublisher(app, FlakyBroker(failures=2), max_attempts=3)
    assert [publisher.publish_pending() for _ in range(4)] == [0, 0, 1, 0]
    (row,) = outbox_rows(app)
    assert (row["status"], row["attempts"], row["last_error"]) == ("published", 3, None)
    (published,) = signals.of(EVENT_PUBLISHED)
    assert published["attempts"] == 3
    assert signals.of(EVENT_DEAD_LETTERED) == []
    assert [b["count"] for b in signals.of(PUBLISH_BATCH)] == [0, 0, 1]


def test_publisher_dead_letters_after_max_attempts(app: OutboxApp, signals: Recorder) -> None:
    """A declined card fails every attempt and is dead-lettered on the max_attempts-th."""
    order_id = app.place_order(EMAIL, 100)
    event_id = app.capture_payment(order_id, "0002", declined=True)
    publisher = OutboxPublisher(app, FakeBroker(), max_attempts=2)
    publisher.publish_pending()  # publishes order.placed, first failure for the payment
    assert app.outbox_counts() == {"pending": 1, "published": 1, "dead_lettered": 0}
    publisher.publish_pending()
    assert app.outbox_counts() == {"pending": 0, "published": 1, "dead_lettered": 1}
    row = outbox_rows(app)[1]
    assert (row["id"], row["attempts"]) == (event_id, 2)
    assert row["last_error"].startswith("PaymentDeclined") and row["dead_lettered_at"]
    (dead,) = signals.of(EVENT_DEAD_LETTERED)
    assert (dead["event_id"], dead["attempts"], dead["error_class"]) == (
        event_id,
        2,
        "PaymentDeclined",
    )
    assert publisher.publish_pending() == 0  # dead letters are never retried


def test_signals_carry_the_documented_keys(app: OutboxApp, signals: Recorder) -> None:
    """Each signal sends exactly the keys the reporter's plan documents, and no payload."""
    order_id = app.place_order(EMAIL, 100)
    app.capture_payment(order_id, "0002", declined=True)
    OutboxPublisher(app, FakeBroker(), max_attempts=1).publish_pending()
    assert set(signals.of(EVENT_EMITTED)[0]) == {
        "event_name",
        "event_version",
        "event_id",
        "idempotency_key",
        "event_type",
        "occurred_at",
    }
    assert set(signals.of(EVENT_PUBLISHED)[0]) == {
        "event_name",
        "event_version",
        "event_id",
        "occurred_at",
        "published_at",
        "attempts",
    }
    assert set(signals.of(EVENT_DEAD_LETTERED)[0]) == {
        "event_name",
        "event_version",
        "event_id",
        "attempts",
        "error_message",
        "error_class",
        "occurred_at",
        "dead_lettered_at",
    }
    assert signals.of(PUBLISH_BATCH) == [{"count": 1}]


def test_announcements_build_entries_without_business_data(
    app: OutboxApp, signals: Recorder
) -> None:
    """What spooler would build from the app's announcements holds no email, card or address."""
    order_id = app.place_order(EMAIL, 100, address=ADDRESS)
    app.capture_payment(order_id, "4242")
    OutboxPublisher(app, FakeBroker()).publish_pending()
    statuses = {EVENT_EMITTED: "emitted", EVENT_PUBLISHED: "published"}
    entries = [build_entry(statuses[n], p) for n, p in signals.calls if n in statuses]
    assert len(entries) == 4 and all(e is not None for e in entries)
    text = repr(entries)
    for secret in (EMAIL, ADDRESS, "4242", "customer_email"):
        assert secret not in text


def test_lookup_answers_none_for_unknown_and_non_integer_ids(app: OutboxApp) -> None:
    """The payload endpoint's lookup finds integer outbox ids only."""
    app.place_order(EMAIL, 100)
    assert app.lookup(2) is None
    assert app.lookup("123e4567-e89b-12d3-a456-426614174000") is None
    assert app.lookup(1) is not None
