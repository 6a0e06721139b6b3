"""A checkpoint scored on a dataset version's val split twice: by Ultralytics' validator, and by
an independent COCO evaluator on the same predictions.

Ultralytics validates with `save_json=True`, which writes the predictions it scored (boxes back
in each image's pixels) to `predictions.json`. The COCO ground truth is built here from the
version's YOLO label files, not from Ultralytics' dataloader: one image id per val image (in
file-name order), each normalised `class cx cy w h` turned into a pixel `[x, y, w, h]` box
with the image's size as loaders see it (EXIF-rotated: `datasets.scan.image_size`), category
id = class + 1 (Ultralytics' numbering for datasets that are not COCO). faster-coco-eval
(Apache-2.0; pycocotools' algorithm in C++) scores the predictions against it, matched to
images by file name. Two implementations that share neither the ground truth nor the matching
code agree when both are right; `AGREEMENT_POINTS` is how close they must be (issue 13: 0.5
mAP points). The predictions COCO reads are the boxes Ultralytics scored, not clipped to the
image: Ultralytics matches them unclipped but clips the ones it writes, and with clipped boxes
COCO scored a small detector 0.7-1.3 mAP50-95 points higher on 150 generated images (objects at
the image's edge), 0.13-0.15 without (bench/eval_agreement.py). What remains is by
construction: Ultralytics integrates its PR curve with the trapezoid rule, COCO averages 101
recall points and keeps 100 detections per image and class.

The result (`EvaluationResult`) holds both, per-class AP from the COCO evaluator's precision
array, and Ultralytics' PR curve and confusion matrix as PNG. `log_evaluation` puts them in an
MLflow run under fixed names, which the release report reads:
`evaluation/metrics.json`, `evaluation/pr_curve.png`, `evaluation/confusion_matrix.png`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from control_plane.datasets.layout import DatasetVersion, is_image
from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings

log = logging.getLogger("visionguard.evaluation")

ARTIFACT_DIR = "evaluation"
METRICS_JSON = "metrics.json"
PR_CURVE = "pr_curve.png"
CONFUSION_MATRIX = "confusion_matrix.png"
# Ultralytics' file names in the validator's folder -> ours.
_FIGURES = {"BoxPR_curve.png": PR_CURVE, "confusion_matrix.png": CONFUSION_MATRIX}
AGREEMENT_POINTS = 0.5  # mAP points (percent) the two evaluators may differ by
DEFAULT_BATCH = 16
SPLIT = "val"


class EvaluationError(ControlPlaneError):
    """The checkpoint or the dataset cannot be evaluated (a refused checkpoint, a class count
    that does not match the dataset's)."""

    code = "evaluation_failed"


@dataclass(frozen=True)
class ClassAP:
    class_id: int
    name: str
    instances: int  # ground-truth boxes in the split
    ap50: float | None  # None: no instances, so no AP (COCO's -1)
    ap50_95: float | None


@dataclass(frozen=True)
class EvaluationResult:
    dataset: str  # NAME@VERSION
    imgsz: int
    ultralytics: dict[str, float]  # mAP50, mAP50-95
    coco: dict[str, float]  # mAP50, mAP50-95
    per_class: list[ClassAP]
    images: int
    predictions: int
    precision: float  # Ultralytics' mean precision and recall at its confidence choice
    recall: float
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # PR_CURVE, ...

    @property
    def disagreement(self) -> float:
        """The larger |Ultralytics - COCO| of mAP50 and mAP50-95, in mAP points."""
        return 100 * max(abs(self.ultralytics[k] - self.coco[k]) for k in ("mAP50", "mAP50-95"))

    @property
    def agrees(self) -> bool:
        return self.disagreement <= AGREEMENT_POINTS

    def as_dict(self) -> dict:
        """`evaluation/metrics.json`."""
        return {"dataset": self.dataset, "imgsz": self.imgsz,
                "ultralytics": dict(self.ultralytics), "coco": dict(self.coco),
                "per_class": [asdict(c) for c in self.per_class]}

    def metrics(self) -> dict[str, float]:
        """Flat metrics for an MLflow run: Ultralytics' (the ones gates compare) under their
        names, the COCO evaluator's as coco_*, per-class COCO AP50-95 as mAP50-95/<class>."""
        out = {"mAP50": self.ultralytics["mAP50"], "mAP50-95": self.ultralytics["mAP50-95"],
               "precision": self.precision, "recall": self.recall,
               "coco_mAP50": self.coco["mAP50"], "coco_mAP50-95": self.coco["mAP50-95"]}
        out.update({f"mAP50-95/{c.name}": c.ap50_95 for c in self.per_class
                    if c.ap50_95 is not None})
        return out


# --- the ground truth and the COCO evaluator ---------------------------------------------------

def coco_ground_truth(version: DatasetVersion, split: str = SPLIT) -> dict:
    """The split's YOLO labels as a COCO detection dict (images, annotations, categories)."""
    from control_plane.datasets.scan import image_size, parse_label, pillow_open

    images, annotations = [], []
    paths = sorted(p for p in version.images_dir(split).iterdir() if is_image(p))
    with pillow_open():
        for image_id, path in enumerate(paths, 1):
            w, h = image_size(path)
            images.append({"id": image_id, "file_name": path.name, "width": w, "height": h})
            label = version.labels_dir(split) / f"{path.stem}.txt"
            rows, errors = parse_label(label.read_text()) if label.is_file() else (
                np.zeros((0, 5)), [])
            if errors:
                raise EvaluationError(f"{version.ref}: {label.name}: {errors[0]}")
            for cls, cx, cy, bw, bh in rows:
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": int(cls) + 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(version.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def with_image_ids(predictions: list[dict], ground_truth: dict) -> list[dict]:
    """Ultralytics' predictions (image_id = the file's stem) with the ground truth's image ids,
    matched by file name."""
    ids = {im["file_name"]: im["id"] for im in ground_truth["images"]}
    unknown = sorted({p["file_name"] for p in predictions} - ids.keys())
    if unknown:
        raise EvaluationError(f"predictions for images outside the split: {unknown[:3]}")
    return [{"image_id": ids[p["file_name"]], "category_id": int(p["category_id"]),
             "bbox": [float(v) for v in p["bbox"]], "score": float(p["score"])}
            for p in predictions]


def coco_scores(ground_truth: dict, predictions: list[dict]) -> tuple[dict[str, float],
                                                                        np.ndarray]:
    """faster-coco-eval on `predictions` (COCO result dicts with the ground truth's image ids):
    {"mAP50", "mAP50-95"} and the precision array [IoU 10, recall 101, class, area 4, maxDets 3]
    (-1 where a class has no ground truth)."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = log.debug
    gt = COCO(ground_truth, use_deepcopy=True, print_function=quiet)
    dt = gt.loadRes([dict(p) for p in predictions])
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=quiet)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    # COCO reports -1 when nothing can be scored (no ground truth at all).
    scores = {"mAP50": max(0.0, float(stats["AP_50"])),
              "mAP50-95": max(0.0, float(stats["AP_all"]))}
    return scores, np.asarray(evaluator.eval["precision"])


def per_class_ap(ground_truth: dict, precision: np.ndarray) -> list[ClassAP]:
    """AP50 and AP50-95 per class from the COCO precision array (area all, 100 detections)."""
    instances = np.bincount([a["category_id"] - 1 for a in ground_truth["annotations"]],
                            minlength=len(ground_truth["categories"]))
    out = []
    for k, category in enumerate(ground_truth["categories"]):
        p = precision[:, :, k, 0, -1]
        ap50_95 = float(p[p > -1].mean()) if (p > -1).any() else None
        ap50 = float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else None
        out.append(ClassAP(k, category["name"], int(instances[k]), ap50, ap50_95))
    return out


# --- one evaluation ----------------------------------------------------------------------------

def _validator():
    """Ultralytics' detection validator with our offline callbacks, its plots of metrics (PR
    curve, confusion matrix) but not of sample batches (those draw text with a font it
    downloads), and no COCO scoring of its own: ours is independent of its ground truth."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops

    from control_plane.training.train import _without_integrations

    class Validator(_without_integrations(DetectionValidator)):
        def plot_val_samples(self, batch, ni) -> None:
            pass

        def plot_predictions(self, batch, preds, ni, max_det=None) -> None:
            pass

        def eval_json(self, stats):
            return stats

        def scale_preds(self, predn, pbatch):
            # The boxes in the image's pixels as Ultralytics scored them: its matching sees
            # them before they are clipped to the image, and so must COCO (Ultralytics clips
            # the ones it writes to predictions.json; a box of an object at the image's edge
            # then overlaps its object more and COCO scored ~1 mAP50-95 point higher).
            xywh = ops.scale_boxes(pbatch["imgsz"], ops.xyxy2xywh(predn["bboxes"]),
                                   pbatch["ori_shape"], ratio_pad=pbatch["ratio_pad"],
                                   xywh=True)
            return {**predn, "bboxes": ops.xywh2xyxy(xywh)}

    return Validator


def evaluate_version(weights: str | Path, version: DatasetVersion, *, imgsz: int,
                     batch: int = DEFAULT_BATCH, work_dir: Path | None = None,
                     threads: int | None = None) -> EvaluationResult:
    """Score `weights` on `version`'s val split with both evaluators (CPU). Ultralytics'
    outputs go to `work_dir/evaluation` (a temporary folder when None)."""
    from control_plane.mlflow_store import offline

    offline()
    from control_plane.training.train import (_no_font_download, _torch_threads,
                                              _ultralytics_logging)
    from export.checkpoint import CheckpointError, yolo_from_checkpoint

    try:
        model = yolo_from_checkpoint(weights)  # weights-only: nothing in the file runs
    except CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    if len(model.names) != len(version.classes):
        raise EvaluationError(f"{weights} predicts {len(model.names)} classes, {version.ref} "
                              f"has {len(version.classes)}")
    if threads:
        model.add_callback("on_val_start", _torch_threads(threads))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vg-eval-")))
        stack.enter_context(_no_font_download())
        stack.enter_context(_ultralytics_logging(False))
        metrics = model.val(validator=_validator(), data=str(version.data_yaml), split=SPLIT,
                            imgsz=imgsz, batch=batch, device="cpu", workers=0, plots=True,
                            save_json=True, project=str(work_dir), name="evaluation",
                            exist_ok=True, verbose=False)
        save_dir = Path(metrics.save_dir)
        predictions_file = save_dir / "predictions.json"  # absent when nothing was detected
        predictions = json.loads(predictions_file.read_text()) if predictions_file.is_file() \
            else []
        figures = {ours: (save_dir / theirs).read_bytes() for theirs, ours in _FIGURES.items()
                   if (save_dir / theirs).is_file()}
    ground_truth = coco_ground_truth(version)
    coco, precision = coco_scores(ground_truth, with_image_ids(predictions, ground_truth))
    box = metrics.box
    result = EvaluationResult(
        dataset=version.ref, imgsz=imgsz,
        ultralytics={"mAP50": float(box.map50), "mAP50-95": float(box.map)}, coco=coco,
        per_class=per_class_ap(ground_truth, precision), images=len(ground_truth["images"]),
        predictions=len(predictions), precision=float(box.mp), recall=float(box.mr),
        figures=figures)
    log.info("evaluated %s on %s: mAP50-95 %.4f (Ultralytics) / %.4f (COCO), %.2f points apart",
             weights, version.ref, result.ultralytics["mAP50-95"], coco["mAP50-95"],
             result.disagreement, extra={
                 "event": "evaluation", "dataset": version.ref, "imgsz": imgsz,
                 "ultralytics_map": result.ultralytics["mAP50-95"],
                 "coco_map": coco["mAP50-95"], "points_apart": round(result.disagreement, 3)})
    return result


def evaluate_on_dataset(settings: Settings, weights: str | Path, dataset_ref: str, *,
                        imgsz: int, batch: int = DEFAULT_BATCH,
                        work_dir: Path | None = None) -> EvaluationResult:
    """`evaluate_version` on dataset version `dataset_ref` (NAME or NAME@VERSION), its files
    first checked against its content hash (`DatasetModified`)."""
    from control_plane.datasets.store import DatasetStore

    store = DatasetStore(settings, log_to_mlflow=False)
    version = store.resolve(dataset_ref)
    store.verify(version)
    return evaluate_version(weights, version, imgsz=imgsz, batch=batch, work_dir=work_dir)


def log_evaluation(client, run_id: str, result: EvaluationResult) -> None:
    """The result's artifacts in run `run_id`: evaluation/metrics.json, evaluation/pr_curve.png,
    evaluation/confusion_matrix.png (metrics are the caller's to log: `result.metrics()`)."""
    client.log_dict(run_id, result.as_dict(), f"{ARTIFACT_DIR}/{METRICS_JSON}")
    with tempfile.TemporaryDirectory(prefix="vg-eval-figures-") as tmp:
        for name, data in result.figures.items():
            (Path(tmp) / name).write_bytes(data)
            client.log_artifact(run_id, str(Path(tmp) / name), ARTIFACT_DIR)


def evaluate_and_log(weights: Path, version: DatasetVersion, *, imgsz: int, batch: int,
                     work_dir: Path, threads: int | None, client, run_id: str
                     ) -> dict[str, float]:
    """The `control_plane.training.train.Evaluator` that `visionguard train --data` uses: both
    evaluators, the artifacts logged to the training run, the metrics returned for it."""
    result = evaluate_version(weights, version, imgsz=imgsz, batch=batch, work_dir=work_dir,
                              threads=threads)
    log_evaluation(client, run_id, result)
    if not result.agrees:
        log.warning("Ultralytics and the COCO evaluator differ by %.2f mAP points on %s",
                    result.disagreement, version.ref,
                    extra={"event": "evaluation_disagreement", "dataset": version.ref})
    return result.metrics()
