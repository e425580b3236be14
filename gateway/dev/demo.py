"""`scoregate demo`: the whole stack on this machine, with embedded defaults.

Makes the dev CA and gateway certificate, trains the demo models (a scikit-learn
pipeline and a small PyTorch CNN), issues a demo API key, starts the CPU scorer, the GPU
scorer (on the CPU here) and a gateway as real processes, and sends real scored requests
over HTTPS that trust only the dev CA, a digit image among them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.authority import CertPaths, ensure_server_certificate
from gateway.audit import review, signing
from gateway.audit.blobstore import download_store
from gateway.client import Reply, call
from gateway.dev import issuer
from gateway.identity import lifecycle
from gateway.identity.issuers import load_issuers
from gateway.secretstore.localfile import LocalSecretStore
from gateway.settings import GatewaySettings

DEMO_OWNER = "demo"
DEMO_SCOPES = ["models:iris", "models:digits"]
SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


@dataclass
class DemoProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class DemoError(Exception):
    pass


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> DemoProcess:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    return DemoProcess(name, proc, log)


def _stop(processes: list[DemoProcess]) -> None:
    for p in processes:
        if p.proc.poll() is None:
            p.proc.terminate()  # SIGTERM: both servers drain and exit
    for p in processes:
        try:
            p.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.proc.kill()


def _wait_ready(
    url: str,
    ca: Path,
    processes: list[DemoProcess],
    timeout_s: float = 90,
    api_key: str | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        for p in processes:
            if p.proc.poll() is not None:
                raise DemoError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
        try:
            reply = call(url, ca=ca, timeout_s=2, api_key=api_key)
            if reply.status == 200:
                return
            last = f"{reply.status} {reply.body}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise DemoError(f"{url} did not become ready in {timeout_s:.0f}s: {last}")


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        # As the servers will bind: SO_REUSEADDR, so that connections in TIME_WAIT from an
        # earlier run do not count as a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(
                f"port {port} is already in use (another `scoregate demo`?); "
                "stop it or choose other ports with --port/--scorer-port"
            ) from None


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    # SIGTERM (kill, a CI runner) stops the demo like Ctrl-C: children are stopped too.
    raise KeyboardInterrupt


def _write_routes(path: Path, scorer_port: int, gpu_scorer_port: int) -> None:
    path.write_text(
        f"""# Written by `scoregate demo`.
[upstreams.cpu-scorer]
url = "http://127.0.0.1:{scorer_port}"
kind = "cpu"
timeout_s = 5.0

[upstreams.gpu-scorer]
url = "http://127.0.0.1:{gpu_scorer_port}"
kind = "gpu"
timeout_s = 15.0

[models.iris]
upstream = "cpu-scorer"
max_instances = 64
row_elements = 4

[models.digits]
upstream = "gpu-scorer"
max_instances = 64
row_elements = 1
"""
    )


async def _fresh_demo_key(store_path: Path) -> str:
    """Revoke earlier demo keys and issue a new one (its secret is shown once, here)."""
    store = LocalSecretStore(store_path)
    for generation in await lifecycle.list_keys(store):
        if generation.owner == DEMO_OWNER and generation.enabled:
            await lifecycle.revoke(store, generation.key_id)
    issued = await lifecycle.create(store, owner=DEMO_OWNER, scopes=DEMO_SCOPES)
    return issued.key


async def _demo_token(store_path: Path, settings: GatewaySettings) -> str:
    """A 1-hour token from the dev issuer (its key is made on first use, in the local store)."""
    issuers = {cfg.name: cfg for cfg in load_issuers(settings.jwt_issuers_file)}
    return await issuer.mint(
        LocalSecretStore(store_path),
        issuers[issuer.DEV_ISSUER],
        subject="demo-jwt",
        scopes=DEMO_SCOPES,
        ttl_s=3600,
    )


def _scorer_command(models: Path, port: int, runtime: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scorer",
        "serve",
        "--repository",
        str(models),
        "--port",
        str(port),
        "--runtime",
        runtime,
    ]


def run_demo(
    settings: GatewaySettings,
    *,
    once: bool,
    scorer_port: int,
    gpu_scorer_port: int,
    out: Callable[[str], None],
) -> int:
    try:
        for port in (settings.port, scorer_port, gpu_scorer_port, settings.metrics_port):
            _check_port_free(port)
    except DemoError as exc:
        out(f"demo failed: {exc}")
        return 1
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    state = settings.state_dir.resolve()
    for line in ensure_server_certificate(CertPaths(state / "certs")):
        out(f"certs: {line}")
    ca = state / "certs" / "ca.pem"

    models = state / "models"
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "scorer", "train-demo", "--repository", str(models)], check=True
    )
    api_key = asyncio.run(_fresh_demo_key(state / "secrets.json"))
    token = asyncio.run(_demo_token(state / "secrets.json", settings))
    routes = state / "demo-routes.toml"
    _write_routes(routes, scorer_port, gpu_scorer_port)

    env = {
        **os.environ,
        "SCOREGATE_STATE_DIR": str(state),
        "SCOREGATE_ROUTES_FILE": str(routes),
        "SCOREGATE_PORT": str(settings.port),
    }
    env.setdefault("PYTHONUNBUFFERED", "1")
    logs = state / "logs"
    processes = [
        _start("scorer", _scorer_command(models, scorer_port, "sklearn"), env, logs),
        _start("gpu-scorer", _scorer_command(models, gpu_scorer_port, "torch"), env, logs),
        _start("gateway", [sys.executable, "-m", "gateway", "serve"], env, logs),
    ]
    base = f"https://localhost:{settings.port}"
    try:
        _wait_ready(f"{base}/v2/health/ready", ca, processes)
        # The gateway is ready on its own; each model once its scorer has loaded it.
        for model in ("iris", "digits"):
            _wait_ready(f"{base}/v2/models/{model}/ready", ca, processes, api_key=api_key)
        ok, request_ids = _show_requests(base, ca, api_key, token, models, out)
        # With a Blob Storage container as the sink, records are sealed into the spool
        # first (and shipped from there): the demo reads them where they land first.
        store = settings.audit_store_url
        trail = (settings.audit_spool_dir or state / "audit-spool") if store else state / "audit"
        ok &= _show_audit(trail, request_ids, out)
        curl = (
            f"curl --cacert {shlex.quote(str(ca))} -H 'api-key: {api_key}' "
            "-H 'content-type: application/json' "
            f"-d '{json.dumps({'instances': SAMPLES[:1]})}' {base}/v1/models/iris:predict"
        )
        out("\nTry it yourself (the demo key is valid until the next demo run revokes it):")
        out(f"  {curl}")
        out(f"Audit trail: {store or state / 'audit'}   logs: {logs}")
        if once:
            # The gateway drains its queue, signs the head and ships it on the way out.
            _stop(processes)
            verified = _verify_audit(state, store, out, settings.audit_checkpoint_every)
            return 0 if verified and ok else 1
        if store is None:  # a store is read back once the gateway has shipped (at exit)
            _verify_audit(state, store, out, settings.audit_checkpoint_every)
        out("\nServing until Ctrl-C ...")
        while all(p.proc.poll() is None for p in processes):
            time.sleep(0.5)
        raise DemoError("a demo process exited:\n" + "\n".join(p.tail() for p in processes))
    except KeyboardInterrupt:
        out("\nstopping ...")
        return 0
    except DemoError as exc:
        out(f"demo failed: {exc}")
        return 1
    finally:
        _stop(processes)


def _show_requests(
    base: str, ca: Path, api_key: str, token: str, models: Path, out: Callable[[str], None]
) -> tuple[bool, list[str]]:
    checks: list[tuple[str, Reply, int]] = []
    v1 = call(
        f"{base}/v1/models/iris:predict",
        ca=ca,
        method="POST",
        api_key=api_key,
        payload={"instances": SAMPLES},
    )
    checks.append(("v1 predict", v1, 200))
    v2 = call(
        f"{base}/v2/models/iris/infer",
        ca=ca,
        method="POST",
        api_key=api_key,
        payload={
            "inputs": [
                {"name": "measurements", "shape": [1, 4], "datatype": "FP64", "data": SAMPLES[2]}
            ],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
        },
    )
    checks.append(("v2 infer", v2, 200))
    # Sample images the trainer left beside the model (the gateway imports no ML library).
    samples = json.loads((models / "digits" / "samples.json").read_text())[:4]
    digits = [(sample["label"], sample["png"]) for sample in samples]
    image = call(
        f"{base}/v2/models/digits/infer",
        ca=ca,
        method="POST",
        api_key=api_key,
        payload={
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(digits)],
                    "datatype": "BYTES",
                    "data": [png for _, png in digits],
                }
            ],
            "outputs": [{"name": "predict"}],
        },
    )
    checks.append(("digit PNG", image, 200))
    with_jwt = call(
        f"{base}/v1/models/iris:predict",
        ca=ca,
        method="POST",
        bearer=token,
        payload={"instances": SAMPLES[1:2]},
    )
    checks.append(("JWT", with_jwt, 200))
    denied = call(
        f"{base}/v1/models/iris:predict", ca=ca, method="POST", payload={"instances": SAMPLES[:1]}
    )
    checks.append(("no key", denied, 401))

    ok = True
    out(f"\nscoregate demo: gateway {base} → scorer, TLS trusting only the dev CA\n")
    for name, reply, expected in checks:
        good = reply.status == expected
        ok &= good
        mark = "ok " if good else "FAIL"
        request_id = reply.headers.get("x-request-id")
        out(f"[{mark}] {name:<10} HTTP {reply.status}  request-id {request_id}")
        out(f"       {json.dumps(reply.body)[:300]}")
    if v1.status == 200:
        for sample, label in zip(SAMPLES, v1.body["predictions"], strict=False):
            out(f"       iris {sample} → {label}")
    if image.status == 200:
        predicted = image.body["outputs"][0]["data"]
        for (truth, _), label in zip(digits, predicted, strict=False):
            out(f"       32x32 PNG of a handwritten {truth} → digits model says {label}")
    return ok, [str(reply.headers.get("x-request-id")) for _, reply, _ in checks]


def _show_audit(trail: Path, request_ids: list[str], out: Callable[[str], None]) -> bool:
    """The audit records of the demo's requests (written asynchronously: wait briefly)."""
    wanted = set(request_ids)
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(found) < len(wanted):
        found = {
            r["request_id"]: r
            for r in review.query([trail], review.Filter())
            if r["request_id"] in wanted
        }
        time.sleep(0.1)
    out("\nAudit records of these requests (ids and digests only, never keys or payloads):")
    out("  " + review.table_header())
    for request_id in request_ids:
        if request_id in found:
            out("  " + review.table_row(found[request_id]))
    return len(found) == len(wanted)


def _verify_audit(
    state: Path, store: str | None, out: Callable[[str], None], max_unsigned: int
) -> bool:
    keys = asyncio.run(signing.public_keys(LocalSecretStore(state / "secrets.json")))
    with tempfile.TemporaryDirectory(prefix="scoregate-demo-audit-") as scratch:
        trails = (
            asyncio.run(download_store(store, Path(scratch))) if store else {"": state / "audit"}
        )
        if not trails:
            out(f"Audit trail BROKEN: nothing in {store}")
            return False
        ok = True
        for replica, folder in trails.items():
            result = review.verify([folder], keys, max_unsigned=max_unsigned)
            where = f" (replica {replica} in {store})" if store else ""
            if result.ok:
                out(
                    f"Audit trail verified{where}: {result.records} records, chain intact, "
                    f"{review.describe_signing(result)} (`scoregate audit verify`)"
                )
            else:
                out(f"Audit trail BROKEN{where}: {result.problem}")
            ok &= result.ok
    return ok
