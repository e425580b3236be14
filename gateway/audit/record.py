"""What one audit record is, and how it is sealed into the hash chain.

Each record carries ``seq`` and ``prev`` (the previous record's hash) and its own
``hash`` = SHA-256 of its canonical JSON without ``hash``; deleting, editing or
reordering a record breaks the chain at that place. Records hold ids and digests only:
never a token, key, secret or payload (OWASP Logging cheat sheet, "data to exclude").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import time
from dataclasses import dataclass, fields
from typing import Any

import orjson

GENESIS = "0" * 64
NODE = socket.gethostname()[:64]


@dataclass(slots=True)
class AuditEvent:
    """What the request path knows about one request when it ends."""

    time: str
    request_id: str
    client_request_id: str | None
    client: str
    method: str
    path: str
    route: str
    model: str | None
    subject: str | None
    credential: str | None
    key_id: str | None
    key_version: str | None
    decision: str  # "allow" | "deny"
    reason: str
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    payload_sha256: str | None
    instances: int | None = None
    limiter: str | None = None  # which counter decided: memory, shared, memory-fallback, open
    type: str = "request"
    node: str = NODE


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """The record's fields (all scalars: no deep copy, unlike `dataclasses.asdict`)."""
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


class AuditTrailError(Exception):
    """The trail on disk cannot be continued safely; the gateway refuses to start."""


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def seal(fields: dict[str, Any], seq: int, prev: str) -> tuple[bytes, str]:
    """The record's line (with ``seq``, ``prev`` and ``hash``) and its hash.

    Every record can be sealed: a string JSON cannot carry as UTF-8 (a lone UTF-16
    surrogate, which JavaScript's JSON.stringify emits and an issuer may sign into a
    claim) has each such code point replaced by U+FFFD, and the record says so
    (``"sanitized": true``). The writer never stops on a field it cannot encode.
    """
    record = {**fields, "seq": seq, "prev": prev}
    try:
        body = canonical(record)
    except orjson.JSONEncodeError:
        record = {name: _encodable(value) for name, value in record.items()}
        record["sanitized"] = True
        body = canonical(record)
    digest = hashlib.sha256(body).hexdigest()
    record["hash"] = digest
    return canonical(record) + b"\n", digest


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        if not _has_surrogate(value):
            return value
        # Through UTF-16: a well-formed surrogate pair becomes its character again, each
        # lone surrogate U+FFFD.
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {str(_encodable(k)): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _encodable(str(value))  # anything else JSON has no form for: its text


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


_second: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """Now, as ISO 8601 UTC with milliseconds (``2026-11-26T11:04:11.123Z``).

    Written once per request: the part up to the second is formatted once per second.
    """
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"
