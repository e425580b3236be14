"""Shared fixtures: a real dev PKI, a really trained model, and the real stack in processes."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from azure.core.credentials import AccessToken

from certs.authority import CertPaths, create_ca, issue
from gateway.identity import lifecycle
from gateway.identity.keyring import secret_name
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import utcnow
from scorer.dev.train import train_iris
from serving.tls import client_context
from tests.azurite import AzuriteServer, container_client
from tests.keyvault_server import TOKEN, KeyVaultServer

ROOT = Path(__file__).resolve().parent.parent
API_KEY_PATTERN = re.compile(rb"sg_[a-z2-7]{16}_[a-z2-7]{52}_[0-9a-f]{8}")
JWT_PATTERN = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_or_audit_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: no API key in any file the suite's processes wrote, and no
    private key or token in any log or audit file (SECURITY-CATALOG: audit log)."""
    yield
    base = tmp_path_factory.getbasetemp()
    leaks = []
    scanned = 0
    for path in base.rglob("*"):
        if not path.is_file() or path.suffix in {".key", ".pem"}:
            continue
        data = path.read_bytes()
        scanned += 1
        if API_KEY_PATTERN.search(data):
            leaks.append(f"{path}: an API key")
        if path.suffix in {".log", ".jsonl"} and b"PRIVATE KEY" in data:
            leaks.append(f"{path}: a private key")
        if path.suffix in {".log", ".jsonl"} and JWT_PATTERN.search(data):
            leaks.append(f"{path}: a token")
    if leaks:
        raise AssertionError("secrets leaked into files:\n" + "\n".join(leaks))
    assert scanned > 0 or not any(base.iterdir())


def scoregate(
    *args: str, state: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the `scoregate` command line as a user would, in its own process."""
    prefix = ["--state-dir", str(state)] if state is not None else []
    return subprocess.run(
        [sys.executable, "-m", "gateway", *prefix, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={**os.environ, **env} if env else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    paths = CertPaths(tmp_path_factory.mktemp("pki"))
    create_ca(paths)
    issue(paths, "gateway")
    return paths


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo iris model, trained for real, plus a copy under a second name."""
    repo = tmp_path_factory.mktemp("models")
    train_iris(repo)
    copy = repo / "iris-copy"
    shutil.copytree(repo / "iris", copy)
    settings = copy / "model-settings.toml"
    settings.write_text(settings.read_text().replace('name = "iris"', 'name = "iris-copy"'))
    return repo


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo digits CNN, trained for real (seconds) and exported with its digest."""
    from scorer.dev.digits import train_digits

    repo = tmp_path_factory.mktemp("torch-models")
    train_digits(repo)
    return repo


def write_routes(
    path: Path,
    scorer_url: str,
    models: tuple[str, ...] = ("iris", "iris-copy"),
    **upstream: float,
) -> Path:
    settings = {"timeout_s": 2.0, "connect_timeout_s": 0.5, **upstream}
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    lines = [f'[upstreams.cpu]\nurl = "{scorer_url}"\n{extra}']
    lines += [f'[models."{m}"]\nupstream = "cpu"\nmax_instances = 8\n' for m in models]
    path.write_text("\n".join(lines))
    return path


def write_access(path: Path) -> Path:
    path.write_text(
        '[scopes]\n"models:iris" = ["iris"]\n"models:copy" = ["iris-copy"]\n"models:all" = ["*"]\n'
    )
    return path


def write_ratelimits(path: Path, **defaults: str) -> Path:
    """A rate-limit policy; the shared stack's is generous so that only tests meant to hit it do."""
    values = {
        "per_principal": "100000/second",
        "per_address": "100000/second",
        "failed_auth_per_address": "100000/minute",
        **defaults,
    }
    body = "\n".join(f'{k} = "{v}"' for k, v in values.items())
    path.write_text(f'strategy = "sliding-window-counter"\n[defaults]\n{body}\n')
    return path


@dataclass
class Keys:
    iris: str
    copy_only: str
    unscoped: str
    revoked: str
    expired: str
    ids: dict[str, str] = field(default_factory=dict)


async def make_keys(store_path: Path) -> Keys:
    store = LocalSecretStore(store_path)
    made = {}
    for name, scopes in {
        "iris": ["models:iris"],
        "copy_only": ["models:copy"],
        "unscoped": ["models:none"],
        "revoked": ["models:iris"],
        "expired": ["models:iris"],
    }.items():
        made[name] = await lifecycle.create(store, owner=f"test-{name}", scopes=scopes)
    await lifecycle.revoke(store, made["revoked"].generation.key_id)
    expired = made["expired"].generation
    await store.update(
        secret_name(expired.key_id), expired.version, expires_on=utcnow().replace(year=2020)
    )
    return Keys(
        **{name: issued.key for name, issued in made.items()},
        ids={name: issued.generation.key_id for name, issued in made.items()},
    )


@dataclass
class Stack:
    """A real scorer and a real gateway, each in its own process, over real sockets."""

    base_url: str
    ca: Path
    state: Path
    keys: Keys
    procs: dict[str, subprocess.Popen[bytes]]
    scorer_url: str
    metrics_url: str = ""

    @property
    def audit_file(self) -> Path:
        return self.state / "audit" / "audit.jsonl"

    def ssl_context(self) -> ssl.SSLContext:
        return client_context(self.ca)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.ssl_context(), timeout=10, **kwargs)

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_file.exists():
            return []
        return [orjson.loads(line) for line in self.audit_file.read_bytes().splitlines()]

    def request_records(self) -> list[dict[str, Any]]:
        return [r for r in self.audit_records() if r.get("type") == "request"]

    def audit_for(self, request_id: str, timeout_s: float = 3.0) -> dict[str, Any]:
        """The audit record of one request (the writer is asynchronous: poll briefly)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [r for r in self.audit_records() if r.get("request_id") == request_id]
            if found:
                assert len(found) == 1, f"{len(found)} records for {request_id}"
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no audit record for request {request_id}")


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def wait_ready(
    url: str, ctx: ssl.SSLContext | None, procs: dict[str, subprocess.Popen[bytes]], logs: Path
) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(verify=ctx if ctx is not None else True, timeout=2) as client:
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited {proc.returncode}: {_log_tail(logs / f'{name}.log')}"
                    )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready: {[_log_tail(logs / f'{n}.log') for n in procs]}")


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway_env(
    state: Path, routes: Path, access: Path, port: int, ratelimits: Path | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREGATE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        SCOREGATE_STATE_DIR=str(state),
        SCOREGATE_ROUTES_FILE=str(routes),
        SCOREGATE_ACCESS_POLICY_FILE=str(access),
        SCOREGATE_RATE_LIMIT_POLICY_FILE=str(
            ratelimits or write_ratelimits(state / "ratelimits.toml")
        ),
        SCOREGATE_PORT=str(port),
        SCOREGATE_KEY_REFRESH_INTERVAL_S="0.3",
        # A short checkpoint cadence, so a live trail is signed within a few records.
        SCOREGATE_AUDIT_CHECKPOINT_EVERY="10",
        SCOREGATE_LOG_LEVEL="INFO",
        SCOREGATE_METRICS_PORT=str(free_port()),
        **extra,
    )
    return env


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pki: CertPaths, model_repo: Path
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("state")
    shutil.copytree(pki.root, state / "certs")
    keys = asyncio.run(make_keys(state / "secrets.json"))
    scorer_port, gateway_port = free_port(), free_port()
    scorer_url = f"http://127.0.0.1:{scorer_port}"
    routes = write_routes(state / "routes.toml", scorer_url)
    access = write_access(state / "access.toml")
    env = gateway_env(state, routes, access, gateway_port)
    logs = state / "logs"
    procs = {
        "scorer": start(
            "scorer",
            [
                sys.executable,
                "-m",
                "scorer",
                "serve",
                "--repository",
                str(model_repo),
                "--port",
                str(scorer_port),
            ],
            env,
            logs,
        ),
        "gateway": start("gateway", [sys.executable, "-m", "gateway", "serve"], env, logs),
    }
    base = f"https://localhost:{gateway_port}"
    try:
        # The gateway's readiness is its own; the scorer's is on its own port.
        wait_ready(f"{scorer_url}/v2/health/ready", None, procs, logs)
        wait_ready(
            f"{base}/v2/health/ready", client_context(state / "certs" / "ca.pem"), procs, logs
        )
        metrics_url = f"http://127.0.0.1:{env['SCOREGATE_METRICS_PORT']}/metrics"
        yield Stack(base, state / "certs" / "ca.pem", state, keys, procs, scorer_url, metrics_url)
    finally:
        stop(procs)


SYSTEM_REDIS = "async+redis://127.0.0.1:6379"


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # A Redis that requires authentication answers, too: it refuses the PING.
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test can stop and restart."""

    def __init__(self, workdir: Path, config: str = "") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = config  # redis.conf lines (ACL users...), given on stdin
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"async+redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "-",  # the rest of the configuration from stdin
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.config.encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + 10
        while not redis_answers(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class Gateway:
    base_url: str
    state: Path
    proc: subprocess.Popen[bytes]
    ca: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, verify=client_context(self.ca), timeout=10, **kwargs
        )

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.state / "audit" / "audit.jsonl"
        return (
            [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
        )

    def records_of(self, subject: str, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The subject's request records, once ``count`` of them are written (asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.audit_records() if r.get("subject") == subject]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@contextmanager
def _gateway_spawner(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts more gateway processes beside the shared stack (same scorer, CA, key store)."""
    started: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        ratelimits: Path | None = None,
        *,
        wait: bool = True,
        scorer_url: str | None = None,
        upstream: dict[str, float] | None = None,
        **extra: str,
    ) -> Gateway:
        """A gateway in front of the stack's scorer, or of ``scorer_url`` with ``upstream``
        settings (timeouts, breaker) for its route."""
        state = tmp_path_factory.mktemp("gw")
        shutil.copytree(stack.state / "certs", state / "certs")
        port = free_port()
        env = gateway_env(
            state,
            write_routes(state / "routes.toml", scorer_url or stack.scorer_url, **(upstream or {})),
            write_access(state / "access.toml"),
            port,
            ratelimits,
            SCOREGATE_LOCAL_STORE_PATH=str(stack.state / "secrets.json"),
            **extra,
        )
        name = f"gateway-{len(started)}"
        proc = start(name, [sys.executable, "-m", "gateway", "serve"], env, state / "logs")
        started[name] = proc
        base = f"https://localhost:{port}"
        if wait:
            wait_ready(
                f"{base}/v2/health/ready", client_context(stack.ca), {name: proc}, state / "logs"
            )
        return Gateway(base, state, proc, stack.ca)

    try:
        yield spawn
    finally:
        stop(started)


@pytest.fixture
def spawn_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Gateways that live for one test."""
    with _gateway_spawner(stack, tmp_path_factory) as spawn:
        yield spawn


@pytest.fixture(scope="module")
def spawn_module_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Gateways shared by the tests of one module."""
    with _gateway_spawner(stack, tmp_path_factory) as spawn:
        yield spawn


async def new_key(store_path: Path, scopes: list[str] | None = None) -> tuple[str, str]:
    """A fresh key under a fresh subject, so counters never carry over between runs."""
    import secrets as pysecrets

    owner = f"rl-{pysecrets.token_hex(6)}"
    issued = await lifecycle.create(
        LocalSecretStore(store_path), owner=owner, scopes=scopes or ["models:iris"]
    )
    return issued.key, owner


class StaticCredential:
    """Stands in for Entra ID (which cannot exist here): hands out the server's token."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(TOKEN, int(utcnow().timestamp()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@pytest.fixture(scope="session")
def vault(pki: CertPaths) -> Iterator[KeyVaultServer]:
    server = KeyVaultServer(str(pki.cert("gateway")), str(pki.key("gateway")), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(pki: CertPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite over HTTPS (the test CA's certificate) with OAuth, once per session."""
    server = AzuriteServer(
        pki.cert("gateway"), pki.key("gateway"), free_port(), tmp_path_factory.mktemp("azurite")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def audit_container(azurite: AzuriteServer, pki: CertPaths) -> AsyncIterator[str]:
    """A fresh container in Azurite; its URL."""
    url = azurite.container_url(f"audit-{secrets.token_hex(6)}")
    async with container_client(url, pki.ca_cert) as container:
        await container.create_container()
    yield url
