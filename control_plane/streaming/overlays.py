"""A stream's zones and lines, and their counts and events, as the gateway reports them.

Zones are the gateway's business (tracker_service/zones.py computes them); this module only
reads what the gateway sends, to draw it: `GET /v1/streams/{id}/zones` for the shapes
(`{"zones": [{"id", "polygon": [[x, y], ...]}], "lines": [{"id", "start": [x, y], "end": [x, y]}]}`;
read again whenever the ids in a frame's counts change, so zones set while streaming are drawn)
and the frame response's `zones` (occupancy, entries, exits), `lines` (`in`, `out`) and
`events`. It reads them defensively: a gateway without zones, a shape or count it does not
recognise, is drawn without them rather than failing the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ZoneShape:
    id: str
    polygon: np.ndarray  # (N, 2) int pixels


@dataclass(frozen=True)
class LineShape:
    id: str
    start: tuple[int, int]
    end: tuple[int, int]


@dataclass(frozen=True)
class Overlays:
    zones: tuple[ZoneShape, ...] = ()
    lines: tuple[LineShape, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.zones or self.lines)


def parse_shapes(body: object) -> Overlays:
    """The shapes in a GET /v1/streams/{id}/zones body; what does not parse is left out."""
    if not isinstance(body, dict):
        return Overlays()
    zones, lines = [], []
    for item in _items(body.get("zones")):
        points = _points(item.get("polygon"))
        if points is not None and len(points) >= 3:
            zones.append(ZoneShape(_ident(item), points))
    for item in _items(body.get("lines")):
        points = _points([item.get("start"), item.get("end")])
        if points is not None:
            lines.append(LineShape(_ident(item), (int(points[0][0]), int(points[0][1])),
                                   (int(points[1][0]), int(points[1][1]))))
    return Overlays(tuple(zones), tuple(lines))


def shape_ids(body: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The zone and line ids a frame response counts for."""
    return (tuple(_ident(z) for z in _items(body.get("zones"))),
            tuple(_ident(ln) for ln in _items(body.get("lines"))))


def zone_labels(body: dict) -> dict[str, str]:
    """Zone id -> "occupancy (entries in / exits out)" from a frame response."""
    labels = {}
    for item in _items(body.get("zones")):
        if isinstance(item.get("occupancy"), int):
            labels[_ident(item)] = (f"{item['occupancy']} inside, {item.get('entries', '?')} in"
                                    f" / {item.get('exits', '?')} out")
    return labels


def line_labels(body: dict) -> dict[str, str]:
    """Line id -> "in N / out M" from a frame response."""
    return {_ident(item): f"in {item.get('in', '?')} / out {item.get('out', '?')}"
            for item in _items(body.get("lines")) if "in" in item or "out" in item}


def events(body: dict) -> list[dict]:
    return list(_items(body.get("events")))


def event_text(event: dict) -> str:
    """One line for an event: "line door: #4 in", "zone shop: #2 exit after 3.1 s"."""
    track = f"#{event.get('track_id', '?')}"
    kind = str(event.get("type", "event"))
    if "line" in event:
        return f"line {event['line']}: {track} {event.get('direction', kind)}"
    if "zone" in event:
        action = kind.removeprefix("zone_")
        dwell = event.get("dwell_s")
        return (f"zone {event['zone']}: {track} {action}"
                + (f" after {dwell:.1f} s" if isinstance(dwell, (int, float)) else ""))
    return f"{kind}: {track}"


def _items(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _ident(item: dict) -> str:
    return str(item.get("id", item.get("name", "?")))


def _points(value: object) -> np.ndarray | None:
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        return None
    return np.rint(points).astype(np.int64)
