"""Mutual TLS between gateway and scorer (SECURITY-CATALOG: TLS and HTTP): with a client
CA configured, the scorer completes a handshake only with a certificate from that CA."""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.authority import CertPaths, create_ca, issue
from serving.tls import client_context
from tests.conftest import (
    Stack,
    free_port,
    start,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.e2e
ROWS = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


@dataclass
class MTLSScorer:
    port: int
    pki: CertPaths
    foreign: CertPaths

    def context(self, client: CertPaths | None, name: str = "") -> ssl.SSLContext:
        ctx = client_context(self.pki.ca_cert)
        if client is not None:
            ctx.load_cert_chain(str(client.cert(name)), str(client.key(name)))
        return ctx


@pytest.fixture(scope="module")
def mtls_scorer(
    pki: CertPaths, model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MTLSScorer]:
    issue(pki, "scorer-mtls", force=True)
    issue(pki, "gateway-client", client=True, force=True)
    foreign = CertPaths(tmp_path_factory.mktemp("foreign-pki"))
    create_ca(foreign)
    issue(foreign, "intruder", client=True)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SCOREGATE_SCORER_TLS_CERT": str(pki.cert("scorer-mtls")),
        "SCOREGATE_SCORER_TLS_KEY": str(pki.key("scorer-mtls")),
        "SCOREGATE_SCORER_TLS_CLIENT_CA": str(pki.ca_cert),
    }
    logs = tmp_path_factory.mktemp("mtls-logs")
    procs = {
        "scorer": start(
            "scorer",
            [
                *(sys.executable, "-m", "scorer", "serve"),
                *("--repository", str(model_repo), "--port", str(port)),
            ],
            env,
            logs,
        )
    }
    ctx = client_context(pki.ca_cert)
    ctx.load_cert_chain(str(pki.cert("gateway-client")), str(pki.key("gateway-client")))
    try:
        wait_ready(f"https://localhost:{port}/v2/health/ready", ctx, procs, logs)
        yield MTLSScorer(port, pki, foreign)
    finally:
        stop(procs)


def handshake_and_get(port: int, ctx: ssl.SSLContext) -> bytes:
    """The first bytes of the answer; b"" or an SSL error when the server refused us."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
            # TLS 1.3: the server judges the client's certificate after the client thinks
            # the handshake is done, so a refusal shows on the first read.
            return tls.recv(100)


def refused(port: int, ctx: ssl.SSLContext) -> str:
    try:
        answer = handshake_and_get(port, ctx)
    except ssl.SSLError as exc:
        return exc.reason or "ssl error"
    except ConnectionError as exc:
        return type(exc).__name__
    assert answer == b"", answer  # never an HTTP answer
    return "closed"


def test_the_scorer_answers_a_client_with_a_certificate_from_its_ca(
    mtls_scorer: MTLSScorer,
) -> None:
    reply = handshake_and_get(
        mtls_scorer.port, mtls_scorer.context(mtls_scorer.pki, "gateway-client")
    )
    assert reply.startswith(b"HTTP/1.1 200")


def test_no_client_certificate_fails_the_handshake(mtls_scorer: MTLSScorer) -> None:
    assert refused(mtls_scorer.port, mtls_scorer.context(None)) in {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "closed",
        "ConnectionResetError",
    }


def test_a_client_certificate_from_a_foreign_ca_fails_the_handshake(
    mtls_scorer: MTLSScorer,
) -> None:
    assert refused(mtls_scorer.port, mtls_scorer.context(mtls_scorer.foreign, "intruder")) in {
        "TLSV1_ALERT_UNKNOWN_CA",
        "closed",
        "ConnectionResetError",
    }


def test_the_gateway_scores_through_an_mtls_scorer(
    mtls_scorer: MTLSScorer, stack: Stack, spawn_gateway: Any
) -> None:
    pki = mtls_scorer.pki
    gateway = spawn_gateway(  # ready means its probe passed the scorer's mutual TLS
        scorer_url=f"https://localhost:{mtls_scorer.port}",
        SCOREGATE_UPSTREAM_CA=str(stack.ca),
        SCOREGATE_UPSTREAM_CLIENT_CERT=str(pki.cert("gateway-client")),
        SCOREGATE_UPSTREAM_CLIENT_KEY=str(pki.key("gateway-client")),
    )
    with gateway.client() as client:
        reply = client.post(
            "/v1/models/iris:predict", json=ROWS, headers={"api-key": stack.keys.iris}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": ["setosa"]}


def test_a_gateway_without_the_client_certificate_is_refused_by_the_scorer(
    mtls_scorer: MTLSScorer, stack: Stack, spawn_gateway: Any
) -> None:
    gateway = spawn_gateway(
        wait=False,
        scorer_url=f"https://localhost:{mtls_scorer.port}",
        SCOREGATE_UPSTREAM_CA=str(stack.ca),
    )
    wait_ready(
        f"{gateway.base_url}/v2/health/live",
        client_context(stack.ca),
        {"gateway": gateway.proc},
        gateway.state / "logs",
    )
    with gateway.client() as client:
        ready = client.get("/v2/health/ready")
        model_ready = client.get("/v2/models/iris/ready", headers={"api-key": stack.keys.iris})
        reply = client.post(
            "/v1/models/iris:predict", json=ROWS, headers={"api-key": stack.keys.iris}
        )
    assert ready.status_code == 200  # the replica's own parts are fine
    assert model_ready.status_code in (502, 503)  # the model's scorer refuses it too
    assert reply.status_code in (502, 503), reply.text
    assert reply.json()["code"] in ("bad_upstream", "upstream_unavailable")
