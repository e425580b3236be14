"""The dev issuer: `scoregate token mint` signs tokens with its key (ES256).

Its key lives in the embedded local store only: a production token comes from a real
identity provider (Entra ID). Development code: not in the production packages.
"""

from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.identity.issuers import IssuerError
from gateway.identity.keyring import JWT_KEY_PREFIX
from gateway.identity.tokens import IssuerConfig
from gateway.secretstore.protocol import SecretStore

DEV_SIGNING_SECRET = "jwt-dev-signing-key"  # noqa: S105 - a secret's name
DEV_ISSUER = "dev"


async def _dev_signing_key(
    store: SecretStore, issuer: IssuerConfig
) -> tuple[str, ec.EllipticCurvePrivateKey]:
    versions = [v for v in await store.versions(DEV_SIGNING_SECRET) if v.enabled]
    if versions:
        private = serialization.load_pem_private_key(
            versions[-1].value.encode("ascii"), password=None
        )
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise IssuerError("the dev signing key is not an EC key")
        return versions[-1].tags["kid"], private
    private = ec.generate_private_key(ec.SECP256R1())
    kid = f"dev-{int(time.time())}"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    await store.set(
        DEV_SIGNING_SECRET, pem, tags={"kid": kid, "alg": "ES256", "issuer": issuer.issuer}
    )
    await store.set(
        f"{JWT_KEY_PREFIX}{kid}", public, tags={"alg": "ES256", "issuer": issuer.issuer}
    )
    return kid, private


async def mint(
    store: SecretStore, issuer: IssuerConfig, *, subject: str, scopes: list[str], ttl_s: int
) -> str:
    """A token from the dev issuer (ES256), for laptops and tests."""
    kid, private = await _dev_signing_key(store, issuer)
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "scp": " ".join(scopes),
    }
    return jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid})
