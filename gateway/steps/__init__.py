"""The request path of DESIGN.md, as steps over one request's state.

    exchange  Head (what a request's head says) and Exchange (what the path learned)
    context   request ids, the trusted client address, credentials in the URL
    envelope  the inference body's structure and its cost
    path      RequestPath: open → screen → admit → count/charge → forward; errors; audit

The steps know nothing of ASGI or Quart: the web layer (`gateway.web`) reads requests,
calls the steps, and writes answers.
"""
