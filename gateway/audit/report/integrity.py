"""The report's first line: did the records it summarises verify, and who signed them?

Built from the `Verifier` results of the very pass that fed the summary, one per trail
(a folder, or each replica of a Blob Storage container).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.audit.report.summary import DASH
from gateway.audit.review import VerifyResult


def _records(n: int) -> str:
    return "the 1 record" if n == 1 else f"the {n:,} records"


@dataclass(frozen=True)
class TrailCheck:
    name: str  # "local", or the replica's name in a container
    result: VerifyResult
    signatures_checked: bool

    def describe(self) -> str:
        r = self.result
        label = "" if self.name == "local" else f"{self.name}: "
        if not r.ok and not (r.records or r.after_break):
            return f"{label}{r.problem}"
        if not r.ok:
            return (
                f"{label}{r.problem}; {_records(r.records)} before it verified, "
                f"{r.after_break:,} after it not verified"
            )
        span = f" (seq {r.first_seq:,}{DASH}{r.last_seq:,})" if r.first_seq is not None else ""
        return f"{label}{r.records:,} records{span}, chain unbroken; {self.signing()}"

    def signing(self) -> str:
        r = self.result
        if not r.checkpoints:
            return "no checkpoint yet (within the signing cadence)"
        keys = ", ".join(f"{key} ({n})" for key, n in sorted(r.signers.items()))
        verb = "signed by key" if self.signatures_checked else "naming key (not checked)"
        return (
            f"{r.checkpoints} checkpoint{'' if r.checkpoints == 1 else 's'} {verb} {keys}; "
            f"{r.unsigned_tail:,} records after the last one"
        )

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "trail": self.name,
            "ok": r.ok,
            "records": r.records,
            "first_seq": r.first_seq,
            "last_seq": r.last_seq,
            "checkpoints": r.checkpoints,
            "signed_by": dict(sorted(r.signers.items())),
            "signatures_checked": self.signatures_checked,
            "unsigned_tail": r.unsigned_tail,
            "problem": r.problem,
            "not_verified": r.after_break,
            "unreadable_lines": r.unreadable,
            "notes": r.notes,
        }


@dataclass(frozen=True)
class Integrity:
    trails: list[TrailCheck]

    @property
    def ok(self) -> bool:
        return bool(self.trails) and all(t.result.ok for t in self.trails)

    @property
    def banner(self) -> str:
        """One line: INTACT or BROKEN first, so that it is the first thing anyone reads."""
        if not self.trails:
            return "BROKEN: no audit trail found"
        broken = [t for t in self.trails if not t.result.ok]
        if broken:
            more = f" (and {len(broken) - 1} more trails broken)" if len(broken) > 1 else ""
            return f"BROKEN: {broken[0].describe()}{more}"
        checked = all(t.signatures_checked for t in self.trails)
        head = "INTACT" if checked else "INTACT (chain only, signatures not checked)"
        if len(self.trails) == 1:
            return f"{head}: {self.trails[0].describe()}"
        records = sum(t.result.records for t in self.trails)
        return (
            f"{head}: {len(self.trails)} trails, {records:,} records, every chain unbroken; "
            + "; ".join(t.describe() for t in self.trails)
        )

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "trails": [t.as_dict() for t in self.trails]}
