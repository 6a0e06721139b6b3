"""Gateway settings: one object, read from `VG_GATEWAY_*` environment variables.

Every limit the gateway enforces is here, with its default; nothing else reads os.environ.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracker_service.config import env


@dataclass(frozen=True)
class GatewaySettings:
    triton_grpc_url: str = env("VG_GATEWAY_TRITON_URL", "127.0.0.1:8001")
    model_name: str = env("VG_GATEWAY_MODEL_NAME", "detector")
    # Request limits.
    max_body_bytes: int = env("VG_GATEWAY_MAX_BODY_BYTES", 20 << 20)
    max_pixels: int = env("VG_GATEWAY_MAX_PIXELS", 50_000_000)
    # Admission control: requests admitted at once (decoding, waiting or in Triton); one more
    # gets 429. Triton calls in flight are bounded separately so batches can form without
    # flooding Triton's queue.
    max_pending: int = env("VG_GATEWAY_MAX_PENDING", 32)
    max_triton_in_flight: int = env("VG_GATEWAY_MAX_TRITON_IN_FLIGHT", 8)
    # Decode and letterbox on the event loop itself, skipping the worker-thread hop (two
    # thread wake-ups and anyio's hand-over: the largest cost around a small image after the
    # decode in bench/serving_overhead.py's profile), while the gateway holds at most this many
    # client requests (this one included) and the image has at most INLINE_PREPARE_MAX_PIXELS
    # (header): the loop is then blocked for one small decode (bus.jpg: ~2 ms reduced, ~7 ms
    # in full) when nothing else is held. Busier, or larger, they run in a worker thread so the
    # loop keeps answering others. 0: always in a worker thread.
    inline_prepare_max_pending: int = env("VG_GATEWAY_INLINE_PREPARE_MAX_PENDING", 1)
    inline_prepare_max_pixels: int = env("VG_GATEWAY_INLINE_PREPARE_MAX_PIXELS", 1_000_000)
    triton_timeout_s: float = env("VG_GATEWAY_TRITON_TIMEOUT_S", 10.0)
    retry_after_s: int = env("VG_GATEWAY_RETRY_AFTER_S", 2)
    # Input size fed to the model (longest side); the letterbox pads to the stride.
    imgsz: int = env("VG_GATEWAY_IMGSZ", 640)
    # Decode a JPEG at 1/2, 1/4 or 1/8 scale when its longer side is at least that many times
    # the model's input (tracker_service/decode.py): bus.jpg at 256 px decodes in 2.1 ms, not
    # 7.1. On by default: on held-out shapes images (bench/reduced_decode_parity.py, bootstrap
    # detector, imgsz 256) mAP50-95 moved -0.6 points at 1/2 and +0.5 at 1/4, within noise; boxes
    # agree with Ultralytics' predictor to the tolerance in tests/test_parity.py, not exactly.
    # Off: pixels exactly as the predictor decodes them.
    reduced_decode: bool = env("VG_GATEWAY_REDUCED_DECODE", True)
    # Decode a JPEG in full through simplejpeg: the same pixels as OpenCV (the predictor's
    # decoder; tests/test_decode_full.py), bus.jpg in 2.8 ms instead of 6.5. Off: OpenCV.
    simplejpeg_full_decode: bool = env("VG_GATEWAY_SIMPLEJPEG_FULL_DECODE", True)
    # Pass images to Triton through system shared memory: only where gateway and Triton share
    # a host (`visionguard up` turns it on); one region per Triton call in flight.
    shared_memory: bool = env("VG_GATEWAY_SHARED_MEMORY", False)
    # Tracking per stream.
    tracker: str = env("VG_GATEWAY_TRACKER", "byte-fps")
    # Appearance embeddings for trackers that use them (deepsort): "histogram" needs no weights,
    # "triton" asks the `reid` model served by Triton.
    embedder: str = env("VG_GATEWAY_EMBEDDER", "histogram")
    reid_model_name: str = env("VG_GATEWAY_REID_MODEL_NAME", "reid")
    stream_ttl_s: float = env("VG_GATEWAY_STREAM_TTL_S", 300.0)
    max_streams: int = env("VG_GATEWAY_MAX_STREAMS", 1000)
    max_stream_id_length: int = env("VG_GATEWAY_MAX_STREAM_ID_LENGTH", 64)
    # Tracing (tracker_service/telemetry.py). The OTLP exporter is on when the standard OTel
    # endpoint variable is set (the SDK reads the rest of OTEL_EXPORTER_OTLP_* itself);
    # TRACES_FILE also writes spans as JSON lines. Neither: spans still carry trace ids into
    # logs and Triton, and nothing is exported.
    otlp_traces_endpoint: str = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "",
                                    "OTEL_EXPORTER_OTLP_ENDPOINT")
    otlp_protocol: str = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf",
                             "OTEL_EXPORTER_OTLP_PROTOCOL")
    traces_file: str = env("VG_GATEWAY_TRACES_FILE", "")
    log_level: str = env("VG_GATEWAY_LOG_LEVEL", "INFO")
    # The control plane: routing (which model version serves, canary share) and drift features
    # go through it. Empty URL: a standalone gateway, Triton's default version serves.
    control_url: str = env("VG_GATEWAY_CONTROL_URL", "")
    control_token: str = env("VG_GATEWAY_CONTROL_TOKEN", "")
    routing_poll_s: float = env("VG_GATEWAY_ROUTING_POLL_S", 1.0)
    # A JSON state file written by whatever runs the stack (`visionguard up` writes
    # <runtime_dir>/status.json): while the detector is not ready, /readyz gives its reason
    # (training the bootstrap detector, Triton restarting). Empty: no such file.
    status_file: str = env("VG_GATEWAY_STATUS_FILE", "")
    # Drift features (tracker_service/drift_sampler.py): the share of requests sampled, samples
    # per POST, seconds between posts, and the buffer bound (samples over it are dropped and
    # counted; a request never waits for the control plane).
    drift_sample_rate: float = env("VG_GATEWAY_DRIFT_SAMPLE_RATE", 0.25)
    drift_batch_size: int = env("VG_GATEWAY_DRIFT_BATCH_SIZE", 64)
    drift_flush_s: float = env("VG_GATEWAY_DRIFT_FLUSH_S", 5.0)
    drift_max_buffer: int = env("VG_GATEWAY_DRIFT_MAX_BUFFER", 2048)
    drift_post_timeout_s: float = env("VG_GATEWAY_DRIFT_POST_TIMEOUT_S", 2.0)
    # Production frames kept for labelling (tracker_service/frame_sampler.py, issue 14). OFF by
    # default: frames can be personal data, so keeping them is an operator's explicit choice.
    # Reasons: drift (while the control plane's last drift check flagged drift, a share of
    # frames), uncertain (the top detection score in [uncertain_low, uncertain_high)) and
    # uniform (a small share of all frames). Per stream (or per client without one) at most
    # `per_stream_per_min` frames a minute; the store holds at most `max_bytes`, the oldest
    # evicted first, none older than `retention_s`. Frames go to S3 when `s3_bucket` is set,
    # else to `frames_dir` (`visionguard up` passes <runtime_dir>/frames; empty: sampling off).
    frames_sampling: bool = env("VG_GATEWAY_FRAMES_SAMPLING", False)
    frames_dir: str = env("VG_GATEWAY_FRAMES_DIR", "")
    frames_s3_endpoint: str = env("VG_GATEWAY_FRAMES_S3_ENDPOINT", "")
    frames_s3_bucket: str = env("VG_GATEWAY_FRAMES_S3_BUCKET", "")
    frames_s3_access_key: str = env("VG_GATEWAY_FRAMES_S3_ACCESS_KEY", "", "AWS_ACCESS_KEY_ID")
    frames_s3_secret_key: str = env("VG_GATEWAY_FRAMES_S3_SECRET_KEY", "",
                                    "AWS_SECRET_ACCESS_KEY")
    frames_s3_region: str = env("VG_GATEWAY_FRAMES_S3_REGION", "us-east-1", "AWS_DEFAULT_REGION")
    frames_drift_rate: float = env("VG_GATEWAY_FRAMES_DRIFT_RATE", 0.2)
    frames_uncertain_low: float = env("VG_GATEWAY_FRAMES_UNCERTAIN_LOW", 0.25)
    frames_uncertain_high: float = env("VG_GATEWAY_FRAMES_UNCERTAIN_HIGH", 0.5)
    frames_uncertain_rate: float = env("VG_GATEWAY_FRAMES_UNCERTAIN_RATE", 1.0)
    frames_uniform_rate: float = env("VG_GATEWAY_FRAMES_UNIFORM_RATE", 0.001)
    frames_per_stream_per_min: float = env("VG_GATEWAY_FRAMES_PER_STREAM_PER_MIN", 6.0)
    frames_max_bytes: int = env("VG_GATEWAY_FRAMES_MAX_BYTES", 2 << 30)
    frames_retention_s: float = env("VG_GATEWAY_FRAMES_RETENTION_S", 7 * 86400.0)
    frames_queue: int = env("VG_GATEWAY_FRAMES_QUEUE", 32)
    frames_drift_poll_s: float = env("VG_GATEWAY_FRAMES_DRIFT_POLL_S", 15.0)
    frames_backoff_s: float = env("VG_GATEWAY_FRAMES_BACKOFF_S", 2.0)
    frames_max_backoff_s: float = env("VG_GATEWAY_FRAMES_MAX_BACKOFF_S", 60.0)
    # Zones and lines per stream (tracker_service/zones.py): the most per stream, the most
    # points per polygon; a change of side is confirmed after min_frames observations (jitter),
    # and a track unseen for absent_s has left (keep it >= the tracker's lost-track buffer).
    # Prometheus series per stream are bounded by max_streams x (max_zones + max_lines).
    zone_max_zones: int = env("VG_GATEWAY_ZONE_MAX_ZONES", 16, "VG_ZONE_MAX_ZONES")
    zone_max_lines: int = env("VG_GATEWAY_ZONE_MAX_LINES", 16, "VG_ZONE_MAX_LINES")
    zone_max_points: int = env("VG_GATEWAY_ZONE_MAX_POINTS", 64, "VG_ZONE_MAX_POINTS")
    zone_min_frames: int = env("VG_GATEWAY_ZONE_MIN_FRAMES", 2)
    zone_absent_s: float = env("VG_GATEWAY_ZONE_ABSENT_S", 2.0)
    # Signed webhooks for zone and line events (tracker_service/webhooks.py): comma-separated
    # URLs (empty: none), the HMAC secret (required with URLs), a deadline per attempt, the
    # queue bound per URL (the oldest is dropped when full) and retries per delivery. The
    # VG_WEBHOOK_* names are shared with the control plane's notifications.
    webhook_urls: str = env("VG_GATEWAY_WEBHOOK_URLS", "", "VG_WEBHOOK_URLS")
    webhook_secret: str = env("VG_GATEWAY_WEBHOOK_SECRET", "", "VG_WEBHOOK_SECRET")
    webhook_timeout_s: float = env("VG_GATEWAY_WEBHOOK_TIMEOUT_S", 5.0, "VG_WEBHOOK_TIMEOUT_S")
    webhook_queue: int = env("VG_GATEWAY_WEBHOOK_QUEUE", 1000, "VG_WEBHOOK_QUEUE")
    webhook_retries: int = env("VG_GATEWAY_WEBHOOK_RETRIES", 3, "VG_WEBHOOK_RETRIES")
    webhook_backoff_s: float = env("VG_GATEWAY_WEBHOOK_BACKOFF_S", 0.5)
    # Shadow traffic (tracker_service/shadow.py, issue 15): mirrored requests wait in a queue of
    # `shadow_queue` and at most `shadow_concurrency` shadow calls run at once; a mirror is shed
    # (dropped and counted, never waited for) when the queue is full or when the gateway holds
    # `shadow_busy_pending` client requests or more (the one being answered included). Each
    # mirror is a second inference; bench/shadow_overhead.py, yolov8n at 640, c=4, shadow 50%,
    # quiet 2-core EPYC: threshold 4 compared 63 of 154 mirrors and cost 14% of throughput
    # (p50 1.15x); 3 compared 4 of 222 (shed the rest) and cost nothing measurable (1.06x,
    # p50 0.97x). So 3: a saturated gateway sheds its shadow; with headroom it compares.
    # Boxes match at IoU >= `shadow_match_iou`.
    shadow_queue: int = env("VG_GATEWAY_SHADOW_QUEUE", 8)
    shadow_concurrency: int = env("VG_GATEWAY_SHADOW_CONCURRENCY", 1)
    shadow_busy_pending: int = env("VG_GATEWAY_SHADOW_BUSY_PENDING", 3)
    shadow_match_iou: float = env("VG_GATEWAY_SHADOW_MATCH_IOU", 0.5)
    # Comparisons and dropped mirrors kept per shadow version (each ring; versions kept:
    # version_stats_max_versions) for GET /v1/internal/shadow-stats, which the control plane's
    # automated canary analysis reads for the shadow run before a canary (its agreement).
    shadow_stats_max_records: int = env("VG_GATEWAY_SHADOW_STATS_MAX_RECORDS", 20_000)
    # Per-version samples for the control plane's automated canary analysis
    # (tracker_service/version_stats.py): ring sizes per version (requests, scores, tracked
    # frames), versions kept, and the fragment rule (a new id within `fragment_gap_frames`
    # frames at IoU >= `fragment_iou` of a track that ended). GET /v1/internal/version-stats
    # needs `Authorization: Bearer <internal_token>` when it is set (the control plane sends
    # its VG_GATEWAY_TOKEN); empty: open, like /metrics.
    version_stats_max_requests: int = env("VG_GATEWAY_VERSION_STATS_MAX_REQUESTS", 20_000)
    version_stats_max_scores: int = env("VG_GATEWAY_VERSION_STATS_MAX_SCORES", 50_000)
    version_stats_max_frames: int = env("VG_GATEWAY_VERSION_STATS_MAX_FRAMES", 20_000)
    version_stats_max_versions: int = env("VG_GATEWAY_VERSION_STATS_MAX_VERSIONS", 8)
    fragment_gap_frames: int = env("VG_GATEWAY_FRAGMENT_GAP_FRAMES", 30)
    fragment_iou: float = env("VG_GATEWAY_FRAGMENT_IOU", 0.3)
    internal_token: str = env("VG_GATEWAY_INTERNAL_TOKEN", "")

    @property
    def webhook_url_list(self) -> list[str]:
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]
