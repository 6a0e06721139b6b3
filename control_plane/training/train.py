"""Training with Ultralytics on a dataset version, logged to MLflow and registered.

Two ways in, one pipeline (`_train_and_register`: train, evaluate, export ONNX, log, register):

- `train_bootstrap`: a machine that cannot download weights still gets a detector whose
  detections mean something. The generated shapes are imported as a dataset version
  (`control_plane.datasets.synthetic`, what `visionguard data synth` does; an existing version
  of the same arguments is reused), and a YOLO architecture is trained on it from scratch on
  the CPU. The first version of the registered model becomes `champion`; later ones wait for a
  promotion.
- `train_on_dataset` (`visionguard train --data NAME[@VERSION]`): a team's own dataset
  version, refused unless it passes validation (`DatasetStore.validated`), fine-tuned from the
  champion's checkpoint when the classes match (a class-set change is refused unless the
  version goes to a new model), from a checkpoint file or from an architecture. Its version
  never takes an alias: it serves once a release engineer promotes it.

Either way the run names the exact data it saw (the version's MLflow dataset entities, name and
content hash) and so does the registered version (`dataset` = NAME@VERSION, `dataset_hash`).
Checkpoints are read only through `export.checkpoint` (weights-only, allow-listed). How the
trained model is evaluated is the caller's choice (`Evaluator`): Ultralytics' validator by
default; the CLI passes the COCO cross-check of `control_plane.evaluation.coco`, a layer above.

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
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping, Protocol

from control_plane.datasets import synthetic_data
from control_plane.datasets.layout import DatasetVersion
from control_plane.mlflow_store import (CHAMPION, experiment_id, mlflow_client, offline,
                                        store_for)
from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings
from control_plane.training.errors import BaseModelError, ClassSetChanged
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
# The bootstrap validates every 6th epoch and the last (6, 12, 18), not each one: at these
# defaults a validation of the 150 val images cost about 3 s of a 30-34 s epoch, and the
# pipeline evaluates best.pt once more after training anyway. Training on a team's data keeps
# a validation per epoch (the curves a release engineer reads).
DEFAULT_BOOTSTRAP_VAL_EVERY = 6
# Ultralytics' training arguments we change (`train_args` overrides any of its arguments).
# Also nbs = batch: no gradient accumulation up to 64 images, so 4x the optimizer steps.
DEFAULT_TRAIN_ARGS: dict[str, object] = {
    "optimizer": "AdamW",
    "lr0": 0.003,  # 2.4x its automatic choice for 4 classes: better with this few steps
    "warmup_epochs": 1,  # (its floor of 100 warmup iterations still applies)
    "close_mosaic": 6,  # the last third without mosaic: mAP jumps when it stops
}

# Over DEFAULT_TRAIN_ARGS when training starts from trained weights (the champion, a .pt).
# Issue 13's transcript, 8 epochs from the bootstrap champion (val mAP50-95 0.639 on that
# data) on 240 new images: with the defaults above, Ultralytics' warmup (100 iterations at
# least, the bias learning rate falling from 0.1) wrecked the trained head (mAP50 0.586 after
# epoch 1, 0.061 after epoch 2) and it ended at mAP50-95 0.628, below where it started; with
# these mAP50 never fell below its 0.761 after epoch 1, and it ended at mAP50-95 0.649.
FINE_TUNE_TRAIN_ARGS: dict[str, object] = {"lr0": 0.001, "warmup_epochs": 0, "warmup_bias_lr": 0.0}

EXPERIMENT_NAME = "visionguard-bootstrap"
DATASET_EXPERIMENT_NAME = "visionguard-training"  # runs of `visionguard train --data`
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MODEL_ARTIFACT_DIR = "model"  # in the run: best.pt and model.onnx; the version's source
METRIC_MAP50 = "val_mAP50"
METRIC_MAP = "val_mAP50-95"

log = logging.getLogger("visionguard.training")


# --- progress ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingProgress:
    """What training reports: a stage, and after each epoch its metrics."""

    stage: str  # "data" or "dataset", "train", "evaluate", "export", "register", "done"
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
                "dataset": "validating the dataset",
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
    dataset_hash: str  # the version's content hash (control_plane.datasets.layout)
    best_pt: Path
    onnx_path: Path
    data_yaml: Path
    train_s: float  # wall time of the Ultralytics training alone
    total_s: float
    dataset_ref: str = ""  # NAME@VERSION
    base: str = ""  # what training started from: an architecture, a checkpoint, the champion


class Evaluator(Protocol):
    """Scores the trained checkpoint on the version's val split, may log artifacts to the run,
    and returns at least Ultralytics' `mAP50` and `mAP50-95` (what promotion gates compare);
    every value is logged as `val_<key>`."""

    def __call__(self, weights: Path, version: DatasetVersion, *, imgsz: int, batch: int,
                 work_dir: Path, threads: int | None, client, run_id: str
                 ) -> Mapping[str, float]: ...


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


def _trainer(val_every: int) -> type:
    """Ultralytics' detection trainer, offline (`_without_integrations`), validating every
    `val_every`-th epoch and the last (1: every epoch, Ultralytics' `val=True`), and without the
    validation of best.pt after the last epoch: the pipeline's `evaluate` step scores best.pt
    itself, so that one would be the same work twice. best.pt and last.pt are still stripped
    of their optimizer state as Ultralytics does then.

    best.pt is the validated epoch with the best fitness, as with a validation per epoch.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import strip_optimizer

    class Trainer(_without_integrations(DetectionTrainer)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback("on_train_epoch_start", _validate_every(val_every))

        def final_eval(self) -> None:
            last = strip_optimizer(self.last) if self.last.exists() else {}
            if self.best.exists():
                strip_optimizer(self.best, updates={"train_results": last.get("train_results")})

    Trainer.__name__ = Trainer.__qualname__ = "OfflineDetectionTrainer"
    return Trainer


def _validate_every(val_every: int):
    """An on_train_epoch_start callback: validate this epoch when it is a `val_every`-th one
    (Ultralytics validates the last epoch whatever `val` says). An epoch that does not validate
    has no fitness: Ultralytics would keep the last one, and its save_model would then take the
    unvalidated weights for best.pt (it saves best.pt when the fitness equals the best)."""

    def on_train_epoch_start(trainer) -> None:
        trainer.args.val = (trainer.epoch + 1) % val_every == 0
        if not trainer.args.val:
            trainer.fitness = None

    return on_train_epoch_start


def _validated(epoch: int, epochs: int, val_every: int) -> bool:
    """Whether epoch `epoch` (1-based) of `epochs` ran a validation (see `_trainer`)."""
    return epoch % val_every == 0 or epoch >= epochs


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
    `sample_s`), then at the start of each epoch and at the first batch after every `every_s`
    over the time since the last measure, and torch's thread count follows
    (torch.set_num_threads between batches). A core counts as idle when at least 0.7 of it
    was. Where /proc/stat cannot be read, every core is taken.
    """

    def __init__(self, sample_s: float = 1.0, every_s: float = 10.0) -> None:
        self.every_s = every_s
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
        at each epoch's start and at the first batch after every `every_s`."""

        def on_pretrain_routine_start(_trainer) -> None:
            import torch

            torch.set_num_threads(self.threads)

        def remeasure(_trainer) -> None:
            import torch

            threads = self._measure()
            if threads != self.threads:
                log.info("torch threads %d -> %d (other processes use %d of %d cores)",
                         self.threads, threads, len(self.cpus) - threads, len(self.cpus),
                         extra={"event": "training_threads", "threads": threads})
                self.threads = threads
                torch.set_num_threads(threads)

        def on_train_batch_start(trainer) -> None:
            if self._last is not None and time.monotonic() - self._last[0] >= self.every_s:
                remeasure(trainer)

        return {"on_pretrain_routine_start": on_pretrain_routine_start,
                "on_train_epoch_start": remeasure,
                "on_train_batch_start": on_train_batch_start}


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
                     tags: Mapping[str, str], description: str = "",
                     claim_champion: bool = True) -> tuple[str, str | None]:
    """Add a version of `name` (created if missing); `champion` goes to it only if no version
    holds it yet and `claim_champion`. Returns (version, the version holding `champion`)."""
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
    if champion is None and claim_champion:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        champion = mv.version
    return str(mv.version), None if champion is None else str(champion)


def ultralytics_evaluator(weights: Path, version: DatasetVersion, *, imgsz: int, batch: int,
                          work_dir: Path, threads: int | None, client, run_id: str
                          ) -> dict[str, float]:
    """The default `Evaluator`: `evaluate` (Ultralytics' validator) on the version's val split;
    logs nothing beyond the metrics the pipeline logs."""
    return evaluate(weights, version.data_yaml, imgsz=imgsz, batch=batch, project=work_dir,
                    threads=threads)


# --- training ----------------------------------------------------------------------------------

def train_bootstrap(out_dir: str | Path, *, epochs: int = DEFAULT_EPOCHS,
                    imgsz: int = DEFAULT_IMGSZ, n_train: int = DEFAULT_N_TRAIN,
                    n_val: int = DEFAULT_N_VAL, seed: int = DEFAULT_SEED,
                    base: str = DEFAULT_BASE, batch: int = DEFAULT_BATCH,
                    tracking_uri: str | None = None, registered_name: str = MODEL_NAME,
                    progress: ProgressCallback | None = None,
                    train_args: Mapping[str, object] | None = None,
                    threads: int | Literal["idle"] | None = None,
                    val_every: int = DEFAULT_BOOTSTRAP_VAL_EVERY,
                    verbose: bool = False, settings: Settings | None = None) -> TrainResult:
    """Import the generated shapes as a dataset version, train, evaluate, export, log to MLflow
    and register; see the module doc.

    The version goes to `settings.datasets_dir` (`visionguard data list` shows it); without
    `settings`, to `out_dir/datasets`. MLflow: `tracking_uri`, else the settings' store.
    `train_args` override Ultralytics' training arguments (over DEFAULT_TRAIN_ARGS); the ones
    that keep it offline and on the CPU are fixed. `val_every`: validate every n-th epoch and
    the last (1: every epoch). `threads`: torch's CPU threads. None:
    Ultralytics' choice, all cores but one (1 on 2 cores). All cores trained 1.6x faster on an
    idle 2-core machine but 2-4x slower than one thread while another process kept a core busy
    (OpenMP threads wait for the busy core); measured again for issue 16 on a 2-core EPYC VM
    while other processes kept about one core busy: the first epoch took 315 and 451 s with 2
    threads against 87 and 100 s with one (a yolov8n training step: 3.5-5.3 s against
    1.1-1.8 s). "idle": the cores other processes leave idle,
    measured before training, at each epoch and every 10 s (`IdleCores`): all of them on an idle
    machine, fewer while something else runs. `visionguard up` trains its bootstrap that way:
    it trains before Triton starts, and the gateway has nothing to serve until it is done, so
    the stack's own processes leave the cores idle; other load on the machine is measured.
    Each epoch is logged as one line (logger `visionguard.training`, event `training_epoch`).

    Writes `out_dir/train/` (Ultralytics' run: weights/best.pt, results.csv), `out_dir/val/`
    and `out_dir/model.onnx`.
    """
    offline()
    from control_plane.datasets.store import DatasetStore
    from control_plane.datasets.synthetic import import_synthetic, synthetic_version

    from export.onnx_export import load_yolo

    report = progress or (lambda _p: None)
    t_start = time.monotonic()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if settings is None:
        if not tracking_uri:
            raise ValueError("train_bootstrap needs settings or the MLflow tracking URI")
        settings = Settings(runtime_dir=out)
    if tracking_uri:  # the dataset's MLflow record goes to the same store as the run
        settings = replace(settings, mlflow_tracking_uri=tracking_uri)

    report(TrainingProgress("data", 0, epochs))
    datasets = DatasetStore(settings)
    generated = dict(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    version = (synthetic_version(datasets, **generated)
               or import_synthetic(datasets, **generated).version)

    hyper = {"nbs": batch, **DEFAULT_TRAIN_ARGS, **(train_args or {})}
    return _train_and_register(
        settings, version, load_yolo(base, seed),  # a .yaml: seeded random weights
        kind="bootstrap", base=base, out=out, epochs=epochs, imgsz=imgsz, batch=batch,
        seed=seed, hyper=hyper, threads=threads, verbose=verbose, report=report,
        val_every=val_every,
        evaluate=ultralytics_evaluator, registered_name=registered_name, claim_champion=True,
        experiment=EXPERIMENT_NAME, extra={"n_train": n_train, "n_val": n_val},
        t_start=t_start)


def train_on_dataset(settings: Settings, ref: str, *, base: str | None = None,
                     epochs: int = DEFAULT_EPOCHS, imgsz: int | None = None,
                     batch: int = DEFAULT_BATCH, seed: int = DEFAULT_SEED,
                     model_name: str | None = None, out_dir: str | Path | None = None,
                     train_args: Mapping[str, object] | None = None,
                     threads: int | Literal["idle"] | None = None, verbose: bool = False,
                     progress: ProgressCallback | None = None,
                     evaluate: Evaluator | None = None) -> TrainResult:
    """`visionguard train --data REF`: train on dataset version `ref` (NAME or NAME@VERSION)
    and register a version of `model_name` (default: the served model) that takes no alias.

    Refused before anything is trained: a dataset that fails validation (`DatasetInvalid`) or
    was modified after import (`DatasetModified`); classes other than those the registered
    model serves (`ClassSetChanged`: give a `model_name` with no versions to start a new
    model); a `base` that is not usable (`BaseModelError`). `base`: "champion" (fine-tune its
    checkpoint; the default when there is one, else DEFAULT_BASE from scratch), a `.pt`
    checkpoint, or an Ultralytics architecture name (`yolov8n.yaml`). A base whose classes
    differ from the dataset's keeps its backbone and gets a new head (Ultralytics transfers
    the weights whose shapes match). `imgsz` defaults to the base's training size. `evaluate`
    scores the trained model (default `ultralytics_evaluator`). Ultralytics' run goes to
    `out_dir` (default `<runtime_dir>/training/NAME-VERSION-*`).
    """
    offline()
    from control_plane.datasets.store import DatasetStore

    report = progress or (lambda _p: None)
    t_start = time.monotonic()
    report(TrainingProgress("dataset", 0, epochs))
    version, validation = DatasetStore(settings, log_to_mlflow=False).validated(ref)
    client = mlflow_client(store_for(settings))
    target = model_name or settings.model_name
    if not MODEL_NAME_PATTERN.fullmatch(target):
        raise ControlPlaneError(f"model name {target!r}: 1-100 letters, digits, '.', '_' or "
                                "'-', starting with a letter or digit (it names a folder in "
                                "Triton's repository)")
    _check_class_set(client, target, version, named=model_name is not None)

    if out_dir is None:
        (settings.runtime_dir / "training").mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=f"{version.name}-{version.version}-",
                                    dir=settings.runtime_dir / "training"))
    else:
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
    start = _base_model(client, settings, base, target, out, seed)
    imgsz = imgsz or start.imgsz or DEFAULT_IMGSZ
    if start.classes is not None and start.classes != version.classes:
        log.info("%s has classes %s, the dataset %s: training a new head", start.label,
                 start.classes, version.classes,
                 extra={"event": "training_new_head", "base": start.label})
    fine_tune = FINE_TUNE_TRAIN_ARGS if start.classes is not None else {}
    hyper = {"nbs": batch, **DEFAULT_TRAIN_ARGS, **fine_tune, **(train_args or {})}
    extra = {"parent": start.parent or "", "dataset_validation": validation.summary()}
    return _train_and_register(
        settings, version, start.model, kind="dataset", base=start.label, out=out,
        epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, hyper=hyper, threads=threads,
        verbose=verbose, report=report, evaluate=evaluate or ultralytics_evaluator,
        registered_name=target, claim_champion=False, experiment=DATASET_EXPERIMENT_NAME,
        extra=extra, t_start=t_start, validation=validation)


def _registered_classes(client, name: str) -> tuple[list[str] | None, str | None]:
    """The classes registered model `name` serves (its champion's `class_names`, else its
    latest version's) and that version; (None, None) for a model without versions."""
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return None, None
    aliases = client.get_registered_model(name).aliases or {}
    number = str(aliases.get(CHAMPION) or max(int(v.version) for v in versions))
    tags = client.get_model_version(name, number).tags or {}
    if "class_names" not in tags:
        return None, number
    names = json.loads(tags["class_names"])
    return [names[k] for k in sorted(names, key=int)], number


def _check_class_set(client, target: str, version: DatasetVersion, *, named: bool) -> None:
    classes, number = _registered_classes(client, target)
    if classes is None or classes == version.classes:
        return
    how = (f"model {target!r} already has versions: give --model-name a name without versions"
           if named else "to train a new model on it, give it a name: --model-name NAME")
    if sorted(classes) == sorted(version.classes):  # the same classes, numbered otherwise
        how = (f"the classes are the same in another order: import the data again with "
               f"--classes {','.join(classes)} to number them as the model does; or {how}")
    raise ClassSetChanged(
        f"dataset {version.ref} has the classes {version.classes}, but {target!r} version "
        f"{number} serves {classes}: a version trained on it would change what the served "
        f"class ids mean; {how}", model=target, model_version=number, model_classes=classes,
        dataset=version.ref, dataset_classes=version.classes)


@dataclass(frozen=True)
class _Base:
    """What training starts from."""

    model: object  # ultralytics.YOLO
    label: str  # for params, tags and the summary
    imgsz: int | None  # the size it was trained at, if known
    classes: list[str] | None  # its class names (None: an untrained architecture)
    parent: str | None = None  # "MODEL/VERSION" when it is a registered version


def _base_model(client, settings: Settings, base: str | None, target: str, out: Path,
                seed: int) -> _Base:
    """`base` loaded: the champion of `target` (or, for a new model, of the served model),
    a checkpoint file, or an Ultralytics architecture; `BaseModelError` when unusable."""
    from mlflow.exceptions import MlflowException

    from export.checkpoint import CheckpointError
    from export.onnx_export import load_yolo

    if base in (None, "champion"):
        for name in dict.fromkeys((target, settings.model_name)):
            champion = _champion(client, name)
            if champion is not None:
                break
        else:
            if base == "champion":
                raise BaseModelError(f"no champion of {target!r} to fine-tune from: pass "
                                     f"--from a checkpoint or an architecture ({DEFAULT_BASE})")
            return _architecture_base(DEFAULT_BASE, seed)
        label = f"champion {champion.name} version {champion.version}"
        try:
            path = Path(client.download_artifacts(champion.run_id,
                                                  f"{MODEL_ARTIFACT_DIR}/best.pt", str(out)))
        except MlflowException as exc:
            raise BaseModelError(f"the {label} has no {MODEL_ARTIFACT_DIR}/best.pt to "
                                 f"fine-tune ({exc.message}); pass --from a checkpoint or "
                                 f"an architecture") from None
        try:
            yolo = load_yolo(path)  # export.checkpoint: weights-only, allow-listed
        except CheckpointError as exc:
            raise BaseModelError(f"the {label}'s checkpoint is refused: {exc}") from None
        imgsz = (champion.tags or {}).get("imgsz")
        return _Base(yolo, label, int(imgsz) if imgsz else _trained_size(yolo),
                     [yolo.names[i] for i in sorted(yolo.names)],
                     f"{champion.name}/{champion.version}")
    if base.endswith((".yaml", ".yml")):
        return _architecture_base(base, seed)
    if base.endswith(".pt"):
        path = Path(base).expanduser().resolve()
        if not path.is_file():
            raise BaseModelError(f"--from {base}: no such checkpoint")
        try:
            yolo = load_yolo(path)
        except CheckpointError as exc:
            raise BaseModelError(str(exc)) from None
        return _Base(yolo, str(path), _trained_size(yolo),
                     [yolo.names[i] for i in sorted(yolo.names)])
    raise BaseModelError(f"--from {base!r}: expected champion, a .pt checkpoint or an "
                         f"Ultralytics architecture such as {DEFAULT_BASE}")


def _champion(client, name: str):
    """The model version holding `champion` in registered model `name`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _trained_size(yolo) -> int | None:
    args = getattr(yolo, "ckpt", None) or {}
    size = (args.get("train_args") or {}).get("imgsz")
    return int(size) if isinstance(size, int) else None


def _architecture_base(name: str, seed: int) -> _Base:
    """One of Ultralytics' own architectures by name (`yolov8n.yaml`), read from its package.

    Not a file of the user's: Ultralytics evaluates parts of an architecture file as code
    (its `activation`, its layer names), and looks a bare name up in the working directory
    first; the path inside the package leaves no room for either.
    """
    import ultralytics

    from export.onnx_export import load_yolo

    models = Path(ultralytics.__file__).parent / "cfg" / "models"
    # Ultralytics reads yolov8n.yaml as yolov8.yaml at scale n.
    unscaled = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(name).stem) + ".yaml"
    found = sorted(models.rglob(unscaled)) if Path(name).name == name else []
    if not found:
        raise BaseModelError(f"--from {name}: not one of Ultralytics' architectures (such as "
                             f"{DEFAULT_BASE}); architecture files of your own are not read")
    return _Base(load_yolo(found[0].parent / name, seed), name, None, None)


def _train_and_register(settings: Settings, version: DatasetVersion, model, *, kind: str,
                        base: str, out: Path, epochs: int, imgsz: int, batch: int, seed: int,
                        hyper: Mapping[str, object], threads: int | Literal["idle"] | None,
                        verbose: bool, report: ProgressCallback, evaluate: Evaluator,
                        registered_name: str, claim_champion: bool, experiment: str,
                        extra: Mapping[str, object], t_start: float,
                        validation=None, val_every: int = 1) -> TrainResult:
    """One MLflow run: the dataset as its input, Ultralytics' training with per-epoch metrics
    (validation metrics on the epochs that validated: every `val_every`-th and the last), the
    evaluation, the serving ONNX, and a registered version carrying the lineage."""
    import torch
    import ultralytics
    from mlflow.entities import Metric, Param, RunTag

    from control_plane.datasets.lineage import mlflow_inputs
    from export.onnx_export import export_onnx

    store = store_for(settings)
    client = mlflow_client(store)
    exp_id = experiment_id(client, store, experiment)
    eval_dataset = f"{version.name}/val"  # the name of the run's evaluation input
    # The file-tree hash of the val split, which `models register`, the accuracy gate and drift
    # compute for any data.yaml: versions evaluated on the same files compare like for like.
    eval_hash = synthetic_data.dataset_hash(version.path, "val")
    params = {"kind": kind, "epochs": epochs, "imgsz": imgsz, "seed": seed, "base": base,
              "batch": batch, "dataset": version.ref, "dataset_name": version.name,
              "dataset_hash": version.hash, "eval_dataset": eval_dataset,
              "eval_dataset_hash": eval_hash, "classes": ",".join(version.classes),
              "device": "cpu", "threads": threads or "all but one", "val_every": val_every,
              "ultralytics": ultralytics.__version__, "torch": torch.__version__,
              "python": platform.python_version(), **extra}
    params.update({f"train.{k}": v for k, v in hyper.items()})
    prefix = "bootstrap" if kind == "bootstrap" else "train"
    run = client.create_run(exp_id, run_name=f"{prefix}-{version.ref}-{imgsz}px-{epochs}ep",
                            tags={"visionguard.kind": kind, "dataset": version.ref})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        client.log_inputs(run_id, datasets=mlflow_inputs(version))

        report(TrainingProgress("train", 0, epochs))
        cores = IdleCores() if threads == "idle" else None
        if cores is not None:
            log.info("training on %d torch threads (%d cores, %d idle)", cores.threads,
                     len(cores.cpus), cores.threads,
                     extra={"event": "training_threads", "threads": cores.threads})
            for event, callback in cores.callbacks().items():
                model.add_callback(event, callback)
        elif threads:
            model.add_callback("on_pretrain_routine_start", _torch_threads(threads))
        what = "bootstrap training" if kind == "bootstrap" else f"training on {version.ref}"
        model.add_callback("on_fit_epoch_end",
                           _epoch_logger(client, run_id, report, cores, what, val_every))
        t_train = time.monotonic()
        with _no_font_download(), _ultralytics_logging(verbose):
            model.train(trainer=_trainer(val_every), **{
                **hyper, "data": str(version.data_yaml), "epochs": epochs, "imgsz": imgsz,
                "batch": batch, "seed": seed, "deterministic": True, "device": "cpu",
                "workers": 0, "amp": False, "plots": False, "val": True, "project": str(out),
                "name": "train", "exist_ok": True, "verbose": verbose})
        train_s = time.monotonic() - t_train
        best = Path(model.trainer.best)
        if not best.exists():
            raise RuntimeError(f"training wrote no checkpoint at {best}")

        report(TrainingProgress("evaluate", epochs, epochs))
        with _ultralytics_logging(verbose):
            scores = evaluate(best, version, imgsz=imgsz, batch=batch, work_dir=out,
                              threads=cores.threads if cores is not None else (
                                  threads if isinstance(threads, int) else None),
                              client=client, run_id=run_id)
        final = {f"val_{k}": float(v) for k, v in scores.items()}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, epochs) for k, v in final.items()],
                         tags=[RunTag("eval_dataset", eval_dataset),
                               RunTag("eval_dataset_hash", eval_hash)])

        report(TrainingProgress("export", epochs, epochs, final))
        with _ultralytics_logging(verbose):
            exported = export_onnx(best, out / "model.onnx", imgsz=imgsz)
        onnx_path = exported.onnx_path
        client.log_artifact(run_id, str(best), MODEL_ARTIFACT_DIR)
        client.log_artifact(run_id, str(onnx_path), MODEL_ARTIFACT_DIR)
        client.log_artifact(run_id, str(version.data_yaml), "dataset")
        if validation is not None:  # the gate this training passed
            client.log_dict(run_id, validation.as_dict(examples=10), "dataset/validation.json")
        for name in ("results.csv", "args.yaml"):
            if (best.parent.parent / name).exists():
                client.log_artifact(run_id, str(best.parent.parent / name), "training")

        report(TrainingProgress("register", epochs, epochs, final))
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
        lineage = {
            "dataset": version.ref, "dataset_name": version.name,
            "dataset_version": version.version, "dataset_hash": version.hash,
            "eval_dataset": eval_dataset, "eval_dataset_hash": eval_hash,
            METRIC_MAP50: f"{final[METRIC_MAP50]:.6f}", METRIC_MAP: f"{final[METRIC_MAP]:.6f}",
            "source_checkpoint": f"{source}/best.pt", "onnx": f"{source}/{onnx_path.name}",
            "base": base, "epochs": epochs, "imgsz": imgsz, "seed": seed, "batch": batch,
            "ultralytics": ultralytics.__version__,
            "train_args": json.dumps(hyper, sort_keys=True),
            # The serving contract promotion checks candidates against, and where the
            # evaluation data lives for evaluating later candidates on the same split.
            "class_names": json.dumps({str(k): v for k, v in sorted(exported.names.items())}),
            "stride": exported.stride, "eval_data_yaml": str(version.data_yaml),
            **{k: v for k, v in extra.items() if k != "dataset_validation" and v != ""},
        }
        version_number, champion = register_version(
            client, registered_name, source=source, run_id=run_id, tags=lineage,
            claim_champion=claim_champion,
            description=f"{base} trained {epochs} epochs at {imgsz}px on {version.ref}: "
                        f"mAP50 {final[METRIC_MAP50]:.3f}, mAP50-95 {final[METRIC_MAP]:.3f} "
                        f"on {eval_dataset}")
        client.set_tag(run_id, "registered_version", f"{registered_name}/{version_number}")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    result = TrainResult(run_id=run_id, experiment_id=exp_id, tracking_uri=store.tracking_uri,
                         registered_name=registered_name, version=version_number,
                         champion=champion, metrics=final, eval_dataset=eval_dataset,
                         dataset_name=version.name, dataset_hash=version.hash, best_pt=best,
                         onnx_path=onnx_path, data_yaml=version.data_yaml, train_s=train_s,
                         total_s=time.monotonic() - t_start, dataset_ref=version.ref, base=base)
    report(TrainingProgress("done", epochs, epochs, final))
    return result


def _epoch_logger(client, run_id: str, report: ProgressCallback,
                  cores: IdleCores | None = None, what: str = "bootstrap training",
                  val_every: int = 1):
    """An Ultralytics on_fit_epoch_end callback: the epoch's losses, validation metrics (on an
    epoch that validated, see `_trainer`; otherwise Ultralytics still holds the last ones) and
    learning rates to the run, at step = epochs completed (as in results.csv); one log line
    per epoch (a terminal's progress bar is not a log); the progress to `report`."""
    from mlflow.entities import Metric

    def on_fit_epoch_end(trainer) -> None:
        epoch = trainer.epoch + 1
        if epoch > trainer.epochs:  # a validation of best.pt after training; we run our own
            return
        validated = _validated(epoch, trainer.epochs, val_every)
        values = {**trainer.label_loss_items(trainer.tloss, prefix="train"),
                  **((trainer.metrics or {}) if validated else {}), **trainer.lr,
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
        scores = (f"mAP50 {values.get('val/mAP50', math.nan):.3f}, mAP50-95 "
                  f"{values.get('val/mAP50-95', math.nan):.3f}" if validated
                  else f"not validated (one epoch in {val_every} is)")
        log.info("%s %s: %s, %.0f s this epoch, %d threads", what, progress.describe(), scores,
                 values.get("time/epoch_s", 0.0), progress.threads, extra={
                     "event": "training_epoch", "epoch": epoch, "epochs": trainer.epochs,
                     "mAP50": values.get("val/mAP50"), "mAP50_95": values.get("val/mAP50-95"),
                     "epoch_s": round(values.get("time/epoch_s", 0.0), 2),
                     "seconds_left": round(progress.seconds_left or 0.0, 1),
                     "threads": progress.threads})
        report(progress)

    return on_fit_epoch_end


# --- the CLI's side ----------------------------------------------------------------------------

@contextlib.contextmanager
def progress_bar(console, epochs: int, also: ProgressCallback | None = None
                 ) -> Iterator[ProgressCallback]:
    """A rich progress bar over epochs, fed by the callback it yields. On a console that is not
    a terminal (a log file, CI) the bar draws nothing: each epoch is printed as a line instead.
    `also` gets every report too."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    stages = {"data": "generating images", "dataset": "validating the dataset",
              "train": "training", "evaluate": "evaluating best.pt", "export": "exporting ONNX",
              "register": "registering", "done": "done"}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[scores]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=epochs, scores="")

        def on_progress(p: TrainingProgress) -> None:
            scores = ""
            if "val/mAP50" in p.metrics:
                scores = (f"mAP50 {p.metrics['val/mAP50']:.3f}  "
                          f"mAP50-95 {p.metrics['val/mAP50-95']:.3f}")
            bar.update(task, completed=p.epoch, description=stages.get(p.stage, p.stage),
                       **({"scores": scores} if scores else {}))
            if not console.is_terminal and (p.stage != "train" or p.epoch):
                console.print(f"training: {p.describe()}" + (f"  {scores}" if scores else ""))
            if also is not None:
                also(p)

        yield on_progress


def train_command(settings: Settings, out_dir: Path | None = None, *, data: str | None = None,
                  base: str | None = None, model_name: str | None = None,
                  epochs: int = DEFAULT_EPOCHS, imgsz: int | None = None,
                  n_train: int = DEFAULT_N_TRAIN, n_val: int = DEFAULT_N_VAL,
                  seed: int = DEFAULT_SEED, batch: int = DEFAULT_BATCH,
                  registered_name: str = MODEL_NAME,
                  threads: int | Literal["idle"] | None = None, verbose: bool = False,
                  console=None, progress: ProgressCallback | None = None,
                  evaluate: Evaluator | None = None) -> TrainResult:
    """`visionguard train`: with `data`, `train_on_dataset` (`base`, `model_name`, `evaluate`);
    without, `train_bootstrap` (`n_train`, `n_val`, `registered_name`; output in `out_dir`,
    default `<runtime dir>/bootstrap`); a progress bar over epochs, then a summary."""
    from rich.console import Console

    console = console or Console()
    with progress_bar(console, epochs, progress) as on_progress:
        if data is not None:
            result = train_on_dataset(settings, data, base=base, epochs=epochs, imgsz=imgsz,
                                      batch=batch, seed=seed, model_name=model_name,
                                      out_dir=out_dir, threads=threads, verbose=verbose,
                                      progress=on_progress, evaluate=evaluate)
        else:
            result = train_bootstrap(out_dir or settings.bootstrap_dir, epochs=epochs,
                                     imgsz=imgsz or DEFAULT_IMGSZ, n_train=n_train,
                                     n_val=n_val, seed=seed, base=DEFAULT_BASE, batch=batch,
                                     tracking_uri=store_for(settings).tracking_uri,
                                     registered_name=registered_name, progress=on_progress,
                                     threads=threads, verbose=verbose, settings=settings)
    m = result.metrics
    console.print(f"[green]trained[/] {result.base} {epochs} epochs on {result.dataset_ref} in "
                  f"{result.train_s / 60:.1f} min: mAP50 {m[METRIC_MAP50]:.3f}, "
                  f"mAP50-95 {m[METRIC_MAP]:.3f} on {result.eval_dataset}")
    if "val_coco_mAP50-95" in m:
        console.print(f"COCO evaluator on the same predictions: mAP50 {m['val_coco_mAP50']:.3f}, "
                      f"mAP50-95 {m['val_coco_mAP50-95']:.3f}")
    if result.champion == result.version:
        serving = " (champion)"
    elif result.champion is None:
        serving = " (no alias: it serves once promoted)"
    else:
        serving = (f"; champion stays version {result.champion} (promote with `visionguard "
                   f"models promote {result.version}`)")
    console.print(f"registered {result.registered_name} version {result.version}{serving} "
                  f"in {result.tracking_uri} (run {result.run_id})")
    console.print(f"checkpoint {result.best_pt}\nONNX       {result.onnx_path}")
    return result
