"""API keys (SECURITY-CATALOG.md): one test per line, end to end where behaviour is."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from pathlib import Path

import pytest

from gateway.errors import Unauthenticated
from gateway.identity import apikeys, lifecycle
from gateway.identity.keyring import KeyRing
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import utcnow
from tests.conftest import Stack, scoregate

ROWS = [[5.1, 3.5, 1.4, 0.2]]


def test_keys_are_stored_as_digests_only_and_shown_once(tmp_path: Path) -> None:
    created = scoregate(
        "keys", "create", "--owner", "alice", "--scope", "models:iris", state=tmp_path
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert apikeys.parse(key) is not None
    assert "not shown again" in created.stderr
    store_text = (tmp_path / "secrets.json").read_text()
    assert key not in store_text
    assert key.split("_")[2] not in store_text  # not even the secret part
    assert apikeys.digest(key) in store_text
    listed = scoregate("keys", "list", "--json", state=tmp_path)
    assert key.split("_")[2] not in listed.stdout
    assert json.loads(listed.stdout.splitlines()[0])["state"] == "active"


async def test_bad_checksum_is_rejected_before_any_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = KeyRing(LocalSecretStore(tmp_path / "s.json"), refresh_interval_s=1)
    key = apikeys.new_key(apikeys.new_key_id())
    tampered = key[:-1] + ("0" if key[-1] != "0" else "1")

    def no_lookup(key_id: str) -> tuple[()]:
        raise AssertionError("looked up a key with a bad checksum")

    monkeypatch.setattr(ring, "generations", no_lookup)
    with pytest.raises(Unauthenticated) as excinfo:
        apikeys.authenticate(tampered, ring, utcnow())
    assert excinfo.value.reason == "api_key_malformed"


async def test_wrong_secret_for_known_key_id_is_401_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalSecretStore(tmp_path / "s.json")
    issued = await lifecycle.create(store, owner="a", scopes=["models:iris"])
    ring = KeyRing(store, refresh_interval_s=1)
    await ring.refresh()
    compares: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        compares.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", counting)
    same_id_other_secret = apikeys.new_key(issued.generation.key_id)
    with pytest.raises(Unauthenticated) as wrong:
        apikeys.authenticate(same_id_other_secret, ring, utcnow())
    assert wrong.value.reason == "api_key_wrong_secret"
    # Digests are compared with hmac.compare_digest, and an unknown id costs a compare too.
    assert len(compares) == 1
    with pytest.raises(Unauthenticated) as unknown:
        apikeys.authenticate(apikeys.new_key(apikeys.new_key_id()), ring, utcnow())
    assert unknown.value.reason == "api_key_unknown"
    assert len(compares) == 2


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("which", "reason"), [("revoked", "api_key_revoked"), ("expired", "api_key_expired")]
)
def test_revoked_or_expired_key_is_401_and_audited(stack: Stack, which: str, reason: str) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": getattr(stack.keys, which)},
        )
    assert r.status_code == 401
    assert r.json()["error"] == "missing or invalid credentials"  # same for every cause
    record = stack.audit_for(r.headers["x-request-id"])
    # The right secret of a dead generation: the record names the generation (who still
    # sends it, for the reviewer's key usage), the client learns nothing more.
    assert (record["reason"], record["decision"]) == (reason, "deny")
    assert record["key_id"] == stack.keys.ids[which]
    assert record["key_version"] and record["subject"] == f"test-{which}"


@pytest.mark.e2e
def test_revocation_takes_effect_without_restart(stack: Stack) -> None:
    store = LocalSecretStore(stack.state / "secrets.json")
    issued = asyncio.run(lifecycle.create(store, owner="temp", scopes=["models:iris"]))
    with stack.client() as client:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # picked up by the background refresh
            r = client.post(
                "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": issued.key}
            )
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200
        revoked = scoregate("keys", "revoke", issued.generation.key_id, state=stack.state)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = client.post(
                "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": issued.key}
            )
            if r.status_code == 401:
                break
            time.sleep(0.1)
    assert r.status_code == 401
    assert stack.audit_for(r.headers["x-request-id"])["reason"] == "api_key_revoked"


@pytest.mark.e2e
@pytest.mark.parametrize("param", ["api-key", "api_key", "token", "access_token"])
def test_credentials_in_query_string_are_rejected_and_never_logged(
    stack: Stack, param: str
) -> None:
    with stack.client() as client:
        r = client.post(
            f"/v1/models/iris:predict?{param}={stack.keys.iris}", json={"instances": ROWS}
        )
    assert (r.status_code, r.json()["code"]) == (400, "credentials_in_query")
    record = stack.audit_for(r.headers["x-request-id"])
    assert record["reason"] == "credentials_in_query"
    assert stack.keys.iris not in stack.audit_file.read_text()
    assert stack.keys.iris not in (stack.state / "logs" / "gateway.log").read_text()
