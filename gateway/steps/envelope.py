"""The inference request envelope the gateway checks before a body goes upstream.

The gateway owns the public contract (gateway/openapi.yaml): a v1 ``instances`` list, or
a v2 (Open Inference Protocol) request with typed members and declared shapes. The scorer
judges the tensors themselves (datatype, the model's schema).

Cost follows work (OWASP API4): a request is measured in rows (instances, or the v2
batch) and in elements (the numbers, or BYTES items, it carries). Every v2 tensor's data
must hold exactly the product of its shape; the elements are bounded per model
(``max_elements``) before anything is forwarded, and, where a model declares its row
width (``row_elements``), every v1 instance must have that width and the rate-limit cost
is the rows that many elements make: a row 100,000 numbers wide costs like 25,000 rows of
four. Counting walks the lists without recursion and stops at the bound.

Tensors may travel in binary after the JSON (the protocol's binary tensor data extension,
`serving.binary`): their bytes must be exactly what their datatype and shape declare, and
they are charged the elements they carry like JSON ones; of their bytes only a BYTES
tensor's element lengths are read, never the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest, PayloadTooLarge
from serving.binary import BinaryFormatError, check_size, chunks
from serving.tensors import count_leaves

Kind = Literal["v1", "v2"]
_JSON_TYPE_NAMES: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _check_members(obj: dict[str, Any], where: str, required: dict[str, type]) -> None:
    """Members an object must carry, by JSON type; ``parameters`` must be an object if sent."""
    for name, kind in required.items():
        if not isinstance(obj.get(name), kind):
            raise InvalidRequest(
                f"{where} needs '{name}' as {_JSON_TYPE_NAMES[kind]}", reason="body_invalid"
            )
    if "parameters" in obj and not isinstance(obj["parameters"], dict):
        raise InvalidRequest(f"'parameters' of {where} must be an object", reason="body_invalid")


def _check_v2_envelope(
    body: dict[str, Any], inputs: list[dict[str, Any]], binary: list[bool]
) -> None:
    """The Open Inference Protocol's request envelope: members the protocol requires, with
    their JSON types, so a malformed envelope never reaches a model server (OWASP REST
    Security Cheat Sheet: input validation)."""
    _check_members(body, "the request", {})
    if "id" in body and not isinstance(body["id"], str):
        raise InvalidRequest("'id' must be a string", reason="body_invalid")
    for tensor, in_binary in zip(inputs, binary, strict=True):
        required: dict[str, type] = {"name": str, "datatype": str}
        if not in_binary:
            required["data"] = list
        _check_members(tensor, "each input", required)
    if not isinstance(body.get("parameters", {}).get("binary_data_output", False), bool):
        raise InvalidRequest("'binary_data_output' must be true or false", reason="body_invalid")
    if "outputs" not in body:
        return  # the model's default output
    outputs = body["outputs"]
    if (
        not isinstance(outputs, list)
        or not outputs
        or not all(isinstance(o, dict) for o in outputs)
    ):
        raise InvalidRequest("'outputs' must be a non-empty list of objects", reason="body_invalid")
    for output in outputs:
        _check_members(output, "each output", {"name": str})
        if not isinstance(output.get("parameters", {}).get("binary_data", False), bool):
            raise InvalidRequest(
                "'binary_data' of an output must be true or false", reason="body_invalid"
            )


@dataclass(frozen=True)
class Measure:
    rows: int  # instances (v1) or the largest batch a v2 input declares
    elements: int  # numbers (or BYTES items) the request carries, all inputs together


def _too_many(elements: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"at most {limit} elements per request for this model, got {elements}",
        reason="too_many_elements",
    )


def measure(
    body: Any,
    kind: Kind,
    *,
    max_elements: int,
    row_elements: int | None,
    binary: memoryview | None = None,
) -> Measure:
    """Rows and elements of a v2 or v1 body, after the structural checks the gateway owns;
    ``binary`` is what follows a v2 body's JSON header when tensors travel in binary."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", reason="body_not_object")
    if kind == "v1":
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest("'instances' must be a non-empty list", reason="body_invalid")
        elements = 0
        for instance in instances:
            width = count_leaves(instance, max_elements)
            if row_elements is not None and width != row_elements:
                raise InvalidRequest(
                    f"each instance of this model has {row_elements} elements, one has {width}",
                    reason="instance_width",
                )
            elements += width
            if elements > max_elements:
                raise _too_many(elements, max_elements)
        return Measure(len(instances), elements)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequest("'inputs' must be a non-empty list of tensors", reason="body_invalid")
    try:
        carried_binary = chunks(inputs, binary if binary is not None else memoryview(b""))
    except BinaryFormatError as exc:
        raise InvalidRequest(str(exc), reason="binary_data_invalid") from None
    batch = elements = 0
    for tensor, chunk in zip(inputs, carried_binary, strict=True):
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or shape[0] < 1
            or any(d < 0 for d in shape)
        ):
            raise InvalidRequest(
                "each input needs a 'shape' of non-negative integers with a batch of at least 1",
                reason="body_invalid",
            )
        batch = max(batch, shape[0])
        declared = math.prod(shape)
        if elements + declared > max_elements:
            raise _too_many(elements + declared, max_elements)
        data = tensor.get("data")
        if chunk is not None:
            datatype = tensor.get("datatype")
            if not isinstance(datatype, str):
                raise InvalidRequest(
                    "each input needs 'datatype' as a string", reason="body_invalid"
                )
            try:
                check_size(datatype, shape, chunk)
            except BinaryFormatError as exc:
                raise InvalidRequest(str(exc), reason="binary_data_invalid") from None
        elif isinstance(data, list):
            carried = count_leaves(data, declared)
            if carried != declared:
                raise InvalidRequest(
                    f"'data' carries {carried} elements, 'shape' {shape} declares {declared}",
                    reason="data_shape_mismatch",
                )
        elements += declared
    _check_v2_envelope(body, inputs, [chunk is not None for chunk in carried_binary])
    return Measure(batch, elements)


def cost(measured: Measure, row_elements: int | None) -> int:
    """Rows, the unit of the rate-limit policies; a row wider than the model's declared
    width costs the rows its elements would fill."""
    if row_elements is None:
        return measured.rows
    return max(measured.rows, math.ceil(measured.elements / row_elements))
