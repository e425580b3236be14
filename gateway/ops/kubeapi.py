"""The Kubernetes API from inside a pod: one Secret, read and replaced.

Where a pod finds the API server and its credentials is Kubernetes' convention (client-go's
InClusterConfig): `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, which the kubelet
sets in every container, and the service account's token, the cluster's CA and the
namespace in one folder (`/var/run/secrets/kubernetes.io/serviceaccount`; in the pull-token
job a projected volume with a short-lived token). The token file is read for each request
because the kubelet renews it. The server is verified against that CA alone, never the
system's, and no proxy from the environment is used.

A replacement is a PUT carrying the `resourceVersion` that was read (optimistic
concurrency): if anyone changed the Secret in between, the API server answers 409 and
nothing is written.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    """Not in a pod, or the pod has no API credentials: nothing was sent."""


class KubeError(Exception):
    """The API server failed or refused; `status` is its HTTP status (None: unreachable)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InCluster:
    """The API server's URL and this pod's credentials for it."""

    base_url: str
    token_file: Path
    ca_file: Path
    namespace: str

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] = os.environ, folder: Path = SERVICE_ACCOUNT_DIR
    ) -> InCluster:
        host = environ.get("KUBERNETES_SERVICE_HOST", "")
        port = environ.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port.isdigit():
            raise KubeConfigError(
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not in a pod"
            )
        token, ca, namespace = folder / "token", folder / "ca.crt", folder / "namespace"
        for path in (token, ca, namespace):
            if not path.is_file():
                raise KubeConfigError(
                    f"{path} is missing: the pod needs its service account's token, the "
                    "cluster CA and the namespace there"
                )
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        return cls(f"https://{host}:{port}", token, ca, namespace.read_text().strip())


def _status_message(body: Any) -> str:
    """The API server's Status object says why (`message`); it never holds a Secret's data."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return ""


class Secrets:
    """Get and replace Secrets of the pod's namespace."""

    def __init__(self, where: InCluster, *, timeout_s: float = 30.0) -> None:
        self.where = where
        context = ssl.create_default_context(cafile=str(where.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            trust_env=False,
        )

    def _url(self, name: str) -> str:
        ns = quote(self.where.namespace, safe="")
        return f"{self.where.base_url}/api/v1/namespaces/{ns}/secrets/{quote(name, safe='')}"

    async def _call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        token = self.where.token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            async with self._session.request(
                method, self._url(name), json=body, headers=headers
            ) as response:
                status, reason, raw = response.status, response.reason, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(
                f"the Kubernetes API at {self.where.base_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status >= 300:
            why = _status_message(answer) or reason or ""
            raise KubeError(
                f"the Kubernetes API answered {status} to {method} secret "
                f"{self.where.namespace}/{name}: {why}",
                status,
            )
        return answer

    async def get(self, name: str) -> dict[str, Any]:
        secret = await self._call("GET", name)
        if not isinstance(secret, dict):
            raise KubeError(f"the Kubernetes API returned no Secret for {name}")
        return secret

    async def replace(self, secret: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole Secret; its metadata.resourceVersion makes it conditional."""
        stored = await self._call("PUT", secret["metadata"]["name"], secret)
        if not isinstance(stored, dict):
            raise KubeError("the Kubernetes API returned no Secret after the update")
        return stored

    async def close(self) -> None:
        await self._session.close()
