"""Answers to requests Hypercorn cannot parse (a malformed request line, a header section
over its size limit): ours, like every other public answer.

Hypercorn answers those itself, before any application code runs: an empty 400 or 431
without the JSON error model, the security headers or an audit record. The HTTP/1.1
protocol of `serving.hazmat.hypercorn_h11` asks this hook (`serving.hooks`) instead: the
request is opened, screened (the audit-closed check, the per-address limit: a flood of
garbage is limited like any other), refused with our error model and recorded.
"""

from __future__ import annotations

from gateway.errors import BadRequest, GatewayError, HeadersTooLarge
from gateway.steps.exchange import Head
from gateway.steps.path import RequestPath
from gateway.web.respond import security_headers
from serving.hooks import ProtocolErrorAnswer, ProtocolErrorHook


def protocol_error_answers(path: RequestPath) -> ProtocolErrorHook:
    security = [
        (name.lower().encode(), value.encode())
        for name, value in security_headers(path.settings).items()
    ]

    async def answer(peer: str | None, status_hint: int) -> ProtocolErrorAnswer:
        head = Head(
            method="-",
            path="-",  # never parsed: nothing of it is recorded
            endpoint="protocol_error",
            peer=peer,
            forwarded_for=(),
            request_id=None,
            query=(),
        )
        ex = path.open(head)
        try:
            await path.screen(ex, head)
            refused = HeadersTooLarge if status_hint == 431 else BadRequest
            raise refused(
                "the request could not be read as HTTP", reason=f"protocol_error_{status_hint}"
            )
        except GatewayError as exc:
            status = exc.status
            body, extra = path.error_payload(ex, exc)
        headers = [
            *security,
            (b"content-type", b"application/json"),
            (b"x-request-id", ex.request_id.encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        await path.audit(ex, status, len(body))
        return status, headers, body

    return answer
