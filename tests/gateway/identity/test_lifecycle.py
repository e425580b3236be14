from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.errors import Unauthenticated
from gateway.identity import apikeys, lifecycle
from gateway.identity.apikeys import authenticate
from gateway.identity.keyring import KeyRing
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import utcnow


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("1h30m", 5400), ("45s", 45), ("2w", 1209600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert lifecycle.parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "d", "1x", "0d", "-1d", "1d 2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(lifecycle.KeyAdminError):
        lifecycle.parse_duration(text)


async def test_create_stores_only_the_digest_and_the_key_authenticates(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "s.json")
    issued = await lifecycle.create(
        store, owner="alice", scopes=["models:iris"], expires_in=dt.timedelta(days=1)
    )
    text = (tmp_path / "s.json").read_text()
    assert issued.key not in text
    assert apikeys.digest(issued.key) in text
    ring = KeyRing(store, refresh_interval_s=1)
    await ring.refresh()
    principal = authenticate(issued.key, ring, utcnow())
    assert (principal.subject, principal.scopes, principal.key_id) == (
        "alice",
        frozenset({"models:iris"}),
        issued.generation.key_id,
    )
    assert issued.key not in repr(issued)


async def test_revoke_disables_every_generation_and_list_shows_it(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "s.json")
    issued = await lifecycle.create(store, owner="bob", scopes=["models:iris"])
    revoked = await lifecycle.revoke(store, issued.generation.key_id)
    assert [g.enabled for g in revoked] == [False]
    rows = [lifecycle.describe(g) for g in await lifecycle.list_keys(store)]
    assert rows[0]["state"] == "revoked"
    ring = KeyRing(store, refresh_interval_s=1)
    await ring.refresh()
    with pytest.raises(Unauthenticated) as excinfo:
        authenticate(issued.key, ring, utcnow())
    assert excinfo.value.reason == "api_key_revoked"


@pytest.mark.parametrize(
    ("owner", "scopes"), [("", ["a"]), ("ok", []), ("ok", ["bad scope"]), ("a b", ["x"])]
)
async def test_create_validates_owner_and_scopes(
    tmp_path: Path, owner: str, scopes: list[str]
) -> None:
    with pytest.raises(lifecycle.KeyAdminError):
        await lifecycle.create(LocalSecretStore(tmp_path / "s.json"), owner=owner, scopes=scopes)


async def test_revoke_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(lifecycle.KeyAdminError, match="no key"):
        await lifecycle.revoke(LocalSecretStore(tmp_path / "s.json"), "a" * 16)
