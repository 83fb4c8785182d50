"""Flask: ``Spooler(app)`` reads ``SPOOLER_*`` keys from ``app.config`` and starts reporting.

Every :class:`~spooler.config.Config` option has a key: its name upper-cased with the prefix
``SPOOLER_`` (``SPOOLER_API_KEY``, ``SPOOLER_FLUSH_INTERVAL``, ``SPOOLER_PAYLOAD_ENDPOINT``).
Keys that are set win over ``EVENT_ENGINE_CLOUD_*`` variables; options given to
``Spooler(**options)`` are defaults beneath ``app.config``. Unless set, ``app_name`` is the
first part of ``app.import_name`` (``Flask("shop.web")`` reports ``shop``)::

    app = Flask(__name__)
    app.config["SPOOLER_API_KEY"] = os.environ["EVENT_ENGINE_CLOUD_KEY"]
    Spooler(app)                                   # or Spooler().init_app(app) in a factory
    mount_payload_endpoint(app, outbox.lookup)     # GET /eventengine/events/<id>
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from spooler.config import Config, options_from_settings
from spooler.endpoint import Lookup
from spooler.integrations import app_name_defaults, lazy_wsgi_app, start_once
from spooler.reporter import Reporter

__all__ = ["CONFIG_PREFIX", "Spooler", "mount_payload_endpoint", "options_from_config"]

CONFIG_PREFIX = "SPOOLER_"


def options_from_config(config: Mapping[str, Any], prefix: str = CONFIG_PREFIX) -> dict[str, Any]:
    """The spooler options set in a Flask config: ``SPOOLER_API_KEY`` -> ``api_key``, ...

    A ``SPOOLER_*`` key that names no option is logged once as a warning (with the closest
    key) and ignored. Values are parsed like every source's: ``"100"``, ``"true"``, ``"64MiB"``.
    """
    return options_from_settings(config, prefix=prefix, where="the Flask config")


class Spooler:
    """The Flask extension; stored in ``app.extensions["spooler"]``."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        self.reporter: Reporter | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure from ``app.config`` and start the reporter (once per process)."""
        options = {**self.options, **options_from_config(app.config)}
        self.reporter = start_once(app_name_defaults(app.import_name), **options)
        app.extensions["spooler"] = self


def mount_payload_endpoint(
    app: Flask, lookup: Lookup, url_prefix: str = "/eventengine", *, config: Config | None = None
) -> None:
    """Serve the payload fetch endpoint at ``<url_prefix>/events/<id>`` beside the app.

    It is dispatched before Flask's routing (werkzeug ``DispatcherMiddleware``), so the
    app's before-request hooks and login requirements do not apply: the endpoint checks
    the API key itself. It answers 404 until ``SPOOLER_PAYLOAD_ENDPOINT`` is true.
    """
    prefix = "/" + url_prefix.strip("/")
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {prefix: lazy_wsgi_app(lookup, config=config)}
    )
