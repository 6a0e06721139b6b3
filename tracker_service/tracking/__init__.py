"""Multi-object tracking: one ``update(detections, embeddings=None) -> tracks`` for every tracker.

Trackers are plain objects with no global state; make one per video stream::

    tracker = make_tracker(DEFAULT_TRACKER)
    for dets in stream:            # (N, 6): x1, y1, x2, y2, score, class
        tracks = tracker.update(dets)  # (M, 9): x1, y1, x2, y2, id, score, class, age, state

Output rows: tracks matched in this frame once confirmed (``min_hits`` matches after birth),
tentative ones too during the first ``min_hits`` frames of a stream, and, where a preset says
``coast``, confirmed tracks missed for at most that many frames at their predicted box (state
``LOST``). Detections are matched only to tracks of their own class, and a track reports the
score and class of the detection it was last matched to.

Presets (same settings on every sequence; each is a published configuration or a combination of
published parts, see :data:`PRESETS`):

* ``sort`` -- reference SORT (Bewley et al. 2016): ``max_age=1, min_hits=3, iou=0.3``.
* ``bytetrack`` -- ByteTrack (Zhang et al. 2022) on SORT's filter: high/low score thresholds
  0.6/0.1, new tracks from scores >= 0.7, IoU 0.2 then 0.5, ``max_age=30``, confirm on the second
  frame, tentative tracks dropped at their first miss.
* ``ocsort`` -- OC-SORT (Cao et al. 2023): ``det_thresh=0.6, max_age=30, min_hits=3, iou=0.3,
  delta_t=3, inertia=0.2``, OCR and ORU, reports the matched detection box.
* ``byte-oru`` -- the default: SORT's filter and its ``min_hits=3, iou=0.3``; ByteTrack's
  two-stage association and thresholds and ``max_age=30``; OC-SORT's re-update after occlusion;
  a re-found track is shown at once (no SORT re-confirmation); lost tracks reported for one frame
  at their prediction, as DeepSORT's reference application does.
* ``deepsort`` -- DeepSORT (Wojke et al. 2017) with its published settings; needs embeddings
  (e.g. from :class:`HistogramEmbedder`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .columns import (
    DET_CLASS,
    DET_COLUMNS,
    DET_SCORE,
    OUT_AGE,
    OUT_CLASS,
    OUT_COLUMNS,
    OUT_ID,
    OUT_SCORE,
    OUT_STATE,
)
from .deepsort import DeepSortTracker
from .embedding import Embedder, HistogramEmbedder
from .sort import SortTracker
from .track import Lifecycle, TrackState

__all__ = [
    "Tracker",
    "make_tracker",
    "DEFAULT_TRACKER",
    "PRESETS",
    "SortTracker",
    "DeepSortTracker",
    "Embedder",
    "HistogramEmbedder",
    "TrackState",
    "Lifecycle",
    "needs_embeddings",
    "DET_COLUMNS",
    "DET_SCORE",
    "DET_CLASS",
    "OUT_COLUMNS",
    "OUT_ID",
    "OUT_SCORE",
    "OUT_CLASS",
    "OUT_AGE",
    "OUT_STATE",
]


@runtime_checkable
class Tracker(Protocol):
    """What every tracker is: one stream's state, advanced one frame per call."""

    def update(self, detections: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """(N, 6) detections (and (N, D) embeddings where used) in, (M, 9) tracks out."""
        ...


# ByteTrack's thresholds (paper: tau = 0.6, low 0.1, new tracks tau + 0.1; lost kept 30 frames),
# with pairs under the IoU threshold priced out before solving as its ``cost_limit`` does.
_BYTE = dict(det_thresh=0.6, low_thresh=0.1, new_track_thresh=0.7, max_age=30, gate_first=True)

#: name -> (class, keyword arguments). ``make_tracker`` overrides on top of these.
PRESETS: dict[str, tuple[type, dict[str, Any]]] = {
    "sort": (SortTracker, dict(max_age=1, min_hits=3, iou_threshold=0.3)),
    "bytetrack": (
        SortTracker,
        dict(_BYTE, iou_threshold=0.2, second_iou_threshold=0.5, min_hits=1,
             tentative_max_age=0, reconfirm=False),
    ),
    "ocsort": (
        SortTracker,
        dict(det_thresh=0.6, max_age=30, min_hits=3, iou_threshold=0.3, delta_t=3, inertia=0.2,
             ocr=True, oru=True, reconfirm=True, report="detection"),
    ),
    "byte-oru": (
        SortTracker,
        dict(_BYTE, min_hits=3, iou_threshold=0.3, second_iou_threshold=0.5, oru=True,
             reconfirm=False, coast=1),
    ),
    "deepsort": (DeepSortTracker, {}),
}

#: The preset with the best accuracy on the reference benchmark at well above real-time speed.
DEFAULT_TRACKER = "byte-oru"


def make_tracker(name: str = DEFAULT_TRACKER, **overrides: Any) -> Tracker:
    """A new tracker from a preset, with keyword ``overrides`` of its constructor arguments."""
    try:
        cls, kwargs = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(PRESETS)}") from None
    return cls(**{**kwargs, **overrides})


def needs_embeddings(tracker: Tracker) -> bool:
    """Whether ``tracker.update`` must be given appearance embeddings."""
    return isinstance(tracker, DeepSortTracker)
