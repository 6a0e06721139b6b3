"""Drift over HTTP: gateways post features, people check, read reports and approve retraining.

    POST /v1/drift/features                       gateway   a batch of feature samples
    GET  /v1/drift/status                         reader or gateway: window, the last result
    POST /v1/drift/check?version=                 reader    run a check now (also periodic)
    GET  /v1/drift/report?format=html|png         reader    reference vs live, per feature
    GET  /v1/drift/retraining                     reader    retraining requests
    POST /v1/drift/retraining/{id}/approve|reject release   a person's decision

A reader is a person's token (viewer, release or sre: control_plane/auth.py's READERS).
The lifespan runs the periodic check (every `VG_DRIFT_CHECK_INTERVAL_S`) in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio.to_thread
import msgspec
import numpy as np
from litestar import Litestar, MediaType, Request, Response, Router, get, post

from control_plane.errors import ControlPlaneError, NotFound
from control_plane.auth import READERS, principal_of, requires
from control_plane.drift.monitor import DriftError, DriftMonitor
from control_plane.settings import Settings
from tracker_service.drift_features import FEATURES

log = logging.getLogger("visionguard.drift")

MAX_BATCH = 2000


class InvalidFeatures(ControlPlaneError):
    status_code = 422
    code = "invalid_features"


class Sample(msgspec.Struct, forbid_unknown_fields=True):
    values: list[float]
    model_version: str = ""


class FeatureBatch(msgspec.Struct, forbid_unknown_fields=True):
    feature_names: list[str]
    samples: list[Sample]
    model: str = ""


def monitor(request: Request) -> DriftMonitor:
    m = getattr(request.app.state, "drift", None)
    if m is None:  # the app was built without its lifespan
        m = request.app.state.drift = DriftMonitor(request.app.state.settings,
                                                   request.app.state.metrics)
    return m


def validated(batch: FeatureBatch) -> tuple[np.ndarray, list[str]]:
    if list(batch.feature_names) != list(FEATURES):
        raise InvalidFeatures("feature_names differ from the control plane's feature set "
                              "(gateway and control plane versions differ?)",
                              expected=list(FEATURES), got=list(batch.feature_names)[:50])
    if not 1 <= len(batch.samples) <= MAX_BATCH:
        raise InvalidFeatures(f"a batch holds 1 to {MAX_BATCH} samples",
                              samples=len(batch.samples))
    for i, s in enumerate(batch.samples):
        if len(s.values) != len(FEATURES):
            raise InvalidFeatures(f"sample {i} has {len(s.values)} values, expected "
                                  f"{len(FEATURES)}", sample=i)
        if not all(math.isfinite(v) for v in s.values):
            raise InvalidFeatures(f"sample {i} has a non-finite value", sample=i)
        if len(s.model_version) > 32:
            raise InvalidFeatures(f"sample {i}: model_version is too long", sample=i)
    values = np.array([s.values for s in batch.samples], np.float32)
    return values, [s.model_version for s in batch.samples]


@post("/v1/drift/features", guards=[requires("gateway")], status_code=202,
      summary="Gateways send a batch of drift feature samples")
async def post_features(request: Request, data: FeatureBatch) -> dict:
    values, versions = validated(data)
    m = monitor(request)
    m.receive(values, versions)
    return {"accepted": len(versions), "window": len(m.window)}


@get("/v1/drift/status", guards=[requires(*READERS, "gateway")],
     summary="Live window and the last check")
async def status(request: Request) -> dict:
    m = monitor(request)
    s = m.settings
    return {"window": len(m.window), "window_size": s.drift_window,
            "min_samples": s.drift_min_samples, "check_interval_s": s.drift_check_interval_s,
            "p_value": s.drift_p_value, "retrain_on_drift": s.drift_retrain_on_drift,
            "features": list(FEATURES),
            "last": m.last.to_dict() if m.last is not None else None}


def _run_check(m: DriftMonitor, version: str | None) -> dict:
    return m.check(version or None).to_dict()


@post("/v1/drift/check", guards=[requires()], status_code=200,
      summary="Compare the live window with the champion's reference window now")
async def check(request: Request, version: str = "") -> dict:
    if version and not version.isdigit():
        raise ControlPlaneError("version must be a number", version=version)
    return await anyio.to_thread.run_sync(_run_check, monitor(request), version)


@get("/v1/drift/report", guards=[requires()],
     summary="Reference against live distributions per feature (html or png)")
async def report(request: Request, format: str = "html", version: str = "") -> Response:
    from control_plane.drift.report import render_html, render_png

    if format not in ("html", "png"):
        raise ControlPlaneError("format must be html or png", format=format)
    if version and not version.isdigit():
        raise ControlPlaneError("version must be a number", version=version)
    m = monitor(request)

    def build() -> bytes:
        result = m.compare(version or None)
        ref, _ = m.detector(result.version)
        live = m.window.features(ref.version)
        render = render_html if format == "html" else render_png
        return render(ref.features, live, result.to_dict())

    body = await anyio.to_thread.run_sync(build)
    return Response(body, media_type=MediaType.HTML if format == "html" else "image/png")


@get("/v1/drift/retraining", guards=[requires()], summary="Retraining requests")
async def retraining(request: Request) -> dict:
    return {"requests": monitor(request).retraining.all()}


def _decide(request: Request, request_id: str, state: str) -> dict:
    m = monitor(request)
    try:
        decided = m.retraining.decide(request_id, state, principal_of(request).name)
    except KeyError:
        raise NotFound(f"no retraining request {request_id}") from None
    m.metrics.drift_retraining_pending.set(
        sum(1 for r in m.retraining.all() if r["state"] == "pending"))
    log.warning("retraining request %s", state, extra={"event": f"drift_retraining_{state}",
                                                        **decided})
    return decided


@post("/v1/drift/retraining/{request_id:str}/approve", guards=[requires("release")],
      status_code=200, summary="A person approves a retraining request")
async def approve(request: Request, request_id: str) -> dict:
    return _decide(request, request_id, "approved")


@post("/v1/drift/retraining/{request_id:str}/reject", guards=[requires("release")],
      status_code=200, summary="A person rejects a retraining request")
async def reject(request: Request, request_id: str) -> dict:
    return _decide(request, request_id, "rejected")


def router(settings: Settings) -> Router:
    return Router(path="/", route_handlers=[post_features, status, check, report, retraining,
                                            approve, reject], tags=["drift"])


async def periodic_checks(app: Litestar) -> None:
    m: DriftMonitor = app.state.drift
    interval = m.settings.drift_check_interval_s
    while True:
        await asyncio.sleep(interval)
        if len(m.window) < m.settings.drift_min_samples:
            continue
        try:
            await anyio.to_thread.run_sync(m.check)
        except DriftError as exc:
            log.info("periodic drift check skipped: %s", exc,
                     extra={"event": "drift_check_skipped"})
        except Exception:  # logged by the monitor; the next period tries again
            pass


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.drift = DriftMonitor(app.state.settings, app.state.metrics)
    task = None
    if app.state.settings.drift_check_interval_s > 0:
        task = asyncio.create_task(periodic_checks(app), name="drift-checks")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
