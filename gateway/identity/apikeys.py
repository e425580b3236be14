"""API keys: their format, and their verification against the key ring.

Format: ``sg_<key id>_<secret>_<checksum>``.

- key id: 16 base32 characters (80 random bits) naming the client; stable across
  rotations, so the store can hold each generation as a version of one secret.
- secret: 52 base32 characters (256 random bits), shown once at creation.
- checksum: CRC-32 of everything before it, 8 hex digits, so a typo or a random string
  is rejected before any lookup (and secret scanners can recognise our keys).

Only a SHA-256 digest of the whole key is stored. A fast hash is right here: the secret
has 256 bits of entropy, so there is nothing to brute-force (OWASP Password Storage cheat
sheet applies slow hashes to low-entropy passwords, not to random tokens).

Only the ``api-key`` header is read for API keys. Every failure answers the same 401
message; the precise reason (malformed, bad checksum, unknown id, wrong secret, revoked,
expired) goes to the audit record only, so a caller cannot probe which keys exist.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

from gateway.errors import Unauthenticated
from gateway.identity.keyring import KeyRing
from gateway.identity.principal import Principal

PREFIX = "sg"
KEY_ID_CHARS = 16
SECRET_CHARS = 52
MAX_KEY_LENGTH = 96
KEY_PATTERN = re.compile(r"sg_([a-z2-7]{16})_([a-z2-7]{52})_([0-9a-f]{8})")
KEY_ID_PATTERN = re.compile(r"[a-z2-7]{16}")


@dataclass(frozen=True, repr=False)
class ParsedKey:
    key_id: str
    full: str

    def __repr__(self) -> str:  # never print the secret part
        return f"ParsedKey(key_id={self.key_id!r})"


def _b32(nbytes: int) -> str:
    return base64.b32encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=").lower()


def _checksum(body: str) -> str:
    return f"{zlib.crc32(body.encode('ascii')) & 0xFFFFFFFF:08x}"


def new_key_id() -> str:
    return _b32(10)


def new_key(key_id: str) -> str:
    """A fresh key for ``key_id`` (a new generation when the id already exists)."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError("malformed key id")
    body = f"{PREFIX}_{key_id}_{_b32(32)[:SECRET_CHARS]}"
    return f"{body}_{_checksum(body)}"


def parse(presented: str) -> ParsedKey | None:
    """The key's id when the format and checksum are right, else None (no lookup made)."""
    if len(presented) > MAX_KEY_LENGTH:
        return None
    match = KEY_PATTERN.fullmatch(presented)
    if match is None:
        return None
    body = presented[: -len(match.group(3)) - 1]
    if not secrets.compare_digest(_checksum(body), match.group(3)):
        return None
    return ParsedKey(key_id=match.group(1), full=presented)


def digest(key: str) -> str:
    """What the store keeps: ``sha256:<hex>`` of the whole key."""
    return "sha256:" + hashlib.sha256(key.encode("ascii")).hexdigest()


# Compared against when the key id is unknown, so that path costs what a known id costs
# (OWASP Authentication cheat sheet: respond in constant time).
_DUMMY_DIGEST = digest("sg_" + "a" * 16 + "_" + "a" * 52 + "_00000000")


class RefusedKey(Unauthenticated):
    """The right secret of a revoked, disabled or expired generation. Its holder proved
    possession, so the audit record names the generation (a rotation script asks who
    still sends it); the client sees the same 401 as for any other cause."""

    def __init__(self, principal: Principal, *, reason: str) -> None:
        super().__init__(reason=reason)
        self.principal = principal


def authenticate_api_key(presented: str, keys: KeyRing, now: dt.datetime) -> Principal:
    parsed = parse(presented)
    if parsed is None:
        # Format and checksum are checked before any lookup.
        raise Unauthenticated(reason="api_key_malformed")
    presented_digest = digest(parsed.full)
    generations = keys.generations(parsed.key_id)
    match = None
    for generation in generations or ():
        # Constant-time comparison of digests (no early exit on the first differing byte).
        if hmac.compare_digest(presented_digest, generation.digest):
            match = generation
    if not generations:
        hmac.compare_digest(presented_digest, _DUMMY_DIGEST)
        raise Unauthenticated(reason="api_key_unknown")
    if match is None:
        raise Unauthenticated(reason="api_key_wrong_secret")
    principal = Principal(
        subject=match.owner or f"apikey:{match.key_id}",
        credential="api_key",
        scopes=match.scopes,
        key_id=match.key_id,
        key_version=match.version,
    )
    state = match.state(now)
    if state != "active":
        raise RefusedKey(principal, reason=f"api_key_{state}")
    return principal


def authenticate(api_key: str | None, keys: KeyRing, now: dt.datetime) -> Principal:
    if api_key is None:
        raise Unauthenticated(reason="credentials_missing")
    return authenticate_api_key(api_key.strip(), keys, now)
