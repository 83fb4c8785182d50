"""``python -m spooler``: ship, status, receive, demo. The only module that sets up logging.

Every user error (a bad flag, a file that is not a spool, a taken port) is one line on stderr
naming the fix, with a non-zero exit status; ``-vv`` adds the traceback. ``-v``, ``-vv`` and
``-q`` work before or after the command.

The parser is in :mod:`spooler._cli_parser`; the commands in :mod:`spooler._cli_ship`,
:mod:`spooler._cli_status` and :mod:`spooler._cli_dev` (``receive``, ``demo``); what they
share (exit statuses, user errors, the configuration from flags) in :mod:`spooler._cli_common`.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import traceback
from collections.abc import Sequence

from spooler._cli_common import EXIT_OK, EXIT_USAGE, UserError
from spooler._cli_parser import build_parser
from spooler.errors import ConfigError, SpoolError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors, already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    verbose = args.verbose + getattr(args, "sub_verbose", 0)
    if args.quiet or getattr(args, "sub_quiet", False):
        if verbose:
            print("spooler: -q and -v contradict each other; give one of them", file=sys.stderr)
            return EXIT_USAGE
        verbose = -1
    args.verbose = verbose
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(verbose)
    try:
        code: int = args.func(args, _out)
        return code
    except UserError as exc:
        return _fail(args, str(exc), exc.code)
    except ConfigError as exc:
        return _fail(args, f"configuration error: {exc}", EXIT_USAGE)
    except SpoolError as exc:  # an unsafe or unreadable spool
        return _fail(args, str(exc), EXIT_USAGE)
    except (OSError, sqlite3.Error) as exc:  # a file or folder the user pointed at
        hint = "" if args.verbose >= 2 else " (-vv shows the traceback)"
        return _fail(args, f"{_describe(exc)}{hint}", EXIT_USAGE)


def _out(text: str, *, err: bool = False) -> None:
    """The one place spooler's command line writes to the terminal (flushed: a pipe
    reader sees each line as it is written)."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.verbose >= 2:
        traceback.print_exc(file=sys.stderr)
    print(f"spooler {args.command}: {message}", file=sys.stderr)
    return code


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Their INFO lines (every request, every file change) drown ours.
    for noisy in ("httpx", "httpcore", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
