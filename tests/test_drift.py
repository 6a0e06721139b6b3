"""Drift: features, the champion's reference window, alibi-detect checks, the HTTP API, the
gateway's sampler and the CLI.

The model here is yolov8n.yaml exported with seeded random weights at 128 px (a trained model
takes minutes): the whole path is real (MLflow registry and artifact, evaluation data rebuilt
from lineage and checked by hash, onnxruntime + the served NMS, alibi-detect), but its
detections are empty, so these tests exercise the image features; bench/drift.py measures the
trained bootstrap champion, whose output features move too. Images are 128 px and windows 40
samples to keep the file under a minute and a half on 2 cores.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import httpx
import numpy as np
import pytest
from litestar.testing import TestClient

from control_plane.drift import monitor as drift_mod
from control_plane.auth import TokenStore
from control_plane.drift.monitor import DriftDetector, DriftError, OnnxDetector, build_reference
from control_plane.datasets.image_shifts import SHIFTS, generated_features
from control_plane.settings import Settings
from tests.conftest import free_ports
from tracker_service.drift_features import FEATURES, OUTPUT_CONF, drift_features

IMGSZ = 128
N_VAL = 150
WINDOW = 40
N_WINDOWS = 20
LIVE_SEED = 1  # held-out images of the same generator as the reference (seed 0)


# --- features ---------------------------------------------------------------------------------

def test_features_of_a_known_image():
    bgr = np.full((480, 640, 3), (40, 100, 200), np.uint8)  # B, G, R
    scores = np.array([0.9, 0.5, OUTPUT_CONF - 0.01], np.float32)
    boxes = np.array([[0, 0, 64, 48], [0, 0, 320, 240], [0, 0, 640, 480]], np.float32)
    f = dict(zip(FEATURES, drift_features(bgr, scores, boxes)))
    assert f["mean_r"] == pytest.approx(200, abs=0.5)
    assert f["mean_b"] == pytest.approx(40, abs=0.5)
    assert f["contrast"] == pytest.approx(0, abs=1e-3)
    assert f["sharpness"] == pytest.approx(0, abs=1e-3)
    assert f["det_count"] == 2  # the third scores under OUTPUT_CONF
    assert f["max_score"] == pytest.approx(0.9)
    assert f["mean_score"] == pytest.approx(0.7)
    assert f["mean_box_size"] == pytest.approx((0.1 + 0.5) / 2, abs=1e-4)
    empty = dict(zip(FEATURES, drift_features(bgr, np.zeros(0), np.zeros((0, 4)))))
    assert empty["det_count"] == empty["mean_score"] == empty["mean_box_size"] == 0


def test_features_do_not_depend_on_resolution_much():
    from control_plane.datasets.synthetic_data import render_sample, sample_rng
    import cv2

    img = render_sample(sample_rng(0, "val", 3), 320).image
    big = cv2.resize(img, (1280, 1280), interpolation=cv2.INTER_LINEAR)
    a, b = drift_features(img, np.zeros(0), np.zeros((0, 4))), drift_features(
        big, np.zeros(0), np.zeros((0, 4)))
    # the same scene: brightness and colour match; both measured on a 160 px copy
    assert np.allclose(a[:2], b[:2], rtol=0.05, atol=1.0)


# --- the champion's reference, from a real MLflow registry -----------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registered champion: seeded ONNX as its model/model.onnx artifact, lineage tags that
    name its evaluation split (generator seed 0, 150 images at 128 px) and that split's hash."""
    from control_plane.datasets import synthetic_data
    from control_plane.mlflow_store import experiment_id, mlflow_client, mlflow_store
    from control_plane.training.train import register_version
    from export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("drift")
    onnx_path = export_onnx("yolov8n.yaml", root / "export" / "model.onnx", imgsz=IMGSZ).onnx_path
    data = root / "data"
    synthetic_data.generate_dataset(data, n_train=0, n_val=N_VAL, imgsz=IMGSZ, seed=0)
    store = mlflow_store(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow_client(store)
    run = client.create_run(experiment_id(client, store, "visionguard-bootstrap"))
    client.log_artifact(run.info.run_id, str(onnx_path), "model")
    source = f"{client.get_run(run.info.run_id).info.artifact_uri}/model"
    tags = {"seed": 0, "n_val": N_VAL, "imgsz": IMGSZ,
            "eval_dataset": f"{synthetic_data.dataset_name(0)}/val",
            "eval_dataset_hash": synthetic_data.dataset_hash(data, "val")}
    version, champion = register_version(client, "detector", source=source,
                                         run_id=run.info.run_id, tags=tags)
    assert version == champion == "1"
    # a second version whose recorded hash does not match what its lineage rebuilds
    register_version(client, "detector", source=source, run_id=run.info.run_id,
                     tags={**tags, "eval_dataset_hash": "0" * 64})
    settings = Settings(runtime_dir=root / "runtime", mlflow_tracking_uri=store.tracking_uri,
                        tokens_file_override=str(root / "tokens.json"), drift_window=200,
                        drift_min_samples=30, drift_check_interval_s=0,
                        drift_retrain_on_drift=True)
    tokens = TokenStore(settings.tokens_file)
    keys = {role: tokens.create(role, [role]) for role in ("gateway", "viewer", "release")}
    detector = OnnxDetector(onnx_path, IMGSZ)
    return {"settings": settings, "tokens": keys, "detector": detector, "root": root}


@pytest.fixture(scope="module")
def reference(world):
    return build_reference(world["settings"])


@pytest.fixture(scope="module")
def live_pool(world):
    """N_WINDOWS x WINDOW unshifted samples from held-out images of the same generator."""
    return generated_features(world["detector"], n=N_WINDOWS * WINDOW, seed=LIVE_SEED,
                              imgsz=IMGSZ)


@pytest.fixture(scope="module")
def detector(reference):
    return DriftDetector(reference.features, p_value=0.05, n_permutations=200)


def test_reference_window_rebuilt_from_lineage_and_cached(world, reference):
    settings = world["settings"]
    assert reference.version == "1" and reference.features.shape == (N_VAL, len(FEATURES))
    cache = settings.drift_dir / "reference-detector-v1.npz"
    mtime = cache.stat().st_mtime_ns
    again = build_reference(settings)
    assert cache.stat().st_mtime_ns == mtime  # from the cache, not rebuilt
    np.testing.assert_array_equal(again.features, reference.features)
    with pytest.raises(DriftError, match="hash"):
        build_reference(settings, "2")
    with pytest.raises(DriftError, match="champion"):
        build_reference(replace(settings, model_name="no-such-model"))


def test_registered_versions_use_their_recorded_evaluation_data(tmp_path):
    """`visionguard models register` records a data.yaml, not the generator's seed: its images
    serve as they are when their hash still matches, and nothing else is accepted."""
    from control_plane.datasets import synthetic_data
    from control_plane.drift.monitor import rebuild_eval_split

    data_yaml = synthetic_data.generate_dataset(tmp_path / "d", n_train=0, n_val=3, imgsz=96,
                                                seed=5)
    digest = synthetic_data.dataset_hash(data_yaml.parent, "val")
    images = rebuild_eval_split({"eval_data_yaml": str(data_yaml), "eval_dataset_hash": digest},
                                tmp_path / "unused")
    assert [p.parent for p in images] == [data_yaml.parent / "images" / "val"] * 3
    with pytest.raises(DriftError):
        rebuild_eval_split({"eval_data_yaml": str(data_yaml), "eval_dataset_hash": "0" * 64},
                           tmp_path / "other")


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_generated_shifts_are_detected(world, detector, shift):
    live = generated_features(world["detector"], n=WINDOW, seed=LIVE_SEED, imgsz=IMGSZ,
                              shift=shift, severity=1.0)
    result = detector.check(live)
    expected = {"fog": {"contrast", "saturation", "brightness", "dark_fraction"},
                "night": {"brightness", "mean_r", "mean_g", "dark_fraction"},
                "blur": {"sharpness"}, "noise": {"sharpness", "contrast"}}[shift]
    assert result["ks"]["drift"], result["ks"]
    assert result["mmd"]["drift"], result["mmd"]
    assert expected & set(drift_mod.drifted(result)), drift_mod.drifted(result)


def test_false_alarm_rate_on_the_reference_distribution(detector, live_pool):
    alarms = []
    for k in range(N_WINDOWS):
        r = detector.check(live_pool[k * WINDOW:(k + 1) * WINDOW])
        alarms.append(r["ks"]["drift"] or r["mmd"]["drift"])
    assert sum(alarms) / N_WINDOWS <= 0.05, alarms


def test_a_window_that_drifts_halfway_is_caught(world, detector, live_pool):
    """Sensitivity check in the other direction: half the window at night is still drift."""
    night = generated_features(world["detector"], n=WINDOW // 2, seed=LIVE_SEED + 1,
                               imgsz=IMGSZ, shift="night", severity=1.0)
    r = detector.check(np.concatenate([live_pool[:WINDOW // 2], night]))
    assert r["ks"]["drift"] or r["mmd"]["drift"]


# --- the HTTP API -----------------------------------------------------------------------------

def _auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _batch(values: np.ndarray, version: str = "1") -> dict:
    return {"feature_names": list(FEATURES), "model": "detector",
            "samples": [{"model_version": version, "values": [float(v) for v in row]}
                        for row in values]}


@pytest.fixture()
def api(world, tmp_path):
    from control_plane.api.app import create_app

    settings = replace(world["settings"], runtime_dir=tmp_path / "runtime")
    # the reference cache is per runtime dir: share the module's (built once)
    ref_dir = world["settings"].drift_dir
    settings.drift_dir.mkdir(parents=True)
    for f in ref_dir.glob("reference-*.npz"):
        (settings.drift_dir / f.name).write_bytes(f.read_bytes())
    with TestClient(create_app(settings)) as client:
        yield client


def test_feature_posts_need_the_gateway_role(api, world, live_pool):
    tokens = world["tokens"]
    body = _batch(live_pool[:5])
    assert api.post("/v1/drift/features", json=body).status_code == 401
    r = api.post("/v1/drift/features", json=body, headers=_auth(tokens["viewer"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.post("/v1/drift/features", json=body, headers=_auth(tokens["gateway"]))
    assert r.status_code == 202 and r.json() == {"accepted": 5, "window": 5}
    status = api.get("/v1/drift/status", headers=_auth(tokens["viewer"])).json()
    assert status["window"] == 5 and status["last"] is None
    assert api.get("/v1/drift/status").status_code == 401


@pytest.mark.parametrize("mutate,status,code", [
    (lambda b: {**b, "feature_names": b["feature_names"][::-1]}, 422, "invalid_features"),
    (lambda b: {**b, "samples": [{"values": [1.0, 2.0]}]}, 422, "invalid_features"),
    (lambda b: {**b, "samples": []}, 422, "invalid_features"),
    (lambda b: {**b, "samples": [{"values": "many"}]}, 400, "invalid_parameter"),
    (lambda b: {**b, "extra": 1}, 400, "invalid_parameter"),
    (lambda b: {"samples": b["samples"]}, 400, "invalid_parameter"),
])
def test_bad_feature_payloads_get_json_errors(api, world, live_pool, mutate, status, code):
    r = api.post("/v1/drift/features", json=mutate(_batch(live_pool[:3])),
                 headers=_auth(world["tokens"]["gateway"]))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert api.get("/v1/drift/status", headers=_auth(world["tokens"]["viewer"])
                   ).json()["window"] == 0  # nothing of a refused batch is kept


def test_non_finite_and_non_json_bodies_are_refused(api, world):
    headers = {**_auth(world["tokens"]["gateway"]), "content-type": "application/json"}
    nan = '{"feature_names": %s, "samples": [{"values": [%s]}]}' % (
        str(list(FEATURES)).replace("'", '"'), ", ".join(["NaN"] * len(FEATURES)))
    for body in (nan, "{not json", ""):
        r = api.post("/v1/drift/features", content=body, headers=headers)
        assert r.status_code in (400, 422), (body, r.text)
        assert "error" in r.json()


def test_check_publishes_metrics_logs_and_opens_a_retraining_request(api, world, live_pool,
                                                                      caplog):
    tokens = world["tokens"]
    viewer, gateway = _auth(tokens["viewer"]), _auth(tokens["gateway"])
    r = api.post("/v1/drift/check", headers=viewer)
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_data"
    scrape = api.get("/metrics").text
    assert 'visionguard_drift_p_value{detector="mmd",feature="all"} NaN' in scrape

    # a window from the reference distribution: no drift
    api.post("/v1/drift/features", json=_batch(live_pool[:WINDOW]), headers=gateway)
    calm = api.post("/v1/drift/check", headers=viewer).json()
    assert calm["drift"] is False and calm["n_live"] == WINDOW
    # then night falls: the window fills with night samples
    night = generated_features(world["detector"], n=200, seed=5, imgsz=IMGSZ, shift="night")
    api.post("/v1/drift/features", json=_batch(night), headers=gateway)
    with caplog.at_level("INFO", logger="visionguard.drift"):
        result = api.post("/v1/drift/check", headers=viewer).json()
    assert result["drift"] is True and "brightness" in result["drifted_features"]
    events = [r for r in caplog.records if getattr(r, "event", "") == "drift_check"]
    assert events and events[-1].drift is True

    scrape = api.get("/metrics").text
    assert 'visionguard_drift_detected{detector="any"} 1.0' in scrape
    assert 'visionguard_drift_checks_total{result="drift"} 1.0' in scrape
    assert 'visionguard_drift_checks_total{result="no_drift"} 1.0' in scrape
    assert 'visionguard_drift_checks_total{result="insufficient_data"} 1.0' in scrape
    assert "visionguard_drift_features_received_total 240.0" in scrape
    assert 'visionguard_drift_retraining_pending 1.0' in scrape

    requests = api.get("/v1/drift/retraining", headers=viewer).json()["requests"]
    assert [r["state"] for r in requests] == ["pending"]
    rid = requests[0]["id"]
    assert api.post(f"/v1/drift/retraining/{rid}/approve", headers=viewer).status_code == 403
    r = api.post(f"/v1/drift/retraining/{rid}/approve", headers=_auth(tokens["release"]))
    assert r.status_code == 200 and r.json()["state"] == "approved"
    assert r.json()["decided_by"] == "release"
    r = api.post(f"/v1/drift/retraining/{rid}/approve", headers=_auth(tokens["release"]))
    assert r.status_code == 409
    assert api.post("/v1/drift/retraining/nope/approve",
                    headers=_auth(tokens["release"])).status_code == 404

    # the report: reference vs live per feature, as HTML (self-contained) and PNG
    html = api.get("/v1/drift/report", headers=viewer)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "data:image/png;base64," in html.text and "brightness" in html.text
    png = api.get("/v1/drift/report", params={"format": "png"}, headers=viewer)
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    bad = api.get("/v1/drift/report", params={"format": "pdf"}, headers=viewer)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_retraining_is_off_by_default(world, tmp_path):
    assert Settings().drift_retrain_on_drift is False
    from control_plane.api.metrics import ControlPlaneMetrics

    settings = replace(world["settings"], runtime_dir=tmp_path, drift_retrain_on_drift=False)
    monitor = drift_mod.DriftMonitor(settings, ControlPlaneMetrics(),
                                     reference_builder=lambda s, v: build_reference(
                                         world["settings"], v))
    night = generated_features(world["detector"], n=WINDOW, seed=6, imgsz=IMGSZ,
                               shift="night")
    monitor.receive(night, ["1"] * WINDOW)
    assert monitor.check().drift is True
    assert monitor.retraining.all() == []


# --- the gateway's sampler over real HTTP ----------------------------------------------------

@contextmanager
def serve_control_plane(settings: Settings):
    """The control plane's app in uvicorn on a free port (a thread of this process)."""
    import uvicorn

    from control_plane.api.app import create_app

    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "control plane did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _gateway_settings(url: str, token: str, **kw):
    from tracker_service.settings import GatewaySettings

    return GatewaySettings(control_url=url, control_token=token,
                           **{"drift_sample_rate": 1.0, "drift_batch_size": 16,
                              "drift_flush_s": 0.05, "drift_max_buffer": 64, **kw})


def _images(n: int) -> list[np.ndarray]:
    from control_plane.datasets.synthetic_data import render_sample, sample_rng

    return [render_sample(sample_rng(9, "val", i), IMGSZ).image for i in range(n)]


def test_sampler_sends_batches_to_the_control_plane(world, tmp_path):
    from tracker_service.drift_sampler import DriftSampler
    from tracker_service.metrics import GatewayMetrics

    settings = replace(world["settings"], runtime_dir=tmp_path)
    images = _images(40)
    with serve_control_plane(settings) as url:
        metrics = GatewayMetrics()

        async def run():
            sampler = DriftSampler(_gateway_settings(url, world["tokens"]["gateway"]), metrics)
            sampler.start()
            for img in images:
                assert sampler.offer(img, np.array([0.9]), np.array([[1, 1, 20, 20]]),
                                     conf=0.25, classes=None, max_det=300, model_version="1")
                await sampler.settled()
            # a client's own threshold above OUTPUT_CONF hides detections: not sampled
            assert not sampler.offer(images[0], np.zeros(0), np.zeros((0, 4)), conf=0.5,
                                     classes=None, max_det=300, model_version="1")
            deadline = time.monotonic() + 20
            while metrics.drift_features.labels("sent")._value.get() < 40:
                assert time.monotonic() < deadline, "samples not sent"
                await asyncio.sleep(0.05)
            await sampler.close()

        asyncio.run(run())
        status = httpx.get(f"{url}/v1/drift/status",
                           headers=_auth(world["tokens"]["viewer"])).json()
    assert status["window"] == 40
    assert metrics.drift_features.labels("dropped_unreachable")._value.get() == 0


def test_sampler_drops_and_never_blocks_when_the_control_plane_is_down(world):
    from tracker_service.drift_sampler import MAX_FEATURISING, DriftSampler
    from tracker_service.metrics import GatewayMetrics

    (dead_port,) = free_ports(1)
    metrics = GatewayMetrics()
    images = _images(4)

    async def run():
        sampler = DriftSampler(_gateway_settings(f"http://127.0.0.1:{dead_port}", "t"), metrics)
        # offers return at once, whatever the state of the control plane; features are
        # computed in worker threads, at most MAX_FEATURISING at a time
        burst = [sampler.offer(images[0], np.zeros(0), np.zeros((0, 4)), conf=0.25,
                               classes=None, max_det=300, model_version="1") for _ in range(10)]
        assert sum(burst) == MAX_FEATURISING
        await sampler.settled()
        kept = []
        for i in range(100 - MAX_FEATURISING):
            kept.append(sampler.offer(images[i % 4], np.zeros(0), np.zeros((0, 4)), conf=0.25,
                                      classes=None, max_det=300, model_version="1"))
            await sampler.settled()
        assert sampler.buffered == 64  # the bound holds
        assert sum(kept) == 64 - MAX_FEATURISING
        assert metrics.drift_features.labels("dropped_full")._value.get() == (
            10 - MAX_FEATURISING) + (100 - 64)
        assert await sampler.flush_once() == 0  # connection refused: dropped, no exception
        assert metrics.drift_features.labels("dropped_unreachable")._value.get() == 16
        sampler.start()
        deadline = time.monotonic() + 20
        while sampler.buffered:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await sampler.close()

    asyncio.run(run())
    assert metrics.drift_features.labels("dropped_unreachable")._value.get() == 64
    assert metrics.drift_features.labels("sent")._value.get() == 0


def test_sampler_is_off_without_a_control_plane():
    from tracker_service.drift_sampler import DriftSampler
    from tracker_service.metrics import GatewayMetrics
    from tracker_service.settings import GatewaySettings

    sampler = DriftSampler(GatewaySettings(control_url=""), GatewayMetrics())
    assert not sampler.enabled
    assert not sampler.offer(np.zeros((8, 8, 3), np.uint8), np.zeros(0), np.zeros((0, 4)),
                             conf=0.25, classes=None, max_det=300, model_version="1")
    asyncio.run(sampler.close())


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_check_and_report(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from control_plane.cli import app

    settings = replace(world["settings"], runtime_dir=tmp_path / "rt")
    settings.drift_dir.mkdir(parents=True)
    for f in world["settings"].drift_dir.glob("reference-*.npz"):
        (settings.drift_dir / f.name).write_bytes(f.read_bytes())
    blur = generated_features(world["detector"], n=WINDOW, seed=7, imgsz=IMGSZ, shift="blur")
    runner = CliRunner()
    with serve_control_plane(settings) as url:
        httpx.post(f"{url}/v1/drift/features", json=_batch(blur),
                   headers=_auth(world["tokens"]["gateway"])).raise_for_status()
        env = {"VG_CONTROL_URL": url, "VG_TOKEN": world["tokens"]["viewer"]}
        r = runner.invoke(app, ["drift", "check", "--fail-on-drift"], env=env)
        assert r.exit_code == 3, r.output
        assert "DRIFT" in r.output and "sharpness" in r.output
        for name in ("report.html", "report.png"):
            r = runner.invoke(app, ["drift", "report", str(tmp_path / name)], env=env)
            assert r.exit_code == 0, r.output
            assert (tmp_path / name).stat().st_size > 10_000
        r = runner.invoke(app, ["drift", "check"], env={**env, "VG_TOKEN": "wrong"})
        assert r.exit_code == 1 and "401" in r.output


# --- the real stack: gateway -> control plane ------------------------------------------------

@pytest.mark.integration
def test_gateway_requests_feed_the_control_planes_window(stack, bus_jpg):
    """`up`'s gateway samples its requests (VG_GATEWAY_DRIFT_SAMPLE_RATE, 0.25) and posts them
    with its `gateway` token; the control plane's window grows. The stack serves a seeded model
    that MLflow does not hold, so a check answers with a JSON 409, not a crash."""
    s = stack.settings
    viewer = _auth(TokenStore(s.tokens_file).create("drift-test-viewer", ["viewer"]))
    control = f"http://127.0.0.1:{s.control_port}"
    before = httpx.get(f"{control}/v1/drift/status", headers=viewer, timeout=10).json()["window"]
    for _ in range(30):
        r = httpx.post(f"{stack.gateway_url}/v1/detect", content=bus_jpg,
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200
    deadline = time.monotonic() + 30  # the gateway posts every VG_GATEWAY_DRIFT_FLUSH_S (5 s)
    while True:
        window = httpx.get(f"{control}/v1/drift/status", headers=viewer, timeout=10
                           ).json()["window"]
        if window > before:
            break
        assert time.monotonic() < deadline, "no drift features reached the control plane"
        time.sleep(0.5)
    scrape = httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text
    assert 'visionguard_gateway_drift_features_total{outcome="sent"}' in scrape
    r = httpx.post(f"{control}/v1/drift/check", headers=viewer, timeout=120)
    assert r.status_code == 409 and r.json()["error"]["code"] in ("insufficient_data",
                                                                   "drift_unavailable")
