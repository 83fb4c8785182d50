"""Django: add ``"spooler.integrations.django"`` to ``INSTALLED_APPS``; options in ``SPOOLER``.

::

    INSTALLED_APPS = [..., "spooler.integrations.django"]
    SPOOLER = {"api_key": os.environ.get("EVENT_ENGINE_CLOUD_KEY"), "payload_endpoint": True}

    # urls.py: GET /eventengine/events/<id> for the dashboard
    urlpatterns += payload_urlpatterns(outbox_lookup)

``SPOOLER`` takes every :class:`~spooler.config.Config` option by name, in the forms every
source takes (``"100"``, ``"true"``, ``"64MiB"``); what it sets wins over
``EVENT_ENGINE_CLOUD_*`` variables, and a key that names no option is logged once as a
warning and ignored. Unless set, ``app_name`` is the settings package (``shop`` for
``DJANGO_SETTINGS_MODULE=shop.settings``). The app config (``apps.SpoolerConfig``) starts the
reporter in ``ready()``, once per process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.urls import URLPattern, re_path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from spooler.config import Config
from spooler.endpoint import Lookup
from spooler.integrations import LazyEndpoint

__all__ = ["payload_urlpatterns", "payload_view"]


def payload_view(lookup: Lookup, *, config: Config | None = None) -> Callable[..., Any]:
    """A Django view serving the payload endpoint; the URL pattern passes ``subpath``.

    It answers 404 until the ``payload_endpoint`` option is true.
    """
    endpoint = LazyEndpoint(lookup, config=config)

    # The endpoint authenticates by bearer key and refuses every write method itself.
    @csrf_exempt  # type: ignore[untyped-decorator]
    def view(request: HttpRequest, subpath: str | None = None) -> HttpResponse:
        answer = endpoint.handle(
            request.method or "GET",
            subpath or "",
            dict(request.headers.items()),
            request.META.get("REMOTE_ADDR") or None,
        )
        response = HttpResponse(answer.body, status=answer.status)
        if answer.header("Content-Type") is None:
            del response["Content-Type"]
        for name, value in answer.headers:
            response[name] = value
        return response

    wrapped: Callable[..., Any] = view
    return wrapped


def payload_urlpatterns(
    lookup: Lookup, prefix: str = "eventengine/", *, config: Config | None = None
) -> list[URLPattern]:
    """URL patterns serving ``<prefix>events/<id>``; add them to your ``urlpatterns``."""
    pattern = rf"^{re.escape(prefix.strip('/'))}(?P<subpath>/.*)?\Z"
    return [re_path(pattern, payload_view(lookup, config=config), name="spooler-payload")]
