"""``spooler ship``: deliver one spool (or every spool in a folder) until stopped, or ``--once``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from spooler._cli_common import (
    EXIT_LEFT,
    EXIT_LOCKED,
    EXIT_OK,
    Out,
    UserError,
    config_from_args,
    dir_overrides,
    logger,
    stop_on_signals,
)
from spooler._threads import start_thread
from spooler.config import ENV_VARS
from spooler.errors import ShipperLockedError

if TYPE_CHECKING:
    from spooler.shipper import Shipper

_T = TypeVar("_T")
# The longest a SIGTERM the kernel handed to another thread waits for the main thread.
_SIGNAL_SLICE = 0.2

_NO_KEY = f"no API key; set {ENV_VARS['api_key']} (nothing shipped)"


def cmd_ship(args: argparse.Namespace, out: Out) -> int:
    """``ship``: one shipper for one spool, holding its lock; ``--spool-dir`` goes to the node."""
    from spooler.shipper import BACKOFF_MAX, Shipper

    if args.spool_dir is not None:
        return _ship_dir(args)
    config = config_from_args(args)
    if not config.api_key:
        raise UserError(_NO_KEY)
    max_attempts = args.max_attempts if args.max_attempts is not None else 5 if args.once else None
    backoff_max = BACKOFF_MAX if args.backoff_max is None else args.backoff_max
    shipper = Shipper(config, max_attempts=max_attempts, backoff_max=backoff_max)
    try:
        shipper.lock.acquire()
    except ShipperLockedError as exc:
        shipper.close()
        raise UserError(f"{exc}; exiting", EXIT_LOCKED) from exc
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
            raise UserError(f"--metrics-port {config.metrics_port}: {exc}") from exc
        shipper.metrics = metrics

    stop_on_signals(shipper.request_stop, "rows in flight stay in the spool")
    logger.info(
        "shipping %s to %s (batch %d, every %.1f s)",
        config.spool_path,
        config.endpoint,
        config.batch_size,
        config.flush_interval,
    )
    try:
        if args.once:
            return _on_a_thread(lambda: _ship_once(shipper))
        _on_a_thread(shipper.run)
        return EXIT_OK
    finally:
        shipper.close()
        if metrics is not None:
            metrics.close()


def _ship_dir(args: argparse.Namespace) -> int:
    """``ship --spool-dir``: one shipper for every spool in a folder (spooler.node)."""
    from spooler.node import NodeShipper

    overrides = dir_overrides(args)
    if args.once:
        raise UserError("--once ships one spool; drop it with --spool-dir")
    if not config_from_args(args).api_key:
        raise UserError(_NO_KEY)
    extra: dict[str, Any] = {}
    if args.remove_after is not None:
        extra["remove_after"] = args.remove_after
    # No environ: the node's Config.from_env reads os.environ itself.
    node = NodeShipper(args.spool_dir, overrides=overrides, backoff_max=args.backoff_max, **extra)
    stop_on_signals(node.request_stop, "rows in flight stay in their spools")
    logger.info(
        "shipping every spool in %s to %s (batch %d, every %.1f s)",
        node.folder,
        node.config.endpoint,
        node.config.batch_size,
        node.config.flush_interval,
    )
    _on_a_thread(node.run)
    return EXIT_OK


def _on_a_thread(work: Callable[[], _T]) -> _T:
    """``work()`` on a thread of spooler's, while the main thread waits in short joins.

    Python runs signal handlers on the main thread only, between bytecodes. With the
    shipper on the main thread, a SIGTERM that the kernel handed to another thread of the
    process waited until the socket read of a hanging request timed out (5 s; seen in CI,
    twice in one run). spooler's own threads are created with the signals blocked (see
    ``start_thread``), but threads it does not create (``--metrics-port``'s server) are
    not. Here the main thread is idle in a join: it takes the signal itself, or runs the
    handler within ``_SIGNAL_SLICE`` of another thread catching it.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the main thread, raised there
            outcome.append((False, exc))

    thread = start_thread(run, "spooler.ship")
    if thread is None:  # the interpreter is shutting down: no new thread
        return work()
    while thread.is_alive():
        thread.join(_SIGNAL_SLICE)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


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
