"""The validation rules: one name each, a severity and, where it has one, a threshold.

Severities: `error` fails the dataset (the import is refused, training and registration refuse
it, `visionguard data validate` exits non-zero), `warning` and `info` are reported, `off` skips
the rule. Defaults come from the settings (`VG_DATASETS_*`); `VG_DATASETS_RULES` and the
commands' `--rule` change any of them: `rule=severity`, `rule=severity:threshold` or
`rule=:threshold`.

The import applies two of them to what it writes: a box reaching outside its image is clipped
unless `box_outside_image` is an error (then refused), and a box of no size is dropped unless
`degenerate_box` is an error (then refused); the manifest counts what it clipped and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from control_plane.settings import Settings

SEVERITIES = ("error", "warning", "info", "off")
RULE_NAMES = ("unreadable_image", "exif_rotation", "label_format", "unknown_class",
              "degenerate_box", "box_outside_image", "no_labels", "exact_duplicate",
              "near_duplicate", "split_leakage", "class_imbalance", "class_missing_from_val",
              "box_size_outlier")


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    threshold: float | None
    what: str  # what it finds, and what the threshold means

    def as_dict(self) -> dict:
        return {"severity": self.severity, "threshold": self.threshold, "what": self.what}


def default_rules(settings: Settings | None = None) -> dict[str, Rule]:
    from control_plane.datasets.errors import SourceError

    s = settings or Settings()
    if s.datasets_out_of_image not in ("clip", "refuse"):
        raise SourceError(f"VG_DATASETS_OUT_OF_IMAGE is {s.datasets_out_of_image!r}: clip or "
                          "refuse")
    outside = "error" if s.datasets_out_of_image == "refuse" else "warning"
    rules = [
        Rule("unreadable_image", "error", None,
             "an image that does not decode (not an image, truncated, corrupt)"),
        Rule("exif_rotation", "error", None,
             "EXIF orientation 5-8: loaders turn the image a quarter turn, so it is not the "
             "size the file says and its boxes may be drawn on the other orientation"),
        Rule("label_format", "error", None,
             "a label line that is not `class cx cy w h`, or a label file with no image"),
        Rule("unknown_class", "error", None, "a class id outside data.yaml's names"),
        Rule("degenerate_box", "error", s.datasets_min_box_px,
             "a box whose width or height is at most this many pixels (zero or negative)"),
        Rule("box_outside_image", outside, s.datasets_box_tolerance,
             "a box reaching outside its image by more than this fraction of the image"),
        Rule("no_labels", "error", s.datasets_max_empty_fraction,
             "images without a box are counted; error above this fraction of a split"),
        Rule("exact_duplicate", "warning", None, "byte-identical images within one split"),
        Rule("near_duplicate", "warning", float(s.datasets_near_duplicate_bits),
             "images within one split whose 64-bit perceptual hashes differ in at most this "
             "many bits (and whose thumbnails agree: duplicates.py)"),
        Rule("split_leakage", "error", float(s.datasets_near_duplicate_bits),
             "a val image that is an exact or near duplicate (this many bits) of a train image"),
        Rule("class_imbalance", "warning", s.datasets_imbalance_ratio,
             "train boxes of the most frequent class over the least frequent above this ratio"),
        Rule("class_missing_from_val", "error", float(s.datasets_min_val_boxes),
             "a class with fewer than this many boxes in val (it cannot be evaluated)"),
        Rule("box_size_outlier", "warning", s.datasets_box_outlier_z,
             "a box whose log size or log aspect ratio is more than this many robust standard "
             "deviations (1.4826 MAD, at least 0.25) from its class's median (classes with 20+ "
             "boxes)"),
    ]
    out = {r.name: r for r in rules}
    assert tuple(out) == RULE_NAMES
    return with_overrides(out, s.datasets_rules) if s.datasets_rules else out




def with_overrides(rules: Mapping[str, Rule], overrides: str | Iterable[str]) -> dict[str, Rule]:
    """`rules` with `rule=severity[:threshold]` items applied (a string is comma-separated)."""
    from control_plane.datasets.errors import SourceError

    items = overrides.split(",") if isinstance(overrides, str) else list(overrides)
    out = dict(rules)
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in out:
            raise SourceError(f"rule override {item!r}: expected RULE=SEVERITY[:THRESHOLD] "
                              f"with RULE one of {', '.join(out)}")
        severity, _, threshold = value.strip().partition(":")
        rule = out[name]
        if severity:
            if severity not in SEVERITIES:
                raise SourceError(f"rule override {item!r}: severity must be one of "
                                  f"{', '.join(SEVERITIES)}")
            rule = replace(rule, severity=severity)
        if threshold:
            if rule.threshold is None:
                raise SourceError(f"rule override {item!r}: {name} has no threshold")
            try:
                rule = replace(rule, threshold=float(threshold))
            except ValueError:
                raise SourceError(f"rule override {item!r}: threshold is not a number") from None
        out[name] = rule
    return out
