"""A JPEG decoded in full by simplejpeg (tracker_service/decode.py): the very pixels OpenCV's
imdecode gives (Ultralytics' predictor decodes with it), EXIF orientation included, and OpenCV
still decoding or rejecting what simplejpeg cannot take."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ultralytics_assets
from tracker_service import decode
from tracker_service.decode import decode_image
from tracker_service.errors import UndecodableImage


def textured(width: int = 640, height: int = 480) -> np.ndarray:
    """Smooth gradients, sharp edges and noise: every part of the decoder has work to do."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    image[100:300, 150:420] = rng.integers(0, 256, (200, 270, 3), dtype=np.uint8)
    image[350:460, 20:200] = (20, 200, 240)
    return image


def pillow_jpeg(image: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def assert_simplejpeg_decoded(monkeypatch, data: bytes) -> np.ndarray:
    """decode_image's pixels, checking that simplejpeg (not the OpenCV fallback) made them."""
    calls = []
    real = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    image = decode_image(data, 10**8).image
    assert calls, "simplejpeg was not used"
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_opencvs_pixels(monkeypatch, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pillow_jpeg(textured(), quality=92, exif=exif)
    ours = assert_simplejpeg_decoded(monkeypatch, data)
    expected = opencv(data)
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)
    if orientation >= 5:
        assert ours.shape[:2] == (640, 480)  # a quarter turn: the displayed image is portrait


@pytest.mark.parametrize("save", [
    {"quality": 75, "subsampling": 2},            # 4:2:0
    {"quality": 95, "subsampling": 0},            # 4:4:4
    {"quality": 90, "subsampling": 1},            # 4:2:2
    {"quality": 85, "progressive": True},
    {"quality": 80, "optimize": True},
], ids=["420", "444", "422", "progressive", "optimized"])
def test_encodings_give_opencvs_pixels(monkeypatch, save):
    data = pillow_jpeg(textured(643, 389), **save)  # odd sizes: partial MCUs at the edges
    assert np.array_equal(assert_simplejpeg_decoded(monkeypatch, data), opencv(data))


def test_grayscale_gives_opencvs_three_channels(monkeypatch):
    data = pillow_jpeg(textured()[..., 0], quality=90)
    ours = assert_simplejpeg_decoded(monkeypatch, data)
    assert ours.shape == (480, 640, 3) and np.array_equal(ours, opencv(data))


def test_bus_jpg_gives_opencvs_pixels(monkeypatch):
    data = (ultralytics_assets() / "bus.jpg").read_bytes()
    assert np.array_equal(assert_simplejpeg_decoded(monkeypatch, data), opencv(data))


def test_cmyk_gives_opencvs_pixels(monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(textured()).convert("CMYK").save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    assert np.array_equal(assert_simplejpeg_decoded(monkeypatch, data), opencv(data))


def test_what_simplejpeg_refuses_goes_to_opencv(monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6
    data = pillow_jpeg(textured(), quality=90, exif=exif)

    def refuse(*args, **kwargs):
        raise ValueError("simulated: simplejpeg cannot decode this")

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", refuse)
    decoded = decode_image(data, 10**8)
    assert np.array_equal(decoded.image, opencv(data))
    assert (decoded.width, decoded.height) == (480, 640)


def test_truncated_and_corrupt_jpegs_are_rejected_as_opencv_rejects_them(monkeypatch):
    """A truncated JPEG passes the header check; simplejpeg refuses it, then OpenCV does too:
    422's error. A corrupt one (zeros after its first 600 bytes) is refused as OpenCV refuses
    it, wherever the check catches it."""
    data = pillow_jpeg(textured(), quality=90)
    calls = []
    real = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    truncated = data[: len(data) // 3]
    assert opencv(truncated) is None
    with pytest.raises(UndecodableImage):
        decode_image(truncated, 10**8)
    assert calls == [1]  # simplejpeg was asked first
    corrupt = data[:600] + bytes(len(data) - 600)
    assert opencv(corrupt) is None
    with pytest.raises(UndecodableImage):
        decode_image(corrupt, 10**8)


def test_the_setting_off_decodes_with_opencv(monkeypatch):
    """VG_GATEWAY_SIMPLEJPEG_FULL_DECODE=0 (simplejpeg_full=False): OpenCV decodes in full."""
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg",
                        lambda *a, **k: pytest.fail("simplejpeg used with the setting off"))
    data = pillow_jpeg(textured(), quality=90)
    assert np.array_equal(decode_image(data, 10**8, simplejpeg_full=False).image, opencv(data))
