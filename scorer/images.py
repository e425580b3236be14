"""Images sent as base64 PNG or JPEG → the model's normalised input tensor.

Pure functions, no I/O. Every limit is checked before pixels are decompressed
(OWASP API4, unrestricted resource consumption): the base64 text length, the encoded
byte count, the container format (PNG and JPEG only, no format sniffing beyond them),
and the width x height the header declares (decompression bombs, CWE-409). Pillow's own
bomb guard is a warning by default; this module does not rely on it.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from scorer.errors import InvalidInput, PayloadTooLarge
from scorer.repository import ImageSpec


def decode_base64(text: Any, spec: ImageSpec) -> bytes:
    """The encoded image bytes of one base64 string, within the size limit."""
    if not isinstance(text, str):
        raise InvalidInput("each image must be a base64 string")
    # 4 base64 characters carry 3 bytes: refuse oversized text before decoding it.
    if len(text) > (spec.max_bytes + 2) // 3 * 4:
        raise PayloadTooLarge(f"image exceeds {spec.max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image is not valid base64") from None


def to_tensor(data: bytes, spec: ImageSpec) -> np.ndarray[Any, Any]:
    """One image as a float32 array of shape (channels, height, width), normalised."""
    if len(data) > spec.max_bytes:
        raise PayloadTooLarge(f"image exceeds {spec.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Our pixel limit below is the guard; Pillow's DecompressionBombWarning would
            # only be noise (and an error under warnings-as-errors).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # open() reads the header only: nothing is decompressed yet.
            image = Image.open(io.BytesIO(data), formats=list(spec.formats))
    except Image.DecompressionBombError:
        # Pillow's own bound (about 179 million pixels) tripped before ours could.
        raise PayloadTooLarge(
            f"image exceeds the pixel limit of {spec.max_pixels} (decompression bomb)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidInput(f"image is not a readable {'/'.join(spec.formats)} file") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidInput("image has no pixels")
        if width * height > spec.max_pixels:
            raise PayloadTooLarge(
                f"image of {width}x{height} pixels exceeds the pixel limit of {spec.max_pixels}"
            )
        try:
            image.load()
            converted = image.convert(spec.mode)
            if converted.size != (spec.width, spec.height):
                resample = Image.Resampling[spec.resample.upper()]
                converted = converted.resize((spec.width, spec.height), resample)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            # Truncated or corrupt data shows only when the pixels are decoded.
            raise InvalidInput("image data is corrupt or truncated") from None
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def batch_from_base64(items: list[Any], spec: ImageSpec) -> np.ndarray[Any, Any]:
    """A batch of base64 images as one (n, channels, height, width) float32 array."""
    if not items:
        raise InvalidInput("the batch is empty")
    return np.stack([to_tensor(decode_base64(item, spec), spec) for item in items])


def batch_from_bytes(items: list[memoryview], spec: ImageSpec) -> np.ndarray[Any, Any]:
    """A batch of raw encoded images (the binary extension's BYTES elements), each within
    the same size limit as a decoded base64 one."""
    if not items:
        raise InvalidInput("the batch is empty")
    return np.stack([to_tensor(bytes(item), spec) for item in items])


def encode_png(pixels: np.ndarray[Any, Any]) -> str:
    """A uint8 (height, width) or (height, width, 3) array as base64 PNG (clients, demo)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
