"""The web layer: two drivers of the request steps (`gateway.steps`), one way to end.

    fastpath  the scoring POSTs as plain ASGI, in front of the Quart app
    app       the Quart app: health, metadata, and every error Quart's routing answers
    respond   what both share: security headers, the drain before an early answer,
              the generic 500, the record of a request nobody answered

The web layer holds no component of its own: it reads requests into a `Head`, calls the
`RequestPath`, and writes answers. It never opens a store, a sink or a counter.
"""
