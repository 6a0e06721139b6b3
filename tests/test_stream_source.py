"""`visionguard stream`: a video PyAV encodes from the generated crossing scene, sent to the
stack's real gateway as a user runs the command (a subprocess, exit statuses included).

Network sources are a local `http.server` thread serving the MP4 (with Range, as FFmpeg seeks),
which can also cut the connection or stall mid-file, and a real RTSP server in a thread
(aio-rtsp-toolkit, RTSP over TCP, in real time). Not run: a webcam (no /dev/video* here).
Runs that test the client alone go through the same CLI app in this process (`invoke`), which
saves a process start-up (several seconds on a busy machine) each.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import free_ports, gateway_process
from tracker_service.tracking.synthetic import make_crossing_sequence

N_FRAMES = 60


@pytest.fixture(scope="module")
def crossing_mp4(tmp_path_factory) -> Path:
    """60 frames (2 s at 30 frames/s) of figures crossing, 320x240, H.264, moov first (so a
    network reader can start before the end)."""
    seq = make_crossing_sequence(seed=0, n_frames=N_FRAMES, size=(240, 320))
    path = tmp_path_factory.mktemp("video") / "crossing.mp4"
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(seq.n_frames):
            frame = av.VideoFrame.from_ndarray(seq.frame(i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def sort_gateway(stack, tmp_path_factory):
    """A gateway tracking with plain SORT: the seeded model's scores (~1e-4) are far below the
    default tracker's thresholds, and SORT has none, so its tracks are there to be drawn."""
    with gateway_process(stack, tmp_path_factory.mktemp("stream-gw"), tracker="sort") as url:
        yield url


def run_stream(source, *args: str, env: dict[str, str], timeout: float = 120
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control_plane", "stream", str(source), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def summary(out: str, label: str) -> int:
    """A count from the summary table (`│ sent │ 23 │`)."""
    match = re.search(rf"│ {re.escape(label)}\s*│ (\d+)", out)
    assert match, f"no {label!r} row in:\n{out}"
    return int(match.group(1))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decoded_frame_numbers(path: Path, fps: float = 30) -> list[int]:
    with av.open(str(path)) as container:
        return [round(float(f.pts * f.time_base) * fps) for f in container.decode(video=0)]


def invoke(source, *args: str, tmp_path: Path) -> tuple[int, str]:
    """`visionguard stream` in this process (the tests of the client alone: no CLI start-up per
    run), as `control_plane.cli.main` maps its result: (exit status, output with the error)."""
    from typer.testing import CliRunner

    from control_plane.cli import app
    from control_plane.errors import ControlPlaneError

    result = CliRunner().invoke(app, ["stream", str(source), *args],
                                env={"VG_RUNTIME_DIR": str(tmp_path / "runtime")})
    if isinstance(result.exception, ControlPlaneError):
        return result.exception.exit_code, f"{result.output}error: {result.exception.message}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a stalled answer is not waited for at the end
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def file_server(data: bytes, first: str = "serve", every: str = "serve"):
    """A handler serving `data` with Range support; the first request and every later one
    `serve` it, `cut` the connection half-way, or `stall` (send half, then nothing)."""

    class Handler(BaseHTTPRequestHandler):
        requests: list[str] = []

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            mode = first if not Handler.requests else every
            Handler.requests.append(self.headers.get("range", ""))
            start = int(re.match(r"bytes=(\d+)-", self.headers.get("range", "bytes=0-"))[1])
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("content-type", "video/mp4")
            self.send_header("accept-ranges", "bytes")
            self.send_header("content-length", str(len(body)))
            if start:
                self.send_header("content-range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if mode == "serve":
                self.wfile.write(body)
                return
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(4)
            self.close_connection = True

    return Handler


# --- against the stack's gateway ----------------------------------------------------------------

@pytest.mark.integration
def test_stream_a_video_file_with_annotated_outputs(stack, sort_gateway, crossing_mp4, tmp_path):
    out_video, out_events = tmp_path / "out" / "annotated.mp4", tmp_path / "out" / "events.jsonl"
    r = run_stream(crossing_mp4, "--stream-id", "crossing-file", "--gateway", sort_gateway,
                   "--conf", "0.0001", "--max-det", "10", "--out-video", str(out_video),
                   "--out-events", str(out_events), env=stack.env)
    assert r.returncode == 0, r.stdout + r.stderr
    read, sent, dropped = (summary(r.stdout, k) for k in ("frames read", "sent",
                                                          "dropped (gateway busy)"))
    assert read == N_FRAMES and sent + dropped == N_FRAMES and sent > 0
    assert summary(r.stdout, "answered") == sent and summary(r.stdout, "failed") == 0

    lines = read_jsonl(out_events)
    assert len(lines) == sent
    numbers = [line["frame"] for line in lines]
    assert numbers == sorted(set(numbers)) and numbers[-1] < N_FRAMES
    assert all("tracks" in line and "error" not in line for line in lines)
    assert any(line["tracks"] for line in lines)  # SORT tracks the seeded model's boxes
    box = lines[-1]["tracks"][0]["box"] if lines[-1]["tracks"] else [0, 0, 320, 240]
    assert 0 <= box[0] <= box[2] <= 320 and 0 <= box[1] <= box[3] <= 240

    # The MP4 holds exactly the frames sent, each at its own time in the source.
    assert decoded_frame_numbers(out_video) == numbers
    assert sorted(p.name for p in out_video.parent.iterdir()) == ["annotated.mp4",
                                                                  "events.jsonl"]

    # The same stream id again: the gateway has its frames, so this run's would be refused.
    again = ("--stream-id", "crossing-file", "--gateway", sort_gateway, "--max-frames", "3")
    code, out = invoke(crossing_mp4, *again, tmp_path=tmp_path)
    assert code == 4 and f"already has frames up to {numbers[-1]}" in out, out
    code, out = invoke(crossing_mp4, *again, "--reset", tmp_path=tmp_path)
    assert code == 0 and summary(out, "answered") >= 1, out


@pytest.mark.integration
def test_zones_set_while_streaming_are_counted_and_drawn(sort_gateway, crossing_mp4, tmp_path):
    """The gateway counts (tracker_service/zones.py); the command records its counts and
    draws the shapes from the frame the gateway first counts them."""
    import httpx

    out_video, events = tmp_path / "zones.mp4", tmp_path / "zones.jsonl"
    zones_url = f"{sort_gateway}/v1/streams/crossing-zones/zones"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(r=invoke(
        crossing_mp4, "--stream-id", "crossing-zones", "--gateway", sort_gateway, "--conf",
        "0.0001", "--max-det", "10", "--read-rate", "0.5", "--out-video", str(out_video),
        "--out-events", str(events), tmp_path=tmp_path)))
    run.start()
    deadline = time.monotonic() + 30
    while httpx.get(zones_url).status_code == 404:  # until its first frame creates the stream
        assert time.monotonic() < deadline and run.is_alive()
        time.sleep(0.05)
    r = httpx.put(zones_url, json={
        "zones": [{"id": "left", "polygon": [[0, 0], [160, 0], [160, 239], [0, 239]]}],
        "lines": [{"id": "middle", "start": [160, 0], "end": [160, 239]}]})
    assert r.status_code == 200, r.text
    run.join(timeout=60)
    code, out = result["r"]
    assert code == 0, out

    lines = read_jsonl(events)
    assert {z["id"] for z in lines[-1]["zones"]} == {"left"}
    assert lines[-1]["lines"][0]["id"] == "middle" and "in" in lines[-1]["lines"][0]
    with av.open(str(out_video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(lines)

    def line_drawn(image: np.ndarray) -> bool:  # the source has no white at x = 160
        return float((image[:, 159:162].min(axis=2) > 170).any(axis=1).mean()) > 0.7

    # Drawn on exactly the frames whose answer counted it (the PUT may beat the first answer).
    assert [line_drawn(f) for f in frames] == [bool(line.get("lines")) for line in lines]


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_lost_network_source_reconnects_and_resumes(stack, crossing_mp4, tmp_path, fault):
    """The connection breaks (or goes quiet) half-way; the source is reopened, seeks, and the
    run reads every frame once: none repeated, none lost."""
    handler = file_server(crossing_mp4.read_bytes(), first=fault)
    events = tmp_path / "events.jsonl"
    with http_server(handler) as url:
        code, out = invoke(f"{url}/crossing.mp4", "--stream-id", f"crossing-{fault}",
                           "--gateway", stack.gateway_url, "--stall-timeout", "1",
                           "--out-events", str(events), tmp_path=tmp_path)
    assert code == 0, out
    assert "reconnecting in" in out and len(handler.requests) >= 2
    if fault == "stall":
        assert "no data for 1 s" in out
    assert summary(out, "reconnects") == 1 and summary(out, "frames read") == N_FRAMES
    sent = summary(out, "sent")
    assert sent + summary(out, "dropped (gateway busy)") == N_FRAMES
    numbers = [line["frame"] for line in read_jsonl(events)]
    assert numbers == sorted(set(numbers)) and len(numbers) == sent


@pytest.mark.integration
def test_a_source_that_keeps_stalling_ends_with_a_clear_error(stack, crossing_mp4, tmp_path):
    handler = file_server(crossing_mp4.read_bytes(), first="stall", every="stall")
    out = tmp_path / "out"
    with http_server(handler) as url:
        r = run_stream(f"{url}/crossing.mp4", "--stream-id", "crossing-stalls",
                       "--stall-timeout", "1", "--reconnect-attempts", "1",
                       "--out-events", str(out / "e.jsonl"), "--out-video", str(out / "v.mp4"),
                       env=stack.env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no data for 1 s; gave up after 1 reconnect attempts" in r.stderr
    assert list(out.iterdir()) == []  # nothing half-written stays behind


@contextmanager
def rtsp_server(folder: Path):
    """aio-rtsp-toolkit's RTSP server on its own event loop thread, serving `folder`'s MP4s
    as rtsp://host:port/NAME.mp4, each from its start, in real time, ending with the file."""
    import asyncio
    import logging

    import aio_rtsp_toolkit.server as rtsp

    rtsp.logger = logging.getLogger("tests.rtsp_server")  # not print() into the CLI's output
    (port,) = free_ports(1)
    server = rtsp.RtspServer(str(folder), host="127.0.0.1", port=port)
    loop = asyncio.new_event_loop()
    asyncio.run_coroutine_threadsafe(server.start(), loop)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"rtsp://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.mark.integration
def test_stream_from_rtsp_a_live_source_that_ends_is_reopened(stack, crossing_mp4, tmp_path):
    """RTSP has no duration: the source is live, and its end (the server's file ran out) is a
    loss, so the source is reopened and the run goes on, numbering frames on."""
    events = tmp_path / "events.jsonl"
    with rtsp_server(crossing_mp4.parent) as url:
        code, out = invoke(f"{url}/{crossing_mp4.name}", "--stream-id", "crossing-rtsp",
                           "--gateway", stack.gateway_url, "--max-frames", "75",
                           "--out-events", str(events), tmp_path=tmp_path)
    assert code == 0, out
    assert "h264 320x240, 30 frames/s, live" in out and "the source ended; reconnecting" in out
    assert summary(out, "frames read") == 75 and summary(out, "reconnects") == 1
    sent = summary(out, "sent")
    assert sent + summary(out, "dropped (gateway busy)") == 75
    numbers = [line["frame"] for line in read_jsonl(events)]
    assert len(numbers) == sent and numbers == sorted(set(numbers)) and numbers[-1] >= N_FRAMES


# --- the client's own behaviour ---------------------------------------------------------------

class SlowGateway(BaseHTTPRequestHandler):
    """Stands in for the gateway in the drop-count test only: what is under test is the
    client's pacing and back-pressure against a gateway slower than the source, which the real
    gateway on a busy CPU is only by chance. It answers a frame after `delay_s`, with the
    frame response's shape, and records how many frames it held at once."""

    protocol_version = "HTTP/1.1"
    delay_s = 0.2
    lock = threading.Lock()
    holding = 0
    most_held = 0
    frames: list[int] = []

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self.answer(200, {"status": "ready"})
        else:
            self.answer(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        cls = type(self)
        with cls.lock:
            cls.holding += 1
            cls.most_held = max(cls.most_held, cls.holding)
        time.sleep(cls.delay_s)
        frame = int(re.search(r"frame=(\d+)", self.path)[1])
        with cls.lock:
            cls.holding -= 1
            cls.frames.append(frame)
        self.answer(200, {"stream_id": "slow", "frame": frame, "tracks": [], "detections": [],
                          "model": {"name": "detector", "version": "1"}})


def test_a_slow_gateway_makes_frames_drop_not_queue(crossing_mp4, tmp_path):
    events = tmp_path / "events.jsonl"
    with http_server(SlowGateway) as url:
        code, out = invoke(crossing_mp4, "--stream-id", "slow", "--gateway", url,
                           "--max-in-flight", "1", "--max-frames", "45",
                           "--out-events", str(events), tmp_path=tmp_path)
    assert code == 0, out
    sent, dropped = summary(out, "sent"), summary(out, "dropped (gateway busy)")
    assert summary(out, "frames read") == 45 and sent + dropped == 45
    # 1.5 s of video, 0.2 s a frame, one at a time: about 8 sent; the rest were dropped.
    assert dropped >= 45 // 2 and 0 < sent == len(SlowGateway.frames)
    assert SlowGateway.most_held == 1
    assert [line["frame"] for line in read_jsonl(events)] == sorted(SlowGateway.frames)


def corrupt_mp4(video: Path, out: Path) -> Path:
    """The container intact, the coded frames (mdat) overwritten with noise."""
    data = bytearray(video.read_bytes())
    start = data.find(b"mdat") + 4
    data[start:] = np.random.default_rng(0).integers(0, 256, len(data) - start,
                                                     dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("case", ["missing", "garbage", "corrupt-frames", "empty-folder"])
def test_a_source_that_does_not_open_or_decode_is_a_clear_error(case, crossing_mp4, tmp_path):
    if case == "missing":
        source, expect = tmp_path / "nope.mp4", "does not open: No such file or directory"
    elif case == "garbage":
        source = tmp_path / "garbage.mp4"
        source.write_bytes(np.random.default_rng(1).bytes(20_000))
        expect = "is not a video PyAV can read: Invalid data found"
    elif case == "corrupt-frames":
        source = corrupt_mp4(crossing_mp4, tmp_path / "corrupt.mp4")
        expect = "packets failed, codec h264"
    else:
        source = tmp_path / "empty"
        source.mkdir()
        expect = "holds no images"
    (port,) = free_ports(1)  # never reached: the source is checked first
    code, out = invoke(source, "--stream-id", "bad", "--gateway", f"http://127.0.0.1:{port}",
                       tmp_path=tmp_path)
    assert code == 3 and expect in out, out


def test_a_gateway_that_is_down_is_a_clear_error(crossing_mp4, tmp_path):
    (port,) = free_ports(1)
    code, out = invoke(crossing_mp4, "--stream-id", "nobody", "--gateway",
                       f"http://127.0.0.1:{port}", "--out-events",
                       str(tmp_path / "out" / "events.jsonl"), tmp_path=tmp_path)
    assert code == 4, out
    assert f"the gateway at http://127.0.0.1:{port} does not answer" in out
    assert not (tmp_path / "out").exists()


class QuickGateway(SlowGateway):
    delay_s = 0.0
    frames: list[int] = []


def test_a_folder_of_images_in_natural_order(tmp_path):
    import cv2

    from control_plane.streaming.source import SourceOptions, open_source

    folder = tmp_path / "images"
    folder.mkdir()
    seq = make_crossing_sequence(seed=1, n_frames=5, size=(120, 160))
    for i, n in enumerate([1, 2, 5, 10, 17]):  # name order would put frame_10 second
        cv2.imwrite(str(folder / f"frame_{n}.jpg"), seq.frame(i)[..., ::-1])
    (folder / "frame_3.jpg").write_bytes(b"not a jpeg")  # skipped and counted
    opened = open_source(str(folder), SourceOptions(), lambda message: None)
    assert [p.name for p in opened.paths] == ["frame_1.jpg", "frame_2.jpg", "frame_3.jpg",
                                              "frame_5.jpg", "frame_10.jpg", "frame_17.jpg"]
    opened.close()

    with http_server(QuickGateway) as url:
        code, out = invoke(folder, "--stream-id", "folder", "--gateway", url, "--fps", "10",
                           "--out-video", str(tmp_path / "folder.mp4"), tmp_path=tmp_path)
    assert code == 0, out
    assert "skipped frame_3.jpg: does not decode" in out
    assert summary(out, "frames read") == 5 and summary(out, "damaged packets skipped") == 1
    assert summary(out, "sent") == 5 and QuickGateway.frames == [0, 1, 2, 3, 4]
    assert decoded_frame_numbers(tmp_path / "folder.mp4", fps=10) == [0, 1, 2, 3, 4]
