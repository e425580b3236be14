"""Keys from an issuer's JWKS URL, served over HTTPS with the test CA."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from certs.authority import CertPaths
from gateway.errors import Unauthenticated
from gateway.identity.issuers import load_issuers
from gateway.identity.jwks import JWKSKeys, parse_jwks
from gateway.identity.tokens import IssuerConfig, JWTValidator
from gateway.service import build_gateway
from gateway.settings import GatewaySettings
from gateway.web.app import create_app
from tests.conftest import write_access, write_routes
from tests.keyvault_server import KeyVaultServer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROTATED = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    # Entra ID style: no "alg" member, "use": "sig".
    doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**doc, "kid": kid, "use": "sig"}


@pytest.fixture
def idp(vault: KeyVaultServer) -> Iterator[KeyVaultServer]:
    vault.state.jwks = {"keys": [jwk(KEY, "k1")]}
    vault.state.jwks_status, vault.state.jwks_delay_s, vault.state.jwks_hits = 200, 0.0, 0
    yield vault
    vault.state.jwks_status, vault.state.jwks_delay_s = 200, 0.0


def setup(
    idp: KeyVaultServer, pki: CertPaths, **kwargs: Any
) -> tuple[JWTValidator, JWKSKeys, IssuerConfig]:
    issuer = IssuerConfig(
        "entra",
        "https://login.test/tenant/v2.0",
        "api://scoregate",
        frozenset({"RS256"}),
        jwks_url=f"{idp.url}/jwks",
    )
    validator = JWTValidator([issuer])
    fetcher = JWKSKeys(
        issuer, f"{idp.url}/jwks", validator.set_issuer_keys, ca_file=str(pki.ca_cert), **kwargs
    )
    validator.on_unknown_kid(issuer.issuer, fetcher.unknown_kid)
    return validator, fetcher, issuer


def token(key: rsa.RSAPrivateKey, kid: str, issuer: IssuerConfig) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": "svc",
        "iat": now,
        "exp": now + 300,
        "roles": ["models:iris"],
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def test_a_token_from_an_issuer_whose_jwks_is_served_over_https_is_accepted(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    validator, fetcher, issuer = setup(idp, pki)
    await fetcher.fetch()
    principal = validator.authenticate(token(KEY, "k1", issuer))
    assert (principal.subject, principal.scopes) == ("svc", frozenset({"models:iris"}))


@pytest.mark.parametrize("fault", ["down", "garbage", "huge", "private-key-only"])
async def test_a_failing_or_hostile_jwks_never_empties_the_warm_cache(
    idp: KeyVaultServer, pki: CertPaths, fault: str
) -> None:
    validator, fetcher, issuer = setup(idp, pki)
    await fetcher.fetch()
    if fault == "down":
        idp.state.jwks_status = 503
    elif fault == "garbage":
        idp.state.jwks = b"<html>not json"
    elif fault == "huge":
        idp.state.jwks = b'{"keys": [' + b'{"kty":"oct"},' * 40_000 + b"{}]}"
    else:
        private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ROTATED))
        idp.state.jwks = {"keys": [{**private, "kid": "evil", "use": "sig"}]}
    await fetcher.fetch()
    assert fetcher.last_error is not None
    assert validator.authenticate(token(KEY, "k1", issuer)).subject == "svc"  # still served


async def test_unknown_kids_cannot_make_the_gateway_refetch_on_every_request(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    validator, fetcher, issuer = setup(idp, pki, min_refetch_s=60)
    task = asyncio.create_task(fetcher.run())
    try:
        for _ in range(50):
            await asyncio.sleep(0.02)
            if fetcher.keys:
                break
        hits = idp.state.jwks_hits
        for i in range(100):
            with pytest.raises(Unauthenticated):
                validator.authenticate(token(ROTATED, f"unknown-{i}", issuer))
        await asyncio.sleep(0.3)
        assert idp.state.jwks_hits - hits <= 1
    finally:
        task.cancel()


async def test_an_issuer_key_rotation_is_picked_up_by_a_rate_limited_refetch(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    validator, fetcher, issuer = setup(idp, pki, min_refetch_s=0.2)
    task = asyncio.create_task(fetcher.run())
    try:
        await asyncio.sleep(0.3)
        idp.state.jwks = {"keys": [jwk(KEY, "k1"), jwk(ROTATED, "k2")]}  # the IdP adds a key
        new = token(ROTATED, "k2", issuer)
        with pytest.raises(Unauthenticated):
            validator.authenticate(new)  # unknown for now: triggers one refetch
        for _ in range(40):
            await asyncio.sleep(0.05)
            try:
                assert validator.authenticate(new).subject == "svc"
                break
            except Unauthenticated:
                continue
        else:
            raise AssertionError("the rotated key was never picked up")
    finally:
        task.cancel()


async def test_a_slow_jwks_never_blocks_the_event_loop(idp: KeyVaultServer, pki: CertPaths) -> None:
    validator, fetcher, issuer = setup(idp, pki, timeout_s=2.0)
    await fetcher.fetch()
    idp.state.jwks_delay_s = 1.5
    fetching = asyncio.create_task(fetcher.fetch())
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0)  # the loop keeps turning while the fetch waits
    assert validator.authenticate(token(KEY, "k1", issuer)).subject == "svc"
    assert loop.time() - started < 0.5
    assert not fetching.done()
    await fetching


def test_parse_jwks_binds_each_key_to_one_allowed_algorithm() -> None:
    issuer = IssuerConfig("x", "i", "a", frozenset({"RS256", "ES256"}))
    keys = parse_jwks(
        {
            "keys": [
                jwk(KEY, "no-alg"),
                {**jwk(KEY, "ok"), "alg": "RS256"},
                {**jwk(KEY, "hs"), "alg": "HS256"},
                {**jwk(KEY, "enc"), "use": "enc"},
            ]
        },
        issuer,
    )
    assert sorted(keys) == ["ok"]  # two algorithms allowed: a key without alg is ambiguous
    with pytest.raises(ValueError):
        parse_jwks({"nokeys": []}, issuer)


async def test_an_issuer_with_a_jwks_url_in_issuers_toml_gets_its_keys_in_the_gateway(
    idp: KeyVaultServer, pki: CertPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # k8s/base/config/issuers.toml documents Entra ID issuers by their jwks_url: the file's
    # setting must reach the gateway, or every Entra token is an unknown kid (401).
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))  # the stand-in IdP's CA, as trust
    issuers = tmp_path / "issuers.toml"
    issuers.write_text(
        '[issuers.entra]\nissuer = "https://login.test/tenant/v2.0"\n'
        f'audience = "api://scoregate"\nalgorithms = ["RS256"]\njwks_url = "{idp.url}/jwks"\n'
    )
    (issuer,) = load_issuers(issuers)
    assert issuer.jwks_url == f"{idp.url}/jwks"
    async with gateway_trusting(issuers, tmp_path) as client:
        bearer = {"authorization": f"Bearer {token(KEY, 'k1', issuer)}"}
        r = await client.get("/v2/models/iris", headers=bearer)
    # Authenticated and authorized (its roles grant iris): the scorer behind is down.
    assert r.status_code == 503
    assert (await r.get_json())["code"] == "upstream_unavailable"


@asynccontextmanager
async def gateway_trusting(issuers: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """A gateway (Quart test client) trusting the issuers of ``issuers``, once its JWKS
    fetchers have their keys; its one route's scorer is down."""
    settings = GatewaySettings(
        state_dir=tmp_path,
        routes_file=write_routes(tmp_path / "routes.toml", "http://127.0.0.1:9"),
        access_policy_file=write_access(tmp_path / "access.toml"),
        jwt_issuers_file=issuers,
    )
    gw = build_gateway(settings)
    async with create_app(gw).test_app() as app:
        for _ in range(200):
            if gw.jwks and all(f.keys for f in gw.jwks):
                break
            await asyncio.sleep(0.02)
        yield app.test_client()
