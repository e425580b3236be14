"""Images from clients (SECURITY-CATALOG: model artifacts and inputs; OWASP API4): every
limit holds before a pixel is decompressed, and bad images are 4xx, never 500."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scorer import dataplane
from scorer.errors import InvalidInput, PayloadTooLarge
from scorer.repository import ModelSettings, read_model_settings


@pytest.fixture(scope="module")
def settings(digits_repo: Path) -> ModelSettings:
    return read_model_settings(digits_repo / "digits")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(fmt: str, size: tuple[int, int] = (32, 32), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=128 if mode == "L" else (128, 64, 32)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height grey pixels, and a few bytes of data:
    a decoder that trusted the header would allocate width x height bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # the first rows; the rest would follow
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def v1(*images: str) -> dict[str, object]:
    return {"instances": [{"b64": image} for image in images]}


@pytest.mark.parametrize("side", [2_000, 100_000])
def test_decompression_bomb_is_refused_from_its_header(settings: ModelSettings, side: int) -> None:
    # Over the model's limit (4 MB decoded), and over Pillow's own (10 GB decoded); each
    # request is a few hundred bytes.
    bomb = bomb_png(side, side)
    assert len(bomb) < 1000
    with pytest.raises(PayloadTooLarge, match="pixel limit"):
        dataplane.decode_v1(v1(b64(bomb)), settings)


def test_an_image_over_the_byte_limit_is_413_before_base64_decoding(
    settings: ModelSettings,
) -> None:
    assert settings.image is not None
    text = "A" * (settings.image.max_bytes // 3 * 4 + 8)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        dataplane.decode_v1(v1(text), settings)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"])
def test_only_png_and_jpeg_are_decoded(settings: ModelSettings, fmt: str) -> None:
    with pytest.raises(InvalidInput, match="PNG/JPEG"):
        dataplane.decode_v1(v1(b64(encoded(fmt))), settings)


def test_png_and_jpeg_of_any_size_and_colour_are_accepted(settings: ModelSettings) -> None:
    images = [encoded("PNG"), encoded("JPEG", (64, 48), "RGB"), encoded("PNG", (8, 8), "RGB")]
    batch = dataplane.decode_v1(v1(*map(b64, images)), settings)
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == np.float32
    assert settings.image is not None
    grey = (128 / 255 - settings.image.mean[0]) / settings.image.std[0]
    np.testing.assert_allclose(batch[0], grey, atol=1e-5)


@pytest.mark.parametrize(
    "image",
    [
        "not base64!",
        b64(b""),
        b64(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10),
        b64(encoded("PNG")[:60]),  # truncated in the pixel data
        b64(encoded("JPEG")[:200]),
    ],
    ids=["not-base64", "empty", "garbage-after-signature", "truncated-png", "truncated-jpeg"],
)
def test_corrupt_or_truncated_images_are_422(settings: ModelSettings, image: str) -> None:
    with pytest.raises(InvalidInput):
        dataplane.decode_v1(v1(image), settings)


@pytest.mark.parametrize(
    "instances",
    [[{"b64": 1}], [{"b64": "x", "extra": 1}], [{"b64": b64(encoded("PNG"))}, [0.0] * 64]],
    ids=["not-a-string", "extra-key", "mixed"],
)
def test_image_instances_must_each_be_a_b64_object(
    settings: ModelSettings, instances: list[object]
) -> None:
    with pytest.raises(InvalidInput):
        dataplane.decode_v1({"instances": instances}, settings)


def test_too_many_images_are_refused_before_any_is_decoded(settings: ModelSettings) -> None:
    bombs = [b64(bomb_png(100_000, 100_000))] * (settings.max_batch + 1)
    with pytest.raises(PayloadTooLarge, match="batch of"):
        dataplane.decode_v1({"instances": [{"b64": b} for b in bombs]}, settings)


@pytest.mark.parametrize("shape", [[2], [1, 1]], ids=["count-mismatch", "not-1-d"])
def test_v2_image_tensors_need_shape_n(settings: ModelSettings, shape: list[int]) -> None:
    body = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": shape, "data": [b64(encoded("PNG"))]}
        ]
    }
    with pytest.raises(InvalidInput, match=r"shape \[n\]"):
        dataplane.decode_v2(body, settings)
