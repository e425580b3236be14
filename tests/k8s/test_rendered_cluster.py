"""The rendered cluster runs here: every overlay's pods, started as AKS would start them.

For each overlay (cpu, gpu, production) the Deployments run as local processes with their
rendered command, args, environment and ConfigMaps, their init containers first, under
their pods' security context (tests/k8s/pods.py says what is mapped and how). Key Vault
and Entra ID are the project's stand-in (tests/keyvault_server.py: the secrets API, a
managed-identity token endpoint, OIDC discovery and a JWKS, over TLS). Then, through the
gateway: a scored request with an API key from Key Vault, one with an Entra-shaped
app-only token (`roles`, v2) from the issuer documented in the shipped issuers.toml, a
digit on the GPU scorer where the overlay has one; counts land in Redis under the
gateway's ACL user, audit records on the gateway's stdout, and the metrics ports answer.

Any setting the code ignores or a config file it rejects fails here: the gateway would not
start, would not be ready, or would answer from somewhere else than the rendered config
says (its certificate, its issuers, its Redis, its audit sink are each checked).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certs.authority import CertPaths
from gateway.audit import signing
from gateway.audit.review import read_records, verify
from gateway.errors import RateLimited
from gateway.identity import lifecycle
from gateway.identity.principal import Principal
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.policy import RateLimitPolicy
from gateway.ratelimit.storage import StorageCredentials
from gateway.secretstore.keyvault import KeyVaultSecretStore
from tests.azurite import stored
from tests.conftest import StaticCredential, free_port
from tests.gateway.identity.test_jwks import jwk
from tests.k8s.conftest import OVERLAYS, Rendered
from tests.k8s.installs import Install
from tests.k8s.pods import AzureStandIns, LocalCluster, Pod, models_image, world_readable_tmp
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "6e0d8a6b-0b3a-4c5e-9a55-1f0c7d1c2b9e"  # the gateway's app registration
CALLER = "0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"  # a client application allowed to call
SIGNING = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ENTRA = "https://login.microsoftonline.com"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def with_entra_issuer(text: str) -> str:
    """issuers.toml as an operator turns Entra ID on: the documented example block,
    uncommented, with this tenant's and application's ids."""
    start = text.index("# [issuers.entra]")
    block = text[start : text.index("# For v1 tokens", start)]
    lines = [
        line.removeprefix("# ")
        for line in block.splitlines()
        if line.startswith("# ") and not line.startswith("# # ")
    ]
    entra = "\n".join(lines)
    for placeholder, value in (
        ("<tenant-id>", TENANT),
        ("<client-id>", APP),
        ("<client id of a calling application>", CALLER),
    ):
        assert placeholder in entra, placeholder
        entra = entra.replace(placeholder, value)
    return f"{text}\n{entra}\n"


class Azure:
    """The stand-in, with the secrets the cluster's vault holds."""

    def __init__(self, pki: CertPaths, folder: Path) -> None:
        self.vault = KeyVaultServer(str(pki.cert("gateway")), str(pki.key("gateway")), free_port())
        self.ca = folder / "azure-ca.pem"  # readable by the pods' user
        shutil.copy(pki.ca_cert, self.ca)
        self.ca.chmod(0o644)
        self.issuer = f"{self.vault.url}/{TENANT}/v2.0"
        self.redis_password = secrets.token_hex(32)
        self.tls_pem = (
            pki.key("gateway").read_bytes()
            + pki.cert("gateway").read_bytes()
            + pki.ca_cert.read_bytes()
        )
        self.api_key = ""

    def store(self) -> KeyVaultSecretStore:
        return KeyVaultSecretStore(
            self.vault.url,
            StaticCredential(),  # type: ignore[arg-type]
            verify_challenge_resource=False,
            connection_verify=str(self.ca),
        )

    async def public_keys(self) -> dict[str, Any]:
        store = self.store()
        try:
            return await signing.public_keys(store)
        finally:
            await store.close()

    def start(self) -> None:
        self.vault.start()
        state = self.vault.state
        state.jwks = {"keys": [jwk(SIGNING, "entra-1")]}
        state.discovery = {"issuer": self.issuer, "jwks_uri": f"{self.vault.url}/jwks"}

        async def create() -> str:
            store = self.store()
            try:
                # What k8s/README.md has the operator put in the vault: an audit signing
                # key and an API key.
                await signing.generate(store)
                issued = await lifecycle.create(
                    store, owner="cluster-client", scopes=["models:iris", "models:digits"]
                )
                return issued.key
            finally:
                await store.close()

        self.api_key = asyncio.run(create())

    def stand_ins(self, keyvault_url: str, audit_url: str, container: str) -> AzureStandIns:
        return AzureStandIns(
            ca=self.ca,
            replacements={
                keyvault_url: self.vault.url,
                ENTRA: self.vault.url,
                audit_url: container,
            },
            # What AKS gives the gateway for Azure: on AKS the workload identity webhook's
            # variables (a federated token); here the managed-identity endpoint of the
            # stand-in, which azure-identity's DefaultAzureCredential reads the same way.
            # The stand-in's certificate comes from the test CA, Azure's from public CAs;
            # its challenge cannot name vault.azure.net.
            gateway_env={
                "IDENTITY_ENDPOINT": f"{self.vault.url}/msi/token",
                "IDENTITY_HEADER": IDENTITY_HEADER,
                "SSL_CERT_FILE": str(self.ca),
                "SCOREGATE_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "false",
            },
            csi_files={
                "gateway-tls": self.tls_pem,
                "redis-password": self.redis_password.encode(),
            },
        )

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": APP,
            "sub": "service-principal-object-id",
            "oid": "service-principal-object-id",
            "tid": TENANT,
            "azp": CALLER,
            "azpacr": "1",
            "ver": "2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "roles": ["models:iris"],  # an application permission: client credentials
            **claims,
        }
        return jwt.encode(body, SIGNING, "RS256", {"kid": "entra-1", "typ": "JWT"})


@pytest.fixture(scope="module")
def azure(pki: CertPaths) -> Iterator[Azure]:
    folder = world_readable_tmp()
    stand_in = Azure(pki, folder)
    stand_in.start()
    yield stand_in
    stand_in.vault.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    rendered: dict[str, Rendered],
    installs: dict[str, Install],
    azure: Azure,
    model_repo: Path,
    digits_repo: Path,
    audit_container: str,
) -> Iterator[LocalCluster]:
    overlay = rendered[request.param]
    root = world_readable_tmp()
    (gateway,) = overlay.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    keyvault_url, audit_url = env["SCOREGATE_KEYVAULT_URL"], env["SCOREGATE_AUDIT_SINK"]
    images = {
        "models-cpu": models_image(model_repo, root / "models-cpu"),
        "models-gpu": models_image(digits_repo, root / "models-gpu"),
    }
    local = LocalCluster(
        overlay,
        root,
        installs,
        azure.stand_ins(keyvault_url, audit_url, audit_container),
        images,
        edit_config=lambda name, text: with_entra_issuer(text) if name == "issuers.toml" else text,
    )
    try:
        local.start()
        local.wait_ready()
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def served_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def redis_cli(port: int, *args: str, user: str | None = None, password: str = "") -> str:
    auth = ["--user", user, "--pass", password, "--no-auth-warning"] if user else []
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *auth, *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip()


async def limiter_strategies(redis_port: int, gateway: Pod) -> None:
    password_file = gateway.volumes["/mnt/secrets-store"] / "redis-password"
    credentials = StorageCredentials.load("gateway", password_file)
    for strategy in ("sliding-window-counter", "moving-window", "fixed-window"):
        policy = RateLimitPolicy.model_validate(
            {
                "strategy": strategy,
                "defaults": {
                    "per_principal": "3/minute",
                    "per_address": "5/minute",
                    "failed_auth_per_address": "5/minute",
                    "per_principal_model": "",
                },
            }
        )
        limiter = Limiter(
            policy, f"async+redis://127.0.0.1:{redis_port}", "closed", None, credentials
        )
        who = Principal(
            subject=f"acl-{secrets.token_hex(4)}", credential="api_key", scopes=frozenset()
        )
        try:
            await limiter.check_address(f"203.0.113.{len(strategy)}")
            await limiter.failed_authentication(f"198.51.100.{len(strategy)}")
            for _ in range(3):
                await limiter.check_principal(who, "iris", 1)
            with pytest.raises(RateLimited):
                await limiter.check_principal(who, "iris", 1)
            assert limiter.state == "shared", strategy  # counted in Redis, not a fallback
        finally:
            await limiter.close()


@pytest.mark.parametrize("cluster", OVERLAYS, indirect=True)
def test_the_rendered_overlay_runs_and_scores_with_an_api_key_and_an_entra_token(
    cluster: LocalCluster, azure: Azure, digits_repo: Path, audit_container: str
) -> None:
    gateway = cluster.pods["gateway"]
    if os.geteuid() == 0:  # CI: each process runs as its pod's user, with no capability
        for pod in cluster.pods.values():
            assert pod.proc is not None
            status = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pod.proc.pid}/status").read_text().splitlines()
                if ":\t" in line
            )
            assert status["Uid"].split() == ["10001"] * 4, (pod.name, status["Uid"])
            assert status["Gid"].split() == ["10001"] * 4, (pod.name, status["Gid"])
            assert status["Groups"].split() == ["10001"], (pod.name, status["Groups"])
            assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0, pod.name
    port = gateway.port("https")
    base = f"https://127.0.0.1:{port}"
    # The certificate served is the one the CSI driver put in the volume.
    pem = azure.tls_pem.split(b"-----END PRIVATE KEY-----")[1]
    expected = x509.load_pem_x509_certificate(pem.strip()).public_bytes(serialization.Encoding.DER)
    assert served_certificate(port, azure.ca) == expected

    context = ssl.create_default_context(cafile=str(azure.ca))
    with httpx.Client(base_url=base, verify=context, timeout=30) as client:
        by_key = client.post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": azure.api_key}
        )
        assert by_key.status_code == 200, by_key.text
        assert len(by_key.json()["predictions"]) == len(ROWS)

        bearer = {"Authorization": f"Bearer {azure.token()}"}
        by_token = client.post("/v1/models/iris:predict", json={"instances": ROWS}, headers=bearer)
        assert by_token.status_code == 200, by_token.text
        # The tenant is pinned and the audience checked, as the shipped example says.
        for claims in ({"tid": "f8cdef31-a31e-4b4a-93e4-5f571e91255a"}, {"aud": "api://other"}):
            refused = client.post(
                "/v1/models/iris:predict",
                json={"instances": ROWS},
                headers={"Authorization": f"Bearer {azure.token(**claims)}"},
            )
            assert refused.status_code == 401, (claims, refused.text)

        if "scorer-gpu" in cluster.pods:
            samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
            pngs = [s["png"] for s in samples]
            body = {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [len(pngs)], "data": pngs}
                ]
            }
            digits = client.post(
                "/v2/models/digits/infer", json=body, headers={"api-key": azure.api_key}
            )
            assert digits.status_code == 200, digits.text
            predicted = digits.json()["outputs"][0]["data"]
            truth = [str(s["label"]) for s in samples]
            assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= len(truth) - 1
        else:
            unrouted = client.post(
                "/v2/models/digits/infer", json={}, headers={"api-key": azure.api_key}
            )
            assert unrouted.status_code == 404

        request_id = by_key.headers["x-request-id"]

    # Counts went to Redis, as the gateway's ACL user; Redis refuses anyone without it.
    redis = cluster.pods["redis"].port("redis")
    assert redis_cli(redis, "PING").startswith("NOAUTH")
    keys = redis_cli(redis, "DBSIZE", user="gateway", password=azure.redis_password)
    assert int(keys) > 0, keys
    gateway_user = {"user": "gateway", "password": azure.redis_password}
    assert "NOPERM" in redis_cli(redis, "SET", "other", "1", **gateway_user)
    for command in (
        ("CONFIG", "GET", "maxmemory"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
    ):
        assert redis_cli(redis, *command, **gateway_user).startswith(("ERR unknown", "NOPERM"))
    # Every strategy the policy may name runs under the gateway's ACL (its Lua scripts and
    # key patterns), through the real limiter with the password from the CSI file.
    asyncio.run(limiter_strategies(redis, cluster.pods["gateway"]))
    assert "no audit signing key" not in gateway.log.read_text()  # it signs its checkpoints
    # The metrics ports answer (what the PodMonitor scrapes), each pod its own.
    scraped = httpx.get(f"http://127.0.0.1:{gateway.port('metrics')}/metrics", timeout=5).text
    assert 'scoregate_requests_total{decision="allow",model="iris"' in scraped
    for name in ("scorer-cpu", "scorer-gpu"):
        if name in cluster.pods:
            url = f"http://127.0.0.1:{cluster.pods[name].port('metrics')}/metrics"
            assert "scoregate_scorer_" in httpx.get(url, timeout=5).text
    # The audit trail is in the store the config names: the gateway stops as Kubernetes
    # stops it (SIGTERM), ships its spool, and the store's copy verifies.
    cluster.stop_pod("gateway")
    with tempfile.TemporaryDirectory() as scratch:
        replicas = asyncio.run(stored(audit_container, azure.ca, Path(scratch)))
        (folder,) = replicas.values()
        records = [r for _, _, r in read_records([folder])]
        assert [r for r in records if r.get("request_id") == request_id]
        keys = asyncio.run(azure.public_keys())
        assert verify([folder], keys).ok
        assert records[-1]["type"] == "checkpoint"  # drained and signed on the way out
