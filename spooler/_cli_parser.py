"""The command line's argument parser: the global flags and every command's flags."""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn

from spooler._cli_common import EXIT_USAGE
from spooler._cli_dev import cmd_demo, cmd_receive
from spooler._cli_ship import cmd_ship
from spooler._cli_status import cmd_status
from spooler._version import __version__


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


_SHARE = _number(float, 0.0, 1.0, what="a share between 0 and 1")
_SECONDS = _number(float, 0.0, 24 * 3600.0, what="a number of seconds")
_COUNT = _number(int, 0, what="a whole number")


def build_parser() -> argparse.ArgumentParser:
    """The ``spooler`` parser: ``--version``, ``-v``/``-q`` and the four commands."""
    parser = _Parser(
        prog="spooler",
        description="Report event metadata to EventEngine Cloud through a durable local spool.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            Configuration comes from EVENT_ENGINE_CLOUD_* variables (see README);
            flags override them. The API key is read from EVENT_ENGINE_CLOUD_KEY only.
            -v, -vv and -q go before or after the command.

            examples:
              python -m spooler demo
              EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship
              python -m spooler -v status --json
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"spooler {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug, tracebacks)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter  # keeps the epilogs' lines

    def common(p: argparse.ArgumentParser) -> None:
        # Counted apart from the global flags (argparse would let the command's default
        # overwrite them); main() adds them up.
        p.add_argument(
            "-v",
            "--verbose",
            dest="sub_verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="more logging (-vv: debug, tracebacks)",
        )
        p.add_argument(
            "-q",
            "--quiet",
            dest="sub_quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="warnings and errors only",
        )

    def spool_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--spool",
            dest="spool_path",
            metavar="PATH",
            help="spool file (default .spooler/spool.db)",
        )

    def spool_dir_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--spool-dir",
            metavar="DIR",
            help="every spool (*.db) in this folder, one shipper per node "
            "(README: One shipper per node)",
        )

    ship = sub.add_parser(
        "ship",
        formatter_class=raw,
        help="deliver the spool to the Cloud until stopped",
        description="Deliver spooled entries to the Cloud; SIGTERM/SIGINT stop it cleanly.",
        epilog=(
            "exit status: 0 ok; 1 --once left entries waiting; 2 no key, bad\n"
            "configuration or an unsafe spool; 3 another shipper ships this spool.\n\n"
            "example: EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship --once"
        ),
    )
    spool_opts(ship)
    spool_dir_opt(ship)
    ship.add_argument(
        "--remove-after",
        type=_number(float, 0.0, what="a number of seconds"),
        metavar="SECONDS",
        help="with --spool-dir: remove a drained spool no app has had open for this long "
        "(default 300)",
    )
    ship.add_argument(
        "--endpoint", metavar="URL", help="Cloud ingest URL (https, or http to loopback)"
    )
    ship.add_argument("--batch-size", metavar="N", help="entries per request (default 50)")
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
        type=_number(int, 1, what="a whole number"),
        metavar="N",
        help="advanced: tries per batch before giving up for now (default 5 with --once, "
        "else until delivered)",
    )
    ship.add_argument(
        "--backoff-max",
        type=_number(float, 0.001, 24 * 3600.0, what="a number of seconds"),
        metavar="SECONDS",
        help="advanced: longest wait between retries, also how often a refused key is "
        "probed (default 60); e.g. --once --max-attempts 2 --backoff-max 0.1 gives up fast",
    )
    ship.add_argument(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (needs spooler[metrics]; 0 picks one)",
    )
    common(ship)
    ship.set_defaults(func=cmd_ship)

    status = sub.add_parser(
        "status",
        formatter_class=raw,
        help="show the spool: waiting rows, bytes, counters, last delivery and error",
        description="Show a spool's state without changing it. Never prints the API key.",
        epilog=(
            "exit status: 0 shown; 1 no spool there; 2 the file is not a spool.\n\n"
            "example: python -m spooler status --json | jq .counters"
        ),
    )
    spool_opts(status)
    spool_dir_opt(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    common(status)
    status.set_defaults(func=cmd_status)

    receive = sub.add_parser(
        "receive",
        formatter_class=raw,
        help="run a local stand-in for the Cloud ingest API",
        description=(
            "A local ingest server: checks the contract and the bearer key, stores what\n"
            "it accepts in SQLite, drops duplicates, and can inject faults."
        ),
        epilog=(
            "exit status: 0 stopped by Ctrl-C/SIGTERM; 2 bad flags, the port is taken,\n"
            "or --db is not the receiver's database.\n\n"
            "example: python -m spooler receive --port 8787 --fail-status 503 --fail-rate 0.2"
        ),
    )
    receive.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    receive.add_argument(
        "--port",
        type=_number(int, 0, 65535, what="a port number"),
        default=8787,
        help="port (default 8787; 0 picks one)",
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
    receive.add_argument(
        "--fail-status",
        type=_number(int, 100, 599, what="an HTTP status"),
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
    common(receive)
    receive.set_defaults(func=cmd_receive)

    demo = sub.add_parser(
        "demo",
        formatter_class=raw,
        help="run the example outbox app, a local receiver and the shipper, then summarise",
        description=(
            "The main job with no Cloud account: starts a local receiver, runs the example\n"
            "outbox app (some events fail into the dead-letter path), ships, and prints\n"
            "a summary."
        ),
        epilog=(
            "exit status: 0 when everything spooled arrived.\n\n"
            "example: python -m spooler demo --seconds 10 --rate 200"
        ),
    )
    demo.add_argument(
        "--seconds", type=_SECONDS, default=8.0, help="how long the app runs (default 8)"
    )
    demo.add_argument(
        "--rate",
        type=_number(float, 0.001, what="events per second"),
        default=150.0,
        metavar="N",
        help="events per second (default 150)",
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
    common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser
