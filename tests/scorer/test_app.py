from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from quart import Quart

from scorer.app import create_app
from scorer.errors import ArtifactError
from scorer.repository import discover, read_model_settings
from scorer.server import load_models
from scorer.settings import ScorerSettings

ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]]


@pytest.fixture(scope="module")
def app(model_repo: Path) -> Quart:
    models = load_models(ScorerSettings(repository=model_repo))
    return create_app(models, max_body_bytes=4096)


async def test_v1_and_v2_predictions(app: Quart) -> None:
    client = app.test_client()
    r = await client.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert (r.status_code, await r.get_json()) == (200, {"predictions": ["setosa", "virginica"]})
    r = await client.post(
        "/v2/models/iris/infer",
        json={"inputs": [{"name": "m", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]},
    )
    body = await r.get_json()
    assert body["outputs"][0]["data"] == ["setosa"]
    assert "id" not in body


async def test_metadata_ready_and_health(app: Quart) -> None:
    client = app.test_client()
    meta = await (await client.get("/v2/models/iris")).get_json()
    # Every tensor metadata has its datatype and shape (Open Inference Protocol).
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    assert meta["inputs"] == [{"name": "measurements", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["parameters"] == {"max_batch": 64}
    assert (await (await client.get("/v2/models/iris/versions/1")).get_json()) == meta
    assert (await client.get("/v2/models/iris/versions/2")).status_code == 404
    assert (await client.get("/v2/models/iris/ready")).status_code == 200
    assert (await client.get("/v2/models/iris/versions/1/ready")).status_code == 200
    assert (await client.get("/v2/models/iris/versions/7/ready")).status_code == 404
    server = await (await client.get("/v2")).get_json()
    assert server["extensions"] == ["binary_tensor_data"]
    assert (await client.get("/v2/health/ready")).status_code == 200


async def test_errors_are_json_with_stable_codes(app: Quart) -> None:
    client = app.test_client()
    r = await client.post("/v1/models/nosuch:predict", json={"instances": ROWS})
    assert (r.status_code, (await r.get_json())["code"]) == (404, "model_not_found")
    r = await client.post(
        "/v1/models/iris:predict", data=b"{", headers={"content-type": "application/json"}
    )
    assert (r.status_code, (await r.get_json())["code"]) == (422, "invalid_input")
    r = await client.post("/v1/models/iris:predict", json={"instances": [[1.0] * 4] * 65})
    assert r.status_code == 413
    r = await client.post("/v1/models/iris:predict", data=b"[" + b"1," * 5000 + b"1]")
    assert (r.status_code, (await r.get_json())["code"]) == (413, "payload_too_large")
    r = await client.get("/v1/models/iris:predict")
    assert r.status_code == 405


def test_digest_mismatch_stops_the_scorer_with_a_clear_error(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "iris", repo / "iris")
    with (repo / "iris" / "model.skops").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=r"SHA-256 .* refusing to load"):
        load_models(ScorerSettings(repository=repo))


def test_settings_are_strict(model_repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "iris"
    shutil.copytree(model_repo / "iris", folder)
    settings = folder / "model-settings.toml"
    text = settings.read_text()
    settings.write_text(text + "\nverify_digest = false\n")
    with pytest.raises(ArtifactError, match="Extra inputs"):
        read_model_settings(folder)
    settings.write_text(text.replace('artifact = "model.skops"', 'artifact = "../../etc/passwd"'))
    with pytest.raises(ArtifactError, match="inside the model folder"):
        read_model_settings(folder)
    settings.write_text(text.replace('name = "iris"', 'name = "other"'))
    with pytest.raises(ArtifactError, match="differs from folder"):
        read_model_settings(folder)


def test_discover_serves_only_this_process_runtimes(model_repo: Path) -> None:
    assert [s.name for _, s in discover(model_repo, ("sklearn",))] == ["iris", "iris-copy"]
    assert discover(model_repo, ("torch",)) == []
    with pytest.raises(ArtifactError, match="does not exist"):
        discover(model_repo / "none", ("sklearn",))


async def test_a_streamed_body_over_the_limit_is_413_without_a_declared_length(
    app: Quart,
) -> None:
    client = app.test_client()
    async with client.request(
        "/v1/models/iris:predict", method="POST", headers={"content-type": "application/json"}
    ) as connection:
        for _ in range(5):  # 5 x 1000 bytes against a 4096-byte limit, no Content-Length
            await connection.send(b" " * 1000)
        await connection.send_complete()
    response = await connection.as_response()
    assert response.status_code == 413
    assert (await response.get_json())["code"] == "payload_too_large"


async def test_a_caller_that_leaves_gets_nothing_and_the_scorer_serves_on(app: Quart) -> None:
    client = app.test_client()
    async with client.request(
        "/v1/models/iris:predict", method="POST", headers={"content-type": "application/json"}
    ) as connection:
        await connection.send(b'{"instances": ')
        await connection.disconnect()
    assert connection.status_code is None  # no answer was started
    r = await client.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert r.status_code == 200


async def test_an_unexpected_error_is_a_generic_500(
    app: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scorer import dataplane

    def explode(*args: object) -> None:
        raise RuntimeError("/srv/models/secret-path")

    monkeypatch.setattr(dataplane, "encode_v1", explode)
    r = await app.test_client().post("/v1/models/iris:predict", json={"instances": ROWS})
    text = await r.get_data(as_text=True)
    assert r.status_code == 500 and "secret-path" not in text and "RuntimeError" not in text
    assert (await r.get_json())["code"] == "internal_error"
