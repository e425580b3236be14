"""Dangerous code, fenced: a hand-written HTTP/1.1 client (see `http1_pool`'s docstring).

Imported by `gateway.upstream.forwarder` alone (an import-linter contract).
"""
