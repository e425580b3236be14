"""The k8s/ tree rendered once per overlay, and the tools that check it.

Every tool is a real binary: kubectl (kustomize inside it), hadolint and shellcheck come
from wheels in the dev extras, checkov from its own venv (`make checkov`). A missing tool
fails the test with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "production")
NAMESPACE = "scoregate"
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def tool(name: str) -> Path:
    """A linter shipped in the dev extras, next to this interpreter."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {VENV_BIN}: run `make install`")
    return path


def run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


@dataclass
class Rendered:
    """One overlay as `kubectl kustomize` renders it."""

    overlay: str
    path: Path  # the rendered YAML, as checkov reads it
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name} in {self.overlay}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment")


def render(overlay_dir: Path) -> list[dict[str, Any]]:
    result = run(tool("kubectl"), "kustomize", overlay_dir)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("rendered")
    by_overlay = {}
    for overlay in OVERLAYS:
        docs = render(K8S / "overlays" / overlay)
        path = out / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        by_overlay[overlay] = Rendered(overlay, path, docs)
    return by_overlay


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]


# Each image's replayed install, shared by the image tests and the rendered cluster.
from tests.k8s.installs import installs  # noqa: E402, F401
