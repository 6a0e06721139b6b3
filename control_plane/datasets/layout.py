"""A dataset version's folder: what is in it, how it is named and how its identity is computed.

    <datasets_dir>/NAME/VERSION/
        data.yaml              Ultralytics' dataset file (no `path:` key: splits resolve beside it)
        images/{train,val}/    the images, byte for byte as imported
        labels/{train,val}/    one `class cx cy w h` file per image (normalised, 5 decimals)
        manifest.json          hash, per-file sha256, classes, counts, source, import notes
        validation.json        the validation report at import

VERSION is the first 12 hex digits of the content hash: sha256 over the class names and every
image and label file (relative path and the file's sha256), so importing the same content twice
gives the same version, and anything else a new one. data.yaml, manifest.json and
validation.json are not hashed (they name the version). Files are made read-only once the
version is published; `DatasetStore.verify` re-hashes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

SPLITS = ("train", "val")
# Ultralytics' image formats (ultralytics.data.utils.IMG_FORMATS), less those PIL cannot read.
IMAGE_EXTENSIONS = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif",
                              ".tiff", ".webp"})
MANIFEST = "manifest.json"
VALIDATION = "validation.json"
DATA_YAML = "data.yaml"
VERSION_DIGITS = 12
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str) -> str:
    """A dataset name is one folder name: letters, digits, `.`, `_`, `-`; no `..`."""
    from control_plane.datasets.errors import SourceError

    if not NAME_PATTERN.match(name or "") or ".." in name:
        raise SourceError(f"dataset name {name!r} must be 1-100 letters, digits, '.', '_' or "
                          "'-', starting with a letter or digit")
    return name


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`NAME` or `NAME@VERSION` (a version may be any unique prefix of 4+ hex digits)."""
    name, _, version = ref.partition("@")
    return check_name(name), (version or None)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in chunks (datasets' images, registered checkpoints)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_hash(files: dict[str, str], classes: list[str], split: str | None = None) -> str:
    """The identity of a version (or of one split): class names, then every image and label
    file as (relative path, sha256), in path order."""
    digest = hashlib.sha256(json.dumps(list(classes)).encode() + b"\0")
    for rel in sorted(files):
        if split is None or rel.split("/")[1] == split:
            digest.update(rel.encode() + b"\0" + bytes.fromhex(files[rel]))
    return digest.hexdigest()


def data_yaml_text(ref: str, classes: list[str], counts: dict[str, dict]) -> str:
    sizes = " / ".join(f"{counts.get(s, {}).get('images', 0)} {s}" for s in SPLITS)
    body = yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": len(classes),
                           "names": dict(enumerate(classes))}, sort_keys=False,
                          allow_unicode=True)
    return f"# {ref}: {sizes} images, {len(classes)} classes (visionguard dataset)\n{body}"


@dataclass(frozen=True)
class DatasetVersion:
    """One published version: its folder and what its manifest says."""

    name: str
    version: str
    path: Path
    hash: str
    split_hashes: dict[str, str]
    classes: list[str]
    counts: dict[str, dict]  # split -> images, boxes, empty, per_class
    source: dict  # format, uri and the import's options
    created: str
    notes: dict = field(default_factory=dict)  # crowd boxes dropped, boxes clipped, ...
    files: dict[str, str] = field(default_factory=dict, repr=False)  # relative path -> sha256

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def data_yaml(self) -> Path:
        return self.path / DATA_YAML

    def images_dir(self, split: str) -> Path:
        return self.path / "images" / split

    def labels_dir(self, split: str) -> Path:
        return self.path / "labels" / split

    def as_dict(self, with_files: bool = False) -> dict:
        out = {**asdict(self), "path": str(self.path), "ref": self.ref,
               "data_yaml": str(self.data_yaml)}
        if not with_files:
            out.pop("files")
        return out

    @classmethod
    def load(cls, path: Path) -> "DatasetVersion":
        m = json.loads((path / MANIFEST).read_text())
        return cls(name=m["name"], version=m["version"], path=path, hash=m["hash"],
                   split_hashes=m["split_hashes"], classes=m["classes"], counts=m["counts"],
                   source=m["source"], created=m["created"], notes=m.get("notes", {}),
                   files=m.get("files", {}))

    def manifest(self) -> dict:
        out = self.as_dict(with_files=True)
        for key in ("path", "ref", "data_yaml"):
            out.pop(key)
        return out


def yolo_splits(data_yaml: Path) -> tuple[list[str], dict[str, list[tuple[Path, Path]]]]:
    """An Ultralytics data.yaml's class names and, per split, its (images, labels) folders.

    Splits resolve against the file's `path:` key (relative to the file), else the file's
    folder; labels are found as Ultralytics finds them: the last `images` component of the
    image folder's path replaced by `labels` (beside the images when there is none). A split
    given as a list of image files (`.txt`) is refused: name folders instead.
    """
    from control_plane.datasets.errors import SourceError

    try:
        spec = yaml.safe_load(Path(data_yaml).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SourceError(f"{data_yaml}: not a readable YAML file ({exc})") from None
    if not isinstance(spec, dict):
        raise SourceError(f"{data_yaml}: expected a mapping with `names` and `train`/`val`")
    names = spec.get("names")
    if isinstance(names, dict):
        try:
            names = [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise SourceError(f"{data_yaml}: `names` keys must be class indices") from None
    if not isinstance(names, list) or not names:
        raise SourceError(f"{data_yaml}: `names` must be a non-empty list or mapping")
    base = Path(data_yaml).parent
    if spec.get("path"):
        base = (base / str(spec["path"])).resolve()
    splits: dict[str, list[tuple[Path, Path]]] = {}
    for split in SPLITS:
        value = spec.get(split)
        if value is None:
            continue
        folders = []
        for entry in (value if isinstance(value, list) else [value]):
            images = (base / str(entry)).resolve()
            if images.suffix == ".txt":
                raise SourceError(f"{data_yaml}: {split} lists image files ({entry}); "
                                  "only image folders are imported")
            if not images.is_dir():
                raise SourceError(f"{data_yaml}: the {split} folder {images} does not exist")
            parts = images.parts
            if "images" in parts:
                i = len(parts) - 1 - parts[::-1].index("images")
                labels = Path(*parts[:i], "labels", *parts[i + 1:])
            else:
                labels = images
            folders.append((images, labels))
        splits[split] = folders
    if "train" not in splits:
        raise SourceError(f"{data_yaml}: no `train` split")
    return [str(n) for n in names], splits


def split_files(entries: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for rel in entries:
        out.setdefault(rel.split("/")[1], []).append(rel)
    return out
