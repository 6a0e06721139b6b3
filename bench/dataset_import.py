"""Dataset import and validation throughput: N generated JPEGs imported (COCO JSON and a YOLO
folder) and validated, as `visionguard data import` does it. Prints a table, writes JSON.

    python bench/dataset_import.py [--images 5000] [--size 640] [--formats coco,yolo]
                                   [--work /tmp/vg-bench-datasets] [--mlflow]
                                   [--out bench/results/dataset_import.json]

Target (issue 13): 5,000 images of 640 px imported and validated in under 2 minutes on 2 cores.

The images are control_plane.datasets.synthetic_data scenes rendered at --render-size (256 px:
rendering at 640 px costs 0.3 s an image, 25 minutes for 5,000 on one core) and resized to
--size with per-image sensor noise (sigma 3), so each 640-px JPEG (quality 92, ~100 KB) has
the entropy a camera's has; the labels are the rendered boxes, normalised. Generation is not
timed and is cached in --work between runs. Each import writes into a fresh datasets folder
under --work (MLflow logging off unless --mlflow: it costs the same whatever the dataset's
size). "validate" is `visionguard data validate` on the imported version, alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from control_plane.datasets.scan import Progress, worker_count  # noqa: E402
from control_plane.datasets.store import DatasetStore  # noqa: E402
from control_plane.datasets.validate import validate  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.datasets import synthetic_data  # noqa: E402
from bench.machine import cpu_model  # noqa: E402

SEED = 11
VAL_EVERY = 5  # every 5th image is val: 20%


def _render(job: tuple[str, int, int, int]) -> tuple[str, list[dict]]:
    out, i, size, render = job
    split = "val" if i % VAL_EVERY == 0 else "train"
    rng = synthetic_data.sample_rng(SEED, split, i)
    sample = synthetic_data.render_sample(rng, render)
    image = cv2.resize(sample.image, (size, size), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(i).normal(0, 3, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    name = f"{split}_{i:05d}.jpg"
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    Path(out, "images", split, name).write_bytes(jpg.tobytes())
    scale = size / render
    (Path(out, "labels", split, name[:-4] + ".txt")).write_text(
        synthetic_data.yolo_labels(sample))
    boxes = [{"category_id": int(c) + 1, "bbox": [float(x1 * scale), float(y1 * scale),
                                                  float((x2 - x1) * scale),
                                                  float((y2 - y1) * scale)]}
             for c, (x1, y1, x2, y2) in zip(sample.classes, sample.boxes)]
    return name, boxes


def generate(work: Path, n: int, size: int, render: int, console: Console) -> Path:
    """A YOLO folder and COCO files (annotations/instances_{train,val}.json) of n images."""
    src = work / f"source-{n}-{size}px-from-{render}px-seed{SEED}"
    if (src / "done").is_file():
        return src
    shutil.rmtree(src, ignore_errors=True)
    for split in ("train", "val"):
        (src / "images" / split).mkdir(parents=True)
        (src / "labels" / split).mkdir(parents=True)
    t0 = time.monotonic()
    results: dict[str, list[dict]] = {}
    with get_context("spawn").Pool(worker_count()) as pool:
        for k, (name, boxes) in enumerate(pool.imap(
                _render, [(str(src), i, size, render) for i in range(n)], chunksize=16), 1):
            results[name] = boxes
            if k % 500 == 0:
                console.print(f"generated {k}/{n} images ({time.monotonic() - t0:.0f} s)")
    names = "".join(f"  {i}: {c}\n" for i, c in enumerate(synthetic_data.SHAPES))
    (src / "data.yaml").write_text(f"train: images/train\nval: images/val\nnc: 4\nnames:\n"
                                   f"{names}")
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(synthetic_data.SHAPES)]
    (src / "annotations").mkdir()
    for split in ("train", "val"):
        images, anns = [], []
        for name in sorted(n for n in results if n.startswith(split)):
            images.append({"id": len(images) + 1, "file_name": name, "width": size,
                           "height": size})
            for box in results[name]:
                anns.append({"id": len(anns) + 1, "image_id": len(images), "iscrowd": 0,
                             "area": box["bbox"][2] * box["bbox"][3], **box})
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
    (src / "done").write_text(f"{time.monotonic() - t0:.1f} s\n")
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--render-size", type=int, default=256)
    parser.add_argument("--formats", default="coco,yolo")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vg-bench-datasets"))
    parser.add_argument("--mlflow", action="store_true", help="log each version to MLflow")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "dataset_import.json")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    args.work.mkdir(parents=True, exist_ok=True)
    src = generate(args.work, args.images, args.size, args.render_size, console)
    jpeg_mb = sum(p.stat().st_size for p in (src / "images").rglob("*.jpg")) / 2**20

    rows = []
    for fmt in args.formats.split(","):
        runtime = args.work / f"runtime-{fmt}"
        shutil.rmtree(runtime, ignore_errors=True)
        settings = Settings(runtime_dir=runtime)
        marks: dict[str, float] = {}

        def on_progress(p: Progress, marks=marks) -> None:
            marks.setdefault(p.step, time.monotonic())

        store = DatasetStore(settings, log_to_mlflow=args.mlflow, progress=on_progress)
        t0 = time.monotonic()
        result = store.import_(src, fmt=fmt, name=f"bench-{fmt}")
        import_s = time.monotonic() - t0
        steps = list(marks.items()) + [("end", t0 + import_s)]
        step_s = {a: round(tb - ta, 2) for (a, ta), (_, tb) in zip(steps, steps[1:])}
        t1 = time.monotonic()
        report = validate(result.version.path, settings=settings)
        validate_s = time.monotonic() - t1
        findings = {k: n for k, n in report.counts().items() if n}
        rows.append({"format": fmt, "images": args.images, "import_s": round(import_s, 1),
                     "import_images_per_s": round(args.images / import_s, 1),
                     "validate_s": round(validate_s, 1),
                     "validate_images_per_s": round(args.images / validate_s, 1),
                     "steps_s": step_s, "version": result.version.ref,
                     "passed": report.passed, "findings": findings})
        shutil.rmtree(runtime, ignore_errors=True)

    table = Table(title=f"{args.images} JPEGs of {args.size} px ({jpeg_mb:.0f} MiB), "
                        f"{worker_count()} cores ({cpu_model()})")
    for col in ("format", "import + validate", "images/s", "validate alone", "images/s",
                "slowest steps (s)", "findings"):
        table.add_column(col)
    for r in rows:
        slow = sorted(r["steps_s"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(r["format"], f"{r['import_s']:.1f} s", f"{r['import_images_per_s']:.0f}",
                      f"{r['validate_s']:.1f} s", f"{r['validate_images_per_s']:.0f}",
                      ", ".join(f"{k} {v:.1f}" for k, v in slow),
                      ", ".join(f"{k} {n}" for k, n in r["findings"].items()) or "none")
    console.print(table)
    target = all(r["import_s"] < 120 for r in rows)
    console.print(f"target (import + validation of 5,000 images under 2 min): "
                  f"{'met' if target and args.images >= 5000 else 'not met'}")
    import PIL
    import imagehash
    import supervision

    out = {"images": args.images, "size": args.size, "render_size": args.render_size,
           "jpeg_mib": round(jpeg_mb, 1), "cores": worker_count(), "cpu": cpu_model(),
           "load_average_at_end": os.getloadavg(), "mlflow": args.mlflow, "results": rows,
           "versions": {"python": platform.python_version(), "supervision": supervision.__version__,
                        "imagehash": imagehash.__version__, "pillow": PIL.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
