"""Letterbox to the model's input, and boxes back to the original image: Ultralytics' rules.

The minimal-rectangle letterbox (`auto`): scale the longest side to `imgsz`, pad each side to a
multiple of the stride with grey 114, centred. bus.jpg (810x1080) becomes 480x640, not 640x640,
a quarter less work than a square input.

An image decoded at a reduced scale (decode.py) is letterboxed as its original would be: the
same input shape and the same geometry, so boxes map back to the original's pixels. Its resize
uses the reduction's exact scale (the reduced image is rounded up, 203 pixels for 810 / 4), so
a box does not drift by a fraction of a pixel towards the far edge.
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


def letterbox(bgr: np.ndarray, imgsz: int, stride: int, original: tuple[int, int] | None = None,
              reduction: int = 1) -> tuple[np.ndarray, Letterbox]:
    """BGR HxWx3 -> (RGB letterboxed HxWx3 uint8, geometry to map boxes back).

    `original` (height, width) and `reduction`: `bgr` is that image decoded `reduction` times
    smaller (decode.py's Decoded); the geometry maps to the original's pixels."""
    h, w = original or bgr.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (imgsz - new_w) % stride / 2, (imgsz - new_h) % stride / 2
    if bgr.shape[:2] == (new_h, new_w):
        img = bgr
    elif reduction == 1:
        img = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:  # scale by the original's ratio; the rounded-up last row and column fall off
        img = cv2.resize(bgr, None, fx=new_w * reduction / w, fy=new_h * reduction / h,
                         interpolation=cv2.INTER_LINEAR)[:new_h, :new_w]
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
