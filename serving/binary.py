"""The Open Inference Protocol's binary tensor data extension, for the gateway and the scorers.

    body = <JSON inference header: Inference-Header-Content-Length bytes>
           <bytes of tensor a><bytes of tensor b>…   in the order of the JSON's tensors
                                                     that carry parameters.binary_data_size

Little-endian, row major, no padding; a BOOL is one byte (0 or 1); a BYTES element is a
4-byte little-endian unsigned length and then that many bytes (Triton's
docs/protocol/extension_binary_data.md, KServe's binary_tensor_data). The same framing
carries binary outputs back.

Pure functions over memoryviews: the checks read the header's numbers and, for BYTES, the
element lengths; tensor bytes themselves are never copied or interpreted here. Every
refusal is a `BinaryFormatError` whose message is ours and safe to show.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

HEADER = "inference-header-content-length"
HEADER_BYTES = HEADER.encode()
OCTET_STREAM = "application/octet-stream"

# Bytes per element of every fixed-size datatype of the protocol.
ITEM_BYTES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
_LENGTH = struct.Struct("<I")
# Digits of the header's length: a body is bounded far below 10**12 bytes anyway.
_MAX_DIGITS = 12


class BinaryFormatError(ValueError):
    """The binary framing does not hold together; the message is safe to show."""


def header_length(value: str | bytes, body_size: int) -> int:
    """The JSON header's size from ``Inference-Header-Content-Length``: decimal digits
    only (RFC 9110 §8.6 writes Content-Length the same way), at least 1, within the body."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        raise BinaryFormatError("Inference-Header-Content-Length must be a decimal byte count")
    size = int(text)
    if size < 1 or size > body_size:
        raise BinaryFormatError(
            f"Inference-Header-Content-Length is {size}, the body has {body_size} bytes"
        )
    return size


def split(body: bytes, value: str | bytes) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary part after it, as views of ``body``."""
    size = header_length(value, len(body))
    view = memoryview(body)
    return view[:size], view[size:]


def binary_size(tensor: dict[str, Any]) -> int | None:
    """A tensor's ``parameters.binary_data_size``, or None when its data is in the JSON."""
    parameters = tensor.get("parameters")
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BinaryFormatError("'binary_data_size' must be a non-negative integer")
    return size


def chunks(tensors: Iterable[dict[str, Any]], rest: memoryview) -> list[memoryview | None]:
    """Each tensor's binary data (None for one whose data is in the JSON), cut from
    ``rest`` in order; the sizes must account for every byte, no more and no less."""
    found: list[memoryview | None] = []
    offset = 0
    for tensor in tensors:
        size = binary_size(tensor)
        if size is None:
            found.append(None)
            continue
        if "data" in tensor:
            # One source of truth per tensor: both would let two readers see two tensors.
            raise BinaryFormatError("a tensor carries 'data' and 'binary_data_size' both")
        if offset + size > len(rest):
            raise BinaryFormatError("the binary data is shorter than 'binary_data_size' declares")
        found.append(rest[offset : offset + size])
        offset += size
    if offset != len(rest):
        raise BinaryFormatError(
            f"{len(rest) - offset} bytes after the JSON header belong to no tensor"
        )
    return found


def bytes_elements(chunk: memoryview, limit: int) -> list[memoryview]:
    """The elements of a BYTES tensor (each a 4-byte length and its bytes), stopping once
    past ``limit`` elements; the lengths must fill the chunk exactly."""
    items: list[memoryview] = []
    offset, end = 0, len(chunk)
    while offset < end and len(items) <= limit:
        if offset + 4 > end:
            raise BinaryFormatError("a BYTES element's length is cut short")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > end:
            raise BinaryFormatError("a BYTES element is longer than the data left")
        items.append(chunk[offset : offset + length])
        offset += length
    return items


def check_size(datatype: str, shape: Sequence[int], chunk: memoryview) -> int:
    """The elements a binary tensor carries, after checking that its bytes are exactly
    what its datatype and shape declare (OWASP API8: the sizes agree before use)."""
    declared = math.prod(shape)
    if datatype == "BYTES":
        carried = len(bytes_elements(chunk, declared))
        if carried != declared:
            raise BinaryFormatError(
                f"the BYTES data carries {carried} elements, 'shape' {list(shape)} "
                f"declares {declared}"
            )
        return declared
    item = ITEM_BYTES.get(datatype)
    if item is None:
        raise BinaryFormatError(f"unknown datatype {datatype!r}")
    if len(chunk) != declared * item:
        raise BinaryFormatError(
            f"'binary_data_size' is {len(chunk)} bytes, {datatype} with 'shape' {list(shape)} "
            f"needs {declared * item}"
        )
    return declared


def encode_bytes(items: Iterable[bytes]) -> bytes:
    """A BYTES tensor's binary data: each element's length, then the element."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def join(header: bytes, parts: Iterable[bytes]) -> tuple[bytes, int]:
    """A body of the JSON header followed by the binary parts, and the header's size."""
    return b"".join((header, *parts)), len(header)
