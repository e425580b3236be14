"""Signed audit checkpoints (Ed25519): the part of the audit trail a hash chain cannot give.

A hash chain shows that records were edited, removed or reordered, unless whoever edits
the file also recomputes every hash after the edit. A checkpoint signs the chain's head
with a key the gateway holds and the file's editor does not, so a reviewer with the
public key can prove that every record up to it is complete and unedited.

The signing key is a secret in the secret store (``audit-signing-key``; value: PKCS#8 PEM;
tags: ``public_key`` (raw, base64) and ``key_id``), so the public half can be read without
touching the private one. On the embedded local store the gateway creates one on first
start; on Key Vault an operator runs `scoregate audit keygen`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.secretstore.protocol import SecretStore

SECRET_NAME = "audit-signing-key"  # noqa: S105 - the name of a secret, not one
# Everything a checkpoint claims is signed, the cadence too: a verifier can then tell
# that more records ran unsigned than the writer would have allowed (removed checkpoints).
SIGNED_FIELDS = ("type", "time", "node", "from_seq", "to_seq", "head", "every", "key_id")


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _signed_bytes(fields: dict[str, Any]) -> bytes:
    return orjson.dumps({k: fields[k] for k in SIGNED_FIELDS}, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, repr=False)
class CheckpointSigner:
    private_key: Ed25519PrivateKey
    key_id: str

    def checkpoint(
        self, *, time: str, node: str, from_seq: int, to_seq: int, head: str, every: int
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "type": "checkpoint",
            "time": time,
            "node": node,
            "from_seq": from_seq,
            "to_seq": to_seq,
            "head": head,
            "every": every,
            "key_id": self.key_id,
        }
        signature = self.private_key.sign(_signed_bytes(fields))
        fields["signature"] = base64.b64encode(signature).decode("ascii")
        return fields


def check_signature(record: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> str | None:
    """None when the checkpoint's signature is good, else what is wrong."""
    public = keys.get(str(record.get("key_id")))
    if public is None:
        return f"signed with unknown key {record.get('key_id')!r}"
    try:
        public.verify(base64.b64decode(record["signature"], validate=True), _signed_bytes(record))
    except (InvalidSignature, KeyError, ValueError):
        return "bad signature"
    return None


async def generate(store: SecretStore) -> CheckpointSigner:
    """A new signing key, stored as a new version of the signing secret."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    await store.set(
        SECRET_NAME,
        pem,
        tags={"public_key": base64.b64encode(raw).decode("ascii"), "key_id": key_id_of(public)},
    )
    return CheckpointSigner(private, key_id_of(public))


async def load_signer(store: SecretStore, *, create: bool) -> CheckpointSigner | None:
    """The newest enabled signing key; created first when allowed and there is none."""
    versions = [v for v in await store.versions(SECRET_NAME) if v.enabled]
    if not versions:
        return await generate(store) if create else None
    private = serialization.load_pem_private_key(versions[-1].value.encode("ascii"), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{SECRET_NAME} is not an Ed25519 key")
    return CheckpointSigner(private, key_id_of(private.public_key()))


async def public_keys(store: SecretStore) -> dict[str, Ed25519PublicKey]:
    """Every enabled signing key's public half, by key id, read from the tags only.

    A disabled version is a revoked key (it may have leaked): its signatures prove nothing.
    """
    keys = {}
    for version in await store.versions(SECRET_NAME):
        if not version.enabled:
            continue
        try:
            public = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(version.tags["public_key"])
            )
        except (KeyError, ValueError):
            continue  # not a key we can check with; the verifier reports "unknown key"
        keys[key_id_of(public)] = public
    return keys


def public_key_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


_PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def load_public_key(path: Path) -> dict[str, Ed25519PublicKey]:
    """Every public key in a PEM file, by key id: `scoregate audit public-key` lists each
    generation, so a trail signed across a key rotation verifies with its whole output."""
    keys = {}
    for block in _PEM_PUBLIC_KEY.findall(path.read_bytes()):
        public = serialization.load_pem_public_key(block)
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"{path} holds a key that is not an Ed25519 public key")
        keys[key_id_of(public)] = public
    if not keys:
        raise ValueError(f"{path} holds no PEM public key")
    return keys
