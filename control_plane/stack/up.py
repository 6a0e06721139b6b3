"""`visionguard up`: the embedded stack on one machine.

Triton (the binary bundled in nvidia-pytriton), the control plane, the gateway and the MLflow UI
as supervised local processes over one runtime directory. The order serves a first run: the
control plane, the MLflow UI and the gateway start first and answer within about a minute; then
the model is made ready (on a repository with no version, the registered champion is written
into Triton's repository; on a machine with none, the bootstrap detector is trained and
registered first, which takes minutes); then Triton starts. Meanwhile the gateway answers
/healthz, and /readyz says what the stack is waiting for, read from `<runtime_dir>/status.json`
(`StatusFile`: the phase, a reason, the training's progress, each child's restarts).

Once up, a child that exits is restarted alone with backoff (supervisor.py); the stack stops on
Ctrl-C, SIGTERM, or when one child fails too often. `up`'s own events (restarts, training
epochs) are JSON lines in `<runtime_dir>/logs/up.log`, which the log index reads, and plain lines
on the console.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
from pathlib import Path

from rich.console import Console

from control_plane.settings import Settings
from control_plane.stack.supervisor import RestartPolicy, StatusFile, Supervisor

SEEDED_WARNING = ("[yellow]warning:[/] serving a seeded model built from {w}: its weights are "
                  "random and its detections mean nothing. Pass --weights a checkpoint (for "
                  "example yolov8n.pt on a connected machine) for real detections.")


def restart_policy(settings: Settings) -> RestartPolicy:
    """A child that exits is restarted after 1, 2, 4 ... 30 s (by default); the 6th exit within
    5 minutes stops the stack. VG_RESTART_* change it."""
    return RestartPolicy(backoff_s=settings.restart_backoff_s,
                         max_backoff_s=settings.restart_max_backoff_s,
                         max_restarts=settings.restart_max, window_s=settings.restart_window_s)


def ensure_model(settings: Settings, weights: str | None, console: Console,
                 status: StatusFile | None = None) -> None:
    """Export a model into the repository if it has no version yet (or --weights is given)."""
    from export import triton_repo

    model_dir = settings.model_repository / settings.model_name
    if triton_repo.versions(model_dir) and weights is None:
        # The version policy's list is what Triton loads; an aborted canary's folder stays on
        # disk outside it, so the folders alone would name versions that do not serve.
        config = model_dir / "config.pbtxt"
        served = triton_repo.served_versions(model_dir) if config.is_file() else None
        if served is None:  # the policy is `all` (or no config.pbtxt yet)
            served = triton_repo.versions(model_dir)
        console.print(f"serving versions {served} from {model_dir} (its config.pbtxt's version "
                      f"policy)")
        return
    if weights is None:
        # The registry's champion, as its own version number (MLflow N = Triton N); the
        # bootstrap detector is trained and registered first on a machine with none.
        from control_plane.releases.promoter import serve_champion

        if settings.default_weights == "bootstrap":
            _phase(status, "model", "looking for the registered champion in MLflow")
            champion = serve_champion(settings)
            if champion is None:
                bootstrap_checkpoint(settings, console, status)
                _phase(status, "model", "writing the bootstrap detector into Triton's "
                                        "repository")
                champion = serve_champion(settings)
            if champion is not None:
                console.print(f"serving the registered champion, {champion.name} version "
                              f"{champion.version} (mAP50-95 {champion.map or 0:.3f} on "
                              f"{champion.eval_dataset or 'its evaluation set'})")
                return
    weights = weights or settings.default_weights
    if weights == "bootstrap":
        weights = str(bootstrap_checkpoint(settings, console, status))
    elif weights.endswith((".yaml", ".yml")):
        console.print(SEEDED_WARNING.format(w=weights))
    from export.pipeline import export_to_repository

    _phase(status, "model", f"exporting {weights} to ONNX")
    console.print(f"exporting {weights} to ONNX and writing a Triton version...")
    result = export_to_repository(weights, settings.model_repository, name=settings.model_name)
    console.print(f"exported {weights} as {settings.model_name} version {result.version}")


def bootstrap_checkpoint(settings: Settings, console: Console,
                         status: StatusFile | None = None) -> Path:
    """The offline-trained detector's best.pt: trained (and registered in MLflow) on first use,
    on the cores the machine leaves idle (nothing of the stack serves yet), one log line per
    epoch and the progress in the status file."""
    best = settings.bootstrap_dir / "train" / "weights" / "best.pt"
    if best.exists():
        console.print(f"using the bootstrap detector {best}")
        return best
    from control_plane.mlflow_store import store_for
    from control_plane.training.train import TrainingProgress, train_bootstrap

    console.print("[yellow]no model yet:[/] training the bootstrap detector on generated shapes "
                  "(offline, CPU; up to about 10 minutes on 2 cores: each epoch is logged with the "
                  "time left). `--weights yolov8n.pt` serves the pretrained COCO model instead "
                  "on a machine that can download it.")

    def on_progress(p: TrainingProgress) -> None:
        _phase(status, "training", f"training the bootstrap detector: {p.describe()}",
               progress={"stage": p.stage, "epoch": p.epoch, "epochs": p.epochs,
                         "seconds_left": round(p.seconds_left, 1)
                         if p.seconds_left is not None else None, "threads": p.threads})

    size = {arg: value for arg, value in (("epochs", settings.bootstrap_epochs),
                                          ("n_train", settings.bootstrap_train_images),
                                          ("n_val", settings.bootstrap_val_images),
                                          ("val_every", settings.bootstrap_val_every)) if value}
    result = train_bootstrap(settings.bootstrap_dir, tracking_uri=store_for(settings).tracking_uri,
                             registered_name=settings.model_name, progress=on_progress,
                             threads="idle", settings=settings, **size)
    console.print(f"[green]trained[/] the bootstrap detector in {result.train_s / 60:.1f} min: "
                  f"mAP50 {result.metrics['val_mAP50']:.3f}, mAP50-95 "
                  f"{result.metrics['val_mAP50-95']:.3f} on {result.eval_dataset}; registered "
                  f"as {result.registered_name} version {result.version}")
    return result.best_pt


def _phase(status: StatusFile | None, phase: str, reason: str, **fields) -> None:
    if status is not None:
        status.update(phase=phase, ready=False, reason=reason, **fields)


def _interrupt(signum, frame) -> None:
    # Once: a second Ctrl-C must not cut the shutdown of the children short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def stack_environment(settings: Settings) -> dict[str, str]:
    """The environment of every child: the state this `up` resolved (runtime directory, live
    repository) is passed on, so no child resolves another one from its own defaults."""
    return {**os.environ, "VG_RUNTIME_DIR": str(settings.runtime_dir),
            "VG_MODEL_REPOSITORY": str(settings.model_repository)}


def gateway_env(settings: Settings, token: str = "", internal_token: str = "") -> dict[str, str]:
    # Same host as Triton: images go through shared memory, not the gRPC message. The
    # gateway follows the control plane's routing with a token of the `gateway` role.
    # Spans go to the control plane's OTLP receiver unless the user's OTEL_* name a collector.
    tracing = {} if settings.user_traces_url else {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": settings.traces_url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    return {"VG_GATEWAY_SHARED_MEMORY": "1", "OTEL_SERVICE_NAME": "gateway",
            **stack_environment(settings),
            **tracing,
            "VG_GATEWAY_TRITON_URL": settings.triton_grpc_url,
            "VG_GATEWAY_MODEL_NAME": settings.model_name,
            "VG_GATEWAY_CONTROL_URL": settings.control_url,
            "VG_GATEWAY_CONTROL_TOKEN": token,
            # The gateway's internal routes (per-version samples for the canary analysis)
            # answer only the control plane, which presents this as VG_GATEWAY_TOKEN.
            "VG_GATEWAY_INTERNAL_TOKEN": internal_token,
            # /readyz reads why the stack is not ready yet (training, Triton restarting) here.
            "VG_GATEWAY_STATUS_FILE": str(settings.status_file),
            # Where sampled frames go when VG_GATEWAY_FRAMES_SAMPLING=1 (off by default).
            "VG_GATEWAY_FRAMES_DIR": str(settings.frames_dir)}


# Idle keep-alive connections to the control plane stay open this long. uvicorn's default
# (5 s) equals the OTLP exporters' batch interval, so Triton's exporter kept sending on
# connections uvicorn was closing ("Connection reset by peer"), and Triton 2.48's
# opentelemetry-cpp can crash on a failed export (triton-inference-server/server#6202).
CONTROL_PLANE_KEEP_ALIVE_S = 600


def control_plane_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "control_plane.api.app:create_app", "--factory",
            "--host", settings.host, "--port", str(settings.control_port),
            "--timeout-keep-alive", str(CONTROL_PLANE_KEEP_ALIVE_S),
            "--no-access-log", "--log-level", "warning"]


def mlflow_ui_command(settings: Settings) -> list[str]:
    from control_plane.mlflow_store import store_for

    store = store_for(settings)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.tracking_uri,
            "--default-artifact-root", store.artifact_location or "./mlartifacts",
            "--host", settings.host, "--port", str(settings.mlflow_ui_port), "--workers", "1"]


def local_tokens(settings: Settings) -> dict[str, str]:
    """Tokens for this `up`: the gateways' (role gateway) and the operator's (release + sre),
    made anew each start; the token file keeps only their digests. `internal`: the gateway's
    own token for its internal routes, held only by the gateway and the control plane."""
    import secrets

    from control_plane.auth import TokenStore

    store = TokenStore(settings.tokens_file)
    return {"gateway": store.create("local-gateway", ["gateway"]),
            "operator": store.create("local-operator", ["release", "sre"]),
            "internal": secrets.token_urlsafe(32)}


def local_schedule(settings: Settings):
    """The scheduled jobs (control_plane/schedules) that `up` runs itself once the stack is up,
    as `visionguard` child processes with a token of the roles they need; None when
    VG_SCHEDULE_ENABLED is off. Built before anything starts: a bad cron expression stops `up`
    at once (InvalidSchedule)."""
    from control_plane.auth import TokenStore
    from control_plane.schedules.jobs import jobs
    from control_plane.schedules.runner import CliLauncher, Scheduler, validate

    if not settings.schedule_enabled:
        return None
    scheduled = jobs(settings)
    validate(scheduled)
    roles = sorted({job.role for job in scheduled if job.role})
    token = TokenStore(settings.tokens_file).create("local-schedule", roles)
    launcher = CliLauncher({**stack_environment(settings), "VG_CONTROL_URL": settings.control_url,
                            "VG_TOKEN": token}, settings.runtime_dir / "logs")
    return Scheduler(scheduled, launcher, on_stop=launcher.terminate)


def gateway_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "tracker_service.app:create_app", "--factory",
            "--host", settings.host, "--port", str(settings.gateway_port),
            "--no-access-log", "--log-level", "warning"]


def prepare_store(settings: Settings) -> None:
    """Create a local MLflow store's tables once, here, before the control plane, the MLflow UI
    and the training open it at the same time (each would create them on an empty database)."""
    from control_plane.mlflow_store import mlflow_client, store_for

    store = store_for(settings)
    if store.tracking_uri.startswith("sqlite:"):
        mlflow_client(store).search_registered_models(max_results=1)


def start_services(settings: Settings, supervisor: Supervisor,
                   tokens: dict[str, str] | None = None) -> None:
    """Check every port is free, then start the control plane, the MLflow UI and the gateway
    (which answers /healthz at once and /readyz 200 once Triton serves the detector); wait
    until each answers. Raise RuntimeError on failure."""
    from control_plane.stack import triton_server
    from control_plane.stack.supervisor import tail, wait_http_ok

    triton_server.check_ports_free(settings.host, [
        settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port,
        settings.gateway_port, settings.control_port,
        *([settings.mlflow_ui_port] if settings.mlflow_ui_port else [])])
    tokens = tokens or local_tokens(settings)
    prepare_store(settings)
    services = [
        ("control-plane", control_plane_command(settings),
         {**stack_environment(settings), "VG_GATEWAY_TOKEN": tokens.get("internal", "")},
         f"{settings.control_url}/healthz"),
        # The UI only: no job runner (seven huey worker processes), no telemetry.
        *([("mlflow", mlflow_ui_command(settings),
            {**stack_environment(settings), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             "MLFLOW_DISABLE_TELEMETRY": "true"},
            f"http://{settings.host}:{settings.mlflow_ui_port}/health")]
          if settings.mlflow_ui_port else []),
        ("gateway", gateway_command(settings),
         gateway_env(settings, tokens["gateway"], tokens.get("internal", "")),
         f"http://{settings.host}:{settings.gateway_port}/healthz"),
    ]
    cleanup = {"gateway": lambda child: release_gateway_regions(settings, child.proc.pid)}
    # All at once: their start-up is mostly imports, which overlap with each other's I/O.
    children = [(supervisor.start(name, cmd, env, on_exit=cleanup.get(name)), url)
                for name, cmd, env, url in services]
    for child, url in children:
        try:
            wait_http_ok(url, child.proc, settings.startup_timeout_s, child.name)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- {child.log_path} ---\n{tail(child.log_path)}"
                               ) from None


def release_gateway_regions(settings: Settings, pid: int,
                            shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """What a gateway killed outright leaves behind: its image regions in shared memory
    (`vg_<pid>_*`, named by tracker_service.triton_client.ShmPool) stay registered in Triton,
    which keeps them mapped. Unregister them (and unlink any file Python's resource tracker
    has not already unlinked), so that each restart of a gateway leaks nothing."""
    import httpx

    prefix = f"vg_{pid}_"
    names = {p.name for p in shm_dir.glob(f"{prefix}*")}
    try:
        regions = httpx.get(f"{settings.triton_http_url}/v2/systemsharedmemory/status",
                            timeout=2).json()
        names.update(r["name"] for r in regions if r.get("name", "").startswith(prefix))
        for name in sorted(names):
            httpx.post(f"{settings.triton_http_url}/v2/systemsharedmemory/region/{name}"
                       "/unregister", timeout=2)
    except (httpx.HTTPError, ValueError, TypeError):
        pass  # Triton is away: a restarted Triton forgot the registrations anyway
    for name in names:
        (shm_dir / name).unlink(missing_ok=True)
    return sorted(names)


def start_triton(settings: Settings, supervisor: Supervisor) -> None:
    """Start Triton with the models of the repository and wait until the detector is ready,
    then until the gateway is. A restart (by the supervisor) asks `served_models` again, and
    each model's version policy in config.pbtxt names the versions that served."""
    from control_plane.stack import triton_server
    from control_plane.stack.supervisor import tail, wait_http_ok

    triton = triton_server.start(supervisor, settings,
                                 lambda: triton_server.served_models(settings))
    try:
        triton_server.wait_ready(settings, triton.proc, settings.startup_timeout_s,
                                 model=settings.model_name)
        wait_http_ok(f"http://{settings.host}:{settings.gateway_port}/readyz", None,
                     settings.startup_timeout_s, "gateway")
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n--- {triton.log_path} ---\n{tail(triton.log_path)}"
                           ) from None


def start_stack(settings: Settings, supervisor: Supervisor,
                tokens: dict[str, str] | None = None) -> None:
    """Start the control plane, the MLflow UI, the gateway and Triton (the repository must have
    a version), waiting for each: raise on failure."""
    start_services(settings, supervisor, tokens)
    start_triton(settings, supervisor)


class _ConsoleHandler(logging.Handler):
    """Log records as plain lines on `up`'s console (rich keeps them apart from its own
    output, from any thread)."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False)
        except Exception:  # a log line must never break `up`
            self.handleError(record)


def _log_events(settings: Settings, console: Console) -> list[tuple[logging.Logger,
                                                                     logging.Handler]]:
    """`up`'s own events (logger `visionguard`: the supervisor's restarts, the training's epochs)
    as JSON lines in logs/up.log, read by the log index, and as plain lines on the console."""
    from tracker_service.telemetry import JsonFormatter

    (settings.runtime_dir / "logs").mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(settings.runtime_dir / "logs" / "up.log")
    to_file.setFormatter(JsonFormatter("up"))
    to_console = _ConsoleHandler(console)
    to_console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("visionguard")
    logger.setLevel(logging.INFO)
    added = [(logger, to_file), (logger, to_console)]
    for target, handler in added:
        target.addHandler(handler)
    return added


def _print_urls(settings: Settings, console: Console) -> None:
    gw = f"http://{settings.host}:{settings.gateway_port}"
    console.print(f"    control {settings.control_url}  (OpenAPI {settings.control_url}/schema)")
    if settings.mlflow_ui_port:
        console.print(f"    mlflow  http://{settings.host}:{settings.mlflow_ui_port}")
    console.print(f"    gateway {gw}  (/healthz answers; /readyz says what it waits for)")


def run_up(settings: Settings, weights: str | None, console: Console) -> int:
    """Start the control plane, the MLflow UI and the gateway, make the model ready (training
    the bootstrap detector on a first run), then Triton; supervise them until Ctrl-C or SIGTERM
    (or a child that keeps failing); stop them all."""
    status = StatusFile(settings.status_file)
    # A child that fails for good interrupts the main thread wherever it is (waiting, or
    # training the bootstrap detector for minutes), as Ctrl-C would; `_run` tells them apart.
    supervisor = Supervisor(settings.runtime_dir / "logs", restart_policy(settings), status,
                            on_give_up=lambda _reason: _thread.interrupt_main())
    handlers = _log_events(settings, console)
    # SIGTERM (and SIGINT even where a parent shell ignores it) ends `up` like Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        return _run(settings, weights, console, status, supervisor)
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _run(settings: Settings, weights: str | None, console: Console, status: StatusFile,
         supervisor: Supervisor) -> int:
    schedule = local_schedule(settings)
    try:
        tokens = local_tokens(settings)
        _phase(status, "starting", "starting the control plane, the MLflow UI and the gateway")
        console.print("starting the control plane, the MLflow UI and the gateway...")
        start_services(settings, supervisor, tokens)
        supervisor.watch()  # from here a child that exits is restarted
        console.print("[green]answering[/] (the detector is not ready yet)")
        _print_urls(settings, console)
        ensure_model(settings, weights, console, status)
        _phase(status, "triton", "starting Triton: loading the detector")
        console.print("starting Triton...")
        start_triton(settings, supervisor)
        status.update(phase="up", ready=True, reason="", progress=None)
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
        console.print(f"    logs    {supervisor.log_dir}  state {status.path}")
        console.print("    a process that exits is restarted; Ctrl-C stops everything")
        if schedule is not None:
            schedule.start()
    except RuntimeError as exc:
        _phase(status, "failed", f"failed to start: {str(exc).splitlines()[0]}")
        supervisor.stop()
        console.print(f"[red]failed to start:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        if supervisor.failure:
            _phase(status, "failed", supervisor.failure)
            supervisor.stop()
            console.print(f"[red]failed to start:[/] {supervisor.failure}")
            return 1
        _phase(status, "stopping", "the stack is stopping")
        supervisor.stop()
        return 130
    try:
        supervisor.wait()
    except KeyboardInterrupt:
        pass
    if supervisor.failure:
        console.print(f"[red]stopping the stack:[/] {supervisor.failure}")
        _phase(status, "failed", supervisor.failure)
        code = 1
    else:
        console.print("stopping...")
        _phase(status, "stopping", "the stack is stopping")
        code = 0
    if schedule is not None:
        schedule.stop()
    supervisor.stop()
    if code == 0:
        _phase(status, "stopped", "the stack was stopped")
    console.print("stopped")
    return code
