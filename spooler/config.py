"""Every option spooler has, its default, and its validation, in one place.

``Config(...)`` takes explicit values only. ``Config.from_env(mapping, **overrides)``
reads ``EVENT_ENGINE_CLOUD_*`` variables from the mapping it is given (this is the
only module that looks at ``os.environ``), and explicit overrides win over it.
Invalid values raise :class:`~spooler.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from spooler.errors import ConfigError

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_SPOOL_PATH", "ENV_VARS", "Config"]

DEFAULT_ENDPOINT = "https://api.eventengine.dev/v1/ingest"
DEFAULT_DASHBOARD_ORIGIN = "https://app.eventengine.dev"
# Relative to the working directory, so an app and `python -m spooler ship`
# started from the same project folder share one spool.
DEFAULT_SPOOL_PATH = os.path.join(".spooler", "spool.db")
MIN_SPOOL_BYTES = 1 << 20

SpoolMode = Literal["background", "immediate"]

#: option name -> environment variable
ENV_VARS: dict[str, str] = {
    "api_key": "EVENT_ENGINE_CLOUD_KEY",
    "endpoint": "EVENT_ENGINE_CLOUD_ENDPOINT",
    "environment": "EVENT_ENGINE_CLOUD_ENVIRONMENT",
    "app_name": "EVENT_ENGINE_CLOUD_APP_NAME",
    "enabled": "EVENT_ENGINE_CLOUD_ENABLED",
    "batch_size": "EVENT_ENGINE_CLOUD_BATCH_SIZE",
    "flush_interval": "EVENT_ENGINE_CLOUD_FLUSH_INTERVAL",
    "spool_path": "EVENT_ENGINE_CLOUD_SPOOL_PATH",
    "spool_max_bytes": "EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES",
    "spool_mode": "EVENT_ENGINE_CLOUD_SPOOL_MODE",
    "ship_in_process": "EVENT_ENGINE_CLOUD_SHIP_IN_PROCESS",
    "shutdown_timeout": "EVENT_ENGINE_CLOUD_SHUTDOWN_TIMEOUT",
    "buffer_size": "EVENT_ENGINE_CLOUD_BUFFER_SIZE",
    "send_error_message": "EVENT_ENGINE_CLOUD_SEND_ERROR_MESSAGE",
    "error_message_max_length": "EVENT_ENGINE_CLOUD_ERROR_MESSAGE_MAX_LENGTH",
    "schemas": "EVENT_ENGINE_CLOUD_SCHEMAS",
    "payload_endpoint": "EVENT_ENGINE_CLOUD_PAYLOAD_ENDPOINT",
    "dashboard_origins": "EVENT_ENGINE_CLOUD_DASHBOARD_ORIGINS",
}

# Checked in this order when EVENT_ENGINE_CLOUD_ENVIRONMENT is unset.
_ENVIRONMENT_FALLBACKS = ("APP_ENV", "ENVIRONMENT", "DJANGO_ENV", "FLASK_ENV")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _default_app_name() -> str:
    # The project folder's name: the same for every worker and for a
    # `python -m spooler ship` started beside them.
    return Path.cwd().name or "app"


@dataclass(frozen=True)
class Config:
    """Every spooler option with its default; validated on construction."""

    api_key: str | None = field(default=None, repr=False)
    endpoint: str = DEFAULT_ENDPOINT
    environment: str = "development"
    app_name: str = field(default_factory=_default_app_name)
    enabled: bool | None = None
    batch_size: int = 50
    flush_interval: float = 10.0
    spool_path: str | os.PathLike[str] = DEFAULT_SPOOL_PATH
    spool_max_bytes: int = 64 << 20
    spool_mode: SpoolMode = "background"
    ship_in_process: bool = True
    shutdown_timeout: float = 2.0
    buffer_size: int = 10_000
    send_error_message: bool = False
    error_message_max_length: int = 200
    schemas: Mapping[str, Any] | str | os.PathLike[str] | None = None
    payload_endpoint: bool = False
    dashboard_origins: tuple[str, ...] = (DEFAULT_DASHBOARD_ORIGIN,)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        key = self.api_key
        if key is not None:
            if not isinstance(key, str):
                raise ConfigError("api_key", "must be a string")
            key = key.strip()
            if any(c.isspace() or ord(c) < 32 for c in key):
                raise ConfigError("api_key", "must not contain whitespace or control characters")
            set_(self, "api_key", key or None)
        set_(self, "endpoint", _check_endpoint(self.endpoint))
        for name in ("environment", "app_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, "must be a non-empty string")
            set_(self, name, value.strip()[:200])
        if self.enabled is None:
            set_(self, "enabled", self.api_key is not None)
        elif not isinstance(self.enabled, bool):
            raise ConfigError("enabled", "must be true or false")
        elif self.enabled and self.api_key is None:
            raise ConfigError("enabled", "is true but api_key is not set")
        _check_int(self, "batch_size", 1, 10_000)
        _check_number(self, "flush_interval", 0.01, 3600.0)
        _check_int(self, "spool_max_bytes", MIN_SPOOL_BYTES, 1 << 40)
        _check_number(self, "shutdown_timeout", 0.0, 600.0)
        _check_int(self, "buffer_size", 1, 10_000_000)
        _check_int(self, "error_message_max_length", 0, 10_000)
        for name in ("ship_in_process", "send_error_message", "payload_endpoint"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be true or false")
        if self.spool_mode not in ("background", "immediate"):
            raise ConfigError("spool_mode", "must be 'background' or 'immediate'")
        try:
            path = os.path.abspath(os.fspath(self.spool_path))
        except TypeError:
            raise ConfigError("spool_path", "must be a path") from None
        set_(self, "spool_path", path)
        schemas = self.schemas
        if schemas is not None and not isinstance(schemas, Mapping):
            try:
                folder = os.fspath(schemas)
            except TypeError:
                raise ConfigError("schemas", "must be a mapping or a directory path") from None
            if not os.path.isdir(folder):
                raise ConfigError("schemas", f"{folder!r} is not a directory")
        set_(self, "dashboard_origins", _check_origins(self.dashboard_origins))

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                parts.append("api_key=" + ("'********'" if value else "None"))
            else:
                parts.append(f"{f.name}={value!r}")
        return f"Config({', '.join(parts)})"

    def __hash__(self) -> int:
        # The generated hash would include ``schemas``, which may be an unhashable dict.
        return hash((self.endpoint, self.spool_file, self.app_name, self.environment))

    @property
    def spool_file(self) -> str:
        """The spool's absolute path as a string."""
        return os.fspath(self.spool_path)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Config:
        """Build from ``EVENT_ENGINE_CLOUD_*`` variables; explicit ``overrides`` win.

        ``environ`` defaults to ``os.environ``; tests pass a plain dict.
        """
        env = os.environ if environ is None else environ
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(name, "is not a spooler option")
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            if name in overrides or var not in env:
                continue
            values[name] = _parse_env(name, env[var])
        if "environment" not in values and "environment" not in overrides:
            for var in _ENVIRONMENT_FALLBACKS:
                if env.get(var, "").strip():
                    values["environment"] = env[var]
                    break
        values.update(overrides)
        return cls(**values)


def _parse_env(name: str, raw: str) -> Any:
    raw = raw.strip()
    if name in ("enabled", "ship_in_process", "send_error_message", "payload_endpoint"):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(name, f"expected true/false, got {raw!r}")
    if name in ("batch_size", "buffer_size", "error_message_max_length"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if name == "spool_max_bytes":
        return parse_size(raw, name)
    if name in ("flush_interval", "shutdown_timeout"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if name == "dashboard_origins":
        return tuple(o.strip() for o in raw.split(",") if o.strip())
    if name == "api_key":
        return raw or None
    return raw


def parse_size(raw: str | int, option: str = "spool_max_bytes") -> int:
    """Parse ``65536``, ``64KiB``, ``64MB``, ``1G`` (binary units) into bytes."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    match = _SIZE.match(str(raw))
    if not match:
        raise ConfigError(option, f"expected a size such as 67108864 or 64MiB, got {raw!r}")
    number, unit = match.groups()
    return int(number) * (_SIZE_UNITS[unit[0].lower()] if unit else 1)


def _check_int(cfg: Config, name: str, low: int, high: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")


def _check_number(cfg: Config, name: str, low: float, high: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number of seconds, got {type(value).__name__}")
    if not low <= value <= high:  # also rejects NaN
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    object.__setattr__(cfg, name, float(value))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str):
        raise ConfigError("endpoint", "must be a URL string")
    try:
        parts = urlsplit(endpoint.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("endpoint", "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError("endpoint", f"must be an http(s) URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError("endpoint", "has no host")
    if parts.username or parts.password:
        raise ConfigError("endpoint", "must not carry credentials; set api_key instead")
    if parts.query or parts.fragment:
        raise ConfigError("endpoint", "must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError("endpoint", "plain http is allowed only for loopback hosts; use https")
    return endpoint.strip().rstrip("/")


def _check_origins(origins: object) -> tuple[str, ...]:
    if isinstance(origins, str):
        origins = (origins,)
    if not isinstance(origins, (tuple, list)):
        raise ConfigError("dashboard_origins", "must be a list of origins")
    checked = []
    for origin in origins:
        if not isinstance(origin, str) or "*" in origin:
            raise ConfigError("dashboard_origins", "origins must be explicit strings, no wildcard")
        parts = urlsplit(origin.strip())
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise ConfigError("dashboard_origins", f"{origin!r} is not an origin like https://host")
        checked.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(checked)
