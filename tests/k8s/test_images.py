"""k8s/images: the Dockerfiles, linted by hadolint and checked for what the catalog asks
(pinned bases, a numeric non-root user, no build tools in the final image, a health
check that works without curl). No Docker engine here: nothing is built.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.authority import CertPaths
from tests.conftest import free_port
from tests.k8s.conftest import K8S, Rendered, run, tool

IMAGES = K8S / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
# Image → the Deployment and container port it serves (models images only copy files).
SERVES = {"gateway": 8443, "scorer-cpu": 9001, "scorer-gpu": 9002}
# Image → its hash-pinned lock (k8s/images/requirements/), and the packages it installs:
# each image only what it runs.
LOCK = {"gateway": "gateway", "scorer-cpu": "scorer", "scorer-gpu": "torch"}
PACKAGES = {
    "gateway": ("serving", "gateway", "certs"),
    "scorer-cpu": ("serving", "scorer"),
    "scorer-gpu": ("serving", "scorer"),
}
# Exact version tags; a digest may follow.
PINNED = re.compile(r"^[a-z0-9./-]+:\d+\.\d+\.\d+[a-z0-9.-]*(@sha256:[0-9a-f]{64})?$")
# The one inline waiver: apt package versions in the CUDA image (reason in the file).
HADOLINT_WAIVERS = {"scorer-gpu.Dockerfile": {"DL3008"}}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Every severity fails, style included.
    return run(tool("hadolint"), "--failure-threshold", "style", "--format", "json", path)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout) == []
    waived = set(re.findall(r"# hadolint ignore=([A-Z0-9,]+)", dockerfile.read_text()))
    assert waived == HADOLINT_WAIVERS.get(dockerfile.name, set())


def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "careless.Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = hadolint(careless)
    assert result.returncode == 1
    assert {"DL3007", "DL3008", "DL3009", "DL3015"} <= {
        f["code"] for f in json.loads(result.stdout)
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_and_the_final_image_runs_as_10001_without_build_tools(
    dockerfile: Path,
) -> None:
    for word, args in instructions(dockerfile):
        if word == "FROM":
            image = args.split()[0]
            assert PINNED.match(image), f"{dockerfile.name}: {image} is not pinned"
    final = final_stage(dockerfile)
    users = [args for word, args in final if word == "USER"]
    assert users == ["10001:10001"], dockerfile.name
    assert any(word == "HEALTHCHECK" for word, _ in final), dockerfile.name
    installs = " ".join(args for word, args in final if word == "RUN")
    for tool_name in ("gcc", "build-essential", "curl", "wget", "pip install", "-dev"):
        assert tool_name not in installs, f"{dockerfile.name}: {tool_name} in the final image"
    assert not any(word == "ADD" for word, _ in instructions(dockerfile))


@pytest.mark.parametrize("image", sorted(SERVES))
def test_images_listen_where_the_deployments_expect_and_ignore_the_rest(
    image: str, rendered: dict[str, Rendered]
) -> None:
    dockerfile = IMAGES / f"{image}.Dockerfile"
    exposed = [args for word, args in final_stage(dockerfile) if word == "EXPOSE"]
    assert exposed == [str(SERVES[image])]
    deployment = rendered["production"].get("Deployment", image)
    ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    # The serving port, and the metrics listener the pod turns on (not the image: its
    # default keeps metrics on loopback, so EXPOSE names the serving port alone).
    serving = "https" if image == "gateway" else "http"
    assert ports == {serving: SERVES[image], "metrics": 9100 if image == "gateway" else 9101}
    # The build context is the repository: a deny-by-default ignore file beside the
    # Dockerfile (BuildKit reads <name>.dockerignore) keeps var/, .venv and keys out.
    ignore = (IMAGES / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {r for r in rules if r.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        f"!k8s/images/requirements/{LOCK[image]}.txt",
        *(f"!{package}/" for package in PACKAGES[image]),
    }


# -- the health checks work without curl ------------------------------------------------
def healthcheck_code(dockerfile: Path) -> str:
    (args,) = [a for word, a in final_stage(dockerfile) if word == "HEALTHCHECK"]
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    return str(command[2])


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/v2/health/live" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server(request: pytest.FixtureRequest, pki: CertPaths) -> Iterator[tuple[int, type]]:
    handler = type("H", (Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    if request.param == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert("gateway"), pki.key("gateway"))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("image", "port_variable", "health_server"),
    [
        ("gateway", "SCOREGATE_PORT", "https"),
        ("scorer-cpu", "SCOREGATE_SCORER_PORT", "http"),
        ("scorer-gpu", "SCOREGATE_SCORER_PORT", "http"),
    ],
    indirect=["health_server"],
)
def test_healthcheck_one_liner_passes_on_a_live_server_and_fails_otherwise(
    image: str, port_variable: str, health_server: tuple[int, type]
) -> None:
    port, handler = health_server
    code = healthcheck_code(IMAGES / f"{image}.Dockerfile")

    def check(p: int) -> int:
        env = {**os.environ, port_variable: str(p)}
        return run(sys.executable, "-c", code, env=env).returncode

    assert check(port) == 0
    handler.status = 503  # type: ignore[attr-defined]
    assert check(port) != 0
    assert check(free_port()) != 0  # nothing listening
