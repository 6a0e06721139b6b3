"""Labelled images of simple shapes, so a detector can be trained where no weights can be fetched.

Every image comes from its own random stream, seeded by (seed, split, index): the same seed gives
byte-identical files, and validation image i does not change when the training split grows. The
images are meant to be hard enough that a detector must learn the shapes rather than a colour:
random sizes from small to large, rotations, fills (flat, gradient, striped, outlined), textured
and noisy backgrounds, clutter drawn under and over the objects, objects occluding each other and
leaving the frame, blur, and some images with no object at all. Each label is the box around what
is still visible of its object; placements that would hide more than half of an object are
redrawn, so every label points at something a viewer could find.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GENERATOR_VERSION = "synthetic-shapes-v1"
SHAPES = ("circle", "square", "triangle", "star")
SPLITS = ("train", "val")
JPEG_QUALITY = 92
MIN_VISIBLE = 0.5  # fraction of an object's area that must stay visible (occlusion, frame edge)
EMPTY_FRACTION = 0.08  # images with no object: the model must learn to say nothing
MAX_OBJECTS = 8
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 pixel
_ONE = 1 << _SHIFT


@dataclass
class Sample:
    """One rendered image and its ground truth (boxes are pixel xyxy, x2/y2 exclusive)."""

    image: np.ndarray  # H x W x 3 uint8, BGR (as cv2 writes it)
    classes: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) float32
    visible: np.ndarray  # (N, H, W) bool: the pixels of each object left visible


def dataset_name(seed: int) -> str:
    return f"{GENERATOR_VERSION}-seed{seed}"


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


# --- backgrounds -----------------------------------------------------------------------------

def _random_colour(rng: np.random.Generator, sat=(0.0, 1.0), val=(0.1, 1.0)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]],
                   np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _gradient(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return a * (1 - t[..., None]) + b * t[..., None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.choice(["flat", "gradient", "blotches", "stripes", "checker"])
    a, b = _random_colour(rng, sat=(0, 0.7)), _random_colour(rng, sat=(0, 0.7))
    if kind == "flat":
        img = np.broadcast_to(a, (size, size, 3)).astype(np.float32)
    elif kind == "gradient":
        img = _gradient(rng, size, a, b)
    elif kind == "blotches":  # low-frequency colour noise, like an out-of-focus scene
        cells = int(rng.integers(3, 12))
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        img = 0.5 * img + 0.5 * a
    else:  # a low-contrast regular texture at a random period and angle
        period = rng.uniform(6, 40)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == "stripes":
            t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
        else:
            v = -xx * np.sin(angle) + yy * np.cos(angle)
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        b = a + (b - a) * rng.uniform(0.2, 0.6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


# --- shapes ----------------------------------------------------------------------------------

def _polygon(shape: str, rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    rot = rng.uniform(0, 2 * np.pi)
    if shape == "square":
        angles = rot + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif shape == "triangle":  # roughly equilateral, a little skewed
        angles = rot + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        radii = r * rng.uniform(0.9, 1.0, 3)
    elif shape == "star":
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.55))
    else:
        raise ValueError(f"unknown polygon shape {shape!r}")
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts * _ONE).astype(np.int32)


def _shape_alpha(shape: str, rng: np.random.Generator, size: int, cx: float, cy: float,
                 r: float) -> np.ndarray:
    """Anti-aliased coverage of the shape in [0, 1] on a size x size canvas."""
    canvas = np.zeros((size, size), np.uint8)
    if shape == "circle":
        cv2.circle(canvas, (round(cx * _ONE), round(cy * _ONE)), round(r * _ONE), 255, -1,
                   cv2.LINE_AA, _SHIFT)
    else:
        cv2.fillPoly(canvas, [_polygon(shape, rng, cx, cy, r)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that stands out from `under` (the background it will cover), most of the time."""
    best, best_d = None, -1.0
    for _ in range(8):
        colour = _random_colour(rng, sat=(0.2, 1.0), val=(0.15, 1.0))
        d = float(np.linalg.norm(colour - under))
        if d > 90:
            return colour
        if d > best_d:
            best, best_d = colour, d
    return best


def _fill(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """The object's paint: flat, a gradient, or stripes (the alpha mask cuts it to shape)."""
    kind = rng.choice(["flat", "flat", "gradient", "stripes"])
    if kind == "flat":
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    other = np.clip(colour + rng.uniform(-90, 90, 3), 0, 255).astype(np.float32)
    if kind == "gradient":
        return _gradient(rng, size, colour, other)
    period, angle = rng.uniform(4, 16), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = (np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0)
    return np.where(t[..., None], colour, other).astype(np.float32)


# --- clutter ---------------------------------------------------------------------------------

def _clutter_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """Lines, zigzags, thin bars and open arcs: things that are not one of the classes."""
    canvas = np.zeros((size, size), np.uint8)
    kind = rng.choice(["line", "zigzag", "bar", "arc"])
    thickness = int(rng.integers(1, max(2, size // 60)))
    if kind == "line":
        p1, p2 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        cv2.line(canvas, tuple(np.round(p1).astype(int)), tuple(np.round(p2).astype(int)), 255,
                 thickness, cv2.LINE_AA)
    elif kind == "zigzag":
        pts = np.cumsum(rng.uniform(-size / 6, size / 6, (int(rng.integers(3, 7)), 2)), axis=0)
        pts += rng.uniform(0, size, 2)
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thickness,
                      cv2.LINE_AA)
    elif kind == "bar":  # long and thin, so never a square
        length = rng.uniform(0.15, 0.5) * size
        width = length / rng.uniform(4, 10)
        rect = ((float(rng.uniform(0, size)), float(rng.uniform(0, size))), (length, width),
                float(rng.uniform(0, 180)))
        cv2.fillPoly(canvas, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 255,
                     cv2.LINE_AA)
    else:  # at most half a circle's outline, so never a circle
        axes = tuple(int(a) for a in rng.uniform(0.05, 0.25, 2) * size)
        start = float(rng.uniform(0, 360))
        cv2.ellipse(canvas, (int(rng.uniform(0, size)), int(rng.uniform(0, size))), axes,
                    float(rng.uniform(0, 180)), start, start + float(rng.uniform(60, 180)), 255,
                    thickness + 1, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _composite(img: np.ndarray, paint: np.ndarray, alpha: np.ndarray) -> None:
    """img = img * (1 - alpha) + paint * alpha, in place, within alpha's bounding box."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    a = alpha[ys, xs, None]
    img[ys, xs] = img[ys, xs] * (1 - a) + paint[ys, xs] * a


def _keeps_others_visible(cover: np.ndarray, visible: list[np.ndarray], areas: list[float]) -> bool:
    return all(float((v & ~cover).sum()) >= MIN_VISIBLE * a for v, a in zip(visible, areas))


# --- one image -------------------------------------------------------------------------------

def render_sample(rng: np.random.Generator, imgsz: int, classes: tuple[str, ...] = SHAPES
                  ) -> Sample:
    """Draw one image of `classes` shapes; class index = position in `classes`."""
    size = imgsz
    img = _background(rng, size)
    for _ in range(int(rng.integers(0, 4))):  # clutter under the objects
        _composite(img, np.broadcast_to(_random_colour(rng), (size, size, 3)),
                   _clutter_alpha(rng, size))

    n = 0 if rng.random() < EMPTY_FRACTION else int(
        rng.choice(np.arange(1, MAX_OBJECTS + 1), p=_count_probs()))
    cls_ids: list[int] = []
    visible: list[np.ndarray] = []
    areas: list[float] = []
    for _ in range(n):
        for _attempt in range(20):
            c = int(rng.integers(len(classes)))
            # log-uniform size: as many small objects as large ones
            r = float(np.exp(rng.uniform(np.log(0.025 * size), np.log(0.22 * size))))
            cx, cy = rng.uniform(-0.3 * r, size + 0.3 * r, 2)
            # the full area comes from a canvas big enough to hold the whole shape
            pad = int(np.ceil(r)) + 2
            full = _shape_alpha(classes[c], np.random.default_rng(rng.integers(1 << 32)),
                                size + 2 * pad, cx + pad, cy + pad, r)
            area = float((full > 0.5).sum())
            alpha = full[pad:pad + size, pad:pad + size]
            mask = alpha > 0.5
            if area < 12 or mask.sum() < MIN_VISIBLE * area:
                continue  # mostly outside the frame
            if not _keeps_others_visible(mask, visible, areas):
                continue
            under = img[mask].mean(axis=0)
            paint = _fill(rng, size, _contrasting_colour(rng, under))
            _composite(img, paint, alpha)
            if rng.random() < 0.2:  # an outline in another colour
                ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) - cv2.erode(
                    mask.astype(np.uint8), np.ones((3, 3), np.uint8))
                _composite(img, np.broadcast_to(_random_colour(rng), (size, size, 3)),
                           ring.astype(np.float32))
            visible = [v & ~mask for v in visible]
            visible.append(mask)
            areas.append(area)
            cls_ids.append(c)
            break

    for _ in range(int(rng.integers(0, 3))):  # occluders over the objects
        alpha = _clutter_alpha(rng, size)
        cover = alpha > 0.5
        if not _keeps_others_visible(cover, visible, areas):
            continue
        _composite(img, np.broadcast_to(_random_colour(rng), (size, size, 3)), alpha)
        visible = [v & ~cover for v in visible]

    # camera-ish effects: exposure, blur, sensor noise
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0, 10))
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    boxes = np.zeros((len(visible), 4), np.float32)
    for i, v in enumerate(visible):
        ys, xs = np.nonzero(v)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return Sample(image, np.array(cls_ids, np.int64), boxes,
                  np.array(visible, bool).reshape(len(visible), size, size))


def _count_probs() -> np.ndarray:
    p = 1.0 / np.arange(1, MAX_OBJECTS + 1) ** 0.7
    return p / p.sum()


def yolo_labels(sample: Sample) -> str:
    """`class cx cy w h` lines, normalised to the image size."""
    h, w = sample.image.shape[:2]
    lines = []
    for c, (x1, y1, x2, y2) in zip(sample.classes, sample.boxes):
        lines.append(f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(line + "\n" for line in lines)


# --- the dataset -----------------------------------------------------------------------------

def generate_dataset(out_dir: str | Path, *, n_train: int, n_val: int, imgsz: int, seed: int,
                     classes: tuple[str, ...] = SHAPES) -> Path:
    """Write `images/{train,val}`, `labels/{train,val}` and `data.yaml` under `out_dir`.

    Returns the path of `data.yaml` (Ultralytics' dataset file). Folders left by an earlier run
    are replaced, so the result depends only on the arguments.
    """
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPES}, got {classes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for split, count in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for i in range(count):
            sample = render_sample(sample_rng(seed, split, i), imgsz, tuple(classes))
            stem = f"{split}_{i:05d}"
            ok, jpg = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            assert ok
            (out / "images" / split / f"{stem}.jpg").write_bytes(jpg.tobytes())
            (out / "labels" / split / f"{stem}.txt").write_text(yolo_labels(sample))
    # No `path:` key: Ultralytics then resolves the splits beside this file, so the folder can
    # move and the file stays byte-identical.
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"# {dataset_name(seed)}: {n_train} train / {n_val} val images, "
                         f"{imgsz}x{imgsz}\ntrain: images/train\nval: images/val\n"
                         f"nc: {len(classes)}\nnames:\n{names}")
    return yaml_path


def dataset_hash(root: str | Path, split: str | None = None) -> str:
    """sha256 over the images and labels (of one split, or all and data.yaml): the data's identity.

    Ultralytics' `*.cache` files beside the labels are left out.
    """
    root = Path(root)
    splits = [split] if split else list(SPLITS)
    files = [p for s in splits for sub in ("images", "labels")
             for p in sorted((root / sub / s).glob("*")) if p.suffix in (".jpg", ".txt")]
    if split is None:
        files.append(root / "data.yaml")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
