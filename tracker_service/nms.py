"""Non-maximum suppression with Ultralytics' semantics: the one NMS every part of the stack runs.

Triton's detector (model_repository/detector/model.py, also `detector_postprocess` in the GPU
ensemble) and the control plane's drift reference, which re-detects the champion's evaluation
images in-process, import it from here: a served detection and the reference it is compared with
can then only differ by the model's raw output, never by two copies of NMS drifting apart.

numpy only: this runs inside Triton's python backend, whose Python has numpy and the model
runtimes and nothing of the gateway's dependencies (the Triton images install this package with
`--no-deps`).
"""

from __future__ import annotations

import numpy as np

MAX_WH = 7680.0  # class offset for batched per-class NMS, as Ultralytics does
MAX_NMS = 30000  # candidates kept (by score) before NMS


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over xyxy boxes; returns kept indices, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(raw: np.ndarray, conf: float, iou: float, max_det: int) -> np.ndarray:
    """One image's raw head output [4 + nc, N] -> [K, 6] detections, Ultralytics semantics."""
    class_scores = raw[4:]
    cls = class_scores.argmax(0)
    score = class_scores[cls, np.arange(class_scores.shape[1])]
    keep = score > conf
    if not keep.any():
        return np.zeros((0, 6), np.float32)
    xywh, score, cls = raw[:4, keep].T, score[keep], cls[keep]
    if score.size > MAX_NMS:
        top = np.argsort(-score, kind="stable")[:MAX_NMS]
        xywh, score, cls = xywh[top], score[top], cls[top]
    boxes = np.empty_like(xywh)
    boxes[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
    boxes[:, 2:] = xywh[:, :2] + xywh[:, 2:] / 2
    kept = nms(boxes + cls[:, None] * MAX_WH, score, iou)[:max_det]
    return np.concatenate(
        [boxes[kept], score[kept, None], cls[kept, None].astype(np.float32)], axis=1
    ).astype(np.float32)
