"""SORT and its motion-only descendants (ByteTrack's second stage, OC-SORT's corrections).

One tracker class; each published addition is a constructor option, off by default, so plain
``SortTracker()`` is reference SORT (Bewley et al. 2016) and reproduces its numbers:

* ``low_thresh`` -- ByteTrack (Zhang et al. 2022): detections scoring in
  ``[low_thresh, det_thresh)`` get a second chance to continue a track that was matched in the
  previous frame, instead of being thrown away; they never start tracks.
* ``inertia`` -- OC-SORT's observation-centric momentum (Cao et al. 2023): a bonus in the
  matching cost for detections that continue a track's recent direction of motion.
* ``ocr`` -- observation-centric recovery: detections and tracks left over are matched once more
  against each track's *last observed* box, which does not drift while the track is unseen.
* ``oru`` -- observation-centric re-update: when a lost track is found again, its filter is
  re-run through the gap on boxes interpolated between the last and the new observation, undoing
  the error the blind predictions accumulated.

All tracks live in a :class:`~.track.TrackTable`; the Kalman filter runs on all of them at once.
"""

from __future__ import annotations

import numpy as np

from .association import assign, direction_consistency, iou_matrix
from .columns import DET_CLASS, DET_SCORE, as_detections, output_rows
from .kalman import SortMotion, XyahMotion, XywhMotion, replay
from .track import Lifecycle, TrackTable, frames_or_seconds, stream_frame_rate

__all__ = ["SortTracker"]


class SortTracker:
    """Kalman + IoU + linear assignment; ``update`` is the whole API.

    Durations (``max_age``, ``tentative_max_age``, ``coast``, ``delta_t``, and ``min_hits``,
    the time a new track must be seen before it is shown) are given either in frames or, with the
    ``_s`` suffix, in seconds, converted with ``frame_rate`` (30 when the stream does not say) by
    :func:`~.track.frames_for`; presets use seconds so one setting means the same at 7 and 30
    frames/s.

    Args:
        frame_rate: frames per second of the stream, for the ``_s`` durations.
        max_age: frames a track survives without a match (default 1, reference SORT).
        min_hits: consecutive matches after birth before a track is reported (default 3); with
            ``min_hits_s``, the matches that fit in that time, at least one.
        iou_threshold: least IoU for a detection to continue a track.
        det_thresh: least score for a detection to take part in the first stage and start tracks.
        low_thresh: enables ByteTrack's second stage for scores in ``[low_thresh, det_thresh)``.
        second_iou_threshold: least IoU in that second stage.
        inertia: weight of OC-SORT's direction-consistency term (0 disables it).
        delta_t: frames back to the observation a direction is measured from (default 3).
        ocr: OC-SORT's recovery stage against last observations.
        oru: OC-SORT's re-update through the gap when a lost track is found again.
        reconfirm: reference SORT's rule that a re-found track must be re-confirmed; see
            :class:`~.track.Lifecycle`.
        report: ``"kalman"`` reports the filtered box (SORT), ``"detection"`` the matched
            detection's box (OC-SORT).
        class_aware: match detections only to tracks of the same class.
        coast: frames a lost track is still reported at its prediction (see ``Lifecycle``;
            default 0).
        motion: Kalman parametrisation, ``"xysr"`` (SORT), ``"xyah"`` (DeepSORT) or
            ``"xywh"`` (BoT-SORT).
        tentative_max_age: misses a tentative track survives (``None``: ``max_age``).
        gate_first: price pairs under ``iou_threshold`` out before solving (ByteTrack's
            ``cost_limit``) instead of solving on raw IoU and dropping them after (SORT).
    """

    def __init__(
        self,
        *,
        frame_rate: float | None = None,
        max_age: int | None = None,
        max_age_s: float | None = None,
        min_hits: int | None = None,
        min_hits_s: float | None = None,
        iou_threshold: float = 0.3,
        det_thresh: float = 0.0,
        low_thresh: float | None = None,
        new_track_thresh: float | None = None,
        second_iou_threshold: float = 0.5,
        inertia: float = 0.0,
        delta_t: int | None = None,
        delta_t_s: float | None = None,
        ocr: bool = False,
        oru: bool = False,
        reconfirm: bool = True,
        report: str = "kalman",
        class_aware: bool = True,
        coast: int | None = None,
        coast_s: float | None = None,
        motion: str = "xysr",
        tentative_max_age: int | None = None,
        tentative_max_age_s: float | None = None,
        gate_first: bool = False,
    ) -> None:
        if report not in ("kalman", "detection"):
            raise ValueError(f"report must be 'kalman' or 'detection', not {report!r}")
        self.frame_rate = fps = stream_frame_rate(frame_rate)
        max_age = frames_or_seconds("max_age", max_age, max_age_s, fps, 1)
        min_hits = frames_or_seconds("min_hits", min_hits, min_hits_s, fps, 3)
        if min_hits_s is not None:
            min_hits = max(1, min_hits)  # a track is shown after one match at the least
        tentative_max_age = frames_or_seconds("tentative_max_age", tentative_max_age, tentative_max_age_s, fps, None)
        coast = frames_or_seconds("coast", coast, coast_s, fps, 0)
        delta_t = max(1, frames_or_seconds("delta_t", delta_t, delta_t_s, fps, 3))
        self.lifecycle = Lifecycle(
            min_hits=min_hits, max_age=max_age, tentative_max_age=tentative_max_age,
            reconfirm=reconfirm, coast=coast,
        )
        self.motion = {"xysr": SortMotion, "xyah": XyahMotion, "xywh": XywhMotion}[motion]()
        self.iou_threshold = iou_threshold
        self.det_thresh = det_thresh
        self.low_thresh = low_thresh
        self.new_track_thresh = det_thresh if new_track_thresh is None else new_track_thresh
        self.second_iou_threshold = second_iou_threshold
        self.inertia = inertia
        self.delta_t = delta_t
        self.ocr = ocr
        self.oru = oru
        self.report = report
        self.class_aware = class_aware
        self.gate_first = gate_first
        dim = self.motion.dim
        extra: dict = {"x": ((dim,), np.float64), "P": ((dim, dim), np.float64), "obs": ((4,), np.float64)}
        if oru:
            extra |= {"x_obs": ((dim,), np.float64), "P_obs": ((dim, dim), np.float64)}
        if inertia:
            extra |= {
                "direction": ((2,), np.float64),  # unit (dy, dx) of recent motion
                "hist": ((delta_t, 4), np.float64),  # ring of the last delta_t observations
                "hist_frame": ((delta_t,), np.int64),
            }
        self.tracks = TrackTable(extra)
        self.frame = 0
        self._next_id = 1

    def update(self, detections: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Advance one frame. ``detections`` (N, 6) in; (M, 9) reported tracks out.

        ``embeddings`` is accepted for interface parity with DeepSORT and ignored.
        """
        dets = as_detections(detections)
        self.frame += 1
        t = self.tracks
        motion = self.motion
        if len(t):
            motion.predict(t.x, t.P)
            self.lifecycle.start_frame(t)
            ok = motion.valid(t.x)
            if not ok.all():  # a collapsed box: SORT forgets the track
                t.keep(ok)
            predicted = motion.to_xyxy(t.x)
        else:
            predicted = np.empty((0, 4))

        boxes = dets[:, :4]
        scores = dets[:, DET_SCORE]
        first = scores >= self.det_thresh
        high = np.flatnonzero(first)
        n_trk = len(t)

        # Stage 1: confident detections against every track's prediction.
        iou = iou_matrix(boxes[high], predicted)
        if self.class_aware and n_trk:
            iou *= dets[high, DET_CLASS][:, None] == t.cls[None, :]
        anchors = None
        if self.inertia and n_trk:
            anchors = self._anchors()
            bonus = direction_consistency(boxes[high], anchors, t.direction)
            cost = -(iou + self.inertia * scores[high, None] * bonus)
        else:
            cost = -iou
        pairs, free_det, free_trk = assign(cost, iou >= self.iou_threshold, gate_first=self.gate_first)
        det_rows = [high[pairs[:, 0]]]
        trk_rows = [pairs[:, 1]]
        free_det = high[free_det]

        # Stage 2 (ByteTrack): weak detections continue tracks seen in the previous frame.
        if self.low_thresh is not None and len(free_trk):
            low = np.flatnonzero((scores >= self.low_thresh) & ~first)
            cand = free_trk[t.since_update[free_trk] == 1]
            if len(low) and len(cand):
                iou2 = iou_matrix(boxes[low], predicted[cand])
                if self.class_aware:
                    iou2 *= dets[low, DET_CLASS][:, None] == t.cls[None, cand]
                p2, _, _ = assign(-iou2, iou2 >= self.second_iou_threshold)
                det_rows.append(low[p2[:, 0]])
                trk_rows.append(cand[p2[:, 1]])
                free_trk = np.setdiff1d(free_trk, cand[p2[:, 1]], assume_unique=True)

        # Stage 3 (OC-SORT recovery): leftovers against the last observed boxes.
        if self.ocr and len(free_det) and len(free_trk):
            iou3 = iou_matrix(boxes[free_det], t.obs[free_trk])
            if self.class_aware:
                iou3 *= dets[free_det, DET_CLASS][:, None] == t.cls[None, free_trk]
            p3, keep_det, keep_trk = assign(-iou3, iou3 >= self.iou_threshold)
            det_rows.append(free_det[p3[:, 0]])
            trk_rows.append(free_trk[p3[:, 1]])
            free_det, free_trk = free_det[keep_det], free_trk[keep_trk]

        det_idx = np.concatenate(det_rows) if len(det_rows) > 1 else det_rows[0]
        trk_idx = np.concatenate(trk_rows) if len(trk_rows) > 1 else trk_rows[0]
        if len(trk_idx):
            self._correct(trk_idx, dets[det_idx], anchors)
        self.lifecycle.matched(t, trk_idx)
        self.lifecycle.missed(t, free_trk)

        if self.new_track_thresh > self.det_thresh:
            free_det = free_det[scores[free_det] >= self.new_track_thresh]
        if len(free_det):
            self._birth(dets[free_det])

        shown = self.lifecycle.shown(t, self.frame)
        out_boxes = motion.to_xyxy(t.x[shown])
        if self.report == "detection":  # coasting tracks have no detection: they keep the prediction
            fresh = t.since_update[shown] == 0
            out_boxes[fresh] = t.obs[shown][fresh]
        out = output_rows(out_boxes, t.ids[shown], t.score[shown], t.cls[shown], t.age[shown], t.state[shown])
        t.drop_removed()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _correct(self, rows: np.ndarray, dets: np.ndarray, anchors: np.ndarray | None) -> None:
        """Kalman update of matched tracks ``rows`` with their detections."""
        t = self.tracks
        boxes = dets[:, :4]
        if self.oru:
            gap = t.since_update[rows]
            for k in np.flatnonzero(gap > 1):
                self._reupdate(rows[k], boxes[k], int(gap[k]))
        x, P = self.motion.update(t.x[rows], t.P[rows], boxes)
        t.x[rows] = x
        t.P[rows] = P
        if self.oru:
            t.x_obs[rows] = x
            t.P_obs[rows] = P
        if anchors is not None:
            a = anchors[rows]
            d = np.stack(
                [(boxes[:, 1] + boxes[:, 3] - a[:, 1] - a[:, 3]) * 0.5,
                 (boxes[:, 0] + boxes[:, 2] - a[:, 0] - a[:, 2]) * 0.5],
                axis=1,
            )
            t.direction[rows] = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-6)
            slot = self.frame % self.delta_t
            t.hist[rows, slot] = boxes
            t.hist_frame[rows, slot] = self.frame
        t.obs[rows] = boxes
        t.score[rows] = dets[:, DET_SCORE]
        t.cls[rows] = dets[:, DET_CLASS]

    def _reupdate(self, row: int, box: np.ndarray, gap: int) -> None:
        """ORU: rewind to the last observation and filter through the gap on a straight path."""
        t = self.tracks
        last = t.obs[row]
        f = (np.arange(1, gap) / gap)[:, None]
        c0, c1 = (last[:2] + last[2:]) * 0.5, (box[:2] + box[2:]) * 0.5
        wh0, wh1 = last[2:] - last[:2], box[2:] - box[:2]
        c, wh = c0 + f * (c1 - c0), wh0 + f * (wh1 - wh0)
        virtual = np.concatenate([c - wh / 2, c + wh / 2], axis=1)  # (gap - 1, 4)
        x, P = replay(self.motion, t.x_obs[row], t.P_obs[row], virtual)
        x, P = x[None], P[None]
        self.motion.predict(x, P)
        t.x[row] = x[0]
        t.P[row] = P[0]

    def _anchors(self) -> np.ndarray:
        """Per track, the oldest observation of the last ``delta_t`` frames (else the last one)."""
        t = self.tracks
        recent = t.hist_frame >= self.frame - self.delta_t
        oldest = np.argmin(np.where(recent, t.hist_frame, np.iinfo(np.int64).max), axis=1)
        anchors = t.hist[np.arange(len(t)), oldest]
        none = ~recent.any(1)
        if none.any():
            anchors[none] = t.obs[none]
        return anchors

    def _birth(self, dets: np.ndarray) -> None:
        n = len(dets)
        boxes = dets[:, :4]
        x, P = self.motion.initiate(boxes)
        ids = np.arange(self._next_id, self._next_id + n)
        self._next_id += n
        cols = {"x": x, "P": P, "obs": boxes, "score": dets[:, DET_SCORE], "cls": dets[:, DET_CLASS]}
        if self.oru:
            cols |= {"x_obs": x, "P_obs": P}
        if self.inertia:
            hist = np.zeros((n, self.delta_t, 4))
            hist[:, self.frame % self.delta_t] = boxes
            hist_frame = np.full((n, self.delta_t), -(10**9), dtype=np.int64)
            hist_frame[:, self.frame % self.delta_t] = self.frame
            cols |= {"hist": hist, "hist_frame": hist_frame}
        self.tracks.append(ids, **cols)
