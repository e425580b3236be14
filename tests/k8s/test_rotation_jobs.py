"""The rotation CronJobs run here as AKS would run them, once each, against the stand-ins.

The cpu overlay is rendered as an operator makes it (k8s/base/azure.env naming the API key
to rotate), its Deployments started as in test_rendered_cluster.py, and each CronJob's
jobTemplate runs once (`LocalCluster.run_job`): its rendered args, env and volumes, under
its pod's security context. Azure's host names are reached as in production: a CONNECT
proxy (tests/vault_proxy.py) tunnels `consumer-kv.vault.azure.net` and
`management.azure.com` to stand-ins whose certificates name them, so the bearer challenge
and certificate checks are the real ones. The Kubernetes API is a stand-in
(tests/kube_api_server.py) that authorizes with the rendered Role and RoleBinding and
knows the token projected for the job's ServiceAccount.

- rotate-api-key: the delivered key, read from the consumer's vault, scores through the
  gateway; the old key still does during the overlap; the job's output holds no key.
- rotate-pull-token: the Secret k8s/create-pull-secret.sh made is replaced with the
  token's other password, which the registry (ARM stand-in) accepts; the password it held
  still works; the job's requests were the ServiceAccount's, allowed by its Role alone.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from certs.authority import CertPaths, issue
from gateway.identity.keyring import secret_name
from tests.arm_server import ArmServer, Password
from tests.conftest import API_KEY_PATTERN, free_port
from tests.k8s.conftest import K8S, NAMESPACE, Rendered, render
from tests.k8s.installs import Install
from tests.k8s.pods import KubernetesStandIn, LocalCluster, models_image, world_readable_tmp
from tests.k8s.test_pull_secret import create_secret, shims
from tests.k8s.test_rendered_cluster import ROWS, Azure, azure
from tests.keyvault_server import KeyVaultServer
from tests.kube_api_server import KubeApiServer
from tests.vault_proxy import ConnectProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
__all__ = ["azure", "shims"]  # fixtures


def job_args(overlay: Rendered, name: str) -> list[str]:
    job = overlay.get("CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    return list(container["args"])


@pytest.fixture(scope="module")
def operator_overlay(azure: Azure, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The cpu overlay as an operator renders it: azure.env names the key to rotate (the
    one k8s/README.md has them create); every other value as shipped."""
    key_id = azure.api_key.split("_")[1]
    tree = tmp_path_factory.mktemp("operator") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("images"))
    env = tree / "base" / "azure.env"
    lines = env.read_text().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("rotateKeyId=")]
    lines[at] = f"rotateKeyId={key_id}"
    env.write_text("\n".join(lines) + "\n")
    docs = render(tree / "overlays" / "cpu")
    path = tree.parent / "cpu.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    rendered = Rendered("cpu", path, docs)
    assert job_args(rendered, "rotate-api-key")[2] == key_id
    return rendered


@pytest.fixture(scope="module")
def consumer_vault(operator_overlay: Rendered, pki: CertPaths) -> Iterator[KeyVaultServer]:
    """The consumer's own vault, under the host the job's --deliver-to names."""
    args = job_args(operator_overlay, "rotate-api-key")
    host = urlsplit(args[args.index("--deliver-to") + 1]).hostname
    assert host is not None and host.endswith(".vault.azure.net")
    issue(pki, "consumer-kv", server_names=(host, "localhost"), force=True)
    server = KeyVaultServer(str(pki.cert("consumer-kv")), str(pki.key("consumer-kv")), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def arm(pki: CertPaths) -> Iterator[ArmServer]:
    issue(pki, "management", server_names=("management.azure.com", "localhost"), force=True)
    server = ArmServer(pki.cert("management"), pki.key("management"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(
    operator_overlay: Rendered, consumer_vault: KeyVaultServer, arm: ArmServer
) -> Iterator[ConnectProxy]:
    args = job_args(operator_overlay, "rotate-api-key")
    host = urlsplit(args[args.index("--deliver-to") + 1]).hostname
    server = ConnectProxy(
        {f"{host}:443": consumer_vault.port, "management.azure.com:443": arm.port}
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kube(operator_overlay: Rendered, pki: CertPaths) -> Iterator[KubeApiServer]:
    """The API server: RBAC as rendered; a token per ServiceAccount, minted on demand."""
    server = KubeApiServer(pki.cert("gateway"), pki.key("gateway"))
    server.state.rbac = [d for d in operator_overlay.docs if d["kind"] in {"Role", "RoleBinding"}]
    server.start()
    yield server
    server.stop()


def token_for(kube: KubeApiServer) -> Any:
    def mint(namespace: str, account: str) -> str:
        token = secrets.token_urlsafe(24)
        kube.service_account_token(namespace, account, token)
        return token

    return mint


@pytest.fixture
def cluster(
    operator_overlay: Rendered,
    installs: dict[str, Install],
    azure: Azure,
    model_repo: Path,
    audit_container: str,
    proxy: ConnectProxy,
    kube: KubeApiServer,
) -> Iterator[LocalCluster]:
    root = world_readable_tmp()
    (gateway,) = operator_overlay.get("Deployment", "gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    stand_ins = azure.stand_ins(
        env["SCOREGATE_KEYVAULT_URL"], env["SCOREGATE_AUDIT_SINK"], audit_container
    )
    # Azure's own host names, reached under those names (local addresses go direct).
    stand_ins.gateway_env.update(proxy.env())
    local = LocalCluster(
        operator_overlay,
        root,
        installs,
        stand_ins,
        {"models-cpu": models_image(model_repo, root / "models-cpu")},
        kubernetes=KubernetesStandIn(kube.port, azure.ca, token_for(kube)),
    )
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def score(port: int, ca: Path, key: str) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    answer = httpx.post(
        f"https://127.0.0.1:{port}/v1/models/iris:predict",
        json={"instances": ROWS},
        headers={"api-key": key},
        verify=context,
        timeout=30,
    )
    return answer.status_code


def test_the_api_key_job_delivers_a_key_that_scores_and_no_one_sees_it(
    cluster: LocalCluster, azure: Azure, consumer_vault: KeyVaultServer, proxy: ConnectProxy
) -> None:
    cluster.start()
    cluster.wait_ready()
    port = cluster.pods["gateway"].port("https")
    old_key = azure.api_key
    key_id = old_key.split("_")[1]
    assert score(port, azure.ca, old_key) == 200

    done = cluster.run_job("rotate-api-key")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    # Nothing a person could read holds the key: stdout is one JSON document without it.
    assert not API_KEY_PATTERN.search(done.stdout + done.stderr)
    doc = json.loads(done.stdout)
    args = job_args(cluster.overlay, "rotate-api-key")
    assert doc["key_id"] == key_id and doc["delivered_to"] == args[args.index("--deliver-to") + 1]
    assert "key" not in doc
    host = urlsplit(doc["delivered_to"]).hostname
    assert f"{host}:443" in proxy.connects  # under the vault's real name

    # The consumer's secret holds the new key; it scores through the gateway once the
    # gateway's key refresh (2 s) has read the new generation from its vault.
    name = doc["delivered_to"].rsplit("/", 1)[-1]
    (delivered,) = consumer_vault.state.secrets[name]
    new_key = delivered.value
    assert API_KEY_PATTERN.fullmatch(new_key.encode()) and new_key != old_key
    deadline = time.monotonic() + 30
    while score(port, azure.ca, new_key) != 200:
        assert time.monotonic() < deadline, cluster.pods["gateway"].log_tail()
        time.sleep(0.5)
    # The previous generation stays valid for the overlap (48 h), then ends.
    assert score(port, azure.ca, old_key) == 200

    async def generations() -> list[Any]:
        store = azure.store()
        try:
            return list(await store.versions(secret_name(key_id)))
        finally:
            await store.close()

    old, new = asyncio.run(generations())
    assert new.expires_on is None  # made without an expiry, and a rotation keeps that
    assert old.expires_on is not None
    overlap = old.expires_on - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=47, minutes=58) < overlap <= dt.timedelta(hours=48)


def docker_login(secret: dict[str, Any], server: str) -> tuple[str, str]:
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    entry = config["auths"][server]
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return user, password


def test_the_pull_token_job_replaces_the_secret_before_expiry_and_the_old_password_still_works(
    cluster: LocalCluster,
    arm: ArmServer,
    kube: KubeApiServer,
    proxy: ConnectProxy,
    shims: Path,
    tmp_path: Path,
) -> None:
    args = job_args(cluster.overlay, "rotate-pull-token")
    token_id = args[args.index("--token-id") + 1]
    registry, token_name = token_id.split("/registries/")[1].split("/tokens/")
    server = f"{registry}.azurecr.io"
    # The token as k8s/README.md makes it: password1, expiring in 3 days by now; the Secret
    # as k8s/create-pull-secret.sh makes it from that password.
    first = secrets.token_urlsafe(32)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    arm.add_token(token_id, password1=Password(first, soon))
    made, _, applied = create_secret(
        shims,
        tmp_path,
        ACR_NAME=registry,
        ACR_USERNAME=token_name,
        ACR_PASSWORD=first,
        ACR_PASSWORD_NAME="password1",
        NAMESPACE=NAMESPACE,
    )
    assert made.returncode == 0, made.stderr
    kube.state.put_secret(yaml.safe_load(applied))

    done = cluster.run_job("rotate-pull-token")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    doc = json.loads(done.stdout)
    assert (doc["rotated"], doc["previous"]["password"], doc["password"]) == (
        True,
        "password1",
        "password2",
    )
    secret = kube.state.secrets[(NAMESPACE, "acr-pull")]
    user, password = docker_login(secret, server)
    assert user == token_name and arm.state.is_valid(token_id, "password2", password)
    assert password.encode() not in done.stdout + done.stderr
    assert arm.state.is_valid(token_id, "password1", first)  # never revoked
    assert secret["metadata"]["annotations"]["scoregate/acr-token-password"] == "password2"
    (generated,) = [r["body"] for r in arm.state.requests if r["method"] == "POST"]
    expiry = dt.datetime.fromisoformat(generated["expiry"])
    assert abs(expiry - dt.datetime.now(dt.UTC) - dt.timedelta(days=30)) < dt.timedelta(minutes=2)
    assert "management.azure.com:443" in proxy.connects
    # The job's API calls were its ServiceAccount's, a get and an update of acr-pull.
    account = "system:serviceaccount:scoregate:scoregate-pull-token-rotation"
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/acr-pull"
    assert kube.state.requests == [("get", path, account), ("update", path, account)]

    # The next day's run finds password2 thirty days from expiry: nothing to do.
    again = cluster.run_job("rotate-pull-token")
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert json.loads(again.stdout)["rotated"] is False
    assert kube.state.secrets[(NAMESPACE, "acr-pull")] == secret
