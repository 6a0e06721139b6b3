"""The gateway's Prometheus metrics (base units, `_seconds`, `_total`), in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "visionguard_gateway_request_duration_seconds", "HTTP request duration",
            ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram(
            "visionguard_gateway_stage_duration_seconds", "Time per pipeline stage",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.triton = Histogram(
            "visionguard_triton_request_duration_seconds", "Triton gRPC infer call duration",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.slot_wait = Histogram(
            "visionguard_gateway_slot_wait_seconds", "Time waiting for a Triton call slot",
            buckets=LATENCY_BUCKETS, registry=r)
        self.detections = Histogram(
            "visionguard_detections_per_image", "Detections returned per image",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 300), registry=r)
        self.scores = Histogram(
            "visionguard_detection_score", "Scores of returned detections",
            buckets=(0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0), registry=r)
        self.errors = Counter(
            "visionguard_gateway_errors_total", "Requests that ended in an error, by kind",
            ["kind"], registry=r)
        self.pending = Gauge(
            "visionguard_gateway_pending_requests", "Requests admitted and not yet answered",
            registry=r)
        self.in_flight = Gauge(
            "visionguard_gateway_triton_in_flight", "Triton calls in flight", registry=r)
        self.active_streams = Gauge(
            "visionguard_active_streams", "Streams with tracker state", registry=r)
        self.active_tracks = Gauge(
            "visionguard_active_tracks", "Tracks reported on each stream's last frame, summed",
            registry=r)
        self.model_version = Gauge(
            "visionguard_model_version_info", "Model versions that served requests (1 = seen)",
            ["model", "version"], registry=r)
