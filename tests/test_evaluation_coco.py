"""The COCO cross-check (control_plane/evaluation/coco.py): the ground truth built from a dataset
version's YOLO labels, faster-coco-eval on it, and its agreement with Ultralytics' validator on
the same predictions of a trained detector (issue 13: within 0.5 mAP points), logged to MLflow
under the artifact names the release report reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from control_plane.datasets import synthetic_data
from control_plane.datasets.store import DatasetStore
from control_plane.datasets.synthetic import import_synthetic
from control_plane.evaluation.coco import (AGREEMENT_POINTS, EvaluationError, coco_ground_truth,
                                           coco_scores, evaluate_on_dataset, log_evaluation,
                                           per_class_ap, with_image_ids)
from control_plane.settings import Settings

N_VAL, SIZE, SEED = 40, 256, 11  # the trained_checkpoint fixture's size; another seed's images
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    runtime = tmp_path_factory.mktemp("eval-runtime")
    return Settings(runtime_dir=runtime, datasets_dir_override="",
                    mlflow_tracking_uri=f"sqlite:///{runtime / 'mlflow.db'}")


@pytest.fixture(scope="module")
def version(settings):
    """40 generated val images of 256 px (and 4 train images) as a dataset version."""
    return import_synthetic(DatasetStore(settings, log_to_mlflow=False), n_train=4, n_val=N_VAL,
                            imgsz=SIZE, seed=SEED).version


def as_predictions(ground_truth: dict, shift: float = 0.0) -> list[dict]:
    """The ground truth's boxes as Ultralytics writes predictions (by file name), moved right
    by `shift` of their width, with descending scores."""
    names = {im["id"]: im["file_name"] for im in ground_truth["images"]}
    out = []
    for i, a in enumerate(ground_truth["annotations"]):
        x, y, w, h = a["bbox"]
        out.append({"image_id": Path(names[a["image_id"]]).stem,
                    "file_name": names[a["image_id"]], "category_id": a["category_id"],
                    "bbox": [x + shift * w, y, w, h], "score": 1.0 - i * 1e-4})
    return out


def test_ground_truth_is_the_generated_boxes_in_pixels(version):
    gt = coco_ground_truth(version)
    files = sorted(p.name for p in version.images_dir("val").iterdir())
    assert [im["file_name"] for im in gt["images"]] == files
    assert [im["id"] for im in gt["images"]] == list(range(1, N_VAL + 1))
    assert all((im["width"], im["height"]) == (SIZE, SIZE) for im in gt["images"])
    assert [c["name"] for c in gt["categories"]] == list(synthetic_data.SHAPES)
    assert len(gt["annotations"]) == version.counts["val"]["boxes"]
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in gt["images"][:12]:  # rendering is the slow part
        index = int(Path(im["file_name"]).stem.split("_")[1])
        drawn = synthetic_data.render_sample(synthetic_data.sample_rng(SEED, "val", index), SIZE)
        boxes = np.array([a["bbox"] for a in by_image.get(im["id"], [])]).reshape(-1, 4)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        # labels keep 5 decimals of the normalised box: 256 px * 5e-6 of rounding
        np.testing.assert_allclose(xyxy, drawn.boxes, atol=0.01)
        assert [a["category_id"] - 1 for a in by_image.get(im["id"], [])] == list(drawn.classes)
        assert all(math.isclose(a["area"], a["bbox"][2] * a["bbox"][3])
                   for a in by_image.get(im["id"], []))


def test_the_ground_truth_scored_against_itself_is_perfect_and_a_shift_costs(version):
    gt = coco_ground_truth(version)
    scores, precision = coco_scores(gt, with_image_ids(as_predictions(gt), gt))
    assert scores == {"mAP50": pytest.approx(1.0), "mAP50-95": pytest.approx(1.0)}
    classes = per_class_ap(gt, precision)
    assert [c.instances for c in classes] == version.counts["val"]["per_class"]
    assert all(c.ap50 == pytest.approx(1.0) and c.ap50_95 == pytest.approx(1.0)
               for c in classes)
    # A box moved by 20% of its width has IoU 0.67 with its object: a match at 0.5 to 0.65,
    # not from 0.7 on, so AP50 stays 1 and AP50-95 drops to 4 of 10 thresholds.
    shifted, _ = coco_scores(gt, with_image_ids(as_predictions(gt, 0.2), gt))
    assert shifted["mAP50"] == pytest.approx(1.0)
    assert shifted["mAP50-95"] == pytest.approx(0.4, abs=0.01)
    with pytest.raises(EvaluationError, match="outside the split"):
        with_image_ids([{**as_predictions(gt)[0], "file_name": "elsewhere.jpg"}], gt)


@pytest.fixture(scope="module")
def evaluated(settings, version, trained_checkpoint, tmp_path_factory):
    return evaluate_on_dataset(settings, trained_checkpoint, version.ref, imgsz=SIZE,
                               work_dir=tmp_path_factory.mktemp("eval-work"))


def test_coco_evaluator_agrees_with_ultralytics_on_the_same_predictions(evaluated, version):
    r = evaluated
    assert r.dataset == version.ref and r.imgsz == SIZE and r.images == N_VAL
    # The detector learned something (a test of agreement between two zeros would not fail).
    assert r.ultralytics["mAP50"] > 0.05 and r.predictions > 0
    for key in ("mAP50", "mAP50-95"):
        assert abs(r.ultralytics[key] - r.coco[key]) * 100 <= AGREEMENT_POINTS, (
            key, r.ultralytics, r.coco)
    assert r.agrees
    assert [c.name for c in r.per_class] == version.classes
    assert [c.instances for c in r.per_class] == version.counts["val"]["per_class"]
    # COCO's mAP is the mean of its per-class APs
    assert np.mean([c.ap50_95 for c in r.per_class]) == pytest.approx(r.coco["mAP50-95"])
    assert np.mean([c.ap50 for c in r.per_class]) == pytest.approx(r.coco["mAP50"])
    assert set(r.figures) == {"pr_curve.png", "confusion_matrix.png"}
    assert all(data.startswith(PNG) for data in r.figures.values())


def test_logged_artifacts_have_the_names_the_report_reads(evaluated, settings, tmp_path):
    from control_plane.mlflow_store import experiment_id, mlflow_client, store_for

    store = store_for(settings)
    client = mlflow_client(store)
    run_id = client.create_run(experiment_id(client, store, "test-evaluation")).info.run_id
    log_evaluation(client, run_id, evaluated)
    names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert names == {"evaluation/metrics.json", "evaluation/pr_curve.png",
                     "evaluation/confusion_matrix.png"}
    path = client.download_artifacts(run_id, "evaluation/metrics.json", str(tmp_path))
    data = json.loads(Path(path).read_text())
    assert set(data) == {"dataset", "imgsz", "ultralytics", "coco", "per_class"}
    assert data["dataset"] == evaluated.dataset and data["imgsz"] == SIZE
    assert data["coco"] == evaluated.coco and data["ultralytics"] == evaluated.ultralytics
    assert data["per_class"][0].keys() == {"class_id", "name", "instances", "ap50", "ap50_95"}
    png = client.download_artifacts(run_id, "evaluation/pr_curve.png", str(tmp_path))
    assert Path(png).read_bytes() == evaluated.figures["pr_curve.png"]
