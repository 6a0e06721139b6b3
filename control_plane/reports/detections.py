"""Sample detections for the report: the version's registered ONNX, run as the gateway serves it
(letterbox, onnxruntime, the stack's NMS, boxes back in the image's pixels), on a few validation
images, drawn with supervision's annotators beside the images' labelled boxes.

The ONNX is checked before it runs (`export.checkpoint.check_onnx`: no custom operators, no
external data): a registered file is a user's file, and nothing from it runs but the graph.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from control_plane.reports.collect import ONNX_ARTIFACT, RunArtifacts
from tracker_service.letterbox import letterbox, to_original
from tracker_service.nms import postprocess

NMS_IOU = 0.45  # Triton's detector config default, so the samples look like what serves
MAX_DET = 100
DRAW_SIDE = 480  # small validation images are enlarged so labels stay legible
# Photos as JPEG: a quarter of PNG's bytes for these noisy scenes, so the HTML stays small and
# WeasyPrint quick.
JPEG_QUALITY = 85
CACHED_REPORTS = 8
_CACHE: OrderedDict[tuple, Samples] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@dataclass
class Sample:
    name: str
    jpeg: bytes
    detected: int
    labelled: int


@dataclass
class Samples:
    images: list[Sample]
    conf: float
    note: str = ""  # why there are none, or what to know about them


def _labels(image: Path, shape: tuple[int, int]) -> np.ndarray:
    """The image's labelled boxes (YOLO label file beside it, Ultralytics' images->labels
    rule), as xyxy pixels with class ids; empty when there is no label file."""
    parts = image.parts
    if "images" not in parts:
        return np.zeros((0, 5), np.float32)
    i = len(parts) - 1 - parts[::-1].index("images")
    label = Path(*parts[:i], "labels", *parts[i + 1:-1], f"{image.stem}.txt")
    rows = []
    if label.is_file():
        for line in label.read_text().splitlines():
            fields = line.split()
            if len(fields) == 5:
                try:
                    rows.append([float(v) for v in fields])
                except ValueError:
                    continue
    if not rows:
        return np.zeros((0, 5), np.float32)
    a = np.asarray(rows, np.float32)
    h, w = shape
    cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, a[:, 0]], 1)


def draw(bgr: np.ndarray, dets: np.ndarray, truth: np.ndarray, names: dict[int, str]) -> bytes:
    """JPEG of `bgr` with labelled boxes (thin, white) under the detections (class colours,
    `name score`)."""
    import supervision as sv

    scale = DRAW_SIDE / max(bgr.shape[:2])
    if scale > 1:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    else:
        scale = 1.0
    scene = bgr.copy()
    if len(truth):
        scene = sv.BoxAnnotator(color=sv.Color.WHITE, thickness=1).annotate(
            scene, sv.Detections(xyxy=truth[:, :4] * scale, class_id=truth[:, 4].astype(int)))
    if len(dets):
        found = sv.Detections(xyxy=dets[:, :4] * scale, confidence=dets[:, 4],
                              class_id=dets[:, 5].astype(int))
        scene = sv.BoxAnnotator(thickness=2).annotate(scene, found)
        labels = [f"{names.get(int(c), c)} {s:.2f}" for c, s in zip(found.class_id,
                                                                   found.confidence)]
        scene = sv.LabelAnnotator(text_scale=0.45, text_padding=4, smart_position=True).annotate(
            scene, found, labels=labels)
    ok, jpeg = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return jpeg.tobytes()


def detect_samples(artifacts: RunArtifacts, images: list[Path], conf: float,
                   names: dict[int, str]) -> Samples:
    """The version's detections on `images`; a note instead when there is nothing to run.

    Kept for the process's last few reports: a registered version's ONNX and a stored
    dataset's images do not change, and a reader often asks for the HTML, then the PDF."""
    key = (artifacts.tracking_uri, artifacts.run_id, artifacts.size(ONNX_ARTIFACT),
           tuple(map(str, images)), conf, tuple(sorted(names.items())))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    samples = _detect(artifacts, images, conf, names)
    if samples.images:
        with _CACHE_LOCK:
            _CACHE[key] = samples
            while len(_CACHE) > CACHED_REPORTS:
                _CACHE.popitem(last=False)
    return samples


def _detect(artifacts: RunArtifacts, images: list[Path], conf: float,
            names: dict[int, str]) -> Samples:
    if not images:
        return Samples([], conf, "no validation images on this machine (the version's "
                                 "evaluation data and dataset are elsewhere)")
    size = artifacts.size(ONNX_ARTIFACT)
    if size is None:
        return Samples([], conf, f"the version's run has no {ONNX_ARTIFACT}")
    if size > artifacts.max_bytes:
        return Samples([], conf, f"{ONNX_ARTIFACT} is {size / 2**20:.0f} MiB, over the "
                                 "report's limit (VG_REPORTS_MAX_ARTIFACT_MB)")
    import onnxruntime as ort

    from export.checkpoint import CheckpointError, check_onnx
    from export.onnx_export import read_contract

    with tempfile.TemporaryDirectory(prefix="vg-report-onnx-") as tmp:
        try:
            onnx_path = artifacts.download(ONNX_ARTIFACT, Path(tmp))
            check_onnx(onnx_path)
            contract_names, stride, imgsz = read_contract(onnx_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(onnx_path), options,
                                           providers=["CPUExecutionProvider"])
        except CheckpointError as exc:
            return Samples([], conf, f"the registered ONNX was refused: {exc}")
        except Exception as exc:  # noqa: BLE001 - a store or file the runtime cannot read
            return Samples([], conf, f"the registered ONNX could not be loaded: {exc}")
        names = names or contract_names
        input_name = session.get_inputs()[0].name
        out = []
        for path in images:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            rgb, geo = letterbox(bgr, imgsz, stride)
            raw = session.run(None, {input_name: rgb[None]})[0][0]
            dets = postprocess(raw, conf, NMS_IOU, MAX_DET)
            dets[:, :4] = to_original(dets[:, :4], geo)
            truth = _labels(path, bgr.shape[:2])
            out.append(Sample(path.name, draw(bgr, dets, truth, names), len(dets), len(truth)))
    return Samples(out, conf, "" if out else "none of the validation images decoded")
