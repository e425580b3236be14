"""The audit checkpoint key rotates (`scoregate audit keygen`) without losing what the old
key signed: every generation stays listed (`audit public-key`), and a trail signed across
the rotation verifies, from the store or from the exported keys alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from gateway.audit import signing
from gateway.secretstore.localfile import LocalSecretStore
from tests.conftest import scoregate
from tests.gateway.audit.test_trail import event, lines_of, write


def audit(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return scoregate("audit", *args, state=state)


def test_a_trail_signed_across_a_key_rotation_verifies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = LocalSecretStore(state / "secrets.json")
    trail = state / "audit" / "audit.jsonl"
    before = asyncio.run(signing.load_signer(store, create=True))
    assert before is not None
    asyncio.run(write(trail, [event(i) for i in range(4)], signer=before, checkpoint_every=2))

    made = audit(state, "keygen", "--json")
    assert made.returncode == 0, made.stderr
    new = json.loads(made.stdout)
    assert new["key_id"] != before.key_id and new["algorithm"] == "Ed25519"
    assert "PRIVATE" not in made.stdout
    # The gateway's next start signs with the new key, continuing the same chain.
    after = asyncio.run(signing.load_signer(store, create=False))
    assert after is not None and after.key_id == new["key_id"]
    asyncio.run(write(trail, [event(i) for i in range(4, 8)], signer=after, checkpoint_every=2))
    signers = [r["key_id"] for r in lines_of(trail) if r["type"] == "checkpoint"]
    assert set(signers) == {before.key_id, after.key_id}

    listed = audit(state, "public-key", "--json")
    assert listed.returncode == 0
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["key_id"], r["newest"]) for r in rows] == [
        (before.key_id, False),
        (after.key_id, True),
    ]
    assert rows[1]["public_key"] == new["public_key"]

    verified = audit(state, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok: ")

    # A reviewer elsewhere with the exported keys: all of them verify; the newest alone
    # cannot vouch for the checkpoints the previous key signed.
    exported = audit(state, "public-key")
    assert exported.stdout.count("BEGIN PUBLIC KEY") == 2
    assert f"# key id {after.key_id} (newest)" in exported.stdout
    both = tmp_path / "audit-keys.pem"
    both.write_text(exported.stdout)
    elsewhere = tmp_path / "elsewhere"
    ok = audit(elsewhere, "verify", "--public-key", str(both), str(trail))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    newest_only = tmp_path / "newest.pem"
    newest_only.write_text(new["public_key"])
    partial = audit(elsewhere, "verify", "--public-key", str(newest_only), str(trail))
    assert partial.returncode == 1
    assert "unknown key" in partial.stdout
