"""`visionguard perf ...`: perf_analyzer against the served model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from control_plane.settings import cli_settings

app = typer.Typer(help="Measure serving performance.", no_args_is_help=True)
console = Console(soft_wrap=True)


@app.command("triton")
def perf_triton(
    ctx: typer.Context,
    concurrency: Annotated[str, typer.Option(help="Range start:end:step.")] = "1:4:1",
    shape: Annotated[Optional[str], typer.Option(
        help="Input H,W,C for `images`; default: bus.jpg letterboxed (640,480,3).")] = None,
    measurement_ms: Annotated[int, typer.Option(help="Window per measurement.")] = 5000,
    shared_memory: Annotated[str, typer.Option(help="none or system.")] = "none",
    stability_percentage: Annotated[float, typer.Option(
        help="Allowed max/min spread (%) of the last 3 windows for a level to count as stable.")] = 10.0,
    max_trials: Annotated[int, typer.Option(
        help="Windows per level before perf_analyzer gives up on it.")] = 10,
    out: Annotated[Path, typer.Option(help="CSV written by perf_analyzer.")] = Path(
        "bench/results/perf_triton.csv"),
) -> None:
    """Run perf_analyzer against the served model over a concurrency range; print a table."""
    from control_plane.perf import analyzer as perf

    settings = cli_settings(ctx)
    try:
        rows = perf.run_perf_analyzer(settings, concurrency=concurrency, shape=shape,
                                      measurement_ms=measurement_ms, shared_memory=shared_memory,
                                      stability_percentage=stability_percentage,
                                      max_trials=max_trials, csv_path=out, console=console)
    except perf.UnstableMeasurement as e:
        # Show what did settle before cli.main reports the levels that did not.
        perf.print_table(e.details["rows"], console)
        console.print(f"CSV (settled levels only): {out}")
        raise
    perf.print_table(rows, console)
    console.print(f"CSV: {out}")
