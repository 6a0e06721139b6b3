"""The demo page at the gateway's `/`, in a real headless browser against the real stack.

Debian's chromium (/usr/bin/chromium, installed by `python3 -m control_plane test`, see
control_plane/stack/environment.py) driven by Playwright for Python; Playwright's own browser
download is never used. The page uploads what a person would: bus.jpg, a short VP8 WebM that PyAV
encodes here (Debian's chromium decodes VP8 whatever its H.264 build), and bytes that are no image.
Screenshots go to the test's tmp_path and the last ones to /tmp/demo_image.png and
/tmp/demo_video.png, to be looked at.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser import is_expected_http_error, requires_chromium, screenshot
from tests.conftest import gateway_process

DETECT_PARAMS = {"conf": "0.0001", "max_det": "10"}  # the seeded model's scores are about 1e-4
VIDEO_FRAMES, VIDEO_FPS = 16, 10
UNDECODABLE = b"definitely not a jpeg"

pytestmark = [pytest.mark.integration, requires_chromium]


@pytest.fixture
def page(browser):
    """A fresh page that records script errors and console errors (a CSP refusal is one)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and not is_expected_http_error(msg.text)
            and page.problems.append(f"console: {msg.text}"))
    yield page
    context.close()


@pytest.fixture(scope="module")
def sort_gateway(stack, tmp_path_factory):
    """A second gateway tracking with plain SORT: the seeded model's scores (about 1e-4) are far
    below the default tracker's thresholds, so only SORT turns its boxes into tracks."""
    with gateway_process(stack, tmp_path_factory.mktemp("demo-sort-gw"), tracker="sort") as url:
        yield url


def open_demo(page, url: str) -> None:
    response = page.goto(f"{url}/")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    page.fill("#conf", DETECT_PARAMS["conf"])
    page.fill("#max-det", DETECT_PARAMS["max_det"])


def upload(page, name: str, mime_type: str, data: bytes) -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime_type, "buffer": data}])


def wait_for_state(page, state: str, timeout_s: float = 60) -> None:
    page.wait_for_selector(f'#status[data-state="{state}"]', state="attached",
                           timeout=timeout_s * 1000)


def table_rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#detections-body tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")


def canvas_pixels(page) -> np.ndarray:
    data_url = page.eval_on_selector("#view", "c => c.toDataURL('image/png')")
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def outline_changed(drawn: np.ndarray, original: np.ndarray, box: list[float]) -> float:
    """The share of a box's outline pixels that differ clearly from the image: the stroke."""
    h, w = original.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
    y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    ys, xs = np.arange(y1, y2 + 1), np.arange(x1, x2 + 1)
    points = np.concatenate([np.stack([ys, np.full_like(ys, x1)], 1),
                             np.stack([ys, np.full_like(ys, x2)], 1),
                             np.stack([np.full_like(xs, y1), xs], 1),
                             np.stack([np.full_like(xs, y2), xs], 1)])
    diff = np.abs(drawn[points[:, 0], points[:, 1]] - original[points[:, 0], points[:, 1]])
    return float((diff.max(axis=1) > 60).mean())


def test_image_upload_draws_what_detect_returns(stack, page, bus_jpg, tmp_path):
    open_demo(page, stack.gateway_url)
    upload(page, "bus.jpg", "image/jpeg", bus_jpg)
    wait_for_state(page, "done")

    expected = httpx.post(f"{stack.gateway_url}/v1/detect", content=bus_jpg,
                          headers={"content-type": "image/jpeg"}, params=DETECT_PARAMS,
                          timeout=30).json()
    detections = expected["detections"]
    assert detections, "the seeded model finds boxes in bus.jpg at conf 0.0001"
    rows = table_rows(page)
    assert len(rows) == len(detections)
    for i, (row, d) in enumerate(zip(rows, detections)):
        assert row[0] == str(i + 1) and row[1] == d["class_name"]
        assert float(row[2]) == pytest.approx(d["score"], rel=5e-3)
        assert [float(v) for v in row[3:]] == pytest.approx(d["box"], abs=0.051)
    timings = page.eval_on_selector_all("#timings-body th", "ths => ths.map(t => t.textContent)")
    assert set(timings) == set(expected["timings_ms"])
    assert page.get_attribute("#status", "data-detections") == str(len(detections))

    # The boxes are drawn where the API put them: their outlines differ from the picture.
    drawn = canvas_pixels(page)
    original = np.asarray(Image.open(io.BytesIO(bus_jpg)).convert("RGB")).astype(int)
    assert drawn.shape == original.shape == (expected["image"]["height"],
                                             expected["image"]["width"], 3)
    assert all(outline_changed(drawn, original, d["box"]) > 0.5 for d in detections)
    assert page.is_hidden("#error")
    assert page.problems == []
    screenshot(page, tmp_path, "demo_image.png")


def moving_bus_webm(bus_jpg: bytes, path: Path) -> Path:
    """VIDEO_FRAMES frames of bus.jpg, scaled down, sliding right 10 px a frame on grey (VP8).
    16:9, so the letterboxed input (640x384) costs less than a 4:3 one."""
    import av

    width, height = 512, 288
    bus = Image.open(io.BytesIO(bus_jpg)).convert("RGB")
    bus = bus.resize((bus.width * 256 // bus.height, 256))
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"b": "1M"}
        for i in range(VIDEO_FRAMES):
            frame = Image.new("RGB", (width, height), (90, 96, 104))
            frame.paste(bus, (40 + 10 * i, 16))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_upload_tracks_frames_in_order(sort_gateway, page, bus_jpg, tmp_path):
    video = moving_bus_webm(bus_jpg, tmp_path / "bus.webm").read_bytes()
    frame_requests = []
    page.on("request", lambda r: "/frames" in r.url and frame_requests.append(r.url))
    open_demo(page, sort_gateway)
    page.fill("#sample-fps", str(VIDEO_FPS))
    upload(page, "bus.webm", "video/webm", video)
    wait_for_state(page, "done")

    status = page.locator("#status")
    assert status.get_attribute("data-frames-total") == str(VIDEO_FRAMES)
    assert status.get_attribute("data-frames-done") == str(VIDEO_FRAMES)
    assert int(status.get_attribute("data-tracks-seen")) >= 1
    stream_id = status.get_attribute("data-stream-id")
    assert re.fullmatch(r"demo-[0-9a-f]{16}", stream_id)
    # Every sampled frame posted once, in order, with the stream's frame rate.
    queries = [parse_qs(urlparse(url).query) for url in frame_requests]
    assert [q["frame"] for q in queries] == [[str(n)] for n in range(VIDEO_FRAMES)]
    assert all(q["fps"] == [str(VIDEO_FPS)] and urlparse(url).path ==
               f"/v1/streams/{stream_id}/frames" for q, url in zip(queries, frame_requests))
    rows = table_rows(page)
    assert rows and all(row[0].isdigit() for row in rows)
    assert page.locator("#progress").evaluate("p => p.value === p.max")
    # The page forgot its stream at the end.
    r = httpx.delete(f"{sort_gateway}/v1/streams/{stream_id}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found"
    assert page.problems == []
    screenshot(page, tmp_path, "demo_video.png")


def test_bad_uploads_show_the_reason(stack, page, tmp_path):
    open_demo(page, stack.gateway_url)
    upload(page, "broken.jpg", "image/jpeg", UNDECODABLE)
    wait_for_state(page, "error")
    api = httpx.post(f"{stack.gateway_url}/v1/detect", content=UNDECODABLE,
                     headers={"content-type": "image/jpeg"}, timeout=30)
    assert api.status_code == 422
    assert page.text_content("#error-title") == "The gateway answered 422 undecodable_image"
    assert page.text_content("#error-message") == api.json()["error"]["message"]
    assert page.is_visible("#error")
    screenshot(page, tmp_path, "demo_error.png")

    # A video the browser cannot decode never reaches the gateway; the page says why.
    upload(page, "broken.webm", "video/webm", UNDECODABLE)
    page.wait_for_selector("#error-message:has-text('cannot play broken.webm')")
    wait_for_state(page, "error")
    assert page.problems == []
