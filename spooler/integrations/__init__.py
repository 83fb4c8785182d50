"""Framework integrations: Django, Flask and FastAPI/Starlette set spooler up their own way.

Each one reads its options the framework's way (unknown keys are warned about, see
:func:`spooler.config.options_from_settings`) and names the app the framework's way
(:func:`app_name_defaults`), then calls :func:`start_once`, which
configures and starts the process's reporter unless an identical one already runs (an app
factory called twice, Django's ``ready()`` run again in tests). Starting only subscribes to
the notifications: files and threads come on the first event in each process, so a
pre-fork server master (gunicorn ``--preload``) never holds a spool connection or a thread.

The payload fetch endpoint is mounted through :class:`LazyEndpoint`, which builds the
:class:`~spooler.endpoint.PayloadEndpoint` on the first request from the reporter's
configuration. Mounting can then happen before the reporter is configured (FastAPI's
lifespan runs after routes are declared). While ``payload_endpoint`` is off, or no key is
set, the mount answers 404, as if it were not there, and logs one warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from spooler.config import Config
from spooler.endpoint import (
    ASGIReceive,
    ASGIScope,
    ASGISend,
    Lookup,
    PayloadEndpoint,
    Response,
    StartResponse,
    answer_non_http,
    asgi_app,
    send_asgi,
    send_wsgi,
    wsgi_app,
)
from spooler.reporter import Reporter, configure, get_reporter

__all__ = [
    "LazyEndpoint",
    "app_name_defaults",
    "lazy_asgi_app",
    "lazy_wsgi_app",
    "start_once",
]

logger = logging.getLogger(__name__)

_start_lock = threading.Lock()
_NOT_FOUND = b'{"error":"not_found"}'


def start_once(defaults: Mapping[str, Any] | None = None, /, **options: Any) -> Reporter:
    """Configure (options win over ``EVENT_ENGINE_CLOUD_*``) and start, once per process.

    ``defaults`` (the framework's name for the app) sit beneath the environment. When the
    running reporter already has exactly this configuration it is returned as is; a
    different configuration replaces it (``spooler.configure`` logs a warning then).
    """
    config = Config.from_env(None, defaults=defaults, **options)
    with _start_lock:
        current = get_reporter()
        if current is not None and current.active and current.config == config:
            return current
        reporter = configure(config)
        reporter.start()
        return reporter


def app_name_defaults(module: object, *, package_only: bool = False) -> dict[str, Any]:
    """``{"app_name": ...}`` from a dotted module name's first part, or ``{}`` if it names none.

    ``"shop.settings"`` gives ``shop``. ``__main__`` and private names give nothing, and so
    does a name without a package when ``package_only`` (Django's top-level ``settings``
    module says nothing about the app); the working directory's name is used then.
    """
    if not isinstance(module, str) or not module.strip():
        return {}
    parts = module.strip().split(".")
    if package_only and len(parts) < 2:
        return {}
    first = parts[0]
    if not first.isidentifier() or first.startswith("_"):
        return {}
    return {"app_name": first}


class LazyEndpoint:
    """The payload endpoint for ``lookup``, built on first use from the reporter's config.

    ``config`` pins the configuration instead; otherwise each request uses the current
    reporter's, and a new configuration builds a new endpoint (and forgets lockouts).
    """

    def __init__(self, lookup: Lookup, *, config: Config | None = None) -> None:
        if not callable(lookup):
            raise TypeError("lookup must be callable: lookup(event_id) -> mapping | None")
        self.lookup = lookup
        self._config = config
        self._lock = threading.Lock()
        self._built_for: Config | None = None
        self._endpoint: PayloadEndpoint | None = None
        self._warned = False

    def get(self) -> PayloadEndpoint | None:
        """The endpoint, or None while the payload endpoint is off or has no key."""
        config = self._config
        if config is None:
            reporter = get_reporter()
            config = reporter.config if reporter is not None else None
        if config is None or not config.payload_endpoint or not config.api_key:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "payload endpoint is mounted but answers 404: set the payload_endpoint "
                    "option to true (and an API key) to serve payloads to the dashboard"
                )
            return None
        with self._lock:
            if self._built_for is not config:
                self._endpoint = PayloadEndpoint.from_config(config, self.lookup)
                self._built_for = config
            return self._endpoint

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], remote_addr: str | None
    ) -> Response:
        """Answer one request like :meth:`PayloadEndpoint.handle`; 404 while switched off."""
        endpoint = self.get()
        if endpoint is None:
            return _not_found()
        return endpoint.handle(method, path, headers, remote_addr)


def _not_found() -> Response:
    headers = (
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    )
    return Response(404, headers, _NOT_FOUND)


class _LazyWSGI:
    def __init__(self, lazy: LazyEndpoint) -> None:
        self._lazy = lazy
        self._built_for: PayloadEndpoint | None = None
        self._app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        endpoint = self._lazy.get()
        if endpoint is None:
            return send_wsgi(start_response, _not_found())
        if self._built_for is not endpoint:
            self._app, self._built_for = wsgi_app(endpoint), endpoint
        result: Iterable[bytes] = self._app(environ, start_response)
        return result


class _LazyASGI:
    def __init__(self, lazy: LazyEndpoint) -> None:
        self._lazy = lazy
        self._built_for: PayloadEndpoint | None = None
        self._app: Any = None

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if await answer_non_http(scope, receive, send):
            return
        endpoint = self._lazy.get()
        if endpoint is None:
            await send_asgi(send, _not_found())
            return
        if self._built_for is not endpoint:
            self._app, self._built_for = asgi_app(endpoint), endpoint
        await self._app(scope, receive, send)


def lazy_wsgi_app(lookup: Lookup, *, config: Config | None = None) -> Any:
    """A WSGI app serving the payload endpoint (see :class:`LazyEndpoint`)."""
    return _LazyWSGI(LazyEndpoint(lookup, config=config))


def lazy_asgi_app(lookup: Lookup, *, config: Config | None = None) -> Any:
    """An ASGI 3 app serving the payload endpoint (see :class:`LazyEndpoint`)."""
    return _LazyASGI(LazyEndpoint(lookup, config=config))
