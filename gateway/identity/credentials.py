"""Which credential a request carries, and who it names: the one place that decides.

    api-key: <key>             ─▶ gateway.identity.apikeys (digest against the key ring)
    Authorization: Bearer <jwt> ─▶ gateway.identity.tokens (issuer, kid, signature, claims)
    both, neither, another scheme ─▶ Unauthenticated (401)

A request that carries both kinds is refused rather than judged by either: which one
would count is exactly the ambiguity an attacker looks for.
"""

from __future__ import annotations

from gateway.errors import Unauthenticated
from gateway.identity import apikeys
from gateway.identity.keyring import KeyRing
from gateway.identity.principal import Principal
from gateway.identity.tokens import JWTValidator
from gateway.secretstore.protocol import utcnow


class Authenticator:
    """Request credentials → a `Principal`, or `Unauthenticated`."""

    def __init__(self, keys: KeyRing, tokens: JWTValidator) -> None:
        self.keys = keys
        self.tokens = tokens

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """A bearer JWT or an API key, never both (an ambiguous request is refused)."""
        if authorization is not None and api_key is not None:
            raise Unauthenticated(reason="credentials_ambiguous")
        if authorization is None:
            return apikeys.authenticate(api_key, self.keys, utcnow())
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(reason="authorization_scheme_unsupported")
        return self.tokens.authenticate(token.strip())
