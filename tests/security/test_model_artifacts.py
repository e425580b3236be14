"""Model artifacts (SECURITY-CATALOG.md): integrity before deserialisation, strict inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.errors import ArtifactError
from scorer.repository import read_model_settings
from tests.conftest import ROOT, Stack, free_port


def test_artifact_whose_digest_does_not_match_is_refused_at_load(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "iris", repo / "iris")
    artifact = repo / "iris" / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    artifact.write_bytes(bytes(data))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scorer",
            "serve",
            "--repository",
            str(repo),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "refusing to load" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("line", ['sha256 = ""', 'sha256 = "abc"', 'sha256 = "' + "A" * 64 + '"'])
def test_no_pickle_is_loaded_without_a_pinned_digest(
    model_repo: Path, tmp_path: Path, line: str
) -> None:
    folder = tmp_path / "iris"
    shutil.copytree(model_repo / "iris", folder)
    settings = folder / "model-settings.toml"
    text = "\n".join(
        line if row.startswith("sha256") else row for row in settings.read_text().splitlines()
    ).replace('format = "skops"', 'format = "joblib"')
    settings.write_text(text)
    with pytest.raises(ArtifactError, match="sha256"):
        read_model_settings(folder)
    settings.write_text("\n".join(r for r in text.splitlines() if not r.startswith("sha256")))
    with pytest.raises(ArtifactError, match="sha256"):
        read_model_settings(folder)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[NaN, 3.5, 1.4, 0.2]]}',
        b'{"instances": [[1e400, 3.5, 1.4, 0.2]]}',
        b'{"instances": [[5.1, 3.5, 1.4]]}',
        b'{"instances": [["5.1", 3.5, 1.4, 0.2]]}',
        b'{"instances": [[true, 3.5, 1.4, 0.2]]}',
        b'{"instances": [[[5.1], 3.5, 1.4, 0.2]]}',
        b'{"instances": [{"a": 1}]}',
        b'{"inputs": [{"name": "m", "shape": [1, 4], "datatype": "INT8", "data": [999, 1, 1, 1]}]}',
        b'{"inputs": [{"name": "m", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}',
    ],
)
def test_malformed_input_tensors_are_422_not_500(stack: Stack, body: bytes) -> None:
    path = "/v2/models/iris/infer" if b"inputs" in body else "/v1/models/iris:predict"
    with stack.client() as client:
        r = client.post(
            path,
            content=body,
            headers={"api-key": stack.keys.iris, "content-type": "application/json"},
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
