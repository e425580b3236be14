from __future__ import annotations

import pytest

from gateway.errors import CredentialsInQuery
from gateway.steps import context


def test_request_ids_are_ours_and_a_clients_id_is_kept_only_when_well_formed() -> None:
    ids = {context.new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)
    assert context.client_request_id("abcdef-1234") == "abcdef-1234"
    for bad in [None, "short", "x" * 200, "has space in it", 'a"\nforged":"1']:
        assert context.client_request_id(bad) is None


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
        [("api-key", "x")],
        [("api_key", "x")],
        [("token", "x")],
        [("access_token", "x")],
        [("x", "sg_abc")],
        [("q", "eyJhbGciOi")],
        [("x", "1"), ("x", "sg_abc")],  # a second value of the same name
        [("x", " sg_abc")],  # not only at the start
    ],
)
def test_credentials_in_query_are_rejected(args: list[tuple[str, str]]) -> None:
    with pytest.raises(CredentialsInQuery):
        context.reject_credentials_in_query(args)


def test_ordinary_query_is_allowed() -> None:
    context.reject_credentials_in_query([("verbose", "1"), ("verbose", "2")])
