"""TLS and HTTP (SECURITY-CATALOG.md): against the live gateway process, over real sockets."""

from __future__ import annotations

import re
import socket
import ssl
import warnings

import httpx
import pytest

from serving.tls import INTERMEDIATE_CIPHERS
from tests.conftest import Stack

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def handshake(stack: Stack, ctx: ssl.SSLContext) -> tuple[str | None, str | None, str | None]:
    """A raw TLS handshake with the live gateway: (version, cipher, ALPN protocol)."""
    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None, tls.selected_alpn_protocol()


def test_tls12_client_gets_only_mozilla_intermediate_ciphers(stack: Stack) -> None:
    ctx = stack.ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    version, cipher, alpn = handshake(stack, ctx)
    assert version == "TLSv1.2"
    assert cipher in INTERMEDIATE_CIPHERS.split(":")
    assert alpn == "h2"


@pytest.mark.parametrize(
    "suite",
    [
        "ECDHE-ECDSA-AES128-SHA",  # CBC with SHA-1 MAC
        "ECDHE-ECDSA-AES256-SHA384",  # CBC
        "AES128-GCM-SHA256",  # no forward secrecy (RSA key exchange)
        "ECDHE-ECDSA-AES128-CCM8",  # short tag, outside Mozilla's list
    ],
)
def test_tls12_suites_outside_the_profile_are_refused(stack: Stack, suite: str) -> None:
    # A client offering only this suite (security level 0 so the refusal is the server's).
    ctx = stack.ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(f"{suite}:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        handshake(stack, ctx)


def test_server_context_disables_compression_renegotiation_and_tickets(stack: Stack) -> None:
    from serving.tls import server_context

    ctx = server_context(stack.ca.parent / "gateway.pem", stack.ca.parent / "gateway.key")
    for flag in (
        ssl.OP_NO_COMPRESSION,
        ssl.OP_NO_RENEGOTIATION,
        ssl.OP_NO_TICKET,
    ):
        assert ctx.options & flag
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    modern = server_context(
        stack.ca.parent / "gateway.pem", stack.ca.parent / "gateway.key", profile="modern"
    )
    assert modern.minimum_version == ssl.TLSVersion.TLSv1_3


def test_tls13_is_offered_with_its_aead_suites(stack: Stack) -> None:
    version, cipher, _ = handshake(stack, stack.ssl_context())
    assert version == "TLSv1.3"
    assert cipher in {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    }


@pytest.mark.parametrize("old", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(stack: Stack, old: ssl.TLSVersion) -> None:
    # The client is made willing (security level 0) so that the refusal is the server's.
    ctx = stack.ssl_context()
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old versions, on purpose
        ctx.minimum_version = old
        ctx.maximum_version = old
    with pytest.raises(ssl.SSLError):
        handshake(stack, ctx)
    # Control: the same willing client, allowed TLS 1.2, is served.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(stack, ctx)[0] == "TLSv1.2"


def test_certificate_chains_only_to_the_dev_ca(stack: Stack) -> None:
    with (
        httpx.Client(base_url=stack.base_url, verify=ssl.create_default_context()) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get("/v2/health/live")


def test_tls_compression_is_off(stack: Stack) -> None:
    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        stack.ssl_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.compression() is None


def raw_exchange(stack: Stack, request: bytes, read_limit: int = 65536) -> bytes:
    """Send bytes over TLS (HTTP/1.1) and return what the server answers before closing."""
    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    ctx = stack.ssl_context()
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request)
        chunks = []
        try:
            while sum(map(len, chunks)) < read_limit:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (ConnectionResetError, ssl.SSLError, TimeoutError):
            pass
        return b"".join(chunks)


# OWASP Secure Headers Project and REST Security Cheat Sheet ("security headers" for
# API responses), RFC 6797 for HSTS: the same set on every answer, errors included.
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "content-type": "application/json",
}


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
@pytest.mark.parametrize(
    ("method", "path", "key", "body", "status"),
    [
        ("GET", "/v2/health/live", None, None, 200),
        ("GET", "/v2/health/ready", None, None, 200),
        ("POST", "/v1/models/iris:predict", "iris", {"instances": ROWS}, 200),
        ("GET", "/v2/health/live?token=x", None, None, 400),
        ("POST", "/v1/models/iris:predict", None, {"instances": ROWS}, 401),
        ("POST", "/v1/models/iris:predict", "wrong", {"instances": ROWS}, 401),
        ("POST", "/v1/models/iris-copy:predict", "iris", {"instances": ROWS}, 403),
        ("GET", "/nowhere", None, None, 404),
        ("GET", "/v2/models/nope", "iris", None, 404),
        ("DELETE", "/v2/models/iris", "iris", None, 405),
        ("POST", "/v1/models/iris:predict", "iris", {"instances": ROWS * 9}, 413),
        ("POST", "/v1/models/iris:predict", "iris", (b"[]", "text/plain"), 415),
        ("POST", "/v1/models/iris:predict", "iris", {"instances": [[1.0]]}, 422),
    ],
)
def test_hsts_and_security_headers_on_every_response(
    stack: Stack,
    http2: bool,
    method: str,
    path: str,
    key: str | None,
    body: object,
    status: int,
) -> None:
    headers = {"api-key": stack.keys.iris if key == "iris" else key} if key else {}
    with stack.client(http2=http2) as client:
        if isinstance(body, tuple):  # sent with another content type than JSON
            content, content_type = body
            r = client.request(
                method, path, headers={**headers, "content-type": content_type}, content=content
            )
        else:
            r = client.request(method, path, headers=headers, json=body)
    assert r.status_code == status
    assert {name: r.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert "server" not in r.headers


def test_no_server_header_naming_the_software(stack: Stack) -> None:
    with stack.client() as client, stack.client(http2=True) as h2:
        for response in (
            client.get("/v2/health/live"),
            h2.get("/v2/health/live"),
            client.get("/nowhere"),
        ):
            assert "server" not in response.headers
    answer = raw_exchange(stack, b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"hypercorn" not in answer.lower()


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    big = b'{"instances": [' + b"[1.0, 2.0, 3.0, 4.0]," * 60_000 + b"[1.0, 2.0, 3.0, 4.0]]}"
    assert len(big) > 1024 * 1024
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            content=big,
            headers={"api-key": stack.keys.iris, "content-type": "application/json"},
        )
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")


def test_too_many_instances_in_one_request_is_413(stack: Stack) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS * 9},
            headers={"api-key": stack.keys.iris},
        )
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")


def test_ambiguous_framing_content_length_and_chunked_is_400(stack: Stack) -> None:
    request = (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: localhost\r\n"
        b"api-key: " + stack.keys.iris.encode() + b"\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    )
    answer = raw_exchange(stack, request)
    assert answer.startswith(b"HTTP/1.1 400")


def test_unknown_method_is_405(stack: Stack) -> None:
    with stack.client() as client:
        r = client.request("BREW", "/v1/models/iris:predict", headers={"api-key": stack.keys.iris})
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")


def test_oversized_header_block_is_refused_not_buffered(stack: Stack) -> None:
    request = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        + b"a" * 64 * 1024
        + b"\r\n\r\n"
    )
    answer = raw_exchange(stack, request)
    assert answer == b"" or answer.split(b" ", 2)[1] in {b"400", b"431"}
    with stack.client() as client:  # and the gateway still serves others
        assert client.get("/v2/health/live").status_code == 200


def test_errors_never_carry_stack_traces(stack: Stack) -> None:
    with stack.client() as client:
        for r in (
            client.post(
                "/v1/models/iris:predict",
                content=b"\xff\xfe",
                headers={"api-key": stack.keys.iris, "content-type": "application/json"},
            ),
            client.post(
                "/v2/models/iris/infer",
                json={"inputs": [{"shape": "x"}]},
                headers={"api-key": stack.keys.iris},
            ),
            client.get("/v2/models/%00"),
        ):
            assert r.status_code in {400, 401, 404, 422}
            text = r.text
            assert "Traceback" not in text and 'File "' not in text and "Error(" not in text
            assert set(r.json()) == {"error", "code", "request_id"}


def test_plain_http_is_refused_never_redirected(stack: Stack) -> None:
    # OWASP Transport Layer Security cheat sheet: an API key sent over plain HTTP has
    # already leaked; a redirect would teach clients that HTTP works. The listener speaks
    # TLS only (and the LoadBalancer exposes 443 alone, tests/k8s/test_manifests.py).
    host, port = "localhost", int(stack.base_url.rsplit(":", 1)[1])
    request = (
        b"GET /v1/models/iris:predict HTTP/1.1\r\nHost: localhost\r\n"
        b"api-key: " + stack.keys.iris.encode() + b"\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(request)
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not answer.startswith(b"HTTP/")  # no HTTP answer at all, so no redirect
    assert b"location" not in answer.lower()
