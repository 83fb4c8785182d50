"""The commands for trying spooler without a Cloud account: ``receive`` and ``demo``."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sqlite3

from spooler._cli_common import EXIT_OK, Out, UserError
from spooler.config import ENV_VARS, env_value


def cmd_receive(args: argparse.Namespace, out: Out) -> int:
    """``receive``: a local stand-in for the Cloud ingest API until Ctrl-C or SIGTERM."""
    from spooler.receiver import Faults, Receiver

    if args.fail_status is None and (args.fail_rate > 0 or args.fail_first > 0):
        raise UserError(
            "--fail-rate and --fail-first inject an HTTP status: add --fail-status, "
            "e.g. --fail-status 503 --fail-rate 0.5"
        )
    env_key = _env_api_key()
    key = env_key or args.dev_key
    if not key:
        raise UserError(f"no key to expect; set {ENV_VARS['api_key']} or --dev-key")
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
        raise UserError(f"{exc}; see spooler receive --help") from exc
    db = args.db or os.path.join(os.getcwd(), ".spooler", "receiver.db")
    os.makedirs(os.path.dirname(os.path.abspath(db)), mode=0o700, exist_ok=True)
    try:
        receiver = Receiver(api_key=key, db_path=db, host=args.host, port=args.port, faults=faults)
    except sqlite3.Error as exc:
        raise UserError(
            f"cannot use {db} as the receiver's database ({exc}); give --db a new file or "
            "one the receiver made"
        ) from exc
    except ValueError as exc:  # --db is a spool
        raise UserError(str(exc)) from exc
    listening = False

    def ready(r: Receiver) -> None:
        nonlocal listening
        listening = True
        source = ENV_VARS["api_key"] if env_key else "--dev-key"
        out(
            f"receiving on {r.url} (key from {source}); storing in {r.db_path}; Ctrl-C stops",
            err=True,
        )

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        receiver.serve_forever(on_ready=ready)
    except OSError as exc:
        if listening:
            raise
        raise UserError(_cannot_listen(args.host, args.port, exc)) from exc
    return EXIT_OK


def _env_api_key() -> str | None:
    """The key the receiver expects, read as ``ship`` reads it (stripped), but without
    parsing the other EVENT_ENGINE_CLOUD_* variables: a bad endpoint or batch size must
    not stop the receiver from starting."""
    key = env_value("api_key")
    return key if isinstance(key, str) else None


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


def cmd_demo(args: argparse.Namespace, out: Out) -> int:
    """``demo``: the example app, a local receiver and the shipper, then a summary."""
    from spooler.demo import run_demo

    return run_demo(
        seconds=args.seconds,
        rate=args.rate,
        workdir=args.workdir,
        fail_share=args.fail_share,
        quiet=args.verbose < 0,
        out=out,
    )
