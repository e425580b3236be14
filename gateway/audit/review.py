"""Reading the audit trail: verify and query, for the people who review it.

Everything here reads files and never writes them; `scoregate audit …` is its interface.
The report (`gateway.audit.report`) verifies and summarises in one pass with `Verifier`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.record import GENESIS, canonical
from gateway.audit.signing import check_signature
from gateway.audit.sinks import chain_files


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory becomes its trail files in chain order."""
    out: list[Path] = []
    for path in paths:
        out.extend(chain_files(path) if path.is_dir() else [path])
    return out


def read_records(paths: Iterable[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in expand(paths):
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield path, lineno, orjson.loads(raw)


# -- verify ----------------------------------------------------------------------------
@dataclass
class VerifyResult:
    ok: bool = True
    records: int = 0
    checkpoints: int = 0
    signed_through: int | None = None  # seq of the last record covered by a good checkpoint
    first_seq: int | None = None
    last_seq: int | None = None
    line: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    last_type: str | None = None  # the last record's type ("checkpoint" when it drained)
    # The key ids the checkpoints name, with how many each signed (verified only when the
    # verifier was given keys).
    signers: Counter[str] = field(default_factory=Counter)
    after_break: int = 0  # records read after the first broken place: not verified
    unreadable: int = 0  # lines after the break that are not JSON records at all

    @property
    def ended_without_checkpoint(self) -> bool:
        return self.records > 0 and self.last_type != "checkpoint"

    @property
    def unsigned_tail(self) -> int:
        """Records after the last good checkpoint: complete only as far as the chain shows."""
        if self.last_seq is None or self.signed_through is None:
            return self.records
        return self.last_seq - self.signed_through

    def fail(self, line: int, problem: str) -> VerifyResult:
        self.ok, self.line, self.problem = False, line, problem
        return self


class Verifier:
    """The checks of `verify`, one line at a time, so that a reader can verify the very
    records it goes on to use in the same pass (`gateway.audit.report`).

    `check` returns each line's record (without its ``hash``). After the first broken
    place it checks nothing more: it still returns what parses, counted in ``after_break``,
    so a report can show them, marked as not verified.
    """

    def __init__(
        self,
        keys: dict[str, Ed25519PublicKey] | None = None,
        *,
        partial: bool = False,
        max_unsigned: int | None = None,
    ) -> None:
        self.result = VerifyResult()
        self._keys = keys
        self._partial = partial
        self._max_unsigned = max_unsigned
        self._prev: str | None = None
        self._seq: int | None = None
        self._last_checkpoint: dict[str, Any] | None = None

    def check(self, raw: bytes, path: Path, lineno: int) -> dict[str, Any] | None:
        result = self.result
        if not result.ok:
            try:
                unverified = orjson.loads(raw)
            except orjson.JSONDecodeError:
                unverified = None
            if not isinstance(unverified, dict):
                result.unreadable += 1
                return None
            unverified.pop("hash", None)
            result.after_break += 1
            return unverified
        where = f"{path}:{lineno}"
        try:
            record: dict[str, Any] = orjson.loads(raw)
            claimed = record.pop("hash")
            record_seq = int(record["seq"])
        except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
            result.fail(lineno, f"{where}: not a sealed record")
            result.unreadable += 1
            return None
        problem = self._problem(record, claimed, record_seq, raw, where)
        if problem is not None:
            result.fail(lineno, problem)
            result.after_break += 1
            return record
        self._prev, self._seq = claimed, record_seq
        result.records += 1
        if result.first_seq is None:
            result.first_seq = record_seq
        result.last_seq = record_seq
        result.last_type = str(record.get("type", "request"))
        return record

    def _problem(
        self, record: dict[str, Any], claimed: Any, record_seq: int, raw: bytes, where: str
    ) -> str | None:
        result, prev, seq = self.result, self._prev, self._seq
        if hashlib.sha256(canonical(record)).hexdigest() != claimed:
            return f"{where}: record was altered"
        if raw.rstrip(b"\n") != canonical({**record, "hash": claimed}):
            # Same fields, other bytes (a duplicated key, spacing): what another
            # parser or grep reads may differ from what was sealed.
            return f"{where}: record is not in its sealed form"
        if prev is None and (record.get("prev") != GENESIS or record_seq != 1):
            if not self._partial:
                return (
                    f"{where}: the trail starts at seq {record_seq}, not at the chain's "
                    "first record (records removed from the front?); "
                    "use --partial to verify a later range"
                )
            result.notes.append(f"the range starts mid-chain at seq {record_seq}")
        if prev is not None and record.get("prev") != prev:
            return f"{where}: chain broken (a record is missing or out of order)"
        if seq is not None and record_seq != seq + 1:
            return f"{where}: sequence jumps from {seq} to {record_seq}"
        if record.get("type") == "checkpoint":
            problem = _check_checkpoint(record, seq, self._keys)
            if problem is None and self._keys is not None:
                problem = _check_cadence(record, self._last_checkpoint, result)
            if problem:
                return f"{where}: checkpoint {problem}"
            result.checkpoints += 1
            result.signers[str(record.get("key_id"))] += 1
            self._last_checkpoint = record
            if self._keys is not None:
                result.signed_through = record_seq
        return None

    def finish(self) -> VerifyResult:
        """The result once every line was checked: the checks of the trail's end too."""
        if not self.result.ok:
            return self.result
        return _check_end(self.result, self._last_checkpoint, self._keys, self._max_unsigned)


def read_lines(paths: Iterable[Path]) -> Iterator[tuple[Path, int, bytes]]:
    """Every line of the trail's files in chain order, streamed (never a whole file)."""
    for path in expand(paths):
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield path, lineno, raw


def verify(
    paths: Iterable[Path],
    keys: dict[str, Ed25519PublicKey] | None = None,
    *,
    partial: bool = False,
    max_unsigned: int | None = None,
) -> VerifyResult:
    """Check hashes, links and sequence across files in order, and the signed checkpoints.

    The trail must start at the chain's first record (seq 1), so records removed from the
    front are caught too; ``partial`` accepts a later range (e.g. after old files were
    archived) and says where it starts. With ``keys``, every checkpoint's signature is
    checked and so is the cadence it signs: more unsigned records in a row than the writer
    allows means checkpoints were removed. With ``keys`` None only the chain is checked (a
    rewrite that recomputes every hash then goes unnoticed: give the public key for proof).
    ``max_unsigned`` is the writer's cadence, for a live trail not yet signed at all.
    """
    verifier = Verifier(keys, partial=partial, max_unsigned=max_unsigned)
    for path, lineno, raw in read_lines(paths):
        verifier.check(raw, path, lineno)
        if not verifier.result.ok:
            return verifier.result
    return verifier.finish()


def describe_signing(result: VerifyResult) -> str:
    if result.checkpoints == 0:
        return f"no checkpoint yet ({result.records} records, within the signing cadence)"
    return (
        f"{result.checkpoints} signed checkpoints, "
        f"{result.unsigned_tail} records after the last one"
    )


def _check_checkpoint(
    record: dict[str, Any], seq: int | None, keys: dict[str, Ed25519PublicKey] | None
) -> str | None:
    if record.get("head") != record.get("prev") or (
        seq is not None and record.get("to_seq") != seq
    ):
        return "does not sign the record before it"
    return None if keys is None else check_signature(record, keys)


def _check_cadence(
    record: dict[str, Any], last: dict[str, Any] | None, result: VerifyResult
) -> str | None:
    """The records since the previous checkpoint must all be covered by this one."""
    expected_from = int(last["seq"]) + 1 if last is not None else None
    from_seq, every = int(record["from_seq"]), int(record["every"])
    if expected_from is not None and from_seq < expected_from:
        return f"claims records from seq {from_seq}, already covered up to {expected_from - 1}"
    if expected_from is not None and from_seq > expected_from:
        gap = from_seq - expected_from
        if gap > every:
            return (
                f"follows {gap} records no checkpoint covers, more than the cadence of {every}: "
                "checkpoints were removed"
            )
        result.notes.append(
            f"records {expected_from}..{from_seq - 1} were never signed (the writer stopped "
            "without its closing checkpoint)"
        )
    if int(record["to_seq"]) - from_seq + 1 > every:
        return f"covers more records than its cadence of {every}"
    return None


def _check_end(
    result: VerifyResult,
    last: dict[str, Any] | None,
    keys: dict[str, Ed25519PublicKey] | None,
    max_unsigned: int | None,
) -> VerifyResult:
    if result.records == 0:
        return result.fail(0, "the trail holds no records")
    if keys is None:
        return result
    if last is None:
        if max_unsigned is not None and result.records <= max_unsigned:
            result.notes.append(
                f"no checkpoint yet: a live trail is signed every {max_unsigned} records "
                "or when its interval passes"
            )
            return result
        return result.fail(0, "no signed checkpoint in the trail: nothing proves it complete")
    tail = result.unsigned_tail
    if tail > int(last["every"]):
        return result.fail(
            0,
            f"{tail} records after the last checkpoint, more than its cadence of "
            f"{last['every']}: later checkpoints were removed",
        )
    return result


# -- query -----------------------------------------------------------------------------
_RELATIVE = re.compile(r"(\d+)([smhd])")


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (``2026-11-26T10:00:00Z``) or an age (``15m``, ``2h``, ``7d``) before now."""
    match = _RELATIVE.fullmatch(text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=int(match.group(1)) * unit)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def record_time(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))


@dataclass(frozen=True)
class Filter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subject: str | None = None
    key_id: str | None = None
    model: str | None = None
    decision: str | None = None
    status: int | None = None
    reason: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("type", "request") != "request":
            return False
        for name in ("subject", "key_id", "model", "decision", "status", "reason"):
            wanted = getattr(self, name)
            if wanted is not None and record.get(name) != wanted:
                return False
        if self.since or self.until:
            when = record_time(record)
            if (self.since and when < self.since) or (self.until and when >= self.until):
                return False
        return True


def query(paths: Iterable[Path], where: Filter) -> Iterator[dict[str, Any]]:
    for _, _, record in read_records(paths):
        if where.matches(record):
            yield record


TABLE_COLUMNS = (
    ("time", 24),
    ("request_id", 32),
    ("subject", 14),
    ("key_id", 16),
    ("model", 10),
    ("decision", 8),
    ("status", 6),
    ("reason", 24),
    ("latency_ms", 10),
)


def table_row(record: dict[str, Any]) -> str:
    cells = []
    for name, width in TABLE_COLUMNS:
        value = record.get(name)
        text = "-" if value is None else str(value)
        cells.append(text[:width].ljust(width))
    return " ".join(cells).rstrip()


def table_header() -> str:
    return " ".join(name.upper().ljust(width) for name, width in TABLE_COLUMNS).rstrip()
