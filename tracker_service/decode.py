"""Bytes -> BGR pixels, with the checks that keep a bad upload from hurting the gateway.

The header is read first (Pillow opens lazily), so the type and the pixel count are checked
before a single pixel is decoded: a decompression bomb costs a header parse, not gigabytes.
Pixels are decoded by OpenCV, as Ultralytics' predictor does, so detections match it exactly.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

from tracker_service.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = set(MEDIA_TYPES.values())


def check_media_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"unsupported content type {media or '(none)'!r}",
            supported=sorted(MEDIA_TYPES))


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes into an HxWx3 BGR uint8 array."""
    if not data:
        raise UndecodableImage("empty body: no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
            fmt, (width, height) = header.format, header.size
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image has too many pixels", max_pixels=max_pixels) from None
    except Exception:
        raise UndecodableImage("bytes are not a decodable image") from None
    if fmt not in FORMATS:
        raise UnsupportedMediaType(f"image format {fmt} is not supported",
                                   supported=sorted(MEDIA_TYPES))
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels",
                              max_pixels=max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise UndecodableImage(f"{fmt} data could not be decoded (truncated or corrupt)")
    return image
