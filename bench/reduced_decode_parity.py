"""What the gateway's reduced-scale JPEG decode costs in accuracy: agreement with Ultralytics'
predictor and mAP against the labels, with the decode in full and reduced, on the same images.

    python bench/reduced_decode_parity.py --checkpoint best.pt [--imgsz 256]
        [--sizes 512,1024] [--n-val 100] [--conf 0.01]

For each generated image size (held-out shapes, seed 99; at imgsz 256, 512 px images decode at
1/2 and 1024 px at 1/4) every validation image goes through:
  - Ultralytics' predictor (YOLO.predict on the file: full decode, its letterbox, its NMS);
  - the gateway's path with the decode in full and reduced: tracker_service.decode,
    tracker_service.letterbox (through the reduction), the same PyTorch model, Ultralytics' NMS,
    to_original. The served model itself matches this PyTorch forward within 1e-4 of its output
    range (tests/test_parity.py), so the difference measured here is the decode's.
Reported per path: boxes matched one-to-one to the predictor's (same class, Hungarian on IoU,
IoU >= 0.5) as a share of both sides, the matched IoU (median, 1st percentile, min), the score
difference (median, 99th percentile, max), and mAP50 / mAP50-95 against the labels
(faster-coco-eval, control_plane.evaluation.coco). Prints a table and writes JSON
(default bench/results/reduced_decode_parity.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from tracker_service.decode import decode_image  # noqa: E402
from tracker_service.letterbox import letterbox, to_original  # noqa: E402

console = Console(width=160)
MATCH_IOU = 0.5
PATHS = ("full", "reduced")


def gateway_path(model, data: bytes, imgsz: int, conf: float, reduced: bool) -> np.ndarray:
    """[K, 6] x1 y1 x2 y2 score class in the original's pixels, as the gateway computes them."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    decoded = decode_image(data, 10**9, imgsz if reduced else 0)
    rgb, geo = letterbox(decoded.image, imgsz, 32, (decoded.height, decoded.width),
                         decoded.reduction)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        dets = non_max_suppression(model(x)[0], conf, 0.7, max_det=300)[0].numpy()
    dets[:, :4] = to_original(dets[:, :4], geo)
    return dets


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = (np.prod(x[:, 2:] - x[:, :2], axis=1) for x in (a, b))
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def match(ours: np.ndarray, theirs: np.ndarray) -> tuple[list[float], list[float]]:
    """IoUs and |score differences| of the one-to-one matches (same class, IoU >= MATCH_IOU)."""
    from scipy.optimize import linear_sum_assignment

    if not len(ours) or not len(theirs):
        return [], []
    iou = box_iou(ours[:, :4], theirs[:, :4])
    iou[ours[:, 5][:, None] != theirs[:, 5][None, :]] = 0
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] >= MATCH_IOU
    rows, cols = rows[keep], cols[keep]
    return iou[rows, cols].tolist(), np.abs(ours[rows, 4] - theirs[cols, 4]).tolist()


def coco_predictions(image_id: int, dets: np.ndarray) -> list[dict]:
    return [{"image_id": image_id, "category_id": int(c) + 1,
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)}
            for x1, y1, x2, y2, s, c in dets]


def ground_truth(images: list[Path], names: dict[int, str]) -> dict:
    import cv2

    out_images, annotations = [], []
    for image_id, path in enumerate(images, 1):
        h, w = cv2.imread(str(path)).shape[:2]
        out_images.append({"id": image_id, "file_name": path.name, "width": w, "height": h})
        label = path.parents[2] / "labels" / path.parent.name / f"{path.stem}.txt"
        for row in label.read_text().split("\n"):
            if not row.strip():
                continue
            cls, cx, cy, bw, bh = (float(v) for v in row.split())
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(cls) + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    return {"images": out_images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in names.items()]}


def measure(yolo, images: list[Path], imgsz: int, conf: float, progress, task) -> dict:
    from control_plane.evaluation.coco import coco_scores

    preds = {k: [] for k in ("predictor", *PATHS)}
    agreement = {k: {"ours": 0, "theirs": 0, "ious": [], "score_deltas": []} for k in PATHS}
    reductions = set()
    for image_id, path in enumerate(images, 1):
        data = path.read_bytes()
        theirs = yolo.predict(str(path), imgsz=imgsz, conf=conf, verbose=False)[0].boxes
        theirs = np.concatenate([theirs.xyxy.numpy(), theirs.conf.numpy()[:, None],
                                 theirs.cls.numpy()[:, None]], axis=1)
        preds["predictor"] += coco_predictions(image_id, theirs)
        reductions.add(decode_image(data, 10**9, imgsz).reduction)
        for k in PATHS:
            ours = gateway_path(yolo.model, data, imgsz, conf, k == "reduced")
            preds[k] += coco_predictions(image_id, ours)
            ious, deltas = match(ours, theirs)
            a = agreement[k]
            a["ours"] += len(ours)
            a["theirs"] += len(theirs)
            a["ious"] += ious
            a["score_deltas"] += deltas
        progress.advance(task)
    gt = ground_truth(images, yolo.names)
    out = {"images": len(images), "reduction": sorted(reductions), "paths": {}}
    for k in ("predictor", *PATHS):
        scores, _ = coco_scores(gt, preds[k])
        row = {"mAP50": scores["mAP50"], "mAP50-95": scores["mAP50-95"],
               "detections": len(preds[k])}
        if k in agreement:
            a = agreement[k]
            ious, deltas = np.array(a["ious"] or [np.nan]), np.array(a["score_deltas"] or [np.nan])
            row.update({
                "matched": len(a["ious"]),
                "matched_share_of_ours": len(a["ious"]) / max(a["ours"], 1),
                "matched_share_of_predictor": len(a["ious"]) / max(a["theirs"], 1),
                "iou_median": float(np.median(ious)), "iou_p1": float(np.percentile(ious, 1)),
                "iou_min": float(ious.min()),
                "score_delta_median": float(np.median(deltas)),
                "score_delta_p99": float(np.percentile(deltas, 99)),
                "score_delta_max": float(deltas.max())})
        out["paths"][k] = row
    return out


def print_result(size: int, imgsz: int, conf: float, r: dict) -> None:
    table = Table(title=f"{size} px images at imgsz {imgsz} (decode reduction "
                        f"{'/'.join(map(str, r['reduction']))}), {r['images']} images, conf {conf}")
    for column in ("path", "detections", "matched to predictor (ours / its)", "IoU p50 / p1 / min",
                   "|Δscore| p50 / p99 / max", "mAP50", "mAP50-95"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for k, row in r["paths"].items():
        if k == "predictor":
            table.add_row("Ultralytics predictor", str(row["detections"]), "", "", "",
                          f"{row['mAP50']:.4f}", f"{row['mAP50-95']:.4f}")
            continue
        table.add_row(f"gateway, {k} decode", str(row["detections"]),
                      f"{row['matched_share_of_ours']:.3f} / "
                      f"{row['matched_share_of_predictor']:.3f}",
                      f"{row['iou_median']:.3f} / {row['iou_p1']:.3f} / {row['iou_min']:.3f}",
                      f"{row['score_delta_median']:.4f} / {row['score_delta_p99']:.4f} / "
                      f"{row['score_delta_max']:.4f}",
                      f"{row['mAP50']:.4f}", f"{row['mAP50-95']:.4f}")
    console.print(table)


def main() -> None:
    from ultralytics import YOLO

    from control_plane.datasets.synthetic_data import generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--sizes", default="512,1024", help="generated image sizes, px")
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=99, help="held-out dataset seed")
    parser.add_argument("--conf", type=float, default=0.01)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "reduced_decode_parity.json")
    args = parser.parse_args()
    yolo = YOLO(str(args.checkpoint))
    yolo.model.float().eval()
    results = {"checkpoint": str(args.checkpoint), "imgsz": args.imgsz, "conf": args.conf,
               "match_iou": MATCH_IOU, "machine": {"cpu": cpu_model(),
                                                   "cores": len(os.sched_getaffinity(0)),
                                                   "python": platform.python_version()},
               "sizes": {}}
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="vg-bench-reduced-") as tmp, \
            Progress(console=console, transient=True) as progress:
        task = progress.add_task("images", total=args.n_val * len(sizes))
        for size in sizes:
            data_yaml = generate_dataset(Path(tmp) / str(size), n_train=0, n_val=args.n_val,
                                         imgsz=size, seed=args.seed)
            images = sorted((data_yaml.parent / "images" / "val").glob("*.jpg"))
            results["sizes"][size] = measure(yolo, images, args.imgsz, args.conf, progress,
                                             task)
    for size, r in results["sizes"].items():
        print_result(size, args.imgsz, args.conf, r)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.out)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
