"""The image-pull secret's ACR token password renewed before it expires, no human involved.

Against stand-ins that speak the real wire protocols over TLS (tests/arm_server.py: ARM's
token and generateCredentials API, its long-running operation included;
tests/kube_api_server.py: the Secrets API with bearer tokens and RBAC), with the Role and
RoleBinding that k8s/base/rotate-pull-token.yaml ships. Each run checks what a node would
see: the Secret's docker config holds a password the registry accepts, and the password
it held before still works.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from azure.core.credentials import AccessToken

from certs.authority import CertPaths, issue
from gateway.ops import pulltoken
from gateway.ops.acrtokens import AcrTokens
from gateway.ops.kubeapi import InCluster, Secrets
from tests.arm_server import ArmServer, Password
from tests.conftest import ROOT, StaticCredential
from tests.keyvault_server import IDENTITY_HEADER, TOKEN, KeyVaultServer
from tests.kube_api_server import KubeApiServer
from tests.vault_proxy import ConnectProxy

NAMESPACE = "scoregate"
ACCOUNT = "scoregate-pull-token-rotation"
TOKEN_ID = (
    "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/scoregate-rg"
    "/providers/Microsoft.ContainerRegistry/registries/scoregateACR/tokens/scoregate-pull"
)
SERVER = "scoregateacr.azurecr.io"
SA_TOKEN = "sa-token-of-the-rotation-job"  # a stand-in's bearer token
MANIFEST = ROOT / "k8s" / "base" / "rotate-pull-token.yaml"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def shipped_rbac() -> list[dict[str, Any]]:
    """The Role and RoleBinding of k8s/base/rotate-pull-token.yaml, in the namespace."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    rbac = [d for d in docs if d["kind"] in {"Role", "RoleBinding"}]
    for doc in rbac:
        doc["metadata"]["namespace"] = NAMESPACE
    assert len(rbac) == 2
    return rbac


@pytest.fixture(scope="module")
def arm(pki: CertPaths) -> Iterator[ArmServer]:
    # The certificate names ARM's real host too, for the command line's proxied run.
    issue(pki, "arm", server_names=("management.azure.com", "localhost"), force=True)
    server = ArmServer(pki.cert("arm"), pki.key("arm"))
    server.state.retry_after = "0"
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kube(pki: CertPaths) -> Iterator[KubeApiServer]:
    server = KubeApiServer(pki.cert("gateway"), pki.key("gateway"))
    server.service_account_token(NAMESPACE, ACCOUNT, SA_TOKEN)
    server.start()
    yield server
    server.stop()


@dataclass
class Setup:
    arm: ArmServer
    kube: KubeApiServer
    account_dir: Path
    password1: str
    password2: str

    def secret(self) -> dict[str, Any]:
        return self.kube.state.secrets[(NAMESPACE, "acr-pull")]

    def docker_login(self) -> tuple[str, str]:
        """What a kubelet pulling with the Secret would send: user and password."""
        config = json.loads(base64.b64decode(self.secret()["data"][".dockerconfigjson"]))
        entry = config["auths"][SERVER]
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        assert (entry["username"], entry["password"]) == (user, password)
        return user, password

    def valid(self, name: str, value: str) -> bool:
        return self.arm.state.is_valid(TOKEN_ID, name, value)

    def generations(self) -> list[dict[str, Any]]:
        return [
            r["body"]
            for r in self.arm.state.requests
            if r["method"] == "POST" and r["path"].endswith("/generateCredentials")
        ]

    def writes(self) -> list[tuple[str, str, str]]:
        return [r for r in self.kube.state.requests if r[0] != "get"]


def seed_secret(
    kube: KubeApiServer, value: str, *, user: str = "scoregate-pull", **notes: str
) -> None:
    """The Secret as k8s/create-pull-secret.sh leaves it (annotations as given)."""
    config = {
        "auths": {
            SERVER: {
                "username": user,
                "password": value,
                "auth": base64.b64encode(f"{user}:{value}".encode()).decode(),
            }
        }
    }
    kube.state.put_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "acr-pull", "namespace": NAMESPACE, "annotations": notes},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }
    )


@pytest.fixture
def setup(arm: ArmServer, kube: KubeApiServer, pki: CertPaths, tmp_path: Path) -> Setup:
    """A token whose password1 (in the Secret) expires in 5 days; password2 exists too."""
    arm.state.requests.clear()
    arm.state.fail_generate = None
    kube.state.requests.clear()
    kube.state.fail.clear()
    kube.state.rbac = shipped_rbac()
    kube.state.secrets.clear()
    first, second = "first-password-value", "second-password-value"
    arm.add_token(
        TOKEN_ID,
        password1=Password(first, now() + dt.timedelta(days=5)),
        password2=Password(second, now() + dt.timedelta(days=40)),
    )
    seed_secret(kube, first, **{pulltoken.ANNOTATION_PASSWORD: "password1"})
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(SA_TOKEN)
    (account / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    (account / "namespace").write_text(NAMESPACE)
    return Setup(arm, kube, account, first, second)


def request(**changes: Any) -> pulltoken.Request:
    options: dict[str, Any] = {
        "token_id": TOKEN_ID,
        "secret": "acr-pull",
        "lifetime": "30d",
        "renew_before": "10d",
    }
    return pulltoken.Request.parse(**{**options, **changes})


class RecordingCredential(StaticCredential):
    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(now().timestamp()) + 3600)


@pytest.fixture
async def clients(
    setup: Setup, pki: CertPaths
) -> AsyncIterator[tuple[AcrTokens, Secrets, RecordingCredential]]:
    credential = RecordingCredential()
    tokens = AcrTokens(
        setup.arm.url, credential, poll_interval_s=0.05, connection_verify=str(pki.ca_cert)
    )
    where = InCluster.from_environment(
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(setup.kube.port)},
        setup.account_dir,
    )
    secrets = Secrets(where)
    yield tokens, secrets, credential
    await secrets.close()
    await tokens.close()


async def test_a_password_near_expiry_is_replaced_by_the_other_and_the_old_one_stays_valid(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential]
) -> None:
    tokens, secrets, credential = clients
    before = setup.secret()
    started = now()
    outcome = await pulltoken.rotate(tokens, secrets, request())
    assert (outcome.rotated, outcome.previous, outcome.password) == (True, "password1", "password2")
    # ARM was asked for password2 with a 30-day expiry, through the long-running operation.
    (body,) = setup.generations()
    assert body["tokenId"] == TOKEN_ID and body["name"] == "password2"
    expiry = dt.datetime.fromisoformat(body["expiry"])
    assert abs(expiry - (started + dt.timedelta(days=30))) < dt.timedelta(seconds=30)
    polls = [r for r in setup.arm.state.requests if "/operationStatuses/" in r["path"]]
    assert len(polls) == 2 and all(r["api_version"] == "2023-07-01" for r in polls)
    assert credential.scopes and set(credential.scopes) == {(f"{setup.arm.url}/.default",)}
    # The Secret: a valid dockerconfigjson whose password the registry takes.
    after = setup.secret()
    kubernetes_validate.validate(after, kubernetes_validate.latest_version(), strict=True)
    assert after["type"] == "kubernetes.io/dockerconfigjson"
    user, password = setup.docker_login()
    assert user == "scoregate-pull" and setup.valid("password2", password)
    assert password not in (setup.password1, setup.password2)
    annotations = after["metadata"]["annotations"]
    assert annotations[pulltoken.ANNOTATION_PASSWORD] == "password2"
    assert annotations[pulltoken.ANNOTATION_EXPIRY] == body["expiry"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    # The password the Secret held is untouched: a node mid-pull with it still succeeds.
    assert setup.valid("password1", setup.password1)
    assert not setup.valid("password2", setup.password2)  # the unused one was replaced
    assert [w[0] for w in setup.writes()] == ["update"]
    # The outcome says what happened and never holds the value.
    doc = outcome.as_dict()
    assert password not in json.dumps(doc) and password not in outcome.summary()
    assert doc["previous"]["password"] == "password1" and doc["password"] == "password2"


async def test_nothing_is_generated_or_written_while_the_password_is_far_from_expiry(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential]
) -> None:
    tokens, secrets, _ = clients
    setup.arm.state.tokens[TOKEN_ID.lower()].passwords["password1"].expiry = now() + dt.timedelta(
        days=20
    )
    version = setup.secret()["metadata"]["resourceVersion"]
    outcome = await pulltoken.rotate(tokens, secrets, request())
    assert outcome.rotated is False and outcome.password == "password1"
    assert "20d left" in outcome.reason
    assert setup.generations() == [] and setup.writes() == []
    assert setup.secret()["metadata"]["resourceVersion"] == version
    assert setup.docker_login()[1] == setup.password1


async def test_successive_rotations_alternate_the_two_passwords(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential]
) -> None:
    tokens, secrets, _ = clients
    held = []
    for _ in range(3):
        outcome = await pulltoken.rotate(tokens, secrets, request(force=True))
        _, password = setup.docker_login()
        assert setup.valid(outcome.password or "", password)
        held.append((outcome.password, password))
        # The one held before this run is still valid after it.
        if len(held) > 1:
            assert setup.valid(str(held[-2][0]), held[-2][1])
    assert [name for name, _ in held] == ["password2", "password1", "password2"]
    assert [g["name"] for g in setup.generations()] == ["password2", "password1", "password2"]


def deny_update(setup: Setup) -> None:
    """A Role without `update` (a cluster whose RBAC drifted from the manifest)."""
    for doc in setup.kube.state.rbac:
        if doc["kind"] == "Role":
            doc["rules"][0]["verbs"] = ["get"]


@pytest.mark.parametrize(
    ("break_write", "answered"),
    [
        (lambda s: s.kube.state.fail.update({"update": 500}), "500"),
        (deny_update, "403"),
        # Someone else replaced the Secret between this run's read and its write.
        (lambda s: s.kube.state.fail.update({"update": 409}), "409"),
    ],
    ids=["api-server-error", "rbac-refuses-update", "conflict"],
)
async def test_a_failed_secret_write_leaves_the_secret_holding_a_valid_password(
    setup: Setup,
    clients: tuple[AcrTokens, Secrets, RecordingCredential],
    break_write: Any,
    answered: str,
) -> None:
    tokens, secrets, _ = clients
    before = setup.secret()
    break_write(setup)
    with pytest.raises(pulltoken.Failed) as failed:
        await pulltoken.rotate(tokens, secrets, request())
    assert failed.value.code == "secret_not_replaced"
    assert answered in str(failed.value) and "still holds password1" in str(failed.value)
    assert failed.value.extra["secret_holds"] == "password1"
    # password2 was generated, but the Secret and its password are as they were: never
    # revoked before the Secret is replaced, so every pull keeps working.
    assert [g["name"] for g in setup.generations()] == ["password2"]
    assert setup.secret() == before
    assert setup.valid("password1", setup.docker_login()[1])
    # Once the API server takes the write again, the next run completes the rotation.
    setup.kube.state.fail.clear()
    setup.kube.state.rbac = shipped_rbac()
    outcome = await pulltoken.rotate(tokens, secrets, request())
    assert outcome.rotated and outcome.password == "password2"
    assert setup.valid("password2", setup.docker_login()[1])
    assert setup.valid("password1", setup.password1)


async def test_arm_failing_to_generate_changes_nothing(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential]
) -> None:
    tokens, secrets, _ = clients
    before = setup.secret()
    setup.arm.state.fail_generate = 400
    with pytest.raises(pulltoken.Failed) as failed:
        await pulltoken.rotate(tokens, secrets, request())
    assert failed.value.code == "arm_failed" and "400" in str(failed.value)
    assert setup.secret() == before and setup.writes() == []
    assert setup.valid("password1", setup.password1) and setup.valid("password2", setup.password2)


async def test_a_secret_that_does_not_say_which_password_it_holds_is_left_alone(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential]
) -> None:
    """Both passwords exist and the Secret is not annotated: generating the one it holds
    would break pulls until the write, so the run refuses before generating anything."""
    tokens, secrets, _ = clients
    seed_secret(setup.kube, setup.password1)
    with pytest.raises(pulltoken.Refused) as refused:
        await pulltoken.rotate(tokens, secrets, request())
    assert refused.value.code == "secret_password_unknown"
    assert "annotate secret acr-pull scoregate/acr-token-password=password1" in str(refused.value)
    assert setup.generations() == [] and setup.writes() == []
    # With one password on the token, that one is the Secret's: the other is generated.
    del setup.arm.state.tokens[TOKEN_ID.lower()].passwords["password2"]
    outcome = await pulltoken.rotate(tokens, secrets, request())
    assert (outcome.previous, outcome.password) == ("password1", "password2")
    assert setup.valid("password1", setup.password1)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda s: s.kube.state.secrets.clear(), "secret_not_found"),
        (lambda s: s.arm.state.tokens.clear(), "token_not_found"),
        (
            lambda s: seed_secret(s.kube, "x", user="a-service-principal"),
            "secret_holds_other_credentials",
        ),
        (
            lambda s: setattr(s.arm.state.tokens[TOKEN_ID.lower()], "status", "disabled"),
            "token_disabled",
        ),
        (
            lambda s: seed_secret(s.kube, "x", **{pulltoken.ANNOTATION_PASSWORD: "password3"}),
            "secret_annotation_invalid",
        ),
    ],
    ids=["no-secret", "no-token", "another-user", "token-disabled", "bad-annotation"],
)
async def test_what_is_not_ours_to_rotate_is_refused_before_anything_is_generated(
    setup: Setup,
    clients: tuple[AcrTokens, Secrets, RecordingCredential],
    change: Any,
    code: str,
) -> None:
    tokens, secrets, _ = clients
    change(setup)
    with pytest.raises(pulltoken.Refused) as refused:
        await pulltoken.rotate(tokens, secrets, request(force=True))
    assert refused.value.code == code
    assert setup.generations() == [] and setup.writes() == []


async def test_arm_and_the_api_server_refuse_requests_without_their_bearer_token(
    setup: Setup, clients: tuple[AcrTokens, Secrets, RecordingCredential], pki: CertPaths
) -> None:
    _, secrets, _ = clients
    wrong = AcrTokens(
        setup.arm.url, RecordingCredential("not-the-token"), connection_verify=str(pki.ca_cert)
    )
    try:
        with pytest.raises(pulltoken.Failed) as failed:
            await pulltoken.rotate(wrong, secrets, request(force=True))
    finally:
        await wrong.close()
    assert "401" in str(failed.value) and setup.arm.state.unauthenticated > 0
    tokens, _, _ = clients
    (setup.account_dir / "token").write_text("a-token-the-api-server-does-not-know")
    with pytest.raises(pulltoken.Failed) as failed:
        await pulltoken.rotate(tokens, secrets, request(force=True))
    assert "401" in str(failed.value) and failed.value.code == "kubernetes_failed"
    assert setup.generations() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token_id": "/subscriptions/x/tokens/y"}, "not an ACR token id"),
        ({"lifetime": "10d", "renew_before": "10d"}, "shorter than --lifetime"),
        ({"lifetime": "400d"}, "at most 366d"),
        ({"lifetime": "a month"}, "invalid duration"),
        ({"arm_endpoint": "https://arm.example.com"}, "--arm-endpoint must be one of"),
        ({"login_server": "other.azurecr.io"}, "is not registry scoregateACR's"),
        ({"login_server": "scoregateacr.example.com"}, "is not registry scoregateACR's"),
        ({"secret": "Not_A_Name"}, "is not a Secret name"),
    ],
)
def test_arguments_are_checked_before_anything_is_sent(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(pulltoken.InvalidRequest, match=message):
        request(**changes)


def test_the_defaults_are_azure_public_cloud_and_the_in_cluster_path() -> None:
    parsed = request()
    assert parsed.arm_endpoint == "https://management.azure.com"
    assert parsed.login_server == SERVER
    assert parsed.service_account_dir == Path("/var/run/secrets/kubernetes.io/serviceaccount")
    assert (parsed.lifetime, parsed.renew_before) == (dt.timedelta(days=30), dt.timedelta(days=10))


# -- the command line, as the CronJob runs it -------------------------------------------------
def run_cli(
    setup: Setup,
    vault: KeyVaultServer,
    proxy: ConnectProxy,
    pki: CertPaths,
    *args: str,
    **changes: str,
) -> subprocess.CompletedProcess[str]:
    """`scoregate registry rotate-pull-token` in its own process, with what the pod has:
    the API server's address (KUBERNETES_SERVICE_*), an Azure identity (here the managed-
    identity endpoint of the stand-in), and management.azure.com reached under its real
    name (a CONNECT proxy to the stand-in, whose certificate names it)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(setup.account_dir.parent),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(setup.kube.port),
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(pki.ca_cert),
        **proxy.env(),
        **changes,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", "registry", "rotate-pull-token", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def arm_proxy(arm: ArmServer) -> Iterator[ConnectProxy]:
    server = ConnectProxy({"management.azure.com:443": arm.port})
    server.start()
    yield server
    server.stop()


def test_the_command_rotates_with_workload_credentials_and_reports_json(
    setup: Setup, vault: KeyVaultServer, arm_proxy: ConnectProxy, pki: CertPaths
) -> None:
    base = ["--token-id", TOKEN_ID, "--secret", "acr-pull", "--json"]
    base += ["--service-account-dir", str(setup.account_dir)]
    done = run_cli(setup, vault, arm_proxy, pki, *base)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["rotated"], doc["password"], doc["secret"]) == (
        True,
        "password2",
        "scoregate/acr-pull",
    )
    _, password = setup.docker_login()
    assert setup.valid("password2", password) and setup.valid("password1", setup.password1)
    assert password not in done.stdout + done.stderr
    assert "management.azure.com:443" in arm_proxy.connects
    # Again: not due any more (password2 has 30 days), exit 0, nothing generated.
    again = run_cli(setup, vault, arm_proxy, pki, *base)
    assert again.returncode == 0 and json.loads(again.stdout)["rotated"] is False
    assert len(setup.generations()) == 1
    # Refused (1), usage (2) and a failing service (3), each as a JSON document.
    setup.kube.state.secrets.clear()
    refused = run_cli(setup, vault, arm_proxy, pki, *base)
    assert refused.returncode == 1 and json.loads(refused.stdout)["code"] == "secret_not_found"
    usage = run_cli(setup, vault, arm_proxy, pki, *base, "--lifetime", "5d")
    assert usage.returncode == 2 and json.loads(usage.stdout)["code"] == "invalid_argument"
    seed_secret(setup.kube, setup.password1, **{pulltoken.ANNOTATION_PASSWORD: "password1"})
    setup.arm.state.fail_generate = 400
    failed = run_cli(setup, vault, arm_proxy, pki, *base, "--force")
    assert failed.returncode == 3 and json.loads(failed.stdout)["code"] == "arm_failed"
    outside = run_cli(setup, vault, arm_proxy, pki, *base, KUBERNETES_SERVICE_HOST="")
    assert outside.returncode == 2 and json.loads(outside.stdout)["code"] == "not_in_cluster"
