"""`visionguard train`: the bootstrap detector, trained offline on generated shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from control_plane.settings import cli_settings

app = typer.Typer()
console = Console(soft_wrap=True)


@app.command()
def train(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (data, run, ONNX).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    imgsz: Annotated[Optional[int], typer.Option(help="Training image size.")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="Generated training images.")] = None,
    n_val: Annotated[Optional[int], typer.Option(help="Generated validation images.")] = None,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 0,
) -> None:
    """Train the bootstrap detector offline on generated shapes; log and register in MLflow."""
    from control_plane.training.train import train_command

    settings = cli_settings(ctx)
    overrides = {k: v for k, v in dict(epochs=epochs, imgsz=imgsz, n_train=n_train,
                                       n_val=n_val).items() if v is not None}
    train_command(settings, out or settings.bootstrap_dir, seed=seed, console=console,
                  **overrides)
