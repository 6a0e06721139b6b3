"""Registry and release routes: list, show, compare, report, register, quantize, promote,
canary, shadow, rollback.

Reads need a person's token (viewer, release or sre; a gateway's token reads only the
routing); changes need the `release` role. Long operations (register, quantize, promote,
canary) run in a worker thread and answer when done, with every step's result.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import msgspec
from anyio import to_thread
from litestar import Litestar, Request, Response, Router, get, post
from litestar.params import Parameter

from control_plane.auth import READERS, principal_of, requires
from control_plane.errors import ControlPlaneError
from control_plane.releases.audit import AuditLog
from control_plane.releases.canary_analysis import CanaryAnalyst
from control_plane.releases.metrics import ReleaseCollector
from control_plane.releases.promoter import Promoter
from control_plane.releases.registry import Registry, RegistryError
from control_plane.settings import Settings

VersionPath = Annotated[str, Parameter(pattern=r"^[0-9]{1,9}$", description="model version")]


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    checkpoint: str  # an Ultralytics .pt on the control plane's filesystem
    eval_data: str | None = None  # a YOLO data.yaml; default: the champion's evaluation data
    description: str = ""


class QuantizeBody(msgspec.Struct, forbid_unknown_fields=True):
    # Images of the version's training data to calibrate with; default
    # VG_QUANTIZE_CALIBRATION_IMAGES, at least VG_QUANTIZE_MIN_CALIBRATION_IMAGES.
    calibration_images: Annotated[int, msgspec.Meta(gt=0, le=100_000)] | None = None


class CanaryBody(msgspec.Struct, forbid_unknown_fields=True):
    percent: Annotated[float, msgspec.Meta(gt=0, le=100)]
    # Automated analysis (canary_analysis.py): promote or abort by itself after `window_s`
    # seconds of live traffic (default VG_CANARY_WINDOW_S, within its configured limits).
    auto: bool = False
    window_s: float | None = None


class ShadowBody(msgspec.Struct, forbid_unknown_fields=True):
    percent: Annotated[float, msgspec.Meta(gt=0, le=100)]  # and at most VG_SHADOW_MAX_PERCENT


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    to: str | None = None


def _actor(request: Request) -> str:
    return f"token:{principal_of(request).name}"


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _run(request: Request, fn):
    """Run a release operation in a worker thread (its typed errors answer for themselves)."""
    return to_thread.run_sync(lambda: fn(Promoter(request.app.state.settings,
                                                  actor=_actor(request),
                                                  registry=_registry(request))))


@get("/v1/routing", guards=[requires(*READERS, "gateway")],
     summary="What gateways serve (polled by gateways)")
async def routing(request: Request) -> dict:
    cache = request.app.state.routing_cache
    now = time.monotonic()
    if cache.get("at", -1.0) + 0.25 < now:  # gateways poll every second: spare MLflow
        cache["value"] = (await to_thread.run_sync(_registry(request).routing)).as_dict()
        cache["at"] = now
    gateway = request.headers.get("x-gateway-id")
    if gateway:
        request.app.state.gateways[gateway] = {"revision": cache["value"]["revision"],
                                               "seen": time.time()}
    return cache["value"]


@get("/v1/models", guards=[requires()], summary="Registered versions with metrics and aliases")
async def list_versions(request: Request) -> dict:
    versions = await to_thread.run_sync(_registry(request).versions)
    return {"model": _registry(request).name, "versions": [v.as_dict() for v in versions]}


@get("/v1/models/compare", guards=[requires()], summary="Two versions side by side")
async def compare(request: Request, a: VersionPath, b: VersionPath) -> dict:
    return await to_thread.run_sync(_registry(request).compare, a, b)


@get("/v1/models/{version:str}", guards=[requires()], summary="One version")
async def show(request: Request, version: VersionPath) -> dict:
    return (await to_thread.run_sync(_registry(request).get, version)).as_dict()


@get("/v1/models/{version:str}/report", guards=[requires()],
     summary="The version's release report: HTML, or PDF with ?format=pdf")
async def report(request: Request, version: VersionPath, format: str = "html") -> Response:
    from control_plane.reports.report import MEDIA_TYPES, build_report

    if format not in MEDIA_TYPES:
        raise ControlPlaneError("format must be html or pdf", format=format)
    built = await to_thread.run_sync(lambda: build_report(
        request.app.state.settings, version, name=_registry(request).name,
        pdf=format == "pdf"))
    return Response(built.content(format), media_type=MEDIA_TYPES[format], headers={
        "content-disposition": f'inline; filename="{built.model}-v{built.version}.{format}"'})


@post("/v1/models", guards=[requires("release")], status_code=201,
      summary="Register a checkpoint: evaluate, export ONNX, log to MLflow, new version")
async def register(request: Request, data: RegisterBody) -> dict:
    registry = _registry(request)

    def call():
        try:
            info = registry.register(Path(data.checkpoint), actor=_actor(request),
                                     eval_data=Path(data.eval_data) if data.eval_data else None,
                                     description=data.description)
        except RegistryError as exc:
            exc.details.setdefault("checkpoint", data.checkpoint)
            raise
        return info.as_dict()

    return await to_thread.run_sync(call)


@post("/v1/models/{version:str}/quantize", guards=[requires("release")], status_code=201,
      summary="An INT8 variant of a version (NNCF PTQ, OpenVINO IR), registered as a new version")
async def quantize(request: Request, version: VersionPath,
                   data: QuantizeBody | None = None) -> dict:
    from control_plane.releases.quantize import quantize_version

    count = data.calibration_images if data else None
    return (await to_thread.run_sync(lambda: quantize_version(
        request.app.state.settings, _registry(request), version, actor=_actor(request),
        calibration_images=count))).as_dict()


@post("/v1/models/{version:str}/promote", guards=[requires("release")], status_code=200,
      summary="Promote a version to champion (checks and gates first)")
async def promote(request: Request, version: VersionPath) -> dict:
    return (await _run(request, lambda p: p.promote(version))).as_dict()


@post("/v1/models/{version:str}/canary", guards=[requires("release")], status_code=200,
      summary="Start (or re-weight) a canary: the version gets percent% of streams")
async def canary(request: Request, version: VersionPath, data: CanaryBody) -> dict:
    if not data.auto:
        return (await _run(request, lambda p: p.canary(version, data.percent))).as_dict()
    analyst: CanaryAnalyst = request.app.state.canary

    def call() -> dict:
        promoter = Promoter(request.app.state.settings, actor=_actor(request),
                            registry=_registry(request))
        result, analysis = analyst.start(version, data.percent, data.window_s, _actor(request),
                                         lambda: promoter.canary(version, data.percent))
        return {**result.as_dict(), "analysis": analysis}

    return await to_thread.run_sync(call)


@get("/v1/models/{version:str}/canary", guards=[requires()],
     summary="The version's latest automated canary analysis: state, live numbers, decision")
async def canary_status(request: Request, version: VersionPath) -> dict:
    return await to_thread.run_sync(request.app.state.canary.status, version)


@get("/v1/canary/analysis", guards=[requires()],
     summary="The latest automated canary analysis")
async def canary_analysis(request: Request) -> dict:
    return await to_thread.run_sync(request.app.state.canary.status)


@post("/v1/canary/abort", guards=[requires("release")], status_code=200,
      summary="End the canary: all traffic back to the champion, the challenger unloads")
async def abort(request: Request) -> dict:
    return (await _run(request, lambda p: p.abort_canary())).as_dict()


@post("/v1/models/{version:str}/shadow", guards=[requires("release")], status_code=200,
      summary="Mirror percent% of the champion's requests to a version, compared in the gateways")
async def shadow(request: Request, version: VersionPath, data: ShadowBody) -> dict:
    return (await _run(request, lambda p: p.shadow(version, data.percent))).as_dict()


@post("/v1/shadow/stop", guards=[requires("release")], status_code=200,
      summary="End the shadow: no more mirrors; its version unloads")
async def stop_shadow(request: Request) -> dict:
    return (await _run(request, lambda p: p.stop_shadow())).as_dict()


@post("/v1/rollback", guards=[requires("release")], status_code=200,
      summary="Champion back to the previous version (or `to`)")
async def rollback(request: Request, data: RollbackBody | None = None) -> dict:
    to = data.to if data else None
    if to is not None and not to.isdigit():
        raise ControlPlaneError("`to` must be a version number", to=to)
    return (await _run(request, lambda p: p.rollback(to))).as_dict()


@get("/v1/audit", guards=[requires()], summary="The release audit log, newest last")
async def audit(request: Request,
                limit: Annotated[int, Parameter(ge=1, le=10_000)] = 100) -> dict:
    log = AuditLog(request.app.state.settings.audit_file)
    return {"entries": log.entries(limit)}


@get("/v1/gateways", guards=[requires()], summary="Gateways following the routing")
async def gateways(request: Request) -> dict:
    return {"gateways": request.app.state.gateways}


def router(settings: Settings) -> Router:
    return Router(path="/", route_handlers=[routing, list_versions, compare, show, report,
                                            register, quantize, promote, canary, canary_status,
                                            canary_analysis, abort, shadow,
                                            stop_shadow, rollback, audit,
                                            gateways])


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.registry = await to_thread.run_sync(Registry, app.state.settings)
    app.state.metrics.registry.register(ReleaseCollector(
        app.state.registry, app.state.settings.audit_file))
    app.state.routing_cache = {}
    app.state.gateways = {}
    # An analysis left active by a previous process is reported interrupted (canary_analysis).
    app.state.canary = CanaryAnalyst(app.state.settings, app.state.registry)
    await to_thread.run_sync(app.state.canary.recover)
    yield
    app.state.canary.close()
