"""The serving base that the gateway and the scorer both stand on.

    serving.server   Hypercorn: one config for both processes, our TLS context, run, stop
    serving.tls      every TLS context (public listener, scorer listener, clients)
    serving.logs     operational logs as JSON lines
    serving.asgi     plain-ASGI mechanics of the scoring fast paths (body, disconnect, send)
    serving.hazmat   code that goes around a library: read its docstring before touching it

It imports neither `gateway` nor `scorer` (an import-linter contract in pyproject.toml).
"""
