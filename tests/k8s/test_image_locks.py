"""The images' locks (k8s/images/requirements/, `make lock`) hold what pyproject.toml asks.

Each image installs its extra from a lock first (every package at one version, every
file by its SHA-256: `pip install --require-hashes`), then the project without
dependencies. A lock that falls behind pyproject.toml (a new dependency, a moved bound)
fails here, for the image's Python (3.12 on Linux) and for the suite's own (which
tests/k8s/test_image_installs.py installs the lock into).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.k8s.conftest import K8S, ROOT

LOCKS = K8S / "images" / "requirements"
EXTRA_OF = {"gateway": "gateway", "scorer-cpu": "scorer", "scorer-gpu": "torch"}
IMAGE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.10"}
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]


def pins(extra: str) -> list[Pin]:
    text = (LOCKS / f"{extra}.txt").read_text()
    found = []
    for entry in re.split(r"\n(?=\S)", text.strip()):
        head = entry.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        found.append(
            Pin(Requirement(head), tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)))
        )
    return found


def environments() -> dict[str, dict[str, str]]:
    suite = default_environment()
    return {"image": {**suite, **LINUX, **IMAGE_PYTHON}, "suite": {**suite}}


def required(extra: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][extra]]
    ]


@pytest.mark.parametrize("image", sorted(EXTRA_OF))
@pytest.mark.parametrize("where", ["image", "suite"])
def test_each_lock_pins_every_requirement_of_its_extra_within_its_bounds(
    image: str, where: str
) -> None:
    env = environments()[where]
    locked = {
        canonicalize_name(p.requirement.name): next(iter(p.requirement.specifier)).version
        for p in pins(EXTRA_OF[image])
        if p.requirement.marker is None or p.requirement.marker.evaluate(env)
    }
    for requirement in required(EXTRA_OF[image]):
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in the {image} lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name} {locked[name]} is outside {requirement.specifier}: run `make lock`"
        )


@pytest.mark.parametrize("image", sorted(EXTRA_OF))
def test_every_pin_is_exact_and_hashed(image: str) -> None:
    found = pins(EXTRA_OF[image])
    assert found
    for pin in found:
        (specifier,) = pin.requirement.specifier
        assert specifier.operator == "==", pin.requirement
        assert pin.hashes, f"{pin.requirement} has no hash"


def test_the_gpu_image_locks_the_torch_the_suite_runs() -> None:
    (torch,) = re.findall(r"^TORCH\s*\?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert (LOCKS / "constraints.txt").read_text().strip() == torch
    (pin,) = [p for p in pins("torch") if p.requirement.name == "torch"]
    assert str(pin.requirement.specifier) == torch.removeprefix("torch")
