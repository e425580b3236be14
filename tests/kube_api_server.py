"""A Kubernetes API server stand-in for Secrets, over HTTPS, as the API server speaks it.

`GET`, `PUT` and `PATCH` (merge patch) on `/api/v1/namespaces/{ns}/secrets/{name}`, each
request authenticated by a bearer token (a service account's: `system:serviceaccount:
<ns>:<name>`) and authorized by the Roles and RoleBindings given, as RBAC does: a rule
matches the API group, the resource, the verb (`get`, `update`, `patch`) and, when it
lists any, the object's name. Answers as the API server's: the object, or a `Status`
(401 Unauthorized, 403 Forbidden, 404 NotFound, 409 Conflict on a stale
`resourceVersion`, 422 Invalid for what validation refuses: a changed type, data that is
not base64, a `kubernetes.io/dockerconfigjson` Secret without a JSON `.dockerconfigjson`).
`fail` makes one verb answer a status (500: the API server failing mid-rotation).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.https_server import ThreadedHttpsApp

VERBS = {"GET": "get", "PUT": "update", "PATCH": "patch"}


def status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class KubeState:
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> user name
    rbac: list[dict[str, Any]] = field(default_factory=list)  # Roles and RoleBindings
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # verb, path, user
    fail: dict[str, int] = field(default_factory=dict)  # verb -> status
    version: int = 1000

    def put_secret(self, secret: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(secret)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.secrets[(stored["metadata"]["namespace"], stored["metadata"]["name"])] = stored
        return stored

    def allowed(self, user: str, verb: str, namespace: str, name: str) -> bool:
        roles = {
            r["metadata"]["name"]: r
            for r in self.rbac
            if r["kind"] == "Role" and r["metadata"].get("namespace") == namespace
        }
        for binding in self.rbac:
            if (
                binding["kind"] != "RoleBinding"
                or binding["metadata"].get("namespace") != namespace
            ):
                continue
            bound = {
                f"system:serviceaccount:{s.get('namespace', namespace)}:{s['name']}"
                for s in binding["subjects"]
                if s["kind"] == "ServiceAccount"
            }
            role = roles.get(binding["roleRef"]["name"])
            if user not in bound or role is None or binding["roleRef"]["kind"] != "Role":
                continue
            for rule in role.get("rules", []):
                if (
                    "" in rule.get("apiGroups", [])
                    and {"secrets", "*"} & set(rule.get("resources", []))
                    and {verb, "*"} & set(rule.get("verbs", []))
                    and (not rule.get("resourceNames") or name in rule["resourceNames"])
                ):
                    return True
        return False


def _invalid(name: str, message: str) -> web.Response:
    return status(422, "Invalid", f'Secret "{name}" is invalid: {message}')


def _validate(secret: dict[str, Any], stored: dict[str, Any], name: str) -> web.Response | None:
    if secret.get("type", "Opaque") != stored.get("type", "Opaque"):
        return _invalid(name, f"type: Invalid value: {secret.get('type')!r}: field is immutable")
    decoded = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            return _invalid(name, f"data[{key}]: Invalid value: illegal base64 data")
    if secret.get("type") == "kubernetes.io/dockerconfigjson":
        try:
            json.loads(decoded[".dockerconfigjson"])
        except (KeyError, ValueError):
            return _invalid(name, "data[.dockerconfigjson]: Required value or invalid JSON")
    return None


def build_app(state: KubeState) -> web.Application:
    async def secret(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        verb = VERBS[request.method]
        auth = request.headers.get("Authorization", "")
        user = (
            state.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        )
        state.requests.append((verb, request.path, user or ""))
        if user is None:
            return status(401, "Unauthorized", "Unauthorized")
        if not state.allowed(user, verb, namespace, name):
            return status(
                403,
                "Forbidden",
                f'secrets "{name}" is forbidden: User "{user}" cannot {verb} resource '
                f'"secrets" in API group "" in the namespace "{namespace}"',
            )
        if verb in state.fail:
            return status(state.fail[verb], "InternalError", "Internal error occurred: etcd")
        stored = state.secrets.get((namespace, name))
        if stored is None:
            return status(404, "NotFound", f'secrets "{name}" not found')
        if verb == "get":
            return web.json_response(stored)
        body = await request.json()
        if verb == "patch":
            if request.content_type != "application/merge-patch+json":
                return status(
                    415, "UnsupportedMediaType", "the body of the request was in an unknown format"
                )
            body = merge_patch(stored, body)
        meta = body.get("metadata") or {}
        if body.get("kind") != "Secret" or body.get("apiVersion") != "v1":
            return status(400, "BadRequest", "the object is not a v1 Secret")
        if meta.get("name") != name or meta.get("namespace", namespace) != namespace:
            return status(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on "
                f"the URL ({name})",
            )
        version = meta.get("resourceVersion")
        if verb == "update" and version and version != stored["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on secrets "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        refused = _validate(body, stored, name)
        if refused is not None:
            return refused
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = namespace
        return web.json_response(state.put_secret(body))

    app = web.Application()
    path = "/api/v1/namespaces/{namespace}/secrets/{name}"
    app.router.add_get(path, secret)
    app.router.add_put(path, secret)
    app.router.add_patch(path, secret)
    return app


class KubeApiServer(ThreadedHttpsApp):
    def __init__(self, cert: Path, key: Path) -> None:
        self.state = KubeState()
        super().__init__(build_app(self.state), cert, key)

    def service_account_token(self, namespace: str, name: str, token: str) -> None:
        self.state.tokens[token] = f"system:serviceaccount:{namespace}:{name}"
