"""The loop of `visionguard stream`: read a frame, wait until it is due, send it or drop it.

Frames are due at the source's rate (`read_rate` times it; a live source sets its own pace and
is never ahead). A frame due while `max_in_flight` frames are still unanswered is dropped and
counted: a camera does not wait for a slow consumer, and a queue would only add latency without
bound. A frame holds its slot until its answer is written, so memory is bounded too. Answers
are taken in frame order (the gateway applies a stream's frames in order anyway), counted, and
written to the outputs.

What ends a run early: the gateway unreachable for longer than `gateway_grace_s` (it may be
restarting), or an answer every later frame would get too (a refused stream id, another frame
rate than the stream's, a stream with newer frames than this run sent: `--reset`). A failure
of one frame (a timeout, a 429, a 5xx, a 409 because two of its frames in flight reached the
gateway out of order) is counted and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from control_plane.streaming import overlays as ov
from control_plane.streaming.errors import GatewayRefused, GatewayUnavailable, StreamInUse
from control_plane.streaming.gateway import FrameAnswer, GatewayClient

log = logging.getLogger("visionguard.streaming")


@dataclass
class StreamStats:
    source: str
    fps: float
    started: float = field(default_factory=time.monotonic)
    read: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    dropped: int = 0
    in_flight: int = 0
    events: int = 0
    track_ids: set[int] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)  # failed frames by error code
    latency_s: float = 0.0  # sum over answered frames
    reconnects: int = 0
    corrupt: int = 0
    ended_by: str = ""
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def answered_fps(self) -> float:
        return self.answered / max(self.elapsed_s, 1e-9)


class Streamer:
    def __init__(self, source, gateway: GatewayClient, outputs: list, *, max_in_flight: int,
                 read_rate: float = 1.0, max_frames: int | None = None,
                 gateway_grace_s: float = 30.0,
                 on_progress: Callable[[StreamStats], None] = lambda stats: None,
                 notify: Callable[[str], None] = lambda message: None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if read_rate <= 0:
            raise ValueError("read_rate must be positive")
        self.source = source
        self.gateway = gateway
        self.outputs = outputs
        self.max_in_flight = max_in_flight
        self.interval_s = 1.0 / (source.fps * read_rate)
        self.max_frames = max_frames
        self.gateway_grace_s = gateway_grace_s
        self.on_progress = on_progress
        self.notify = notify
        self.stats = StreamStats(source.source, source.fps)
        self.shapes = ov.Overlays()  # the zones and lines to draw, as the gateway last said
        self._shape_ids: tuple = ((), ())
        self._pending: deque[Future[FrameAnswer]] = deque()
        self._unreachable_since: float | None = None
        self._first_sent, self._last_sent = 2**63, -1  # a 409 naming one of these is a race

    def run(self) -> StreamStats:
        """Stream until the source ends, `max_frames` are read or Ctrl-C; outputs are
        committed then, discarded on an error."""
        stats = self.stats
        epoch, clock, k = None, 0.0, 0
        frames = self.source.frames()
        try:
            try:
                for image in frames:
                    if self.source.epoch != epoch:  # (re)connected: its frames are due from now
                        epoch, clock, k = self.source.epoch, time.monotonic(), 0
                    self._wait_until(clock + k * self.interval_s)
                    k += 1
                    self._send_or_drop(stats.read, image)
                    stats.read += 1
                    self._progress()
                    if self.max_frames is not None and stats.read >= self.max_frames:
                        stats.ended_by = f"--max-frames {self.max_frames}"
                        break
                else:
                    stats.ended_by = "end of source"
            except KeyboardInterrupt:
                stats.ended_by = "interrupted (Ctrl-C)"
            while self._pending:
                self._take(self._pending.popleft().result())
        except BaseException:
            self._close(commit=False)
            raise
        finally:
            frames.close()
            self.source.close()
        self._close(commit=True)
        stats.finished = time.monotonic()
        return stats

    def _wait_until(self, due: float) -> None:
        """Sleep until `due`, taking answers as they come meanwhile."""
        while (left := due - time.monotonic()) > 0:
            if self._pending:
                wait([self._pending[0]], timeout=left)
                self._take_done()
            else:
                time.sleep(left)
        self._take_done()

    def _send_or_drop(self, index: int, image) -> None:
        if len(self._pending) >= self.max_in_flight:
            self.stats.dropped += 1
            return
        self._pending.append(self.gateway.submit(index, image))
        self.stats.sent += 1
        self._first_sent = min(self._first_sent, index)
        self._last_sent = index

    def _take_done(self) -> None:
        while self._pending and self._pending[0].done():
            self._take(self._pending.popleft().result())

    def _take(self, answer: FrameAnswer) -> None:
        stats = self.stats
        if answer.ok:
            self._unreachable_since = None
            self._follow_shapes(answer.body)
            stats.answered += 1
            stats.latency_s += answer.latency_s
            stats.track_ids.update(t["track_id"] for t in answer.body.get("tracks", [])
                                   if t.get("state") == "confirmed")
            stats.events += len(ov.events(answer.body))
        else:
            self._check_fatal(answer)
            stats.failed += 1
            stats.errors[answer.code] = stats.errors.get(answer.code, 0) + 1
            log.warning("stream frame failed", extra={
                "stream_id": self.gateway.stream_id, "frame": answer.index,
                "status": answer.status, "code": answer.code, "error": answer.message})
        for output in self.outputs:
            output.write(answer, self.shapes)
        self._progress()

    def _follow_shapes(self, body: dict) -> None:
        """Zones and lines may be set (PUT) while the stream runs: when the ids a frame's
        counts name change, read the shapes again (GET); none named, none drawn."""
        ids = ov.shape_ids(body)
        if ids != self._shape_ids:
            self._shape_ids = ids
            self.shapes = ov.parse_shapes(self.gateway.zones()) if any(ids) else ov.Overlays()

    def _check_fatal(self, answer: FrameAnswer) -> None:
        """Raise for a failure every later frame would share."""
        url = self.gateway.url
        if answer.code == "unreachable":
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if not self.stats.answered or now - self._unreachable_since > self.gateway_grace_s:
                raise GatewayUnavailable(f"the gateway at {url} does not answer: "
                                         f"{answer.message}", url=url, frame=answer.index)
            return
        last = answer.details.get("last_frame")
        if answer.status == 409 and not (isinstance(last, int)
                                         and self._first_sent <= last <= self._last_sent):
            raise StreamInUse(f"stream {self.gateway.stream_id!r} already has frames up to "
                              f"{last} on the gateway; pass --reset to start it again, or "
                              "use another --stream-id", stream_id=self.gateway.stream_id)
        if answer.status is not None and 400 <= answer.status < 500 \
                and answer.status not in (408, 409, 429):
            hint = " (--reset starts the stream again)" if "DELETE" in answer.message else ""
            raise GatewayRefused(f"the gateway refused frame {answer.index} with "
                                 f"{answer.status} {answer.code}: {answer.message}{hint}",
                                 status=answer.status, gateway_code=answer.code)

    def _progress(self) -> None:
        stats = self.stats
        stats.in_flight = sum(not f.done() for f in self._pending)
        stats.reconnects = self.source.reconnects
        stats.corrupt = self.source.corrupt
        self.on_progress(stats)

    def _close(self, commit: bool) -> None:
        self.gateway.close()
        for output in self.outputs:
            output.close(commit)
