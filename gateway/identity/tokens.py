"""JWT bearer authentication, validated as RFC 8725 (JWT Best Current Practices) asks.

    Authorization: Bearer <token> ─▶ issuer chosen by its exact ``iss``
                                  ─▶ key chosen by its exact ``kid`` (no lookup otherwise)
                                  ─▶ PyJWT verifies with that key's one algorithm
                                  ─▶ claims checked for presence and type ─▶ Principal

Rules, each one a line of the security catalog:
- the algorithm comes from the key, never from the token (RFC 8725 §3.1): ``alg: none``,
  HMAC signed with a public key, or any algorithm other than the key's → 401;
- only asymmetric algorithms (RS*, PS*, ES*, EdDSA);
- ``kid`` must be an exact, known id; ``jku``, ``x5u``, ``jwk`` and ``x5c`` are ignored,
  so a token can never make the gateway fetch or trust a key it names (§3.10);
- unknown ``crit`` headers, nested JWTs (``cty: JWT``) and JWE (5 segments) → 401 (§3.11);
- ``exp``, ``iat``, ``iss``, ``aud``, ``sub`` are required, NumericDates must be numbers,
  ``iat`` may not be in the future beyond the leeway (PyJWT only checks what is present
  unless told to require it);
- the claims JSON must not repeat a member (§3.5: ambiguous input is refused).

Verified tokens are cached by a SHA-256 of the token, never past their ``exp``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from gateway.errors import Unauthenticated
from gateway.identity.principal import Principal

ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_TOKEN_BYTES = 8 * 1024
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    issuer: str
    algorithm: str
    key: Any  # a cryptography public key object, parsed once


@dataclass(frozen=True)
class IssuerConfig:
    name: str
    issuer: str
    audience: str
    algorithms: frozenset[str]
    leeway_s: float = 30.0
    jwks_url: str | None = None
    # Entra ID as users have it: an application's tokens name it as `api://…` or by its
    # client id (a GUID), depending on how the caller asked; both may be accepted.
    other_audiences: tuple[str, ...] = ()
    # The one tenant whose tokens count (`tid`), when the issuer URL alone does not pin it.
    tenant_id: str | None = None
    # Only these client applications may call (v2 `azp`, v1 `appid`); empty: any.
    allowed_clients: frozenset[str] = frozenset()
    # OIDC discovery (`…/.well-known/openid-configuration`): the JWKS URL is taken from
    # it, and its `issuer` must be this issuer.
    discovery_url: str | None = None

    @property
    def audiences(self) -> list[str]:
        return [self.audience, *self.other_audiences]


def load_public_key(pem: str) -> Any:
    return serialization.load_pem_public_key(pem.encode("ascii"))


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _b64url(segment: str) -> bytes:
    """One part of a compact JWS, decoded as RFC 7515 §2 defines BASE64URL: the URL-safe
    alphabet only, no padding, no whitespace, and (RFC 4648 §3.5) canonical, i.e. no
    unused bits set. Python's decoder accepts all of those (it even drops characters it
    does not know); a token that relies on them is not a JWS."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise ValueError("non-canonical base64url")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _b64json(segment: str) -> Any:
    """A JSON object as RFC 7515 §4 and RFC 7519 §7.2 allow: UTF-8 without a byte order
    mark (RFC 8259 §8.1), unique member names (RFC 7515 §5.2), no NaN or Infinity. A
    deeply nested value is refused, not a RecursionError (a 500) in the JSON parser."""
    text = _b64url(segment).decode("utf-8")
    if text.startswith("\ufeff"):
        raise ValueError("byte order mark")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate member")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class JWTValidator:
    def __init__(self, issuers: list[IssuerConfig]) -> None:
        self._issuers = {cfg.issuer: cfg for cfg in issuers}
        self._keys: dict[str, VerificationKey] = {}
        self._jwks: dict[str, dict[str, VerificationKey]] = {}
        self._unknown_kid: dict[str, Callable[[], None]] = {}
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def set_issuer_keys(self, issuer: str, keys: dict[str, VerificationKey]) -> None:
        """Swap one issuer's JWKS keys (from its background fetcher); drop cached verdicts."""
        self._jwks[issuer] = dict(keys)
        self._cache.clear()

    def on_unknown_kid(self, issuer: str, notify: Callable[[], None]) -> None:
        self._unknown_kid[issuer] = notify

    def issuers(self) -> list[IssuerConfig]:
        return list(self._issuers.values())

    def set_keys(self, keys: dict[str, VerificationKey]) -> None:
        """Swap the whole key set (from the background refresh); drop cached verdicts."""
        self._keys = dict(keys)
        self._cache.clear()

    def authenticate(self, token: str, now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None and now < cached[1]:
            self._cache.move_to_end(digest)
            return cached[0]
        principal, exp = self._verify(token, now)
        self._cache[digest] = (principal, exp)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(reason="jwt_too_large")
        segments = token.split(".")
        if len(segments) != 3:  # JWE has 5; a stripped or partial token fewer
            raise Unauthenticated(reason="jwt_malformed")
        try:
            header = _b64json(segments[0])
            claims = _b64json(segments[1])
            if segments[2]:  # the signature (empty: alg "none", refused below by name)
                _b64url(segments[2])  # PyJWT decodes it as leniently as the rest
        except (ValueError, UnicodeDecodeError):
            raise Unauthenticated(reason="jwt_malformed") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthenticated(reason="jwt_malformed")
        if header.get("b64", True) is not True:
            # RFC 7797 unencoded payloads: not something an issuer of ours sends.
            raise Unauthenticated(reason="jwt_malformed")
        if "crit" in header:
            raise Unauthenticated(reason="jwt_crit_unsupported")
        if str(header.get("cty", "")).upper() == "JWT":
            raise Unauthenticated(reason="jwt_nested")
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated(reason="jwt_issuer_unknown")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise Unauthenticated(reason="jwt_kid_invalid")
        key = self._keys.get(kid) or self._jwks.get(issuer.issuer, {}).get(kid)
        if key is None or key.issuer != issuer.issuer:
            notify = self._unknown_kid.get(issuer.issuer)
            if notify is not None:
                notify()  # maybe the issuer rotated: a rate-limited refetch, in the background
            raise Unauthenticated(reason="jwt_kid_unknown")
        alg = header.get("alg")
        # One key, one algorithm (RFC 8725 §3.1): the token's alg must be the key's.
        if alg != key.algorithm or alg not in issuer.algorithms or alg not in ASYMMETRIC:
            raise Unauthenticated(reason="jwt_alg_rejected")
        try:
            verified = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm],
                audience=issuer.audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(reason="jwt_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(reason="jwt_not_yet_valid") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthenticated(reason="jwt_claim_missing") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise Unauthenticated(reason="jwt_wrong_issuer_or_audience") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(reason="jwt_bad_signature") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated(reason="jwt_invalid") from None
        return self._principal(verified, issuer, now)

    @staticmethod
    def _principal(
        claims: dict[str, Any], issuer: IssuerConfig, now: float
    ) -> tuple[Principal, float]:
        for name in ("exp", "iat") + (("nbf",) if "nbf" in claims else ()):
            if not _is_number(claims[name]):
                raise Unauthenticated(reason="jwt_claim_type")
        if claims["iat"] > now + issuer.leeway_s:
            raise Unauthenticated(reason="jwt_issued_in_future")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise Unauthenticated(reason="jwt_claim_type")
        scopes: set[str] = set()
        scp = claims.get("scp", claims.get("scope"))
        if scp is not None:
            if not isinstance(scp, str):
                raise Unauthenticated(reason="jwt_claim_type")
            scopes.update(scp.split())
        roles = claims.get("roles")
        if roles is not None:
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise Unauthenticated(reason="jwt_claim_type")
            scopes.update(roles)
        tenant = claims.get("tid")
        if issuer.tenant_id is not None and tenant != issuer.tenant_id:
            # A multi-tenant issuer URL, or a key shared across tenants, must not let another
            # tenant's tokens in (OWASP API2: broken authentication).
            raise Unauthenticated(reason="jwt_tenant_mismatch")
        if issuer.allowed_clients:
            client = claims.get("azp", claims.get("appid"))  # v2 azp, v1 appid
            if not isinstance(client, str) or client not in issuer.allowed_clients:
                raise Unauthenticated(reason="jwt_client_not_allowed")
        principal = Principal(
            subject=subject,
            credential="jwt",
            scopes=frozenset(scopes),
            issuer=issuer.issuer,
            tenant=tenant if isinstance(tenant, str) else None,
        )
        return principal, float(claims["exp"])
