"""The Django app config: ``ready()`` configures spooler from ``settings.SPOOLER`` and starts it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from spooler.config import options_from_settings
from spooler.integrations import app_name_defaults, start_once

__all__ = ["SpoolerConfig"]


class SpoolerConfig(AppConfig):  # type: ignore[misc]
    """Starts the reporter once per process when Django is ready."""

    name = "spooler.integrations.django"
    label = "spooler"
    verbose_name = "EventEngine Cloud reporter"

    def ready(self) -> None:
        """Configure from ``settings.SPOOLER`` (a dict; its values win over the environment).

        Unknown keys are logged once as a warning and ignored. Unless set, ``app_name`` is
        the project's settings package: the first part of ``DJANGO_SETTINGS_MODULE``, else
        of ``ROOT_URLCONF``, when that is a package.
        """
        options = getattr(settings, "SPOOLER", None) or {}
        if not isinstance(options, Mapping):
            raise ImproperlyConfigured(
                "settings.SPOOLER must be a dict of spooler options, e.g. {'api_key': ...}"
            )
        defaults: dict[str, Any] = {}
        for module in (
            getattr(settings, "SETTINGS_MODULE", None),
            getattr(settings, "ROOT_URLCONF", None),
        ):
            defaults = defaults or app_name_defaults(module, package_only=True)
        start_once(defaults, **options_from_settings(options, where="settings.SPOOLER"))
