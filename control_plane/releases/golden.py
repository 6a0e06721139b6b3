"""Golden images: what every candidate must answer sanely before it can serve.

Ultralytics' bus.jpg and zidane.jpg (shipped with the package) and two generated shape scenes
(seed 1234, which no training set here uses), letterboxed as the gateway letterboxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def golden_images(imgsz: int, stride: int) -> list[tuple[str, np.ndarray]]:
    """Letterboxed RGB images every candidate must answer sanely: Ultralytics' bus.jpg and
    zidane.jpg (shipped with the package) and two generated shape scenes."""
    import cv2
    import ultralytics

    from control_plane.datasets.synthetic_data import render_sample, sample_rng
    from tracker_service.letterbox import letterbox

    assets = Path(ultralytics.__file__).parent / "assets"
    images = [(name, cv2.imread(str(assets / name))) for name in ("bus.jpg", "zidane.jpg")]
    for i in range(2):  # seed 1234: not a seed any training set here uses
        images.append((f"shapes-{i}", render_sample(sample_rng(1234, "val", i), imgsz).image))
    return [(name, np.ascontiguousarray(letterbox(bgr, imgsz, stride)[0]))
            for name, bgr in images]
