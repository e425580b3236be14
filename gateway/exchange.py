"""The request path of DESIGN.md, written once as steps over one request's `Exchange`.

    open → screen → admit (authenticate, route, authorize) → [scoring: content type,
    body, envelope, cost] → forward → respond            every request ─▶ audit

Two layers drive these steps and share every decision: the scoring path
(`gateway.scoring`, plain ASGI, for the POSTs that carry the load) and the Quart app
(`gateway.app`: health, metadata, and every error Quart's routing answers). Each step
may end the request with a `GatewayError`; `error_payload` is the one place errors
become bodies, and `audit` the one place records are written.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from gateway import auth, context
from gateway.audit import AuditEvent, utc_timestamp
from gateway.breaker import CircuitOpen
from gateway.envelope import Kind, count_instances
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from gateway.policy import Route
from gateway.principal import Principal
from gateway.ratelimit import RateLimited
from gateway.secretstore import utcnow
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.app import Gateway

JSON = "application/json"
PROBES = frozenset({"live", "ready"})


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


class RequestPath:
    """The steps, bound to the gateway's components."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.settings = gw.settings

    def open(
        self,
        *,
        method: str,
        path: str,
        endpoint: str | None,
        peer: str | None,
        forwarded_for: str | None,
        client_request_id: str | None,
    ) -> Exchange:
        """The request's state, before any check: nothing here can fail."""
        gw = self.gw
        return Exchange(
            start=time.perf_counter(),
            # Our own id always: a client-chosen one could collide with another request's.
            request_id=context.new_request_id(),
            method=method,
            path=path,
            endpoint=endpoint or "-",
            client=context.client_address(peer, forwarded_for, self.settings.trusted_proxy_hops),
            client_request_id=context.client_request_id(client_request_id),
            audit_reserved=gw.audit.reserve(),
        )

    async def screen(
        self, ex: Exchange, *, query: Iterable[tuple[str, str]], ambiguous_framing: bool
    ) -> None:
        """The checks every request passes before anything reads its credentials."""
        if not ex.audit_reserved and self.settings.audit_on_failure == "closed":
            # Fail closed (the default): no request is served that cannot be audited.
            raise AuditUnavailable(reason="audit_unavailable")
        context.reject_credentials_in_query(query)
        if ambiguous_framing:
            # RFC 9112 §6.1: both framings at once is how requests are smuggled past a
            # proxy; refuse rather than pick one, and close the connection after answering.
            ex.close_connection = True
            raise BadRequest("ambiguous message framing", reason="ambiguous_framing")
        if ex.endpoint not in PROBES:
            # Before authentication: per-address limit and the failed-authentication block.
            await self.gw.limiter.check_address(ex.client)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """A bearer JWT or an API key, never both (an ambiguous request is refused)."""
        if authorization is not None and api_key is not None:
            raise Unauthenticated(reason="credentials_ambiguous")
        if authorization is None:
            return auth.authenticate(api_key, self.gw.keys, utcnow())
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(reason="authorization_scheme_unsupported")
        return self.gw.jwt.authenticate(token.strip())

    async def admit(
        self, ex: Exchange, model: str, *, authorization: str | None, api_key: str | None
    ) -> Route:
        """Authenticate, route, authorize: 401, then 404, then 403."""
        gw = self.gw
        try:
            principal = self.authenticate(authorization, api_key)
        except Unauthenticated:
            await gw.limiter.failed_authentication(ex.client)
            raise
        ex.principal = principal
        route = gw.routes.resolve(model)
        ex.model = route.model
        ex.route = route
        gw.access.authorize(principal, route.model)
        ex.decision = "allow"
        return route

    @staticmethod
    def check_content_type(mimetype: str) -> None:
        if mimetype != JSON:
            # OWASP REST Security: refuse a body whose declared type we do not accept
            # (415), rather than parse it as JSON whatever it claims to be.
            raise UnsupportedMediaType(reason="content_type_not_json")

    async def charge(self, ex: Exchange, route: Route, body: bytes, kind: Kind) -> None:
        """A scoring body's checks, then its cost against the caller's limits."""
        ex.payload_sha256 = hashlib.sha256(body).hexdigest()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("the body is not valid JSON", reason="body_not_json") from None
        instances = count_instances(parsed, kind)
        ex.instances = instances
        if instances > route.max_instances:
            raise PayloadTooLarge(
                f"at most {route.max_instances} instances per request", reason="too_many_instances"
            )
        assert ex.principal is not None  # noqa: S101 - admit() ran first
        # Cost of a request = the instances it carries (OWASP API4).
        await self.gw.limiter.check_principal(ex.principal, route.model, instances)

    def error_payload(self, ex: Exchange, exc: GatewayError) -> tuple[bytes, dict[str, str]]:
        """The error envelope of gateway/openapi.yaml and the headers its status calls for."""
        ex.reason = exc.reason
        if exc.status < 500:
            ex.decision = "deny"  # refused (429, 413, 422, …) even after authorization passed
        body = orjson.dumps(
            {"error": {"code": exc.code, "message": exc.message, "request_id": ex.request_id}}
        )
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited | CircuitOpen):
            headers.update(exc.headers)
        if isinstance(exc, MethodNotAllowed) and exc.allowed:
            headers["Allow"] = ", ".join(exc.allowed)
        if exc.status == 401:
            # RFC 9110 §11.6.1: a 401 names the scheme the client should use.
            headers["WWW-Authenticate"] = (
                'Bearer realm="scoregate", ApiKey realm="scoregate", header="api-key"'
            )
        return body, headers

    def audit(self, ex: Exchange, status: int, bytes_out: int) -> None:
        """The request's one audit record; a second call for the same request does nothing."""
        if ex.audited:
            return
        ex.audited = True
        reserved, ex.audit_reserved = ex.audit_reserved, False
        gw = self.gw
        principal = ex.principal
        event = AuditEvent(
            time=utc_timestamp(),
            request_id=ex.request_id,
            client_request_id=ex.client_request_id,
            client=ex.client,
            method=ex.method[:16],
            path=ex.path[:256],  # never the query string
            route=ex.endpoint,
            model=ex.model,
            subject=principal.subject if principal else None,
            credential=principal.credential if principal else None,
            key_id=principal.key_id if principal else None,
            key_version=principal.key_version if principal else None,
            decision=ex.decision,
            reason=ex.reason,
            status=status,
            latency_ms=round((time.perf_counter() - ex.start) * 1000, 3),
            bytes_in=ex.bytes_in,
            bytes_out=bytes_out,
            payload_sha256=ex.payload_sha256,
            instances=ex.instances,
            limiter=gw.limiter.state if ex.endpoint not in PROBES else None,
        )
        gw.audit.record(event, reserved=reserved)
        gw.metrics.observe(event, ex.route.upstream_name if ex.route is not None else None)
