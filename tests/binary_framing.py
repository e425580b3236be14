"""The binary tensor data extension as the tests write and read it: written apart from
`serving.binary` on purpose, so that the product's framing is checked against a second
reading of the protocol (Triton's extension_binary_data.md), not against itself."""

from __future__ import annotations

import struct
from typing import Any

import orjson

HEADER = "inference-header-content-length"


def request(
    tensors: list[tuple[dict[str, Any], bytes]], **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A body of a JSON header whose inputs carry binary_data_size, then their bytes; and
    the header that gives the JSON's length."""
    inputs = [{**t, "parameters": {"binary_data_size": len(raw)}} for t, raw in tensors]
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + b"".join(raw for _, raw in tensors), {HEADER: str(len(header))}


def outputs(body: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A binary answer's JSON, and the bytes of each output sent in binary, by name."""
    response = orjson.loads(body[:header_length])
    parts, offset = {}, header_length
    for output in response["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            parts[output["name"]] = body[offset : offset + size]
            offset += size
    assert offset == len(body)
    return response, parts


def bytes_tensor(items: list[bytes]) -> bytes:
    """A BYTES tensor's data: each element's 4-byte little-endian length, then the element."""
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def bytes_items(raw: bytes) -> list[bytes]:
    """The elements of a BYTES tensor's data."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items
