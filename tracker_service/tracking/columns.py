"""Column layout of the arrays that go into and come out of every tracker's ``update``."""

from __future__ import annotations

import numpy as np

# detections: (N, 6)
DET_X1, DET_Y1, DET_X2, DET_Y2, DET_SCORE, DET_CLASS = range(6)
DET_COLUMNS = 6

# tracker output: (M, 9)
OUT_X1, OUT_Y1, OUT_X2, OUT_Y2, OUT_ID, OUT_SCORE, OUT_CLASS, OUT_AGE, OUT_STATE = range(9)
OUT_COLUMNS = 9


def as_detections(detections: np.ndarray | None) -> np.ndarray:
    """Validate and convert to a float64 (N, 6) array; ``None`` and empty inputs give (0, 6)."""
    if detections is None:
        return np.empty((0, DET_COLUMNS))
    dets = np.asarray(detections, dtype=np.float64)
    if dets.size == 0:
        return np.empty((0, DET_COLUMNS))
    if dets.ndim != 2 or dets.shape[1] != DET_COLUMNS:
        raise ValueError(f"detections must be (N, {DET_COLUMNS}): x1,y1,x2,y2,score,class; got {dets.shape}")
    return dets


def output_rows(
    boxes: np.ndarray,
    ids: np.ndarray,
    score: np.ndarray,
    cls: np.ndarray,
    age: np.ndarray,
    state: np.ndarray,
) -> np.ndarray:
    out = np.empty((len(ids), OUT_COLUMNS))
    out[:, :4] = boxes
    out[:, OUT_ID] = ids
    out[:, OUT_SCORE] = score
    out[:, OUT_CLASS] = cls
    out[:, OUT_AGE] = age
    out[:, OUT_STATE] = state
    return out
