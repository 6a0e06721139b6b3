"""Labelled production frames back as the next version of the champion's dataset:
`visionguard data import DIR --labeled-export`.

DIR is what `visionguard data export-for-labeling --out DIR` wrote, once a labelling tool has
corrected its pre-annotations: `images/<sha256[:16]>.jpg`, `annotations.json` (COCO) and
`manifest.json`. The manifest that comes back only names the export: what was really exported is
the copy the export kept under `<runtime_dir>/labeling/exports/<export_id>.json`, and every check
is against that copy. Refused before anything is written: a DIR without a readable manifest or
with an export id no export recorded (`UnknownExport`), an export already imported, COCO that is
not COCO, an export with no image or no annotation at all, a labelled image whose file is
missing, whose bytes do not hash as recorded or that was never exported (`ExportMismatch`), and
boxes of a class the champion does not have (`ClassMismatch`).

The version: the newest version of the dataset the champion was trained on (its registered
version's `dataset_name` tag, which `visionguard train` writes) plus the labelled frames,
published by the ordinary import pipeline (`DatasetStore.import_`: a staging folder, every
validation rule, one rename), from a YOLO folder assembled in a scratch folder beside the
versions: the previous version's files linked, each frame's bytes copied once they hashed as
recorded, the COCO boxes as YOLO labels.

Splits: a frame goes to val when the first 32 bits of its sha256 fall under the val share
(VG_DATASETS_VAL_FRACTION or `--val-fraction`), so a frame always lands in the same split;
except that near duplicates stay together (`duplicates.py`'s perceptual hash and thumbnail
check, VG_DATASETS_NEAR_DUPLICATE_BITS): a frame close to an image already in the dataset joins
that image's split, and frames close to each other share one. Otherwise `split_leakage` would
refuse the version, rightly: a val frame one hash bit from a train image measures memory. A frame
byte-identical to an image already in the dataset is not added. Both are reported.

The version's notes say what came in, for people and for retraining
(`control_plane.drift.retraining`, which evaluates on the new validation frames apart from the
old ones): `labeling_export` (this export), `labeling_exports` (every one merged so far),
`base_version`, `frames_added` (by reason), `frames_added_by_split`, `production_frames` (split
-> {file name: reason}, carried forward from the previous version), and the counts of near
duplicates, frames already present and exported frames left unlabelled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from control_plane.datasets import duplicates
from control_plane.datasets.errors import ClassMismatch, DiskFull, SourceError
from control_plane.datasets.labeling import EXPORT_FORMAT
from control_plane.datasets.layout import SPLITS, DatasetVersion, data_yaml_text
from control_plane.datasets.rules import Rule, default_rules
from control_plane.datasets.scan import Progress, scan
from control_plane.datasets.sources import load_coco
from control_plane.datasets.store import (SCRATCH, DatasetStore, ImportResult, remove_tree,
                                         sweep_stale)
from control_plane.errors import Conflict, ControlPlaneError, NotFound
from control_plane.settings import Settings

EXPORT_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4 hex: also a safe file name
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
SHOWN = 5  # offending files named in one message


class LabeledExportError(SourceError):
    """The labelled export cannot be imported as it is: no manifest, not COCO, nothing in it,
    an image missing."""

    code = "bad_labeled_export"


class UnknownExport(NotFound):
    """No export with this id was recorded here."""

    code = "unknown_export"


class ExportMismatch(Conflict):
    """The labelled images are not what was exported: bytes that hash otherwise, images the
    export never had, an export already imported."""

    code = "export_mismatch"


class NoChampionDataset(Conflict):
    """The champion names no dataset version it was trained on, so there is nothing to extend."""

    code = "no_champion_dataset"


@dataclass
class Frame:
    """One labelled frame: its recorded facts, its verified bytes and its boxes."""

    name: str  # <sha256[:16]>.jpg: its file name in the export and in the version
    sha256: str
    reason: str
    size: tuple[int, int]  # (width, height) as recorded at export
    data: bytes
    class_id: np.ndarray  # (N,) index into the dataset's classes
    xywh: np.ndarray  # (N, 4) COCO boxes, pixels
    split: str = ""


@dataclass
class LabeledImportResult:
    imported: ImportResult
    previous: DatasetVersion  # the version the frames were added to
    export_id: str
    added: dict[str, dict[str, int]]  # split -> reason -> frames added
    near_duplicates: list[dict] = field(default_factory=list)  # frame, existing, bits
    already_present: list[str] = field(default_factory=list)  # frames byte-identical to one
    not_labelled: int = 0  # exported frames the annotations do not list

    def as_dict(self) -> dict:
        return {"export_id": self.export_id, "previous": self.previous.ref,
                "added": self.added, "near_duplicates": self.near_duplicates,
                "already_present": self.already_present, "not_labelled": self.not_labelled}


def _fail(error: type[ControlPlaneError], what: str, items: list[str]) -> ControlPlaneError:
    shown = ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more"
                                        if len(items) > SHOWN else "")
    return error(f"{what}: {shown}", count=len(items), items=items[:SHOWN])


def champion_dataset(settings: Settings, store: DatasetStore, model: str | None = None
                     ) -> tuple[DatasetVersion, dict]:
    """The dataset version the champion of `model` (default the served model) was trained on,
    and the champion's model-version tags; `NoChampionDataset` when there is none to find."""
    from mlflow.exceptions import MlflowException

    from control_plane.datasets.errors import UnknownDataset
    from control_plane.mlflow_store import CHAMPION, mlflow_client, store_for

    name = model or settings.model_name
    client = mlflow_client(store_for(settings))
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise NoChampionDataset(f"model {name!r} has no champion: there is no dataset to add "
                                "labelled frames to", model=name) from None
    tags = dict(mv.tags or {})
    ref = tags.get("dataset") or ""
    if "@" not in ref:
        raise NoChampionDataset(
            f"{name} version {mv.version} (champion) records no dataset version it was trained "
            f"on (tag `dataset`); import the labelled frames with --format coco --name NAME",
            model=name, version=str(mv.version))
    try:
        return store.resolve(ref), {**tags, "version": str(mv.version), "run_id": mv.run_id}
    except UnknownDataset as exc:
        raise NoChampionDataset(f"{name} version {mv.version} (champion) was trained on {ref}, "
                                f"which is not in {store.root}: {exc.message}",
                                model=name, dataset=ref) from None


def import_labeled_export(store: DatasetStore, export_dir: str | Path, *,
                          val_fraction: float | None = None,
                          rules: Mapping[str, Rule] | None = None) -> LabeledImportResult:
    """Import the labelled export in `export_dir` as the next version of the champion's
    dataset; see the module doc. `val_fraction`: the val share of new frames (default
    VG_DATASETS_VAL_FRACTION); `rules`: the validation rules (default the settings')."""
    settings = store.settings
    share = settings.datasets_val_fraction if val_fraction is None else val_fraction
    if not 0 <= share < 1:
        raise LabeledExportError(f"the val share of new frames must be in [0, 1), not {share}")
    rules = dict(rules or default_rules(settings))
    folder = Path(export_dir).expanduser().resolve()
    if not folder.is_dir():
        raise LabeledExportError(f"{folder} is not a folder (a labelled export: images/, "
                                 f"{ANNOTATIONS}, {MANIFEST})")
    export_id, recorded = _recorded_manifest(settings, folder)
    trained, champion = champion_dataset(settings, store, (recorded.get("model") or {})
                                         .get("name"))
    previous = store.get(trained.name)  # the newest: earlier labelled exports included
    if export_id in previous.notes.get("labeling_exports", []):
        raise ExportMismatch(f"export {export_id} is already in {previous.ref}: nothing to "
                             "import", export_id=export_id, dataset=previous.ref)
    coco = _annotations(folder)
    frames, not_labelled = _frames(folder, export_id, recorded, coco, previous.classes,
                                   f"{settings.model_name} version {champion['version']}")

    store.root.mkdir(parents=True, exist_ok=True)
    sweep_stale(store.root, SCRATCH)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-", dir=store.root))
    try:
        try:
            near, present = _place(store, scratch, previous, frames, share, rules)
            frames = [f for f in frames if f.name not in set(present)]
            if not frames:
                raise ExportMismatch(f"every labelled frame of export {export_id} is already "
                                     f"in {previous.ref}: nothing to import",
                                     export_id=export_id)
            data_yaml = _assemble(scratch, previous, frames)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left in {store.root} to import export {export_id}; "
                               "nothing was written") from None
            raise
        added = {s: _by_reason(f for f in frames if f.split == s) for s in SPLITS}
        production = {s: dict(previous.notes.get("production_frames", {}).get(s, {}))
                      for s in SPLITS}
        for f in frames:
            production[f.split][f.name] = f.reason
        notes = {"labeling_export": export_id,
                 "labeling_exports": [*previous.notes.get("labeling_exports", []), export_id],
                 "base_version": previous.version,
                 "frames_added": _by_reason(frames),
                 "frames_added_by_split": {s: len([f for f in frames if f.split == s])
                                           for s in SPLITS},
                 "production_frames": production,
                 **({"near_duplicates_of_existing": len(near)} if near else {}),
                 **({"frames_already_in_dataset": len(present)} if present else {}),
                 **({"frames_not_labelled": not_labelled} if not_labelled else {})}
        imported = store.import_(data_yaml, fmt="yolo", name=previous.name,
                                 classes=list(previous.classes), rules=rules,
                                 source_uri=f"labeling-export:{export_id}", notes=notes)
    finally:
        remove_tree(scratch)
    return LabeledImportResult(imported, previous, export_id, added, near, present,
                               not_labelled)


def _by_reason(frames) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in frames:
        out[f.reason] = out.get(f.reason, 0) + 1
    return dict(sorted(out.items()))


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabeledExportError(f"{path} does not exist: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabeledExportError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise LabeledExportError(f"{path}: expected a JSON object ({what})")
    return value


def _recorded_manifest(settings: Settings, folder: Path) -> tuple[str, dict]:
    """The export's id (from the manifest that came back) and the manifest recorded when it
    was exported: the one every check trusts."""
    returned = _read_json(folder / MANIFEST, "a labelled export has the manifest its "
                          "export wrote")
    export_id = returned.get("export_id")
    if returned.get("format") != EXPORT_FORMAT or not isinstance(export_id, str):
        raise LabeledExportError(f"{folder / MANIFEST}: not a labelling export's manifest "
                                 f"(format {returned.get('format')!r}, expected "
                                 f"{EXPORT_FORMAT!r} with an export_id)")
    records = settings.labeling_exports_dir
    path = records / f"{export_id}.json"
    if not EXPORT_ID.match(export_id) or not path.is_file():
        known = sorted(p.stem for p in records.glob("*.json"))
        raise UnknownExport(f"export {export_id!r} was not recorded in {records}: not exported "
                            f"here, or its record was removed ({len(known)} exports recorded)",
                            export_id=export_id)
    recorded = _read_json(path, "the export's record")
    if not isinstance(recorded.get("images"), list) or not isinstance(
            recorded.get("classes"), list):
        raise LabeledExportError(f"{path}: the export's record has no images or classes")
    return export_id, recorded


def _annotations(folder: Path) -> dict:
    path = folder / ANNOTATIONS
    if not path.is_file():
        raise LabeledExportError(f"{path} does not exist: the labelled COCO file")
    try:
        coco = load_coco(path)
    except SourceError as exc:
        raise LabeledExportError(exc.message, **exc.details) from None
    if not coco["images"]:
        raise LabeledExportError(f"{path} lists no images: an empty export")
    if not coco["annotations"]:
        raise LabeledExportError(f"{path} has no annotation at all on its {len(coco['images'])}"
                                 " images: nothing was labelled (an empty export)")
    return coco


def _frames(folder: Path, export_id: str, recorded: dict, coco: dict, classes: list[str],
            champion: str) -> tuple[list[Frame], int]:
    """The labelled frames, checked against the export's record; and how many exported frames
    the annotations leave out."""
    by_name = {Path(str(im.get("file_name", ""))).name: im for im in recorded["images"]
               if isinstance(im, dict)}
    category = {c["id"]: c["name"] for c in coco["categories"]}
    unknown: dict[str, int] = {}
    for a in coco["annotations"]:
        name = category[a["category_id"]]
        if name not in classes:
            unknown[name] = unknown.get(name, 0) + 1
    if unknown:
        raise ClassMismatch(
            f"labels of classes the champion ({champion}) does not have: "
            + ", ".join(f"{n} ({k} boxes)" for n, k in sorted(unknown.items()))
            + f"; its classes are {classes}", unknown=sorted(unknown), expected=classes)
    boxes: dict[object, list[tuple[int, list[float]]]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        boxes[a["image_id"]].append((classes.index(category[a["category_id"]]),
                                     [float(v) for v in a["bbox"]]))
    missing, foreign, changed, frames = [], [], [], []
    for im in coco["images"]:
        name = Path(im["file_name"]).name
        entry = by_name.get(name)
        if entry is None:
            foreign.append(name)
            continue
        path = folder / "images" / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            missing.append(name)
            continue
        except OSError as exc:
            raise LabeledExportError(f"cannot read {path}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            changed.append(name)
            continue
        rows = boxes[im["id"]]
        frames.append(Frame(name, entry["sha256"], str(entry.get("reason") or "unknown"),
                            (int(entry["width"]), int(entry["height"])), data,
                            np.array([c for c, _ in rows], np.int64),
                            np.array([b for _, b in rows], np.float64).reshape(-1, 4)))
    if foreign:
        raise _fail(ExportMismatch, f"{len(foreign)} labelled images were not in export "
                    f"{export_id}", foreign)
    if missing:
        raise _fail(LabeledExportError, f"{len(missing)} labelled images are missing from "
                    f"{folder / 'images'}", missing)
    if changed:
        raise _fail(ExportMismatch, f"{len(changed)} images do not hash as export {export_id} "
                    "recorded them (changed after export)", changed)
    return frames, len(by_name) - len(frames)


def _place(store: DatasetStore, scratch: Path, previous: DatasetVersion, frames: list[Frame],
           share: float, rules: Mapping[str, Rule]) -> tuple[list[dict], list[str]]:
    """Each frame's split (see the module doc), its bytes written to scratch/frames; returns
    the near duplicates of existing images and the frames already in the dataset."""
    (scratch / "frames").mkdir()
    for f in frames:
        (scratch / "frames" / f.name).write_bytes(f.data)
    old = [(str(previous.path), rel.split("/")[1], rel, None) for rel in sorted(previous.files)
           if rel.startswith("images/")]
    new = [(str(scratch), "new", f"frames/{f.name}", None) for f in frames]
    facts = scan(old + new, workers=store.settings.datasets_workers, progress=store.progress)
    n_old = len(old)
    old_sha = {facts[i].sha256: facts[i].image for i in range(n_old)}
    present = [f.name for f in frames if f.sha256 in old_sha]

    on = [r for r in ("near_duplicate", "split_leakage") if rules[r].severity != "off"]
    bits = int(max((rules[r].threshold or 0) for r in on)) if on else -1
    pairs = duplicates.confirmed(duplicates.near_pairs([f.phash for f in facts], bits),
                                 [f.thumb for f in facts])
    parent = list(range(len(frames)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    anchors: dict[int, set[str]] = {}
    near = []
    for i, j, d in pairs:
        if j < n_old:
            continue  # two images already in the dataset: its own validation's business
        if i < n_old:
            frame = frames[j - n_old]
            if frame.name not in present:
                near.append({"frame": frame.name, "existing": facts[i].image, "bits": d})
                anchors.setdefault(j - n_old, set()).add(facts[i].split)
        else:
            parent[root(i - n_old)] = root(j - n_old)
    groups: dict[int, list[int]] = {}
    for k in range(len(frames)):
        groups.setdefault(root(k), []).append(k)
    for members in groups.values():
        tied = set().union(*(anchors.get(k, set()) for k in members))
        if tied:  # an image's near duplicate goes where the image is (train when both)
            split = "train" if "train" in tied else "val"
        else:
            first = min(frames[k].sha256 for k in members)
            split = "val" if int(first[:8], 16) / 2 ** 32 < share else "train"
        for k in members:
            frames[k].split = split
    store.progress(Progress("place", len(frames), len(frames)))
    return near, present


def _yolo_rows(f: Frame) -> str:
    w, h = f.size
    lines = []
    for c, (x, y, bw, bh) in zip(f.class_id, f.xywh):
        lines.append(f"{int(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                     f"{bw / w:.6f} {bh / h:.6f}\n")
    return "".join(lines)


def _assemble(scratch: Path, previous: DatasetVersion, frames: list[Frame]) -> Path:
    """scratch/yolo: the previous version's images and labels linked, the frames moved in with
    their labels; its data.yaml."""
    out = scratch / "yolo"
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    for rel in previous.files:
        os.symlink(previous.path / rel, out / rel)
    for f in frames:
        os.rename(scratch / "frames" / f.name, out / "images" / f.split / f.name)
        (out / "labels" / f.split / f"{Path(f.name).stem}.txt").write_text(_yolo_rows(f))
    data_yaml = out / "data.yaml"
    data_yaml.write_text(data_yaml_text(f"{previous.name}@labelled", list(previous.classes), {}))
    return data_yaml
