"""Per-stream tracking: the registry's rules, then the endpoint over the real stack."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import gateway_process
from tracker_service.errors import (FrameOutOfOrder, InvalidRequest, StreamNotFound,
                                     TooManyStreams)
from tracker_service.streams import StreamRegistry, check_stream_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("bad", ["", "a" * 65, "cam 3", "../etc", "-x", "cam/3", "é"])
def test_bad_stream_ids_are_refused(bad):
    with pytest.raises(InvalidRequest):
        check_stream_id(bad, 64)


@pytest.mark.parametrize("good", ["cam-3", "a", "site1.cam_2:rtsp", "a" * 64])
def test_good_stream_ids(good):
    assert check_stream_id(good, 64) == good


async def test_frames_must_be_newer_and_default_to_next():
    reg = StreamRegistry("sort", ttl_s=60, max_streams=10)
    async with reg.frame("cam", None) as (n, _):
        assert n == 0
    async with reg.frame("cam", 5) as (n, _):
        assert n == 5
    async with reg.frame("cam", None) as (n, _):
        assert n == 6
    for stale in (6, 3):
        with pytest.raises(FrameOutOfOrder) as info:
            async with reg.frame("cam", stale):
                pass
        assert info.value.extra["last_frame"] == 6
    async with reg.frame("other", 0) as (n, _):  # streams do not share counters
        assert n == 0


async def test_tracker_updates_apply_in_frame_order_even_if_detection_finishes_out_of_order():
    reg = StreamRegistry("sort", ttl_s=60, max_streams=10)
    applied = []

    async def run(frame: int, detect_s: float) -> None:
        async with reg.frame("cam", frame) as (n, turn):
            await asyncio.sleep(detect_s)  # frame 0 "detects" slowest
            await turn()
            applied.append(n)

    await asyncio.gather(run(0, 0.05), run(1, 0.0), run(2, 0.02))
    assert applied == [0, 1, 2]


async def test_a_failed_frame_does_not_block_the_next():
    reg = StreamRegistry("sort", ttl_s=60, max_streams=10)
    applied = []

    async def fails() -> None:
        async with reg.frame("cam", 0):
            await asyncio.sleep(0.02)
            raise RuntimeError("detection failed")

    async def ok() -> None:
        async with reg.frame("cam", 1) as (n, turn):
            await turn()
            applied.append(n)

    results = await asyncio.gather(fails(), ok(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and applied == [1]


async def test_ttl_eviction_and_stream_limit():
    clock = FakeClock()
    reg = StreamRegistry("sort", ttl_s=10, max_streams=2, clock=clock)
    for sid in ("a", "b"):
        async with reg.frame(sid, None):
            pass
    with pytest.raises(TooManyStreams):
        async with reg.frame("c", None):
            pass
    clock.now = 5
    async with reg.frame("a", None):  # a is fresh again; b is idle since t=0
        pass
    clock.now = 11
    async with reg.frame("c", None):  # admitting c evicts b, which idled past the TTL
        pass
    assert sorted(reg._streams) == ["a", "c"]
    clock.now = 100
    assert sorted(reg.evict_idle()) == ["a", "c"] and len(reg) == 0


def test_delete_unknown_stream():
    reg = StreamRegistry("sort", ttl_s=10, max_streams=2)
    with pytest.raises(StreamNotFound):
        reg.delete("nope")


def test_unknown_tracker_fails_at_start():
    with pytest.raises((KeyError, ValueError)):
        StreamRegistry("no-such-tracker", ttl_s=10, max_streams=2)


# --- the endpoint, over the real Triton and gateway --------------------------------------------

@pytest.fixture(scope="module")
def sort_gateway(stack, tmp_path_factory):
    """A gateway tracking with plain SORT: the seeded model's scores (~1e-4) are far below the
    default tracker's thresholds, and SORT has none. Same image -> same boxes -> the confirmed
    track ids must stay the same from frame to frame."""
    with gateway_process(stack, tmp_path_factory.mktemp("sort-gw"), tracker="sort") as url:
        yield url


def post_frame(url: str, stream_id: str, image: bytes, **params) -> httpx.Response:
    params = {"conf": 0.0001, "max_det": 10, **params}
    return httpx.post(f"{url}/v1/streams/{stream_id}/frames", content=image,
                      headers={"content-type": "image/jpeg"}, params=params, timeout=30)


@pytest.mark.integration
def test_stream_tracks_are_stable_and_streams_independent(sort_gateway, bus_jpg):
    url = sort_gateway
    bodies = [post_frame(url, "cam-1", bus_jpg).json() for _ in range(5)]
    assert [b["frame"] for b in bodies] == [0, 1, 2, 3, 4]
    assert all(b["stream_id"] == "cam-1" for b in bodies)
    last = bodies[-1]
    assert last["detections"] and last["tracks"]
    confirmed = {t["track_id"] for t in last["tracks"] if t["state"] == "confirmed"}
    assert confirmed and confirmed == {t["track_id"] for t in bodies[-2]["tracks"]
                                       if t["state"] == "confirmed"}
    assert all(t["age"] >= 3 for t in last["tracks"] if t["state"] == "confirmed")
    assert "track" in last["timings_ms"]

    other = post_frame(url, "cam-2", bus_jpg).json()
    assert other["frame"] == 0  # its own counter and its own tracker

    r = post_frame(url, "cam-1", bus_jpg, frame=2)
    assert r.status_code == 409 and r.json()["error"]["code"] == "frame_out_of_order"
    assert r.json()["error"]["last_frame"] == 4

    assert httpx.delete(f"{url}/v1/streams/cam-1").status_code == 204
    r = httpx.delete(f"{url}/v1/streams/cam-1")
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found"
    assert post_frame(url, "cam-1", bus_jpg).json()["frame"] == 0  # a fresh stream

    metrics = httpx.get(f"{url}/metrics").text
    assert "visionguard_active_streams 2.0" in metrics


@pytest.mark.integration
@pytest.mark.parametrize("stream_id", ["a" * 65, "cam%203", "..", "cam:3%2Fx"])
def test_bad_stream_id_gets_422(stack, bus_jpg, stream_id):
    r = post_frame(stack.gateway_url, stream_id, bus_jpg)
    assert r.status_code in (404, 422), r.text  # '..' may be normalised away by the client
    if r.status_code == 422:
        assert r.json()["error"]["code"] == "invalid_request"


@pytest.mark.integration
def test_bad_image_in_a_stream_keeps_the_stream_usable(stack, bus_jpg):
    r = httpx.post(f"{stack.gateway_url}/v1/streams/cam-bad/frames", content=b"junk",
                   headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 422
    assert post_frame(stack.gateway_url, "cam-bad", bus_jpg).status_code == 200


@pytest.mark.integration
def test_deepsort_with_embeddings_from_the_triton_reid_model(stack, bus_jpg, tmp_path):
    """`up` served the reid model beside the detector; a DeepSORT gateway asks it for
    embeddings of every detection and keeps stable ids on a repeated frame."""
    with gateway_process(stack, tmp_path, tracker="deepsort", embedder="triton") as url:
        bodies = [post_frame(url, "cam-ds", bus_jpg).json() for _ in range(5)]
        metrics = httpx.get(f"{url}/metrics").text
    confirmed = [{t["track_id"] for t in b["tracks"] if t["state"] == "confirmed"}
                 for b in bodies[-2:]]
    assert confirmed[0] and confirmed[0] == confirmed[1]
    assert 'visionguard_gateway_request_duration_seconds_count{route="/v1/streams/{stream_id:str}/frames",status="200"} 5.0' in metrics

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack.settings.triton_grpc_url)
    stats = client.get_inference_statistics("reid").model_stats[0]
    assert stats.inference_count >= 5 * len(bodies[0]["detections"])
