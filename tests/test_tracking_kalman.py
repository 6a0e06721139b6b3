"""The vectorised Kalman filters: same numbers as a textbook filter, sensible behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from tracker_service.tracking.kalman import (SortMotion, XyahMotion, XywhMotion, xysr_to_xyxy,
                                            xyxy_to_xysr)
from tests.tracking_reference import reference_filter

MODELS = [SortMotion, XyahMotion, XywhMotion]


def _dense_update(x, P, z, R):
    """Textbook update with a full matrix inverse, one track at a time."""
    H = np.eye(4, x.shape[1])
    xs, Ps = [], []
    for xi, Pi, zi, Ri in zip(x, P, z, R):
        S = H @ Pi @ H.T + Ri
        K = Pi @ H.T @ np.linalg.inv(S)
        xs.append(xi + K @ (zi - H @ xi))
        Ps.append((np.eye(len(xi)) - K @ H) @ Pi)
    return np.array(xs), np.array(Ps)


def _boxes(rng, n):
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(20, 120, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_sort_motion_matches_filterpy_track_by_track():
    rng = np.random.default_rng(0)
    n = 5
    boxes = _boxes(rng, n)
    motion = SortMotion()
    x, P = motion.initiate(boxes)
    filters = []
    for b in boxes:  # reference SORT's per-track filter
        kf = reference_filter(b)
        filters.append(kf)
    for step in range(12):
        motion.predict(x, P)
        for kf in filters:
            kf.predict()
        if step % 4 != 3:  # some frames without a measurement
            boxes = boxes + rng.normal(0, 3, boxes.shape) + np.array([2.0, 1.0, 2.0, 1.0])
            x, P = motion.update(x, P, boxes)
            for kf, b in zip(filters, boxes):
                kf.update(xyxy_to_xysr(b[None]).T)
        np.testing.assert_allclose(x, np.array([kf.x[:, 0] for kf in filters]), rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(P, np.array([kf.P for kf in filters]), rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("model", [XyahMotion, XywhMotion])
def test_scaled_models_match_dense_update(model):
    rng = np.random.default_rng(1)
    motion = model()
    boxes = _boxes(rng, 4)
    x, P = motion.initiate(boxes)
    for _ in range(6):
        motion.predict(x, P)
        boxes = boxes + rng.normal(0, 2, boxes.shape)
        r = motion._measurement_noise(x)
        R = np.zeros((len(x), 4, 4))
        R[:, range(4), range(4)] = r
        expected = _dense_update(x, P, motion_measure(motion, boxes), R)
        x, P = motion.update(x, P, boxes)
        np.testing.assert_allclose(x, expected[0], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(P, expected[1], rtol=1e-9, atol=1e-9)


def motion_measure(motion, boxes):
    """The measurement vector a model derives from corner boxes."""
    x, _ = motion.initiate(boxes)
    return x[:, :4]


@pytest.mark.parametrize("model", MODELS)
def test_initiate_round_trips_boxes(model):
    boxes = np.array([[10.0, 20.0, 50.0, 120.0], [0.0, 0.0, 8.0, 4.0]])
    motion = model()
    x, P = motion.initiate(boxes)
    np.testing.assert_allclose(motion.to_xyxy(x), boxes, atol=1e-9)
    assert P.shape == (2, motion.dim, motion.dim)
    assert np.all(np.linalg.eigvalsh(P) > 0)


@pytest.mark.parametrize("model", MODELS)
def test_predict_grows_and_update_shrinks_uncertainty(model):
    motion = model()
    x, P = motion.initiate(np.array([[100.0, 100.0, 140.0, 200.0]]))
    before = np.trace(P[0, :4, :4])
    motion.predict(x, P)
    grown = np.trace(P[0, :4, :4])
    x, P = motion.update(x, P, np.array([[101.0, 100.0, 141.0, 200.0]]))
    assert grown > before
    assert np.trace(P[0, :4, :4]) < grown


@pytest.mark.parametrize("model", MODELS)
def test_constant_velocity_is_learned_and_extrapolated(model):
    motion = model()
    start = np.array([[100.0, 50.0, 140.0, 150.0]])
    step = np.array([3.0, -1.0, 3.0, -1.0])
    x, P = motion.initiate(start)
    for k in range(1, 25):
        motion.predict(x, P)
        x, P = motion.update(x, P, start + k * step)
    for _ in range(5):  # five frames unseen
        motion.predict(x, P)
    np.testing.assert_allclose(motion.to_xyxy(x)[0], (start + 29 * step)[0], atol=1.0)


@pytest.mark.parametrize("model", MODELS)
def test_coordinates_stay_uncorrelated(model):
    """The diagonal-S shortcut in the update relies on this invariant."""
    rng = np.random.default_rng(2)
    motion = model()
    boxes = _boxes(rng, 3)
    x, P = motion.initiate(boxes)
    for _ in range(10):
        motion.predict(x, P)
        x, P = motion.update(x, P, boxes + rng.normal(0, 2, boxes.shape))
    S = P[:, :4, :4]
    off = S - np.einsum("nii->ni", S)[:, :, None] * np.eye(4)
    assert np.abs(off).max() < 1e-9 * np.abs(S).max()


def test_xysr_conversion_inverse():
    b = np.array([[3.0, 4.0, 33.0, 64.0]])
    np.testing.assert_allclose(xysr_to_xyxy(xyxy_to_xysr(b)), b)


def test_gating_distance_is_small_for_the_predicted_box_and_large_far_away():
    motion = XyahMotion()
    box = np.array([[100.0, 100.0, 140.0, 200.0]])
    x, P = motion.initiate(box)
    motion.predict(x, P)
    d = motion.gating_distance(x, P, np.array([[101.0, 101.0, 141.0, 201.0], [300.0, 100.0, 340.0, 200.0]]))
    assert d.shape == (1, 2)
    assert d[0, 0] < 9.4877 < d[0, 1]


def test_filterpy_is_a_test_oracle_only():
    """The service never imports filterpy: the reference filter lives in tests/tracking_reference.py."""
    import subprocess
    import sys

    code = ("import sys, tracker_service.tracking, tracker_service.mot, tracker_service.streams; "
            "sys.exit('filterpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
