"""What each image installs, made here as its Dockerfile makes it, and run as AKS runs it.

No Docker engine here, so each image's build stage is replayed in a virtual environment
(`.venv-extras/<image>`): the files its COPY lines take (less what its ignore file
keeps out), installed with its own `pip install '.[extra]'` line. The checks then run
against that install alone, from a folder outside the checkout:
- every module the image needs imports, and what it must not carry is absent (the
  gateway: no scikit-learn, NumPy, SciPy or torch; the scorers: no gateway);
- the development tools (the demo, the dev token issuer, demo training) are not there;
- the gateway and the CPU scorer, each from its own install, serve a real scored request
  over TLS; the GPU scorer serves a digit on the CPU.

The dependencies of each venv are cached by a stamp (pyproject.toml, the Dockerfile,
the interpreter); the project itself is reinstalled from the files on every session.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certs.authority import CertPaths
from serving.tls import client_context
from tests.conftest import free_port, gateway_env, make_keys, write_access, write_routes
from tests.k8s.conftest import ROOT, Rendered, run
from tests.k8s.installs import CHECK, IMAGES_UNDER_TEST, Install
from tests.k8s.pods import (
    POD_PYTHON,
    as_pod_user,
    empty_dir_volume,
    init_container_command,
    models_image,
    world_readable_tmp,
)


def inspect(install: Install, cwd: Path) -> dict[str, object]:
    image = install.image
    result = run(
        install.python,
        "-c",
        CHECK,
        ",".join(image.packages),
        ",".join(image.skip),
        ",".join(image.absent),
        cwd=cwd,  # not the checkout: only the install may answer an import
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, object] = json.loads(result.stdout)
    return found


@pytest.mark.parametrize("name", sorted(IMAGES_UNDER_TEST))
def test_each_image_installs_what_it_runs_and_nothing_else(
    name: str, installs: dict[str, Install], tmp_path: Path
) -> None:
    found = inspect(installs[name], tmp_path)
    assert found["failed"] == {}
    imported = set(found["imported"])  # type: ignore[arg-type]
    entry = {"gateway": "gateway.server", "scorer-cpu": "scorer.server"}.get(name, "scorer.server")
    assert {entry, "serving.server", "serving.tls"} <= imported
    assert found["absent"] == dict.fromkeys(IMAGES_UNDER_TEST[name].absent, True)


def test_the_development_tools_answer_that_they_are_not_installed(
    installs: dict[str, Install], tmp_path: Path
) -> None:
    gateway = installs["gateway"]
    for args, command in (
        (["demo", "--once"], "demo"),
        (["token", "mint", "--sub", "x"], "token mint"),
    ):
        result = run(gateway.bin / "scoregate", *args, cwd=tmp_path)
        assert result.returncode == 2
        assert f"`scoregate {command}` is a development tool" in result.stderr
    for name in ("scorer-cpu", "scorer-gpu"):
        scorer = installs[name]
        result = run(
            scorer.python, "-m", "scorer", "train-demo", "--repository", tmp_path, cwd=tmp_path
        )
        assert result.returncode == 2
        assert "train-demo is a development tool" in result.stderr


def start(args: list[str | Path], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [str(a) for a in args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )


def wait_for(url: str, verify: object, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        try:
            if httpx.get(url, verify=verify, timeout=2).status_code == 200:  # type: ignore[arg-type]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready: {log.read_text()[-3000:]}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_gateway_and_the_cpu_scorer_serve_a_scored_request_from_their_own_installs(
    installs: dict[str, Install],
    pki: CertPaths,
    model_repo: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    state = tmp_path / "state"
    shutil.copytree(pki.root, state / "certs")
    keys = asyncio.run(make_keys(state / "secrets.json"))
    scorer_port, gateway_port = free_port(), free_port()
    routes = write_routes(state / "routes.toml", f"http://127.0.0.1:{scorer_port}")
    env = gateway_env(state, routes, write_access(state / "access.toml"), gateway_port)
    # As the pod sets it: the installed package holds no policies/ folder of its own.
    env["SCOREGATE_JWT_ISSUERS_FILE"] = str(ROOT / "policies" / "issuers.toml")
    env["PATH"] = "/usr/bin:/bin"
    scorer = installs["scorer-cpu"]
    serve = ["-m", "scorer", "serve", "--repository", str(model_repo), "--port", str(scorer_port)]
    processes.append(start([scorer.python, *serve], env, state / "scorer.log"))
    # The image's ENTRYPOINT and CMD: `scoregate serve`.
    processes.append(start([installs["gateway"].bin / "scoregate", "serve"], env, state / "gw.log"))
    base = f"https://localhost:{gateway_port}"
    verify = client_context(pki.ca_cert)
    wait_for(
        f"http://127.0.0.1:{scorer_port}/v2/health/ready", True, processes, state / "scorer.log"
    )
    wait_for(f"{base}/v2/health/ready", verify, processes, state / "gw.log")
    r = httpx.post(
        f"{base}/v1/models/iris:predict",
        json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
        headers={"api-key": keys.iris},
        verify=verify,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": ["setosa"]}


def test_the_gpu_scorer_serves_a_digit_from_its_own_install(
    installs: dict[str, Install],
    digits_repo: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    scorer = installs["scorer-gpu"]
    serve = ["-m", "scorer", "serve", "--repository", str(digits_repo), "--port", str(port)]
    processes.append(
        start(
            [scorer.python, *serve, "--runtime", "torch"],
            {"PATH": "/usr/bin:/bin"},
            tmp_path / "s.log",
        )
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/v2/health/ready", True, processes, tmp_path / "s.log")
    samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
    pngs = [s["png"] for s in samples]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(pngs)], "data": pngs}]}
    r = httpx.post(f"{base}/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    predicted = r.json()["outputs"][0]["data"]
    truth = [str(s["label"]) for s in samples]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= len(samples) - 1


# -- containers start as AKS starts them ----------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv needs root to become UID 10001")
def test_the_models_init_container_copies_as_uid_10001_twice_and_the_scorer_loads_them(
    installs: dict[str, Install],
    rendered: dict[str, Rendered],
    model_repo: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    scratch = world_readable_tmp()
    try:
        source = models_image(model_repo, scratch)
        volume = empty_dir_volume(scratch)
        command = init_container_command(rendered["production"], "scorer-cpu", source)
        command = [part.replace("{volume}", str(volume)) for part in command]
        for attempt in (1, 2):  # a restarted pod runs its init container again
            result = run(*as_pod_user(command), cwd=scratch)
            assert result.returncode == 0, (attempt, result.stderr[-2000:])
        for path in source.rglob("*"):
            copied = volume / path.relative_to(source)
            assert copied.is_dir() if path.is_dir() else copied.read_bytes() == path.read_bytes()
        # The scorer, as the pod runs it, loads every model from the volume (digests checked).
        port = free_port()
        scorer = installs["scorer-cpu"]
        serve = ["-m", "scorer", "serve", "--repository", str(volume), "--port", str(port)]
        (site,) = scorer.bin.parent.glob("lib/python3*/site-packages")
        log = scratch / "scorer.log"
        with log.open("wb") as fh:
            processes.append(
                subprocess.Popen(
                    as_pod_user([str(POD_PYTHON), *serve]),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    cwd=scratch,
                    # The scorer image's install, under the interpreter the pod user can run.
                    env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
                )
            )
        wait_for(f"http://127.0.0.1:{port}/v2/models/iris/ready", True, processes, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
