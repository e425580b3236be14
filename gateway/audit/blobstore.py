"""The audit trail in Azure Blob Storage: sealed into a local spool first, then shipped.

    writer thread ─write()─▶ spool: rotated JSON lines on the pod's volume (a FileSink)
                                │
    shipper task ◀──────────────┘ what is not shipped yet, appended in order to the
        replica's append blob   <replica>/<YYYY-MM-DD>/<first seq, 12 digits>.jsonl

- **Nothing lost.** A record counts as written once it is in the spool. The spool is
  bounded: while the store is unreachable it absorbs records up to ``max_spool_bytes``,
  then `write` fails and the trail's policy applies (``closed``: 503). A restarted
  replica finds what it shipped in the store (the last record of its newest blob) and
  ships the rest of its spool first. Shutdown ships everything before the process exits.
- **Nothing doubled.** Every append states where it must land (If-Append-Position-Equal,
  the blob's length before it). A retry of an append that did land, after a timeout,
  is refused with 412 by the service; the blob's length then shows it landed.
- **Blobs.** One append blob per replica and day, and a new one before Azure's limit of
  50,000 blocks; names say the replica, the day and the first sequence number, so a
  blob's range ends where the next one's begins. A container with a time-based
  retention (WORM) policy keeps them unmodifiable; the gateway only creates and appends.
- **Replica.** The pod's name and an id the spool gets when it is first made: a replica
  whose spool is lost starts a new chain under a new name instead of a second chain
  under the old one.

Authentication is the caller's `azure.core` credential: DefaultAzureCredential, i.e.
workload identity on AKS. No account key appears anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from gateway.audit.record import NODE
from gateway.audit.sinks import FileSink, chain_files

if TYPE_CHECKING:  # the SDK is imported where a blob store is configured
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.storage.blob.aio import ContainerClient

log = logging.getLogger("gateway.audit.store")

MIB = 1024 * 1024
BLOCK_BYTES = 4 * MIB  # the size of one append; the service allows up to 100 MiB
MAX_BLOCKS = 49_000  # Azure: 50,000 blocks per append blob
SPOOL_ROTATE_BYTES = 8 * MIB
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_BLOB_NAME = re.compile(r"^(?P<replica>[^/]+)/(?P<day>\d{4}-\d{2}-\d{2})/(?P<seq>\d{12})\.jsonl$")


class AuditStoreError(Exception):
    """The store holds something this replica did not write where it writes."""


def blob_name(replica: str, day: str, first_seq: int) -> str:
    return f"{replica}/{day}/{first_seq:012d}.jsonl"


def parse_blob_name(name: str) -> tuple[str, str, int] | None:
    match = _BLOB_NAME.match(name)
    if match is None:
        return None
    return match["replica"], match["day"], int(match["seq"])


def utc_day() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


# One store operation may take this long: a connection that dies under a request (the
# store restarting) must not hold the shipper, and with it the shutdown's flush, for the
# SDK's default minute. An append that timed out but landed is found by its position.
STORE_TIMEOUT_S = 10.0


def open_container(url: str, credential: AsyncTokenCredential) -> ContainerClient:
    from azure.storage.blob.aio import ContainerClient

    return ContainerClient.from_container_url(
        url,
        credential=credential,
        connection_timeout=STORE_TIMEOUT_S / 2,
        read_timeout=STORE_TIMEOUT_S,
        # The SDK's own retries wait 15 s, then 18 s, then 24 s: the shipper retries
        # with its own backoff, so the SDK tries twice more within about two seconds.
        retry_total=2,
        initial_backoff=0.5,
        increment_base=1,
    )


def spool_replica(spool: Path, node: str = NODE) -> str:
    """This spool's replica name: the pod's name and the spool's own id (made once)."""
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = spool / "replica-id"
    if not marker.exists():
        marker.write_text(secrets.token_hex(4))
    safe_node = re.sub(r"[^A-Za-z0-9.-]", "-", node)[:48] or "gateway"
    return f"{safe_node}-{marker.read_text().strip()}"


@dataclass
class _Blob:
    name: str
    day: str
    offset: int  # its length: where the next append must land
    blocks: int


@dataclass
class _Cursor:
    path: Path
    offset: int  # byte offset of the first record not shipped
    seq: int  # the last record before it
    inode: int = 0  # the file's: the live file's name passes to a new file at rotation

    def valid(self, shipped_seq: int) -> bool:
        try:
            return self.seq == shipped_seq and self.path.stat().st_ino == self.inode
        except FileNotFoundError:
            return False


def _cursor(path: Path, offset: int, seq: int) -> _Cursor:
    return _Cursor(path, offset, seq, path.stat().st_ino)


class BlobSink:
    """An AuditSink: the spool takes the lines, the shipper takes them to the store."""

    def __init__(
        self,
        container: ContainerClient,
        spool_dir: Path,
        *,
        max_spool_bytes: int,
        fsync: bool = False,
        ship_interval_s: float = 1.0,
        node: str = NODE,
        credential: AsyncTokenCredential | None = None,  # closed with the sink
    ) -> None:
        self._container = container
        self._credential = credential
        self.spool_dir = spool_dir
        self.replica = spool_replica(spool_dir, node)
        self._spool = FileSink(
            spool_dir / "audit.jsonl",
            fsync=fsync,
            rotate_bytes=SPOOL_ROTATE_BYTES,
            rotate_interval_s=3600.0,
        )
        self._max_spool_bytes = max_spool_bytes
        self._ship_interval_s = ship_interval_s
        self._lock = threading.Lock()
        self._shipping = asyncio.Lock()
        self._unshipped = 0  # bytes in the spool that are not in the store yet
        self._written_seq = 0  # the last record handed to the spool
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blob: _Blob | None = None
        self._cursor: _Cursor | None = None
        self.shipped_seq = 0
        self.store_ok = True
        self.last_error: str | None = None
        self.appended_blocks = 0
        self.appended_bytes = 0

    # -- AuditSink (the writer thread) ---------------------------------------------------
    def tail(self) -> tuple[int, str]:
        return self._spool.tail()

    def write(self, lines: list[bytes]) -> None:
        size = sum(len(line) for line in lines)
        with self._lock:
            if self._unshipped + size > self._max_spool_bytes:
                raise OSError(
                    f"audit spool full ({self._unshipped} bytes not yet in the audit store): "
                    f"the store is unreachable or too slow ({self.last_error or 'no error yet'})"
                )
            self._spool.write(lines)
            self._unshipped += size
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def close(self) -> None:
        self._spool.close()

    @property
    def unshipped_bytes(self) -> int:
        return self._unshipped

    # -- the shipper (the event loop) ----------------------------------------------------
    async def start(self) -> None:
        """Find what this replica already shipped; count what it has not."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await self._find_shipped()
        await asyncio.to_thread(self._count_unshipped)
        if self._unshipped:
            log.warning(
                "audit spool holds %d bytes not in the store yet; shipping them first",
                self._unshipped,
            )
            self._wake.set()

    async def _find_shipped(self) -> None:
        newest: tuple[int, str, str] | None = None
        async for blob in self._container.list_blobs(name_starts_with=f"{self.replica}/"):
            parsed = parse_blob_name(blob.name)
            if parsed is not None and (newest is None or parsed[2] > newest[0]):
                newest = (parsed[2], parsed[1], blob.name)
        if newest is None:
            return
        _, day, name = newest
        client = self._container.get_blob_client(name)
        props = await client.get_blob_properties()
        size = int(props.size)
        blocks = int(getattr(props, "append_blob_committed_block_count", 0) or 0)
        self._blob = _Blob(name, day, size, blocks)
        if size == 0:
            return
        start = max(0, size - 256 * 1024)
        tail = await (await client.download_blob(offset=start, length=size - start)).readall()
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        self.shipped_seq = int(orjson.loads(last)["seq"])

    def _count_unshipped(self) -> None:
        cursor = self._seek(self.shipped_seq)
        total = 0
        if cursor is not None:
            files = chain_files(self.spool_dir)
            for path in files[files.index(cursor.path) :]:
                total += path.stat().st_size - (cursor.offset if path == cursor.path else 0)
        with self._lock:
            self._unshipped = total

    def _seek(self, after_seq: int) -> _Cursor | None:
        """Where the first record after ``after_seq`` starts in the spool (None: nowhere yet)."""
        for path in chain_files(self.spool_dir):
            rotated = re.fullmatch(r"audit-(\d{12})\.jsonl", path.name)
            if rotated and int(rotated.group(1)) <= after_seq:
                continue
            offset = 0
            with path.open("rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    if int(orjson.loads(line)["seq"]) > after_seq:
                        return _cursor(path, offset, after_seq)
                    offset += len(line)
            return _cursor(path, offset, after_seq)
        return None

    def _read_chunk(self) -> tuple[bytes, int, int, _Cursor] | None:
        """The next whole records after the cursor, up to one block: (data, first, last,
        the cursor after them). The cursor moves only once the store has taken them."""
        cursor = self._cursor
        if cursor is None or not cursor.valid(self.shipped_seq):
            cursor = self._seek(self.shipped_seq)
            if cursor is None:
                return None
        lines: list[bytes] = []
        size = 0
        path, offset = cursor.path, cursor.offset
        while True:
            with path.open("rb") as fh:
                fh.seek(offset)
                for line in fh:
                    if not line.endswith(b"\n") or size + len(line) > BLOCK_BYTES:
                        break
                    lines.append(line)
                    size += len(line)
                    offset += len(line)
            files = chain_files(self.spool_dir)
            if size >= BLOCK_BYTES or path not in files or path == files[-1]:
                break
            following = files[files.index(path) + 1]
            if offset < path.stat().st_size:  # a partial line at the end: not yet
                break
            path, offset = following, 0
        self._cursor = cursor  # where this chunk starts, found again cheaply on a retry
        if not lines:
            return None
        first = int(orjson.loads(lines[0])["seq"])
        last = int(orjson.loads(lines[-1])["seq"])
        return b"".join(lines), first, last, _cursor(path, offset, last)

    async def _new_blob(self, first_seq: int) -> _Blob:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        day = utc_day()
        name = blob_name(self.replica, day, first_seq)
        client = self._container.get_blob_client(name)
        try:
            # Never over an existing blob: create_append_blob would otherwise empty it.
            await client.create_append_blob(match_condition=MatchConditions.IfMissing)
        except (ResourceExistsError, ResourceModifiedError):
            # Our own earlier attempt (its answer lost): empty, or this replica's records.
            props = await client.get_blob_properties()
            if int(props.size) != 0:
                raise AuditStoreError(f"{name} exists and is not empty") from None
        return _Blob(name, day, 0, 0)

    async def _append(self, data: bytes, first_seq: int) -> None:
        from azure.core.exceptions import HttpResponseError

        blob = self._blob
        if blob is None or blob.day != utc_day() or blob.blocks >= MAX_BLOCKS:
            blob = self._blob = await self._new_blob(first_seq)
        client = self._container.get_blob_client(blob.name)
        try:
            await client.append_block(data, length=len(data), appendpos_condition=blob.offset)
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
            # The position condition failed: a retry of an append that landed (the SDK
            # retries after a timeout), or someone else's bytes. The length tells which.
            size = int((await client.get_blob_properties()).size)
            if size != blob.offset + len(data):
                raise AuditStoreError(
                    f"{blob.name}: {size} bytes where this replica expects {blob.offset}"
                ) from exc
            log.info("audit append to %s had landed before its retry", blob.name)
        blob.offset += len(data)
        blob.blocks += 1
        self.appended_blocks += 1
        self.appended_bytes += len(data)

    async def ship(self) -> int:
        """Ship everything the spool holds now; the number of records shipped. One at a
        time (the shipper task and the shutdown flush may both call it): two appends at
        the same position would otherwise take each other's landing for their own."""
        async with self._shipping:
            return await self._ship()

    async def _ship(self) -> int:
        shipped = 0
        while True:
            chunk = await asyncio.to_thread(self._read_chunk)
            if chunk is None:
                return shipped
            data, first, last, after = chunk
            if first != self.shipped_seq + 1 and self.shipped_seq:
                log.error(
                    "audit spool resumes at seq %d after %d shipped: the store has a gap",
                    first,
                    self.shipped_seq,
                )
            async with asyncio.timeout(2 * STORE_TIMEOUT_S):  # the append and its check
                await self._append(data, first)
            self.shipped_seq, self._cursor = last, after
            with self._lock:
                self._unshipped = max(0, self._unshipped - len(data))
            shipped += last - first + 1
            await asyncio.to_thread(self._prune)

    def _prune(self) -> None:
        """Remove spool files wholly shipped, but the newest rotated one: the chain's
        tail is read from the spool when the process restarts."""
        rotated = sorted(self.spool_dir.glob("audit-*.jsonl"))
        for path in rotated[:-1]:
            if int(path.stem.removeprefix("audit-")) <= self.shipped_seq:
                path.unlink(missing_ok=True)

    async def run(self) -> None:
        """Ship as records arrive (at most every ``ship_interval_s``), retrying with backoff."""
        assert self._wake is not None, "start() first"  # noqa: S101 - a programming error
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._ship_interval_s * 10)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.ship()
            except Exception as exc:  # any store fault: network, throttling, auth
                self.store_ok = False
                self.last_error = type(exc).__name__
                delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                failures += 1
                log.error("audit store unreachable (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            if not self.store_ok:
                log.warning("audit store reachable again; spool shipped")
            self.store_ok, self.last_error, failures = True, None, 0
            await asyncio.sleep(self._ship_interval_s)

    async def flush(self, timeout_s: float) -> bool:
        """Ship everything before shutdown; False when the store would not take it in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.ship(), timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.error("audit store: shipping at shutdown failed (%r)", exc)
                await asyncio.sleep(0.5)
                continue
            if self._unshipped == 0:
                return True
        log.error(
            "audit store: %d bytes left in the spool at shutdown; the next start ships them",
            self._unshipped,
        )
        return False

    async def aclose(self) -> None:
        await self._container.close()
        if self._credential is not None:
            await self._credential.close()


# -- reading the store back ----------------------------------------------------------------
async def download_container(container: ContainerClient, into: Path) -> dict[str, Path]:
    """Every replica's blobs, as one folder per replica of chain-ordered files that the
    review reads like a trail directory (streamed to disk, never whole in memory)."""
    replicas: dict[str, Path] = {}
    async for blob in container.list_blobs():
        parsed = parse_blob_name(blob.name)
        if parsed is None:
            continue
        replica, _, first_seq = parsed
        folder = replicas.setdefault(replica, into / replica)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"audit-{first_seq:012d}.jsonl"
        stream = await container.get_blob_client(blob.name).download_blob()
        with target.open("wb") as fh:
            async for chunk in stream.chunks():
                fh.write(chunk)
    return replicas


async def download_store(url: str, into: Path) -> dict[str, Path]:
    """A container's replicas as `download_container` lays them out, read with
    DefaultAzureCredential (a reviewer's `az login`, or workload identity)."""
    from azure.identity.aio import DefaultAzureCredential

    async with DefaultAzureCredential() as credential:
        async with open_container(url, credential) as container:
            return await download_container(container, into)
