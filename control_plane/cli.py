"""`visionguard`: the one way to start, export, measure and test the stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from control_plane.settings import Settings

app = typer.Typer(help="VisionGuard: Triton-backed detection and tracking.", no_args_is_help=True)
serve_app = typer.Typer(help="Run one service in the foreground.", no_args_is_help=True)
perf_app = typer.Typer(help="Measure serving performance.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(perf_app, name="perf")
console = Console(soft_wrap=True)  # no hard wraps: URLs stay copyable in logs

from control_plane.model_commands import app as models_app  # noqa: E402

app.add_typer(models_app, name="models")

from control_plane.drift_commands import app as drift_app  # noqa: E402

app.add_typer(drift_app, name="drift")

from control_plane.log_commands import app as logs_app  # noqa: E402

app.add_typer(logs_app, name="logs")

try:  # the tracking commands (`visionguard track eval|render`)
    from tracker_service.track_commands import app as track_app

    app.add_typer(track_app, name="track", help="Evaluate and render trackers.")
except ImportError:  # pragma: no cover - tracking module not installed
    pass

SEEDED_WARNING = ("[yellow]warning:[/] serving a seeded model built from {w}: its weights are "
                  "random and its detections mean nothing. Pass --weights a checkpoint (for "
                  "example yolov8n.pt on a connected machine) for real detections.")


def ensure_model(settings: Settings, weights: str | None) -> None:
    """Export a model into the repository if it has no version yet (or --weights is given)."""
    from export import triton_repo

    model_dir = settings.model_repository / settings.model_name
    if triton_repo.versions(model_dir) and weights is None:
        console.print(f"serving existing versions {triton_repo.versions(model_dir)} "
                      f"from {model_dir}")
        return
    if weights is None:
        # The registry's champion, as its own version number (MLflow N = Triton N); the
        # bootstrap detector is trained and registered first on a machine with none.
        from control_plane.promotion import serve_champion

        if settings.default_weights == "bootstrap":
            champion = serve_champion(settings)
            if champion is None:
                bootstrap_checkpoint(settings)
                champion = serve_champion(settings)
            if champion is not None:
                console.print(f"serving the registered champion, {champion.name} version "
                              f"{champion.version} (mAP50-95 {champion.map or 0:.3f} on "
                              f"{champion.eval_dataset or 'its evaluation set'})")
                return
    weights = weights or settings.default_weights
    if weights == "bootstrap":
        weights = str(bootstrap_checkpoint(settings))
    elif weights.endswith((".yaml", ".yml")):
        console.print(SEEDED_WARNING.format(w=weights))
    from export.pipeline import export_to_repository

    with console.status(f"exporting {weights} to ONNX and writing a Triton version..."):
        result = export_to_repository(weights, settings.model_repository,
                                      name=settings.model_name)
    console.print(f"exported {weights} as {settings.model_name} version {result.version}")


def bootstrap_checkpoint(settings: Settings) -> Path:
    """The offline-trained detector's best.pt: trained (and registered in MLflow) on first use."""
    best = settings.bootstrap_dir / "train" / "weights" / "best.pt"
    if best.exists():
        console.print(f"using the bootstrap detector {best}")
        return best
    from control_plane.training import train_command

    console.print("[yellow]no model yet:[/] training the bootstrap detector on generated shapes "
                  "(offline, CPU; about 10 minutes on 2 cores). `--weights yolov8n.pt` serves "
                  "the pretrained COCO model instead on a machine that can download it.")
    return train_command(settings.bootstrap_dir, console=console).best_pt


def _interrupt(signum, frame) -> None:
    # Once: a second Ctrl-C must not cut the shutdown of the children short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def gateway_env(settings: Settings, token: str = "") -> dict[str, str]:
    # Same host as Triton: images go through shared memory, not the gRPC message. The
    # gateway follows the control plane's routing with a token of the `gateway` role.
    # Spans go to the control plane's OTLP receiver unless the user's OTEL_* name a collector.
    tracing = {} if settings.user_traces_url else {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": settings.traces_url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    return {"VG_GATEWAY_SHARED_MEMORY": "1", "OTEL_SERVICE_NAME": "gateway", **os.environ,
            **tracing,
            "VG_GATEWAY_TRITON_URL": settings.triton_grpc_url,
            "VG_GATEWAY_MODEL_NAME": settings.model_name,
            "VG_GATEWAY_CONTROL_URL": settings.control_url,
            "VG_GATEWAY_CONTROL_TOKEN": token}


# Idle keep-alive connections to the control plane stay open this long. uvicorn's default
# (5 s) equals the OTLP exporters' batch interval, so Triton's exporter kept sending on
# connections uvicorn was closing ("Connection reset by peer"), and Triton 2.48's
# opentelemetry-cpp can crash on a failed export (triton-inference-server/server#6202).
CONTROL_PLANE_KEEP_ALIVE_S = 600


def control_plane_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "control_plane.api:create_app", "--factory",
            "--host", settings.host, "--port", str(settings.control_port),
            "--timeout-keep-alive", str(CONTROL_PLANE_KEEP_ALIVE_S),
            "--no-access-log", "--log-level", "warning"]


def mlflow_ui_command(settings: Settings) -> list[str]:
    from control_plane.training import mlflow_store

    store = mlflow_store(settings.mlflow_tracking_uri or None, settings.runtime_dir)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.tracking_uri,
            "--default-artifact-root", store.artifact_location or "./mlartifacts",
            "--host", settings.host, "--port", str(settings.mlflow_ui_port), "--workers", "1"]


def local_tokens(settings: Settings) -> dict[str, str]:
    """Tokens for this `up`: the gateways' (role gateway) and the operator's (release + sre),
    made anew each start; the token file keeps only their digests."""
    from control_plane.auth import TokenStore

    store = TokenStore(settings.tokens_file)
    return {"gateway": store.create("local-gateway", ["gateway"]),
            "operator": store.create("local-operator", ["release", "sre"])}


def gateway_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "tracker_service.app:create_app", "--factory",
            "--host", settings.host, "--port", str(settings.gateway_port),
            "--no-access-log", "--log-level", "warning"]


def start_stack(settings: Settings, supervisor, tokens: dict[str, str] | None = None) -> None:
    """Start Triton, wait for the model, then the control plane, the gateway and the MLflow
    UI, waiting for each: raise on failure."""
    from control_plane import triton_server
    from control_plane.processes import tail, wait_http_ok

    triton_server.check_ports_free(settings.host, [
        settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port,
        settings.gateway_port, settings.control_port,
        *([settings.mlflow_ui_port] if settings.mlflow_ui_port else [])])
    tokens = tokens or local_tokens(settings)
    # The reid model (DeepSORT's embeddings) is served too when the repository has a version.
    from export import triton_repo

    models = [settings.model_name]
    if triton_repo.versions(settings.model_repository / settings.reid_model_name):
        models.append(settings.reid_model_name)
    triton = supervisor.start("triton", triton_server.command(settings, models),
                              triton_server.server_environment())
    try:
        triton_server.wait_ready(settings, triton.proc, settings.startup_timeout_s,
                                 model=settings.model_name)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n--- {triton.log_path} ---\n{tail(triton.log_path)}") from None
    for name, cmd, env, url in (
        ("control-plane", control_plane_command(settings), None,
         f"{settings.control_url}/healthz"),
        ("gateway", gateway_command(settings), gateway_env(settings, tokens["gateway"]),
         f"http://{settings.host}:{settings.gateway_port}/readyz"),
        # The UI only: no job runner (seven huey worker processes), no telemetry.
        *([("mlflow", mlflow_ui_command(settings),
            {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             "MLFLOW_DISABLE_TELEMETRY": "true"},
            f"http://{settings.host}:{settings.mlflow_ui_port}/health")]
          if settings.mlflow_ui_port else []),
    ):
        child = supervisor.start(name, cmd, env)
        try:
            wait_http_ok(url, child.proc, settings.startup_timeout_s, name)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- {child.log_path} ---\n{tail(child.log_path)}"
                               ) from None


@app.command()
def up(
    weights: Annotated[Optional[str], typer.Option(
        help="Checkpoint (.pt) or architecture (.yaml) to export if the repository has no "
             "version, or to export as a new version.")] = None,
    gateway_port: Annotated[Optional[int], typer.Option(help="Gateway HTTP port.")] = None,
) -> None:
    """Start Triton, the control plane, the gateway and the MLflow UI as local processes;
    Ctrl-C stops them all."""
    from control_plane.processes import Supervisor

    settings = Settings()
    if gateway_port:
        settings = replace(settings, gateway_port=gateway_port)
    ensure_model(settings, weights)
    supervisor = Supervisor(settings.runtime_dir / "logs")
    # SIGTERM (and SIGINT even where a parent shell ignores it) ends `up` like Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        tokens = local_tokens(settings)
        with console.status("starting Triton, the control plane, the gateway and MLflow..."):
            start_stack(settings, supervisor, tokens)
        gw = f"http://{settings.host}:{settings.gateway_port}"
        console.print(f"[green]up[/]  gateway {gw}  (POST {gw}/v1/detect, OpenAPI {gw}/schema, "
                      f"metrics {gw}/metrics)")
        console.print(f"    triton  http {settings.triton_http_url}  grpc "
                      f"{settings.triton_grpc_url}  metrics "
                      f"http://{settings.host}:{settings.triton_metrics_port}/metrics")
        console.print(f"    control {settings.control_url}  (OpenAPI {settings.control_url}"
                      f"/schema; operator token, roles release+sre: {tokens['operator']})")
        if settings.mlflow_ui_port:
            console.print(f"    mlflow  http://{settings.host}:{settings.mlflow_ui_port}")
        console.print(f"    logs    {supervisor.log_dir}    Ctrl-C stops everything")
    except RuntimeError as exc:
        supervisor.stop()
        console.print(f"[red]failed to start:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        supervisor.stop()
        raise typer.Exit(130) from None
    try:
        died = supervisor.wait()
        console.print(f"[red]{died.name} exited with code {died.proc.returncode}[/]; stopping")
        code = 1
    except KeyboardInterrupt:
        console.print("stopping...")
        code = 0
    supervisor.stop()
    console.print("stopped")
    raise typer.Exit(code)


@app.command("export")
def export_cmd(
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

    settings = Settings()
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


@app.command()
def train(
    out: Annotated[Optional[Path], typer.Option(help="Output folder (data, run, ONNX).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    imgsz: Annotated[Optional[int], typer.Option(help="Training image size.")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="Generated training images.")] = None,
    n_val: Annotated[Optional[int], typer.Option(help="Generated validation images.")] = None,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 0,
) -> None:
    """Train the bootstrap detector offline on generated shapes; log and register in MLflow."""
    from control_plane import training

    settings = Settings()
    overrides = {k: v for k, v in dict(epochs=epochs, imgsz=imgsz, n_train=n_train,
                                       n_val=n_val).items() if v is not None}
    training.train_command(out or settings.bootstrap_dir, seed=seed, console=console,
                           **overrides)


@app.command("export-reid")
def export_reid_cmd(
    source: Annotated[str, typer.Argument(
        help="A ReID ONNX file (float NCHW in, [B, D] out), a resnet18 state_dict (.pt/.pth), "
             "or 'resnet18' for seeded random weights.")],
    version: Annotated[Optional[int], typer.Option(help="Version number; default next.")] = None,
    repo: Annotated[Optional[Path], typer.Option(help="Model repository.")] = None,
) -> None:
    """Export an appearance-embedding model as the `reid` Triton model (for DeepSORT)."""
    from export.reid import export_reid_to_repository

    settings = Settings()
    with console.status(f"exporting {source} as {settings.reid_model_name}..."):
        vdir = export_reid_to_repository(source, repo or settings.model_repository,
                                         version=version, name=settings.reid_model_name)
    console.print(f"wrote {vdir}; serve it with VG_GATEWAY_EMBEDDER=triton "
                  "VG_GATEWAY_TRACKER=deepsort")


@serve_app.command("gateway")
def serve_gateway(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Run the gateway alone (Triton given by VG_GATEWAY_TRITON_URL)."""
    import uvicorn

    uvicorn.run("tracker_service.app:create_app", factory=True, host=host, port=port,
                access_log=False)


@serve_app.command("control-plane")
def serve_control_plane(
    port: Annotated[Optional[int], typer.Option(help="HTTP port (default VG_CONTROL_PORT).")
                    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default VG_HOST).")] = None,
) -> None:
    """Run the control plane's HTTP API alone (registry, releases, routing for gateways)."""
    import uvicorn

    settings = Settings()
    uvicorn.run("control_plane.api:create_app", factory=True, host=host or settings.host,
                port=port or settings.control_port, access_log=False,
                timeout_keep_alive=CONTROL_PLANE_KEEP_ALIVE_S)


@app.command("token")
def token_cmd(
    name: Annotated[str, typer.Argument(help="Who the token is for (shown in the audit log).")],
    role: Annotated[list[str], typer.Option(
        help="Role: release, sre, gateway or viewer (repeat for several).")],
) -> None:
    """Create an API token for the control plane (printed once; only its digest is kept)."""
    from control_plane.auth import TokenStore

    settings = Settings()
    try:
        token = TokenStore(settings.tokens_file).create(name, role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"token for {name} ({', '.join(sorted(role))}), kept as a digest in "
                  f"{settings.tokens_file}:\n{token}")


@perf_app.command("triton")
def perf_triton(
    concurrency: Annotated[str, typer.Option(help="Range start:end:step.")] = "1:4:1",
    shape: Annotated[Optional[str], typer.Option(
        help="Input H,W,C for `images`; default: bus.jpg letterboxed (640,480,3).")] = None,
    measurement_ms: Annotated[int, typer.Option(help="Window per measurement.")] = 5000,
    shared_memory: Annotated[str, typer.Option(help="none or system.")] = "none",
    out: Annotated[Path, typer.Option(help="CSV written by perf_analyzer.")] = Path(
        "bench/results/perf_triton.csv"),
) -> None:
    """Run perf_analyzer against the served model over a concurrency range; print a table."""
    from control_plane import perf

    settings = Settings()
    rows = perf.run_perf_analyzer(settings, concurrency=concurrency, shape=shape,
                                  measurement_ms=measurement_ms, shared_memory=shared_memory,
                                  csv_path=out, console=console)
    perf.print_table(rows, console)
    console.print(f"CSV: {out}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(ctx: typer.Context) -> None:
    """Run the test suite (pytest); extra arguments go to pytest."""
    settings = Settings()
    code = subprocess.call([sys.executable, "-m", "pytest", *ctx.args], cwd=settings.root)
    raise typer.Exit(code)


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


def main() -> None:
    _log_to_file(Settings())
    app()
