"""``visionguard track ...``: run trackers over MOTChallenge-style folders, score them, draw them.

Only translation between the command line and :mod:`tracker_service.mot` /
:mod:`tracker_service.tracking`; no tracking logic lives here.
"""

from __future__ import annotations

import colorsys
import json
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import mot
from .tracking import DEFAULT_TRACKER, PRESETS, HistogramEmbedder, needs_embeddings

app = typer.Typer(
    help="Multi-object tracking: evaluate trackers on MOTChallenge sequences and render tracks.",
    no_args_is_help=True,
)
console = Console()


def _read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    img = iio.imread(path)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


@app.command("eval")
def eval_(
    mot_root: Path = typer.Argument(..., help="Folder searched for sequences (SEQ/det/det.txt)."),
    out: Path = typer.Option(..., "--out", help="Folder for SEQ.txt results and summary.json."),
    tracker: str = typer.Option(DEFAULT_TRACKER, "--tracker", help=f"One of: {', '.join(PRESETS)}."),
) -> None:
    """Track every sequence under MOT_ROOT with the same settings, write and score the results."""
    if tracker not in PRESETS:
        raise typer.BadParameter(f"unknown tracker {tracker!r}; choose from {', '.join(PRESETS)}")
    sequences = mot.discover_sequences(mot_root)
    if not sequences:
        console.print(f"[red]no sequence with det/det.txt under {mot_root}[/red]")
        raise typer.Exit(code=1)
    out.mkdir(parents=True, exist_ok=True)
    embedder = HistogramEmbedder()
    runs: dict[str, dict] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{tracker}", total=len(sequences))
        for seq in sequences:
            progress.update(task, description=f"{tracker} {seq.name}")
            images = seq.image_paths
            dets = mot.read_mot(seq.det_path)
            n_frames = max(int(dets[:, 0].max()) if len(dets) else 0, len(images), seq.length or 0)
            frames = mot.detections_by_frame(dets, n_frames)
            trk = mot.tracker_for(seq, tracker)
            embed = None
            if needs_embeddings(trk):
                if len(images) < n_frames:
                    console.print(
                        f"[red]{tracker} needs the frame images (SEQ/img1) for appearance "
                        f"embeddings; {seq.name} has none[/red]"
                    )
                    raise typer.Exit(code=1)
                embed = lambda i, d: embedder.embed(_read_image(images[i - 1]), d[:, :4])  # noqa: E731
            start = time.perf_counter()
            results = mot.run_tracker(trk, frames, embed)
            elapsed = time.perf_counter() - start
            result_path = out / f"{seq.name}.txt"
            mot.write_mot(result_path, results)
            runs[seq.name] = {
                "frames": n_frames,
                "frame_rate": seq.frame_rate,
                "tracks": int(len(np.unique(results[:, mot.ID]))) if len(results) else 0,
                "frames_per_second": n_frames / elapsed if elapsed > 0 else None,
                "results": str(result_path),
            }
            if seq.gt_path is not None:
                pairs[seq.name] = (mot.read_mot(seq.gt_path), mot.read_mot(result_path))
            progress.advance(task)

    scores = mot.score_many(pairs) if pairs else {}
    table = Table(title=f"{tracker} on {mot_root}")
    for col in ("sequence", "frames", "tracks", "f/s", "MOTA", "IDF1", "HOTA", "IDsw", "FP", "FN", "MOTP"):
        table.add_column(col, justify="left" if col == "sequence" else "right")
    for name, run in runs.items():
        s = scores.get(name)
        metrics = (
            [_fmt(s.mota), _fmt(s.idf1), _fmt(s.hota), str(s.id_switches), str(s.false_positives),
             str(s.misses), _fmt(s.motp)]
            if s else ["-"] * 7
        )
        table.add_row(name, str(run["frames"]), str(run["tracks"]), _fmt(run["frames_per_second"], 0), *metrics)
        if s:
            run["metrics"] = s.as_dict()
    if "OVERALL" in scores:
        s = scores["OVERALL"]
        table.add_row(
            "overall", "", "", "", _fmt(s.mota), _fmt(s.idf1), _fmt(s.hota), str(s.id_switches),
            str(s.false_positives), str(s.misses), _fmt(s.motp), style="bold",
        )
    console.print(table)
    if pairs and all(s.hota is None for s in scores.values()):
        console.print("HOTA: n/a (install trackeval to compute it)")
    overall = scores.get("OVERALL") or (scores[next(iter(scores))] if len(scores) == 1 else None)
    summary = {
        "tracker": tracker,
        "settings": {k: v for k, v in PRESETS[tracker][1].items()},
        "iou_threshold": 0.5,
        "sequences": runs,
        "overall": overall.as_dict() if overall else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"results and summary.json in {out}")


def _colour(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@app.command()
def render(
    results: Path = typer.Argument(..., help="MOTChallenge results file (frame,id,x,y,w,h,...)."),
    out: Path = typer.Option(..., "--out", help="Output .gif or .mp4."),
    frames_dir: Path | None = typer.Option(None, "--frames-dir", help="Frame images to draw on."),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    fps: float = typer.Option(10.0, "--fps"),
    trail: int = typer.Option(30, "--trail", help="Frames of trajectory drawn behind each box."),
) -> None:
    """Draw tracks (boxes, ids, coloured trails) onto frames, or onto a blank canvas."""
    import cv2

    rows = mot.read_mot(results)
    images = []
    if frames_dir is not None:
        images = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            console.print(f"[red]no .jpg/.png images in {frames_dir}[/red]")
            raise typer.Exit(code=1)
    n = len(images) if images else (int(rows[:, mot.FRAME].max()) if len(rows) else 0)
    if max_frames is not None:
        n = min(n, max_frames)
    if n == 0:
        console.print("[red]nothing to draw[/red]")
        raise typer.Exit(code=1)
    if not images:  # canvas that holds every box
        right = rows[:, mot.X] + rows[:, mot.W]
        bottom = rows[:, mot.Y] + rows[:, mot.H]
        width = int(np.ceil(min(max(right.max(), 64), 4096))) + 8
        height = int(np.ceil(min(max(bottom.max(), 64), 4096))) + 8
        width, height = width + width % 2, height + height % 2  # video codecs want even sizes

    by_frame = dict(mot.rows_by_frame(rows)) if len(rows) else {}
    history: dict[int, list[tuple[int, int]]] = {}
    frames = []
    for f in range(1, n + 1):
        canvas = _read_image(images[f - 1]).copy() if images else np.full((height, width, 3), 32, np.uint8)
        for r in by_frame.get(f, []):
            tid = int(r[mot.ID])
            x1, y1 = int(round(r[mot.X])), int(round(r[mot.Y]))
            x2, y2 = int(round(r[mot.X] + r[mot.W])), int(round(r[mot.Y] + r[mot.H]))
            history.setdefault(tid, []).append((f, ((x1 + x2) // 2, y2)))
            colour = _colour(tid)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(canvas, str(tid), (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        for tid, points in history.items():
            recent = [p for g, p in points if f - trail < g <= f]
            if len(recent) > 1:
                cv2.polylines(canvas, [np.array(recent, np.int32)], False, _colour(tid), 2, cv2.LINE_AA)
        frames.append(canvas)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        import imageio.v3 as iio

        iio.imwrite(out, np.stack(frames), duration=1000.0 / fps, loop=0)
    elif out.suffix.lower() == ".mp4":
        _write_mp4(out, frames, fps)
    else:
        raise typer.BadParameter("--out must end in .gif or .mp4")
    console.print(f"{n} frames -> {out}")


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """MP4 through imageio's ffmpeg plugin when it is installed, else OpenCV's own encoder."""
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        import imageio.v3 as iio

        iio.imwrite(path, np.stack(frames), fps=fps, plugin="FFMPEG")
        return
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


@app.command()
def synthetic(
    out: Path = typer.Argument(..., help="Folder for the sequence (img1/, det/det.txt, gt/gt.txt)."),
    seed: int = typer.Option(0, "--seed"),
    frames: int = typer.Option(200, "--frames"),
    objects: int = typer.Option(8, "--objects"),
) -> None:
    """Write a synthetic crossing sequence with ground truth, to evaluate or render."""
    from .tracking.synthetic import make_crossing_sequence, write_sequence

    seq = make_crossing_sequence(seed=seed, n_frames=frames, n_objects=objects)
    write_sequence(seq, out)
    console.print(f"synthetic sequence (seed {seed}, {frames} frames, {objects} figures) -> {out}")
