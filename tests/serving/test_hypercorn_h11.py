"""serving.hazmat.hypercorn_h11: Hypercorn's HTTP/1.1 protocol writing a response in one piece.

The end-to-end suites (tests/e2e, tests/security/test_connections.py) run every gateway
with these classes installed; here the write pattern itself is pinned down."""

from __future__ import annotations

from importlib.metadata import version

import h11
import pytest
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.typing import ConnectionState

from serving.hazmat import hypercorn_h11, llhttp_h1


def test_the_installed_hypercorn_is_one_the_patches_were_checked_against() -> None:
    # A Hypercorn upgrade fails here first: read gateway/hypercorn_h11.py against the new
    # release (H11Protocol._send_h11_event, TCPServer._read_data) before adding it.
    assert version("hypercorn") in hypercorn_h11.PATCHED_VERSIONS


async def protocol_after_a_request() -> tuple[hypercorn_h11.CoalescingH11Protocol, list[Event]]:
    sent: list[Event] = []

    async def send(event: Event) -> None:
        sent.append(event)

    protocol = hypercorn_h11.CoalescingH11Protocol(
        None,  # type: ignore[arg-type]  # the app is not reached: we only send
        Config(),
        WorkerContext(None),
        None,  # type: ignore[arg-type]
        ConnectionState({}),
        False,
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        send,
    )
    protocol.connection.receive_data(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
    assert isinstance(protocol.connection.next_event(), h11.Request)
    assert isinstance(protocol.connection.next_event(), h11.EndOfMessage)
    return protocol, sent


async def test_head_and_body_leave_in_one_write() -> None:
    protocol, sent = await protocol_after_a_request()
    await protocol.stream_send(
        Response(stream_id=1, headers=[(b"content-length", b"2")], status_code=200)
    )
    assert sent == []  # the head waits for its body
    await protocol.stream_send(Body(stream_id=1, data=b"{}"))
    await protocol.stream_send(EndBody(stream_id=1))
    writes = [e for e in sent if isinstance(e, RawData)]
    assert len(writes) == 1  # no separate head, no empty end-of-message write
    head, _, body = writes[0].data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 2" in head
    assert body == b"{}"


async def test_a_response_without_body_is_written_at_its_end() -> None:
    protocol, sent = await protocol_after_a_request()
    await protocol.stream_send(
        Response(stream_id=1, headers=[(b"content-length", b"0")], status_code=204)
    )
    await protocol.stream_send(EndBody(stream_id=1))
    writes = [e for e in sent if isinstance(e, RawData)]
    assert len(writes) == 1 and writes[0].data.startswith(b"HTTP/1.1 204 ")


def test_install_replaces_hypercorns_classes() -> None:
    import hypercorn.asyncio.run
    import hypercorn.protocol

    before = (hypercorn.protocol.H11Protocol, hypercorn.asyncio.run.TCPServer)  # type: ignore[attr-defined]
    try:
        assert hypercorn_h11.install({"llhttp": llhttp_h1.LlhttpProtocol}) is True
        assert hypercorn.protocol.H11Protocol is hypercorn_h11.http1_protocol  # type: ignore[attr-defined]
        assert hypercorn.asyncio.run.TCPServer is hypercorn_h11.TimeoutReadTCPServer  # type: ignore[attr-defined]
    finally:
        hypercorn.protocol.H11Protocol, hypercorn.asyncio.run.TCPServer = before  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("parser", "expected"),
    [
        ("llhttp", llhttp_h1.LlhttpProtocol),
        ("h11", hypercorn_h11.CoalescingH11Protocol),
        (None, hypercorn_h11.CoalescingH11Protocol),  # a config of Hypercorn's own
    ],
)
def test_each_config_gets_the_http1_protocol_it_names(parser: str | None, expected: type) -> None:
    hypercorn_h11.install({"llhttp": llhttp_h1.LlhttpProtocol})
    config = Config()
    if parser is not None:
        config.http1_parser = parser  # type: ignore[attr-defined]

    async def send(event: Event) -> None:
        pass

    protocol = hypercorn_h11.http1_protocol(
        None,  # type: ignore[arg-type]
        config,
        WorkerContext(None),
        None,  # type: ignore[arg-type]
        ConnectionState({}),
        False,
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        send,
    )
    assert type(protocol) is expected
