"""Issuer keys from a JWKS URL (an Entra ID tenant's ``discovery/v2.0/keys``, say).

Rules (security catalog, Tokens): the JWKS is fetched in the background with aiohttp, so
the event loop never waits on it; a fetch that is slow, failing or hostile (not JSON,
oversized, keys of the wrong kind) never empties the warm cache; an unknown ``kid`` may
trigger a refetch, but at most once per ``min_refetch_s``, so tokens cannot make the
gateway hammer the issuer. Only the configured URL is ever fetched: never one a token names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from gateway.identity.tokens import ASYMMETRIC, IssuerConfig, VerificationKey

log = logging.getLogger("gateway.jwks")
MAX_JWKS_BYTES = 256 * 1024


def parse_jwks(document: Any, issuer: IssuerConfig) -> dict[str, VerificationKey]:
    """The signing keys of a JWKS, each bound to one allowed asymmetric algorithm."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        if alg is None and len(issuer.algorithms) == 1:
            alg = next(iter(issuer.algorithms))  # Entra's keys carry no alg: bind the one allowed
        if not isinstance(kid, str) or alg not in issuer.algorithms or alg not in ASYMMETRIC:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if hasattr(key, "private_numbers"):
            continue  # a private key published by mistake is not a verification key
        keys[kid] = VerificationKey(kid=kid, issuer=issuer.issuer, algorithm=alg, key=key)
    return keys


class JWKSKeys:
    """Keeps one issuer's JWKS fresh and hands each new key set to ``publish``.

    ``url`` is the JWKS itself, or with ``discovery=True`` the issuer's OIDC discovery
    document (OpenID Connect Discovery 1.0 §4), read before each fetch: its ``issuer``
    must be exactly the configured one (§4.3), and its ``jwks_uri`` is what is fetched.
    """

    def __init__(
        self,
        issuer: IssuerConfig,
        url: str,
        publish: Callable[[str, dict[str, VerificationKey]], None],
        *,
        refresh_s: float = 300.0,
        min_refetch_s: float = 60.0,
        timeout_s: float = 5.0,
        ca_file: str | None = None,
        discovery: bool = False,
    ) -> None:
        if not url.startswith("https://"):
            raise ValueError(f"JWKS URL for {issuer.name!r} must be https")
        self.issuer = issuer
        self.url = url
        self._discovery = discovery
        self._publish = publish
        self._refresh_s = refresh_s
        self._min_refetch_s = min_refetch_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._last_fetch = -float("inf")
        self._wake = asyncio.Event()
        self.keys: dict[str, VerificationKey] = {}
        self.last_error: str | None = None
        self.fetches = 0

    def unknown_kid(self) -> None:
        """A token named a kid we lack: refetch soon, but not more often than allowed."""
        if time.monotonic() - self._last_fetch >= self._min_refetch_s:
            self._wake.set()

    async def fetch(self) -> None:
        self._last_fetch = time.monotonic()
        self.fetches += 1
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                url = await self._jwks_url(session) if self._discovery else self.url
                document = await self._get_json(session, url)
            keys = parse_jwks(document, self.issuer)
            if not keys:
                raise ValueError("no usable signing key in the JWKS")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Keep the warm cache: a failing or hostile endpoint must not lock clients out.
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "JWKS fetch for %s failed, keeping %d cached keys: %s",
                self.issuer.name,
                len(self.keys),
                exc,
            )
            return
        self.keys = keys
        self.last_error = None
        self._publish(self.issuer.issuer, keys)

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        """A bounded JSON document; no redirect is followed (only configured URLs)."""
        async with session.get(url, ssl=self._ssl, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("document too large")
        return json.loads(body)

    async def _jwks_url(self, session: aiohttp.ClientSession) -> str:
        """The JWKS URL the discovery document names, once it proves it is our issuer's."""
        document = await self._get_json(session, self.url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer.issuer:
            # OIDC Discovery §4.3: the document's issuer must be the one we asked about.
            raise ValueError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("the discovery document names no https jwks_uri")
        return jwks_uri

    async def run(self) -> None:
        while True:
            await self.fetch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._refresh_s)
            self._wake.clear()
            wait = self._min_refetch_s - (time.monotonic() - self._last_fetch)
            if wait > 0:
                await asyncio.sleep(wait)
