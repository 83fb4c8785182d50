"""The names a host imports from ``spooler``: pinned, importable, documented (as httpx does)."""

from __future__ import annotations

import importlib
import importlib.metadata
import types

import pytest

import spooler

PUBLIC = [
    "AuthError",
    "Config",
    "ConfigError",
    "DeliveryError",
    "PayloadTooLargeError",
    "PermanentDeliveryError",
    "RejectedError",
    "Reporter",
    "ShipperLockedError",
    "SpoolBusyError",
    "SpoolError",
    "SpoolerError",
    "TransientDeliveryError",
    "UnsafeSpoolError",
    "__version__",
    "configure",
    "flush",
    "get_reporter",
    "register_schema",
    "shutdown",
    "start",
    "track_dead_letter",
    "track_emit",
    "track_publish",
    "track_publish_batch",
]

DEV_TOOLS = ["CloudClient", "Faults", "Receiver", "Shipper"]


def test_all_is_exactly_the_host_facing_names() -> None:
    """spooler.__all__ holds each public name once; changing the surface means changing PUBLIC."""
    assert sorted(spooler.__all__) == PUBLIC
    assert len(set(spooler.__all__)) == len(spooler.__all__)


def test_nothing_public_is_left_out_of_all() -> None:
    """Every public attribute of the package is in __all__, submodules aside (httpx's check)."""
    public = {
        name
        for name, value in vars(spooler).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(PUBLIC) - {"__version__"}


def test_every_error_class_is_public() -> None:
    """Each exception errors.py defines can be caught as spooler.<Name>."""
    from spooler import errors

    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    assert defined <= set(spooler.__all__)
    assert spooler.PayloadTooLargeError.__mro__[1] is spooler.PermanentDeliveryError
    assert spooler.RejectedError.__mro__[1] is spooler.PermanentDeliveryError


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_each_public_name_imports_and_has_its_own_docstring(name: str) -> None:
    """``from spooler import <name>`` works and the object documents itself in one line at least."""
    value = getattr(spooler, name)  # what `from spooler import <name>` reads
    doc = value.__doc__  # a class's __doc__ is its own: None when it has no docstring
    assert isinstance(doc, str) and doc.strip(), f"{name} has no docstring"


def test_star_import_gives_exactly_all() -> None:
    """``from spooler import *`` brings in exactly the public names."""
    namespace: dict[str, object] = {}
    exec("from spooler import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == PUBLIC


def test_version_is_the_installed_distributions() -> None:
    """spooler.__version__ is the version the package was installed as."""
    assert spooler.__version__ == importlib.metadata.version("spooler")


@pytest.mark.parametrize("name", DEV_TOOLS)
def test_dev_tools_and_internals_stay_in_their_modules(name: str) -> None:
    """The receiver and the delivery machinery are imported from their modules, not spooler."""
    assert name not in spooler.__all__
    assert not hasattr(spooler, name)
    module = {"CloudClient": "client", "Shipper": "shipper"}.get(name, "receiver")
    assert hasattr(importlib.import_module(f"spooler.{module}"), name)
