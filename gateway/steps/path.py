"""The request path of DESIGN.md, written once as steps over one request's `Exchange`.

    open → screen → admit (authenticate, route, authorize) → count (per principal)
         → [scoring: content type, body, envelope, charge] → forward → respond
                                                     every request ─▶ audit

Two drivers in `gateway.web` run these steps and share every decision: the fast path
(plain ASGI, for the POSTs that carry the load) and the Quart app (health, metadata, and
every error Quart's routing answers). Each step may end the request with a
`GatewayError`; `error_payload` is the one place errors become bodies, and `audit` the
one place records are written. The path holds the components it calls, not the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Generator
from typing import Any

import orjson

from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.redact import redact
from gateway.audit.trail import AuditTrail
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from gateway.identity.apikeys import RefusedKey
from gateway.identity.credentials import Authenticator
from gateway.identity.principal import Principal
from gateway.metrics import GatewayMetrics
from gateway.policy import AccessPolicy, Route, RouteTable
from gateway.ratelimit.addresses import rate_key
from gateway.ratelimit.bulkhead import Bulkheads
from gateway.ratelimit.limiter import Limiter
from gateway.settings import GatewaySettings
from gateway.steps import context
from gateway.steps.envelope import Kind, cost, measure
from gateway.steps.exchange import Exchange, Head
from gateway.upstream.forwarder import Answer, Forwarder
from serving.binary import OCTET_STREAM, BinaryFormatError, split

log = logging.getLogger("gateway.audit")

JSON = "application/json"
PROBES = frozenset({"live", "ready"})


class RequestPath:
    """The steps, bound to the components they call."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        authenticator: Authenticator,
        routes: RouteTable,
        access: AccessPolicy,
        limiter: Limiter,
        forwarder: Forwarder,
        audit: AuditTrail,
        metrics: GatewayMetrics,
        bulkheads: Bulkheads,
    ) -> None:
        self.settings = settings
        self._authenticator = authenticator
        self._routes = routes
        self._access = access
        self._limiter = limiter
        self._forwarder = forwarder
        self._audit = audit
        self._metrics = metrics
        self._bulkheads = bulkheads

    def open(self, head: Head) -> Exchange:
        """The request's state, before any check: nothing here can fail."""
        # Every X-Forwarded-For line, joined: a proxy may add its own line (RFC 7230 §3.2.2).
        forwarded_for = ",".join(head.forwarded_for) or None
        return Exchange(
            start=time.perf_counter(),
            # Our own id always: a client-chosen one could collide with another request's.
            request_id=context.new_request_id(),
            method=head.method,
            path=head.path,
            endpoint=head.endpoint or "-",
            client=context.client_address(
                head.peer, forwarded_for, self.settings.trusted_proxy_hops
            ),
            client_request_id=context.client_request_id(head.request_id),
            audit_reserved=self._audit.reserve(),
        )

    async def screen(self, ex: Exchange, head: Head) -> None:
        """The checks every request passes before anything reads its credentials."""
        if (
            not ex.audit_reserved
            and self.settings.audit_on_failure == "closed"
            and ex.endpoint not in PROBES
        ):
            # Fail closed (the default): no request is served that cannot be audited.
            # Probes are counted, not recorded: they still answer (readiness says 503
            # while the trail is not accepting; liveness stays up, a restart cures nothing).
            raise AuditUnavailable(reason="audit_unavailable")
        if head.header_bytes > self.settings.max_header_bytes:
            # RFC 6585 §5. h11 enforces its limit only on a head still incomplete after a
            # read, so a head up to a whole read (64 KiB) arriving at once gets here.
            raise HeadersTooLarge(reason="headers_too_large")
        context.reject_credentials_in_query(head.query)
        if head.transfer_encoding and head.content_length is not None:
            # RFC 9112 §6.1: both framings at once is how requests are smuggled past a
            # proxy; refuse rather than pick one, and close the connection after answering.
            ex.close_connection = True
            raise BadRequest("ambiguous message framing", reason="ambiguous_framing")
        if ex.endpoint not in PROBES:
            # Before authentication: per-address limit and the failed-authentication block.
            await self._limiter.check_address(ex.client)

    async def _authenticate(self, ex: Exchange, head: Head) -> Principal:
        try:
            principal = self._authenticator.authenticate(head.authorization, head.api_key)
        except Unauthenticated as exc:
            if isinstance(exc, RefusedKey):
                ex.principal = exc.principal  # recorded: which generation is still sent
            await self._limiter.failed_authentication(ex.client)
            raise
        ex.principal = principal
        return principal

    async def admit_caller(self, ex: Exchange, head: Head) -> None:
        """For what belongs to no model (the server's metadata): any valid caller, counted
        against its own limit. The server's name and version are not for anonymous
        scanners (OWASP WSTG-INFO-02: fingerprinting)."""
        principal = await self._authenticate(ex, head)
        ex.decision = "allow"
        await self._limiter.check_principal(principal, "-", 1)

    async def admit(self, ex: Exchange, model: str, head: Head) -> Route:
        """Authenticate, route, authorize: 401, then 404, then 403."""
        principal = await self._authenticate(ex, head)
        route = self._routes.resolve(model)
        ex.model = route.model
        ex.route = route
        self._access.authorize(principal, route.model)
        ex.decision = "allow"
        return route

    async def count(self, ex: Exchange, route: Route, cost: int) -> None:
        """The caller's limits, per principal and per principal and model (OWASP API4)."""
        assert ex.principal is not None  # noqa: S101 - admit() ran first
        await self._limiter.check_principal(ex.principal, route.model, cost)

    @staticmethod
    def check_content_type(head: Head, kind: Kind) -> None:
        """What a scoring body may declare itself to be.

        No Content-Type is read as JSON, as the Open Inference Protocol's clients send it
        (Triton's sends none); any other type is refused (OWASP REST Security: 415 rather
        than parse a body as JSON whatever it claims to be). A body with binary tensors
        (v2 only) is ``application/octet-stream``, or JSON by the letter of older clients.
        Content codings are refused too (RFC 9110 §15.5.16): a compressed body would
        pass the size limit and then grow (a decompression bomb).
        """
        if head.content_encoding is not None and head.content_encoding.strip().lower() not in (
            "",
            "identity",
        ):
            raise UnsupportedMediaType(
                "content codings are not accepted; send the body uncompressed",
                reason="content_encoding",
            )
        media = head.content_type.partition(";")[0].strip().lower()
        if head.inference_header is None:
            if media == OCTET_STREAM and kind == "v2":
                # A type we take, without the framing it needs: the request is malformed.
                raise InvalidRequest(
                    "a binary body needs Inference-Header-Content-Length",
                    reason="binary_header_missing",
                )
            if media not in ("", JSON):
                raise UnsupportedMediaType(reason="content_type_not_json")
        elif kind != "v2":
            raise UnsupportedMediaType(
                "binary tensor data is accepted on the v2 inference endpoint only",
                reason="binary_not_v2",
            )
        elif media not in ("", OCTET_STREAM, JSON):
            raise UnsupportedMediaType(
                "a body with binary tensors is application/octet-stream",
                reason="content_type_not_binary",
            )

    async def charge(
        self, ex: Exchange, route: Route, body: bytes, kind: Kind, inference_header: str | None
    ) -> None:
        """A scoring body's checks, then its cost against the caller's limits."""
        ex.payload_sha256 = hashlib.sha256(body).hexdigest()
        binary = None
        try:
            if inference_header is None:
                parsed = orjson.loads(body)
            else:
                header, binary = split(body, inference_header)
                parsed = orjson.loads(header)
        except BinaryFormatError as exc:
            raise InvalidRequest(str(exc), reason="binary_data_invalid") from None
        except orjson.JSONDecodeError:
            raise InvalidRequest("the body is not valid JSON", reason="body_not_json") from None
        measured = measure(
            parsed,
            kind,
            max_elements=route.max_elements,
            row_elements=route.row_elements,
            binary=binary,
        )
        ex.instances = measured.rows
        if measured.rows > route.max_instances:
            raise PayloadTooLarge(
                f"at most {route.max_instances} instances per request", reason="too_many_instances"
            )
        # Cost follows work (OWASP API4): rows, or the rows its elements fill.
        await self.count(ex, route, cost(measured, route.row_elements))

    async def forward(
        self,
        ex: Exchange,
        route: Route,
        method: str,
        upstream_path: str,
        body: bytes | None,
        inference_header: str | None = None,
    ) -> Answer:
        """The scorer's answer (`gateway.upstream.forwarder` holds the forwarding rules),
        within this model's and this caller's places in flight (gateway.ratelimit.bulkhead).
        ``inference_header`` is the JSON header's size of a body with binary tensors,
        checked by `charge`."""
        caller = rate_key(ex.principal) if ex.principal is not None else ex.client
        with self._bulkheads.hold(route.model, caller):
            return await self._forwarder.send(
                route, method, upstream_path, body, ex.request_id, inference_header
            )

    def error_payload(self, ex: Exchange, exc: GatewayError) -> tuple[bytes, dict[str, str]]:
        """The error envelope of gateway/openapi.yaml and the headers its status calls for:
        the Open Inference Protocol's ``{"error": "<message>"}``, with our stable ``code``
        and the ``request_id`` beside it, so that both kinds of client read it."""
        ex.reason = exc.reason
        if exc.status < 500:
            ex.decision = "deny"  # refused (429, 413, 422, …) even after authorization passed
        body = orjson.dumps({"error": exc.message, "code": exc.code, "request_id": ex.request_id})
        return body, dict(exc.headers)

    def audit(self, ex: Exchange, status: int, bytes_out: int) -> Awaitable[None]:
        """The request's one audit record; a second call for the same request does nothing.

        Await the result before the answer leaves: it completes when the record is in the
        sink (at most ``AUDIT_WAIT_S``, see `recorded`)."""
        if ex.audited:
            return _DONE
        ex.audited = True
        reserved, ex.audit_reserved = ex.audit_reserved, False
        principal = ex.principal
        event = AuditEvent(
            time=utc_timestamp(),
            request_id=ex.request_id,
            # What the client chose, with any key-shaped run taken out (CWE-532).
            client_request_id=redact(ex.client_request_id),
            client=ex.client,
            method=ex.method[:16],
            path=redact(ex.path[:256]),  # never the query string
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
            limiter=self._limiter.state if ex.endpoint not in PROBES else None,
        )
        written = None
        if ex.endpoint in PROBES:
            # Counted, not recorded one by one: anyone may probe (gateway.audit.trail).
            if reserved:
                self._audit.release()
            self._audit.count_probe(ex.endpoint, status)
        else:
            written = self._audit.record(event, reserved=reserved)
        self._metrics.observe(event, ex.route.upstream_name if ex.route is not None else None)
        return _DONE if written is None else _Recorded(written, ex.request_id)

    def abandoned(self, ex: Exchange) -> None:
        """A request that ended without an answer (the client left, or the server is
        stopping) still gets its one record, and gives back its reserved slot. No answer
        waits for it."""
        if not ex.audited:
            ex.reason = "client_disconnected"
            self.audit(ex, 499, 0)


# How long an answer waits for its record to reach the sink. The sink retries while it
# fails (a full disk, the store and then the spool); past this the answer goes out with
# its record still queued, written when the sink recovers, and new requests are refused
# (503) meanwhile: the trail is not accepting.
AUDIT_WAIT_S = 5.0


async def recorded(written: asyncio.Future[None], request_id: str) -> None:
    # No task per answer: asyncio.timeout, and the future itself (cancelling it at the
    # timeout leaves its record queued; the writer skips a future that is done).
    try:
        async with asyncio.timeout(AUDIT_WAIT_S):
            await written
    except TimeoutError:
        log.error("audit record of %s not yet written; answering anyway", request_id)


class _Recorded:
    """Awaitable once, by the answer that waits for its record; a request abandoned
    without an answer does not await it, and nothing is left pending."""

    __slots__ = ("_request_id", "_written")

    def __init__(self, written: asyncio.Future[None], request_id: str) -> None:
        self._written, self._request_id = written, request_id

    def __await__(self) -> Generator[Any, None, None]:
        return recorded(self._written, self._request_id).__await__()


class _Done:
    """An awaitable that is already complete (no record to wait for)."""

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()
