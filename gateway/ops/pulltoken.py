"""The image-pull secret's ACR token password, renewed before it expires, by no human.

An ACR token has two passwords, each with its own expiry. The pull Secret (type
`kubernetes.io/dockerconfigjson`, made once by k8s/create-pull-secret.sh) holds one; its
annotation `scoregate/acr-token-password` says which. `scoregate registry
rotate-pull-token` (the CronJob in k8s/base/rotate-pull-token.yaml):

1. reads the Secret (Kubernetes API) and the token (Azure Resource Manager): which
   password the Secret holds, and when that one expires;
2. does nothing while the expiry is further away than `--renew-before`;
3. otherwise generates the token's *other* password, valid for `--lifetime`, and
   replaces the Secret with it (docker config and annotations), conditionally on the
   version it read.

The password the Secret holds is never revoked, regenerated or shortened: it stays valid
until its own expiry. So a node pulling with it mid-rotation succeeds, and a run that
generated a password but failed to write the Secret has changed nothing in use: the
Secret still holds a valid password, and the next run generates the other one again
(replacing the value nobody received) and retries the write. The generated value goes
from ARM's answer into the Secret and nowhere else: never printed, logged or in an error.

    PullTokenError          the message is for the operator, never holds a password
     ├── InvalidRequest     bad arguments or no in-cluster credentials (exit 2)
     ├── Refused            cannot be done as configured: no such Secret or token, a
     │                      Secret that is not ours to rotate (exit 1)
     └── Failed             ARM, Entra ID or the Kubernetes API failed; nothing in use
                            changed (exit 3: run again)
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from gateway.identity.lifecycle import InvalidKeyRequest, parse_duration
from gateway.ops.acrtokens import (
    PASSWORD_NAMES,
    AcrTokens,
    ArmError,
    GeneratedPassword,
    InvalidTokenId,
    Token,
    TokenId,
    TokenPassword,
    arm_time,
)
from gateway.ops.kubeapi import SERVICE_ACCOUNT_DIR, InCluster, KubeConfigError, KubeError, Secrets

DOCKERCONFIG = "kubernetes.io/dockerconfigjson"
ANNOTATION_PASSWORD = "scoregate/acr-token-password"  # noqa: S105 - an annotation key
ANNOTATION_EXPIRY = "scoregate/acr-token-expiry"
# Azure Resource Manager in Azure's clouds (public, China, US Government): the ARM token
# goes to one of these and nowhere else.
ARM_ENDPOINTS = (
    "https://management.azure.com",
    "https://management.chinacloudapi.cn",
    "https://management.usgovcloudapi.net",
)
LOGIN_SERVER_SUFFIXES = ("azurecr.io", "azurecr.cn", "azurecr.us")
_SECRET_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")  # a DNS subdomain
MAX_LIFETIME = dt.timedelta(days=366)


class PullTokenError(Exception):
    code = "pull_token_error"

    def __init__(self, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidRequest(PullTokenError):
    code = "invalid_argument"


class Refused(PullTokenError):
    code = "refused"


class Failed(PullTokenError):
    code = "service_failed"


@dataclass(frozen=True)
class Request:
    """What to rotate and when; every field checked before anything is sent."""

    token_id: TokenId
    secret: str
    login_server: str
    lifetime: dt.timedelta
    renew_before: dt.timedelta
    arm_endpoint: str
    service_account_dir: Path = SERVICE_ACCOUNT_DIR
    force: bool = False

    @classmethod
    def parse(
        cls,
        *,
        token_id: str,
        secret: str,
        lifetime: str,
        renew_before: str,
        arm_endpoint: str | None = None,
        login_server: str | None = None,
        service_account_dir: Path | None = None,
        force: bool = False,
    ) -> Request:
        try:
            token = TokenId.parse(token_id)
            life, renew = parse_duration(lifetime), parse_duration(renew_before)
        except (InvalidTokenId, InvalidKeyRequest) as exc:
            raise InvalidRequest(str(exc)) from exc
        if not _SECRET_NAME.fullmatch(secret):
            raise InvalidRequest(f"{secret!r} is not a Secret name")
        if not renew < life <= MAX_LIFETIME:
            raise InvalidRequest(
                "--renew-before must be shorter than --lifetime, and --lifetime at most 366d "
                f"(got {renew_before} and {lifetime})"
            )
        # The ARM token is a bearer credential: it is sent to Azure's own endpoints only.
        arm_endpoint = arm_endpoint or ARM_ENDPOINTS[0]
        if arm_endpoint.rstrip("/") not in ARM_ENDPOINTS:
            raise InvalidRequest(
                f"--arm-endpoint must be one of {', '.join(ARM_ENDPOINTS)}, not {arm_endpoint!r}"
            )
        server = login_server or f"{token.registry.lower()}.azurecr.io"
        registry, _, suffix = server.partition(".")
        if registry != token.registry.lower() or suffix not in LOGIN_SERVER_SUFFIXES:
            raise InvalidRequest(
                f"--login-server {server!r} is not registry {token.registry}'s "
                f"(<registry>.{' | '.join(LOGIN_SERVER_SUFFIXES)})"
            )
        return cls(
            token,
            secret,
            server,
            life,
            renew,
            arm_endpoint.rstrip("/"),
            service_account_dir or SERVICE_ACCOUNT_DIR,
            force,
        )


@dataclass(frozen=True)
class Outcome:
    """What a run did; no password value in it."""

    rotated: bool
    secret: str  # namespace/name
    token: str
    login_server: str
    password: str | None  # the password the Secret holds now
    expires_on: dt.datetime | None
    reason: str
    previous: str | None = None
    previous_expires_on: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "rotated": self.rotated,
            "secret": self.secret,
            "token": self.token,
            "login_server": self.login_server,
            "password": self.password,
            "expires_on": arm_time(self.expires_on) if self.expires_on else None,
            "reason": self.reason,
        }
        if self.rotated:
            doc["previous"] = {
                "password": self.previous,
                "expires_on": arm_time(self.previous_expires_on)
                if self.previous_expires_on
                else None,
            }
        return doc

    def summary(self) -> str:
        if not self.rotated:
            return f"{self.secret}: not rotated, {self.reason}"
        return (
            f"{self.secret}: now holds {self.password} of token {self.token}, valid until "
            f"{arm_time(self.expires_on) if self.expires_on else '-'} ({self.reason}); "
            f"{self.previous} stays valid until its own expiry"
        )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _docker_config(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret's docker config; an unreadable one counts as empty (it is replaced)."""
    raw = (secret.get("data") or {}).get(".dockerconfigjson", "")
    try:
        config = json.loads(base64.b64decode(raw, validate=True))
    except (ValueError, binascii.Error):
        return {"auths": {}}
    if not isinstance(config, dict) or not isinstance(config.get("auths"), dict):
        return {"auths": {}}
    return config


def _password_in_use(secret: dict[str, Any], token: Token, where: str) -> str | None:
    """Which of the token's passwords the Secret holds: its annotation says, or the token
    has only one. None: the token has none (the Secret's cannot be working)."""
    annotations = secret["metadata"].get("annotations") or {}
    named = annotations.get(ANNOTATION_PASSWORD)
    if named is not None:
        if named not in PASSWORD_NAMES:
            raise Refused(
                f"{where}: annotation {ANNOTATION_PASSWORD}={named!r} is neither of "
                f"{', '.join(PASSWORD_NAMES)}",
                "secret_annotation_invalid",
            )
        return str(named)
    existing = sorted(token.passwords)
    if len(existing) <= 1:
        return existing[0] if existing else None
    # Generating the password the Secret holds would break pulls until the Secret is
    # written: without knowing which one it is, do neither.
    namespace, name = where.split("/", 1)
    raise Refused(
        f"{where} does not say which of token {token.name}'s two passwords it holds: "
        f"annotate it, e.g. kubectl -n {namespace} annotate secret {name} "
        f"{ANNOTATION_PASSWORD}=password1",
        "secret_password_unknown",
    )


def _due(
    name: str | None,
    current: TokenPassword | None,
    now: dt.datetime,
    request: Request,
) -> tuple[bool, str]:
    if request.force:
        return True, "forced"
    if name is None or current is None:
        return True, f"the token has no {name or 'password'}"
    if current.expiry is None:
        return True, f"{name} never expires"
    left = current.expiry - now
    if left <= request.renew_before:
        return True, f"{name} expires in {_days(left)}, within {_days(request.renew_before)}"
    return False, (
        f"{name} expires {arm_time(current.expiry)} ({_days(left)} left); renewed "
        f"{_days(request.renew_before)} before"
    )


def _days(span: dt.timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:.1f}d" if days < 10 else f"{days:.0f}d"


def _with_password(
    secret: dict[str, Any], login_server: str, new: GeneratedPassword
) -> dict[str, Any]:
    """The Secret as it was read (resourceVersion included: the PUT is conditional), with
    this registry's entry holding the new password; other registries' entries kept."""
    updated = copy.deepcopy(secret)
    config = _docker_config(secret)
    config["auths"][login_server] = {
        "username": new.username,
        "password": new.value,
        "auth": _b64(f"{new.username}:{new.value}"),
    }
    updated["data"] = {
        **(secret.get("data") or {}),
        ".dockerconfigjson": _b64(json.dumps(config, separators=(",", ":"))),
    }
    metadata = updated["metadata"]
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        ANNOTATION_PASSWORD: new.name,
        ANNOTATION_EXPIRY: arm_time(new.expiry),
    }
    return updated


async def rotate(
    tokens: AcrTokens, secrets: Secrets, request: Request, *, now: dt.datetime | None = None
) -> Outcome:
    """One run: renew the Secret's password if it is due (see the module's docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    where = f"{secrets.where.namespace}/{request.secret}"
    try:
        secret = await secrets.get(request.secret)
    except KubeError as exc:
        if exc.status == 404:
            raise Refused(
                f"no Secret {where}: make it once with k8s/create-pull-secret.sh",
                "secret_not_found",
            ) from exc
        raise Failed(str(exc), "kubernetes_failed") from exc
    if secret.get("type") != DOCKERCONFIG:
        raise Refused(f"{where} is not of type {DOCKERCONFIG}", "secret_not_dockerconfigjson")
    entry = _docker_config(secret)["auths"].get(request.login_server)
    user = entry.get("username") if isinstance(entry, dict) else None
    if user is not None and user != request.token_id.token:
        raise Refused(
            f"{where} holds {request.login_server}'s user {user!r}, not token "
            f"{request.token_id.token}: not rotating another credential",
            "secret_holds_other_credentials",
        )
    try:
        token = await tokens.get(request.token_id)
    except ArmError as exc:
        if exc.status == 404:
            raise Refused(str(exc), "token_not_found") from exc
        raise Failed(str(exc), "arm_failed") from exc
    if not token.enabled:
        raise Refused(f"token {token.name} is disabled", "token_disabled")
    in_use = _password_in_use(secret, token, where)
    current = token.passwords.get(in_use) if in_use else None
    due, reason = _due(in_use, current, now, request)
    held = (where, token.name, request.login_server)
    if not due:
        expires_on = current.expiry if current else None
        return Outcome(False, *held, password=in_use, expires_on=expires_on, reason=reason)
    other = PASSWORD_NAMES[1] if in_use == PASSWORD_NAMES[0] else PASSWORD_NAMES[0]
    try:
        new = await tokens.generate(request.token_id, other, now + request.lifetime)
    except ArmError as exc:
        raise Failed(f"{exc}; {where} is unchanged", "arm_failed", secret_holds=in_use) from exc
    try:
        await secrets.replace(_with_password(secret, request.login_server, new))
    except KubeError as exc:
        valid = arm_time(current.expiry) if current and current.expiry else "its expiry"
        raise Failed(
            f"generated {other} of token {token.name} but could not replace {where}: {exc}. "
            f"The Secret still holds {in_use}, valid until {valid}, so pulls keep working; "
            f"the next run generates {other} again",
            "secret_not_replaced",
            secret_holds=in_use,
            valid_until=valid,
        ) from exc
    return Outcome(
        True,
        *held,
        password=other,
        expires_on=new.expiry,
        reason=reason,
        previous=in_use,
        previous_expires_on=current.expiry if current else None,
    )


async def run(request: Request, credential: AsyncTokenCredential | None = None) -> Outcome:
    """`scoregate registry rotate-pull-token`: in a pod, with DefaultAzureCredential
    (workload identity) unless a credential is given."""
    try:
        where = InCluster.from_environment(folder=request.service_account_dir)
    except KubeConfigError as exc:
        raise InvalidRequest(str(exc), "not_in_cluster") from exc
    if credential is None:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    tokens = AcrTokens(request.arm_endpoint, credential)
    secrets = Secrets(where)
    try:
        return await rotate(tokens, secrets, request)
    finally:
        await secrets.close()
        await tokens.close()
        await credential.close()
