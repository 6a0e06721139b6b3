"""The Litestar gateway: route handlers translate HTTP to a pipeline call, nothing more."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracker_service.decode import check_media_type
from tracker_service.detection import DetectionPipeline, DetectOptions, Detections
from tracker_service.errors import GatewayError, InvalidRequest
from tracker_service.metrics import GatewayMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.triton_client import DetectorClient


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
async def detect(request: Request, conf: Conf = 0.25, iou: Iou = 0.7, max_det: MaxDet = 300,
                 classes: Classes = None, version: Version = "") -> DetectResponse:
    pipeline: DetectionPipeline = request.app.state.pipeline
    opts = detect_options(conf, iou, max_det, classes, version)
    async with pipeline.admit():
        data = await read_image(request)
        d = await pipeline.detect(data, opts)
    return DetectResponse(ModelRef(d.model.name, d.model_version), ImageSize(d.width, d.height),
                          detections_body(d), d.timings_ms)


@get("/healthz", summary="Liveness: the gateway process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: the detector is ready in Triton")
async def readyz(request: Request) -> Response[dict]:
    client: DetectorClient = request.app.state.client
    if await client.ready():
        return Response({"status": "ready", "model": client.model})
    return Response({"status": "not_ready", "model": client.model}, status_code=503,
                    headers={"Retry-After": str(request.app.state.settings.retry_after_s)})


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response[bytes]:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _error_response(request: Request, status: int, body: dict, headers: dict | None = None,
                    kind: str = "") -> Response:
    request.app.state.metrics.errors.labels(kind or body["error"]["code"]).inc()
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


def create_app(settings: GatewaySettings | None = None) -> Litestar:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = DetectorClient(settings.triton_grpc_url, settings.model_name,
                                settings.triton_timeout_s, settings.retry_after_s)
        app.state.client = client
        app.state.pipeline = DetectionPipeline(settings, client, app.state.metrics)
        try:
            yield
        finally:
            await client.close()

    app = Litestar(
        route_handlers=[detect, healthz, readyz, metrics],
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
        middleware=[_timing_middleware],
    )
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    return app


def _timing_middleware(app):
    """Request duration by route template and status, for every response."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            handler = scope.get("route_handler")
            route = next(iter(handler.paths)) if handler is not None else "unmatched"
            metrics: GatewayMetrics = scope["app"].state.metrics
            metrics.requests.labels(route, str(status["code"])).observe(
                time.perf_counter() - start)

    return middleware
