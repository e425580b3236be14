"""Entra ID tokens as Azure users have them, against a stand-in identity provider.

The stand-in (tests/keyvault_server.py) serves an OIDC discovery document and a JWKS over
HTTPS with the test CA, in Entra's shapes: v2 tokens (`iss` …/v2.0, `azp`, `ver` 2.0)
and v1 tokens (`iss` https://sts.windows.net/<tenant>/, `appid`), `aud` as `api://…` or as
the application's client id, delegated `scp` or application `roles`, `tid` on each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from certs.authority import CertPaths
from gateway.errors import Unauthenticated
from gateway.identity.issuers import IssuerError, load_issuers
from gateway.identity.jwks import JWKSKeys, parse_jwks
from gateway.identity.tokens import IssuerConfig, JWTValidator
from tests.gateway.identity.test_jwks import gateway_trusting, jwk
from tests.keyvault_server import KeyVaultServer

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
APP = "6e0d8a6b-0b3a-4c5e-9a55-1f0c7d1c2b9e"  # the gateway's app registration (client id)
CALLER = "0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"  # a client application allowed to call
V2 = f"https://login.test/{TENANT}/v2.0"
V1 = f"https://sts.test/{TENANT}/"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROLLED = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def entra(issuer: str = V2, **overrides: Any) -> IssuerConfig:
    fields: dict[str, Any] = {
        "other_audiences": (APP,),
        "tenant_id": TENANT,
        "allowed_clients": frozenset({CALLER}),
    }
    fields.update(overrides)
    return IssuerConfig("entra", issuer, "api://scoregate", frozenset({"RS256"}), **fields)


def token(key: rsa.RSAPrivateKey = KEY, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": V2,
        "aud": APP,
        "sub": "service-principal-object-id",
        "tid": TENANT,
        "azp": CALLER,
        "ver": "2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "roles": ["models:iris"],
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, "RS256", {"kid": kid})


def validator(*issuers: IssuerConfig) -> JWTValidator:
    v = JWTValidator(list(issuers or (entra(),)))
    for issuer in issuers or (entra(),):
        v.set_issuer_keys(issuer.issuer, {"k1": verification(issuer)})
    return v


def verification(issuer: IssuerConfig) -> Any:
    return parse_jwks({"keys": [jwk(KEY, "k1")]}, issuer)["k1"]


def refused(v: JWTValidator, tok: str) -> str:
    with pytest.raises(Unauthenticated) as excinfo:
        v.authenticate(tok)
    return excinfo.value.reason


def test_an_app_only_token_with_roles_and_the_client_id_as_audience_is_accepted() -> None:
    principal = validator().authenticate(token())
    assert principal.scopes == frozenset({"models:iris"})
    assert (principal.tenant, principal.issuer) == (TENANT, V2)


def test_a_delegated_token_with_scp_and_the_api_uri_as_audience_is_accepted() -> None:
    principal = validator().authenticate(
        token(aud="api://scoregate", roles=None, scp="models:iris")
    )
    assert principal.scopes == frozenset({"models:iris"})


def test_a_v1_token_with_appid_is_accepted_from_its_own_issuer() -> None:
    v1 = entra(V1)
    v = validator(entra(), v1)
    v1_token = token(iss=V1, azp=None, appid=CALLER, ver="1.0", aud="api://scoregate")
    assert v.authenticate(v1_token).issuer == V1


def test_a_token_for_another_audience_is_refused() -> None:
    assert refused(validator(), token(aud="api://someone-else")) == "jwt_wrong_issuer_or_audience"


def test_a_token_of_another_tenant_is_refused_even_under_a_trusted_issuer_and_key() -> None:
    assert refused(validator(), token(tid=OTHER_TENANT)) == "jwt_tenant_mismatch"
    assert refused(validator(), token(tid=None)) == "jwt_tenant_mismatch"


def test_a_client_application_outside_the_allow_list_is_refused() -> None:
    assert refused(validator(), token(azp="11111111-2222-3333-4444-555555555555")) == (
        "jwt_client_not_allowed"
    )
    assert refused(validator(), token(azp=None)) == "jwt_client_not_allowed"
    # Without an allow-list, any client of the tenant may call.
    assert validator(entra(allowed_clients=frozenset())).authenticate(token(azp=None))


def test_issuers_toml_takes_entra_settings_and_refuses_two_key_sources(tmp_path: Path) -> None:
    path = tmp_path / "issuers.toml"
    path.write_text(
        f'[issuers.entra]\nissuer = "{V2}"\naudience = ["api://scoregate", "{APP}"]\n'
        f'algorithms = ["RS256"]\ntenant_id = "{TENANT}"\nallowed_clients = ["{CALLER}"]\n'
        f'discovery_url = "https://login.test/{TENANT}/v2.0/.well-known/openid-configuration"\n'
    )
    (issuer,) = load_issuers(path)
    assert issuer.audiences == ["api://scoregate", APP]
    assert (issuer.tenant_id, issuer.allowed_clients) == (TENANT, frozenset({CALLER}))
    assert issuer.discovery_url is not None and issuer.jwks_url is None
    path.write_text(path.read_text() + 'jwks_url = "https://login.test/keys"\n')
    with pytest.raises(IssuerError, match="not both"):
        load_issuers(path)


# -- keys through OIDC discovery, and their rollover --------------------------------------
@pytest.fixture
def idp(vault: KeyVaultServer) -> Iterator[KeyVaultServer]:
    vault.state.jwks = {"keys": [jwk(KEY, "k1")]}
    vault.state.discovery = {"issuer": V2, "jwks_uri": f"{vault.url}/jwks"}
    vault.state.jwks_status, vault.state.jwks_delay_s = 200, 0.0
    yield vault
    vault.state.discovery = None


def fetcher_for(idp: KeyVaultServer, pki: CertPaths, v: JWTValidator, **kwargs: Any) -> JWKSKeys:
    issuer = entra()
    url = f"{idp.url}/.well-known/openid-configuration"
    fetcher = JWKSKeys(
        issuer, url, v.set_issuer_keys, ca_file=str(pki.ca_cert), discovery=True, **kwargs
    )
    v.on_unknown_kid(issuer.issuer, fetcher.unknown_kid)
    return fetcher


async def test_keys_come_from_the_jwks_uri_the_discovery_document_names(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    v = JWTValidator([entra()])
    await fetcher_for(idp, pki, v).fetch()
    assert v.authenticate(token()).subject == "service-principal-object-id"


async def test_a_discovery_document_for_another_issuer_is_not_trusted(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    idp.state.discovery = {
        "issuer": f"https://login.test/{OTHER_TENANT}/v2.0",
        "jwks_uri": f"{idp.url}/jwks",
    }
    v = JWTValidator([entra()])
    fetcher = fetcher_for(idp, pki, v)
    await fetcher.fetch()
    assert fetcher.keys == {} and "another issuer" in (fetcher.last_error or "")
    assert refused(v, token()) == "jwt_kid_unknown"


async def test_an_entra_signing_key_rollover_is_followed_without_a_restart(
    idp: KeyVaultServer, pki: CertPaths
) -> None:
    v = JWTValidator([entra()])
    fetcher = fetcher_for(idp, pki, v, min_refetch_s=0.0, refresh_s=3600)
    task = asyncio.create_task(fetcher.run())
    try:
        for _ in range(100):
            if fetcher.keys:
                break
            await asyncio.sleep(0.02)
        # Entra publishes the next key, then signs with it.
        idp.state.jwks = {"keys": [jwk(KEY, "k1"), jwk(ROLLED, "k2")]}
        rolled = token(ROLLED, "k2")
        assert refused(v, rolled) == "jwt_kid_unknown"  # …and wakes a refetch
        for _ in range(200):
            if "k2" in fetcher.keys:
                break
            await asyncio.sleep(0.02)
        assert v.authenticate(rolled).subject == "service-principal-object-id"
    finally:
        task.cancel()


async def test_an_app_only_token_scores_through_a_gateway_with_discovery_configured(
    idp: KeyVaultServer, pki: CertPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))  # the stand-in IdP's CA, as trust
    issuers = tmp_path / "issuers.toml"
    issuers.write_text(
        f'[issuers.entra]\nissuer = "{V2}"\naudience = ["api://scoregate", "{APP}"]\n'
        f'algorithms = ["RS256"]\ntenant_id = "{TENANT}"\nallowed_clients = ["{CALLER}"]\n'
        f'discovery_url = "{idp.url}/.well-known/openid-configuration"\n'
    )
    async with gateway_trusting(issuers, tmp_path) as client:
        allowed = await client.get(
            "/v2/models/iris", headers={"authorization": f"Bearer {token()}"}
        )
        other = await client.get(
            "/v2/models/iris", headers={"authorization": f"Bearer {token(tid=OTHER_TENANT)}"}
        )
    # Authenticated and authorized by its app role: the scorer behind is down (503).
    assert (allowed.status_code, (await allowed.get_json())["code"]) == (
        503,
        "upstream_unavailable",
    )
    assert other.status_code == 401
