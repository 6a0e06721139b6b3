"""Run the real Triton server bundled in `nvidia-pytriton` (python backend only, CPU).

The wheel ships `tritonserver`, the python backend and one backend stub per Python version; we
assemble a backend directory for this interpreter under the runtime folder rather than write
into site-packages. The stub finds numpy and onnxruntime through the environment it inherits, so
Triton starts with this virtual environment's PATH and VIRTUAL_ENV.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from control_plane.stack.supervisor import wait_http_ok
from control_plane.settings import Settings

if TYPE_CHECKING:
    from control_plane.stack.supervisor import Child, Supervisor


class TritonNotFound(RuntimeError):
    pass


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise TritonNotFound("nvidia-pytriton is not installed (extra `triton`)") from exc
    return Path(pytriton.__file__).resolve().parent


def prepare_backends(runtime_dir: Path) -> Path:
    """Backend directory with the python backend and the stub for this Python version."""
    src = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotFound(f"no python backend stub for Python {version} in {stub.parent}")
    backends = runtime_dir / "triton" / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        link = python_backend / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src / "backends" / "python" / name)
    target = python_backend / "triton_python_backend_stub"
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return backends


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    venv = Path(sys.prefix)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    libs = [str(pytriton_dir().parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")  # this interpreter's libpython, for the stub
    if libdir:
        libs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env.pop("PYTHONPATH", None)
    # The python backend stub imports model.py from the version folder and writes its
    # __pycache__ there: it does not honour PYTHONDONTWRITEBYTECODE (traced with strace, the
    # variable set in the stub's environment). Harmless: folders are removed whole.
    return env


def check_ports_free(host: str, ports: list[int]) -> None:
    """Fail early if a port is taken: otherwise a stale server would answer our readiness probe."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                raise RuntimeError(f"port {host}:{port} is already in use (another Triton or "
                                   "gateway still running?)") from None


def served_models(settings: Settings) -> list[str]:
    """The models Triton loads at start: the detector, and the reid model (DeepSORT's
    embeddings) when the repository has a version of it. Which versions of each is the model's
    own `version_policy` in config.pbtxt, which promotion keeps equal to what serves (the
    routing's champion, challenger and previous): a restarted Triton loads the same ones."""
    from export import triton_repo

    models = [settings.model_name]
    if triton_repo.versions(settings.model_repository / settings.reid_model_name):
        models.append(settings.reid_model_name)
    return models


def shm_prefix(settings: Settings) -> str:
    """The name prefix of the python backend's shared-memory regions (/dev/shm), one per
    supervising process and port. A stopped Triton (or its stub, when only Triton is killed)
    removes its regions; a process group killed outright leaves them, 16 MiB per model
    instance: `remove_shm_regions` removes them then, and only this Triton's."""
    return f"vg_triton_{os.getpid()}_{settings.triton_grpc_port}_"


def remove_shm_regions(prefix: str, shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Unlink the regions a dead Triton left (call only once its process group is gone)."""
    removed = []
    for path in shm_dir.glob(f"{prefix}*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


def start(supervisor: Supervisor, settings: Settings,
          models: list[str] | Callable[[], list[str]] | None = None, *,
          env: dict[str, str] | None = None, name: str = "triton") -> Child:
    """Triton under `supervisor`, its python backend's shared-memory regions named for it
    (`shm_prefix`) and removed when it exits, is stopped or is killed: with Triton's default
    names a killed Triton's regions stay in /dev/shm, 16 MiB each. `models`: what to load
    (default the detector), or a callable asked again at each (re)start; `env` defaults to
    `server_environment()`."""
    prefix = shm_prefix(settings)

    def argv() -> list[str]:
        return command(settings, models() if callable(models) else models, prefix)

    return supervisor.start(name, argv, server_environment() if env is None else env,
                            on_exit=lambda _child: remove_shm_regions(prefix))


def command(settings: Settings, models: list[str] | None = None,
            shm_region_prefix: str | None = None) -> list[str]:
    backends = prepare_backends(settings.runtime_dir)
    binary = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    cmd = [
        str(binary),
        f"--model-repository={settings.model_repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends}",
        f"--http-port={settings.triton_http_port}",
        f"--grpc-port={settings.triton_grpc_port}",
        f"--metrics-port={settings.triton_metrics_port}",
        f"--http-address={settings.host}",
        f"--grpc-address={settings.host}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        # 16 MiB per stub keeps a 640x640 batch of 8 from growing shared memory mid-request.
        "--backend-config=python,shm-default-byte-size=16777216",
        *([f"--backend-config=python,shm-region-prefix-name={shm_region_prefix}"]
          if shm_region_prefix else []),
        "--log-info=false",
        "--exit-on-error=false",
        f"--exit-timeout-secs={settings.triton_exit_timeout_s}",
        "--strict-readiness=false",
    ]
    for model in models if models is not None else [settings.model_name]:
        cmd.append(f"--load-model={model}")
    return cmd + trace_args(settings)


def trace_args(settings: Settings) -> list[str]:
    """Triton's OpenTelemetry trace mode: spans of each traced inference (InferRequest, the
    model, compute) go over OTLP/HTTP to `settings.traces_url`. A request carrying a W3C
    `traceparent` (the gateway sends one as gRPC metadata) joins the caller's trace."""
    if settings.triton_trace_rate <= 0:
        return []
    return [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=rate={settings.triton_trace_rate}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=count=-1",
        f"--trace-config=opentelemetry,url={settings.traces_url}",
        "--trace-config=opentelemetry,resource=service.name=triton",
    ]


def wait_ready(settings: Settings, proc: subprocess.Popen | None, timeout_s: float,
               model: str | None = None) -> None:
    """Wait until the server (and `model`, if given) is ready; raise if it exits or times out."""
    url = f"{settings.triton_http_url}/v2/health/ready"
    if model:
        url = f"{settings.triton_http_url}/v2/models/{model}/ready"
    wait_http_ok(url, proc, timeout_s, "tritonserver")
