"""Synthetic crossing scenes with exact ground truth, for testing identity keeping.

People-like figures (a coloured shirt over coloured trousers, a head) walk across a textured
background in both directions along overlapping lanes, so they meet, occlude one another and part
again; they change pace at random (also while hidden), which defeats constant-velocity
prediction alone. Detections are the true boxes with jitter, random misses and no detection
at all while a figure is mostly hidden. Frames are rendered on demand, so an appearance
embedder sees exactly what a detector would have seen.

Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SyntheticSequence", "make_crossing_sequence", "write_sequence"]

# Clearly distinct clothing colours (RGB); figures draw a pair, never the same pair twice.
_PALETTE = np.array(
    [
        [220, 40, 40], [40, 90, 220], [40, 170, 60], [235, 200, 30], [150, 50, 180],
        [240, 130, 20], [30, 190, 200], [240, 240, 240], [30, 30, 30], [200, 90, 150],
    ],
    dtype=np.uint8,
)
_SKIN = np.array([224, 180, 150], dtype=np.uint8)


@dataclass
class SyntheticSequence:
    """A rendered scene: true boxes, detections and MOTChallenge ground truth."""

    size: tuple[int, int]  # (height, width)
    boxes: np.ndarray  # (T, K, 4) true corners of every figure
    present: np.ndarray  # (T, K) figure inside the scene
    visible: np.ndarray  # (T, K) fraction of the box not hidden by nearer figures
    colours: np.ndarray  # (K, 2, 3) shirt, trousers
    detections: list[np.ndarray]  # per frame (N, 6)
    seed: int
    _background: np.ndarray = field(repr=False, default=None)
    #: Nominal frames per second. Figures walk about 0.75 of their height per second at 30, as
    #: people do (1.3 m/s for 1.7 m); a subsampled copy of the scene has a proportionally lower rate.
    frame_rate: float = 30.0

    @property
    def n_frames(self) -> int:
        return len(self.boxes)

    def frame(self, index: int) -> np.ndarray:
        """RGB frame ``index`` (0-based) as (H, W, 3) uint8."""
        img = self._background.copy()
        order = self._depth_order(index)
        for k in order:
            _draw_figure(img, self.boxes[index, k], self.colours[k])
        noise = np.random.default_rng((self.seed, index)).integers(-6, 7, size=img.shape)
        return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    def _depth_order(self, index: int) -> np.ndarray:
        """Figures far to near (feet higher in the image = farther), nearest drawn last."""
        k = np.flatnonzero(self.present[index])
        return k[np.argsort(self.boxes[index, k, 3], kind="stable")]

    def ground_truth(self, min_visible: float = 0.0) -> np.ndarray:
        """MOTChallenge gt rows ``frame, id, x, y, w, h, 1, -1, -1, visibility`` (1-based)."""
        t, k = np.nonzero(self.present & (self.visible > min_visible))
        b = self.boxes[t, k]
        rows = np.full((len(t), 10), -1.0)
        rows[:, 0] = t + 1
        rows[:, 1] = k + 1
        rows[:, 2:4] = b[:, :2]
        rows[:, 4:6] = b[:, 2:] - b[:, :2]
        rows[:, 6] = 1
        rows[:, 9] = self.visible[t, k]
        return rows

    def det_rows(self) -> np.ndarray:
        """Detections as MOTChallenge det rows ``frame, -1, x, y, w, h, score, -1, -1, -1``."""
        rows = []
        for i, d in enumerate(self.detections, start=1):
            r = np.full((len(d), 10), -1.0)
            r[:, 0] = i
            r[:, 2:4] = d[:, :2]
            r[:, 4:6] = d[:, 2:4] - d[:, :2]
            r[:, 6] = d[:, 4]
            rows.append(r)
        return np.concatenate(rows) if rows else np.empty((0, 10))


def _draw_figure(img: np.ndarray, box: np.ndarray, colours: np.ndarray) -> None:
    H, W = img.shape[:2]
    x1, y1, x2, y2 = box
    h = y2 - y1
    head = y1 + 0.18 * h
    waist = y1 + 0.55 * h
    w = x2 - x1

    def fill(xa, ya, xb, yb, colour):
        xa, xb = int(np.clip(round(xa), 0, W)), int(np.clip(round(xb), 0, W))
        ya, yb = int(np.clip(round(ya), 0, H)), int(np.clip(round(yb), 0, H))
        if xb > xa and yb > ya:
            img[ya:yb, xa:xb] = colour

    fill(x1 + 0.3 * w, y1, x2 - 0.3 * w, head, _SKIN)
    fill(x1, head, x2, waist, colours[0])
    fill(x1 + 0.1 * w, waist, x2 - 0.1 * w, y2, colours[1])


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    base = 110 + 40 * (yy / H) + 15 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    tex = rng.normal(0, 8, size=(H // 8 + 1, W // 8 + 1)).repeat(8, 0).repeat(8, 1)[:H, :W]
    g = base + tex
    return np.clip(np.stack([g * 0.95, g, g * 0.9], axis=-1), 0, 255).astype(np.uint8)


def make_crossing_sequence(
    seed: int = 0,
    n_frames: int = 200,
    n_objects: int = 8,
    size: tuple[int, int] = (240, 360),
    miss_rate: float = 0.05,
    jitter: float = 0.04,
    min_visible: float = 0.5,
    pace_change: float = 0.04,
) -> SyntheticSequence:
    """A scene of ``n_objects`` figures crossing each other.

    Args:
        miss_rate: chance a visible figure is not detected in a frame.
        jitter: detection noise, standard deviation as a fraction of the box size.
        min_visible: a figure less visible than this is not detected (it is occluded).
        pace_change: per-frame chance that a figure picks a new walking speed.
    """
    rng = np.random.default_rng(seed)
    H, W = size
    K = n_objects
    pairs = rng.permutation([(a, b) for a in range(len(_PALETTE)) for b in range(len(_PALETTE)) if a != b])
    colours = _PALETTE[pairs[:K]]  # (K, 2, 3)

    heights = rng.uniform(0.28, 0.36, K) * H
    widths = heights * rng.uniform(0.34, 0.42, K)
    # Lanes: feet on a few close rows, so figures in both directions overlap when they meet.
    feet = H * 0.62 + rng.choice([-0.06, 0.0, 0.06], K) * H + rng.normal(0, 2.0, K)
    direction = np.where(np.arange(K) % 2 == 0, 1.0, -1.0)[rng.permutation(K)]
    speed = rng.uniform(1.2, 2.6, K)
    start = rng.integers(0, max(1, n_frames // 3), K)

    boxes = np.zeros((n_frames, K, 4))
    present = np.zeros((n_frames, K), dtype=bool)
    for k in range(K):
        x = -widths[k] if direction[k] > 0 else W + widths[k]
        y = feet[k]
        v = speed[k]
        for t in range(start[k], n_frames):
            if rng.random() < pace_change:
                v = speed[k] * rng.uniform(0.3, 1.7)
            x += direction[k] * v
            y += rng.normal(0, 0.3)
            cx = x
            b = np.array([cx - widths[k] / 2, y - heights[k], cx + widths[k] / 2, y])
            if b[2] < 0 or b[0] > W:  # outside: not entered yet, or gone for good
                if present[:t, k].any():
                    break
                continue
            boxes[t, k] = b
            present[t, k] = True

    seq = SyntheticSequence(
        size=(H, W), boxes=boxes, present=present, visible=np.zeros((n_frames, K)),
        colours=colours, detections=[], seed=seed, _background=_background(rng, size),
    )
    seq.visible = _visibility(seq)

    dets = []
    for t in range(n_frames):
        ks = np.flatnonzero(present[t] & (seq.visible[t] >= min_visible))
        ks = ks[rng.random(len(ks)) >= miss_rate]
        b = boxes[t, ks]
        wh = np.concatenate([b[:, 2:] - b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        noisy = b + rng.normal(0, jitter, size=b.shape) * wh
        d = np.zeros((len(ks), 6))
        d[:, :4] = noisy
        d[:, 4] = np.clip(0.55 + 0.45 * seq.visible[t, ks] - rng.uniform(0, 0.15, len(ks)), 0.05, 1.0)
        dets.append(d[rng.permutation(len(d))])  # detectors promise no order
    seq.detections = dets
    return seq


def _visibility(seq: SyntheticSequence) -> np.ndarray:
    """Fraction of each figure's box left uncovered by the boxes of nearer figures."""
    H, W = seq.size
    vis = np.zeros(seq.present.shape)
    for t in range(seq.n_frames):
        order = seq._depth_order(t)
        if not len(order):
            continue
        label = np.full((H, W), -1, dtype=np.int32)
        for k in order:
            x1, y1, x2, y2 = np.clip(np.round(seq.boxes[t, k]), 0, [W, H, W, H]).astype(int)
            label[y1:y2, x1:x2] = k
        counts = np.bincount(label[label >= 0].ravel(), minlength=len(seq.colours))
        area = np.prod(seq.boxes[t, :, 2:] - seq.boxes[t, :, :2], axis=1)
        vis[t] = np.where(seq.present[t], counts / np.maximum(area, 1.0), 0.0)
    return np.clip(vis, 0.0, 1.0)


def write_sequence(seq: SyntheticSequence, folder: str | Path, images: bool = True) -> Path:
    """Write ``folder/{seqinfo.ini, img1/000001.png, det/det.txt, gt/gt.txt}`` (MOTChallenge layout)."""
    import imageio.v3 as iio

    from ..mot import write_mot

    folder = Path(folder)
    (folder / "det").mkdir(parents=True, exist_ok=True)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    write_mot(folder / "det" / "det.txt", seq.det_rows())
    write_mot(folder / "gt" / "gt.txt", seq.ground_truth())
    H, W = seq.size
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={folder.name}\nimDir=img1\nframeRate={seq.frame_rate:g}\n"
        f"seqLength={seq.n_frames}\nimWidth={W}\nimHeight={H}\nimExt=.png\n"
    )
    if images:
        (folder / "img1").mkdir(exist_ok=True)
        for t in range(seq.n_frames):
            iio.imwrite(folder / "img1" / f"{t + 1:06d}.png", seq.frame(t))
    return folder
