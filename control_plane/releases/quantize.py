"""`visionguard models quantize N`: an INT8 variant of registered version N, registered beside it.

    version N (FP32, registered) -> calibration images from the data N was trained on (its
    lineage tags: `dataset`, a datasets-wing NAME@VERSION, or `dataset_name`, the data.yaml
    Ultralytics recorded) -> NNCF post-training quantisation of N's served ONNX
    (export/quantize.py, OpenVINO IR) -> both scored by the served path on N's evaluation data
    -> a new MLflow version tagged `variant=int8`, `parent_version=N`.

Calibration uses N's training images; only a version that records no training data at all is
calibrated on its evaluation data's val split, and the variant says so
(`calibration_kind=evaluation`): the accuracy gate then measures on images the quantiser saw.
A version whose recorded training data is no longer on this machine is refused
(`CalibrationDataGone`) rather than silently calibrated on something else.

Accuracy is measured the way the variant serves: each val image letterboxed as the gateway
does, run by OpenVINO (the python backend's runtime) on the IR or on N's ONNX, NMS by
`tracker_service.nms.postprocess` at Ultralytics' validation thresholds (conf 0.001, IoU 0.7,
300 boxes), boxes back to the image, scored by faster-coco-eval against the val labels. INT8 and
FP32 go through the same code on the same images, so their difference is the quantisation's
alone; the promotion gate holds it to VG_GATE_INT8_MAX_MAP_DROP points (gates.accuracy).

The variant's run carries N's FP32 `model/model.onnx` (the tensor contract, and the reference
smoke parity holds the INT8 output to, within VG_PARITY_INT8_RTOL) and the IR
(`model/model.xml`, `model/model.bin`, listed in the tag `serving_files`, which the promoter
writes into the version folder and model.py serves). It has no PyTorch weights: evaluations that
read `model/best.pt` (the robustness suite, a release report's Ultralytics scoring) do not apply
to it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from control_plane.datasets.layout import is_image, yolo_splits
from control_plane.errors import Conflict, ControlPlaneError, NotFound
from control_plane.releases.audit import AuditLog
from control_plane.releases.registry import (MAP, MAP50, REGISTRY_EXPERIMENT, Registry,
                                             VersionInfo)
from control_plane.settings import Settings
from control_plane.training import train as training

log = logging.getLogger("visionguard.quantize")

VARIANT, PARENT = "variant", "parent_version"
INT8_SERVED_MAP = "int8_served_mAP50-95"
PARENT_SERVED_MAP = "parent_served_mAP50-95"
# Ultralytics' validation thresholds: scores low enough that mAP sees the whole PR curve.
EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.7, 300
# The parent's tags a variant keeps: its lineage, evaluation data and serving contract.
INHERITED = ("dataset", "dataset_name", "dataset_version", "dataset_hash", "eval_dataset",
             "eval_dataset_hash", "eval_data_yaml", "class_names", "imgsz", "stride", "base",
             "epochs", "seed", "source_checkpoint", "checkpoint_sha256", "train_args")


class AlreadyVariant(Conflict):
    """The version is itself a quantised variant: quantise its FP32 parent instead."""

    code = "already_a_variant"


class TooFewCalibrationImages(ControlPlaneError):
    """Fewer calibration images than VG_QUANTIZE_MIN_CALIBRATION_IMAGES, asked for or found."""

    status_code = 422
    code = "too_few_calibration_images"


class CalibrationDataGone(NotFound):
    """The dataset the version's lineage names is no longer on this machine."""

    code = "calibration_dataset_gone"


@dataclass(frozen=True)
class CalibrationSet:
    images: list[Path]
    source: str  # a dataset ref or a data.yaml path
    kind: str  # "training" (the data the version was trained on) or "evaluation"
    available: int  # images the source holds


def _split_images(data_yaml: Path, split: str, what: str) -> list[Path]:
    if not data_yaml.is_file():
        raise CalibrationDataGone(f"the {what} {data_yaml} is no longer on this machine",
                                  dataset=str(data_yaml))
    try:
        _, splits = yolo_splits(data_yaml)
    except ControlPlaneError as exc:
        raise CalibrationDataGone(f"the {what} {data_yaml} cannot be read: {exc.message}",
                                  dataset=str(data_yaml)) from None
    return sorted(p for images, _ in splits.get(split, []) if images.is_dir()
                  for p in images.iterdir() if is_image(p))


def calibration_set(settings: Settings, version: VersionInfo, count: int) -> CalibrationSet:
    """Up to `count` images of the data `version` was trained on, an even, seeded sample."""
    from control_plane.datasets.store import DatasetStore

    minimum = settings.quantize_min_calibration_images
    if count < minimum:
        raise TooFewCalibrationImages(
            f"{count} calibration images asked for; at least {minimum} "
            "(VG_QUANTIZE_MIN_CALIBRATION_IMAGES)", asked=count, minimum=minimum)
    tags = version.tags
    ref, recorded = tags.get("dataset", ""), tags.get("dataset_name", "")
    if ref:
        try:
            dataset = DatasetStore(settings, log_to_mlflow=False).resolve(ref)
        except ControlPlaneError as exc:
            raise CalibrationDataGone(f"version {version.version} was trained on {ref}, which "
                                      f"is gone: {exc.message}", dataset=ref) from None
        images = _split_images(dataset.data_yaml, "train", "training dataset")
        source, kind = ref, "training"
    elif recorded.endswith((".yaml", ".yml")):
        images = _split_images(Path(recorded), "train", "training data")
        source, kind = recorded, "training"
    elif tags.get("eval_data_yaml"):
        images = _split_images(Path(tags["eval_data_yaml"]), "val", "evaluation data")
        source, kind = tags["eval_data_yaml"], "evaluation"
    else:
        raise CalibrationDataGone(f"version {version.version} records neither its training "
                                  "nor its evaluation data")
    if len(images) < minimum:
        raise TooFewCalibrationImages(
            f"{source} has {len(images)} images; quantisation needs at least {minimum} "
            "(VG_QUANTIZE_MIN_CALIBRATION_IMAGES)", dataset=source, found=len(images),
            minimum=minimum)
    chosen = np.random.default_rng(0).permutation(len(images))[:count]
    return CalibrationSet([images[i] for i in sorted(chosen)], source, kind, len(images))


# --- the served path's accuracy ---------------------------------------------------------------

@dataclass(frozen=True)
class _ValSplit:
    """A data.yaml's val split in the shape `evaluation.coco.coco_ground_truth` reads."""

    ref: str
    images: Path
    labels: Path
    classes: list[str]

    def images_dir(self, _split: str) -> Path:
        return self.images

    def labels_dir(self, _split: str) -> Path:
        return self.labels


def served_scores(model_file: Path, data_yaml: Path, imgsz: int, stride: int) -> dict[str, float]:
    """mAP50 and mAP50-95 of `model_file` (the ONNX or IR the python backend runs) on
    `data_yaml`'s val split, through the serving path's preprocessing and NMS."""
    import cv2
    import openvino as ov

    from control_plane.evaluation.coco import coco_ground_truth, coco_scores
    from tracker_service.letterbox import letterbox, to_original
    from tracker_service.nms import postprocess

    classes, splits = yolo_splits(data_yaml)
    if not splits.get("val"):
        raise CalibrationDataGone(f"{data_yaml} has no val split to evaluate on")
    images, labels = splits["val"][0]
    truth = coco_ground_truth(_ValSplit(str(data_yaml), images, labels, classes))
    compiled = ov.Core().compile_model(str(model_file), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request, output = compiled.create_infer_request(), compiled.output(0)
    predictions = []
    for image in truth["images"]:
        bgr = cv2.imread(str(images / image["file_name"]), cv2.IMREAD_COLOR)
        rgb, geo = letterbox(bgr, imgsz, stride)
        raw = request.infer({0: rgb[None]})[output][0]
        dets = postprocess(raw, EVAL_CONF, EVAL_IOU, EVAL_MAX_DET)
        boxes = to_original(dets[:, :4], geo)
        predictions += [{"image_id": image["id"], "category_id": int(c) + 1,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                         "score": float(s)}
                        for (x1, y1, x2, y2), s, c in zip(boxes, dets[:, 4], dets[:, 5])]
    scores, _ = coco_scores(truth, predictions)
    return scores


def _on_parent_scale(parent: VersionInfo, int8: dict, fp32: dict) -> dict[str, str]:
    out = {"map_basis": "parent's recorded mAP less the INT8 loss on the served path"}
    for tag, recorded, key in ((MAP50, parent.map50, "mAP50"), (MAP, parent.map, "mAP50-95")):
        if recorded is not None:
            out[tag] = f"{recorded - (fp32[key] - int8[key]):.6f}"
    return out


# --- the operation ------------------------------------------------------------------------------

def _cpu_isa() -> str:
    """What INT8 runs on here: OpenVINO's CPU capabilities and the CPU's VNNI / AMX flags."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    found = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{','.join(found) or 'no VNNI/AMX'}; openvino {','.join(capabilities)}"


def quantize_version(settings: Settings, registry: Registry, version: str | int, *, actor: str,
                     calibration_images: int | None = None,
                     progress: Callable[[str], None] | None = None) -> VersionInfo:
    """Quantise registered `version` to INT8 and register the result as a new version, a
    variant of it; `actor` goes to the audit log. Returns the new version."""
    import nncf

    from export.quantize import FORMAT, calibration_inputs, quantize

    def report(step: str) -> None:
        log.info("quantize %s: %s", version, step)
        if progress:
            progress(step)

    parent = registry.get(version)  # UnknownVersion (404) when there is none
    if parent.tags.get(VARIANT):
        raise AlreadyVariant(f"version {parent.version} is an {parent.tags[VARIANT]} variant "
                             f"of version {parent.tags.get(PARENT, '?')}; quantise that one",
                             version=parent.version, parent=parent.tags.get(PARENT))
    count = settings.quantize_calibration_images if calibration_images is None \
        else calibration_images
    calibration = calibration_set(settings, parent, count)
    report(f"calibration: {len(calibration.images)} of {calibration.available} images from "
           f"{calibration.kind} data {calibration.source}")
    if calibration.kind == "evaluation":
        log.warning("version %s records no training data: calibrating on its evaluation data, "
                    "which the accuracy gate also measures on", parent.version)
        report("no training data recorded: calibrated on the evaluation data (the accuracy "
               "gate measures on images the quantiser saw)")
    eval_yaml = Path(parent.tags.get("eval_data_yaml", ""))
    if not eval_yaml.is_file():
        raise CalibrationDataGone(f"version {parent.version}'s evaluation data {eval_yaml} is "
                                  "no longer on this machine: the variant cannot be scored",
                                  dataset=str(eval_yaml))
    imgsz, stride = int(parent.tags.get("imgsz", 640)), int(parent.tags.get("stride", 32))
    nncf.set_log_level(logging.WARNING)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vg-quantize-") as tmp:
        report("fetching the FP32 model")
        onnx_path = registry.download(parent, f"{training.MODEL_ARTIFACT_DIR}/model.onnx",
                                      Path(tmp) / "parent")
        report("preprocessing calibration images as served")
        batches = calibration_inputs(calibration.images, imgsz, stride)
        quantized = quantize(onnx_path, batches, Path(tmp) / "int8", progress=report)
        report(f"evaluating INT8 on {parent.eval_dataset or eval_yaml}")
        int8 = served_scores(quantized.files["model.xml"], eval_yaml, imgsz, stride)
        report("evaluating the FP32 parent the same way")
        fp32 = served_scores(onnx_path, eval_yaml, imgsz, stride)
        drop = (fp32["mAP50-95"] - int8["mAP50-95"]) * 100
        report(f"mAP50-95 {int8['mAP50-95']:.4f} INT8, {fp32['mAP50-95']:.4f} FP32 "
               f"({drop:+.2f} points lost)")
        report("registering")
        tags = {
            **{k: parent.tags[k] for k in INHERITED if k in parent.tags},
            VARIANT: "int8", PARENT: parent.version, "quantization": "nncf-ptq",
            "quantization_format": FORMAT, "nncf": nncf.__version__,
            "calibration_images": len(calibration.images),
            "calibration_source": calibration.source, "calibration_kind": calibration.kind,
            "serving_files": ",".join(quantized.files), "quantized_on": _cpu_isa(),
            # On the parent's scale (the evaluator its mAP was recorded with, which the
            # champion's comparison and `models list` read): its mAP less the INT8 loss the
            # served path measured. The served figures themselves are the two tags below.
            **_on_parent_scale(parent, int8, fp32),
            INT8_SERVED_MAP: f"{int8['mAP50-95']:.6f}",
            PARENT_SERVED_MAP: f"{fp32['mAP50-95']:.6f}",
            "map_evaluator": "served path (letterbox, OpenVINO, NMS) + faster-coco-eval",
        }
        version_info = _register(registry, parent, onnx_path, quantized.files, tags,
                                 {"int8_mAP50": int8["mAP50"], "int8_mAP50-95": int8["mAP50-95"],
                                  "fp32_mAP50": fp32["mAP50"],
                                  "fp32_mAP50-95": fp32["mAP50-95"], "drop_points": drop,
                                  "seconds": time.monotonic() - t0})
    AuditLog(settings.audit_file).record(
        actor, "quantize", model=registry.name, version=version_info.version,
        parent=parent.version, calibration_images=len(calibration.images),
        calibration_source=calibration.source, mAP=int8["mAP50-95"],
        parent_mAP=fp32["mAP50-95"], drop_points=round(drop, 3))
    return version_info


def _register(registry: Registry, parent: VersionInfo, onnx_path: Path,
              files: dict[str, Path], tags: dict, metrics: dict[str, float]) -> VersionInfo:
    """A run holding the parent's ONNX and the IR under `model/`, registered as the next
    version (never the champion by itself)."""
    from mlflow.entities import Metric

    from control_plane.mlflow_store import experiment_id

    client = registry.client
    exp = experiment_id(client, registry.store, REGISTRY_EXPERIMENT)
    run = client.create_run(exp, run_name=f"quantize-v{parent.version}-int8",
                            tags={"visionguard.kind": "quantize",
                                  "parent_version": parent.version})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0)
                                          for k, v in metrics.items()])
        for path in (onnx_path, *files.values()):
            client.log_artifact(run_id, str(path), training.MODEL_ARTIFACT_DIR)
        source = f"{client.get_run(run_id).info.artifact_uri}/{training.MODEL_ARTIFACT_DIR}"
        tags = {**tags, "onnx": f"{source}/model.onnx"}
        number, _ = training.register_version(
            client, registry.name, source=source, run_id=run_id, tags=tags,
            claim_champion=False,
            description=f"INT8 (NNCF PTQ, {tags['calibration_images']} calibration images) of "
                        f"version {parent.version}: mAP50-95 {float(tags[MAP]):.3f} vs "
                        f"{float(tags[PARENT_SERVED_MAP]):.3f} FP32 on the served path")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return registry.get(number)
