"""A small transactional-outbox shop on SQLite that announces its events with blinker only.

The business write (an ``orders`` row, a ``payments`` row) and the outbox row that records
its event commit in ONE transaction, so an event exists exactly when its business change
does. Only after that commit does the app announce ``event_engine.event_emitted``; a
rolled-back write announces nothing.

A publisher hands pending outbox rows to a broker (here a fake one that fails on purpose),
retries failures on its next pass, and dead-letters a row after ``max_attempts``,
announcing ``event_engine.event_published`` / ``event_engine.event_dead_lettered`` per row
and ``event_engine.publish_batch`` per pass.

This module never imports spooler: announcing on named blinker signals is the whole
contract, and whoever wants the notifications (spooler's reporter, a test) connects to them.
It is self-contained (standard library and blinker) so ``spooler.demo`` can load it by path.

Read the database with the ``sqlite3`` CLI::

    orders(id, customer_email, amount_cents, currency, shipping_address, created_at)
    payments(id, order_id, card_last4, amount_cents, declined, created_at)
    outbox(id, event_name, event_version, event_type, idempotency_key, payload JSON,
           metadata JSON, status, attempts, occurred_at, published_at, dead_lettered_at,
           last_error)
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import blinker

__all__ = [
    "CUSTOMERS",
    "EVENT_DEAD_LETTERED",
    "EVENT_EMITTED",
    "EVENT_PUBLISHED",
    "PUBLISH_BATCH",
    "BrokerError",
    "BrokerUnavailable",
    "FakeBroker",
    "OutboxApp",
    "OutboxPublisher",
    "PaymentDeclined",
    "utc_now",
]

EVENT_EMITTED = "event_engine.event_emitted"
EVENT_PUBLISHED = "event_engine.event_published"
EVENT_DEAD_LETTERED = "event_engine.event_dead_lettered"
PUBLISH_BATCH = "event_engine.publish_batch"

#: Real-looking business data the app writes into payloads and metadata; tests search
#: the Cloud side for every one of these strings to prove none of it left the host.
CUSTOMERS = (
    ("ada.lovelace@example.com", "12 St James's Square, London"),
    ("grace.hopper@example.org", "1 Navy Yard, Arlington VA"),
    ("alan.turing@example.net", "Bletchley Park, Milton Keynes"),
    ("katherine.johnson@example.com", "Hampton, Virginia 23666"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id               INTEGER PRIMARY KEY,
    customer_email   TEXT NOT NULL,
    amount_cents     INTEGER NOT NULL CHECK (amount_cents > 0),
    currency         TEXT NOT NULL,
    shipping_address TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY,
    order_id     INTEGER NOT NULL REFERENCES orders(id),
    card_last4   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    declined     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    event_name       TEXT NOT NULL,
    event_version    INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    payload          TEXT NOT NULL,            -- JSON, business data: stays on this host
    metadata         TEXT NOT NULL,            -- JSON, request context: stays on this host
    status           TEXT NOT NULL DEFAULT 'pending',  -- pending | published | dead_lettered
    attempts         INTEGER NOT NULL DEFAULT 0,
    occurred_at      TEXT NOT NULL,
    published_at     TEXT,
    dead_lettered_at TEXT,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE status = 'pending';
"""


def utc_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Emitted:
    """An outbox row written in the open transaction, announced once it commits."""

    event_id: int
    event_name: str
    event_version: int
    event_type: str
    idempotency_key: str
    occurred_at: str


@dataclass
class _Transaction:
    """The open transaction: writes go through ``conn``, events through :meth:`emit`."""

    conn: sqlite3.Connection
    emitted: list[_Emitted] = field(default_factory=list)

    def emit(
        self,
        event_name: str,
        payload: Mapping[str, Any],
        *,
        event_version: int = 1,
        event_type: str = "domain",
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Write the event's outbox row in this transaction; returns its id (the event id)."""
        key = str(uuid.uuid4())
        occurred_at = utc_now()
        cursor = self.conn.execute(
            "INSERT INTO outbox (event_name, event_version, event_type, idempotency_key,"
            " payload, metadata, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event_name,
                event_version,
                event_type,
                key,
                json.dumps(dict(payload)),
                json.dumps(dict(metadata or {})),
                occurred_at,
            ),
        )
        event_id = int(cursor.lastrowid or 0)
        self.emitted.append(
            _Emitted(event_id, event_name, event_version, event_type, key, occurred_at)
        )
        return event_id


class OutboxApp:
    """The shop: orders and payments, each written together with its outbox event."""

    def __init__(self, db_path: str, *, request_id: Callable[[], str] | None = None) -> None:
        self.db_path = db_path
        # One connection shared by the app's threads (the payload endpoint's lookup runs
        # in a server thread), serialised by a lock.
        self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._request_id = request_id or (lambda: uuid.uuid4().hex[:12])
        self._conn.execute("PRAGMA journal_mode = wal")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> OutboxApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One SQLite transaction; its events are announced after COMMIT, never on rollback."""
        with self._lock:
            tx = _Transaction(self._conn)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        for event in tx.emitted:
            blinker.signal(EVENT_EMITTED).send(
                self,
                event_name=event.event_name,
                event_version=event.event_version,
                event_id=event.event_id,
                idempotency_key=event.idempotency_key,
                event_type=event.event_type,
                occurred_at=event.occurred_at,
            )

    def place_order(
        self, customer_email: str, amount_cents: int, *, address: str = "", currency: str = "EUR"
    ) -> int:
        """Create an order and its ``order.placed`` event atomically; returns the order id."""
        with self.transaction() as tx:
            created_at = utc_now()
            cursor = tx.conn.execute(
                "INSERT INTO orders (customer_email, amount_cents, currency, shipping_address,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (customer_email, amount_cents, currency, address, created_at),
            )
            order_id = int(cursor.lastrowid or 0)
            tx.emit(
                "order.placed",
                {
                    "order_id": order_id,
                    "customer_email": customer_email,
                    "amount_cents": amount_cents,
                    "currency": currency,
                    "shipping_address": address,
                },
                event_version=2,
                metadata={"request_id": self._request_id(), "customer_email": customer_email},
            )
        return order_id

    def capture_payment(self, order_id: int, card_last4: str, *, declined: bool = False) -> int:
        """Record a payment and its ``payment.captured`` event atomically; returns the event id.

        ``declined`` marks a card the broker will refuse on every attempt (dead-letter path).
        """
        with self.transaction() as tx:
            row = tx.conn.execute(
                "SELECT amount_cents, customer_email FROM orders WHERE id = ?", (order_id,)
            ).fetchone()
            if row is None:
                raise LookupError(f"no order {order_id}")
            amount, email = row
            tx.conn.execute(
                "INSERT INTO payments (order_id, card_last4, amount_cents, declined, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (order_id, card_last4, amount, int(declined), utc_now()),
            )
            return tx.emit(
                "payment.captured",
                {
                    "order_id": order_id,
                    "customer_email": email,
                    "amount_cents": amount,
                    "card_last4": card_last4,
                    "declined": declined,
                },
                metadata={"request_id": self._request_id()},
            )

    def lookup(self, event_id: int | str) -> dict[str, Any] | None:
        """One outbox event for the payload fetch endpoint, or None when there is none."""
        if not isinstance(event_id, int):
            return None  # this outbox has integer ids only
        with self._lock:
            row = self._conn.execute(
                "SELECT event_name, payload, metadata, status FROM outbox WHERE id = ?",
                (event_id,),
            ).fetchone()
        if row is None:
            return None
        return {
            "event_name": row[0],
            "payload": json.loads(row[1]),
            "metadata": json.loads(row[2]),
            "status": row[3],
        }

    def outbox_counts(self) -> dict[str, int]:
        """Outbox rows per status (``pending``, ``published``, ``dead_lettered``)."""
        with self._lock:
            rows = self._conn.execute("SELECT status, count(*) FROM outbox GROUP BY status")
            counts = {"pending": 0, "published": 0, "dead_lettered": 0}
            counts.update({status: n for status, n in rows})
        return counts


class BrokerError(Exception):
    """The broker refused or could not take an event."""


class BrokerUnavailable(BrokerError):
    """A transient broker failure; the next attempt may succeed."""


class PaymentDeclined(BrokerError):
    """The broker refuses this event on every attempt."""


class FakeBroker:
    """Accepts events, except declined payments (always) and a random share (transiently)."""

    def __init__(self, *, fail_rate: float = 0.0, seed: int | None = None) -> None:
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self.delivered: list[int] = []

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Publish one event (a mapping with ``id``, ``event_name``, ``payload``) or raise."""
        payload = event["payload"]
        if event["event_name"] == "payment.captured" and payload.get("declined"):
            raise PaymentDeclined(f"card ending {payload.get('card_last4')} declined")
        if self.fail_rate and self._rng.random() < self.fail_rate:
            raise BrokerUnavailable("broker connection reset")
        self.delivered.append(int(event["id"]))


class OutboxPublisher:
    """Publishes pending outbox rows in id order; retries on later passes, then dead-letters."""

    def __init__(
        self,
        app: OutboxApp,
        broker: Callable[[Mapping[str, Any]], None],
        *,
        max_attempts: int = 3,
        batch_size: int = 100,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.app = app
        self.broker = broker
        self.max_attempts = max_attempts
        self.batch_size = batch_size

    def publish_pending(self) -> int:
        """One pass over up to ``batch_size`` pending rows; returns how many were published."""
        app = self.app
        with app._lock:
            rows = app._conn.execute(
                "SELECT id, event_name, event_version, payload, metadata, attempts, occurred_at"
                " FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?",
                (self.batch_size,),
            ).fetchall()
        if not rows:
            return 0
        published = 0
        for event_id, name, version, payload, metadata, attempts, occurred_at in rows:
            attempts += 1
            event = {
                "id": event_id,
                "event_name": name,
                "event_version": version,
                "payload": json.loads(payload),
                "metadata": json.loads(metadata),
            }
            try:
                self.broker(event)
            except Exception as exc:
                self._failed(event_id, name, version, attempts, occurred_at, exc)
                continue
            published_at = utc_now()
            with app._lock:
                app._conn.execute(
                    "UPDATE outbox SET status = 'published', attempts = ?, published_at = ?,"
                    " last_error = NULL WHERE id = ?",
                    (attempts, published_at, event_id),
                )
            published += 1
            blinker.signal(EVENT_PUBLISHED).send(
                self,
                event_name=name,
                event_version=version,
                event_id=event_id,
                occurred_at=occurred_at,
                published_at=published_at,
                attempts=attempts,
            )
        blinker.signal(PUBLISH_BATCH).send(self, count=published)
        return published

    def _failed(
        self,
        event_id: int,
        name: str,
        version: int,
        attempts: int,
        occurred_at: str,
        exc: Exception,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if attempts < self.max_attempts:
            with self.app._lock:
                self.app._conn.execute(
                    "UPDATE outbox SET attempts = ?, last_error = ? WHERE id = ?",
                    (attempts, error, event_id),
                )
            return
        dead_lettered_at = utc_now()
        with self.app._lock:
            self.app._conn.execute(
                "UPDATE outbox SET status = 'dead_lettered', attempts = ?, last_error = ?,"
                " dead_lettered_at = ? WHERE id = ?",
                (attempts, error, dead_lettered_at, event_id),
            )
        blinker.signal(EVENT_DEAD_LETTERED).send(
            self,
            event_name=name,
            event_version=version,
            event_id=event_id,
            attempts=attempts,
            error_message=str(exc),
            error_class=type(exc).__name__,
            occurred_at=occurred_at,
            dead_lettered_at=dead_lettered_at,
        )
