"""Errors that end a gateway request, rendered in one place (`RequestPath.error_payload`).

    GatewayError (status, stable code, safe message, headers)
     ├── BadRequest             400  bad_request
     │    └── CredentialsInQuery 400 credentials_in_query
     ├── Unauthenticated        401  unauthenticated   (WWW-Authenticate; one message)
     ├── Forbidden              403  forbidden
     ├── NotFound               404  not_found
     │    └── ModelNotFound     404  model_not_found
     ├── MethodNotAllowed       405  method_not_allowed (Allow)
     ├── RequestTimeout         408  request_timeout   (the body did not arrive in time)
     ├── PayloadTooLarge        413  payload_too_large
     ├── UnsupportedMediaType   415  unsupported_media_type
     ├── InvalidRequest         422  invalid_request
     ├── RateLimited            429  rate_limited      (Retry-After, RateLimit-Policy, RateLimit)
     ├── TooManyInFlight        429  too_many_in_flight (Retry-After)
     ├── HeadersTooLarge        431  headers_too_large
     ├── BadUpstream            502  bad_upstream
     ├── Unavailable            503  unavailable
     │    ├── UpstreamUnavailable 503 upstream_unavailable
     │    │    └── CircuitOpen      503 upstream_unavailable (Retry-After)
     │    ├── AuditUnavailable    503 audit_unavailable
     │    └── ModelBusy           503 model_busy      (Retry-After)
     ├── UpstreamTimeout        504  upstream_timeout
     └── InternalError          500  internal_error

The message is written by us and is safe to show; exception text never is (OWASP REST
Security: error handling). ``reason`` is the audit reason and can be finer than the code
the client sees (a revoked and an unknown key both answer 401 "unauthenticated").
``headers`` are the ones the status calls for, sent with the error's body.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    default_message = "internal error"
    headers: Mapping[str, str] = _NO_HEADERS

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        self.message = message or self.default_message
        self.reason = reason or self.code
        super().__init__(self.message)


class BadRequest(GatewayError):
    status, code, default_message = 400, "bad_request", "bad request"


class CredentialsInQuery(BadRequest):
    code = "credentials_in_query"
    default_message = "credentials are accepted only in headers, never in the URL"


class Unauthenticated(GatewayError):
    status, code = 401, "unauthenticated"
    default_message = "missing or invalid credentials"
    # RFC 9110 §11.6.1: a 401 names the scheme the client should use.
    headers = MappingProxyType(
        {"WWW-Authenticate": 'Bearer realm="scoregate", ApiKey realm="scoregate", header="api-key"'}
    )


class Forbidden(GatewayError):
    status, code = 403, "forbidden"
    default_message = "the credentials do not grant access to this model"


class NotFound(GatewayError):
    status, code, default_message = 404, "not_found", "no such resource"


class ModelNotFound(NotFound):
    code, default_message = "model_not_found", "no such model"


class MethodNotAllowed(GatewayError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed"

    def __init__(self, allowed: Iterable[str] = (), *, reason: str | None = None) -> None:
        super().__init__(reason=reason)
        # RFC 9110 §15.5.6: a 405 MUST carry Allow, the methods the resource serves.
        self.allowed = tuple(sorted({m.upper() for m in allowed}))
        if self.allowed:
            self.headers = {"Allow": ", ".join(self.allowed)}


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"
    default_message = "the request body did not arrive in time"


class PayloadTooLarge(GatewayError):
    status, code, default_message = 413, "payload_too_large", "request too large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"
    default_message = "the body must be application/json"


class HeadersTooLarge(GatewayError):
    status, code = 431, "headers_too_large"
    default_message = "the request's header section is too large"


class InvalidRequest(GatewayError):
    status, code, default_message = 422, "invalid_request", "the request body is invalid"


class RateLimited(GatewayError):
    """429 with Retry-After and the IETF RateLimit headers.

    Header syntax follows draft-ietf-httpapi-ratelimit-headers: ``RateLimit-Policy`` names
    the policy with its quota ``q`` and window ``w`` (seconds); ``RateLimit`` gives the
    remaining quota ``r`` and the seconds ``t`` until it resets.
    """

    status, code, default_message = 429, "rate_limited", "too many requests, retry later"

    def __init__(
        self, *, policy: str, quota: int, window_s: int, remaining: int, reset_in_s: float
    ) -> None:
        super().__init__(reason=f"rate_limit_{policy}")
        retry = max(1, math.ceil(reset_in_s))
        self.headers = {
            # RFC 9110 §10.2.3: seconds to wait before retrying.
            "Retry-After": str(retry),
            "RateLimit-Policy": f'"{policy}";q={quota};w={window_s}',
            "RateLimit": f'"{policy}";r={remaining};t={retry}',
        }


class BadUpstream(GatewayError):
    status, code, default_message = 502, "bad_upstream", "the model server gave an invalid answer"


class Unavailable(GatewayError):
    status, code, default_message = 503, "unavailable", "service unavailable, retry later"


class ModelBusy(Unavailable):
    """The model has as many requests in flight as it may (gateway.ratelimit.bulkhead)."""

    code, default_message = "model_busy", "the model is busy, retry shortly"
    headers = MappingProxyType({"Retry-After": "1"})


class TooManyInFlight(GatewayError):
    """This caller has as many requests in flight as it may (gateway.ratelimit.bulkhead)."""

    status, code = 429, "too_many_in_flight"
    default_message = "too many requests in flight, retry when one has been answered"
    headers = MappingProxyType({"Retry-After": "1"})


class UpstreamUnavailable(Unavailable):
    code, default_message = "upstream_unavailable", "the model server is unavailable"


class CircuitOpen(UpstreamUnavailable):
    """The scorer's circuit breaker is open (`gateway.upstream.breaker`): refused at once."""

    default_message = "the model server is failing; retry later"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(reason="circuit_open")
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class AuditUnavailable(Unavailable):
    code, default_message = "audit_unavailable", "the audit trail is unavailable"


class UpstreamTimeout(GatewayError):
    status, code, default_message = (
        504,
        "upstream_timeout",
        "the model server did not answer in time",
    )


class InternalError(GatewayError):
    status, code, default_message = 500, "internal_error", "internal error"
