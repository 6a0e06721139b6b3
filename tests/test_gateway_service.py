"""The gateway's decisions (tracker_service/service.py) without a server: routing, fallback, frames.

Triton is a fake here, and says so: `FakeTriton` has the async methods of
`triton_client.DetectorClient` that the service calls, serves only the versions it is given, and
"detects" the one bright rectangle of an image, so which version answered and where a stream's
tracks are can be checked exactly. Everything else is real: the routing follower polls a control
plane over httpx (a MockTransport serving `Routing.as_dict()`, as the control plane does), the
stream registry, the trackers, the embedder, the metrics. The same paths over the real Triton and
real HTTP are in test_gateway.py and test_streams.py.
"""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np
import pytest

from tracker_service.detection import DetectOptions
from tracker_service.errors import FrameOutOfOrder, ModelNotFound, Overloaded
from tracker_service.metrics import GatewayMetrics
from tracker_service.routing import CHALLENGER, CHAMPION, Routing
from tracker_service.routing_follower import RoutingFollower
from tracker_service.service import DetectionService
from tracker_service.settings import GatewaySettings
from tracker_service.streams import StreamRegistry
from tracker_service.tracking import OUT_ID, OUT_STATE, HistogramEmbedder, TrackState
from tracker_service.triton_client import InferResult, ModelInfo


class FakeTriton:
    """DetectorClient as the service uses it, for the versions in `served`; Triton's answer for
    any other version is ModelNotFound. `model_info` always answers, as DetectorClient's cache
    does for a version that left Triton after its first request: the infer call is what fails."""

    model = "detector"

    def __init__(self, *served: str, delay_s: float = 0.0) -> None:
        self.served = set(served)
        self.delay_s = delay_s
        self.asked: list[str] = []

    async def ready(self, version: str = "") -> bool:
        return True

    async def model_info(self, version: str = "") -> ModelInfo:
        return ModelInfo(self.model, {0: "box"}, 32, 640)

    async def infer(self, image: np.ndarray, *, conf: float, iou: float, max_det: int,
                    version: str = "", headers: dict[str, str] | None = None) -> InferResult:
        self.asked.append(version)
        await asyncio.sleep(self.delay_s)
        if version not in self.served:
            raise ModelNotFound(f"model 'detector' version {version!r}: not found")
        ys, xs = np.nonzero(image.min(axis=2) > 200)  # the letterbox pads with grey 114
        if len(xs) == 0:
            return InferResult(np.zeros((0, 6), np.float32), version)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9, 0]
        return InferResult(np.array([box], np.float32), version)


class FakeControlPlane:
    """`GET /v1/routing` answering `routing`, counting the fetches."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.fetches = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/routing"
        self.fetches += 1
        return httpx.Response(200, json=self.routing.as_dict())


def png(x: int, y: int, size=(320, 240)) -> bytes:
    """A black image with one white 40 x 30 rectangle at (x, y)."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[y:y + 30, x:x + 40] = 255
    return cv2.imencode(".png", image)[1].tobytes()


class Upload:
    """The request body as the service reads it (once admitted); counts the reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    async def __call__(self) -> bytes:
        self.reads += 1
        return self.data


async def make_service(triton: FakeTriton, routing: Routing, tracker: str = "sort",
                       **settings) -> tuple[DetectionService, FakeControlPlane]:
    control = FakeControlPlane(routing)
    config = GatewaySettings(control_url="http://control.test", tracker=tracker, **settings)
    metrics = GatewayMetrics()
    follower = RoutingFollower(config, metrics, transport=httpx.MockTransport(control))
    await follower.refresh()  # what start() does first, without the polling task
    streams = StreamRegistry(tracker, ttl_s=60, max_streams=100)
    service = DetectionService(config, triton, follower, streams, HistogramEmbedder(), None,
                               metrics)
    return service, control


def routed(service: DetectionService, version: str, role: str) -> float:
    return service.metrics.registry.get_sample_value(
        "visionguard_gateway_routed_requests_total", {"version": version, "role": role}) or 0.0


# --- the version that answers ---------------------------------------------------------------------

async def test_a_routed_challenger_missing_from_triton_is_answered_by_the_champion():
    triton = FakeTriton("1")
    service, control = await make_service(triton, Routing("detector", "1", "2", 100.0))
    d = await service.detect(Upload(png(100, 100)), DetectOptions())
    assert d.model_version == "1"
    assert triton.asked == ["2", "1"]
    assert control.fetches == 2  # the routing was fetched again before falling back
    assert routed(service, "1", CHAMPION) == 1 and routed(service, "2", CHALLENGER) == 0


async def test_a_routed_version_gone_is_answered_by_the_routing_fetched_again():
    """The gateway's routing is a poll behind: the release already moved on to version 3."""
    triton = FakeTriton("1", "3")
    service, control = await make_service(triton, Routing("detector", "1", "2", 100.0))
    control.routing = Routing("detector", "3", None, 0.0)
    d = await service.detect(Upload(png(100, 100)), DetectOptions())
    assert d.model_version == "3" and triton.asked == ["2", "3"]
    assert service.routing.current == control.routing
    assert routed(service, "3", CHAMPION) == 1


async def test_an_explicitly_requested_version_that_is_missing_is_an_error():
    triton = FakeTriton("1")
    service, control = await make_service(triton, Routing("detector", "1", None, 0.0))
    with pytest.raises(ModelNotFound):
        await service.detect(Upload(png(100, 100)), DetectOptions(version="7"))
    assert triton.asked == ["7"]  # never answered by another version
    assert control.fetches == 1  # and the routing was not asked


async def test_a_missing_champion_is_an_error_after_one_fetch_of_the_routing():
    triton = FakeTriton("3")
    service, control = await make_service(triton, Routing("detector", "1", None, 0.0))
    with pytest.raises(ModelNotFound):
        await service.detect(Upload(png(100, 100)), DetectOptions())
    assert triton.asked == ["1"] and control.fetches == 2


async def test_canary_assignment_is_sticky_per_stream():
    triton = FakeTriton("1", "2")
    routing = Routing("detector", "1", "2", 50.0)
    service, _ = await make_service(triton, routing)
    image = Upload(png(100, 100))
    answered: dict[str, set[str]] = {}
    for frame in range(3):
        for i in range(12):
            t = await service.track(f"cam-{i}", frame, image, DetectOptions(conf=0.1))
            answered.setdefault(t.stream_id, set()).add(t.detections.model_version)
    assert all(answered[sid] == {routing.choose(sid)[0]} for sid in answered)
    assert {v for versions in answered.values() for v in versions} == {"1", "2"}
    assert routed(service, "1", CHAMPION) + routed(service, "2", CHALLENGER) == 36


# --- a stream's frames --------------------------------------------------------------------------

async def test_a_frame_not_newer_than_the_last_is_refused_before_detection():
    triton = FakeTriton("1")
    service, _ = await make_service(triton, Routing("detector", "1", None, 0.0))
    image = Upload(png(100, 100))
    assert (await service.track("cam", 5, image, DetectOptions())).frame == 5
    for stale in (5, 3):
        with pytest.raises(FrameOutOfOrder) as info:
            await service.track("cam", stale, image, DetectOptions())
        assert info.value.extra == {"last_frame": 5, "frame": stale}
    assert image.reads == 1 and len(triton.asked) == 1  # refused before reading the body
    assert (await service.track("cam", None, image, DetectOptions())).frame == 6


@pytest.mark.parametrize("tracker", ["sort", "deepsort"])
async def test_streams_never_share_tracks_or_track_ids(tracker):
    """Two streams, each with one object in a different place, frames interleaved: each stream
    has its own tracker (deepsort: fed embeddings), its own ids from 1, only its own object."""
    service, _ = await make_service(FakeTriton("1"), Routing("detector", "1", None, 0.0),
                                    tracker=tracker)
    images = {"left": Upload(png(20, 100)), "right": Upload(png(250, 100))}
    ids: dict[str, set[int]] = {"left": set(), "right": set()}
    for _ in range(5):
        for sid, image in images.items():
            t = await service.track(sid, None, image, DetectOptions())
            assert len(t.detections.boxes) == 1
            for track in t.tracks:
                x1 = track[0]
                assert (x1 < 160) == (sid == "left"), (sid, track)
                ids[sid].add(int(track[OUT_ID]))
            assert "track" in t.detections.timings_ms
    assert ids == {"left": {1}, "right": {1}}
    last = await service.track("left", None, images["left"], DetectOptions())
    assert [TrackState(int(s)) for s in last.tracks[:, OUT_STATE]] == [TrackState.CONFIRMED]
    assert service.metrics.registry.get_sample_value("visionguard_active_streams") == 2


async def test_requests_over_the_admission_bound_are_refused_without_reading_them():
    triton = FakeTriton("1", delay_s=0.2)
    service, _ = await make_service(triton, Routing("detector", "1", None, 0.0), max_pending=1)
    first, second = Upload(png(100, 100)), Upload(png(100, 100))
    results = await asyncio.gather(service.detect(first, DetectOptions()),
                                   service.detect(second, DetectOptions()),
                                   return_exceptions=True)
    assert results[0].model_version == "1" and isinstance(results[1], Overloaded)
    assert (first.reads, second.reads) == (1, 0)


@pytest.mark.parametrize("inline, max_pixels, threads", [
    (0, 10**6, ["worker", "worker"]), (1, 10**6, ["loop", "worker"]),
    (1, 320 * 240 - 1, ["worker", "worker"])])
async def test_a_lone_small_image_is_decoded_on_the_event_loop_only_when_the_settings_allow(
        monkeypatch, inline, max_pixels, threads):
    """VG_GATEWAY_INLINE_PREPARE_MAX_PENDING: at most that many requests held and an image of
    at most INLINE_PREPARE_MAX_PIXELS, the decode skips the worker-thread hop; a second request
    held at once, or a larger image, still decodes in a worker thread, so the loop keeps
    answering while it runs."""
    import threading

    import tracker_service.detection as detection

    where: list[str] = []
    loop_thread = threading.get_ident()

    def decode_image(*args, **kwargs):
        where.append("loop" if threading.get_ident() == loop_thread else "worker")
        return real(*args, **kwargs)

    real = detection.decode_image
    monkeypatch.setattr(detection, "decode_image", decode_image)
    service, _ = await make_service(FakeTriton("1", delay_s=0.2),
                                    Routing("detector", "1", None, 0.0),
                                    inline_prepare_max_pending=inline,
                                    inline_prepare_max_pixels=max_pixels)
    first, second = await asyncio.gather(service.detect(Upload(png(100, 100)), DetectOptions()),
                                         service.detect(Upload(png(50, 60)), DetectOptions()))
    assert where == threads
    np.testing.assert_allclose(first.boxes, [[100, 100, 140, 130]], atol=0.5)
    np.testing.assert_allclose(second.boxes, [[50, 60, 90, 90]], atol=0.5)
