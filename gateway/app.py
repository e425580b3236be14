"""The gateway application: the Quart app, its components, and the scoring path in front.

    context → authenticate → route → authorize → validate body → forward → respond
                                                        every request ─▶ audit

The steps are written once, in `gateway.exchange`. The scoring POSTs are served by
`gateway.scoring` (plain ASGI, installed as Quart middleware); everything else by the
Quart app below, whose hooks run the same steps: `_render_error` turns errors into
responses through `RequestPath.error_payload`, and `_finish` writes the audit record and
the security headers, so no path can skip either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from gateway.audit import AuditTrail
from gateway.auditsign import load_signer
from gateway.errors import (
    BadRequest,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from gateway.exchange import JSON, Exchange, RequestPath, security_headers
from gateway.forward import Forwarder
from gateway.jwks import JWKSKeys
from gateway.jwtauth import JWTValidator
from gateway.keyring import KeyRing
from gateway.metrics import GatewayMetrics
from gateway.policy import AccessPolicy, Route, RouteTable
from gateway.ratelimit import Limiter
from gateway.scoring import ScoringPath
from gateway.secretstore import LocalSecretStore, SecretStore, SecretStoreError
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")
_READY_CACHE_S = 2.0


@dataclass
class Gateway:
    """Everything the request path needs, built once in the entry point."""

    settings: GatewaySettings
    store: SecretStore
    keys: KeyRing
    jwt: JWTValidator
    routes: RouteTable
    access: AccessPolicy
    forwarder: Forwarder
    limiter: Limiter
    audit: AuditTrail
    jwks: list[JWKSKeys] = field(default_factory=list)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _ready: tuple[float, bool, dict[str, bool]] = (0.0, False, {})

    async def start(self) -> None:
        self.metrics.watch(
            staleness=self.keys.staleness_s,
            audit_depth=lambda: self.audit.depth,
            audit_lost=lambda: self.audit.lost,
            ratelimit_evicted=lambda: self.limiter.evicted,
        )
        for model in self.routes.models:
            route = self.routes.resolve(model)
            breaker = self.forwarder.breaker(route)
            breaker.on_change = self.metrics.circuit_changed(route.upstream_name)
        try:
            await self.keys.refresh()
        except SecretStoreError as exc:
            # Not ready until the keys load; the background refresh keeps trying.
            self.keys.last_error = str(exc)
            log.error("initial key load failed: %s", exc)
        try:
            # Checkpoint signing key; made on first start with the embedded store only.
            self.audit.signer = await load_signer(
                self.store, create=isinstance(self.store, LocalSecretStore)
            )
        except (SecretStoreError, ValueError) as exc:
            log.error("audit signing key unavailable, checkpoints off: %s", exc)
        if self.audit.signer is None:
            log.error("no audit signing key: the trail is hash-chained but not signed")
        jwks_tasks = []
        for issuer in self.jwt.issuers():
            if issuer.jwks_url:
                fetcher = JWKSKeys(issuer, issuer.jwks_url, self.jwt.set_issuer_keys)
                self.jwt.on_unknown_kid(issuer.issuer, fetcher.unknown_kid)
                self.jwks.append(fetcher)
                jwks_tasks.append(asyncio.create_task(fetcher.run(), name=f"jwks-{issuer.name}"))
        self._tasks = [
            *jwks_tasks,
            asyncio.create_task(self.keys.run(), name="key-refresh"),
            asyncio.create_task(self.audit.run(), name="audit-writer"),
        ]

    async def stop(self) -> None:
        # Drain the audit queue first: in-flight requests have finished by now.
        try:
            await asyncio.wait_for(self.audit.drain(), timeout=10)
        except TimeoutError:
            self.audit.lost += self.audit.depth
            log.error("audit drain timed out: %d records not written", self.audit.depth)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.audit.close()
        await self.limiter.close()
        await self.forwarder.close()
        await self.store.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        checked_at, upstreams_ok, upstreams = self._ready
        if now - checked_at > _READY_CACHE_S:
            routes = {r.upstream_name: r for r in map(self.routes.resolve, self.routes.models)}
            results = await asyncio.gather(*(self.forwarder.probe(r) for r in routes.values()))
            upstreams = dict(zip(routes, results, strict=True))
            upstreams_ok = all(results)
            self._ready = (now, upstreams_ok, upstreams)
        staleness = self.keys.staleness_s()
        limiter = self.limiter.state
        keys_fresh = staleness is not None and staleness <= self.settings.key_max_staleness_s
        # A background task that ended (it never should) makes the replica unfit to serve.
        tasks_alive = all(not task.done() for task in self._tasks)
        checks = {
            "keys_loaded": self.keys.loaded,
            "keys_fresh": keys_fresh,
            "keys_staleness_s": None if staleness is None else round(staleness, 1),
            # Readiness is public (load balancers call it): say that a source failed, never
            # its error text, which can name the vault or the JWKS URL (OWASP API8); the
            # text is in the gateway's logs.
            "keys_last_error": _public_error(self.keys.last_error, "secret store"),
            "jwks": {
                f.issuer.name: {
                    "keys": len(f.keys),
                    "last_error": _public_error(f.last_error, "JWKS endpoint"),
                }
                for f in self.jwks
            },
            "background_tasks_alive": tasks_alive,
            "audit_accepting": self.audit.accepting,
            "audit_signing": self.audit.signer is not None,
            "rate_limit_storage": limiter,
            "upstreams": upstreams,
        }
        ready = (
            keys_fresh
            and tasks_alive
            and self.audit.accepting
            and upstreams_ok
            and limiter != "closed"
        )
        return ready, checks


def _public_error(error: str | None, source: str) -> str | None:
    return None if error is None else f"the {source} failed; details in the gateway's logs"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


def create_app(gw: Gateway) -> Quart:
    settings = gw.settings
    # No static route: only the health and model routes are on the public listener.
    app = Quart("gateway", static_folder=None)
    # Quart rejects bodies over this with 413 while reading (Hypercorn/Quart DoS notes).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout_s
    app.config["RESPONSE_TIMEOUT"] = None
    # No automatic OPTIONS answers: every route serves exactly its listed methods (405 else).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    path = RequestPath(gw)
    headers_on_every_answer = security_headers(settings)

    @app.before_serving
    async def _startup() -> None:
        await gw.start()

    @app.after_serving
    async def _shutdown() -> None:
        await gw.stop()

    @app.before_request
    async def _begin() -> None:
        ex = path.open(
            method=request.method,
            path=request.path,
            endpoint=request.endpoint,
            peer=request.remote_addr,
            # Every X-Forwarded-For line, joined: a proxy may add its own line (RFC 7230 §3.2.2).
            forwarded_for=",".join(request.headers.getlist("x-forwarded-for")) or None,
            client_request_id=request.headers.get("x-request-id"),
        )
        g.ex = ex
        await path.screen(
            ex,
            query=request.args.items(multi=True),
            ambiguous_framing="transfer-encoding" in request.headers
            and "content-length" in request.headers,
        )

    async def drain_unread_body(ex: Exchange) -> None:
        """Read what the client sent before answering it with an early error.

        Answering an HTTP/2 stream before its body has arrived makes Hypercorn 0.18 drop
        the whole connection when the late DATA frames come in (pgjones/hypercorn#334),
        which would take the client's other streams with it. The read is bounded by the
        body size limit and timeout like any other.
        """
        if ex.body_read:
            return
        ex.body_read = True
        with contextlib.suppress(HTTPException, asyncio.TimeoutError, ConnectionError):
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            ex.bytes_in = len(body)

    @app.after_request
    async def _finish(response: Response) -> Response:
        ex: Exchange | None = g.get("ex")
        response.headers.update(headers_on_every_answer)
        if ex is None:  # pragma: no cover - before_request always runs first
            return response
        await drain_unread_body(ex)
        response.headers["X-Request-Id"] = ex.request_id
        if ex.close_connection and request.http_version.startswith("1"):
            response.headers["Connection"] = "close"
        path.audit(ex, response.status_code, response.content_length or 0)
        return response

    @app.teardown_request
    async def _teardown(exc: BaseException | None) -> None:
        # A request that ended without a response (the client went away, the handler was
        # cancelled) still gets its one record, and gives back its reserved slot.
        ex: Exchange | None = g.get("ex")
        if ex is not None and not ex.audited:
            ex.reason = "client_disconnected"
            path.audit(ex, 499, 0)

    def _render_error(exc: GatewayError) -> Response:
        ex: Exchange | None = g.get("ex")
        if ex is None:  # pragma: no cover - before_request always runs first
            return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)
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
        # A generic 500: the exception's text stays in our logs (OWASP: error handling).
        ex: Exchange | None = g.get("ex")
        log.exception("unhandled error in request %s", ex.request_id if ex else None)
        return _render_error(InternalError(reason="internal_error"))

    # -- health (unauthenticated, no model data) -----------------------------------
    @app.get("/v2/health/live")
    async def live() -> Response:
        g.ex.decision, g.ex.reason = "allow", "public_endpoint"
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        g.ex.decision, g.ex.reason = "allow", "public_endpoint"
        is_ready, checks = await gw.readiness()
        return _json({"ready": is_ready, **checks}, 200 if is_ready else 503)

    # -- model endpoints -----------------------------------------------------------
    async def admit(model: str) -> Route:
        """Authenticate, route, authorize, and count one request against the caller."""
        ex: Exchange = g.ex
        route = await path.admit(
            ex,
            model,
            authorization=request.headers.get("authorization"),
            api_key=request.headers.get("api-key"),
        )
        assert ex.principal is not None  # noqa: S101 - admit() sets it or raises
        await gw.limiter.check_principal(ex.principal, route.model, 1)
        return route

    async def forward(route: Route, method: str, upstream_path: str) -> Response:
        upstream = await gw.forwarder.send(route, method, upstream_path, None, g.ex.request_id)
        return Response(upstream.body, status=upstream.status, content_type=JSON)

    @app.get("/v2/models/<model>")
    async def model_metadata(model: str) -> Response:
        route = await admit(model)
        return await forward(route, "GET", f"/v2/models/{route.model}")

    @app.get("/v2/models/<model>/ready")
    async def model_ready(model: str) -> Response:
        route = await admit(model)
        return await forward(route, "GET", f"/v2/models/{route.model}/ready")

    # The scoring POSTs are answered by `gateway.scoring` before Quart sees them; their
    # rules stay here so that Quart answers any other method on them with 405 and Allow.
    @app.post("/v2/models/<model>/infer")
    async def infer(model: str) -> Response:
        raise InternalError(reason="scoring_path_bypassed")

    @app.post("/v1/models/<model>:predict")
    async def predict(model: str) -> Response:
        raise InternalError(reason="scoring_path_bypassed")

    app.asgi_app = ScoringPath(path, app.asgi_app)  # type: ignore[method-assign]
    return app
