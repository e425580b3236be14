"""One request as the steps see it: its head, read once, and what the path has learned."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.identity.principal import Principal
from gateway.policy import Route


@dataclass(slots=True)
class Head:
    """What the steps read of a request's head, taken once by the driver that serves it.

    Single-valued headers are the first of their name, as Werkzeug's ``Headers.get``
    has it; ``forwarded_for`` keeps every X-Forwarded-For line.
    """

    method: str
    path: str
    endpoint: str | None  # the route's name, None when no route matched
    peer: str | None
    forwarded_for: tuple[str, ...]
    request_id: str | None
    query: tuple[tuple[str, str], ...]
    authorization: str | None = None
    api_key: str | None = None
    content_type: str = ""
    content_encoding: str | None = None
    # The binary tensor data extension's JSON header size (serving.binary), as sent.
    inference_header: str | None = None
    content_length: str | None = None
    transfer_encoding: bool = False
    header_bytes: int = 0  # the header section's size, names and values


@dataclass(slots=True)
class Exchange:
    """What the path has learned about one request so far; its audit record at the end."""

    start: float
    request_id: str
    method: str
    path: str
    endpoint: str  # the route's name, "-" when no route matched
    client: str
    client_request_id: str | None
    principal: Principal | None = None
    route: Route | None = None
    model: str | None = None
    decision: str = "deny"
    reason: str = "ok"
    bytes_in: int = 0
    body_read: bool = False
    payload_sha256: str | None = None
    instances: int | None = None
    audit_reserved: bool = False
    audited: bool = False
    close_connection: bool = False
