"""spooler: report lightweight event metadata to EventEngine Cloud through a durable local spool."""

from __future__ import annotations

from spooler._version import __version__
from spooler.config import Config
from spooler.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    ShipperLockedError,
    SpoolerError,
    SpoolError,
    TransientDeliveryError,
)

__all__ = [
    "AuthError",
    "Config",
    "ConfigError",
    "DeliveryError",
    "PermanentDeliveryError",
    "ShipperLockedError",
    "SpoolError",
    "SpoolerError",
    "TransientDeliveryError",
    "__version__",
]
