"""Validation: the rules of `rules.py` over a dataset in YOLO layout, as a report.

`validate(root)` reads `root/data.yaml` (a stored version, or any Ultralytics dataset folder),
scans every image and label once (`scan.py`, in worker processes), then applies the rules per
image, per box (vectorised), to duplicates (`duplicates.py`), to class counts and to box-size
statistics. The report lists every finding with its rule and severity,
counts per rule, and the per-split statistics; it passes when no rule of severity `error` found
anything. `require_valid` is the gate training and registration call: it raises
`DatasetInvalid` (exit status 2) with the report's summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from control_plane.datasets import duplicates
from control_plane.datasets.errors import DatasetInvalid, SourceError
from control_plane.datasets.layout import DATA_YAML, SPLITS, is_image, yolo_splits
from control_plane.datasets.rules import Rule, default_rules
from control_plane.datasets.scan import (ImageFacts, ProgressCallback, QUARTER_TURNS, pillow_open,
                                        scan)
from control_plane.settings import Settings

log = logging.getLogger("visionguard.datasets")
MIN_OUTLIER_BOXES = 20  # a class needs this many boxes for its size statistics
OUTLIER_SCALE_FLOOR = 0.25  # in log units: a class of one shape still tolerates a factor e^1.5
EXAMPLES = 50  # findings per rule in the JSON report (the counts are complete)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    message: str
    split: str | None = None
    file: str | None = None  # relative to the dataset's root
    other: str | None = None  # the other image of a duplicate pair


@dataclass
class Report:
    target: str  # NAME@VERSION or the folder
    classes: list[str]
    rules: dict[str, Rule]
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)  # split -> images, boxes, empty, ...
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, int]:
        found = Counter(f.rule for f in self.findings)
        return {name: found.get(name, 0) for name in self.rules}

    def summary(self) -> str:
        failing = [f"{rule} ({n})" for rule, n in self.counts().items()
                   if n and self.rules[rule].severity == "error"]
        verdict = "passed" if self.passed else "FAILED: " + ", ".join(failing)
        images = sum(s["images"] for s in self.stats.values())
        return (f"{self.target}: {images} images, {len(self.errors)} errors, "
                f"{len(self.warnings)} warnings: {verdict}")

    def as_dict(self, examples: int = EXAMPLES) -> dict:
        by_rule: dict[str, list[dict]] = defaultdict(list)
        for f in self.findings:
            if len(by_rule[f.rule]) < examples:
                by_rule[f.rule].append({k: v for k, v in asdict(f).items()
                                        if v is not None and k != "rule"})
        counts = self.counts()
        return {
            "target": self.target, "passed": self.passed, "summary": self.summary(),
            "errors": len(self.errors), "warnings": len(self.warnings),
            "classes": self.classes, "stats": self.stats, "seconds": round(self.seconds, 2),
            "rules": {name: {**rule.as_dict(), "found": counts[name],
                             "findings": by_rule.get(name, [])}
                      for name, rule in self.rules.items()},
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")


def validate(root: str | Path, rules: Mapping[str, Rule] | None = None, *,
             target: str | None = None, settings: Settings | None = None,
             progress: ProgressCallback | None = None) -> Report:
    """Apply `rules` (default: the settings' rules) to the dataset whose data.yaml is in `root`."""
    t0 = time.monotonic()
    settings = settings or Settings()
    rules = dict(rules or default_rules(settings))
    root = Path(root).resolve()
    if not (root / DATA_YAML).is_file():
        raise SourceError(f"{root} has no {DATA_YAML}: not a dataset folder")
    classes, splits = yolo_splits(root / DATA_YAML)
    report = Report(target or str(root), classes, rules)
    check = _Checker(report)

    tasks, orphans = [], []
    for split in SPLITS:
        for images_dir, labels_dir in splits.get(split, []):
            images = sorted(p for p in images_dir.iterdir() if p.is_file() and is_image(p))
            stems = {p.stem for p in images}
            for p in images:
                label = labels_dir / f"{p.stem}.txt"
                tasks.append((str(root), split, os.path.relpath(p, root),
                              os.path.relpath(label, root) if label.is_file() else None))
            if labels_dir.is_dir():
                orphans += [(split, os.path.relpath(p, root)) for p in sorted(
                    labels_dir.glob("*.txt")) if p.stem not in stems]
    with pillow_open():  # in-process scans too (the pool's workers never import ultralytics)
        facts = scan(tasks, workers=settings.datasets_workers, progress=progress)
    for split, rel in orphans:
        check("label_format", f"label file without an image ({Path(rel).stem}.*)", split, rel)
    _per_image(check, facts)
    _per_box(check, facts, len(classes), report)
    _duplicates(check, facts, rules)
    _classes(check, report, classes)
    report.seconds = time.monotonic() - t0
    log.info("dataset validation %s", report.summary(), extra={
        "event": "dataset_validated", "target": report.target, "passed": report.passed,
        "errors": len(report.errors), "warnings": len(report.warnings),
        "seconds": round(report.seconds, 2)})
    return report


def require_valid(root: str | Path, rules: Mapping[str, Rule] | None = None, *,
                  target: str | None = None, settings: Settings | None = None,
                  progress: ProgressCallback | None = None) -> Report:
    """`validate`, raising `DatasetInvalid` (exit status 2) when a rule of severity error fired."""
    report = validate(root, rules, target=target, settings=settings, progress=progress)
    if not report.passed:
        raise DatasetInvalid(f"dataset {report.summary()}", report=report.as_dict(examples=10))
    return report


class _Checker:
    """Adds a finding at its rule's severity, unless the rule is off."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def on(self, rule: str) -> bool:
        return self.report.rules[rule].severity != "off"

    def threshold(self, rule: str) -> float:
        return float(self.report.rules[rule].threshold)

    def __call__(self, rule: str, message: str, split: str | None = None,
                 file: str | None = None, other: str | None = None) -> None:
        severity = self.report.rules[rule].severity
        if severity != "off":
            self.report.findings.append(Finding(rule, severity, message, split, file, other))


def _per_image(check: _Checker, facts: list[ImageFacts]) -> None:
    for f in facts:
        if f.error:
            check("unreadable_image", f.error, f.split, f.image)
        elif f.orientation in QUARTER_TURNS:
            w, h = f.file_size
            check("exif_rotation", f"EXIF orientation {f.orientation}: the file is {w}x{h}, "
                  f"loaders see {h}x{w}", f.split, f.image)
        for message in f.label_errors:
            check("label_format", message, f.split, f.label)


def _per_box(check: _Checker, facts: list[ImageFacts], nc: int, report: Report) -> None:
    stats = {s: {"images": 0, "boxes": 0, "empty": 0, "per_class": [0] * nc}
             for s in {f.split for f in facts} | {"train"}}
    min_px = check.threshold("degenerate_box")
    tol = check.threshold("box_outside_image")
    # class -> (log size, log aspect) of its boxes, and the images they are in
    sizes: dict[int, list[tuple[float, float]]] = defaultdict(list)
    where: dict[int, list[ImageFacts]] = defaultdict(list)
    for f in facts:
        s = stats[f.split]
        s["images"] += 1
        rows = f.rows
        if len(rows) == 0:
            s["empty"] += 1
            continue
        cls = rows[:, 0].astype(int)
        cx, cy, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        sized = f.size != (0, 0)  # else the header did not parse: normalised checks only
        width, height = f.size if sized else (1, 1)
        known = (cls >= 0) & (cls < nc)
        for c in cls[~known]:
            check("unknown_class", f"class {c} is not one of the {nc} names in data.yaml",
                  f.split, f.label)
        small = ((w * width <= min_px) | (h * height <= min_px)) if sized else (w <= 0) | (h <= 0)
        for i in np.flatnonzero(small):
            check("degenerate_box", f"box {i + 1} is {w[i] * width:.2f} x {h[i] * height:.2f} "
                  f"px (at most {min_px:g})", f.split, f.label)
        outside = ((cx - w / 2 < -tol) | (cy - h / 2 < -tol) | (cx + w / 2 > 1 + tol)
                   | (cy + h / 2 > 1 + tol))
        for i in np.flatnonzero(outside):
            check("box_outside_image", f"box {i + 1} spans x {cx[i] - w[i] / 2:.3f}.."
                  f"{cx[i] + w[i] / 2:.3f}, y {cy[i] - h[i] / 2:.3f}..{cy[i] + h[i] / 2:.3f} "
                  f"of the image (0..1)", f.split, f.label)
        s["boxes"] += int(len(rows))
        for c in cls[known]:
            s["per_class"][c] += 1
        if f.error is None:
            good = known & ~small
            for c, bw, bh in zip(cls[good], w[good] * width, h[good] * height):
                sizes[int(c)].append((0.5 * np.log(bw * bh / (width * height)),
                                      np.log(bw / bh)))
                where[int(c)].append(f)
    report.stats = {s: stats[s] for s in SPLITS if s in stats}
    limit = check.threshold("no_labels")
    for split, s in report.stats.items():
        if s["images"] and s["empty"] / s["images"] > limit:
            check("no_labels", f"{s['empty']} of {s['images']} {split} images have no box "
                  f"({s['empty'] / s['images']:.0%}, limit {limit:.0%})", split)
    if check.on("box_size_outlier"):
        _outliers(check, sizes, where, report.classes)


def _outliers(check: _Checker, sizes, where, classes: list[str]) -> None:
    z_max = check.threshold("box_size_outlier")
    for c, values in sizes.items():
        if len(values) < MIN_OUTLIER_BOXES:
            continue
        v = np.array(values)
        med = np.median(v, axis=0)
        scale = np.maximum(1.4826 * np.median(np.abs(v - med), axis=0), OUTLIER_SCALE_FLOOR)
        z = np.abs(v - med) / scale
        for i in np.flatnonzero(z.max(axis=1) > z_max):
            what = "size" if z[i, 0] >= z[i, 1] else "aspect ratio"
            f = where[c][i]
            check("box_size_outlier", f"a {classes[c]} box's {what} is {z[i].max():.1f} robust "
                  f"deviations from the class's median (size {np.exp(v[i, 0]):.3f} of the "
                  f"image, aspect {np.exp(v[i, 1]):.2f})", f.split, f.label)


def _duplicates(check: _Checker, facts: list[ImageFacts], rules: Mapping[str, Rule]) -> None:
    def pair(i: int, j: int, how: str) -> None:
        a, b = facts[i], facts[j]
        if a.split != b.split:
            train, val = (a, b) if a.split == "train" else (b, a)
            check("split_leakage", f"{val.split} image is {how} of a {train.split} image",
                  val.split, val.image, train.image)
        else:
            rule = "exact_duplicate" if how == "a copy" else "near_duplicate"
            check(rule, f"{how} of another {a.split} image", b.split, b.image, a.image)

    exact = set()
    if check.on("exact_duplicate") or check.on("split_leakage"):
        for group in duplicates.exact_groups([f.sha256 for f in facts]):
            for j in group[1:]:
                pair(group[0], j, "a copy")
            exact.update((i, j) for i in group for j in group if i < j)
    near_bits = check.threshold("near_duplicate") if check.on("near_duplicate") else -1
    leak_bits = check.threshold("split_leakage") if check.on("split_leakage") else -1
    bits = int(max(near_bits, leak_bits))
    candidates = duplicates.near_pairs([f.phash for f in facts], bits)
    for i, j, d in duplicates.confirmed(candidates, [f.thumb for f in facts]):
        if (i, j) in exact:
            continue
        same = facts[i].split == facts[j].split
        if d <= (near_bits if same else leak_bits):
            pair(i, j, f"a near duplicate ({d} of 64 hash bits differ)")


def _classes(check: _Checker, report: Report, classes: list[str]) -> None:
    train = report.stats.get("train", {}).get("per_class", [])
    if check.on("class_imbalance") and len(classes) > 1 and train:
        ratio = check.threshold("class_imbalance")
        lo, hi = min(train), max(train)
        if hi and (lo == 0 or hi / lo > ratio):
            counts = ", ".join(f"{n} {c}" for c, n in zip(classes, train))
            check("class_imbalance", f"train boxes per class: {counts} (most/least "
                  f"{'inf' if lo == 0 else f'{hi / lo:.1f}'}, limit {ratio:g})", "train")
    if check.on("class_missing_from_val"):
        need = check.threshold("class_missing_from_val")
        val = report.stats.get("val")
        if val is None or val["images"] == 0:
            check("class_missing_from_val", "the dataset has no val images", "val")
            return
        for c, n in zip(classes, val["per_class"]):
            if n < need:
                check("class_missing_from_val", f"class {c} has {n} val boxes (at least "
                      f"{need:g} needed to evaluate it)", "val")
