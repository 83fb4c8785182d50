"""The Django app config: ``ready()`` configures spooler from ``settings.SPOOLER`` and starts it."""

from __future__ import annotations

from collections.abc import Mapping

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from spooler.integrations import start_once

__all__ = ["SpoolerConfig"]


class SpoolerConfig(AppConfig):  # type: ignore[misc]
    """Starts the reporter once per process when Django is ready."""

    name = "spooler.integrations.django"
    label = "spooler"
    verbose_name = "EventEngine Cloud reporter"

    def ready(self) -> None:
        """Configure from ``settings.SPOOLER`` (a dict; its values win over the environment)."""
        options = getattr(settings, "SPOOLER", None) or {}
        if not isinstance(options, Mapping):
            raise ImproperlyConfigured(
                "settings.SPOOLER must be a dict of spooler options, e.g. {'api_key': ...}"
            )
        start_once(**options)
