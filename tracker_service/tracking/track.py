"""The life of a track, in one place: its states, its counters and every transition.

Tracks are rows of a :class:`TrackTable` (one array per attribute) rather than objects, so that a
tracker can predict, match and retire all of them with a handful of numpy calls. The rules that
decide when a track is shown, hidden or forgotten live only in :class:`Lifecycle`.

Counting convention (reference SORT's): the detection that creates a track is not a *hit*;
``min_hits`` counts the consecutive matched frames after it. DeepSORT's ``n_init = 3`` is
``min_hits = 2`` here.

Time: the table counts frames, because a tracker only ever sees frames. Durations that mean a
length of time (how long a lost track is kept, how long it is still shown) are given to the
trackers in seconds and turned into frames once, at construction, by :func:`frames_for` with the
stream's frame rate: a one-second buffer is 30 frames at 30 frames/s and 7 at 7 frames/s, as
ByteTrack's reference code does (``buffer = frame_rate / 30 * track_buffer``). Counts of evidence
(``min_hits``) stay counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = [
    "TrackState", "Lifecycle", "TrackTable",
    "DEFAULT_FRAME_RATE", "stream_frame_rate", "frames_for", "frames_or_seconds",
]

#: Frame rate assumed when a stream does not say (MOTChallenge's and most cameras' 30 frames/s).
DEFAULT_FRAME_RATE = 30.0


def stream_frame_rate(frame_rate: float | None) -> float:
    """The frame rate to plan with: ``frame_rate`` checked, or 30 frames/s when it is unknown."""
    if frame_rate is None:
        return DEFAULT_FRAME_RATE
    rate = float(frame_rate)
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"frame_rate must be a positive number of frames per second, not {frame_rate!r}")
    return rate


def frames_for(seconds: float, frame_rate: float) -> int:
    """The number of whole frame intervals that fit in ``seconds`` at ``frame_rate``.

    Rounded down, so a window never stretches beyond what it says: "show a lost track for up to
    0.05 s" is one frame at 25 or 30 frames/s and none at 14 or 7, where the prediction would
    already be 0.07 or 0.14 s old; a one-second buffer is 30, 25, 14, 10 or 7 frames.
    """
    frame_rate = stream_frame_rate(frame_rate)
    if not seconds >= 0:
        raise ValueError(f"a duration must be a non-negative number of seconds, not {seconds!r}")
    return int(np.floor(seconds * frame_rate + 1e-9))  # 1e-9: 0.04 * 25 is 1.0000000000000002 or 0.9999...


def frames_or_seconds(
    name: str, frames: int | None, seconds: float | None, frame_rate: float, default: int | None
) -> int | None:
    """One time constant given either in frames (``name``) or in seconds (``name_s``), not both."""
    if frames is not None and seconds is not None:
        raise ValueError(f"give {name} (frames) or {name}_s (seconds), not both")
    if seconds is not None:
        return frames_for(seconds, frame_rate)
    return default if frames is None else frames


class TrackState(IntEnum):
    """Where a track is in its life; the int value is what trackers report in their output."""

    TENTATIVE = 1  #: born, not yet matched ``min_hits`` frames in a row: not shown
    CONFIRMED = 2  #: matched long enough; shown on every frame it is matched
    LOST = 3  #: confirmed, then missed: kept (predicted) for up to ``max_age`` frames; shown
    #: only for ``coast`` frames, at its predicted box
    REMOVED = 4  #: gone for good; dropped from the table at the end of the frame


_T, _C, _L, _R = (int(s) for s in TrackState)


@dataclass(frozen=True)
class Lifecycle:
    """Transition rules, applied to all tracks at once.

    Args:
        min_hits: consecutive matches after birth before a track is confirmed.
        max_age: frames a track may go unmatched before it is removed.
        tentative_max_age: frames a *tentative* track may go unmatched; ``None`` means
            ``max_age`` (SORT), ``0`` removes it at its first miss (DeepSORT, ByteTrack).
        reconfirm: when True a lost track that is matched again goes back to tentative and needs
            ``min_hits`` matches in a row before it is shown again. That is reference SORT's
            (and OC-SORT's) ``hit_streak`` rule; without it a re-found track is shown at once.
        coast: a lost track is still shown, at its predicted position, for this many frames
            after its last match (DeepSORT's reference application shows it for one). Bridges
            a detector's one-frame misses; 0 shows matched tracks only.
    """

    min_hits: int = 3
    max_age: int = 1
    tentative_max_age: int | None = None
    reconfirm: bool = False
    coast: int = 0

    def start_frame(self, t: "TrackTable") -> None:
        """A new frame: every track is one frame older and one frame further from its last match."""
        t.age += 1
        t.since_update += 1

    def matched(self, t: "TrackTable", rows: np.ndarray) -> None:
        """Tracks ``rows`` were matched to a detection this frame."""
        t.hits[rows] += 1
        t.streak[rows] += 1
        t.since_update[rows] = 0
        state = t.state[rows]
        lost = state == _L
        if lost.any():
            state[lost] = _T if self.reconfirm else _C
        promote = (state == _T) & (t.streak[rows] >= self.min_hits)
        state[promote] = _C
        t.state[rows] = state

    def missed(self, t: "TrackTable", rows: np.ndarray) -> None:
        """Tracks ``rows`` found no detection this frame."""
        t.streak[rows] = 0
        state = t.state[rows]
        state[state == _C] = _L
        since = t.since_update[rows]
        tentative_limit = self.max_age if self.tentative_max_age is None else self.tentative_max_age
        state[(state == _T) & (since > tentative_limit)] = _R
        state[(state == _L) & (since > self.max_age)] = _R
        t.state[rows] = state

    def shown(self, t: "TrackTable", frame: int) -> np.ndarray:
        """Mask of the tracks to report this frame.

        Confirmed tracks matched this frame; during the first ``min_hits`` frames of a stream
        tentative ones too, so that objects present from the start are not reported late
        (reference SORT's rule; it matters for MOTA on short sequences).
        """
        fresh = t.since_update == 0
        if frame <= self.min_hits:
            shown = fresh & ((t.state == _C) | (t.state == _T))
        else:
            shown = fresh & (t.state == _C)
        if self.coast:
            shown |= (t.state == _L) & (t.since_update <= self.coast)
        return shown


class TrackTable:
    """Per-track attributes as parallel arrays, plus the bookkeeping columns of :class:`Lifecycle`.

    ``extra`` declares tracker-specific columns as ``name: (shape_per_track, dtype)``; births
    append rows, :meth:`keep` drops rows, for every column alike, so columns never disagree on
    which row is which track.
    """

    _core = {
        "ids": ((), np.int64),
        "cls": ((), np.float64),
        "score": ((), np.float64),
        "state": ((), np.int64),
        "hits": ((), np.int64),
        "streak": ((), np.int64),
        "since_update": ((), np.int64),
        "age": ((), np.int64),
    }

    def __init__(self, extra: dict[str, tuple[tuple[int, ...], type]] | None = None) -> None:
        self._spec = {**self._core, **(extra or {})}
        for name, (shape, dtype) in self._spec.items():
            setattr(self, name, np.empty((0, *shape), dtype=dtype))

    def __len__(self) -> int:
        return len(self.ids)

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Fix a column's per-track shape once it is known (e.g. embedding size), table empty."""
        dtype = self._spec[name][1]
        self._spec[name] = (shape, dtype)
        setattr(self, name, np.empty((len(self), *shape), dtype=dtype))

    def append(self, ids: np.ndarray, **columns: np.ndarray) -> None:
        """Add ``len(ids)`` new tentative tracks; columns not given start at zero."""
        n = len(ids)
        columns.setdefault("state", np.full(n, _T))
        columns["ids"] = ids
        for name, (shape, dtype) in self._spec.items():
            new = columns.get(name)
            if new is None:
                new = np.zeros((n, *shape), dtype=dtype)
            setattr(self, name, np.concatenate([getattr(self, name), new.astype(dtype, copy=False)]))

    def keep(self, mask: np.ndarray) -> None:
        for name in self._spec:
            setattr(self, name, getattr(self, name)[mask])

    def drop_removed(self) -> None:
        removed = self.state == _R
        if removed.any():
            self.keep(~removed)
