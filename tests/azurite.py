"""Azurite, Microsoft's Blob Storage emulator (npm `azurite`), over HTTPS with OAuth.

`make azurite` installs it under .azurite/. Started here with a certificate from the
test CA and `--oauth basic`: it then takes bearer tokens as Blob Storage does (issuer,
audience https://storage.azure.com and lifetime checked; the signature is not, there is
no Entra ID to sign them), so the gateway's DefaultAzureCredential path is the real one.
Its data lives in a folder of the test's, so a restarted Azurite keeps every blob.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from azure.core.credentials import AccessToken
from azure.storage.blob.aio import ContainerClient

from gateway.audit.blobstore import download_container

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
TENANT = "00000000-0000-0000-0000-000000000000"


def storage_token(lifetime_s: int = 3600) -> str:
    """A token shaped as Entra ID issues them for Blob Storage (unsigned: Azurite checks
    issuer, audience and lifetime only)."""

    def b64(part: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": "https://storage.azure.com",
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime_s,
        "oid": "11111111-1111-1111-1111-111111111111",
        "tid": TENANT,
    }
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


class AzuriteServer:
    def __init__(self, cert: Path, key: Path, port: int, location: Path) -> None:
        self.cert, self.key, self.port, self.location = cert, key, port, location
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/{ACCOUNT}"

    def container_url(self, name: str) -> str:
        return f"{self.account_url}/{name}"

    def start(self) -> None:
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run `make azurite` (npm install azurite)")
        self.location.mkdir(parents=True, exist_ok=True)
        with (self.location / "azurite.log").open("ab") as log:
            self.proc = self._spawn(log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Azurite did not start: "
                        + (self.location / "azurite.log").read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.1)

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--cert",
                str(self.cert),
                "--key",
                str(self.key),
                "--oauth",
                "basic",
                "--location",
                str(self.location),
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        """SIGTERM: Azurite saves its metadata database and exits. (After SIGKILL it would
        lose what it acknowledged since its last autosave, which Blob Storage never does:
        that would test the emulator, not the gateway.)"""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StorageCredential:
    """Stands in for Entra ID with Blob Storage: a storage-shaped token."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(storage_token(), int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StorageCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


def container_client(url: str, ca: Path, **kwargs: Any) -> ContainerClient:
    """A client of the container at ``url`` with the test credential, trusting ``ca``."""
    return ContainerClient.from_container_url(
        url,
        credential=StorageCredential(),  # type: ignore[arg-type]
        connection_verify=str(ca),
        **kwargs,
    )


async def stored(url: str, ca: Path, into: Path) -> dict[str, Path]:
    """The container's replicas, downloaded as the review commands read them."""
    async with container_client(url, ca) as client:
        return await download_container(client, into)
