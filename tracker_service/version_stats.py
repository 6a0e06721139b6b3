"""Per-version samples of live traffic, for the control plane's automated canary analysis.

Prometheus' histograms (metrics.py) say how each model version did in buckets; a two-sample test
of the score distributions and a p95 of the challenger against the champion's over one window need
the raw values. So each gateway keeps, per model version, bounded rings of recent
time-stamped records, fed from the request path (service.py) and read by the control plane at
`GET /v1/internal/version-stats?since=T` (control_plane/releases/canary_analysis.py):

- requests: (t, ok, Triton infer ms, detections); a request that ended in a server-side error
  (5xx: Triton unavailable, timeout, upstream error) is a record with ok False. Client errors
  (a bad image, 4xx) are not the model's doing and are not counted.
- scores: (t, score) of every returned detection (the KS test's samples);
- tracked frames: (t, fragments) per stream frame the tracker applied.

Fragments (no ground truth needed): per stream, a confirmed track that stops being reported as
confirmed is remembered with its last box for `fragment_gap_frames` frames; a track id confirmed
for the first time whose box overlaps one of those (IoU >= `fragment_iou`) counts as one
fragment -- most likely the same object under a new id -- and that remembered track is used up.
A lost track that comes back under its own id is not a fragment.

Every call is O(1) in the rings (deque appends; per frame a small IoU matrix of the stream's
tracks), runs on the event loop, never blocks and never raises into the request: a failure here
is logged and counted, the request goes on. Rings bound memory: `max_requests`, `max_scores`,
`max_frames` records per version, `max_versions` versions (the least recently used goes), and
fragment state for the `max_streams` most recently seen streams. A reader learns from `from_t`
where each ring's records start, so an analysis knows when its window was only partly kept.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracker_service.errors import Unauthorized
from tracker_service.tracking import OUT_ID, OUT_STATE, TrackState
from tracker_service.tracking.association import iou_matrix

log = logging.getLogger("visionguard.gateway.version_stats")

# Ids of confirmed tracks remembered per stream to tell a new id from a returning one: ids are
# never reused within a stream and grow, so the smallest are dropped first.
SEEN_IDS_PER_STREAM = 256


def require_internal_token(connection, _handler) -> None:
    """A Litestar guard for the gateway's internal routes: with VG_GATEWAY_INTERNAL_TOKEN set,
    the caller presents it as a bearer token (compared in constant time); unset, they are
    open like /metrics (the samples say no more than its per-version histograms)."""
    token = connection.app.state.settings.internal_token
    if not token:
        return
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                              token.encode()):
        raise Unauthorized("this internal route needs the gateway's internal token "
                           "(Authorization: Bearer <VG_GATEWAY_INTERNAL_TOKEN>)")


@dataclass
class _Version:
    requests: deque
    scores: deque
    frames: deque


@dataclass
class _StreamTracks:
    """One stream's confirmed tracks, for the fragment count."""

    frame: int = 0
    seen: set[int] = field(default_factory=set)
    active: dict[int, np.ndarray] = field(default_factory=dict)  # id -> last confirmed box
    ended: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # id -> (frame, box)



def gateway_id() -> str:
    """This gateway process, as the control plane tells gateways' answers apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def recent(table: OrderedDict, key, limit: int, make: Callable[[], object]):
    """`table[key]`, made by `make()` when missing, as the most recently used entry; the least
    recently used go once the table holds more than `limit`."""
    value = table.get(key)
    if value is None:
        value = table[key] = make()
        while len(table) > limit:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return value

class VersionStats:
    def __init__(self, *, max_versions: int = 8, max_requests: int = 20_000,
                 max_scores: int = 50_000, max_frames: int = 20_000, max_streams: int = 1000,
                 fragment_gap_frames: int = 30, fragment_iou: float = 0.3,
                 clock=time.time) -> None:
        self.max_versions = max_versions
        self.max_requests, self.max_scores, self.max_frames = max_requests, max_scores, max_frames
        self.max_streams = max_streams
        self.gap = fragment_gap_frames
        self.iou = fragment_iou
        self.clock = clock
        self.failures = 0  # hook calls that failed (logged; the request went on)
        self.gateway_id = gateway_id()
        self._versions: OrderedDict[str, _Version] = OrderedDict()
        self._streams: OrderedDict[str, _StreamTracks] = OrderedDict()

    @classmethod
    def from_settings(cls, settings) -> VersionStats:
        return cls(max_versions=settings.version_stats_max_versions,
                   max_requests=settings.version_stats_max_requests,
                   max_scores=settings.version_stats_max_scores,
                   max_frames=settings.version_stats_max_frames,
                   max_streams=settings.max_streams,
                   fragment_gap_frames=settings.fragment_gap_frames,
                   fragment_iou=settings.fragment_iou)

    # --- the request path's hooks (never raise) ---------------------------------------------------

    def answered(self, version: str, infer_s: float, scores: np.ndarray) -> None:
        """A request the version answered: its Triton time and its detections' scores."""
        try:
            now, v = self.clock(), self._version(version)
            v.requests.append((now, True, infer_s * 1000.0, len(scores)))
            v.scores.extend((now, float(s)) for s in scores)
        except Exception:  # noqa: BLE001 - statistics never fail a request
            self._failed("answered")

    def failed(self, version: str) -> None:
        """A request routed to the version that ended in a server-side error."""
        try:
            self._version(version).requests.append((self.clock(), False, math.nan, 0))
        except Exception:  # noqa: BLE001
            self._failed("failed")

    def tracked(self, version: str, stream_id: str, tracks: np.ndarray) -> None:
        """A stream frame the tracker applied (tracks: tracking.OUT_* rows)."""
        try:
            fragments = self._fragments(stream_id, tracks)
            self._version(version).frames.append((self.clock(), fragments))
        except Exception:  # noqa: BLE001
            self._failed("tracked")

    def _failed(self, hook: str) -> None:
        self.failures += 1
        log.exception("version statistics hook %s failed; the request goes on", hook,
                      extra={"event": "version_stats_failed"})

    def _version(self, version: str) -> _Version:
        return recent(self._versions, version, self.max_versions,
                      lambda: _Version(deque(maxlen=self.max_requests),
                                       deque(maxlen=self.max_scores),
                                       deque(maxlen=self.max_frames)))

    def _fragments(self, stream_id: str, tracks: np.ndarray) -> int:
        s = recent(self._streams, stream_id, self.max_streams, _StreamTracks)
        s.frame += 1
        confirmed = tracks[tracks[:, OUT_STATE] == TrackState.CONFIRMED] if len(tracks) else tracks
        now = {int(t[OUT_ID]): np.asarray(t[:4], dtype=np.float64) for t in confirmed}
        for tid, box in s.active.items():  # confirmed before, not now: remembered a while
            if tid not in now:
                s.ended[tid] = (s.frame - 1, box)
        s.ended = {tid: e for tid, e in s.ended.items()
                   if tid not in now and s.frame - e[0] <= self.gap}
        fragments = 0
        new = [tid for tid in now if tid not in s.seen]
        if new and s.ended:
            ended_ids = list(s.ended)
            overlap = iou_matrix(np.stack([now[t] for t in new]),
                                 np.stack([s.ended[t][1] for t in ended_ids]))
            for row in range(len(new)):
                col = int(np.argmax(overlap[row]))
                if overlap[row, col] >= self.iou and ended_ids[col] in s.ended:
                    del s.ended[ended_ids[col]]
                    fragments += 1
                    overlap[:, col] = 0.0
        s.seen.update(now)
        if len(s.seen) > SEEN_IDS_PER_STREAM:
            s.seen = set(sorted(s.seen)[-SEEN_IDS_PER_STREAM:])
        s.active = now
        return fragments

    # --- the reader --------------------------------------------------------------------------------

    def snapshot(self, since: float = 0.0) -> dict:
        """Every version's records at or after `since` (Unix seconds), as the internal endpoint
        answers them. `from_t` per ring: its oldest kept record (a window that starts before it
        was only partly kept)."""
        versions = {}
        for version, v in self._versions.items():
            requests = [r for r in v.requests if r[0] >= since]
            scores = [s for t, s in v.scores if t >= since]
            frames = [f for t, f in v.frames if t >= since]
            ok = [r for r in requests if r[1]]
            versions[version] = {
                "requests": len(requests),
                "errors": len(requests) - len(ok),
                "latency_ms": [round(r[2], 3) for r in ok],
                "detections": [r[3] for r in ok],
                "scores": [round(s, 5) for s in scores],
                "tracked_frames": len(frames),
                "fragments": int(sum(frames)),
                "from_t": {"requests": v.requests[0][0] if v.requests else None,
                           "scores": v.scores[0][0] if v.scores else None,
                           "frames": v.frames[0][0] if v.frames else None},
            }
        return {"gateway": self.gateway_id, "now": self.clock(), "since": since,
                "failures": self.failures, "versions": versions}
