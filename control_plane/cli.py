"""`visionguard`: the one way to start, export, measure and test the stack.

This module only registers the wings' commands, builds the settings once per process, and maps a
refused call (a `ControlPlaneError`) to a message and an exit status in one place.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from control_plane.datasets.commands import app as data_app
from control_plane.drift.commands import app as drift_app
from control_plane.errors import ControlPlaneError
from control_plane.evaluation.commands import app as eval_app
from control_plane.logs.commands import app as logs_app
from control_plane.perf.commands import app as perf_app
from control_plane.releases.commands import app as models_app
from control_plane.settings import Settings
from control_plane.stack.commands import app as stack_app
from control_plane.stack.commands import serve_app
from control_plane.streaming.commands import app as stream_app
from control_plane.evaluation.coco import evaluate_and_log
from control_plane.training.commands import make_app as training_commands
from tracker_service.track_commands import app as track_app

app = typer.Typer(help="VisionGuard: Triton-backed detection and tracking.", no_args_is_help=True)
# `train --data` scores the trained model with Ultralytics' validator and the COCO evaluator;
# training cannot import evaluation (a layer above it), so the CLI hands it in.
training_app = training_commands(evaluate=evaluate_and_log)
app.registered_commands += stack_app.registered_commands + training_app.registered_commands
app.registered_commands += stream_app.registered_commands
app.add_typer(serve_app, name="serve")
app.add_typer(perf_app, name="perf")
app.add_typer(models_app, name="models")
app.add_typer(drift_app, name="drift")
app.add_typer(logs_app, name="logs")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(track_app, name="track", help="Evaluate and render trackers.")


@app.callback()
def _settings(ctx: typer.Context) -> None:
    """VisionGuard: Triton-backed detection and tracking."""
    if ctx.obj is None:  # `main` builds them; typer's test runner calls the app directly
        ctx.obj = Settings()


def _log_to_file(settings: Settings) -> None:
    """The CLI's own events (releases, drift checks) as JSON lines in <runtime>/logs/cli.log,
    beside the services' logs, where the log index finds them; not on the console, where the
    commands print their own summaries."""
    import logging

    from tracker_service.telemetry import JsonFormatter

    try:
        (settings.runtime_dir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.runtime_dir / "logs" / "cli.log")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(JsonFormatter("cli"))
    logger = logging.getLogger("visionguard")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# Commands that run services log as those services (`up` to logs/up.log and its console, `serve`
# as JSON on stdout): the CLI's file would take their records and label them "cli".
SERVICE_COMMANDS = frozenset({"up", "serve"})


def main() -> None:
    settings = Settings()
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if command not in SERVICE_COMMANDS:
        _log_to_file(settings)
    try:
        app(obj=settings)
    except ControlPlaneError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc.message}")
        sys.exit(exc.exit_code)
