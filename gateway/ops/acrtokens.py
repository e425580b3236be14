"""ACR tokens through Azure Resource Manager: read a token's passwords, generate one.

The REST API is Microsoft.ContainerRegistry 2023-07-01, the operations that
azure-mgmt-containerregistry calls `tokens.get` and `registries.begin_generate_credentials`:

    GET  {registry}/tokens/{token}?api-version=2023-07-01
         -> {"properties": {"status", "credentials": {"passwords": [{name, expiry, ...}]}}}
    POST {registry}/generateCredentials?api-version=2023-07-01
         {"tokenId": <the token's ARM id>, "name": "password1"|"password2", "expiry": <time>}
         -> 200 {"username", "passwords": [{name, value, expiry}]}, or 202 with Location,
            polled until 200 with that body (`final-state-via: location` in the API's
            specification)

spoken through azure-core's pipeline rather than that package (which would add a
dependency for two calls): a bearer token from the credential (workload identity on AKS),
retries with back-off on throttling and 5xx, and azure-core's long-running-operation
poller. No message of this module holds a password: the generated value travels only in
the `GeneratedPassword` returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, cast

from azure.core import AsyncPipelineClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineResponse, policies
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.polling import AsyncLROPoller
from azure.core.polling.async_base_polling import AsyncLROBasePolling
from azure.core.rest import AsyncHttpResponse, HttpRequest

API_VERSION = "2023-07-01"
PASSWORD_NAMES = ("password1", "password2")
# A whole generation, polling included: a hung operation fails the job, which retries.
GENERATE_TIMEOUT_S = 120.0

# /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.ContainerRegistry/
# registries/<registry>/tokens/<token>, with Azure's naming rules: a resource group is 1-90
# letters, digits, '_', '-', '.', '(' or ')' not ending in '.'; a registry 5-50 letters and
# digits; a token 5-50 letters, digits and '-'.
_TOKEN_ID = re.compile(
    r"/subscriptions/(?P<subscription>[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})"
    r"/resourceGroups/(?P<group>[-\w.()]{0,89}[-\w()])"
    r"/providers/Microsoft\.ContainerRegistry"
    r"/registries/(?P<registry>[A-Za-z0-9]{5,50})"
    r"/tokens/(?P<token>[A-Za-z0-9-]{5,50})",
    re.ASCII,
)


class InvalidTokenId(ValueError):
    """Not the ARM id of an ACR token."""


class ArmError(Exception):
    """Resource Manager (or Entra ID, for its token) failed or refused; no secret inside.

    `status` is the HTTP status when there was an answer (404: no such token or registry).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TokenId:
    """Where an ACR token lives, from its ARM id."""

    subscription: str
    resource_group: str
    registry: str
    token: str

    @classmethod
    def parse(cls, text: str) -> TokenId:
        match = _TOKEN_ID.fullmatch(text)
        if match is None:
            raise InvalidTokenId(
                f"not an ACR token id: {text!r}; expected /subscriptions/<id>/resourceGroups/"
                "<group>/providers/Microsoft.ContainerRegistry/registries/<acr>/tokens/<token>"
            )
        return cls(match["subscription"], match["group"], match["registry"], match["token"])

    @property
    def registry_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerRegistry/registries/{self.registry}"
        )

    @property
    def arm_id(self) -> str:
        return f"{self.registry_path}/tokens/{self.token}"


@dataclass(frozen=True)
class TokenPassword:
    """One of a token's two passwords, as ARM lists it (never with its value)."""

    name: str
    expiry: dt.datetime | None
    created: dt.datetime | None


@dataclass(frozen=True)
class Token:
    name: str
    enabled: bool
    passwords: dict[str, TokenPassword]


@dataclass(frozen=True)
class GeneratedPassword:
    """A new password and what docker needs with it; `value` is secret (no repr)."""

    username: str
    name: str
    expiry: dt.datetime
    value: str = field(repr=False)


def arm_time(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a Z, as ARM writes times."""
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _json(response: AsyncHttpResponse) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _refusal(response: AsyncHttpResponse, doing: str) -> ArmError:
    """ARM's error body ({"error": {"code", "message"}}) names the cause; it holds no secret."""
    error = _json(response).get("error")
    detail = ""
    if isinstance(error, dict):
        detail = f": {error.get('code', '')} {error.get('message', '')}".rstrip()
    return ArmError(
        f"Resource Manager refused to {doing} ({response.status_code}){detail}",
        response.status_code,
    )


class AcrTokens:
    """The two operations the pull-token rotation needs, on one ARM endpoint."""

    def __init__(
        self,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        poll_interval_s: float = 2.0,
        **transport_options: Any,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._poll_interval_s = poll_interval_s
        # The token is for ARM itself: the endpoint's own audience ("https://management.
        # azure.com/.default" in Azure's public cloud).
        self._client: AsyncPipelineClient[HttpRequest, AsyncHttpResponse] = AsyncPipelineClient(
            base_url=self.endpoint,
            policies=[
                # The poller reuses the first request's x-ms-client-request-id.
                policies.RequestIdPolicy(),
                policies.HeadersPolicy({"Accept": "application/json"}),
                policies.UserAgentPolicy(base_user_agent="scoregate-pull-token"),
                policies.AsyncRetryPolicy(retry_total=3, retry_backoff_factor=0.8),
                policies.AsyncBearerTokenCredentialPolicy(credential, f"{self.endpoint}/.default"),
                policies.ContentDecodePolicy(),
            ],
            transport=AioHttpTransport(
                **{"connection_timeout": 10, "read_timeout": 30, **transport_options}
            ),
        )

    async def get(self, token_id: TokenId) -> Token:
        """The token's state and its passwords' names and expiry times."""
        request = HttpRequest(
            "GET", f"{self.endpoint}{token_id.arm_id}", params={"api-version": API_VERSION}
        )
        try:
            response = await self._client.send_request(request)
        except AzureError as exc:
            raise ArmError(f"Resource Manager could not be reached: {exc.message}") from exc
        if response.status_code != 200:
            raise _refusal(response, f"read token {token_id.token}")
        props = _json(response).get("properties") or {}
        listed = (props.get("credentials") or {}).get("passwords") or []
        passwords = {
            p["name"]: TokenPassword(
                p["name"], _parse_time(p.get("expiry")), _parse_time(p.get("creationTime"))
            )
            for p in listed
            if isinstance(p, dict) and p.get("name") in PASSWORD_NAMES
        }
        return Token(token_id.token, props.get("status", "enabled") == "enabled", passwords)

    async def generate(
        self, token_id: TokenId, name: str, expiry: dt.datetime
    ) -> GeneratedPassword:
        """A new value for one of the token's passwords, valid until `expiry`. The other
        password is untouched; the old value of this one stops working."""
        if name not in PASSWORD_NAMES:
            raise ValueError(f"password name must be one of {PASSWORD_NAMES}, not {name!r}")
        request = HttpRequest(
            "POST",
            f"{self.endpoint}{token_id.registry_path}/generateCredentials",
            params={"api-version": API_VERSION},
            json={"tokenId": token_id.arm_id, "name": name, "expiry": arm_time(expiry)},
        )
        doing = f"generate {name} of token {token_id.token}"
        try:
            async with asyncio.timeout(GENERATE_TIMEOUT_S):
                # The pipeline response (not only the HTTP one) is what the poller starts from.
                initial = cast(
                    "PipelineResponse[HttpRequest, AsyncHttpResponse]",
                    await self._client.send_request(request, _return_pipeline_response=True),
                )
                if initial.http_response.status_code not in (200, 202):
                    raise _refusal(initial.http_response, doing)
                poller: AsyncLROPoller[dict[str, Any]] = AsyncLROPoller(
                    self._client,
                    initial,
                    lambda final: _json(final.http_response),
                    AsyncLROBasePolling(
                        self._poll_interval_s, lro_options={"final-state-via": "location"}
                    ),
                )
                result = await poller.result()
        except TimeoutError as exc:
            raise ArmError(
                f"Resource Manager did not {doing} in {GENERATE_TIMEOUT_S:.0f} s"
            ) from exc
        except HttpResponseError as exc:
            raise ArmError(
                f"Resource Manager failed to {doing}: {exc.reason}", exc.status_code
            ) from exc
        except AzureError as exc:
            raise ArmError(f"Resource Manager could not be reached: {exc.message}") from exc
        for entry in result.get("passwords") or []:
            if isinstance(entry, dict) and entry.get("name") == name and entry.get("value"):
                return GeneratedPassword(
                    username=str(result.get("username") or token_id.token),
                    name=name,
                    expiry=_parse_time(entry.get("expiry")) or expiry,
                    value=str(entry["value"]),
                )
        raise ArmError(f"Resource Manager's answer to {doing} holds no {name}")

    async def close(self) -> None:
        await self._client.close()
