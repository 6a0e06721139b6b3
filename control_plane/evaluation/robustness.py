"""Robustness: how much of its accuracy a detector keeps when the images get worse.

A checkpoint is scored on a dataset version's validation split clean, then under each
corruption x severity of `corruptions.py`: the corrupted copies of the images go into a
temporary YOLO dataset beside copies of their labels (the corruptions move no content, so the
boxes hold), and Ultralytics' validator scores it through `training.evaluate`, the same call
that scores a training run. Each result is mAP50-95 and its ratio to the clean mAP50-95; the
suite's summary is the mean ratio (mean corruption accuracy relative to clean, as in the
detection benchmark of Michaelis et al. 2019).

The jobs (clean + one per corruption and severity) run in worker processes, one torch thread
each (`Settings.robustness_workers`, default one per core this process may use): on 2 shared
cores one thread per process beat two threads in one (training.train's measurements), and a
worker process keeps Ultralytics' global state and torch's thread count out of the process that
asked (the control plane's API runs the promotion gate). Each job writes its corrupted copy,
scores it and deletes it, so at most one copy per worker is on disk.

For a registered version (`evaluate_version`) the result is logged to the version's MLflow run
(metrics `robustness.<corruption>.s<k>.mAP50-95` and `.ratio`, artifacts
`robustness/robustness.json` and `robustness/robustness.png`) and kept on the version as tags:
`robustness_mean_ratio` and `robustness_dataset` for the latest suite, and one
`robustness/<dataset>/<version>` record per dataset, which the promotion gate reuses when its
suite is the same.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from control_plane.datasets.layout import DatasetVersion, is_image
from control_plane.errors import ControlPlaneError, NotFound
from control_plane.evaluation import corruptions as corruption_set
from control_plane.settings import Settings

log = logging.getLogger("visionguard.evaluation")

ARTIFACT_DIR = "robustness"  # in the version's run: robustness.json, robustness.png
RESULT_JSON = "robustness.json"
CHART_PNG = "robustness.png"
TAG_MEAN_RATIO = "robustness_mean_ratio"
TAG_DATASET = "robustness_dataset"
CHECKPOINT_ARTIFACT = "model/best.pt"  # training.MODEL_ARTIFACT_DIR's checkpoint


class RobustnessError(ControlPlaneError):
    """The suite cannot run as asked: a missing or unreadable checkpoint, a class set that is
    not the dataset's, a dataset without validation images, a job that failed."""

    code = "robustness_refused"


class UnknownModelVersion(NotFound):
    """No such version of the registered model."""


@dataclass(frozen=True)
class Suite:
    """What a robustness result is comparable on: the dataset version, the corruptions and
    severities, and the number of validation images (0: all)."""

    dataset: str  # NAME@VERSION
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    max_images: int  # as asked: a gate's suite matches records made with its own setting

    @property
    def tag(self) -> str:
        """The version tag that keeps this dataset's result: robustness/NAME/VERSION."""
        return f"{ARTIFACT_DIR}/{self.dataset.replace('@', '/')}"

    def matches(self, record: Mapping) -> bool:
        return (record.get("dataset") == self.dataset
                and tuple(record.get("corruptions", ())) == self.corruptions
                and tuple(record.get("severities", ())) == self.severities
                and int(record.get("max_images", -1)) == self.max_images)


@dataclass(frozen=True)
class Score:
    corruption: str
    severity: int
    map: float  # mAP50-95 under the corruption
    ratio: float  # map / the clean mAP50-95 (0 when the clean mAP is 0)

    def as_dict(self) -> dict:
        return {"corruption": self.corruption, "severity": self.severity,
                "mAP50-95": round(self.map, 6), "ratio": round(self.ratio, 6)}


@dataclass
class RobustnessResult:
    suite: Suite
    model: str  # "detector/3" or the checkpoint's path
    imgsz: int
    images: int  # validation images scored
    clean: float  # mAP50-95 on the clean images
    scores: list[Score]
    seconds: float

    @property
    def mean_ratio(self) -> float:
        return sum(s.ratio for s in self.scores) / len(self.scores) if self.scores else 0.0

    def as_dict(self) -> dict:
        """robustness.json: what the release report reads (dataset, imgsz, clean_mAP50-95,
        results, mean_ratio), and how the suite was made."""
        return {"dataset": self.suite.dataset, "imgsz": self.imgsz,
                "clean_mAP50-95": round(self.clean, 6),
                "results": [s.as_dict() for s in self.scores],
                "mean_ratio": round(self.mean_ratio, 6), "model": self.model,
                "images": self.images, "max_images": self.suite.max_images,
                "corruptions": list(self.suite.corruptions),
                "severities": list(self.suite.severities),
                "levels": {c: list(corruption_set.CORRUPTIONS[c].levels)
                           for c in self.suite.corruptions},
                "seconds": round(self.seconds, 1)}

    def record(self) -> dict:
        """The version tag's value: enough to tell whether a later gate's suite is this one."""
        return {"dataset": self.suite.dataset, "mean_ratio": round(self.mean_ratio, 6),
                "clean_mAP50-95": round(self.clean, 6), "imgsz": self.imgsz,
                "images": self.images, "max_images": self.suite.max_images,
                "corruptions": list(self.suite.corruptions),
                "severities": list(self.suite.severities)}


@dataclass(frozen=True)
class RobustnessProgress:
    """One job done (`done` of `total`); corruption None is the clean images."""

    done: int
    total: int
    corruption: str | None = None
    severity: int = 0
    map: float = 0.0
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return "clean" if self.corruption is None else f"{self.corruption} s{self.severity}"


ProgressCallback = Callable[[RobustnessProgress], None]


# --- one job, in a worker process --------------------------------------------------------------

@dataclass
class _Job:
    weights: str
    images: tuple[tuple[str, str | None], ...]  # (image, its label file or None)
    names: dict[int, str]
    imgsz: int
    root: str  # the suite's scratch folder
    corruption: str | None = None  # None: the clean images
    severity: int = 0

    @property
    def label(self) -> str:
        return "clean" if self.corruption is None else f"{self.corruption}-s{self.severity}"


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the workers are the parallelism


def _write_dataset(job: _Job, folder: Path) -> Path:
    """The job's YOLO dataset: the images (corrupted, as lossless PNG; clean ones linked),
    the labels copied as they are, and a data.yaml whose train and val are the images."""
    import cv2
    import yaml

    images, labels = folder / "images" / "val", folder / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for src, label in job.images:
        src_path = Path(src)
        if job.corruption is None:
            os.symlink(src_path, images / src_path.name)
        else:
            image = cv2.imread(str(src_path), cv2.IMREAD_COLOR)
            if image is None:
                raise RobustnessError(f"{src_path} does not decode")
            out = corruption_set.corrupt(image, job.corruption, job.severity,
                                         key=src_path.name)
            cv2.imwrite(str(images / f"{src_path.stem}.png"), out,
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if label:
            shutil.copyfile(label, labels / f"{src_path.stem}.txt")
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(folder), "train": "images/val",
                                         "val": "images/val", "names": job.names},
                                        sort_keys=False))
    return data_yaml


def _run_job(job: _Job) -> tuple[float, float]:
    """(mAP50-95, seconds) of the checkpoint on the job's images."""
    from control_plane.training.train import evaluate

    t0 = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix=f"{job.label}-", dir=job.root))
    try:
        data_yaml = _write_dataset(job, folder)
        scores = evaluate(job.weights, data_yaml, imgsz=job.imgsz, threads=1,
                          project=folder / "runs")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return scores["mAP50-95"], time.monotonic() - t0


# --- the suite ---------------------------------------------------------------------------------

def _val_images(version: DatasetVersion, max_images: int) -> list[tuple[str, str | None]]:
    """The version's validation images with their labels; `max_images` of them (0: all)
    spread evenly over the sorted names, so a sequence of frames is sampled end to end."""
    folder = version.images_dir("val")
    found = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p)) \
        if folder.is_dir() else []
    if not found:
        raise RobustnessError(f"dataset {version.ref} has no validation images")
    if 0 < max_images < len(found):
        step = len(found) / max_images
        found = [found[int(i * step)] for i in range(max_images)]
    labels = version.labels_dir("val")
    return [(str(p), str(labels / f"{p.stem}.txt") if (labels / f"{p.stem}.txt").is_file()
             else None) for p in found]


def checkpoint_info(weights: Path) -> tuple[dict[int, str], int]:
    """A checkpoint's class names and training image size (640 when it records none), read
    weights-only; `RobustnessError` when it is missing, unsafe or not a detector."""
    from export.checkpoint import CheckpointError, yolo_from_checkpoint

    if not weights.is_file():
        raise RobustnessError(f"checkpoint {weights} does not exist")
    try:
        yolo = yolo_from_checkpoint(weights)
    except CheckpointError as exc:
        raise RobustnessError(f"checkpoint {weights} refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a foreign file fails in many ways; say which
        raise RobustnessError(f"{weights} is not an Ultralytics checkpoint: {exc}") from None
    train_args = dict(getattr(yolo, "ckpt", {}).get("train_args", {}) or {})
    imgsz = int(train_args.get("imgsz") or yolo.overrides.get("imgsz") or 640)
    return {int(k): str(v) for k, v in yolo.names.items()}, imgsz


def workers_for(settings: Settings, jobs: int) -> int:
    """Worker processes for `jobs` jobs: the setting, else one per core this process may use."""
    if settings.robustness_workers > 0:
        return min(settings.robustness_workers, jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, jobs))


def evaluate_robustness(settings: Settings, weights: str | Path, version: DatasetVersion, *,
                        corruptions: list[str] | tuple[str, ...] | None = None,
                        severities: list[int] | tuple[int, ...] | None = None,
                        max_images: int = 0, imgsz: int | None = None,
                        names: Mapping[int, str] | None = None, model: str | None = None,
                        progress: ProgressCallback | None = None) -> RobustnessResult:
    """Score `weights` on `version`'s validation split, clean and under each corruption and
    severity (default: all of them), on `max_images` images (0: all), at `imgsz` (default:
    the checkpoint's training size). `names`: the model's classes when known (else read from
    the checkpoint); they must be the dataset's."""
    report = progress or (lambda _p: None)
    chosen, levels = corruption_set.check(corruptions, severities)
    if max_images < 0:
        raise RobustnessError(f"max_images must be 0 (all) or more, not {max_images}")
    weights = Path(weights).expanduser()
    if names is None or imgsz is None:
        found_names, found_imgsz = checkpoint_info(weights)
        names, imgsz = names or found_names, imgsz or found_imgsz
    elif not weights.is_file():
        raise RobustnessError(f"checkpoint {weights} does not exist")
    if imgsz < 32:
        raise RobustnessError(f"imgsz must be at least 32, not {imgsz}")
    if [names[i] for i in sorted(names)] != list(version.classes):
        raise RobustnessError(
            f"the model's classes {[names[i] for i in sorted(names)]} are not those of "
            f"{version.ref} ({version.classes}): scores would compare different classes",
            model_classes=[names[i] for i in sorted(names)], dataset_classes=version.classes)
    images = _val_images(version, max_images)
    suite = Suite(version.ref, chosen, levels, max_images)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vg-robustness-") as scratch:
        base = dict(weights=str(weights.resolve()), images=tuple(images),
                    names={int(k): v for k, v in names.items()}, imgsz=int(imgsz), root=scratch)
        jobs = [_Job(**base)] + [_Job(**base, corruption=c, severity=s)
                                 for c in chosen for s in levels]
        maps = _run_jobs(settings, jobs, report)
    clean = maps[None, 0]
    scores = [Score(c, s, maps[c, s], maps[c, s] / clean if clean > 0 else 0.0)
              for c in chosen for s in levels]
    result = RobustnessResult(suite, model or str(weights), int(imgsz), len(images), clean,
                              scores, time.monotonic() - t0)
    log.info("robustness of %s on %s: clean mAP50-95 %.3f, mean ratio %.3f (%d images, %d "
             "corruptions x %d severities, %.0f s)", result.model, suite.dataset, clean,
             result.mean_ratio, len(images), len(chosen), len(levels), result.seconds,
             extra={"event": "robustness_done", "model": result.model,
                    "dataset": suite.dataset, "clean_map": clean,
                    "mean_ratio": result.mean_ratio, "seconds": round(result.seconds, 1)})
    return result


def _run_jobs(settings: Settings, jobs: list[_Job], report: ProgressCallback
              ) -> dict[tuple[str | None, int], float]:
    """Every job's mAP50-95 by (corruption, severity), from a pool of worker processes
    (spawned: a forked copy of a process that has started torch's threads can deadlock)."""
    workers = workers_for(settings, len(jobs))
    maps: dict[tuple[str | None, int], float] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        pending = {pool.submit(_run_job, job): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        value, seconds = future.result()
                    except ControlPlaneError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - name the job that failed
                        raise RobustnessError(f"robustness job {job.label} failed: "
                                              f"{type(exc).__name__}: {exc}") from exc
                    maps[job.corruption, job.severity] = value
                    step = RobustnessProgress(len(maps), len(jobs), job.corruption,
                                              job.severity, value, seconds)
                    log.info("robustness %d/%d: %s mAP50-95 %.3f (%.1f s)", step.done,
                             step.total, step.label, value, seconds,
                             extra={"event": "robustness_job", "job": step.label,
                                    "map": value, "seconds": round(seconds, 2)})
                    report(step)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return maps


# --- pictures and files ------------------------------------------------------------------------

def chart(result: RobustnessResult, path: Path) -> Path:
    """robustness.png: the ratio to clean mAP50-95 per corruption, one bar per severity."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    corruptions, severities = result.suite.corruptions, result.suite.severities
    ratios = {(s.corruption, s.severity): s.ratio for s in result.scores}
    fig = Figure(figsize=(max(6.0, 1.1 * len(corruptions) + 2), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(corruptions))
    width = 0.8 / len(severities)
    shades = {1: "#9ecae1", 2: "#4292c6", 3: "#08519c"}
    for i, sev in enumerate(severities):
        values = [ratios[c, sev] for c in corruptions]
        bars = ax.bar(x + (i - (len(severities) - 1) / 2) * width, values, width,
                      label=f"severity {sev}", color=shades.get(sev, "#4292c6"))
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.axhline(1.0, color="#555555", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [c.replace("_", " ") for c in corruptions], fontsize=8)
    top = max([1.0, *ratios.values()])
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("mAP50-95 / clean mAP50-95")
    model = Path(result.model).name if result.model.endswith(".pt") else result.model
    ax.set_title(f"{model} on {result.suite.dataset} ({result.images} images, "
                 f"{result.imgsz} px): clean mAP50-95 {result.clean:.3f}, mean ratio "
                 f"{result.mean_ratio:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right", ncols=len(severities))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_files(result: RobustnessResult, folder: Path) -> tuple[Path, Path]:
    """robustness.json and robustness.png in `folder` (written beside, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, png_path = folder / RESULT_JSON, folder / CHART_PNG
    staged = folder / f".{RESULT_JSON}.{os.getpid()}"
    staged.write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    png_staged = chart(result, folder / f".{os.getpid()}.{CHART_PNG}")
    os.replace(staged, json_path)
    os.replace(png_staged, png_path)
    return json_path, png_path


def metrics(result: RobustnessResult) -> dict[str, float]:
    """The run metrics: robustness.<corruption>.s<k>.mAP50-95 and .ratio, clean and mean."""
    out = {"robustness.clean.mAP50-95": result.clean,
           "robustness.mean_ratio": result.mean_ratio}
    for s in result.scores:
        out[f"robustness.{s.corruption}.s{s.severity}.mAP50-95"] = s.map
        out[f"robustness.{s.corruption}.s{s.severity}.ratio"] = s.ratio
    return out


# --- registered versions -----------------------------------------------------------------------

def _model_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise UnknownModelVersion(f"{name} has no version {version}") from None


def recorded(tags: Mapping[str, str], suite: Suite) -> dict | None:
    """The version's record of `suite` (its tag), or None when it has none for exactly it."""
    try:
        record = json.loads(tags.get(suite.tag, ""))
    except ValueError:
        return None
    return record if isinstance(record, dict) and suite.matches(record) else None


def evaluate_version(settings: Settings, version: str | int, dataset: DatasetVersion, *,
                     corruptions: list[str] | tuple[str, ...] | None = None,
                     severities: list[int] | tuple[int, ...] | None = None,
                     max_images: int = 0, imgsz: int | None = None,
                     progress: ProgressCallback | None = None) -> RobustnessResult:
    """The suite on a registered version's checkpoint (its run's model/best.pt), at the
    version's serving size unless `imgsz`; logged to its run and kept on it as tags."""
    import mlflow.artifacts
    from mlflow.entities import Metric

    from control_plane.mlflow_store import mlflow_client, store_for

    store = store_for(settings)
    client = mlflow_client(store)
    name = settings.model_name
    mv = _model_version(client, name, str(version))
    tags = dict(mv.tags or {})
    if not mv.run_id:
        raise RobustnessError(f"{name} version {version} has no MLflow run to read its "
                              "checkpoint from")
    names = {int(k): v for k, v in json.loads(tags.get("class_names", "{}")).items()} or None
    size = imgsz or int(tags.get("imgsz") or 0) or None
    with tempfile.TemporaryDirectory(prefix="vg-robustness-ckpt-") as tmp:
        try:
            weights = Path(mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=tmp,
                tracking_uri=store.tracking_uri))
        except Exception as exc:  # noqa: BLE001 - artifact stores fail in their own words
            raise RobustnessError(f"cannot fetch {name} version {version}'s checkpoint "
                                  f"({CHECKPOINT_ARTIFACT}): {exc}") from None
        result = evaluate_robustness(settings, weights, dataset, corruptions=corruptions,
                                     severities=severities, max_images=max_images,
                                     imgsz=size, names=names, model=f"{name}/{mv.version}",
                                     progress=progress)
        files = write_files(result, Path(tmp) / ARTIFACT_DIR)
        now = int(time.time() * 1000)
        client.log_batch(mv.run_id, metrics=[Metric(k, float(v), now, 0)
                                             for k, v in metrics(result).items()])
        for path in files:
            client.log_artifact(mv.run_id, str(path), ARTIFACT_DIR)
    for key, value in {TAG_MEAN_RATIO: f"{result.mean_ratio:.6f}",
                       TAG_DATASET: result.suite.dataset,
                       result.suite.tag: json.dumps(result.record())}.items():
        client.set_model_version_tag(name, str(mv.version), key, value)
    return result
