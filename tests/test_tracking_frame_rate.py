"""Durations in seconds: a stream's frame rate turns the presets' time constants into frames."""

from __future__ import annotations

import numpy as np
import pytest

from tracker_service import mot
from tracker_service.tracking import (DEFAULT_TRACKER, OUT_ID, OUT_STATE, PRESETS, DeepSortTracker,
                                      SortTracker, TrackState, make_tracker)
from tracker_service.tracking.kalman import SortMotion, XyahMotion, replay
from tracker_service.tracking.synthetic import make_crossing_sequence, write_sequence
from tracker_service.tracking.track import DEFAULT_FRAME_RATE, frames_for, stream_frame_rate

RATES = (7.0, 10.0, 14.0, 25.0, 30.0)  # MOT15's: PETS09, KITTI, ETH, TUD, ADL-Rundle and Venice


def test_frames_for_counts_whole_frames_in_a_duration():
    assert [frames_for(1.0, r) for r in RATES] == [7, 10, 14, 25, 30]
    assert [frames_for(2.0, r) for r in RATES] == [14, 20, 28, 50, 60]
    assert [frames_for(0.05, r) for r in RATES] == [0, 0, 0, 1, 1]
    assert frames_for(0.04, 25) == 1  # 0.04 * 25 is a hair over or under 1 in floats: still 1
    assert frames_for(0.0, 30) == 0
    with pytest.raises(ValueError):
        frames_for(-1.0, 30)
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="frame_rate"):
            frames_for(1.0, bad)


def test_unknown_frame_rate_means_30():
    assert DEFAULT_FRAME_RATE == 30.0 and stream_frame_rate(None) == 30.0 and stream_frame_rate(7) == 7.0
    assert make_tracker("bytetrack").lifecycle.max_age == 30
    assert make_tracker("bytetrack", frame_rate=None).lifecycle.max_age == 30


@pytest.mark.parametrize("rate", RATES)
def test_presets_buffers_are_one_second_at_any_frame_rate(rate):
    for name in ("bytetrack", "ocsort", "byte-oru", DEFAULT_TRACKER):
        tracker = make_tracker(name, frame_rate=rate)
        assert tracker.frame_rate == rate
        assert tracker.lifecycle.max_age == frames_for(PRESETS[name][1]["max_age_s"], rate), name
    assert make_tracker("deepsort", frame_rate=rate).lifecycle.max_age == int(rate)  # A_max: 30 at 30 f/s
    assert make_tracker("sort", frame_rate=rate).lifecycle.max_age == 1  # reference SORT: one frame, by definition


def test_overrides_in_either_unit_replace_the_presets_duration():
    assert make_tracker("bytetrack", max_age=5, frame_rate=7).lifecycle.max_age == 5
    assert make_tracker("sort", max_age_s=0.5, frame_rate=10).lifecycle.max_age == 5
    assert make_tracker("sort", max_age=7).lifecycle.max_age == 7
    with pytest.raises(ValueError, match="not both"):
        SortTracker(max_age=3, max_age_s=1.0)
    with pytest.raises(ValueError, match="not both"):
        DeepSortTracker(coast=1, coast_s=0.1)
    with pytest.raises(ValueError, match="frame_rate"):
        make_tracker(DEFAULT_TRACKER, frame_rate=0)


def _walk(k: int, rate: float) -> np.ndarray:
    """A person walking right at 60 px/s, whatever the frame rate."""
    x = 10.0 + 60.0 * k / rate
    return np.array([[x, 50.0, x + 40.0, 150.0, 0.9, 0.0]])


@pytest.mark.parametrize("rate", [7.0, 30.0])
def test_a_track_waits_out_the_same_time_at_any_frame_rate(rate):
    """Hidden for 0.8 s it is found again; hidden for 1.3 s it is forgotten (1-second buffer)."""
    for hidden_s, same in ((0.8, True), (1.3, False)):
        tracker = make_tracker("bytetrack", frame_rate=rate)
        seen = int(rate)  # one second in view
        for k in range(seen):
            tracker.update(_walk(k, rate))
        gap = int(round(hidden_s * rate))
        for _ in range(gap):
            tracker.update(np.empty((0, 6)))
        tracker.update(_walk(seen + gap, rate))
        out = tracker.update(_walk(seen + gap + 1, rate))  # a new track is shown from its 2nd frame
        assert len(out) == 1
        assert (out[0, OUT_ID] == 1) == same, (rate, hidden_s)


@pytest.mark.parametrize("rate, shown", [(30.0, True), (25.0, True), (14.0, False), (7.0, False)])
def test_default_shows_a_lost_track_only_while_its_prediction_is_fresh(rate, shown):
    tracker = make_tracker(DEFAULT_TRACKER, frame_rate=rate)
    for k in range(int(rate)):
        tracker.update(_walk(k, rate))
    out = tracker.update(np.empty((0, 6)))  # one missed frame: 1/30 s ... 1/7 s old
    assert (len(out) == 1) == shown
    if shown:
        assert out[0, OUT_STATE] == TrackState.LOST
    assert len(tracker.update(np.empty((0, 6)))) == 0


def test_sort_motion_replay_matches_the_numpy_filter_step_by_step():
    rng = np.random.default_rng(4)
    motion = SortMotion()
    box = np.array([[100.0, 50.0, 140.0, 150.0]])
    x, P = motion.initiate(box)
    for k in range(1, 6):  # some history, so velocities and covariances are not trivial
        motion.predict(x, P)
        x, P = motion.update(x, P, box + [3.0 * k, 1.0 * k, 3.0 * k, 1.0 * k])
    path = box + np.cumsum(rng.normal([2.0, 0.5, 2.5, 0.5], 1.0, size=(25, 4)), axis=0)
    fast = motion.replay(x[0], P[0], path)
    xs, Ps = x.copy(), P.copy()
    for b in path:
        motion.predict(xs, Ps)
        xs, Ps = motion.update(xs, Ps, b[None])
    np.testing.assert_allclose(fast[0], xs[0], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(fast[1], Ps[0], rtol=1e-10, atol=1e-9)
    other = XyahMotion()  # no fast path: the generic loop
    xa, Pa = other.initiate(box)
    x1, P1 = replay(other, xa[0], Pa[0], path)
    assert x1.shape == (8,) and P1.shape == (8, 8) and np.allclose(xa[0, :2], other.initiate(box)[0][0, :2])


def test_sequences_read_their_frame_rate(tmp_path):
    seq = make_crossing_sequence(seed=2, n_frames=20, n_objects=2)
    folder = write_sequence(seq, tmp_path / "SYN", images=False)
    s = mot.Sequence(folder)
    assert s.frame_rate == seq.frame_rate == 30.0 and s.length == 20
    assert mot.tracker_for(s, "bytetrack").lifecycle.max_age == 30
    (folder / "seqinfo.ini").write_text("[Sequence]\nname=SYN\nframeRate=7\nseqLength=20\n")
    assert mot.Sequence(folder).frame_rate == 7.0
    assert mot.tracker_for(mot.Sequence(folder), "bytetrack").lifecycle.max_age == 7
    (folder / "seqinfo.ini").unlink()
    bare = mot.Sequence(folder)
    assert bare.frame_rate is None and bare.length is None
    assert mot.tracker_for(bare, "bytetrack").lifecycle.max_age == 30  # unknown: 30 f/s
