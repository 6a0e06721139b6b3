"""MOTChallenge I/O and scoring, and the trackers against the published MOT15 figures.

The MOT15 tests read ``../shared/data/mot15`` beside the repository (or ``$VISIONGUARD_MOT_ROOT``)
and skip when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tracker_service import mot
from tracker_service.tracking import DEFAULT_TRACKER

TUD = ("TUD-Campus", "TUD-Stadtmitte")


def mot_root() -> Path:
    env = os.environ.get("VISIONGUARD_MOT_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "mot15"


needs_mot15 = pytest.mark.skipif(
    not all((mot_root() / s / "gt" / "gt.txt").is_file() for s in TUD),
    reason=f"MOT15 data not found at {mot_root()} (set VISIONGUARD_MOT_ROOT to its folder)",
)


def _score_on_tud(name: str, tmp_path: Path, **overrides) -> mot.Scores:
    pairs = {}
    for s in TUD:
        seq = mot.Sequence(mot_root() / s)
        frames = mot.detections_by_frame(mot.read_mot(seq.det_path))
        results = mot.run_tracker(mot.tracker_for(seq, name, **overrides), frames)
        path = tmp_path / f"{s}.txt"
        mot.write_mot(path, results)  # score what a user would get on disk
        pairs[s] = (mot.read_mot(seq.gt_path), mot.read_mot(path))
    return mot.score_many(pairs)["OVERALL"]


# -- I/O -----------------------------------------------------------------------------------------


def test_results_round_trip(tmp_path):
    tracks = np.array(
        [[10.0, 20.0, 40.5, 80.25, 3, 0.875, 0, 4, 2], [0.0, 0.0, 5.0, 5.0, 11, 0.5, 0, 0, 1]]
    )
    rows = mot.tracks_to_mot(7, tracks)
    path = tmp_path / "SEQ.txt"
    mot.write_mot(path, rows)
    first = path.read_text().splitlines()[0]
    assert first == "7,3,10.00,20.00,30.50,60.25,0.8750,-1,-1,-1"
    back = mot.read_mot(path)
    np.testing.assert_allclose(back[:, :7], rows[:, :7], atol=5e-3)


def test_detections_by_frame_converts_xywh_and_fills_empty_frames():
    rows = np.array(
        [
            [1, -1, 10, 20, 30, 40, 0.9, -1, -1, -1],
            [3, -1, 0, 0, 5, 5, 0.6, -1, -1, -1],
            [1, -1, 1, 2, 3, 4, 0.7, -1, -1, -1],
        ],
        dtype=float,
    )
    frames = mot.detections_by_frame(rows, n_frames=4)
    assert [len(f) for f in frames] == [2, 0, 1, 0]
    np.testing.assert_allclose(frames[0][0], [10, 20, 40, 60, 0.9, 0])
    assert frames[1].shape == (0, 6)


def test_discover_sequences(tmp_path):
    for name in ("B", "A", "nested/C"):
        (tmp_path / name / "det").mkdir(parents=True)
        (tmp_path / name / "det" / "det.txt").write_text("")
    (tmp_path / "no-dets").mkdir()
    assert [s.name for s in mot.discover_sequences(tmp_path)] == ["A", "B", "C"]


# -- scoring -------------------------------------------------------------------------------------


def _gt():
    rows = []
    for f in range(1, 11):
        rows.append([f, 1, 10 + 5 * f, 10, 20, 40, 1, -1, -1, -1])
        rows.append([f, 2, 200 - 5 * f, 12, 20, 40, 1, -1, -1, -1])
    return np.array(rows, dtype=float)


def test_perfect_results_score_perfectly():
    gt = _gt()
    s = mot.score(gt, gt.copy())
    assert s.mota == 1.0 and s.idf1 == 1.0 and s.id_switches == 0
    assert s.false_positives == 0 and s.misses == 0 and s.num_objects == 20
    assert s.motp == pytest.approx(1.0)


def test_scoring_counts_switches_misses_and_false_positives():
    res = _gt()
    res[(res[:, 0] > 5), 1] = 3 - res[(res[:, 0] > 5), 1]  # ids swap halfway
    res = res[~((res[:, 0] == 2) & (res[:, 1] == 1))]  # one miss
    fp = np.array([[4, 9, 400, 400, 20, 20, 1, -1, -1, -1]], dtype=float)
    s = mot.score(_gt(), np.concatenate([res, fp]))
    assert s.id_switches == 2 and s.misses == 1 and s.false_positives == 1
    assert s.mota == pytest.approx(1 - 4 / 20)


def test_hota_when_trackeval_is_installed():
    pytest.importorskip("trackeval", reason="trackeval not installed: HOTA is reported as n/a")
    gt = _gt()
    assert mot.score(gt, gt.copy()).hota == pytest.approx(1.0)
    assert mot.score(gt, gt[gt[:, 1] == 1]).hota < 0.9


def test_boxes_below_half_iou_do_not_match():
    gt = _gt()[:1]
    res = gt.copy()
    res[0, 2] += 12  # 20-wide box shifted 12 px: IoU = 8/32 = 0.25
    s = mot.score(gt, res)
    assert s.misses == 1 and s.false_positives == 1


# -- MOT15 ---------------------------------------------------------------------------------------


@needs_mot15
def test_harness_reproduces_reference_sort(tmp_path):
    """Our SORT mode and scoring give the README's reference SORT figures."""
    s = _score_on_tud("sort", tmp_path)
    assert s.mota == pytest.approx(0.696, abs=0.005)
    assert s.idf1 == pytest.approx(0.705, abs=0.005)
    assert abs(s.id_switches - 16) <= 2
    assert abs(s.false_positives - 37) <= 5 and abs(s.misses - 408) <= 10


@needs_mot15
def test_default_tracker_keeps_the_tud_floor_and_beats_reference_sort(tmp_path):
    """The issue's floor for the default on the TUD pair (MOTA 0.72, IDF1 0.78), at TUD's 25
    frames/s from seqinfo.ini; reference SORT there is 0.696 / 0.705. Identity is judged by IDF1:
    the default switches a little more often (18 against 16) but keeps ids for far longer."""
    s = _score_on_tud(DEFAULT_TRACKER, tmp_path)
    assert s.mota >= 0.72
    assert s.idf1 >= 0.78
    assert s.mota > 0.696 and s.idf1 > 0.705 + 0.05


@needs_mot15
def test_mot15_sequences_give_their_frame_rates():
    rates = {s.name: s.frame_rate for s in mot.discover_sequences(mot_root())}
    assert rates["TUD-Campus"] == rates["TUD-Stadtmitte"] == 25.0
    assert all(r is not None and 7 <= r <= 30 for r in rates.values()), rates


@needs_mot15
def test_every_sequence_tracks_without_error():
    for seq in mot.discover_sequences(mot_root()):
        frames = mot.detections_by_frame(mot.read_mot(seq.det_path))
        results = mot.run_tracker(mot.tracker_for(seq), frames)
        assert len(results) > 0, seq.name
