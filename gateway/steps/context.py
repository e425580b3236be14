"""Per-request facts decided before anything else: request id and the trusted client address."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from gateway.errors import CredentialsInQuery

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
# Query parameter names that carry credentials in other APIs. Credentials in URLs end up
# in proxy logs, browser history and Referer headers (OWASP REST Security: "sensitive
# information in HTTP requests"), so we refuse them rather than ignore them.
_CREDENTIAL_PARAMS = frozenset(
    {
        "apikey",
        "key",
        "token",
        "accesstoken",
        "idtoken",
        "authorization",
        "auth",
        "jwt",
        "bearer",
        "password",
        "secret",
        "code",
        "subscriptionkey",
        "sig",
        "signature",
    }
)


def new_request_id() -> str:
    """The gateway's own id for a request: unique, never chosen by the client."""
    return secrets.token_hex(16)


def client_request_id(incoming: str | None) -> str | None:
    """The client's own correlation id when well-formed (kept beside ours), else None."""
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return None


def client_address(peer: str | None, forwarded_for: str | None, trusted_hops: int) -> str:
    """The client's address, trusting exactly ``trusted_hops`` proxies in front of us.

    With N trusted proxies, the address N entries from the right of X-Forwarded-For is the
    one our outermost proxy saw; anything further left is client-controlled and ignored.
    """
    if trusted_hops == 0 or not forwarded_for:
        return peer or "unknown"
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    if len(hops) < trusted_hops:
        return peer or "unknown"
    return hops[-trusted_hops][:64]


def reject_credentials_in_query(args: Iterable[tuple[str, str]]) -> None:
    """Refuse a query string that names or carries a credential (every value of every name)."""
    for name, value in args:
        normalised = name.lower().replace("-", "").replace("_", "")
        if normalised in _CREDENTIAL_PARAMS or "sg_" in value or "eyJ" in value:
            raise CredentialsInQuery(reason="credentials_in_query")
