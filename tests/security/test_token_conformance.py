"""JWS compact serialization as RFC 7515/7519 (and RFC 8259 for the JSON) allow it, and
nothing more: a conformance suite over every segment, each token really signed over the
bytes it carries, so the refusal is the parser's and never the signature check's.

RFC 7515 §2 and §7.1: each part is BASE64URL (the URL-safe alphabet, padding omitted,
no whitespace or other characters); RFC 4648 §3.5: decoders refuse non-canonical input
(pad bits not zero); RFC 7515 §4 / RFC 7519 §7.2: header and claims are JSON objects,
UTF-8 (RFC 8259 §8.1: no byte order mark), with unique member names (RFC 7515 §5.2,
RFC 7519 §4); RFC 8259 §6: no NaN or Infinity. A token outside that is 401, whatever it
holds, and never anything else (the gateway counts it as a failed authentication).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.errors import Unauthenticated
from tests.security.test_tokens import EC_KEY, b64, claims, validator

HEADER = {"alg": "ES256", "typ": "JWT", "kid": "ec1"}


def signature(signing_input: str) -> bytes:
    r, s = decode_dss_signature(EC_KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def compact(header: str, payload: str, sig: Callable[[bytes], str] = b64) -> str:
    """Segments as given, signed over exactly those characters (RFC 7515 §5.1)."""
    return f"{header}.{payload}.{sig(signature(f'{header}.{payload}'))}"


def seg(obj: object) -> str:
    return b64(json.dumps(obj).encode())


def raw(data: bytes) -> str:
    return b64(data)


# Valid for ten years: the cases below are built once, at import, and each must be
# refused by the parser, never because the token expired meanwhile.
LONG_LIVED = claims(exp=int(time.time()) + 10 * 365 * 86400)
GOOD_HEADER, GOOD_PAYLOAD = seg(HEADER), seg(LONG_LIVED)


# Refused for what the token is, before any claim or signature is judged.
PARSER_REASONS = {"jwt_malformed", "jwt_alg_rejected"}


def refused_by_the_parser(token: str) -> None:
    with pytest.raises(Unauthenticated) as excinfo:
        validator().authenticate(token)
    assert excinfo.value.reason in PARSER_REASONS, excinfo.value.reason


def test_the_reference_token_of_this_suite_is_accepted() -> None:
    assert validator().authenticate(compact(GOOD_HEADER, GOOD_PAYLOAD)).subject == "alice"


def padded(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4) if len(segment) % 4 else segment + "=="


def standard_alphabet(obj: dict[str, object]) -> str:
    """The object in standard base64 (`+` and `/`), with filler until it has one."""
    for filler in range(1000):
        text = base64.b64encode(json.dumps({**obj, "f": "?" * filler}).encode())
        if b"+" in text or b"/" in text:
            return text.rstrip(b"=").decode()
    raise AssertionError("no filler gave a + or /")


def non_canonical(segment: str) -> str:
    """Same bytes, but the last character's unused bits set (RFC 4648 §3.5)."""
    assert len(segment) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(segment[-1])
    unused = 4 if len(segment) % 4 == 2 else 2
    return segment[:-1] + alphabet[last | ((1 << unused) - 1)]


def odd_length(obj: dict[str, object]) -> str:
    for filler in range(10):
        segment = seg({**obj, "f": "x" * filler})
        if len(segment) % 4 in (2, 3):
            return segment
    raise AssertionError


def trailing_bits_header() -> str:
    return non_canonical(odd_length(HEADER))


def trailing_bits_payload() -> str:
    return non_canonical(odd_length(LONG_LIVED))


# (header segment, payload segment) that must be refused, named for the rule.
ENCODINGS: dict[str, tuple[str, str]] = {
    "padding-in-header": (padded(GOOD_HEADER), GOOD_PAYLOAD),
    "padding-in-payload": (GOOD_HEADER, padded(GOOD_PAYLOAD)),
    "standard-alphabet-header": (standard_alphabet(HEADER), GOOD_PAYLOAD),
    "standard-alphabet-payload": (GOOD_HEADER, standard_alphabet(LONG_LIVED)),
    "space-in-header": (GOOD_HEADER[:5] + " " + GOOD_HEADER[5:], GOOD_PAYLOAD),
    "newline-in-payload": (GOOD_HEADER, GOOD_PAYLOAD[:7] + "\n" + GOOD_PAYLOAD[7:]),
    "illegal-character": (GOOD_HEADER, GOOD_PAYLOAD[:3] + "*" + GOOD_PAYLOAD[3:]),
    "pad-bits-set-header": (trailing_bits_header(), GOOD_PAYLOAD),
    "pad-bits-set-payload": (GOOD_HEADER, trailing_bits_payload()),
    "impossible-length": (GOOD_HEADER + "A" * (1 + (3 - len(GOOD_HEADER)) % 4), GOOD_PAYLOAD),
    "empty-header": ("", GOOD_PAYLOAD),
    "empty-payload": (GOOD_HEADER, ""),
}

PAYLOAD_TEXT = json.dumps(LONG_LIVED)
HEADER_TEXT = json.dumps(HEADER)
JSON_CASES: dict[str, tuple[str, str]] = {
    "header-array": (seg([HEADER]), GOOD_PAYLOAD),
    "header-string": (seg("ES256"), GOOD_PAYLOAD),
    "payload-array": (GOOD_HEADER, seg([LONG_LIVED])),
    "payload-number": (GOOD_HEADER, seg(7)),
    "payload-null": (GOOD_HEADER, seg(None)),
    "invalid-utf8-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT.encode()[:-1] + b',"x":"\xff"}')),
    "utf16-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT.encode("utf-16"))),
    "byte-order-mark-header": (raw(b"\xef\xbb\xbf" + HEADER_TEXT.encode()), GOOD_PAYLOAD),
    "nan-in-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT[:-1].encode() + b', "n": NaN}')),
    "infinity-in-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT[:-1].encode() + b', "n": -Infinity}')),
    "duplicate-member-header": (
        raw(HEADER_TEXT[:-1].encode() + b', "alg": "none"}'),
        GOOD_PAYLOAD,
    ),
    "duplicate-member-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT[:-1].encode() + b', "sub": "x"}')),
    "trailing-data-payload": (GOOD_HEADER, raw(PAYLOAD_TEXT.encode() + b" {}")),
    "deeply-nested-header": (raw(b'{"x": ' + b"[" * 2_000 + b"]" * 2_000 + b"}"), GOOD_PAYLOAD),
    "deeply-nested-payload": (GOOD_HEADER, raw(b'{"x": ' + b"[" * 2_000 + b"]" * 2_000 + b"}")),
    "b64-false-header": (seg({**HEADER, "b64": False}), GOOD_PAYLOAD),
    "alg-not-a-string": (seg({**HEADER, "alg": ["ES256"]}), GOOD_PAYLOAD),
}


@pytest.mark.parametrize(("header", "payload"), ENCODINGS.values(), ids=ENCODINGS.keys())
def test_segments_outside_base64url_are_401(header: str, payload: str) -> None:
    refused_by_the_parser(compact(header, payload))


@pytest.mark.parametrize(("header", "payload"), JSON_CASES.values(), ids=JSON_CASES.keys())
def test_header_and_claims_outside_the_json_rules_are_401(header: str, payload: str) -> None:
    refused_by_the_parser(compact(header, payload))


SIGNATURES: dict[str, Callable[[bytes], str]] = {
    "padded": lambda s: b64(s) + "=",
    "standard-alphabet": lambda s: base64.b64encode(s).decode().rstrip("="),
    "with-whitespace": lambda s: b64(s)[:10] + " " + b64(s)[10:],
    "pad-bits-set": lambda s: non_canonical(b64(s)),
    "empty": lambda s: "",
    "too-short": lambda s: b64(s[:-1]),
}


@pytest.mark.parametrize("sig", SIGNATURES.values(), ids=SIGNATURES.keys())
def test_signatures_outside_base64url_or_their_length_are_401(
    sig: Callable[[bytes], str],
) -> None:
    # ECDSA signatures are random: sign again until the rule changes a character (a
    # standard-alphabet signature without + or / would be a valid base64url one).
    for _ in range(100):
        token = compact(GOOD_HEADER, GOOD_PAYLOAD, sig)
        part = token.rsplit(".", 1)[1]
        canonical = bool(re.fullmatch(r"[A-Za-z0-9_-]{86}", part)) and (
            b64(base64.urlsafe_b64decode(part + "==")) == part
        )
        if not canonical:
            break
    else:
        raise AssertionError("no signature the rule changes")
    with pytest.raises(Unauthenticated):
        validator().authenticate(token)


@pytest.mark.parametrize(
    "shape",
    [
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: t + ".",  # four, the last empty
        lambda t: t + "." + GOOD_PAYLOAD,  # four
        lambda t: ".".join([GOOD_HEADER, "", GOOD_PAYLOAD, "", "sig"]),  # JWE's five
        lambda t: " " + t,  # whitespace around the token
        lambda t: t + "\n",
    ],
    ids=["two", "four-empty", "four", "jwe-five", "leading-space", "trailing-newline"],
)
def test_tokens_of_another_shape_are_401(shape: Callable[[str], str]) -> None:
    with pytest.raises(Unauthenticated):
        validator().authenticate(shape(compact(GOOD_HEADER, GOOD_PAYLOAD)))
