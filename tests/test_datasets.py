"""Datasets (control_plane/datasets): import from COCO, YOLO and VOC as immutable versions,
validation rules with one planted defect each, bad input refused with nothing left behind,
MLflow lineage and the `visionguard data` commands.

Everything runs on a small generated dataset (24 train / 8 val images of 128 px from
control_plane.datasets.synthetic_data), exported to COCO JSON with plain json (COCO is data)
and to Pascal VOC with supervision, the library the import reads them with.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from control_plane.datasets import duplicates, scan, store as store_module
from control_plane.datasets.errors import (ClassMismatch, DatasetInvalid, DatasetModified,
                                           DiskFull, SourceError)
from control_plane.datasets.rules import RULE_NAMES, default_rules, with_overrides
from control_plane.datasets.store import DatasetStore
from control_plane.datasets.validate import require_valid, validate
from control_plane.settings import Settings
from control_plane.datasets import synthetic_data

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, SIZE = 24, 8, 128
SHAPES = list(synthetic_data.SHAPES)
# COCO category ids: non-contiguous and not in class order, so import must remap them
CATEGORY_IDS = {"circle": 7, "square": 3, "triangle": 11, "star": 20}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The generated YOLO folder every test copies (never modified)."""
    root = tmp_path_factory.mktemp("clean")
    synthetic_data.generate_dataset(root, n_train=N_TRAIN, n_val=N_VAL, imgsz=SIZE, seed=3)
    return root


@pytest.fixture
def yolo(clean, tmp_path) -> Path:
    """A copy of the clean dataset to plant defects in."""
    return Path(shutil.copytree(clean, tmp_path / "yolo"))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(runtime_dir=tmp_path / "runtime")


@pytest.fixture
def store(settings) -> DatasetStore:
    return DatasetStore(settings, log_to_mlflow=False)


def labels(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5) if path.stat().st_size else np.zeros((0, 5))


def leftovers(store: DatasetStore) -> list[str]:
    """What a refused import left in the datasets folder (nothing, or what was there)."""
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))


def write_coco(yolo: Path, out: Path, *, crowd: bool = True) -> dict[str, Path]:
    """COCO files for the generated dataset: annotations/instances_{split}.json, images in
    images/{split}; one extra crowd box on the first train image; polygons as segmentation."""
    paths = {}
    cats = [{"id": CATEGORY_IDS[n], "name": n, "supercategory": "shape"}
            for n in ("star", "circle", "triangle", "square")]
    for split in ("train", "val"):
        (out / "images").mkdir(parents=True, exist_ok=True)
        shutil.copytree(yolo / "images" / split, out / "images" / split)
        images, anns = [], []
        for i, img in enumerate(sorted((yolo / "images" / split).glob("*.jpg"))):
            images.append({"id": 100 + i, "file_name": img.name, "width": SIZE, "height": SIZE})
            for c, cx, cy, w, h in labels(yolo / "labels" / split / f"{img.stem}.txt"):
                x, y, bw, bh = (cx - w / 2) * SIZE, (cy - h / 2) * SIZE, w * SIZE, h * SIZE
                anns.append({"id": len(anns) + 1, "image_id": 100 + i,
                             "category_id": CATEGORY_IDS[SHAPES[int(c)]],
                             "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                             "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
        if crowd and split == "train":
            anns.append({"id": len(anns) + 1, "image_id": 100, "category_id": 3,
                         "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 1,
                         "segmentation": {"counts": [0, 3600], "size": [SIZE, SIZE]}})
        (out / "annotations").mkdir(exist_ok=True)
        paths[split] = out / "annotations" / f"instances_{split}.json"
        paths[split].write_text(json.dumps({"images": images, "annotations": anns,
                                            "categories": cats}))
    return paths


# --- validation: the clean dataset passes, each rule catches its planted defect -------------

def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def _retag(path: Path, old: int, new: int, keep_first: bool = False) -> None:
    rows = labels(path)
    hit = np.flatnonzero(rows[:, 0] == old)
    rows[hit[1:] if keep_first else hit, 0] = new
    path.write_text("".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n"
                            for r in rows))


def _train_label(root: Path, i: int) -> Path:
    return root / "labels" / "train" / f"train_{i:05d}.txt"


def _first_with_boxes(root: Path, split: str = "train") -> Path:
    return next(p for p in sorted((root / "labels" / split).glob("*.txt")) if p.stat().st_size)


def plant_unreadable_image(root: Path) -> None:
    img = root / "images" / "train" / "train_00003.jpg"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # truncated


def plant_exif_rotation(root: Path) -> None:
    img = root / "images" / "train" / "train_00004.jpg"
    im = Image.open(img).crop((0, 0, SIZE, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: loaders see 96 x 128
    im.save(img, quality=92, exif=exif)


def plant_label_format(root: Path) -> None:
    _append(_train_label(root, 5), "1 0.5 0.5")


def plant_unknown_class(root: Path) -> None:
    _append(_train_label(root, 6), "9 0.5 0.5 0.1 0.1")


def plant_degenerate_box(root: Path) -> None:
    _append(_train_label(root, 7), "0 0.5 0.5 0.0 0.1")


def plant_box_outside_image(root: Path) -> None:
    _append(_train_label(root, 8), "0 0.98 0.5 0.2 0.2")


def plant_no_labels(root: Path) -> None:
    for p in sorted((root / "labels" / "train").glob("*.txt"))[:12]:
        p.write_text("")


def plant_exact_duplicate(root: Path) -> None:
    src = _first_with_boxes(root)
    shutil.copy(root / "images" / "train" / f"{src.stem}.jpg",
                root / "images" / "train" / "copy.jpg")
    shutil.copy(src, root / "labels" / "train" / "copy.txt")


def plant_near_duplicate(root: Path) -> None:
    src = _first_with_boxes(root)
    im = Image.open(root / "images" / "train" / f"{src.stem}.jpg")
    brighter = Image.fromarray(np.clip(np.asarray(im, np.int16) + 6, 0, 255).astype(np.uint8))
    brighter.save(root / "images" / "train" / "near.jpg", quality=75)
    shutil.copy(src, root / "labels" / "train" / "near.txt")


def plant_split_leakage(root: Path) -> None:
    src = _first_with_boxes(root)
    shutil.copy(root / "images" / "train" / f"{src.stem}.jpg",
                root / "images" / "val" / "leak.jpg")
    shutil.copy(src, root / "labels" / "val" / "leak.txt")


def plant_class_imbalance(root: Path) -> None:
    first = True
    for p in sorted((root / "labels" / "train").glob("*.txt")):
        if p.stat().st_size:
            _retag(p, 1, 2, keep_first=first and (labels(p)[:, 0] == 1).any())
            first = first and not (labels(p)[:, 0] == 1).any()


def plant_class_missing_from_val(root: Path) -> None:
    for p in (root / "labels" / "val").glob("*.txt"):
        if p.stat().st_size:
            _retag(p, 3, 2)


def plant_box_size_outlier(root: Path) -> None:
    _append(_train_label(root, 9), "0 0.5 0.5 0.9 0.02")  # 45:1, the circles are ~1:1


PLANTS = {name: globals()[f"plant_{name}"] for name in RULE_NAMES}


def test_clean_dataset_passes_with_no_findings(clean, settings):
    report = validate(clean, settings=settings)
    assert report.passed and report.findings == [], report.as_dict()
    assert report.stats["train"]["images"] == N_TRAIN and report.stats["val"]["images"] == N_VAL
    assert set(report.counts()) == set(RULE_NAMES)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_each_rule_catches_its_planted_defect(yolo, settings, rule):
    PLANTS[rule](yolo)
    report = validate(yolo, settings=settings)
    fired = {name for name, n in report.counts().items() if n}
    assert fired == {rule}, report.as_dict()
    severity = default_rules(settings)[rule].severity
    assert report.passed == (severity != "error")
    data = report.as_dict()
    assert data["rules"][rule]["found"] >= 1 and data["rules"][rule]["findings"][0]["message"]


def test_orphan_label_is_a_label_format_error(yolo, settings):
    (yolo / "images" / "val" / "val_00002.jpg").unlink()
    report = validate(yolo, settings=settings)
    assert [f.file for f in report.findings if f.rule == "label_format"] == [
        "labels/val/val_00002.txt"]


def test_thresholds_and_severities_are_configurable(yolo, settings):
    plant_near_duplicate(yolo)
    plant_no_labels(yolo)
    rules = with_overrides(default_rules(settings), ["near_duplicate=error:0",
                                                     "no_labels=:0.9"])
    report = validate(yolo, rules, settings=settings)
    assert report.counts()["no_labels"] == 0  # 50% empty is within 90%
    assert report.counts()["near_duplicate"] == 0  # no pair is within 0 bits
    rules = with_overrides(rules, "near_duplicate=error:6")
    report = validate(yolo, rules, settings=settings)
    assert report.counts()["near_duplicate"] == 1 and not report.passed
    with pytest.raises(DatasetInvalid) as exc:
        require_valid(yolo, rules, settings=settings)
    assert exc.value.exit_code == 2 and "near_duplicate" in exc.value.message
    env = Settings(runtime_dir=settings.runtime_dir, datasets_rules="exif_rotation=warning",
                   datasets_max_empty_fraction=0.05)
    rules = default_rules(env)
    assert rules["exif_rotation"].severity == "warning" and rules["no_labels"].threshold == 0.05
    with pytest.raises(SourceError, match="severity must be one of"):
        with_overrides(rules, "no_labels=fatal")
    with pytest.raises(SourceError, match="RULE one of"):
        with_overrides(rules, "no_such_rule=off")


def test_plain_images_of_different_colours_are_not_near_duplicates(yolo, settings):
    """Their perceptual hashes are equal (no structure to hash); their thumbnails are not."""
    src = _first_with_boxes(yolo)
    for name, colour in (("olive", (128, 128, 64)), ("beige", (200, 180, 150))):
        Image.new("RGB", (SIZE, SIZE), colour).save(yolo / "images" / "train" / f"{name}.jpg")
        shutil.copy(src, yolo / "labels" / "train" / f"{name}.txt")
    facts = scan.scan([(str(yolo), "train", f"images/train/{n}.jpg", None)
                       for n in ("olive", "beige")])
    assert facts[0].phash == facts[1].phash
    report = validate(yolo, settings=settings)
    assert report.counts()["near_duplicate"] == 0 and report.passed


def test_worker_processes_give_the_same_facts(clean, settings, monkeypatch):
    tasks = [(str(clean), "train", f"images/train/train_{i:05d}.jpg",
              f"labels/train/train_{i:05d}.txt") for i in range(N_TRAIN)]
    inline = scan.scan(tasks, workers=1)
    monkeypatch.setattr(scan, "INLINE_BELOW", 0)
    pooled = scan.scan(tasks, workers=2)
    assert [(f.sha256, f.phash, f.size, f.rows.tolist()) for f in inline] == [
        (f.sha256, f.phash, f.size, f.rows.tolist()) for f in pooled]


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(0, 2**63, 400, dtype=np.int64)]
    for i in range(0, 40, 4):  # plant pairs 0..6 bits apart
        flips = rng.choice(64, i % 7, replace=False)
        hashes.append(hashes[i] ^ sum(1 << int(b) for b in flips))
    hashes.append(None)
    for bits in (0, 3, 6):
        brute = sorted((i, j, (a ^ b).bit_count()) for i, a in enumerate(hashes)
                       for j, b in enumerate(hashes) if i < j and a is not None
                       and b is not None and (a ^ b).bit_count() <= bits)
        assert duplicates.near_pairs(hashes, bits) == brute
        assert brute  # the planted pairs are there


# --- import -----------------------------------------------------------------------------------

def test_coco_import_remaps_classes_drops_crowd_keeps_empty_images(yolo, store, tmp_path):
    write_coco(yolo, tmp_path / "coco")
    result = store.import_(tmp_path / "coco", fmt="coco", name="shapes")
    v = result.version
    assert result.created and result.report.passed
    # classes in category-id order: square 3, circle 7, triangle 11, star 20
    assert v.classes == ["square", "circle", "triangle", "star"]
    assert v.notes["category_ids"] == {"3": 0, "7": 1, "11": 2, "20": 3}
    assert v.notes["crowd_boxes_dropped"] == 1
    for split in ("train", "val"):
        for src in sorted((yolo / "labels" / split).glob("*.txt")):
            want = labels(src)
            got = labels(v.labels_dir(split) / src.name)  # no crowd box on train_00000
            assert len(got) == len(want), src.name
            if len(want):
                remap = np.array([v.classes.index(n) for n in SHAPES])
                assert (got[:, 0] == remap[want[:, 0].astype(int)]).all()
                assert np.allclose(got[:, 1:], want[:, 1:], atol=2e-5)
    empty = sum(1 for p in (yolo / "labels" / "train").glob("*.txt") if not p.stat().st_size)
    assert empty and v.counts["train"]["empty"] == empty
    assert v.counts["train"]["images"] == N_TRAIN and v.counts["val"]["images"] == N_VAL
    # crowd boxes kept on request: another version
    kept = store.import_(tmp_path / "coco", fmt="coco", name="shapes", crowd="keep")
    assert kept.version.version != v.version
    assert kept.version.counts["train"]["boxes"] == v.counts["train"]["boxes"] + 1
    # another class order on request (a model's): the note says where each category went
    ordered = store.import_(tmp_path / "coco", fmt="coco", name="shapes", classes=SHAPES,
                            allow_class_change=True).version
    assert ordered.classes == SHAPES
    assert ordered.notes["category_ids"] == {str(CATEGORY_IDS[n]): SHAPES.index(n)
                                             for n in SHAPES}
    src = next(p for p in sorted((yolo / "labels" / "train").glob("*.txt")) if p.stat().st_size)
    assert (labels(ordered.labels_dir("train") / src.name)[:, 0] == labels(src)[:, 0]).all()


def test_single_coco_file_is_split_by_file_name(yolo, store, tmp_path):
    paths = write_coco(yolo, tmp_path / "coco", crowd=False)
    images = tmp_path / "coco" / "images" / "train"
    first = store.import_(paths["train"], fmt="coco", name="one", images_dir=images,
                          val_fraction=0.25, rules=with_overrides(
                              default_rules(store.settings), "class_missing_from_val=warning"))
    again = store.import_(paths["train"], fmt="coco", name="one", images_dir=images,
                          val_fraction=0.25, rules=with_overrides(
                              default_rules(store.settings), "class_missing_from_val=warning"))
    counts = first.version.counts
    assert counts["train"]["images"] + counts["val"]["images"] == N_TRAIN
    assert 0 < counts["val"]["images"] < N_TRAIN // 2
    assert again.version.version == first.version.version and not again.created


def test_same_content_same_version_and_immutable(yolo, store):
    first = store.import_(yolo, fmt="yolo", name="shapes")
    again = store.import_(yolo, fmt="yolo", name="shapes")
    assert first.created and not again.created
    assert again.version.version == first.version.version == first.version.hash[:12]
    assert [v.version for v in store.list("shapes")] == [first.version.version]
    v = store.get("shapes")
    assert v.classes == SHAPES and store.resolve(f"shapes@{v.version[:6]}") == v
    assert (v.path / "manifest.json").is_file() and (v.path / "validation.json").is_file()
    assert "# shapes@" in v.data_yaml.read_text()
    image = next(v.images_dir("train").iterdir())
    assert not os.stat(image).st_mode & 0o222 and not os.stat(v.path).st_mode & 0o222
    assert image.read_bytes() == (yolo / "images" / "train" / image.name).read_bytes()
    store.verify(v)
    checked, report = store.validated(f"shapes@{v.version}")  # the gate training will call
    assert checked == v and report.passed
    # a changed label file is found (root ignores the read-only bits; the hash does not)
    label = v.labels_dir("val") / "val_00000.txt"
    os.chmod(v.labels_dir("val"), 0o755)
    os.chmod(label, 0o644)
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetModified, match="val_00000.txt was changed"):
        store.validated("shapes")
    # new content under the same name: a new version beside the old one
    _append(_train_label(yolo, 1), "0 0.5 0.5 0.1 0.1")
    changed = store.import_(yolo, fmt="yolo", name="shapes")
    assert changed.created and changed.version.version != v.version
    assert len(store.list("shapes")) == 2 and store.get("shapes") == changed.version


def test_voc_import(yolo, store, tmp_path):
    import supervision as sv

    voc = tmp_path / "voc"
    for split in ("train", "val"):
        ds = sv.DetectionDataset.from_yolo(str(yolo / "images" / split),
                                           str(yolo / "labels" / split), str(yolo / "data.yaml"))
        (voc / split).mkdir(parents=True)
        ds.as_pascal_voc(str(voc / split), str(voc / split))
    result = store.import_(voc, fmt="voc", name="voc", classes=SHAPES)
    v = result.version
    assert v.classes == SHAPES and result.report.passed
    src = _first_with_boxes(yolo, "val")
    got, want = labels(v.labels_dir("val") / src.name), labels(src)
    assert (got[:, 0] == want[:, 0]).all() and np.allclose(got[:, 1:], want[:, 1:], atol=1e-4)
    by_name = store.import_(voc, fmt="voc", name="voc-sorted")
    assert by_name.version.classes == sorted(SHAPES)  # VOC names no order: sorted


def test_data_synth_makes_a_version_of_the_generator(store):
    from control_plane.datasets.synthetic import import_synthetic

    result = import_synthetic(store, n_train=12, n_val=8, imgsz=96, seed=5)
    again = import_synthetic(store, n_train=12, n_val=8, imgsz=96, seed=5)
    assert result.version.name == synthetic_data.dataset_name(5) == "synthetic-shapes-v1-seed5"
    assert again.version.version == result.version.version and not again.created
    assert result.version.source["uri"].startswith("synthetic:synthetic-shapes-v1?seed=5")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # scratch removed


# --- bad input: a clear error, nothing half-written ---------------------------------------

def test_missing_path(store, tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        store.import_(tmp_path / "nope", fmt="coco", name="x")
    assert leftovers(store) == []


@pytest.mark.parametrize("content,match", [
    ("{not json", "not JSON"),
    ('{"images": []}', "annotations: missing or not a list"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                 "annotations": [{"image_id": 1, "category_id": 1, "bbox": "0 0 5 5"}],
                 "categories": [{"id": 1, "name": "a"}]}),
     r"annotations\[0\].bbox"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                 "annotations": [{"image_id": 2, "category_id": 5, "bbox": [0, 0, 5, 5]}],
                 "categories": [{"id": 1, "name": "a"}]}),
     r"image_id: 2 is not an image.*category_id: 5 is not a category"),
])
def test_coco_with_the_wrong_schema(store, tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SourceError, match=match):
        store.import_(path, fmt="coco", name="bad")
    assert leftovers(store) == []


def test_coco_naming_missing_images(yolo, store, tmp_path):
    paths = write_coco(yolo, tmp_path / "coco")
    (tmp_path / "coco" / "images" / "val" / "val_00001.jpg").unlink()
    with pytest.raises(SourceError, match="1 images are not in .*val_00001.jpg"):
        store.import_(tmp_path / "coco", fmt="coco", name="c")
    assert leftovers(store) == [] and paths


def test_yolo_labels_referencing_missing_images(yolo, store):
    (yolo / "images" / "train" / "train_00002.jpg").unlink()
    with pytest.raises(SourceError, match="1 train label files have no image: "
                                          "labels/train/train_00002.txt"):
        store.import_(yolo, fmt="yolo", name="y")
    assert leftovers(store) == []


def test_images_that_do_not_decode(yolo, store, tmp_path):
    # With ultralytics imported (as in the control plane), PIL.Image.open is its wrapper that
    # tries to pip-install a HEIF plugin on an unidentified image: decoding must not go there.
    import ultralytics  # noqa: F401

    # COCO sizes come from the JSON: the truncated image reaches validation, which refuses it
    write_coco(yolo, tmp_path / "coco")
    plant_unreadable_image(tmp_path / "coco")
    with pytest.raises(DatasetInvalid, match="unreadable_image") as exc:
        store.import_(tmp_path / "coco", fmt="coco", name="c")
    finding = exc.value.details["report"]["rules"]["unreadable_image"]["findings"][0]
    assert finding["file"] == "images/train/train_00003.jpg"
    assert "truncated" in finding["message"]
    # YOLO boxes need the image's size: a file that is not an image is refused when read
    (yolo / "images" / "train" / "train_00001.jpg").write_bytes(b"not an image at all")
    with pytest.raises(SourceError, match="train_00001.jpg"):
        store.import_(yolo, fmt="yolo", name="y")
    assert leftovers(store) == []


def test_a_dataset_that_fails_validation_is_not_imported(yolo, store):
    plant_split_leakage(yolo)
    with pytest.raises(DatasetInvalid, match=r"split_leakage \(1\)"):
        store.import_(yolo, fmt="yolo", name="leaky")
    assert leftovers(store) == []
    # A refused import's report also says what the import would have clipped.
    leaky_outside = yolo.parent / "leaky-outside"
    shutil.copytree(yolo, leaky_outside)
    plant_box_outside_image(leaky_outside)
    with pytest.raises(DatasetInvalid, match="split_leakage") as refused:
        store.import_(leaky_outside, fmt="yolo", name="leaky")
    assert refused.value.details["report"]["import_notes"] == {"boxes_clipped": 1}
    from control_plane.datasets.commands import print_report

    out = Console(record=True, width=200)
    print_report(refused.value.details["report"], out)
    assert "the import also: boxes clipped 1" in out.export_text()
    # out-of-image boxes: clipped by default, refused when the rule is an error
    yolo2 = yolo.parent / "outside"
    shutil.copytree(yolo, yolo2)
    (yolo2 / "images" / "val" / "leak.jpg").unlink()
    (yolo2 / "labels" / "val" / "leak.txt").unlink()
    plant_box_outside_image(yolo2)
    refuse = with_overrides(default_rules(store.settings), "box_outside_image=error")
    with pytest.raises(DatasetInvalid, match="box_outside_image"):
        store.import_(yolo2, fmt="yolo", name="outside", rules=refuse)
    assert leftovers(store) == []
    clipped = store.import_(yolo2, fmt="yolo", name="outside").version
    assert clipped.notes["boxes_clipped"] == 1
    last = labels(clipped.labels_dir("train") / "train_00008.txt")[-1]
    assert last[1] + last[3] / 2 == pytest.approx(1.0, abs=1e-5)


def test_staging_left_by_a_killed_import_is_removed(yolo, store):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = store.root / "y" / f".staging-{gone}-abc"
    (stale / "images").mkdir(parents=True)
    mine = store.root / "y" / f".staging-{os.getpid()}-live"  # a running import's: kept
    mine.mkdir()
    store.import_(yolo, fmt="yolo", name="y")
    assert not stale.exists() and mine.exists()


def test_class_set_mismatch(yolo, store, tmp_path):
    paths = write_coco(yolo, tmp_path / "coco")
    val = json.loads(paths["val"].read_text())
    val["categories"][0]["name"] = "hexagon"
    paths["val"].write_text(json.dumps(val))
    with pytest.raises(ClassMismatch, match="categories differ"):
        store.import_(tmp_path / "coco", fmt="coco", name="c")
    with pytest.raises(ClassMismatch, match=r"\['star'\] that are not in"):
        store.import_(yolo, fmt="yolo", name="y", classes=["circle", "square", "triangle"])
    store.import_(yolo, fmt="yolo", name="y")
    (yolo / "data.yaml").write_text((yolo / "data.yaml").read_text().replace("star", "hexagon"))
    with pytest.raises(ClassMismatch, match="--new-classes"):
        store.import_(yolo, fmt="yolo", name="y")
    assert len(store.list("y")) == 1
    assert store.import_(yolo, fmt="yolo", name="y", allow_class_change=True).created


def test_disk_filling_during_import_leaves_nothing(yolo, store, monkeypatch):
    """The copy function fails with ENOSPC after a few images (injected: the same error a full
    disk gives; test_disk_full_on_a_real_tmpfs fills a real one where it can be mounted)."""
    real, copied = store_module._copy_image, []

    def filling(src, dst):
        if len(copied) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(dst)
        return real(src, dst)

    monkeypatch.setattr(store_module, "_copy_image", filling)
    with pytest.raises(DiskFull, match="filled while importing"):
        store.import_(yolo, fmt="yolo", name="full")
    assert copied and leftovers(store) == []


def _fill(path: Path, leave: int = 0) -> None:
    """Write `path` until the disk has at most `leave` bytes free."""
    with open(path, "ab") as f:
        try:
            while shutil.disk_usage(path.parent).free > leave:
                f.write(b"\0" * min(65536, max(4096, shutil.disk_usage(path.parent).free - leave)))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_on_a_real_tmpfs(yolo, tmp_path, monkeypatch):
    """A real small disk (tmpfs, where it can be mounted): refused before writing when it has
    too little room, and cleaned up when another writer fills it during the copy."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        store = DatasetStore(Settings(runtime_dir=tmp_path / "rt",
                                      datasets_dir_override=str(mount / "datasets")),
                             log_to_mlflow=False)
        filler = mount / "filler"
        _fill(filler, leave=64 << 10)
        with pytest.raises(DiskFull, match="needs about .* MiB free; nothing was written"):
            store.import_(yolo, fmt="yolo", name="full")
        assert leftovers(store) == []
        filler.unlink()
        real, copied = store_module._copy_image, []

        def another_writer_fills_the_disk(src, dst):
            if len(copied) == 3:
                _fill(filler)
            copied.append(dst)
            return real(src, dst)

        monkeypatch.setattr(store_module, "_copy_image", another_writer_fills_the_disk)
        with pytest.raises(DiskFull, match="filled while importing"):
            store.import_(yolo, fmt="yolo", name="full")
        assert len(copied) > 3 and leftovers(store) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- MLflow and the CLI -------------------------------------------------------------------

def run_cli(*args: str, runtime: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VG_RUNTIME_DIR": str(runtime)}
    return subprocess.run([sys.executable, "-m", "control_plane", "data", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_import_logs_to_mlflow_and_validate_fails_with_exit_2(yolo, tmp_path):
    runtime = tmp_path / "runtime"
    write_coco(yolo, tmp_path / "coco")
    done = run_cli("import", str(tmp_path / "coco"), "--format", "coco", "--name", "shapes",
                   runtime=runtime)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported" in done.stdout and "crowd_boxes_dropped 1" in done.stdout
    settings = Settings(runtime_dir=runtime)
    v = DatasetStore(settings).get("shapes")

    from control_plane.datasets.lineage import EXPERIMENT, mlflow_inputs
    from control_plane.mlflow_store import mlflow_client, store_for

    client = mlflow_client(store_for(settings))
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["dataset_version"] == v.version
    logged = {(d.dataset.name, d.dataset.digest) for d in runs[0].inputs.dataset_inputs}
    assert ("shapes", v.hash[:36]) in logged
    assert ("shapes/val", v.split_hashes["val"][:36]) in logged
    train_inputs = mlflow_inputs(v)
    assert [(i.dataset.name, i.tags[0].value) for i in train_inputs] == [
        ("shapes", "training"), ("shapes/val", "evaluation")]

    again = run_cli("import", str(tmp_path / "coco"), "--format", "coco", "--name", "shapes",
                    runtime=runtime)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert f"run {runs[0].info.run_id}" in again.stdout  # found, not logged twice

    from typer.testing import CliRunner

    from control_plane.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["data", "list"], obj=settings)
    assert listed.exit_code == 0 and v.ref in listed.stdout
    shown = runner.invoke(app, ["data", "show", "shapes", "--json"], obj=settings)
    assert json.loads(shown.stdout)["hash"] == v.hash
    ok = runner.invoke(app, ["data", "validate", f"shapes@{v.version}"], obj=settings)
    assert ok.exit_code == 0 and "passed" in ok.stdout
    plant_split_leakage(yolo)
    plant_degenerate_box(yolo)
    report = tmp_path / "report.json"
    bad = run_cli("validate", str(yolo), "--report", str(report), runtime=runtime)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "FAILED" in bad.stdout and "split_leakage" in bad.stdout
    assert "error:" in bad.stderr
    data = json.loads(report.read_text())
    assert not data["passed"] and data["rules"]["degenerate_box"]["found"] == 1
    refused = run_cli("import", str(yolo), "--format", "yolo", "--name", "leaky",
                      runtime=runtime)
    assert refused.returncode == 2 and "not imported" in refused.stderr
    missing = run_cli("import", str(tmp_path / "nope"), "--format", "yolo", "--name", "x",
                      runtime=runtime)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert sorted(p.name for p in (runtime / "datasets").iterdir()) == ["shapes"]
