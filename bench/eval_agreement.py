"""COCO evaluator vs Ultralytics: mAP50 and mAP50-95 of one detector on held-out generated
datasets, from Ultralytics' validator and from faster-coco-eval on the same predictions
(control_plane.evaluation.coco). Prints a table and writes JSON.

    python bench/eval_agreement.py [--checkpoint best.pt] [--seeds 5,6] [--n-val 150]
                                   [--imgsz 256,320] [--work /tmp/vg-bench-eval]
                                   [--out bench/results/eval_agreement.json]

Target (issue 13): the two agree within 0.5 mAP50-95 points on the bootstrap model.

--checkpoint defaults to the champion's best.pt in the runtime directory's MLflow store (the
bootstrap detector `visionguard up` or `visionguard train` registers), else the bootstrap's
own output. Each seed is a held-out dataset (never trained on: the bootstrap uses seed 0)
imported as a version under --work; each image size letterboxes the same images differently,
so the boxes' way back to pixels is exercised at more than one scale. Timings are of both
evaluators together (Ultralytics' validation with its plots dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from control_plane.datasets.store import DatasetStore  # noqa: E402
from control_plane.datasets.synthetic import import_synthetic, synthetic_version  # noqa: E402
from control_plane.evaluation.coco import AGREEMENT_POINTS, evaluate_version  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from bench.machine import cpu_model  # noqa: E402


def champion_checkpoint(settings: Settings, work: Path) -> tuple[Path, str]:
    """The registered champion's best.pt (downloaded), else the bootstrap's output."""
    from control_plane.mlflow_store import CHAMPION, mlflow_client, store_for

    try:
        client = mlflow_client(store_for(settings))
        mv = client.get_model_version_by_alias(settings.model_name, CHAMPION)
        path = client.download_artifacts(mv.run_id, "model/best.pt", str(work))
        return Path(path), f"{settings.model_name} version {mv.version} (champion)"
    except Exception:  # noqa: BLE001 - no store or no champion: try the bootstrap's folder
        local = settings.bootstrap_dir / "train" / "weights" / "best.pt"
        if local.is_file():
            return local, str(local)
    sys.exit("no champion and no bootstrap checkpoint: run `visionguard train` first, or pass "
             "--checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seeds", default="5,6", help="held-out dataset seeds")
    parser.add_argument("--n-val", type=int, default=150, help="val images per dataset")
    parser.add_argument("--size", type=int, default=256, help="generated image size, px")
    parser.add_argument("--imgsz", default="256,320", help="evaluation sizes")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) /
                        "vg-bench-eval")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "eval_agreement.json")
    args = parser.parse_args()
    console = Console(width=150)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(runtime_dir=work, datasets_dir_override="", mlflow_tracking_uri="")
    if args.checkpoint:
        checkpoint, label = args.checkpoint.resolve(), str(args.checkpoint)
    else:
        checkpoint, label = champion_checkpoint(Settings(), work)
    store = DatasetStore(settings, log_to_mlflow=False)

    rows, per_class = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        generated = dict(n_train=8, n_val=args.n_val, imgsz=args.size, seed=seed,
                         name=f"held-out-seed{seed}")
        version = (synthetic_version(store, **generated)
                   or import_synthetic(store, **generated).version)
        for imgsz in (int(s) for s in args.imgsz.split(",")):
            t0 = time.monotonic()
            r = evaluate_version(checkpoint, version, imgsz=imgsz,
                                 work_dir=work / "runs" / f"{version.name}-{imgsz}")
            seconds = time.monotonic() - t0
            rows.append({
                "dataset": version.ref, "imgsz": imgsz, "images": r.images,
                "predictions": r.predictions, "ultralytics": r.ultralytics, "coco": r.coco,
                "delta_points": {k: round(100 * (r.coco[k] - r.ultralytics[k]), 3)
                                 for k in ("mAP50", "mAP50-95")},
                "agrees": r.agrees, "seconds": round(seconds, 1)})
            per_class[f"{version.ref}@{imgsz}"] = r.as_dict()["per_class"]
            console.print(f"{version.ref} at {imgsz}px: {seconds:.0f} s")

    table = Table(title=f"Ultralytics vs COCO evaluator (faster-coco-eval), {label}")
    for column in ("dataset", "imgsz", "images", "predictions", "mAP50 U", "mAP50 COCO",
                   "Δ pts", "mAP50-95 U", "mAP50-95 COCO", "Δ pts", "s"):
        table.add_column(column, justify="left" if column == "dataset" else "right")
    for row in rows:
        u, c, d = row["ultralytics"], row["coco"], row["delta_points"]
        table.add_row(row["dataset"], str(row["imgsz"]), str(row["images"]),
                      str(row["predictions"]), f"{u['mAP50']:.4f}", f"{c['mAP50']:.4f}",
                      f"{d['mAP50']:+.2f}", f"{u['mAP50-95']:.4f}", f"{c['mAP50-95']:.4f}",
                      f"{d['mAP50-95']:+.2f}", f"{row['seconds']:.0f}")
    console.print(table)
    worst = max(abs(v) for row in rows for v in row["delta_points"].values())
    verdict = "[green]within[/]" if worst <= AGREEMENT_POINTS else "[red]OUTSIDE[/]"
    console.print(f"largest difference {worst:.2f} mAP points: {verdict} the "
                  f"{AGREEMENT_POINTS} target")

    import faster_coco_eval
    import ultralytics

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "checkpoint": label, "target_points": AGREEMENT_POINTS, "largest_delta_points": worst,
        "passed": worst <= AGREEMENT_POINTS, "results": rows, "per_class": per_class,
        "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                    "load_average_at_end": os.getloadavg(),
                    "python": platform.python_version()},
        "versions": {"ultralytics": ultralytics.__version__,
                     "faster_coco_eval": faster_coco_eval.__version__},
    }, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
