"""The gateway's TLS certificate rotates without a restart (issue 18): a live gateway
process reads its certificate from a directory written the way the Secrets Store CSI
driver writes it (a ``..data`` symlink flipped to a fresh directory), and a renewed
Key Vault PEM (key and chain in one file, `k8s/base/gateway.yaml`) published there is
served to new handshakes, HTTP/1.1 and HTTP/2 alike, while open connections carry on.
Broken files are refused, counted and logged; the old certificate stays served.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from certs.authority import CertPaths, issue
from serving.tls import ALPN, client_context
from tests.conftest import (
    Stack,
    free_port,
    gateway_env,
    start,
    stop,
    wait_ready,
    write_access,
    write_routes,
)
from tests.csi_volume import AtomicWriterVolume, key_vault_pem

pytestmark = pytest.mark.e2e
ROWS = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
PEM = "gateway.pem"
POLL_S = 0.2


@dataclass
class RotatingGateway:
    port: int
    metrics_url: str
    log: Path
    volume: AtomicWriterVolume
    pki: CertPaths  # the stack's CA: clients trust it already

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    def publish(self, name: str, *, key_of: str | None = None) -> None:
        self.volume.write({PEM: key_vault_pem(self.pki, name, key_of=key_of)})

    def serial(self, name: str) -> int:
        return x509.load_pem_x509_certificate(self.pki.cert(name).read_bytes()).serial_number

    def handshake(self, host: str = "localhost") -> tuple[int, str | None]:
        """A new TLS connection: the served leaf's serial, and the ALPN protocol chosen."""
        ctx = client_context(self.pki.ca_cert)
        ctx.set_alpn_protocols(ALPN)
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number, conn.selected_alpn_protocol()

    def wait_served(self, name: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.handshake()[0] != self.serial(name):
            assert time.monotonic() < deadline, f"{name} not served after {timeout_s} s"
            time.sleep(POLL_S / 2)

    def metric(self, name: str) -> float:
        text = httpx.get(self.metrics_url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise AssertionError(f"{name} not in the metrics")

    def wait_refusals(self, more_than: float, timeout_s: float = 10.0) -> float:
        deadline = time.monotonic() + timeout_s
        while (seen := self.metric("scoregate_tls_reload_failures_total")) <= more_than:
            assert time.monotonic() < deadline, "no refused reload counted"
            time.sleep(POLL_S / 2)
        return seen


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RotatingGateway]:
    state = tmp_path_factory.mktemp("rotation")
    shutil.copytree(stack.state / "certs", state / "certs")
    pki = CertPaths(tmp_path_factory.mktemp("rotation-pki"))
    for part in ("ca.pem", "ca.key"):
        shutil.copy2(stack.state / "certs" / part, pki.root / part)
    for name in ("first", "second", "third", "fourth", "fifth"):
        issue(pki, name)
    volume = AtomicWriterVolume(state / "secrets-store")
    volume.write({PEM: key_vault_pem(pki, "first")})
    port = free_port()
    env = gateway_env(
        state,
        write_routes(state / "routes.toml", stack.scorer_url),
        write_access(state / "access.toml"),
        port,
        SCOREGATE_LOCAL_STORE_PATH=str(stack.state / "secrets.json"),
        # As on AKS: one PEM, the certificate and its key, through the CSI volume's link.
        SCOREGATE_TLS_CERT=str(volume.path(PEM)),
        SCOREGATE_TLS_KEY=str(volume.path(PEM)),
        SCOREGATE_TLS_RELOAD_INTERVAL_S=str(POLL_S),
        SCOREGATE_KEEP_ALIVE_TIMEOUT_S="60",
    )
    logs = state / "logs"
    procs = {"gateway": start("gateway", [sys.executable, "-m", "gateway", "serve"], env, logs)}
    try:
        wait_ready(
            f"https://localhost:{port}/v2/health/ready", client_context(pki.ca_cert), procs, logs
        )
        metrics = f"http://127.0.0.1:{env['SCOREGATE_METRICS_PORT']}/metrics"
        yield RotatingGateway(port, metrics, logs / "gateway.log", volume, pki)
        assert procs["gateway"].poll() is None, "the gateway restarted or died"
    finally:
        stop(procs)


def connection_serial(response: httpx.Response) -> int:
    """The certificate of the connection that carried ``response``."""
    # httpcore's sync stream hands out the socket's _ssl object: its argument is positional.
    tls_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    der = tls_object.getpeercert(True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_served_to_new_handshakes_while_open_connections_carry_on(
    gateway: RotatingGateway, stack: Stack
) -> None:
    gateway.publish("first")
    gateway.wait_served("first")
    key = {"api-key": stack.keys.iris}
    ctx = client_context(gateway.pki.ca_cert)
    with (
        httpx.Client(base_url=gateway.base_url, verify=ctx, timeout=10) as h1,
        httpx.Client(base_url=gateway.base_url, verify=ctx, timeout=10, http2=True) as h2,
    ):
        before = {c: c.post("/v2/models/iris/infer", json=ROWS, headers=key) for c in (h1, h2)}
        assert [r.status_code for r in before.values()] == [200, 200]
        assert [r.http_version for r in before.values()] == ["HTTP/1.1", "HTTP/2"]
        assert {connection_serial(r) for r in before.values()} == {gateway.serial("first")}
        expiry_before = gateway.metric("scoregate_tls_certificate_expiry_timestamp_seconds")

        gateway.publish("second")  # the CSI driver's rotation: a new directory, one flip
        gateway.wait_served("second")

        # New handshakes: the renewed certificate, h2 still chosen; with SNI and without
        # (a client connecting to an IP address sends no server name).
        assert gateway.handshake("localhost") == (gateway.serial("second"), "h2")
        assert gateway.handshake("127.0.0.1") == (gateway.serial("second"), "h2")
        with httpx.Client(base_url=gateway.base_url, verify=ctx, timeout=10, http2=True) as new:
            fresh = new.post("/v2/models/iris/infer", json=ROWS, headers=key)
            assert (fresh.status_code, fresh.http_version) == (200, "HTTP/2")
            assert connection_serial(fresh) == gateway.serial("second")

        # The keep-alive connections opened before the flip still answer, on their session.
        for client in (h1, h2):
            again = client.post("/v2/models/iris/infer", json=ROWS, headers=key)
            assert again.status_code == 200
            assert connection_serial(again) == gateway.serial("first")
            assert again.json()["outputs"] == before[client].json()["outputs"]

    second = x509.load_pem_x509_certificate(gateway.pki.cert("second").read_bytes())
    expiry = gateway.metric("scoregate_tls_certificate_expiry_timestamp_seconds")
    assert expiry == second.not_valid_after_utc.timestamp() >= expiry_before
    log = gateway.log.read_text()
    assert f"serving renewed TLS certificate {gateway.volume.path(PEM)}" in log
    assert f"{gateway.serial('second'):x}" in log


BROKEN = {
    # A key that is not the certificate's (a mismatched pair).
    "mismatched": lambda gw: gw.publish("fourth", key_of="third"),
    # A file caught half-written (written in place, not through the atomic writer).
    "half_written": lambda gw: gw.volume.write({PEM: key_vault_pem(gw.pki, "fourth")[:-300]}),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_keep_the_old_certificate_served_and_are_counted(
    gateway: RotatingGateway, case: str
) -> None:
    gateway.publish("third")
    gateway.wait_served("third")
    failures = gateway.metric("scoregate_tls_reload_failures_total")
    BROKEN[case](gateway)
    gateway.wait_refusals(more_than=failures)
    # Still the previous certificate, still h2, for new handshakes.
    assert gateway.handshake() == (gateway.serial("third"), "h2")
    third = x509.load_pem_x509_certificate(gateway.pki.cert("third").read_bytes())
    expiry = gateway.metric("scoregate_tls_certificate_expiry_timestamp_seconds")
    assert expiry == third.not_valid_after_utc.timestamp()
    with httpx.Client(verify=client_context(gateway.pki.ca_cert), timeout=10) as client:
        assert client.get(f"{gateway.base_url}/v2/health/ready").status_code == 200
    log = gateway.log.read_text()
    assert "refused the TLS files" in log and "still serving" in log
    # Once the files are good again, they are served: nothing was stuck.
    gateway.publish("fifth")
    gateway.wait_served("fifth")
