"""`visionguard data import DIR --labeled-export` (control_plane/datasets/labeled_import.py): the
labelled frames of an export back as the next version of the champion's dataset, through the
real CLI, a real MLflow store (SQLite) and the real import pipeline; and each bad input refused
with its exit status and nothing written.

The export is built here as `data export-for-labeling` writes it (the contract of issue 14):
generated shapes (synthetic_data, whose ground truth stands in for a labeller's corrections)
as JPEG frames named by their hash, COCO annotations, the manifest, and the runtime copy of the
manifest the import checks against.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from control_plane.datasets import synthetic_data
from control_plane.datasets.store import DatasetStore
from control_plane.datasets.synthetic import import_synthetic
from control_plane.mlflow_store import experiment_id, mlflow_client, store_for
from control_plane.settings import Settings
from control_plane.training.train import register_version

SHAPES = list(synthetic_data.SHAPES)
SIZE = 128


def runtime_settings(runtime: Path) -> Settings:
    return Settings(runtime_dir=runtime, datasets_dir_override="", model_name="detector",
                    mlflow_tracking_uri=f"sqlite:///{runtime / 'mlflow.db'}", datasets_rules="",
                    datasets_workers=1)


def register_champion(settings: Settings, dataset_ref: str, checkpoint: Path | None = None
                      ) -> str:
    """Version 1 of `detector`, holding `champion`, trained (as its tags say) on `dataset_ref`;
    with `checkpoint` at model/best.pt as registration leaves it."""
    store = store_for(settings)
    client = mlflow_client(store)
    run_id = client.create_run(experiment_id(client, store, "test-champion")).info.run_id
    if checkpoint is not None:
        client.log_artifact(run_id, str(checkpoint), "model")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    name, version = dataset_ref.split("@")
    version_number, holder = register_version(
        client, "detector", source=source, run_id=run_id,
        tags={"class_names": json.dumps({str(i): n for i, n in enumerate(SHAPES)}),
              "imgsz": str(SIZE), "dataset": dataset_ref, "dataset_name": name,
              "dataset_version": version})
    assert version_number == holder == "1"
    return version_number


def write_export(settings: Settings, out: Path, *, n: int, seed: int, reasons=("drift",),
                 duplicate_of: Path | None = None) -> dict:
    """A labelled export of `n` generated frames in `out` and its runtime record; the COCO
    boxes are the generator's ground truth. `duplicate_of`: one more frame, a re-encoded copy of
    that image (a near duplicate of it)."""
    (out / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        sample = synthetic_data.render_sample(np.random.default_rng([seed, i]), SIZE)
        ok, jpg = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append((jpg.tobytes(), sample.classes, sample.boxes, reasons[i % len(reasons)]))
    if duplicate_of is not None:
        ok, jpg = cv2.imencode(".jpg", cv2.imread(str(duplicate_of)),
                               [cv2.IMWRITE_JPEG_QUALITY, 60])
        version = duplicate_of.parents[2]  # <version>/images/<split>/<name>
        rows = np.loadtxt(version / "labels" / duplicate_of.parent.name
                          / f"{duplicate_of.stem}.txt", ndmin=2).reshape(-1, 5)
        cx, cy, bw, bh = (rows[:, k] * SIZE for k in range(1, 5))
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        frames.append((jpg.tobytes(), rows[:, 0].astype(int), xyxy, "uniform"))
    images, annotations, entries = [], [], []
    for k, (data, classes, boxes, reason) in enumerate(frames, 1):
        sha = hashlib.sha256(data).hexdigest()
        file_name = f"images/{sha[:16]}.jpg"
        (out / file_name).write_bytes(data)
        images.append({"id": k, "file_name": file_name, "width": SIZE, "height": SIZE})
        entries.append({"file_name": file_name, "sha256": sha, "reason": reason,
                        "stream_id": "cam-1", "time": "2026-12-03T10:00:00+00:00",
                        "model_version": "1", "width": SIZE, "height": SIZE})
        for c, (x1, y1, x2, y2) in zip(classes, boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": k,
                                "category_id": int(c) + 1,
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0,
                                "score": 0.5})
    manifest = {"format": "visionguard-labeling-export/1", "export_id": uuid.uuid4().hex,
                "created": datetime.now(timezone.utc).isoformat(),
                "model": {"name": "detector", "version": "1"}, "classes": SHAPES,
                "images": entries}
    (out / "annotations.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(SHAPES)]}))
    (out / "manifest.json").write_text(json.dumps(manifest))
    record = settings.runtime_dir / "labeling" / "exports" / f"{manifest['export_id']}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(manifest))
    return manifest


def data_cli(settings: Settings, *args: str):
    from control_plane.datasets.commands import app

    return CliRunner().invoke(app, list(args), obj=settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("labeled-import")
    settings = runtime_settings(runtime)
    base = import_synthetic(DatasetStore(settings), n_train=24, n_val=8, imgsz=SIZE, seed=41,
                            name="shapes").version
    register_champion(settings, base.ref)
    return settings, base


def snapshot(settings: Settings) -> set[str]:
    return {str(p.relative_to(settings.datasets_dir)) for p in settings.datasets_dir.rglob("*")}


@pytest.fixture(scope="module")
def imported(world, tmp_path_factory):
    settings, base = world
    out = tmp_path_factory.mktemp("export") / "labelled"
    existing = sorted(base.images_dir("train").iterdir())[0]
    manifest = write_export(settings, out, n=12, seed=5, reasons=("drift", "uncertain"),
                            duplicate_of=existing)
    done = data_cli(settings, "import", str(out), "--labeled-export", "--val-fraction", "0.3",
                    "--json")
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    printed = done.output[done.output.index("\n{") + 1:]  # after the steps' lines (stderr)
    return manifest, json.loads(printed), existing


def test_a_labelled_export_becomes_the_next_version_of_the_champions_dataset(world, imported):
    settings, base = world
    manifest, out, _ = imported
    versions = DatasetStore(settings, log_to_mlflow=False).list("shapes")
    assert [v.version for v in versions] == [base.version, out["version"]]
    new = versions[-1]
    notes = new.notes
    assert notes["labeling_export"] == manifest["export_id"]
    assert notes["labeling_exports"] == [manifest["export_id"]]
    assert notes["base_version"] == base.version
    assert notes["frames_added"] == {"drift": 6, "uncertain": 6, "uniform": 1}
    frames = notes["production_frames"]
    added = notes["frames_added_by_split"]
    assert sum(added.values()) == 13 and added == {s: len(frames[s]) for s in ("train", "val")}
    assert added["val"] >= 1 and added["train"] >= 1  # 30% by hash of 12 frames
    # previous images + new ones, each split; the production frames are exactly the new files
    for split in ("train", "val"):
        old = {Path(r).name for r in base.files if r.startswith(f"images/{split}/")}
        now = {Path(r).name for r in new.files if r.startswith(f"images/{split}/")}
        assert old <= now and now - old == set(frames[split])
        assert new.counts[split]["images"] == base.counts[split]["images"] + added[split]
    # every frame's file is the exported bytes, and its label the labeller's boxes
    by_name = {Path(e["file_name"]).name: e for e in manifest["images"]}
    for split, names in frames.items():
        for name, reason in names.items():
            assert by_name[name]["reason"] == reason
            assert new.files[f"images/{split}/{name}"] == by_name[name]["sha256"]
    assert new.source["uri"] == f"labeling-export:{manifest['export_id']}"
    assert out["validation"]["passed"] is True


def test_near_duplicates_of_existing_images_are_reported_and_kept_in_their_split(imported):
    _, out, existing = imported
    near = out["labeled_export"]["near_duplicates"]
    assert len(near) == 1 and near[0]["existing"] == f"images/train/{existing.name}"
    assert 0 <= near[0]["bits"] <= 4
    notes = out["notes"]
    assert notes["near_duplicates_of_existing"] == 1
    assert near[0]["frame"] in notes["production_frames"]["train"]  # no leak into val


def _bad_export(settings, tmp_path, spoil) -> tuple[Path, dict]:
    out = tmp_path / "labelled"
    manifest = write_export(settings, out, n=4, seed=9)
    spoil(out, manifest)
    return out, manifest


def _edit_coco(out: Path, change) -> None:
    coco = json.loads((out / "annotations.json").read_text())
    change(coco)
    (out / "annotations.json").write_text(json.dumps(coco))


def _first_image(out: Path, manifest: dict) -> Path:
    return out / manifest["images"][0]["file_name"]


BAD_INPUTS = {
    "hashes differ from the record": (
        lambda out, m: _first_image(out, m).write_bytes(_first_image(out, m).read_bytes()
                                                        + b"\0"),
        "ExportMismatch", "do not hash as export"),
    "unknown export id": (
        lambda out, m: (out / "manifest.json").write_text(json.dumps(
            {**m, "export_id": uuid.uuid4().hex})),
        "UnknownExport", "was not recorded in"),
    "a class the champion does not have": (
        lambda out, m: _edit_coco(out, lambda c: (
            c["categories"].append({"id": 9, "name": "person"}),
            c["annotations"][0].update(category_id=9))),
        "ClassMismatch", "person (1 boxes)"),
    "no images": (
        lambda out, m: _edit_coco(out, lambda c: (c["images"].clear(),
                                                  c["annotations"].clear())),
        "LabeledExportError", "lists no images"),
    "no annotations": (
        lambda out, m: _edit_coco(out, lambda c: c["annotations"].clear()),
        "LabeledExportError", "no annotation at all"),
    "an image missing": (
        lambda out, m: _first_image(out, m).unlink(),
        "LabeledExportError", "are missing from"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_nothing_written(world, imported, tmp_path, case):
    settings, _ = world
    spoil, error, message = BAD_INPUTS[case]
    out, manifest = _bad_export(settings, tmp_path, spoil)
    before = snapshot(settings)
    done = data_cli(settings, "import", str(out), "--labeled-export")
    assert type(done.exception).__name__ == error, f"{done.output}\n{done.exception!r}"
    assert message in str(done.exception)
    assert done.exception.exit_code == 1
    assert snapshot(settings) == before  # no version, no staging or scratch folder left


def test_the_real_cli_exits_non_zero_and_says_why(world, tmp_path):
    import os
    import subprocess
    import sys

    settings, _ = world
    out, _ = _bad_export(settings, tmp_path, lambda out, m: _first_image(out, m).unlink())
    env = {**os.environ, "VG_RUNTIME_DIR": str(settings.runtime_dir),
           "VG_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "VG_DATASETS_RULES": ""}
    env.pop("VG_DATASETS_DIR", None)
    done = subprocess.run([sys.executable, "-m", "control_plane", "data", "import", str(out),
                           "--labeled-export"], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "labelled images are missing from" in done.stderr


def test_the_same_export_twice_is_refused(world, imported, tmp_path):
    settings, _ = world
    manifest, _, _ = imported
    record = settings.runtime_dir / "labeling" / "exports" / f"{manifest['export_id']}.json"
    out = tmp_path / "again"
    (out / "images").mkdir(parents=True)
    (out / "manifest.json").write_text(record.read_text())
    shutil.copy(record, out / "annotations.json")  # never read: refused on the export id
    done = data_cli(settings, "import", str(out), "--labeled-export")
    assert type(done.exception).__name__ == "ExportMismatch", repr(done.exception)
    assert "is already in shapes@" in str(done.exception)
