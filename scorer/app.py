"""The scorer's REST layer: Open Inference Protocol v2 plus the v1 ``instances`` form.

Reachable only from the gateway (a ClusterIP on AKS, loopback here). The scoring POSTs
are served by `scorer.fastpath` in front of this Quart app: bodies parsed with orjson,
validated by `dataplane`, predictions run by the model's scheduler (`scorer.batching`).
Quart serves health, metadata, and ``/metrics`` with the batchers' Prometheus series
(internal, as the whole scorer is).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from scorer import dataplane
from scorer.batching import BatchMetrics, DynamicBatcher, Scheduler, Unbatched
from scorer.errors import (
    InternalError,
    ModelNotFound,
    PayloadTooLarge,
    ScorerError,
    VersionNotFound,
)
from scorer.fastpath import ScoringPath, error_body
from scorer.runtime import Runtime

log = logging.getLogger("scorer")
JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


def _error(exc: ScorerError) -> Response:
    return Response(error_body(exc), status=exc.status, content_type=JSON)


def scheduler_for(
    runtime: Runtime, metrics: BatchMetrics, *, inline_budget_s: float = 0.0
) -> Scheduler:
    spec = runtime.settings.batching
    if spec is None:
        return Unbatched(runtime.predict, inline_budget_s=inline_budget_s)
    return DynamicBatcher(runtime.settings.name, runtime.predict, spec, metrics)


def create_app(
    models: dict[str, Runtime],
    *,
    max_body_bytes: int,
    registry: CollectorRegistry | None = None,
    inline_budget_s: float = 0.0,
) -> Quart:
    app = Quart("scorer")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    registry = registry if registry is not None else CollectorRegistry()
    metrics = BatchMetrics(registry)
    schedulers = {
        name: scheduler_for(runtime, metrics, inline_budget_s=inline_budget_s)
        for name, runtime in models.items()
    }
    # The protocol's model metadata, outputs with their datatype and shape: learnt once,
    # from what each model produces for one row of zeros.
    described = {
        name: dataplane.metadata(
            runtime.settings,
            dataplane.output_metadata(
                runtime.settings,
                runtime.predict(dataplane.example_batch(runtime.settings), runtime.outputs),
            ),
        )
        for name, runtime in models.items()
    }

    @app.before_serving
    async def _start() -> None:
        for scheduler in schedulers.values():
            await scheduler.start()

    @app.after_serving
    async def _stop() -> None:
        # Hypercorn has stopped accepting and drained its requests: finish queued batches.
        for scheduler in schedulers.values():
            await scheduler.stop()

    def model(name: str, version: str | None = None) -> Runtime:
        runtime = models.get(name)
        if runtime is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        if version is not None and version != runtime.settings.version:
            raise VersionNotFound(f"model {name!r} is served in version {runtime.settings.version}")
        return runtime

    @app.errorhandler(ScorerError)
    async def _scorer_error(exc: ScorerError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _error(PayloadTooLarge("body exceeds the size limit"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        return _json({"error": exc.name, "code": code}, status)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        # Never leak the exception text to the caller (OWASP REST: error handling).
        log.exception("unhandled error")
        return _error(InternalError())

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _json({"ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(
            {
                "name": "scoregate-scorer",
                "version": metadata.version("scoregate"),
                "extensions": ["binary_tensor_data"],
            }
        )

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        model(name, version)
        return _json(described[name])

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        model(name, version)
        return _json({"name": name, "ready": True})

    # The scoring POSTs are answered by `scorer.fastpath` before Quart sees them; their
    # rules stay here so that Quart answers any other method on them with 405.
    @app.post("/v2/models/<name>/infer")
    async def infer(name: str) -> Response:
        raise InternalError("scoring path bypassed")

    @app.post("/v2/models/<name>/versions/<version>/infer")
    async def infer_version(name: str, version: str) -> Response:
        raise InternalError("scoring path bypassed")

    @app.post("/v1/models/<name>:predict")
    async def predict_v1(name: str) -> Response:
        raise InternalError("scoring path bypassed")

    app.asgi_app = ScoringPath(  # type: ignore[method-assign]
        app.asgi_app, models, schedulers, max_body_bytes=max_body_bytes
    )
    return app
