"""The stack's commands: `up`, `serve`, `export`, `export-reid`, `token` and `test`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from control_plane.settings import Settings, cli_settings

app = typer.Typer()
serve_app = typer.Typer(help="Run one service in the foreground.", no_args_is_help=True)
console = Console(soft_wrap=True)  # no hard wraps: URLs stay copyable in logs


@app.command()
def up(
    ctx: typer.Context,
    weights: Annotated[Optional[str], typer.Option(
        help="Checkpoint (.pt) or architecture (.yaml) to export if the repository has no "
             "version, or to export as a new version.")] = None,
    gateway_port: Annotated[Optional[int], typer.Option(help="Gateway HTTP port.")] = None,
) -> None:
    """Start the control plane, the MLflow UI, the gateway and Triton as local processes (on a
    first run, after training the bootstrap detector); a process that exits is restarted;
    Ctrl-C stops them all."""
    from control_plane.stack.up import run_up

    settings = cli_settings(ctx)
    if gateway_port:
        settings = replace(settings, gateway_port=gateway_port)
    raise typer.Exit(run_up(settings, weights, console))


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    weights: Annotated[str, typer.Argument(help="Checkpoint (.pt) or architecture (.yaml).")],
    target: Annotated[str, typer.Option(help="cpu (python backend + onnxruntime) or gpu "
                                              "(TensorRT plan ensemble).")] = "cpu",
    version: Annotated[Optional[int], typer.Option(help="Version number; default next.")] = None,
    imgsz: Annotated[Optional[int], typer.Option(
        help="Max input side (multiple of 32); default: the checkpoint's training size.")] = None,
    repo: Annotated[Optional[Path], typer.Option(help="Model repository.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 8,
    max_queue_delay_us: Annotated[Optional[int], typer.Option(
        help="Dynamic batcher delay; default 0 on cpu, 1000 on gpu.")] = None,
    instances: Annotated[int, typer.Option(help="Model instances.")] = 1,
) -> None:
    """Export a checkpoint into the Triton model repository as a new version."""
    from export.pipeline import export_to_repository
    from export.triton_repo import BatchingConfig

    settings = cli_settings(ctx)
    if target not in ("cpu", "gpu"):
        raise typer.BadParameter("target must be cpu or gpu")
    with console.status(f"exporting {weights} ({target})..."):
        delay = max_queue_delay_us if max_queue_delay_us is not None else (
            0 if target == "cpu" else 1000)
        batching = BatchingConfig(max_batch_size=max_batch_size, max_queue_delay_us=delay,
                                  instances=instances)
        result = export_to_repository(weights, repo or settings.model_repository,
                                      version=version, target=target, imgsz=imgsz,
                                      batching=batching, name=settings.model_name)
    console.print(f"wrote {result.version_dir} ({len(result.names)} classes)")


@app.command("export-reid")
def export_reid_cmd(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="A ReID ONNX file (float NCHW in, [B, D] out), a resnet18 state_dict (.pt/.pth), "
             "or 'resnet18' for seeded random weights.")],
    version: Annotated[Optional[int], typer.Option(help="Version number; default next.")] = None,
    repo: Annotated[Optional[Path], typer.Option(help="Model repository.")] = None,
) -> None:
    """Export an appearance-embedding model as the `reid` Triton model (for DeepSORT)."""
    from export.reid import export_reid_to_repository

    settings = cli_settings(ctx)
    with console.status(f"exporting {source} as {settings.reid_model_name}..."):
        vdir = export_reid_to_repository(source, repo or settings.model_repository,
                                         version=version, name=settings.reid_model_name)
    console.print(f"wrote {vdir}; serve it with VG_GATEWAY_EMBEDDER=triton "
                  "VG_GATEWAY_TRACKER=deepsort")


@serve_app.command("gateway")
def serve_gateway(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Run the gateway alone (Triton given by VG_GATEWAY_TRITON_URL)."""
    import uvicorn

    uvicorn.run("tracker_service.app:create_app", factory=True, host=host, port=port,
                access_log=False)


@serve_app.command("control-plane")
def serve_control_plane(
    ctx: typer.Context,
    port: Annotated[Optional[int], typer.Option(help="HTTP port (default VG_CONTROL_PORT).")
                    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default VG_HOST).")] = None,
) -> None:
    """Run the control plane's HTTP API alone (registry, releases, routing for gateways)."""
    import uvicorn

    from control_plane.stack.up import CONTROL_PLANE_KEEP_ALIVE_S

    settings = cli_settings(ctx)
    uvicorn.run("control_plane.api.app:create_app", factory=True, host=host or settings.host,
                port=port or settings.control_port, access_log=False,
                timeout_keep_alive=CONTROL_PLANE_KEEP_ALIVE_S)


@app.command("token")
def token_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who the token is for (shown in the audit log).")],
    role: Annotated[list[str], typer.Option(
        help="Role: release, sre, gateway or viewer (repeat for several).")],
) -> None:
    """Create an API token for the control plane (printed once; only its digest is kept)."""
    from control_plane.auth import TokenStore

    settings = cli_settings(ctx)
    try:
        token = TokenStore(settings.tokens_file).create(name, role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"token for {name} ({', '.join(sorted(role))}), kept as a digest in "
                  f"{settings.tokens_file}:\n{token}")


def xdist_args(settings: Settings, args: list[str]) -> list[str]:
    """pytest-xdist's arguments for `visionguard test`, unless `args` already choose."""
    if any(arg in ("-d", "--numprocesses", "--dist", "no:xdist")
           or arg.startswith(("-n", "--numprocesses=", "--dist=")) for arg in args):
        return []
    workers = settings.test_workers or len(os.sched_getaffinity(0))
    # In collection order (xdist would send the files with the most tests first): the suite
    # puts the files that wait for its trained detector last (tests/conftest.py).
    return ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder"] \
        if workers > 1 else []


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(ctx: typer.Context) -> None:
    """Run the test suite (pytest); extra arguments go to pytest.

    Test files are spread over pytest-xdist workers (`--dist loadfile`: a file's tests share
    its module fixtures in one process; in collection order), one per usable core or
    VG_TEST_WORKERS; `-n`, `--dist` or `-p no:xdist` among the arguments choose otherwise."""
    settings = cli_settings(ctx)
    code = subprocess.call([sys.executable, "-m", "pytest", *xdist_args(settings, ctx.args),
                            *ctx.args], cwd=settings.root)
    raise typer.Exit(code)
