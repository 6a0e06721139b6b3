"""The one interface, for every preset: shapes, empty input, isolation, ids, classes, options."""

from __future__ import annotations

import numpy as np
import pytest

from tracker_service.tracking import (
    DEFAULT_TRACKER,
    OUT_AGE,
    OUT_CLASS,
    OUT_COLUMNS,
    OUT_ID,
    OUT_SCORE,
    PRESETS,
    DeepSortTracker,
    SortTracker,
    Tracker,
    make_tracker,
    needs_embeddings,
)
from tracker_service.tracking.synthetic import make_crossing_sequence


@pytest.fixture(scope="module")
def scene():
    return make_crossing_sequence(seed=3, n_frames=80, n_objects=5)


def _embeddings(dets: np.ndarray) -> np.ndarray:
    """Stand-in appearance: a vector that depends on where the box is (enough for plumbing)."""
    e = np.zeros((len(dets), 8), dtype=np.float32)
    if len(dets):
        e[np.arange(len(dets)), (dets[:, 0] // 50).astype(int) % 8] = 1.0
    return e


def _run(tracker, frames) -> list[np.ndarray]:
    use = needs_embeddings(tracker)
    return [tracker.update(d, _embeddings(d) if use else None) for d in frames]


@pytest.mark.parametrize("name", list(PRESETS))
def test_output_shape_and_columns(name, scene):
    tracker = make_tracker(name)
    assert isinstance(tracker, Tracker)
    outputs = _run(tracker, scene.detections)
    rows = np.concatenate(outputs)
    assert all(o.ndim == 2 and o.shape[1] == OUT_COLUMNS for o in outputs)
    assert len(rows) > 0
    assert np.all(rows[:, OUT_ID] >= 1) and np.all(rows[:, OUT_ID] == np.round(rows[:, OUT_ID]))
    assert np.all((rows[:, OUT_SCORE] > 0) & (rows[:, OUT_SCORE] <= 1))
    assert np.all(rows[:, OUT_AGE] >= 0)
    assert np.all(rows[:, 2] > rows[:, 0]) and np.all(rows[:, 3] > rows[:, 1])
    for o in outputs:  # an id appears at most once per frame
        assert len(np.unique(o[:, OUT_ID])) == len(o)


@pytest.mark.parametrize("name", list(PRESETS))
def test_empty_input(name, scene):
    tracker = make_tracker(name)
    for empty in (np.empty((0, 6)), np.zeros((0, 6), dtype=np.float32), []):
        out = tracker.update(empty, None)
        assert out.shape == (0, OUT_COLUMNS)
    _run(tracker, scene.detections[:20])  # live tracks, then nothing
    for _ in range(3):
        assert tracker.update(np.empty((0, 6))).shape[1] == OUT_COLUMNS


@pytest.mark.parametrize("name", list(PRESETS))
def test_instances_do_not_share_state(name, scene):
    a_frames = scene.detections[:40]
    b_frames = [d[::-1] + np.array([5.0, 0, 5.0, 0, 0, 0]) for d in scene.detections[40:80]]
    alone = _run(make_tracker(name), a_frames)
    a, b = make_tracker(name), make_tracker(name)
    interleaved_a, interleaved_b = [], []
    use = needs_embeddings(a)
    for da, db in zip(a_frames, b_frames):
        interleaved_a.append(a.update(da, _embeddings(da) if use else None))
        interleaved_b.append(b.update(db, _embeddings(db) if use else None))
    for x, y in zip(alone, interleaved_a):
        np.testing.assert_array_equal(x, y)
    first_ids = [o[:, OUT_ID].min() for o in interleaved_b if len(o)]
    assert first_ids and first_ids[0] == 1  # ids count per instance


def test_ids_are_never_reused(scene):
    tracker = make_tracker("sort")
    seen_last: dict[int, int] = {}
    for f, out in enumerate(_run(tracker, scene.detections)):
        for tid in out[:, OUT_ID].astype(int):
            seen_last[tid] = f
    # reference SORT forgets tracks quickly, so many ids are issued, each a new one
    assert len(seen_last) >= 5
    assert tracker._next_id - 1 >= len(seen_last)


def test_detections_only_continue_tracks_of_their_class():
    tracker = make_tracker("sort")
    box = np.array([10.0, 10.0, 50.0, 110.0])
    for k in range(5):
        person = np.r_[box + [2 * k, 0, 2 * k, 0], 0.9, 0.0]
        tracker.update(person[None])
    # the same place, now a detection of class 2: it must not take over track 1
    car = np.r_[box + [10, 0, 10, 0], 0.9, 2.0]
    tracker.update(car[None])
    classes = {int(tracker.tracks.ids[i]): tracker.tracks.cls[i] for i in range(len(tracker.tracks))}
    assert classes.get(1, 0.0) == 0.0
    assert 2.0 in classes.values()
    out = make_tracker("sort", class_aware=False)
    for k in range(5):
        out.update(np.r_[box + [2 * k, 0, 2 * k, 0], 0.9, 0.0][None])
    res = out.update(car[None])
    assert res[0, OUT_ID] == 1 and res[0, OUT_CLASS] == 2.0


def test_bytetrack_low_scores_continue_but_never_start_tracks():
    box = np.array([10.0, 10.0, 50.0, 110.0])
    tracker = make_tracker("bytetrack")
    assert len(tracker.update(np.r_[box, 0.3, 0.0][None])) == 0
    assert len(tracker.tracks) == 0  # 0.3 < new-track threshold
    for k in range(4):
        tracker.update(np.r_[box + [k, 0, k, 0], 0.9, 0.0][None])
    out = tracker.update(np.r_[box + [4, 0, 4, 0], 0.3, 0.0][None])
    assert len(out) == 1 and out[0, OUT_ID] == 1 and out[0, OUT_SCORE] == 0.3
    plain = make_tracker("sort", det_thresh=0.6)  # without the second stage the track misses
    for k in range(4):
        plain.update(np.r_[box + [k, 0, k, 0], 0.9, 0.0][None])
    assert len(plain.update(np.r_[box + [4, 0, 4, 0], 0.3, 0.0][None])) == 0


def test_observation_centric_reupdate_replays_the_gap_on_a_straight_path():
    """After an occlusion, ORU leaves the filter as if the track had been observed moving in a
    straight line from its last observation to the new one."""

    def box(x):
        return np.array([[x, 0.0, x + 40.0, 100.0, 0.9, 0.0]])

    walk = [box(2.0 * k) for k in range(1, 16)]
    last, new, gap = 30.0, 33.0, 6  # hidden for 5 frames, found 3 px further on: it slowed down
    virtual = [box(last + (new - last) * k / gap) for k in range(1, gap)]

    oru = SortTracker(max_age=30, reconfirm=False, oru=True)
    for d in walk + [np.empty((0, 6))] * (gap - 1) + [box(new)]:
        oru.update(d)
    observed = SortTracker(max_age=30, reconfirm=False)
    for d in walk + virtual + [box(new)]:
        observed.update(d)
    plain = SortTracker(max_age=30, reconfirm=False)
    for d in walk + [np.empty((0, 6))] * (gap - 1) + [box(new)]:
        plain.update(d)

    np.testing.assert_allclose(oru.tracks.x, observed.tracks.x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(oru.tracks.P, observed.tracks.P, rtol=1e-9, atol=1e-9)
    assert oru.tracks.ids[0] == plain.tracks.ids[0] == 1
    assert abs(oru.tracks.x[0, 4] - plain.tracks.x[0, 4]) > 1e-3  # it did change the velocity


def test_deepsort_needs_embeddings():
    tracker = DeepSortTracker()
    dets = np.array([[0.0, 0.0, 10.0, 20.0, 0.9, 0.0]])
    with pytest.raises(ValueError):
        tracker.update(dets)
    with pytest.raises(ValueError):
        tracker.update(dets, np.ones((2, 4), dtype=np.float32))
    assert tracker.update(dets, np.ones((1, 4), dtype=np.float32)).shape == (1, OUT_COLUMNS)


def test_make_tracker():
    assert DEFAULT_TRACKER in PRESETS
    assert make_tracker("sort", max_age=7).lifecycle.max_age == 7
    assert isinstance(make_tracker("deepsort"), DeepSortTracker)
    with pytest.raises(ValueError, match="unknown tracker"):
        make_tracker("nope")


def test_bad_detection_shape_is_rejected():
    with pytest.raises(ValueError):
        make_tracker("sort").update(np.zeros((3, 5)))
