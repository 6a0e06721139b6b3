"""What the gateway decides, apart from HTTP: which model version answers, and a stream's frames.

`DetectionService` is the one object the route handlers call (given to them through Litestar's
`Provide`, built in the app's lifespan). It owns the decisions a request needs:

- detect: the routing's choice of version (routing.py), and the fallback when a routed version
  has left Triton while this gateway's routing was a poll behind (fetch the routing again and
  answer with its current choice; a routed challenger that Triton does not serve at all falls back
  to the champion), so a release step never fails a request;
- track: a stream's frames admitted in order (streams.py), detected concurrently, then applied to
  the stream's own tracker strictly in frame order, with appearance embeddings when the tracker
  uses them.

Its collaborators come in through the constructor (the Triton client, the routing follower, the
stream registry, the embedder, the drift sampler, the metrics), so the decisions are tested with a
fake Triton client and no server (tests/test_gateway_service.py). Spans and metrics of a request
are written by its `RequestRecorder` (recorder.py), nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from anyio import to_thread
from prometheus_client import generate_latest

from tracker_service.detection import DetectionPipeline, DetectOptions, Detections
from tracker_service.drift_sampler import DriftSampler
from tracker_service.errors import ModelNotFound
from tracker_service.metrics import GatewayMetrics
from tracker_service.recorder import RequestRecorder
from tracker_service.routing import CHALLENGER, CHAMPION, DEFAULT, EXPLICIT
from tracker_service.routing_follower import RoutingFollower
from tracker_service.settings import GatewaySettings
from tracker_service.streams import StreamRegistry
from tracker_service.tracking import HistogramEmbedder
from tracker_service.triton_client import DetectorClient

if TYPE_CHECKING:
    from tracker_service.reid_client import TritonEmbedder
    from tracker_service.tracking import Embedder

# The request's image bytes, read only once the request is admitted: a request refused for
# load or for a stale frame costs no upload.
ImageSource = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""  # why not, for a person: what the stack is waiting for


@dataclass
class TrackedFrame:
    stream_id: str
    frame: int
    detections: Detections
    tracks: np.ndarray  # [M, 9] tracking.OUT_* columns


class DetectionService:
    def __init__(self, settings: GatewaySettings, client: DetectorClient,
                 routing: RoutingFollower, streams: StreamRegistry,
                 embedder: Embedder | TritonEmbedder, drift: DriftSampler | None,
                 metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.client = client
        self.routing = routing
        self.streams = streams
        self.embedder = embedder
        self.drift = drift
        self.metrics = metrics
        self.recorder = RequestRecorder(metrics)
        self.pipeline = DetectionPipeline(settings, client, self.recorder)

    async def detect(self, image: ImageSource, opts: DetectOptions) -> Detections:
        async with self.pipeline.admit():
            data = await image()
            return await self._routed(data, opts, None)

    async def track(self, stream_id: str, frame: int | None, image: ImageSource,
                    opts: DetectOptions, fps: float | None = None) -> TrackedFrame:
        """Detect, then update the stream's tracker in frame order; `frame` None = the next;
        `fps` the stream's frame rate (set when the stream is created)."""
        async with (self.pipeline.admit(),
                    self.streams.frame(stream_id, frame, fps) as (frame_no, turn)):
            data = await image()
            d = await self._routed(data, opts, stream_id)
            with self.recorder.tracking(stream_id, self.streams.tracker_name) as step:
                embeddings = await self._embed(d) if self.streams.needs_embeddings else None
                stream = await turn()
                tracks = stream.tracker.update(d.as_array(), embeddings)
                step.tracks(len(tracks))
            stream.frames_applied += 1
            stream.tracks_reported = len(tracks)
            d.timings_ms["track"] = round(step.seconds * 1000, 3)
        self.recorder.streams(self.streams)
        return TrackedFrame(stream_id, frame_no, d, tracks)

    def forget(self, stream_id: str) -> None:
        """Drop a stream's tracker state (StreamNotFound if there is none)."""
        self.streams.delete(stream_id)
        self.recorder.streams(self.streams)

    def evict_idle(self) -> None:
        self.streams.evict_idle()
        self.recorder.streams(self.streams)

    @property
    def model_name(self) -> str:
        return self.client.model

    async def ready(self) -> bool:
        """The detector is ready in Triton."""
        return await self.client.ready()

    async def readiness(self) -> Readiness:
        """Ready when the detector is ready in Triton; else why not: what the stack's state
        file says (`visionguard up`: training the bootstrap detector, Triton restarting), or
        that Triton does not serve the detector."""
        if await self.client.ready():
            return Readiness(True)
        return Readiness(False, self._stack_reason() or (
            f"the detector {self.model_name!r} is not ready in Triton at "
            f"{self.settings.triton_grpc_url} (Triton unreachable or still loading it)"))

    def _stack_reason(self) -> str | None:
        if not self.settings.status_file:
            return None
        try:
            state = json.loads(Path(self.settings.status_file).read_text())
        except (OSError, ValueError):
            return None
        triton = (state.get("children") or {}).get("triton") or {}
        if triton.get("state") == "restarting":
            return (f"Triton {triton.get('last_exit') or 'exited'} and is being restarted "
                    f"(restart {int(triton.get('restarts') or 0) + 1}); requests get 503 "
                    "until it is back")
        if triton.get("state") == "running" and triton.get("restarts"):
            return (f"Triton was restarted (it {triton.get('last_exit') or 'exited'}) and "
                    "is loading the models")
        if not state.get("ready") and state.get("reason"):
            return str(state["reason"])
        return None

    async def scrape(self) -> bytes:
        """Prometheus text: this gateway's metrics, with Triton's batch statistics fetched now."""
        await self.metrics.triton_stats.refresh(self.client)
        return generate_latest(self.metrics.registry)

    async def _routed(self, data: bytes, opts: DetectOptions, stream_id: str | None
                      ) -> Detections:
        """Detect with the version the routing picks (unless the client named one). If the
        routed version left Triton while this gateway's routing was a poll behind, fetch the
        routing again and answer with its current choice instead of failing the request."""
        version, role = self.routing.choose(opts.version, stream_id)
        try:
            d = await self._detect(data, replace(opts, version=version))
        except ModelNotFound:
            if role in (EXPLICIT, DEFAULT):
                raise
            failed = version
            await self.routing.refresh()
            version, role = self.routing.choose("", stream_id)
            if version == failed and role == CHALLENGER and self.routing.current.champion:
                # The challenger is routed but not served (e.g. a repository without it): the
                # champion answers rather than the client getting an error.
                version, role = self.routing.current.champion, CHAMPION
            elif version == failed:
                raise
            d = await self._detect(data, replace(opts, version=version))
        self.recorder.routed(d.model_version, role)
        return d

    async def _detect(self, data: bytes, opts: DetectOptions) -> Detections:
        d = await self.pipeline.detect(data, opts)
        self.recorder.detected(d, len(data))
        # Drift features of sampled requests (never blocks: a full buffer drops the sample).
        if self.drift is not None:
            self.drift.offer(d.image, d.scores, d.boxes, conf=opts.conf, classes=opts.classes,
                             max_det=opts.max_det, model_version=d.model_version)
        return d

    async def _embed(self, d: Detections) -> np.ndarray:
        """Appearance embeddings of the detections, from the configured embedder."""
        rgb = cv2.cvtColor(d.image, cv2.COLOR_BGR2RGB)
        if isinstance(self.embedder, HistogramEmbedder):
            return await to_thread.run_sync(self.embedder.embed, rgb, d.boxes)
        return await self.embedder.embed(rgb, d.boxes)
