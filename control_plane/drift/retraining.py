"""Retraining for an approved drift request: from the champion, on the newest version of the
champion's dataset, once labelled production frames have come in since the champion was trained.

Drift says the live images moved away from what the champion saw; retraining on the data it was
already trained on cannot fix that. So a request trains only when the dataset the champion was
trained on (its registered version's `dataset` tag) has a newer version holding production
frames the champion's version does not (a labelled export merged by `visionguard data import
DIR --labeled-export`, whose notes list them: `datasets/labeled_import.py`); otherwise it is
refused with `NoNewLabelledData`, naming the dataset, its versions and the commands that add
labelled frames.

The training is `visionguard train --data NAME@VERSION --from champion` (`train_command`, with
the COCO cross-check as its evaluator): a candidate registered without an alias, tagged with
the request's id (`RETRAINING_TAG`), which serves once a release engineer promotes it. Then it
is scored beside the champion on the two parts of the new version's validation split, the
images the champion was validated on and the production frames added since (mAP50-95 of each
model on each part: `retraining_evaluation` on the version, metrics `retraining.*` and
`retraining/evaluation.json` in its run), and gets the robustness suite
(`evaluation/robustness.py`; VG_RETRAIN_ROBUSTNESS_*), which it keeps on its run and tags as the
promotion gate reads them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from control_plane.datasets.layout import SPLITS, DatasetVersion
from control_plane.errors import Conflict, ControlPlaneError
from control_plane.settings import Settings

log = logging.getLogger("visionguard.drift")

# The registered version trained for a retraining request carries the request's id in this tag,
# so `retrain-approved` trains each approved request once, whoever ran the training.
RETRAINING_TAG = "visionguard.retraining_request"
TAG_EVALUATION = "retraining_evaluation"  # the candidate's and champion's mAP on old/new val
EVALUATION_JSON = "evaluation.json"
ARTIFACT_DIR = "retraining"


class NoNewLabelledData(Conflict):
    """The champion's dataset has no labelled production frames the champion has not seen:
    retraining would relearn the data it was trained on."""

    code = "no_new_labelled_data"
    exit_code = 3


@dataclass(frozen=True)
class RetrainingPlan:
    """What an approved request trains on, and the two validation sets it is scored on."""

    model: str
    champion: str  # its version number
    champion_run_id: str
    trained_on: DatasetVersion  # the version the champion was trained on
    dataset: DatasetVersion  # the newest version: what the candidate trains on
    new_frames: dict[str, list[str]]  # split -> production frames added since the champion
    old_val: list[str]  # the val images the champion was validated on (file names)

    @property
    def new_val(self) -> list[str]:
        return self.new_frames["val"]


def _frames(version: DatasetVersion) -> dict[str, set[str]]:
    recorded = version.notes.get("production_frames", {})
    return {s: set(recorded.get(s, {})) for s in SPLITS}


def plan(settings: Settings, request_id: str) -> RetrainingPlan:
    """The data a request trains on; `NoNewLabelledData` when there is none new (and
    `NoChampionDataset` when the champion names no dataset)."""
    from control_plane.datasets.labeled_import import champion_dataset
    from control_plane.datasets.store import DatasetStore

    store = DatasetStore(settings, log_to_mlflow=False)
    trained, champion = champion_dataset(settings, store)
    versions = store.list(trained.name)
    newest = versions[-1]
    before, after = _frames(trained), _frames(newest)
    new = {s: sorted(after[s] - before[s]) for s in SPLITS}
    if newest.version == trained.version or not any(new.values()):
        listing = ", ".join(v.version + (" (champion's)" if v.version == trained.version else "")
                            for v in versions)
        why = (f"no version of {trained.name} is newer" if newest.version == trained.version
               else f"the newest, {newest.ref}, has no labelled production frames the "
                    "champion has not seen")
        raise NoNewLabelledData(
            f"retraining request {request_id}: no new labelled data, so nothing was trained. "
            f"The champion ({settings.model_name} version {champion['version']}) was trained "
            f"on {trained.ref}; {trained.name} has the versions {listing}, and {why}. Label "
            f"sampled frames first (`visionguard data export-for-labeling --out DIR`, correct "
            f"them, `visionguard data import DIR --labeled-export`), then approve or run "
            f"`visionguard drift retrain-approved` again", request=request_id,
            dataset=trained.name, champion_dataset=trained.ref,
            versions=[v.version for v in versions])
    old_val = sorted(rel.split("/")[-1] for rel in trained.files
                     if rel.startswith("images/val/"))
    return RetrainingPlan(settings.model_name, champion["version"], champion["run_id"],
                          trained, newest, new, old_val)


def retrain(settings: Settings, request_id: str, out_dir: Path, *, console,
            epochs: int | None = None, imgsz: int | None = None):
    """Train, tag, score and robustness-test the candidate for `request_id`; its
    `TrainResult`. `epochs` and `imgsz` override VG_RETRAIN_EPOCHS and the champion's size."""
    from control_plane.evaluation.coco import evaluate_and_log
    from control_plane.mlflow_store import mlflow_client, store_for
    from control_plane.training import train

    chosen = plan(settings, request_id)
    added = ", ".join(f"{len(v)} {s}" for s, v in chosen.new_frames.items())
    console.print(f"retraining for request {request_id}: from champion {chosen.model} version "
                  f"{chosen.champion} (trained on {chosen.trained_on.ref}) on "
                  f"{chosen.dataset.ref}, with production frames added since ({added})")
    overrides = {k: v for k, v in {"epochs": epochs or settings.retrain_epochs or None,
                                   "imgsz": imgsz}.items() if v}
    result = train.train_command(settings, out_dir, data=chosen.dataset.ref, base="champion",
                                 console=console, evaluate=evaluate_and_log, **overrides)
    client = mlflow_client(store_for(settings))
    client.set_model_version_tag(result.registered_name, result.version, RETRAINING_TAG,
                                 request_id)
    size = int(client.get_model_version(result.registered_name, result.version).tags["imgsz"])
    scores = score_old_and_new(settings, chosen, result.best_pt, size, out_dir)
    scores["request"] = request_id
    record(client, result.registered_name, result.version, result.run_id, scores)
    print_scores(console, scores, result.version, chosen.champion)
    robustness(settings, result.version, chosen.dataset, console)
    return result


def _subset(version: DatasetVersion, names: list[str], folder: Path) -> Path:
    """A YOLO dataset of `names` from the version's val split (linked) and its data.yaml."""
    import yaml

    images, labels = folder / "images" / "val", folder / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in names:
        os.symlink(version.images_dir("val") / name, images / name)
        label = version.labels_dir("val") / f"{Path(name).stem}.txt"
        if label.is_file():
            shutil.copyfile(label, labels / label.name)
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(folder), "train": "images/val",
                                         "val": "images/val",
                                         "names": dict(enumerate(version.classes))},
                                        sort_keys=False))
    return data_yaml


def score_old_and_new(settings: Settings, chosen: RetrainingPlan, candidate: Path, imgsz: int,
                      work: Path) -> dict:
    """mAP50 and mAP50-95 of the candidate and the champion on the old and the new
    validation images of the new version (a part with no image is left out)."""
    from control_plane.mlflow_store import mlflow_client, store_for
    from control_plane.training.train import MODEL_ARTIFACT_DIR, evaluate

    client = mlflow_client(store_for(settings))
    t0 = time.monotonic()
    out: dict = {"dataset": chosen.dataset.ref, "champion_dataset": chosen.trained_on.ref,
                 "imgsz": imgsz, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="vg-retrain-eval-", dir=work) as scratch:
        champion = Path(client.download_artifacts(chosen.champion_run_id,
                                                  f"{MODEL_ARTIFACT_DIR}/best.pt", scratch))
        for part, names in (("old_val", chosen.old_val), ("new_val", chosen.new_val)):
            if not names:
                continue
            data_yaml = _subset(chosen.dataset, names, Path(scratch) / part)
            scores = {}
            for who, weights in (("candidate", candidate), ("champion", champion)):
                m = evaluate(weights, data_yaml, imgsz=imgsz, project=Path(scratch) / "runs")
                scores[who] = {"mAP50": round(m["mAP50"], 6), "mAP50-95": round(m["mAP50-95"], 6)}
            out["parts"][part] = {"images": len(names), **scores}
    out["seconds"] = round(time.monotonic() - t0, 1)
    log.info("retraining evaluation on %s: %s", chosen.dataset.ref, json.dumps(out["parts"]),
             extra={"event": "retraining_evaluated", "dataset": chosen.dataset.ref})
    return out


def record(client, name: str, version: str, run_id: str, scores: dict) -> None:
    """The scores on the candidate: metrics and evaluation.json in its run, a version tag."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(f"retraining.{part}.{who}.{key}", float(v[who][key]), now, 0)
               for part, v in scores["parts"].items() for who in ("candidate", "champion")
               for key in ("mAP50", "mAP50-95")]
    client.log_batch(run_id, metrics=metrics)
    client.log_dict(run_id, scores, f"{ARTIFACT_DIR}/{EVALUATION_JSON}")
    client.set_model_version_tag(name, version, TAG_EVALUATION, json.dumps(scores))


def print_scores(console, scores: dict, candidate: str, champion: str) -> None:
    from rich.table import Table

    table = Table("val images", "n", f"candidate v{candidate}", f"champion v{champion}",
                  "change", title=f"mAP50-95 on {scores['dataset']}")
    for part, v in scores["parts"].items():
        a, b = v["candidate"]["mAP50-95"], v["champion"]["mAP50-95"]
        table.add_row({"old_val": "old", "new_val": "new frames"}[part], str(v["images"]),
                      f"{a:.3f}", f"{b:.3f}", f"{a - b:+.3f}")
    console.print(table)


def robustness(settings: Settings, version: str, dataset: DatasetVersion, console) -> None:
    """The configured robustness suite on the candidate (none when no corruption is set)."""
    from control_plane.evaluation import robustness as suite

    corruptions = [c.strip() for c in settings.retrain_robustness_corruptions.split(",")
                   if c.strip()]
    if not corruptions:
        return
    try:
        severities = [int(v) for v in settings.retrain_robustness_severities.split(",")
                      if v.strip()]
    except ValueError:
        raise ControlPlaneError(f"VG_RETRAIN_ROBUSTNESS_SEVERITIES "
                                f"{settings.retrain_robustness_severities!r} is not a list of "
                                "1, 2, 3") from None
    result = suite.evaluate_version(settings, version, dataset, corruptions=corruptions,
                                    severities=severities,
                                    max_images=settings.retrain_robustness_max_images)
    console.print(f"robustness on {dataset.ref} ({result.images} images, "
                  f"{', '.join(corruptions)} at severity "
                  f"{', '.join(map(str, result.suite.severities))}): clean mAP50-95 "
                  f"{result.clean:.3f}, mean ratio {result.mean_ratio:.3f}")
