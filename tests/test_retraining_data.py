"""An approved retraining request (control_plane/drift/retraining.py, through `drift`'s
`_retrain`, what `drift approve` and `drift retrain-approved` run): refused, with nothing
trained, while the champion's dataset has no labelled production frames the champion has not
seen; once a labelled export is imported, trained from the champion on the new version (1 epoch
on 128 px generated shapes: this checks the plumbing, not the gain), registered without an
alias and tagged with the request, scored beside the champion on the old and the new
validation images. The robustness suite is off here (VG_RETRAIN_ROBUSTNESS_CORRUPTIONS empty):
its worker process alone took 30 s; tests/test_robustness.py tests the suite.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest

from control_plane.datasets.labeled_import import import_labeled_export
from control_plane.datasets.store import DatasetStore
from control_plane.datasets.synthetic import import_synthetic
from control_plane.drift import commands
from control_plane.drift.retraining import RETRAINING_TAG, TAG_EVALUATION, NoNewLabelledData
from control_plane.evaluation.robustness import TAG_MEAN_RATIO
from control_plane.mlflow_store import mlflow_client, store_for
from tests.test_labeled_import import SIZE, register_champion, runtime_settings, write_export


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_checkpoint):
    runtime = tmp_path_factory.mktemp("retraining")
    settings = replace(runtime_settings(runtime), retrain_epochs=1,
                       retrain_robustness_corruptions="")
    base = import_synthetic(DatasetStore(settings), n_train=24, n_val=8, imgsz=SIZE, seed=51,
                            name="shapes").version
    best = runtime / "champion" / "best.pt"
    best.parent.mkdir()
    shutil.copy(trained_checkpoint, best)
    register_champion(settings, base.ref, best)
    return settings, base


def model_versions(settings) -> list:
    client = mlflow_client(store_for(settings))
    return client.search_model_versions("name = 'detector'")


def test_without_new_labelled_data_the_request_is_refused_and_nothing_trains(world, tmp_path):
    settings, base = world
    with pytest.raises(NoNewLabelledData) as refused:
        commands._retrain(settings, "req-empty", tmp_path / "out")
    message = str(refused.value)
    assert "no new labelled data" in message and base.ref in message
    assert f"versions {base.version} (champion's)" in message
    assert "--labeled-export" in message
    assert refused.value.exit_code == 3
    assert [str(mv.version) for mv in model_versions(settings)] == ["1"]
    assert not (tmp_path / "out").exists()


def test_an_approved_request_trains_from_the_champion_on_the_new_version(world, tmp_path,
                                                                        capsys):
    settings, base = world
    write_export(settings, tmp_path / "labelled", n=12, seed=7, reasons=("drift",))
    labeled = import_labeled_export(DatasetStore(settings), tmp_path / "labelled",
                                    val_fraction=0.4)
    new = labeled.imported.version
    new_val = new.notes["production_frames"]["val"]
    assert new_val, "the hash split put no new frame in val: pick another seed"

    commands._retrain(settings, "req-1", tmp_path / "train")
    printed = capsys.readouterr().out
    client = mlflow_client(store_for(settings))
    mv = client.get_model_version("detector", "2")
    tags = mv.tags
    assert tags[RETRAINING_TAG] == "req-1"
    assert tags["dataset"] == new.ref and tags["parent"] == "detector/1"
    assert tags["base"] == "champion detector version 1" and tags["epochs"] == "1"
    # a candidate: it serves only once promoted
    assert mv.aliases == []
    assert {a: str(v) for a, v in client.get_registered_model("detector").aliases.items()} \
        == {"champion": "1"}
    assert "req-1" in commands._retrained_requests(settings)

    scores = json.loads(tags[TAG_EVALUATION])
    assert scores["dataset"] == new.ref and scores["champion_dataset"] == base.ref
    parts = scores["parts"]
    assert parts["old_val"]["images"] == base.counts["val"]["images"]
    assert parts["new_val"]["images"] == len(new_val)
    for part in parts.values():
        for who in ("candidate", "champion"):
            assert 0.0 <= part[who]["mAP50-95"] <= 1.0 and math.isfinite(part[who]["mAP50"])
    run = client.get_run(mv.run_id)
    assert run.data.metrics["retraining.new_val.candidate.mAP50-95"] == pytest.approx(
        parts["new_val"]["candidate"]["mAP50-95"])
    assert "retraining/evaluation.json" in {
        a.path for a in client.list_artifacts(mv.run_id, "retraining")}
    assert TAG_MEAN_RATIO not in tags  # the suite is off here (its worker's start: 30 s)
    assert "new frames" in printed and f"mAP50-95 on {new.ref}" in printed

    commands._retrain(settings, "req-1", tmp_path / "again")  # trained once per request
    assert "already has a trained version" in capsys.readouterr().out
    assert len(model_versions(settings)) == 2
