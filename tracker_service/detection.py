"""One image through the detector: admit, decode, letterbox, Triton, boxes back to the image.

CPU-bound steps (decode, letterbox) run in worker threads so the event loop keeps accepting
and answering requests while they run; the gateway then overlaps decoding the next image with
Triton computing the current one.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from anyio import to_thread

from tracker_service.decode import decode_image
from tracker_service.errors import Overloaded
from tracker_service.letterbox import letterbox, to_original
from tracker_service.metrics import GatewayMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.telemetry import annotate, record_span, traceparent_headers, tracer
from tracker_service.triton_client import DetectorClient, ModelInfo


@dataclass(frozen=True)
class DetectOptions:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    version: str = ""


@dataclass
class Detections:
    boxes: np.ndarray  # [K, 4] xyxy, original image pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int
    width: int
    height: int
    model: ModelInfo
    model_version: str
    image: np.ndarray | None = None  # decoded BGR pixels, kept for appearance embeddings
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_array(self) -> np.ndarray:
        """[K, 6] x1 y1 x2 y2 score class, the trackers' input."""
        return np.concatenate([self.boxes, self.scores[:, None],
                               self.classes[:, None].astype(np.float32)], axis=1)


def _prepare(data: bytes, max_pixels: int, imgsz: int, stride: int):
    t0 = time.perf_counter()
    bgr = decode_image(data, max_pixels)
    t1 = time.perf_counter()
    rgb, geo = letterbox(bgr, imgsz, stride)
    return bgr, rgb, geo, t1 - t0, time.perf_counter() - t1, t0


class DetectionPipeline:
    def __init__(self, settings: GatewaySettings, client: DetectorClient,
                 metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self._pending = 0
        self._slots = asyncio.Semaphore(settings.max_triton_in_flight)
        # Drift features of sampled requests go here (drift_sampler.DriftSampler; the app
        # sets it). Never blocks: a full buffer drops the sample.
        self.drift = None

    @property
    def pending(self) -> int:
        return self._pending

    @asynccontextmanager
    async def admit(self):
        """Bound the work the gateway holds at once; one request over the bound gets 429."""
        if self._pending >= self.settings.max_pending:
            raise Overloaded("too many requests in flight; retry later",
                             max_pending=self.settings.max_pending)
        self._pending += 1
        self.metrics.pending.set(self._pending)
        try:
            yield
        finally:
            self._pending -= 1
            self.metrics.pending.set(self._pending)

    async def detect(self, data: bytes, opts: DetectOptions, keep_image: bool = False
                     ) -> Detections:
        start, wall_start = time.perf_counter(), time.time_ns()

        def ns(t: float) -> int:  # a perf_counter reading as Unix nanoseconds, for spans
            return wall_start + int((t - start) * 1e9)

        info = await self.client.model_info(opts.version)
        imgsz = min(self.settings.imgsz, info.imgsz)
        bgr, rgb, geo, t_decode, t_pre, t_prep = await to_thread.run_sync(
            _prepare, data, self.settings.max_pixels, imgsz, info.stride)
        t_wait = time.perf_counter()
        async with self._slots:
            t_infer = time.perf_counter()
            self.metrics.in_flight.inc()
            try:
                # Ask for every class up to max_det; a class filter applies after per-class NMS,
                # which is what filtering before it gives, since NMS never crosses classes.
                # The span's trace context rides along as gRPC metadata, so Triton's spans
                # (opentelemetry trace mode) are children of this one.
                with tracer.start_as_current_span("infer", attributes={
                        "triton.model": info.name, "triton.requested_version": opts.version,
                        "image.letterboxed": f"{rgb.shape[1]}x{rgb.shape[0]}"}) as span:
                    result = await self.client.infer(
                        rgb, conf=opts.conf, iou=opts.iou,
                        max_det=300 if opts.classes else opts.max_det, version=opts.version,
                        headers=traceparent_headers())
                    span.set_attribute("triton.model_version", result.model_version)
            finally:
                self.metrics.in_flight.dec()
        t_post = time.perf_counter()
        dets = result.detections
        if opts.classes:
            dets = dets[np.isin(dets[:, 5].astype(np.int64), opts.classes)][: opts.max_det]
        boxes = to_original(dets[:, :4], geo)
        end = time.perf_counter()

        record_span("decode", ns(t_prep), ns(t_prep + t_decode), bytes=len(data),
                    image=f"{geo.orig_w}x{geo.orig_h}")
        record_span("preprocess", ns(t_prep + t_decode), ns(t_prep + t_decode + t_pre))
        record_span("queue", ns(t_wait), ns(t_infer))
        record_span("postprocess", ns(t_post), ns(end), detections=len(dets))
        annotate(model=info.name, model_version=result.model_version, detections=len(dets))
        timings = {"decode": t_decode, "preprocess": t_pre, "queue": t_infer - t_wait,
                   "infer": t_post - t_infer, "postprocess": end - t_post, "total": end - start}
        m = self.metrics
        for stage in ("decode", "preprocess", "postprocess"):
            m.stage.labels(stage).observe(timings[stage])
        m.slot_wait.observe(timings["queue"])
        m.triton.labels(info.name, result.model_version).observe(timings["infer"])
        m.model_version.labels(info.name, result.model_version).set(1)
        m.detections.labels(result.model_version).observe(len(dets))
        scores = m.scores.labels(result.model_version)
        for s in dets[:, 4]:
            scores.observe(float(s))
        if self.drift is not None:
            self.drift.offer(bgr, dets[:, 4], boxes, conf=opts.conf, classes=opts.classes,
                             max_det=opts.max_det, model_version=result.model_version)
        return Detections(boxes, dets[:, 4].copy(), dets[:, 5].astype(np.int64), geo.orig_w,
                          geo.orig_h, info, result.model_version,
                          bgr if keep_image else None,
                          {k: round(v * 1000, 3) for k, v in timings.items()})
