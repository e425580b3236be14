"""`scoregate audit report` on a Blob Storage container (Azurite) two replicas ship to:
each replica's chain verified and named in the banner, their records in one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.tls import client_context
from tests.conftest import Stack, scoregate
from tests.e2e.test_audit_store import score, stop_gracefully, store_env
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_report_of_a_container_verifies_each_replica_and_sums_them(
    stack: Stack, vault: KeyVaultServer, audit_container: str, spawn_gateway: Any, tmp_path: Path
) -> None:
    replicas = [spawn_gateway(**store_env(audit_container, vault, stack)) for _ in range(2)]
    answered = [score(g.base_url, stack.ca, stack.keys.iris, 30, workers=4) for g in replicas]
    refused = score(replicas[1].base_url, stack.ca, "not-a-key", 7, workers=1)
    with httpx.Client(base_url=replicas[0].base_url, verify=client_context(stack.ca)) as client:
        probes = [client.get("/v2/health/live").status_code for _ in range(5)]
    assert probes == [200] * 5
    for gateway in replicas:
        stop_gracefully(gateway.proc)  # drained, signed and shipped before exit

    env = {
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(stack.ca),
        "SCOREGATE_LOCAL_STORE_PATH": str(stack.state / "secrets.json"),
    }
    out = scoregate("audit", "report", "--json", audit_container, state=stack.state, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["banner"].startswith("INTACT: 2 trails, ")
    trails = report["integrity"]["trails"]
    assert len(trails) == 2 and all(t["ok"] and t["unsigned_tail"] == 0 for t in trails)
    assert all(t["signatures_checked"] and t["checkpoints"] >= 1 for t in trails)
    assert [r.status_code for batch in answered for r in batch] == [200] * 60
    assert [r.status_code for r in refused] == [401] * 7
    assert (report["total"], report["allowed"], report["denied"]) == (67, 60, 7)
    assert [(r["reason"], r["count"]) for r in report["denials_by_reason"]] == [
        ("api_key_malformed", 7)
    ]
    assert report["failed_auth_bursts"]["total"] == 1  # 7 failures from one address
    assert report["probes"]["by_route_and_status"]["live 200"] == 5
    page = tmp_path / "store.html"
    html = scoregate(
        "audit", "report", "--html", str(page), audit_container, state=stack.state, **env
    )
    assert html.returncode == 0, html.stderr
    assert html.stdout.splitlines()[0] == report["banner"]
    assert report["banner"] in page.read_text()
