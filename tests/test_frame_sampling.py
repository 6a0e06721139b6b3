"""The gateway's frame sampler (tracker_service/frame_sampler.py) and its two stores.

Decisions, rate limits, the size cap, retention, the off switch and the drop accounting run on
a real local store in a temporary folder; the S3 store runs against moto's standalone S3 server
(a real HTTP S3 API: no MinIO server installs on these machines, neither from PyPI nor Debian).
Stores that fail on purpose wrap the real local store and raise the errors the real stores
raise (a full disk cannot be made on demand here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from tests.conftest import free_ports
from tracker_service.detection import Detections, StageTimes
from tracker_service.frame_sampler import (DriftFlag, FrameSampler, StreamRateLimit,
                                           choose_reason)
from tracker_service.frame_store import (LocalFrameStore, S3Credentials, S3FrameStore,
                                         StoreFull, StoreUnavailable, frame_keys)
from tracker_service.metrics import GatewayMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.triton_client import ModelInfo

NAMES = {0: "circle", 1: "square", 2: "triangle"}


def settings(**overrides) -> GatewaySettings:
    base = GatewaySettings(frames_sampling=True, frames_uniform_rate=1.0,
                           frames_per_stream_per_min=6000.0, frames_backoff_s=0.2,
                           control_url="")
    return replace(base, **overrides)


def jpeg(seed: int, side: int = 64) -> tuple[bytes, np.ndarray]:
    bgr = np.random.default_rng(seed).integers(0, 255, (side, side, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    return buf.tobytes(), cv2.imdecode(buf, cv2.IMREAD_COLOR)


def detections(image: np.ndarray, scores=(0.9,), classes=(1,)) -> Detections:
    k = len(scores)
    boxes = np.array([[4.0 + i, 5.0, 30.0, 40.5] for i in range(k)], np.float32).reshape(k, 4)
    return Detections(boxes, np.array(scores, np.float32), np.array(classes, np.int64),
                      image.shape[1], image.shape[0], ModelInfo("detector", NAMES, 32, 640),
                      "3", image, StageTimes(0, *([0.0] * 8)), {})


def counter(metrics: GatewayMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def dropped(metrics, cause):
    return counter(metrics, "visionguard_gateway_frames_dropped_total", cause=cause)


# --- decisions ----------------------------------------------------------------------------------

def test_reasons_in_order_drift_uncertain_uniform():
    s = settings(frames_drift_rate=1.0, frames_uncertain_low=0.3, frames_uncertain_high=0.6,
                 frames_uniform_rate=0.0)
    rng = random.Random(0)
    assert choose_reason(s, rng, True, 0.45) == "drift"
    assert choose_reason(s, rng, False, 0.45) == "uncertain"
    assert choose_reason(s, rng, False, 0.3) == "uncertain"  # the band includes its low end
    assert choose_reason(s, rng, False, 0.6) is None  # and excludes its high end
    assert choose_reason(s, rng, False, 0.2) is None
    assert choose_reason(s, rng, False, None) is None  # no detections: no top score
    assert choose_reason(replace(s, frames_uniform_rate=1.0), rng, False, None) == "uniform"
    # The uniform share is a share: about 10% of 5000 frames at rate 0.1.
    s10 = replace(s, frames_uniform_rate=0.1)
    n = sum(choose_reason(s10, rng, False, None) == "uniform" for _ in range(5000))
    assert 400 < n < 600


def test_rate_limit_per_stream():
    limit = StreamRateLimit(per_min=6.0, max_streams=2)  # one frame per 10 s, burst 1
    assert limit.allow("cam-1", 0.0)
    assert not limit.allow("cam-1", 1.0)
    assert limit.allow("cam-2", 1.0)  # another stream has its own bucket
    assert limit.allow("cam-1", 10.5)
    assert not limit.allow("cam-1", 11.0)
    limit.allow("cam-3", 11.0)  # a third stream: cam-2, the least recently used, is forgotten
    assert list(limit._buckets) == ["cam-1", "cam-3"]


async def test_rate_limited_frames_are_counted(tmp_path):
    metrics = GatewayMetrics()
    sampler = FrameSampler(settings(frames_per_stream_per_min=6.0), metrics,
                           store=LocalFrameStore(tmp_path))
    data, image = jpeg(1)
    assert sampler.offer(data, detections(image), "cam-1") == "uniform"
    assert sampler.offer(data, detections(image), "cam-1") is None
    assert sampler.offer(data, detections(image), "cam-2") == "uniform"
    assert sampler.offer(data, detections(image), None) == "uniform"  # /v1/detect: one bucket
    assert sampler.offer(data, detections(image), None) is None
    assert dropped(metrics, "rate_limited") == 2
    assert counter(metrics, "visionguard_gateway_frames_sampled_total", reason="uniform") == 5


async def test_off_switch_keeps_nothing(tmp_path):
    metrics = GatewayMetrics()
    off = FrameSampler(settings(frames_sampling=False), metrics,
                       store=LocalFrameStore(tmp_path))
    data, image = jpeg(2)
    off.start()
    assert off._task is None
    assert off.offer(data, detections(image), "cam-1") is None
    assert off._queue.qsize() == 0
    assert counter(metrics, "visionguard_gateway_frames_sampled_total", reason="uniform") == 0
    # On, but no store configured: off too, said in the log.
    assert not FrameSampler(settings(frames_dir="", frames_s3_bucket=""), metrics).enabled
    assert not list(tmp_path.iterdir())


# --- the stores ---------------------------------------------------------------------------------

def check_store(store) -> None:
    """The interface's contract, on any backend."""
    assert store.usage() == 0
    assert list(store.list()) == []
    store.put("frames/2026-12-03/a.jpg", b"12345")
    store.put("frames/2026-12-03/a.json", b"{}")
    store.put("frames/2026-12-04/b.jpg", b"xy")
    store.put("frames/2026-12-03/a.jpg", b"123")  # overwritten whole
    assert store.get("frames/2026-12-03/a.jpg") == b"123"
    listed = sorted(store.list("frames/"))
    assert [(k, s) for k, s, _ in listed] == [("frames/2026-12-03/a.jpg", 3),
                                              ("frames/2026-12-03/a.json", 2),
                                              ("frames/2026-12-04/b.jpg", 2)]
    assert all(abs(m - time.time()) < 600 for _, _, m in listed)
    assert [k for k, _, _ in store.list("frames/2026-12-04/")] == ["frames/2026-12-04/b.jpg"]
    assert store.usage() == 7
    store.delete("frames/2026-12-04/b.jpg")
    store.delete("frames/2026-12-04/b.jpg")  # deleting what is gone is not an error
    with pytest.raises(KeyError):
        store.get("frames/2026-12-04/b.jpg")
    assert store.usage() == 5
    for bad in ("../x.jpg", "/etc/passwd", "frames//a.jpg", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_local_store(tmp_path):
    store = LocalFrameStore(tmp_path / "frames-root")
    check_store(store)
    assert (tmp_path / "frames-root" / "frames" / "2026-12-03" / "a.jpg").read_bytes() == b"123"
    assert not [p for p in (tmp_path / "frames-root").rglob(".put-*")]  # no temporary left


def test_local_store_unwritable_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StoreUnavailable):
        LocalFrameStore(blocker).put("frames/d/a.jpg", b"x")  # its root is a file


@pytest.fixture(scope="module")
def s3_server():
    """moto's standalone S3 server (HTTP, the S3 API) on a free port."""
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


CREDS = S3Credentials("test-access", "test-secret")


def test_s3_store(s3_server):
    store = S3FrameStore(s3_server, "frames-a", CREDS)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    check_store(store)


def test_s3_store_down_is_unavailable():
    (port,) = free_ports(1)  # nothing listens there
    store = S3FrameStore(f"http://127.0.0.1:{port}", "frames", CREDS, timeout_s=1)
    for call in (lambda: store.put("frames/d/a.jpg", b"x"), store.ensure_bucket,
                 lambda: list(store.list())):
        with pytest.raises(StoreUnavailable):
            call()


# --- the sampler writing ------------------------------------------------------------------------

async def written(sampler: FrameSampler, frames) -> None:
    sampler.start()
    try:
        for data, d, stream in frames:
            sampler.offer(data, d, stream)
        await asyncio.wait_for(sampler.settled(), 20)
    finally:
        await sampler.close()


async def test_frames_and_records_follow_the_contract(tmp_path):
    metrics = GatewayMetrics()
    store = LocalFrameStore(tmp_path)
    sampler = FrameSampler(settings(), metrics, store=store)
    data, image = jpeg(3)
    png_ok, png = cv2.imencode(".png", image)
    await written(sampler, [(data, detections(image, (0.9, 0.4), (1, 2)), "cam-1"),
                            (png.tobytes(), detections(image, (), ()), None)])
    keys = sorted(k for k, _, _ in store.list())
    assert len(keys) == 4
    sha = hashlib.sha256(data).hexdigest()
    image_key, record_key = frame_keys(sha, datetime.now(timezone.utc))
    assert image_key in keys and record_key in keys
    assert store.get(image_key) == data  # the posted JPEG, byte for byte
    record = json.loads(store.get(record_key))
    assert record == {
        "sha256": sha, "time": record["time"], "stream_id": "cam-1", "reason": "uniform",
        "model": "detector", "model_version": "3", "width": 64, "height": 64,
        "classes": ["circle", "square", "triangle"],
        "detections": [
            {"box": [4.0, 5.0, 30.0, 40.5], "class_id": 1, "class_name": "square",
             "score": 0.9},
            {"box": [5.0, 5.0, 30.0, 40.5], "class_id": 2, "class_name": "triangle",
             "score": pytest.approx(0.4)}]}
    assert abs(datetime.fromisoformat(record["time"]).timestamp() - time.time()) < 60
    # The PNG body became a JPEG of the same size, named by the hash of those JPEG bytes.
    other = [k for k in keys if k.endswith(".jpg") and k != image_key][0]
    stored = store.get(other)
    assert stored[:3] == b"\xff\xd8\xff" and other.endswith(
        hashlib.sha256(stored).hexdigest() + ".jpg")
    assert cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    total = sum(s for _, s, _ in store.list())
    assert counter(metrics, "visionguard_gateway_frames_stored_bytes_total") == total
    assert counter(metrics, "visionguard_gateway_frames_store_bytes") == total
    # The same bytes again are not stored twice.
    again = FrameSampler(settings(), metrics, store=store)
    await written(again, [(data, detections(image), "cam-1")])
    assert dropped(metrics, "duplicate") == 1
    assert sorted(k for k, _, _ in store.list()) == keys
    # ... nor when the copy held was sampled on an earlier day (keys carry the day).
    earlier = frame_keys(sha, datetime.now(timezone.utc) - timedelta(days=2))
    for old, new in zip((image_key, record_key), earlier):
        store.put(new, store.get(old))
        store.delete(old)
    later = FrameSampler(settings(), metrics, store=store)
    await written(later, [(data, detections(image), "cam-2")])
    assert dropped(metrics, "duplicate") == 2
    assert image_key not in {k for k, _, _ in store.list()}


async def test_size_cap_evicts_the_oldest(tmp_path):
    metrics = GatewayMetrics()
    store = LocalFrameStore(tmp_path)
    frames = [jpeg(10 + i) for i in range(5)]
    one = len(frames[0][0]) + 400  # a frame and its record, about
    sampler = FrameSampler(settings(frames_max_bytes=3 * one), metrics, store=store)
    for data, image in frames:  # one at a time: each is older than the next
        await written(sampler, [(data, detections(image), "cam-1")])
    held = {k.rsplit("/", 1)[1][:-4] for k, _, _ in store.list() if k.endswith(".jpg")}
    shas = [hashlib.sha256(data).hexdigest() for data, _ in frames]
    assert held == set(shas[-len(held):]) and 2 <= len(held) <= 3  # the newest kept
    assert store.usage() <= 3 * one
    assert sampler.usage == store.usage()
    # A frame larger than the whole cap is dropped as storage full, nothing evicted for it.
    tiny = FrameSampler(settings(frames_max_bytes=100), metrics, store=store)
    await written(tiny, [(jpeg(99)[0], detections(jpeg(99)[1]), "cam-1")])
    assert dropped(metrics, "storage_full") == 1
    assert {k.rsplit("/", 1)[1][:-4] for k, _, _ in store.list() if k.endswith(".jpg")} == held


async def test_retention_deletes_old_frames(tmp_path):
    metrics = GatewayMetrics()
    store = LocalFrameStore(tmp_path)
    old_data, old_image = jpeg(20)
    await written(FrameSampler(settings(), metrics, store=store),
                  [(old_data, detections(old_image), "cam-1")])
    eight_days_ago = time.time() - 8 * 86400
    for path in tmp_path.rglob("*.j*"):
        os.utime(path, (eight_days_ago, eight_days_ago))
    # A restarted gateway reads what the store holds, then expires what is past retention.
    new_data, new_image = jpeg(21)
    await written(FrameSampler(settings(frames_retention_s=7 * 86400), metrics, store=store),
                  [(new_data, detections(new_image), "cam-1")])
    names = {k.rsplit("/", 1)[1] for k, _, _ in store.list()}
    new_sha, old_sha = (hashlib.sha256(b).hexdigest() for b in (new_data, old_data))
    assert names == {f"{new_sha}.jpg", f"{new_sha}.json"}
    assert old_sha not in str(names)


async def test_full_queue_drops_without_waiting(tmp_path):
    metrics = GatewayMetrics()
    sampler = FrameSampler(settings(frames_queue=2), metrics, store=LocalFrameStore(tmp_path))
    data, image = jpeg(30)
    t0 = time.perf_counter()
    results = [sampler.offer(data, detections(image), f"cam-{i}") for i in range(5)]
    assert time.perf_counter() - t0 < 0.5  # no worker started: nothing may wait for one
    assert results[:2] == ["uniform", "uniform"] and results[2:] == [None] * 3
    assert dropped(metrics, "queue_full") == 3


class FailingStore(LocalFrameStore):
    """The real local store whose writes fail with `error` while `failing` is set."""

    def __init__(self, root, error: Exception) -> None:
        super().__init__(root)
        self.error = error
        self.failing = True

    def put(self, key: str, data: bytes) -> None:
        if self.failing:
            raise self.error
        super().put(key, data)


async def test_store_errors_pause_and_count(tmp_path):
    metrics = GatewayMetrics()
    store = FailingStore(tmp_path, StoreUnavailable("connection refused"))
    sampler = FrameSampler(settings(frames_backoff_s=0.3), metrics, store=store)
    sampler.start()
    try:
        a, b, c = (jpeg(40 + i) for i in range(3))
        assert sampler.offer(a[0], detections(a[1]), "cam-1") == "uniform"
        await asyncio.wait_for(sampler.settled(), 10)
        assert dropped(metrics, "store_error") == 1
        # Paused: frames chosen now are counted and not queued; the request is not touched.
        assert sampler.offer(b[0], detections(b[1]), "cam-1") is None
        assert dropped(metrics, "paused") == 1
        store.failing = False
        await asyncio.sleep(0.35)  # the backoff has passed: sampling resumes on its own
        assert sampler.offer(c[0], detections(c[1]), "cam-1") == "uniform"
        await asyncio.wait_for(sampler.settled(), 10)
        assert len([k for k, _, _ in store.list() if k.endswith(".json")]) == 1
    finally:
        await sampler.close()
    # Storage full: dropped and counted, without pausing.
    metrics = GatewayMetrics()
    full = FailingStore(tmp_path / "full", StoreFull("No space left on device"))
    sampler = FrameSampler(settings(), metrics, store=full)
    frames = [jpeg(50 + i) for i in range(2)]
    await written(sampler, [(d, detections(i), "cam-1") for d, i in frames])
    assert dropped(metrics, "storage_full") == 2
    assert dropped(metrics, "paused") == 0


async def test_s3_sampler_and_store_down(s3_server):
    metrics = GatewayMetrics()
    store = S3FrameStore(s3_server, "frames-b", CREDS)
    data, image = jpeg(60)
    await written(FrameSampler(settings(), metrics, store=store),
                  [(data, detections(image), "cam-1")])  # the sampler creates the bucket
    sha = hashlib.sha256(data).hexdigest()
    assert store.get(frame_keys(sha, datetime.now(timezone.utc))[0]) == data
    (port,) = free_ports(1)
    down = S3FrameStore(f"http://127.0.0.1:{port}", "frames", CREDS, timeout_s=1)
    metrics = GatewayMetrics()
    sampler = FrameSampler(settings(frames_backoff_s=30), metrics, store=down)
    await written(sampler, [(data, detections(image), "cam-1")])
    assert dropped(metrics, "store_error") == 1
    assert sampler.offer(data, detections(image), "cam-2") is None
    assert dropped(metrics, "paused") == 1


# --- the drift flag -----------------------------------------------------------------------------

class StatusServer:
    """A real HTTP server answering GET /v1/drift/status with `body`."""

    def __init__(self) -> None:
        self.body: dict = {"window": 0, "last": None}
        self.auth: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.auth.append(self.headers.get("authorization", ""))
                payload = json.dumps(outer.body).encode()
                self.send_response(200 if self.path == "/v1/drift/status" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_drift_flag_follows_the_control_planes_last_check():
    server = StatusServer()
    flag = DriftFlag(settings(control_url=server.url, control_token="tok"))
    try:
        assert await flag.refresh() and not flag.flagged  # no check yet
        server.body = {"last": {"model": "detector", "version": "3", "drift": True,
                                "checked_at": 1.0e9}}
        assert await flag.refresh() and flag.flagged and flag.checked_at == 1.0e9
        server.body = {"last": {"model": "other-model", "version": "1", "drift": True}}
        assert await flag.refresh() and not flag.flagged  # another model's drift
        server.body = {"last": {"model": "detector", "version": "3", "drift": True}}
        await flag.refresh()
        assert server.auth[-1] == "Bearer tok"
        server.close()
        assert not await flag.refresh()  # control plane gone: the flag keeps its value
        assert flag.flagged
    finally:
        await flag.close()
    # A sampler whose flag is up keeps frames for the drift reason first.
    sampler = FrameSampler(settings(frames_drift_rate=1.0), GatewayMetrics(),
                           store=LocalFrameStore("/nonexistent-never-written"), drift=flag)
    data, image = jpeg(70)
    assert sampler.offer(data, detections(image, (0.4,), (0,)), "cam-1") == "drift"


async def test_local_disk_full_drops_and_counts(tmp_path):
    """A real small disk (tmpfs, where one can be mounted): frames past its room are dropped
    as storage_full, sampling does not pause, no partial file stays."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        metrics = GatewayMetrics()
        store = LocalFrameStore(mount)
        sampler = FrameSampler(settings(frames_max_bytes=64 << 20), metrics, store=store)
        frames = [jpeg(80 + i, side=160) for i in range(12)]  # ~50 kB each: 600 kB in all
        await written(sampler, [(d, detections(i), "cam-1") for d, i in frames])
        kept = len([k for k, _, _ in store.list() if k.endswith(".json")])
        full = dropped(metrics, "storage_full")
        assert full >= 1 and kept >= 1 and kept + full == 12
        images = len([k for k, _, _ in store.list() if k.endswith(".jpg")])
        assert images == kept  # an image whose record found no room is removed again
        assert dropped(metrics, "paused") == 0 and dropped(metrics, "store_error") == 0
        assert not list(mount.rglob(".put-*"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
