"""Each image's install, made here as its Dockerfile makes it (no Docker engine here).

Each image's build stage is replayed in a virtual environment (`.venv-extras/<image>`):
the files its COPY lines take (less what its ignore file keeps out), its hash-pinned lock,
then the project alone. The dependencies of each venv are cached by a stamp (the lock, the
Dockerfile, the interpreter); the project itself is reinstalled on every session. Used by
tests/k8s/test_image_installs.py and by the rendered cluster (tests/k8s/cluster.py).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.k8s.conftest import K8S, ROOT, run
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
