"""The servers of `make bench`, configured from files in bench/ and started on loopback.

- ``scorer``: our scikit-learn scorer (`python -m scorer serve`), the iris demo pipeline;
  called directly, and the one upstream behind both gateways.
- ``gateway``: scoregate as deployed: TLS with the dev CA's certificate, an RS256 JWT
  issuer and an API key from the local secret store, a rate-limit policy that never
  triggers (but counts every request), audit records to a file, hash-chained and signed.
- ``haproxy``: Debian's HAProxy 2.6 from bench/haproxy.cfg.in: the same certificate,
  RS256 ``jwt_verify`` and claims, a stick-table rate limit, the same scorer.
- ``mlserver``: MLServer + mlserver-sklearn (side virtualenv) serving the same pipeline
  over V2, from bench/mlserver/*.in; no TLS, no auth.
- ``flask``: bench/flask_app.py on gunicorn (side virtualenv), the same pipeline.

MLServer and Flask need the pipeline as a joblib (pickle) file: this module writes one,
for them only, from the scorer's digest-checked skops artifact, and they check its
SHA-256 before unpickling. The scorer itself never reads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.procs import Server, free_port, start, wait_ready
from certs.authority import CertPaths, ensure_server_certificate
from gateway.identity import lifecycle
from gateway.identity.keyring import JWT_KEY_PREFIX
from gateway.secretstore.localfile import LocalSecretStore
from serving.tls import INTERMEDIATE_CIPHERS

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

MODEL = "iris"
SCOPE = "models:iris"
ISSUER = "https://bench.scoregate.local"
AUDIENCE = "scoregate-bench"
KID = "bench-rs256"
ROW = [5.1, 3.5, 1.4, 0.2]
V1_PATH = f"/v1/models/{MODEL}:predict"
V2_PATH = f"/v2/models/{MODEL}/infer"
V1_BODY = {"instances": [ROW]}
V2_BODY = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}


@dataclass(frozen=True)
class Credentials:
    api_key: str
    token: str
    public_key: Path  # PEM, for HAProxy's jwt_verify

    @property
    def bearer_header(self) -> str:
        return f"Authorization: Bearer {self.token}"

    @property
    def api_key_header(self) -> str:
        return f"api-key: {self.api_key}"


def fill(template: Path, out: Path, values: dict[str, str]) -> Path:
    """``@NAME@`` placeholders of a bench/ template, every one of them filled."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = re.findall(r"@[A-Z0-9_]+@", text)
    if leftover:
        raise ValueError(f"{template.name}: unfilled placeholders {sorted(set(leftover))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """This environment less our own settings (each server gets exactly what we give it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREGATE_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# -- state ------------------------------------------------------------------------------
async def make_identity(state: Path) -> Credentials:
    """An API key and an RS256 issuer key in a fresh local store, and a token from it.

    The issuer's private key lives only in this process (the token is minted here); its
    public key goes to the store as ``jwtkey-<kid>`` (for the gateway) and to a PEM file
    (for HAProxy).
    """
    store = LocalSecretStore(state / "secrets.json")
    issued = await lifecycle.create(store, owner="bench-apikey", scopes=[SCOPE])
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    await store.set(f"{JWT_KEY_PREFIX}{KID}", public_pem, tags={"alg": "RS256", "issuer": ISSUER})
    public_file = state / "jwt-rs256-public.pem"
    public_file.write_text(public_pem)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-jwt",
        "iat": now,
        "nbf": now,
        "exp": now + 3 * 3600,
        "scp": SCOPE,
    }
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": KID})
    return Credentials(issued.key, token, public_file)


def write_gateway_policies(state: Path, scorer_port: int) -> dict[str, Path]:
    """Routes, access, a generous rate-limit policy, and the bench's RS256 issuer."""
    files = {
        "routes": state / "routes.toml",
        "access": state / "access.toml",
        "ratelimits": state / "ratelimits.toml",
        "issuers": state / "issuers.toml",
    }
    files["routes"].write_text(
        f'[upstreams.cpu-scorer]\nurl = "http://127.0.0.1:{scorer_port}"\nkind = "cpu"\n'
        f"connect_timeout_s = 1.0\ntimeout_s = 5.0\n\n"
        f'[models.{MODEL}]\nupstream = "cpu-scorer"\nmax_instances = 64\n'
    )
    files["access"].write_text(f'[scopes]\n"{SCOPE}" = ["{MODEL}"]\n')
    # Limits no bench reaches, so that every request is counted and none refused.
    files["ratelimits"].write_text(
        'strategy = "sliding-window-counter"\n[defaults]\n'
        'per_principal = "1000000/second"\nper_address = "1000000/second"\n'
        'failed_auth_per_address = "1000/minute"\n'
    )
    files["issuers"].write_text(
        f'[issuers.bench]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        'algorithms = ["RS256"]\nleeway_s = 30\n'
    )
    return files


def train_model(models: Path) -> Path:
    from scorer.dev.train import train_iris

    return train_iris(models)


def export_joblib(folder: Path, out: Path) -> str:
    """The scorer's pipeline (loaded through its digest check) as joblib; its SHA-256."""
    import joblib

    from scorer.repository import read_model_settings
    from scorer.runtimes.sklearn import SklearnRuntime

    runtime = SklearnRuntime.load(folder, read_model_settings(folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(runtime.estimator, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def certificates(certs: Path) -> CertPaths:
    paths = CertPaths(certs)
    ensure_server_certificate(paths)
    return paths


# -- side virtualenv ----------------------------------------------------------------------
def side_requirements() -> str:
    import sklearn

    return (BENCH / "requirements-side.txt").read_text() + f"scikit-learn=={sklearn.__version__}\n"


def ensure_side_venv(venv: Path, log: Path) -> Path:
    """MLServer, mlserver-sklearn, Flask and gunicorn in their own virtualenv, made once.

    Rebuilt only when the requirements (or this Python) change; its ``bin`` folder.
    """
    requirements = side_requirements()
    fingerprint = hashlib.sha256((requirements + sys.version).encode()).hexdigest()
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text() == fingerprint:
        return venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)  # noqa: S603
    (venv / "requirements.txt").write_text(requirements)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        subprocess.run(  # noqa: S603 - fixed arguments
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(venv / "requirements.txt"),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=900,
        )
    stamp.write_text(fingerprint)
    return venv / "bin"


def side_version(bin_dir: Path, package: str) -> str:
    run = subprocess.run(  # noqa: S603
        [
            str(bin_dir / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return run.stdout.strip() or "?"


# -- servers ------------------------------------------------------------------------------
def start_scorer(models: Path, logs: Path) -> tuple[Server, int]:
    port = free_port()
    server = start(
        "scorer",
        [
            sys.executable,
            "-m",
            "scorer",
            "serve",
            "--repository",
            str(models),
            "--port",
            str(port),
            "--runtime",
            "sklearn",
        ],
        logs,
        clean_env(),
        cwd=ROOT,
    )
    return server, port


def start_gateway(
    state: Path, certs: CertPaths, policies: dict[str, Path], logs: Path
) -> tuple[Server, int]:
    port = free_port()
    env = clean_env(
        SCOREGATE_STATE_DIR=str(state),
        SCOREGATE_TLS_CERT=str(certs.cert("gateway")),
        SCOREGATE_TLS_KEY=str(certs.key("gateway")),
        SCOREGATE_ROUTES_FILE=str(policies["routes"]),
        SCOREGATE_ACCESS_POLICY_FILE=str(policies["access"]),
        SCOREGATE_RATE_LIMIT_POLICY_FILE=str(policies["ratelimits"]),
        SCOREGATE_JWT_ISSUERS_FILE=str(policies["issuers"]),
        SCOREGATE_AUDIT_SINK="file",
        SCOREGATE_PORT=str(port),
        # Metrics on (the real path), on a port of the run's own.
        SCOREGATE_METRICS_PORT=str(free_port()),
        SCOREGATE_LOG_LEVEL="WARNING",
    )
    server = start("gateway", [sys.executable, "-m", "gateway", "serve"], logs, env, cwd=ROOT)
    return server, port


def start_haproxy(
    state: Path, certs: CertPaths, credentials: Credentials, scorer_port: int, logs: Path
) -> tuple[Server, int]:
    port = free_port()
    folder = state / "haproxy"
    folder.mkdir(parents=True, exist_ok=True)
    # HAProxy wants certificate and key in one file.
    bundle = folder / "gateway-bundle.pem"
    bundle.touch(mode=0o600)
    bundle.write_bytes(certs.cert("gateway").read_bytes() + certs.key("gateway").read_bytes())
    config = fill(
        BENCH / "haproxy.cfg.in",
        folder / "haproxy.cfg",
        {
            "PORT": str(port),
            "CERT_BUNDLE": str(bundle),
            "PUBLIC_KEY": str(credentials.public_key),
            "TLS12_CIPHERS": INTERMEDIATE_CIPHERS,
            "ISSUER": ISSUER,
            "AUDIENCE": AUDIENCE,
            "SCOPE": SCOPE,
            "MODEL_PATH": V1_PATH,
            "SCORER_PORT": str(scorer_port),
        },
    )
    check = subprocess.run(  # noqa: S603
        [shutil.which("haproxy") or "haproxy", "-c", "-q", "-f", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejects {config}: {check.stdout}{check.stderr}")
    server = start(
        "haproxy",
        [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)],
        logs,
        clean_env(),
    )
    return server, port


def start_mlserver(
    state: Path, side_bin: Path, joblib_file: Path, logs: Path
) -> tuple[Server, int]:
    port = free_port()
    folder = state / "mlserver"
    fill(
        BENCH / "mlserver" / "settings.json.in",
        folder / "settings.json",
        {"HTTP_PORT": str(port), "GRPC_PORT": str(free_port()), "METRICS_PORT": str(free_port())},
    )
    fill(BENCH / "mlserver" / "model-settings.json.in", folder / MODEL / "model-settings.json", {})
    shutil.copy(joblib_file, folder / MODEL / "model.joblib")
    server = start(
        "mlserver", [str(side_bin / "mlserver"), "start", str(folder)], logs, clean_env()
    )
    return server, port


def start_flask(side_bin: Path, joblib_file: Path, digest: str, logs: Path) -> tuple[Server, int]:
    """gunicorn with 2 workers (one per core here) of 4 threads: gthread keeps connections
    alive, as wrk's are (the sync worker would close each one)."""
    port = free_port()
    server = start(
        "flask",
        [
            str(side_bin / "gunicorn"),
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(BENCH),
            "flask_app:app",
        ],
        logs,
        clean_env(BENCH_MODEL_PATH=str(joblib_file), BENCH_MODEL_SHA256=digest),
    )
    return server, port


def ready_gateway(server: Server, port: int, ca: Path) -> None:
    wait_ready(server, f"https://localhost:{port}/v2/health/ready", ca=ca)


def write_bodies(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    v1, v2 = folder / "v1.json", folder / "v2.json"
    v1.write_text(json.dumps(V1_BODY))
    v2.write_text(json.dumps(V2_BODY))
    return {"v1": v1, "v2": v2}


def identity(state: Path) -> Credentials:
    return asyncio.run(make_identity(state))


def verify_audit(state: Path) -> dict[str, Any]:
    """The gateway's audit trail under ``state``: records, signed checkpoints, verified."""
    from gateway.audit import review, signing

    keys = asyncio.run(signing.public_keys(LocalSecretStore(state / "secrets.json")))
    result = review.verify([state / "audit"], keys)
    return {
        "records": result.records,
        "checkpoints": result.checkpoints,
        "verified": result.ok,
        "problem": result.problem,
    }
