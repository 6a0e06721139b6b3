"""Track life cycle: every transition of TrackState, on the table and through a tracker."""

from __future__ import annotations

import numpy as np

from tracker_service.tracking import OUT_AGE, OUT_ID, OUT_STATE, TrackState, make_tracker
from tracker_service.tracking.track import Lifecycle, TrackTable

T, C, L, R = TrackState.TENTATIVE, TrackState.CONFIRMED, TrackState.LOST, TrackState.REMOVED


def _one_track() -> TrackTable:
    table = TrackTable()
    table.append(np.array([7]))
    return table


def _step(life: Lifecycle, table: TrackTable, hit: bool) -> TrackState:
    life.start_frame(table)
    rows = np.array([0])
    if hit:
        life.matched(table, rows)
    else:
        life.missed(table, rows)
    return TrackState(table.state[0])


def test_born_tentative_confirmed_after_min_hits():
    life = Lifecycle(min_hits=2, max_age=3)
    table = _one_track()
    assert table.state[0] == T and table.hits[0] == 0 and table.age[0] == 0
    assert _step(life, table, True) == T
    assert _step(life, table, True) == C
    assert table.hits[0] == 2 and table.age[0] == 2 and table.since_update[0] == 0


def test_confirmed_track_is_lost_then_removed_after_max_age():
    life = Lifecycle(min_hits=1, max_age=2)
    table = _one_track()
    assert _step(life, table, True) == C
    assert _step(life, table, False) == L
    assert _step(life, table, False) == L
    assert _step(life, table, False) == R
    table.drop_removed()
    assert len(table) == 0


def test_refound_track_is_confirmed_at_once_unless_reconfirm():
    for reconfirm, expected in ((False, C), (True, T)):
        life = Lifecycle(min_hits=2, max_age=5, reconfirm=reconfirm)
        table = _one_track()
        _step(life, table, True)
        _step(life, table, True)
        _step(life, table, False)
        assert _step(life, table, True) == expected
        if reconfirm:  # needs min_hits consecutive matches again, like reference SORT
            assert _step(life, table, True) == C


def test_tentative_max_age():
    sort_like = Lifecycle(min_hits=3, max_age=1)  # tentative survives max_age misses
    table = _one_track()
    assert _step(sort_like, table, False) == T
    assert _step(sort_like, table, False) == R
    deepsort_like = Lifecycle(min_hits=3, max_age=30, tentative_max_age=0)
    table = _one_track()
    assert _step(deepsort_like, table, False) == R


def test_miss_resets_streak():
    life = Lifecycle(min_hits=3, max_age=5)
    table = _one_track()
    _step(life, table, True)
    _step(life, table, True)
    _step(life, table, False)
    assert table.streak[0] == 0
    assert _step(life, table, True) == T  # streak restarted at 1


def test_shown_rules():
    life = Lifecycle(min_hits=3, max_age=5, coast=1)
    table = TrackTable()
    table.append(np.arange(1, 5))
    table.state[:] = [T, C, L, L]
    table.since_update[:] = [0, 0, 1, 2]
    assert list(life.shown(table, frame=2)) == [True, True, True, False]  # early frames: tentative too
    assert list(life.shown(table, frame=10)) == [False, True, True, False]
    assert list(Lifecycle(min_hits=3).shown(table, frame=10)) == [False, True, False, False]


def _moving_box(k: int, score: float = 0.9) -> np.ndarray:
    return np.array([[10.0 + 3 * k, 20.0, 50.0 + 3 * k, 120.0, score, 0.0]])


def test_sort_reports_a_new_object_after_min_hits_matches():
    tracker = make_tracker("sort")
    empty = np.empty((0, 6))
    for _ in range(5):  # past the start-up frames
        assert len(tracker.update(empty)) == 0
    reported = []
    for k in range(6):
        out = tracker.update(_moving_box(k))
        reported.append(len(out))
        if len(out):
            assert out[0, OUT_ID] == 1 and out[0, OUT_STATE] == C and out[0, OUT_AGE] == k
    assert reported == [0, 0, 0, 1, 1, 1]  # born, then 3 hits


def test_objects_present_from_the_start_are_reported_at_once():
    tracker = make_tracker("sort")
    out = tracker.update(_moving_box(0))
    assert len(out) == 1 and out[0, OUT_STATE] == T


def test_sort_forgets_after_max_age_and_starts_a_new_id():
    tracker = make_tracker("sort")  # max_age=1
    for k in range(5):
        tracker.update(_moving_box(k))
    tracker.update(np.empty((0, 6)))
    tracker.update(np.empty((0, 6)))  # two misses > max_age
    assert len(tracker.tracks) == 0
    for k in range(7, 12):
        out = tracker.update(_moving_box(k))
    assert out[0, OUT_ID] == 2


def test_coasting_reports_a_lost_track_for_one_frame_only():
    tracker = make_tracker("byte-oru")  # coast=1
    for k in range(8):
        tracker.update(_moving_box(k))
    one_miss = tracker.update(np.empty((0, 6)))
    two_misses = tracker.update(np.empty((0, 6)))
    assert len(one_miss) == 1 and one_miss[0, OUT_STATE] == L
    np.testing.assert_allclose(one_miss[0, :4], _moving_box(8)[0, :4], atol=1.5)  # predicted
    assert len(two_misses) == 0
    back = tracker.update(_moving_box(10))
    assert len(back) == 1 and back[0, OUT_ID] == 1 and back[0, OUT_STATE] == C
