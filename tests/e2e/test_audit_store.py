"""The audit trail in Blob Storage (Azurite), end to end through gateway processes.

The gateway's DefaultAzureCredential gets its token from the managed-identity endpoint of
the Key Vault stand-in (a token shaped as Entra ID issues them for Blob Storage), and
reaches Azurite over TLS with the test CA; `scoregate audit verify` reads the container
back the same way. Counted in every test: records stored == requests answered, each once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from certs.authority import CertPaths
from gateway.audit.review import read_records
from gateway.dev.issuer import mint
from gateway.identity.issuers import load_issuers
from gateway.secretstore.localfile import LocalSecretStore
from tests.azurite import AzuriteServer, container_client, stored
from tests.conftest import ROOT, Stack, free_port, scoregate
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def store_env(url: str, vault: KeyVaultServer, stack: Stack, **extra: str) -> dict[str, str]:
    return {
        "SCOREGATE_AUDIT_SINK": url,
        "SCOREGATE_AUDIT_SHIP_INTERVAL_S": "0.2",
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(stack.ca),
        **extra,
    }


def stored_records(url: str, ca: Path, into: Path) -> list[dict[str, Any]]:
    replicas = asyncio.run(stored(url, ca, into))
    return [record for folder in replicas.values() for _, _, record in read_records([folder])]


def score(base: str, ca: Path, key: str, count: int, workers: int = 16) -> list[httpx.Response]:
    """``count`` scored requests from ``workers`` threads at once."""
    from serving.tls import client_context

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, verify=client_context(ca), timeout=20) as client:
            return client.post(
                "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key}
            )

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def answered(responses: list[httpx.Response]) -> set[str]:
    return {r.headers["x-request-id"] for r in responses}


def assert_once_each(records: list[dict[str, Any]], ids: set[str]) -> None:
    counts = Counter(r["request_id"] for r in records if r.get("type") == "request")
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)  # each answered one, once
    assert set(counts) == ids and max(counts.values()) == 1  # and nothing else, no double


def stop_gracefully(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def verify_cli(url: str, stack: Stack, vault: KeyVaultServer) -> Any:
    env = {
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(stack.ca),
        "SCOREGATE_LOCAL_STORE_PATH": str(stack.state / "secrets.json"),
    }
    return scoregate("audit", "verify", url, state=stack.state, **env)


def test_200_concurrent_requests_are_200_records_in_the_container_and_verify(
    stack: Stack,
    vault: KeyVaultServer,
    audit_container: str,
    spawn_gateway: Any,
    tmp_path: Path,
) -> None:
    gateway = spawn_gateway(**store_env(audit_container, vault, stack))
    responses = score(gateway.base_url, stack.ca, stack.keys.iris, 200)
    assert [r.status_code for r in responses] == [200] * 200
    stop_gracefully(gateway.proc)  # SIGTERM: drained, signed, shipped before exit
    records = stored_records(audit_container, stack.ca, tmp_path / "store")
    assert_once_each(records, answered(responses))
    assert records[-1]["type"] == "checkpoint"  # the drain's closing checkpoint
    result = verify_cli(audit_container, stack, vault)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: " in result.stdout and "chain intact" in result.stdout
    assert not any(gateway.state.glob("audit/*.jsonl"))  # nothing went to the file sink


@pytest.fixture
def own_azurite(pki: CertPaths, tmp_path: Path) -> Iterator[AzuriteServer]:
    server = AzuriteServer(pki.cert("gateway"), pki.key("gateway"), free_port(), tmp_path / "az")
    server.start()
    yield server
    server.stop()


def test_azurite_stopped_mid_run_and_restarted_every_record_arrives_once(
    stack: Stack,
    vault: KeyVaultServer,
    own_azurite: AzuriteServer,
    spawn_gateway: Any,
    tmp_path: Path,
) -> None:
    url = own_azurite.container_url("audit")

    async def create() -> None:
        async with container_client(url, stack.ca) as container:
            await container.create_container()

    asyncio.run(create())
    gateway = spawn_gateway(**store_env(url, vault, stack))
    before = score(gateway.base_url, stack.ca, stack.keys.iris, 50)
    own_azurite.stop()  # the store goes away: the spool takes the records
    during = score(gateway.base_url, stack.ca, stack.keys.iris, 80)
    own_azurite.start()
    after = score(gateway.base_url, stack.ca, stack.keys.iris, 50)
    responses = before + during + after
    assert [r.status_code for r in responses] == [200] * 180  # served throughout
    stop_gracefully(gateway.proc)
    assert_once_each(stored_records(url, stack.ca, tmp_path / "store"), answered(responses))
    assert verify_cli(url, stack, vault).returncode == 0


def test_gateway_killed_mid_run_its_spool_is_shipped_by_the_next_start(
    stack: Stack,
    vault: KeyVaultServer,
    audit_container: str,
    spawn_gateway: Any,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"  # the pod's volume: it outlives the container
    env = store_env(
        audit_container,
        vault,
        stack,
        SCOREGATE_AUDIT_SPOOL_DIR=str(spool),
        # Ship rarely: most records are still in the spool when the process dies.
        SCOREGATE_AUDIT_SHIP_INTERVAL_S="30",
    )
    first = spawn_gateway(**env)
    killed = score(first.base_url, stack.ca, stack.keys.iris, 120)
    assert [r.status_code for r in killed] == [200] * 120
    first.proc.send_signal(signal.SIGKILL)  # no drain, no shipping, no checkpoint
    first.proc.wait(timeout=10)
    second = spawn_gateway(**env)  # the container restarted on the same volume
    later = score(second.base_url, stack.ca, stack.keys.iris, 30)
    stop_gracefully(second.proc)
    records = stored_records(audit_container, stack.ca, tmp_path / "store")
    assert_once_each(records, answered(killed + later))
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(seqs) + 1))  # one chain, carried across the restart
    result = verify_cli(audit_container, stack, vault)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_claim_json_cannot_encode_is_answered_and_audited_and_the_writer_lives(
    stack: Stack,
) -> None:
    """A lone UTF-16 surrogate (JavaScript's JSON.stringify emits one; an issuer may sign
    it into `sub`): the record is sealed with U+FFFD and says so."""
    (issuer,) = [i for i in load_issuers(ROOT / "policies" / "issuers.toml") if i.name == "dev"]
    token = asyncio.run(
        mint(
            LocalSecretStore(stack.state / "secrets.json"),
            issuer,
            subject="lone-\ud800-surrogate",
            scopes=["models:iris"],
            ttl_s=300,
        )
    )
    with stack.client() as client:
        deadline = time.monotonic() + 5  # a signing key minted just now: the next refresh
        while True:
            r = client.post(
                "/v1/models/iris:predict",
                json={"instances": ROWS},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, (r.text, stack.audit_for(r.headers["x-request-id"]))
        record = stack.audit_for(r.headers["x-request-id"])
        assert record["sanitized"] is True and record["subject"].endswith("lone-\ufffd-surrogate")
        # The writer lives: the next request is answered and recorded, the replica live.
        again = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
        assert again.status_code == 200
        stack.audit_for(again.headers["x-request-id"])
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json()["background_tasks_alive"] is True


def test_a_key_sent_as_request_id_or_in_the_path_never_reaches_the_trail(stack: Stack) -> None:
    key = stack.keys.iris
    with stack.client() as client:
        as_id = client.get("/v2/unknown", headers={"x-request-id": key})
        in_path = client.get(f"/v2/models/{key}/ready", headers={"api-key": key})
    by_id = stack.audit_for(as_id.headers["x-request-id"])
    by_path = stack.audit_for(in_path.headers["x-request-id"])
    assert by_id["client_request_id"] == "[redacted]"
    assert by_path["path"] == "/v2/models/[redacted]/ready"
    assert key.encode() not in stack.audit_file.read_bytes()


def test_health_probes_are_counted_not_recorded_one_by_one(stack: Stack) -> None:
    with stack.client() as client:
        probes = [client.get("/v2/health/live") for _ in range(300)]
    assert all(p.status_code == 200 for p in probes)
    recorded = {r.get("request_id") for r in stack.audit_records()}
    assert not recorded & answered(probes)  # counted into `probes` records instead
