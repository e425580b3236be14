"""The binary tensor data extension's framing (serving.binary): what it accepts is exactly
what it frames, and anything else is a BinaryFormatError, never an IndexError or a view
past the body (property tests, as for every parser here)."""

from __future__ import annotations

import math
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.binary import (
    ITEM_BYTES,
    BinaryFormatError,
    bytes_elements,
    check_size,
    chunks,
    encode_bytes,
    join,
    split,
)

FIXED = sorted(ITEM_BYTES)
shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=3)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[dict[str, object], bytes]:
    shape = draw(shapes)
    if draw(st.booleans()):
        items = draw(
            st.lists(st.binary(max_size=6), min_size=math.prod(shape), max_size=math.prod(shape))
        )
        return {"datatype": "BYTES", "shape": shape}, encode_bytes(items)
    datatype = draw(st.sampled_from(FIXED))
    raw = draw(
        st.binary(
            min_size=math.prod(shape) * ITEM_BYTES[datatype],
            max_size=math.prod(shape) * ITEM_BYTES[datatype],
        )
    )
    return {"datatype": datatype, "shape": shape}, raw


def frame(
    pairs: list[tuple[dict[str, object], bytes]],
) -> tuple[bytes, str, list[dict[str, object]]]:
    inputs = [
        {**t, "name": f"t{i}", "parameters": {"binary_data_size": len(raw)}}
        for i, (t, raw) in enumerate(pairs)
    ]
    body, size = join(orjson.dumps({"inputs": inputs}), [raw for _, raw in pairs])
    return body, str(size), inputs


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=4))
def test_what_is_framed_is_what_is_read(pairs: list[tuple[dict[str, object], bytes]]) -> None:
    body, size, inputs = frame(pairs)
    header, rest = split(body, size)
    assert orjson.loads(header)["inputs"] == inputs
    found = chunks(inputs, rest)
    for (tensor, raw), chunk in zip(pairs, found, strict=True):
        assert chunk is not None and bytes(chunk) == raw
        shape = tensor["shape"]
        assert isinstance(shape, list)
        assert check_size(str(tensor["datatype"]), shape, chunk) == math.prod(shape)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(tensors(), min_size=1, max_size=3), st.integers(min_value=-8, max_value=8), st.data()
)
def test_a_wrong_count_anywhere_is_a_format_error(
    pairs: list[tuple[dict[str, object], bytes]], delta: int, data: st.DataObject
) -> None:
    body, size, inputs = frame(pairs)
    # Lie about one tensor's size, or cut or pad the body: refused, or still consistent.
    index = data.draw(st.integers(min_value=0, max_value=len(inputs) - 1))
    parameters = inputs[index]["parameters"]
    assert isinstance(parameters, dict)
    original = parameters["binary_data_size"]
    parameters["binary_data_size"] = max(0, original + delta)
    header = orjson.dumps({"inputs": inputs})
    rest = body[int(size) :]
    try:
        found = chunks(inputs, memoryview(rest))
        for tensor, chunk in zip(inputs, found, strict=True):
            assert chunk is not None
            shape = tensor["shape"]
            assert isinstance(shape, list)
            check_size(str(tensor["datatype"]), shape, chunk)
    except BinaryFormatError as exc:
        assert str(exc)
    else:
        # Accepted only when nothing was changed after all.
        assert parameters["binary_data_size"] == original
    assert len(header) > 0


@pytest.mark.parametrize("value", ["", "-1", "+5", " 5", "5 ", "0x10", "1e3", "٣", "0", "9" * 13])
def test_the_header_length_is_plain_digits_within_the_body(value: str) -> None:
    with pytest.raises(BinaryFormatError):
        split(b"{}" + b"\0" * 10, value)


def test_a_bytes_element_cannot_claim_more_than_is_left() -> None:
    with pytest.raises(BinaryFormatError, match="longer than the data left"):
        bytes_elements(memoryview(struct.pack("<I", 2**32 - 1) + b"ab"), 10)
    with pytest.raises(BinaryFormatError, match="cut short"):
        bytes_elements(memoryview(b"\x01\x00"), 10)


def test_counting_bytes_elements_stops_past_the_limit() -> None:
    # A million empty elements under a shape of 2: the walk stops at the third.
    chunk = memoryview(b"\0\0\0\0" * 1_000_000)
    assert len(bytes_elements(chunk, 2)) == 3
    with pytest.raises(BinaryFormatError, match="carries 3 elements"):
        check_size("BYTES", [2], chunk)
