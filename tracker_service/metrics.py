"""The gateway's Prometheus metrics (base units, `_seconds`, `_total`), in one registry."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.triton_stats = TritonStats(r)
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
        # By model version: a canary's challenger is compared with the champion on these.
        self.detections = Histogram(
            "visionguard_detections_per_image", "Detections returned per image",
            ["version"], buckets=(0, 1, 2, 5, 10, 20, 50, 100, 300), registry=r)
        self.scores = Histogram(
            "visionguard_detection_score", "Scores of returned detections",
            ["version"], buckets=(0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r)
        self.routed = Counter(
            "visionguard_gateway_routed_requests_total",
            "Detector calls by the version they went to and why (champion, challenger, "
            "explicit, default)", ["version", "role"], registry=r)
        self.routing_errors = Counter(
            "visionguard_gateway_routing_fetch_errors_total",
            "Failed fetches of the control plane's routing (the last routing stays)",
            registry=r)
        self.routing_info = Gauge(
            "visionguard_gateway_routing_info",
            "The routing this gateway follows (1 = current)",
            ["champion", "challenger", "canary_percent"], registry=r)
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
        self.drift_features = Counter(
            "visionguard_gateway_drift_features_total",
            "Drift feature samples by outcome: buffered, sent, dropped_full, "
            "dropped_unreachable, dropped_rejected", ["outcome"], registry=r)
        for outcome in ("buffered", "sent", "dropped_full", "dropped_unreachable",
                        "dropped_rejected"):
            self.drift_features.labels(outcome)
        self.drift_buffer = Gauge(
            "visionguard_gateway_drift_buffer_samples",
            "Drift feature samples waiting to be sent", registry=r)
        # Production frames kept for labelling (frame_sampler.py).
        self.frames_sampled = Counter(
            "visionguard_gateway_frames_sampled_total",
            "Frames chosen to be kept for labelling, by reason: drift, uncertain, uniform",
            ["reason"], registry=r)
        self.frames_dropped = Counter(
            "visionguard_gateway_frames_dropped_total",
            "Frames chosen but not kept, by cause: rate_limited, queue_full, paused (the store "
            "failed and sampling backs off), store_error, storage_full, duplicate",
            ["cause"], registry=r)
        for cause in ("rate_limited", "queue_full", "paused", "store_error", "storage_full",
                      "duplicate"):
            self.frames_dropped.labels(cause)
        self.frames_stored_bytes = Counter(
            "visionguard_gateway_frames_stored_bytes_total",
            "Bytes of frames and records written to the frame store", registry=r)
        self.frames_store_usage = Gauge(
            "visionguard_gateway_frames_store_bytes",
            "Bytes the frame store holds (this gateway's view)", registry=r)
        self.zones = ZoneMetrics(r)
        self.shadow = ShadowMetrics(r)
        self.webhooks = Counter(
            "visionguard_gateway_webhooks_total",
            "Webhook deliveries by outcome: delivered, retried (an attempt to be tried again), "
            "failed (given up), dropped (queue full)", ["outcome"], registry=r)
        for outcome in ("delivered", "retried", "failed", "dropped"):
            self.webhooks.labels(outcome)


class ZoneMetrics:
    """Counts of the streams' zones and lines (tracker_service/zones.py).

    Labels are the stream and the zone or line id, so the series are bounded by what is
    configured: a stream's series appear when its zones are set (at 0) and are removed when they
    are replaced or cleared and when the stream is deleted or evicted; at most
    max_streams x (max_zones + max_lines) per metric (GatewaySettings), ids of at most
    max_id_length characters. A counter removed and made again starts from 0, which
    Prometheus' rate() reads as a reset."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entries = Counter(
            "visionguard_zone_entries_total", "Tracks that entered a zone",
            ["stream", "zone"], registry=registry)
        self.exits = Counter(
            "visionguard_zone_exits_total", "Tracks that left a zone",
            ["stream", "zone"], registry=registry)
        self.occupancy = Gauge(
            "visionguard_zone_occupancy", "Tracks inside a zone on the stream's last frame",
            ["stream", "zone"], registry=registry)
        self.crossings = Counter(
            "visionguard_line_crossings_total",
            "Tracks that crossed a line, by direction (in: from its right to its left)",
            ["stream", "line", "direction"], registry=registry)
        self._configured: dict[str, tuple[list[str], list[str]]] = {}

    def configure(self, stream_id: str, zones: list[str], lines: list[str]) -> None:
        """A stream's zones and lines are (re)set: its old series go, the new ones start at 0."""
        self.forget(stream_id)
        self._configured[stream_id] = (zones, lines)
        for zone in zones:
            self.entries.labels(stream_id, zone)
            self.exits.labels(stream_id, zone)
            self.occupancy.labels(stream_id, zone).set(0)
        for line in lines:
            for direction in ("in", "out"):
                self.crossings.labels(stream_id, line, direction)

    def observe(self, stream_id: str, events, occupancy: dict[str, int]) -> None:
        """One frame's zone events (zones.ZoneEvent) and the zones' occupancy after it."""
        for e in events:
            if e.type == "zone_enter":
                self.entries.labels(stream_id, e.shape).inc()
            elif e.type == "zone_exit":
                self.exits.labels(stream_id, e.shape).inc()
            else:
                self.crossings.labels(stream_id, e.shape, e.direction).inc()
        for zone, count in occupancy.items():
            self.occupancy.labels(stream_id, zone).set(count)

    def forget(self, stream_id: str) -> None:
        zones, lines = self._configured.pop(stream_id, ((), ()))
        for zone in zones:
            for metric in (self.entries, self.exits, self.occupancy):
                metric.remove(stream_id, zone)
        for line in lines:
            for direction in ("in", "out"):
                self.crossings.remove(stream_id, line, direction)


class ShadowMetrics:
    """Shadow traffic (tracker_service/shadow.py), by shadow version: requests compared with the
    champion's answer, boxes on each side and matched, the agreement so far, |score delta| of
    matched boxes, failed shadow calls and mirrors shed. Series per version shadowed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.compared = Counter(
            "visionguard_gateway_shadow_compared_total",
            "Requests whose shadow answer was compared with the champion's", ["version"],
            registry=registry)
        self.boxes = Counter(
            "visionguard_gateway_shadow_boxes_total",
            "Boxes of compared requests: champion, shadow, matched (one-to-one at IoU >= the "
            "match threshold), class_agreed (matched with the same class)",
            ["version", "kind"], registry=registry)
        self.box_agreement = Gauge(
            "visionguard_gateway_shadow_box_agreement",
            "Matched-box rate so far: 2 x matched / (champion + shadow boxes); 1 = same boxes",
            ["version"], registry=registry)
        self.class_agreement = Gauge(
            "visionguard_gateway_shadow_class_agreement",
            "Class agreement so far: matched boxes with the same class / matched boxes",
            ["version"], registry=registry)
        self.score_delta = Histogram(
            "visionguard_gateway_shadow_score_delta",
            "|champion score - shadow score| of matched boxes", ["version"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), registry=registry)
        self.errors = Counter(
            "visionguard_gateway_shadow_errors_total",
            "Shadow calls that failed (the client's answer was never affected)", ["version"],
            registry=registry)
        self.shed = Counter(
            "visionguard_gateway_shadow_shed_total",
            "Mirrors dropped before their shadow call: queue_full, busy (the gateway held too "
            "many client requests)", ["version", "reason"], registry=registry)


class TritonStats:
    """Triton's inference statistics, fetched by the gateway at each scrape of /metrics.

    Batch sizes are not on Triton's metrics port (it has request and execution counts, not
    their distribution over batch sizes); its statistics API has them per model version.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.snapshot: list[dict] = []
        self.fetch_errors = Counter(
            "visionguard_gateway_triton_stats_errors_total",
            "Failed fetches of Triton's inference statistics (the last ones stay)",
            registry=registry)
        registry.register(self)

    async def refresh(self, client) -> None:
        from tracker_service.errors import GatewayError

        try:
            self.snapshot = await client.inference_statistics()
        except GatewayError as exc:
            self.fetch_errors.inc()
            logging.getLogger(__name__).warning(
                "cannot fetch Triton's statistics: %s", exc,
                extra={"event": "triton_stats_error", "error_code": exc.code})

    def collect(self):
        labels = ["model", "version", "batch_size"]
        executions = CounterMetricFamily(
            "visionguard_triton_batch_executions",
            "Model executions by batch size (Triton's statistics)", labels=labels)
        inferences = CounterMetricFamily(
            "visionguard_triton_batch_inferences",
            "Images (inferences) executed, by the batch size they ran in", labels=labels)
        loaded = GaugeMetricFamily(
            "visionguard_triton_model_version_loaded",
            "Model versions loaded in Triton (1 = loaded)", labels=["model", "version"])
        for model in self.snapshot:
            name, version = model.get("name", ""), str(model.get("version", ""))
            loaded.add_metric([name, version], 1)
            for batch in model.get("batch_stats", []):
                size = int(batch.get("batch_size", 0))
                count = int(batch.get("compute_infer", {}).get("count", 0))
                executions.add_metric([name, version, str(size)], count)
                inferences.add_metric([name, version, str(size)], count * size)
        yield executions
        yield inferences
        yield loaded

    def describe(self):
        return []  # collected live: no fixed series to register up front
