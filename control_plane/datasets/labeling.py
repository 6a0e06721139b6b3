"""Sampled production frames out to a labelling tool: `visionguard data export-for-labeling`.

The gateway keeps frames with the model's predictions in a frame store
(tracker_service/frame_sampler.py, tracker_service/frame_store.py). This module selects them
(`--since`, `--reason`, `--limit`) and writes the export a labeller imports (the labelling-export
contract of issue 14):

    DIR/images/<sha256[:16]>.jpg    the sampled bytes, unchanged
    DIR/annotations.json            COCO; the predictions as pre-annotations (with their score)
    DIR/manifest.json               what was exported: each image's sha256, reason, stream, time
    DIR/label_studio.json           the same pre-annotations as Label Studio import tasks

and a copy of the manifest at `<runtime_dir>/labeling/exports/<export_id>.json`: the import of
the corrected labels checks against that copy, not the one that came back from the labeller.

The export is built in a staging folder beside DIR and renamed into place, so DIR is either
complete or absent. An empty selection is an error (`EmptyExport`), not an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from control_plane.datasets.scan import Progress, ProgressCallback
from control_plane.errors import Conflict, ControlPlaneError, NotFound
from control_plane.settings import Settings
from tracker_service.frame_store import (FRAMES_PREFIX, FrameStore, FrameStoreError,
                                         LocalFrameStore, S3Credentials, S3FrameStore)

log = logging.getLogger("visionguard.datasets.labeling")

EXPORT_FORMAT = "visionguard-labeling-export/1"
REASONS = ("drift", "uncertain", "uniform")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class EmptyExport(NotFound):
    """No sampled frame matches the selection: nothing was written."""

    code = "empty_export"
    exit_code = 3


class ExportExists(Conflict):
    """The export folder exists and is not empty."""

    code = "export_exists"


class FrameStoreUnavailable(ControlPlaneError):
    """The frame store cannot be read (down, wrong credentials, no bucket)."""

    status_code = 503
    code = "frame_store_unavailable"


class MixedClasses(Conflict):
    """The selected frames were predicted by models with different classes."""

    code = "mixed_classes"


@dataclass
class LabelingExport:
    export_id: str
    out: Path
    manifest_copy: Path
    images: int
    annotations: int
    by_reason: dict[str, int]
    skipped: dict[str, int]  # records left out, by why: missing_image, hash_mismatch, invalid


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `2h`, `3d` (that long ago) or an ISO-8601 time (UTC when it names no zone)."""
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ControlPlaneError(f"--since {text!r}: give a duration (10m, 2h, 3d) or an "
                                "ISO-8601 time (2026-12-03T10:00:00Z)", since=text) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def frame_store(settings: Settings) -> FrameStore:
    """The store the gateway writes to: S3 when a bucket is configured, else the local one."""
    if settings.frames_s3_bucket:
        return S3FrameStore(settings.frames_s3_endpoint, settings.frames_s3_bucket,
                            S3Credentials(settings.frames_s3_access_key,
                                          settings.frames_s3_secret_key,
                                          settings.frames_s3_region))
    return LocalFrameStore(settings.frames_dir)


def _valid_record(r: object) -> bool:
    if not isinstance(r, dict) or not _SHA256.match(str(r.get("sha256", ""))):
        return False
    if r.get("reason") not in REASONS or not isinstance(r.get("detections"), list):
        return False
    if not isinstance(r.get("classes"), list) or not all(isinstance(c, str)
                                                         for c in r["classes"]):
        return False
    try:
        if int(r["width"]) < 1 or int(r["height"]) < 1:
            return False
        datetime.fromisoformat(r["time"])
        for d in r["detections"]:
            if len(d["box"]) != 4 or not 0 <= int(d["class_id"]) < len(r["classes"]):
                return False
            if not all(math.isfinite(float(v)) for v in d["box"]) \
                    or not 0 <= float(d["score"]) <= 1:
                return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _records(store: FrameStore, since: datetime | None, skipped: dict[str, int]
             ) -> Iterator[tuple[str, dict]]:
    """(image key, record) of every readable record, days before `since` not even read."""
    first_day = since.astimezone(timezone.utc).strftime("%Y-%m-%d") if since else ""
    for key, _, _ in store.list(FRAMES_PREFIX):
        if not key.endswith(".json"):
            continue
        day = key[len(FRAMES_PREFIX):].split("/", 1)[0]
        if day < first_day:
            continue
        try:
            record = json.loads(store.get(key))
        except KeyError:  # evicted meanwhile
            continue
        except ValueError:
            record = None
        if not _valid_record(record) or not key.endswith(f"/{record['sha256']}.json"):
            skipped["invalid"] = skipped.get("invalid", 0) + 1
            continue
        yield key[:-len(".json")] + ".jpg", record


def select_frames(store: FrameStore, *, since: datetime | None = None,
                  reason: str | None = None, limit: int | None = None,
                  skipped: dict[str, int] | None = None) -> list[tuple[str, dict]]:
    """The newest `limit` frames sampled at or after `since` for `reason`, oldest first."""
    if reason is not None and reason not in REASONS:
        raise ControlPlaneError(f"--reason {reason!r}: one of {', '.join(REASONS)}",
                                reason=reason)
    if limit is not None and limit < 1:
        raise ControlPlaneError("--limit must be at least 1", limit=limit)
    skipped = skipped if skipped is not None else {}
    chosen = []
    for key, record in _records(store, since, skipped):
        when = datetime.fromisoformat(record["time"])
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if since is not None and when < since:
            continue
        if reason is not None and record["reason"] != reason:
            continue
        chosen.append((when, key, record))
    chosen.sort(key=lambda t: (t[0], t[2]["sha256"]))
    if limit is not None:
        chosen = chosen[-limit:]
    return [(key, record) for _, key, record in chosen]


def coco_annotations(records: list[dict], classes: list[str]) -> dict:
    """COCO with the model's predictions as annotations (bbox xywh, category = class + 1)."""
    images, annotations = [], []
    for image_id, r in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": f"images/{r['sha256'][:16]}.jpg",
                       "width": int(r["width"]), "height": int(r["height"])})
        for d in r["detections"]:
            x1, y1, x2, y2 = (float(v) for v in d["box"])
            w, h = max(0.0, x2 - x1), max(0.0, y2 - y1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(d["class_id"]) + 1,
                                "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0,
                                "score": float(d["score"])})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)]}


def label_studio_tasks(records: list[dict]) -> list[dict]:
    """Label Studio's import JSON: one task per image, the predictions as pre-annotations
    (rectangles in percent of the image, a RectangleLabels control named `label` on an Image
    named `image`)."""
    tasks = []
    for r in records:
        w, h = int(r["width"]), int(r["height"])
        result = []
        for d in r["detections"]:
            x1, y1, x2, y2 = (float(v) for v in d["box"])
            result.append({"type": "rectanglelabels", "from_name": "label", "to_name": "image",
                           "original_width": w, "original_height": h, "score": d["score"],
                           "value": {"x": 100 * x1 / w, "y": 100 * y1 / h,
                                     "width": 100 * (x2 - x1) / w,
                                     "height": 100 * (y2 - y1) / h, "rotation": 0,
                                     "rectanglelabels": [d["class_name"]]}})
        tasks.append({"data": {"image": f"images/{r['sha256'][:16]}.jpg",
                               "sha256": r["sha256"]},
                      "predictions": [{"model_version": r["model_version"], "result": result}]})
    return tasks


def _write_json(path: Path, body) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_for_labeling(settings: Settings, out: Path, *, since: datetime | None = None,
                        reason: str | None = None, limit: int | None = None,
                        store: FrameStore | None = None,
                        progress: ProgressCallback | None = None) -> LabelingExport:
    """Write the selected frames to `out` (created; absent or empty before)."""
    report = progress or (lambda _p: None)
    store = store if store is not None else frame_store(settings)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportExists(f"{out} exists and is not an empty folder; choose another --out",
                           out=str(out))
    report(Progress("select frames"))
    skipped: dict[str, int] = {}
    try:
        selected = select_frames(store, since=since, reason=reason, limit=limit,
                                 skipped=skipped)
    except FrameStoreError as exc:
        raise FrameStoreUnavailable(f"cannot read the frame store {store!r}: {exc}") from exc
    if not selected:
        raise EmptyExport(
            f"no sampled frames match (store {store!r}, since "
            f"{since.isoformat() if since else 'the start'}, reason {reason or 'any'}): "
            "nothing written. Is frame sampling on in the gateway "
            "(VG_GATEWAY_FRAMES_SAMPLING=1)?", skipped=skipped)
    classes = selected[-1][1]["classes"]
    if any(r["classes"] != classes for _, r in selected):
        raise MixedClasses("the selected frames come from models with different classes; "
                           "narrow the selection with --since", classes=classes)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    manifest_copy = None
    try:
        (staging / "images").mkdir()
        records: list[dict] = []
        for i, (key, record) in enumerate(selected):
            report(Progress("copy images", i, len(selected)))
            try:
                data = store.get(key)
            except KeyError:
                skipped["missing_image"] = skipped.get("missing_image", 0) + 1
                continue
            except FrameStoreError as exc:
                raise FrameStoreUnavailable(
                    f"cannot read the frame store {store!r}: {exc}") from exc
            if hashlib.sha256(data).hexdigest() != record["sha256"]:
                skipped["hash_mismatch"] = skipped.get("hash_mismatch", 0) + 1
                continue
            (staging / "images" / f"{record['sha256'][:16]}.jpg").write_bytes(data)
            records.append(record)
        report(Progress("copy images", len(selected), len(selected)))
        if not records:
            raise EmptyExport("none of the selected frames could be read whole: nothing "
                              "written", skipped=skipped)
        if len({r["sha256"][:16] for r in records}) != len(records):
            raise Conflict("two frames share the first 16 hex digits of their sha256")
        export_id = uuid.uuid4().hex
        manifest = {
            "format": EXPORT_FORMAT, "export_id": export_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": records[-1]["model"], "version": records[-1]["model_version"]},
            "classes": classes,
            "images": [{"file_name": f"images/{r['sha256'][:16]}.jpg", "sha256": r["sha256"],
                        "reason": r["reason"], "stream_id": r["stream_id"], "time": r["time"],
                        "model_version": r["model_version"], "width": int(r["width"]),
                        "height": int(r["height"])} for r in records],
        }
        coco = coco_annotations(records, classes)
        report(Progress("write annotations"))
        _write_json(staging / "annotations.json", coco)
        _write_json(staging / "manifest.json", manifest)
        _write_json(staging / "label_studio.json", label_studio_tasks(records))
        settings.labeling_exports_dir.mkdir(parents=True, exist_ok=True)
        manifest_copy = settings.labeling_exports_dir / f"{export_id}.json"
        _write_json(manifest_copy, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if manifest_copy is not None:
            manifest_copy.unlink(missing_ok=True)
        raise
    by_reason = {r: sum(1 for x in records if x["reason"] == r) for r in REASONS}
    log.info("labelling export %s: %d images, %d pre-annotations", export_id, len(records),
             len(coco["annotations"]), extra={"event": "labeling_export", "export_id": export_id,
                                              "images": len(records), "skipped": skipped})
    return LabelingExport(export_id, out, manifest_copy, len(records),
                          len(coco["annotations"]), by_reason, skipped)
