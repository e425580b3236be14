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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from certs.authority import CertPaths
from serving.tls import client_context
from tests.conftest import free_port, gateway_env, make_keys, write_access, write_routes
from tests.k8s.conftest import K8S, ROOT, Rendered, run
from tests.k8s.test_images import instructions

IMAGES = K8S / "images"
# The first test also builds the three installs (two to three minutes from a cold cache).
pytestmark = pytest.mark.timeout(900)
EXTRAS_ROOT = ROOT / ".venv-extras"
# The torch wheel the GPU image's build resolves to a CUDA build; here, the CPU one (as
# `make install` does).
TORCH = "torch==2.13.0"
CHECK = r"""
import importlib, importlib.util, json, pkgutil, sys
packages, skip = sys.argv[1].split(","), set(sys.argv[2].split(",")) - {""}
imported, failed = [], {}
for name in packages:
    package = importlib.import_module(name)
    for found in pkgutil.walk_packages(package.__path__, name + "."):
        if found.name in skip or found.name.endswith(".__main__"):  # __main__ runs the CLI
            continue
        try:
            importlib.import_module(found.name)
            imported.append(found.name)
        except Exception as exc:
            failed[found.name] = repr(exc)
def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
absent = {n: not present(n) for n in sys.argv[3].split(",")}
print(json.dumps({"imported": imported, "failed": failed, "absent": absent}))
"""


@dataclass(frozen=True)
class Image:
    name: str
    packages: tuple[str, ...]  # what the image's Python code is
    skip: tuple[str, ...]  # modules of those packages for another image's runtime
    absent: tuple[str, ...]  # what must not be installed


IMAGES_UNDER_TEST = {
    image.name: image
    for image in (
        Image(
            "gateway",
            ("serving", "gateway", "certs"),
            (),
            ("sklearn", "numpy", "scipy", "torch", "skops", "scorer", "gateway.dev"),
        ),
        Image(
            "scorer-cpu",
            ("serving", "scorer"),
            # The torch runtime and image decoding belong to the GPU image.
            ("scorer.runtimes.pytorch", "scorer.images"),
            ("gateway", "certs", "torch", "PIL", "scorer.dev", "aiohttp", "jwt", "azure"),
        ),
        Image(
            "scorer-gpu",
            ("serving", "scorer"),
            ("scorer.runtimes.sklearn",),  # the scikit-learn runtime belongs to the CPU image
            ("gateway", "certs", "sklearn", "skops", "scorer.dev", "aiohttp", "jwt", "azure"),
        ),
    )
}


@dataclass(frozen=True)
class Install:
    image: Image
    bin: Path

    @property
    def python(self) -> Path:
        return self.bin / "python"


@dataclass(frozen=True)
class BuildStage:
    sources: list[str]  # what the COPY lines take from the repository
    lock: Path  # the hash-pinned requirements the stage installs first
    project: str  # what it installs after, without dependencies


def build_stage(dockerfile: Path) -> BuildStage:
    """The build stage's COPY sources, its lock and its project install."""
    steps = instructions(dockerfile)
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    stage = steps[froms[0] : froms[1]]
    copies = [args.split() for word, args in stage if word == "COPY" and "--from" not in args]
    sources = [source for parts in copies for source in parts[:-1]]
    (run_line,) = [args for word, args in stage if word == "RUN" and "pip install" in args]
    (lock_name,) = re.findall(r"pip install --no-cache-dir --require-hashes -r (\S+)", run_line)
    (lock,) = [parts[0] for parts in copies if parts[-1] in (lock_name, f"./{lock_name}")]
    (project,) = re.findall(r"pip install --no-cache-dir --no-deps (\S+)", run_line)
    return BuildStage(sources, ROOT / lock, project)


def ignored(image: str) -> list[str]:
    """The folders the image's ignore file keeps out of the build context."""
    text = (IMAGES / f"{image}.Dockerfile.dockerignore").read_text()
    return [
        line.rstrip("/")
        for line in text.splitlines()
        if line and line[0] not in "#!*" and line.endswith("/") and "*" not in line
    ]


def build_context(image: str, into: Path) -> BuildStage:
    """The build context as the image's Dockerfile sees it."""
    stage = build_stage(IMAGES / f"{image}.Dockerfile")
    left_out = {ROOT / path for path in ignored(image)}
    for source in stage.sources:
        origin = ROOT / source
        if origin.is_dir():

            def skip(folder: str, names: list[str]) -> list[str]:
                return [
                    n
                    for n in names
                    if n == "__pycache__" or n.endswith(".pyc") or Path(folder, n) in left_out
                ]

            shutil.copytree(origin, into / source, ignore=skip)
        else:
            (into / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, into / source)
    return stage


# The CUDA runtime that torch's PyPI build brings; the CPU build needs none of it.
CUDA_RUNTIME = re.compile(r"^(nvidia-|cuda-|triton==)")


def cpu_only(lock: Path, into: Path) -> Path:
    """The lock without the CUDA runtime's entries (each entry: a pin, its hashes, its
    comments), and without torch, which the CPU build already satisfies."""
    entries = re.split(r"\n(?=\S)", lock.read_text())
    kept = [e for e in entries if not CUDA_RUNTIME.match(e) and not e.startswith("torch==")]
    into.write_text("\n".join(kept))
    return into


def pip(venv_bin: Path, *args: str) -> None:
    result = run(venv_bin / "python", "-m", "pip", "install", "--quiet", *args)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Install]:
    """Each image's install, built (or refreshed) once per session."""
    made = {}
    for name, image in IMAGES_UNDER_TEST.items():
        context = tmp_path_factory.mktemp(f"context-{name}")
        stage = build_context(name, context)
        project = stage.project.replace(".", str(context), 1)
        venv = EXTRAS_ROOT / name
        stamp = hashlib.sha256(
            stage.lock.read_bytes()
            + (IMAGES / f"{name}.Dockerfile").read_bytes()
            + sys.version.encode()
        ).hexdigest()
        stamp_file = venv / ".stamp"
        if not stamp_file.exists() or stamp_file.read_text() != stamp:
            shutil.rmtree(venv, ignore_errors=True)
            result = run(sys.executable, "-m", "venv", venv)
            assert result.returncode == 0, result.stderr
            lock = stage.lock
            if name == "scorer-gpu":
                # torch's CPU build here, not the CUDA one the image's lock pins: the CUDA
                # runtime wheels it would add (several GB) are left out of the replay.
                pip(venv / "bin", TORCH)
                lock = cpu_only(stage.lock, context / "requirements-cpu.txt")
            pip(venv / "bin", "--require-hashes", "-r", str(lock))
            pip(venv / "bin", "--no-deps", project)
            stamp_file.write_text(stamp)
        else:  # the dependencies are current: refresh the project's own files only
            pip(venv / "bin", "--no-deps", "--force-reinstall", project)
        made[name] = Install(image, venv / "bin")
    return made


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
POD_UID = POD_GID = FS_GROUP = 10001
# The images' interpreter is their own /usr/local/bin/python; here, an interpreter the pod
# user may run (this machine's own Python lives under /root, closed to UID 10001).
POD_PYTHON = Path("/usr/bin/python3")


def as_pod_user(args: list[str]) -> list[str]:
    """The pod's security context: UID/GID 10001, the fsGroup as a supplementary group,
    no capabilities at all (`capabilities.drop: [ALL]`, no privilege escalation)."""
    return [
        "setpriv",
        f"--reuid={POD_UID}",
        f"--regid={POD_GID}",
        f"--groups={FS_GROUP}",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *args,
    ]


def world_readable_tmp() -> Path:
    """A scratch folder UID 10001 can reach (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="scoregate-pod-"))
    folder.chmod(0o755)
    return folder


def models_image(repository: Path, into: Path) -> Path:
    """/opt/models as models.Dockerfile lays it out: owned by root, files 0444, dirs 0555."""
    source = into / "opt-models"
    shutil.copytree(repository, source)
    for path in sorted(source.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    source.chmod(0o555)
    return source


def empty_dir_volume(into: Path) -> Path:
    """An emptyDir as the kubelet makes it for a pod with an fsGroup: root-owned, the
    fsGroup's group, mode 2777."""
    volume = into / "models-volume"
    volume.mkdir()
    os.chown(volume, 0, FS_GROUP)
    volume.chmod(0o2777)
    return volume


def init_container_command(rendered: Rendered, deployment: str, source: Path) -> list[str]:
    """The models init container's command as the rendered Deployment runs it: the image's
    ENTRYPOINT (models.Dockerfile) and the container's args, with the image's folder and
    the volume's mount path mapped to this machine's."""
    pod = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (entry,) = [a for w, a in instructions(IMAGES / "models.Dockerfile") if w == "ENTRYPOINT"]
    command = [*json.loads(entry), *init["args"]]
    (mount,) = init["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == FS_GROUP
    assert init["securityContext"]["runAsUser"] == POD_UID
    if command[0] == "python":
        command[0] = str(POD_PYTHON)
    return [
        part.replace("/opt/models", str(source)).replace(mount["mountPath"], "{volume}")
        for part in command
    ]


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
