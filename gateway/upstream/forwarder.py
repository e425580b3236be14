"""Forwarding to the scorers: the rules, over pooled keep-alive connections (`hazmat`).

Rules enforced here (OWASP API10, unsafe consumption of APIs):
- only an allow-list of headers goes upstream: credentials, cookies and hop-by-hop headers
  never leave the gateway (the request is written whole by `gateway.upstream.hazmat.http1_pool`);
- no redirects are followed; a 3xx is a bad upstream;
- the response body is read up to a bound and must be JSON;
- connect failure → 503, timeout → 504, anything malformed → 502;
- a circuit breaker per upstream (`gateway.upstream.breaker`) refuses at once while a scorer fails.
"""

from __future__ import annotations

import asyncio
import ssl

import orjson

from gateway.errors import (
    BadUpstream,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.policy import Route
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.hazmat.http1_pool import (
    Answer,
    AnswerTooLarge,
    BufferBudget,
    ConnectFailed,
    UpstreamError,
    UpstreamPool,
)
from serving.binary import HEADER, OCTET_STREAM, BinaryFormatError, header_length

__all__ = ["Answer", "Forwarder"]

# Upstream client errors that carry a safe message of ours back to the caller.
_PASSED_THROUGH: dict[int, type[GatewayError]] = {422: InvalidRequest, 413: PayloadTooLarge}
_MESSAGE_LIMIT = 300


class Forwarder:
    def __init__(
        self,
        *,
        max_response_bytes: int,
        tls: ssl.SSLContext | None = None,
        buffer_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self._max = max_response_bytes
        self._tls = tls
        # Answers being received, from every scorer together, fit in this (the pod's
        # memory limit is 512 MiB): past it an answer is refused, never buffered.
        self._budget = BufferBudget(buffer_bytes)
        self._pools: dict[str, UpstreamPool] = {}
        self.breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, route: Route) -> CircuitBreaker:
        found = self.breakers.get(route.upstream_name)
        if found is None:
            found = CircuitBreaker(
                failure_threshold=route.upstream.breaker_failures,
                reset_s=route.upstream.breaker_reset_s,
            )
            self.breakers[route.upstream_name] = found
        return found

    def _pool(self, route: Route) -> UpstreamPool:
        pool = self._pools.get(route.upstream_name)
        if pool is None:
            upstream = route.upstream
            pool = UpstreamPool(
                str(upstream.url),
                max_connections=upstream.max_connections,
                max_body=self._max,
                # https:// scorers: our context (CA, client certificate), else system trust.
                tls=self._tls,
                budget=self._budget,
            )
            self._pools[route.upstream_name] = pool
        return pool

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    async def send(
        self,
        route: Route,
        method: str,
        path: str,
        body: bytes | None,
        request_id: str,
        inference_header: str | None = None,
    ) -> Answer:
        breaker = self.breaker(route)
        breaker.before()
        try:
            response = await self._send(route, method, path, body, request_id, inference_header)
        except (UpstreamUnavailable, UpstreamTimeout, BadUpstream):
            breaker.failure()
            raise
        except GatewayError:
            breaker.success()  # the scorer answered: the client's input was at fault
            raise
        except BaseException:
            breaker.release()  # cancelled (client gone): no verdict on the scorer
            raise
        breaker.success()
        return response

    async def _send(
        self,
        route: Route,
        method: str,
        path: str,
        body: bytes | None,
        request_id: str,
        inference_header: str | None,
    ) -> Answer:
        upstream = route.upstream
        headers = {"x-request-id": request_id, "accept": "application/json"}
        if inference_header is not None:
            # The binary tensor data extension: the JSON header's size, checked by the path.
            headers["content-type"] = OCTET_STREAM
            headers[HEADER] = inference_header
        elif body is not None:
            headers["content-type"] = "application/json"
        try:
            async with asyncio.timeout(upstream.timeout_s):
                answer = await self._pool(route).exchange(
                    method, path, headers, body, connect_timeout_s=upstream.connect_timeout_s
                )
        except TimeoutError:
            raise UpstreamTimeout(reason="upstream_timeout") from None
        except ConnectFailed:
            raise UpstreamUnavailable(reason="upstream_connect_failed") from None
        except AnswerTooLarge:
            raise BadUpstream(reason="upstream_body_too_large") from None
        except UpstreamError:
            raise BadUpstream(reason="upstream_protocol_error") from None
        return self._check(answer)

    @staticmethod
    def _check(answer: Answer) -> Answer:
        """A 2xx JSON answer (or JSON and binary tensors, framed as `serving.binary`
        says), passed on; anything else becomes the gateway's own error."""
        status = answer.status
        if answer.inference_header is not None:
            if answer.content_type != OCTET_STREAM or not 200 <= status < 300:
                raise BadUpstream(reason="upstream_not_json")
            try:
                header_length(answer.inference_header, len(answer.body))
            except BinaryFormatError:
                raise BadUpstream(reason="upstream_binary_framing") from None
            return answer
        if answer.content_type != "application/json":
            raise BadUpstream(reason="upstream_not_json")
        if 200 <= status < 300:
            return answer
        if status in _PASSED_THROUGH or status == 404:
            message, code = _upstream_error(answer.body)
            if status in _PASSED_THROUGH:
                raise _PASSED_THROUGH[status](message, reason="upstream_rejected_input")
            if code == "version_not_found":
                # The model is routed and served, in another version than the path names
                # (the protocol's /versions/{v}); any other 404 is a misrouted scorer: 502.
                raise ModelNotFound(message, reason="version_unknown")
        if status == 503:
            raise UpstreamUnavailable(reason="upstream_503")
        raise BadUpstream(reason=f"upstream_status_{status}")


def _upstream_error(payload: bytes) -> tuple[str | None, str | None]:
    """The scorer's own (safe, ours) error message and code, each None when the body is not
    the expected shape."""
    try:
        error = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(error, dict):
        return None, None
    message, code = error.get("error"), error.get("code")
    return (
        message[:_MESSAGE_LIMIT] if isinstance(message, str) else None,
        code if isinstance(code, str) else None,
    )
