"""Model artifacts (SECURITY-CATALOG.md): integrity before deserialisation, strict inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.errors import ArtifactError
from scorer.repository import read_model_settings
from tests.conftest import ROOT, Stack, free_port


def scorer_serve(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m scorer serve` on ``repository``, as an operator starts it (it should refuse)."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "scorer", "serve", "--repository", str(repository)),
            *(*args, "--port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_artifact_whose_digest_does_not_match_is_refused_at_load(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "iris", repo / "iris")
    artifact = repo / "iris" / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    artifact.write_bytes(bytes(data))
    out = scorer_serve(repo)
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
    assert r.json()["code"] == "invalid_request"


def _digits_copy(digits_repo: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "digits"
    shutil.copytree(digits_repo / "digits", folder)
    return folder


def test_torch_artifact_whose_digest_does_not_match_is_refused_at_load(
    digits_repo: Path, tmp_path: Path
) -> None:
    folder = _digits_copy(digits_repo, tmp_path)
    artifact = folder / "model.pt2"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    out = scorer_serve(folder.parent, "--runtime", "torch")
    assert out.returncode == 2
    assert "refusing to load" in out.stderr and "model.pt2" in out.stderr
    assert "Traceback" not in out.stderr


# A pickle that, when loaded by a full unpickler, creates the file named by MARKER.
_PAYLOAD = """
import pathlib, pickle, sys
class Touch:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(sys.argv[1]),))
sys.stdout.buffer.write(pickle.dumps({"args": Touch()}))
"""


def _archive_with_pickled_code(source: Path, target: Path, marker: Path) -> None:
    """The torch.export archive with its sample inputs replaced by a code-running pickle."""
    import zipfile

    payload = subprocess.run(
        [sys.executable, "-c", _PAYLOAD, str(marker)], capture_output=True, check=True
    ).stdout
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                data = payload
            dst.writestr(item, data)


def test_torch_archive_with_pickled_code_is_refused_even_with_a_pinned_digest(
    digits_repo: Path, tmp_path: Path
) -> None:
    """CWE-502: torch.export.load falls back to a full unpickle; the scorer forbids it."""
    from scorer.hazmat import file_sha256
    from scorer.runtime import load_runtime

    folder = _digits_copy(digits_repo, tmp_path)
    marker = tmp_path / "pwned"
    _archive_with_pickled_code(digits_repo / "digits" / "model.pt2", folder / "model.pt2", marker)
    settings_file = folder / "model-settings.toml"
    old = read_model_settings(folder).sha256
    settings_file.write_text(
        settings_file.read_text().replace(old, file_sha256(folder / "model.pt2"))
    )
    with pytest.raises(ArtifactError, match=r"not a loadable torch\.export program"):
        load_runtime(folder, read_model_settings(folder))
    assert not marker.exists()

    # The attack is real: plain torch.export.load, in a fresh process, runs the code.
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch; torch.export.load(sys.argv[1])",
            str(folder / "model.pt2"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")},
    )
    assert marker.exists(), plain.stderr[-2000:]
