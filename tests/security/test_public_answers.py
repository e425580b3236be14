"""Every public answer is ours: a WebSocket upgrade gets the JSON error model, the security
headers and an audit record, like any refused request (before: it skipped the request
hooks, so no audit, no limit, no headers)."""

from __future__ import annotations

import base64
import json
import os
import socket

import pytest

from tests.conftest import Stack
from tests.security.test_tls_http import SECURITY_HEADERS

pytestmark = pytest.mark.e2e


def exchange(stack: Stack, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange over TLS, read until the answer's declared length."""
    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    ctx = stack.ssl_context()
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = tls.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def upgrade(path: str, **extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost",
        "Connection: Upgrade",
        "Upgrade: websocket",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k.replace('_', '-')}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/health/live", "/anything"])
def test_a_websocket_upgrade_is_refused_with_our_answer_and_audited(
    stack: Stack, path: str
) -> None:
    status, headers, body = exchange(stack, upgrade(path, api_key=stack.keys.iris))
    assert status == 404
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    error = json.loads(body)
    assert error["code"] == "not_found" and error["request_id"] == headers["x-request-id"]
    record = stack.audit_for(headers["x-request-id"])
    assert (record["route"], record["reason"], record["status"]) == (
        "websocket",
        "websocket_refused",
        404,
    )


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (
            # More than one read of the server's (64 KiB): h11 enforces its limit on a
            # head that is still incomplete.
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
    ],
    ids=["request-line", "header-line", "header-section-too-large"],
)
def test_requests_hypercorn_cannot_parse_get_our_answer_and_a_record(
    stack: Stack, request_bytes: bytes, status: int, code: str
) -> None:
    """Before: Hypercorn's own empty answer, without the error model, the security headers
    or an audit record (and so outside the per-address limit's count)."""
    got, headers, body = exchange(stack, request_bytes)
    assert got == status
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert json.loads(body)["code"] == code
    record = stack.audit_for(headers["x-request-id"])
    assert (record["route"], record["reason"]) == ("protocol_error", f"protocol_error_{status}")


def test_an_http2_rapid_reset_flood_closes_that_connection_and_spares_the_others(
    stack: Stack,
) -> None:
    """CVE-2023-44487: a client opening streams and resetting them at once starts a
    request's work for each and waits for none. Before: nothing stopped it but the
    per-address limit. After RESET_BUDGET resets in the window: GOAWAY, connection closed;
    a well-behaved client is answered meanwhile and the replica stays ready."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import httpx

    from serving.hazmat.hypercorn_h11 import RESET_BUDGET

    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    ctx = stack.ssl_context()
    ctx.set_alpn_protocols(["h2"])
    goaway = None
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        request = [
            (":method", "POST"),
            (":path", "/v1/models/iris:predict"),
            (":scheme", "https"),
            (":authority", host),
            ("content-type", "application/json"),
        ]
        for _ in range(RESET_BUDGET * 3):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, request)
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            try:
                tls.sendall(conn.data_to_send())
            except OSError:
                break  # closed under us: what this test is for
        try:
            while goaway is None:
                data = tls.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
        except OSError:
            pass
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    with stack.client(http2=True) as client:
        polite = client.post(
            "/v1/models/iris:predict",
            json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
            headers={"api-key": stack.keys.iris},
        )
        assert polite.status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
    assert isinstance(polite, httpx.Response)


def test_a_pipelining_client_is_cut_at_the_depth_bound_and_others_are_served_meanwhile(
    stack: Stack,
) -> None:
    """RFC 9112 §9.3.2 lets a server close a connection between pipelined requests. Before:
    one connection's hundreds of pipelined requests were answered back to back, the
    connection's reading loop never waiting on the socket while others waited their turn.
    After PIPELINE_DEPTH answers in a row with the next request already waiting, the
    connection is closed (the client retries the rest on a new one)."""
    import threading
    import time

    from serving.hazmat.hypercorn_h11 import PIPELINE_DEPTH

    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    ctx = stack.ssl_context()
    ctx.set_alpn_protocols(["http/1.1"])
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    answered = 0
    polite: list[float] = []

    def politely() -> None:
        with stack.client() as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/v2/health/ready").status_code == 200
                polite.append(time.monotonic() - started)

    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request * 1000)
        other = threading.Thread(target=politely)
        other.start()
        data = b""
        try:
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        answered = data.count(b"HTTP/1.1 200")
        other.join(30)
    assert answered <= PIPELINE_DEPTH + 1, answered  # then the connection closed
    assert len(polite) == 20 and max(polite) < 2.0


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_a_header_section_over_the_limit_is_431_even_when_it_arrives_in_one_read(
    stack: Stack, http2: bool
) -> None:
    """RFC 6585 §5. Before: h11 enforces its limit only on a head still incomplete after
    a read, so 20 KiB of headers sent at once (over the 16 KiB limit) were served."""
    with stack.client(http2=http2) as client:
        r = client.get("/v2/models/iris", headers={"x-padding": "a" * 20_000})
    assert r.status_code == 431, r.text
    assert r.json()["code"] == "headers_too_large"
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name
    record = stack.audit_for(r.headers["x-request-id"])
    assert (record["status"], record["reason"]) == (431, "headers_too_large")
