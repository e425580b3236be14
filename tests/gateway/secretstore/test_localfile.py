from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import SecretStoreError, utcnow


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
    assert sorted(p.name for p in path.parent.iterdir()) == [".s.json.lock", "s.json"]
    assert stat.S_IMODE((path.parent / ".s.json.lock").stat().st_mode) == 0o600


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


def _writer(path: str, start: int) -> None:
    import asyncio as aio

    store = LocalSecretStore(Path(path))

    async def go() -> None:
        for i in range(start, start + 15):
            await store.set(f"k{i}", "v", tags={})

    aio.run(go())


def test_concurrent_writers_in_other_processes_lose_nothing(tmp_path: Path) -> None:
    # Without the file lock, read-modify-write races made one process undo the other's
    # change (a revocation silently lost, as the review found).
    import multiprocessing

    path = tmp_path / "s.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), n * 100)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    import asyncio as aio

    names = aio.run(LocalSecretStore(path).list_names())
    assert len(names) == 45


async def test_a_malformed_entry_is_a_store_error_and_refresh_keeps_going(tmp_path: Path) -> None:
    import asyncio as aio
    import json

    from gateway.identity.keyring import KeyRing

    path = tmp_path / "s.json"
    store = LocalSecretStore(path)
    await store.set("apikey-aaaaaaaaaaaaaaaa", "sha256:x", tags={"owner": "a"})
    ring = KeyRing(store, refresh_interval_s=0.05)
    await ring.refresh()
    doc = json.loads(path.read_text())
    del doc["secrets"]["apikey-aaaaaaaaaaaaaaaa"][0]["enabled"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="malformed"):
        await LocalSecretStore(path).list_names()
    task = aio.create_task(ring.run())
    await aio.sleep(0.2)
    assert not task.done()  # still refreshing
    assert ring.last_error is not None and "malformed" in ring.last_error
    doc["secrets"]["apikey-aaaaaaaaaaaaaaaa"][0]["enabled"] = False
    path.write_text(json.dumps(doc))
    for _ in range(100):  # the refresh backs off while failing: wait for it, not a fixed time
        await aio.sleep(0.05)
        if ring.last_error is None and ring.generations("aaaaaaaaaaaaaaaa")[0].enabled is False:
            break
    assert ring.last_error is None
    assert ring.generations("aaaaaaaaaaaaaaaa")[0].enabled is False  # the revocation arrived
    task.cancel()
