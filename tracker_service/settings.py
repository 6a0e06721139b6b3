"""Gateway settings: one object, read from `VG_GATEWAY_*` environment variables.

Every limit the gateway enforces is here, with its default; nothing else reads os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VG_GATEWAY_{name}", default)


@dataclass(frozen=True)
class GatewaySettings:
    triton_grpc_url: str = field(default_factory=lambda: _env("TRITON_URL", "127.0.0.1:8001"))
    model_name: str = field(default_factory=lambda: _env("MODEL_NAME", "detector"))
    # Request limits.
    max_body_bytes: int = field(default_factory=lambda: int(_env("MAX_BODY_BYTES", str(20 << 20))))
    max_pixels: int = field(default_factory=lambda: int(_env("MAX_PIXELS", str(50_000_000))))
    # Admission control: requests admitted at once (decoding, waiting or in Triton); one more
    # gets 429. Triton calls in flight are bounded separately so batches can form without
    # flooding Triton's queue.
    max_pending: int = field(default_factory=lambda: int(_env("MAX_PENDING", "32")))
    max_triton_in_flight: int = field(
        default_factory=lambda: int(_env("MAX_TRITON_IN_FLIGHT", "8")))
    triton_timeout_s: float = field(default_factory=lambda: float(_env("TRITON_TIMEOUT_S", "10")))
    retry_after_s: int = field(default_factory=lambda: int(_env("RETRY_AFTER_S", "2")))
    # Input size fed to the model (longest side); the letterbox pads to the stride.
    imgsz: int = field(default_factory=lambda: int(_env("IMGSZ", "640")))
    # Pass images to Triton through system shared memory: only where gateway and Triton share
    # a host (`visionguard up` turns it on); one region per Triton call in flight.
    shared_memory: bool = field(default_factory=lambda: _env("SHARED_MEMORY", "0") == "1")
    # Tracking per stream.
    tracker: str = field(default_factory=lambda: _env("TRACKER", "byte-oru"))
    # Appearance embeddings for trackers that use them (deepsort): "histogram" needs no weights,
    # "triton" asks the `reid` model served by Triton.
    embedder: str = field(default_factory=lambda: _env("EMBEDDER", "histogram"))
    reid_model_name: str = field(default_factory=lambda: _env("REID_MODEL_NAME", "reid"))
    stream_ttl_s: float = field(default_factory=lambda: float(_env("STREAM_TTL_S", "300")))
    max_streams: int = field(default_factory=lambda: int(_env("MAX_STREAMS", "1000")))
    max_stream_id_length: int = field(
        default_factory=lambda: int(_env("MAX_STREAM_ID_LENGTH", "64")))
    # Tracing (tracker_service/telemetry.py). The OTLP exporter is on when the standard OTel
    # endpoint variable is set (the SDK reads the rest of OTEL_EXPORTER_OTLP_* itself);
    # TRACES_FILE also writes spans as JSON lines. Neither: spans still carry trace ids into
    # logs and Triton, and nothing is exported.
    otlp_traces_endpoint: str = field(default_factory=lambda: os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")))
    otlp_protocol: str = field(default_factory=lambda: os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")))
    traces_file: str = field(default_factory=lambda: _env("TRACES_FILE", ""))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    # The control plane: routing (which model version serves, canary share) and drift features
    # go through it. Empty URL: a standalone gateway, Triton's default version serves.
    control_url: str = field(default_factory=lambda: _env("CONTROL_URL", ""))
    control_token: str = field(default_factory=lambda: _env("CONTROL_TOKEN", ""))
    routing_poll_s: float = field(default_factory=lambda: float(_env("ROUTING_POLL_S", "1.0")))
    # Drift features (tracker_service/drift_sampler.py): the share of requests sampled, samples
    # per POST, seconds between posts, and the buffer bound (samples over it are dropped and
    # counted; a request never waits for the control plane).
    drift_sample_rate: float = field(
        default_factory=lambda: float(_env("DRIFT_SAMPLE_RATE", "0.25")))
    drift_batch_size: int = field(default_factory=lambda: int(_env("DRIFT_BATCH_SIZE", "64")))
    drift_flush_s: float = field(default_factory=lambda: float(_env("DRIFT_FLUSH_S", "5")))
    drift_max_buffer: int = field(default_factory=lambda: int(_env("DRIFT_MAX_BUFFER", "2048")))
    drift_post_timeout_s: float = field(
        default_factory=lambda: float(_env("DRIFT_POST_TIMEOUT_S", "2")))
