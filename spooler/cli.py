"""``python -m spooler``: ship, status, receive, demo. The only module that sets up logging.

Every user error (a bad flag, a file that is not a spool, a taken port) is one line on stderr
naming the fix, with a non-zero exit status; ``-vv`` adds the traceback. ``-v``, ``-vv`` and
``-q`` work before or after the command.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import signal
import sqlite3
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from spooler._version import __version__
from spooler.config import ENV_VARS, Config
from spooler.errors import ConfigError, ShipperLockedError, SpoolError

if TYPE_CHECKING:
    from spooler.shipper import Shipper

__all__ = ["main"]

logger = logging.getLogger("spooler.cli")

EXIT_OK = 0
EXIT_LEFT = 1  # ship --once: something still waits; status: there is no spool
EXIT_USAGE = 2  # a user error: flags, configuration, a file that is not a spool, a taken port
EXIT_LOCKED = 3  # ship: another shipper already ships this spool


class _UserError(Exception):
    """A mistake the user can fix; ``main`` prints it as one line and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
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
        code: int = args.func(args)
        return code
    except _UserError as exc:
        return _fail(args, str(exc), exc.code)
    except ConfigError as exc:
        return _fail(args, f"configuration error: {exc}", EXIT_USAGE)
    except SpoolError as exc:  # an unsafe or unreadable spool
        return _fail(args, str(exc), EXIT_USAGE)
    except (OSError, sqlite3.Error) as exc:  # a file or folder the user pointed at
        hint = "" if args.verbose >= 2 else " (-vv shows the traceback)"
        return _fail(args, f"{_describe(exc)}{hint}", EXIT_USAGE)


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


#: option -> the flag that sets it
_FLAGS = {
    "spool_path": "--spool",
    "endpoint": "--endpoint",
    "batch_size": "--batch-size",
    "flush_interval": "--flush-interval",
    "metrics_port": "--metrics-port",
}


def _config(args: argparse.Namespace) -> Config:
    """The configuration from EVENT_ENGINE_CLOUD_* variables, flags winning over them.

    Flags are passed as the strings typed, so they go through the same parser as every
    other source; an error names the flag.
    """
    overrides = {
        name: getattr(args, name) for name in _FLAGS if getattr(args, name, None) is not None
    }
    try:
        return Config.from_env(os.environ, **overrides)
    except ConfigError as exc:
        if exc.option in overrides:
            message = str(exc).removeprefix(f"{exc.option}: ")
            raise ConfigError(exc.option, f"{message} (from {_FLAGS[exc.option]})") from None
        raise


# -- ship --------------------------------------------------------------------------


def _cmd_ship(args: argparse.Namespace) -> int:
    from spooler.shipper import BACKOFF_MAX, Shipper

    if args.spool_dir is not None:
        return _ship_dir(args)
    config = _config(args)
    if not config.api_key:
        raise _UserError(f"no API key; set {ENV_VARS['api_key']} (nothing shipped)")
    max_attempts = args.max_attempts if args.max_attempts is not None else 5 if args.once else None
    backoff_max = BACKOFF_MAX if args.backoff_max is None else args.backoff_max
    shipper = Shipper(config, max_attempts=max_attempts, backoff_max=backoff_max)
    try:
        shipper.lock.acquire()
    except ShipperLockedError as exc:
        shipper.close()
        raise _UserError(f"{exc}; exiting", EXIT_LOCKED) from exc
    except BaseException:
        shipper.close()
        raise
    metrics = None
    if config.metrics_port is not None:
        from spooler.metrics import serve_metrics

        try:
            metrics = serve_metrics(
                config.metrics_port,
                spool_path=config.spool_file,
                max_bytes=config.spool_max_bytes,
            )
        except (ImportError, OSError) as exc:
            shipper.close()
            raise _UserError(f"--metrics-port {config.metrics_port}: {exc}") from exc
        shipper.metrics = metrics

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
            return _ship_once(shipper)
        shipper.run()
        return EXIT_OK
    finally:
        shipper.close()
        if metrics is not None:
            metrics.close()


def _dir_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "spool_path", None) is not None:
        raise _UserError("give --spool or --spool-dir, not both")
    folder = os.path.abspath(args.spool_dir)
    if not os.path.isdir(folder):
        raise _UserError(f"--spool-dir {folder} is not a folder; create it or fix the path")
    return {name: getattr(args, name) for name in _FLAGS if getattr(args, name, None) is not None}


def _ship_dir(args: argparse.Namespace) -> int:
    """``ship --spool-dir``: one shipper for every spool in a folder (spooler.node)."""
    from spooler.node import NodeShipper

    overrides = _dir_overrides(args)
    if args.once:
        raise _UserError("--once ships one spool; drop it with --spool-dir")
    if not _config(args).api_key:
        raise _UserError(f"no API key; set {ENV_VARS['api_key']} (nothing shipped)")
    extra: dict[str, Any] = {}
    if args.remove_after is not None:
        extra["remove_after"] = args.remove_after
    node = NodeShipper(
        args.spool_dir,
        environ=os.environ,
        overrides=overrides,
        backoff_max=args.backoff_max,
        **extra,
    )

    def on_signal(signum: int, _frame: object) -> None:
        logger.info(
            "received %s; stopping (rows in flight stay in their spools)",
            signal.Signals(signum).name,
        )
        node.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "shipping every spool in %s to %s (batch %d, every %.1f s)",
        node.folder,
        node.config.endpoint,
        node.config.batch_size,
        node.config.flush_interval,
    )
    node.run()
    return EXIT_OK


def _ship_once(shipper: Shipper) -> int:
    """Drain, say what happened in one line, and exit 1 only if something still waits.

    Dead-lettered entries do not wait: the Cloud refused them for good, and they are kept
    in the spool's dead_letters table for inspection (``spooler status`` counts them).
    """
    result = shipper.drain()
    waiting = shipper.spool.stats().depth
    summary = f"--once: delivered {result.shipped}"
    if result.rejected:
        summary += (
            f", dead-lettered {result.rejected} (refused by the Cloud; kept for inspection, "
            "see `spooler status`)"
        )
    summary += f", {waiting} still waiting"
    if waiting:
        if result.error:
            summary += f" (last error: {result.error})"
        logger.warning("%s; run ship again to retry", summary)
        return EXIT_LEFT
    logger.info("%s", summary)
    return EXIT_OK


# -- status ------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from spooler.lock import holder_pid
    from spooler.stats import iso_epoch, read_stats

    if args.spool_dir is not None:
        return _status_dir(args)
    config = _config(args)
    try:
        stats = read_stats(config.spool_path, max_bytes=config.spool_max_bytes)
    except FileNotFoundError:
        if args.json:
            print(json.dumps({"path": config.spool_file, "exists": False}))
        else:
            print(f"no spool at {config.spool_file}")
        return EXIT_LEFT
    except sqlite3.Error as exc:
        raise _UserError(_unreadable(config.spool_file, exc)) from exc
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
    last_error = "none"
    if stats.last_error:
        error_epoch = iso_epoch(stats.last_error_at or "")
        when = stats.last_error_at or "unknown time"
        if error_epoch is not None:
            when += f", {_age(max(0.0, time.time() - error_epoch))}"
        last_error = f"{stats.last_error} (at {when})"
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
        f"last error     {last_error}",
    ]
    print("\n".join(lines))
    return EXIT_OK


def _status_dir(args: argparse.Namespace) -> int:
    """``status --spool-dir``: one line per spool in the folder and a total."""
    from spooler.lock import holder_pid
    from spooler.node import find_spools, identify
    from spooler.stats import read_stats

    _dir_overrides(args)
    rows: list[dict[str, Any]] = []
    for path in find_spools(args.spool_dir):
        if identify(path) is not None:
            continue
        try:
            stats = read_stats(path)
        except (FileNotFoundError, sqlite3.Error):
            continue  # removed or busy meanwhile
        data = stats.as_dict()
        data["shipper_pid"] = holder_pid(path)
        rows.append(data)
    total = {
        "spools": len(rows),
        "waiting": sum(r["depth"] for r in rows),
        "bytes_on_disk": sum(r["bytes_on_disk"] for r in rows),
        "dead_letters": sum(r["dead_letters"] for r in rows),
        "oldest_age_seconds": max(
            (r["oldest_age_seconds"] for r in rows if r["oldest_age_seconds"] is not None),
            default=None,
        ),
        "shipped": sum(r["counters"].get("shipped", 0) for r in rows),
    }
    if args.json:
        folder = os.path.abspath(args.spool_dir)
        print(json.dumps({"folder": folder, "spools": rows, "total": total}, indent=2))
        return EXIT_OK
    for r in rows:
        pid = r["shipper_pid"]
        print(
            f"{os.path.basename(r['path'])}  waiting {r['depth']}, oldest "
            f"{_age(r['oldest_age_seconds'])}, {_size(r['bytes_on_disk'])}, "
            f"shipped {r['counters'].get('shipped', 0)}, dead letters {r['dead_letters']}, "
            f"shipper {f'pid {pid}' if pid else 'none'}"
        )
    print(
        f"total  {total['spools']} spools, waiting {total['waiting']}, oldest "
        f"{_age(total['oldest_age_seconds'])}, {_size(total['bytes_on_disk'])}, "
        f"shipped {total['shipped']}, dead letters {total['dead_letters']}"
    )
    return EXIT_OK


def _unreadable(path: str, exc: sqlite3.Error) -> str:
    """One line saying why ``path`` could not be read as a spool, and what to do."""
    reason = str(exc)
    fix = f"point --spool or {ENV_VARS['spool_path']} at the spool (default .spooler/spool.db)"
    if "not a database" in reason:
        return (
            f"{path} is not an SQLite database ({reason}), so not a spool; {fix}. A damaged "
            "spool is moved aside by the app or `spooler ship` when they open it"
        )
    if reason.startswith(("no such table", "no such column")):
        return f"{path} is an SQLite database but not a spooler spool ({reason}); {fix}"
    if "locked" in reason or "busy" in reason:
        return f"{path} is locked by another process ({reason}); try again in a moment"
    return f"cannot read {path} as a spool ({reason}); check the file and its permissions"


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

    if args.fail_status is None and (args.fail_rate > 0 or args.fail_first > 0):
        raise _UserError(
            "--fail-rate and --fail-first inject an HTTP status: add --fail-status, "
            "e.g. --fail-status 503 --fail-rate 0.5"
        )
    key = os.environ.get(ENV_VARS["api_key"]) or args.dev_key
    if not key:
        raise _UserError(f"no key to expect; set {ENV_VARS['api_key']} or --dev-key")
    try:
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
    except ValueError as exc:  # the flags' own checks should have caught it first
        raise _UserError(f"{exc}; see spooler receive --help") from exc
    db = args.db or os.path.join(os.getcwd(), ".spooler", "receiver.db")
    os.makedirs(os.path.dirname(os.path.abspath(db)), mode=0o700, exist_ok=True)
    try:
        receiver = Receiver(api_key=key, db_path=db, host=args.host, port=args.port, faults=faults)
    except sqlite3.Error as exc:
        raise _UserError(
            f"cannot use {db} as the receiver's database ({exc}); give --db a new file or "
            "one the receiver made"
        ) from exc
    except ValueError as exc:  # --db is a spool
        raise _UserError(str(exc)) from exc
    listening = False

    def ready(r: Receiver) -> None:
        nonlocal listening
        listening = True
        source = ENV_VARS["api_key"] if os.environ.get(ENV_VARS["api_key"]) else "--dev-key"
        print(
            f"receiving on {r.url} (key from {source}); storing in {r.db_path}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        receiver.serve_forever(on_ready=ready)
    except OSError as exc:
        if listening:
            raise
        raise _UserError(_cannot_listen(args.host, args.port, exc)) from exc
    return EXIT_OK


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use (another receiver?); stop that process, or pick "
            "another port with --port (--port 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {where}; use a port above 1023 with --port"
    reason = exc.strerror or str(exc)
    return f"cannot listen on {where} ({reason}); --host must be an address of this machine"


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


def _parser() -> argparse.ArgumentParser:
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
    ship.set_defaults(func=_cmd_ship)

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
    status.set_defaults(func=_cmd_status)

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
    receive.set_defaults(func=_cmd_receive)

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
    demo.set_defaults(func=_cmd_demo)
    return parser
