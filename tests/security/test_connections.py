"""Slow and stalled clients (SECURITY-CATALOG: TLS and HTTP; OWASP API4), each with a
real socket against a real gateway process: the connection is closed within the
configured timeout, and a normal client keeps being served meanwhile."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, Stack

pytestmark = pytest.mark.e2e

HANDSHAKE_S, KEEP_ALIVE_S, READ_S, BODY_S = 1.0, 2.0, 3, 2.0
MARGIN_S = 1.5
# uvloop bounds a TLS shutdown whose peer never reads to 30 s before aborting the socket.
TLS_SHUTDOWN_S = 30.0
ROWS = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


@pytest.fixture(scope="module")
def strict(stack: Stack, spawn_module_gateway: Callable[..., Gateway]) -> Gateway:
    return spawn_module_gateway(
        SCOREGATE_HANDSHAKE_TIMEOUT_S=str(HANDSHAKE_S),
        SCOREGATE_KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE_S),
        SCOREGATE_READ_TIMEOUT_S=str(READ_S),
        SCOREGATE_BODY_TIMEOUT_S=str(BODY_S),
    )


def port_of(gateway: Gateway) -> int:
    return int(gateway.base_url.rsplit(":", 1)[1])


def tls_socket(gateway: Gateway) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(gateway.ca))
    raw = socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def seconds_until_closed(
    sock: socket.socket, *, limit_s: float, trickle: bytes | None = None
) -> tuple[float, bytes]:
    """Seconds until the server closes (what it sent first), trickling bytes meanwhile."""
    with sock:
        return _wait_closed(sock, limit_s, trickle)


def _wait_closed(sock: socket.socket, limit_s: float, trickle: bytes | None) -> tuple[float, bytes]:
    started = time.monotonic()
    sock.settimeout(0.25)
    received = b""
    while time.monotonic() - started < limit_s:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                except OSError:
                    return time.monotonic() - started, received
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - started, received
        if not data:
            return time.monotonic() - started, received
        received += data
    raise AssertionError(f"still open after {limit_s}s; received {received[:80]!r}")


@contextmanager
def normal_client(gateway: Gateway, key: str) -> Iterator[list[float]]:
    """A well-behaved client scoring every 0.2 s in the background; yields its latencies."""
    latencies: list[float] = []
    failures: list[Any] = []
    stop = threading.Event()

    def run() -> None:
        with gateway.client() as client:
            while not stop.is_set():
                started = time.monotonic()
                reply = client.post(
                    "/v1/models/iris:predict",
                    content=ROWS,
                    headers={"api-key": key, "content-type": "application/json"},
                )
                latencies.append(time.monotonic() - started)
                if reply.status_code != 200:
                    failures.append(reply.status_code)
                stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield latencies
    stop.set()
    thread.join(10)
    assert not failures, failures
    assert len(latencies) >= 3
    assert max(latencies) < 2.0, max(latencies)


def test_slow_tls_handshake_is_closed_within_the_handshake_timeout(
    strict: Gateway, stack: Stack
) -> None:
    with normal_client(strict, stack.keys.iris):
        socks = [socket.create_connection(("127.0.0.1", port_of(strict))) for _ in range(20)]
        # Connected, but never a ClientHello.
        elapsed = [seconds_until_closed(s, limit_s=HANDSHAKE_S + 5)[0] for s in socks]
    assert max(elapsed) < HANDSHAKE_S + MARGIN_S, elapsed


def test_slowloris_headers_are_closed_within_the_keep_alive_timeout(
    strict: Gateway, stack: Stack
) -> None:
    with normal_client(strict, stack.keys.iris):
        socks = [tls_socket(strict) for _ in range(10)]
        for s in socks:
            s.sendall(b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: localhost\r\n")
        # A header line every 0.25 s: each read succeeds, the head never completes.
        elapsed, received = seconds_until_closed(
            socks[0], limit_s=KEEP_ALIVE_S + 10, trickle=b"X-Slow: 1\r\n"
        )
        for s in socks[1:]:
            seconds_until_closed(s, limit_s=KEEP_ALIVE_S + 5)
    assert elapsed < KEEP_ALIVE_S + MARGIN_S
    assert received == b""  # closed, never answered: the head was never complete


def test_slow_body_is_408_within_the_body_timeout(strict: Gateway, stack: Stack) -> None:
    with normal_client(strict, stack.keys.iris):
        s = tls_socket(strict)
        s.sendall(
            b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: localhost\r\n"
            + f"api-key: {stack.keys.iris}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        elapsed, received = seconds_until_closed(s, limit_s=BODY_S + 10, trickle=b" ")
    assert received.startswith(b"HTTP/1.1 408"), received[:100]
    assert b'"code":"request_timeout"' in received
    assert elapsed < BODY_S + MARGIN_S


def test_a_client_that_never_reads_is_disconnected(strict: Gateway) -> None:
    # No normal client alongside this one: a client that floods pipelined requests can
    # keep a single gateway process busy for seconds (SECURITY.md: known limits).
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with tls_socket(strict) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5.0)
        # 5,000 pipelined requests (250 kB), and never a byte read back: the answers
        # (2 MB) are more than the socket buffers hold.
        for _ in range(50):
            s.sendall(request * 100)
        started = time.monotonic()
        # The server's TLS layer stops reading while its answers pile up; the read times
        # out, and the TLS shutdown that follows is aborted when the peer never reads.
        while time.monotonic() - started < READ_S + TLS_SHUTDOWN_S + 10:
            if not established(port_of(strict), s.getsockname()[1]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the server still holds the connection")
    assert time.monotonic() - started < READ_S + TLS_SHUTDOWN_S + MARGIN_S + 3
    with strict.client() as client:  # and the gateway serves on
        assert client.get("/v2/health/live").status_code == 200


def established(server_port: int, client_port: int) -> bool:
    """Whether the server side of this connection is still established (from /proc)."""
    wanted = f":{server_port:04X}", f":{client_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if local.endswith(wanted[0]) and remote.endswith(wanted[1]) and state == "01":
                return True
    return False
