"""The release report of a model version: collected (`collect.py`), drawn (`detections.py`,
`charts.py`), rendered to one self-contained HTML page with Jinja2 (`templates/report.html.j2`,
every picture a data URI) and to PDF with WeasyPrint, written atomically and attached to the
version's MLflow run as `report/report.html` and `report/report.pdf`.

WeasyPrint fetches nothing: its URL fetcher allows no protocol but `data:`, so a tag's text can
never make the renderer read a file or the network (Jinja2 escapes it in the first place).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from control_plane.reports.charts import robustness_chart
from control_plane.reports.collect import (Collector, DatasetFacts, ReleaseFacts, ReportError,
                                           VersionFacts)
from control_plane.reports.detections import Samples, detect_samples
from control_plane.settings import Settings
from control_plane.training.train import METRIC_MAP, METRIC_MAP50

log = logging.getLogger("visionguard.reports")
TEMPLATES = Path(__file__).parent / "templates"
FORMATS = {".html": "html", ".pdf": "pdf"}
MEDIA_TYPES = {"html": "text/html; charset=utf-8", "pdf": "application/pdf"}
ARTIFACT_DIR = "report"  # report/report.html and report/report.pdf in the version's run


@dataclass
class Report:
    model: str
    version: str
    run_id: str
    html: str
    pdf: bytes | None = None

    def content(self, fmt: str) -> bytes:
        if fmt == "pdf":
            if self.pdf is None:
                self.pdf = html_to_pdf(self.html)
            return self.pdf
        return self.html.encode()


# --- formats and files ----------------------------------------------------------------------------

def output_format(out: Path | str) -> str:
    """`html` or `pdf`, from the output path's suffix; anything else is refused."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        what = suffix or "a name without a suffix"
        raise ReportError(f"the report is written as .html or .pdf, not {what} ({out})",
                          out=str(out))
    return FORMATS[suffix]


def atomic_write(path: Path, data: bytes) -> None:
    """`data` at `path` through a temporary file in the same folder and one rename: a reader
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the page -------------------------------------------------------------------------------------

def data_uri(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(image).decode()


def _num(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _signed(value, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}"


def _class_count(per_class, class_id, name) -> int | None:
    """A class's box count from a split's counts: a list by class id (a stored version's
    manifest) or a mapping by name or id."""
    if isinstance(per_class, list):
        ok = isinstance(class_id, int) and 0 <= class_id < len(per_class)
        return per_class[class_id] if ok else None
    if isinstance(per_class, dict):
        return per_class.get(str(name), per_class.get(str(class_id)))
    return None


def _ratio_class(ratio) -> str:
    """A robustness ratio's colour: kept (>= 0.9), dented (>= 0.7), lost."""
    if not isinstance(ratio, (int, float)):
        return ""
    return "good" if ratio >= 0.9 else "fair" if ratio >= 0.7 else "poor"


def _get(d: dict | None, *keys):
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def _metric_rows(model: VersionFacts, champion: VersionFacts | None) -> list[dict]:
    """This version beside the champion: the registered metrics, the evaluation's, robustness
    and the latency promotion measured. `better` says which way a delta is good."""
    specs = [
        ("mAP50-95 (registered)", lambda v: v.metric(METRIC_MAP), "higher", 3),
        ("mAP50 (registered)", lambda v: v.metric(METRIC_MAP50), "higher", 3),
        ("mAP50-95, Ultralytics", lambda v: _get(v.evaluation, "ultralytics", "mAP50-95"),
         "higher", 3),
        ("mAP50-95, COCO evaluator", lambda v: _get(v.evaluation, "coco", "mAP50-95"),
         "higher", 3),
        ("mAP50, COCO evaluator", lambda v: _get(v.evaluation, "coco", "mAP50"), "higher", 3),
        ("robustness: mean ratio to clean", lambda v: _get(v.robustness, "mean_ratio"),
         "higher", 3),
        ("latency p50 (ms)", lambda v: v.metric("latency_p50_ms"), "lower", 1),
        ("latency p95 (ms)", lambda v: v.metric("latency_p95_ms"), "lower", 1),
        ("throughput (inferences/s)", lambda v: v.metric("throughput_infer_per_s"), "higher", 1),
    ]
    rows = []
    for label, read, better, digits in specs:
        a, b = read(model), read(champion) if champion else None
        if a is None and b is None:
            continue
        delta = None if a is None or b is None else a - b
        good = None if delta is None or abs(delta) < 10 ** -digits else (
            (delta > 0) == (better == "higher"))
        rows.append({"label": label, "value": _num(a, digits), "champion": _num(b, digits),
                     "delta": _signed(delta, digits),
                     "tone": "" if good is None else "good" if good else "poor"})
    return rows


def _per_class(model: VersionFacts, champion: VersionFacts | None,
               dataset: DatasetFacts | None) -> list[dict]:
    rows = (model.evaluation or {}).get("per_class") or []
    theirs = {}
    if champion and champion.evaluation and \
            champion.evaluation.get("dataset") == (model.evaluation or {}).get("dataset"):
        theirs = {r.get("class_id"): r for r in champion.evaluation.get("per_class") or []
                  if isinstance(r, dict)}
    train_boxes = (dataset.counts.get("train") or {}).get("per_class") if dataset else None
    out = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        cid = r.get("class_id")
        other = _get(theirs.get(cid), "ap50_95")
        mine = _get(r, "ap50_95")
        boxes = _class_count(train_boxes, cid, r.get("name"))
        out.append({"class_id": cid, "name": r.get("name", cid),
                    "instances": r.get("instances", "–"),
                    "train_boxes": "–" if boxes is None else boxes,
                    "ap50": _num(_get(r, "ap50")), "ap50_95": _num(mine),
                    "champion": _num(other),
                    "delta": _signed(None if mine is None or other is None else mine - other),
                    "bar": max(0.0, min(1.0, mine or 0.0)) * 100})
    return out


def _robustness(robustness: dict | None) -> dict | None:
    if not robustness:
        return None
    results = [r for r in robustness.get("results") or [] if isinstance(r, dict)]
    severities = sorted({r.get("severity") for r in results
                         if isinstance(r.get("severity"), int)})
    table: dict[str, dict] = {}
    for r in results:
        cells = table.setdefault(str(r.get("corruption", "?")), {})
        cells[r.get("severity")] = {"map": _num(_get(r, "mAP50-95")),
                                    "ratio": _num(_get(r, "ratio"), 2),
                                    "tone": _ratio_class(_get(r, "ratio"))}
    rows = []
    for name in sorted(table):
        ratios = [_get(r, "ratio") for r in results if str(r.get("corruption")) == name]
        ratios = [x for x in ratios if x is not None]
        worst = min(ratios) if ratios else None
        rows.append({"corruption": name, "cells": [table[name].get(s) for s in severities],
                     "worst": _num(worst, 2), "tone": _ratio_class(worst)})
    mean = _get(robustness, "mean_ratio")
    return {"severities": severities, "rows": rows, "mean": _num(mean, 2),
            "mean_tone": _ratio_class(mean), "clean": _num(_get(robustness, "clean_mAP50-95")),
            "dataset": robustness.get("dataset", "–"), "imgsz": robustness.get("imgsz", "–")}


def _validation(dataset: DatasetFacts | None) -> dict | None:
    if dataset is None or not dataset.validation:
        return None
    v = dataset.validation
    rules = []
    for name, rule in (v.get("rules") or {}).items():
        found = int(rule.get("found") or 0)
        examples = [f.get("message", "") + (f" ({f['file']})" if f.get("file") else "")
                    for f in (rule.get("findings") or [])[:3]]
        rules.append({"name": name, "severity": rule.get("severity", ""),
                      "threshold": "" if rule.get("threshold") is None else
                      f"{rule['threshold']:g}", "found": found, "examples": examples,
                      "what": rule.get("what", ""),
                      "tone": "" if not found else
                      "poor" if rule.get("severity") == "error" else "fair"})
    rules.sort(key=lambda r: (-r["found"], r["name"]))
    return {"passed": bool(v.get("passed")), "summary": v.get("summary", ""),
            "errors": v.get("errors", 0), "warnings": v.get("warnings", 0),
            "found": [r for r in rules if r["found"]],
            "clean": [r for r in rules if not r["found"] and r["severity"] != "off"],
            "off": [r["name"] for r in rules if r["severity"] == "off"]}


def _dataset(dataset: DatasetFacts | None) -> dict | None:
    if dataset is None:
        return None
    splits = []
    for split, c in dataset.counts.items():
        splits.append({"split": split, "images": c.get("images", "–"),
                       "boxes": c.get("boxes", "–"), "empty": c.get("empty", "–")})
    per_class = []
    for i, name in enumerate(dataset.classes):
        row = {"id": i, "name": name}
        for split, c in dataset.counts.items():
            row[split] = _class_count(c.get("per_class"), i, name) or 0
        per_class.append(row)
    v = dataset.version
    return {"label": dataset.label, "found_by": dataset.found_by,
            "hash": v.hash[:16] if v else None, "created": v.created if v else None,
            "format": (v.source or {}).get("format") if v else None,
            "uri": (v.source or {}).get("uri") if v else None,
            "notes": {k: val for k, val in (v.notes if v else {}).items() if val},
            "splits": splits, "split_names": list(dataset.counts), "per_class": per_class,
            "classes": dataset.classes}


def _summary(facts: ReleaseFacts, validation: dict | None, robustness: dict | None) -> list[dict]:
    """The four facts a reader wants before scrolling: accuracy against the champion, the
    data's validation, robustness, the gates."""
    m, c = facts.model, facts.champion
    accuracy = {"title": "mAP50-95", "value": _num(m.map), "tone": "",
                "note": "registered on " + (m.tags.get("eval_dataset") or "its evaluation set")}
    if c is not None and m.map is not None and c.map is not None:
        delta = m.map - c.map
        accuracy["note"] = f"champion v{c.version}: {c.map:.3f} ({delta:+.3f})"
        accuracy["tone"] = "good" if delta >= -facts.settings.gate_map_tolerance else "poor"
    elif "champion" in m.aliases:
        accuracy["note"] = "this version is the champion"
    if validation is not None:
        data = {"title": "dataset validation",
                "value": "passed" if validation["passed"] else "failed",
                "tone": "good" if validation["passed"] else "poor",
                "note": f"{validation['errors']} errors, {validation['warnings']} warnings"}
    else:
        data = {"title": "dataset validation", "value": "not recorded", "tone": "",
                "note": facts.dataset.label if facts.dataset else "no dataset named"}
    if robustness is not None:
        robust = {"title": "robustness", "value": robustness["mean"],
                  "tone": robustness["mean_tone"], "note": "mean mAP50-95 ratio to clean"}
    else:
        robust = {"title": "robustness", "value": "not evaluated", "tone": "",
                  "note": "no robustness/robustness.json"}
    failed = [g for g in facts.gates if not g.passed]
    if failed:
        gate = {"title": "promotion gates", "value": "rejected", "tone": "poor",
                "note": f"at {failed[0].name}"}
    elif facts.gates:
        gate = {"title": "promotion gates", "value": f"{len(facts.gates)} passed",
                "tone": "good", "note": ", ".join(g.name.removeprefix("gate_")
                                                  for g in facts.gates)}
    else:
        gate = {"title": "promotion gates", "value": "not run", "tone": "",
                "note": "the version has not been promoted"}
    return [accuracy, data, robust, gate]


def _shown(value) -> str:
    """A gate's measurement as a reader wants it: 4 significant digits, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(v) for v in value)
    return str(value)


def _gates(facts: ReleaseFacts) -> list[dict]:
    return [{"name": g.name, "passed": g.passed,
             "detail": [(k, _shown(v)) for k, v in g.detail.items()]} for g in facts.gates]


def context(facts: ReleaseFacts, samples: Samples) -> dict:
    """What the template shows, computed here so the template only lays it out."""
    m, c = facts.model, facts.champion
    tags = m.tags
    validation, robustness = _validation(facts.dataset), _robustness(m.robustness)
    chart = m.pictures.get("robustness")
    if chart is None and m.robustness and m.robustness.get("results"):
        chart = robustness_chart(m.robustness, _get(c.robustness, "mean_ratio") if c else None)
    evaluation = m.evaluation or {}
    ul, coco = evaluation.get("ultralytics") or {}, evaluation.get("coco") or {}
    agreement = None
    if _get(ul, "mAP50-95") is not None and _get(coco, "mAP50-95") is not None:
        agreement = 100 * abs(ul["mAP50-95"] - coco["mAP50-95"])
    per_class = _per_class(m, c, facts.dataset)
    lineage = [(label, tags.get(key)) for label, key in (
        ("status", "status"), ("trained from", "base"), ("epochs", "epochs"),
        ("input size", "imgsz"), ("training data", "dataset_name"),
        ("evaluation data", "eval_dataset"), ("checkpoint sha256", "checkpoint_sha256"),
        ("promoted", "promoted_at"), ("promoted by", "promoted_by"),
        ("Ultralytics", "ultralytics")) if tags.get(key)]
    return {
        "m": m, "champion": c, "generated": facts.generated,
        "source_checkpoint": tags.get("source_checkpoint") or m.source,
        "lineage": lineage, "summary": _summary(facts, validation, robustness),
        "metrics": _metric_rows(m, c),
        "same_eval": c is not None and bool(tags.get("eval_dataset_hash"))
        and tags.get("eval_dataset_hash") == c.tags.get("eval_dataset_hash"),
        "evaluation": m.evaluation, "ul": ul, "coco": coco, "agreement": agreement,
        "per_class": per_class,
        "champion_per_class": any(r["champion"] != "–" for r in per_class),
        "pr_curve": data_uri(m.pictures["pr_curve"]) if "pr_curve" in m.pictures else None,
        "confusion": (data_uri(m.pictures["confusion_matrix"])
                      if "confusion_matrix" in m.pictures else None),
        "robustness": robustness, "robustness_chart": data_uri(chart) if chart else None,
        "champion_robustness": _num(_get(c.robustness, "mean_ratio"), 2) if c else None,
        "dataset": _dataset(facts.dataset), "validation": validation,
        "samples": [{"name": s.name, "uri": data_uri(s.jpeg, "image/jpeg"),
                     "detected": s.detected, "labelled": s.labelled}
                    for s in samples.images],
        "samples_note": samples.note, "sample_conf": samples.conf,
        "gates": _gates(facts), "problems": m.problems,
    }


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def render_html(facts: ReleaseFacts, samples: Samples) -> str:
    return _environment().get_template("report.html.j2").render(**context(facts, samples))


def html_to_pdf(html: str) -> bytes:
    import weasyprint
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols=("data",))  # the pictures inline, nothing else
    return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()


# --- the whole ------------------------------------------------------------------------------------

def build_report(settings: Settings, version: str | int, *, name: str | None = None,
                 pdf: bool = True) -> Report:
    """Collect, draw and render version `version`'s report (HTML, and the PDF unless `pdf` is
    False). Raises `UnknownModelVersion` for a version the registry does not have."""
    collector = Collector(settings, name)
    facts = collector.collect(version)
    m = facts.model
    artifacts = collector.artifacts(m.run_id) if m.run_id else None
    try:
        names = {int(k): v for k, v in json.loads(m.tags.get("class_names", "{}")).items()}
    except (ValueError, AttributeError):
        names = {}
    samples = (detect_samples(artifacts, facts.eval_images, settings.reports_sample_conf, names)
               if artifacts else Samples([], settings.reports_sample_conf,
                                         "the version names no MLflow run"))
    html = render_html(facts, samples)
    report = Report(m.name, m.version, m.run_id, html)
    if pdf:
        report.pdf = html_to_pdf(html)
    log.info("report for %s version %s: %d KiB HTML%s", m.name, m.version, len(html) // 1024,
             f", {len(report.pdf) // 1024} KiB PDF" if report.pdf else "",
             extra={"event": "release_report", "model": m.name, "version": m.version})
    return report


def attach(settings: Settings, report: Report) -> list[str]:
    """Log the report (HTML and PDF) to the version's run as report/report.html and .pdf."""
    from control_plane.mlflow_store import mlflow_client, store_for

    if not report.run_id:
        raise ReportError(f"version {report.version} names no MLflow run to attach to")
    client = mlflow_client(store_for(settings))
    with tempfile.TemporaryDirectory(prefix="vg-report-") as tmp:
        for fmt in ("html", "pdf"):
            (Path(tmp) / f"report.{fmt}").write_bytes(report.content(fmt))
        client.log_artifacts(report.run_id, tmp, ARTIFACT_DIR)
    return [f"{ARTIFACT_DIR}/report.html", f"{ARTIFACT_DIR}/report.pdf"]


def write_report(report: Report, out: Path) -> Path:
    """The report at `out`, in the format its suffix names (.html or .pdf), atomically."""
    fmt = output_format(out)
    out = Path(out).expanduser()
    atomic_write(out, report.content(fmt))
    return out
