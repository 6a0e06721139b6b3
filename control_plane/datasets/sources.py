"""Reading a source dataset (COCO JSON, a YOLO folder, Pascal VOC XML) into one shape: images with
pixel boxes and class indices, in train and val.

The formats are parsed by supervision (`DetectionDataset.from_coco`, `from_yolo`,
`from_pascal_voc`): COCO category ids become contiguous classes in category-id order, COCO
crowd annotations are marked (`iscrowd`), images without annotations are kept with no boxes,
YOLO polygons become their boxes. Around it, this module finds the parts of a source and refuses
what supervision would accept silently or with an unhelpful message: a COCO file that is not
COCO (checked against the fields import needs, with the path of the first bad ones), images the
annotations name that do not exist, label files without an image, splits whose classes differ.

Where the parts are:
  coco  SRC is one JSON (its images in --images, else beside it or in images/), split into
        train/val by file name; or a folder whose JSON files name their split (train, val or
        valid in the file's or its folder's name: annotations/instances_train2017.json,
        train/_annotations.coco.json), each with its images found beside it, in images/<split>
        or in <split> (--images: that folder or its <split> sub-folders). A test split is
        not imported.
  yolo  SRC is a folder with data.yaml (or the YAML itself): its `train`/`val` image folders,
        labels where Ultralytics finds them.
  voc   SRC is a VOC devkit folder (Annotations/, JPEGImages/, ImageSets/Main/{train,val}.txt),
        a folder with train/ and val/ sub-folders, or one folder of images and XML files.
A source without a val split gets `val_fraction` of its images as val, chosen by a hash of the
file name, so the same source splits the same way every time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from control_plane.datasets.errors import ClassMismatch, SourceError
from control_plane.datasets.layout import SPLITS, is_image, yolo_splits
from control_plane.datasets.scan import image_size, pillow_open

FORMATS = ("coco", "yolo", "voc")
SHOWN = 5  # offending files named in one error message


@dataclass
class SourceImage:
    split: str
    path: Path  # the source file
    size: tuple[int, int]  # (width, height) of the frame the boxes are drawn in
    xyxy: np.ndarray  # (N, 4) pixels
    class_id: np.ndarray  # (N,) index into SourceDataset.classes
    crowd: np.ndarray  # (N,) bool: COCO iscrowd
    name: str = ""  # its file name in the version (unique stem within the split)


@dataclass
class SourceDataset:
    format: str
    uri: str
    classes: list[str]
    images: list[SourceImage]
    notes: dict = field(default_factory=dict)

    def remap(self, classes: list[str]) -> None:
        """Renumber the boxes' classes to `classes` (a superset of this source's names)."""
        missing = [c for c in self.classes if c not in classes]
        if missing:
            raise ClassMismatch(f"the source has classes {missing} that are not in "
                                f"{classes}", source=self.classes, expected=classes)
        table = np.array([classes.index(c) for c in self.classes] or [0], np.int64)
        for im in self.images:
            im.class_id = table[im.class_id] if len(im.class_id) else im.class_id
        if "category_ids" in self.notes:  # COCO: each category id's class, renumbered too
            self.notes["category_ids"] = {cid: int(table[i]) for cid, i
                                          in self.notes["category_ids"].items()}
        self.classes = list(classes)


def read_source(src: str | Path, fmt: str, *, images_dir: str | Path | None = None,
                val_fraction: float = 0.2, scratch: Path) -> SourceDataset:
    """The source at `src` in format `fmt`; `scratch` is a folder for intermediate files."""
    path = Path(src).expanduser()
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise SourceError(f"images folder {images_dir} does not exist")
    reader = {"coco": _read_coco, "yolo": _read_yolo, "voc": _read_voc}[fmt]
    with pillow_open():
        dataset = reader(path.resolve(), Path(images_dir).resolve() if images_dir else None,
                         scratch)
    if not dataset.images:
        raise SourceError(f"{path}: no images found")
    _assign_splits(dataset, val_fraction)
    _name_files(dataset)
    return dataset


def _fail(what: str, items: list[str]) -> SourceError:
    shown = ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN
                                        else "")
    return SourceError(f"{what}: {shown}", count=len(items), items=items[:SHOWN])


def _split_of(name: str) -> str | None:
    n = name.lower()
    train, val = "train" in n, re.search(r"val", n) is not None
    if train and not val:
        return "train"
    if val and not train:
        return "val"
    return "test" if "test" in n else None


def _detections(ds, path: str):
    """Pixel boxes, class ids and crowd flags of one image of a supervision DetectionDataset."""
    det = ds.annotations[path]
    n = len(det)
    xyxy = np.asarray(det.xyxy, np.float64).reshape(n, 4)
    cls = np.asarray(det.class_id if det.class_id is not None else [], np.int64).reshape(n)
    crowd = np.asarray(det.data.get("iscrowd", np.zeros(n)), bool).reshape(n)
    return xyxy, cls, crowd


# --- COCO -------------------------------------------------------------------------------------

def _coco_parts(src: Path) -> list[tuple[str | None, Path]]:
    if src.is_file():
        return [(None, src)]
    candidates = sorted({*src.glob("*.json"), *src.glob("annotations/*.json"),
                         *src.glob("*/*.json")})
    parts: dict[str, Path] = {}
    for p in candidates:
        split = _split_of(p.stem) or _split_of(p.parent.name)
        if split in SPLITS:
            if split in parts:
                raise SourceError(f"{src}: two COCO files for {split}: {parts[split]} and {p}")
            parts[split] = p
    if parts:
        return sorted(parts.items(), key=lambda kv: SPLITS.index(kv[0]))
    if len(candidates) == 1:
        return [(None, candidates[0])]
    if not candidates:
        raise SourceError(f"{src}: no COCO JSON file (looked in it, annotations/ and its "
                          "sub-folders)")
    raise SourceError(f"{src}: cannot tell which COCO file is train and which val: "
                      + ", ".join(str(p) for p in candidates[:SHOWN]))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def load_coco(path: Path) -> dict:
    """The COCO file at `path`, checked for what import reads: images (id, file_name, width,
    height), annotations (image_id, category_id, bbox [x, y, w, h] with w, h >= 0) and
    categories (id, unique name), and that annotations name existing images and categories."""
    try:
        coco = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not a text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}") from None
    if not isinstance(coco, dict):
        raise SourceError(f"{path}: a COCO file is a JSON object with images, annotations "
                          "and categories")
    problems: list[str] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            problems.append(f"{key}: missing or not a list")
    if problems:
        raise _fail(f"{path}: not a COCO detection file", problems)
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict):
            problems.append(f"images[{i}]: not an object")
            continue
        for key, ok in (("id", lambda v: isinstance(v, (int, str))),
                        ("file_name", lambda v: isinstance(v, str) and v),
                        ("width", lambda v: _is_number(v) and v > 0),
                        ("height", lambda v: _is_number(v) and v > 0)):
            if not ok(im.get(key)):
                problems.append(f"images[{i}].{key}: {im.get(key)!r}")
    for i, c in enumerate(coco["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(
                c.get("name"), str):
            problems.append(f"categories[{i}]: needs an integer id and a name")
    if problems:
        raise _fail(f"{path}: not a COCO detection file", problems)
    names = [c["name"] for c in coco["categories"]]
    ids = [c["id"] for c in coco["categories"]]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise SourceError(f"{path}: category ids and names must be unique: {coco['categories']}")
    image_ids = {im["id"] for im in coco["images"]}
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, dict):
            problems.append(f"annotations[{i}]: not an object")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            problems.append(f"annotations[{i}].bbox: {bbox!r} is not [x, y, width, height]")
        elif bbox[2] < 0 or bbox[3] < 0:
            problems.append(f"annotations[{i}].bbox: negative width or height {bbox}")
        if a.get("image_id") not in image_ids:
            problems.append(f"annotations[{i}].image_id: {a.get('image_id')!r} is not an image")
        if a.get("category_id") not in ids:
            problems.append(f"annotations[{i}].category_id: {a.get('category_id')!r} is not a "
                            "category")
    if problems:
        raise _fail(f"{path}: not a COCO detection file", problems)
    return coco


def _coco_images_dir(src: Path, json_path: Path, first: str, given: Path | None) -> Path:
    root = src if src.is_dir() else json_path.parent
    match = re.search(r"(train|val)[a-z0-9]*", json_path.stem.lower())
    subs = sorted(s for s in {match.group(0) if match else "", json_path.parent.name} if s)
    if given is not None:  # --images: the folder, or its sub-folder named like the split
        candidates = [given, *(given / s for s in subs)]
    else:
        candidates = [json_path.parent, json_path.parent / "images"]
        for s in subs:
            candidates += [root / "images" / s, root / s, json_path.parent.parent / s]
        candidates += [root / "images", root]
    for c in candidates:
        if (c / first).is_file():
            return c
    raise SourceError(f"{json_path}: its first image {first} is not in any of "
                      + ", ".join(str(c) for c in dict.fromkeys(candidates))
                      + ("" if given else "; name the folder with --images"))


def _read_coco(src: Path, images_dir: Path | None, scratch: Path) -> SourceDataset:
    import supervision as sv

    images: list[SourceImage] = []
    categories: dict[int, str] | None = None
    notes: dict = {}
    for split, json_path in _coco_parts(src):
        coco = load_coco(json_path)
        cats = {c["id"]: c["name"] for c in coco["categories"]}
        if categories is not None and cats != categories:
            raise ClassMismatch(f"{json_path}: its categories differ from the other split's",
                                categories={str(k): v for k, v in cats.items()},
                                expected={str(k): v for k, v in categories.items()})
        categories = cats
        if not coco["images"]:
            continue
        folder = _coco_images_dir(src, json_path, coco["images"][0]["file_name"], images_dir)
        missing = [im["file_name"] for im in coco["images"]
                   if not (folder / im["file_name"]).is_file()]
        if missing:
            raise _fail(f"{json_path}: {len(missing)} images are not in {folder}", missing)
        # supervision decodes masks for annotations with a segmentation; boxes are all we keep
        stripped = scratch / f"coco-{split or 'all'}.json"
        keep = ("id", "image_id", "category_id", "bbox", "iscrowd", "area")
        stripped.write_text(json.dumps({
            "images": coco["images"], "categories": coco["categories"],
            "annotations": [{k: a[k] for k in keep if k in a} for a in coco["annotations"]]}))
        try:
            ds = sv.DetectionDataset.from_coco(str(folder), str(stripped), use_iscrowd=True)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise SourceError(f"{json_path}: {exc}") from None
        declared = {str((folder / im["file_name"]).resolve()): (int(im["width"]),
                                                                int(im["height"]))
                    for im in coco["images"]}
        wrong = []
        for p in ds.image_paths:
            w, h = declared[p]
            try:
                actual = image_size(p)
            except OSError:
                actual = None  # does not decode: validation says so
            if actual is not None and (w, h) != actual and (h, w) != actual:
                wrong.append(f"{Path(p).name} is {actual[0]}x{actual[1]}, not {w}x{h}")
            xyxy, cls, crowd = _detections(ds, p)
            images.append(SourceImage(split or "", Path(p), (w, h), xyxy, cls, crowd))
        if wrong:
            raise _fail(f"{json_path}: image sizes differ from the files'", wrong)
    ordered = sorted(categories or {})
    notes["category_ids"] = {str(cid): i for i, cid in enumerate(ordered)}
    # supervision's classes: the category names in category-id order
    return SourceDataset("coco", src.as_uri(), [categories[c] for c in ordered], images, notes)


# --- YOLO -------------------------------------------------------------------------------------

def _yolo_yaml(src: Path) -> Path:
    if src.is_file():
        return src
    if (src / "data.yaml").is_file():
        return src / "data.yaml"
    yamls = sorted([*src.glob("*.yaml"), *src.glob("*.yml")])
    if len(yamls) == 1:
        return yamls[0]
    raise SourceError(f"{src}: no data.yaml (Ultralytics' dataset file with names and "
                      "train/val folders)")


def _read_yolo(src: Path, images_dir: Path | None, scratch: Path) -> SourceDataset:
    import supervision as sv

    data_yaml = _yolo_yaml(src)
    names, splits = yolo_splits(data_yaml)
    images: list[SourceImage] = []
    for split, folders in splits.items():
        for folder, labels in folders:
            stems = {p.stem for p in folder.iterdir() if is_image(p)}
            orphans = sorted(f"{labels.parent.name}/{labels.name}/{p.name}"
                             for p in labels.glob("*.txt")
                             if p.stem not in stems) if labels.is_dir() else []
            if orphans:
                raise _fail(f"{data_yaml}: {len(orphans)} {split} label files have no image",
                            orphans)
            try:
                ds = sv.DetectionDataset.from_yolo(str(folder), str(labels), str(data_yaml))
            except (ValueError, OSError) as exc:
                raise SourceError(f"{data_yaml} ({split}): {exc}") from None
            for p in ds.image_paths:
                xyxy, cls, crowd = _detections(ds, p)
                size = image_size(p) if len(xyxy) else (0, 0)
                images.append(SourceImage(split, Path(p), size, xyxy, cls, crowd))
    notes = {} if "val" in splits else {"val": "split from train by file name"}
    return SourceDataset("yolo", data_yaml.as_uri(), names, images, notes)


# --- Pascal VOC -------------------------------------------------------------------------------

def _voc_parts(src: Path) -> tuple[list[tuple[str | None, Path, Path]], dict[str, str]]:
    if (src / "Annotations").is_dir() and (src / "JPEGImages").is_dir():
        lists: dict[str, str] = {}
        for split in SPLITS:
            listing = src / "ImageSets" / "Main" / f"{split}.txt"
            if listing.is_file():
                lists.update({line.split()[0]: split for line in listing.read_text().splitlines()
                              if line.strip()})
        return [(None, src / "JPEGImages", src / "Annotations")], lists
    parts = []
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        split = _split_of(d.name)
        if split not in SPLITS:
            continue
        for images, xmls in (("JPEGImages", "Annotations"), ("images", "annotations"),
                             (".", ".")):
            if (d / images).is_dir() and (d / xmls).is_dir() and any((d / xmls).glob("*.xml")):
                parts.append((split, (d / images).resolve(), (d / xmls).resolve()))
                break
    return (parts or [(None, src, src)]), {}


def _read_voc(src: Path, images_dir: Path | None, scratch: Path) -> SourceDataset:
    import supervision as sv

    parts, lists = _voc_parts(src)
    found: list[tuple[str | None, object]] = []
    names: set[str] = set()
    for split, folder, xmls in parts:
        folder = images_dir or folder
        stems = {p.stem for p in folder.iterdir() if is_image(p)}
        orphans = sorted(p.name for p in xmls.glob("*.xml") if p.stem not in stems)
        if orphans:
            raise _fail(f"{xmls}: {len(orphans)} annotation files have no image in {folder}",
                        orphans)
        try:
            ds = sv.DetectionDataset.from_pascal_voc(str(folder), str(xmls))
        except (ValueError, OSError, SyntaxError) as exc:  # ElementTree.ParseError: SyntaxError
            raise SourceError(f"{xmls}: {exc}") from None
        found.append((split, ds))
        names.update(ds.classes)
    classes = sorted(names)
    images: list[SourceImage] = []
    skipped = 0
    for split, ds in found:
        table = np.array([classes.index(c) for c in ds.classes] or [0], np.int64)
        for p in ds.image_paths:
            s = split or lists.get(Path(p).stem, "" if not lists else None)
            if s is None:
                skipped += 1
                continue
            xyxy, cls, crowd = _detections(ds, p)
            size = image_size(p) if len(xyxy) else (0, 0)
            images.append(SourceImage(s, Path(p), size, xyxy, table[cls] if len(cls) else cls,
                                      crowd))
    notes = {"images_in_no_imageset": skipped} if skipped else {}
    return SourceDataset("voc", src.as_uri(), classes, images, notes)


# --- splits and file names --------------------------------------------------------------------

def _assign_splits(dataset: SourceDataset, val_fraction: float) -> None:
    unassigned = [im for im in dataset.images if im.split not in SPLITS]
    if not unassigned:
        return
    if not 0 < val_fraction < 1:
        raise SourceError(f"the source has no val split and the val fraction {val_fraction} "
                          "is not between 0 and 1")
    for im in unassigned:
        h = int(hashlib.sha256(im.path.name.encode()).hexdigest()[:8], 16) / 2 ** 32
        im.split = "val" if h < val_fraction else "train"
    dataset.notes["val"] = (f"{val_fraction:.0%} of the images, chosen by a hash of the file "
                            "name")


def _name_files(dataset: SourceDataset) -> None:
    """A file name per image, unique by stem within its split (its label file is stem.txt):
    the source's name, prefixed with its parent folders where two stems collide."""
    for split in SPLITS:
        members = sorted((im for im in dataset.images if im.split == split),
                         key=lambda im: str(im.path))
        by_stem: dict[str, list[SourceImage]] = {}
        for im in members:
            by_stem.setdefault(im.path.stem, []).append(im)
        taken: set[str] = set()
        for stem, group in by_stem.items():
            for im in group:
                name = im.path.name
                if len(group) > 1:
                    parents = [p.name for p in im.path.parents][:2][::-1]
                    name = "__".join([*parents, im.path.stem]) + f"{im.path.suffix}"
                    if Path(name).stem in taken:
                        name = f"{Path(name).stem}__{im.path.suffix.lstrip('.')}{im.path.suffix}"
                taken.add(Path(name).stem)
                im.name = name
