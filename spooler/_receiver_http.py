"""The receiver's HTTP side: the threading server and the handler that answers each request.

Part of the dev tool :mod:`spooler.receiver`, not of the library a host imports. The
handler applies the faults first, like a proxy in front, then the contract
(:mod:`spooler._receiver_contract`), records the request and answers in JSON.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from contextlib import suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from spooler._receiver_contract import DRAIN_LIMIT, Refused, check_request
from spooler.timestamps import now_iso

if TYPE_CHECKING:
    from spooler.receiver import Receiver

__all__ = ["ReceiverServer"]

logger = logging.getLogger("spooler.receiver")

_IDLE_TIMEOUT = 60.0
_REFUSAL_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 405: {"Allow": "POST"}}


class ReceiverServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its Receiver, numbers connections and can drop them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self._open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        self._connections = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        request, address = super().get_request()
        with self._sockets_lock:
            self._open_sockets.add(request)
        return request, address

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self._open_sockets.discard(request)
        super().shutdown_request(request)

    def next_connection(self) -> int:
        """The number of a newly accepted connection: 1, 2, ... in the requests table."""
        with self._sockets_lock:
            self._connections += 1
            return self._connections

    def drop_connections(self) -> None:
        """Unblock every handler waiting on a keep-alive connection so it can be joined."""
        with self._sockets_lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is normal here; keep it off stderr.
        logger.debug("receiver: error answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One connection; answers every request through _handle()."""

    server: ReceiverServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client pools connections
    timeout = _IDLE_TIMEOUT
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_version = "spooler-receiver"

    def setup(self) -> None:
        super().setup()
        self.connection_number = self.server.next_connection()

    def do_POST(self) -> None:
        self._handle()

    # Other methods get their 405 (or 404) from the same pipeline.
    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("receiver %s: " + format, self.client_address[0], *args)

    def _handle(self) -> None:
        receiver = self.server.receiver
        log = self._request_row(receiver)
        faults, close, inject = receiver._dice.draw()
        if faults.delay > 0 and receiver._stopping.wait(faults.delay):
            self.close_connection = True
            return
        body = self._read_body()
        if close:
            log.update(status=None, fault="close")
            receiver._record(log)
            self.close_connection = True
            return
        if inject:
            assert faults.status is not None
            log.update(status=faults.status, fault=f"status {faults.status}")
            receiver._record(log)
            extra = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            self._answer(faults.status, {"error": "injected fault"}, extra)
            return
        try:
            accepted = check_request(
                log,
                self.headers.get("Content-Encoding"),
                body,
                faults,
                receiver.max_entries_per_request,
            )
        except Refused as refused:
            log.update(status=refused.status, note=refused.note)
            receiver._record(log)
            self._answer(refused.status, refused.body, _REFUSAL_HEADERS.get(refused.status, {}))
            return
        log["status"] = 202
        stored = receiver._record(log, accepted)
        if accepted.kind == "heartbeat":
            self._answer(202, {"accepted": 1}, {})
        else:
            duplicates = len(accepted.documents) - stored
            self._answer(202, {"accepted": stored, "duplicates": duplicates}, {})

    def _request_row(self, receiver: Receiver) -> dict[str, Any]:
        """The request's row for the ``requests`` table, before anything is decided."""
        headers = self.headers
        return {
            "at": now_iso(),
            "method": self.command,
            "path": self.path.split("?", 1)[0],
            "idempotency_key": headers.get("Idempotency-Key"),
            "gem_version": headers.get("X-EventEngine-Gem-Version"),
            "user_agent": headers.get("User-Agent"),
            "content_type": headers.get("Content-Type"),
            "authorized": int(receiver._check_bearer(headers.get("Authorization"))),
            "connection": self.connection_number,
        }

    def _read_body(self) -> bytes | None:
        """The request body; None when it is too large to read (the connection then closes)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # chunked bodies are not supported
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            return b""
        if length < 0:
            self.close_connection = True
            return b""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(status, _phrase(status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            logger.debug("receiver: client went away before the answer")
            self.close_connection = True


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
