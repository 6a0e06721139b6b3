"""The dataset store: importing a source as an immutable version, and finding versions.

An import is a pipeline of named steps (`STEPS`, in order); each takes the job and fills in its
part. Everything is written into a hidden staging folder beside the versions
(`NAME/.staging-<pid>-*`), validated there, and published by one rename to `NAME/<version>`:
a failed step (a bad source, a full disk, a failed validation) removes the staging folder, so
nothing half-written is ever visible as a version, and a staging folder left by a killed
process is removed by the next import of that name. Importing content that is already a version
publishes nothing and returns that version.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from control_plane.datasets import sources
from control_plane.datasets.errors import (ClassMismatch, DatasetInvalid, DatasetModified,
                                           DiskFull, SourceError, UnknownDataset)
from control_plane.datasets.layout import (DATA_YAML, MANIFEST, SPLITS, VALIDATION,
                                           VERSION_DIGITS, DatasetVersion, check_name,
                                           content_hash, data_yaml_text, file_sha256, is_image,
                                           parse_ref)
from control_plane.datasets.rules import Rule, default_rules
from control_plane.datasets.scan import Progress, ProgressCallback
from control_plane.datasets.validate import Report, validate
from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings

log = logging.getLogger("visionguard.datasets")
COPY_THREADS = 4
STAGING = ".staging-"  # NAME/.staging-<pid>-*: an import in progress
SCRATCH = ".scratch-"  # <datasets>/.scratch-<pid>-*: generated data before its import


@dataclass
class ImportResult:
    version: DatasetVersion
    report: Report
    created: bool  # False: this content was already the version
    run_id: str | None = None  # the MLflow run that records the version


@dataclass
class _Job:
    """One import: its inputs, and what each step adds."""

    source: Path
    fmt: str
    name: str
    images_dir: Path | None
    classes: list[str] | None
    val_fraction: float
    crowd: str
    rules: dict[str, Rule]
    allow_class_change: bool
    source_uri: str | None
    staging: Path = Path()
    dataset: sources.SourceDataset | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    notes: dict = field(default_factory=dict)
    report: Report | None = None
    version: DatasetVersion | None = None
    created: bool = False


def _copy_image(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` byte for byte; the content's sha256."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DatasetStore:
    """Versions under `settings.datasets_dir`; `import_` adds one, `get`/`list` find them."""

    def __init__(self, settings: Settings, *, log_to_mlflow: bool = True,
                 progress: ProgressCallback | None = None) -> None:
        self.settings = settings
        self.root = settings.datasets_dir
        self.log_to_mlflow = log_to_mlflow
        self.progress = progress or (lambda _p: None)

    # --- reads ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and self._versions(p.name))

    def _versions(self, name: str) -> list[DatasetVersion]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [DatasetVersion.load(p) for p in folder.iterdir()
                 if not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return sorted(found, key=lambda v: v.created)

    def list(self, name: str | None = None) -> list[DatasetVersion]:
        """Every version (of `name`), oldest first within a name."""
        if name is not None:
            return self._versions(check_name(name))
        return [v for n in self.names() for v in self._versions(n)]

    def get(self, name: str, version: str | None = None) -> DatasetVersion:
        """`version` of `name` (a unique prefix will do); None: the latest."""
        versions = self._versions(check_name(name))
        if not versions:
            raise UnknownDataset(f"no dataset {name!r} in {self.root}")
        if version is None:
            return versions[-1]
        matches = [v for v in versions if v.version.startswith(version)]
        if len(matches) != 1 or len(version) < 4 and matches[0].version != version:
            known = ", ".join(v.version for v in versions)
            raise UnknownDataset(f"dataset {name!r} has {'no' if not matches else 'more than one'}"
                                 f" version {version!r} (versions: {known})")
        return matches[0]

    def resolve(self, ref: str) -> DatasetVersion:
        """`NAME` (the latest version) or `NAME@VERSION`."""
        return self.get(*parse_ref(ref))

    def verify(self, version: DatasetVersion) -> None:
        """Raise `DatasetModified` unless the version's files hash as its manifest says."""
        problems = []
        on_disk = {p.relative_to(version.path).as_posix()
                   for sub in ("images", "labels") for p in (version.path / sub).rglob("*")
                   if p.is_file() and (is_image(p) or p.suffix == ".txt")}
        for rel in sorted(on_disk - set(version.files)):
            problems.append(f"{rel} was added")
        for rel, sha in sorted(version.files.items()):
            path = version.path / rel
            if not path.is_file():
                problems.append(f"{rel} is missing")
            elif file_sha256(path) != sha:
                problems.append(f"{rel} was changed")
        if problems:
            raise DatasetModified(f"dataset {version.ref} was modified after import: "
                                  + "; ".join(problems[:5])
                                  + (f" and {len(problems) - 5} more" if len(problems) > 5
                                     else ""), problems=problems[:20])

    def validated(self, ref: str, rules: Mapping[str, Rule] | None = None
                  ) -> tuple[DatasetVersion, Report]:
        """The gate before training and registration: the version `ref` (NAME or
        NAME@VERSION), its files checked against its hash (`DatasetModified`) and every rule
        run (`DatasetInvalid`, exit status 2, when one of severity error fires)."""
        from control_plane.datasets.validate import require_valid

        version = self.resolve(ref)
        self.verify(version)
        report = require_valid(version.path, rules or default_rules(self.settings),
                               target=version.ref, settings=self.settings,
                               progress=self.progress)
        return version, report

    # --- import --------------------------------------------------------------------------------

    def import_(self, source: str | Path, *, fmt: str, name: str,
                images_dir: str | Path | None = None, classes: list[str] | None = None,
                val_fraction: float | None = None, crowd: str = "drop",
                rules: Mapping[str, Rule] | None = None, allow_class_change: bool = False,
                source_uri: str | None = None, notes: Mapping | None = None) -> ImportResult:
        """Import `source` (format `fmt`: coco, yolo or voc) as a version of `name`.

        `classes` fixes the class order (the source's names must be among them; default: the
        latest version's classes, else the source's). `crowd`: "drop" COCO crowd boxes (as
        Ultralytics' COCO converter does) or "keep" them as ordinary boxes. `rules`: the
        validation rules (default: the settings'). A class set different from the latest
        version's is refused unless `allow_class_change`. `notes`: recorded in the version's
        notes beside the import's own (a labelled export's origin: `labeled_import.py`).
        """
        if crowd not in ("drop", "keep"):
            raise SourceError(f"crowd must be 'drop' or 'keep', not {crowd!r}")
        job = _Job(Path(source).expanduser(), fmt, check_name(name),
                   Path(images_dir).expanduser() if images_dir else None,
                   list(classes) if classes else None,
                   self.settings.datasets_val_fraction if val_fraction is None else val_fraction,
                   crowd, dict(rules or default_rules(self.settings)), allow_class_change,
                   source_uri)
        job.notes.update(notes or {})
        folder = self.root / job.name
        created_folder = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sweep_stale(folder, STAGING)
            job.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=folder))
        except OSError as exc:
            if _disk_full(exc):
                raise DiskFull(f"no space left in {self.root} to import {name}") from None
            raise ControlPlaneError(f"cannot write to {folder}: {exc}") from None
        try:
            for step, run in STEPS:
                self.progress(Progress(step))
                log.info("dataset import %s: %s", job.name, step,
                         extra={"event": "dataset_import_step", "dataset": job.name,
                                "step": step})
                run(self, job)
        except BaseException:
            remove_tree(job.staging)
            if created_folder and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise
        run_id = None
        if self.log_to_mlflow:
            self.progress(Progress("mlflow"))
            from control_plane.datasets.lineage import log_version

            run_id = log_version(self.settings, job.version)
        log.info("dataset %s %s: %s", job.version.ref,
                 "imported" if job.created else "unchanged (already imported)",
                 job.report.summary(), extra={
                     "event": "dataset_imported", "dataset": job.name,
                     "version": job.version.version, "new_version": job.created,
                     "images": sum(c["images"] for c in job.version.counts.values())})
        return ImportResult(job.version, job.report, job.created, run_id)


def sweep_stale(folder: Path, prefix: str) -> None:
    """Remove `prefix<pid>-*` folders (staging, scratch) whose process is gone."""
    for p in folder.glob(f"{prefix}*"):
        try:
            os.kill(int(p.name[len(prefix):].split("-", 1)[0]), 0)
        except ProcessLookupError:
            remove_tree(p)
        except (ValueError, PermissionError):
            continue


def remove_tree(path: Path) -> None:
    """rmtree that also removes the read-only files and folders of a version."""

    def writable(func, p, _exc) -> None:
        os.chmod(p, stat.S_IRWXU)
        func(p)

    if path != Path() and path.exists():
        shutil.rmtree(path, onerror=writable)


# --- the steps ---------------------------------------------------------------------------------

def _read(store: DatasetStore, job: _Job) -> None:
    scratch = job.staging / "scratch"
    scratch.mkdir()
    job.dataset = sources.read_source(job.source, job.fmt, images_dir=job.images_dir,
                                      val_fraction=job.val_fraction, scratch=scratch)
    shutil.rmtree(scratch)
    job.notes.update(job.dataset.notes)


def _check_classes(store: DatasetStore, job: _Job) -> None:
    dataset = job.dataset
    previous = store._versions(job.name)
    if job.classes:
        dataset.remap(job.classes)
    elif previous and not job.allow_class_change:
        try:
            dataset.remap(previous[-1].classes)
        except ClassMismatch:
            raise ClassMismatch(
                f"the source's classes {dataset.classes} are not those of {previous[-1].ref} "
                f"({previous[-1].classes}); import under another name, or allow a new class "
                "set (--new-classes)", source=dataset.classes,
                expected=previous[-1].classes) from None
    job.notes.update(dataset.notes)  # a renumbering renumbers COCO's category ids too
    if previous and not job.allow_class_change and dataset.classes != previous[-1].classes:
        raise ClassMismatch(f"the classes {dataset.classes} differ from {previous[-1].ref}'s "
                            f"{previous[-1].classes}; allow a new class set (--new-classes)",
                            source=dataset.classes, expected=previous[-1].classes)


def _check_space(store: DatasetStore, job: _Job) -> None:
    need = sum(im.path.stat().st_size for im in job.dataset.images) + 8192 * len(
        job.dataset.images)
    free = shutil.disk_usage(job.staging).free
    if need > free:
        raise DiskFull(f"importing {job.name} needs about {need / 2**20:.1f} MiB, "
                       f"{store.root} has {free / 2**20:.1f} MiB free; nothing was written",
                       need_bytes=need, free_bytes=free)


def _copy(store: DatasetStore, job: _Job) -> None:
    images = job.dataset.images
    for split in SPLITS:
        (job.staging / "images" / split).mkdir(parents=True)
        (job.staging / "labels" / split).mkdir(parents=True)

    def one(im: sources.SourceImage) -> tuple[str, str]:
        rel = f"images/{im.split}/{im.name}"
        return rel, _copy_image(im.path, job.staging / rel)

    total = len(images)
    try:
        with ThreadPoolExecutor(COPY_THREADS) as pool:
            for i, (rel, sha) in enumerate(pool.map(one, images), 1):
                job.files[rel] = sha
                if i % 200 == 0 or i == total:
                    store.progress(Progress("copy", i, total))
    except OSError as exc:
        if _disk_full(exc):
            raise DiskFull(f"the disk of {store.root} filled while importing {job.name}; "
                           "nothing was written") from None
        raise SourceError(f"cannot copy {exc.filename}: {exc.strerror or exc}") from None


def _labels(store: DatasetStore, job: _Job) -> None:
    """One YOLO label file per image (supervision's writer), after the crowd, clip and
    degenerate-box policies."""
    from supervision import Detections
    from supervision.dataset.formats.yolo import detections_to_yolo_annotations

    clip = job.rules["box_outside_image"].severity != "error"
    drop_small = job.rules["degenerate_box"].severity != "error"
    min_px = float(job.rules["degenerate_box"].threshold or 0)
    tolerance = float(job.rules["box_outside_image"].threshold or 0)
    counts = {"crowd_boxes_dropped": 0, "boxes_clipped": 0, "degenerate_boxes_dropped": 0}
    try:
        for im in job.dataset.images:
            xyxy, cls = im.xyxy, im.class_id
            if job.crowd == "drop" and im.crowd.any():
                counts["crowd_boxes_dropped"] += int(im.crowd.sum())
                xyxy, cls = xyxy[~im.crowd], cls[~im.crowd]
            w, h = im.size
            if clip and len(xyxy):  # counted when beyond the rule's tolerance
                clipped = np.clip(xyxy, 0, [w, h, w, h])
                moved = np.abs(clipped - xyxy) / [w, h, w, h]
                counts["boxes_clipped"] += int((moved > tolerance).any(axis=1).sum())
                xyxy = clipped
            if drop_small and len(xyxy):
                keep = ((xyxy[:, 2] - xyxy[:, 0]) > min_px) & ((xyxy[:, 3] - xyxy[:, 1]) > min_px)
                counts["degenerate_boxes_dropped"] += int((~keep).sum())
                xyxy, cls = xyxy[keep], cls[keep]
            lines = detections_to_yolo_annotations(
                Detections(xyxy=xyxy.astype(np.float32).reshape(-1, 4),
                           class_id=cls.astype(int)), image_shape=(h, w)) if len(xyxy) else []
            rel = f"labels/{im.split}/{Path(im.name).stem}.txt"
            data = "".join(line + "\n" for line in lines).encode()
            (job.staging / rel).write_bytes(data)
            job.files[rel] = hashlib.sha256(data).hexdigest()
    except OSError as exc:
        if _disk_full(exc):
            raise DiskFull(f"the disk of {store.root} filled while importing {job.name}; "
                           "nothing was written") from None
        raise
    job.notes.update({k: v for k, v in counts.items() if v})


def _validate(store: DatasetStore, job: _Job) -> None:
    (job.staging / DATA_YAML).write_text(data_yaml_text(f"{job.name}@staging",
                                                        job.dataset.classes, {}))
    job.report = validate(job.staging, job.rules, target=f"{job.name} (import)",
                          settings=store.settings, progress=store.progress)
    if not job.report.passed:
        # What the import had already changed (boxes clipped, crowd boxes dropped): a refused
        # import's report says it too, so fixing the errors holds no surprise.
        report = {**job.report.as_dict(examples=10), "import_notes": dict(job.notes)}
        raise DatasetInvalid(f"not imported: {job.report.summary()}", report=report)


def _publish(store: DatasetStore, job: _Job) -> None:
    classes = job.dataset.classes
    digest = content_hash(job.files, classes)
    version = DatasetVersion(
        name=job.name, version=digest[:VERSION_DIGITS], path=store.root / job.name /
        digest[:VERSION_DIGITS], hash=digest,
        split_hashes={s: content_hash(job.files, classes, s) for s in SPLITS},
        classes=classes, counts=job.report.stats,
        source={"format": job.fmt, "uri": job.source_uri or job.dataset.uri,
                "crowd": job.crowd, "val_fraction": job.val_fraction,
                "rules": {k: r.as_dict() for k, r in job.rules.items()}},
        created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        notes=job.notes, files=job.files)
    job.report.target = version.ref
    if version.path.exists():
        job.version, job.created = DatasetVersion.load(version.path), False
        remove_tree(job.staging)
        return
    try:
        (job.staging / DATA_YAML).write_text(data_yaml_text(version.ref, classes, version.counts))
        (job.staging / MANIFEST).write_text(json.dumps(version.manifest(), indent=1) + "\n")
        job.report.write(job.staging / VALIDATION)
        for p in job.staging.rglob("*"):
            if p.is_file():
                p.chmod(0o444)
        os.rename(job.staging, version.path)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and version.path.exists():
            job.version, job.created = DatasetVersion.load(version.path), False  # a racing import
            remove_tree(job.staging)
            return
        if _disk_full(exc):
            raise DiskFull(f"the disk of {store.root} filled while importing {job.name}; "
                           "nothing was written") from None
        raise
    for p in [version.path, *version.path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    job.version, job.created = DatasetVersion.load(version.path), True


STEPS: tuple[tuple[str, Callable[[DatasetStore, _Job], None]], ...] = (
    ("read", _read),  # the source's parts, parsed by supervision
    ("classes", _check_classes),  # class order and the name's class set
    ("space", _check_space),  # room for the copy, before writing anything
    ("copy", _copy),  # images byte for byte, hashed on the way
    ("labels", _labels),  # YOLO labels after the crowd, clip and degenerate-box policies
    ("validate", _validate),  # every rule on the staged folder
    ("publish", _publish),  # content hash, manifest, read-only, one rename
)
