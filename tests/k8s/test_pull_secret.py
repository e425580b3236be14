"""k8s/create-pull-secret.sh: the ACR pull secret, made without showing the password.

The script runs with a PATH holding only logging shims: every external program it starts
is recorded with its arguments (a command missing from the shims fails the run). kubectl
`create --dry-run=client` and `annotate --local` are the real kubectl; `kubectl apply` is
captured instead of reaching a cluster.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s.conftest import K8S, run, tool

SCRIPT = K8S / "create-pull-secret.sh"
PASSWORD = "pw-" + "Zx9'q\"\\ $HOME %s `id` ;&|"  # quotes, escapes, shell and format syntax

SHIM = """#!{python}
import json, os, sys
real = {real!r}
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if os.path.basename(sys.argv[0]) == "kubectl" and "apply" in sys.argv[1:]:
    with open(os.environ["APPLIED"], "wb") as out:
        out.write(sys.stdin.buffer.read())
    print("secret/acr-pull configured")
    sys.exit(0)
os.execv(real, [real, *sys.argv[1:]])
"""


@pytest.fixture
def shims(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    reals = {"kubectl": str(tool("kubectl"))}
    for name in ("base64", "tr"):
        found = shutil.which(name)
        assert found, name
        reals[name] = found
    for name, real in reals.items():
        shim = directory / name
        shim.write_text(SHIM.format(python=sys.executable, real=real))
        shim.chmod(0o755)
    return directory


def create_secret(shims: Path, tmp_path: Path, **env: str) -> tuple[Any, list[list[str]], bytes]:
    log, applied = tmp_path / "argv.log", tmp_path / "applied.yaml"
    result = run(
        shutil.which("bash") or "/bin/bash",
        SCRIPT,
        env={
            "PATH": str(shims),
            "SHIM_LOG": str(log),
            "APPLIED": str(applied),
            "KUBECONFIG": str(tmp_path / "no-cluster"),
            "HOME": str(tmp_path),
            **env,
        },
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls, applied.read_bytes() if applied.exists() else b""


def test_script_is_shellcheck_clean() -> None:
    result = run(tool("shellcheck"), "--severity=style", "--shell=bash", SCRIPT)
    assert result.returncode == 0, result.stdout


def test_pull_secret_is_well_formed_and_the_password_is_never_shown(
    shims: Path, tmp_path: Path
) -> None:
    result, calls, applied = create_secret(
        shims,
        tmp_path,
        ACR_NAME="ScoregateACR",
        ACR_USERNAME="scoregate-pull",
        ACR_PASSWORD=PASSWORD,
        NAMESPACE="scoregate",
    )
    assert result.returncode == 0, result.stderr
    # Not on any command line, not in anything printed.
    secret_forms = (PASSWORD, json.dumps(PASSWORD)[1:-1], "Zx9")
    for call in calls:
        for form in secret_forms:
            assert all(form not in arg for arg in call), call
    for form in secret_forms:
        assert form not in result.stdout and form not in result.stderr
    assert result.stdout.strip() == "secret/acr-pull configured"
    programs = [call[0] for call in calls]
    assert programs.count("kubectl") == 3 and set(programs) <= {"kubectl", "base64", "tr"}
    (create,) = [c for c in calls if c[:2] == ["kubectl", "create"]]
    assert "--from-file=.dockerconfigjson=/dev/stdin" in create
    assert "--dry-run=client" in create
    # What reached `kubectl apply`: a valid Secret of the docker-config type.
    secret = yaml.safe_load(applied)
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"] == {
        "name": "acr-pull",
        "namespace": "scoregate",
        # Which of the token's passwords it holds, for the rotation job (password1 unless
        # ACR_PASSWORD_NAME says otherwise).
        "annotations": {"scoregate/acr-token-password": "password1"},
    }
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    server = "scoregateacr.azurecr.io"
    assert list(config["auths"]) == [server]
    entry = config["auths"][server]
    assert entry["username"] == "scoregate-pull"
    assert entry["password"] == PASSWORD
    assert base64.b64decode(entry["auth"]).decode() == f"scoregate-pull:{PASSWORD}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACR_USERNAME": "u", "ACR_PASSWORD": "p"}, "ACR_NAME is not set"),
        ({"ACR_NAME": "scoregateacr", "ACR_PASSWORD": "p"}, "ACR_USERNAME is not set"),
        ({"ACR_NAME": "scoregateacr", "ACR_USERNAME": "u"}, "ACR_PASSWORD is not set"),
        (
            {"ACR_NAME": "evil.example/x", "ACR_USERNAME": "u", "ACR_PASSWORD": "p"},
            "ACR_NAME must be 5 to 50 letters or digits",
        ),
        (
            {
                "ACR_NAME": "scoregateacr",
                "ACR_USERNAME": "u",
                "ACR_PASSWORD": "p",
                "NAMESPACE": "A b",
            },
            "NAMESPACE is not a valid namespace name",
        ),
        (
            {
                "ACR_NAME": "scoregateacr",
                "ACR_USERNAME": "u",
                "ACR_PASSWORD": "p",
                "ACR_PASSWORD_NAME": "password3",
            },
            "ACR_PASSWORD_NAME must be password1 or password2",
        ),
    ],
)
def test_missing_or_malformed_settings_stop_before_kubectl(
    shims: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result, calls, applied = create_secret(shims, tmp_path, **env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"create-pull-secret: {message}"
    assert calls == [] and applied == b""


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)


def test_the_password_name_reaches_the_annotation(shims: Path, tmp_path: Path) -> None:
    result, _, applied = create_secret(
        shims,
        tmp_path,
        ACR_NAME="scoregateacr",
        ACR_USERNAME="scoregate-pull",
        ACR_PASSWORD=PASSWORD,
        ACR_PASSWORD_NAME="password2",
    )
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load(applied)
    assert secret["metadata"]["annotations"] == {"scoregate/acr-token-password": "password2"}
