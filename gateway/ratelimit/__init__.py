"""Rate limits with the `limits` library (OWASP API4).

limiter    the three checks of the request path, and the storage failure policy
policy     policies/ratelimits.toml, validated at start
addresses  whose count a request adds to (an IPv6 caller counts by its /64)
memory     the in-process storage under `limits`' strategies (cost flat in callers)
"""
