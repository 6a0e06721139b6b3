"""`visionguard eval ...`: evaluations a release engineer runs on a checkpoint or a version.

`eval robustness` scores a registered version (`--version N`: logged to its MLflow run, its mean
ratio kept as a tag) or a checkpoint file (`--checkpoint FILE.pt`: the JSON and the chart are
written to `--out`, default under the runtime directory) on a dataset version's validation
split, clean and under each corruption and severity. On a terminal a progress bar runs on
stderr; elsewhere each finished job is one line there. Refusals are typed errors that
`cli.main` maps to a message and an exit status.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from control_plane.evaluation.robustness import (ProgressCallback, RobustnessProgress,
                                                 RobustnessResult)
from control_plane.settings import cli_settings

app = typer.Typer(help="Evaluate model versions and checkpoints: robustness under image "
                       "corruptions.", no_args_is_help=True)
console = Console(soft_wrap=True)
progress_console = Console(stderr=True, soft_wrap=True)  # progress on stderr: stdout stays JSON


@contextmanager
def _progress(out: Console, total: int) -> Iterator[ProgressCallback]:
    if not out.is_terminal:
        def line(p: RobustnessProgress) -> None:
            out.print(f"robustness {p.done}/{p.total}: {p.label} mAP50-95 {p.map:.3f} "
                      f"({p.seconds:.1f} s)", highlight=False)
        yield line
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=out,
                  transient=True) as bar:
        task = bar.add_task("robustness: clean and corrupted copies", total=total)

        def update(p: RobustnessProgress) -> None:
            bar.update(task, completed=p.done,
                       description=f"robustness: {p.label} {p.map:.3f}")
        yield update


def result_table(result: RobustnessResult) -> Table:
    """Corruptions down, severities across: mAP50-95 and its ratio to clean."""
    table = Table("corruption", *(f"severity {s}" for s in result.suite.severities),
                  box=box.SIMPLE_HEAD, title=f"{result.model} on {result.suite.dataset}: "
                                             "mAP50-95 (ratio to clean)")
    by = {(s.corruption, s.severity): s for s in result.scores}
    for c in result.suite.corruptions:
        table.add_row(c, *(f"{by[c, s].map:.3f} ({by[c, s].ratio:.2f})"
                           for s in result.suite.severities))
    return table


@app.command("robustness")
def robustness_cmd(
    ctx: typer.Context,
    data: Annotated[str, typer.Option("--data", help="dataset NAME or NAME@VERSION")],
    version: Annotated[Optional[str], typer.Option(
        "--version", help="a registered model version (logged to its MLflow run)")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="an Ultralytics checkpoint file (.pt)")] = None,
    imgsz: Annotated[Optional[int], typer.Option(
        help="input size (default: the version's serving size, the checkpoint's training "
             "size)")] = None,
    max_images: Annotated[int, typer.Option(
        help="validation images to use, spread over the split (0: all)")] = 0,
    corruption: Annotated[Optional[list[str]], typer.Option(
        "--corruption", help="only this corruption (repeatable; default: all)")] = None,
    severity: Annotated[Optional[list[int]], typer.Option(
        "--severity", help="only this severity, 1-3 (repeatable; default: all)")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="write robustness.json and robustness.png into this folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
    = False,
) -> None:
    """Score a version or checkpoint on a dataset's validation split, clean and under noise,
    blur, brightness, contrast, JPEG, fog, occlusion and downscaling at three severities."""
    from control_plane.datasets.store import DatasetStore
    from control_plane.evaluation import corruptions as corruption_set
    from control_plane.evaluation import robustness

    settings = cli_settings(ctx)
    if (version is None) == (checkpoint is None):
        raise typer.BadParameter("give one of --version N or --checkpoint FILE.pt")
    chosen, levels = corruption_set.check(corruption, severity)  # before any slow work
    dataset = DatasetStore(settings, log_to_mlflow=False).resolve(data)
    total = 1 + len(chosen) * len(levels)
    with _progress(progress_console, total) as progress:
        if version is not None:
            result = robustness.evaluate_version(
                settings, version, dataset, corruptions=chosen, severities=levels,
                max_images=max_images, imgsz=imgsz, progress=progress)
        else:
            result = robustness.evaluate_robustness(
                settings, checkpoint, dataset, corruptions=chosen, severities=levels,
                max_images=max_images, imgsz=imgsz, progress=progress)
    if out is None and version is None:
        out = settings.runtime_dir / "evaluation" / "robustness" / \
            f"{checkpoint.stem}-{dataset.name}-{dataset.version}"
    files = robustness.write_files(result, out) if out else ()
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    console.print(result_table(result))
    console.print(f"clean mAP50-95 {result.clean:.3f}; mean ratio {result.mean_ratio:.3f} "
                  f"over {len(result.scores)} corrupted sets of {result.images} images at "
                  f"{result.imgsz} px ({result.seconds:.0f} s)")
    if version is not None:
        console.print(f"logged to {settings.model_name} version {version}'s MLflow run "
                      f"(artifacts {robustness.ARTIFACT_DIR}/); tag "
                      f"{robustness.TAG_MEAN_RATIO}={result.mean_ratio:.4f}")
    for path in files:
        console.print(f"wrote {path}")
