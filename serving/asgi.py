"""Plain-ASGI mechanics for the scoring paths of the gateway and of the scorer.

What Quart did for a request that these paths now do themselves: read the body within a
size and a time limit, notice a client that leaves, and send a JSON answer. Each path
maps the exceptions below to its own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

JSON_TYPE = (b"content-type", b"application/json")
BINARY_TYPE = (b"content-type", b"application/octet-stream")
T = TypeVar("T")


def match_post(
    scope: Scope, routes: Iterable[tuple[re.Pattern[str], T]]
) -> tuple[T, str, str | None] | None:
    """For an HTTP POST whose path matches one of the patterns (each with a first group,
    the model's name, as Werkzeug's default converter writes it, and maybe a group named
    ``version``): that route's value, the name and the version asked for; None for
    anything else, which the Quart app behind answers."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    for pattern, value in routes:
        found = pattern.fullmatch(path)
        if found is not None:
            return value, found.group(1), found.groupdict().get("version")
    return None


class ClientGone(Exception):
    """The client disconnected before its answer."""


class BodyTooLarge(Exception):
    """The body is over the limit, as declared or as it arrived."""


class BodyTimeout(Exception):
    """The body did not arrive within the time limit (slowloris on the body)."""


async def read_body(
    receive: ASGIReceiveCallable, *, limit: int, declared: str | None, timeout_s: float
) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` (OWASP DoS cheat
    sheet: bound what a request may hold and how long it may take to send it)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyTimeout from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@contextlib.contextmanager
def cancel_if_client_leaves(receive: ASGIReceiveCallable) -> Iterator[Callable[[], bool]]:
    """While the body of the block runs (after the request body was read), a client that
    disconnects cancels it, as Quart would: the work is abandoned. Yields a function that
    tells whether that happened; the block turns the CancelledError into its own outcome.
    """
    task = asyncio.current_task()
    left = False

    def done(message: asyncio.Future[Any]) -> None:
        nonlocal left
        if message.cancelled() or message.exception() is not None:
            return
        left = True  # after a complete body, the only message left is http.disconnect
        if task is not None:
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(done)
    try:
        yield lambda: left
    finally:
        watcher.remove_done_callback(done)
        watcher.cancel()
        if left and task is not None:
            task.uncancel()


async def send_json(
    send: ASGISendCallable,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    inference_header: int | None = None,
) -> None:
    """A complete JSON answer in two ASGI messages (one write with serving.hazmat.hypercorn_h11);
    with ``inference_header``, a JSON header of that size followed by binary tensors
    (serving.binary), as ``application/octet-stream``."""
    if inference_header is None:
        framing = [JSON_TYPE]
    else:
        framing = [BINARY_TYPE, (b"inference-header-content-length", b"%d" % inference_header)]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*framing, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
