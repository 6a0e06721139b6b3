"""The ``track`` commands through typer's CliRunner, on a synthetic sequence and on MOT15."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tracker_service import mot
from tracker_service.track_commands import app
from tracker_service.tracking import DEFAULT_TRACKER

runner = CliRunner()


def mot_root() -> Path:
    env = os.environ.get("VISIONGUARD_MOT_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "mot15"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    result = runner.invoke(app, ["synthetic", str(root / "SYN-1"), "--seed", "1", "--frames", "60"])
    assert result.exit_code == 0, result.output
    return root


def test_synthetic_writes_a_motchallenge_folder(synthetic_root):
    seq = mot.Sequence(synthetic_root / "SYN-1")
    assert len(seq.image_paths) == 60 and seq.gt_path is not None
    assert len(mot.read_mot(seq.det_path)) > 0


@pytest.mark.parametrize("tracker", ["sort", "deepsort"])
def test_eval_writes_results_and_summary(synthetic_root, tmp_path, tracker):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(synthetic_root), "--out", str(out), "--tracker", tracker])
    assert result.exit_code == 0, result.output
    assert "MOTA" in result.output and "SYN-1" in result.output
    rows = mot.read_mot(out / "SYN-1.txt")
    assert len(rows) > 0 and rows[:, 0].max() <= 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracker"] == tracker
    m = summary["sequences"]["SYN-1"]["metrics"]
    assert 0.3 < m["mota"] <= 1.0 and m["num_objects"] > 0
    assert summary["overall"]["mota"] == m["mota"]


def test_eval_rejects_unknown_tracker_and_empty_root(tmp_path):
    assert runner.invoke(app, ["eval", str(tmp_path), "--out", str(tmp_path / "o"), "--tracker", "nope"]).exit_code != 0
    result = runner.invoke(app, ["eval", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no sequence" in result.output


@pytest.mark.skipif(
    not (mot_root() / "TUD-Campus" / "gt" / "gt.txt").is_file(),
    reason=f"MOT15 data not found at {mot_root()} (set VISIONGUARD_MOT_ROOT to its folder)",
)
def test_eval_on_mot15(tmp_path):
    out = tmp_path / "mot15"
    result = runner.invoke(app, ["eval", str(mot_root()), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracker"] == DEFAULT_TRACKER
    assert len(summary["sequences"]) == len(mot.discover_sequences(mot_root()))
    assert summary["overall"]["mota"] > 0.696  # reference SORT on the scored pair
    assert {"TUD-Campus", "TUD-Stadtmitte"} <= {n for n, s in summary["sequences"].items() if "metrics" in s}
    # deepsort cannot run without images, and says so
    result = runner.invoke(app, ["eval", str(mot_root()), "--out", str(tmp_path / "d"), "--tracker", "deepsort"])
    assert result.exit_code == 1 and "img1" in result.output


def test_render_gif_on_frames_and_mp4_on_blank_canvas(synthetic_root, tmp_path):
    import imageio.v3 as iio

    results = tmp_path / "SYN-1.txt"
    assert runner.invoke(app, ["eval", str(synthetic_root), "--out", str(tmp_path), "--tracker", "sort"]).exit_code == 0
    gif = tmp_path / "tracks.gif"
    result = runner.invoke(
        app, ["render", str(results), "--out", str(gif), "--frames-dir", str(synthetic_root / "SYN-1" / "img1"),
              "--max-frames", "12"],
    )
    assert result.exit_code == 0, result.output
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 12 and frames.shape[1:3] == (240, 360)
    source = iio.imread(synthetic_root / "SYN-1" / "img1" / "000012.png")
    assert np.abs(frames[11][..., :3].astype(int) - source[..., :3]).sum() > 0  # something drawn

    mp4 = tmp_path / "tracks.mp4"
    result = runner.invoke(app, ["render", str(results), "--out", str(mp4), "--max-frames", "20"])
    assert result.exit_code == 0, result.output
    assert mp4.stat().st_size > 1000
