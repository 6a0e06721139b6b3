"""Offline bootstrap: train a small detector on generated shapes and register it in MLflow.

A machine that cannot download weights still gets a detector whose detections mean something:
`train_bootstrap` generates a labelled dataset (control_plane.datasets.synthetic_data), trains a YOLO
architecture from scratch with Ultralytics on the CPU, evaluates it on the held-out split, exports
the serving ONNX, logs all of it to one MLflow run and registers the result as a new version of
the registered model. The first version becomes `champion`; later ones wait for a promotion.

Nothing here touches the network (a test checks it with an audit hook). Left alone, the
libraries would: Ultralytics runs its MLflow, ClearML, Comet, DVC, Ray Tune, TensorBoard, W&B and
platform callbacks and usage events from its settings file (we run none: `_without_integrations`),
checks PyPI for updates (off with YOLO_OFFLINE), downloads Arial.ttf from GitHub when a dataset is
checked (for plots we do not draw: `_no_font_download`) and a yolo26n.pt for its AMP check (only
with amp=True on CUDA: we train on the CPU with amp=False); MLflow 3 fetches its telemetry
configuration (off with MLFLOW_DISABLE_TELEMETRY).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

from control_plane.mlflow_store import (CHAMPION, experiment_id, mlflow_client, mlflow_store,
                                        offline, store_for)
from control_plane.settings import Settings
from control_plane.datasets import synthetic_data
from export.triton_repo import MODEL_NAME

# Defaults for the bootstrap model `visionguard up` trains on a fresh machine: a useful detector
# in about ten minutes on 2 CPU cores. Measured on 2 shared cores with one torch thread (the
# default before `threads="idle"`, see `train_bootstrap`), seed 0, yolov8n from scratch,
# 600 train / 150 val images; held-out mAP50 /
# mAP50-95 and training time (the whole bootstrap, data to registration: 580 s):
#   320px, 12 epochs, lr0 0.00125 (Ultralytics' auto), close_mosaic 4   0.64 / 0.48   596 s
#   320px, 12 epochs, lr0 0.003, close_mosaic 4                         0.74 / 0.57   577 s
#   256px, 18 epochs, lr0 0.003, close_mosaic 6 (these defaults)        0.84 / 0.66   554 s
#   256px, 18 epochs, lr0 0.005, close_mosaic 8                         0.79 / 0.61   594 s
# At 256px a step costs ~0.6x of 320px, and on this budget more steps beat more pixels. Serve
# the result at the size it was trained at (the gateway's letterbox size).
DEFAULT_IMGSZ = 256
DEFAULT_EPOCHS = 18
DEFAULT_N_TRAIN = 600
DEFAULT_N_VAL = 150
DEFAULT_SEED = 0
DEFAULT_BATCH = 16
DEFAULT_BASE = "yolov8n.yaml"
# Ultralytics' training arguments we change (`train_args` overrides any of its arguments).
# Also nbs = batch: no gradient accumulation up to 64 images, so 4x the optimizer steps.
DEFAULT_TRAIN_ARGS: dict[str, object] = {
    "optimizer": "AdamW",
    "lr0": 0.003,  # 2.4x its automatic choice for 4 classes: better with this few steps
    "warmup_epochs": 1,  # (its floor of 100 warmup iterations still applies)
    "close_mosaic": 6,  # the last third without mosaic: mAP jumps when it stops
}

EXPERIMENT_NAME = "visionguard-bootstrap"
MODEL_ARTIFACT_DIR = "model"  # in the run: best.pt and model.onnx; the version's source
METRIC_MAP50 = "val_mAP50"
METRIC_MAP = "val_mAP50-95"

log = logging.getLogger("visionguard.training")


# --- progress ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingProgress:
    """What `train_bootstrap` reports: a stage, and after each epoch its metrics."""

    stage: str  # "data", "train", "evaluate", "export", "register", "done"
    epoch: int = 0  # epochs completed
    epochs: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    train_s: float = 0.0  # wall time of the training so far (stage "train")
    threads: int = 0  # torch's CPU threads in the last epoch (0: not known)

    @property
    def seconds_per_epoch(self) -> float | None:
        return self.train_s / self.epoch if self.stage == "train" and self.epoch else None

    @property
    def seconds_left(self) -> float | None:
        """The remaining epochs at the mean pace so far (evaluation and export after them
        take about one more epoch's validation)."""
        pace = self.seconds_per_epoch
        return None if pace is None else pace * (self.epochs - self.epoch)

    def describe(self) -> str:
        """One line a person reads in a log or a readiness answer."""
        if self.stage == "train":
            if not self.epoch:
                return f"epoch 1 of {self.epochs} running"
            text = f"epoch {self.epoch}/{self.epochs}"
            left = self.seconds_left
            if left is not None and self.epoch < self.epochs:
                text += (f", about {math.ceil(left / 60)} min left" if left >= 60
                         else ", less than a minute left")
            return text
        return {"data": "generating the training images",
                "evaluate": "evaluating the best checkpoint on the validation split",
                "export": "exporting ONNX", "register": "registering the model in MLflow",
                "done": "done"}.get(self.stage, self.stage)


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    registered_name: str
    version: str
    champion: str | None  # the version holding the `champion` alias after registration
    metrics: dict[str, float]  # val_mAP50, val_mAP50-95, ...
    eval_dataset: str
    dataset_name: str
    dataset_hash: str
    best_pt: Path
    onnx_path: Path
    data_yaml: Path
    train_s: float  # wall time of the Ultralytics training alone
    total_s: float


# --- Ultralytics, offline and quiet ------------------------------------------------------------

def _is_integration(callback) -> bool:
    module = getattr(callback, "__module__", "") or ""
    return module == "ultralytics.utils.events" or (
        module.startswith("ultralytics.utils.callbacks.")
        and module != "ultralytics.utils.callbacks.base")


def _without_integrations(base: type) -> type:
    """`base` (a trainer or validator class) running only the default callbacks and ours.

    Ultralytics attaches its integrations (MLflow among them, which would open a second run and
    end ours) from its settings file when a trainer is built; we log to MLflow ourselves.
    """

    class Offline(base):
        def run_callbacks(self, event: str) -> None:
            for callback in self.callbacks.get(event, []):
                if not _is_integration(callback):
                    callback(self)

    Offline.__name__ = Offline.__qualname__ = f"Offline{base.__name__}"
    return Offline


@contextlib.contextmanager
def _no_font_download() -> Iterator[None]:
    """Ultralytics' dataset check asks for Arial.ttf (for plots we do not draw) and tries to
    download it when missing: a request that fails or waits for its timeout offline."""
    import ultralytics.data.utils as data_utils

    original = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield
    finally:
        data_utils.check_font = original


@contextlib.contextmanager
def _ultralytics_logging(verbose: bool) -> Iterator[None]:
    """Ultralytics logs every batch (and draws tqdm bars) at INFO: keep that for `verbose`."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    if not verbose:
        LOGGER.setLevel(logging.WARNING)  # also disables its progress bars
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _torch_threads(threads: int):
    """A callback that sets torch's CPU threads once Ultralytics has chosen the device (its
    choice, cpu_count - 1, is set there)."""

    def set_threads(_owner) -> None:
        import torch

        torch.set_num_threads(threads)

    return set_threads


class IdleCores:
    """Torch's CPU threads = the cores that other processes leave idle.

    Measured from /proc/stat (the CPUs this process may run on) minus this process's own CPU
    time (os.times), so our own threads never count as load: once before training (over
    `sample_s`), then at the start of each epoch over the epoch before, and torch's thread
    count follows (torch.set_num_threads between epochs). A core counts as idle when at least
    0.7 of it was. Where /proc/stat cannot be read, every core is taken.
    """

    def __init__(self, sample_s: float = 1.0) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else list(range(os.cpu_count() or 1))
        self.threads = len(self.cpus)
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()
        if self._last is not None:
            time.sleep(sample_s)
            self.threads = self._measure()

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall time, busy CPU seconds of our CPUs, this process's CPU seconds)."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus}
        busy = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0] in wanted:
                ticks = [int(v) for v in fields[1:]]
                busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
        own = os.times()
        return time.monotonic(), busy / self._hz, own.user + own.system

    def _measure(self) -> int:
        now = self._sample()
        if now is None or self._last is None:
            return self.threads
        wall = now[0] - self._last[0]
        if wall <= 0:
            return self.threads
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        return max(1, min(len(self.cpus), int(len(self.cpus) - others + 0.3)))

    def callbacks(self) -> dict[str, Callable]:
        """Ultralytics callbacks: the measured count once the device is chosen, then again
        at each epoch's start."""

        def on_pretrain_routine_start(_trainer) -> None:
            import torch

            torch.set_num_threads(self.threads)

        def on_train_epoch_start(_trainer) -> None:
            import torch

            threads = self._measure()
            if threads != self.threads:
                log.info("torch threads %d -> %d (other processes use %d of %d cores)",
                         self.threads, threads, len(self.cpus) - threads, len(self.cpus),
                         extra={"event": "training_threads", "threads": threads})
                self.threads = threads
                torch.set_num_threads(threads)

        return {"on_pretrain_routine_start": on_pretrain_routine_start,
                "on_train_epoch_start": on_train_epoch_start}


def _metric_key(key: str) -> str:
    """Ultralytics' names -> MLflow keys (no parentheses): metrics/mAP50(B) -> val/mAP50."""
    return key.replace("metrics/", "val/").replace("(B)", "")


def evaluate(weights: str | Path, data_yaml: str | Path, *, imgsz: int,
             batch: int = DEFAULT_BATCH, split: str = "val", project: Path | None = None,
             threads: int | None = None, verbose: bool = False) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall of `weights` on a split of `data_yaml` (CPU)."""
    offline()
    import tempfile

    from ultralytics.models.yolo.detect import DetectionValidator

    from export.checkpoint import yolo_from_checkpoint

    with contextlib.ExitStack() as stack:
        if project is None:
            project = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vg-val-")))
        stack.enter_context(_no_font_download())
        stack.enter_context(_ultralytics_logging(verbose))
        model = yolo_from_checkpoint(weights)  # weights-only: nothing in the file runs
        if threads:
            model.add_callback("on_val_start", _torch_threads(threads))
        metrics = model.val(validator=_without_integrations(DetectionValidator),
                            data=str(data_yaml), split=split, imgsz=imgsz, batch=batch,
                            device="cpu", workers=0, plots=False, save_json=False,
                            project=str(project), name=split, exist_ok=True, verbose=verbose)
    box = metrics.box
    result = {"mAP50": float(box.map50), "mAP50-95": float(box.map),
              "precision": float(box.mp), "recall": float(box.mr)}
    for c in metrics.ap_class_index:  # the classes that occur in the split
        result[f"mAP50-95/{model.names[int(c)]}"] = float(box.maps[int(c)])
    return result


# --- registry ----------------------------------------------------------------------------------

def register_version(client, name: str, *, source: str, run_id: str,
                     tags: Mapping[str, str], description: str = "") -> tuple[str, str | None]:
    """Add a version of `name` (created if missing); `champion` goes to it only if no version
    holds it yet. Returns (version, the version holding `champion`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        registered = client.create_registered_model(
            name, description="YOLO detector served by Triton; aliases: champion (served), "
                              "challenger (candidate).")
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                      tags={k: str(v) for k, v in tags.items()},
                                      description=description)
    champion = registered.aliases.get(CHAMPION) if registered.aliases else None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        champion = mv.version
    return str(mv.version), str(champion)


# --- training ----------------------------------------------------------------------------------

def train_bootstrap(out_dir: str | Path, *, epochs: int = DEFAULT_EPOCHS,
                    imgsz: int = DEFAULT_IMGSZ, n_train: int = DEFAULT_N_TRAIN,
                    n_val: int = DEFAULT_N_VAL, seed: int = DEFAULT_SEED,
                    base: str = DEFAULT_BASE, batch: int = DEFAULT_BATCH,
                    tracking_uri: str | None = None, registered_name: str = MODEL_NAME,
                    progress: ProgressCallback | None = None,
                    train_args: Mapping[str, object] | None = None,
                    threads: int | Literal["idle"] | None = None,
                    verbose: bool = False) -> TrainResult:
    """Generate data, train, evaluate, export, log to MLflow and register; see the module doc.

    `train_args` override Ultralytics' training arguments (over DEFAULT_TRAIN_ARGS); the ones
    that keep it offline and on the CPU are fixed. `threads`: torch's CPU threads. None:
    Ultralytics' choice, all cores but one (1 on 2 cores). All cores trained 1.6x faster on an
    idle 2-core machine but 2-4x slower than one thread while another process kept a core busy
    (OpenMP threads wait for the busy core); measured again for issue 16 on a 2-core EPYC VM
    while other processes kept about one core busy: the first epoch took 315 and 451 s with 2
    threads against 87 and 100 s with one (a yolov8n training step: 3.5-5.3 s against
    1.1-1.8 s). "idle": the cores other processes leave idle,
    measured before training and again every epoch (`IdleCores`): all of them on an idle
    machine, fewer while something else runs. `visionguard up` trains its bootstrap that way:
    it trains before Triton starts, and the gateway has nothing to serve until it is done, so
    the stack's own processes leave the cores idle; other load on the machine is measured.
    Each epoch is logged as one line (logger `visionguard.training`, event `training_epoch`).

    Writes `out_dir/data/` (the dataset), `out_dir/train/` (Ultralytics' run: weights/best.pt,
    results.csv), `out_dir/val/` and `out_dir/model.onnx`.
    """
    offline()
    import torch
    import ultralytics
    from mlflow.entities import Metric, Param, RunTag
    from ultralytics.models.yolo.detect import DetectionTrainer

    from export.onnx_export import export_onnx, load_yolo

    report = progress or (lambda _p: None)
    t_start = time.monotonic()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    report(TrainingProgress("data", 0, epochs))
    data_yaml = synthetic_data.generate_dataset(out / "data", n_train=n_train, n_val=n_val,
                                                imgsz=imgsz, seed=seed)
    ds_name = synthetic_data.dataset_name(seed)
    ds_hash = synthetic_data.dataset_hash(data_yaml.parent)
    val_hash = synthetic_data.dataset_hash(data_yaml.parent, "val")
    eval_dataset = f"{ds_name}/val"

    if not tracking_uri:
        raise ValueError("train_bootstrap needs the MLflow tracking URI to log to")
    store = mlflow_store(tracking_uri)
    client = mlflow_client(store)
    exp_id = experiment_id(client, store, EXPERIMENT_NAME)
    params = {"epochs": epochs, "imgsz": imgsz, "seed": seed, "base": base, "batch": batch,
              "n_train": n_train, "n_val": n_val, "dataset_name": ds_name,
              "dataset_hash": ds_hash, "eval_dataset": eval_dataset,
              "eval_dataset_hash": val_hash, "classes": ",".join(synthetic_data.SHAPES),
              "device": "cpu", "threads": threads or "all but one",
              "ultralytics": ultralytics.__version__,
              "torch": torch.__version__, "python": platform.python_version()}
    hyper = {"nbs": batch, **DEFAULT_TRAIN_ARGS, **(train_args or {})}
    params.update({f"train.{k}": v for k, v in hyper.items()})
    run = client.create_run(exp_id, run_name=f"bootstrap-{ds_name}-{imgsz}px-{epochs}ep",
                            tags={"visionguard.kind": "bootstrap", "dataset": ds_name})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        _log_datasets(client, run_id, data_yaml.parent, ds_name, ds_hash, val_hash)

        report(TrainingProgress("train", 0, epochs))
        model = load_yolo(base, seed)  # a .yaml: seeded random weights, trained from scratch
        cores = IdleCores() if threads == "idle" else None
        if cores is not None:
            log.info("training on %d torch threads (%d cores, %d idle)", cores.threads,
                     len(cores.cpus), cores.threads,
                     extra={"event": "training_threads", "threads": cores.threads})
            for event, callback in cores.callbacks().items():
                model.add_callback(event, callback)
        elif threads:
            model.add_callback("on_pretrain_routine_start", _torch_threads(threads))
        model.add_callback("on_fit_epoch_end", _epoch_logger(client, run_id, report, cores))
        t_train = time.monotonic()
        with _no_font_download(), _ultralytics_logging(verbose):
            model.train(trainer=_without_integrations(DetectionTrainer), **{
                **hyper, "data": str(data_yaml), "epochs": epochs, "imgsz": imgsz,
                "batch": batch, "seed": seed, "deterministic": True, "device": "cpu",
                "workers": 0, "amp": False, "plots": False, "val": True, "project": str(out),
                "name": "train", "exist_ok": True, "verbose": verbose})
        train_s = time.monotonic() - t_train
        best = Path(model.trainer.best)
        if not best.exists():
            raise RuntimeError(f"training wrote no checkpoint at {best}")

        report(TrainingProgress("evaluate", epochs, epochs))
        scores = evaluate(best, data_yaml, imgsz=imgsz, batch=batch, project=out,
                          threads=cores.threads if cores is not None else threads,
                          verbose=verbose)
        final = {f"val_{k}": v for k, v in scores.items()}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, epochs) for k, v in final.items()],
                         tags=[RunTag("eval_dataset", eval_dataset),
                               RunTag("eval_dataset_hash", val_hash)])

        report(TrainingProgress("export", epochs, epochs, final))
        with _ultralytics_logging(verbose):
            exported = export_onnx(best, out / "model.onnx", imgsz=imgsz)
        onnx_path = exported.onnx_path
        client.log_artifact(run_id, str(best), MODEL_ARTIFACT_DIR)
        client.log_artifact(run_id, str(onnx_path), MODEL_ARTIFACT_DIR)
        client.log_artifact(run_id, str(data_yaml), "dataset")
        for name in ("results.csv", "args.yaml"):
            if (best.parent.parent / name).exists():
                client.log_artifact(run_id, str(best.parent.parent / name), "training")

        report(TrainingProgress("register", epochs, epochs, final))
        artifact_uri = client.get_run(run_id).info.artifact_uri
        source = f"{artifact_uri}/{MODEL_ARTIFACT_DIR}"
        lineage = {
            "dataset_name": ds_name, "dataset_hash": ds_hash,
            "eval_dataset": eval_dataset, "eval_dataset_hash": val_hash,
            METRIC_MAP50: f"{final[METRIC_MAP50]:.6f}", METRIC_MAP: f"{final[METRIC_MAP]:.6f}",
            "source_checkpoint": f"{source}/best.pt", "onnx": f"{source}/{onnx_path.name}",
            "base": base, "epochs": epochs, "imgsz": imgsz, "seed": seed, "batch": batch,
            "n_train": n_train, "n_val": n_val, "ultralytics": ultralytics.__version__,
            "train_args": json.dumps(hyper, sort_keys=True),
            # The serving contract promotion checks candidates against, and where the
            # evaluation data lives for evaluating later candidates on the same split.
            "class_names": json.dumps({str(k): v for k, v in sorted(exported.names.items())}),
            "stride": exported.stride, "eval_data_yaml": str(data_yaml),
        }
        version, champion = register_version(
            client, registered_name, source=source, run_id=run_id, tags=lineage,
            description=f"{base} trained {epochs} epochs at {imgsz}px on {ds_name}: "
                        f"mAP50 {final[METRIC_MAP50]:.3f}, mAP50-95 {final[METRIC_MAP]:.3f} "
                        f"on {eval_dataset}")
        client.set_tag(run_id, "registered_version", f"{registered_name}/{version}")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    result = TrainResult(run_id=run_id, experiment_id=exp_id, tracking_uri=store.tracking_uri,
                         registered_name=registered_name, version=version, champion=champion,
                         metrics=final, eval_dataset=eval_dataset, dataset_name=ds_name,
                         dataset_hash=ds_hash, best_pt=best, onnx_path=onnx_path,
                         data_yaml=data_yaml, train_s=train_s,
                         total_s=time.monotonic() - t_start)
    report(TrainingProgress("done", epochs, epochs, final))
    return result


def _epoch_logger(client, run_id: str, report: ProgressCallback,
                  cores: IdleCores | None = None):
    """An Ultralytics on_fit_epoch_end callback: the epoch's losses, validation metrics and
    learning rates to the run, at step = epochs completed (as in results.csv); one log line
    per epoch (a terminal's progress bar is not a log); the progress to `report`."""
    from mlflow.entities import Metric

    def on_fit_epoch_end(trainer) -> None:
        epoch = trainer.epoch + 1
        if epoch > trainer.epochs:  # Ultralytics' last validation of best.pt; we run our own
            return
        values = {**trainer.label_loss_items(trainer.tloss, prefix="train"),
                  **(trainer.metrics or {}), **trainer.lr,
                  "time/epoch_s": getattr(trainer, "epoch_time", None) or 0.0}
        values = {_metric_key(k): float(v) for k, v in values.items()
                  if v is not None and math.isfinite(float(v))}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])
        import torch

        started = getattr(trainer, "train_time_start", None)
        progress = TrainingProgress("train", epoch, trainer.epochs, values,
                                    train_s=time.time() - started if started else 0.0,
                                    threads=cores.threads if cores else torch.get_num_threads())
        log.info("bootstrap training %s: mAP50 %.3f, mAP50-95 %.3f, %.0f s this epoch, "
                 "%d threads", progress.describe(), values.get("val/mAP50", float("nan")),
                 values.get("val/mAP50-95", float("nan")), values.get("time/epoch_s", 0.0),
                 progress.threads, extra={
                     "event": "training_epoch", "epoch": epoch, "epochs": trainer.epochs,
                     "mAP50": values.get("val/mAP50"), "mAP50_95": values.get("val/mAP50-95"),
                     "epoch_s": round(values.get("time/epoch_s", 0.0), 2),
                     "seconds_left": round(progress.seconds_left or 0.0, 1),
                     "threads": progress.threads})
        report(progress)

    return on_fit_epoch_end


def _log_datasets(client, run_id: str, root: Path, name: str, digest: str,
                  val_digest: str) -> None:
    """The run's inputs: the training data and the evaluation split, by name and digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps({"uri": root.as_uri()})
    inputs = [
        DatasetInput(Dataset(name, digest[:36], "local", source),
                     [InputTag("mlflow.data.context", "training")]),
        DatasetInput(Dataset(f"{name}/val", val_digest[:36], "local", source),
                     [InputTag("mlflow.data.context", "evaluation")]),
    ]
    client.log_inputs(run_id, datasets=inputs)


# --- the CLI's side ----------------------------------------------------------------------------

def train_command(settings: Settings, out_dir: Path | None = None, *, epochs: int = DEFAULT_EPOCHS,
                  imgsz: int = DEFAULT_IMGSZ, n_train: int = DEFAULT_N_TRAIN,
                  n_val: int = DEFAULT_N_VAL, seed: int = DEFAULT_SEED,
                  base: str = DEFAULT_BASE, batch: int = DEFAULT_BATCH,
                  registered_name: str = MODEL_NAME,
                  threads: int | Literal["idle"] | None = None, verbose: bool = False,
                  console=None, progress: ProgressCallback | None = None) -> TrainResult:
    """`visionguard train`: train_bootstrap with a progress bar over epochs and a summary.

    `out_dir` defaults to `<runtime dir>/bootstrap`. `progress` also gets every report. On a
    console that is not a terminal (a log file, CI) the bar draws nothing: each epoch is
    printed as a line instead.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = console or Console()
    out = Path(out_dir) if out_dir else settings.bootstrap_dir
    stages = {"data": "generating images", "train": "training", "evaluate": "evaluating best.pt",
              "export": "exporting ONNX", "register": "registering", "done": "done"}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[scores]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(stages["data"], total=epochs, scores="")

        def on_progress(p: TrainingProgress) -> None:
            scores = ""
            if "val/mAP50" in p.metrics:
                scores = (f"mAP50 {p.metrics['val/mAP50']:.3f}  "
                          f"mAP50-95 {p.metrics['val/mAP50-95']:.3f}")
            bar.update(task, completed=p.epoch, description=stages.get(p.stage, p.stage),
                       **({"scores": scores} if scores else {}))
            if not console.is_terminal and (p.stage != "train" or p.epoch):
                console.print(f"training: {p.describe()}" + (f"  {scores}" if scores else ""))
            if progress is not None:
                progress(p)

        result = train_bootstrap(out, epochs=epochs, imgsz=imgsz, n_train=n_train, n_val=n_val,
                                 seed=seed, base=base, batch=batch,
                                 tracking_uri=store_for(settings).tracking_uri,
                                 registered_name=registered_name, progress=on_progress,
                                 threads=threads, verbose=verbose)
    m = result.metrics
    console.print(f"[green]trained[/] {base} {epochs} epochs at {imgsz}px in "
                  f"{result.train_s / 60:.1f} min: mAP50 {m[METRIC_MAP50]:.3f}, "
                  f"mAP50-95 {m[METRIC_MAP]:.3f} on {result.eval_dataset}")
    champion = " (champion)" if result.champion == result.version else (
        f"; champion stays version {result.champion}")
    console.print(f"registered {result.registered_name} version {result.version}{champion} "
                  f"in {result.tracking_uri} (run {result.run_id})")
    console.print(f"checkpoint {result.best_pt}\nONNX       {result.onnx_path}")
    return result
