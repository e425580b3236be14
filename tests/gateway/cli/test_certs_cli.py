"""`scoregate certs …` as a renewal script runs it: --json documents and the exit codes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import scoregate

MEMBERS = [
    "name",
    "path",
    "subject",
    "issuer",
    "sans",
    "ca",
    "usage",
    "serial",
    "not_before",
    "not_after",
    "days_left",
    "expired",
    "fingerprint_sha256",
]


def certs(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return scoregate("certs", *args, state=state)


def doc(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def test_init_issue_show_as_json(tmp_path: Path) -> None:
    init = certs(tmp_path, "init", "--json")
    assert init.returncode == 0, init.stderr
    made = doc(init)
    assert list(made) == ["ca", "issued"]
    assert list(made["ca"]) == MEMBERS
    assert (made["ca"]["ca"], made["ca"]["usage"], made["ca"]["sans"]) == (True, "ca", [])
    leaf = made["issued"]
    assert (leaf["name"], leaf["usage"], leaf["subject"]) == ("gateway", "server", "CN=localhost")
    assert leaf["sans"] == ["localhost", "127.0.0.1", "::1"]
    assert leaf["issuer"] == made["ca"]["subject"] == "CN=scoregate dev CA"

    client = certs(tmp_path, "issue", "gateway-client", "--client", "--san", "gw", "--json")
    assert client.returncode == 0, client.stderr
    assert (doc(client)["usage"], doc(client)["sans"]) == ("client", ["gw"])

    shown = certs(tmp_path, "show", "--json")
    assert shown.returncode == 0
    rows = {row["name"]: row for row in map(json.loads, shown.stdout.splitlines())}
    assert sorted(rows) == ["ca", "gateway", "gateway-client"]
    gateway = rows["gateway"]
    path = tmp_path / "certs" / "gateway.pem"
    assert gateway["path"] == str(path)
    assert gateway["fingerprint_sha256"] == fingerprint(path)
    not_after = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    assert gateway["not_after"] == not_after.isoformat()
    # 30-day certificates, issued seconds ago: 29 whole days left, what a renewal job reads.
    assert (gateway["days_left"], gateway["expired"]) == (29, False)
    assert (not_after - dt.datetime.now(dt.UTC)).days == 29
    assert rows["ca"]["days_left"] in (364, 365)

    one = certs(tmp_path, "show", "gateway", "--json")
    assert [json.loads(line)["name"] for line in one.stdout.splitlines()] == ["gateway"]
    text = certs(tmp_path, "show", "gateway").stdout
    assert text.startswith("gateway.pem") and "(29 days left)" in text

    renewed = certs(tmp_path, "issue", "gateway", "--force", "--json")
    assert renewed.returncode == 0
    assert doc(renewed)["fingerprint_sha256"] == fingerprint(path) != gateway["fingerprint_sha256"]


def test_refusals_exit_1_usage_exit_2(tmp_path: Path) -> None:
    empty = certs(tmp_path, "show", "--json")
    assert (empty.returncode, doc(empty)["code"]) == (1, "no_certificates")
    no_ca = certs(tmp_path, "issue", "x", "--json")
    assert (no_ca.returncode, doc(no_ca)["code"]) == (1, "certificate_refused")
    assert "certs init" in no_ca.stderr
    assert certs(tmp_path, "init").returncode == 0
    again = certs(tmp_path, "init", "--json")
    assert (again.returncode, doc(again)["code"]) == (1, "certificate_refused")
    exists = certs(tmp_path, "issue", "gateway", "--json")
    assert (exists.returncode, doc(exists)["code"]) == (1, "certificate_refused")
    missing = certs(tmp_path, "show", "nope", "--json")
    assert (missing.returncode, doc(missing)["code"]) == (1, "certificate_not_found")
    bad_name = certs(tmp_path, "issue", "x", "--san", "two words", "--json")
    assert (bad_name.returncode, doc(bad_name)["code"]) == (2, "invalid_argument")
    assert not (tmp_path / "certs" / "x.pem").exists()
    assert certs(tmp_path, "show", "--bogus").returncode == 2
    assert "exit codes:" in scoregate("certs", "--help").stdout
