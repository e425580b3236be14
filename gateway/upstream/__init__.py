"""Forwarding to the scorers.

forwarder  the forwarding rules (OWASP API10): headers, bounds, errors, the breaker
breaker    a circuit breaker per upstream
hazmat     the hand-written HTTP/1.1 client pool, used by the forwarder alone
"""
