from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from gateway.secretstore import LocalSecretStore, SecretStoreError, utcnow


async def test_versions_accumulate_and_update_changes_only_the_named_one(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "s.json")
    v1 = await store.set("apikey-x", "sha256:1", tags={"owner": "a"})
    v2 = await store.set("apikey-x", "sha256:2", tags={"owner": "a"})
    assert [v.version for v in await store.versions("apikey-x")] == [v1.version, v2.version]
    await store.update("apikey-x", v1.version, enabled=False)
    versions = await store.versions("apikey-x")
    assert [v.enabled for v in versions] == [False, True]
    assert await store.versions("missing") == []
    with pytest.raises(SecretStoreError):
        await store.update("apikey-x", "nope", enabled=False)


async def test_file_is_0600_and_no_temporary_files_remain(tmp_path: Path) -> None:
    path = tmp_path / "state" / "s.json"
    store = LocalSecretStore(path)
    await store.set("a", "v", tags={})
    await store.set("b", "v", tags={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json"]


async def test_a_second_instance_sees_changes_made_by_the_first(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    writer, reader = LocalSecretStore(path), LocalSecretStore(path)
    assert await reader.list_names() == []
    await writer.set("apikey-1", "v", tags={})
    assert await reader.list_names() == ["apikey-1"]
    assert await reader.list_names("other") == []


async def test_validity_window(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "s.json")
    now = utcnow()
    v = await store.set("a", "topsecretvalue", tags={}, expires_on=now + dt.timedelta(hours=1))
    assert v.usable(now)
    assert not v.usable(now + dt.timedelta(hours=2))
    assert "topsecretvalue" not in repr(v)  # the value is excluded from repr


async def test_unreadable_store_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{broken")
    with pytest.raises(SecretStoreError, match="cannot read"):
        await LocalSecretStore(path).list_names()
