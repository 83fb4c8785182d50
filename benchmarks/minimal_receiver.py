"""A minimal Cloud stand-in for benchmarks: counts ``"entry_id"`` occurrences, answers 200.

It exists so the receiver is not what a drain benchmark measures: no JSON parsing, no
validation, no SQLite, one thread per keep-alive HTTP/1.1 connection on raw sockets. Every
request to any path is read to its end (Content-Length or chunked) and answered
``200 {}``; the body's ``"entry_id"`` occurrences are added to a counter. ``GET /count``
answers ``{"entries": N, "requests": R, "cpu": seconds}`` (this process's CPU time) and
``POST /reset`` zeroes the counters. It only listens on 127.0.0.1.

Run on its own (it prints its port on the first line of stdout, then serves until killed):

    python benchmarks/minimal_receiver.py [--port 0]

From a script: ``with MinimalReceiver() as r: ... r.url ... r.count()`` starts it in its own
process (see ``_common.MinimalReceiver``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)
_NEEDLE = b'"entry_id"'


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries = 0
        self.requests = 0

    def add(self, entries: int) -> None:
        with self.lock:
            self.entries += entries
            self.requests += 1

    def reset(self) -> None:
        with self.lock:
            self.entries = 0
            self.requests = 0


class _Conn:
    """Buffered reads over one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(262144)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes | None:
        while True:
            at = self.buf.find(marker)
            if at >= 0:
                out, self.buf = self.buf[:at], self.buf[at + len(marker) :]
                return out
            if not self._fill():
                return None

    def read_exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _read_body(conn: _Conn, headers: dict[bytes, bytes]) -> bytes | None:
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            line = conn.read_until(b"\r\n")
            if line is None:
                return None
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailers end with an empty line
                while True:
                    trailer = conn.read_until(b"\r\n")
                    if trailer is None or trailer == b"":
                        return b"".join(parts)
            chunk = conn.read_exactly(size + 2)
            if chunk is None:
                return None
            parts.append(chunk[:-2])
    length = int(headers.get(b"content-length", b"0") or b"0")
    return conn.read_exactly(length) if length else b""


def _serve(sock: socket.socket, counter: _Counter) -> None:
    conn = _Conn(sock)
    try:
        while True:
            head = conn.read_until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.split(b"\r\n")
            request_line = lines[0].split(b" ")
            method, path = request_line[0], request_line[1] if len(request_line) > 1 else b"/"
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = _read_body(conn, headers)
            if body is None:
                return
            close = headers.get(b"connection", b"").lower() == b"close"
            if method == b"GET" and path == b"/count":
                with counter.lock:
                    answer = json.dumps(
                        {
                            "entries": counter.entries,
                            "requests": counter.requests,
                            "cpu": time.process_time(),
                        }
                    ).encode()
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(answer)).encode()
                    + b"\r\n\r\n"
                    + answer
                )
            elif method == b"POST" and path == b"/reset":
                counter.reset()
                sock.sendall(_OK)
            else:
                counter.add(body.count(_NEEDLE))
                sock.sendall(_OK_CLOSE if close else _OK)
            if close:
                return
    except (OSError, ValueError):
        return
    finally:
        sock.close()


def serve(port: int = 0, *, announce: bool = True) -> None:
    """Listen on 127.0.0.1:port and serve until the process is killed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    if announce:
        print(listener.getsockname()[1], flush=True)
    counter = _Counter()
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve, args=(sock, counter), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
