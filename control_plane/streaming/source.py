"""Where frames come from: a video file, a network URL (RTSP, HTTP, RTMP, ...), a webcam
(/dev/video*) or a folder of images, decoded with PyAV (FFmpeg's libraries in the wheel).

Every source yields BGR frames (OpenCV's and supervision's order) and says its frame rate: the
container's average rate, or `fps` for a folder of images (which has none) and for a container
that does not say. A network source or webcam that fails or goes quiet is reopened with
exponential backoff, a bounded number of times in a row; "quiet" is FFmpeg's own I/O timeout
(`av.open(timeout=(open, read))`), so a read blocked in FFmpeg is interrupted, not waited on
forever. A source with a known duration (a file served over HTTP) resumes after the last frame
it delivered, so frames are neither repeated nor skipped; a live one goes on from what it sends
now. A damaged packet is skipped and counted, as players do; opening a source decodes its first
frame, so one that never decodes a frame is an error before anything is sent.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import av
import av.error
import numpy as np

from control_plane.errors import ControlPlaneError
from control_plane.streaming.errors import SourceStalled, SourceUnavailable, UndecodableSource

log = logging.getLogger("visionguard.streaming")

NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp",
                             "srt", "rtp"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_FPS = 30.0

Notify = Callable[[str], None]


@dataclass(frozen=True)
class SourceOptions:
    fps: float | None = None  # None: the container's rate (a folder of images: 30)
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 10.0
    reconnect_attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0


def source_kind(source: str) -> str:
    """network, webcam, images (a folder) or file."""
    if urlsplit(source).scheme.lower() in NETWORK_SCHEMES:
        return "network"
    if source.startswith("/dev/video"):
        return "webcam"
    if Path(source).is_dir():
        return "images"
    return "file"


def open_source(source: str, options: SourceOptions, notify: Notify) -> VideoSource | ImageFolder:
    """The opened source; SourceUnavailable or UndecodableSource when it cannot be read."""
    if source_kind(source) == "images":
        return ImageFolder(Path(source), options, notify)
    return VideoSource(source, options, notify)


class VideoSource:
    """A container's first video stream, decoded frame by frame."""

    def __init__(self, source: str, options: SourceOptions, notify: Notify) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.options = options
        self.notify = notify
        self.reconnects = 0
        self.corrupt = 0  # packets that did not decode
        self.decoded = 0
        self.epoch = 0  # +1 per (re)connection: the pacing clock starts again
        self._last_pts: int | None = None
        self._resume_after: int | None = None
        self._container = None
        self._open()
        self.fps = options.fps or self._container_rate() or DEFAULT_FPS
        # Live: a network source or webcam without a duration; its end is a loss, not the end.
        self.live = self.kind in ("network", "webcam") and self._container.duration is None
        self.seekable = self.kind in ("network", "file") and self._container.duration is not None
        self._frames = _primed(self._decoded())

    @property
    def description(self) -> str:
        ctx = self._stream.codec_context
        return (f"{self.kind} {self.source} ({ctx.name} {ctx.width}x{ctx.height}, "
                f"{self.fps:g} frames/s{', live' if self.live else ''})")

    def _open(self) -> None:
        kwargs: dict = {}
        options: dict[str, str] = {}
        if self.kind in ("network", "webcam"):
            kwargs["timeout"] = (self.options.open_timeout_s, self.options.stall_timeout_s)
        if self.kind == "webcam":
            kwargs["format"] = "v4l2"
        if urlsplit(self.source).scheme.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp"  # UDP loses packets on busy networks
        try:
            container = av.open(self.source, options=options, **kwargs)
        except av.error.ExitError:
            raise SourceUnavailable(
                f"{self.source} did not open within {self.options.open_timeout_s:g} s",
                source=self.source) from None
        except av.error.InvalidDataError as exc:
            raise UndecodableSource(f"{self.source} is not a video PyAV can read: "
                                    f"{_reason(exc)}", source=self.source) from None
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceUnavailable(f"{self.source} does not open: {_reason(exc)}",
                                    source=self.source) from None
        if not container.streams.video:
            container.close()
            raise UndecodableSource(f"{self.source} has no video stream", source=self.source)
        stream = container.streams.video[0]
        if stream.codec_context is None:
            container.close()
            raise UndecodableSource(f"{self.source}: no decoder for its video codec in this "
                                    "FFmpeg build", source=self.source)
        stream.thread_type = "AUTO"
        self._container, self._stream = container, stream
        self.epoch += 1
        if self._last_pts is not None and self.seekable:
            self._container.seek(self._last_pts, stream=stream)  # the keyframe at or before it
            self._resume_after = self._last_pts

    def _container_rate(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame once, the first decoded already when the source opened."""
        return self._frames

    def _decoded(self) -> Iterator[np.ndarray]:
        attempt = 0
        while True:
            try:
                for image in self._decode():
                    attempt = 0
                    yield image
                if not self.live:
                    break
                why: str = "the source ended"
                stalled = False
            except (av.error.FFmpegError, OSError) as exc:
                if self.kind not in ("network", "webcam"):
                    if not self.decoded:
                        raise UndecodableSource(f"{self.source} does not decode: "
                                                f"{_reason(exc)}", source=self.source) from None
                    self.notify(f"stopped reading {self.source} after frame {self.decoded}: "
                                f"{_reason(exc)}")
                    break
                stalled = isinstance(exc, av.error.ExitError)
                why = (f"no data for {self.options.stall_timeout_s:g} s" if stalled
                       else _reason(exc))
            attempt = self._reconnect(why, stalled, attempt)
        if not self.decoded:
            raise UndecodableSource(
                f"no frame of {self.source} decodes ({self.corrupt} packets failed, codec "
                f"{self._stream.codec_context.name})", source=self.source)

    def _decode(self) -> Iterator[np.ndarray]:
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.corrupt += 1
                continue
            for frame in frames:
                if self._resume_after is not None and frame.pts is not None:
                    if frame.pts <= self._resume_after:
                        continue  # delivered before the reconnection
                    self._resume_after = None
                self._last_pts = frame.pts
                self.decoded += 1
                yield frame.to_ndarray(format="bgr24")

    def _reconnect(self, why: str, stalled: bool, attempt: int) -> int:
        """Reopen after backoff; the attempt number reached, or the error when none is left."""
        self.close()
        limit = self.options.reconnect_attempts
        while True:
            attempt += 1
            if attempt > limit:
                error = SourceStalled if stalled else SourceUnavailable
                raise error(f"{self.source}: {why}; gave up after {limit} reconnect attempts",
                            source=self.source, reconnect_attempts=limit)
            delay = min(self.options.backoff_s * 2 ** (attempt - 1), self.options.backoff_max_s)
            self.notify(f"{self.source}: {why}; reconnecting in {delay:.1f} s "
                        f"(attempt {attempt} of {limit})")
            log.warning("stream source lost", extra={"source": self.source, "reason": why,
                                                     "attempt": attempt})
            time.sleep(delay)
            try:
                self._open()
            except ControlPlaneError as exc:
                why, stalled = exc.message, False
                continue
            self.reconnects += 1
            return attempt

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class ImageFolder:
    """A folder's images in natural name order (frame_2 before frame_10), one frame each."""

    kind = "images"
    live = False
    reconnects = 0
    epoch = 1

    def __init__(self, folder: Path, options: SourceOptions, notify: Notify) -> None:
        self.source = str(folder)
        self.notify = notify
        self.fps = options.fps or DEFAULT_FPS
        self.paths = sorted((p for p in folder.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=_natural_key)
        if not self.paths:
            raise SourceUnavailable(f"{folder} holds no images "
                                    f"({', '.join(sorted(IMAGE_SUFFIXES))})", source=self.source)
        self.corrupt = 0
        self.decoded = 0
        self._frames = _primed(self._decoded())

    @property
    def description(self) -> str:
        return f"images {self.source} ({len(self.paths)} files, {self.fps:g} frames/s)"

    def frames(self) -> Iterator[np.ndarray]:
        return self._frames

    def _decoded(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            try:
                with av.open(str(path)) as container:
                    frame = next(container.decode(video=0))
            except (av.error.FFmpegError, OSError, StopIteration) as exc:
                self.corrupt += 1
                self.notify(f"skipped {path.name}: does not decode ({_reason(exc)})")
                continue
            self.decoded += 1
            yield frame.to_ndarray(format="bgr24")
        if not self.decoded:
            raise UndecodableSource(f"none of the {len(self.paths)} images in {self.source} "
                                    "decodes", source=self.source)

    def close(self) -> None:
        pass


def _primed(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """`frames` with its first frame decoded now: a source that opens but does not decode
    (a damaged file, a codec FFmpeg lacks) fails when it is opened, before anything is sent."""
    first = next(frames, None)

    def chained() -> Iterator[np.ndarray]:
        if first is not None:
            yield first
        yield from frames

    return chained()


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the errno and file name PyAV adds."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
