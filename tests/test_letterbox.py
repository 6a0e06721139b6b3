"""The gateway's letterbox and box mapping are Ultralytics' to the pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils.ops import scale_boxes

from tests.conftest import ultralytics_assets
from tracker_service.letterbox import letterbox, to_original


@pytest.mark.parametrize("shape", [(1080, 810), (720, 1280), (333, 517), (640, 640), (97, 1500)])
def test_letterbox_matches_ultralytics_predictor(shape):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, geo = letterbox(bgr, 640, 32)
    theirs = LetterBox(640, auto=True, stride=32)(image=bgr)
    np.testing.assert_array_equal(ours, theirs[..., ::-1])  # ours is RGB, theirs BGR
    assert ours.shape[0] % 32 == 0 and ours.shape[1] % 32 == 0


def test_bus_runs_at_640x480():
    bgr = cv2.imread(str(ultralytics_assets() / "bus.jpg"))
    rgb, _ = letterbox(bgr, 640, 32)
    assert rgb.shape == (640, 480, 3)


@pytest.mark.parametrize("shape", [(1080, 810), (333, 517), (97, 1500)])
def test_boxes_map_back_like_scale_boxes(shape):
    bgr = np.zeros((*shape, 3), np.uint8)
    rgb, geo = letterbox(bgr, 640, 32)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [rgb.shape[1], rgb.shape[0]], (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 200, (50, 2))], axis=1).astype(np.float32)
    expected = scale_boxes(rgb.shape[:2], torch.from_numpy(boxes.copy()), shape).numpy()
    np.testing.assert_allclose(to_original(boxes, geo), expected, atol=1e-3)
