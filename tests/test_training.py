"""Offline bootstrap: the generated dataset, and a tiny real training logged to a real MLflow
store (SQLite) and registered, with no network traffic."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from control_plane.datasets import synthetic_data
from control_plane.datasets.synthetic_data import (SHAPES, dataset_hash, generate_dataset, render_sample,
                                          sample_rng)

# --- the dataset -----------------------------------------------------------------------------


def dataset_files(yaml_path: Path) -> dict[str, bytes]:
    root = yaml_path.parent
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(len(r) == 5 for r in rows), path
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    kwargs = dict(n_train=6, n_val=3, imgsz=128)
    a = dataset_files(generate_dataset(tmp_path / "a", seed=3, **kwargs))
    b = dataset_files(generate_dataset(tmp_path / "b", seed=3, **kwargs))
    c = dataset_files(generate_dataset(tmp_path / "c", seed=4, **kwargs))
    assert len(a) == 2 * (6 + 3) + 1 and a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images)
    assert dataset_hash(tmp_path / "a") == dataset_hash(tmp_path / "b") != dataset_hash(
        tmp_path / "c")
    # Validation image i depends on (seed, split, i) only, not on how big the train split is.
    generate_dataset(tmp_path / "d", seed=3, n_train=2, n_val=3, imgsz=128)
    assert dataset_hash(tmp_path / "d", "val") == dataset_hash(tmp_path / "a", "val")


def test_regenerating_into_a_folder_replaces_it(tmp_path):
    generate_dataset(tmp_path, n_train=5, n_val=2, imgsz=96, seed=0)
    data_yaml = generate_dataset(tmp_path, n_train=3, n_val=1, imgsz=96, seed=0)
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3
    assert len(list((tmp_path / "labels" / "val").iterdir())) == 1
    assert data_yaml == tmp_path / "data.yaml"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    return generate_dataset(out, n_train=48, n_val=12, imgsz=160, seed=1)


def test_split_sizes_names_and_pairs(small_dataset):
    root = small_dataset.parent
    data = yaml.safe_load(small_dataset.read_text())
    assert data["names"] == dict(enumerate(SHAPES)) and data["nc"] == len(SHAPES)
    for split, n in (("train", 48), ("val", 12)):
        images = sorted(p.stem for p in (root / data[split]).glob("*.jpg"))
        labels = sorted(p.stem for p in (root / "labels" / split).glob("*.txt"))
        assert len(images) == n and images == labels
    # Ultralytics reads the file as written (splits resolved beside it).
    from ultralytics.data.utils import check_det_dataset

    from control_plane.training.train import _no_font_download

    with _no_font_download():  # its font download would be this test's network traffic
        checked = check_det_dataset(str(small_dataset))
    assert checked["nc"] == 4 and Path(checked["val"]) == (root / "images" / "val").resolve()


def test_labels_are_valid_and_match_the_drawn_objects(small_dataset):
    root = small_dataset.parent
    counts, classes, overlaps = [], set(), 0
    for split, n in (("train", 48), ("val", 12)):
        for i in range(n):
            labels = read_labels(root / "labels" / split / f"{split}_{i:05d}.txt")
            sample = render_sample(sample_rng(1, split, i), 160)
            # one line per drawn object, same classes, same boxes
            assert len(labels) == len(sample.classes) == len(sample.visible)
            assert (labels[:, 0] == sample.classes).all()
            assert ((labels[:, 0] >= 0) & (labels[:, 0] < len(SHAPES))).all()
            cx, cy, w, h = labels[:, 1:].T
            assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all()
            assert (w > 0).all() and (h > 0).all()
            assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
            assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
            xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * 160
            np.testing.assert_allclose(xyxy, sample.boxes, atol=1e-3)
            for box, visible in zip(sample.boxes.astype(int), sample.visible):
                # each box is the tight box of pixels still visible of its object
                ys, xs = np.nonzero(visible)
                assert len(xs) >= 8
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)
            counts.append(len(labels))
            classes.update(int(c) for c in labels[:, 0])
            b = sample.boxes
            for j in range(len(b)):
                for k in range(j + 1, len(b)):
                    overlaps += (min(b[j, 2], b[k, 2]) > max(b[j, 0], b[k, 0])
                                 and min(b[j, 3], b[k, 3]) > max(b[j, 1], b[k, 1]))
    assert classes == set(range(len(SHAPES)))
    assert 0 in counts and max(counts) >= 4  # empty images and crowded ones
    assert overlaps > 0  # objects overlap (and occlude each other)


def test_image_pixels_are_what_was_drawn(small_dataset):
    import cv2

    image = cv2.imread(str(small_dataset.parent / "images" / "val" / "val_00000.jpg"))
    sample = render_sample(sample_rng(1, "val", 0), 160)
    assert image.shape == (160, 160, 3)
    # JPEG is lossy: close to the rendered pixels, not equal
    assert np.abs(image.astype(int) - sample.image.astype(int)).mean() < 8


def test_unknown_classes_are_refused(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, n_train=1, n_val=1, imgsz=64, seed=0, classes=("hexagon",))


# --- the MLflow store ---------------------------------------------------------------------------


def test_store_defaults_to_sqlite_under_the_runtime_dir(tmp_path, monkeypatch):
    from control_plane.mlflow_store import mlflow_store, store_for
    from control_plane.settings import Settings

    monkeypatch.delenv("VG_MLFLOW_TRACKING_URI", raising=False)
    store = store_for(Settings(runtime_dir=tmp_path))
    assert store.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert store.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("VG_MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    store = store_for(Settings(runtime_dir=tmp_path))
    assert store.tracking_uri == "http://mlflow.example:5000" and store.artifact_location is None
    assert mlflow_store("sqlite:////x/y.db").artifact_location == "file:///x/mlartifacts"


def test_bootstrap_size_is_a_setting_and_a_negative_one_is_refused(tmp_path, monkeypatch):
    from control_plane.settings import Settings

    monkeypatch.setenv("VG_BOOTSTRAP_TRAIN_IMAGES", "64")
    assert Settings(runtime_dir=tmp_path).bootstrap_train_images == 64
    assert Settings(runtime_dir=tmp_path).bootstrap_epochs == 0  # training's default
    monkeypatch.setenv("VG_BOOTSTRAP_EPOCHS", "-1")
    with pytest.raises(ValueError, match="VG_BOOTSTRAP_EPOCHS must be 0"):
        Settings(runtime_dir=tmp_path)


# --- one tiny training, end to end --------------------------------------------------------------

EPOCHS = 2
VAL_EVERY = 2  # the first bootstrap validates its second epoch only
_network: list[tuple[str, object]] | None = None


def _audit(event: str, args) -> None:
    if _network is None or event not in ("socket.connect", "socket.getaddrinfo"):
        return
    if event == "socket.connect":
        sock, address = args
        if sock.family == socket.AF_UNIX:
            return
        host = address[0]
    else:
        host = args[0]
    if host not in ("localhost", "127.0.0.1", "::1"):
        _network.append((event, host))


sys.addaudithook(_audit)  # cannot be removed; records only while a training below runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny bootstrap into a fresh SQLite store, then a second one registered after it."""
    from control_plane.training.train import train_bootstrap

    global _network
    tmp = tmp_path_factory.mktemp("bootstrap")
    uri = f"sqlite:///{tmp}/mlflow.db"
    seen = []
    _network = []
    try:
        first = train_bootstrap(tmp / "first", epochs=EPOCHS, imgsz=160, n_train=24, n_val=8,
                                seed=0, tracking_uri=uri, progress=seen.append,
                                val_every=VAL_EVERY)
        second = train_bootstrap(tmp / "second", epochs=1, imgsz=128, n_train=16, n_val=8,
                                 seed=1, tracking_uri=uri)
        network, _network = _network, None
    finally:
        _network = None
    from mlflow import MlflowClient

    return first, second, MlflowClient(uri, registry_uri=uri), seen, network, tmp


def test_training_makes_no_network_request(trained):
    network = trained[4]
    assert network == []


def test_run_has_params_inputs_and_per_epoch_metrics(trained):
    first, _, client, seen, _, _ = trained
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["epochs"], p["imgsz"], p["seed"], p["base"]) == ("2", "160", "0", "yolov8n.yaml")
    assert (p["n_train"], p["n_val"]) == ("24", "8")
    assert p["dataset_hash"] == first.dataset_hash
    assert p["dataset_name"] == synthetic_data.dataset_name(0) == first.dataset_name
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                for i in run.inputs.dataset_inputs}
    assert contexts == {first.dataset_name: "training", first.eval_dataset: "evaluation"}
    assert p["val_every"] == str(VAL_EVERY)
    validated = [epoch for epoch in range(1, EPOCHS + 1) if epoch % VAL_EVERY == 0]
    for key in ("val/mAP50", "val/mAP50-95", "train/box_loss", "train/cls_loss", "lr/pg0"):
        history = client.get_metric_history(first.run_id, key)
        epochs = validated if key.startswith("val/") else list(range(1, EPOCHS + 1))
        assert [m.step for m in history] == epochs, key
        assert all(math.isfinite(m.value) for m in history)
    epochs_reported = [p.epoch for p in seen if p.stage == "train" and p.epoch]
    assert epochs_reported == [1, 2]
    assert seen[-1].stage == "done"


def test_final_metrics_are_on_the_named_held_out_split(trained):
    first, _, client, _, _, _ = trained
    run = client.get_run(first.run_id)
    m = run.data.metrics
    for key in ("val_mAP50", "val_mAP50-95"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0
        assert m[key] == pytest.approx(first.metrics[key])
    assert m["val_mAP50-95"] <= m["val_mAP50"] + 1e-9
    assert run.data.tags["eval_dataset"] == first.eval_dataset == "synthetic-shapes-v1-seed0/val"
    assert run.data.tags["eval_dataset_hash"] == dataset_hash(first.data_yaml.parent, "val")


def test_run_artifacts_beside_the_store(trained):
    first, _, client, _, _, tmp = trained
    names = {a.path for a in client.list_artifacts(first.run_id, "model")}
    assert names == {"model/best.pt", "model/model.onnx"}
    assert {a.path for a in client.list_artifacts(first.run_id, "dataset")} == {
        "dataset/data.yaml"}
    artifact_uri = client.get_run(first.run_id).info.artifact_uri
    assert artifact_uri.startswith((tmp / "mlartifacts").as_uri())


def test_logged_onnx_is_the_serving_contract(trained):
    import onnx
    import onnxruntime as ort
    from mlflow.artifacts import download_artifacts

    first, _, client, _, _, tmp = trained
    path = download_artifacts(run_id=first.run_id, artifact_path="model/model.onnx",
                              dst_path=str(tmp / "download"), tracking_uri=first.tracking_uri)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["names"]) == {str(i): n for i, n in enumerate(SHAPES)}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"images": np.zeros((1, 160, 160, 3), np.uint8)})
    assert raw.shape == (1, 4 + len(SHAPES), sum((160 // s) ** 2 for s in (8, 16, 32)))


def test_version_carries_metrics_and_lineage_and_first_is_champion(trained):
    first, _, client, _, _, _ = trained
    mv = client.get_model_version("detector", first.version)
    assert first.version == "1" and mv.run_id == first.run_id
    assert mv.source == f"{client.get_run(first.run_id).info.artifact_uri}/model"
    tags = mv.tags
    assert tags["dataset_name"] == first.dataset_name
    assert tags["dataset_hash"] == first.dataset_hash
    assert tags["eval_dataset"] == first.eval_dataset
    assert float(tags["val_mAP50"]) == pytest.approx(first.metrics["val_mAP50"], abs=1e-6)
    assert float(tags["val_mAP50-95"]) == pytest.approx(first.metrics["val_mAP50-95"], abs=1e-6)
    assert tags["source_checkpoint"] == f"{mv.source}/best.pt"
    assert tags["onnx"] == f"{mv.source}/model.onnx"
    assert (tags["base"], tags["epochs"], tags["imgsz"], tags["seed"]) == (
        "yolov8n.yaml", "2", "160", "0")
    assert json.loads(tags["train_args"])["lr0"] == 0.003
    assert mv.aliases == ["champion"]
    assert first.champion == "1"


def test_second_version_does_not_take_the_champion_alias(trained):
    first, second, client, _, _, _ = trained
    assert second.version == "2" and second.champion == "1"
    aliases = client.get_registered_model("detector").aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"champion": "1"}
    assert client.get_model_version("detector", "2").aliases == []
    assert client.get_model_version("detector", "2").tags["dataset_name"] == (
        synthetic_data.dataset_name(1))
    # one experiment for both runs, neither left open
    assert client.get_run(second.run_id).info.experiment_id == first.experiment_id
    assert client.get_run(second.run_id).info.status == "FINISHED"
