"""In-process subscription to the host's notifications.

The host announces events on process-wide named signals (blinker, as Flask
does), so it never needs to import spooler::

    blinker.signal("event_engine.event_emitted").send(self, event_name=..., event_id=...)

Each signal is connected once to a module-level function that forwards the
keyword payload to the current reporter; connecting again is a no-op, so
subscribing twice never double-reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blinker

__all__ = [
    "EVENT_DEAD_LETTERED",
    "EVENT_EMITTED",
    "EVENT_PUBLISHED",
    "PUBLISH_BATCH",
    "SIGNAL_NAMES",
    "subscribe",
    "subscribed",
    "unsubscribe",
]

EVENT_EMITTED = "event_engine.event_emitted"
EVENT_PUBLISHED = "event_engine.event_published"
EVENT_DEAD_LETTERED = "event_engine.event_dead_lettered"
PUBLISH_BATCH = "event_engine.publish_batch"
SIGNAL_NAMES = (EVENT_EMITTED, EVENT_PUBLISHED, EVENT_DEAD_LETTERED, PUBLISH_BATCH)

_target: Any = None  # the Reporter the signals feed


def _forwarding(method: str) -> Callable[..., None]:
    """A signal receiver that hands the notification's keywords to ``_target.<method>``."""

    def receive(_sender: object, **payload: Any) -> None:
        target = _target
        if target is not None:
            getattr(target, method)(payload)

    receive.__name__ = receive.__qualname__ = f"_on_{method}"
    return receive


def _on_publish_batch(_sender: object, **payload: Any) -> None:
    target = _target
    if target is not None:
        target.track_publish_batch(payload.get("count"))


_RECEIVERS: dict[str, Callable[..., None]] = {
    EVENT_EMITTED: _forwarding("track_emit"),
    EVENT_PUBLISHED: _forwarding("track_publish"),
    EVENT_DEAD_LETTERED: _forwarding("track_dead_letter"),
    PUBLISH_BATCH: _on_publish_batch,
}


def subscribe(reporter: Any) -> None:
    """Feed the four notifications to ``reporter`` (idempotent)."""
    global _target
    _target = reporter
    for name, receiver in _RECEIVERS.items():
        blinker.signal(name).connect(receiver, weak=False)


def unsubscribe(reporter: Any = None) -> None:
    """Disconnect from every notification; given ``reporter``, only if it is the one fed."""
    global _target
    if reporter is not None and _target is not reporter:
        return
    _target = None
    for name, receiver in _RECEIVERS.items():
        blinker.signal(name).disconnect(receiver)


def subscribed() -> bool:
    """Whether the hooks are connected."""
    return _target is not None
