"""Every option spooler has, its default, and its validation, in one place.

Every source of options goes through one parser, :func:`parse_option`, which
``Config.__post_init__`` runs on every field: keyword arguments to ``Config`` and
``spooler.configure``, Flask's ``SPOOLER_*`` keys, Django's ``SPOOLER`` dict and the
``EVENT_ENGINE_CLOUD_*`` variables all accept the same strings and values (``"true"``,
``"1"`` or ``True`` for booleans, ``"100"`` or ``100`` for numbers, ``"64MiB"`` or
``67108864`` for sizes). ``Config.from_env(mapping, **overrides)`` reads the variables
from the mapping it is given (this is the only module that looks at ``os.environ``), and
explicit overrides win over it. Invalid values raise :class:`~spooler.errors.ConfigError`
naming the option. An unknown option passed as an argument raises too; an unknown
``EVENT_ENGINE_CLOUD_*`` variable or framework key is logged once as a warning on
``spooler.config``, naming the closest option, and ignored.

This module is longer than the ~500 lines other modules keep to on purpose: it is the
one table of options, and an option's name, default, environment variable, parsing and
checks read best side by side. Split, a new option would be a change to several files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from spooler.errors import ConfigError
from spooler.node import expand_spool_path

__all__ = [
    "CODE_ONLY_OPTIONS",
    "DEFAULT_ENDPOINT",
    "DEFAULT_SPOOL_PATH",
    "ENV_PREFIX",
    "ENV_VARS",
    "OPTIONS",
    "Config",
    "check_origins",
    "check_proxy",
    "env_value",
    "format_size",
    "options_from_settings",
    "parse_option",
    "parse_size",
    "redact_url",
]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.eventengine.dev/v1/ingest"
DEFAULT_DASHBOARD_ORIGIN = "https://app.eventengine.dev"
# Relative to the working directory, so an app and `python -m spooler ship`
# started from the same project folder share one spool.
DEFAULT_SPOOL_PATH = os.path.join(".spooler", "spool.db")
MIN_SPOOL_BYTES = 1 << 20  # 1 MiB
MAX_SPOOL_BYTES = 1 << 40  # 1 TiB

SpoolMode = Literal["background", "immediate"]
_N = TypeVar("_N", int, float)

ENV_PREFIX = "EVENT_ENGINE_CLOUD_"

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
    "proxy": "EVENT_ENGINE_CLOUD_PROXY",
    "ca_bundle": "EVENT_ENGINE_CLOUD_CA_BUNDLE",
    "compress": "EVENT_ENGINE_CLOUD_COMPRESS",
    "metrics_port": "EVENT_ENGINE_CLOUD_METRICS_PORT",
    "debug": "EVENT_ENGINE_CLOUD_DEBUG",
}
#: options only code can set: a function is not something the environment can hold
CODE_ONLY_OPTIONS = frozenset({"before_send"})

# Checked in this order when EVENT_ENGINE_CLOUD_ENVIRONMENT is unset.
_ENVIRONMENT_FALLBACKS = ("APP_ENV", "ENVIRONMENT", "DJANGO_ENV", "FLASK_ENV")

_BOOLS = frozenset(
    {"enabled", "ship_in_process", "send_error_message", "payload_endpoint", "compress", "debug"}
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_INTS: dict[str, tuple[int, int]] = {
    "batch_size": (1, 10_000),
    "buffer_size": (1, 10_000_000),
    "error_message_max_length": (0, 10_000),
    "metrics_port": (0, 65_535),
}
_SECONDS: dict[str, tuple[float, float]] = {
    "flush_interval": (0.01, 3600.0),
    "shutdown_timeout": (0.0, 600.0),
}

# Sizes follow pydantic's ByteSize, case-insensitive: an "i" means powers of 1024,
# kB/MB/GB/TB and the bare letters mean powers of 1000, and B or no unit is bytes.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}


def _default_app_name() -> str:
    # The project folder's name: the same for every worker and for a
    # `python -m spooler ship` started beside them. The framework integrations
    # pass the app's own name (Django's settings package, Flask's import_name,
    # FastAPI's title) as a default above this one.
    return Path.cwd().name or "app"


@dataclass(frozen=True)
class Config:
    """Every spooler option with its default; parsed and validated on construction.

    Each field also accepts the strings the environment would hold (``batch_size="100"``,
    ``spool_max_bytes="64MiB"``, ``enabled="false"``); the attributes hold the parsed values.
    """

    api_key: str | None = field(default=None, repr=False)
    endpoint: str = DEFAULT_ENDPOINT
    environment: str = "development"
    app_name: str = field(default_factory=_default_app_name)
    enabled: bool | None = None
    batch_size: int = 500  # the Ruby plan had 50: one request per 500 costs ~4x less CPU per entry
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
    proxy: str | None = None
    ca_bundle: str | os.PathLike[str] | None = None
    compress: bool = False
    metrics_port: int | None = None
    debug: bool = False
    # A function has no environment form; it is left out of ==, hash and repr so a
    # config stays hashable and comparable whatever the host passes.
    before_send: Callable[[dict[str, Any]], dict[str, Any] | None] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for f in dataclasses.fields(self):
            set_(self, f.name, parse_option(f.name, getattr(self, f.name)))
        key = self.api_key
        if key is not None:
            if not isinstance(key, str):
                raise ConfigError("api_key", "must be a string")
            if any(c.isspace() or ord(c) < 32 for c in key):
                raise ConfigError("api_key", "must not contain whitespace or control characters")
        set_(self, "endpoint", _check_endpoint(self.endpoint))
        for name in ("environment", "app_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, "must be a non-empty string")
            set_(self, name, value.strip()[:200])
        if self.enabled is None:
            set_(self, "enabled", self.api_key is not None)
        elif self.enabled and self.api_key is None:
            raise ConfigError("enabled", "is true but api_key is not set")
        try:
            path = os.path.abspath(expand_spool_path(os.fspath(self.spool_path)))
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
        set_(self, "dashboard_origins", check_origins(self.dashboard_origins))
        set_(self, "proxy", check_proxy(self.proxy))
        set_(self, "ca_bundle", _check_ca_bundle(self.ca_bundle))
        if self.before_send is not None and not callable(self.before_send):
            raise ConfigError(
                "before_send",
                f"must be a callable or None, got a {type(self.before_send).__name__}",
            )

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in CODE_ONLY_OPTIONS:
                continue
            if f.name == "api_key":
                parts.append("api_key=" + ("'********'" if value else "None"))
            elif f.name == "proxy" and value is not None:
                parts.append(f"proxy={redact_url(value)!r}")
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
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        /,
        *,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Config:
        """Build from ``EVENT_ENGINE_CLOUD_*`` variables; explicit ``overrides`` win.

        ``environ`` defaults to ``os.environ``; tests pass a plain dict. ``defaults`` sit
        between the built-in defaults and the environment (the integrations pass the
        framework's name for the app there). An unknown override raises
        :class:`ConfigError`; an unknown ``EVENT_ENGINE_CLOUD_*`` variable is logged once
        and ignored.
        """
        env = os.environ if environ is None else environ
        _refuse_unknown(overrides)
        _refuse_unknown(defaults or {})
        _warn_unknown_variables(env)
        values: dict[str, Any] = dict(defaults or {})
        for name, var in ENV_VARS.items():
            if name in overrides or var not in env:
                continue
            values[name] = env_value(name, env)
        if ENV_VARS["environment"] not in env:
            for var in _ENVIRONMENT_FALLBACKS:
                if env.get(var, "").strip():
                    values["environment"] = env[var]
                    break
        values.update(overrides)
        return cls(**values)


#: every option's name, in the order of the Config signature
OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


# -- the one parser ------------------------------------------------------------------


def env_value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Option ``name`` as its environment variable sets it, parsed like every source
    (for ``api_key``: stripped, None when unset or blank); the other variables are not
    read. ``environ`` defaults to ``os.environ``."""
    var = ENV_VARS[name]
    raw = (os.environ if environ is None else environ).get(var)
    if raw is None:
        return None
    try:
        return parse_option(name, raw)
    except ConfigError as exc:
        # Name the variable the user set, not just the option behind it.
        raise ConfigError(name, f"{_message(exc)} (from {var})") from None


def parse_option(name: str, value: Any) -> Any:
    """``value`` for option ``name`` in its Python type, range-checked for numbers and sizes.

    The one parser behind every source: strings are read the way the environment writes
    them, values already of the right type pass through, anything else raises
    :class:`ConfigError` naming the option. Options that take free text (endpoint, paths,
    names) are returned as given and checked by :class:`Config`.
    """
    if name in _BOOLS:
        return None if name == "enabled" and value is None else _parse_bool(name, value)
    if name == "metrics_port" and (value is None or (isinstance(value, str) and not value.strip())):
        return None
    if name in _INTS:
        return _parse_int(name, value)
    if name in _SECONDS:
        return _parse_seconds(name, value)
    if name == "spool_max_bytes":
        return _check_size(name, value, parse_size(value, name))
    if name == "spool_mode":
        mode = value.strip().lower() if isinstance(value, str) else value
        if mode not in ("background", "immediate"):
            raise ConfigError(name, f"must be 'background' or 'immediate', got {value!r}")
        return mode
    if isinstance(value, str):
        if name == "api_key":
            return value.strip() or None
        if name == "dashboard_origins":
            return tuple(o.strip() for o in value.split(",") if o.strip())
        if name in ("proxy", "ca_bundle"):
            return value.strip() or None
    return value


def parse_size(raw: object, option: str = "spool_max_bytes") -> int:
    """Bytes in a size: ``67108864``, ``64MiB``, ``500MB``, ``1.5GiB``, ``512 kB``.

    pydantic's ByteSize convention, case-insensitive: ``KiB``, ``MiB``, ``GiB``, ``TiB`` are
    powers of 1024; ``kB``, ``MB``, ``GB``, ``TB`` and the bare ``k``, ``m``, ``g``, ``t``
    are powers of 1000; ``B`` or no unit is bytes. Fractions are rounded down to a byte.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        match = _SIZE.match(raw)
        if match and match.group(2).lower() in _SIZE_UNITS:
            number, unit = match.groups()
            return int(Decimal(number) * _SIZE_UNITS[unit.lower()])
    raise ConfigError(
        option,
        "must be a size such as 64MiB (64 x 1024^2 bytes), 500MB (500 x 1000^2 bytes) "
        f"or 67108864 (bytes), got {raw!r}",
    )


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it exactly: ``1 MiB``, ``1536 KiB``."""
    for unit, power in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << power) == 0:
            return f"{n >> power} {unit}"
    return f"{n} bytes"


def _check_size(option: str, given: object, n: int) -> int:
    got = f"{given!r} ({n} bytes)" if isinstance(given, str) else f"{n} bytes"
    if n < MIN_SPOOL_BYTES:
        limit = f"at least {format_size(MIN_SPOOL_BYTES)} ({MIN_SPOOL_BYTES} bytes)"
    elif n > MAX_SPOOL_BYTES:
        limit = f"at most {format_size(MAX_SPOOL_BYTES)} ({MAX_SPOOL_BYTES} bytes)"
    else:
        return n
    raise ConfigError(option, f"must be {limit}, got {got}")


def _parse_bool(option: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ConfigError(option, f"must be true or false (or 1/0, yes/no, on/off), got {value!r}")


def _parse_int(option: str, value: object) -> int:
    number = _number(value, int)
    if number is None:
        raise ConfigError(option, f"must be an integer, got {_shown(value)}")
    low, high = _INTS[option]
    if not low <= number <= high:
        raise ConfigError(option, f"must be between {low} and {high}, got {number}")
    return number


def _parse_seconds(option: str, value: object) -> float:
    number = _number(value, float)
    if number is None:
        raise ConfigError(option, f"must be a number of seconds, got {_shown(value)}")
    low, high = _SECONDS[option]
    if not low <= number <= high:  # also rejects NaN
        raise ConfigError(option, f"must be between {low:g} and {high:g} seconds, got {number:g}")
    return number


def _number(value: object, kind: type[_N]) -> _N | None:
    """``value`` as ``kind`` (int or float), or None when it is not such a number.

    A string is parsed, a bool refused, and a float becomes an int only when it is whole.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value.strip())
        return None
    if kind is int and isinstance(value, int):
        return value  # an int subclass (an IntEnum member) is kept as given
    if isinstance(value, int) or (
        isinstance(value, float) and (kind is float or value.is_integer())
    ):
        return kind(value)
    return None


def _shown(value: object) -> str:
    if isinstance(value, (str, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _message(exc: ConfigError) -> str:
    return str(exc).removeprefix(f"{exc.option}: ")


# -- unknown names -------------------------------------------------------------------

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _closest(name: str, spellings: Mapping[str, str]) -> str | None:
    """The spelling whose lower-cased key is closest to ``name`` (difflib), if any is close."""
    match = difflib.get_close_matches(name.lower(), list(spellings), n=1)
    return spellings[match[0]] if match else None


def _refuse_unknown(options: Mapping[str, Any]) -> None:
    for name in sorted(set(options) - set(OPTIONS)):
        suggestion = _closest(name, {o: o for o in OPTIONS})
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise ConfigError(name, f"is not a spooler option{hint}")


def _warn_once(where: str, shown: str, suggestion: str | None) -> None:
    with _warned_lock:
        if (where, shown) in _warned:
            return
        _warned.add((where, shown))
    if suggestion:
        logger.warning(
            "%s in %s is not a spooler option and is ignored; did you mean %s?",
            shown,
            where,
            suggestion,
        )
    else:
        logger.warning(
            "%s in %s is not a spooler option and is ignored (the options are listed in "
            "spooler's README, Configuration)",
            shown,
            where,
        )


def _warn_unknown_variables(env: Iterable[str]) -> None:
    known = set(ENV_VARS.values())
    spellings: dict[str, str] = {}
    for name, var in ENV_VARS.items():
        spellings[var.removeprefix(ENV_PREFIX).lower()] = var
        spellings.setdefault(name, var)  # EVENT_ENGINE_CLOUD_API_KEY -> ..._KEY
    for var in env:
        if var.upper().startswith(ENV_PREFIX) and var not in known:
            suggestion = _closest(var[len(ENV_PREFIX) :], spellings)
            _warn_once("the environment", var, suggestion)


def options_from_settings(
    settings: Mapping[Any, Any], *, prefix: str = "", where: str
) -> dict[str, Any]:
    """The spooler options in a framework's settings, by option name; values as given.

    With a ``prefix`` (Flask's ``SPOOLER_``) spooler's keys are ``prefix + NAME`` with the
    option's name upper-cased and other keys are left alone; without one (Django's
    ``SPOOLER`` dict) every key must be an option's name. A key that is neither is
    logged once as a warning naming the closest option (``where`` says where it was set)
    and ignored. The values are parsed later, by :class:`Config`, like every source's.
    """
    spellings = {prefix + name.upper() if prefix else name: name for name in OPTIONS}
    options: dict[str, Any] = {}
    for key, value in settings.items():
        if prefix and not (isinstance(key, str) and key.upper().startswith(prefix.upper())):
            continue
        name = spellings.get(key) if isinstance(key, str) else None
        if name is not None:
            options[name] = value
            continue
        suggestion = _closest(str(key), {k.lower(): k for k in spellings})
        if prefix:
            _warn_once(where, str(key), suggestion)
        else:
            _warn_once(where, repr(key), repr(suggestion) if suggestion else None)
    return options


# -- free-text options ---------------------------------------------------------------


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
    endpoint = endpoint.strip()
    parts = _split_http_url("endpoint", endpoint)
    if parts.username or parts.password:
        raise ConfigError("endpoint", "must not carry credentials; set api_key instead")
    if parts.query or parts.fragment:
        raise ConfigError("endpoint", "must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise ConfigError("endpoint", "plain http is allowed only for loopback hosts; use https")
    return endpoint.rstrip("/")


def redact_url(url: str) -> str:
    """``url`` with any user and password in it replaced by ``***``, for messages and repr."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable URL>"
    return parts._replace(netloc=f"***@{host}").geturl()


def check_proxy(proxy: object) -> str | None:
    """``proxy`` if it is an ``http(s)://[user:password@]host[:port]`` URL, None if None.

    Raises :class:`ConfigError` otherwise, without quoting the URL (it may hold a password).
    """
    if proxy is None:
        return None
    if not isinstance(proxy, str):
        raise ConfigError("proxy", "must be a URL string")
    parts = _split_http_url("proxy", proxy)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("proxy", "must be scheme://[user:password@]host[:port] only")
    return proxy


def _split_http_url(option: str, url: str) -> SplitResult:
    """``url`` split, or ConfigError unless it is an http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(option, "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(option, f"must be an http(s) URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError(option, "has no host")
    return parts


def _check_ca_bundle(bundle: object) -> str | None:
    if bundle is None:
        return None
    given = os.fspath(bundle) if isinstance(bundle, (str, os.PathLike)) else None
    if not isinstance(given, str):
        raise ConfigError("ca_bundle", "must be a path to a PEM file")
    path = os.path.abspath(given)
    if not os.path.isfile(path):
        raise ConfigError("ca_bundle", f"{path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError("ca_bundle", f"{path!r} is not readable")
    return path


def check_origins(origins: object) -> tuple[str, ...]:
    """``origins`` (one string or a list) as ``scheme://host[:port]`` in lower case.

    Raises :class:`ConfigError` for a wildcard, ``null``, or anything but an http(s) origin.
    The payload endpoint checks its allowed origins here too.
    """
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
