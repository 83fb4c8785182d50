"""FastAPI and Starlette: a lifespan that starts reporting on startup and flushes on shutdown.

::

    app = FastAPI(lifespan=spooler_lifespan(flush_interval=5.0))
    mount_payload_endpoint(app, outbox.lookup)     # GET /eventengine/events/<id>

Options given to :func:`spooler_lifespan` win over ``EVENT_ENGINE_CLOUD_*`` variables.
Unless set, ``app_name`` is the app's ``title`` (when it is not FastAPI's default, ``FastAPI``).
Your own lifespan can run it inside::

    @asynccontextmanager
    async def lifespan(app):
        async with spooler_lifespan()(app):
            yield
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from spooler.config import Config
from spooler.endpoint import Lookup
from spooler.integrations import lazy_asgi_app, start_once
from spooler.reporter import get_reporter

__all__ = ["mount_payload_endpoint", "spooler_lifespan"]


def spooler_lifespan(**options: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``.

    Startup configures and starts the reporter (once per process); shutdown flushes it in a
    worker thread, bounded by ``shutdown_timeout``, so the event loop never blocks on it.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        reporter = start_once(_app_name(app), **options)
        try:
            yield
        finally:
            if get_reporter() is reporter:
                await asyncio.to_thread(reporter.shutdown)

    return lifespan


def _app_name(app: Any) -> dict[str, Any]:
    # FastAPI's title names the app unless it is the default; Starlette has none.
    title = getattr(app, "title", None)
    if isinstance(title, str) and title.strip() and title.strip() != "FastAPI":
        return {"app_name": title.strip()}
    return {}


def mount_payload_endpoint(
    app: Any, lookup: Lookup, path: str = "/eventengine", *, config: Config | None = None
) -> None:
    """Serve the payload fetch endpoint at ``<path>/events/<id>`` with ``app.mount``.

    The lookup runs in a worker thread. The mount answers 404 until the ``payload_endpoint``
    option is true (it is read on the first request, after the lifespan configured it).
    """
    app.mount("/" + path.strip("/"), lazy_asgi_app(lookup, config=config))
