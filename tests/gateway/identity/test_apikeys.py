from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from gateway.identity import apikeys


def test_new_key_round_trips_and_has_the_documented_shape() -> None:
    key_id = apikeys.new_key_id()
    key = apikeys.new_key(key_id)
    assert apikeys.KEY_PATTERN.fullmatch(key)
    parsed = apikeys.parse(key)
    assert parsed is not None
    assert parsed.key_id == key_id
    assert len(key) == 3 + 16 + 1 + 52 + 1 + 8


def test_generations_share_the_id_but_not_the_secret() -> None:
    key_id = apikeys.new_key_id()
    a, b = apikeys.new_key(key_id), apikeys.new_key(key_id)
    assert a != b
    assert apikeys.digest(a) != apikeys.digest(b)


def test_digest_is_sha256_of_the_whole_key_and_never_contains_it() -> None:
    key = apikeys.new_key(apikeys.new_key_id())
    digest = apikeys.digest(key)
    assert digest.startswith("sha256:")
    assert len(digest) == 7 + 64
    assert key.split("_")[2] not in digest


def test_repr_never_shows_the_secret() -> None:
    key = apikeys.new_key(apikeys.new_key_id())
    parsed = apikeys.parse(key)
    assert parsed is not None
    assert key.split("_")[2] not in repr(parsed)


@given(
    position=st.integers(min_value=0, max_value=80),
    char=st.sampled_from(string.ascii_lowercase + "234567"),
)
def test_any_single_character_change_is_caught_by_the_checksum(position: int, char: str) -> None:
    key = apikeys.new_key("a" * 16)
    changed = key[:position] + char + key[position + 1 :]
    if changed != key:
        assert apikeys.parse(changed) is None


@given(st.text(max_size=200))
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    result = apikeys.parse(text)
    assert result is None or apikeys.KEY_PATTERN.fullmatch(text)


def test_oversized_input_is_rejected_before_matching() -> None:
    assert apikeys.parse("sg_" + "a" * 10_000) is None
