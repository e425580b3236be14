"""Who is calling: credentials → a `Principal`, and the keys that decide it.

credentials  the one place that decides: API key or JWT (never both) → Principal
apikeys      the API key format, and its verification against the key ring
tokens       JWT validation (RFC 8725), issuer and key configuration types
issuers      the trusted issuers, from policies/issuers.toml
jwks         issuer keys fetched from a JWKS URL (an Entra ID tenant's)
keyring      the in-memory keys, refreshed from the secret store in the background
lifecycle    create, rotate, revoke and list API keys (`scoregate keys`)
principal    the frozen result of authentication
"""
