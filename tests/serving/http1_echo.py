"""An ASGI echo app served by the shipped serving base (`serving.server`: its config, its
Hypercorn patches, uvloop), for tests/serving/test_http1_differential.py.

    python -m tests.serving.http1_echo {llhttp|h11} PORT

Every request is answered 200 with what the application received, as JSON (method,
path, raw path, query, HTTP version, every header, the body's length and SHA-256); the
path picks how the answer is framed, so that both protocols' writers are compared too:

    /chunked      two body parts without Content-Length (chunked, or to the close)
    /close        Connection: close on the answer
    /204          204, no body
    /early        answered before the body is read
    /bad-header   a header value with CR LF in it (the protocol must refuse it: 500)
    /too-long     one byte more than its Content-Length (the protocol must fail it)

A request the protocol cannot read is answered by a protocol_error_hook, as the
gateway's (JSON, a header of its own), so that the early-error path is compared too.
WebSocket upgrades are refused by the application (Hypercorn answers 403).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from serving import server
from serving.hooks import ProtocolErrorAnswer

# Small limits and timeouts: a case that leaves a connection waiting ends within a second.
MAX_HEAD_BYTES = 8192
TIMEOUT_S = 1.0


async def refuse(peer: str | None, status: int) -> ProtocolErrorAnswer:
    body = json.dumps({"error": "the request could not be read as HTTP", "hint": status})
    return 400 if status != 431 else 431, [(b"x-refused-by", b"hook")], body.encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        return
    path = scope["path"]
    if path == "/early":
        await answer(send, 200, [(b"content-length", b"5")], [b"early"])
        return
    digest, length = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message.get("body", b""))
        length += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps(
        {
            "method": scope["method"],
            "path": path,
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "http_version": scope["http_version"],
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
        }
    ).encode()
    json_type = (b"content-type", b"application/json")
    if path == "/chunked":
        await answer(send, 200, [json_type], [body[:10], body[10:]])
    elif path == "/close":
        framing = [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        await answer(send, 200, [json_type, *framing], [body])
    elif path == "/204":
        await answer(send, 204, [], [])
    elif path == "/bad-header":
        await answer(send, 200, [(b"x-split", b"a\r\nx-injected: 1")], [body])
    elif path == "/too-long":
        await answer(send, 200, [(b"content-length", b"1")], [b"12"])
    else:
        await answer(send, 200, [json_type, (b"content-length", b"%d" % len(body))], [body])


async def answer(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], parts: list[bytes]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for index, part in enumerate(parts):
        await send(
            {"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1}
        )
    if not parts:
        await send({"type": "http.response.body", "body": b""})


async def main(parser: server.HTTP1Parser, port: int) -> None:
    config = server.hypercorn_config(
        host="127.0.0.1",
        port=port,
        log_level="ERROR",
        keep_alive_timeout_s=TIMEOUT_S,
        http1_parser=parser,
    )
    config.read_timeout = TIMEOUT_S  # type: ignore[assignment]
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.protocol_error_hook = refuse  # type: ignore[attr-defined]
    await server.serve(app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = sys.argv[1]
    assert parser in ("llhttp", "h11")
    server.run(lambda: main(parser, int(sys.argv[2])))  # type: ignore[arg-type]
