"""Letterbox to the model's input, and boxes back to the original image: Ultralytics' rules.

The minimal-rectangle letterbox (`auto`): scale the longest side to `imgsz`, pad each side to a
multiple of the stride with grey 114, centred. bus.jpg (810x1080) becomes 480x640, not 640x640,
a quarter less work than a square input.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    orig_h: int
    orig_w: int
    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


def letterbox(bgr: np.ndarray, imgsz: int, stride: int) -> tuple[np.ndarray, Letterbox]:
    """BGR HxWx3 -> (RGB letterboxed HxWx3 uint8, geometry to map boxes back)."""
    h, w = bgr.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (imgsz - new_w) % stride / 2, (imgsz - new_h) % stride / 2
    img = bgr if (w, h) == (new_w, new_h) else cv2.resize(
        bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                             value=(PAD_VALUE,) * 3)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return rgb, Letterbox(h, w, new_w / w, new_h / h, left, top)


def to_original(boxes: np.ndarray, geo: Letterbox) -> np.ndarray:
    """xyxy boxes in letterboxed pixels -> original image pixels, clipped to the image."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = ((out[:, [0, 2]] - geo.pad_x) / geo.gain_x).clip(0, geo.orig_w)
    out[:, [1, 3]] = ((out[:, [1, 3]] - geo.pad_y) / geo.gain_y).clip(0, geo.orig_h)
    return out
