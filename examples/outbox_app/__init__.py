"""A small transactional-outbox app on SQLite that announces its events with blinker only.

See :mod:`examples.outbox_app.app`; ``python -m spooler demo`` runs it against a local receiver.
"""

from __future__ import annotations

from examples.outbox_app.app import (
    CUSTOMERS,
    EVENT_DEAD_LETTERED,
    EVENT_EMITTED,
    EVENT_PUBLISHED,
    PUBLISH_BATCH,
    BrokerError,
    BrokerUnavailable,
    FakeBroker,
    OutboxApp,
    OutboxPublisher,
    PaymentDeclined,
    utc_now,
)

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
