"""Authentication: request headers → a `Principal`, or `Unauthenticated` (401).

Only the ``api-key`` header is read for API keys. Every failure answers the same 401
message; the precise reason (malformed, bad checksum, unknown id, wrong secret, revoked,
expired) goes to the audit record only, so a caller cannot probe which keys exist.
"""

from __future__ import annotations

import datetime as dt
import hmac

from gateway import apikeys
from gateway.errors import Unauthenticated
from gateway.keyring import KeyRing
from gateway.principal import Principal

# Compared against when the key id is unknown, so that path costs what a known id costs
# (OWASP Authentication cheat sheet: respond in constant time).
_DUMMY_DIGEST = apikeys.digest("sg_" + "a" * 16 + "_" + "a" * 52 + "_00000000")


def authenticate_api_key(presented: str, keys: KeyRing, now: dt.datetime) -> Principal:
    parsed = apikeys.parse(presented)
    if parsed is None:
        # Format and checksum are checked before any lookup.
        raise Unauthenticated(reason="api_key_malformed")
    presented_digest = apikeys.digest(parsed.full)
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
    state = match.state(now)
    if state != "active":
        raise Unauthenticated(reason=f"api_key_{state}")
    return Principal(
        subject=match.owner or f"apikey:{match.key_id}",
        credential="api_key",
        scopes=match.scopes,
        key_id=match.key_id,
        key_version=match.version,
    )


def authenticate(api_key: str | None, keys: KeyRing, now: dt.datetime) -> Principal:
    if api_key is None:
        raise Unauthenticated(reason="credentials_missing")
    return authenticate_api_key(api_key.strip(), keys, now)
