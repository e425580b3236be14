"""The scoring path: the model POSTs served as plain ASGI, in front of the Quart app.

    POST /v2/models/<model>/infer, POST /v1/models/<model>:predict ─▶ ScoringPath
    anything else (health, metadata, other methods, unknown paths) ─▶ Quart

These two routes carry nearly all of the load, and Quart's per-request machinery
(request and response objects, two tasks per request, contexts, hooks, signals) cost
more CPU than every check of the path together (`make bench-profile`). This layer runs
the same steps (`gateway.exchange`) over the raw ASGI messages and answers with the same
headers, errors and audit records; only what Quart did for us is written here: reading
the body within its size and time limits, noticing a client that leaves, and sending.
It is installed the way Quart documents middleware (``app.asgi_app = …``), so Hypercorn
and the Quart test client both reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from gateway.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    cancel_if_client_leaves,
    match_post,
    read_body,
    send_json,
)
from gateway.envelope import Kind
from gateway.errors import GatewayError, InternalError, PayloadTooLarge, RequestTimeout
from gateway.exchange import Exchange, RequestPath, security_headers

log = logging.getLogger("gateway")
# Werkzeug's default converter, as the Quart rules write them: one non-empty segment.
_ROUTES: tuple[tuple[re.Pattern[str], tuple[str, Kind, str]], ...] = (
    (re.compile(r"/v2/models/([^/]+)/infer"), ("infer", "v2", "/v2/models/{}/infer")),
    (re.compile(r"/v1/models/([^/]+):predict"), ("predict", "v1", "/v1/models/{}:predict")),
)


class _Request:
    """The headers the path reads, taken from the ASGI scope in one pass (names arrive
    lowercased from h11 and h2; the first of repeated single-valued headers counts, as
    Werkzeug's ``Headers.get`` has it)."""

    __slots__ = (
        "api_key",
        "authorization",
        "content_length",
        "content_type",
        "forwarded_for",
        "request_id",
        "transfer_encoding",
    )

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        found: dict[bytes, str] = {}
        forwarded: list[str] = []
        for name, value in raw:
            if name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif name not in found:
                found[name] = value.decode("latin-1")
        self.authorization = found.get(b"authorization")
        self.api_key = found.get(b"api-key")
        self.content_type = found.get(b"content-type", "")
        self.content_length = found.get(b"content-length")
        self.transfer_encoding = b"transfer-encoding" in found
        self.request_id = found.get(b"x-request-id")
        # Every X-Forwarded-For line, joined: a proxy may add its own line (RFC 7230 §3.2.2).
        self.forwarded_for = ",".join(forwarded) or None


class ScoringPath:
    def __init__(self, path: RequestPath, app: ASGIFramework) -> None:
        self._path = path
        self._app = app
        self._limit = path.settings.max_body_bytes
        self._body_timeout_s = path.settings.body_timeout_s
        self._security = [
            (name.lower().encode(), value.encode())
            for name, value in security_headers(path.settings).items()
        ]

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        matched = match_post(scope, _ROUTES)
        if matched is not None:
            (endpoint, kind, upstream_path), model = matched
            await self._serve(
                scope, receive, send, endpoint, kind, model, upstream_path.format(model)
            )
            return
        await self._app(scope, receive, send)

    async def _serve(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        endpoint: str,
        kind: Kind,
        model: str,
        upstream_path: str,
    ) -> None:
        assert scope["type"] == "http"  # noqa: S101 - dispatched on it
        request = _Request(scope["headers"])
        client = scope.get("client")
        ex = self._path.open(
            method="POST",
            path=scope["path"],
            endpoint=endpoint,
            peer=client[0] if client else None,
            forwarded_for=request.forwarded_for,
            client_request_id=request.request_id,
        )
        extra: dict[str, str] = {}
        try:
            status, body = await self._score(
                ex, scope, request, receive, kind, model, upstream_path
            )
        except ClientGone:
            ex.reason = "client_disconnected"
            self._path.audit(ex, 499, 0)
            return
        except GatewayError as exc:
            status = exc.status
            body, extra = await self._refuse(ex, exc, request, receive)
        except Exception:
            # A generic 500: the exception's text stays in our logs (OWASP: error handling).
            log.exception("unhandled error in request %s", ex.request_id)
            status = 500
            error = InternalError(reason="internal_error")
            body, extra = await self._refuse(ex, error, request, receive)
        except BaseException:
            # Cancelled (the server is stopping): the request still gets its one record.
            ex.reason = "client_disconnected"
            self._path.audit(ex, 499, 0)
            raise
        headers = [*self._security, (b"x-request-id", ex.request_id.encode())]
        headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
        if ex.close_connection and scope["http_version"].startswith("1"):
            headers.append((b"connection", b"close"))
        self._path.audit(ex, status, len(body))
        await send_json(send, status, body, headers)

    async def _score(
        self,
        ex: Exchange,
        scope: Scope,
        request: _Request,
        receive: ASGIReceiveCallable,
        kind: Kind,
        model: str,
        upstream_path: str,
    ) -> tuple[int, bytes]:
        assert scope["type"] == "http"  # noqa: S101 - dispatched on it
        path = self._path
        query = scope["query_string"]
        await path.screen(
            ex,
            query=parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else (),
            ambiguous_framing=request.transfer_encoding and request.content_length is not None,
        )
        route = await path.admit(
            ex, model, authorization=request.authorization, api_key=request.api_key
        )
        path.check_content_type(request.content_type.partition(";")[0].strip().lower())
        body = await self._read_body(ex, request, receive)
        with cancel_if_client_leaves(receive) as gone:
            try:
                await path.charge(ex, route, body, kind)
                upstream = await path.gw.forwarder.send(
                    route, "POST", upstream_path, body, ex.request_id
                )
            except asyncio.CancelledError:
                if not gone():
                    raise
                raise ClientGone from None
        return upstream.status, upstream.body

    async def _read_body(
        self, ex: Exchange, request: _Request, receive: ASGIReceiveCallable
    ) -> bytes:
        """The whole body, within the size limit and the body timeout, as Quart's
        MAX_CONTENT_LENGTH and BODY_TIMEOUT did."""
        ex.body_read = True
        try:
            body = await read_body(
                receive,
                limit=self._limit,
                declared=request.content_length,
                timeout_s=self._body_timeout_s,
            )
        except BodyTooLarge:
            raise PayloadTooLarge(reason="body_too_large") from None
        except BodyTimeout:
            ex.close_connection = True
            raise RequestTimeout(reason="body_timeout") from None
        ex.bytes_in = len(body)
        return body

    async def _refuse(
        self, ex: Exchange, exc: GatewayError, request: _Request, receive: ASGIReceiveCallable
    ) -> tuple[bytes, dict[str, str]]:
        """An error's body and headers, after reading what the client sent.

        Answering an HTTP/2 stream before its body has arrived makes Hypercorn 0.18 drop
        the whole connection when the late DATA frames come in (pgjones/hypercorn#334),
        which would take the client's other streams with it. The read is bounded by the
        body size limit and timeout like any other.
        """
        if not ex.body_read:
            with contextlib.suppress(GatewayError, ClientGone):
                await self._read_body(ex, request, receive)
        return self._path.error_payload(ex, exc)
