"""The binary tensor data extension at the scorer: inputs decoded from the bytes after the
JSON header, outputs sent back in binary when asked, and every framing fault a 422."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from quart import Quart

from scorer.app import create_app
from scorer.server import load_models
from scorer.settings import ScorerSettings
from tests.binary_framing import bytes_tensor, outputs, request

ROWS = np.asarray([[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]])


@pytest.fixture(scope="module")
def app(model_repo: Path) -> Quart:
    return create_app(load_models(ScorerSettings(repository=model_repo)), max_body_bytes=1 << 20)


async def test_binary_fp32_input_scores_like_json(app: Quart) -> None:
    client = app.test_client()
    tensor = {"name": "measurements", "shape": [2, 4], "datatype": "FP32"}
    body, headers = request([(tensor, ROWS.astype("<f4").tobytes())])
    r = await client.post("/v2/models/iris/infer", data=body, headers=headers)
    assert r.status_code == 200, await r.get_data()
    assert (await r.get_json())["outputs"][0]["data"] == ["setosa", "virginica"]


async def test_binary_outputs_when_asked(app: Quart) -> None:
    client = app.test_client()
    tensor = {"name": "measurements", "shape": [2, 4], "datatype": "FP64"}
    body, headers = request(
        [(tensor, ROWS.astype("<f8").tobytes())],
        outputs=[
            {"name": "predict_proba", "parameters": {"binary_data": True}},
            {"name": "predict", "parameters": {"binary_data": True}},
        ],
    )
    r = await client.post("/v2/models/iris/infer", data=body, headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    raw = await r.get_data()
    response, parts = outputs(raw, int(r.headers["inference-header-content-length"]))
    proba = np.frombuffer(parts["predict_proba"], dtype="<f8").reshape(2, 3)
    assert proba.argmax(axis=1).tolist() == [0, 2]
    assert np.allclose(proba.sum(axis=1), 1.0)
    # BYTES in binary: a 4-byte little-endian length before each element.
    assert parts["predict"] == bytes_tensor([b"setosa", b"virginica"])
    assert [o["datatype"] for o in response["outputs"]] == ["FP64", "BYTES"]


async def test_binary_data_output_applies_to_the_default_output(app: Quart) -> None:
    client = app.test_client()
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "m", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0].tolist()}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    r = await client.post("/v2/models/iris/infer", data=body)
    size = int(r.headers["inference-header-content-length"])
    response, parts = outputs(await r.get_data(), size)
    assert parts == {"predict": bytes_tensor([b"setosa"])}
    assert "data" not in response["outputs"][0]


@pytest.mark.parametrize(
    ("tensors", "header", "message"),
    [
        # Fewer bytes than the shape needs, and bytes that belong to no tensor.
        ([({"shape": [2, 4], "datatype": "FP32"}, b"\0" * 28)], None, "needs 32"),
        ([({"shape": [1, 4], "datatype": "FP32"}, b"\0" * 16)], "extra", "belong to no tensor"),
        # The header's length must be digits within the body.
        ([({"shape": [1, 4], "datatype": "FP32"}, b"\0" * 16)], "-1", "decimal byte count"),
        ([({"shape": [1, 4], "datatype": "FP32"}, b"\0" * 16)], "99999", "the body has"),
        # A NaN in binary is refused like one in JSON.
        (
            [({"shape": [1, 4], "datatype": "FP32"}, np.full(4, np.nan, "<f4").tobytes())],
            None,
            "NaN",
        ),
        ([({"shape": [1, 4], "datatype": "BYTES"}, bytes_tensor([b"a"] * 4))], None, "BYTES"),
        ([({"shape": [1, 4], "datatype": "BF16"}, b"\0" * 8)], None, "unknown datatype"),
    ],
)
async def test_binary_framing_faults_are_422(
    app: Quart, tensors: list[tuple[dict[str, Any], bytes]], header: str | None, message: str
) -> None:
    client = app.test_client()
    body, headers = request([({"name": "m", **t}, raw) for t, raw in tensors])
    if header == "extra":
        body += b"\0"
    elif header is not None:
        headers["inference-header-content-length"] = header
    r = await client.post("/v2/models/iris/infer", data=body, headers=headers)
    assert r.status_code == 422, await r.get_data()
    assert message in (await r.get_json())["error"]


async def test_a_tensor_with_data_and_binary_size_is_refused(app: Quart) -> None:
    client = app.test_client()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "m",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "data": [1, 2, 3, 4],
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    )
    r = await client.post(
        "/v2/models/iris/infer",
        data=header + b"\0" * 32,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert r.status_code == 422
    assert "both" in (await r.get_json())["error"]


async def test_the_classification_extension_is_refused_not_ignored(app: Quart) -> None:
    client = app.test_client()
    r = await client.post(
        "/v2/models/iris/infer",
        json={
            "inputs": [{"name": "m", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "predict_proba", "parameters": {"classification": 2}}],
        },
    )
    assert r.status_code == 422
    assert "classification" in (await r.get_json())["error"]


async def test_a_versioned_infer_path_serves_the_models_version_only(app: Quart) -> None:
    client = app.test_client()
    request = {"inputs": [{"name": "m", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    assert (await client.post("/v2/models/iris/versions/1/infer", json=request)).status_code == 200
    r = await client.post("/v2/models/iris/versions/9/infer", json=request)
    assert (r.status_code, (await r.get_json())["code"]) == (404, "version_not_found")


@pytest.mark.parametrize("datatype", ["UINT8", "INT16", "UINT32", "FP16", "INT64"])
def test_integer_and_half_datatypes_widen_to_the_models_float(
    app: Quart, datatype: str, model_repo: Path
) -> None:
    from scorer import dataplane
    from scorer.repository import read_model_settings

    settings = read_model_settings(model_repo / "iris")
    dtype = np.dtype(dataplane.NUMPY_DTYPES[datatype]).newbyteorder("<")
    values = np.asarray([[5, 3, 1, 0]], dtype=dtype)
    tensor = {"name": "m", "shape": [1, 4], "datatype": datatype}
    array = dataplane.decode_v2({"inputs": [tensor]}, settings, [memoryview(values.tobytes())])
    assert array.dtype == np.float64
    assert array.tolist() == [[5.0, 3.0, 1.0, 0.0]]


def test_a_binary_input_of_the_models_datatype_is_not_copied(model_repo: Path) -> None:
    from scorer import dataplane
    from scorer.repository import read_model_settings

    settings = read_model_settings(model_repo / "iris")
    raw = ROWS.astype("<f8").tobytes()
    tensor = {"name": "m", "shape": [2, 4], "datatype": "FP64"}
    array = dataplane.decode_v2({"inputs": [tensor]}, settings, [memoryview(raw)])
    assert np.shares_memory(array, np.frombuffer(raw, dtype="<f8"))
    assert array.tolist() == ROWS.tolist()
