"""The receiver's fault injection: what it may do wrong on purpose, and the dice it rolls.

Part of the dev tool :mod:`spooler.receiver`, not of the library a host imports.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

__all__ = ["FaultDice", "Faults"]


@dataclass(frozen=True)
class Faults:
    """Ways the receiver misbehaves on purpose; the default misbehaves in none."""

    status: int | None = None  # answer this status to a share of requests...
    rate: float = 0.0  # ...with this probability (0..1), or
    first_n: int = 0  # ...to the first n requests after these faults were set
    retry_after: str | None = None  # Retry-After header value sent with injected statuses
    delay: float = 0.0  # seconds to sleep before answering every request
    close_rate: float = 0.0  # probability of closing the connection with no answer
    max_body_bytes: int | None = None  # bodies larger than this get 413
    reject_event_names: frozenset[str] = frozenset()  # entries with these names get 422
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status}")
        for name in ("rate", "close_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.status is None and (self.rate > 0 or self.first_n > 0):
            raise ValueError("rate and first_n need a status to inject")
        if self.first_n < 0:
            raise ValueError(f"first_n must not be negative, got {self.first_n}")
        if not self.delay >= 0.0:
            raise ValueError(f"delay must not be negative, got {self.delay}")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must not be negative, got {self.max_body_bytes}")
        object.__setattr__(self, "reject_event_names", frozenset(self.reject_event_names))


class FaultDice:
    """The faults in effect and the seeded random draws that apply them; thread-safe."""

    def __init__(self, faults: Faults | None) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()
        self._rng = random.Random()
        self._seen = 0  # requests since the faults were set, for first_n
        self.set(faults)

    @property
    def faults(self) -> Faults:
        """The faults in effect."""
        with self._lock:
            return self._faults

    def set(self, faults: Faults | None) -> None:
        """Replace the faults; the random draws restart from their seed, ``first_n`` from now."""
        faults = faults or Faults()
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._seen = 0

    def draw(self) -> tuple[Faults, bool, bool]:
        """Decide one request's faults: (faults in effect, close it, inject the status)."""
        with self._lock:
            faults = self._faults
            index = self._seen
            self._seen += 1
            close = faults.close_rate > 0 and self._rng.random() < faults.close_rate
            inject = faults.status is not None and (
                index < faults.first_n or (faults.rate > 0 and self._rng.random() < faults.rate)
            )
            return faults, close, inject
