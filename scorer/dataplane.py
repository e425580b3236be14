"""Open Inference Protocol (KServe v2) and v1 ``instances`` payloads ⇄ numpy arrays.

Pure functions, no I/O: the REST layer hands in parsed JSON (and, with the binary tensor
data extension, the views of each tensor's bytes: `serving.binary`) and gets arrays or a
typed error back. Validation follows the model's input spec (shape, datatype, batch size,
finite values), so malformed input is a 422 and never reaches the model (OWASP API8).
Binary inputs become arrays over the request's own bytes where the datatype is the
model's (no copy); outputs go back in binary when the request asks for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from scorer.errors import InvalidInput, PayloadTooLarge
from scorer.repository import ModelSettings, TensorSpec
from serving.binary import BinaryFormatError, bytes_elements, check_size, encode_bytes
from serving.tensors import count_leaves

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# Datatypes a client may send for a model whose input is float: ints widen losslessly.
_NUMERIC = {
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
}
_INTEGER = ("INT", "UINT")


def _has_bool(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif item is True or item is False:
            return True
    return False


def _batch_checked(array: np.ndarray[Any, Any], spec: TensorSpec, settings: ModelSettings) -> None:
    """What every batch passes before a model sees it, whatever it was sent as; the
    runtimes rely on it and skip their own checks of it (`scorer.runtimes.sklearn`): the
    model's shape and batch limit, and finite values (NaN only where the model's settings
    allow it, infinities never, as scikit-learn's ``allow-nan`` checks have it)."""
    if array.ndim != len(spec.shape):
        raise InvalidInput(f"input must have {len(spec.shape)} dimensions, got {array.ndim}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want != -1 and want != got:
            raise InvalidInput(f"input dimension {axis} must be {want}, got {got}")
    if array.shape[0] == 0:
        raise InvalidInput("the batch is empty")
    if array.shape[0] > settings.max_batch:
        raise PayloadTooLarge(
            f"batch of {array.shape[0]} exceeds this model's maximum of {settings.max_batch}"
        )
    if array.dtype.kind == "f":
        if not spec.allow_nan and not np.isfinite(array).all():
            raise InvalidInput("input contains NaN or infinite values")
        if spec.allow_nan and np.isinf(array).any():
            raise InvalidInput("input contains infinite values")


def _fixed_dimensions(shape: list[int], spec: TensorSpec) -> None:
    for axis, (want, got) in enumerate(zip(spec.shape[1:], shape[1:], strict=False), start=1):
        if want != -1 and want != got:
            raise InvalidInput(f"dimension {axis} must be {want}, got {got}")


def _sized(shape: list[int], data: list[Any], spec: TensorSpec, settings: ModelSettings) -> None:
    """Refuse by size before converting (OWASP API4): the shape against the model's fixed
    dimensions, and the data's element count against the shape, so half a million numbers
    under a one-row shape never reach numpy on the event loop."""
    _fixed_dimensions(shape, spec)
    declared = math.prod(shape)
    carried = count_leaves(data, declared)
    if carried != declared:
        raise InvalidInput(f"'data' has {carried} elements, 'shape' {shape} needs {declared}")


def _check_datatype(datatype: str, spec: TensorSpec) -> None:
    if spec.datatype == "BYTES" or datatype == "BYTES":
        raise InvalidInput("BYTES inputs are not supported by this model")
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"unknown datatype {datatype!r}")
    compatible = datatype == spec.datatype or (
        datatype in _NUMERIC and spec.datatype.startswith("FP")
    )
    if not compatible:
        raise InvalidInput(f"datatype must be {spec.datatype}, got {datatype}")


def _cast(raw: np.ndarray[Any, Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    """The array in the model's datatype: the same array when it already is (no copy)."""
    dtype = NUMPY_DTYPES[spec.datatype]
    if raw.dtype == dtype:
        return raw
    try:
        with np.errstate(over="raise", invalid="raise"):
            return raw.astype(dtype, casting="unsafe", copy=False)
    except FloatingPointError:
        raise InvalidInput("input value out of range for the datatype") from None


def _from_binary(
    chunk: memoryview, datatype: str, shape: list[int], spec: TensorSpec
) -> np.ndarray[Any, Any]:
    """A binary tensor as an array over the request's bytes: little-endian, row major
    (serving.binary); copied only when the model's datatype differs."""
    _check_datatype(datatype, spec)
    try:
        check_size(datatype, shape, chunk)
    except BinaryFormatError as exc:
        raise InvalidInput(str(exc)) from None
    if datatype == "BOOL":
        octets = np.frombuffer(chunk, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise InvalidInput("a BOOL element is one byte, 0 or 1")
        raw = octets.view(np.bool_)
    else:
        raw = np.frombuffer(chunk, dtype=np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<"))
    return _cast(raw.reshape(shape), spec)


def _to_array(data: Any, datatype: str, spec: TensorSpec) -> np.ndarray[Any, Any]:
    _check_datatype(datatype, spec)
    try:
        # Elements must be numbers (or bools for BOOL): strings and objects are refused,
        # never coerced, so "1e309" or {"a": 1} cannot sneak through.
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput("input data is ragged or not numeric") from None
    if raw.dtype.kind not in "biuf" or (raw.dtype.kind == "b" and datatype != "BOOL"):
        raise InvalidInput("input data must be numbers")
    if datatype != "BOOL" and _has_bool(data):
        # numpy would quietly turn `true` into 1.0 next to numbers: a type error, refused.
        raise InvalidInput("input data must be numbers")
    if raw.dtype.kind == "f" and datatype.startswith(_INTEGER):
        raise InvalidInput(f"datatype {datatype} needs integer data")
    if raw.size and datatype.startswith(_INTEGER):
        ibounds = np.iinfo(np.dtype(NUMPY_DTYPES[datatype]))
        if raw.min() < ibounds.min or raw.max() > ibounds.max:
            raise InvalidInput(f"input value out of range for {datatype}")
    if raw.size and datatype in {"FP16", "FP32"} and raw.dtype.kind == "f":
        fbounds = np.finfo(np.dtype(NUMPY_DTYPES[datatype]))
        if np.nanmax(np.abs(raw)) > fbounds.max:
            raise InvalidInput(f"input value out of range for {datatype}")
    return _cast(raw, spec)


def decode_v2(
    body: Any, settings: ModelSettings, binary: list[memoryview | None] | None = None
) -> np.ndarray[Any, Any]:
    """The model's input array from a v2 ``InferenceRequest``; ``binary`` holds each
    input's bytes when it travels in binary (`serving.binary.chunks`)."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput("'inputs' must be a list with exactly one tensor")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object")
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput("'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str):
        raise InvalidInput("'datatype' must be a string")
    chunk = binary[0] if binary else None
    if chunk is None and not isinstance(data, list):
        raise InvalidInput("'data' must be a list")
    spec = settings.input
    if datatype == "BYTES" and settings.image is not None:
        if chunk is not None:
            return _binary_images(shape, chunk, settings)
        assert isinstance(data, list)  # noqa: S101 - checked above; narrows the type
        return _images_v2(shape, data, settings)
    if len(shape) != len(spec.shape):
        raise InvalidInput(f"'shape' must have {len(spec.shape)} dimensions, got {len(shape)}")
    if shape[0] > settings.max_batch:
        raise PayloadTooLarge(
            f"batch of {shape[0]} exceeds this model's maximum of {settings.max_batch}"
        )
    if chunk is not None:
        _fixed_dimensions(shape, spec)
        array = _from_binary(chunk, datatype, shape, spec)
        _batch_checked(array, spec, settings)
        return array
    assert isinstance(data, list)  # noqa: S101 - checked above; narrows the type
    _sized(shape, data, spec, settings)
    array = _to_array(data, datatype, spec)
    if array.size != math.prod(shape):
        raise InvalidInput(
            f"'data' has {array.size} elements, 'shape' {shape} needs {math.prod(shape)}"
        )
    array = array.reshape(shape)
    _batch_checked(array, spec, settings)
    return array


def _images(items: list[Any], settings: ModelSettings) -> np.ndarray[Any, Any]:
    """Base64 PNG/JPEG images → the model's input batch (Pillow only for image models)."""
    from scorer.images import batch_from_base64

    assert settings.image is not None  # noqa: S101 - callers check; narrows the type
    if len(items) > settings.max_batch:
        raise PayloadTooLarge(
            f"batch of {len(items)} exceeds this model's maximum of {settings.max_batch}"
        )
    array = batch_from_base64(items, settings.image)
    _batch_checked(array, settings.input, settings)
    return array


def _images_v2(shape: list[int], data: list[Any], settings: ModelSettings) -> np.ndarray[Any, Any]:
    # Open Inference Protocol: a BYTES tensor of shape [n] whose elements are the encoded
    # images, base64 in JSON (as MLServer's and Triton's image clients send them).
    if len(shape) != 1 or shape[0] != len(data):
        raise InvalidInput("a BYTES image tensor needs shape [n] and n base64 strings")
    return _images(data, settings)


def _binary_images(
    shape: list[int], chunk: memoryview, settings: ModelSettings
) -> np.ndarray[Any, Any]:
    # The binary extension's BYTES tensor: each element one encoded image, raw (no base64).
    from scorer.images import batch_from_bytes

    assert settings.image is not None  # noqa: S101 - the caller checks; narrows the type
    if len(shape) != 1:
        raise InvalidInput("a BYTES image tensor needs shape [n]")
    if shape[0] > settings.max_batch:
        raise PayloadTooLarge(
            f"batch of {shape[0]} exceeds this model's maximum of {settings.max_batch}"
        )
    try:
        check_size("BYTES", shape, chunk)
    except BinaryFormatError as exc:
        raise InvalidInput(str(exc)) from None
    array = batch_from_bytes(bytes_elements(chunk, shape[0]), settings.image)
    _batch_checked(array, settings.input, settings)
    return array


def _flag(parameters: Any, name: str, default: bool) -> bool:
    if not isinstance(parameters, dict) or name not in parameters:
        return default
    value = parameters[name]
    if not isinstance(value, bool):
        raise InvalidInput(f"'{name}' must be true or false")
    return value


def requested_outputs(
    body: Any, available: tuple[str, ...]
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs a v2 request names (``"outputs": [{"name": ...}]``), else the default;
    and those of them to return as binary data (the request's ``binary_data_output``,
    overridden per output by ``binary_data``)."""
    parameters = body.get("parameters") if isinstance(body, dict) else None
    all_binary = _flag(parameters, "binary_data_output", False)
    wanted = body.get("outputs") if isinstance(body, dict) else None
    if wanted is None:
        default = available[:1]
        return default, frozenset(default) if all_binary else frozenset()
    if not isinstance(wanted, list) or not wanted:
        raise InvalidInput("'outputs' must be a non-empty list of {\"name\": ...}")
    names: list[str] = []
    binary: set[str] = set()
    for item in wanted:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in available:
            raise InvalidInput(f"unknown output; this model has {list(available)}")
        assert isinstance(item, dict)  # noqa: S101 - a named output is an object
        if isinstance(item.get("parameters"), dict) and "classification" in item["parameters"]:
            # Triton's classification extension: not implemented, so refused, never
            # answered with a tensor the client did not ask for.
            raise InvalidInput("the classification extension is not supported")
        if name not in names:
            names.append(name)
        if _flag(item.get("parameters"), "binary_data", all_binary):
            binary.add(name)
    return tuple(names), frozenset(binary)


def decode_v1(body: Any, settings: ModelSettings) -> np.ndarray[Any, Any]:
    """The model's input array from a v1 ``{"instances": [...]}`` request."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InvalidInput("the body must be an object with an 'instances' list")
    instances = body["instances"]
    if settings.image is not None and instances and isinstance(instances[0], dict):
        # TF Serving's convention for binary data: {"b64": "<base64 bytes>"} per instance.
        if not all(isinstance(i, dict) and i.keys() == {"b64"} for i in instances):
            raise InvalidInput('image instances must each be {"b64": "<base64 PNG or JPEG>"}')
        return _images([i["b64"] for i in instances], settings)
    if len(instances) > settings.max_batch:
        raise PayloadTooLarge(
            f"batch of {len(instances)} exceeds this model's maximum of {settings.max_batch}"
        )
    row = settings.input.shape[1:]
    if -1 not in row:  # a fixed row: every instance that wide, checked before converting
        width = math.prod(row)
        for instance in instances:
            if count_leaves(instance, width) != width:
                raise InvalidInput(f"each instance must have {width} elements")
    array = _to_array(instances, settings.input.datatype, settings.input)
    _batch_checked(array, settings.input, settings)
    return array


def check_outputs(outputs: dict[str, np.ndarray[Any, Any]]) -> None:
    """A model that answers NaN or infinity was given input it cannot score: say so (422)."""
    for array in outputs.values():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput("the model cannot score this input (its output is not finite)")


def _datatype_of(array: np.ndarray[Any, Any]) -> str:
    if array.dtype.kind in "USO":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == np.dtype(dtype):
            return name
    return "FP64"


def _json_array(array: np.ndarray[Any, Any]) -> list[Any] | np.ndarray[Any, Any]:
    """A numeric array as JSON data (shape kept): the array itself where orjson writes it
    (``dumps``) byte for byte as it writes ``tolist()``, without making a Python object
    per element; float32 and float16 as Python floats, since orjson would write their own
    shortest form (0.1, not the 0.10000000149011612 that clients have been sent)."""
    if array.dtype.isnative and (array.dtype.kind in "biu" or array.dtype == np.float64):
        return array if array.flags.c_contiguous else array.copy()
    data: list[Any] = array.tolist()
    return data


def _jsonable(array: np.ndarray[Any, Any]) -> list[Any] | np.ndarray[Any, Any]:
    flat = array.reshape(-1)
    if array.dtype.kind == "U":
        return flat.tolist()  # str objects already
    if array.dtype.kind in "SO":
        return [str(x) for x in flat]
    return _json_array(flat)


def dumps(payload: dict[str, Any]) -> bytes:
    """An encoded answer (``encode_v2``, ``encode_v1``) as JSON; numpy arrays written by
    orjson directly."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _binary(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """An output's bytes for the binary extension: little-endian, row major."""
    if datatype == "BYTES":
        return encode_bytes(str(x).encode() for x in array.reshape(-1))
    little = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def encode_v2(
    outputs: dict[str, np.ndarray[Any, Any]],
    settings: ModelSettings,
    request_id: str | None,
    binary: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[bytes]]:
    """The v2 ``InferenceResponse``, and the bytes of the outputs sent in binary (in the
    order of their tensors in the response, as `serving.binary` frames them)."""
    tensors: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, array in outputs.items():
        datatype = _datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if name in binary:
            part = _binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(part)}
            parts.append(part)
        else:
            tensor["data"] = _jsonable(array)
        tensors.append(tensor)
    response: dict[str, Any] = {
        "model_name": settings.name,
        "model_version": settings.version,
        "outputs": tensors,
    }
    if request_id is not None:
        response["id"] = request_id
    return response, parts


def encode_v1(outputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    predictions = outputs["predict"]
    if predictions.dtype.kind in "USO":
        return {"predictions": [str(x) for x in predictions]}
    return {"predictions": _json_array(predictions)}


def output_metadata(
    settings: ModelSettings, outputs: dict[str, np.ndarray[Any, Any]]
) -> list[dict[str, Any]]:
    """The protocol's tensor metadata of each output, from what the model produced for an
    example batch of one: its datatype, and its shape with the batch as -1."""
    return [
        {"name": name, "datatype": _datatype_of(array), "shape": [-1, *array.shape[1:]]}
        for name, array in outputs.items()
    ]


def example_batch(settings: ModelSettings) -> np.ndarray[Any, Any]:
    """One row of zeros in the model's input shape (variable dimensions as 1)."""
    spec = settings.input
    shape = [1, *(d if d > 0 else 1 for d in spec.shape[1:])]
    return np.zeros(shape, dtype=NUMPY_DTYPES.get(spec.datatype, np.float64))


def metadata(settings: ModelSettings, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = settings.input
    return {
        "name": settings.name,
        "versions": [settings.version],
        "platform": settings.runtime,
        "inputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}],
        "outputs": outputs,
        "parameters": {"max_batch": settings.max_batch},
    }
