"""How every request of the public listener ends, written once for both drivers.

fast path (gateway.web.fastpath) ─┐
                                   ├─▶ security headers, request id, Connection: close
Quart app (gateway.web.app)       ─┘   drain the unread body before an early answer
                                       a generic 500 for what nobody expected
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from werkzeug.exceptions import HTTPException

from gateway.errors import GatewayError, InternalError
from gateway.settings import GatewaySettings
from gateway.steps.exchange import Exchange
from serving.asgi import ClientGone

log = logging.getLogger("gateway")
# What reading a body we are about to refuse anyway may raise, in either driver.
_DRAIN_ERRORS = (GatewayError, ClientGone, HTTPException, asyncio.TimeoutError, ConnectionError)


def security_headers(settings: GatewaySettings) -> dict[str, str]:
    """Headers on every answer of the public listener."""
    return {
        # RFC 6797: browsers must use HTTPS for this host from now on.
        "Strict-Transport-Security": f"max-age={settings.hsts_max_age_s}; includeSubDomains",
        # OWASP REST Security / Secure Headers: an API answers JSON that nothing renders.
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        # OWASP Secure Headers: no other origin may load these responses as a resource
        # (no-cors requests, Spectre-style reads); API clients are not browsers anyway.
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def closing_headers(
    ex: Exchange, http_version: str, extra: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """The request's own headers after the security ones: its id, the ones its error
    calls for, and ``Connection: close`` on HTTP/1.1 when the path decided the connection
    must not be reused."""
    headers = [("X-Request-Id", ex.request_id), *(extra or {}).items()]
    if ex.close_connection and http_version.startswith("1"):
        headers.append(("Connection", "close"))
    return headers


async def drain_unread_body(ex: Exchange, read: Callable[[], Awaitable[int]]) -> None:
    """Read what the client sent before answering it with an early error.

    Answering an HTTP/2 stream before its body has arrived makes Hypercorn 0.18 drop
    the whole connection when the late DATA frames come in (pgjones/hypercorn#334),
    which would take the client's other streams with it. ``read`` reads the body within
    the size limit and timeout like any other, and returns its length.
    """
    if ex.body_read:
        return
    ex.body_read = True
    with contextlib.suppress(*_DRAIN_ERRORS):
        ex.bytes_in = await read()


def unexpected(ex: Exchange | None) -> InternalError:
    """The error to answer for an exception nobody expected; its text stays in our logs
    (a generic 500, OWASP: error handling). Called from an ``except`` block."""
    log.exception("unhandled error in request %s", ex.request_id if ex else None)
    return InternalError(reason="internal_error")
