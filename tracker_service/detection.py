"""One image through the detector: admit, decode, letterbox, Triton, boxes back to the image.

CPU-bound steps (decode, letterbox) run in one worker-thread hop so the event loop keeps accepting
and answering requests while they run; the gateway then overlaps decoding the next image with
Triton computing the current one. A lone small image (settings.inline_prepare_*) skips the hop:
with nothing else held there is nothing to overlap, and the hop itself costs (anyio's hand-over,
two thread wake-ups: bench/serving_overhead.py's profile).

The pipeline only takes the time of each stage (`StageTimes`); the request's recorder
(recorder.py) turns those into spans and metrics. Which version to ask for, and what to do when it
is gone, is the service's decision (service.py), not the pipeline's.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from anyio import to_thread

from tracker_service.decode import Header, decode_image, read_header
from tracker_service.errors import Overloaded
from tracker_service.letterbox import letterbox, to_original
from tracker_service.settings import GatewaySettings
from tracker_service.triton_client import DetectorClient, ModelInfo

if TYPE_CHECKING:
    from tracker_service.recorder import RequestRecorder


@dataclass(frozen=True)
class DetectOptions:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    version: str = ""


def wall_ns(wall_start_ns: int, start: float, t: float) -> int:
    """perf_counter reading `t` as Unix nanoseconds, given both clocks read at `start`."""
    return wall_start_ns + int((t - start) * 1e9)


@dataclass(frozen=True)
class StageTimes:
    """One detection's stage boundaries (time.perf_counter() readings) and the wall clock at
    `start`, so its spans can be written after the fact with the right timestamps."""

    wall_start_ns: int
    start: float
    decode: float  # decoding starts (in a worker thread)
    preprocess: float  # decoded; letterboxing starts
    prepared: float  # letterboxed
    queue: float  # waiting for a Triton call slot
    infer: float  # slot taken, the Triton call starts
    postprocess: float  # Triton answered
    end: float

    def ns(self, t: float) -> int:
        """A perf_counter reading as Unix nanoseconds, for spans."""
        return wall_ns(self.wall_start_ns, self.start, t)

    def seconds(self) -> dict[str, float]:
        return {"decode": self.preprocess - self.decode,
                "preprocess": self.prepared - self.preprocess,
                "queue": self.infer - self.queue,
                "infer": self.postprocess - self.infer,
                "postprocess": self.end - self.postprocess,
                "total": self.end - self.start}


@dataclass
class Detections:
    boxes: np.ndarray  # [K, 4] xyxy, original image pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int
    width: int
    height: int
    model: ModelInfo
    model_version: str
    image: np.ndarray  # decoded BGR pixels: appearance embeddings and drift features read them
    stages: StageTimes
    timings_ms: dict[str, float]
    # `image` is this many times smaller than width x height (decode.py's reduced JPEG decode).
    reduction: int = 1

    def image_boxes(self) -> np.ndarray:
        """`boxes` in `image`'s pixels (a reduced decode's are smaller than the original's)."""
        return self.boxes / self.reduction if self.reduction > 1 else self.boxes

    def as_array(self) -> np.ndarray:
        """[K, 6] x1 y1 x2 y2 score class, the trackers' input."""
        return np.concatenate([self.boxes, self.scores[:, None],
                               self.classes[:, None].astype(np.float32)], axis=1)


def _prepare(data: bytes, max_pixels: int, imgsz: int, stride: int, reduced: bool,
             header: Header | None = None, simplejpeg_full: bool = True):
    t0 = time.perf_counter()
    decoded = decode_image(data, max_pixels, imgsz if reduced else 0, header,
                           simplejpeg_full=simplejpeg_full)
    t1 = time.perf_counter()
    rgb, geo = letterbox(decoded.image, imgsz, stride, (decoded.height, decoded.width),
                         decoded.reduction)
    return decoded, rgb, geo, t0, t1, time.perf_counter()


class DetectionPipeline:
    """Admission and the detector's stages; `recorder` holds the span open around the Triton
    call and the gauges of admitted requests and of calls in flight."""

    def __init__(self, settings: GatewaySettings, client: DetectorClient,
                 recorder: RequestRecorder) -> None:
        self.settings = settings
        self.client = client
        self.recorder = recorder
        self._pending = 0
        self._slots = asyncio.Semaphore(settings.max_triton_in_flight)

    @property
    def pending(self) -> int:
        """Client requests admitted and not yet answered (shadow work yields to them)."""
        return self._pending

    @asynccontextmanager
    async def admit(self):
        """Bound the work the gateway holds at once; one request over the bound gets 429."""
        if self._pending >= self.settings.max_pending:
            raise Overloaded("too many requests in flight; retry later",
                             max_pending=self.settings.max_pending)
        self._pending += 1
        self.recorder.pending(self._pending)
        try:
            yield
        finally:
            self._pending -= 1
            self.recorder.pending(self._pending)

    async def detect(self, data: bytes, opts: DetectOptions) -> Detections:
        start, wall_start = time.perf_counter(), time.time_ns()
        info = await self.client.model_info(opts.version)
        imgsz = min(self.settings.imgsz, info.imgsz)
        s = self.settings
        header = None
        if s.inline_prepare_max_pending and self._pending <= s.inline_prepare_max_pending:
            header = read_header(data, s.max_pixels)  # a header parse: the size decides
        args = (data, s.max_pixels, imgsz, info.stride, s.reduced_decode, header,
                s.simplejpeg_full_decode)
        if header is not None and header.pixels <= s.inline_prepare_max_pixels:
            decoded, rgb, geo, t_decode, t_pre, t_prepared = _prepare(*args)
        else:
            decoded, rgb, geo, t_decode, t_pre, t_prepared = await to_thread.run_sync(
                _prepare, *args)
        t_wait = time.perf_counter()
        async with self._slots:
            t_infer = time.perf_counter()
            # Ask for every class up to max_det; a class filter applies after per-class NMS,
            # which is what filtering before it gives, since NMS never crosses classes.
            # The span's trace context rides along as gRPC metadata, so Triton's spans
            # (opentelemetry trace mode) are children of this one.
            # The span starts and ends at t_infer and t_post, so it lasts the `infer` timing.
            with self.recorder.infer(info.name, opts.version, rgb.shape,
                                     wall_ns(wall_start, start, t_infer)) as call:
                result = await self.client.infer(
                    rgb, conf=opts.conf, iou=opts.iou,
                    max_det=300 if opts.classes else opts.max_det, version=opts.version,
                    headers=call.headers)
                t_post = time.perf_counter()
                call.answered(result.model_version, wall_ns(wall_start, start, t_post))
        dets = result.detections
        if opts.classes:
            dets = dets[np.isin(dets[:, 5].astype(np.int64), opts.classes)][: opts.max_det]
        boxes = to_original(dets[:, :4], geo)
        stages = StageTimes(wall_start, start, t_decode, t_pre, t_prepared, t_wait, t_infer,
                            t_post, time.perf_counter())
        return Detections(boxes, dets[:, 4].copy(), dets[:, 5].astype(np.int64), geo.orig_w,
                          geo.orig_h, info, result.model_version, decoded.image, stages,
                          {k: round(v * 1000, 3) for k, v in stages.seconds().items()},
                          decoded.reduction)
