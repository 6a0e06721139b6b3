"""DeepSORT (Wojke et al. 2017): SORT plus appearance, for identities that survive occlusion.

Per frame, after the Kalman prediction:

1. **Matching cascade.** Confirmed tracks are matched to detections by appearance (smallest
   cosine distance to any embedding in the track's gallery), *most recently seen first*: a track
   seen one frame ago gets first pick, one unseen for 20 frames (whose predicted position is
   vague) only picks among what is left. Pairs the motion model rules out at the 95 % level
   (Mahalanobis distance, :data:`~.association.CHI2_95`) are forbidden whatever they look like.
2. **IoU matching** for what is left: tentative tracks and tracks seen in the previous frame,
   as in SORT, which recovers matches where the appearance is momentarily unreliable.
3. Unmatched detections start tentative tracks; a tentative track missed once is dropped.

Each track keeps a gallery of its last ``budget`` embeddings (a ring buffer), so a track
reappearing after occlusion is compared with how it looked before.
"""

from __future__ import annotations

import numpy as np

from .association import CHI2_95, INFEASIBLE, assign, iou_matrix
from .columns import DET_CLASS, DET_SCORE, as_detections, output_rows
from .kalman import XyahMotion
from .track import Lifecycle, TrackState, TrackTable, frames_or_seconds, stream_frame_rate

__all__ = ["DeepSortTracker"]

_CONFIRMED, _LOST = int(TrackState.CONFIRMED), int(TrackState.LOST)


class DeepSortTracker:
    """DeepSORT with the published defaults; ``update(detections, embeddings)`` is the whole API.

    ``max_age`` and ``coast`` are frames, or seconds with the ``_s`` suffix at ``frame_rate``
    (30 when unknown); see :class:`~.sort.SortTracker`.

    Args:
        frame_rate: frames per second of the stream, for the ``_s`` durations.
        max_age: frames a confirmed track survives unmatched (the paper's ``A_max = 30``).
        min_hits: matches after birth to confirm (DeepSORT's ``n_init = 3`` counts the birth).
        max_cosine_distance: largest appearance distance accepted in the cascade.
        max_iou_distance: largest ``1 - IoU`` accepted in the IoU stage.
        budget: embeddings kept per track.
        gating_threshold: squared Mahalanobis gate (chi-square 95 %, 4 degrees of freedom).
        coast: frames a lost track is still reported at its prediction (the reference
            application reports tracks missed for one frame).
        class_aware: match detections only to tracks of the same class.
    """

    def __init__(
        self,
        *,
        frame_rate: float | None = None,
        max_age: int | None = None,
        max_age_s: float | None = None,
        min_hits: int = 2,
        max_cosine_distance: float = 0.2,
        max_iou_distance: float = 0.7,
        budget: int = 100,
        gating_threshold: float = CHI2_95[4],
        coast: int | None = None,
        coast_s: float | None = None,
        class_aware: bool = True,
    ) -> None:
        self.frame_rate = stream_frame_rate(frame_rate)
        max_age = frames_or_seconds("max_age", max_age, max_age_s, self.frame_rate, 30)
        coast = frames_or_seconds("coast", coast, coast_s, self.frame_rate, 1)
        self.lifecycle = Lifecycle(
            min_hits=min_hits, max_age=max_age, tentative_max_age=0, reconfirm=False, coast=coast
        )
        self.motion = XyahMotion()
        self.max_cosine_distance = max_cosine_distance
        self.max_iou_distance = max_iou_distance
        self.budget = budget
        self.gating_threshold = gating_threshold
        self.class_aware = class_aware
        dim = self.motion.dim
        self.tracks = TrackTable(
            {
                "x": ((dim,), np.float64),
                "P": ((dim, dim), np.float64),
                "gallery": ((budget, 0), np.float32),  # embedding size fixed at first use
                "n_features": ((), np.int64),
            }
        )
        self._embedding_dim: int | None = None
        self.frame = 0
        self._next_id = 1

    def update(self, detections: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Advance one frame: (N, 6) detections and their (N, D) embeddings in, (M, 9) out."""
        dets = as_detections(detections)
        if embeddings is None:
            if len(dets):
                raise ValueError("DeepSortTracker needs one embedding per detection")
            embeddings = np.empty((0, self._embedding_dim or 0), dtype=np.float32)
        emb = np.asarray(embeddings, dtype=np.float32)
        if len(dets):
            if emb.ndim != 2 or len(emb) != len(dets):
                raise ValueError(f"need ({len(dets)}, D) embeddings, got {emb.shape}")
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            self._fix_embedding_dim(emb.shape[1])
        self.frame += 1
        t = self.tracks
        if len(t):
            self.motion.predict(t.x, t.P)
            self.lifecycle.start_frame(t)
            ok = self.motion.valid(t.x)
            if not ok.all():
                t.keep(ok)

        boxes = dets[:, :4]
        n_det, n_trk = len(dets), len(t)
        same_class = (
            dets[:, DET_CLASS][:, None] == t.cls[None, :]
            if self.class_aware
            else np.ones((n_det, n_trk), dtype=bool)
        )
        confirmed = np.flatnonzero((t.state == _CONFIRMED) | (t.state == _LOST))
        det_rows, trk_rows = [], []
        free_det = np.arange(n_det)

        # 1. Matching cascade over confirmed tracks, by time since their last match.
        if len(confirmed) and n_det:
            cost = self._appearance_cost(emb, confirmed)  # (dets, confirmed)
            maha = self.motion.gating_distance(t.x[confirmed], t.P[confirmed], boxes).T
            cost[(maha > self.gating_threshold) | ~same_class[:, confirmed]] = INFEASIBLE
            since = t.since_update[confirmed]
            for level in np.unique(since):
                if not len(free_det):
                    break
                cols = np.flatnonzero(since == level)
                sub = cost[np.ix_(free_det, cols)]
                pairs, rest, _ = assign(sub, sub <= self.max_cosine_distance)
                det_rows.append(free_det[pairs[:, 0]])
                trk_rows.append(confirmed[cols[pairs[:, 1]]])
                free_det = free_det[rest]

        # 2. IoU matching: tentative tracks and tracks seen last frame that the cascade left.
        matched = np.zeros(n_trk, dtype=bool)
        for r in trk_rows:
            matched[r] = True
        candidates = np.flatnonzero(~matched & ((t.state == int(TrackState.TENTATIVE)) | (t.since_update == 1)))
        if len(candidates) and len(free_det):
            iou = iou_matrix(boxes[free_det], self.motion.to_xyxy(t.x[candidates]))
            cost = 1.0 - iou
            valid = (cost <= self.max_iou_distance) & same_class[np.ix_(free_det, candidates)]
            pairs, rest, _ = assign(cost, valid)
            det_rows.append(free_det[pairs[:, 0]])
            trk_rows.append(candidates[pairs[:, 1]])
            free_det = free_det[rest]

        det_idx = np.concatenate(det_rows) if det_rows else np.empty(0, dtype=np.intp)
        trk_idx = np.concatenate(trk_rows) if trk_rows else np.empty(0, dtype=np.intp)
        if len(trk_idx):
            t.x[trk_idx], t.P[trk_idx] = self.motion.update(t.x[trk_idx], t.P[trk_idx], boxes[det_idx])
            t.score[trk_idx] = dets[det_idx, DET_SCORE]
            t.cls[trk_idx] = dets[det_idx, DET_CLASS]
            self._remember(trk_idx, emb[det_idx])
        missed = np.ones(n_trk, dtype=bool)
        missed[trk_idx] = False
        self.lifecycle.matched(t, trk_idx)
        self.lifecycle.missed(t, np.flatnonzero(missed))

        if len(free_det):
            self._birth(dets[free_det], emb[free_det])

        shown = self.lifecycle.shown(t, self.frame)
        out = output_rows(
            self.motion.to_xyxy(t.x[shown]), t.ids[shown], t.score[shown], t.cls[shown],
            t.age[shown], t.state[shown],
        )
        t.drop_removed()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _fix_embedding_dim(self, dim: int) -> None:
        if self._embedding_dim is None:
            self._embedding_dim = dim
            self.tracks.set_shape("gallery", (self.budget, dim))
        elif dim != self._embedding_dim:
            raise ValueError(f"embedding size changed from {self._embedding_dim} to {dim}")

    def _appearance_cost(self, emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Smallest cosine distance from each detection to each track's gallery: (dets, rows)."""
        t = self.tracks
        n, budget, dim = t.gallery.shape
        # One product against every stored embedding (a view of the whole gallery, no copy),
        # then keep the rows asked for and the filled slots.
        sim = (t.gallery.reshape(n * budget, dim) @ emb.T).reshape(n, budget, len(emb))[rows]
        filled = np.arange(budget)[None, :] < np.minimum(t.n_features[rows], budget)[:, None]
        best = np.where(filled[:, :, None], sim, -np.inf).max(axis=1)  # (rows, dets)
        return (1.0 - best.T).astype(np.float64)

    def _remember(self, rows: np.ndarray, emb: np.ndarray) -> None:
        t = self.tracks
        t.gallery[rows, t.n_features[rows] % self.budget] = emb
        t.n_features[rows] += 1

    def _birth(self, dets: np.ndarray, emb: np.ndarray) -> None:
        n = len(dets)
        x, P = self.motion.initiate(dets[:, :4])
        gallery = np.zeros((n, self.budget, emb.shape[1]), dtype=np.float32)
        gallery[:, 0] = emb
        ids = np.arange(self._next_id, self._next_id + n)
        self._next_id += n
        self.tracks.append(
            ids, x=x, P=P, gallery=gallery, n_features=np.ones(n, dtype=np.int64),
            score=dets[:, DET_SCORE], cls=dets[:, DET_CLASS],
        )
