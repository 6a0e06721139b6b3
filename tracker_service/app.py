"""The Litestar gateway: route handlers translate HTTP to a service call, nothing more.

A handler parses the query and names the body, calls one `DetectionService` method (service.py,
given through `Provide`, built in the lifespan) and builds the response struct. Typed errors
(errors.py) are mapped to JSON once, here; what to detect with and how a stream's frames are
ordered is decided in the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Litestar, MediaType, Request, Response, delete, get, post, put
from litestar.datastructures import State, UploadFile
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter
from prometheus_client import CONTENT_TYPE_LATEST

from tracker_service.decode import check_media_type
from tracker_service.demo import demo_router
from tracker_service.detection import DetectOptions, Detections
from tracker_service.drift_sampler import DriftSampler
from tracker_service.errors import GatewayError, InvalidRequest
from tracker_service.frame_sampler import FrameSampler
from tracker_service.metrics import GatewayMetrics
from tracker_service.recorder import RequestRecorder
from tracker_service.routing_follower import RoutingFollower
from tracker_service.service import DetectionService
from tracker_service.settings import GatewaySettings
from tracker_service.streams import StreamRegistry
from tracker_service.telemetry import (request_telemetry, setup_logging, setup_tracing,
                                       status_recorder)
from tracker_service.tracking import (OUT_AGE, OUT_CLASS, OUT_ID, OUT_SCORE, OUT_STATE,
                                      HistogramEmbedder, TrackState)
from tracker_service.triton_client import DetectorClient
from tracker_service.version_stats import require_internal_token
from tracker_service.webhooks import WebhookSender
from tracker_service.zones import LineSpec, StreamZones, ZoneSpec


class Detection(msgspec.Struct):
    box: list[float]  # x1, y1, x2, y2 in original image pixels
    class_id: int
    class_name: str
    score: float


class ImageSize(msgspec.Struct):
    width: int
    height: int


class ModelRef(msgspec.Struct):
    name: str
    version: str


class DetectResponse(msgspec.Struct):
    model: ModelRef
    image: ImageSize
    detections: list[Detection]
    timings_ms: dict[str, float]


def detections_body(d: Detections) -> list[Detection]:
    return [
        Detection([round(float(v), 2) for v in box], int(c), d.model.names.get(int(c), str(c)),
                  round(float(s), 5))
        for box, s, c in zip(d.boxes, d.scores, d.classes)
    ]


def parse_classes(classes: str | None) -> tuple[int, ...] | None:
    if not classes:
        return None
    try:
        return tuple(int(c) for c in classes.split(","))
    except ValueError:
        raise InvalidRequest("classes must be comma-separated class ids, e.g. 0,2,5",
                             classes=classes) from None


async def read_image(request: Request) -> bytes:
    """The image bytes: a raw image/* body, or the first file of a multipart form."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise InvalidRequest("multipart body has no file part (send the image as `file`)")
        return await files[0].read()
    check_media_type(content_type)
    return await request.body()


Conf = Annotated[float, Parameter(ge=0.0, le=1.0, description="confidence threshold")]
Iou = Annotated[float, Parameter(ge=0.0, le=1.0, description="NMS IoU threshold")]
MaxDet = Annotated[int, Parameter(ge=1, le=1000, description="max detections returned")]
Classes = Annotated[str | None, Parameter(description="comma-separated class ids to keep")]
Version = Annotated[str, Parameter(pattern=r"^[0-9]*$", max_length=9,
                                   description="model version; empty = the serving default")]


def detect_options(conf: float, iou: float, max_det: int, classes: str | None,
                   version: str) -> DetectOptions:
    return DetectOptions(conf, iou, max_det, parse_classes(classes), version)


@post("/v1/detect", status_code=200, summary="Detect objects in one image",
      description="Body: a raw image/jpeg, image/png or image/webp, or multipart/form-data with "
                  "a file part. Boxes are xyxy in the original image's pixels.")
async def detect(request: Request, service: DetectionService, conf: Conf = 0.25, iou: Iou = 0.7,
                 max_det: MaxDet = 300, classes: Classes = None,
                 version: Version = "") -> DetectResponse:
    opts = detect_options(conf, iou, max_det, classes, version)
    d = await service.detect(lambda: read_image(request), opts)
    return DetectResponse(ModelRef(d.model.name, d.model_version), ImageSize(d.width, d.height),
                          detections_body(d), d.timings_ms)


class Track(msgspec.Struct):
    track_id: int
    box: list[float]
    class_id: int
    class_name: str
    score: float
    age: int  # frames since the track was born
    state: str  # tentative | confirmed | lost


class ZoneCountBody(msgspec.Struct):
    id: str
    occupancy: int  # tracks inside now
    entries: int
    exits: int


class LineCountBody(msgspec.Struct):
    id: str
    inward: int = msgspec.field(name="in")  # crossings from the line's right to its left
    outward: int = msgspec.field(name="out")


class ZoneEventBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str  # zone_enter | zone_exit | line_cross
    zone: str | None = None  # zone events
    line: str | None = None  # line events
    track_id: int
    frame: int
    t_s: float  # frame / the stream's frame rate
    direction: str | None = None  # line_cross: in | out
    dwell_s: float | None = None  # zone_exit: seconds inside


class FrameResponse(msgspec.Struct):
    stream_id: str
    frame: int
    model: ModelRef
    image: ImageSize
    detections: list[Detection]
    tracks: list[Track]
    timings_ms: dict[str, float]
    zones: list[ZoneCountBody]  # empty when the stream has no zones
    lines: list[LineCountBody]
    events: list[ZoneEventBody]  # what this frame's tracks did in them


def tracks_body(tracks, names: dict[int, str]) -> list[Track]:
    return [
        Track(int(t[OUT_ID]), [round(float(v), 2) for v in t[:4]], int(t[OUT_CLASS]),
              names.get(int(t[OUT_CLASS]), str(int(t[OUT_CLASS]))), round(float(t[OUT_SCORE]), 5),
              int(t[OUT_AGE]), TrackState(int(t[OUT_STATE])).name.lower())
        for t in tracks
    ]


@post("/v1/streams/{stream_id:str}/frames", status_code=200, summary="Track one frame",
      description="Body as /v1/detect. `frame` (optional) orders the stream's frames; frames "
                  "not newer than the last one get 409. The default `conf` is low (0.1) so the "
                  "tracker's second association stage sees low-score detections.")
async def stream_frame(request: Request, service: DetectionService, stream_id: str,
                       frame: Annotated[int | None, Parameter(ge=0)] = None,
                       fps: Annotated[float | None, Parameter(
                           gt=0, le=1000, description="the stream's frame rate, fixed when the "
                           "stream is created (default 30): trackers' time constants are "
                           "seconds")] = None,
                       conf: Conf = 0.1, iou: Iou = 0.7, max_det: MaxDet = 300,
                       classes: Classes = None, version: Version = "") -> FrameResponse:
    opts = detect_options(conf, iou, max_det, classes, version)
    t = await service.track(stream_id, frame, lambda: read_image(request), opts, fps)
    d = t.detections
    return FrameResponse(stream_id, t.frame, ModelRef(d.model.name, d.model_version),
                         ImageSize(d.width, d.height), detections_body(d),
                         tracks_body(t.tracks, d.model.names), d.timings_ms,
                         [ZoneCountBody(c.id, c.occupancy, c.entries, c.exits) for c in t.zones],
                         [LineCountBody(c.id, c.inward, c.outward) for c in t.lines],
                         [msgspec.convert(e.as_dict(), ZoneEventBody) for e in t.events])


class ZoneIn(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    polygon: list[tuple[float, float]]  # [[x, y], ...] in the stream's frame pixels


class LineIn(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    start: tuple[float, float]
    end: tuple[float, float]


class ZonesIn(msgspec.Struct, forbid_unknown_fields=True):
    zones: list[ZoneIn] = []
    lines: list[LineIn] = []


class ZoneState(msgspec.Struct):
    id: str
    polygon: list[tuple[float, float]]
    occupancy: int
    entries: int
    exits: int


class LineState(msgspec.Struct):
    id: str
    start: tuple[float, float]
    end: tuple[float, float]
    inward: int = msgspec.field(name="in")
    outward: int = msgspec.field(name="out")


class ZonesResponse(msgspec.Struct):
    stream_id: str
    zones: list[ZoneState]
    lines: list[LineState]


def zones_body(stream_id: str, state: StreamZones | None) -> ZonesResponse:
    if state is None:
        return ZonesResponse(stream_id, [], [])
    zones = [ZoneState(z.id, list(z.polygon), c.occupancy, c.entries, c.exits)
             for z, c in zip(state.zone_specs, state.zone_counts())]
    lines = [LineState(ln.id, ln.start, ln.end, c.inward, c.outward)
             for ln, c in zip(state.line_specs, state.line_counts())]
    return ZonesResponse(stream_id, zones, lines)


@put("/v1/streams/{stream_id:str}/zones", status_code=200, summary="Set a stream's zones and lines",
     description="Body: {\"zones\": [{\"id\", \"polygon\": [[x, y], ...]}], \"lines\": "
                 "[{\"id\", \"start\": [x, y], \"end\": [x, y]}]} in the frame's pixels. "
                 "Replaces the stream's zones and lines and starts their counts from 0. 422 "
                 "names a problem (self-intersecting polygon, too few or many points, too "
                 "many zones, a point outside the frame, a duplicate id, a zero-length line); "
                 "404 when the stream has had no frame yet.")
async def put_zones(request: Request, service: DetectionService,
                    stream_id: str) -> ZonesResponse:
    try:
        body = msgspec.json.decode(await request.body(), type=ZonesIn)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"zones body: {exc}", problem="invalid_body") from None
    state = service.set_zones(
        stream_id, [ZoneSpec(z.id, tuple(z.polygon)) for z in body.zones],
        [LineSpec(ln.id, ln.start, ln.end) for ln in body.lines])
    return zones_body(stream_id, state)


@get("/v1/streams/{stream_id:str}/zones", summary="A stream's zones and lines, with counts")
async def get_zones(service: DetectionService, stream_id: str) -> ZonesResponse:
    return zones_body(stream_id, service.stream_zones(stream_id))


@delete("/v1/streams/{stream_id:str}/zones", status_code=204,
        summary="Remove a stream's zones and lines")
async def delete_zones(service: DetectionService, stream_id: str) -> None:
    service.clear_zones(stream_id)


@delete("/v1/streams/{stream_id:str}", status_code=204, summary="Forget a stream's tracks")
async def delete_stream(service: DetectionService, stream_id: str) -> None:
    service.forget(stream_id)


@get("/healthz", summary="Liveness: the gateway process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: the detector is ready in Triton",
     description="503 with a `reason` while not ready: what the stack is waiting for (for "
                 "example the bootstrap training's epoch and time left), else why Triton "
                 "does not serve the detector.")
async def readyz(service: DetectionService) -> Response[dict]:
    readiness = await service.readiness()
    if readiness.ready:
        return Response({"status": "ready", "model": service.model_name})
    return Response({"status": "not_ready", "model": service.model_name,
                     "reason": readiness.reason}, status_code=503,
                    headers={"Retry-After": str(service.settings.retry_after_s)})


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(service: DetectionService) -> Response[bytes]:
    return Response(await service.scrape(), media_type=CONTENT_TYPE_LATEST)


@get("/v1/internal/version-stats", guards=[require_internal_token],
     summary="Per-version samples since `since` (Unix s), for the control plane's canary "
             "analysis (internal)")
async def version_stats(service: DetectionService,
                        since: Annotated[float, Parameter(ge=0)] = 0.0) -> dict:
    return service.version_stats.snapshot(since)


@get("/v1/internal/shadow-stats", guards=[require_internal_token],
     summary="Per shadow version, the comparisons' sums from `since` to `until` (Unix s; "
             "default now), for the control plane's canary analysis (internal)")
async def shadow_stats(service: DetectionService,
                       since: Annotated[float, Parameter(ge=0)] = 0.0,
                       until: Annotated[float | None, Parameter(ge=0)] = None) -> dict:
    return service.shadow.stats.snapshot(since, until)


def _error_response(request: Request, status: int, body: dict,
                    headers: dict | None = None) -> Response:
    request.app.state.recorder.error(body["error"]["code"], body["error"].get("message"))
    return Response(body, status_code=status, headers=headers or {},
                    media_type=MediaType.JSON)


def on_gateway_error(request: Request, exc: GatewayError) -> Response:
    return _error_response(request, exc.status_code, exc.body(), exc.headers)


def on_validation_error(request: Request, exc: ValidationException) -> Response:
    return _error_response(request, 400, {"error": {
        "code": "invalid_parameter", "message": exc.detail, "details": exc.extra}})


def on_http_error(request: Request, exc: HTTPException) -> Response:
    code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error")
    return _error_response(request, exc.status_code,
                           {"error": {"code": code, "message": exc.detail}})


def on_unexpected(request: Request, exc: Exception) -> Response:
    request.logger.exception("unhandled error")
    return _error_response(request, 500, {"error": {
        "code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}})


def make_embedder(settings: GatewaySettings):
    if settings.embedder == "histogram":
        return HistogramEmbedder()
    if settings.embedder == "triton":
        from tracker_service.reid_client import TritonEmbedder

        return TritonEmbedder(settings.triton_grpc_url, settings.reid_model_name,
                              settings.triton_timeout_s)
    raise ValueError(f"unknown embedder {settings.embedder!r}: histogram or triton")


async def evict_idle_streams(service: DetectionService) -> None:
    while True:
        await asyncio.sleep(max(0.5, min(30.0, service.streams.ttl_s / 4)))
        service.evict_idle()


def provide_service(state: State) -> DetectionService:
    return state.service


def create_app(settings: GatewaySettings | None = None) -> Litestar:
    settings = settings or GatewaySettings()
    gateway_metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = DetectorClient(
            settings.triton_grpc_url, settings.model_name, settings.triton_timeout_s,
            settings.retry_after_s,
            # A region per Triton call in flight: the clients' and the shadow workers'.
            shared_memory_slots=(settings.max_triton_in_flight + settings.shadow_concurrency
                                 if settings.shared_memory else 0),
            max_image_bytes=settings.imgsz * settings.imgsz * 3)
        drift = DriftSampler(settings, gateway_metrics)
        drift.start()
        streams = StreamRegistry(settings.tracker, settings.stream_ttl_s, settings.max_streams,
                                 settings.max_stream_id_length)
        embedder = make_embedder(settings)
        routing = RoutingFollower(settings, gateway_metrics)
        await routing.start()
        webhooks = WebhookSender(
            settings.webhook_url_list, settings.webhook_secret,
            timeout_s=settings.webhook_timeout_s, queue_size=settings.webhook_queue,
            retries=settings.webhook_retries, backoff_s=settings.webhook_backoff_s,
            on_outcome=lambda outcome: gateway_metrics.webhooks.labels(outcome).inc(),
            user_agent="visionguard-gateway")
        await webhooks.start()
        frames = FrameSampler(settings, gateway_metrics)
        frames.start()
        app.state.service = DetectionService(settings, client, routing, streams, embedder, drift,
                                             gateway_metrics, webhooks, frames=frames)
        evictor = asyncio.create_task(evict_idle_streams(app.state.service))
        try:
            yield
        finally:
            evictor.cancel()
            await app.state.service.shadow.close()
            await webhooks.close()
            await frames.close()
            await drift.close()
            await routing.close()
            if hasattr(embedder, "close"):
                await embedder.close()
            await client.close()

    app = Litestar(
        route_handlers=[detect, stream_frame, delete_stream, put_zones, get_zones, delete_zones,
                        healthz, readyz, metrics, version_stats, shadow_stats,
                        demo_router()],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={
            GatewayError: on_gateway_error,
            ValidationException: on_validation_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        openapi_config=OpenAPIConfig(title="VisionGuard gateway", version="0.1.0",
                                     path="/schema"),
        request_max_body_size=settings.max_body_bytes,
        middleware=[request_telemetry("gateway"), _timing_middleware],
    )
    setup_logging("gateway", settings.log_level)  # after Litestar(), which sets its own up
    setup_tracing("gateway", otlp_endpoint=settings.otlp_traces_endpoint,
                  otlp_protocol=settings.otlp_protocol,
                  spans_file=Path(settings.traces_file) if settings.traces_file else None)
    app.state.settings = settings
    app.state.metrics = gateway_metrics
    app.state.recorder = RequestRecorder(gateway_metrics)
    return app


def _timing_middleware(app):
    """Request duration by route template and status, for every response."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        send_wrapper, status = status_recorder(send)
        try:
            await app(scope, receive, send_wrapper)
        finally:
            handler = scope.get("route_handler")
            route = next(iter(handler.paths)) if handler is not None else "unmatched"
            recorder: RequestRecorder = scope["app"].state.recorder
            recorder.request(route, status["code"], time.perf_counter() - start)

    return middleware
