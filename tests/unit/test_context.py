from __future__ import annotations

import pytest

from gateway import context
from gateway.errors import CredentialsInQuery


def test_well_formed_request_id_is_kept_anything_else_replaced() -> None:
    assert context.request_id("abcdef-1234") == "abcdef-1234"
    for bad in [None, "short", "x" * 200, "has space in it", 'a"\nforged":"1']:
        new = context.request_id(bad)
        assert new != bad
        assert len(new) == 32


@pytest.mark.parametrize(
    ("peer", "xff", "hops", "expected"),
    [
        ("10.0.0.1", "1.2.3.4", 0, "10.0.0.1"),  # no trusted proxies: header ignored
        ("10.0.0.1", "6.6.6.6, 1.2.3.4", 1, "1.2.3.4"),  # one proxy: rightmost entry
        ("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.9", 2, "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4", 2, "10.0.0.1"),  # fewer entries than hops: do not guess
        (None, None, 0, "unknown"),
    ],
)
def test_client_address_trusts_exactly_the_configured_hops(
    peer: str | None, xff: str | None, hops: int, expected: str
) -> None:
    assert context.client_address(peer, xff, hops) == expected


@pytest.mark.parametrize(
    "args",
    [
        {"api-key": "x"},
        {"api_key": "x"},
        {"token": "x"},
        {"access_token": "x"},
        {"x": "sg_abc"},
        {"q": "eyJhbGciOi"},
    ],
)
def test_credentials_in_query_are_rejected(args: dict[str, str]) -> None:
    with pytest.raises(CredentialsInQuery):
        context.reject_credentials_in_query(args)


def test_ordinary_query_is_allowed() -> None:
    context.reject_credentials_in_query({"verbose": "1"})
