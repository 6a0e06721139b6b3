"""Synthetic camera shifts for drift tests and benchmarks: fog, night, blur, noise.

Each takes a BGR uint8 image, a severity in (0, 1] and a generator, and returns a BGR uint8
image of the same size. Severity 1 is a plainly visible shift; smaller values are subtler.
"""

from __future__ import annotations

import cv2
import numpy as np


def fog(bgr: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Haze: blend towards a bright grey airlight (contrast and saturation drop)."""
    a = 0.55 * severity
    light = rng.uniform(200, 235)
    out = bgr.astype(np.float32) * (1 - a) + light * a
    return np.clip(out, 0, 255).astype(np.uint8)


def night(bgr: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Low light: darker, gamma-crushed, bluish, with sensor noise."""
    x = bgr.astype(np.float32) / 255.0
    gain = 1.0 - 0.6 * severity
    x = np.power(x, 1.0 + 1.0 * severity) * gain
    x *= np.array([1.0 + 0.2 * severity, 1.0, 1.0 - 0.15 * severity], np.float32)  # BGR
    x += rng.standard_normal(x.shape).astype(np.float32) * (0.015 * severity)
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def blur(bgr: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Defocus: Gaussian blur, sigma up to 2.5 % of the image's longest side."""
    sigma = max(0.3, 0.025 * max(bgr.shape[:2]) * severity)
    return cv2.GaussianBlur(bgr, (0, 0), sigma)


def noise(bgr: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: additive Gaussian, sigma up to 30 grey levels."""
    out = bgr.astype(np.float32) + rng.standard_normal(bgr.shape).astype(np.float32) * (
        30.0 * severity)
    return np.clip(out, 0, 255).astype(np.uint8)


SHIFTS = {"fog": fog, "night": night, "blur": blur, "noise": noise}


def generated_features(detector, *, n: int, seed: int, imgsz: int, shift: str | None = None,
                       severity: float = 1.0, split: str = "val", start: int = 0,
                       jpeg_quality: int = 92) -> np.ndarray:
    """[n, len(FEATURES)] live-like samples: images of the bootstrap generator (seed `seed`,
    indices start..start+n), optionally shifted, JPEG-encoded as a camera would send them,
    decoded, run through `detector` (bgr -> scores, boxes) and featurised as the gateway does."""
    from control_plane.datasets.synthetic_data import render_sample, sample_rng
    from tracker_service.drift_features import drift_features

    rows = []
    for i in range(start, start + n):
        image = render_sample(sample_rng(seed, split, i), imgsz).image
        if shift is not None:
            image = SHIFTS[shift](image, severity, np.random.default_rng([seed, i, 7]))
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok
        bgr = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
        scores, boxes = detector(bgr)
        rows.append(drift_features(bgr, scores, boxes))
    return np.stack(rows)
