"""Tracker benchmark: speed over the 11 MOT15 sequences, accuracy on TUD-Campus + TUD-Stadtmitte,
identity keeping on synthetic crossings. Prints tables and writes JSON.

    python bench/tracking.py [--mot-root DIR] [--out bench/results/tracking.json] [--repeats 3]

* Speed: frames per second of ``tracker.update`` alone over all 5,500 frames of the 11 det files
  (detections parsed beforehand), best of ``--repeats`` runs, one process. DeepSORT has no images
  here, so it is timed with one constant unit embedding per detection (appearance says nothing;
  the cascade, gating and gallery all still run); its TUD accuracy is listed for completeness
  with that caveat. A per-track filterpy SORT (reference SORT's structure) is timed alongside as
  a same-machine baseline, since this machine is shared and absolute figures drift.
* Accuracy: py-motmetrics at IoU 0.5 on results rounded as written to MOTChallenge files.
* Synthetic: ``make_crossing_sequence`` seeds 0-2 (figures crossing and occluding each other);
  DeepSORT gets :class:`HistogramEmbedder` embeddings of the rendered frames.

The data folder defaults to ``../shared/data/mot15`` beside the repository, or
``$VISIONGUARD_MOT_ROOT``; the MOT15 parts are skipped with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tracker_service import mot  # noqa: E402
from tracker_service.tracking import PRESETS, HistogramEmbedder, make_tracker, needs_embeddings  # noqa: E402
from tracker_service.tracking.synthetic import make_crossing_sequence  # noqa: E402

TUD = ("TUD-Campus", "TUD-Stadtmitte")
REFERENCE = {  # from shared/data/mot15/README.md
    "reference SORT": dict(mota=0.696, idf1=0.705, id_switches=16, fps=2400),
    "Ultralytics ByteTrack": dict(mota=0.662, idf1=0.701, id_switches=19, fps=2000),
    "Ultralytics BoT-SORT": dict(mota=0.700, idf1=0.773, id_switches=22, fps=2000),
}
console = Console()


class FilterpySort:
    """Baseline with reference SORT's structure: one filterpy filter per track, a Python loop.

    Same model and rules as ``make_tracker("sort")``; only the bookkeeping differs, which is
    what the speed comparison is about.
    """

    def __init__(self, max_age: int = 1, min_hits: int = 3, iou_threshold: float = 0.3) -> None:
        self.max_age, self.min_hits, self.iou_threshold = max_age, min_hits, iou_threshold
        self.tracks: list[dict] = []
        self.frame = 0
        self.next_id = 1

    def _new(self, box: np.ndarray) -> dict:
        from tracker_service.tracking.kalman import reference_filter

        kf = reference_filter(box)
        track = dict(kf=kf, id=self.next_id, since=0, streak=0)
        self.next_id += 1
        return track

    def update(self, dets: np.ndarray, embeddings=None) -> np.ndarray:
        from tracker_service.tracking.association import assign, iou_matrix
        from tracker_service.tracking.kalman import xysr_to_xyxy, xyxy_to_xysr

        self.frame += 1
        predicted = []
        for t in self.tracks:
            kf = t["kf"]
            if kf.x[6, 0] + kf.x[2, 0] <= 0:
                kf.x[6, 0] = 0.0
            kf.predict()
            if t["since"] > 0:
                t["streak"] = 0
            t["since"] += 1
            predicted.append(kf.x[:4, 0])
        keep = [i for i, p in enumerate(predicted) if p[2] * p[3] > 0]
        self.tracks = [self.tracks[i] for i in keep]
        pred = xysr_to_xyxy(np.array([predicted[i] for i in keep]).reshape(-1, 4))
        iou = iou_matrix(dets[:, :4], pred)
        pairs, free, _ = assign(-iou, iou >= self.iou_threshold, gate_first=False)
        for d, k in pairs:
            t = self.tracks[k]
            t["since"] = 0
            t["streak"] += 1
            t["kf"].update(xyxy_to_xysr(dets[d : d + 1, :4]).T)
        for d in free:
            self.tracks.append(self._new(dets[d]))
        out = []
        for t in self.tracks:
            if t["since"] < 1 and (t["streak"] >= self.min_hits or self.frame <= self.min_hits):
                box = xysr_to_xyxy(t["kf"].x[:4, 0][None])[0]
                out.append([*box, t["id"], 1.0, 0.0, 0.0, 2.0])
        self.tracks = [t for t in self.tracks if t["since"] <= self.max_age]
        return np.array(out).reshape(-1, 9)


def _make(name: str):
    return FilterpySort() if name == "filterpy SORT (baseline)" else make_tracker(name)


def _constant_embeddings(frames: list[np.ndarray], dim: int = 128) -> list[np.ndarray]:
    unit = np.zeros(dim, dtype=np.float32)
    unit[0] = 1.0
    return [np.broadcast_to(unit, (len(d), dim)).copy() for d in frames]


def time_trackers(names: list[str], sequences: list[list[np.ndarray]], repeats: int) -> dict[str, float]:
    """Frames per second of ``update`` over all sequences, best of ``repeats``."""
    n_frames = sum(len(s) for s in sequences)
    embeddings = [_constant_embeddings(s) for s in sequences]
    fps = {}
    for name in names:
        best = float("inf")
        for _ in range(repeats):
            elapsed = 0.0
            for frames, embs in zip(sequences, embeddings):
                tracker = _make(name)
                use = needs_embeddings(tracker)
                start = time.perf_counter()
                for dets, emb in zip(frames, embs):
                    tracker.update(dets, emb if use else None)
                elapsed += time.perf_counter() - start
            best = min(best, elapsed)
        fps[name] = n_frames / best
        console.print(f"  {name:<26} {fps[name]:8.0f} frames/s")
    return fps


def _rounded(rows: np.ndarray) -> np.ndarray:
    rows = rows.copy()
    rows[:, 2:6] = np.round(rows[:, 2:6], 2)  # as written by mot.write_mot
    return rows


def tud_accuracy(names: list[str], root: Path) -> dict[str, dict]:
    data = {}
    for s in TUD:
        seq = mot.Sequence(root / s)
        data[s] = (mot.detections_by_frame(mot.read_mot(seq.det_path)), mot.read_mot(seq.gt_path))
    out = {}
    for name in names:
        pairs = {}
        for s, (frames, gt) in data.items():
            tracker = _make(name)
            embs = _constant_embeddings(frames) if needs_embeddings(tracker) else None
            embed = (lambda i, d, e=embs: e[i - 1]) if embs is not None else None
            pairs[s] = (gt, _rounded(mot.run_tracker(tracker, frames, embed)))
        out[name] = mot.score_many(pairs)["OVERALL"].as_dict()
    return out


def synthetic_accuracy(names: list[str], seeds: list[int]) -> tuple[dict[str, dict], float]:
    embedder = HistogramEmbedder()
    scenes = []
    embed_time, embed_frames = 0.0, 0
    for seed in seeds:
        seq = make_crossing_sequence(seed)
        embs = []
        for i, d in enumerate(seq.detections):
            frame = seq.frame(i)
            start = time.perf_counter()
            embs.append(embedder.embed(frame, d[:, :4]))
            embed_time += time.perf_counter() - start
            embed_frames += 1
        scenes.append((f"seed{seed}", seq, embs))
    out = {}
    for name in names:
        pairs = {}
        for label, seq, embs in scenes:
            tracker = _make(name)
            embed = (lambda i, d, e=embs: e[i - 1]) if needs_embeddings(tracker) else None
            pairs[label] = (seq.ground_truth(), mot.run_tracker(tracker, seq.detections, embed))
        scores = mot.score_many(pairs)
        out[name] = scores["OVERALL" if len(pairs) > 1 else label].as_dict()
    return out, 1000.0 * embed_time / max(embed_frames, 1)


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("VISIONGUARD_MOT_ROOT") or str(ROOT.parent / "shared" / "data" / "mot15")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mot-root", type=Path, default=Path(default_root))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tracking.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args(argv)

    names = list(PRESETS)
    result: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "presets": {n: PRESETS[n][1] for n in names},
        "reference": REFERENCE,
    }
    mot_ok = all((args.mot_root / s / "gt" / "gt.txt").is_file() for s in TUD)
    if mot_ok:
        seqs = mot.discover_sequences(args.mot_root)
        sequences = [mot.detections_by_frame(mot.read_mot(s.det_path)) for s in seqs]
        n_frames = sum(len(s) for s in sequences)
        console.print(f"timing update() over {len(seqs)} sequences, {n_frames} frames, best of {args.repeats}")
        timed = ["filterpy SORT (baseline)", *names]
        fps = time_trackers(timed, sequences, args.repeats)
        console.print("scoring on TUD-Campus + TUD-Stadtmitte")
        acc = tud_accuracy(timed, args.mot_root)
        result["mot15"] = {
            "root": str(args.mot_root),
            "sequences": [s.name for s in seqs],
            "frames": n_frames,
            "deepsort_embeddings": "constant unit vectors (speed only; no images in MOT15 here)",
            "trackers": {n: {"frames_per_second": fps[n], "tud": acc[n]} for n in timed},
        }
        table = Table(
            title=f"MOT15: f/s over {len(seqs)} sequences ({n_frames} frames); "
            "accuracy on TUD-Campus + TUD-Stadtmitte"
        )
        for col in ("tracker", "f/s", "MOTA", "IDF1", "IDsw", "FP", "FN", "MOTP", "HOTA"):
            table.add_column(col, justify="left" if col == "tracker" else "right")
        for n in timed:
            a = acc[n]
            hota = "n/a" if a["hota"] is None else f"{a['hota']:.3f}"
            label = n + (" *" if n == "deepsort" else "")
            table.add_row(label, f"{fps[n]:.0f}", f"{a['mota']:.3f}", f"{a['idf1']:.3f}", str(a["id_switches"]),
                          str(a["false_positives"]), str(a["misses"]), f"{a['motp']:.3f}", hota)
        for n, r in REFERENCE.items():
            table.add_row(f"[dim]{n} (README)[/dim]", f"[dim]~{r['fps']}[/dim]", f"[dim]{r['mota']:.3f}[/dim]",
                          f"[dim]{r['idf1']:.3f}[/dim]", f"[dim]{r['id_switches']}[/dim]", "", "", "", "")
        console.print(table)
        console.print("* deepsort timed and scored with constant embeddings: appearance carries no information here.")
    else:
        console.print(f"[yellow]MOT15 data not found at {args.mot_root} (set --mot-root or VISIONGUARD_MOT_ROOT): "
                      "speed and TUD accuracy skipped[/yellow]")

    console.print(f"synthetic crossings, seeds {args.seeds}")
    syn, embed_ms = synthetic_accuracy(names, args.seeds)
    result["synthetic"] = {"seeds": args.seeds, "embedder_ms_per_frame": embed_ms, "trackers": syn}
    table = Table(
        title=f"Synthetic crossings (seeds {args.seeds}); "
        f"DeepSORT with HistogramEmbedder ({embed_ms:.2f} ms/frame)"
    )
    for col in ("tracker", "MOTA", "IDF1", "IDsw", "FP", "FN"):
        table.add_column(col, justify="left" if col == "tracker" else "right")
    for n, a in syn.items():
        table.add_row(n, f"{a['mota']:.3f}", f"{a['idf1']:.3f}", str(a["id_switches"]),
                      str(a["false_positives"]), str(a["misses"]))
    console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
