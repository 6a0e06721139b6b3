"""Association as pure functions of boxes and cost matrices.

Everything here takes arrays and returns arrays: no tracker state, so each rule can be tested on
a hand-written matrix. Conventions: rows are detections and columns are tracks unless a name
says otherwise; boxes are ``(N, 4)`` corners ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import numpy as np

try:  # lapjv is several times faster than scipy on the small matrices trackers produce
    import lap as _lap
except ImportError:  # pragma: no cover - exercised only where lap is missing
    _lap = None
from scipy.optimize import linear_sum_assignment

__all__ = [
    "CHI2_95",
    "INFEASIBLE",
    "iou_matrix",
    "linear_assignment",
    "assign",
    "cosine_distance",
    "gate",
    "direction_consistency",
]

#: 0.95 quantile of the chi-square distribution by degrees of freedom (DeepSORT's gate).
CHI2_95 = {1: 3.8415, 2: 5.9915, 3: 7.8147, 4: 9.4877, 5: 11.070, 6: 12.592, 7: 14.067, 8: 15.507}

#: Cost given to pairs that a gate forbids; large but finite so the solvers stay well posed.
INFEASIBLE = 1e5

_EMPTY_PAIRS = np.empty((0, 2), dtype=np.intp)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` with every box in ``b``: (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    w = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    h = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    np.maximum(w, 0.0, out=w)
    np.maximum(h, 0.0, out=h)
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / np.maximum(union, 1e-12)  # degenerate (zero-area) pairs score 0


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost one-to-one assignment of rows to columns; returns (K, 2) ``[row, col]``.

    Rectangular matrices are fine: ``min(rows, cols)`` pairs come back.
    """
    if cost.size == 0:
        return _EMPTY_PAIRS
    if _lap is not None:
        _, x, _ = _lap.lapjv(np.ascontiguousarray(cost, dtype=np.float64), extend_cost=True)
        rows = np.flatnonzero(x >= 0)
        return np.stack([rows, x[rows]], axis=1)
    rows, cols = linear_sum_assignment(cost)  # pragma: no cover
    return np.stack([rows, cols], axis=1)  # pragma: no cover


def assign(
    cost: np.ndarray, valid: np.ndarray, *, gate_first: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match rows to columns minimising ``cost`` over the pairs allowed by ``valid``.

    Returns ``(matches (K, 2), unmatched_rows, unmatched_cols)``.

    When every row and every column has at most one allowed pair the answer is those pairs and
    no solver runs (the common case in a sparse scene, taken from reference SORT). Otherwise the
    forbidden pairs are priced at :data:`INFEASIBLE` before solving (``gate_first``), so that a
    forbidden pair never displaces an allowed one; ``gate_first=False`` solves on the raw cost and
    drops forbidden pairs afterwards, which is exactly what reference SORT does.
    """
    n_rows, n_cols = cost.shape
    if n_rows == 0 or n_cols == 0:
        return _EMPTY_PAIRS, np.arange(n_rows), np.arange(n_cols)
    if valid.sum(1).max() <= 1 and valid.sum(0).max() <= 1:
        pairs = np.argwhere(valid)
    else:
        pairs = linear_assignment(np.where(valid, cost, INFEASIBLE) if gate_first else cost)
        pairs = pairs[valid[pairs[:, 0], pairs[:, 1]]]
    row_free = np.ones(n_rows, dtype=bool)
    col_free = np.ones(n_cols, dtype=bool)
    row_free[pairs[:, 0]] = False
    col_free[pairs[:, 1]] = False
    return pairs, np.flatnonzero(row_free), np.flatnonzero(col_free)


def cosine_distance(a: np.ndarray, b: np.ndarray, *, normalised: bool = False) -> np.ndarray:
    """``1 - cos`` between rows of ``a`` and rows of ``b``: 0 same direction, 2 opposite."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if not normalised:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - a @ b.T


def gate(cost: np.ndarray, distance: np.ndarray, threshold: float) -> np.ndarray:
    """Copy of ``cost`` with pairs whose ``distance`` exceeds ``threshold`` made infeasible."""
    return np.where(distance > threshold, INFEASIBLE, cost)


def direction_consistency(
    det_boxes: np.ndarray,
    anchor_boxes: np.ndarray,
    track_directions: np.ndarray,
) -> np.ndarray:
    """OC-SORT's momentum term (dets x tracks), in ``[-0.5, 0.5]``; higher is more consistent.

    For each track, the direction from an earlier observation (``anchor_boxes``, a few frames
    back) to a candidate detection is compared with the track's own recent direction of motion
    (unit vectors ``track_directions``, ``(dy, dx)``). ``(pi/2 - angle) / pi`` rewards a detection
    that continues the motion and penalises one that turns back; a track without a direction
    yet (zero vector) scores 0 with every detection.
    """
    if len(det_boxes) == 0 or len(anchor_boxes) == 0:
        return np.zeros((len(det_boxes), len(anchor_boxes)))
    dcx = (det_boxes[:, 0:1] + det_boxes[:, 2:3]) * 0.5
    dcy = (det_boxes[:, 1:2] + det_boxes[:, 3:4]) * 0.5
    dx = dcx - (anchor_boxes[:, 0] + anchor_boxes[:, 2]) * 0.5
    dy = dcy - (anchor_boxes[:, 1] + anchor_boxes[:, 3]) * 0.5
    norm = np.sqrt(dx * dx + dy * dy) + 1e-6
    cos = (dy * track_directions[:, 0] + dx * track_directions[:, 1]) / norm
    np.clip(cos, -1.0, 1.0, out=cos)
    return (np.pi / 2.0 - np.arccos(cos)) / np.pi
