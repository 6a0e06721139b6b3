"""Reduced-scale JPEG decode (tracker_service/decode.py): when it applies, and that boxes, crops
and the shadow's input stay in the original image's pixels.

Tolerance held against the full decode: a box edge within one model-input pixel (1 / the
letterbox gain, in original pixels). The reduced decode averages where a linear resize samples,
so edges move by a fraction of an input pixel, never by more; detections through the real Triton
are compared with Ultralytics' predictor in tests/test_parity.py.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ultralytics_assets
from tests.test_gateway_service import FakeTriton, Upload, make_service
from tracker_service.decode import decode_image, reduction_for
from tracker_service.detection import DetectOptions
from tracker_service.letterbox import letterbox, to_original
from tracker_service.routing import Routing

# Filled rectangles (x1, y1, x2, y2) on a 810 x 1080 image, bus.jpg's size.
RECTS = [(101, 203, 618, 872), (20, 30, 95, 140), (700, 950, 805, 1075), (333, 17, 512, 61)]


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def rectangles(width: int = 810, height: int = 1080) -> np.ndarray:
    image = np.full((height, width, 3), 30, np.uint8)
    for x1, y1, x2, y2 in RECTS:
        image[y1:y2, x1:x2] = (60, 220, 240)
    return image


def found_boxes(data: bytes, imgsz: int, reduced: bool) -> tuple[np.ndarray, float, int]:
    """The rectangles as the gateway's geometry sees them: decode, letterbox, each bright blob's
    extent (half-intensity threshold) in the letterboxed image, back to original pixels."""
    decoded = decode_image(data, 10**8, imgsz if reduced else 0)
    rgb, geo = letterbox(decoded.image, imgsz, 32, (decoded.height, decoded.width),
                         decoded.reduction)
    mask = (rgb[..., 0] > 145).astype(np.uint8)  # R: 240 inside, 30 outside, 114 padding
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]], np.float32)
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    return to_original(boxes[order], geo), 1 / geo.gain_x, decoded.reduction


@pytest.mark.parametrize("imgsz, reduction", [(256, 4), (320, 2), (128, 8)])
def test_reduced_decode_boxes_in_original_pixels_match_the_full_decode(imgsz, reduction):
    data = jpeg(rectangles())
    full, pixel, full_reduction = found_boxes(data, imgsz, reduced=False)
    ours, _, our_reduction = found_boxes(data, imgsz, reduced=True)
    assert (full_reduction, our_reduction) == (1, reduction)
    assert len(ours) == len(full) == len(RECTS)
    assert np.abs(ours - full).max() <= pixel  # one model-input pixel, in original pixels
    truth = np.array(sorted(RECTS), np.float32)
    assert np.abs(ours - truth).max() <= 1.5 * pixel


def test_reduced_letterbox_has_the_full_decodes_shape_and_geometry():
    data = (ultralytics_assets() / "bus.jpg").read_bytes()
    full, reduced = decode_image(data, 10**8), decode_image(data, 10**8, 256)
    assert reduced.image.shape == (270, 203, 3) and (reduced.width, reduced.height) == (810, 1080)
    a, geo_full = letterbox(full.image, 256, 32)
    b, geo_reduced = letterbox(reduced.image, 256, 32, (reduced.height, reduced.width), 4)
    assert a.shape == b.shape == (256, 192, 3) and geo_full == geo_reduced


@pytest.mark.parametrize("size, imgsz, expected", [
    ((810, 1080), 256, 4), ((810, 1080), 320, 2), ((810, 1080), 540, 2), ((810, 1080), 541, 1),
    ((810, 1080), 640, 1), ((1280, 720), 640, 2), ((4000, 3000), 640, 4), ((8000, 100), 640, 8),
    ((640, 480), 640, 1), ((1080, 810), 0, 1)])
def test_the_reduction_never_makes_the_longer_side_smaller_than_the_input(size, imgsz, expected):
    assert reduction_for(*size, imgsz) == expected
    assert expected == 1 or max(size) / expected >= imgsz


@pytest.mark.parametrize("ext", [".png", ".webp"])
def test_png_and_webp_are_decoded_in_full(ext):
    image = rectangles()
    decoded = decode_image(cv2.imencode(ext, image)[1].tobytes(), 10**8, 256)
    assert decoded.reduction == 1 and decoded.image.shape == image.shape


def test_a_jpeg_less_than_twice_the_input_is_decoded_in_full():
    decoded = decode_image(jpeg(rectangles(400, 300)), 10**8, 256)
    assert decoded.reduction == 1 and decoded.image.shape == (300, 400, 3)


def test_exif_rotation_gives_the_rotated_original_size():
    """OpenCV applies the EXIF orientation, reduced or not; the original size must follow."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rectangles()[..., ::-1]).save(buffer, "JPEG", quality=95, exif=exif)
    full = decode_image(buffer.getvalue(), 10**8)
    reduced = decode_image(buffer.getvalue(), 10**8, 256)
    assert full.image.shape[:2] == (810, 1080)
    assert (reduced.height, reduced.width, reduced.reduction) == (810, 1080, 4)
    assert reduced.image.shape[:2] == (203, 270)


# --- through the service (Triton is a fake: it "detects" the bright rectangle) ----------------

def bright_rectangle(width: int = 1600, height: int = 1200) -> bytes:
    """A large JPEG (reduced at the fake model's 640 px input) with one bright, textured box."""
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[300:700, 500:900] = rng.integers(215, 256, (400, 400, 3), dtype=np.uint8)
    image[300:500, 500:900, :2] = 205  # a pink top half, for the embedder's colour stripes
    return jpeg(image)


async def detect(reduced: bool, tracker: str = "sort"):
    service, _ = await make_service(FakeTriton("1"), Routing("detector", "1", None, 0.0),
                                    tracker=tracker, reduced_decode=reduced)
    return service, await service.detect(Upload(bright_rectangle()), DetectOptions())


async def test_the_service_answers_in_original_pixels_with_the_setting_on_and_off():
    _, full = await detect(reduced=False)
    _, ours = await detect(reduced=True)
    assert full.reduction == 1 and full.image.shape[:2] == (1200, 1600)
    assert ours.reduction == 2 and ours.image.shape[:2] == (600, 800)
    assert (ours.width, ours.height) == (full.width, full.height) == (1600, 1200)
    pixel = 1600 / 640
    np.testing.assert_allclose(full.boxes[0], [500, 300, 900, 700], atol=pixel)
    np.testing.assert_allclose(ours.boxes[0], full.boxes[0], atol=pixel)
    np.testing.assert_allclose(ours.image_boxes(), ours.boxes / 2)


async def test_deepsort_crops_of_a_reduced_image_are_the_boxes_own_pixels():
    service_full, full = await detect(reduced=False, tracker="deepsort")
    service_ours, ours = await detect(reduced=True, tracker="deepsort")
    a, b = await service_full._embed(full), await service_ours._embed(ours)
    wrong = service_ours.embedder.embed(cv2.cvtColor(ours.image, cv2.COLOR_BGR2RGB), ours.boxes)
    assert float((a * b).sum()) >= 0.98  # unit vectors: cosine similarity
    # The check can fail: the same boxes unscaled (original pixels on the reduced image) crop
    # the wrong region, whose embedding is far from the right one.
    assert float((a * wrong).sum()) < 0.9


async def test_the_shadows_letterbox_of_a_reduced_image_gives_the_champions_boxes():
    """shadow.py letterboxes `Detections.image` again for the shadow version: with the reduced
    decode that image is the reduced one, and its boxes must come back as the champion's did."""
    triton = FakeTriton("1")
    _, d = await detect(reduced=True)
    assert d.reduction == 2
    rgb, geo = letterbox(d.image, 640, 32, (d.height, d.width), d.reduction)
    shadow = (await triton.infer(rgb, conf=0.25, iou=0.7, max_det=300, version="1")).detections
    np.testing.assert_array_equal(to_original(shadow[:, :4], geo), d.boxes)


def test_the_exif_orientation_is_read_only_when_the_jpeg_has_exif(monkeypatch):
    """Reduced or in full, the orientation is parsed once when the JPEG carries EXIF (a reduced
    decode's expected shape needs it; a full decode applies it to simplejpeg's pixels), and not
    at all when it carries none."""
    reads = []
    real = Image.Image.getexif
    monkeypatch.setattr(Image.Image, "getexif", lambda self: reads.append(1) or real(self))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rectangles()[..., ::-1]).save(buffer, "JPEG", quality=95, exif=exif)
    Image.open(io.BytesIO(buffer.getvalue())).load()
    pillows_own = len(reads)  # Pillow's JPEG plugin reads it itself while opening
    reads.clear()
    full = decode_image(buffer.getvalue(), 10**8, 640)  # 1080 < 2 x 640: in full
    assert (full.width, full.height, full.reduction) == (1080, 810, 1)
    assert len(reads) == pillows_own + 1
    reads.clear()
    reduced = decode_image(buffer.getvalue(), 10**8, 256)
    assert (reduced.width, reduced.height, reduced.reduction) == (1080, 810, 4)
    assert len(reads) == pillows_own + 1
    reads.clear()
    plain = decode_image(jpeg(rectangles()), 10**8, 640)
    assert (plain.width, plain.height) == (810, 1080)
    assert reads == []  # no EXIF: neither Pillow nor decode_image parses one
