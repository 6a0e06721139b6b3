"""Control-plane settings: one object, read from `VG_*` environment variables.

Nothing else in control_plane reads os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    root: Path = ROOT
    model_repository: Path = field(
        default_factory=lambda: Path(_env("VG_MODEL_REPOSITORY", str(ROOT / "model_repository"))))
    runtime_dir: Path = field(
        default_factory=lambda: Path(_env("VG_RUNTIME_DIR", str(ROOT / ".visionguard"))))
    model_name: str = field(default_factory=lambda: _env("VG_MODEL_NAME", "detector"))
    reid_model_name: str = field(default_factory=lambda: _env("VG_REID_MODEL_NAME", "reid"))
    host: str = field(default_factory=lambda: _env("VG_HOST", "127.0.0.1"))
    triton_http_port: int = field(default_factory=lambda: int(_env("VG_TRITON_HTTP_PORT", "8000")))
    triton_grpc_port: int = field(default_factory=lambda: int(_env("VG_TRITON_GRPC_PORT", "8001")))
    triton_metrics_port: int = field(
        default_factory=lambda: int(_env("VG_TRITON_METRICS_PORT", "8002")))
    gateway_port: int = field(default_factory=lambda: int(_env("VG_GATEWAY_PORT", "8080")))
    # Default weights for `up` when the repository has no version: "bootstrap" is the detector
    # trained offline on generated shapes (trained on first use, then reused); a `.yaml`
    # architecture gives a seeded model whose detections mean nothing (a warning says so).
    default_weights: str = field(default_factory=lambda: _env("VG_WEIGHTS", "bootstrap"))
    imgsz: int = field(default_factory=lambda: int(_env("VG_IMGSZ", "640")))
    startup_timeout_s: float = field(
        default_factory=lambda: float(_env("VG_STARTUP_TIMEOUT_S", "180")))

    # MLflow tracking and registry; empty: SQLite under runtime_dir (see training.mlflow_store).
    mlflow_tracking_uri: str = field(
        default_factory=lambda: _env("VG_MLFLOW_TRACKING_URI", ""))
    # `up` also starts the MLflow UI on this port over the same store (0: not started).
    mlflow_ui_port: int = field(default_factory=lambda: int(_env("VG_MLFLOW_UI_PORT", "5000")))

    # The control plane's HTTP API (Litestar).
    control_port: int = field(default_factory=lambda: int(_env("VG_CONTROL_PORT", "8090")))
    # Where gateways and the CLI find the control plane; empty: http://host:control_port.
    control_url_override: str = field(default_factory=lambda: _env("VG_CONTROL_URL", ""))
    # API tokens: a JSON file of {"tokens": [{"name", "sha256", "roles"}]} (see auth.py);
    # empty: <runtime_dir>/tokens.json, which `visionguard tokens create` writes.
    tokens_file_override: str = field(default_factory=lambda: _env("VG_TOKENS_FILE", ""))
    # The token the CLI and gateways present to the control plane.
    token: str = field(default_factory=lambda: _env("VG_TOKEN", ""))

    @property
    def control_url(self) -> str:
        return self.control_url_override or f"http://{self.host}:{self.control_port}"

    @property
    def tokens_file(self) -> Path:
        return Path(self.tokens_file_override or self.runtime_dir / "tokens.json")

    @property
    def bootstrap_dir(self) -> Path:
        return self.runtime_dir / "bootstrap"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.host}:{self.triton_grpc_port}"

    @property
    def triton_http_url(self) -> str:
        return f"http://{self.host}:{self.triton_http_port}"
