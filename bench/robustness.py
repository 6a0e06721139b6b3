"""The robustness suite's wall time: a checkpoint on 150 validation images at 256 px, clean and
under 8 corruptions x 3 severities (25 Ultralytics validations), as `visionguard eval robustness`
runs it. Prints the table and the time, writes JSON (and the suite's robustness.json / .png
beside it).

    python bench/robustness.py [--checkpoint best.pt] [--images 150] [--imgsz 256]
                               [--workers 0] [--work /tmp/vg-bench-robustness]
                               [--out bench/results/robustness.json]

Target (issue 13): under 3 minutes on 2 cores.

The dataset is the bootstrap's validation split (generated shapes, seed 0, 256 px), imported
once into a datasets folder under --work (not the user's). The checkpoint defaults to the
bootstrap detector (<runtime dir>/bootstrap/train/weights/best.pt, which `visionguard up` or
`visionguard train` writes). Timed: the suite alone, from the checkpoint's check to the last
validation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from control_plane.datasets.store import DatasetStore  # noqa: E402
from control_plane.datasets.synthetic import import_synthetic  # noqa: E402
from control_plane.evaluation import robustness  # noqa: E402
from control_plane.evaluation.commands import result_table  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

SEED = 0  # the bootstrap's data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vg-bench-robustness"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "robustness.json")
    args = parser.parse_args()
    console = Console()
    settings = replace(Settings(), datasets_dir_override=str(args.work / "datasets"),
                       robustness_workers=args.workers)
    checkpoint = args.checkpoint or settings.bootstrap_dir / "train" / "weights" / "best.pt"
    if not checkpoint.is_file():
        sys.exit(f"no checkpoint at {checkpoint}: pass --checkpoint, or train the bootstrap "
                 "detector first (visionguard train)")
    store = DatasetStore(settings, log_to_mlflow=False)
    dataset = import_synthetic(store, n_train=8, n_val=args.images, imgsz=args.imgsz,
                               seed=SEED, name="bench-robustness").version

    def line(p: robustness.RobustnessProgress) -> None:
        console.print(f"{p.done:2d}/{p.total}: {p.label:18s} mAP50-95 {p.map:.3f} "
                      f"({p.seconds:.1f} s)", highlight=False)

    t0 = time.monotonic()
    result = robustness.evaluate_robustness(settings, checkpoint, dataset,
                                            max_images=args.images, imgsz=args.imgsz,
                                            progress=line)
    wall = time.monotonic() - t0
    console.print(result_table(result))
    target = "under" if wall < 180 else "OVER"
    console.print(f"clean mAP50-95 {result.clean:.3f}, mean ratio {result.mean_ratio:.3f}; "
                  f"{result.images} images x {1 + len(result.scores)} sets at {result.imgsz} "
                  f"px in {wall:.1f} s with {robustness.workers_for(settings, 25)} workers "
                  f"({target} the 3-minute target)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = robustness.write_files(result, args.out.parent / "robustness")
    out = {"bench": "robustness", "wall_s": round(wall, 1), "target_s": 180,
           "workers": robustness.workers_for(settings, 25), "checkpoint": str(checkpoint),
           "cpus": os.cpu_count(), "platform": platform.platform(),
           "load_average_at_end": os.getloadavg(), "result": result.as_dict(),
           "files": [str(json_path), str(png_path)]}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    console.print(f"wrote {args.out}, {png_path}")


if __name__ == "__main__":
    main()
