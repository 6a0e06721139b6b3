"""What a stream run leaves behind: an annotated MP4 and a JSON line per frame sent.

Both are written under a temporary name beside the destination and renamed into place when the
run ends well, so a reader finds the previous file or the complete new one, never half of one; a
run that fails removes its temporary files.

The video holds the frames that were sent, each at its own time in the source (its pts is its
frame number at the source's rate), so it plays at the source's speed and a dropped frame shows
as the previous one held. Drawing is supervision's (boxes, `#id class` labels and trails
coloured per track; the stream's zones and lines with their counts, and the latest events, when
the gateway reports them); encoding is PyAV's: libx264 when the wheel's FFmpeg has it (the PyAV
wheels do), else MPEG-4 part 2.
"""

from __future__ import annotations

import json
import os
import secrets
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from control_plane.streaming import overlays as ov
from control_plane.streaming.gateway import FrameAnswer


class AtomicFile:
    """A temporary file beside `path`, renamed onto it by commit() or removed by discard()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        self.tmp.open("x").close()  # claimed: a second run writes another name

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class EventsWriter:
    """One JSON object per frame sent: its number and time, then the gateway's tracks, counts
    and events, or the error it got instead."""

    def __init__(self, path: Path, fps: float) -> None:
        self.fps = fps
        self.file = AtomicFile(path)
        try:
            self._out = open(self.file.tmp, "w", encoding="utf-8")
        except BaseException:
            self.file.discard()
            raise

    def write(self, answer: FrameAnswer, shapes: ov.Overlays) -> None:
        record: dict = {"frame": answer.index, "t_s": round(answer.index / self.fps, 4)}
        if answer.ok:
            body = answer.body
            record.update(tracks=body.get("tracks", []), events=ov.events(body),
                          model=body.get("model"), latency_ms=round(answer.latency_s * 1000, 1))
            for key in ("zones", "lines"):
                if key in body:
                    record[key] = body[key]
        else:
            record["error"] = {"status": answer.status, "code": answer.code,
                               "message": answer.message}
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self, commit: bool) -> None:
        self._out.close()
        self.file.commit() if commit else self.file.discard()


def pick_encoder() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    raise RuntimeError("this PyAV build has neither libx264 nor mpeg4 encoders")


class VideoWriter:
    """The annotated MP4: the size of the first frame sent (even, as yuv420p needs)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.rate = Fraction(fps).limit_denominator(1001)
        self.codec = pick_encoder()
        self.frames = 0
        self._annotator = Annotator(fps)
        self.file = AtomicFile(path)
        try:
            self._container = av.open(str(self.file.tmp), "w", format="mp4",
                                      options={"movflags": "+faststart"})
        except BaseException:
            self.file.discard()
            raise
        self._stream = None

    def write(self, answer: FrameAnswer, shapes: ov.Overlays) -> None:
        image = self._annotator.draw(answer, shapes)
        if self._stream is None:
            h, w = image.shape[:2]
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.width, self._stream.height = w - w % 2, h - h % 2
            self._stream.pix_fmt = "yuv420p"
            if self.codec == "libx264":
                self._stream.options = {"preset": "veryfast", "crf": "23"}
            else:
                self._stream.bit_rate = 4_000_000
        size = (self._stream.width, self._stream.height)
        if image.shape[1::-1] != size:
            image = (image[:size[1], :size[0]] if image.shape[0] - size[1] in (0, 1)
                     and image.shape[1] - size[0] in (0, 1) else cv2.resize(image, size))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts = answer.index
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self, commit: bool) -> None:
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
        self.file.commit() if commit and self.frames else self.file.discard()


class Annotator:
    """Tracks, trails, zones, lines and events drawn on a frame with supervision."""

    def __init__(self, fps: float) -> None:
        import supervision as sv  # ~1 s to import: only when a video is written

        self.sv = sv
        lookup = sv.ColorLookup.TRACK
        self.boxes = sv.BoxAnnotator(thickness=2, color_lookup=lookup)
        self.labels = sv.LabelAnnotator(color_lookup=lookup, text_scale=0.4, text_padding=3)
        self.trails = sv.TraceAnnotator(color_lookup=lookup, trace_length=max(2, round(2 * fps)),
                                        position=sv.Position.BOTTOM_CENTER)
        self.event_frames = max(1, round(fps))  # an event stays on screen for a second
        self._recent: list[tuple[int, str]] = []

    def draw(self, answer: FrameAnswer, shapes: ov.Overlays) -> np.ndarray:
        sv = self.sv
        image = answer.image.copy()
        body = answer.body or {}
        zone_labels, line_labels = ov.zone_labels(body), ov.line_labels(body)
        for zone in shapes.zones:
            sv.draw_polygon(image, zone.polygon, sv.Color.YELLOW, thickness=2)
            x, y = zone.polygon.min(axis=0)
            self._text(image, f"{zone.id}: {zone_labels.get(zone.id, '')}".rstrip(": "),
                       int(x), int(y), sv.Color.YELLOW)
        for line in shapes.lines:
            start, end = sv.Point(*line.start), sv.Point(*line.end)
            sv.draw_line(image, start, end, sv.Color.WHITE, thickness=2)
            cv2.arrowedLine(image, line.start, line.end, (255, 255, 255), 1, tipLength=0.05)
            self._text(image, f"{line.id}: {line_labels.get(line.id, '')}".rstrip(": "),
                       (line.start[0] + line.end[0]) // 2, (line.start[1] + line.end[1]) // 2,
                       sv.Color.WHITE)
        tracks = [t for t in body.get("tracks", []) if t.get("state") != "lost"]
        if tracks:
            detections = sv.Detections(
                xyxy=np.array([t["box"] for t in tracks], dtype=np.float32),
                confidence=np.array([t.get("score", 0.0) for t in tracks], dtype=np.float32),
                class_id=np.array([t.get("class_id", 0) for t in tracks], dtype=int),
                tracker_id=np.array([t["track_id"] for t in tracks], dtype=int))
            labels = [f"#{t['track_id']} {t.get('class_name', '')}".rstrip() for t in tracks]
            image = self.trails.annotate(image, detections)
            image = self.boxes.annotate(image, detections)
            image = self.labels.annotate(image, detections, labels=labels)
        self._recent = [(f, text) for f, text in self._recent
                        if answer.index - f < self.event_frames]
        self._recent += [(answer.index, ov.event_text(e)) for e in ov.events(body)]
        bottom = image.shape[0] - 20
        if not answer.ok:
            self._text(image, f"frame {answer.index}: {answer.code}", 4, bottom, sv.Color.RED)
            bottom -= 18
        for row, (_, text) in enumerate(reversed(self._recent[-4:])):  # newest lowest
            self._text(image, text, 4, bottom - 18 * row, sv.Color.GREEN)
        return image

    def _text(self, image: np.ndarray, text: str, x: int, y: int, colour) -> None:
        """`text` with its top-left corner near (x, y), kept inside the frame."""
        sv = self.sv
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        cx = min(max(x + w // 2 + 3, w // 2 + 3), image.shape[1] - w // 2 - 3)
        cy = min(max(y + h // 2 + 3, h // 2 + 3), image.shape[0] - h // 2 - 3)
        sv.draw_text(image, text, sv.Point(cx, cy), text_color=sv.Color.BLACK,
                     text_scale=0.4, text_padding=3, background_color=colour)
