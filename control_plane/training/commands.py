"""`visionguard train`: a dataset version (`--data`), or the bootstrap on generated shapes.

The command is built by `make_app(evaluate)`: the evaluation a trained model gets comes from
the caller, because the COCO cross-check lives in `control_plane.evaluation`, a layer above
this one (`cli.py` passes `control_plane.evaluation.coco.evaluate_and_log`). `app` is the
command with Ultralytics' validator alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from control_plane.settings import cli_settings

if TYPE_CHECKING:
    from control_plane.training.train import Evaluator

console = Console(soft_wrap=True)


def make_app(evaluate: Evaluator | None = None) -> typer.Typer:
    """The `train` command, scoring models trained on a dataset with `evaluate`."""
    app = typer.Typer()

    @app.command()
    def train(
        ctx: typer.Context,
        data: Annotated[Optional[str], typer.Option(
            "--data", help="NAME or NAME@VERSION: train on this dataset version (validated "
                           "first); without it, the bootstrap on generated shapes.")] = None,
        base: Annotated[Optional[str], typer.Option(
            "--from", help="With --data: champion (default when there is one), FILE.pt, or an "
                           "Ultralytics architecture such as yolov8n.yaml.")] = None,
        model_name: Annotated[Optional[str], typer.Option(
            help="With --data: register under this model (a new name allows a new class "
                 "set); default the served model.")] = None,
        out: Annotated[Optional[Path], typer.Option(
            help="Output folder (Ultralytics' run, ONNX).")] = None,
        epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
        imgsz: Annotated[Optional[int], typer.Option(
            help="Training image size (with --data: default the base's).")] = None,
        n_train: Annotated[Optional[int], typer.Option(
            help="Bootstrap: generated training images.")] = None,
        n_val: Annotated[Optional[int], typer.Option(
            help="Bootstrap: generated validation images.")] = None,
        seed: Annotated[int, typer.Option(help="Data and training seed.")] = 0,
    ) -> None:
        """Train on a dataset version (--data) or the bootstrap detector; log to MLflow and
        register a version (one trained on --data serves only once promoted)."""
        from control_plane.training.train import train_command

        if data is None and (base or model_name):
            raise typer.BadParameter("--from and --model-name go with --data")
        if data is not None and (n_train or n_val):
            raise typer.BadParameter("--n-train and --n-val size the generated bootstrap data; "
                                     "a --data version has its own")
        settings = cli_settings(ctx)
        overrides = {k: v for k, v in dict(epochs=epochs, n_train=n_train,
                                           n_val=n_val).items() if v is not None}
        train_command(settings, out, data=data, base=base, model_name=model_name, imgsz=imgsz,
                      seed=seed, console=console, evaluate=evaluate, **overrides)

    return app


app = make_app()
