"""Test oracles for the trackers: reference implementations kept out of ``tracker_service``.

``reference_filter`` is reference SORT's per-track filterpy Kalman filter (Bewley's ``sort.py``,
``KalmanBoxTracker.__init__``). The vectorised :class:`~tracker_service.tracking.kalman.SortMotion`
is tested against it, and ``bench/tracking.py`` times a per-track SORT built on it. filterpy is a
development dependency only: nothing under ``tracker_service`` imports it.
"""

from __future__ import annotations

import numpy as np
from filterpy.kalman import KalmanFilter

from tracker_service.tracking.kalman import xyxy_to_xysr

__all__ = ["reference_filter"]


def reference_filter(box: np.ndarray) -> KalmanFilter:
    """Reference SORT's filter for one ``x1, y1, x2, y2`` box, state ``[cx, cy, s, r, vx, vy, vs]``."""
    kf = KalmanFilter(dim_x=7, dim_z=4)
    kf.F = np.eye(7)
    kf.F[[0, 1, 2], [4, 5, 6]] = 1.0  # cx, cy, s advance by their velocities
    kf.H = np.eye(4, 7)
    kf.R[2:, 2:] *= 10.0
    kf.P[4:, 4:] *= 1000.0
    kf.P *= 10.0
    kf.Q[-1, -1] *= 0.01
    kf.Q[4:, 4:] *= 0.01
    kf.x[:4] = xyxy_to_xysr(np.asarray(box, float)[None, :4]).T
    return kf
