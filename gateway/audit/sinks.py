"""Where sealed audit lines go: a rotated file chain, or standard output.

AuditSink (Protocol: tail, write, close)
 ├── FileSink    append-only JSON lines, rotated by size or age, 0600 in a 0700 dir
 ├── StdoutSink  JSON lines for Container Insights / Log Analytics
 └── ShippingSink (Protocol: + start, run, flush, aclose): a sink with a task of its own
      └── BlobSink  a local spool shipped to Azure Blob Storage (gateway.audit.blobstore)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson

from gateway.audit.record import GENESIS, AuditTrailError


class AuditSink(Protocol):
    def tail(self) -> tuple[int, str]:
        """The last sealed record's (seq, hash), to continue the chain after a restart."""
        ...

    def write(self, lines: list[bytes]) -> None:
        """Persist the lines in order, or raise OSError. Called from a worker thread."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ShippingSink(AuditSink, Protocol):
    """A sink that ships what it took elsewhere, in a task of its own."""

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def flush(self, timeout_s: float) -> bool: ...

    async def aclose(self) -> None: ...

    @property
    def unshipped_bytes(self) -> int: ...


def rotated_name(last_seq: int) -> str:
    """Rotated files sort by name in chain order; the live file is always ``audit.jsonl``."""
    return f"audit-{last_seq:012d}.jsonl"


def chain_files(directory: Path) -> list[Path]:
    """A trail directory's files in chain order: rotated ones, then the live one."""
    files = sorted(directory.glob("audit-*.jsonl"))
    live = directory / "audit.jsonl"
    return [*files, live] if live.exists() else files


class FileSink:
    """Append-only JSON lines in a 0700 directory, files 0600, rotated by size or age.

    The chain runs on across rotations: the first record of a new file points at the last
    record of the previous one.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_interval_s: float = 86_400.0,
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._rotate_bytes = rotate_bytes
        self._rotate_interval_s = rotate_interval_s
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._opened = time.monotonic()

    def tail(self) -> tuple[int, str]:
        for path in reversed(chain_files(self.path.parent)):
            last = _last_line(path)
            if last is not None:
                try:
                    record = orjson.loads(last)
                    return int(record["seq"]), str(record["hash"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise AuditTrailError(
                        f"{path} ends with a partial or foreign record; inspect it with "
                        "`scoregate audit verify` before the gateway appends to it"
                    ) from None
        return 0, GENESIS

    def _rotate(self) -> None:
        """Rename the live file aside and start a new one; safe to retry after any failure.

        The new file is opened before the old descriptor is closed, so a failure at any step
        leaves a usable descriptor and a state the next write can repair.
        """
        last = _last_line(self.path) if self.path.exists() else None
        if last is None:
            return
        os.replace(self.path, self.path.with_name(rotated_name(int(orjson.loads(last)["seq"]))))
        old = self._fd
        self._open()
        os.close(old)

    def write(self, lines: list[bytes]) -> None:
        data = memoryview(b"".join(lines))
        if not self.path.exists():  # moved aside by a rotation that failed half-way
            old = self._fd
            self._open()
            os.close(old)
        too_big = self._size and self._size + len(data) > self._rotate_bytes
        too_old = self._size and time.monotonic() - self._opened > self._rotate_interval_s
        if too_big or too_old:
            self._rotate()
        try:
            while data:  # os.write may write less than asked (a full disk, a size limit)
                data = data[os.write(self._fd, data) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Cut back to the last whole record so the retry does not glue onto half a line.
            os.ftruncate(self._fd, self._size)
            raise
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)


class StdoutSink:
    """JSON lines on standard output, for AKS → Container Insights → Log Analytics.

    Each process starts its own chain (``prev`` = genesis); ``node`` tells replicas apart.
    """

    def tail(self) -> tuple[int, str]:
        return 0, GENESIS

    def write(self, lines: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


def _last_line(path: Path) -> bytes | None:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end == 0:
            return None
        block = min(end, 64 * 1024)
        fh.seek(end - block)
        lines = fh.read(block).rstrip(b"\n").split(b"\n")
        return lines[-1] if lines and lines[-1] else None
