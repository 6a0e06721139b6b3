"""Zones and directed lines on a stream's frames: who is inside, who crossed which way, how long.

A client draws polygons (zones) and directed lines on a stream (`PUT /v1/streams/{id}/zones`);
after each frame's tracker update, `StreamZones.update` turns the stream's tracks into counts
and events:

- zone: occupancy (tracks inside now), entries and exits, an event on each entry and exit, the
  exit with the track's dwell time in seconds; entries - exits = occupancy at every frame;
- line: crossings by direction (`in`/`out`), counts per direction, one event per crossing.

The rules:

- A track is one point, its box's bottom centre: where a person or a vehicle meets the ground in
  a camera's view (supervision's PolygonZone anchor, Frigate's too). A zone holds the tracks
  whose point is inside the polygon or on its edge (a box clipped to the frame's edge still
  counts in a zone drawn to that edge). A line is crossed when the point passes from one side of
  the segment to the other while between the perpendiculars through its two ends (as
  supervision's LineZone): a line is a door, not an infinite wall.
- Direction: `in` is a crossing from the right of start->end to its left as the image is shown
  (y pointing down): for a line drawn left to right, moving up the image is `in`, as in
  supervision's LineZone. Draw the line the other way round to swap the names.
- Jitter: a track changes side (of a line, or into or out of a zone) only once it has been seen
  `min_frames` consecutive times on the new side (LineZone's minimum_crossing_threshold, the
  same rule for zones). A box that flickers across an edge is counted once, not at each flicker.
  An event is dated at the frame that confirms it; the first side a track is seen on is taken
  at once (a track first seen inside a zone enters it then).
- Observations are the confirmed tracks matched in this frame. Tentative tracks are not counted,
  and a lost track (hidden, or shown at its predicted box) keeps its last side: an occlusion
  inside a zone is neither an exit nor a new entry, and a person hidden while passing a line is
  counted when seen on the far side. A track not observed for `absent_s` seconds has left: it
  exits the zones it was in, its dwell counted to its last observation. Keep `absent_s` at
  least the tracker's lost-track buffer (2 s for `byte-fps`), so an id that comes back is still
  on record.
- Time is the frame number over the stream's frame rate (streams.py), so seconds are the
  stream's seconds whatever the gateway's pace or the frames a client skipped.

Why not supervision's PolygonZone and LineZone as they are (checked on supervision 0.31.2):
PolygonZone rasterises each polygon into a mask as large as the polygon's extent from the
image origin (2 MB for a zone reaching the corner of a 1080p frame), a cost in memory that grows
with zones x streams; shapely's vectorised `intersects_xy` needs only the vertices, and shapely
validates the polygons (`is_valid`, `is_valid_reason`). LineZone forgets a track once it is
missing from `minimum_crossing_threshold + 1` consecutive frames and seeds it again on whatever
side it reappears, so a person hidden for three frames while passing the line is never counted
(tests/test_zones.py shows it); here a track's side lives as long as the track (`absent_s`).
Its side test, segment limits, direction names and confirmation rule are kept.

Limits (points per polygon, zones and lines per stream, id length) come from GatewaySettings;
`build_zones` checks a configuration against them and against the frame size when the stream's
frames have a known size, and raises InvalidRequest (422) naming the zone or line and the
problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon

from tracker_service.errors import InvalidRequest
from tracker_service.tracking import OUT_ID, OUT_STATE, TrackState
from tracker_service.tracking.columns import OUT_X1, OUT_X2, OUT_Y2

ZONE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")

ZONE_ENTER, ZONE_EXIT, LINE_CROSS = "zone_enter", "zone_exit", "line_cross"
IN, OUT = "in", "out"


@dataclass(frozen=True)
class ZoneSpec:
    id: str
    polygon: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class LineSpec:
    id: str
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class ZoneLimits:
    max_zones: int = 16
    max_lines: int = 16
    max_points: int = 64
    max_id_length: int = 64


@dataclass(frozen=True)
class ZoneEvent:
    type: str  # ZONE_ENTER | ZONE_EXIT | LINE_CROSS
    shape: str  # the zone's or the line's id
    track_id: int
    frame: int
    t_s: float
    direction: str | None = None  # lines: IN | OUT
    dwell_s: float | None = None  # zone exits

    def as_dict(self) -> dict:
        """The event as the frame response, the logs and the webhooks give it."""
        out = {"type": self.type, "line" if self.type == LINE_CROSS else "zone": self.shape,
               "track_id": self.track_id, "frame": self.frame, "t_s": self.t_s}
        if self.direction is not None:
            out["direction"] = self.direction
        if self.dwell_s is not None:
            out["dwell_s"] = self.dwell_s
        return out


@dataclass(frozen=True)
class ZoneCount:
    id: str
    occupancy: int
    entries: int
    exits: int


@dataclass(frozen=True)
class LineCount:
    id: str
    inward: int  # `in` in JSON
    outward: int  # `out` in JSON


@dataclass
class _Side:
    """One track's confirmed side of one zone or line."""

    side: bool  # zone: inside; line: left of start->end as shown
    since: int  # the frame that confirmed it
    run: int = 0  # consecutive observations on the other side since


def _flips(tracks: dict[int, _Side], track_id: int, side: bool, frame: int,
           min_frames: int) -> bool | None:
    """Apply one observation: True when it confirms a change of side, None when it is the
    track's first, False otherwise."""
    state = tracks.get(track_id)
    if state is None:
        tracks[track_id] = _Side(side, frame)
        return None
    if side == state.side:
        state.run = 0
        return False
    state.run += 1
    if state.run < min_frames:
        return False
    state.side, state.since, state.run = side, frame, 0
    return True


class _Zone:
    def __init__(self, spec: ZoneSpec) -> None:
        self.spec = spec
        self.polygon = Polygon(spec.polygon)
        shapely.prepare(self.polygon)
        self.tracks: dict[int, _Side] = {}
        self.entries = 0
        self.exits = 0

    @property
    def occupancy(self) -> int:
        return sum(s.side for s in self.tracks.values())

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return shapely.intersects_xy(self.polygon, x, y)


class _Line:
    def __init__(self, spec: LineSpec) -> None:
        self.spec = spec
        self.start = np.asarray(spec.start, dtype=np.float64)
        self.vector = np.asarray(spec.end, dtype=np.float64) - self.start
        self.length2 = float(self.vector @ self.vector)
        self.tracks: dict[int, _Side] = {}
        self.inward = 0
        self.outward = 0

    def sides(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left of start->end as shown, observable): a point on the line or beyond its ends
        says nothing about a crossing."""
        dx, dy = x - self.start[0], y - self.start[1]
        cross = self.vector[0] * dy - self.vector[1] * dx  # < 0: left as shown (y down)
        along = (self.vector[0] * dx + self.vector[1] * dy) / self.length2
        return cross < 0, (cross != 0) & (along >= 0) & (along <= 1)


class StreamZones:
    """The zones and lines of one stream and what its tracks did in them; one per stream, fed
    each frame's tracks in frame order (the stream's turn, streams.py)."""

    def __init__(self, zones: Sequence[ZoneSpec], lines: Sequence[LineSpec], frame_rate: float,
                 min_frames: int = 2, absent_s: float = 2.0) -> None:
        self.zones = [_Zone(z) for z in zones]
        self.lines = [_Line(ln) for ln in lines]
        self.frame_rate = frame_rate
        self.min_frames = max(1, min_frames)
        self.absent_s = absent_s
        self._last_seen: dict[int, int] = {}  # track id -> frame of its last observation

    @property
    def zone_specs(self) -> list[ZoneSpec]:
        return [z.spec for z in self.zones]

    @property
    def line_specs(self) -> list[LineSpec]:
        return [ln.spec for ln in self.lines]

    def outside(self, width: int, height: int) -> InvalidRequest | None:
        """The first zone or line with a point outside a `width` x `height` frame, as the error
        to answer with; None when all fit."""
        for kind, spec, points in self._points():
            for x, y in points:
                if x > width or y > height:
                    return InvalidRequest(
                        f"{kind} {spec.id!r}: point ({x:g}, {y:g}) is outside the stream's "
                        f"{width}x{height} frames", problem="outside_frame",
                        **{kind: spec.id}, frame_size=[width, height])
        return None

    def _points(self):
        for z in self.zones:
            yield "zone", z.spec, z.spec.polygon
        for ln in self.lines:
            yield "line", ln.spec, (ln.spec.start, ln.spec.end)

    def update(self, frame: int, tracks: np.ndarray) -> list[ZoneEvent]:
        """One frame's tracks (tracking.OUT_* rows) -> the events they cause, in order: zone
        entries and exits, departures of tracks gone `absent_s`, line crossings."""
        seen = tracks[tracks[:, OUT_STATE] == int(TrackState.CONFIRMED)]
        ids = seen[:, OUT_ID].astype(np.int64)
        x = (seen[:, OUT_X1] + seen[:, OUT_X2]) / 2
        y = seen[:, OUT_Y2]
        t_s = round(frame / self.frame_rate, 3)
        events: list[ZoneEvent] = []
        for track_id in ids.tolist():
            self._last_seen[track_id] = frame
        for zone in self.zones:
            for track_id, inside in zip(ids.tolist(), zone.inside(x, y).tolist()):
                since = zone.tracks[track_id].since if track_id in zone.tracks else frame
                flipped = _flips(zone.tracks, track_id, inside, frame, self.min_frames)
                if inside and flipped is not False:  # entered, or first seen inside
                    zone.entries += 1
                    events.append(ZoneEvent(ZONE_ENTER, zone.spec.id, track_id, frame, t_s))
                elif not inside and flipped:
                    zone.exits += 1
                    events.append(ZoneEvent(ZONE_EXIT, zone.spec.id, track_id, frame, t_s,
                                            dwell_s=self._seconds(frame - since)))
        events += self._departures(frame, t_s)
        for line in self.lines:
            left, observable = line.sides(x, y)
            for track_id, side in zip(ids[observable].tolist(), left[observable].tolist()):
                if _flips(line.tracks, track_id, side, frame, self.min_frames):
                    direction = IN if side else OUT
                    if side:
                        line.inward += 1
                    else:
                        line.outward += 1
                    events.append(ZoneEvent(LINE_CROSS, line.spec.id, track_id, frame, t_s,
                                            direction=direction))
        return events

    def _departures(self, frame: int, t_s: float) -> list[ZoneEvent]:
        """Tracks unobserved for longer than `absent_s` leave every zone and line."""
        events = []
        gone = [tid for tid, last in self._last_seen.items()
                if (frame - last) / self.frame_rate > self.absent_s]
        for track_id in gone:
            last = self._last_seen.pop(track_id)
            for zone in self.zones:
                state = zone.tracks.pop(track_id, None)
                if state is not None and state.side:
                    zone.exits += 1
                    events.append(ZoneEvent(ZONE_EXIT, zone.spec.id, track_id, frame, t_s,
                                            dwell_s=self._seconds(last - state.since)))
            for line in self.lines:
                line.tracks.pop(track_id, None)
        return events

    def _seconds(self, frames: int) -> float:
        return round(frames / self.frame_rate, 3)

    def zone_counts(self) -> list[ZoneCount]:
        return [ZoneCount(z.spec.id, z.occupancy, z.entries, z.exits) for z in self.zones]

    def line_counts(self) -> list[LineCount]:
        return [LineCount(ln.spec.id, ln.inward, ln.outward) for ln in self.lines]


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Checker:
    limits: ZoneLimits
    frame_size: tuple[int, int] | None
    ids: set[str] = field(default_factory=set)

    def fail(self, kind: str, ident: str | None, message: str, problem: str,
             **extra) -> InvalidRequest:
        where = f"{kind} {ident!r}: " if ident is not None else ""
        named = {kind: ident} if ident is not None else {}
        return InvalidRequest(where + message, problem=problem, **named, **extra)

    def ident(self, kind: str, ident: str, index: int) -> None:
        n = self.limits.max_id_length
        if not ident or len(ident) > n or not ZONE_ID.match(ident):
            raise InvalidRequest(
                f"{kind} {index}: invalid id, 1-{n} characters of letters, digits and . _ : -, "
                "starting with a letter or digit", problem="invalid_id", index=index,
                **{kind: ident[:100]})
        if ident in self.ids:
            raise self.fail(kind, ident, "duplicate id (ids are unique across a stream's zones "
                            "and lines)", "duplicate_id")
        self.ids.add(ident)

    def point(self, kind: str, ident: str, x: float, y: float) -> None:
        if not (np.isfinite(x) and np.isfinite(y)):
            raise self.fail(kind, ident, f"point ({x}, {y}) is not a finite number",
                            "invalid_coordinate")
        if x < 0 or y < 0:
            raise self.fail(kind, ident, f"point ({x:g}, {y:g}) has a negative coordinate "
                            "(pixels from the frame's top-left corner)", "negative_coordinate")
        if self.frame_size is not None:
            w, h = self.frame_size
            if x > w or y > h:
                raise self.fail(kind, ident, f"point ({x:g}, {y:g}) is outside the stream's "
                                f"{w}x{h} frames", "outside_frame", frame_size=[w, h])

    def zone(self, spec: ZoneSpec, index: int) -> ZoneSpec:
        self.ident("zone", spec.id, index)
        points = list(spec.polygon)
        if len(points) > 1 and points[0] == points[-1]:
            points.pop()  # a closed ring given with its first point repeated
        m = self.limits.max_points
        if len(points) < 3:
            raise self.fail("zone", spec.id, f"a polygon needs 3 to {m} points, got "
                            f"{len(points)}", "too_few_points", points=len(points))
        if len(points) > m:
            raise self.fail("zone", spec.id, f"a polygon has at most {m} points "
                            f"(VG_GATEWAY_ZONE_MAX_POINTS), got {len(points)}",
                            "too_many_points", points=len(points), max_points=m)
        for x, y in points:
            self.point("zone", spec.id, x, y)
        polygon = Polygon(points)
        if polygon.convex_hull.area == 0:  # (a bow-tie's signed area is 0 too: not this)
            raise self.fail("zone", spec.id, "the polygon encloses no area (its points are "
                            "collinear or repeated)", "zero_area")
        if not polygon.is_valid:
            raise self.fail("zone", spec.id, "the polygon is not simple: "
                            f"{shapely.is_valid_reason(polygon)} (edges must not cross or "
                            "touch)", "self_intersecting")
        return ZoneSpec(spec.id, tuple((float(x), float(y)) for x, y in points))

    def line(self, spec: LineSpec, index: int) -> LineSpec:
        self.ident("line", spec.id, index)
        for x, y in (spec.start, spec.end):
            self.point("line", spec.id, x, y)
        if tuple(spec.start) == tuple(spec.end):
            raise self.fail("line", spec.id, "start and end are the same point: a line needs "
                            "a length (and its direction)", "zero_length")
        return LineSpec(spec.id, (float(spec.start[0]), float(spec.start[1])),
                        (float(spec.end[0]), float(spec.end[1])))


def build_zones(zones: Sequence[ZoneSpec], lines: Sequence[LineSpec], limits: ZoneLimits,
                frame_rate: float, frame_size: tuple[int, int] | None = None, *,
                min_frames: int = 2, absent_s: float = 2.0) -> StreamZones:
    """A stream's new zone state from a configuration, after checking it; InvalidRequest (422)
    names the first problem. `frame_size` (width, height) is the size of the stream's frames
    when one has been seen; when not, points are checked against it at the first frame
    (`StreamZones.outside`)."""
    if len(zones) > limits.max_zones:
        raise InvalidRequest(f"at most {limits.max_zones} zones per stream "
                             f"(VG_GATEWAY_ZONE_MAX_ZONES), got {len(zones)}",
                             problem="too_many_zones", max_zones=limits.max_zones)
    if len(lines) > limits.max_lines:
        raise InvalidRequest(f"at most {limits.max_lines} lines per stream "
                             f"(VG_GATEWAY_ZONE_MAX_LINES), got {len(lines)}",
                             problem="too_many_lines", max_lines=limits.max_lines)
    check = _Checker(limits, frame_size)
    checked_zones = [check.zone(z, i) for i, z in enumerate(zones)]
    checked_lines = [check.line(ln, i) for i, ln in enumerate(lines)]
    return StreamZones(checked_zones, checked_lines, frame_rate, min_frames, absent_s)
