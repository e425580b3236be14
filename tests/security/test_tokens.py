"""Tokens (JWT), one test per line of the catalog (RFC 8725, OWASP JWT, PyJWT advisories)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import Unauthenticated
from gateway.identity.tokens import IssuerConfig, JWTValidator, VerificationKey

ISS = "https://issuer.test/tenant"
AUD = "scoregate"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC = ec.generate_private_key(ec.SECP256R1())


def validator() -> JWTValidator:
    v = JWTValidator([IssuerConfig("t", ISS, AUD, frozenset({"ES256", "RS256"}), leeway_s=30)])
    v.set_keys(
        {
            "ec1": VerificationKey("ec1", ISS, "ES256", EC_KEY.public_key()),
            "rsa1": VerificationKey("rsa1", ISS, "RS256", RSA_KEY.public_key()),
        }
    )
    return v


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "scp": "models:iris",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def token(
    payload: dict[str, Any] | None = None, *, key: Any = EC_KEY, alg: str = "ES256", **headers: Any
) -> str:
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        header = {"alg": "ES256", "typ": "JWT", "kid": "ec1", **headers}
        return signed(header, json.dumps(payload or claims()).encode(), key)
    return jwt.encode(payload or claims(), key, algorithm=alg, headers={"kid": "ec1", **headers})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b"") -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


def signed(header: dict[str, Any], body: bytes, key: ec.EllipticCurvePrivateKey = EC_KEY) -> str:
    """Any header and body, really signed ES256 (PyJWT refuses to build some of them)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{signing_input.decode()}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def refused(tok: str, reason: str | None = None) -> None:
    with pytest.raises(Unauthenticated) as excinfo:
        validator().authenticate(tok)
    if reason is not None:
        assert excinfo.value.reason == reason


def test_a_valid_token_gives_a_principal_with_its_scopes() -> None:
    principal = validator().authenticate(token(claims(roles=["models:all"])))
    assert (principal.subject, principal.credential, principal.issuer) == ("alice", "jwt", ISS)
    assert principal.scopes == frozenset({"models:iris", "models:all"})


def test_alg_none_is_401() -> None:
    refused(forge({"alg": "none", "kid": "ec1", "typ": "JWT"}, claims()), "jwt_alg_rejected")


def test_algorithm_outside_the_allow_list_is_401() -> None:
    ps = jwt.encode(claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa1"})
    refused(ps, "jwt_alg_rejected")


def test_hmac_signed_with_the_public_key_as_secret_is_401() -> None:
    # The classic key confusion: HS256 keyed with the issuer's public key, PEM or JWK JSON.
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps({"kty": "EC", "crv": "P-256"}).encode()):
        header = {"alg": "HS256", "kid": "ec1", "typ": "JWT"}
        signing_input = (
            f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}".encode()
        )
        mac = hmac.HMAC(secret, hashes.SHA256())
        mac.update(signing_input)
        refused(f"{signing_input.decode()}.{b64(mac.finalize())}", "jwt_alg_rejected")


def test_alg_differing_from_the_keys_algorithm_is_401() -> None:
    # RS256 token naming the EC key, and an ES256 token naming the RSA key.
    refused(
        jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec1"}), "jwt_alg_rejected"
    )
    refused(
        jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa1"}), "jwt_alg_rejected"
    )


def test_unknown_crit_header_is_401() -> None:
    refused(token(crit=["exp-ext"], **{"exp-ext": 1}), "jwt_crit_unsupported")


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "' OR 1=1 --", 7, None, "", "EC1", "ec1 ", "x" * 200]
)
def test_kid_that_is_not_an_exact_known_id_is_401(kid: Any) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    refused(signed(header, json.dumps(claims()).encode()))


def test_jku_x5u_jwk_x5c_are_ignored_and_fetch_nothing() -> None:
    # A token signed by an attacker's key that it names in every header slot: refused,
    # because only the configured key for the exact kid is used (no fetch is possible:
    # the validator has no HTTP client at all).
    attacker = OTHER_EC.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tok = jwt.encode(
        claims(),
        OTHER_EC,
        algorithm="ES256",
        headers={
            "kid": "ec1",
            "jku": "http://127.0.0.1:1/jwks.json",
            "x5u": "http://127.0.0.1:1/cert.pem",
            "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "x5c": [base64.b64encode(attacker).decode()],
        },
    )
    refused(tok, "jwt_bad_signature")
    # and the same headers on a genuinely signed token change nothing
    ok = token(jku="http://127.0.0.1:1/jwks.json", x5u="http://127.0.0.1:1/x")
    assert validator().authenticate(ok).subject == "alice"


@pytest.mark.parametrize(
    ("claim", "offset_s", "reason"),
    [
        ("exp", -120, "jwt_expired"),
        ("nbf", 300, "jwt_not_yet_valid"),
        ("iat", 300, None),  # issued in the future beyond the leeway
    ],
)
def test_expired_not_yet_valid_or_issued_in_the_future_is_401(
    claim: str, offset_s: int, reason: str | None
) -> None:
    # Times relative to when the test runs, not when the suite was collected.
    refused(token(claims(**{claim: int(time.time()) + offset_s})), reason)


def test_small_leeway_accepts_a_little_clock_skew() -> None:
    assert validator().authenticate(token(claims(iat=int(time.time()) + 10))).subject == "alice"


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub"])
def test_missing_required_claim_is_401(missing: str) -> None:
    refused(token(claims(**{missing: DROP})))


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "https://evil.test/tenant"},
        {"iss": "https://issuer.test/tenant/evil"},  # merely contains the right one
        {"iss": "https://issuer.test/ten"},
        {"iss": [ISS]},
        {"aud": "other"},
        {"aud": ["other", "another"]},
    ],
)
def test_wrong_issuer_or_audience_is_401(changes: dict[str, Any]) -> None:
    refused(token(claims(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": None},
        {"exp": [1]},
        {"exp": "9999999999"},
        {"iat": True},
        {"sub": 42},
        {"scp": ["a"]},
        {"roles": "x"},
    ],
)
def test_claims_of_the_wrong_type_are_401_never_500(changes: dict[str, Any]) -> None:
    refused(token(claims(**changes)))


def test_malformed_tokens_are_401() -> None:
    good = token()
    h, p, s = good.split(".")
    for bad in [
        f"{h}.{p}",  # two segments
        "a.b.c",  # bad base64 / JSON
        f"{h}.{p}.",  # stripped signature
        f"{h}.{p}.{s}.x.y",  # JWE-shaped
        "not a token",
        "",
        "." * 3000,
    ]:
        refused(bad)
    nested = token(cty="JWT")
    refused(nested, "jwt_nested")


def test_ambiguous_claims_json_is_401() -> None:
    # A duplicated member: parsers disagree on which wins (RFC 8725 §3.5).
    header = {"alg": "ES256", "kid": "ec1", "typ": "JWT"}
    body = b'{"sub":"alice","sub":"admin","iss":"%s","aud":"%s","iat":%d,"exp":%d}' % (
        ISS.encode(),
        AUD.encode(),
        int(time.time()),
        int(time.time()) + 300,
    )
    refused(signed(header, body), "jwt_malformed")


def test_verified_tokens_are_cached_but_never_past_exp() -> None:
    v = JWTValidator([IssuerConfig("t", ISS, AUD, frozenset({"ES256"}), leeway_s=0)])
    v.set_keys({"ec1": VerificationKey("ec1", ISS, "ES256", EC_KEY.public_key())})
    now = time.time()
    tok = token(claims(iat=int(now), exp=int(now) + 2))
    assert v.authenticate(tok).subject == "alice"
    assert v.authenticate(tok).subject == "alice"  # served from the cache
    time.sleep(max(0.0, int(now) + 2.2 - time.time()))
    with pytest.raises(Unauthenticated) as excinfo:
        v.authenticate(tok)  # the cache entry ended at exp: re-verified, and refused
    assert excinfo.value.reason == "jwt_expired"


def test_a_new_key_set_drops_cached_verdicts() -> None:
    v = validator()
    tok = token()
    v.authenticate(tok)
    v.set_keys({})  # the key was withdrawn
    with pytest.raises(Unauthenticated):
        v.authenticate(tok)
