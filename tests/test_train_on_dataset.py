"""`visionguard train --data NAME[@VERSION]` (control_plane/training/train.py): a dataset version,
validated first, fine-tuned from the registered champion, logged to a real MLflow store (SQLite)
with the dataset as lineage and the COCO cross-check as artifacts, registered without taking an
alias; refusals (a dataset that fails validation, a class-set change, an unusable --from)
before anything is trained. And the bootstrap: it trains on a dataset version too.

Sizes are tiny (32 train / 8 val images of 128 px, one epoch): these tests check the plumbing;
tests/test_evaluation_coco.py checks the scores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from control_plane.datasets import synthetic_data
from control_plane.datasets.store import DatasetStore
from control_plane.datasets.synthetic import import_synthetic
from control_plane.mlflow_store import experiment_id, mlflow_client, store_for
from control_plane.settings import Settings
from control_plane.training.train import (DATASET_EXPERIMENT_NAME, MODEL_ARTIFACT_DIR,
                                          register_version)

ROOT = Path(__file__).resolve().parents[1]
SIZE, EPOCHS = 128, 1
SHAPES = list(synthetic_data.SHAPES)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-runtime")


@pytest.fixture(scope="module")
def settings(runtime) -> Settings:
    return Settings(runtime_dir=runtime, datasets_dir_override="", model_name="detector",
                    mlflow_tracking_uri=f"sqlite:///{runtime / 'mlflow.db'}", datasets_rules="")


@pytest.fixture(scope="module")
def client(settings):
    return mlflow_client(store_for(settings))


@pytest.fixture(scope="module")
def champion(settings, client, trained_checkpoint, tmp_path_factory) -> str:
    """The session's trained detector as version 1 of `detector`, holding `champion`: a run
    with its checkpoint at model/best.pt and the version's serving tags, as registration
    leaves them."""
    store = store_for(settings)
    run_id = client.create_run(experiment_id(client, store, "test-champion")).info.run_id
    best = tmp_path_factory.mktemp("champion") / "best.pt"
    shutil.copy(trained_checkpoint, best)
    client.log_artifact(run_id, str(best), MODEL_ARTIFACT_DIR)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
    version, holder = register_version(
        client, "detector", source=source, run_id=run_id,
        tags={"class_names": json.dumps({str(i): n for i, n in enumerate(SHAPES)}),
              "imgsz": "256"})
    assert version == holder == "1"
    return version


@pytest.fixture(scope="module")
def shapes(settings):
    """The four shape classes: the champion's class set."""
    return import_synthetic(DatasetStore(settings), n_train=32, n_val=8, imgsz=SIZE, seed=21,
                            name="shapes").version


@pytest.fixture(scope="module")
def two_shapes(settings):
    """Another class set: circles and squares only."""
    return import_synthetic(DatasetStore(settings), n_train=32, n_val=8, imgsz=SIZE, seed=22,
                            classes=("circle", "square"), name="two-shapes").version


def cli(settings: Settings, *args: str):
    """`visionguard train ...` as cli.py builds it, with the COCO evaluator, in-process."""
    from control_plane.evaluation.coco import evaluate_and_log
    from control_plane.training.commands import make_app

    return CliRunner().invoke(make_app(evaluate=evaluate_and_log), list(args), obj=settings)


def run_cli(runtime: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `visionguard train ...`: its message and exit status as a user sees them."""
    env = {**os.environ, "VG_RUNTIME_DIR": str(runtime),
           "VG_MLFLOW_TRACKING_URI": f"sqlite:///{runtime / 'mlflow.db'}"}
    env.pop("VG_DATASETS_DIR", None)
    return subprocess.run([sys.executable, "-m", "control_plane", "train", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def training_runs(client) -> list:
    exp = client.get_experiment_by_name(DATASET_EXPERIMENT_NAME)
    return client.search_runs([exp.experiment_id]) if exp else []


def first_conv(path: Path):
    from export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return (ckpt.get("ema") or ckpt["model"]).state_dict()["model.0.conv.weight"].float()


@pytest.fixture(scope="module")
def fine_tuned(settings, client, champion, shapes, trained_checkpoint):
    done = cli(settings, "--data", "shapes", "--epochs", str(EPOCHS), "--imgsz", str(SIZE))
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    run = training_runs(client)[0]
    return done, run, client.get_model_version("detector", "2")


def test_fine_tuned_from_the_champion_and_registered_without_an_alias(
        fine_tuned, client, shapes, trained_checkpoint, tmp_path):
    done, run, mv = fine_tuned
    assert "registered detector version 2" in done.output
    assert "champion stays version 1" in done.output
    aliases = client.get_registered_model("detector").aliases
    assert {a: str(v) for a, v in aliases.items()} == {"champion": "1"}
    assert mv.aliases == [] and mv.run_id == run.info.run_id
    tags = mv.tags
    assert tags["dataset"] == shapes.ref and tags["dataset_hash"] == shapes.hash
    assert tags["parent"] == "detector/1" and tags["base"] == "champion detector version 1"
    assert json.loads(tags["class_names"]) == {str(i): n for i, n in enumerate(SHAPES)}
    assert tags["eval_data_yaml"] == str(shapes.data_yaml) and tags["imgsz"] == str(SIZE)
    assert tags["eval_dataset_hash"] == synthetic_data.dataset_hash(shapes.path, "val")
    # Started from the champion's weights: after two optimizer steps the first convolution is
    # still the champion's (cosine ~1), not a fresh initialisation (cosine ~0).
    import torch

    trained = client.download_artifacts(run.info.run_id, "model/best.pt", str(tmp_path))
    a, b = first_conv(Path(trained)), first_conv(trained_checkpoint)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9


def test_run_names_the_dataset_and_logs_metrics_and_artifacts(fine_tuned, client, shapes):
    _, run, _ = fine_tuned
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["dataset"], p["dataset_hash"], p["kind"]) == (shapes.ref, shapes.hash, "dataset")
    assert (p["epochs"], p["imgsz"]) == (str(EPOCHS), str(SIZE))
    # from trained weights: the gentle schedule (no warmup that would wreck the trained head)
    from control_plane.training.train import FINE_TUNE_TRAIN_ARGS

    assert {k: p[f"train.{k}"] for k in FINE_TUNE_TRAIN_ARGS} == {
        k: str(v) for k, v in FINE_TUNE_TRAIN_ARGS.items()}
    inputs = {(i.dataset.name, i.dataset.digest): {t.key: t.value for t in i.tags}[
        "mlflow.data.context"] for i in run.inputs.dataset_inputs}
    assert inputs == {("shapes", shapes.hash[:36]): "training",
                      ("shapes/val", shapes.split_hashes["val"][:36]): "evaluation"}
    history = client.get_metric_history(run.info.run_id, "val/mAP50-95")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    m = run.data.metrics
    for key in ("val_mAP50", "val_mAP50-95", "val_coco_mAP50", "val_coco_mAP50-95"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, key
    artifacts = {a.path for d in ("model", "dataset", "evaluation", "training")
                 for a in client.list_artifacts(run.info.run_id, d)}
    assert {"model/best.pt", "model/model.onnx", "dataset/data.yaml",
            "dataset/validation.json", "evaluation/metrics.json", "evaluation/pr_curve.png",
            "evaluation/confusion_matrix.png", "training/results.csv"} <= artifacts


def test_a_class_set_change_is_refused_unless_a_new_model_is_named(settings, client, champion,
                                                                    two_shapes, runtime):
    refused = run_cli(runtime, "--data", "two-shapes", "--epochs", "1")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "two-shapes@" in refused.stderr and "--model-name" in refused.stderr
    assert "['circle', 'square']" in refused.stderr
    before = len(training_runs(client))
    also = cli(settings, "--data", "two-shapes", "--model-name", "detector")
    assert type(also.exception).__name__ == "ClassSetChanged"
    assert "already has versions" in str(also.exception)
    assert len(training_runs(client)) == before  # refused before any run was opened

    done = cli(settings, "--data", "two-shapes", "--model-name", "two-shapes-detector",
               "--epochs", "1", "--imgsz", str(SIZE))
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    mv = client.get_model_version("two-shapes-detector", "1")
    assert json.loads(mv.tags["class_names"]) == {"0": "circle", "1": "square"}
    # from the served champion's backbone, with a new head; the new model has no champion yet
    assert mv.tags["parent"] == "detector/1"
    assert client.get_registered_model("two-shapes-detector").aliases == {}
    assert "serves once promoted" in done.output


def test_the_same_classes_numbered_otherwise_are_refused_with_the_order_to_import(settings,
                                                                                  client,
                                                                                  champion):
    """A COCO export numbers categories its own way: the same four classes in another order
    would change what the served ids mean; the message gives the --classes that fixes it."""
    reordered = import_synthetic(DatasetStore(settings), n_train=32, n_val=8, imgsz=SIZE,
                                 seed=23, classes=("square", "circle", "triangle", "star"),
                                 name="reordered").version
    before = len(training_runs(client))
    done = cli(settings, "--data", reordered.ref, "--epochs", "1")
    assert type(done.exception).__name__ == "ClassSetChanged"
    assert f"--classes {','.join(SHAPES)}" in str(done.exception)
    assert len(training_runs(client)) == before


def test_a_dataset_that_fails_validation_is_refused_before_training(settings, client, shapes,
                                                                     runtime):
    env_rules = {"VG_DATASETS_RULES": "class_imbalance=error:1.0"}  # any imbalance is an error
    before = len(training_runs(client))
    done = subprocess.run(
        [sys.executable, "-m", "control_plane", "train", "--data", shapes.ref, "--epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env_rules, "VG_RUNTIME_DIR": str(runtime),
             "VG_MLFLOW_TRACKING_URI": f"sqlite:///{runtime / 'mlflow.db'}"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "class_imbalance" in done.stderr and shapes.ref in done.stderr
    assert len(training_runs(client)) == before


@pytest.mark.parametrize("base, message", [
    ("missing.pt", "no such checkpoint"),
    ("/tmp/evil.yaml", "architecture files of your own are not read"),
    ("yolov99z.yaml", "not one of Ultralytics' architectures"),
    ("something", "expected champion, a .pt checkpoint"),
])
def test_an_unusable_base_is_refused(settings, shapes, base, message):
    from control_plane.training.errors import BaseModelError

    done = cli(settings, "--data", "shapes", "--from", base, "--epochs", "1")
    assert isinstance(done.exception, BaseModelError), repr(done.exception)
    assert message in str(done.exception)


def test_the_bootstrap_trains_on_a_dataset_version(trained_checkpoint):
    """The session's detector (conftest: train_bootstrap) trained on the generated shapes
    imported as a dataset version, and its run names that version."""
    if os.environ.get("VG_TEST_CHECKPOINT"):
        pytest.skip("VG_TEST_CHECKPOINT replaces the session's bootstrap training")
    out = trained_checkpoint.parents[2]  # <out>/train/weights/best.pt
    versions = DatasetStore(Settings(runtime_dir=out, datasets_dir_override="")).list()
    assert [v.name for v in versions] == [synthetic_data.dataset_name(3)]
    assert versions[0].source["uri"].startswith("synthetic:")
    client = mlflow_client(store_for(Settings(
        runtime_dir=out, mlflow_tracking_uri=f"sqlite:///{out / 'mlflow.db'}")))
    exp = client.get_experiment_by_name("visionguard-bootstrap")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["dataset"] == versions[0].ref
    assert {(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs} >= {
        (versions[0].name, versions[0].hash[:36])}
