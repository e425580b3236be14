"""Errors the scorer can end a request with.

    ScorerError (status, code, safe message)
     ├── InvalidInput        422  the body is not a valid inference request for this model
     ├── PayloadTooLarge     413  body or batch over the configured limit
     ├── ModelNotFound       404  no model of that name in the repository
     │    └── VersionNotFound 404 the model is served, not in the version asked for
     ├── Overloaded          503  the model's queue is full, or the scorer is stopping
     └── InternalError       500  anything else; the message never carries exception text

Load-time problems are `ArtifactError` (digest mismatch, untrusted types, bad settings):
they stop the scorer from starting with a clear message, and are never sent to clients.
"""

from __future__ import annotations


class ScorerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ScorerError):
    status = 422
    code = "invalid_input"


class PayloadTooLarge(ScorerError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(ScorerError):
    status = 408
    code = "request_timeout"


class ModelNotFound(ScorerError):
    status = 404
    code = "model_not_found"


class VersionNotFound(ModelNotFound):
    code = "version_not_found"


class Overloaded(ScorerError):
    status = 503
    code = "overloaded"


class InternalError(ScorerError):
    status = 500
    code = "internal_error"


class ArtifactError(Exception):
    """A model artifact or its settings cannot be trusted or loaded."""
