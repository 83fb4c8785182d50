"""``python -m spooler``: ship, status, receive, demo. The only module that sets up logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from spooler._version import __version__
from spooler.config import ENV_VARS, Config
from spooler.errors import ConfigError, ShipperLockedError, SpoolError

__all__ = ["main"]

logger = logging.getLogger("spooler.cli")

EXIT_OK = 0
EXIT_LEFT = 1  # --once: something is still waiting or was rejected
EXIT_USAGE = 2
EXIT_LOCKED = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"spooler: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SpoolError as exc:  # an unsafe or unreadable spool: one line, no traceback
        print(f"spooler: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Their INFO lines (every request, every file change) drown ours.
    for noisy in ("httpx", "httpcore", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def _config(args: argparse.Namespace, **extra: Any) -> Config:
    overrides: dict[str, Any] = dict(extra)
    for name in ("spool_path", "endpoint", "batch_size", "flush_interval", "spool_max_bytes"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Config.from_env(os.environ, **overrides)


# -- ship --------------------------------------------------------------------------


def _cmd_ship(args: argparse.Namespace) -> int:
    from spooler.shipper import BACKOFF_MAX, Shipper

    config = _config(args)
    if not config.api_key:
        print(
            f"spooler ship: no API key; set {ENV_VARS['api_key']} (nothing shipped)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    max_attempts = args.max_attempts if args.max_attempts is not None else 5 if args.once else None
    if max_attempts is not None and max_attempts < 1:
        print("spooler ship: --max-attempts must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    backoff_max = BACKOFF_MAX if args.backoff_max is None else args.backoff_max
    if not backoff_max > 0:
        print("spooler ship: --backoff-max must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        shipper = Shipper(config, max_attempts=max_attempts, backoff_max=backoff_max)
    except SpoolError as exc:  # an unsafe spool file or folder
        print(f"spooler ship: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        shipper.lock.acquire()
    except ShipperLockedError as exc:
        print(f"spooler ship: {exc}; exiting", file=sys.stderr)
        shipper.close()
        return EXIT_LOCKED
    except SpoolError as exc:
        print(f"spooler ship: {exc}", file=sys.stderr)
        shipper.close()
        return EXIT_USAGE

    def on_signal(signum: int, _frame: object) -> None:
        logger.info(
            "received %s; stopping (rows in flight stay in the spool)", signal.Signals(signum).name
        )
        shipper.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "shipping %s to %s (batch %d, every %.1f s)",
        config.spool_path,
        config.endpoint,
        config.batch_size,
        config.flush_interval,
    )
    try:
        if args.once:
            result = shipper.drain()
            stats = shipper.spool.stats()
            ok = stats.depth == 0 and result.rejected == 0 and result.error is None
            logger.info(
                "--once: delivered %d, rejected %d, %d still waiting",
                result.shipped,
                result.rejected,
                stats.depth,
            )
            return EXIT_OK if ok else EXIT_LEFT
        shipper.run()
        return EXIT_OK
    finally:
        shipper.close()


# -- status ------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from spooler.lock import holder_pid
    from spooler.spool import read_stats

    config = _config(args)
    try:
        stats = read_stats(config.spool_path, max_bytes=config.spool_max_bytes)
    except FileNotFoundError:
        if args.json:
            print(json.dumps({"path": config.spool_file, "exists": False}))
        else:
            print(f"no spool at {config.spool_file}")
        return EXIT_LEFT
    data = stats.as_dict()
    data["exists"] = True
    data["shipper_pid"] = holder_pid(config.spool_file)
    data["endpoint"] = config.endpoint
    data["enabled"] = config.enabled
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    c = stats.counters
    age = stats.oldest_age_seconds
    pid = data["shipper_pid"]
    shipper = f"running, pid {pid}" if pid else "not running"
    lines = [
        f"spool          {stats.path}",
        f"spool id       {stats.spool_id}",
        f"endpoint       {config.endpoint} ({'enabled' if config.enabled else 'no API key'})",
        f"shipper        {shipper}",
        f"waiting        {stats.depth} entries, oldest {_age(age)}",
        f"on disk        {_size(stats.bytes_on_disk)} of {_size(stats.max_bytes)} cap "
        + "("
        + ", ".join(f"{k} {_size(v)}" for k, v in stats.file_bytes.items())
        + ")",
        f"dead letters   {stats.dead_letters} kept for inspection",
        "counters       " + ", ".join(f"{name} {c[name]}" for name in _counter_order(c)),
        f"last delivery  {stats.last_delivery_at or 'never'}",
        f"last error     {stats.last_error or 'none'}"
        + (f" (at {stats.last_error_at})" if stats.last_error else ""),
    ]
    print("\n".join(lines))
    return EXIT_OK


def _counter_order(counters: dict[str, int]) -> list[str]:
    from spooler.spool import COUNTER_NAMES

    return [n for n in COUNTER_NAMES if n in counters] + sorted(
        n for n in counters if n not in COUNTER_NAMES
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# -- receive -----------------------------------------------------------------------


def _cmd_receive(args: argparse.Namespace) -> int:
    from spooler.receiver import Faults, Receiver

    key = os.environ.get(ENV_VARS["api_key"]) or args.dev_key
    faults = Faults(
        status=args.fail_status,
        rate=args.fail_rate,
        first_n=args.fail_first,
        retry_after=args.retry_after,
        delay=args.delay,
        close_rate=args.close_rate,
        max_body_bytes=args.max_body_bytes,
        reject_event_names=frozenset(args.reject_event or ()),
    )
    db = args.db or os.path.join(os.getcwd(), ".spooler", "receiver.db")
    os.makedirs(os.path.dirname(os.path.abspath(db)), mode=0o700, exist_ok=True)
    receiver = Receiver(api_key=key, db_path=db, host=args.host, port=args.port, faults=faults)

    def ready(r: Receiver) -> None:
        source = ENV_VARS["api_key"] if os.environ.get(ENV_VARS["api_key"]) else "--dev-key"
        print(
            f"receiving on {r.url} (key from {source}); storing in {r.db_path}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    receiver.serve_forever(on_ready=ready)
    return EXIT_OK


# -- demo --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from spooler.demo import run_demo

    return run_demo(
        seconds=args.seconds,
        rate=args.rate,
        workdir=args.workdir,
        fail_share=args.fail_share,
        quiet=args.verbose < 0,
        out=lambda line: print(line, flush=True),
    )


# -- parser ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spooler",
        description="Report event metadata to EventEngine Cloud through a durable local spool.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            Configuration comes from EVENT_ENGINE_CLOUD_* variables (see README);
            flags override them. The API key is read from EVENT_ENGINE_CLOUD_KEY only.

            examples:
              python -m spooler demo
              EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship
              python -m spooler status --json
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"spooler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
        )
        p.add_argument(
            "-q", "--quiet", dest="verbose", action="store_const", const=-1, help="warnings only"
        )

    def spool_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--spool",
            dest="spool_path",
            metavar="PATH",
            help="spool file (default .spooler/spool.db)",
        )

    ship = sub.add_parser(
        "ship",
        help="deliver the spool to the Cloud until stopped",
        description="Deliver spooled entries to the Cloud; SIGTERM/SIGINT stop it cleanly.",
        epilog="example: EVENT_ENGINE_CLOUD_KEY=... python -m spooler ship --once",
    )
    spool_opts(ship)
    ship.add_argument("--endpoint", help="Cloud ingest URL (https, or http to loopback)")
    ship.add_argument("--batch-size", type=int, help="entries per request (default 50)")
    ship.add_argument("--flush-interval", type=float, help="seconds between flushes (default 10)")
    ship.add_argument(
        "--once",
        action="store_true",
        help="drain what is there and exit: 0 if all delivered, 1 if anything is left",
    )
    ship.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="advanced: tries per batch before giving up for now (default 5 with --once, "
        "else until delivered)",
    )
    ship.add_argument(
        "--backoff-max",
        type=float,
        metavar="SECONDS",
        help="advanced: longest wait between retries, also how often a refused key is "
        "probed (default 60); e.g. --once --max-attempts 2 --backoff-max 0.1 gives up fast",
    )
    common(ship)
    ship.set_defaults(func=_cmd_ship)

    status = sub.add_parser(
        "status",
        help="show the spool: waiting rows, bytes, counters, last delivery and error",
        description="Show a spool's state without changing it. Never prints the API key.",
        epilog="example: python -m spooler status --json | jq .counters",
    )
    spool_opts(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    common(status)
    status.set_defaults(func=_cmd_status)

    receive = sub.add_parser(
        "receive",
        help="run a local stand-in for the Cloud ingest API",
        description=(
            "A local ingest server: checks the contract and the bearer key, stores what it "
            "accepts in SQLite, drops duplicates, and can inject faults."
        ),
        epilog="example: python -m spooler receive --port 8787 --fail-status 503 --fail-rate 0.2",
    )
    receive.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    receive.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks one)")
    receive.add_argument("--db", help="where to store what arrives (default .spooler/receiver.db)")
    receive.add_argument(
        "--dev-key",
        default="local-dev-key",
        help="key to expect when EVENT_ENGINE_CLOUD_KEY is unset (default local-dev-key)",
    )
    receive.add_argument("--fail-status", type=int, help="answer this HTTP status to some requests")
    receive.add_argument("--fail-rate", type=float, default=0.0, help="share of requests (0..1)")
    receive.add_argument("--fail-first", type=int, default=0, help="fail the first N requests")
    receive.add_argument("--retry-after", help="Retry-After value sent with injected statuses")
    receive.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait before answering"
    )
    receive.add_argument(
        "--close-rate", type=float, default=0.0, help="share of connections dropped"
    )
    receive.add_argument("--max-body-bytes", type=int, help="answer 413 to larger bodies")
    receive.add_argument(
        "--reject-event",
        action="append",
        metavar="NAME",
        help="answer 422 to entries of this event",
    )
    common(receive)
    receive.set_defaults(func=_cmd_receive)

    demo = sub.add_parser(
        "demo",
        help="run the example outbox app, a local receiver and the shipper, then summarise",
        description=(
            "The main job with no Cloud account: starts a local receiver, runs the example "
            "outbox app (some events fail into the dead-letter path), ships, and prints a summary."
        ),
        epilog="example: python -m spooler demo --seconds 10 --rate 200",
    )
    demo.add_argument(
        "--seconds", type=float, default=8.0, help="how long the app runs (default 8)"
    )
    demo.add_argument("--rate", type=float, default=150.0, help="events per second (default 150)")
    demo.add_argument(
        "--fail-share", type=float, default=0.05, help="share of events that dead-letter"
    )
    demo.add_argument(
        "--workdir", help="where the spool and receiver files go (default ./.spooler/demo)"
    )
    common(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser
