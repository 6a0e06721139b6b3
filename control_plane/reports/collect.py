"""What a release report says about a model version, read from MLflow and the datasets store.

Reads only. The registered version and its run: tags (metrics, lineage, the gates' results that
promotion keeps as `gate_<name>` tags, the rejection reason), and the artifacts the evaluation
wing logs: `evaluation/metrics.json` (Ultralytics' and the COCO evaluator's mAP, per-class AP),
`evaluation/pr_curve.png`, `evaluation/confusion_matrix.png`, `robustness/robustness.json` and
`robustness/robustness.png`. The champion's, to stand beside it. The dataset the version names:
a stored version's manifest and validation report, found by the version's tags, its run's
MLflow dataset inputs, or the folder of its evaluation data. Whatever is absent stays None and
the report says so ("not evaluated"), rather than failing: a bootstrap version registered before
evaluation existed still gets a report.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.datasets.errors import UnknownDataset
from control_plane.datasets.layout import (DATA_YAML, MANIFEST, VALIDATION, DatasetVersion,
                                           is_image, yolo_splits)
from control_plane.datasets.store import DatasetStore
from control_plane.errors import ControlPlaneError, NotFound
from control_plane.mlflow_store import (CHAMPION, ModelVersionRecord, mlflow_client,
                                        model_aliases, store_for)
from control_plane.settings import Settings
from control_plane.training.train import METRIC_MAP, METRIC_MAP50

log = logging.getLogger("visionguard.reports")

# The evaluation wing's artifacts in a version's run (control_plane/evaluation).
METRICS_JSON = "evaluation/metrics.json"
ROBUSTNESS_JSON = "robustness/robustness.json"
PICTURES = {"pr_curve": "evaluation/pr_curve.png",
            "confusion_matrix": "evaluation/confusion_matrix.png",
            "robustness": "robustness/robustness.png"}
ONNX_ARTIFACT = "model/model.onnx"


class UnknownModelVersion(NotFound):
    """No such version of the registered model."""


class ReportError(ControlPlaneError):
    """A report that cannot be made as asked (a bad output path)."""

    code = "bad_report_request"


@dataclass
class VersionFacts(ModelVersionRecord):
    """One registered version and what its run carries."""

    evaluation: dict | None = None  # evaluation/metrics.json
    robustness: dict | None = None  # robustness/robustness.json
    pictures: dict[str, bytes] = field(default_factory=dict)  # PICTURES' keys -> PNG bytes
    problems: list[str] = field(default_factory=list)  # artifacts there but unreadable

    def metric(self, key: str) -> float | None:
        return _float(self.tags.get(key))

    @property
    def map50(self) -> float | None:
        return self.metric(METRIC_MAP50)

    @property
    def map(self) -> float | None:
        return self.metric(METRIC_MAP)


@dataclass
class DatasetFacts:
    """The data the version was trained (and evaluated) on, as far as this machine knows it."""

    label: str  # NAME@VERSION, or what the tags call it
    found_by: str  # how it was found, for the reader
    version: DatasetVersion | None = None  # a stored version (manifest)
    validation: dict | None = None  # its validation report (validation.json)
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict] = field(default_factory=dict)  # split -> images, boxes, empty, ...
    root: Path | None = None  # the folder with data.yaml, when it is on this machine


@dataclass
class Gate:
    name: str
    passed: bool
    detail: dict


@dataclass
class ReleaseFacts:
    """Everything the report shows, gathered before anything is drawn."""

    model: VersionFacts
    champion: VersionFacts | None  # None: no champion, or this version is the champion
    dataset: DatasetFacts | None
    eval_images: list[Path]  # validation images for the sample detections
    gates: list[Gate]
    generated: str
    settings: Settings


def _float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


# --- MLflow ------------------------------------------------------------------------------------

class RunArtifacts:
    """A run's artifacts, read with a size limit (VG_REPORTS_MAX_ARTIFACT_MB)."""

    def __init__(self, client, tracking_uri: str, run_id: str, max_bytes: int) -> None:
        self.client, self.tracking_uri, self.run_id = client, tracking_uri, run_id
        self.max_bytes = max_bytes
        self._listed: dict[str, dict[str, int | None]] = {}

    def size(self, path: str) -> int | None:
        """The artifact's size in bytes; None when the run has no such file."""
        folder = path.rsplit("/", 1)[0]
        if folder not in self._listed:
            try:
                infos = self.client.list_artifacts(self.run_id, folder)
            except Exception:  # noqa: BLE001 - a run without the folder, an unreachable store
                infos = []
            self._listed[folder] = {i.path: i.file_size for i in infos if not i.is_dir}
        listed = self._listed[folder]
        return (listed[path] or 0) if path in listed else None

    def download(self, path: str, dst: Path) -> Path:
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(
            run_id=self.run_id, artifact_path=path, dst_path=str(dst),
            tracking_uri=self.tracking_uri))

    def read(self, path: str, problems: list[str]) -> bytes | None:
        """The artifact's bytes, or None when absent; a problem noted when it is too large or
        cannot be fetched."""
        size = self.size(path)
        if size is None:
            return None
        if size > self.max_bytes:
            problems.append(f"{path} is {size / 2**20:.1f} MiB, over the report's limit of "
                            f"{self.max_bytes / 2**20:.0f} MiB (VG_REPORTS_MAX_ARTIFACT_MB)")
            return None
        with tempfile.TemporaryDirectory(prefix="vg-report-") as tmp:
            try:
                return self.download(path, Path(tmp)).read_bytes()
            except Exception as exc:  # noqa: BLE001 - artifact stores fail in many ways
                problems.append(f"{path} could not be read: {exc}")
                return None

    def json(self, path: str, problems: list[str]) -> dict | None:
        data = self.read(path, problems)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path} is not JSON: {exc}")
            return None
        if not isinstance(value, dict):
            problems.append(f"{path} is not a JSON object")
            return None
        return value


class Collector:
    """Reads one model's versions, runs and datasets for reports."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.model_name
        self.store = store_for(settings)
        self.client = mlflow_client(self.store)
        self.max_bytes = int(settings.reports_max_artifact_mb * 2**20)

    def artifacts(self, run_id: str) -> RunArtifacts:
        return RunArtifacts(self.client, self.store.tracking_uri, run_id, self.max_bytes)

    def version(self, version: str | int, aliases: dict[str, str] | None = None,
                with_artifacts: bool = True) -> VersionFacts:
        from mlflow.exceptions import MlflowException

        text = str(version)
        if not text.isdigit() or len(text) > 9:
            raise UnknownModelVersion(f"{text!r} is not a version number", version=text)
        try:
            mv = self.client.get_model_version(self.name, text)
        except MlflowException:
            raise UnknownModelVersion(f"{self.name} has no version {text}",
                                      model=self.name, version=text) from None
        aliases = model_aliases(self.client, self.name) if aliases is None else aliases
        facts = VersionFacts.from_mlflow(mv, aliases)
        if with_artifacts and facts.run_id:
            run = self.artifacts(facts.run_id)
            facts.evaluation = run.json(METRICS_JSON, facts.problems)
            facts.robustness = run.json(ROBUSTNESS_JSON, facts.problems)
            for key, path in PICTURES.items():
                data = run.read(path, facts.problems)
                if data is not None:
                    facts.pictures[key] = data
        return facts

    def collect(self, version: str | int) -> ReleaseFacts:
        aliases = model_aliases(self.client, self.name)
        model = self.version(version, aliases)
        champion_v = aliases.get(CHAMPION)
        champion = (self.version(champion_v, aliases)
                    if champion_v and champion_v != model.version else None)
        dataset = self.dataset(model)
        return ReleaseFacts(
            model=model, champion=champion, dataset=dataset,
            eval_images=self.eval_images(model, dataset), gates=gates(model.tags),
            generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            settings=self.settings)

    # --- the dataset -------------------------------------------------------------------------

    def dataset(self, model: VersionFacts) -> DatasetFacts | None:
        """The stored dataset version the model names, else what its evaluation data folder
        shows, else only the name its tags give (None when they give none)."""
        store = DatasetStore(self.settings, log_to_mlflow=False)
        tags = model.tags
        for key in ("dataset_ref", "dataset"):  # NAME@VERSION (or NAME: the latest)
            ref = tags.get(key, "")
            if "@" in ref:
                found = _stored(store, lambda: store.resolve(ref))
                if found:
                    return _from_version(found, f"tag {key}")
        name = tags.get("dataset_name", "")
        for key in ("dataset_version", "dataset_hash"):
            value = tags.get(key, "")
            if name and value:
                found = _stored(store, lambda: next(
                    v for v in store.list(name)
                    if v.version == value or len(value) >= 8 and v.hash.startswith(value)))
                if found:
                    return _from_version(found, f"tags dataset_name and {key}")
        found = self._run_input(store, model.run_id)
        if found:
            return found
        folder = Path(tags["eval_data_yaml"]).parent if tags.get("eval_data_yaml") else None
        if folder is not None and (folder / MANIFEST).is_file():
            return _from_version(DatasetVersion.load(folder), "tag eval_data_yaml")
        label = (tags.get("dataset_ref") or tags.get("dataset") or name
                 or tags.get("eval_dataset", ""))
        if folder is not None and (folder / DATA_YAML).is_file():
            return _from_folder(folder, label or folder.name)
        return DatasetFacts(label, "tags only (the data is not on this machine)") if label \
            else None

    def _run_input(self, store: DatasetStore, run_id: str) -> DatasetFacts | None:
        """The dataset a training run logged as its MLflow input (context `training`), when its
        profile names a stored version."""
        if not run_id:
            return None
        try:
            inputs = self.client.get_run(run_id).inputs.dataset_inputs or []
        except Exception:  # noqa: BLE001 - a deleted run: the other clues still apply
            return None
        for item in inputs:
            contexts = {t.value for t in item.tags if t.key == "mlflow.data.context"}
            if "training" not in contexts:
                continue
            try:
                version = json.loads(item.dataset.profile or "{}").get("version")
            except json.JSONDecodeError:
                continue
            if version:
                found = _stored(store, lambda: store.get(item.dataset.name, version))
                if found:
                    return _from_version(found, "the run's MLflow dataset input")
        return None

    def eval_images(self, model: VersionFacts, dataset: DatasetFacts | None) -> list[Path]:
        """The first validation images (by name) of the evaluation data, else of the
        dataset: the same ones every time, so two versions' reports show the same images."""
        n = self.settings.reports_sample_images
        roots = []
        if model.tags.get("eval_data_yaml"):
            roots.append(Path(model.tags["eval_data_yaml"]))
        if dataset is not None and dataset.root is not None:
            roots.append(dataset.root / DATA_YAML)
        for data_yaml in roots:
            if not data_yaml.is_file():
                continue
            try:
                _, splits = yolo_splits(data_yaml)
            except ControlPlaneError:
                continue
            images = sorted(p for images_dir, _ in splits.get("val", [])
                            for p in images_dir.iterdir() if p.is_file() and is_image(p))
            if images:
                return images[:n]
        return []


def _stored(store: DatasetStore, find) -> DatasetVersion | None:
    try:
        return find()
    except (UnknownDataset, StopIteration, ControlPlaneError):
        return None


def _from_version(version: DatasetVersion, found_by: str) -> DatasetFacts:
    validation = None
    try:
        validation = json.loads((version.path / VALIDATION).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("dataset %s: no readable validation report (%s)", version.ref, exc)
    return DatasetFacts(version.ref, found_by, version, validation, list(version.classes),
                        dict(version.counts), version.path)


def _from_folder(folder: Path, label: str) -> DatasetFacts:
    """A YOLO folder that is not a stored version (an older bootstrap's data): its classes and
    counts, read from data.yaml and the label files; it has no validation report."""
    try:
        classes, splits = yolo_splits(folder / DATA_YAML)
    except ControlPlaneError:
        return DatasetFacts(label, f"evaluation data at {folder} (unreadable data.yaml)")
    counts = {}
    for split, folders in splits.items():
        images = boxes = empty = 0
        per_class: dict[str, int] = {}
        for images_dir, labels_dir in folders:
            for p in images_dir.iterdir():
                if not (p.is_file() and is_image(p)):
                    continue
                images += 1
                label_file = labels_dir / f"{p.stem}.txt"
                lines = [ln.split() for ln in (label_file.read_text().splitlines()
                                               if label_file.is_file() else []) if ln.strip()]
                boxes += len(lines)
                empty += not lines
                for parts in lines:
                    per_class[parts[0]] = per_class.get(parts[0], 0) + 1
        counts[split] = {"images": images, "boxes": boxes, "empty": empty,
                         "per_class": per_class}
    return DatasetFacts(label, f"evaluation data at {folder} (not a stored dataset version)",
                        None, None, classes, counts, folder)


def gates(tags: dict[str, str]) -> list[Gate]:
    """The gates' results promotion kept: a `gate_<name>` tag is a gate that passed (its
    measurements as JSON); a rejected version names the step that failed and why."""
    found = []
    for key in sorted(tags):
        if key.startswith("gate_"):
            try:
                detail = json.loads(tags[key])
            except json.JSONDecodeError:
                detail = {"result": tags[key]}
            found.append(Gate(key, True, detail if isinstance(detail, dict)
                              else {"result": detail}))
    if tags.get("status") == "rejected":
        found.append(Gate(tags.get("rejected_step", "?"), False,
                          {"reason": tags.get("rejection_reason", "")}))
    return found
