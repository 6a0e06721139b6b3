"""Per-stream tracker state: one tracker per stream, frames applied in order, idle streams evicted.

Frames of one stream may run detection concurrently (Triton batches them), but their tracker
updates are applied strictly in frame order: a frame waits for every earlier admitted frame of
its stream to be applied (or to fail). A frame not newer than the last admitted one is refused.
Nothing is shared between streams. A stream's zones and lines (zones.py) live in its state, so
deleting or evicting the stream clears them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tracker_service.errors import (FrameOutOfOrder, InvalidRequest, StreamNotFound,
                                     TooManyStreams)
from tracker_service.tracking import Tracker, make_tracker, needs_embeddings, stream_frame_rate
from tracker_service.zones import StreamZones

STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def check_stream_id(stream_id: str, max_length: int) -> str:
    if not stream_id or len(stream_id) > max_length or not STREAM_ID.match(stream_id):
        raise InvalidRequest(
            f"invalid stream id: 1-{max_length} characters of letters, digits and . _ : -, "
            "starting with a letter or digit", stream_id=stream_id[:100])
    return stream_id


@dataclass
class Stream:
    stream_id: str
    tracker: Tracker
    last_seen: float
    frame_rate: float | None = None  # given at creation; None: trackers plan for 30 frames/s
    last_admitted: int = -1
    frames_applied: int = 0
    tracks_reported: int = 0
    pending: list[int] = field(default_factory=list)
    turn: asyncio.Condition = field(default_factory=asyncio.Condition)
    zones: StreamZones | None = None  # set through PUT /v1/streams/{id}/zones
    frame_size: tuple[int, int] | None = None  # (width, height) of its last applied frame


class StreamRegistry:
    def __init__(self, tracker_name: str, ttl_s: float, max_streams: int,
                 max_id_length: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        # Built once at start-up: a misnamed tracker fails here, not on the first frame.
        self.needs_embeddings = needs_embeddings(make_tracker(tracker_name))
        self.tracker_name = tracker_name
        self.ttl_s = ttl_s
        self.max_streams = max_streams
        self.max_id_length = max_id_length
        self.clock = clock
        # Called with the id of each stream deleted or evicted (the service drops its series).
        self.on_drop: Callable[[str], None] | None = None
        self._streams: dict[str, Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def active_tracks(self) -> int:
        return sum(s.tracks_reported for s in self._streams.values())

    def evict_idle(self) -> list[str]:
        """Drop streams idle for longer than the TTL (never one with frames in flight)."""
        now = self.clock()
        idle = [sid for sid, s in self._streams.items()
                if not s.pending and now - s.last_seen > self.ttl_s]
        for sid in idle:
            self._drop(sid)
        return idle

    def _drop(self, stream_id: str) -> Stream | None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and self.on_drop is not None:
            self.on_drop(stream_id)
        return stream

    def get(self, stream_id: str) -> Stream:
        """An active stream (StreamNotFound if none: a stream is created by its first frame)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(f"no active stream {stream_id!r} (a stream starts with its "
                                 "first frame)")
        return stream

    def _get_or_create(self, stream_id: str, fps: float | None) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is not None:
            if fps is not None and stream.frame_rate is not None and fps != stream.frame_rate:
                raise InvalidRequest(
                    f"stream {stream_id!r} runs at {stream.frame_rate:g} frames/s; DELETE it to "
                    "start again at another rate", fps=fps, stream_fps=stream.frame_rate)
            return stream
        self.evict_idle()
        if len(self._streams) >= self.max_streams:
            raise TooManyStreams(f"{len(self._streams)} streams are active, the limit",
                                 max_streams=self.max_streams)
        try:  # the trackers' time constants are seconds: frames at this stream's rate
            tracker = make_tracker(self.tracker_name, frame_rate=stream_frame_rate(fps))
        except ValueError as exc:
            raise InvalidRequest(f"fps: {exc}", fps=fps) from None
        stream = Stream(stream_id, tracker, self.clock(), frame_rate=fps)
        self._streams[stream_id] = stream
        return stream

    def delete(self, stream_id: str) -> None:
        if self._drop(stream_id) is None:
            raise StreamNotFound(f"no active stream {stream_id!r}")

    @asynccontextmanager
    async def frame(self, stream_id: str, frame: int | None, fps: float | None = None):
        """Admit `frame` of `stream_id`; the body runs detection, then `await turn()` before
        touching the tracker, which is then this stream's in frame order. `fps`, the stream's
        frame rate, is fixed when the stream is created."""
        check_stream_id(stream_id, self.max_id_length)
        stream = self._get_or_create(stream_id, fps)
        if frame is None:
            frame = stream.last_admitted + 1
        if frame <= stream.last_admitted:
            raise FrameOutOfOrder(
                f"frame {frame} of stream {stream_id!r} is not newer than frame "
                f"{stream.last_admitted}", last_frame=stream.last_admitted, frame=frame)
        stream.last_admitted = frame
        stream.pending.append(frame)
        stream.last_seen = self.clock()

        async def turn() -> Stream:
            async with stream.turn:
                await stream.turn.wait_for(lambda: stream.pending[0] == frame)
            return stream

        try:
            yield frame, turn
        finally:
            stream.pending.remove(frame)
            stream.last_seen = self.clock()
            async with stream.turn:
                stream.turn.notify_all()
