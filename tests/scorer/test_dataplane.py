from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from scorer import dataplane
from scorer.errors import InvalidInput, PayloadTooLarge
from scorer.repository import ModelSettings, TensorSpec

SETTINGS = ModelSettings(
    name="iris",
    runtime="sklearn",
    artifact="model.skops",
    sha256="0" * 64,
    max_batch=3,
    input=TensorSpec(name="m", datatype="FP64", shape=(-1, 4)),
)


def v2(data: Any, shape: Any = None, datatype: str = "FP64") -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "m",
                "shape": shape if shape is not None else [1, 4],
                "datatype": datatype,
                "data": data,
            }
        ]
    }


def test_v2_flat_and_nested_data_decode_to_the_same_array() -> None:
    flat = dataplane.decode_v2(v2([1, 2, 3, 4, 5, 6, 7, 8], [2, 4]), SETTINGS)
    nested = dataplane.decode_v2(v2([[1, 2, 3, 4], [5, 6, 7, 8]], [2, 4], "INT32"), SETTINGS)
    assert flat.dtype == np.float64
    np.testing.assert_array_equal(flat, nested)
    assert flat.shape == (2, 4)


def test_v1_instances_decode() -> None:
    array = dataplane.decode_v1({"instances": [[1.5, 2, 3, 4]]}, SETTINGS)
    assert array.tolist() == [[1.5, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"inputs": []}, "exactly one"),
        ({"inputs": [1]}, "object"),
        (v2([1, 2, 3, 4], [1, "4"]), "shape"),
        (v2([1, 2, 3, 4], [1, -4]), "shape"),
        (v2([1, 2, 3, 4], [4]), "dimensions"),
        (v2([1, 2, 3], [1, 4]), "elements"),
        (v2([1, 2, 3, 4, 5], [1, 5]), "dimension 1 must be 4"),
        (v2(["a", 2, 3, 4]), "numbers"),
        (v2([True, False, True, False]), "numbers"),
        (v2([True, 2.5, 3, 4]), "numbers"),
        (v2([[1, 2, 3, False]], [1, 4]), "numbers"),
        # Ragged with the right count (a wrong count is refused before conversion).
        (v2([[1, 2, 3], [4, 5, 6, 7, 8]], [2, 4]), "ragged"),
        (v2([1, 2, 3, 4], datatype="BYTES"), "BYTES"),
        (v2([1, 2, 3, 4], datatype="FP99"), "unknown datatype"),
        (v2([1.5, 2, 3, 4], datatype="INT64"), "integer"),
        (v2([1000, 2, 3, 4], datatype="INT8"), "out of range"),
        (v2([1e10, 2, 3, 4], datatype="FP16"), "out of range"),
        (v2([{"a": 1}, 2, 3, 4]), "numbers"),
        (v2([10**400, 2, 3, 4]), "numbers"),
        (v2([], [0, 4]), "empty"),
        ({"inputs": [{"shape": [1, 4], "datatype": "FP64", "data": "1,2,3,4"}]}, "'data'"),
    ],
)
def test_v2_malformed_input_is_invalid(body: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dataplane.decode_v2(body, SETTINGS)


def test_nan_and_infinity_are_refused_unless_allowed() -> None:
    with pytest.raises(InvalidInput, match="NaN"):
        dataplane.decode_v1({"instances": [[float("nan"), 1, 2, 3]]}, SETTINGS)
    with pytest.raises(InvalidInput, match="NaN"):
        dataplane.decode_v1({"instances": [[float("inf"), 1, 2, 3]]}, SETTINGS)
    lenient = SETTINGS.model_copy(update={"input": TensorSpec(shape=(-1, 4), allow_nan=True)})
    assert np.isnan(dataplane.decode_v1({"instances": [[float("nan"), 1, 2, 3]]}, lenient)[0, 0])
    # Infinities never reach a model, even one that takes NaN: scikit-learn's checks, which
    # the runtime leaves to this one, would refuse them too.
    with pytest.raises(InvalidInput, match="infinite"):
        dataplane.decode_v1({"instances": [[float("-inf"), 1, 2, 3]]}, lenient)
    binary = memoryview(np.array([[1, 2, float("inf"), 4]], "<f8").tobytes())
    tensor = {"shape": [1, 4], "datatype": "FP64", "parameters": {"binary_data_size": 32}}
    with pytest.raises(InvalidInput, match="infinite"):
        dataplane.decode_v2({"inputs": [tensor]}, lenient, [binary])


def test_batch_over_the_maximum_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        dataplane.decode_v1({"instances": [[1, 2, 3, 4]] * 4}, SETTINGS)
    with pytest.raises(PayloadTooLarge):
        dataplane.decode_v2(v2([0] * 16, [4, 4]), SETTINGS)


def test_encode_v2_and_v1() -> None:
    outputs = {
        "predict": np.array(["setosa", "virginica"]),
        "predict_proba": np.array([[0.9, 0.1], [0.2, 0.8]]),
    }
    encoded, parts = dataplane.encode_v2(outputs, SETTINGS, "r1")
    assert parts == []
    assert encoded["id"] == "r1"
    assert encoded["outputs"][0] == {
        "name": "predict",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["setosa", "virginica"],
    }
    assert encoded["outputs"][1]["datatype"] == "FP64"
    assert orjson.loads(dataplane.dumps(encoded))["outputs"][1]["data"] == [0.9, 0.1, 0.2, 0.8]
    assert dataplane.dumps(dataplane.encode_v1({"predict": np.array([1, 0])})) == (
        b'{"predictions":[1,0]}'
    )


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "float16", "int64", "int32", "uint8", "bool", ">f8", "<U9"]
)
def test_json_outputs_are_written_as_tolist_would_write_them(dtype: str) -> None:
    """Arrays that orjson writes itself come out byte for byte as their Python lists did."""
    rng = np.random.default_rng(7)
    values = rng.normal(scale=1e3, size=(5, 3))
    if dtype == "<U9":
        values = values.round().astype(int).astype(str)
    array = values.astype(dtype)[:, ::2]  # not contiguous either
    encoded = dataplane.dumps(dataplane.encode_v2({"out": array}, SETTINGS, None)[0])
    assert orjson.loads(encoded)["outputs"][0]["data"] == array.reshape(-1).tolist()
    tensor = orjson.dumps({"data": array.reshape(-1).tolist()})
    assert tensor[1:-1] in encoded
    assert dataplane.dumps(dataplane.encode_v1({"predict": array[:, 0]})) == orjson.dumps(
        {"predictions": array[:, 0].tolist()}
    )


def test_requested_outputs_default_to_the_first_and_are_checked() -> None:
    available = ("predict", "predict_proba")
    none: frozenset[str] = frozenset()
    assert dataplane.requested_outputs({}, available) == (("predict",), none)
    assert dataplane.requested_outputs({"outputs": [{"name": "predict_proba"}]}, available) == (
        ("predict_proba",),
        none,
    )
    both = {"outputs": [{"name": "predict"}, {"name": "predict_proba"}, {"name": "predict"}]}
    assert dataplane.requested_outputs(both, available) == (available, none)
    # Binary outputs: the request's default, overridden per output.
    mixed = {
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "predict"},
            {"name": "predict_proba", "parameters": {"binary_data": False}},
        ],
    }
    assert dataplane.requested_outputs(mixed, available) == (available, frozenset({"predict"}))
    with pytest.raises(InvalidInput, match="true or false"):
        dataplane.requested_outputs({"parameters": {"binary_data_output": 1}}, available)
    for bad in ([], "predict", [{"name": "decision_function"}], [1]):
        with pytest.raises(InvalidInput):
            dataplane.requested_outputs({"outputs": bad}, available)


def test_non_finite_model_output_is_refused_as_input_it_cannot_score() -> None:
    dataplane.check_outputs({"predict": np.array(["a"]), "p": np.array([[0.5, 0.5]])})
    with pytest.raises(InvalidInput, match="not finite"):
        dataplane.check_outputs({"predict_proba": np.array([[np.nan, np.nan]])})


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy conversion fails the test: what is refused must be refused before it."""

    def converted(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted before its size was checked")

    monkeypatch.setattr(dataplane.np, "asarray", converted)


@pytest.mark.usefixtures("no_conversion")
@pytest.mark.parametrize(
    "tensor",
    [
        {"shape": [1, 4], "data": [0.0] * 500_000},  # data beyond its shape
        {"shape": [1, 500_000], "data": [0.0] * 500_000},  # a row wider than the model's
        {"shape": [2, 4], "data": [[0.0] * 4, [0.0] * 400]},  # nested, one row too wide
    ],
    ids=["data-beyond-shape", "row-too-wide", "nested-row-too-wide"],
)
def test_v2_tensors_are_refused_by_size_before_they_are_converted(tensor: dict[str, Any]) -> None:
    """OWASP API4: before, `np.asarray` (and the bool scan) ran over all of `data` on the
    event loop, about 150 ms per MiB, and only then was the shape compared."""
    body = {"inputs": [{"name": "x", "datatype": "FP64", **tensor}]}
    with pytest.raises(InvalidInput):
        dataplane.decode_v2(body, SETTINGS)


@pytest.mark.usefixtures("no_conversion")
def test_v1_instances_wider_than_the_model_are_refused_before_conversion() -> None:
    with pytest.raises(InvalidInput, match="4 elements"):
        dataplane.decode_v1({"instances": [[0.0] * 4, [0.0] * 500_000]}, SETTINGS)


async def test_a_large_body_is_converted_off_the_event_loop() -> None:
    import threading

    from scorer import fastpath

    seen: list[int] = []

    def decode(body: Any, settings: ModelSettings) -> Any:
        seen.append(threading.get_ident())
        return np.zeros((1, 4))

    await fastpath._decoded(decode, {}, SETTINGS, 1024)
    await fastpath._decoded(decode, {}, SETTINGS, fastpath.INLINE_DECODE_BYTES + 1)
    assert seen[0] == threading.get_ident()  # small: inline, no thread hand-off
    assert seen[1] != threading.get_ident()  # large: in a worker thread
