"""Errors that end a gateway request. One handler renders them all (`app.py`).

    GatewayError (status, stable code, safe message)
     ├── BadRequest             400  bad_request
     │    └── CredentialsInQuery 400 credentials_in_query
     ├── Unauthenticated        401  unauthenticated   (one message for every cause)
     ├── Forbidden              403  forbidden
     ├── NotFound               404  not_found
     │    └── ModelNotFound     404  model_not_found
     ├── MethodNotAllowed       405  method_not_allowed
     ├── RequestTimeout         408  request_timeout   (the body did not arrive in time)
     ├── PayloadTooLarge        413  payload_too_large
     ├── UnsupportedMediaType   415  unsupported_media_type
     ├── InvalidRequest         422  invalid_request
     ├── BadUpstream            502  bad_upstream
     ├── Unavailable            503  unavailable
     │    ├── UpstreamUnavailable 503 upstream_unavailable
     │    └── AuditUnavailable    503 audit_unavailable
     ├── UpstreamTimeout        504  upstream_timeout
     └── InternalError          500  internal_error

The message is written by us and is safe to show; exception text never is (OWASP REST
Security: error handling). ``reason`` is the audit reason and can be finer than the code
the client sees (a revoked and an unknown key both answer 401 "unauthenticated").
"""

from __future__ import annotations

from collections.abc import Iterable


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    default_message = "internal error"

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


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"
    default_message = "the request body did not arrive in time"


class PayloadTooLarge(GatewayError):
    status, code, default_message = 413, "payload_too_large", "request too large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"
    default_message = "the body must be application/json"


class InvalidRequest(GatewayError):
    status, code, default_message = 422, "invalid_request", "the request body is invalid"


class BadUpstream(GatewayError):
    status, code, default_message = 502, "bad_upstream", "the model server gave an invalid answer"


class Unavailable(GatewayError):
    status, code, default_message = 503, "unavailable", "service unavailable, retry later"


class UpstreamUnavailable(Unavailable):
    code, default_message = "upstream_unavailable", "the model server is unavailable"


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
