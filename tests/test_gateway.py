"""The gateway over the real Triton: requests, limits, errors, outage and recovery."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from control_plane.stack import triton_server
from control_plane.stack.supervisor import Supervisor
from tests.conftest import free_ports, gateway_process
from tracker_service.app import create_app
from tracker_service.settings import GatewaySettings

pytestmark = pytest.mark.integration


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def encode(fmt: str, size=(320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, fmt)
    return buf.getvalue()


def test_detect_raw_body_and_multipart(stack, bus_jpg):
    url = f"{stack.gateway_url}/v1/detect"
    raw = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                     params={"conf": 0.0001, "max_det": 25}, timeout=30)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model"] == {"name": "detector", "version": "1"}
    assert body["image"] == {"width": 810, "height": 1080}
    assert 0 < len(body["detections"]) <= 25
    for d in body["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 810 and 0 <= y1 <= y2 <= 1080
        assert d["score"] >= 0.0001 and d["class_name"]
    assert {"decode", "preprocess", "queue", "infer", "postprocess", "total"} <= set(
        body["timings_ms"])

    multi = httpx.post(url, files={"file": ("bus.jpg", bus_jpg, "image/jpeg")},
                       params={"conf": 0.0001, "max_det": 25}, timeout=30)
    assert multi.status_code == 200
    assert multi.json()["detections"] == body["detections"]


def test_png_and_webp_are_accepted(stack):
    for fmt, media in (("PNG", "image/png"), ("WEBP", "image/webp")):
        r = httpx.post(f"{stack.gateway_url}/v1/detect", content=encode(fmt),
                       headers={"content-type": media}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["image"] == {"width": 320, "height": 240}


def test_class_filter_and_thresholds(stack, bus_jpg):
    url = f"{stack.gateway_url}/v1/detect"
    params = {"conf": 0.0001, "max_det": 300}
    everything = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                            params=params, timeout=30).json()["detections"]
    classes = sorted({d["class_id"] for d in everything})[:2]
    assert classes
    only = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                      params={**params, "classes": ",".join(map(str, classes))},
                      timeout=30).json()["detections"]
    assert only and {d["class_id"] for d in only} <= set(classes)
    assert only == [d for d in everything if d["class_id"] in classes]
    strict = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                        params={"conf": 0.9}, timeout=30).json()["detections"]
    assert strict == []


@pytest.mark.parametrize("body,headers,status,code", [
    (b"hello", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    (b"", {}, 415, "unsupported_media_type"),
    (b"definitely not a jpeg", {"content-type": "image/jpeg"}, 422, "undecodable_image"),
    (b"", {"content-type": "image/jpeg"}, 422, "undecodable_image"),
])
def test_bad_input_gets_a_json_error(stack, body, headers, status, code):
    r = httpx.post(f"{stack.gateway_url}/v1/detect", content=body, headers=headers, timeout=30)
    assert r.status_code == status
    assert error_code(r) == code and r.json()["error"]["message"]


def test_truncated_and_wrong_format_images(stack, bus_jpg):
    url = f"{stack.gateway_url}/v1/detect"
    r = httpx.post(url, content=bus_jpg[: len(bus_jpg) // 3],
                   headers={"content-type": "image/jpeg"}, timeout=30)
    # A truncated JPEG either decodes partially (OpenCV fills the rest) or is rejected; never 5xx.
    assert r.status_code in (200, 422)
    gif = encode("GIF")
    r = httpx.post(url, content=gif, headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    r = httpx.post(url, files={"notfile": (None, "text")}, timeout=30)
    assert r.status_code == 422 and error_code(r) == "invalid_request"


def test_bad_parameters(stack, bus_jpg):
    url = f"{stack.gateway_url}/v1/detect"
    for params, status in (({"conf": 2}, 400), ({"max_det": 0}, 400),
                           ({"version": "abc"}, 400), ({"classes": "x,y"}, 422)):
        r = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                       params=params, timeout=30)
        assert r.status_code == status, (params, r.text)
        assert "error" in r.json()
    r = httpx.post(url, content=bus_jpg, headers={"content-type": "image/jpeg"},
                   params={"version": "99"}, timeout=30)
    assert r.status_code == 404 and error_code(r) == "model_not_found"


def test_decompression_bomb_is_refused_before_decoding(stack):
    bomb = png_header_only(60_000, 60_000)  # 3.6 G pixels claimed, 100 bytes sent
    assert len(bomb) < 200
    r = httpx.post(f"{stack.gateway_url}/v1/detect", content=bomb,
                   headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    assert r.json()["error"]["max_pixels"] == 50_000_000


def test_health_ready_metrics_schema(stack, bus_jpg):
    assert httpx.get(f"{stack.gateway_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.gateway_url}/readyz").status_code == 200
    httpx.post(f"{stack.gateway_url}/v1/detect", content=bus_jpg,
               headers={"content-type": "image/jpeg"}, timeout=30)
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    for name in ("visionguard_gateway_request_duration_seconds_bucket",
                 "visionguard_triton_request_duration_seconds_count",
                 "visionguard_detections_per_image_count",
                 "visionguard_gateway_errors_total"):
        assert name in text
    assert 'route="/v1/detect",status="200"' in text
    schema = httpx.get(f"{stack.gateway_url}/schema/openapi.json").json()
    assert "/v1/detect" in schema["paths"]


async def test_limits_are_configurable(stack, bus_jpg):
    """Small limits on an in-process gateway (same app, same real Triton)."""
    base = GatewaySettings(triton_grpc_url=stack.settings.triton_grpc_url)
    small = replace(base, max_body_bytes=50_000, max_pixels=100_000)
    async with AsyncTestClient(app=create_app(small)) as client:
        r = await client.post("/v1/detect", content=bus_jpg,
                              headers={"content-type": "image/jpeg"})
        assert r.status_code == 413 and error_code(r) == "payload_too_large"
        r = await client.post("/v1/detect", content=encode("PNG", (400, 300)),
                              headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.json()["error"]["max_pixels"] == 100_000


@pytest.fixture
def small_gateway(stack, tmp_path):
    """A second real gateway process, with tight admission limits, on the shared Triton."""
    with gateway_process(stack, tmp_path, max_pending="2", max_triton_in_flight="1") as url:
        yield url


async def test_overload_gets_429_and_admitted_requests_succeed(small_gateway, bus_jpg):
    async with httpx.AsyncClient(base_url=small_gateway, timeout=60) as client:
        responses = await asyncio.gather(*[
            client.post("/v1/detect", content=bus_jpg, headers={"content-type": "image/jpeg"})
            for _ in range(8)])
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1
    assert set(statuses) <= {200, 429}
    assert all(error_code(r) == "overloaded" for r in responses if r.status_code == 429)
    metrics = httpx.get(f"{small_gateway}/metrics").text
    assert 'visionguard_gateway_errors_total{kind="overloaded"}' in metrics


@pytest.fixture
def own_triton(seeded_repo, tmp_path):
    """A Triton of this test's own, to stop and start without disturbing the shared stack."""
    http, grpc, metrics = free_ports(3)
    from control_plane.settings import Settings

    settings = Settings(model_repository=seeded_repo, runtime_dir=tmp_path,
                        triton_http_port=http, triton_grpc_port=grpc, triton_metrics_port=metrics)
    supervisor = Supervisor(tmp_path / "logs")

    def start():
        child = triton_server.start(supervisor, settings)
        triton_server.wait_ready(settings, child.proc, 120, model="detector")
        return child

    yield settings, supervisor, start
    supervisor.stop()


@pytest.mark.parametrize("shared_memory", [False, True], ids=["grpc", "shm"])
async def test_triton_outage_gives_503_then_recovers_without_restart(own_triton, bus_jpg,
                                                                     shared_memory):
    settings, supervisor, start = own_triton
    start()
    app = create_app(GatewaySettings(triton_grpc_url=settings.triton_grpc_url,
                                     shared_memory=shared_memory))
    async with AsyncTestClient(app=app, timeout=60) as client:
        post = lambda: client.post("/v1/detect", content=bus_jpg,  # noqa: E731
                                   headers={"content-type": "image/jpeg"})
        assert (await post()).status_code == 200
        supervisor.stop()
        r = await post()
        assert r.status_code == 503 and error_code(r) == "triton_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert (await client.get("/readyz")).status_code == 503
        start()
        deadline = time.monotonic() + 30
        while (r := await post()).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert r.status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        regions = httpx.get(f"{settings.triton_http_url}/v2/systemsharedmemory/status").json()
        # With shared memory on, the restarted Triton was given the regions again.
        assert bool(regions) == shared_memory


def test_a_killed_tritons_shared_memory_is_removed(own_triton):
    """triton_server.start names the python backend's regions for its Triton: a Triton killed
    outright with its stubs leaves them in /dev/shm (16 MiB each), and the supervisor removes
    them, only them, once the process group is gone."""
    settings, supervisor, start = own_triton
    child = start()
    prefix = triton_server.shm_prefix(settings)
    regions = sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}*"))
    assert regions, f"no region named {prefix}* while Triton serves"
    os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait(timeout=30)
    assert all((Path("/dev/shm") / name).exists() for name in regions)  # nobody cleaned up
    supervisor.stop()
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def test_detector_runs_on_openvino_in_the_stack(stack):
    log = (stack.settings.runtime_dir / "logs" / "triton.log").read_text()
    assert "detector version 1: model.onnx on openvino, 2 threads" in log


def test_up_passes_images_through_shared_memory(stack, bus_jpg):
    """`up` runs gateway and Triton on one host: the gateway registered its regions, one per
    Triton call it may have in flight: the clients' and the shadow workers'."""
    from tracker_service.settings import GatewaySettings

    httpx.post(f"{stack.gateway_url}/v1/detect", content=bus_jpg,
               headers={"content-type": "image/jpeg"}, timeout=30)
    regions = httpx.get(
        f"{stack.settings.triton_http_url}/v2/systemsharedmemory/status").json()
    defaults = GatewaySettings()
    assert len(regions) == defaults.max_triton_in_flight + defaults.shadow_concurrency == 9
    assert all(r["byte_size"] == 640 * 640 * 3 for r in regions)


def test_up_guards_the_gateways_internal_routes_with_a_token(stack):
    """`up` gives the gateway an internal token (the control plane gets the same one): the
    per-version samples of the canary analysis are not open to any local client."""
    r = httpx.get(f"{stack.gateway_url}/v1/internal/version-stats", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(f"{stack.gateway_url}/v1/internal/version-stats", timeout=10,
                  headers={"authorization": "Bearer not-the-token"})
    assert r.status_code == 401


def test_dynamic_batching_forms_batches(stack):
    """Concurrent requests are batched by Triton: executions < inferences."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack.settings.triton_grpc_url)
    before = client.get_inference_statistics("detector", "1").model_stats[0]
    image = np.zeros((1, 640, 480, 3), np.uint8)
    done = []

    def callback(result, error):
        done.append(error)

    for _ in range(16):
        tensor = grpcclient.InferInput("images", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        client.async_infer("detector", [tensor], callback)
    deadline = time.monotonic() + 60
    while len(done) < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done == [None] * 16
    # Triton records statistics just after it answers: wait until all 16 are counted.
    deadline = time.monotonic() + 10
    while True:
        after = client.get_inference_statistics("detector", "1").model_stats[0]
        if after.inference_count - before.inference_count >= 16 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 16
    assert executions < inferences
