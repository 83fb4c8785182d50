"""What every command of the command line shares: exit statuses, user errors, the configuration.

A command raises :class:`UserError` for a mistake the user can fix; :func:`spooler.cli.main`
prints it as one line. :func:`config_from_args` is the one way a command turns its flags
(and the ``EVENT_ENGINE_CLOUD_*`` variables, read by :mod:`spooler.config`) into a
:class:`~spooler.config.Config`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, Protocol

from spooler.config import Config
from spooler.errors import ConfigError

# Every command logs as spooler.cli, whichever module it lives in: -v's lines and the
# tests' caplog name that logger.
logger = logging.getLogger("spooler.cli")


class Out(Protocol):
    """How a command writes to the terminal: stdout, or stderr with ``err=True``.
    cli.py owns the one implementation; commands never print themselves."""

    def __call__(self, text: str, *, err: bool = False) -> None: ...


EXIT_OK = 0
EXIT_LEFT = 1  # ship --once: something still waits; status: there is no spool
EXIT_USAGE = 2  # a user error: flags, configuration, a file that is not a spool, a taken port
EXIT_LOCKED = 3  # ship: another shipper already ships this spool


class UserError(Exception):
    """A mistake the user can fix; ``main`` prints it as one line and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


#: option -> the flag that sets it
FLAGS = {
    "spool_path": "--spool",
    "endpoint": "--endpoint",
    "batch_size": "--batch-size",
    "flush_interval": "--flush-interval",
    "metrics_port": "--metrics-port",
}


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave as flags, by option name, as the strings typed."""
    return {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration from EVENT_ENGINE_CLOUD_* variables, flags winning over them.

    Flags are passed as the strings typed, so they go through the same parser as every
    other source; an error names the flag.
    """
    overrides = flag_overrides(args)
    try:
        return Config.from_env(**overrides)  # no mapping: config.py reads os.environ
    except ConfigError as exc:
        if exc.option in overrides:
            message = str(exc).removeprefix(f"{exc.option}: ")
            raise ConfigError(exc.option, f"{message} (from {FLAGS[exc.option]})") from None
        raise


def dir_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--spool-dir``'s checks (a folder, and not with ``--spool``), then the flags given."""
    if getattr(args, "spool_path", None) is not None:
        raise UserError("give --spool or --spool-dir, not both")
    folder = os.path.abspath(args.spool_dir)
    if not os.path.isdir(folder):
        raise UserError(f"--spool-dir {folder} is not a folder; create it or fix the path")
    return flag_overrides(args)


def stop_on_signals(stop: Callable[[], None], what: str) -> None:
    """On SIGTERM or SIGINT, log that ``what`` stays in the spool(s) and call ``stop``."""

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s; stopping (%s)", signal.Signals(signum).name, what)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
