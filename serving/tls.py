"""Every TLS context of scoregate, built here and nowhere else.

- `server_context`: the gateway's public listener (Mozilla Server Side TLS 6.0).
- `internal_server_context`: a scorer's listener, TLS 1.3 only, mutual TLS on request.
- `client_context`, `upstream_context`: the `scoregate` client and the gateway → scorer hop.

Hypercorn's own context pins TLS 1.2 as the minimum and overwrites the options, so we
build ours and hand it to Hypercorn (`serving.server`).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

# Mozilla "intermediate": TLS 1.2 with these AEAD ECDHE suites (forward secrecy only);
# TLS 1.3 suites are OpenSSL's defaults, which are exactly Mozilla's list.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ALPN = ["h2", "http/1.1"]
# The one key-exchange group we offer. Mozilla's list (both profiles) is X25519, P-256,
# P-384, but Python's `ssl` (3.11) sets one group at most (`set_ecdh_curve`), and
# OpenSSL's default list adds X448, P-521 and the FFDHE groups, which sslyze's Mozilla check
# rejects. P-256 is the group every TLS 1.3 client must support (RFC 8446 §9.1) and
# the one the intermediate profile's oldest clients have (RFC 8422); it is also our
# certificate's curve. The price: a client whose first key share is X25519 gets a
# HelloRetryRequest, one more round trip on a new TLS 1.3 connection only.
KEY_EXCHANGE_GROUP = "prime256v1"


def server_context(
    cert: Path,
    key: Path,
    *,
    profile: Literal["intermediate", "modern"] = "intermediate",
    client_ca: Path | None = None,
) -> ssl.SSLContext:
    """A server context for the profile; with ``client_ca``, client certificates are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Mozilla intermediate: TLS 1.2 and 1.3; modern: TLS 1.3 only. SSLv3/TLS 1.0/1.1 are
    # deprecated by RFC 8996.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if profile == "modern" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.set_ecdh_curve(KEY_EXCHANGE_GROUP)
    # No TLS compression (CRIME; RFC 7540 §9.2.1 forbids it for HTTP/2), no
    # renegotiation (OpenSSL >= 1.1 always uses fresh ECDH keys); no stateless tickets, as
    # Mozilla advises (a long-lived ticket key undermines forward secrecy): OpenSSL then
    # resumes from its server-side session cache instead (TLS 1.3 tickets become ids).
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # Mozilla: with only strong suites on offer, let the client pick (mobile CHACHA20).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(ALPN)
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def internal_server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None
) -> ssl.SSLContext:
    """A scorer's listener: TLS 1.3 only (both ends are ours); with ``client_ca``, client
    certificates from that CA (the gateway's) are required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        # Mutual TLS: no certificate, or one from another CA, fails the handshake.
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (the dev CA), with hostname checks on."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def upstream_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | None:
    """The context for https:// scorers: trust ``ca``, present ``cert`` for mutual TLS.

    TLS 1.3 only, since both ends are ours; hostname checks stay on (the scorer's
    certificate names its Service). None when nothing is configured (system trust).
    """
    if ca is None and cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
