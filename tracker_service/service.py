"""What the gateway decides, apart from HTTP: which model version answers, and a stream's frames.

`DetectionService` is the one object the route handlers call (given to them through Litestar's
`Provide`, built in the app's lifespan). It owns the decisions a request needs:

- detect: the routing's choice of version (routing.py), and the fallback when a routed version
  has left Triton while this gateway's routing was a poll behind (fetch the routing again and
  answer with its current choice; a routed challenger that Triton does not serve at all falls back
  to the champion), so a release step never fails a request; the routing's shadow share of the
  champion's answers is mirrored to the shadow version in the background (shadow.py);
- track: a stream's frames admitted in order (streams.py), detected concurrently, then applied to
  the stream's own tracker strictly in frame order, with appearance embeddings when the tracker
  uses them; then the stream's zones and lines (zones.py) turn the tracks into counts and
  events, which are counted in Prometheus, logged (one line per event, with the request's
  trace id) and sent to the configured webhooks (webhooks.py, in the background: a slow or
  failing receiver never delays or fails the frame).

Its collaborators come in through the constructor (the Triton client, the routing follower, the
stream registry, the embedder, the drift sampler, the frame sampler, the metrics), so the
decisions are tested with a fake Triton client and no server (tests/test_gateway_service.py).
Spans and metrics of a request are written by its `RequestRecorder` (recorder.py), nowhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from anyio import to_thread
from opentelemetry import trace
from prometheus_client import generate_latest

from tracker_service.detection import DetectionPipeline, DetectOptions, Detections
from tracker_service.drift_sampler import DriftSampler
from tracker_service.errors import GatewayError, ModelNotFound
from tracker_service.frame_sampler import FrameSampler
from tracker_service.metrics import GatewayMetrics
from tracker_service.recorder import RequestRecorder
from tracker_service.routing import CHALLENGER, CHAMPION, DEFAULT, EXPLICIT
from tracker_service.routing_follower import RoutingFollower
from tracker_service.settings import GatewaySettings
from tracker_service.shadow import ShadowMirror
from tracker_service.streams import Stream, StreamRegistry
from tracker_service.telemetry import annotate
from tracker_service.tracking import HistogramEmbedder, stream_frame_rate
from tracker_service.triton_client import DetectorClient
from tracker_service.version_stats import VersionStats
from tracker_service.webhooks import WebhookSender
from tracker_service.zones import (LineCount, LineSpec, StreamZones, ZoneCount, ZoneEvent,
                                   ZoneLimits, ZoneSpec, build_zones)

if TYPE_CHECKING:
    from tracker_service.reid_client import TritonEmbedder
    from tracker_service.tracking import Embedder

# The request's image bytes, read only once the request is admitted: a request refused for
# load or for a stale frame costs no upload.
ImageSource = Callable[[], Awaitable[bytes]]

zone_log = logging.getLogger(__name__)


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
    # The stream's zones and lines after this frame (empty when it has none), and the events
    # this frame caused.
    zones: list[ZoneCount] = field(default_factory=list)
    lines: list[LineCount] = field(default_factory=list)
    events: list[ZoneEvent] = field(default_factory=list)


class DetectionService:
    def __init__(self, settings: GatewaySettings, client: DetectorClient,
                 routing: RoutingFollower, streams: StreamRegistry,
                 embedder: Embedder | TritonEmbedder, drift: DriftSampler | None,
                 metrics: GatewayMetrics, webhooks: WebhookSender | None = None,
                 frames: FrameSampler | None = None) -> None:
        self.settings = settings
        self.client = client
        self.routing = routing
        self.streams = streams
        self.embedder = embedder
        self.drift = drift
        self.metrics = metrics
        self.webhooks = webhooks
        self.frames = frames
        # A stream deleted or evicted (also by the registry itself, to make room) takes its
        # zones' series with it.
        streams.on_drop = metrics.zones.forget
        self.recorder = RequestRecorder(metrics)
        self.pipeline = DetectionPipeline(settings, client, self.recorder)
        # Raw per-version samples for the control plane's canary analysis (version_stats.py).
        self.version_stats = VersionStats.from_settings(settings)
        # Shadow traffic (shadow.py): shed while the gateway holds many client requests.
        self.shadow = ShadowMirror(settings, client, metrics.shadow,
                                   busy=lambda: self.pipeline.pending)

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
                self._check_zones_fit(stream, d.width, d.height)
                tracks = stream.tracker.update(d.as_array(), embeddings)
                self.version_stats.tracked(d.model_version, stream_id, tracks)
                step.tracks(len(tracks))
                stream.frame_size = (d.width, d.height)
                tracked = self._zone_events(stream, TrackedFrame(stream_id, frame_no, d, tracks))
            stream.frames_applied += 1
            stream.tracks_reported = len(tracks)
            d.timings_ms["track"] = round(step.seconds * 1000, 3)
        self.recorder.streams(self.streams)
        return tracked

    def set_zones(self, stream_id: str, zones: list[ZoneSpec],
                  lines: list[LineSpec]) -> StreamZones:
        """Replace a stream's zones and lines (their counts start again from 0); InvalidRequest
        names a problem with them, StreamNotFound when the stream has had no frame yet. When
        the stream's frame size is not known yet (its first frame still in flight), points are
        checked against the first frame's size (`_check_zones_fit`)."""
        stream = self.streams.get(stream_id)
        s = self.settings
        state = build_zones(
            zones, lines, ZoneLimits(s.zone_max_zones, s.zone_max_lines, s.zone_max_points,
                                     s.max_stream_id_length),
            stream_frame_rate(stream.frame_rate), stream.frame_size,
            min_frames=s.zone_min_frames, absent_s=s.zone_absent_s)
        stream.zones = state
        self.metrics.zones.configure(stream_id, [z.id for z in state.zone_specs],
                                     [ln.id for ln in state.line_specs])
        zone_log.info("zones of stream %s set: %d zones, %d lines", stream_id,
                      len(state.zones), len(state.lines),
                      extra={"event": "zones_set", "stream_id": stream_id,
                             "zones": [z.id for z in state.zone_specs],
                             "lines": [ln.id for ln in state.line_specs]})
        return state

    def stream_zones(self, stream_id: str) -> StreamZones | None:
        """A stream's zones and lines, None when it has none (StreamNotFound: no stream)."""
        return self.streams.get(stream_id).zones

    def clear_zones(self, stream_id: str) -> None:
        self.streams.get(stream_id).zones = None
        self.metrics.zones.forget(stream_id)

    def _check_zones_fit(self, stream: Stream, width: int, height: int) -> None:
        """Zones set before the stream's frame size was known are checked at its first frame:
        when a point lies outside, that frame is refused with 422 naming the zone or line (its
        tracker is not updated) and the zones are removed, so the next frames go on without
        them until the client sets zones that fit."""
        if stream.zones is None or stream.frame_size is not None:
            return
        problem = stream.zones.outside(width, height)
        if problem is not None:
            self.clear_zones(stream.stream_id)
            zone_log.warning("zones of stream %s removed: %s", stream.stream_id,
                             problem.message, extra={"event": "zones_removed",
                                                     "stream_id": stream.stream_id})
            raise problem

    def _zone_events(self, stream: Stream, tracked: TrackedFrame) -> TrackedFrame:
        """The frame's tracks through the stream's zones and lines: counts and events in the
        result, in Prometheus, in the logs and to the webhooks."""
        zones = stream.zones
        if zones is None:
            return tracked
        events = zones.update(tracked.frame, tracked.tracks)
        tracked.zones, tracked.lines, tracked.events = (zones.zone_counts(),
                                                        zones.line_counts(), events)
        self.metrics.zones.observe(stream.stream_id, events,
                                   {c.id: c.occupancy for c in tracked.zones})
        if not events:
            return tracked
        annotate(zone_events=len(events))
        bodies = [e.as_dict() for e in events]
        for e, body in zip(events, bodies):
            zone_log.info("%s %s track %d", e.type, e.shape, e.track_id,
                          extra={"event": e.type, "stream_id": stream.stream_id,
                                 **{k: v for k, v in body.items() if k != "type"}})
        if self.webhooks is not None and self.webhooks.enabled:
            ctx = trace.get_current_span().get_span_context()
            self.webhooks.send("zone_events", {
                "stream_id": stream.stream_id, "frame": tracked.frame,
                "t_s": events[0].t_s,
                "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else "",
                "events": bodies,
                "zones": [{"id": c.id, "occupancy": c.occupancy, "entries": c.entries,
                           "exits": c.exits} for c in tracked.zones],
                "lines": [{"id": c.id, "in": c.inward, "out": c.outward}
                          for c in tracked.lines]})
        return tracked

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
        if role == CHAMPION:  # mirrored in the background: the client never waits for it
            shadow = self.routing.current.mirror_to(version)
            if shadow:
                self.shadow.offer(d, opts, shadow)
        # Frames kept for labelling (never blocks: a full queue drops the frame, counted).
        if self.frames is not None:
            self.frames.offer(data, d, stream_id)
        return d

    async def _detect(self, data: bytes, opts: DetectOptions) -> Detections:
        try:
            d = await self.pipeline.detect(data, opts)
        except GatewayError as exc:
            if exc.status_code >= 500 and opts.version:  # the version's failure, not the client's
                self.version_stats.failed(opts.version)
            raise
        self.recorder.detected(d, len(data))
        self.version_stats.answered(d.model_version, d.stages.postprocess - d.stages.infer,
                                    d.scores)
        # Drift features of sampled requests (never blocks: a full buffer drops the sample).
        if self.drift is not None:
            self.drift.offer(d.image, d.scores, d.image_boxes(), conf=opts.conf,
                             classes=opts.classes, max_det=opts.max_det,
                             model_version=d.model_version)
        return d

    async def _embed(self, d: Detections) -> np.ndarray:
        """Appearance embeddings of the detections, from the configured embedder."""
        rgb, boxes = cv2.cvtColor(d.image, cv2.COLOR_BGR2RGB), d.image_boxes()
        if isinstance(self.embedder, HistogramEmbedder):
            return await to_thread.run_sync(self.embedder.embed, rgb, boxes)
        return await self.embedder.embed(rgb, boxes)
