"""Dependency bounds that match what the code relies on, checked on every run.

Three modules go beyond a library's public API: `serving/hazmat/hypercorn_h11.py` replaces
private methods of Hypercorn, `serving/hazmat/llhttp_h1.py` replaces Hypercorn's HTTP/1.1
protocol on httptools' llhttp (whose strictness it relies on), and
`gateway/ratelimit/memory.py` subclasses `limits`' storage internals. Each names the
releases it was checked against; pyproject.toml must admit exactly those, and the
installed release must be one of them. An upgrade fails here until the module is read
against the new release and its list updated.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.version import Version

from gateway.ratelimit.memory import CHECKED_LIMITS_SERIES
from serving.hazmat.hypercorn_h11 import PATCHED_VERSIONS
from serving.hazmat.llhttp_h1 import CHECKED_HTTPTOOLS_SERIES
from tests.conftest import ROOT


def requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    found = [Requirement(r) for r in declared if Requirement(r).name == name]
    assert len(found) == 1, f"{name} is declared {len(found)} times"
    return found[0]


def neighbours(release: str) -> list[str]:
    """The releases next to one: the patch before and after, the next minor and major."""
    v = Version(release)
    before = [f"{v.major}.{v.minor}.{v.micro - 1}"] if v.micro else []
    return [
        *before,
        f"{v.major}.{v.minor}.{v.micro + 1}",
        f"{v.major}.{v.minor + 1}.0",
        f"{v.major + 1}.0.0",
    ]


def test_hypercorn_is_pinned_to_the_releases_its_patch_was_checked_against() -> None:
    specifier = requirement("hypercorn").specifier
    for release in PATCHED_VERSIONS:
        assert specifier.contains(release)
        assert not any(
            specifier.contains(n) for n in neighbours(release) if n not in PATCHED_VERSIONS
        )
    assert version("hypercorn") in PATCHED_VERSIONS


def test_limits_is_bounded_to_the_series_its_storage_was_checked_against() -> None:
    specifier = requirement("limits").specifier
    major, minor = (int(part) for part in CHECKED_LIMITS_SERIES.split("."))
    assert specifier.contains(f"{major}.{minor}.0")
    assert specifier.contains(f"{major}.{minor}.9")
    for outside in (f"{major}.{minor + 1}.0", f"{major + 1}.0.0", f"{major}.{minor - 1}.9"):
        assert not specifier.contains(outside), outside
    assert specifier.contains(version("limits"))


def test_httptools_is_bounded_to_the_series_the_http1_protocol_was_checked_against() -> None:
    specifier = requirement("httptools").specifier
    major, minor = (int(part) for part in CHECKED_HTTPTOOLS_SERIES.split("."))
    assert specifier.contains(f"{major}.{minor}.0")
    assert specifier.contains(f"{major}.{minor}.9")
    for outside in (f"{major}.{minor + 1}.0", f"{major + 1}.0.0", f"{major}.{minor - 1}.9"):
        assert not specifier.contains(outside), outside
    assert specifier.contains(version("httptools"))
