"""spooler: report lightweight event metadata to EventEngine Cloud through a durable local spool.

Typical use::

    import spooler
    spooler.configure()          # reads EVENT_ENGINE_CLOUD_KEY and friends
    spooler.start()              # does nothing at all without a key
    spooler.track_emit({"event_name": "order.placed", "event_id": 42})

Importing spooler is cheap: the HTTP stack (httpx) loads only when a shipper starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spooler._version import __version__
from spooler.config import Config
from spooler.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    ShipperLockedError,
    SpoolBusyError,
    SpoolerError,
    SpoolError,
    TransientDeliveryError,
    UnsafeSpoolError,
)
from spooler.reporter import (
    Reporter,
    configure,
    flush,
    get_reporter,
    register_schema,
    shutdown,
    start,
    track_dead_letter,
    track_emit,
    track_publish,
    track_publish_batch,
)
from spooler.serializer import build_entry, schema_fingerprint
from spooler.spool import Spool, SpoolStats

if TYPE_CHECKING:
    from spooler.client import CloudClient
    from spooler.receiver import Faults, Receiver
    from spooler.shipper import Shipper

__all__ = [
    "AuthError",
    "CloudClient",
    "Config",
    "ConfigError",
    "DeliveryError",
    "Faults",
    "PermanentDeliveryError",
    "Receiver",
    "Reporter",
    "Shipper",
    "ShipperLockedError",
    "Spool",
    "SpoolBusyError",
    "SpoolError",
    "SpoolStats",
    "SpoolerError",
    "TransientDeliveryError",
    "UnsafeSpoolError",
    "__version__",
    "build_entry",
    "configure",
    "flush",
    "get_reporter",
    "register_schema",
    "schema_fingerprint",
    "shutdown",
    "start",
    "track_dead_letter",
    "track_emit",
    "track_publish",
    "track_publish_batch",
]

_LAZY = {
    "CloudClient": "spooler.client",
    "Shipper": "spooler.shipper",
    "Receiver": "spooler.receiver",
    "Faults": "spooler.receiver",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spooler' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
