"""A Key Vault-compatible HTTPS server, for tests: the secrets REST API subset the SDK uses.

Azure itself is not reachable here; everything else is real: the Azure SDK's HTTP
pipeline, its bearer-challenge handshake, TLS with the test CA, and the JSON shapes of
the secrets API (api-version 7.x): set, get, list secrets, list versions, update
properties. ``fail_with`` makes the server answer every request with a status (503 down,
429 throttling) to test how the gateway copes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.azurite import storage_token
from tests.https_server import AiohttpOverTls, server_context

TOKEN = "test-access-token"
DISCOVERY = "/.well-known/openid-configuration"
IDENTITY_HEADER = "test-identity-header"  # the App Service managed-identity shared secret
TENANT = "00000000-0000-0000-0000-000000000000"
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
    'resource="https://vault.azure.net"'
)


@dataclass
class _Version:
    version: str
    value: str
    tags: dict[str, str]
    enabled: bool
    created: int
    exp: int | None = None
    nbf: int | None = None
    content_type: str | None = None


@dataclass
class VaultState:
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    fail_with: int | None = None
    requests: int = 0
    unauthenticated: int = 0
    tokens_issued: int = 0
    # An identity provider's JWKS endpoint, served by the same HTTPS server.
    jwks: Any = None
    jwks_status: int = 200
    jwks_delay_s: float = 0.0
    jwks_hits: int = 0
    # Its OpenID Connect discovery document (None: 404).
    discovery: Any = None


def _attributes(v: _Version) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.created,
        "recoveryLevel": "Recoverable+Purgeable",
    }
    if v.exp is not None:
        attrs["exp"] = v.exp
    if v.nbf is not None:
        attrs["nbf"] = v.nbf
    return attrs


def build_app(state: VaultState) -> web.Application:
    def base(request: web.Request) -> str:
        return f"https://{request.host}"

    def bundle(request: web.Request, name: str, v: _Version, *, value: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"{base(request)}/secrets/{name}/{v.version}",
            "attributes": _attributes(v),
            "tags": v.tags,
        }
        if v.content_type is not None:
            out["contentType"] = v.content_type
        if value:
            out["value"] = v.value
        return out

    def error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        state.requests += 1
        if state.fail_with is not None:
            headers = {"Retry-After": "1"} if state.fail_with == 429 else {}
            return web.json_response(
                {"error": {"code": "Throttled", "message": "x"}},
                status=state.fail_with,
                headers=headers,
            )
        if request.path in {"/msi/token", "/jwks"} or request.path.endswith(DISCOVERY):
            return await handler(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            state.unauthenticated += 1
            return web.json_response(
                {"error": {"code": "Unauthorized", "message": "AKV10000"}},
                status=401,
                headers={"WWW-Authenticate": CHALLENGE},
            )
        return await handler(request)

    async def set_secret(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        attrs = body.get("attributes") or {}
        v = _Version(
            version=secrets.token_hex(16),
            value=body["value"],
            tags=body.get("tags") or {},
            enabled=attrs.get("enabled", True),
            created=int(time.time()),
            exp=attrs.get("exp"),
            nbf=attrs.get("nbf"),
            content_type=body.get("contentType"),
        )
        state.secrets.setdefault(name, []).append(v)
        return web.json_response(bundle(request, name, v, value=True))

    def find(name: str, version: str) -> _Version | None:
        versions = state.secrets.get(name, [])
        if not version:
            return versions[-1] if versions else None
        return next((v for v in versions if v.version == version), None)

    async def get_secret(request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        v = find(name, version)
        if v is None:
            return error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found")
        if not v.enabled:
            return error(403, "Forbidden", "Operation get is not allowed on a disabled secret.")
        return web.json_response(bundle(request, name, v, value=True))

    async def update_secret(request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info["version"]
        v = find(name, version)
        if v is None:
            return error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found")
        body = await request.json()
        attrs = body.get("attributes") or {}
        if "enabled" in attrs:
            v.enabled = bool(attrs["enabled"])
        if "exp" in attrs:
            v.exp = attrs["exp"]
        if body.get("tags") is not None:
            v.tags = body["tags"]
        return web.json_response(bundle(request, name, v, value=False))

    async def list_secrets(request: web.Request) -> web.Response:
        items = [
            {
                "id": f"{base(request)}/secrets/{name}",
                "attributes": _attributes(vs[-1]),
                "tags": vs[-1].tags,
            }
            for name, vs in state.secrets.items()
            if vs
        ]
        return web.json_response({"value": items, "nextLink": None})

    async def list_versions(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in state.secrets:
            return error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found")
        items = [bundle(request, name, v, value=False) for v in state.secrets[name]]
        return web.json_response({"value": items, "nextLink": None})

    async def msi_token(request: web.Request) -> web.Response:
        """The App Service managed-identity endpoint (IDENTITY_ENDPOINT), as azure-identity
        calls it, so DefaultAzureCredential in a gateway process gets a token here."""
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return error(401, "Unauthorized", "bad identity header")
        state.tokens_issued += 1
        resource = request.query.get("resource", "")
        # Blob Storage (Azurite) checks a token's issuer, audience and lifetime: it gets
        # one shaped as Entra ID's; Key Vault here takes the fixed test token.
        storage = resource.rstrip("/") == "https://storage.azure.com"
        return web.json_response(
            {
                "access_token": storage_token() if storage else TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
            }
        )

    async def jwks(request: web.Request) -> web.Response:
        state.jwks_hits += 1
        if state.jwks_delay_s:
            await asyncio.sleep(state.jwks_delay_s)
        if state.jwks_status != 200:
            return web.Response(status=state.jwks_status, text="down")
        if isinstance(state.jwks, bytes):
            return web.Response(body=state.jwks, content_type="application/json")
        return web.json_response(state.jwks)

    async def discovery(request: web.Request) -> web.Response:
        if state.discovery is None:
            return web.Response(status=404, text="no such document")
        return web.json_response(state.discovery)

    app = web.Application(middlewares=[auth])
    app.router.add_get("/jwks", jwks)
    app.router.add_get(DISCOVERY, discovery)
    # Entra's shape: https://login.microsoftonline.com/<tenant>[/v2.0]/.well-known/…
    app.router.add_get("/{tenant}" + DISCOVERY, discovery)
    app.router.add_get("/{tenant}/v2.0" + DISCOVERY, discovery)
    app.router.add_get("/msi/token", msi_token)
    app.router.add_get("/secrets", list_secrets)
    app.router.add_put("/secrets/{name}", set_secret)
    app.router.add_get("/secrets/{name}/versions", list_versions)
    app.router.add_get("/secrets/{name}/{version}", get_secret)
    app.router.add_get("/secrets/{name}", get_secret)
    app.router.add_get("/secrets/{name}/", get_secret)  # the SDK's path for the newest version
    app.router.add_patch("/secrets/{name}/{version}", update_secret)
    return app


class KeyVaultServer(AiohttpOverTls):
    """Runs the app on its own event loop in a thread, on 127.0.0.1 with the test CA's cert."""

    name = "the Key Vault test server"

    def __init__(self, cert: str, key: str, port: int) -> None:
        self.state = VaultState()
        super().__init__(build_app(self.state), server_context(cert, key), port)
