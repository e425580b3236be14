"""The scorer's scoring path: its two POSTs served as plain ASGI, in front of Quart.

    POST /v2/models/<name>/infer, POST /v1/models/<name>:predict ─▶ ScoringPath
    anything else (health, metadata, /metrics, other methods) ─▶ Quart

As in the gateway (`gateway.web.fastpath`), Quart's per-request machinery cost more CPU than
a small scikit-learn prediction; these routes read the body, decode, predict and answer
over the raw ASGI messages with the same errors (`make bench`, B3).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from scorer import dataplane
from scorer.batching import Scheduler
from scorer.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    RequestTimeout,
    ScorerError,
    VersionNotFound,
)
from scorer.repository import ModelSettings
from scorer.runtime import Runtime
from serving.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    cancel_if_client_leaves,
    match_post,
    read_body,
    send_json,
)
from serving.binary import HEADER_BYTES, BinaryFormatError, chunks, join, split

log = logging.getLogger("scorer")
_ROUTES = (
    (re.compile(r"/v2/models/([^/]+)/infer"), "v2"),
    (re.compile(r"/v2/models/([^/]+)/versions/(?P<version>[^/]+)/infer"), "v2"),
    (re.compile(r"/v1/models/([^/]+):predict"), "v1"),
)
# A body that has not arrived in this time is abandoned (the gateway's own limit is
# shorter; this bounds a caller that is not the gateway).
BODY_TIMEOUT_S = 60.0


def error_body(exc: ScorerError) -> bytes:
    """The Open Inference Protocol's error (``{"error": "<message>"}``) with our stable code."""
    return orjson.dumps({"error": exc.message, "code": exc.code})


Decode = Callable[..., np.ndarray[Any, Any]]


# A body this large is converted off the event loop: about 150 ms of numpy work per MiB
# would otherwise hold every other request of this scorer.
INLINE_DECODE_BYTES = 64 * 1024


async def _decoded(
    decode: Decode, body: Any, settings: ModelSettings, size: int, *args: Any
) -> np.ndarray[Any, Any]:
    if settings.image is None and size <= INLINE_DECODE_BYTES:
        return decode(body, settings, *args)
    # Decoding PNG/JPEG, or converting a large body, is CPU work: off the event loop,
    # like the model itself.
    return await asyncio.to_thread(decode, body, settings, *args)


class ScoringPath:
    def __init__(
        self,
        app: ASGIFramework,
        models: dict[str, Runtime],
        schedulers: dict[str, Scheduler],
        *,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._models = models
        self._schedulers = schedulers
        self._limit = max_body_bytes

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        matched = match_post(scope, _ROUTES)
        if matched is not None:
            kind, name, version = matched
            await self._serve(scope, receive, send, name, kind, version)
            return
        await self._app(scope, receive, send)

    async def _serve(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        name: str,
        kind: str,
        version: str | None,
    ) -> None:
        assert scope["type"] == "http"  # noqa: S101 - dispatched on it
        declared = binary_header = None
        for header, value in scope["headers"]:
            if header == b"content-length":
                declared = value.decode("latin-1")
            elif header == HEADER_BYTES:
                binary_header = value
        json_size = None
        try:
            body, json_size = await self._score(
                receive, name, kind, version, declared, binary_header
            )
            status = 200
        except ClientGone:
            return  # nobody to answer; a batch skips the abandoned request
        except ScorerError as exc:
            status, body = exc.status, error_body(exc)
        except Exception:
            # Never leak the exception text to the caller (OWASP REST: error handling).
            log.exception("unhandled error")
            error = InternalError()
            status, body = error.status, error_body(error)
        await send_json(send, status, body, inference_header=json_size)

    async def _score(
        self,
        receive: ASGIReceiveCallable,
        name: str,
        kind: str,
        version: str | None,
        declared: str | None,
        binary_header: bytes | None,
    ) -> tuple[bytes, int | None]:
        """The answer's body, and the size of its JSON header when outputs follow it in
        binary (serving.binary)."""
        runtime = self._models.get(name)
        if runtime is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        if version is not None and version != runtime.settings.version:
            raise VersionNotFound(f"model {name!r} is served in version {runtime.settings.version}")
        scheduler = self._schedulers[name]
        settings = runtime.settings
        with scheduler.expecting():  # a batch may wait while this body arrives and decodes
            try:
                raw = await read_body(
                    receive, limit=self._limit, declared=declared, timeout_s=BODY_TIMEOUT_S
                )
            except BodyTooLarge:
                raise PayloadTooLarge(f"body exceeds {self._limit} bytes") from None
            except BodyTimeout:
                raise RequestTimeout("the body did not arrive in time") from None
            binary: list[memoryview | None] | None = None
            try:
                if binary_header is None:
                    body = orjson.loads(raw)
                else:
                    if kind != "v2":
                        raise InvalidInput("binary tensor data is accepted on v2 inference only")
                    header, rest = split(raw, binary_header)
                    body = orjson.loads(header)
                    inputs = body.get("inputs") if isinstance(body, dict) else None
                    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
                        raise InvalidInput("'inputs' must be a list of tensors")
                    binary = chunks(inputs, rest)
            except orjson.JSONDecodeError:
                raise InvalidInput("the body is not valid JSON") from None
            except BinaryFormatError as exc:
                raise InvalidInput(str(exc)) from None
            wanted_binary: frozenset[str] = frozenset()
            if kind == "v2":
                names, wanted_binary = dataplane.requested_outputs(body, runtime.outputs)
                batch = await _decoded(dataplane.decode_v2, body, settings, len(raw), binary)
            else:
                names = runtime.outputs[:1]
                batch = await _decoded(dataplane.decode_v1, body, settings, len(raw))
        # A prediction run inline holds the event loop until it returns, so no disconnect
        # could be noticed meanwhile: no watcher for it (a task made and cancelled per
        # request, for nothing).
        outputs = scheduler.run_now(batch, names)
        if outputs is None:
            with cancel_if_client_leaves(receive) as gone:
                try:
                    outputs = await scheduler.run(batch, names)
                except asyncio.CancelledError:
                    if not gone():
                        raise
                    raise ClientGone from None
        dataplane.check_outputs(outputs)
        if kind == "v1":
            return dataplane.dumps(dataplane.encode_v1(outputs)), None
        request_id = body.get("id") if isinstance(body.get("id"), str) else None
        response, parts = dataplane.encode_v2(outputs, settings, request_id, wanted_binary)
        encoded = dataplane.dumps(response)
        if not parts:
            return encoded, None
        return join(encoded, parts)
