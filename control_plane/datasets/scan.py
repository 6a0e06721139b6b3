"""One pass over a dataset's images and labels: each file read once, in worker processes.

Per image: its sha256 (exact duplicates), a decode that fails on a truncated or corrupt file
(PIL, with LOAD_TRUNCATED_IMAGES off; `verify()` alone passes a JPEG cut short), its size as
the file says and as loaders see it after the EXIF orientation, and a 64-bit perceptual hash
(imagehash's pHash) and a 16 x 16 colour thumbnail for near duplicates. A JPEG is decoded at
1/8 scale (libjpeg's DCT scaling through `Image.draft`), which still reads every byte of the
stream, so truncation is caught at a fraction of a full decode's cost, and the hash and the
thumbnail need no more than 80 x 80 pixels.
Per label file: its `class cx cy w h` rows, and what is wrong with the rows that are not.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations that swap width and height
THUMB = (16, 16)
INLINE_BELOW = 64  # fewer images than this: no worker processes (their start costs more)


@dataclass(frozen=True)
class Progress:
    """A step of an import or a validation: `done` of `total` items (total 0: one item)."""

    step: str
    done: int = 0
    total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class ImageFacts:
    split: str
    image: str  # relative to the dataset root
    label: str | None  # relative to the dataset root; None: no label file
    sha256: str = ""
    size: tuple[int, int] = (0, 0)  # (width, height) as loaders see it (EXIF applied)
    file_size: tuple[int, int] = (0, 0)  # (width, height) in the file's header
    orientation: int = 1
    error: str | None = None  # why the image does not decode
    phash: int | None = None
    thumb: np.ndarray | None = None  # 16 x 16 x 3 uint8, RGB: confirms a near duplicate
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # class cx cy w h
    label_errors: list[str] = field(default_factory=list)


@contextmanager
def pillow_open():
    """Decode with Pillow's own `Image.open` while in this block.

    Importing ultralytics (the control plane does, for registration and drift) replaces
    `PIL.Image.open` process-wide with a wrapper that, on an image Pillow cannot identify,
    tries to pip-install a HEIF plugin: offline that is a ModuleNotFoundError instead of "this
    image does not decode", and online it would install a package in the middle of an import.
    """
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is None or Image.open is original:
        yield
        return
    wrapped, Image.open = Image.open, original
    try:
        yield
    finally:
        Image.open = wrapped


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as Ultralytics and cv2 load the file: the header's, swapped by an EXIF
    orientation of 5-8. Reads the header only."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(EXIF_ORIENTATION)
    return (h, w) if orientation in QUARTER_TURNS else (w, h)


def parse_label(text: str) -> tuple[np.ndarray, list[str]]:
    rows, errors = [], []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            errors.append(f"line {n}: expected `class cx cy w h`, got {len(parts)} values")
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            errors.append(f"line {n}: not numbers: {line.strip()[:60]!r}")
            continue
        if not all(np.isfinite(values)) or values[0] != int(values[0]):
            errors.append(f"line {n}: class must be a whole number, values finite: "
                          f"{line.strip()[:60]!r}")
            continue
        rows.append(values)
    return (np.array(rows, np.float64).reshape(-1, 5), errors)


def scan_one(task: tuple[str, str, str, str | None]) -> ImageFacts:
    """The facts of one image and its label file; never raises for a bad file."""
    from PIL import Image
    import imagehash

    root, split, image_rel, label_rel = task
    facts = ImageFacts(split, image_rel, label_rel)
    try:
        data = Path(root, image_rel).read_bytes()
    except OSError as exc:
        facts.error = f"cannot read: {exc.strerror or exc}"
        return facts
    facts.sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            facts.file_size = im.size
            facts.orientation = int(im.getexif().get(EXIF_ORIENTATION) or 1)
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
            rgb = im.convert("RGB")
            facts.phash = int(str(imagehash.phash(rgb.convert("L"))), 16)
            facts.thumb = np.asarray(rgb.resize(THUMB, Image.Resampling.BOX), np.uint8)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        facts.error = f"does not decode: {exc}"
    w, h = facts.file_size
    facts.size = (h, w) if facts.orientation in QUARTER_TURNS else (w, h)
    if label_rel is not None:
        try:
            facts.rows, facts.label_errors = parse_label(
                Path(root, label_rel).read_text(errors="replace"))
        except OSError as exc:
            facts.label_errors = [f"cannot read: {exc.strerror or exc}"]
    return facts


def worker_count(setting: int = 0) -> int:
    if setting > 0:
        return setting
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def scan(tasks: Sequence[tuple[str, str, str, str | None]], *, workers: int = 0,
         progress: ProgressCallback | None = None) -> list[ImageFacts]:
    """`scan_one` over `tasks`, in order, on `workers` processes (spawned: the parent may run
    threads, a progress display's for one, that a fork would copy mid-lock)."""
    report = progress or (lambda _p: None)
    total = len(tasks)
    n = worker_count(workers)
    report(Progress("scan", 0, total))
    out: list[ImageFacts] = []
    if n == 1 or total < INLINE_BELOW:
        for i, task in enumerate(tasks, 1):
            out.append(scan_one(task))
            if i % 50 == 0 or i == total:
                report(Progress("scan", i, total))
        return out
    chunk = max(8, min(128, total // (n * 8)))
    # spawn re-runs the parent's main script in each worker; a main with no file to run
    # (`python -`) would kill them, so there the workers are forked
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    method = "spawn" if main is None or os.path.isfile(main) else "fork"
    with ProcessPoolExecutor(max_workers=n, mp_context=get_context(method)) as pool:
        for i, facts in enumerate(pool.map(scan_one, tasks, chunksize=chunk), 1):
            out.append(facts)
            if i % 100 == 0 or i == total:
                report(Progress("scan", i, total))
    return out
