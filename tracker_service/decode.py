"""Bytes -> BGR pixels, with the checks that keep a bad upload from hurting the gateway.

The header is read first (Pillow opens lazily), so the type and the pixel count are checked
before a single pixel is decoded: a decompression bomb costs a header parse, not gigabytes.
Pixels are decoded as Ultralytics' predictor decodes them (OpenCV: libjpeg-turbo, accurate
DCT, fancy upsampling), so detections match it exactly. A JPEG decoded in full goes through
simplejpeg (libjpeg-turbo 3 in its wheel, MIT), whose pixels are bit-identical to OpenCV's and
come 2.3x sooner: bus.jpg (810x1080) in 2.8 ms instead of 6.5 (2-core EPYC; OpenCV's full decode
is the slow one, its reduced decodes are not). OpenCV's EXIF orientation is applied the same
way here (`orient`); what simplejpeg cannot decode (a corrupt or truncated stream) goes to
OpenCV, which decodes or rejects it as before.

A JPEG much larger than the model's input is decoded at 1/2, 1/4 or 1/8 scale instead
(libjpeg-turbo's DCT scaling, OpenCV's IMREAD_REDUCED_COLOR_*), the largest reduction that keeps
the longer side at least the model's input, so the letterbox never upscales. The DCT skips most
of the work: bus.jpg (810x1080) decodes in 2.1 ms at 1/4 instead of 7.1 ms in full (2-core
EPYC), and the letterbox then resizes 203x270 pixels, not 810x1080. The pixels differ from a full
decode (the DCT's reduction averages, a linear resize samples), so boxes agree with Ultralytics'
predictor within a stated tolerance, not exactly (tests/test_parity.py); boxes stay in the
original image's pixels (letterbox.py maps through the reduction).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image

from tracker_service.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = set(MEDIA_TYPES.values())
REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 2: cv2.IMREAD_REDUCED_COLOR_2}
# EXIF orientations that turn the image a quarter (OpenCV applies them when it decodes).
QUARTER_TURNS = {5, 6, 7, 8}


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels and the size of the image they stand for: `image` is `reduction` times
    smaller than width x height (rounded up) when the JPEG was decoded at a reduced scale."""

    image: np.ndarray  # HxWx3 BGR uint8
    width: int  # the original image's, after its EXIF orientation
    height: int
    reduction: int = 1


def check_media_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"unsupported content type {media or '(none)'!r}",
            supported=sorted(MEDIA_TYPES))


def reduction_for(width: int, height: int, min_side: int) -> int:
    """The largest of 8, 4, 2 that keeps the longer side at least `min_side`, else 1."""
    longer = max(width, height)
    return next((f for f in REDUCED_FLAGS if min_side > 0 and longer >= min_side * f), 1)


@dataclass(frozen=True)
class Header:
    """What the image says about itself before any pixel is decoded (checked: a supported
    format, at most the allowed pixels)."""

    opened: Image.Image  # Pillow's lazy image: the EXIF is read from it only when needed
    format: str
    width: int  # as stored, before the EXIF orientation
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, max_pixels: int) -> Header:
    """The format and size from the header alone (a decompression bomb costs a header parse);
    UndecodableImage, UnsupportedMediaType or PayloadTooLarge when it cannot be decoded here."""
    if not data:
        raise UndecodableImage("empty body: no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            fmt, (width, height) = opened.format, opened.size
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
    return Header(opened, fmt, width, height)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientation applied as OpenCV's imdecode applies it (flips and a transpose)."""
    if orientation in QUARTER_TURNS:
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


def exif_orientation(header: Header) -> int | None:
    """The EXIF orientation (1 without EXIF: Pillow keeps the raw EXIF while reading the
    header, so a JPEG without one costs no parse); None when the EXIF cannot be read."""
    if "exif" not in header.opened.info:
        return 1
    try:
        return header.opened.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return None


def _full_jpeg(data: bytes, header: Header) -> np.ndarray | None:
    """A JPEG decoded in full by simplejpeg, oriented; None where simplejpeg cannot decode it
    or its EXIF cannot be read (OpenCV then decodes or rejects it)."""
    orientation = exif_orientation(header)
    if orientation is None:
        return None
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", fastdct=False,
                                       fastupsample=False)
    except ValueError:  # corrupt or truncated data
        return None
    return orient(image, orientation)


def decode_image(data: bytes, max_pixels: int, min_side: int = 0,
                 header: Header | None = None, *, simplejpeg_full: bool = True) -> Decoded:
    """Decode JPEG/PNG/WebP bytes into BGR pixels; a JPEG at a reduced scale when its longer
    side is at least twice `min_side` (0: always in full), else in full through simplejpeg
    (`simplejpeg_full`; False: OpenCV). `header`: read_header's, when the caller has read it
    already."""
    header = header or read_header(data, max_pixels)
    width, height = header.width, header.height
    # The reduction depends on the longer side only, which a quarter turn keeps; the EXIF
    # orientation is read for a reduced decode's expected shape, and for a full decode that
    # simplejpeg does (OpenCV applies it itself).
    reduction = reduction_for(width, height, min_side) if header.format == "JPEG" else 1
    if reduction == 1 and header.format == "JPEG" and simplejpeg_full:
        image = _full_jpeg(data, header)
        if image is not None:
            return Decoded(image, image.shape[1], image.shape[0])
    if reduction > 1:
        orientation = exif_orientation(header)
        if orientation is None:
            raise UndecodableImage("bytes are not a decodable image")
        if orientation in QUARTER_TURNS:
            width, height = height, width
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, REDUCED_FLAGS.get(reduction, cv2.IMREAD_COLOR))
    if image is None or image.size == 0:
        raise UndecodableImage(f"{header.format} data could not be decoded (truncated or "
                               "corrupt)")
    if reduction == 1:
        return Decoded(image, image.shape[1], image.shape[0])
    expected = (-(-height // reduction), -(-width // reduction))
    if image.shape[:2] != expected:  # not the scaled decode the header promised: decode in full
        return decode_image(data, max_pixels, header=header, simplejpeg_full=simplejpeg_full)
    return Decoded(image, width, height, reduction)
