"""The per-request drift features: a fixed, named vector of image and output statistics.

One pure function, used by the gateway on live requests and by the control plane on the
champion's evaluation images, so live and reference features are computed the same way.
Image statistics are taken on a copy shrunk to FEATURE_SIDE pixels on its longest side: cheap
(well under a millisecond at 640 px) and independent of the camera's resolution, so a sharpness
value means the same thing for a 256 px and a 1920 px frame.

Output statistics count only detections scoring at least OUTPUT_CONF: requests are sampled
only when their own threshold let every such detection through (see `samplable`), so a
client's `conf=0.5` does not look like a drop in detections.
"""

from __future__ import annotations

import cv2
import numpy as np

FEATURE_SIDE = 160
OUTPUT_CONF = 0.25

IMAGE_FEATURES = (
    "brightness",  # mean luma, 0..255
    "contrast",  # luma standard deviation
    "sharpness",  # log(1 + variance of the Laplacian of luma)
    "saturation",  # mean HSV saturation, 0..255
    "dark_fraction",  # share of pixels with luma < 32
    "bright_fraction",  # share of pixels with luma > 223
    "mean_r",
    "mean_g",
    "mean_b",
)
OUTPUT_FEATURES = (
    "det_count",  # detections scoring >= OUTPUT_CONF
    "mean_score",  # their mean score (0 when none)
    "max_score",  # (0 when none)
    "mean_box_size",  # mean sqrt(box area / image area) (0 when none)
)
FEATURES = IMAGE_FEATURES + OUTPUT_FEATURES


def samplable(conf: float, classes, max_det: int, n_returned: int) -> bool:
    """Whether a request's detections hold every detection scoring >= OUTPUT_CONF."""
    return conf <= OUTPUT_CONF and not classes and n_returned < max_det


def drift_features(bgr: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """FEATURES (float32) of one decoded BGR image and its detections (boxes xyxy in the
    image's pixels, scores in [0, 1])."""
    h, w = bgr.shape[:2]
    scale = FEATURE_SIDE / max(h, w)
    small = bgr
    if scale < 1:
        small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    sat = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)[..., 1]
    b, g, r = cv2.mean(small)[:3]
    mean, std = cv2.meanStdDev(gray)
    n_pix = gray.size

    keep = np.asarray(scores, np.float32) >= OUTPUT_CONF
    s = np.asarray(scores, np.float32)[keep]
    bx = np.asarray(boxes, np.float32).reshape(-1, 4)[keep]
    if s.size:
        area = np.clip(bx[:, 2] - bx[:, 0], 0, None) * np.clip(bx[:, 3] - bx[:, 1], 0, None)
        out = (float(s.size), float(s.mean()), float(s.max()),
               float(np.sqrt(area / float(h * w)).mean()))
    else:
        out = (0.0, 0.0, 0.0, 0.0)
    return np.array([
        float(mean[0, 0]), float(std[0, 0]), float(np.log1p(lap.var())),
        float(sat.mean()), float(np.count_nonzero(gray < 32)) / n_pix,
        float(np.count_nonzero(gray > 223)) / n_pix, r, g, b, *out,
    ], np.float32)
