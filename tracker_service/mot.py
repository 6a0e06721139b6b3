"""MOTChallenge files in and out, and CLEAR-MOT / identity scoring with py-motmetrics.

The conventions are reference SORT's, so that its published figures can be reproduced: boxes in
``det.txt`` are ``x, y, w, h`` and become corners by ``x2 = x + w`` with no 1-based shift (results
are written back the same way, so the shift would cancel anyway), every detection is used
whatever its score, and results are scored against ``gt.txt`` at IoU 0.5 with py-motmetrics.

A sequence's ``seqinfo.ini`` (MOTChallenge's metadata file) gives its frame rate, which the
trackers need to turn their durations in seconds into frames; without one the trackers assume
30 frames/s.

HOTA needs TrackEval; it is computed when ``trackeval`` imports and reported as ``None`` otherwise.
"""

from __future__ import annotations

import configparser
import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .tracking import DEFAULT_TRACKER, Tracker, make_tracker
from .tracking.association import iou_matrix
from .tracking.columns import DET_COLUMNS, OUT_CLASS, OUT_ID, OUT_SCORE

__all__ = [
    "Sequence",
    "Scores",
    "discover_sequences",
    "tracker_for",
    "read_mot",
    "detections_by_frame",
    "tracks_to_mot",
    "rows_by_frame",
    "write_mot",
    "run_tracker",
    "score",
    "score_many",
]

# MOTChallenge text columns
FRAME, ID, X, Y, W, H, CONF = range(7)
MOT_COLUMNS = 10


@dataclass(frozen=True)
class Sequence:
    """One MOTChallenge sequence folder: ``det/det.txt``, optionally ``gt/gt.txt``, ``img1/`` and
    ``seqinfo.ini``."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def det_path(self) -> Path:
        return self.root / "det" / "det.txt"

    @property
    def gt_path(self) -> Path | None:
        p = self.root / "gt" / "gt.txt"
        return p if p.is_file() else None

    @property
    def info(self) -> dict[str, str]:
        """The ``[Sequence]`` section of ``seqinfo.ini`` (keys as written); empty without one."""
        path = self.root / "seqinfo.ini"
        if not path.is_file():
            return {}
        parser = configparser.ConfigParser()
        parser.optionxform = str  # keep MOTChallenge's camelCase keys
        parser.read(path)
        return dict(parser["Sequence"]) if parser.has_section("Sequence") else {}

    @property
    def frame_rate(self) -> float | None:
        """Frames per second from ``seqinfo.ini`` (``frameRate``); ``None`` when it does not say."""
        value = self.info.get("frameRate")
        try:
            rate = float(value) if value is not None else None
        except ValueError:
            raise ValueError(f"{self.root / 'seqinfo.ini'}: frameRate is not a number: {value!r}") from None
        return rate if rate is not None and rate > 0 else None

    @property
    def length(self) -> int | None:
        """Number of frames from ``seqinfo.ini`` (``seqLength``); ``None`` when it does not say."""
        value = self.info.get("seqLength")
        return int(value) if value is not None and value.strip().isdigit() else None

    @property
    def image_paths(self) -> list[Path]:
        """Frame images (``img1/``, MOTChallenge's folder), sorted; empty when there are none."""
        folder = self.root / "img1"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def discover_sequences(root: str | Path) -> list[Sequence]:
    """Every folder under ``root`` (``root`` itself included) that has ``det/det.txt``, by name."""
    root = Path(root)
    found = {p.parent.parent for p in root.glob("**/det/det.txt")}
    return [Sequence(p) for p in sorted(found, key=lambda p: p.name)]


def tracker_for(seq: Sequence, name: str = DEFAULT_TRACKER, **overrides) -> Tracker:
    """A new tracker for ``seq``, planned for its frame rate (``seqinfo.ini``; 30 when unknown)."""
    return make_tracker(name, frame_rate=seq.frame_rate, **overrides)


def read_mot(path: str | Path) -> np.ndarray:
    """A MOTChallenge text file as a float (K, 10) array; missing trailing columns are -1."""
    text = Path(path).read_text()
    rows = [line.split(",") for line in text.splitlines() if line.strip()]
    out = np.full((len(rows), MOT_COLUMNS), -1.0)
    for i, r in enumerate(rows):
        values = [float(v) for v in r[:MOT_COLUMNS]]
        out[i, : len(values)] = values
    return out


def detections_by_frame(rows: np.ndarray, n_frames: int | None = None) -> list[np.ndarray]:
    """det.txt rows -> one (N, 6) ``x1, y1, x2, y2, score, class`` array per frame 1..n_frames.

    MOT15 has a single class; class 0 is used.
    """
    n = int(rows[:, FRAME].max()) if n_frames is None and len(rows) else (n_frames or 0)
    dets = np.zeros((len(rows), DET_COLUMNS))
    dets[:, 0] = rows[:, X]
    dets[:, 1] = rows[:, Y]
    dets[:, 2] = rows[:, X] + rows[:, W]
    dets[:, 3] = rows[:, Y] + rows[:, H]
    dets[:, 4] = rows[:, CONF]
    frames = rows[:, FRAME].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    frames, dets = frames[order], dets[order]
    bounds = np.searchsorted(frames, np.arange(1, n + 2))
    return [dets[bounds[i] : bounds[i + 1]] for i in range(n)]


def tracks_to_mot(frame: int, tracks: np.ndarray) -> np.ndarray:
    """Tracker output (M, 9) for one frame -> MOTChallenge rows (M, 10)."""
    out = np.full((len(tracks), MOT_COLUMNS), -1.0)
    out[:, FRAME] = frame
    out[:, ID] = tracks[:, OUT_ID]
    out[:, X] = tracks[:, 0]
    out[:, Y] = tracks[:, 1]
    out[:, W] = tracks[:, 2] - tracks[:, 0]
    out[:, H] = tracks[:, 3] - tracks[:, 1]
    out[:, CONF] = tracks[:, OUT_SCORE]
    out[:, 7] = tracks[:, OUT_CLASS]
    return out


def write_mot(path: str | Path, rows: np.ndarray) -> None:
    """Write MOTChallenge result rows ``frame,id,x,y,w,h,conf,-1,-1,-1`` (2-decimal boxes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{int(r[FRAME])},{int(r[ID])},{r[X]:.2f},{r[Y]:.2f},{r[W]:.2f},{r[H]:.2f},{r[CONF]:.4f},-1,-1,-1\n"
        for r in rows
    ]
    path.write_text("".join(lines))


def run_tracker(
    tracker: Tracker, frames: Iterable[np.ndarray], embed: Callable[[int, np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Feed per-frame detections to ``tracker``; all its output as MOTChallenge rows.

    ``embed(frame_index, detections)`` supplies appearance embeddings when the tracker needs them.
    """
    out = []
    for i, dets in enumerate(frames, start=1):
        emb = embed(i, dets) if embed is not None else None
        tracks = tracker.update(dets, emb)
        if len(tracks):
            out.append(tracks_to_mot(i, tracks))
    return np.concatenate(out) if out else np.empty((0, MOT_COLUMNS))


@dataclass(frozen=True)
class Scores:
    """CLEAR-MOT and identity metrics; ``motp`` is the mean IoU of matched pairs (higher better)."""

    mota: float
    idf1: float
    id_switches: int
    false_positives: int
    misses: int
    motp: float
    num_objects: int
    hota: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def rows_by_frame(rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame, rows of that frame)`` in frame order, for MOTChallenge rows."""
    frames = rows[:, FRAME].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    rows, frames = rows[order], frames[order]
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    ends = np.r_[starts[1:], len(frames)]
    for s, e in zip(starts, ends):
        yield int(frames[s]), rows[s:e]


def _per_frame(gt: np.ndarray, res: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(gt rows, result rows, IoU matrix) for every frame present in either file."""
    g, r = dict(rows_by_frame(gt)), dict(rows_by_frame(res))
    empty = np.empty((0, MOT_COLUMNS))
    out = []
    for f in sorted(g.keys() | r.keys()):
        gf, rf = g.get(f, empty), r.get(f, empty)
        out.append((gf, rf, _iou_xywh(gf[:, X : H + 1], rf[:, X : H + 1])))
    return out


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return iou_matrix(np.c_[a[:, :2], a[:, :2] + a[:, 2:4]], np.c_[b[:, :2], b[:, :2] + b[:, 2:4]])


def _accumulate(frames: list, iou_threshold: float):
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for gf, rf, iou in frames:
        dist = 1.0 - iou
        dist[iou < iou_threshold] = np.nan  # py-motmetrics: NaN = may not be matched
        acc.update(gf[:, ID].astype(np.int64), rf[:, ID].astype(np.int64), dist)
    return acc


def _hota(frames: list) -> tuple[float, dict] | None:
    """HOTA via TrackEval when it is installed (returns its raw per-sequence result too)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from trackeval.metrics import HOTA
    except Exception:
        return None
    gt_ids = {int(i) for gf, _, _ in frames for i in gf[:, ID]}
    tr_ids = {int(i) for _, rf, _ in frames for i in rf[:, ID]}
    gmap = {v: k for k, v in enumerate(sorted(gt_ids))}
    tmap = {v: k for k, v in enumerate(sorted(tr_ids))}
    data = {
        "num_timesteps": len(frames),
        "num_gt_ids": len(gmap),
        "num_tracker_ids": len(tmap),
        "num_gt_dets": sum(len(gf) for gf, _, _ in frames),
        "num_tracker_dets": sum(len(rf) for _, rf, _ in frames),
        "gt_ids": [np.array([gmap[int(i)] for i in gf[:, ID]], dtype=int) for gf, _, _ in frames],
        "tracker_ids": [np.array([tmap[int(i)] for i in rf[:, ID]], dtype=int) for _, rf, _ in frames],
        "similarity_scores": [iou for _, _, iou in frames],
    }
    metric = HOTA()
    with contextlib.redirect_stdout(io.StringIO()):
        res = metric.eval_sequence(data)
    return float(np.mean(res["HOTA"])), res


def score_many(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]], iou_threshold: float = 0.5
) -> dict[str, Scores]:
    """Score each ``name -> (gt rows, result rows)``; adds ``"OVERALL"`` when more than one.

    Ground-truth rows with confidence 0 (MOTChallenge's "ignore") are dropped, as py-motmetrics'
    own MOTChallenge evaluation does.
    """
    import motmetrics as mm

    names, accs, hotas = [], [], {}
    for name, (gt, res) in pairs.items():
        gt = gt[gt[:, CONF] != 0]
        frames = _per_frame(gt, res)
        names.append(name)
        accs.append(_accumulate(frames, iou_threshold))
        h = _hota(frames)
        if h is not None:
            hotas[name] = h
    mh = mm.metrics.create()
    metrics = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses", "motp", "num_objects"]
    summary = mh.compute_many(accs, metrics=metrics, names=names, generate_overall=len(names) > 1)
    if len(hotas) == len(names) and len(names) > 1:
        from trackeval.metrics import HOTA

        with contextlib.redirect_stdout(io.StringIO()):
            combined = HOTA().combine_sequences({n: h[1] for n, h in hotas.items()})
        hotas["OVERALL"] = (float(np.mean(combined["HOTA"])), combined)
    out = {}
    for name, row in summary.iterrows():
        out[str(name)] = Scores(
            mota=float(row["mota"]),
            idf1=float(row["idf1"]),
            id_switches=int(row["num_switches"]),
            false_positives=int(row["num_false_positives"]),
            misses=int(row["num_misses"]),
            motp=float(1.0 - row["motp"]) if np.isfinite(row["motp"]) else float("nan"),
            num_objects=int(row["num_objects"]),
            hota=hotas[str(name)][0] if str(name) in hotas else None,
        )
    return out


def score(gt: np.ndarray, res: np.ndarray, iou_threshold: float = 0.5) -> Scores:
    """Score one sequence's results against its ground truth."""
    return score_many({"seq": (gt, res)}, iou_threshold)["seq"]
