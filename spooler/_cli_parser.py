"""The command line's argument parser: the global flags, then each command's.

:func:`build_parser` adds one subparser per entry of ``_COMMANDS`` (the function that
runs it and the one that adds its flags) with its texts from ``_HELP``, and gives every
command the ``-v``/``-q`` flags.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn

from spooler._cli_common import EXIT_USAGE, Out
from spooler._cli_dev import cmd_demo, cmd_receive
from spooler._cli_ship import cmd_ship
from spooler._cli_status import cmd_status
from spooler._version import __version__

_EPILOG = textwrap.dedent(
    """
    Configuration comes from EVENT_ENGINE_CLOUD_* variables (see README);
    flags override them. The API key is read from EVENT_ENGINE_CLOUD_KEY only.
    -v, -vv and -q go before or after the command.

    examples:
      python -m spooler demo
      EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship
      python -m spooler -v status --json
    """
)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: the problem and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(
    kind: Callable[[str], float], low: float, high: float = math.inf, *, what: str = "a number"
) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` within ``[low, high]``, else a one-line error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:  # also refuses NaN
            bound = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


# The flags' types, named so that each flag reads as one line of what it takes.
_COUNT = _number(int, 0, what="a whole number")
_ATTEMPTS = _number(int, 1, what="a whole number")
_PORT = _number(int, 0, 65535, what="a port number")
_STATUS = _number(int, 100, 599, what="an HTTP status")
_SHARE = _number(float, 0.0, 1.0, what="a share between 0 and 1")
_RATE = _number(float, 0.001, what="events per second")
_SECONDS = _number(float, 0.0, 24 * 3600.0, what="a number of seconds")
_BACKOFF = _number(float, 0.001, 24 * 3600.0, what="a number of seconds")
_AGE = _number(float, 0.0, what="a number of seconds")  # no upper bound: --remove-after


# command -> (its line in ``spooler --help``, the description atop its own --help,
# the epilog below it: exit statuses and an example). The epilogs keep their line breaks.
_HELP: dict[str, tuple[str, str, str]] = {
    "ship": (
        "deliver the spool to the Cloud until stopped",
        "Deliver spooled entries to the Cloud; SIGTERM/SIGINT stop it cleanly.",
        "exit status: 0 ok; 1 --once left entries waiting; 2 no key, bad\n"
        "configuration or an unsafe spool; 3 another shipper ships this spool.\n\n"
        "example: EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship --once",
    ),
    "status": (
        "show the spool: waiting rows, bytes, counters, last delivery and error",
        "Show a spool's state without changing it. Never prints the API key.",
        "exit status: 0 shown; 1 no spool there; 2 the file is not a spool.\n\n"
        "example: python -m spooler status --json | jq .counters",
    ),
    "receive": (
        "run a local stand-in for the Cloud ingest API",
        "A local ingest server: checks the contract and the bearer key, stores what\n"
        "it accepts in SQLite, drops duplicates, and can inject faults.",
        "exit status: 0 stopped by Ctrl-C/SIGTERM; 2 bad flags, the port is taken,\n"
        "or --db is not the receiver's database.\n\n"
        "example: python -m spooler receive --port 8787 --fail-status 503 --fail-rate 0.2",
    ),
    "demo": (
        "run the example outbox app, a local receiver and the shipper, then summarise",
        "The main job with no Cloud account: starts a local receiver, runs the example\n"
        "outbox app (some events fail into the dead-letter path), ships, and prints\n"
        "a summary.",
        "exit status: 0 when everything spooled arrived.\n\n"
        "example: python -m spooler demo --seconds 10 --rate 200",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``spooler`` parser: ``--version``, ``-v``/``-q`` and the four commands."""
    parser = _Parser(
        prog="spooler",
        description="Report event metadata to EventEngine Cloud through a durable local spool.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"spooler {__version__}")
    _add_verbosity(parser, command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (run, add_flags) in _COMMANDS.items():
        summary, description, epilog = _HELP[name]
        command = sub.add_parser(
            name,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            help=summary,
            description=description,
            epilog=epilog,
        )
        add_flags(command)
        _add_verbosity(command, command=True)
        command.set_defaults(func=run)
    return parser


def _add_verbosity(p: argparse.ArgumentParser, *, command: bool) -> None:
    """``-v``/``-vv`` and ``-q``, on the whole command line or on one command.

    A command's are counted apart from the global flags (argparse would let the
    command's default overwrite them); main() adds them up.
    """
    p.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose" if command else "verbose",
        action="count",
        default=argparse.SUPPRESS if command else 0,
        help="more logging (-vv: debug, tracebacks)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        dest="sub_quiet" if command else "quiet",
        action="store_true",
        default=argparse.SUPPRESS if command else False,
        help="warnings and errors only",
    )


def _spool_flags(p: argparse.ArgumentParser) -> None:
    """``--spool`` and ``--spool-dir``: one spool, or every spool in a folder."""
    p.add_argument(
        "--spool", dest="spool_path", metavar="PATH", help="spool file (default .spooler/spool.db)"
    )
    p.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="every spool (*.db) in this folder, one shipper per node "
        "(README: One shipper per node)",
    )


def _ship_flags(ship: argparse.ArgumentParser) -> None:
    _spool_flags(ship)
    ship.add_argument(
        "--remove-after",
        type=_AGE,
        metavar="SECONDS",
        help="with --spool-dir: remove a drained spool no app has had open for this long "
        "(default 300)",
    )
    # The configuration's flags stay strings: config.py parses them like the variables.
    ship.add_argument(
        "--endpoint", metavar="URL", help="Cloud ingest URL (https, or http to loopback)"
    )
    ship.add_argument("--batch-size", metavar="N", help="entries per request (default 500)")
    ship.add_argument(
        "--flush-interval", metavar="SECONDS", help="seconds between flushes (default 10)"
    )
    ship.add_argument(
        "--once",
        action="store_true",
        help="drain what is there and exit: 0 if nothing waits (dead-lettered entries do "
        "not wait), 1 if something does",
    )
    ship.add_argument(
        "--max-attempts",
        type=_ATTEMPTS,
        metavar="N",
        help="advanced: tries per batch before giving up for now (default 5 with --once, "
        "else until delivered)",
    )
    ship.add_argument(
        "--backoff-max",
        type=_BACKOFF,
        metavar="SECONDS",
        help="advanced: longest wait between retries, also how often a refused key is "
        "probed (default 60); e.g. --once --max-attempts 2 --backoff-max 0.1 gives up fast",
    )
    ship.add_argument(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (needs spooler[metrics]; 0 picks one)",
    )


def _status_flags(status: argparse.ArgumentParser) -> None:
    _spool_flags(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _receive_flags(receive: argparse.ArgumentParser) -> None:
    receive.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    receive.add_argument(
        "--port", type=_PORT, default=8787, help="port (default 8787; 0 picks one)"
    )
    receive.add_argument(
        "--db", metavar="PATH", help="where to store what arrives (default .spooler/receiver.db)"
    )
    receive.add_argument(
        "--dev-key",
        metavar="KEY",
        default="local-dev-key",
        help="key to expect when EVENT_ENGINE_CLOUD_KEY is unset (default local-dev-key)",
    )
    # Fault injection: the fields of spooler.receiver.Faults.
    receive.add_argument(
        "--fail-status",
        type=_STATUS,
        metavar="STATUS",
        help="answer this HTTP status to some requests (with --fail-rate or --fail-first)",
    )
    receive.add_argument(
        "--fail-rate", type=_SHARE, default=0.0, metavar="R", help="share of requests (0..1)"
    )
    receive.add_argument(
        "--fail-first", type=_COUNT, default=0, metavar="N", help="fail the first N requests"
    )
    receive.add_argument(
        "--retry-after", metavar="V", help="Retry-After value sent with injected statuses"
    )
    receive.add_argument(
        "--delay",
        type=_SECONDS,
        default=0.0,
        metavar="SECONDS",
        help="seconds to wait before answering",
    )
    receive.add_argument(
        "--close-rate", type=_SHARE, default=0.0, metavar="R", help="share of connections dropped"
    )
    receive.add_argument(
        "--max-body-bytes", type=_COUNT, metavar="N", help="answer 413 to larger bodies"
    )
    receive.add_argument(
        "--reject-event",
        action="append",
        metavar="NAME",
        help="answer 422 to entries of this event (repeatable)",
    )


def _demo_flags(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--seconds", type=_SECONDS, default=8.0, help="how long the app runs (default 8)"
    )
    demo.add_argument(
        "--rate", type=_RATE, default=150.0, metavar="N", help="events per second (default 150)"
    )
    demo.add_argument(
        "--fail-share",
        type=_SHARE,
        default=0.05,
        metavar="F",
        help="share of events that dead-letter (0..1, default 0.05)",
    )
    demo.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the spool and receiver files go (default ./.spooler/demo)",
    )


_Run = Callable[[argparse.Namespace, Out], int]
_AddFlags = Callable[[argparse.ArgumentParser], None]

#: command -> (the function that runs it, the one that adds its flags), in --help's order
_COMMANDS: dict[str, tuple[_Run, _AddFlags]] = {
    "ship": (cmd_ship, _ship_flags),
    "status": (cmd_status, _status_flags),
    "receive": (cmd_receive, _receive_flags),
    "demo": (cmd_demo, _demo_flags),
}
