"""Exceptions raised by spooler.

Nothing here ever reaches the host through a ``track_*`` call: the hot path
counts and drops instead. These are for configuration time, the CLI, and the
shipper's own classification of Cloud answers.

    SpoolerError
    ├── ConfigError                 invalid option at configure time (``option=``)
    ├── SpoolError                  the local SQLite spool could not do its job
    │   ├── SpoolBusyError          another writer held the lock past the short timeout
    │   └── UnsafeSpoolError        a link, a foreign file or an open folder (``path=``)
    ├── ShipperLockedError          another shipper already owns this spool (``holder_pid=``)
    └── DeliveryError               the Cloud did not take a request (``status=``)
        ├── TransientDeliveryError  408, 429, 5xx, network errors: retry (``retry_after=``)
        └── PermanentDeliveryError  retrying the same request cannot help
            ├── AuthError           401 / 403: the key is wrong or revoked
            ├── PayloadTooLargeError 413: split the batch
            └── RejectedError       400 / 422: some entry is invalid; bisect

Messages never contain the API key, a payload or an entry.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "DeliveryError",
    "PayloadTooLargeError",
    "PermanentDeliveryError",
    "RejectedError",
    "ShipperLockedError",
    "SpoolBusyError",
    "SpoolError",
    "SpoolerError",
    "TransientDeliveryError",
    "UnsafeSpoolError",
]


class SpoolerError(Exception):
    """Root of every exception spooler raises."""


class ConfigError(SpoolerError, ValueError):
    """An option is invalid; ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


class SpoolError(SpoolerError):
    """The local spool could not complete an operation."""


class SpoolBusyError(SpoolError):
    """Another writer held the spool past the short busy timeout (``stored`` entries of
    the call were stored before that)."""

    def __init__(self, message: str, *, stored: int = 0) -> None:
        self.stored = stored
        super().__init__(message)


class UnsafeSpoolError(SpoolError):
    """spooler refuses to use ``path``: writing there could change a file it did not create.

    A symbolic link, a file that is not a regular file of this user, a database
    of another application, or a folder other users may write to.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class ShipperLockedError(SpoolerError):
    """Another shipper already holds this spool's lock."""

    def __init__(self, lock_path: str, holder_pid: int | None = None) -> None:
        self.lock_path = lock_path
        self.holder_pid = holder_pid
        who = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(f"another shipper ({who}) already ships this spool (lock {lock_path})")


class DeliveryError(SpoolerError):
    """The Cloud did not accept a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """A failure that may pass: retry with backoff (honouring ``retry_after`` seconds)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class PermanentDeliveryError(DeliveryError):
    """Sending the same request again will fail the same way."""


class AuthError(PermanentDeliveryError):
    """401 or 403: the API key is wrong or revoked."""


class PayloadTooLargeError(PermanentDeliveryError):
    """413: the request body is too large; send smaller batches."""


class RejectedError(PermanentDeliveryError):
    """400 or 422: the Cloud rejects at least one entry of the batch."""
