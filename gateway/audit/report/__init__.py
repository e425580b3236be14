"""`scoregate audit report`: what the reviewers of the audit trail ask, in one pass.

    trail files ─lines─▶ Verifier (per trail) ─records─▶ merged by time ─▶ Summary
                              │                                               │
                              └─▶ Integrity: the banner   figures ◀───────────┘
                                                            ├─▶ text / JSON
                                                            └─▶ one HTML page

Each line is read once: the record the verifier checks is the record summarised, so the
banner speaks of exactly the records the report shows. Memory is bounded whatever the
trail's length (`summary.Limits`, `sketch`): no record is held after it was counted.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.report.integrity import Integrity, TrailCheck
from gateway.audit.report.summary import Limits, Summary
from gateway.audit.review import Verifier, read_lines

__all__ = ["Integrity", "Limits", "Summary", "summarise"]


def _checked(paths: Iterable[Path], verifier: Verifier) -> Iterator[dict[str, Any]]:
    for path, lineno, raw in read_lines(paths):
        record = verifier.check(raw, path, lineno)
        if record is not None:
            yield record


def _time(record: dict[str, Any]) -> str:
    return str(record.get("time", ""))


def summarise(
    trails: dict[str, list[Path]],
    keys: dict[str, Ed25519PublicKey] | None,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    partial: bool = False,
    max_unsigned: int | None = None,
    limits: Limits | None = None,
) -> tuple[Summary, Integrity]:
    """Verify each trail and summarise its records in the same pass.

    Several trails (the replicas of a container) are merged by record time (each is in
    time order already: `heapq.merge` holds one record per trail), so bursts and first
    calls see one timeline. ``keys`` None checks the chains only.
    """
    verifiers = {
        name: Verifier(keys, partial=partial, max_unsigned=max_unsigned) for name in trails
    }
    streams = [_checked(paths, verifiers[name]) for name, paths in trails.items()]
    records = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_time)
    summary = Summary(since, until, limits)
    for record in records:
        try:
            summary.add(record)
        except (KeyError, TypeError, ValueError, AttributeError):
            # Only a record the verifier did not vouch for (after a break) can be malformed.
            summary.malformed += 1
    checks = [TrailCheck(name, v.finish(), keys is not None) for name, v in verifiers.items()]
    return summary, Integrity(checks)
