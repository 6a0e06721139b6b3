"""Zones, lines and signed webhooks (tracker_service/zones.py, webhooks.py, the zones API).

- Geometry and state on synthetic tracks: a line crossed both ways, a zone entered and left,
  jitter on a line counted once, dwell in the stream's seconds, occlusions, the validation's
  422s; supervision's LineZone is run beside ours on the same boxes (direction names agree; it
  loses a crossing made while the track was hidden, which is why its rule is not used as is).
- The service with test_gateway_service.py's fake Triton (it says so): zones set before the
  stream's frame size is known are checked at its first frame; a deleted stream takes its series.
- The webhook sender against real HTTP receivers (http.server in a thread): signature, retries,
  a receiver that hangs, a full queue.
- A real gateway on the stack's Triton serving a detector trained here: a shape moves across a
  line and through a zone; events in the responses, counters in /metrics, log lines with the
  request's trace id, signed deliveries; a receiver that hangs and one that answers 500 do not
  slow or fail the frames. The API's 404 and 422 answers on the stack's own gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time

import cv2
import httpx
import numpy as np
import pytest

from tests.conftest import free_ports, gateway_process
from tests.webhook_receiver import receiving, signature_ok
from tracker_service.errors import InvalidRequest
from tracker_service.tracking import TrackState
from tracker_service.webhooks import WebhookSender, sign, verify
from tracker_service.zones import (LineSpec, StreamZones, ZoneLimits, ZoneSpec, build_zones)

CONFIRMED, TENTATIVE, LOST = (int(s) for s in (TrackState.CONFIRMED, TrackState.TENTATIVE,
                                               TrackState.LOST))


def track(track_id: int, cx: float, bottom: float, state: int = CONFIRMED,
          w: float = 20, h: float = 40) -> list[float]:
    """One tracker output row whose bottom centre is (cx, bottom)."""
    return [cx - w / 2, bottom - h, cx + w / 2, bottom, track_id, 0.9, 0, 5, state]


def frame_of(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 9)


def run(zones: StreamZones, frames: list[np.ndarray], start: int = 0) -> list[dict]:
    events = []
    for i, tracks in enumerate(frames, start):
        events += [e.as_dict() for e in zones.update(i, tracks)]
    return events


VERTICAL = LineSpec("door", (100.0, 0.0), (100.0, 200.0))  # drawn downwards: left = +x
RIGHT_HALF = ZoneSpec("right", ((100.0, 0.0), (200.0, 0.0), (200.0, 200.0), (100.0, 200.0)))


def test_a_line_crossed_both_ways_counts_in_then_out():
    zones = StreamZones([], [VERTICAL], frame_rate=10.0, min_frames=2)
    xs = [40, 60, 80, 120, 140, 160, 140, 120, 80, 60]
    events = run(zones, [frame_of(track(7, x, 150)) for x in xs])
    assert [(e["type"], e["line"], e["direction"], e["track_id"]) for e in events] == [
        ("line_cross", "door", "in", 7), ("line_cross", "door", "out", 7)]
    # Confirmed on the second frame on the new side: frames 4 (x=140) and 9 (x=60).
    assert [(e["frame"], e["t_s"]) for e in events] == [(4, 0.4), (9, 0.9)]
    (count,) = zones.line_counts()
    assert (count.inward, count.outward) == (1, 1)


def test_direction_names_agree_with_supervision_linezone():
    sv = pytest.importorskip("supervision")
    for start, end, xs in [((100, 0), (100, 200), [40, 80, 120, 160]),
                           ((100, 200), (100, 0), [40, 80, 120, 160]),
                           ((0, 100), (200, 100), None)]:
        ours = StreamZones([], [LineSpec("l", start, end)], frame_rate=30, min_frames=1)
        theirs = sv.LineZone(sv.Point(*start), sv.Point(*end),
                             triggering_anchors=[sv.Position.BOTTOM_CENTER])
        # A horizontal line: the box moves up the image (bottom from 160 to 40).
        path = [(x, 150) for x in xs] if xs else [(100, y) for y in (160, 130, 70, 40)]
        for i, (x, y) in enumerate(path):
            rows = frame_of(track(1, x, y))
            ours.update(i, rows)
            theirs.trigger(sv.Detections(xyxy=rows[:, :4], tracker_id=np.array([1])))
        (count,) = ours.line_counts()
        assert (count.inward, count.outward) == (theirs.in_count, theirs.out_count) != (0, 0)


def test_jitter_on_the_line_is_counted_once():
    xs = [60, 80, 95, 105, 96, 104, 97, 103, 110, 130, 150]  # flickers across x=100, then goes
    zones = StreamZones([], [VERTICAL], frame_rate=30, min_frames=2)
    events = run(zones, [frame_of(track(3, x, 150)) for x in xs])
    assert [(e["direction"], e["frame"]) for e in events] == [("in", 8)]
    # The rule is what makes the difference: without confirmation every flicker counts.
    eager = StreamZones([], [VERTICAL], frame_rate=30, min_frames=1)
    assert len(run(eager, [frame_of(track(3, x, 150)) for x in xs])) == 5


def test_a_crossing_while_hidden_is_counted_where_linezone_loses_it():
    """The track is seen left of the line, hidden for 4 frames (a tracker keeps it for 2 s),
    then seen right of it: one crossing. LineZone forgets a track missing for 3 frames and
    seeds it again on the far side."""
    sv = pytest.importorskip("supervision")
    seen = {0: 60, 1: 70, 2: 80, 7: 130, 8: 140, 9: 150}
    ours = StreamZones([], [VERTICAL], frame_rate=30, min_frames=2)
    theirs = sv.LineZone(sv.Point(100, 0), sv.Point(100, 200),
                         triggering_anchors=[sv.Position.BOTTOM_CENTER],
                         minimum_crossing_threshold=2)
    for i in range(10):
        rows = frame_of(track(5, seen[i], 150)) if i in seen else frame_of()
        ours.update(i, rows)
        theirs.trigger(sv.Detections(xyxy=rows[:, :4],
                                     tracker_id=rows[:, 4].astype(int)))
    assert (ours.line_counts()[0].inward, theirs.in_count) == (1, 0)


def test_zone_entry_exit_occupancy_and_dwell_in_the_streams_seconds():
    # Track 1 walks in at frame 2 and out at frame 12; track 2 stays outside.
    path = [50, 80, 120, 130, 140, 150, 160, 150, 140, 130, 120, 80, 60, 50]
    frames = [frame_of(track(1, x, 150), track(2, 20, 150)) for x in path]
    for fps, dwell in ((10.0, 0.9), (25.0, 0.36)):
        zones = StreamZones([RIGHT_HALF], [], frame_rate=fps, min_frames=2)
        occupancy = []
        events = []
        for i, rows in enumerate(frames):
            events += [e.as_dict() for e in zones.update(i, rows)]
            occupancy.append(zones.zone_counts()[0].occupancy)
        assert [(e["type"], e["zone"], e["track_id"], e["frame"]) for e in events] == [
            ("zone_enter", "right", 1, 3), ("zone_exit", "right", 1, 12)]
        assert events[0]["t_s"] == round(3 / fps, 3) and "dwell_s" not in events[0]
        assert events[1]["dwell_s"] == dwell  # (12 - 3) frames at the stream's rate
        assert occupancy == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
        count = zones.zone_counts()[0]
        assert (count.entries, count.exits, count.occupancy) == (1, 1, 0)


def test_a_track_first_seen_inside_enters_and_one_that_vanishes_exits_after_absent_s():
    zones = StreamZones([RIGHT_HALF], [], frame_rate=10.0, min_frames=2, absent_s=1.0)
    events = run(zones, [frame_of(track(4, 150, 150))] * 3)
    assert [(e["type"], e["frame"]) for e in events] == [("zone_enter", 0)]
    # Hidden for 0.8 s: still inside, no exit and no second entry when it is seen again.
    gap = run(zones, [frame_of()] * 8 + [frame_of(track(4, 150, 150))], start=3)
    assert gap == [] and zones.zone_counts()[0].occupancy == 1
    # Then gone for good: it exits once more than 1 s has passed since frame 11.
    events = run(zones, [frame_of()] * 12, start=12)
    assert [(e["type"], e["frame"], e["dwell_s"]) for e in events] == [("zone_exit", 22, 1.1)]
    assert zones.zone_counts()[0].occupancy == 0


def test_tentative_and_lost_rows_are_not_observations():
    zones = StreamZones([RIGHT_HALF], [VERTICAL], frame_rate=30, min_frames=1)
    events = run(zones, [frame_of(track(1, 50, 150, TENTATIVE)),
                         frame_of(track(1, 150, 150, TENTATIVE)),
                         frame_of(track(2, 50, 150)),
                         frame_of(track(2, 150, 150, LOST)),  # a prediction, not a sighting
                         frame_of(track(2, 60, 150))])
    assert events == []


def test_the_zones_edge_counts_as_inside():
    """A box clipped to the frame's bottom edge has its point on a zone drawn to that edge."""
    zones = StreamZones([RIGHT_HALF], [], frame_rate=30)
    assert [e["type"] for e in run(zones, [frame_of(track(1, 150, 200.0))])] == ["zone_enter"]


# --- validation ------------------------------------------------------------------------------

LIMITS = ZoneLimits(max_zones=2, max_lines=2, max_points=6, max_id_length=16)
SQUARE = ((0, 0), (10, 0), (10, 10), (0, 10))


@pytest.mark.parametrize("zones,lines,problem,names", [
    ([ZoneSpec("bow", ((0, 0), (10, 10), (10, 0), (0, 10)))], [], "self_intersecting", "bow"),
    ([ZoneSpec("two", ((0, 0), (10, 0)))], [], "too_few_points", "two"),
    ([ZoneSpec("many", tuple((np.cos(a) * 5 + 5, np.sin(a) * 5 + 5)
                             for a in np.linspace(0, 6, 7)))], [], "too_many_points", "many"),
    ([ZoneSpec(f"z{i}", SQUARE) for i in range(3)], [], "too_many_zones", None),
    ([], [LineSpec(f"l{i}", (0, 0), (1, 1)) for i in range(3)], "too_many_lines", None),
    ([ZoneSpec("neg", ((-1, 0), (10, 0), (10, 10)))], [], "negative_coordinate", "neg"),
    ([ZoneSpec("far", ((0, 0), (700, 0), (700, 10)))], [], "outside_frame", "far"),
    ([], [LineSpec("far", (0, 0), (10, 500))], "outside_frame", "far"),
    ([ZoneSpec("a", SQUARE), ZoneSpec("a", SQUARE)], [], "duplicate_id", "a"),
    ([ZoneSpec("a", SQUARE)], [LineSpec("a", (0, 0), (5, 5))], "duplicate_id", "a"),
    ([], [LineSpec("dot", (5, 5), (5, 5))], "zero_length", "dot"),
    ([ZoneSpec("flat", ((0, 0), (5, 5), (10, 10)))], [], "zero_area", "flat"),
    ([ZoneSpec("a b", SQUARE)], [], "invalid_id", "a b"),
    ([ZoneSpec("x" * 17, SQUARE)], [], "invalid_id", "x" * 17),
    ([ZoneSpec("inf", ((0, 0), (float("inf"), 0), (5, 5)))], [], "invalid_coordinate", "inf"),
])
def test_bad_configurations_are_refused_naming_the_problem(zones, lines, problem, names):
    with pytest.raises(InvalidRequest) as info:
        build_zones(zones, lines, LIMITS, 30.0, frame_size=(640, 480))
    body = info.value.body()["error"]
    assert info.value.status_code == 422 and body["problem"] == problem, body
    if names is not None:
        assert names in (body.get("zone"), body.get("line")), body


def test_good_configuration_closing_point_and_unknown_frame_size():
    ring = SQUARE + (SQUARE[0],)  # a ring given closed is the same polygon
    state = build_zones([ZoneSpec("a", ring)], [LineSpec("b", (0, 0), (900, 900))], LIMITS,
                        30.0, frame_size=None)
    assert len(state.zone_specs[0].polygon) == 4
    # Frame size unknown at PUT: checked against the first frame.
    assert state.outside(1000, 1000) is None
    problem = state.outside(640, 480)
    assert problem is not None and problem.extra["line"] == "b"


# --- the service: zones set while the first frame is in flight ------------------------------

async def test_zones_set_before_the_frame_size_is_known_are_checked_at_the_first_frame():
    """The service alone, with test_gateway_service.py's fake Triton (it "detects" the white
    rectangle of a 320 x 240 image after 0.2 s): zones are set while the stream's first frame is
    detecting, and reach past that frame."""
    from tests.test_gateway_service import FakeTriton, Upload, make_service, png
    from tracker_service.detection import DetectOptions
    from tracker_service.errors import StreamNotFound
    from tracker_service.routing import Routing

    service, _ = await make_service(FakeTriton("1", delay_s=0.2),
                                    Routing("detector", "1", None, 0.0))
    with pytest.raises(StreamNotFound):
        service.set_zones("cam", [], [])
    first = asyncio.create_task(service.track("cam", None, Upload(png(10, 100)), DetectOptions()))
    while True:  # admitted: the stream exists, its frame size is not known yet
        try:
            service.stream_zones("cam")
            break
        except StreamNotFound:
            await asyncio.sleep(0.005)
    service.set_zones("cam", [ZoneSpec("wide", ((0, 0), (400, 0), (400, 200)))], [])
    series = {"stream": "cam", "zone": "wide"}
    sample = service.metrics.registry.get_sample_value
    assert sample("visionguard_zone_occupancy", series) == 0
    with pytest.raises(InvalidRequest) as info:
        await first
    assert (info.value.extra["problem"], info.value.extra["zone"]) == ("outside_frame", "wide")
    assert service.stream_zones("cam") is None and sample("visionguard_zone_occupancy",
                                                          series) is None
    # The stream goes on without them; zones that fit are checked against its size at once.
    t = await service.track("cam", None, Upload(png(10, 100)), DetectOptions())
    assert t.frame == 1 and (t.zones, t.lines, t.events) == ([], [], [])
    with pytest.raises(InvalidRequest, match="outside"):
        service.set_zones("cam", [ZoneSpec("wide", ((0, 0), (400, 0), (400, 200)))], [])
    service.set_zones("cam", [ZoneSpec("left", ((0, 0), (160, 0), (160, 240), (0, 240)))], [])
    events = []
    for _ in range(3):  # SORT confirms a track on its third match
        t = await service.track("cam", None, Upload(png(10, 100)), DetectOptions())
        events += [(e.type, e.shape) for e in t.events]
    assert events == [("zone_enter", "left")]
    assert sample("visionguard_zone_entries_total", {"stream": "cam", "zone": "left"}) == 1
    service.forget("cam")  # deleting the stream takes its series with it
    assert sample("visionguard_zone_entries_total", {"stream": "cam", "zone": "left"}) is None


# --- webhooks against real HTTP receivers ----------------------------------------------------

SECRET = "test-secret"


def test_sign_and_verify():
    body = b'{"a":1}'
    good = sign(SECRET, 1_000_000, body)
    assert verify(SECRET, body, "1000000", good, now=1_000_100)
    assert not verify(SECRET, body + b" ", "1000000", good, now=1_000_100)  # body changed
    assert not verify(SECRET, body, "1000001", good, now=1_000_100)  # timestamp changed
    assert not verify("other", body, "1000000", good, now=1_000_100)
    assert not verify(SECRET, body, "1000000", good, now=1_000_000 + 301)  # a replay, later
    with pytest.raises(ValueError, match="secret"):
        WebhookSender(["http://127.0.0.1:1/x"], "")
    with pytest.raises(ValueError, match="http"):
        WebhookSender(["ftp://host/x"], SECRET)


async def test_deliveries_are_signed_retried_and_counted():
    with receiving() as r:
        outcomes: list[str] = []
        sender = WebhookSender([f"{r.url}/ok", f"{r.url}/fail"], SECRET, timeout_s=2.0,
                               retries=2, backoff_s=0.01, on_outcome=outcomes.append)
        await sender.start()
        for i in range(3):
            sender.send("test_event", {"n": i, "text": "é"})
        await sender.close(drain_s=10)
    got = r.on("/ok")
    assert [json.loads(b)["n"] for _, b in got] == [0, 1, 2]  # in order
    assert all(signature_ok(h, b, SECRET) for h, b in got)
    assert {h["X-VisionGuard-Event"] for h, _ in got} == {"test_event"}
    # /fail: 3 attempts per delivery, each signed again, one delivery id across them.
    failed = r.on("/fail")
    assert len(failed) == 9 and all(signature_ok(h, b, SECRET) for h, b in failed)
    assert len({h["X-VisionGuard-Delivery"] for h, _ in failed}) == 3
    assert sender.counts == {"delivered": 3, "retried": 6, "failed": 3, "dropped": 0}
    assert sorted(outcomes) == sorted(["delivered"] * 3 + ["retried"] * 6 + ["failed"] * 3)


async def test_a_hanging_receiver_times_out_and_a_full_queue_drops_the_oldest():
    with receiving() as r:
        sender = WebhookSender([f"{r.url}/hang", f"{r.url}/ok"], SECRET, timeout_s=0.3,
                               queue_size=2, retries=0)
        await sender.start()
        for i in range(6):
            sender.send("e", {"n": i})
        assert r.requests == []  # send only queued: nothing waited for a receiver
        await sender.close(drain_s=5)
    ok = [json.loads(b)["n"] for _, b in r.on("/ok")]
    hung = [json.loads(b)["n"] for _, b in r.on("/hang")]
    # Queues of 2: the 2 newest of 6 were kept, for each URL; /hang's both timed out.
    assert hung == [4, 5] and ok == [4, 5]
    assert sender.counts == {"delivered": 2, "retried": 0, "failed": 2, "dropped": 8}


async def test_a_receiver_that_is_down_is_a_retried_connection_error():
    (port,) = free_ports(1)
    sender = WebhookSender([f"http://127.0.0.1:{port}/x"], SECRET, retries=1, backoff_s=0.01)
    await sender.start()
    sender.send("e", {})
    await sender.close(drain_s=5)
    assert sender.counts == {"delivered": 0, "retried": 1, "failed": 1, "dropped": 0}


# --- the API on the stack's gateway ----------------------------------------------------------

def put_zones(url: str, stream_id: str, body) -> httpx.Response:
    return httpx.put(f"{url}/v1/streams/{stream_id}/zones", timeout=30,
                     **({"content": body} if isinstance(body, bytes) else {"json": body}))


@pytest.mark.integration
def test_zones_on_an_unknown_stream_get_404(stack):
    url = stack.gateway_url
    for r in (put_zones(url, "never-framed", {"zones": [], "lines": []}),
              httpx.get(f"{url}/v1/streams/never-framed/zones", timeout=30),
              httpx.delete(f"{url}/v1/streams/never-framed/zones", timeout=30)):
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "stream_not_found"
        assert "first frame" in r.json()["error"]["message"]


@pytest.mark.integration
def test_zones_api_validates_sets_reads_and_clears(stack, bus_jpg):
    url, sid = stack.gateway_url, "cam-zones-api"
    frame = httpx.post(f"{url}/v1/streams/{sid}/frames", content=bus_jpg, timeout=60,
                       headers={"content-type": "image/jpeg"})
    assert frame.status_code == 200, frame.text
    assert (frame.json()["zones"], frame.json()["lines"], frame.json()["events"]) == ([], [], [])
    square = [[0, 0], [100, 0], [100, 100], [0, 100]]
    bad = {  # bus.jpg is 810 x 1080
        "self_intersecting": {"zones": [{"id": "z", "polygon": [[0, 0], [99, 99], [99, 0],
                                                                [0, 99]]}]},
        "outside_frame": {"zones": [{"id": "z", "polygon": [[0, 0], [900, 0], [900, 50]]}]},
        "too_many_points": {"zones": [{"id": "z", "polygon": [
            [400 + 300 * np.cos(a), 500 + 300 * np.sin(a)]
            for a in np.linspace(0, 2 * np.pi, 65, endpoint=False)]}]},
        "too_many_zones": {"zones": [{"id": f"z{i}", "polygon": square} for i in range(17)]},
        "duplicate_id": {"zones": [{"id": "d", "polygon": square}],
                         "lines": [{"id": "d", "start": [0, 0], "end": [5, 5]}]},
        "zero_length": {"lines": [{"id": "l", "start": [5, 5], "end": [5, 5]}]},
        "negative_coordinate": {"lines": [{"id": "l", "start": [-5, 5], "end": [5, 5]}]},
        "invalid_body": {"zones": [{"id": "z", "polygon": [[0, 0, 1], [1, 0], [1, 1]]}]},
    }
    for problem, body in bad.items():
        r = put_zones(url, sid, body)
        assert r.status_code == 422, (problem, r.text)
        assert r.json()["error"]["problem"] == problem, r.text
    r = put_zones(url, sid, b"{not json")
    assert r.status_code == 422 and r.json()["error"]["problem"] == "invalid_body"

    config = {"zones": [{"id": "kerb", "polygon": [[0, 500], [810, 500], [810, 1080],
                                                   [0, 1080]]}],
              "lines": [{"id": "gate", "start": [0, 700], "end": [810, 700]}]}
    r = put_zones(url, sid, config)
    assert r.status_code == 200, r.text
    expected = {"stream_id": sid,
                "zones": [{"id": "kerb", "polygon": config["zones"][0]["polygon"],
                           "occupancy": 0, "entries": 0, "exits": 0}],
                "lines": [{"id": "gate", "start": [0, 700], "end": [810, 700], "in": 0,
                           "out": 0}]}
    assert r.json() == expected
    assert httpx.get(f"{url}/v1/streams/{sid}/zones", timeout=30).json() == expected
    frame = httpx.post(f"{url}/v1/streams/{sid}/frames", content=bus_jpg, timeout=60,
                       headers={"content-type": "image/jpeg"}).json()
    assert frame["zones"] == [{"id": "kerb", "occupancy": 0, "entries": 0, "exits": 0}]
    assert frame["lines"] == [{"id": "gate", "in": 0, "out": 0}]
    assert httpx.delete(f"{url}/v1/streams/{sid}/zones", timeout=30).status_code == 204
    assert httpx.get(f"{url}/v1/streams/{sid}/zones", timeout=30).json() == {
        "stream_id": sid, "zones": [], "lines": []}
    assert httpx.delete(f"{url}/v1/streams/{sid}", timeout=30).status_code == 204


# --- a real gateway, a trained detector, a shape crossing a line -----------------------------

ZONES_MODEL = "zones_detector"
STREAM = "cam-crossing"
HANG_TIMEOUT_S = 2.0  # the gateway's webhook deadline; the /hang receiver holds far longer


@pytest.fixture(scope="module")
def zones_detector(stack, trained_checkpoint):
    """The detector trained here (the stack serves an untrained one, whose boxes do not move
    with the image), loaded into the stack's Triton beside it under another name, and taken out
    again at the end."""
    import tritonclient.http as triton_http

    from export.pipeline import export_to_repository

    repo = stack.settings.model_repository
    export_to_repository(trained_checkpoint, repo, version=1, name=ZONES_MODEL)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{stack.settings.triton_http_port}")
    try:
        client.load_model(ZONES_MODEL)
        yield ZONES_MODEL
    finally:
        client.unload_model(ZONES_MODEL)
        shutil.rmtree(repo / ZONES_MODEL, ignore_errors=True)


@pytest.fixture(scope="module")
def hooks():
    with receiving() as r:
        yield r


@pytest.fixture(scope="module")
def zones_gateway(stack, zones_detector, hooks, tmp_path_factory):
    """A gateway on that detector, tracking with SORT, sending its events to three receivers:
    one that answers, one that hangs, one that answers 500."""
    log_dir = tmp_path_factory.mktemp("zones-gateway")
    with gateway_process(stack, log_dir, model_name=zones_detector, tracker="sort",
                         webhook_urls=f"{hooks.url}/ok,{hooks.url}/hang,{hooks.url}/fail",
                         webhook_secret=SECRET, webhook_timeout_s=str(HANG_TIMEOUT_S),
                         webhook_retries="1", webhook_backoff_s="0.05") as url:
        yield url, log_dir / "gateway.log"


def circle_frame(cx: int) -> bytes:
    """A 256 x 256 frame with one filled circle centred at (cx, 128): the detector trained on
    generated shapes finds it (score about 0.5) wherever it is."""
    img = np.full((256, 256, 3), 90, np.uint8)
    cv2.circle(img, (cx, 128), 28, (40, 200, 240), -1, cv2.LINE_AA)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def metric(text: str, name: str, **labels: str) -> float:
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            got = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if got == labels:
                return float(value)
    raise AssertionError(f"no {name}{want} in /metrics")


@pytest.mark.integration
def test_a_shape_crossing_a_line_and_a_zone_gives_events_counts_logs_and_webhooks(
        zones_gateway, hooks):
    url, log_path = zones_gateway
    fps = 10.0

    def post(cx: int) -> httpx.Response:
        r = httpx.post(f"{url}/v1/streams/{STREAM}/frames", content=circle_frame(cx),
                       headers={"content-type": "image/jpeg"},
                       params={"fps": fps, "conf": 0.2, "max_det": 5}, timeout=60)
        assert r.status_code == 200, r.text
        return r

    post(40)  # the stream starts with its first frame
    r = put_zones(url, STREAM, {
        "zones": [{"id": "right", "polygon": [[128, 0], [256, 0], [256, 256], [128, 256]]}],
        "lines": [{"id": "middle", "start": [128, 0], "end": [128, 256]}]})  # downwards
    assert r.status_code == 200, r.text
    path = list(range(48, 217, 8)) + list(range(208, 39, -8))  # right, then back left
    responses = [post(cx) for cx in path]
    bodies = [r.json() for r in responses]
    # A frame that waited for the hanging receiver would have taken HANG_TIMEOUT_S at least.
    assert max(r.elapsed.total_seconds() for r in responses) < HANG_TIMEOUT_S
    assert all(b["tracks"] for b in bodies), "the detector lost the circle"

    events = [e for b in bodies for e in b["events"]]
    crossings = [(e["line"], e["direction"]) for e in events if e["type"] == "line_cross"]
    zone_events = [e for e in events if e["type"] != "line_cross"]
    assert crossings == [("middle", "in"), ("middle", "out")], events
    assert [(e["type"], e["zone"]) for e in zone_events] == [("zone_enter", "right"),
                                                           ("zone_exit", "right")], events
    enter, leave = zone_events
    assert enter["track_id"] == leave["track_id"]
    assert leave["dwell_s"] == round((leave["frame"] - enter["frame"]) / fps, 3) > 0
    assert all(e["t_s"] == round(e["frame"] / fps, 3) for e in events)
    assert bodies[-1]["zones"] == [{"id": "right", "occupancy": 0, "entries": 1, "exits": 1}]
    assert bodies[-1]["lines"] == [{"id": "middle", "in": 1, "out": 1}]
    inside = [b["zones"][0]["occupancy"] for b in bodies]
    assert max(inside) == 1 and inside[-1] == 0

    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert metric(text, "visionguard_line_crossings_total", stream=STREAM, line="middle",
                  direction="in") == 1
    assert metric(text, "visionguard_line_crossings_total", stream=STREAM, line="middle",
                  direction="out") == 1
    assert metric(text, "visionguard_zone_entries_total", stream=STREAM, zone="right") == 1
    assert metric(text, "visionguard_zone_exits_total", stream=STREAM, zone="right") == 1
    assert metric(text, "visionguard_zone_occupancy", stream=STREAM, zone="right") == 0

    # One log line per event, carrying the trace id of the frame request that caused it.
    trace_of = {(e["type"], e["frame"]): r.headers["x-trace-id"]
                for r, b in zip(responses, bodies) for e in b["events"]}
    logged = [json.loads(line) for line in log_path.read_text().splitlines()
              if line.startswith("{")]
    logged = {(rec["event"], rec["frame"]): rec for rec in logged
              if rec.get("event") in ("zone_enter", "zone_exit", "line_cross")
              and rec.get("stream_id") == STREAM}
    assert set(logged) == set(trace_of)
    assert all(logged[k]["trace_id"] == trace_of[k] for k in trace_of)

    # The answering receiver got every event, signed, in order. /fail's deliveries and the
    # first of /hang's (each attempt held past the deadline) are retried once and given up on,
    # while the frames above went on without waiting for them.
    payloads = len([b for b in bodies if b["events"]])  # one POST per frame with events
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        outcome = {o: metric(text, "visionguard_gateway_webhooks_total", outcome=o)
                   for o in ("delivered", "retried", "failed", "dropped")}
        if outcome["delivered"] >= payloads and outcome["failed"] >= payloads + 1:
            break
        assert time.monotonic() < deadline, (outcome, payloads)
        time.sleep(0.5)
    assert outcome["retried"] >= payloads + 1 and outcome["dropped"] == 0
    delivered = hooks.on("/ok")
    assert len(delivered) == payloads and all(signature_ok(h, b, SECRET) for h, b in delivered)
    assert [e for _, b in delivered for e in json.loads(b)["events"]] == events
    assert {json.loads(b)["trace_id"] for _, b in delivered} <= set(trace_of.values())
    assert len(hooks.on("/fail")) == 2 * payloads  # each delivery: tried, retried, given up
    hung = hooks.on("/hang")
    assert all(signature_ok(h, b, SECRET) for h, b in hung)
    assert hung[0][0]["X-VisionGuard-Delivery"] == hung[1][0]["X-VisionGuard-Delivery"]
    failures = "\n".join(line for line in log_path.read_text().splitlines()
                         if '"webhook_failed"' in line)
    assert f"{hooks.url}/hang" in failures and f"no answer within {HANG_TIMEOUT_S:g} s" in failures
    assert f"{hooks.url}/fail" in failures and "HTTP 500" in failures

    # Deleting the stream clears its zones and their series.
    assert httpx.delete(f"{url}/v1/streams/{STREAM}", timeout=30).status_code == 204
    assert f'stream="{STREAM}"' not in httpx.get(f"{url}/metrics", timeout=30).text
