"""The control plane's HTTP API (Litestar): handlers translate HTTP to a library call.

Every route but /healthz, /metrics and the console's static files (/console) needs a bearer
token (control_plane.auth). Each wing's routes are one module listed in `FEATURES`: its
`router(settings) -> Router` gives the routes, and an optional `lifespan(app)` async context
manager opens what they need at run time (put on `app.state`) and closes it. Refusals are
`control_plane.errors` types, mapped to JSON here once. This is the top of the API: no wing
imports it.
"""

from __future__ import annotations

from litestar import Litestar, MediaType, Request, Response, get
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane import console
from control_plane.api.metrics import ControlPlaneMetrics
from control_plane.auth import TokenStore
from control_plane.drift import routes as drift_routes
from control_plane.errors import ControlPlaneError
from control_plane.logs import receiver
from control_plane.logs import routes as logs_routes
from control_plane.releases import routes as release_routes
from control_plane.settings import Settings
from tracker_service.telemetry import request_telemetry, setup_logging, setup_tracing


def _error(request: Request, status: int, body: dict) -> Response:
    request.app.state.metrics.api_errors.labels(body["error"]["code"]).inc()
    return Response(body, status_code=status, media_type=MediaType.JSON)


def on_control_plane_error(request: Request, exc: ControlPlaneError) -> Response:
    return _error(request, exc.status_code, exc.body())


def on_validation_error(request: Request, exc: ValidationException) -> Response:
    return _error(request, 400, {"error": {
        "code": "invalid_parameter", "message": exc.detail, "details": exc.extra}})


def on_http_error(request: Request, exc: HTTPException) -> Response:
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code,
                                                                      "http_error")
    return _error(request, exc.status_code, {"error": {"code": code, "message": exc.detail}})


def on_unexpected(request: Request, exc: Exception) -> Response:
    request.logger.exception("unhandled error")
    return _error(request, 500, {"error": {
        "code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}})


@get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response[bytes]:
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


# The wings the API serves: each gives `router(settings)` and may give a `lifespan`.
FEATURES = (release_routes, receiver, logs_routes, drift_routes, console)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    # Its own spans go straight to the traces file the OTLP receiver writes (control_plane/logs/receiver.py).
    setup_tracing("control-plane", spans_file=settings.traces_file)
    routers = [m.router(settings) for m in FEATURES]
    app = Litestar(
        route_handlers=[healthz, metrics, *routers],
        exception_handlers={
            ControlPlaneError: on_control_plane_error,
            ValidationException: on_validation_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        openapi_config=OpenAPIConfig(title="VisionGuard control plane", version="0.1.0",
                                     path="/schema"),
        lifespan=[m.lifespan for m in FEATURES if hasattr(m, "lifespan")],
        middleware=[request_telemetry("control-plane", quiet_paths=(
            # Machine feeds: scrapes, probes, spans, the gateways' routing polls and drift
            # feature batches. Logged only when they fail.
            "/metrics", "/healthz", "/v1/traces", "/v1/routing", "/v1/drift/features"))],
    )
    try:  # mlflow sets up its own log handler when imported: import it first, adopt it below
        import mlflow  # noqa: F401
    except ImportError:  # pragma: no cover - the mlflow extra is not installed
        pass
    setup_logging("control-plane")  # after Litestar(): it installs a root handler of its own
    app.state.settings = settings
    app.state.tokens = TokenStore(settings.tokens_file)
    app.state.metrics = ControlPlaneMetrics(status_file=settings.status_file)
    return app
