"""The audit store against Azurite: append blobs, nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob.aio import BlobClient, ContainerClient

from certs.authority import CertPaths
from gateway.audit import review
from gateway.audit.blobstore import BlobSink, parse_blob_name, utc_day
from gateway.audit.sinks import chain_files
from gateway.audit.trail import AuditTrail
from tests.azurite import AzuriteServer, container_client, stored
from tests.conftest import free_port
from tests.gateway.audit.test_trail import event


def container(url: str, ca: Path) -> ContainerClient:
    return container_client(url, ca, retry_total=0)


def sink(url: str, ca: Path, spool: Path, **kwargs: Any) -> BlobSink:
    kwargs.setdefault("max_spool_bytes", 64 * 1024 * 1024)
    return BlobSink(container(url, ca), spool, ship_interval_s=0.05, **kwargs)


def lines(count: int, start: int = 1) -> list[bytes]:
    """Sealed-looking lines for the sink alone (the trail seals real ones)."""
    return [orjson.dumps({"seq": start + i, "n": i}) + b"\n" for i in range(count)]


def spool_bytes(spool: Path) -> bytes:
    return b"".join(p.read_bytes() for p in chain_files(spool))


def records_of(folder: Path) -> list[dict[str, Any]]:
    return [r for _, _, r in review.read_records([folder])]


@pytest.fixture
async def shipping() -> AsyncIterator[list[BlobSink]]:
    sinks: list[BlobSink] = []
    yield sinks
    for s in sinks:
        s.close()
        await s.aclose()


async def test_trail_records_reach_one_append_blob_per_replica_and_day_in_order(
    audit_container: str, pki: CertPaths, tmp_path: Path, shipping: list[BlobSink]
) -> None:
    blob_sink = sink(audit_container, pki.ca_cert, tmp_path / "spool")
    shipping.append(blob_sink)
    await blob_sink.start()
    trail = AuditTrail(blob_sink, queue_size=1000, checkpoint_every=100)
    writer = asyncio.create_task(trail.run())
    shipper = asyncio.create_task(blob_sink.run())
    for i in range(250):
        trail.record(event(i), reserved=False)
    await trail.drain()
    assert await blob_sink.flush(10)
    writer.cancel()
    shipper.cancel()
    replicas = await stored(audit_container, pki.ca_cert, tmp_path / "store")
    assert list(replicas) == [blob_sink.replica]
    (blob,) = replicas[blob_sink.replica].iterdir()
    assert blob.read_bytes() == spool_bytes(tmp_path / "spool")  # the same bytes, once
    assert [r["seq"] for r in records_of(replicas[blob_sink.replica])] == list(range(1, 251))
    assert review.verify([replicas[blob_sink.replica]]).ok
    async with container(audit_container, pki.ca_cert) as client:
        names = [b.name async for b in client.list_blobs()]
    assert [parse_blob_name(n) for n in names] == [(blob_sink.replica, utc_day(), 1)]


async def test_an_append_retried_after_it_landed_is_not_written_twice(
    audit_container: str,
    pki: CertPaths,
    tmp_path: Path,
    shipping: list[BlobSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blob_sink = sink(audit_container, pki.ca_cert, tmp_path / "spool")
    shipping.append(blob_sink)
    await blob_sink.start()
    blob_sink.write(lines(10))
    assert await blob_sink.ship() == 10
    blob_sink.write(lines(10, start=11))
    real = BlobClient.append_block
    calls = 0

    async def lands_then_times_out(self: BlobClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await real(self, *args, **kwargs)
        if calls == 1:  # the block is in the blob; its answer never arrives
            raise ServiceResponseError("the connection timed out")
        return result

    monkeypatch.setattr(BlobClient, "append_block", lands_then_times_out)
    with pytest.raises(ServiceResponseError):
        await blob_sink.ship()
    assert blob_sink.shipped_seq == 10  # not counted as shipped: it is tried again
    assert await blob_sink.ship() == 10  # 412 on the position, the length shows it landed
    assert calls == 2
    replicas = await stored(audit_container, pki.ca_cert, tmp_path / "store")
    assert [r["seq"] for r in records_of(replicas[blob_sink.replica])] == list(range(1, 21))


async def test_a_restarted_replica_ships_its_spool_first_and_nothing_twice(
    audit_container: str, pki: CertPaths, tmp_path: Path, shipping: list[BlobSink]
) -> None:
    spool = tmp_path / "spool"
    first = sink(audit_container, pki.ca_cert, spool)
    await first.start()
    first.write(lines(30))
    assert await first.ship() == 30
    first.write(lines(20, start=31))  # in the spool, not shipped: the process dies here
    first.close()
    await first.aclose()
    again = sink(audit_container, pki.ca_cert, spool)
    shipping.append(again)
    assert again.replica == first.replica  # the same spool: the same chain
    await again.start()
    assert again.shipped_seq == 30 and again.unshipped_bytes > 0
    assert await again.ship() == 20
    replicas = await stored(audit_container, pki.ca_cert, tmp_path / "store")
    assert [r["seq"] for r in records_of(replicas[first.replica])] == list(range(1, 51))
    other = sink(audit_container, pki.ca_cert, tmp_path / "another-spool")
    shipping.append(other)
    assert other.replica != first.replica  # a lost spool starts a chain of its own


@pytest.fixture
def own_azurite(pki: CertPaths, tmp_path: Path) -> Iterator[AzuriteServer]:
    server = AzuriteServer(pki.cert("gateway"), pki.key("gateway"), free_port(), tmp_path / "az")
    server.start()
    yield server
    server.stop()


async def test_store_down_the_spool_absorbs_to_its_bound_then_ships_everything_once(
    own_azurite: AzuriteServer, pki: CertPaths, tmp_path: Path, shipping: list[BlobSink]
) -> None:
    url = own_azurite.container_url("audit")
    async with container(url, pki.ca_cert) as client:
        await client.create_container()
    blob_sink = sink(url, pki.ca_cert, tmp_path / "spool", max_spool_bytes=64 * 1024)
    shipping.append(blob_sink)
    await blob_sink.start()
    blob_sink.write(lines(100))
    assert await blob_sink.ship() == 100
    own_azurite.stop()  # the store goes away
    seq = 101
    with pytest.raises(OSError, match="audit spool full"):
        while True:
            blob_sink.write(lines(50, start=seq))
            seq += 50
    with pytest.raises(Exception):  # noqa: B017 - any transport error: the store is down
        await blob_sink.ship()
    own_azurite.start()  # back, with everything it held
    shipped = await blob_sink.ship()
    assert shipped == seq - 101 and blob_sink.unshipped_bytes == 0
    blob_sink.write(lines(1, start=seq))  # the spool takes records again
    assert await blob_sink.ship() == 1
    replicas = await stored(url, pki.ca_cert, tmp_path / "store")
    assert [r["seq"] for r in records_of(replicas[blob_sink.replica])] == list(range(1, seq + 1))


async def test_the_shipper_and_the_shutdown_flush_shipping_at_once_store_each_record_once(
    audit_container: str, pki: CertPaths, tmp_path: Path, shipping: list[BlobSink]
) -> None:
    """Before: both read the same chunk, both appended at one position, the second took the
    first's landing for its own and counted the blob's length twice; every later append
    then failed its position check and the rest of the trail never reached the store."""
    blob_sink = sink(audit_container, pki.ca_cert, tmp_path / "spool")
    shipping.append(blob_sink)
    await blob_sink.start()
    for start in range(1, 400, 40):
        blob_sink.write(lines(40, start=start))
        await asyncio.gather(blob_sink.ship(), blob_sink.ship(), blob_sink.flush(5))
    replicas = await stored(audit_container, pki.ca_cert, tmp_path / "store")
    assert [r["seq"] for r in records_of(replicas[blob_sink.replica])] == list(range(1, 401))
