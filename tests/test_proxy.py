"""CloudClient through a real forward proxy and to a TLS server signed by a private CA.

Everything listens on 127.0.0.1: the proxy below is written here (absolute-URI
forwarding for http targets, CONNECT tunnels for https ones) and refuses to forward
anywhere else, so no test can send traffic off this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from spooler.client import CloudClient
from spooler.errors import ConfigError, TransientDeliveryError
from spooler.receiver import Receiver
from tests.conftest import free_port

KEY = "sk_test_PR0XY_5f4dcc3b5aa765d6"
PROXY_PASSWORD = "pr0xy-Passw0rd-never-shown"
LOOPBACK = frozenset({"127.0.0.1", "localhost"})
# Variables through which the host's environment could route or exempt our requests.
PROXY_VARIABLES = [
    *(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "ALL", "NO")),
    *(f"{scheme}_proxy" for scheme in ("http", "https", "all", "no")),
]


def entry(entry_id: str) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "event_name": "OrderPlaced",
        "status": "published",
        "timestamp": "2024-05-01T12:00:00.000Z",
    }


# -- a real forward proxy --------------------------------------------------------------


class ForwardProxy:
    """A forward proxy on 127.0.0.1 that records what passes through it.

    ``requests`` holds each forwarded http request (method, absolute URI,
    Proxy-Authorization); ``tunnels`` each CONNECT target. Targets other than
    loopback get 403.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tunnels: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while proxy._relay_one(self.connection, self.rfile):
                    pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _relay_one(self, client: socket.socket, rfile: Any) -> bool:
        """Relay one request (or a whole CONNECT tunnel); False when the client is done."""
        line = rfile.readline(65536)
        if not line.strip():
            return False
        method, target, _version = line.decode("latin-1").split()
        headers: list[tuple[str, str]] = []
        while (raw := rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        lower = {name.lower(): value for name, value in headers}
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            with self._lock:
                self.tunnels.append(target)
            if host not in LOOPBACK:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return False
            upstream = socket.create_connection(("127.0.0.1", int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pump(client, upstream)
            return False
        url = urlsplit(target)
        body = rfile.read(int(lower.get("content-length", "0")))
        with self._lock:
            self.requests.append(
                {
                    "method": method,
                    "target": target,
                    "proxy_authorization": lower.get("proxy-authorization"),
                    "content_encoding": lower.get("content-encoding"),
                }
            )
        if url.hostname not in LOOPBACK or url.port is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return False
        kept = [
            f"{name}: {value}\r\n"
            for name, value in headers
            if not name.lower().startswith("proxy-") and name.lower() not in ("connection",)
        ]
        path = url.path + (f"?{url.query}" if url.query else "")
        head = f"{method} {path} HTTP/1.1\r\n{''.join(kept)}Connection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", url.port)) as upstream:
            upstream.sendall(head.encode("latin-1") + body)
            answer = b""
            while chunk := upstream.recv(65536):
                answer += chunk
        client.sendall(answer)  # holds Content-Length, so the client may keep the connection
        return True

    def forwarded(self) -> list[str]:
        """The absolute URIs of the http requests that went through, in order."""
        with self._lock:
            return [r["target"] for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two sockets until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join(5)
    b.close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    running = ForwardProxy()
    yield running
    running.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db") as running:
        yield running


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy or CA variable of the machine running the tests leaks into them."""
    for var in (*PROXY_VARIABLES, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def make_client() -> Iterator[Callable[..., CloudClient]]:
    made: list[CloudClient] = []

    def make(**kwargs: Any) -> CloudClient:
        client = CloudClient(api_key=KEY, deadline=10.0, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- proxies ---------------------------------------------------------------------------


def test_the_proxy_option_sends_every_request_through_the_proxy(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """With proxy=, entries and heartbeats travel through the proxy and still arrive."""
    client = make_client(endpoint=receiver.url, proxy=proxy.url)
    client.send_entries([entry("e-1"), entry("e-2")], idempotency_key="k-1")
    client.send_heartbeat({"type": "heartbeat"})
    assert proxy.forwarded() == [f"{receiver.url}/events", f"{receiver.url}/heartbeat"]
    assert receiver.entry_ids() == ["e-1", "e-2"]
    assert len(receiver.heartbeats()) == 1


def test_without_a_proxy_nothing_goes_through_one(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """The control: no option and no variable, so the proxy sees nothing."""
    make_client(endpoint=receiver.url).send_entries([entry("e-1")], idempotency_key="k-1")
    assert receiver.entry_ids() == ["e-1"]
    assert proxy.forwarded() == []


def test_the_http_proxy_variable_is_honoured(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """HTTP_PROXY routes an http endpoint through the proxy, as any httpx client would."""
    clean_env.setenv("HTTP_PROXY", proxy.url)
    make_client(endpoint=receiver.url).send_entries([entry("e-1")], idempotency_key="k-1")
    assert proxy.forwarded() == [f"{receiver.url}/events"]
    assert receiver.entry_ids() == ["e-1"]


def test_no_proxy_exempts_a_host_from_the_variable(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """NO_PROXY naming the endpoint's host sends straight to it despite HTTP_PROXY."""
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    make_client(endpoint=receiver.url).send_entries([entry("e-1")], idempotency_key="k-1")
    assert receiver.entry_ids() == ["e-1"]
    assert proxy.forwarded() == []


def test_the_option_wins_over_the_variables(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """An explicit proxy is used even when the environment points elsewhere or exempts the host."""
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    client = make_client(endpoint=receiver.url, proxy=proxy.url)
    client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert proxy.forwarded() == [f"{receiver.url}/events"]


def test_proxy_credentials_are_sent_to_the_proxy_and_never_shown(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """user:password in the proxy URL becomes Proxy-Authorization; errors, repr and logs
    never carry the password, and the Cloud never sees the header."""
    with_auth = proxy.url.replace("http://", f"http://spooler:{PROXY_PASSWORD}@")
    client = make_client(endpoint=receiver.url, proxy=with_auth)
    client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert proxy.requests[0]["proxy_authorization"].startswith("Basic ")
    assert receiver.entry_ids() == ["e-1"]

    dead = f"http://spooler:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    failing = make_client(endpoint=receiver.url, proxy=dead)
    with caplog.at_level(logging.DEBUG), pytest.raises(TransientDeliveryError) as info:
        failing.send_entries([entry("e-2")], idempotency_key="k-2")
    shown = [str(info.value), repr(info.value), repr(failing), repr(client), caplog.text]
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert not [text for text in shown if PROXY_PASSWORD in text]


def test_an_unusable_proxy_is_refused_without_quoting_it() -> None:
    """CloudClient checks proxy= like Config does, and the error hides the password."""
    with pytest.raises(ConfigError) as info:
        CloudClient(
            api_key=KEY, endpoint="http://127.0.0.1:9", proxy=f"socks5://u:{PROXY_PASSWORD}@h:1"
        )
    assert info.value.option == "proxy" and PROXY_PASSWORD not in str(info.value)


def test_gzip_bodies_pass_through_a_proxy(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    receiver: Receiver,
    make_client: Callable[..., CloudClient],
) -> None:
    """compress=True through a proxy: the proxy relays Content-Encoding and the Cloud inflates."""
    client = make_client(endpoint=receiver.url, proxy=proxy.url, compress=True)
    client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert proxy.requests[0]["content_encoding"] == "gzip"
    assert receiver.entry_ids() == ["e-1"]


# -- a private CA ------------------------------------------------------------------------


OPENSSL_REQ = [
    *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
    *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
]


class TLSCloud:
    """An https server on 127.0.0.1 with the given certificate; answers 202 and counts."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.bodies: list[bytes] = []
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                cloud.bodies.append(body)
                answer = json.dumps({"accepted": 1}).encode()
                self.send_response(202)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a refused handshake is what some tests want

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("ca")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [*OPENSSL_REQ, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_cloud(private_ca: tuple[Path, Path]) -> Iterator[TLSCloud]:
    cloud = TLSCloud(*private_ca)
    yield cloud
    cloud.close()


def test_a_private_ca_is_trusted_with_ca_bundle(
    clean_env: pytest.MonkeyPatch,
    tls_cloud: TLSCloud,
    private_ca: tuple[Path, Path],
    make_client: Callable[..., CloudClient],
) -> None:
    """ca_bundle= makes an https endpoint signed by a private CA acceptable."""
    client = make_client(endpoint=tls_cloud.endpoint, ca_bundle=private_ca[0])
    client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert [json.loads(b)["entries"][0]["entry_id"] for b in tls_cloud.bodies] == ["e-1"]


def test_a_private_ca_is_refused_without_ca_bundle(
    clean_env: pytest.MonkeyPatch, tls_cloud: TLSCloud, make_client: Callable[..., CloudClient]
) -> None:
    """Without ca_bundle the default trust store refuses the certificate: nothing is sent."""
    client = make_client(endpoint=tls_cloud.endpoint)
    with pytest.raises(TransientDeliveryError, match="ConnectError"):
        client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert tls_cloud.bodies == []


def test_ssl_cert_file_is_honoured(
    clean_env: pytest.MonkeyPatch,
    tls_cloud: TLSCloud,
    private_ca: tuple[Path, Path],
    make_client: Callable[..., CloudClient],
) -> None:
    """SSL_CERT_FILE, httpx's variable for a CA bundle, works without the option."""
    clean_env.setenv("SSL_CERT_FILE", os.fspath(private_ca[0]))
    make_client(endpoint=tls_cloud.endpoint).send_entries([entry("e-1")], idempotency_key="k-1")
    assert len(tls_cloud.bodies) == 1


def test_https_goes_through_a_connect_tunnel_and_is_still_verified(
    clean_env: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    tls_cloud: TLSCloud,
    private_ca: tuple[Path, Path],
    make_client: Callable[..., CloudClient],
) -> None:
    """An https endpoint through the proxy opens a CONNECT tunnel; the certificate is checked
    end to end against ca_bundle, so the proxy sees only the tunnel, never a request."""
    client = make_client(endpoint=tls_cloud.endpoint, proxy=proxy.url, ca_bundle=private_ca[0])
    client.send_entries([entry("e-1")], idempotency_key="k-1")
    assert proxy.tunnels == [f"localhost:{tls_cloud.port}"]
    assert proxy.forwarded() == []
    assert len(tls_cloud.bodies) == 1

    unverified = make_client(endpoint=tls_cloud.endpoint, proxy=proxy.url)
    with pytest.raises(TransientDeliveryError):
        unverified.send_entries([entry("e-2")], idempotency_key="k-2")
    assert len(tls_cloud.bodies) == 1
