"""The Quart app: health, model metadata, and every answer Quart's routing gives.

    every request ─▶ ScoringPath (gateway.web.fastpath) ─▶ scoring POSTs answered there
                                     └─▶ this app: hooks run the same steps
                                         (gateway.steps.path) and end requests the same
                                         way (gateway.web.respond)

`_begin` opens and screens every request; `_render_error` turns errors into responses
through `RequestPath.error_payload`; `_finish` writes the audit record and the security
headers, so no path can skip either. The gateway's components are started and stopped
by the `Service` the app is given (`gateway.service.Gateway`).
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any, Protocol

import orjson
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from gateway.errors import (
    BadRequest,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from gateway.policy import Route
from gateway.settings import GatewaySettings
from gateway.steps.exchange import Exchange, Head
from gateway.steps.path import JSON, RequestPath
from gateway.web.fastpath import ScoringPath
from gateway.web.respond import (
    closing_headers,
    drain_unread_body,
    security_headers,
    unexpected,
)


class Service(Protocol):
    """What the web layer needs of the gateway it serves."""

    settings: GatewaySettings

    def request_path(self) -> RequestPath: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def live(self) -> bool: ...

    async def readiness(self) -> tuple[bool, dict[str, Any]]: ...


# What GET /v2 answers (Open Inference Protocol, server metadata).
SERVER_METADATA = {
    "name": "scoregate",
    "version": metadata.version("scoregate"),
    "extensions": ["binary_tensor_data"],
}
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,63}")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


def create_app(gw: Service) -> Quart:
    settings = gw.settings
    # No static route: only the health and model routes are on the public listener.
    app = Quart("gateway", static_folder=None)
    # Quart rejects bodies over this with 413 while reading (Hypercorn/Quart DoS notes).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout_s
    app.config["RESPONSE_TIMEOUT"] = None
    # No automatic OPTIONS answers: every route serves exactly its listed methods (405 else).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    path = gw.request_path()
    headers_on_every_answer = security_headers(settings)

    @app.before_serving
    async def _startup() -> None:
        await gw.start()

    @app.after_serving
    async def _shutdown() -> None:
        await gw.stop()

    @app.before_request
    async def _begin() -> None:
        head = Head(
            method=request.method,
            path=request.path,
            endpoint=request.endpoint,
            peer=request.remote_addr,
            forwarded_for=tuple(request.headers.getlist("x-forwarded-for")),
            request_id=request.headers.get("x-request-id"),
            query=tuple(request.args.items(multi=True)),
            authorization=request.headers.get("authorization"),
            api_key=request.headers.get("api-key"),
            content_length=request.headers.get("content-length"),
            transfer_encoding="transfer-encoding" in request.headers,
            header_bytes=sum(len(k) + len(v) + 4 for k, v in request.headers.items()),
        )
        g.head = head
        g.ex = path.open(head)
        await path.screen(g.ex, head)

    async def read_unread_body() -> int:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        return len(body)

    @app.after_request
    async def _finish(response: Response) -> Response:
        ex: Exchange | None = g.get("ex")
        response.headers.update(headers_on_every_answer)
        if ex is None:  # pragma: no cover - before_request always runs first
            return response
        await drain_unread_body(ex, read_unread_body)
        response.headers.update(closing_headers(ex, request.http_version))
        # In the sink before the answer leaves (write-ahead: gateway.audit.trail).
        await path.audit(ex, response.status_code, response.content_length or 0)
        return response

    @app.teardown_request
    async def _teardown(exc: BaseException | None) -> None:
        # A request that ended without a response (the client went away, the handler was
        # cancelled) still gets its one record, and gives back its reserved slot.
        ex: Exchange | None = g.get("ex")
        if ex is not None:
            path.abandoned(ex)

    def _render_error(exc: GatewayError) -> Response:
        ex: Exchange | None = g.get("ex")
        if ex is None:  # pragma: no cover - before_request always runs first
            return _json({"error": exc.message, "code": exc.code}, exc.status)
        body, headers = path.error_payload(ex, exc)
        response = Response(body, status=exc.status, content_type=JSON)
        response.headers.update(headers)
        return response

    @app.errorhandler(GatewayError)
    async def _gateway_error(exc: GatewayError) -> Response:
        return _render_error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        mapped: GatewayError
        if exc.code == 404:
            mapped = NotFound(reason="route_unknown")
        elif exc.code == 405:
            allowed = getattr(exc, "valid_methods", None) or ()
            mapped = MethodNotAllowed(allowed, reason="method_not_allowed")
        elif exc.code == 413:
            mapped = PayloadTooLarge(reason="body_too_large")
        elif exc.code == 408:
            # Quart's BODY_TIMEOUT: a slow body (slowloris on the body) is cut off.
            ex: Exchange | None = g.get("ex")
            if ex is not None:
                ex.close_connection = True
            mapped = RequestTimeout(reason="body_timeout")
        elif exc.code is not None and exc.code >= 500:
            mapped = InternalError(reason=f"http_{exc.code}")
        else:
            # Status and code agree, as gateway/openapi.yaml documents them; the audit
            # reason keeps the status Werkzeug raised.
            mapped = BadRequest(reason=f"http_{exc.code}")
        return _render_error(mapped)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        return _render_error(unexpected(g.get("ex")))

    # -- health (unauthenticated, no model data) -----------------------------------
    @app.get("/v2/health/live")
    async def live() -> Response:
        g.ex.decision, g.ex.reason = "allow", "public_endpoint"
        # Not live when a background task ended (the audit writer gave up): Kubernetes
        # restarts the container instead of keeping a replica that answers 503.
        alive = gw.live()
        return _json({"live": alive}, 200 if alive else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        g.ex.decision, g.ex.reason = "allow", "public_endpoint"
        is_ready, checks = await gw.readiness()
        return _json({"ready": is_ready, **checks}, 200 if is_ready else 503)

    # -- model endpoints -----------------------------------------------------------
    async def admit(model: str) -> Route:
        """Authenticate, route, authorize, and count one request against the caller."""
        route = await path.admit(g.ex, model, g.head)
        await path.count(g.ex, route, 1)
        return route

    async def forward(route: Route, upstream_path: str) -> Response:
        upstream = await path.forward(g.ex, route, "GET", upstream_path, None)
        return Response(upstream.body, status=upstream.status, content_type=JSON)

    @app.get("/v2")
    async def server_metadata() -> Response:
        # Open Inference Protocol, server metadata; the extensions scoregate implements.
        await path.admit_caller(g.ex, g.head)
        return _json(SERVER_METADATA)

    @app.get("/v2/models/<model>")
    async def model_metadata(model: str) -> Response:
        route = await admit(model)
        return await forward(route, f"/v2/models/{route.model}")

    @app.get("/v2/models/<model>/ready")
    async def model_ready(model: str) -> Response:
        route = await admit(model)
        return await forward(route, f"/v2/models/{route.model}/ready")

    def versioned(version: str) -> str:
        # The version becomes part of the scorer's request line: a plain name only.
        if not VERSION.fullmatch(version):
            raise NotFound(reason="version_invalid")
        return version

    @app.get("/v2/models/<model>/versions/<version>")
    async def model_version_metadata(model: str, version: str) -> Response:
        route = await admit(model)
        return await forward(route, f"/v2/models/{route.model}/versions/{versioned(version)}")

    @app.get("/v2/models/<model>/versions/<version>/ready")
    async def model_version_ready(model: str, version: str) -> Response:
        route = await admit(model)
        return await forward(route, f"/v2/models/{route.model}/versions/{versioned(version)}/ready")

    # The scoring POSTs are answered by `gateway.web.fastpath` before Quart sees them;
    # their rules stay here so that Quart answers any other method on them with 405 and
    # Allow.
    @app.post("/v2/models/<model>/infer")
    async def infer(model: str) -> Response:
        raise InternalError(reason="scoring_path_bypassed")

    @app.post("/v2/models/<model>/versions/<version>/infer")
    async def infer_version(model: str, version: str) -> Response:
        # The fast path serves plain versions; any other is no resource of ours.
        raise NotFound(reason="version_invalid")

    @app.post("/v1/models/<model>:predict")
    async def predict(model: str) -> Response:
        raise InternalError(reason="scoring_path_bypassed")

    app.asgi_app = ScoringPath(path, app.asgi_app)  # type: ignore[method-assign]
    return app
