"""An Azure Resource Manager stand-in for ACR tokens, over HTTPS, as ARM speaks it.

What `scoregate registry rotate-pull-token` calls, in the shapes of Microsoft.ContainerRegistry
2023-07-01 (azure-rest-api-specs, containerregistry.json and its examples):

- `GET .../registries/{r}/tokens/{t}`: the token, its passwords' names, creation times and
  expiry times, never their values;
- `POST .../registries/{r}/generateCredentials` with `tokenId`, `name`, `expiry`: a
  long-running operation: 202 with `Location` (and `Retry-After`), polled until 200 with
  `{"username", "passwords": [{"name", "value", "expiry", "creationTime"}]}`
  (`final-state-via: location`). The new value replaces that password's old one when the
  operation completes; the other password is untouched.

Every request needs `Authorization: Bearer <TOKEN>` (401 with ARM's `WWW-Authenticate`
otherwise) and `api-version=2023-07-01`; errors are ARM's `{"error": {"code", "message"}}`.
`is_valid(token, name, value)` says whether a password would log in to the registry now.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.https_server import ThreadedHttpsApp
from tests.keyvault_server import TOKEN

API_VERSION = "2023-07-01"
REGISTRY = (
    "/subscriptions/{subscription}/resourceGroups/{group}"
    "/providers/Microsoft.ContainerRegistry/registries/{registry}"
)
CHALLENGE = (
    'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
    "error_description=\"The authentication failed because of missing 'Authorization' header.\""
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def arm_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Password:
    value: str
    expiry: dt.datetime | None
    created: dt.datetime = field(default_factory=now)


@dataclass
class AcrToken:
    passwords: dict[str, Password] = field(default_factory=dict)
    status: str = "enabled"


@dataclass
class ArmState:
    # Token ARM id (lower case: ARM ids are case-insensitive) -> the token.
    tokens: dict[str, AcrToken] = field(default_factory=dict)
    # Each request: method, path, api-version, JSON body (bodies sent never hold a value).
    requests: list[dict[str, Any]] = field(default_factory=list)
    unauthenticated: int = 0
    fail_generate: int | None = None  # answer every generateCredentials with this status
    polls_before_done: int = 1  # 202s a poller sees before the result
    retry_after: str = "1"
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_valid(self, token_id: str, name: str, value: str, at: dt.datetime | None = None) -> bool:
        token = self.tokens.get(token_id.lower())
        password = token.passwords.get(name) if token else None
        if token is None or password is None or token.status != "enabled":
            return False
        alive = password.expiry is None or password.expiry > (at or now())
        return alive and secrets.compare_digest(password.value, value)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def build_app(state: ArmState) -> web.Application:
    @web.middleware
    async def arm(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        state.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "api_version": request.query.get("api-version"),
                "body": body,
            }
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            state.unauthenticated += 1
            return _error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                **{"WWW-Authenticate": CHALLENGE},
            )
        if request.query.get("api-version") != API_VERSION:
            return _error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{request.query.get('api-version')}' is invalid.",
            )
        return await handler(request)

    def token_id(request: web.Request, token: str) -> str:
        return REGISTRY.format(**request.match_info) + f"/tokens/{token}"

    def passwords(token: AcrToken, *, values: bool, names: list[str] | None = None) -> list[Any]:
        listed = []
        for name in sorted(names or token.passwords):
            p = token.passwords[name]
            entry: dict[str, Any] = {"creationTime": arm_time(p.created), "name": name}
            if p.expiry is not None:
                entry["expiry"] = arm_time(p.expiry)
            if values:
                entry["value"] = p.value
            listed.append(entry)
        return listed

    async def get_token(request: web.Request) -> web.Response:
        name = request.match_info["token"]
        arm_id = token_id(request, name)
        token = state.tokens.get(arm_id.lower())
        if token is None:
            return _error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerRegistry/registries/"
                f"{request.match_info['registry']}/tokens/{name}' under resource group "
                f"'{request.match_info['group']}' was not found.",
            )
        registry = REGISTRY.format(**request.match_info)
        return web.json_response(
            {
                "id": arm_id,
                "name": name,
                "type": "Microsoft.ContainerRegistry/registries/tokens",
                "properties": {
                    "creationDate": arm_time(now()),
                    "provisioningState": "Succeeded",
                    "scopeMapId": f"{registry}/scopeMaps/_repositories_pull",
                    "status": token.status,
                    "credentials": {
                        "certificates": [],
                        "passwords": passwords(token, values=False),
                    },
                },
            }
        )

    async def generate(request: web.Request) -> web.Response:
        if state.fail_generate is not None:
            return _error(state.fail_generate, "InternalServerError", "Try again later.")
        body = await request.json()
        registry = REGISTRY.format(**request.match_info)
        wanted = str(body.get("tokenId", ""))
        match = re.fullmatch(re.escape(registry) + r"/tokens/([A-Za-z0-9-]+)", wanted, re.I)
        token = state.tokens.get(wanted.lower())
        if match is None or token is None:
            return _error(404, "TokenNotFound", f"The token {wanted!r} was not found.")
        names = [body["name"]] if body.get("name") else ["password1", "password2"]
        if any(n not in ("password1", "password2") for n in names):
            return _error(400, "InvalidParameter", f"Invalid password name {body.get('name')!r}.")
        expiry = None
        if body.get("expiry"):
            try:
                expiry = dt.datetime.fromisoformat(body["expiry"])
            except ValueError:
                return _error(400, "InvalidParameter", "The expiry is not a valid date-time.")
            if expiry.tzinfo is None or expiry <= now():
                return _error(400, "InvalidParameter", "The expiry must be a future UTC time.")
        operation = f"registries-{uuid.uuid4()}"
        state.operations[operation] = {
            "token": wanted.lower(),
            "username": match.group(1),
            "names": names,
            "expiry": expiry,
            "polls": state.polls_before_done,
            "result": None,
        }
        location = (
            f"https://{request.host}{registry}/operationStatuses/{operation}"
            f"?api-version={API_VERSION}"
        )
        return web.Response(
            status=202, headers={"Location": location, "Retry-After": state.retry_after}
        )

    async def operation_status(request: web.Request) -> web.Response:
        operation = state.operations.get(request.match_info["operation"])
        if operation is None:
            return _error(404, "OperationNotFound", "No such operation.")
        if operation["polls"] > 0:
            operation["polls"] -= 1
            return web.Response(status=202, headers={"Retry-After": state.retry_after})
        if operation["result"] is None:  # done: the new values replace the old ones now
            token = state.tokens[operation["token"]]
            for name in operation["names"]:
                token.passwords[name] = Password(secrets.token_urlsafe(32), operation["expiry"])
            operation["result"] = {
                "username": operation["username"],
                "passwords": passwords(token, values=True, names=operation["names"]),
            }
        return web.json_response(operation["result"])

    app = web.Application(middlewares=[arm])
    app.router.add_get(REGISTRY + "/tokens/{token}", get_token)
    app.router.add_post(REGISTRY + "/generateCredentials", generate)
    app.router.add_get(REGISTRY + "/operationStatuses/{operation}", operation_status)
    return app


class ArmServer(ThreadedHttpsApp):
    def __init__(self, cert: Path, key: Path) -> None:
        self.state = ArmState()
        super().__init__(build_app(self.state), cert, key)

    def add_token(self, token_id: str, **passwords: Password) -> AcrToken:
        token = AcrToken(dict(passwords))
        self.state.tokens[token_id.lower()] = token
        return token
