"""Forwarding to the scorers over one pooled keep-alive aiohttp session.

aiohttp was chosen by measurement: about 3x cheaper per request than httpx in our first
prototype (BENCHMARKS.md). Rules enforced here (OWASP API10, unsafe consumption of APIs):
- only an allow-list of headers goes upstream: credentials, cookies and hop-by-hop headers
  never leave the gateway;
- no redirects are followed; a 3xx is a bad upstream;
- the response body is read up to a bound and must be JSON;
- connect failure → 503, timeout → 504, anything malformed → 502;
- a circuit breaker per upstream (`gateway.breaker`) refuses at once while a scorer fails.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.breaker import CircuitBreaker
from gateway.errors import (
    BadUpstream,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.policy import Route

# Upstream client errors that carry a safe message of ours back to the caller.
_PASSED_THROUGH: dict[int, type[GatewayError]] = {422: InvalidRequest, 413: PayloadTooLarge}
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    body: bytes


class Forwarder:
    def __init__(self, *, max_response_bytes: int, tls: ssl.SSLContext | None = None) -> None:
        self._max = max_response_bytes
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
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

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=256,
            keepalive_timeout=30,
            ttl_dns_cache=30,
            # https:// scorers: our context (CA, client certificate), else system trust.
            ssl=self._tls if self._tls is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The gateway decides what reaches the scorer: no cookies kept or sent.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # We read bodies raw and bounded, so we ask for no compression.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    def _started(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _read_bounded(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self._max:
            raise BadUpstream(reason="upstream_body_too_large")
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max:
                raise BadUpstream(reason="upstream_body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def send(
        self, route: Route, method: str, path: str, body: bytes | None, request_id: str
    ) -> UpstreamResponse:
        breaker = self.breaker(route)
        breaker.before()
        try:
            response = await self._send(route, method, path, body, request_id)
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
        self, route: Route, method: str, path: str, body: bytes | None, request_id: str
    ) -> UpstreamResponse:
        session = self._started()
        upstream = route.upstream
        url = f"{str(upstream.url).rstrip('/')}{path}"
        headers = {"x-request-id": request_id, "accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        timeout = aiohttp.ClientTimeout(
            total=upstream.timeout_s, sock_connect=upstream.connect_timeout_s
        )
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                payload = await self._read_bounded(response)
                status = response.status
                content_type = response.content_type
        except TimeoutError:
            raise UpstreamTimeout(reason="upstream_timeout") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamUnavailable(reason="upstream_connect_failed") from None
        except aiohttp.ClientError:
            raise BadUpstream(reason="upstream_protocol_error") from None
        return self._check(status, content_type, payload)

    def _check(self, status: int, content_type: str, payload: bytes) -> UpstreamResponse:
        if content_type != "application/json":
            raise BadUpstream(reason="upstream_not_json")
        if 200 <= status < 300:
            return UpstreamResponse(status, payload)
        if status in _PASSED_THROUGH:
            raise _PASSED_THROUGH[status](
                _upstream_message(payload), reason="upstream_rejected_input"
            )
        if status == 503:
            raise UpstreamUnavailable(reason="upstream_503")
        raise BadUpstream(reason=f"upstream_status_{status}")

    async def probe(self, route: Route) -> bool:
        """True when the upstream answers its readiness endpoint with 200."""
        upstream = route.upstream
        try:
            async with self._started().get(
                f"{str(upstream.url).rstrip('/')}/v2/health/ready",
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=1.0),
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def _upstream_message(payload: bytes) -> str | None:
    """The scorer's own (safe, ours) error message, or None when it is not the expected shape."""
    try:
        message = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return message[:_MESSAGE_LIMIT] if isinstance(message, str) else None
