"""`scoregate keys …` as a rotation script runs it: --json documents and the exit codes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

from gateway.identity import apikeys
from gateway.secretstore.protocol import utcnow
from tests.conftest import free_port, scoregate

MEMBERS = ["key_id", "version", "owner", "scopes", "state", "expires_on"]


def keys(state: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return scoregate("keys", *args, state=state, **env)


def doc(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stdout.splitlines()]


def until_now(iso: str) -> dt.timedelta:
    return dt.datetime.fromisoformat(iso) - utcnow()


def create(state: Path, *extra: str) -> dict[str, Any]:
    out = keys(state, "create", "--owner", "job", "--scope", "models:iris", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return doc(out)


def test_create_rotate_list_revoke_as_json(tmp_path: Path) -> None:
    first = create(tmp_path, "--expires", "30d")
    assert list(first) == ["key", *MEMBERS]
    assert apikeys.parse(first["key"]) is not None
    assert (first["owner"], first["scopes"], first["state"]) == ("job", ["models:iris"], "active")

    out = keys(tmp_path, "rotate", first["key_id"], "--overlap", "2h", "--json")
    assert out.returncode == 0, out.stderr
    rotated = doc(out)
    assert list(rotated) == ["key", *MEMBERS, "previous"]
    assert rotated["key"] != first["key"] and rotated["key_id"] == first["key_id"]
    # The new generation lives as long as the key was made to (30 days from now, not from
    # the first generation's start); the previous one ends with the overlap.
    assert abs(until_now(rotated["expires_on"]) - dt.timedelta(days=30)) < dt.timedelta(minutes=1)
    (previous,) = rotated["previous"]
    assert previous["version"] == first["version"]
    assert abs(until_now(previous["expires_on"]) - dt.timedelta(hours=2)) < dt.timedelta(minutes=1)

    shorter = doc(keys(tmp_path, "rotate", first["key_id"], "--expires", "10d", "--json"))
    assert abs(until_now(shorter["expires_on"]) - dt.timedelta(days=10)) < dt.timedelta(minutes=1)

    listed = keys(tmp_path, "list", "--json")
    assert listed.returncode == 0
    rows = lines(listed)
    assert [r["version"] for r in rows] == [
        first["version"],
        rotated["version"],
        shorter["version"],
    ]
    assert all(list(r) == MEMBERS for r in rows)
    for key in (first["key"], rotated["key"]):
        assert key.split("_")[2] not in listed.stdout  # never a secret, nor a digest
    assert "sha256:" not in listed.stdout

    revoked = keys(tmp_path, "revoke", first["key_id"], "--version", rotated["version"], "--json")
    assert revoked.returncode == 0
    assert [(r["version"], r["state"]) for r in lines(revoked)] == [(rotated["version"], "revoked")]
    everything = lines(keys(tmp_path, "revoke", first["key_id"], "--json"))
    assert [r["state"] for r in everything] == ["revoked"] * 3


def test_text_output_keeps_its_shape(tmp_path: Path) -> None:
    created = keys(tmp_path, "create", "--owner", "alice", "--scope", "models:iris")
    assert created.returncode == 0
    key = created.stdout.strip()
    assert apikeys.parse(key) is not None and "not shown again" in created.stderr
    table = keys(tmp_path, "list").stdout.splitlines()
    assert table[0].split() == ["KEY_ID", "VERSION", "STATE", "OWNER", "EXPIRES_ON", "SCOPES"]
    assert table[1].split()[2:] == ["active", "alice", "-", "models:iris"]


def test_refusals_exit_1_with_a_stable_code(tmp_path: Path) -> None:
    unknown = keys(tmp_path, "rotate", "a" * 16, "--json")
    assert (unknown.returncode, doc(unknown)["code"]) == (1, "key_not_found")
    assert "no key with id" in unknown.stderr
    first = create(tmp_path)
    no_version = keys(tmp_path, "revoke", first["key_id"], "--version", "nope", "--json")
    assert (no_version.returncode, doc(no_version)["code"]) == (1, "key_not_found")
    assert keys(tmp_path, "revoke", first["key_id"]).returncode == 0
    revoked = keys(tmp_path, "rotate", first["key_id"], "--json")
    assert (revoked.returncode, doc(revoked)["code"]) == (1, "no_active_generation")


def test_usage_errors_exit_2_and_change_nothing(tmp_path: Path) -> None:
    first = create(tmp_path)
    for args, code in [
        (("rotate", first["key_id"], "--overlap", "soon"), "invalid_argument"),
        (("rotate", first["key_id"], "--expires", "0d"), "invalid_argument"),
        (("rotate", "BAD-ID"), "invalid_argument"),
        (("create", "--owner", "has space", "--scope", "models:iris"), "invalid_argument"),
        (
            ("rotate", first["key_id"], "--deliver-to", "https://x.example/s"),
            "invalid_delivery_target",
        ),
    ]:
        out = keys(tmp_path, *args, "--json")
        assert (out.returncode, doc(out)["code"]) == (2, code), args
    assert keys(tmp_path, "rotate").returncode == 2  # argparse: the key id is missing
    unknown_setting = keys(tmp_path, "list", "--json", SCOREGATE_NO_SUCH_SETTING="1")
    assert (unknown_setting.returncode, doc(unknown_setting)["code"]) == (2, "invalid_settings")
    no_vault = keys(tmp_path, "list", "--json", SCOREGATE_SECRET_STORE="keyvault")
    assert (no_vault.returncode, doc(no_vault)["code"]) == (2, "invalid_settings")
    assert "SCOREGATE_KEYVAULT_URL" in no_vault.stderr
    assert [r["version"] for r in lines(keys(tmp_path, "list", "--json"))] == [first["version"]]


def test_a_failing_store_exits_3(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text("{not json")
    broken = keys(tmp_path, "list", "--json")
    assert (broken.returncode, doc(broken)["code"]) == (3, "store_failed")
    # A vault nobody answers at: the SDK's connection retries, then exit 3.
    unreachable = keys(
        tmp_path / "kv",
        "list",
        "--json",
        SCOREGATE_SECRET_STORE="keyvault",
        SCOREGATE_KEYVAULT_URL=f"https://127.0.0.1:{free_port()}",
    )
    assert (unreachable.returncode, doc(unreachable)["code"]) == (3, "store_failed")


def test_help_documents_the_exit_codes() -> None:
    out = scoregate("keys", "--help")
    assert out.returncode == 0
    for line in ("0  done", "1  refused as asked", "2  usage", "3  a store failed", "4  keys"):
        assert line in out.stdout
