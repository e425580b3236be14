"""What an application may hand the server to answer in its stead (set on the Hypercorn
config by the process that serves).

``protocol_error_hook``: a request the HTTP/1.1 protocol could not parse (a malformed
request line, a header section over its limit) is answered with what the hook returns,
``(status, headers, body)``, given the peer's address and the status Hypercorn would send
(400 or 431). Read by `serving.hazmat.hypercorn_h11`; the gateway's is
`gateway.web.protocol_errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

ProtocolErrorAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
ProtocolErrorHook = Callable[[str | None, int], Awaitable[ProtocolErrorAnswer]]
