"""An independent Cloud for tests: counts what arrives without sharing code with spooler.

It answers 200 to every POST (or what ``status`` says; ``answers`` scripts the first
answers to POST /events), remembers each request's body, Idempotency-Key, entry_ids and
the connection it came on, and knows nothing of spooler's receiver. A body that is not
JSON with an ``entries`` list of objects gets 400.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CountingCloud:
    """A stand-in Cloud on 127.0.0.1 that records every request it gets."""

    def __init__(self, port: int = 0, status: int = 200, answers: list[int] | None = None) -> None:
        self.status = status
        self.answers = list(answers or [])  # statuses for the next POST /events, in order
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out in two writes (head, then body): without TCP_NODELAY
            # the second waits for the client's delayed ACK, 40 ms a request.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                events = self.path.endswith("/events")
                ids: list[str] = []
                valid = True
                if events:
                    try:
                        ids = [e["entry_id"] for e in json.loads(body)["entries"]]
                    except (ValueError, KeyError, TypeError):
                        valid = False
                with cloud._lock:
                    cloud.requests.append(
                        {
                            "path": self.path,
                            "ids": ids,
                            "peer": self.client_address,
                            "body": body,
                            "key": self.headers.get("Idempotency-Key"),
                        }
                    )
                    if not valid:
                        status = 400
                    elif events and cloud.answers:
                        status = cloud.answers.pop(0)
                    else:
                        status = cloud.status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def event_ids(self) -> list[str]:
        """Every entry_id received, in arrival order, duplicates included."""
        with self._lock:
            return [i for r in self.requests for i in r["ids"]]

    def event_bodies(self) -> list[tuple[bytes, str | None]]:
        """(body, Idempotency-Key) of every POST /events, in arrival order."""
        with self._lock:
            return [(r["body"], r["key"]) for r in self.requests if r["path"].endswith("/events")]

    def event_posts(self) -> int:
        """How many POST /events arrived."""
        with self._lock:
            return sum(1 for r in self.requests if r["path"].endswith("/events"))

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CountingCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
