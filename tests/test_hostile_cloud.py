"""A hostile Cloud: answers that trickle, hang or never end, and stops that must cut a request.

The server here is raw sockets written to misbehave on purpose. Each misbehaviour
goes on for HOSTILE_FOR seconds, far past every deadline used, so a call that
comes back sooner was cut short by the client, not let go by the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest

from spooler.client import CloudClient
from spooler.errors import TransientDeliveryError
from spooler.spool import Spool
from tests.conftest import make_entry

KEY = "sk_test_H0ST1LE_5b2c9e0f1a7d4e3b"
# Stands in for metadata that must never reach a message.
MARKER = b"Marker-hostile-never-show-me"
BODY = b'{"entries":[{"entry_id":"e1","note":"' + MARKER + b'"}]}'
HOSTILE_FOR = 10.0  # seconds a misbehaving answer goes on at most
DEADLINE = 1.5  # the clients' deadline in these tests
MARGIN = 1.0  # scheduling slack on top of a deadline or an abort
ENDLESS_CAP = 64 << 20  # an "endless" body ends here, so a client that reads it all still returns
SIGNAL = signal.SIGUSR1  # pytest-timeout owns SIGALRM


# -- the hostile Cloud -----------------------------------------------------------------


class Exchange:
    """One request on one connection, for a script to answer."""

    def __init__(self, cloud: HostileCloud, conn: socket.socket, head: bytes, rest: bytes) -> None:
        self.cloud = cloud
        self.conn = conn
        self.length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                self.length = int(value)
        self._rest = rest

    def read_body(self) -> bool:
        """Read the request body; False if the client went away first."""
        need = self.length - len(self._rest)
        while need > 0:
            chunk = self.conn.recv(min(need, 1 << 16))
            if not chunk:
                return False
            need -= len(chunk)
        return True

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the client is gone."""
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        return True

    def hold(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the Cloud is being closed."""
        return not self.cloud.closing.wait(seconds)

    def dribble(self, piece: bytes, every: float) -> bool:
        """Send ``piece`` every ``every`` seconds for HOSTILE_FOR seconds, then give up (False)."""
        end = time.monotonic() + HOSTILE_FOR
        while time.monotonic() < end and self.hold(every):
            if not self.send(piece):
                return False
        return False


class HeadRead(httpx.BaseTransport):
    """httpx's own transport, setting ``head_read`` once a response's status line and
    headers have reached the client (its body not read yet)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.head_read = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.head_read.set()
        return response

    def close(self) -> None:
        self.inner.close()


# A script answers one request; it returns True to keep the connection for the next one.
Script = Callable[[Exchange], bool]


def answer_ok(ex: Exchange) -> bool:
    return ex.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )


def hang(ex: Exchange) -> bool:
    ex.hold(HOSTILE_FOR)
    return False


def trickle_headers(ex: Exchange) -> bool:
    # The status line, then a header one byte at a time: every read returns well inside
    # httpx's per-read timeout, and the headers never end.
    return ex.send(b"HTTP/1.1 200 OK\r\nX-Slow: ") and ex.dribble(b"a", 0.25)


def trickle_body(*, chunked: bool) -> Script:
    def script(ex: Exchange) -> bool:
        if chunked:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            return ex.send(head) and ex.dribble(b"1\r\na\r\n", 0.5)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"
        return ex.send(head) and ex.dribble(b"a", 0.5)

    return script


def endless_body(*, chunked: bool) -> Script:
    block = b"x" * (64 << 10)

    def script(ex: Exchange) -> bool:
        if chunked:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            frame = b"%x\r\n%s\r\n" % (len(block), block)
        else:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % ENDLESS_CAP
            frame = block
        if not ex.send(head):
            return False
        sent = 0
        while sent < ENDLESS_CAP:
            if not ex.send(frame):
                ex.cloud.note(f"dropped after {sent}")
                return False
            sent += len(block)
        if chunked:
            ex.send(b"0\r\n\r\n")
        ex.cloud.note("sent it all")
        return False

    return script


def stall_upload(ex: Exchange) -> bool:
    # Never reads the request body: the client's send blocks once the buffers are full.
    ex.hold(HOSTILE_FOR)
    return False


stall_upload.reads_body = False  # type: ignore[attr-defined]


class HostileCloud:
    """An HTTP/1.1 server on 127.0.0.1 answering each request with the next script."""

    def __init__(
        self, *scripts: Script, then: Script = answer_ok, tls: ssl.SSLContext | None = None
    ) -> None:
        self._tls = tls
        self._scripts = list(scripts)
        self._then = then
        self.closing = threading.Event()
        self._arrived = threading.Condition()
        self.requests = 0
        self.connections = 0
        self.notes: list[str] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name="hostile.accept", daemon=True)
        self._acceptor.start()

    def wait_for_requests(self, n: int, timeout: float = 20.0) -> bool:
        """Whether ``n`` requests have arrived (their body read) within ``timeout``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.requests >= n, timeout)

    def note(self, what: str) -> None:
        with self._arrived:
            self.notes.append(what)
            self._arrived.notify_all()

    def wait_for_note(self, timeout: float = 20.0) -> list[str]:
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.notes), timeout)
            return list(self.notes)

    def close(self) -> None:
        self.closing.set()
        self._acceptor.join(5.0)
        self._listener.close()
        with self._arrived:
            conns = list(self._conns)
        for conn in conns:  # wakes a thread waiting for the next request on a keep-alive
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5.0)

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._arrived:
                self.connections += 1
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)  # takes the descriptor over
                with self._arrived:
                    self._conns.append(conn)
            while not self.closing.is_set():
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                with self._arrived:
                    script = self._scripts.pop(0) if self._scripts else self._then
                exchange = Exchange(self, conn, head, rest)
                if getattr(script, "reads_body", True) and not exchange.read_body():
                    return
                with self._arrived:
                    self.requests += 1
                    self._arrived.notify_all()
                if not script(exchange):
                    return
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileCloud]]:
    made: list[HostileCloud] = []

    def make(*scripts: Script, **options: Any) -> HostileCloud:
        cloud = HostileCloud(*scripts, **options)
        made.append(cloud)
        return cloud

    yield make
    for cloud in made:
        cloud.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., CloudClient]]:
    made: list[CloudClient] = []

    def make(cloud: HostileCloud, **options: Any) -> CloudClient:
        options.setdefault("deadline", DEADLINE)
        client = CloudClient(api_key=KEY, endpoint=cloud.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def send(client: CloudClient, body: bytes = BODY) -> None:
    client.send_entries_json(body, count=1, idempotency_key="batch-1")


def assert_discreet(exc: BaseException) -> None:
    """Neither the key nor the body is in the message, and no httpx exception is chained."""
    assert exc.__cause__ is None and exc.__context__ is None
    for text in (str(exc), repr(exc)):
        assert KEY not in text and MARKER.decode() not in text


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """Seconds ``call`` took, and what it raised (None if it returned)."""
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


# -- the deadline -----------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_trickling_2xx_body_does_not_hold_the_request(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient], chunked: bool
) -> None:
    """Attacks the per-read timeout: a 200 whose body comes a byte every 0.5 s (10 MB declared,
    or chunks without end) is accepted within the deadline instead of being read for ever."""
    cloud = hostile(trickle_body(chunked=chunked))
    client = make_client(cloud)

    elapsed, raised = timed(lambda: send(client))

    assert raised is None  # the status line said 200: the Cloud took the batch
    assert elapsed < DEADLINE + MARGIN


def test_a_cloud_that_never_answers_is_abandoned_at_the_deadline(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the wait for the first byte: a server that reads the request and says nothing
    is left at the deadline, before httpx's 5 s read timeout, with a message naming it."""
    cloud = hostile(hang)
    client = make_client(cloud)

    elapsed, raised = timed(lambda: send(client))

    assert isinstance(raised, TransientDeliveryError)
    assert raised.status is None
    assert str(raised) == "POST /events abandoned at the 1.5 s deadline"
    assert elapsed < DEADLINE + MARGIN
    assert_discreet(raised)


def test_headers_that_trickle_in_are_abandoned_at_the_deadline(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the header phase: a status line, then one header byte every 0.25 s (each read
    inside the read timeout, the headers never complete) is a transient failure at the deadline."""
    cloud = hostile(trickle_headers)
    client = make_client(cloud)

    elapsed, raised = timed(lambda: send(client))

    assert isinstance(raised, TransientDeliveryError)
    assert str(raised) == "POST /events abandoned at the 1.5 s deadline"
    assert elapsed < DEADLINE + MARGIN
    assert_discreet(raised)


def test_an_upload_the_cloud_never_reads_is_abandoned_at_the_deadline(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the send phase: a server that never reads a 32 MiB body leaves the client's
    send blocked on full buffers; the deadline cuts it before the 5 s write timeout."""
    cloud = hostile(stall_upload)
    client = make_client(cloud)
    body = BODY + b" " * (32 << 20)

    elapsed, raised = timed(lambda: send(client, body))

    assert isinstance(raised, TransientDeliveryError)
    assert str(raised) == "POST /events abandoned at the 1.5 s deadline"
    assert elapsed < DEADLINE + MARGIN


def test_every_request_gets_its_own_deadline(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the one watchdog a client has: after a request cut at the deadline and one that
    went through, a third request that hangs on that kept-alive connection (no new socket to
    announce it) is cut at its own deadline too."""
    cloud = hostile(hang, answer_ok, hang)
    client = make_client(cloud)

    first = timed(lambda: send(client))
    second = timed(lambda: send(client))
    third = timed(lambda: send(client))

    assert second[1] is None
    for elapsed, raised in (first, third):
        assert str(raised) == "POST /events abandoned at the 1.5 s deadline"
        assert elapsed < DEADLINE + MARGIN
    assert (cloud.requests, cloud.connections) == (3, 2)


# -- bounded answers ---------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_endless_2xx_body_is_read_only_up_to_the_bound(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient], chunked: bool
) -> None:
    """Attacks memory: a 200 whose body pours out at full speed (64 MiB, as fast as loopback
    goes) is accepted, and the client drops the connection instead of reading it all."""
    cloud = hostile(endless_body(chunked=chunked))
    client = make_client(cloud, deadline=30.0)

    send(client)  # accepted: the status line said 200

    [note] = cloud.wait_for_note()
    assert note.startswith("dropped after "), note
    # What the kernel's socket buffers took on top of what was read: a few MiB at most.
    assert int(note.rsplit(" ", 1)[1]) < 32 << 20


# -- abort ---------------------------------------------------------------------------------


def test_abort_from_another_thread_cuts_a_hanging_request_and_the_client_recovers(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the stop path: abort() from another thread makes a request the server sits on
    raise within a second, and the next request on the same client gets through."""
    cloud = hostile(hang)
    client = make_client(cloud, deadline=60.0)
    aborted_at: list[float] = []

    def stopper() -> None:
        if cloud.wait_for_requests(1):
            aborted_at.append(time.monotonic())
            client.abort()

    thread = threading.Thread(target=stopper)
    thread.start()
    _, raised = timed(lambda: send(client))
    returned_at = time.monotonic()
    thread.join(5.0)

    assert isinstance(raised, TransientDeliveryError)
    assert str(raised) == "POST /events aborted"
    assert_discreet(raised)
    assert returned_at - aborted_at[0] < MARGIN
    send(client)  # a fresh connection
    assert (cloud.requests, cloud.connections) == (2, 2)


def test_abort_from_a_signal_handler_on_the_blocked_thread_cuts_the_request(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the ``ship`` command's case: a signal handler that runs on the very thread
    blocked in the request calls abort(), and the request raises within a second."""
    assert threading.current_thread() is threading.main_thread()
    cloud = hostile(hang)
    client = make_client(cloud, deadline=60.0)
    handled_at: list[float] = []

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        handled_at.append(time.monotonic())
        client.abort()

    def deliver() -> None:
        if cloud.wait_for_requests(1):
            signal.pthread_kill(threading.main_thread().ident or 0, SIGNAL)

    previous = signal.signal(SIGNAL, on_signal)
    thread = threading.Thread(target=deliver)
    try:
        thread.start()
        _, raised = timed(lambda: send(client))
        returned_at = time.monotonic()
    finally:
        thread.join(5.0)
        signal.signal(SIGNAL, previous)

    assert isinstance(raised, TransientDeliveryError)
    assert str(raised) == "POST /events aborted"
    assert returned_at - handled_at[0] < MARGIN


def test_abort_while_a_2xx_body_trickles_returns_as_accepted(
    hostile: Callable[..., HostileCloud], make_client: Callable[..., CloudClient]
) -> None:
    """Attacks the body phase of a stop: once a 200 arrived, abort() ends the body read and
    the call returns as accepted (sending the batch again would only duplicate it)."""
    cloud = hostile(trickle_body(chunked=True))
    transport = HeadRead()
    client = make_client(cloud, deadline=60.0, transport=transport)
    aborted_at: list[float] = []

    def stopper() -> None:
        if transport.head_read.wait(20.0):  # the 200 is in; the body trickles
            aborted_at.append(time.monotonic())
            client.abort()

    thread = threading.Thread(target=stopper)
    thread.start()
    _, raised = timed(lambda: send(client))
    returned_at = time.monotonic()
    thread.join(5.0)

    assert raised is None
    assert returned_at - aborted_at[0] < MARGIN


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the server's context, and a client's trusting it."""
    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - present wherever the suite runs
        pytest.skip("the openssl command makes the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@pytest.mark.parametrize("stop", ["abort", "deadline"])
def test_a_request_blocked_inside_tls_is_cut(
    hostile: Callable[..., HostileCloud],
    make_client: Callable[..., CloudClient],
    certificate: tuple[ssl.SSLContext, ssl.SSLContext],
    stop: str,
) -> None:
    """Attacks the TLS layer: a request waiting in an SSL read on a server that hangs is cut by
    abort() (within a second) or by the deadline, and the next request gets a new TLS connection."""
    server_tls, client_tls = certificate
    cloud = hostile(hang, tls=server_tls)
    deadline = 60.0 if stop == "abort" else DEADLINE
    transport = httpx.HTTPTransport(verify=client_tls)
    client = make_client(cloud, deadline=deadline, transport=transport)
    started = time.monotonic()
    cut_at = [started + deadline]

    def stopper() -> None:
        if cloud.wait_for_requests(1):
            cut_at[0] = time.monotonic()
            client.abort()

    thread = threading.Thread(target=stopper)
    if stop == "abort":
        thread.start()
    _, raised = timed(lambda: send(client))
    returned_at = time.monotonic()
    if stop == "abort":
        thread.join(5.0)

    expected = "POST /events aborted" if stop == "abort" else "POST /events abandoned at the 1.5 s"
    assert str(raised).startswith(expected)
    assert returned_at - cut_at[0] < MARGIN
    send(client)
    assert (cloud.requests, cloud.connections) == (2, 2)


# -- end to end: the ship command ----------------------------------------------------------


def ship(tmp_path: Path, spool_path: str, endpoint: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env.update(
        PYTHONUNBUFFERED="1",
        EVENT_ENGINE_CLOUD_KEY=KEY,
        EVENT_ENGINE_CLOUD_ENDPOINT=endpoint,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "spooler", "ship", "--spool", spool_path, *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fill(spool_path: str, n: int) -> None:
    with Spool(spool_path) as spool:
        assert spool.append_many([make_entry(i) for i in range(n)]) == n


def waiting(spool_path: str) -> int:
    with Spool(spool_path) as spool:
        return spool.stats().depth


@pytest.mark.slow
def test_ship_exits_within_2_s_of_sigterm_while_a_request_hangs(
    tmp_path: Path, spool_path: str, hostile: Callable[..., HostileCloud]
) -> None:
    """Attacks the stop of ``python -m spooler ship``: SIGTERM while the Cloud sits on a request
    ends the process within 2 s (not at the deadline), and the rows stay spooled."""
    fill(spool_path, 5)
    cloud = hostile(then=hang)
    with ship(tmp_path, spool_path, cloud.url, "--batch-size", "5") as proc:
        try:
            assert cloud.wait_for_requests(1), proc.poll()
            signalled_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)  # a hang detector
            exited_at = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert proc.returncode == 0, err
    assert exited_at - signalled_at < 2.0, err
    assert "Traceback" not in err and KEY not in err
    assert waiting(spool_path) == 5


@pytest.mark.slow
def test_ship_once_is_not_held_by_a_trickling_2xx(
    tmp_path: Path, spool_path: str, hostile: Callable[..., HostileCloud]
) -> None:
    """Attacks ``ship --once`` with a Cloud that answers 200 and then trickles a 10 MB body a
    byte every 0.5 s: every batch and the heartbeat count as delivered and the command exits."""
    fill(spool_path, 5)
    cloud = hostile(then=trickle_body(chunked=False))
    with ship(tmp_path, spool_path, cloud.url, "--once", "--batch-size", "2") as proc:
        try:
            _, err = proc.communicate(timeout=30)  # a hang detector
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert proc.returncode == 0, err
    assert waiting(spool_path) == 0
    assert cloud.requests == 4  # three batches and a heartbeat
