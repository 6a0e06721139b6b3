"""Every span and metric a gateway request leaves behind, written from this one module.

The detection pipeline, the service and the HTTP layer say what happened (a stage's times, the
version a request was routed to, an error's code); this module decides which span, which log-line
field and which Prometheus series that becomes. One place to read when a dashboard or a trace
looks wrong, and one place to change when a series is added.

Two spans are open while their work runs, because something inside needs them current: `infer`
(its W3C trace context goes to Triton as gRPC metadata, so Triton's spans hang under it; it
starts and ends at the pipeline's timestamps, so it lasts the `infer` timing) and `track` (its
duration is the `track` timing). The other stages are written after the fact from
their timestamps (detection.StageTimes), since they ran in worker threads or before the span
would have been opened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span

from tracker_service.detection import Detections
from tracker_service.metrics import GatewayMetrics
from tracker_service.streams import StreamRegistry
from tracker_service.telemetry import annotate, record_span, traceparent_headers, tracer


class InferCall:
    """The open `infer` span of one Triton call."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.headers = traceparent_headers()  # taken while this span is the current one
        self.end_ns: int | None = None  # None: the span ends when the call leaves (failed)

    def answered(self, model_version: str, end_ns: int) -> None:
        self.span.set_attribute("triton.model_version", model_version)
        self.end_ns = end_ns


class TrackStep:
    """The open `track` span of one frame; `seconds` is set when it closes."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.seconds = 0.0

    def tracks(self, count: int) -> None:
        self.span.set_attribute("tracks", count)


class RequestRecorder:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def request(self, route: str, status: int, seconds: float) -> None:
        """Every HTTP response, by route template and status."""
        self.metrics.requests.labels(route, str(status)).observe(seconds)

    def error(self, code: str, message: str | None) -> None:
        """A request that ended in an error: counted by code, and on its log line and span."""
        self.metrics.errors.labels(code).inc()
        annotate(error_code=code, error=message)

    def pending(self, count: int) -> None:
        self.metrics.pending.set(count)

    @contextmanager
    def infer(self, model: str, requested_version: str, letterboxed: tuple[int, ...],
              start_ns: int) -> Iterator[InferCall]:
        """The `infer` span, current while the Triton call runs, from the pipeline's own
        timestamps: `start_ns`, and the end `InferCall.answered` gives."""
        self.metrics.in_flight.inc()
        call = None
        try:
            attributes = {"triton.model": model, "triton.requested_version": requested_version,
                          "image.letterboxed": f"{letterboxed[1]}x{letterboxed[0]}"}
            with tracer.start_as_current_span("infer", start_time=start_ns, end_on_exit=False,
                                              attributes=attributes) as span:
                call = InferCall(span)
                yield call
        finally:
            if call is not None:
                call.span.end(end_time=call.end_ns)
            self.metrics.in_flight.dec()

    def detected(self, d: Detections, image_bytes: int) -> None:
        """One image through the detector: its stage spans, log-line fields and metrics."""
        t = d.stages
        record_span("decode", t.ns(t.decode), t.ns(t.preprocess), bytes=image_bytes,
                    image=f"{d.width}x{d.height}")
        record_span("preprocess", t.ns(t.preprocess), t.ns(t.prepared))
        record_span("queue", t.ns(t.queue), t.ns(t.infer))
        record_span("postprocess", t.ns(t.postprocess), t.ns(t.end), detections=len(d.scores))
        annotate(model=d.model.name, model_version=d.model_version, detections=len(d.scores))
        seconds = t.seconds()
        m = self.metrics
        for stage in ("decode", "preprocess", "postprocess"):
            m.stage.labels(stage).observe(seconds[stage])
        m.slot_wait.observe(seconds["queue"])
        m.triton.labels(d.model.name, d.model_version).observe(seconds["infer"])
        m.model_version.labels(d.model.name, d.model_version).set(1)
        m.detections.labels(d.model_version).observe(len(d.scores))
        scores = m.scores.labels(d.model_version)
        for s in d.scores:
            scores.observe(float(s))

    def routed(self, model_version: str, role: str) -> None:
        """The version that answered, and why it was asked (routing.CHAMPION, ...)."""
        self.metrics.routed.labels(model_version, role).inc()

    @contextmanager
    def tracking(self, stream_id: str, tracker: str) -> Iterator[TrackStep]:
        """The tracker's part of a frame (embeddings, its turn in frame order, the update)."""
        start = time.perf_counter()
        with tracer.start_as_current_span("track", attributes={
                "stream.id": stream_id, "tracker": tracker}) as span:
            step = TrackStep(span)
            yield step
        step.seconds = time.perf_counter() - start
        self.metrics.stage.labels("track").observe(step.seconds)

    def streams(self, streams: StreamRegistry) -> None:
        """The gauges of live streams and their tracks, after any change to them."""
        self.metrics.active_streams.set(len(streams))
        self.metrics.active_tracks.set(streams.active_tracks)
