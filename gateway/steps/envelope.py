"""The inference request envelope the gateway checks before a body goes upstream.

The gateway owns the public contract (gateway/openapi.yaml): a v1 ``instances`` list, or
a v2 (Open Inference Protocol) request with typed members and declared shapes. The scorer
judges the tensors themselves (datatype, data against shape, the model's schema). The
number of instances a request carries is its cost for rate limiting (OWASP API4).
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.errors import InvalidRequest

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


def _check_v2_envelope(body: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
    """The Open Inference Protocol's request envelope: members the protocol requires, with
    their JSON types, so a malformed envelope never reaches a model server (OWASP REST
    Security Cheat Sheet: input validation)."""
    _check_members(body, "the request", {})
    if "id" in body and not isinstance(body["id"], str):
        raise InvalidRequest("'id' must be a string", reason="body_invalid")
    for tensor in inputs:
        _check_members(tensor, "each input", {"name": str, "datatype": str, "data": list})
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


def count_instances(body: Any, kind: Kind) -> int:
    """Instances in a v2 or v1 body, after the structural checks the gateway owns."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", reason="body_not_object")
    if kind == "v1":
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest("'instances' must be a non-empty list", reason="body_invalid")
        return len(instances)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequest("'inputs' must be a non-empty list of tensors", reason="body_invalid")
    batch = 0
    for tensor in inputs:
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or shape[0] < 1
        ):
            raise InvalidRequest(
                "each input needs a 'shape' of integers with a batch of at least 1",
                reason="body_invalid",
            )
        batch = max(batch, shape[0])
    _check_v2_envelope(body, inputs)
    # The cost is the largest batch any input declares; the scorer checks the data
    # against the shapes, so a request cannot carry more than it is charged for.
    return batch
