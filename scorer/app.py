"""The scorer's REST layer: Open Inference Protocol v2 plus the v1 ``instances`` form.

Reachable only from the gateway (a ClusterIP on AKS, loopback here). Bodies are parsed
with orjson, validated by `dataplane`, and predictions run off the event loop: in a
worker thread per request, or through a model's dynamic batcher (`scorer.batching`).
``/metrics`` serves the batchers' Prometheus series (internal, as the whole scorer is).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from scorer import dataplane
from scorer.batching import BatchMetrics, DynamicBatcher, Scheduler, Unbatched
from scorer.errors import InternalError, InvalidInput, ModelNotFound, PayloadTooLarge, ScorerError
from scorer.repository import ModelSettings
from scorer.runtime import Runtime

log = logging.getLogger("scorer")
JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


def _error(exc: ScorerError) -> Response:
    return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)


def scheduler_for(runtime: Runtime, metrics: BatchMetrics) -> Scheduler:
    spec = runtime.settings.batching
    if spec is None:
        return Unbatched(runtime.predict)
    return DynamicBatcher(runtime.settings.name, runtime.predict, spec, metrics)


Decode = Callable[[Any, ModelSettings], np.ndarray[Any, Any]]


async def _decoded(decode: Decode, body: Any, settings: ModelSettings) -> np.ndarray[Any, Any]:
    if settings.image is None:
        return decode(body, settings)
    # Decoding PNG/JPEG is CPU work: off the event loop, like the model itself.
    return await asyncio.to_thread(decode, body, settings)


def create_app(
    models: dict[str, Runtime],
    *,
    max_body_bytes: int,
    registry: CollectorRegistry | None = None,
) -> Quart:
    app = Quart("scorer")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    registry = registry if registry is not None else CollectorRegistry()
    metrics = BatchMetrics(registry)
    schedulers = {name: scheduler_for(runtime, metrics) for name, runtime in models.items()}

    @app.before_serving
    async def _start() -> None:
        for scheduler in schedulers.values():
            await scheduler.start()

    @app.after_serving
    async def _stop() -> None:
        # Hypercorn has stopped accepting and drained its requests: finish queued batches.
        for scheduler in schedulers.values():
            await scheduler.stop()

    def model(name: str) -> Runtime:
        runtime = models.get(name)
        if runtime is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return runtime

    async def body_json() -> Any:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise PayloadTooLarge(f"body exceeds {max_body_bytes} bytes")
        data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidInput("the body is not valid JSON") from None

    @app.errorhandler(ScorerError)
    async def _scorer_error(exc: ScorerError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _error(PayloadTooLarge("body exceeds the size limit"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        return _json({"error": {"code": code, "message": exc.name}}, status)

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
        return _json({"name": "scoregate-scorer", "version": "0.1.0", "extensions": []})

    @app.get("/v2/models/<name>")
    async def model_metadata(name: str) -> Response:
        runtime = model(name)
        return _json(dataplane.metadata(runtime.settings, runtime.outputs))

    @app.get("/v2/models/<name>/ready")
    async def model_ready(name: str) -> Response:
        model(name)
        return _json({"name": name, "ready": True})

    @app.post("/v2/models/<name>/infer")
    async def infer(name: str) -> Response:
        runtime = model(name)
        scheduler = schedulers[name]
        with scheduler.expecting():  # a batch may wait while this body arrives and decodes
            body = await body_json()
            names = dataplane.requested_outputs(body, runtime.outputs)
            batch = await _decoded(dataplane.decode_v2, body, runtime.settings)
        outputs = await scheduler.run(batch, names)
        dataplane.check_outputs(outputs)
        request_id = body.get("id") if isinstance(body.get("id"), str) else None
        return _json(dataplane.encode_v2(outputs, runtime.settings, request_id))

    @app.post("/v1/models/<name>:predict")
    async def predict_v1(name: str) -> Response:
        runtime = model(name)
        scheduler = schedulers[name]
        with scheduler.expecting():
            batch = await _decoded(dataplane.decode_v1, await body_json(), runtime.settings)
        outputs = await scheduler.run(batch, runtime.outputs[:1])
        dataplane.check_outputs(outputs)
        return _json(dataplane.encode_v1(outputs))

    return app
