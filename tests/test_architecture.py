"""The architecture's contracts (pyproject.toml [tool.importlinter]) hold, and can fail.

`make lint` runs `lint-imports` too; this test also proves that a broken contract is
reported, by adding a forbidden import to a copy of the packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("gateway", "scorer", "serving", "certs")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def copy_of_the_packages(into: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_a_scorer_that_imports_the_gateway_breaks_its_contract(tmp_path: Path) -> None:
    tree = copy_of_the_packages(tmp_path)
    app = tree / "scorer" / "app.py"
    app.write_text(app.read_text() + "\nimport gateway.errors  # noqa: E402\n")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert "The scorer never imports the gateway BROKEN" in result.stdout


def test_a_second_importer_of_the_hypercorn_patch_breaks_its_fence(tmp_path: Path) -> None:
    tree = copy_of_the_packages(tmp_path)
    app = tree / "gateway" / "web" / "app.py"
    app.write_text(app.read_text() + "\nfrom serving.hazmat import hypercorn_h11  # noqa: E402\n")
    result = lint_imports(tree)
    assert result.returncode == 1
    assert "The Hypercorn patch is imported by the serving base's server alone BROKEN" in (
        result.stdout
    )
