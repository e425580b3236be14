"""SECURITY-CATALOG, Kubernetes: checkov finds nothing on k8s/, each skip justified.

checkov runs once, on every rendered overlay and every Dockerfile, from its own venv
(`make checkov`). Every check of the kubernetes and dockerfile frameworks runs; the only
waiver is CKV_K8S_43 (images by digest) on the development overlays, written as an
annotation with its reason by k8s/components/dev-images, and absent from production.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import CHECKOV, K8S, OVERLAYS, Rendered, run

DOCKERFILES = sorted((K8S / "images").glob("*.Dockerfile"))
WAIVED = {
    "cpu": {"CKV_K8S_43"},
    "gpu": {"CKV_K8S_43"},
    "production": set(),
}
WAIVER_REASON = "development overlays deploy by tag; production pins digests"


@pytest.fixture(scope="session")
def checkov(rendered: dict[str, Rendered]) -> dict[str, dict[str, Any]]:
    """checkov's results per scanned file (overlay name or Dockerfile name)."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make checkov`")
    out_dir = rendered["cpu"].path.parent
    files = [f"{o}.yaml" for o in OVERLAYS] + [str(d) for d in DOCKERFILES]
    result = run(
        CHECKOV,
        *[arg for f in files for arg in ("-f", f)],
        "--framework",
        "kubernetes",
        "dockerfile",
        "--output",
        "json",
        # Nothing from the network: no guidelines, no policy downloads (offline CI).
        "--skip-download",
        cwd=out_dir,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed
    reports = json.loads(result.stdout)
    by_file: dict[str, dict[str, Any]] = {}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        for outcome in ("passed_checks", "failed_checks", "skipped_checks"):
            for check in report["results"][outcome]:
                name = Path(check["file_path"]).name.removesuffix(".yaml")
                entry = by_file.setdefault(name, {"passed": [], "failed": [], "skipped": []})
                entry[outcome.removesuffix("_checks")].append(check)
    return by_file


def failures(results: dict[str, Any]) -> str:
    return "\n".join(
        f"  {c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed"]
    )


@pytest.mark.parametrize("overlay_name", OVERLAYS)
def test_checkov_finds_nothing_on_the_rendered_overlay(
    checkov: dict[str, dict[str, Any]], rendered: dict[str, Rendered], overlay_name: str
) -> None:
    results = checkov[overlay_name]
    assert not results["failed"], f"checkov on {overlay_name}:\n{failures(results)}"
    # It really looked: every object was checked, workloads by many checks each.
    checked = {c["resource"] for c in results["passed"]}
    for doc in rendered[overlay_name].docs:
        if doc["kind"] in {"Deployment", "CronJob", "Service", "ServiceAccount", "Role"}:
            assert f"{doc['kind']}.scoregate.{doc['metadata']['name']}" in checked
    assert len(results["passed"]) > 100


@pytest.mark.parametrize("overlay_name", OVERLAYS)
def test_each_checkov_skip_is_the_documented_waiver(
    checkov: dict[str, dict[str, Any]], rendered: dict[str, Rendered], overlay_name: str
) -> None:
    skipped = checkov[overlay_name]["skipped"]
    assert {c["check_id"] for c in skipped} == WAIVED[overlay_name]
    for check in skipped:
        assert check["check_result"]["suppress_comment"] == WAIVER_REASON
    if WAIVED[overlay_name]:
        # One waiver per workload, each on a Deployment or CronJob whose images go by tag.
        workloads = {
            f"{d['kind']}.scoregate.{d['metadata']['name']}"
            for d in rendered[overlay_name].docs
            if d["kind"] in {"Deployment", "CronJob"}
        }
        assert {c["resource"] for c in skipped} == workloads


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_checkov_finds_nothing_on_the_dockerfiles(
    checkov: dict[str, dict[str, Any]], dockerfile: Path
) -> None:
    results = checkov[dockerfile.name]
    assert not results["failed"], f"checkov on {dockerfile.name}:\n{failures(results)}"
    assert not results["skipped"]
    assert results["passed"]


def test_checkov_fails_an_insecure_pod(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """The scan is real: the same checkov flags a root, writable, privileged copy."""
    deployment = copy.deepcopy(rendered["production"].get("Deployment", "gateway"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "readOnlyRootFilesystem": False}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = run(
        CHECKOV,
        "-f",
        bad.name,
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--skip-download",
        "--check",
        "CKV_K8S_16,CKV_K8S_22",
        cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert {c["check_id"] for c in report["results"]["failed_checks"]} == {
        "CKV_K8S_16",  # privileged
        "CKV_K8S_22",  # writable root filesystem
    }
