"""The fast path: the model POSTs served as plain ASGI, in front of the Quart app.

    POST /v2/models/<model>/infer, POST /v1/models/<model>:predict ─▶ ScoringPath
    anything else (health, metadata, other methods, unknown paths) ─▶ Quart

These two routes carry nearly all of the load, and Quart's per-request machinery
(request and response objects, two tasks per request, contexts, hooks, signals) cost
more CPU than every check of the path together (`make bench-profile`). This layer runs
the same steps (`gateway.steps.path`) over the raw ASGI messages and ends requests the
same way (`gateway.web.respond`); only what Quart did for us is written here, from
`serving.asgi`: reading the body within its size and time limits, noticing a client that
leaves, and sending. It is installed the way Quart documents middleware
(``app.asgi_app = …``), so Hypercorn and the Quart test client both reach it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import cast
from urllib.parse import parse_qsl

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
    WebsocketCloseEvent,
    WebsocketResponseBodyEvent,
    WebsocketResponseStartEvent,
)

from gateway.errors import GatewayError, NotFound, PayloadTooLarge, RequestTimeout
from gateway.steps.envelope import Kind
from gateway.steps.exchange import Exchange, Head
from gateway.steps.path import RequestPath
from gateway.upstream.forwarder import Answer
from gateway.web.respond import closing_headers, drain_unread_body, security_headers, unexpected
from serving.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    cancel_if_client_leaves,
    match_post,
    read_body,
    send_json,
)

# Werkzeug's default converter, as the Quart rules write them: one non-empty segment.
# The protocol's optional version segment is passed on (the scorer knows its models'
# versions) only when it is a plain name: it becomes part of the upstream request line.
_ROUTES: tuple[tuple[re.Pattern[str], tuple[str, Kind, str]], ...] = (
    (re.compile(r"/v2/models/([^/]+)/infer"), ("infer", "v2", "/v2/models/{}/infer")),
    (
        re.compile(
            r"/v2/models/([^/]+)/versions/(?P<version>[0-9A-Za-z][0-9A-Za-z_.-]{0,63})/infer"
        ),
        ("infer_version", "v2", "/v2/models/{}/versions/{}/infer"),
    ),
    (re.compile(r"/v1/models/([^/]+):predict"), ("predict", "v1", "/v1/models/{}:predict")),
)


def read_head(scope: Scope, endpoint: str) -> Head:
    """The head the steps read, from the ASGI scope in one pass over its headers (names
    arrive lowercased from h11 and h2; the first of repeated single-valued headers counts,
    as Werkzeug's ``Headers.get`` has it)."""
    assert scope["type"] in ("http", "websocket")  # noqa: S101 - dispatched on it
    found: dict[bytes, str] = {}
    forwarded: list[str] = []
    raw: Iterable[tuple[bytes, bytes]] = scope["headers"]
    size = 0
    for name, value in raw:
        size += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        if name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
        elif name not in found:
            found[name] = value.decode("latin-1")
    query = scope["query_string"]
    client = scope.get("client")
    return Head(
        method="POST" if scope["type"] == "http" else "GET",
        path=scope["path"],
        endpoint=endpoint,
        peer=client[0] if client else None,
        forwarded_for=tuple(forwarded),
        request_id=found.get(b"x-request-id"),
        query=tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else (),
        authorization=found.get(b"authorization"),
        api_key=found.get(b"api-key"),
        content_type=found.get(b"content-type", ""),
        content_encoding=found.get(b"content-encoding"),
        inference_header=found.get(b"inference-header-content-length"),
        content_length=found.get(b"content-length"),
        transfer_encoding=b"transfer-encoding" in found,
        header_bytes=size,
    )


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
        if scope["type"] == "websocket":
            await self._refuse_websocket(scope, receive, send)
            return
        matched = match_post(scope, _ROUTES)
        if matched is not None:
            (endpoint, kind, upstream_path), model, version = matched
            await self._serve(scope, receive, send, endpoint, kind, model, upstream_path, version)
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
        version: str | None,
    ) -> None:
        assert scope["type"] == "http"  # noqa: S101 - dispatched on it
        head = read_head(scope, endpoint)
        ex = self._path.open(head)
        extra: dict[str, str] = {}
        inference_header = None
        try:
            answer = await self._score(ex, head, receive, kind, model, upstream_path, version)
            status, body = answer.status, answer.body
            if answer.inference_header is not None:
                inference_header = int(answer.inference_header)  # checked by the forwarder
        except ClientGone:
            self._path.abandoned(ex)
            return
        except GatewayError as exc:
            status = exc.status
            body, extra = await self._refuse(ex, exc, head, receive)
        except Exception:
            error = unexpected(ex)
            status = error.status
            body, extra = await self._refuse(ex, error, head, receive)
        except BaseException:
            # Cancelled (the server is stopping): the request still gets its one record.
            self._path.abandoned(ex)
            raise
        headers = [*self._security]
        headers.extend(
            (k.lower().encode(), v.encode())
            for k, v in closing_headers(ex, scope["http_version"], extra)
        )
        await self._path.audit(ex, status, len(body))  # in the sink before the answer leaves
        await send_json(send, status, body, headers, inference_header=inference_header)

    async def _score(
        self,
        ex: Exchange,
        head: Head,
        receive: ASGIReceiveCallable,
        kind: Kind,
        model: str,
        upstream_path: str,
        version: str | None,
    ) -> Answer:
        path = self._path
        await path.screen(ex, head)
        route = await path.admit(ex, model, head)
        path.check_content_type(head, kind)
        body = await self._read_body(ex, head, receive)
        target = upstream_path.format(model, version)
        with cancel_if_client_leaves(receive) as gone:
            try:
                await path.charge(ex, route, body, kind, head.inference_header)
                return await path.forward(ex, route, "POST", target, body, head.inference_header)
            except asyncio.CancelledError:
                if not gone():
                    raise
                raise ClientGone from None

    async def _read_body(self, ex: Exchange, head: Head, receive: ASGIReceiveCallable) -> bytes:
        """The whole body, within the size limit and the body timeout, as Quart's
        MAX_CONTENT_LENGTH and BODY_TIMEOUT did."""
        ex.body_read = True
        try:
            body = await read_body(
                receive,
                limit=self._limit,
                declared=head.content_length,
                timeout_s=self._body_timeout_s,
            )
        except BodyTooLarge:
            raise PayloadTooLarge(reason="body_too_large") from None
        except BodyTimeout:
            ex.close_connection = True
            raise RequestTimeout(reason="body_timeout") from None
        ex.bytes_in = len(body)
        return body

    async def _refuse_websocket(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """No endpoint speaks WebSocket: an upgrade request is a request like any other
        (the audit-closed check, the per-address limit, a record) refused with our JSON
        error and security headers, never passed to a framework whose request hooks it
        would skip. Sent as an HTTP answer to the handshake (RFC 6455 §4.2.2; the ASGI
        extension websocket.http.response, which Hypercorn implements)."""
        head = read_head(scope, "websocket")
        ex = self._path.open(head)
        try:
            await self._path.screen(ex, head)
            raise NotFound("no WebSocket endpoint here", reason="websocket_refused")
        except GatewayError as exc:
            status = exc.status
            body, extra = self._path.error_payload(ex, exc)
        except BaseException:
            self._path.abandoned(ex)
            raise
        headers = [
            *self._security,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", ex.request_id.encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        await self._path.audit(ex, status, len(body))
        if (await receive())["type"] != "websocket.connect":
            return  # the client left before its handshake was read
        extensions = cast(dict[str, object], scope.get("extensions") or {})
        if "websocket.http.response" in extensions:
            start: WebsocketResponseStartEvent = {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": headers,
            }
            await send(start)
            content: WebsocketResponseBodyEvent = {
                "type": "websocket.http.response.body",
                "body": body,
                "more_body": False,
            }
            await send(content)
        else:  # pragma: no cover - a server without the extension answers 403 itself
            close: WebsocketCloseEvent = {"type": "websocket.close", "code": 1008, "reason": None}
            await send(close)

    async def _refuse(
        self, ex: Exchange, exc: GatewayError, head: Head, receive: ASGIReceiveCallable
    ) -> tuple[bytes, dict[str, str]]:
        """An error's body and headers, after reading what the client sent."""

        async def read() -> int:
            return len(await self._read_body(ex, head, receive))

        await drain_unread_body(ex, read)
        return self._path.error_payload(ex, exc)
