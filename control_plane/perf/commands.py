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


@app.command("tune")
def perf_tune(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option(help="perf_analyzer's concurrency.")] = 8,
    budget_ms: Annotated[float, typer.Option(help="p95 latency budget (ms).")] = 200.0,
    instances: Annotated[str, typer.Option(help="Model instances to try.")] = "1,2",
    queue_delay_us: Annotated[str, typer.Option(
        help="Dynamic batcher queue delays (us) to try.")] = "0,1000,4000",
    preferred: Annotated[str, typer.Option(
        help="Preferred batch size sets, ';'-separated; 'none' for no preference.")] = "2,4,8;none",
    threads: Annotated[str, typer.Option(help="Runtime threads per instance to try.")] = "1,2",
    measurement_ms: Annotated[int, typer.Option(help="perf_analyzer window per point.")] = 4000,
    stability_percentage: Annotated[float, typer.Option(
        help="Allowed spread (%) of perf_analyzer's last 3 windows at a point.")] = 10.0,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Write the best point into the live config.pbtxt and load it.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for perf_tune.json and perf_tune.png.")] = Path(
        "bench/results"),
) -> None:
    """Sweep instances, queue delay, preferred batch sizes and threads with perf_analyzer under
    a p95 budget; print the table, write JSON and a plot; with --apply, serve the best.

    Each point is loaded into the running Triton as a config override (nothing is written
    until --apply), so the gateway keeps serving while the sweep runs, with each point's
    performance."""
    from control_plane.perf import tune

    settings = cli_settings(ctx)
    config = tune.read_config(settings.model_repository / settings.model_name)
    points = tune.grid(tune.parse_ints(instances, "instances"),
                       tune.parse_ints(queue_delay_us, "queue-delay-us"),
                       tune.parse_sizes(preferred), tune.parse_ints(threads, "threads"),
                       config.max_batch_size)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("sweeping", total=len(points))

        def step(i: int, n: int, point) -> None:
            bar.update(task, completed=i, description=point.label)
            if not console.is_terminal:
                console.print(f"point {i + 1}/{n}: {point.label}")

        result = tune.tune(settings, points, concurrency=concurrency, budget_ms=budget_ms,
                           measurement_ms=measurement_ms,
                           stability_percentage=stability_percentage, apply=apply, out_dir=out,
                           progress=step)
    _print_sweep(result)
    console.print(f"JSON: {tune.write_json(result, out / 'perf_tune.json')}")
    console.print(f"plot: {tune.plot(result, out / 'perf_tune.png')}")
    if result.best is None:
        console.print(f"[red]no point within the p95 budget of {budget_ms:g} ms[/]; the served "
                      "config is unchanged")
        raise typer.Exit(1)
    if result.applied:
        console.print(f"[green]applied[/] {result.best.point.label} -> {result.config_path}")
    else:
        console.print("served config unchanged; rerun with --apply to serve the best point")


def _print_sweep(result) -> None:
    from rich.table import Table

    table = Table(title=f"Triton config sweep at concurrency {result.concurrency} "
                        f"(p95 budget {result.budget_ms:g} ms)")
    for col in ("instances", "threads", "delay us", "preferred", "infer/s", "p50 ms",
                "p95 ms", "queue ms", "compute ms", ""):
        table.add_column(col, justify="right")
    for m in sorted(result.results, key=lambda m: -m.throughput):
        p = m.point
        mark = ("best" if m is result.best else "current" if p == result.baseline else
                "over budget" if not m.error and not m.within(result.budget_ms) else m.error[:60])
        table.add_row(str(p.instances), str(p.threads), str(p.max_queue_delay_us),
                      ",".join(map(str, p.preferred_batch_sizes)) or "any",
                      f"{m.throughput:.1f}", f"{m.p50_ms:.1f}", f"{m.p95_ms:.1f}",
                      f"{m.queue_ms:.1f}", f"{m.compute_ms:.1f}", mark)
    console.print(table)
