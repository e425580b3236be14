"""Identity end to end: dev-issuer JWTs and API-key rotation through the running gateway."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.identity import lifecycle
from gateway.secretstore.localfile import LocalSecretStore
from tests.conftest import Stack, scoregate

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def mint(stack: Stack, *scopes: str, sub: str = "jwt-user") -> str:
    args = ["token", "mint", "--sub", sub, *[a for s in scopes for a in ("--scope", s)]]
    out = scoregate(*args, state=stack.state)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def predict(stack: Stack, **headers: str) -> httpx.Response:
    with stack.client() as client:
        return client.post("/v1/models/iris:predict", json={"instances": ROWS}, headers=headers)


def until(
    stack: Stack, headers: dict[str, str], status: int, timeout_s: float = 5.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = predict(stack, **headers)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_a_dev_issuer_jwt_is_accepted_scoped_and_audited(stack: Stack) -> None:
    token = mint(stack, "models:iris", sub="jwt-alice")
    r = until(stack, {"authorization": f"Bearer {token}"}, 200)  # the new key reaches the gateway
    assert r.status_code == 200 and r.json() == {"predictions": ["setosa"]}
    record = stack.audit_for(r.headers["x-request-id"])
    assert (record["credential"], record["subject"], record["key_id"]) == ("jwt", "jwt-alice", None)
    assert token not in stack.audit_file.read_text()


def test_jwt_without_the_models_scope_is_403(stack: Stack) -> None:
    token = mint(stack, "models:copy")
    r = until(stack, {"authorization": f"Bearer {token}"}, 403)
    assert r.status_code == 403


def test_tampered_or_ambiguous_credentials_are_401_and_audited(stack: Stack) -> None:
    token = mint(stack, "models:iris")
    until(stack, {"authorization": f"Bearer {token}"}, 200)
    head, body, sig = token.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    r = predict(stack, authorization=f"Bearer {tampered}")
    assert r.status_code == 401
    assert stack.audit_for(r.headers["x-request-id"])["reason"] in {
        "jwt_bad_signature",
        "jwt_invalid",
    }
    both = predict(stack, authorization=f"Bearer {token}", **{"api-key": stack.keys.iris})
    assert stack.audit_for(both.headers["x-request-id"])["reason"] == "credentials_ambiguous"
    basic = predict(stack, authorization="Basic YWxpY2U6cHc=")
    assert (
        stack.audit_for(basic.headers["x-request-id"])["reason"]
        == "authorization_scheme_unsupported"
    )


def test_key_rotation_overlap_then_revocation_without_a_refused_valid_client(stack: Stack) -> None:
    store = LocalSecretStore(stack.state / "secrets.json")
    first = asyncio.run(lifecycle.create(store, owner="rotating", scopes=["models:iris"]))
    assert until(stack, {"api-key": first.key}, 200).status_code == 200
    out = scoregate("keys", "rotate", first.generation.key_id, "--overlap", "3s", state=stack.state)
    assert out.returncode == 0, out.stderr
    second = out.stdout.strip()
    assert second.split("_")[1] == first.generation.key_id  # same client, new generation
    # During the overlap both generations are served, and no request is refused.
    assert until(stack, {"api-key": second}, 200).status_code == 200
    during = [predict(stack, **{"api-key": k}).status_code for k in (first.key, second) * 5]
    assert during == [200] * 10
    # After the overlap only the new one.
    old = until(stack, {"api-key": first.key}, 401, timeout_s=8)
    assert old.status_code == 401
    assert stack.audit_for(old.headers["x-request-id"])["reason"] == "api_key_expired"
    assert predict(stack, **{"api-key": second}).status_code == 200
    # Revocation makes the new generation fail within the refresh interval.
    assert scoregate("keys", "revoke", first.generation.key_id, state=stack.state).returncode == 0
    assert until(stack, {"api-key": second}, 401).status_code == 401
