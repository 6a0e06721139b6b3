"""The gateway, seen from a video source: one stream's frames as JPEG over HTTP.

`POST /v1/streams/{id}/frames?frame=N&fps=F` per frame, from a pool of `max_in_flight` threads
sharing one connection pool: JPEG encoding and the request run off the reading thread, and the
pool's size is the most frames a slow gateway can hold (the streamer drops the rest). A frame's
outcome is a `FrameAnswer`, never an exception, so one frame's failure is counted where it
happened; the streamer decides which failures end the run.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np

from control_plane.streaming.errors import GatewayUnavailable


@dataclass
class FrameAnswer:
    index: int
    image: np.ndarray
    body: dict | None = None  # the gateway's frame response when it answered 200
    status: int | None = None  # None: no HTTP answer at all
    code: str = ""  # the error's code: the gateway's, or unreachable / timeout
    message: str = ""
    details: dict = field(default_factory=dict)  # the gateway's error body
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.body is not None


class GatewayClient:
    def __init__(self, url: str, stream_id: str, *, fps: float, max_in_flight: int,
                 timeout_s: float, token: str = "", params: dict | None = None,
                 jpeg_quality: int = 90) -> None:
        self.url = url.rstrip("/")
        self.stream_id = stream_id
        self.fps = round(fps, 3)
        self.params = {k: v for k, v in (params or {}).items() if v is not None}
        self.jpeg_quality = jpeg_quality
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=max_in_flight + 1))
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight,
                                        thread_name_prefix="vg-stream-post")

    def check_ready(self) -> None:
        """GatewayUnavailable unless /readyz says the detector is served."""
        try:
            r = self._http.get("/readyz", timeout=10)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                f"the gateway at {self.url} does not answer ({type(exc).__name__}: {exc}); "
                "start the stack with `visionguard up` or pass --gateway", url=self.url) from None
        if r.status_code == 503:
            reason = _json(r).get("reason", r.text[:200])
            raise GatewayUnavailable(f"the gateway at {self.url} is not ready: {reason}",
                                     url=self.url)
        if r.status_code != 200:
            raise GatewayUnavailable(f"the gateway at {self.url} answered GET /readyz with "
                                     f"{r.status_code}; is it a VisionGuard gateway?",
                                     url=self.url)

    def reset(self) -> None:
        """Forget the stream's tracks on the gateway (DELETE; an unknown stream is fine)."""
        r = self._http.delete(f"/v1/streams/{self.stream_id}")
        if r.status_code not in (204, 404):
            raise GatewayUnavailable(f"DELETE /v1/streams/{self.stream_id} answered "
                                     f"{r.status_code}: {r.text[:200]}", url=self.url)

    def zones(self) -> dict | None:
        """The stream's zones and lines when the gateway has them (200), else None."""
        try:
            r = self._http.get(f"/v1/streams/{self.stream_id}/zones", timeout=10)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return _json(r) or None

    def submit(self, index: int, image: np.ndarray) -> Future[FrameAnswer]:
        return self._pool.submit(self._post, index, image)

    def _post(self, index: int, image: np.ndarray) -> FrameAnswer:
        answer = FrameAnswer(index, image)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            answer.code, answer.message = "encode_failed", "the frame did not encode as JPEG"
            return answer
        start = time.perf_counter()
        try:
            r = self._http.post(f"/v1/streams/{self.stream_id}/frames", content=jpeg.tobytes(),
                                params={"frame": index, "fps": self.fps, **self.params},
                                headers={"content-type": "image/jpeg"})
        except httpx.TimeoutException as exc:
            answer.code, answer.message = "timeout", f"no answer in time ({exc})"
        except httpx.HTTPError as exc:
            answer.code, answer.message = "unreachable", f"{type(exc).__name__}: {exc}"
        else:
            answer.status = r.status_code
            body = _json(r)
            if r.status_code == 200 and body:
                answer.body = body
            else:
                error = body.get("error") if isinstance(body.get("error"), dict) else {}
                answer.code = error.get("code", f"http_{r.status_code}")
                answer.message = error.get("message", r.text[:200])
                answer.details = error
        answer.latency_s = time.perf_counter() - start
        return answer

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
