"""The gateway application: the request path of DESIGN.md, one step per module.

    context → authenticate → route → authorize → validate body → forward → respond
                                                        every request ─▶ audit

Each step may end the request with a `GatewayError`; `_render_error` is the only place
that turns errors into responses, and `_finish` the only place that writes audit records
and security headers, so no path can skip either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from gateway import context
from gateway.audit import AuditEvent, AuditTrail, utc_timestamp
from gateway.auditsign import load_signer
from gateway.auth import authenticate
from gateway.breaker import CircuitOpen
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthenticated,
    UnsupportedMediaType,
)
from gateway.forward import Forwarder
from gateway.jwks import JWKSKeys
from gateway.jwtauth import JWTValidator
from gateway.keyring import KeyRing
from gateway.metrics import GatewayMetrics
from gateway.policy import AccessPolicy, Route, RouteTable
from gateway.principal import Principal
from gateway.ratelimit import Limiter, RateLimited
from gateway.secretstore import LocalSecretStore, SecretStore, SecretStoreError, utcnow
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")
JSON = "application/json"
_PROBES = frozenset({"live", "ready"})
_READY_CACHE_S = 2.0
_JSON_TYPE_NAMES: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


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
        await self.forwarder.start()
        self.metrics.watch(
            staleness=self.keys.staleness_s,
            audit_depth=lambda: self.audit.depth,
            audit_lost=lambda: self.audit.lost,
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


def _check_members(obj: dict[str, Any], where: str, required: dict[str, type]) -> None:
    """Members an object must carry, by JSON type; ``parameters`` must be an object if sent."""
    for name, kind in required.items():
        if not isinstance(obj.get(name), kind):
            raise InvalidRequest(
                f"{where} needs '{name}' as {_JSON_TYPE_NAMES[kind]}", reason="body_invalid"
            )
    if "parameters" in obj and not isinstance(obj["parameters"], dict):
        raise InvalidRequest(f"'parameters' of {where} must be an object", reason="body_invalid")


def _check_v2_envelope(body: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
    """The Open Inference Protocol's request envelope (gateway/openapi.yaml): members the
    protocol requires, with their JSON types. The scorer judges the tensors themselves
    (datatype, data against shape, the model's schema); the public contract is checked
    here, so a malformed envelope never reaches a model server (OWASP REST Security
    Cheat Sheet: input validation)."""
    _check_members(body, "the request", {})
    if "id" in body and not isinstance(body["id"], str):
        raise InvalidRequest("'id' must be a string", reason="body_invalid")
    for tensor in inputs:
        _check_members(tensor, "each input", {"name": str, "datatype": str, "data": list})
    if "outputs" not in body:
        return  # the model's default output
    outputs = body["outputs"]
    if (
        not isinstance(outputs, list)
        or not outputs
        or not all(isinstance(o, dict) for o in outputs)
    ):
        raise InvalidRequest("'outputs' must be a non-empty list of objects", reason="body_invalid")
    for output in outputs:
        _check_members(output, "each output", {"name": str})


def _count_instances(body: Any, kind: str) -> int:
    """Instances in a v2 or v1 body; the cheap structural check the gateway owns."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", reason="body_not_object")
    if kind == "v1":
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest("'instances' must be a non-empty list", reason="body_invalid")
        return len(instances)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequest("'inputs' must be a non-empty list of tensors", reason="body_invalid")
    batch = 0
    for tensor in inputs:
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or shape[0] < 1
        ):
            raise InvalidRequest(
                "each input needs a 'shape' of integers with a batch of at least 1",
                reason="body_invalid",
            )
        batch = max(batch, shape[0])
    _check_v2_envelope(body, inputs)
    # The cost is the largest batch any input declares; the scorer checks the data
    # against the shapes, so a request cannot carry more than it is charged for.
    return batch


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
    security_headers = {
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

    @app.before_serving
    async def _startup() -> None:
        await gw.start()

    @app.after_serving
    async def _shutdown() -> None:
        await gw.stop()

    @app.before_request
    async def _begin() -> None:
        g.start = time.perf_counter()
        # Our own id always: a client-chosen one could collide with another request's.
        g.request_id = context.new_request_id()
        g.client_request_id = context.client_request_id(request.headers.get("x-request-id"))
        g.client = context.client_address(
            request.remote_addr,
            # Every X-Forwarded-For line, joined: a proxy may add its own line (RFC 7230 §3.2.2).
            ",".join(request.headers.getlist("x-forwarded-for")) or None,
            settings.trusted_proxy_hops,
        )
        g.principal = None
        g.model = None
        g.decision = "deny"
        g.reason = "ok"
        g.bytes_in = 0
        g.body_read = False
        g.payload_sha256 = None
        g.audit_reserved = gw.audit.reserve()
        if not g.audit_reserved and settings.audit_on_failure == "closed":
            # Fail closed (the default): no request is served that cannot be audited.
            raise AuditUnavailable(reason="audit_unavailable")
        context.reject_credentials_in_query(request.args.items(multi=True))
        if "transfer-encoding" in request.headers and "content-length" in request.headers:
            # RFC 9112 §6.1: both framings at once is how requests are smuggled past a
            # proxy; refuse rather than pick one, and close the connection after answering.
            g.close_connection = True
            raise BadRequest("ambiguous message framing", reason="ambiguous_framing")
        if request.endpoint not in _PROBES:
            # Before authentication: per-address limit and the failed-authentication block.
            await gw.limiter.check_address(g.client)

    async def read_body() -> bytes:
        g.body_read = True
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        g.bytes_in = len(body)
        return body

    async def drain_unread_body() -> None:
        """Read what the client sent before answering it with an early error.

        Answering an HTTP/2 stream before its body has arrived makes Hypercorn 0.18 drop
        the whole connection when the late DATA frames come in (pgjones/hypercorn#334),
        which would take the client's other streams with it. The read is bounded by the
        body size limit and timeout like any other.
        """
        if g.get("body_read", True):
            return
        with contextlib.suppress(HTTPException, asyncio.TimeoutError, ConnectionError):
            await read_body()

    @app.after_request
    async def _finish(response: Response) -> Response:
        await drain_unread_body()
        response.headers.update(security_headers)
        response.headers["X-Request-Id"] = g.request_id
        if g.get("close_connection") and request.http_version.startswith("1"):
            response.headers["Connection"] = "close"
        record_audit(response.status_code, response.content_length or 0)
        return response

    def record_audit(status: int, bytes_out: int) -> None:
        """The request's one audit record; written once, from `_finish` or `_teardown`."""
        reserved = g.get("audit_reserved", False)
        g.audit_reserved = False
        g.audited = True
        principal = g.get("principal")
        rule = request.url_rule
        route: Route | None = g.get("route")
        event = AuditEvent(
            time=utc_timestamp(),
            request_id=g.request_id,
            client_request_id=g.get("client_request_id"),
            client=g.client,
            method=request.method[:16],
            path=request.path[:256],  # never the query string
            route=rule.endpoint if rule is not None else "-",
            model=g.get("model"),
            subject=principal.subject if principal else None,
            credential=principal.credential if principal else None,
            key_id=principal.key_id if principal else None,
            key_version=principal.key_version if principal else None,
            decision=g.get("decision", "deny"),
            reason=g.get("reason", "ok"),
            status=status,
            latency_ms=round((time.perf_counter() - g.start) * 1000, 3),
            bytes_in=g.get("bytes_in", 0),
            bytes_out=bytes_out,
            payload_sha256=g.get("payload_sha256"),
            instances=g.get("instances"),
            limiter=gw.limiter.state if request.endpoint not in _PROBES else None,
        )
        gw.audit.record(event, reserved=reserved)
        gw.metrics.observe(event, route.upstream_name if route is not None else None)

    @app.teardown_request
    async def _teardown(exc: BaseException | None) -> None:
        # A request that ended without a response (the client went away, the handler was
        # cancelled) still gets its one record, and gives back its reserved slot.
        if "start" in g and not g.get("audited", False):
            g.reason = "client_disconnected"
            record_audit(499, 0)

    def _render_error(exc: GatewayError) -> Response:
        g.reason = exc.reason
        if exc.status < 500:
            g.decision = "deny"  # refused (429, 413, 422, …) even after authorization passed
        response = _json(
            {
                "error": {
                    "code": exc.code,
                    "message": exc.message,
                    "request_id": g.get("request_id"),
                }
            },
            exc.status,
        )
        if isinstance(exc, RateLimited | CircuitOpen):
            response.headers.update(exc.headers)
        if isinstance(exc, MethodNotAllowed) and exc.allowed:
            response.headers["Allow"] = ", ".join(exc.allowed)
        if exc.status == 401:
            # RFC 9110 §11.6.1: a 401 names the scheme the client should use.
            response.headers["WWW-Authenticate"] = (
                'Bearer realm="scoregate", ApiKey realm="scoregate", header="api-key"'
            )
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
            g.close_connection = True
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
        log.exception("unhandled error in request %s", g.get("request_id"))
        return _render_error(InternalError(reason="internal_error"))

    # -- health (unauthenticated, no model data) -----------------------------------
    @app.get("/v2/health/live")
    async def live() -> Response:
        g.decision, g.reason = "allow", "public_endpoint"
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        g.decision, g.reason = "allow", "public_endpoint"
        is_ready, checks = await gw.readiness()
        return _json({"ready": is_ready, **checks}, 200 if is_ready else 503)

    # -- model endpoints -----------------------------------------------------------
    def authenticate_request(headers: Any) -> Principal:
        """A bearer JWT or an API key, never both (an ambiguous request is refused)."""
        authorization = headers.get("authorization")
        api_key = headers.get("api-key")
        if authorization is not None and api_key is not None:
            raise Unauthenticated(reason="credentials_ambiguous")
        if authorization is None:
            return authenticate(api_key, gw.keys, utcnow())
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(reason="authorization_scheme_unsupported")
        return gw.jwt.authenticate(token.strip())

    async def admit(model: str) -> Route:
        """Authenticate, route, authorize: 401, then 404, then 403."""
        try:
            principal = authenticate_request(request.headers)
        except Unauthenticated:
            await gw.limiter.failed_authentication(g.client)
            raise
        g.principal = principal
        route = gw.routes.resolve(model)
        g.model = route.model
        g.route = route
        gw.access.authorize(principal, route.model)
        g.decision = "allow"
        return route

    async def forward(route: Route, method: str, path: str, body: bytes | None) -> Response:
        upstream = await gw.forwarder.send(route, method, path, body, g.request_id)
        return Response(upstream.body, status=upstream.status, content_type=JSON)

    async def score(model: str, kind: str, path: str) -> Response:
        route = await admit(model)
        if request.mimetype != JSON:
            # OWASP REST Security: refuse a body whose declared type we do not accept
            # (415), rather than parse it as JSON whatever it claims to be.
            raise UnsupportedMediaType(reason="content_type_not_json")
        body = await read_body()
        g.payload_sha256 = hashlib.sha256(body).hexdigest()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("the body is not valid JSON", reason="body_not_json") from None
        instances = _count_instances(parsed, kind)
        g.instances = instances
        if instances > route.max_instances:
            raise PayloadTooLarge(
                f"at most {route.max_instances} instances per request", reason="too_many_instances"
            )
        # Cost of a request = the instances it carries (OWASP API4).
        await gw.limiter.check_principal(g.principal, route.model, instances)
        return await forward(route, "POST", path, body)

    @app.get("/v2/models/<model>")
    async def model_metadata(model: str) -> Response:
        route = await admit(model)
        await gw.limiter.check_principal(g.principal, route.model, 1)
        return await forward(route, "GET", f"/v2/models/{route.model}", None)

    @app.get("/v2/models/<model>/ready")
    async def model_ready(model: str) -> Response:
        route = await admit(model)
        await gw.limiter.check_principal(g.principal, route.model, 1)
        return await forward(route, "GET", f"/v2/models/{route.model}/ready", None)

    @app.post("/v2/models/<model>/infer")
    async def infer(model: str) -> Response:
        return await score(model, "v2", f"/v2/models/{model}/infer")

    @app.post("/v1/models/<model>:predict")
    async def predict(model: str) -> Response:
        return await score(model, "v1", f"/v1/models/{model}:predict")

    return app
