"""Issuer configuration, JWT verification keys from the secret store, and the dev issuer.

`scoregate token mint` signs tokens with the dev issuer's key (ES256), kept in the
embedded local store only: a production token comes from a real identity provider.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field

from gateway.jwtauth import ASYMMETRIC, IssuerConfig, VerificationKey, load_public_key
from gateway.policy import load_toml_model
from gateway.secretstore import SecretStore, SecretVersion, utcnow

KEY_PREFIX = "jwtkey-"
DEV_SIGNING_SECRET = "jwt-dev-signing-key"  # noqa: S105 - a secret's name
DEV_ISSUER = "dev"


class IssuerError(Exception):
    """The issuers file is invalid; the gateway refuses to start."""


class _Issuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    algorithms: tuple[str, ...] = Field(min_length=1)
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    jwks_url: str | None = Field(default=None, pattern=r"^https://")


class _IssuersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuers: dict[str, _Issuer] = {}


def load_issuers(path: Path) -> list[IssuerConfig]:
    parsed = load_toml_model(path, _IssuersFile, IssuerError)
    configs = []
    for name, cfg in parsed.issuers.items():
        weak = sorted(set(cfg.algorithms) - ASYMMETRIC)
        if weak:
            raise IssuerError(f"{path}: issuer {name!r} allows non-asymmetric algorithms {weak}")
        configs.append(
            IssuerConfig(name, cfg.issuer, cfg.audience, frozenset(cfg.algorithms), cfg.leeway_s)
        )
    return configs


def verification_key(kid: str, version: SecretVersion) -> VerificationKey | None:
    """The key a `jwtkey-<kid>` secret version holds, or None when unusable or malformed."""
    if not version.usable(utcnow()):
        return None
    alg, issuer = version.tags.get("alg", ""), version.tags.get("issuer", "")
    if alg not in ASYMMETRIC or not issuer:
        return None
    try:
        key = load_public_key(version.value)
    except ValueError:
        return None
    return VerificationKey(kid=kid, issuer=issuer, algorithm=alg, key=key)


async def load_verification_keys(store: SecretStore) -> dict[str, VerificationKey]:
    keys = {}
    for name in await store.list_names(KEY_PREFIX):
        kid = name.removeprefix(KEY_PREFIX)
        for version in reversed(await store.versions(name)):  # the newest usable version
            key = verification_key(kid, version)
            if key is not None:
                keys[kid] = key
                break
    return keys


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
    await store.set(f"{KEY_PREFIX}{kid}", public, tags={"alg": "ES256", "issuer": issuer.issuer})
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
