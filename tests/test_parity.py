"""Parity with Ultralytics: raw head output through the real Triton, and NMS semantics.

The model is seeded from yolov8n.yaml: its class scores are near-equal random values, so NMS on
it can pick different boxes for differences of 1e-6. As the serving issue prescribes, the raw
tensors before NMS are compared here (max |diff| <= 1e-4 x output range), and NMS is compared
separately on inputs with distinct scores.

Boxes after NMS are compared on a trained detector, through two gateways on one Triton: with the
JPEG decoded in full, they match the predictor exactly (IoU >= 0.95, |score difference| <= 1e-3);
with the reduced-scale decode (VG_GATEWAY_REDUCED_DECODE, tracker_service/decode.py) the pixels
differ, so they are held to REDUCED_TOLERANCE, set from bench/reduced_decode_parity.py.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from ultralytics.data.augment import LetterBox
from ultralytics.utils.nms import non_max_suppression

from export.onnx_export import load_yolo
from export.triton_repo import REPO_TEMPLATES
from tests.conftest import ultralytics_assets
from tracker_service.letterbox import letterbox


def load_model_py():
    """The python-backend file, imported outside Triton for its pure NMS functions."""
    import sys
    import types

    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("pb_utils_stub"))
    spec = importlib.util.spec_from_file_location("detector_model",
                                                  REPO_TEMPLATES / "detector" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def triton_raw(settings, rgb: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    images = grpcclient.InferInput("images", [1, *rgb.shape], "UINT8")
    images.set_data_from_numpy(rgb[None])
    flag = grpcclient.InferInput("return_raw", [1, 1], "BOOL")
    flag.set_data_from_numpy(np.array([[True]]))
    result = client.infer("detector", [images, flag])
    return result.as_numpy("raw")[0]


def ultralytics_raw(bgr: np.ndarray) -> np.ndarray:
    yolo = load_yolo("yolov8n.yaml", seed=0)
    model = yolo.model.float().eval()
    prepared = LetterBox(640, auto=True, stride=32)(image=bgr)[..., ::-1]  # predictor's input
    x = torch.from_numpy(np.ascontiguousarray(prepared)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model(x)[0][0].numpy()


@pytest.mark.integration
@pytest.mark.parametrize("image", ["bus.jpg", "zidane.jpg"])
def test_raw_output_through_triton_matches_ultralytics(stack, image):
    """The default CPU runtime (OpenVINO) inside the real Triton."""
    bgr = cv2.imread(str(ultralytics_assets() / image))
    rgb, _ = letterbox(bgr, 640, 32)
    served = triton_raw(stack.settings, rgb)
    reference = ultralytics_raw(bgr)
    assert served.shape == reference.shape
    span = float(reference.max() - reference.min())
    assert np.abs(served - reference).max() <= 1e-4 * span


@pytest.mark.integration
def test_onnxruntime_runtime_matches_too(tmp_path):
    """The same model served with runtime=onnxruntime (the fallback without OpenVINO)."""
    from control_plane.stack import triton_server
    from control_plane.stack.supervisor import Supervisor
    from control_plane.settings import Settings
    from export.pipeline import export_to_repository
    from tests.conftest import free_ports

    export_to_repository("yolov8n.yaml", tmp_path / "repo", version=1, runtime="onnxruntime")
    config = (tmp_path / "repo" / "detector" / "config.pbtxt").read_text()
    assert '"runtime" value: { string_value: "onnxruntime" }' in config
    http, grpc, metrics = free_ports(3)
    settings = Settings(model_repository=tmp_path / "repo", runtime_dir=tmp_path,
                        triton_http_port=http, triton_grpc_port=grpc,
                        triton_metrics_port=metrics)
    bgr = cv2.imread(str(ultralytics_assets() / "bus.jpg"))
    rgb, _ = letterbox(bgr, 640, 32)
    with Supervisor(tmp_path / "logs") as supervisor:
        child = triton_server.start(supervisor, settings)
        triton_server.wait_ready(settings, child.proc, 120, model="detector")
        served = triton_raw(settings, rgb)
    reference = ultralytics_raw(bgr)
    span = float(reference.max() - reference.min())
    assert np.abs(served - reference).max() <= 1e-4 * span


def test_nms_matches_ultralytics_on_distinct_scores():
    model_py = load_model_py()
    rng = np.random.default_rng(0)
    nc, n = 5, 400
    centres = rng.uniform(50, 590, (n, 2))
    sizes = rng.uniform(10, 120, (n, 2))
    scores = rng.uniform(0, 1, (n, nc)) ** 3  # distinct, most below the threshold
    raw = np.concatenate([centres, sizes, scores], axis=1).T.astype(np.float32)  # [4+nc, n]
    for conf, iou, max_det in [(0.25, 0.7, 300), (0.1, 0.45, 20), (0.5, 0.3, 300)]:
        ours = model_py.postprocess(raw, conf, iou, max_det)
        theirs = non_max_suppression(torch.from_numpy(raw[None]), conf, iou,
                                     max_det=max_det)[0].numpy()
        assert ours.shape == theirs.shape and len(ours) > 0
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_nms_keeps_nothing_below_threshold():
    model_py = load_model_py()
    raw = np.zeros((84, 100), np.float32)
    assert model_py.postprocess(raw, 0.25, 0.7, 300).shape == (0, 6)


# --- boxes after NMS, through the gateway, on a model that detects something -----------------

def match_detections(ours: list[dict], theirs) -> None:
    """Same count; each of ours matched to a distinct predictor box: IoU >= 0.95, same class,
    |score difference| <= 1e-3."""
    from ultralytics.utils.metrics import box_iou

    assert len(ours) == len(theirs.cls), (len(ours), len(theirs.cls))
    if not ours:
        return
    a = torch.tensor([d["box"] for d in ours], dtype=torch.float32)
    iou = box_iou(a, theirs.xyxy.float())
    taken: set[int] = set()
    for i, d in enumerate(ours):
        j = int(torch.argmax(iou[i]))
        assert j not in taken, f"two boxes matched predictor box {j}"
        taken.add(j)
        assert float(iou[i, j]) >= 0.95, (d, theirs.xyxy[j].tolist())
        assert d["class_id"] == int(theirs.cls[j])
        assert abs(d["score"] - float(theirs.conf[j])) <= 1e-3


@dataclass(frozen=True)
class DetectingStack:
    full: str  # the gateway with VG_GATEWAY_REDUCED_DECODE=0
    reduced: str  # =1


@pytest.fixture(scope="module")
def detecting_stack(tmp_path_factory, trained_checkpoint):
    """Triton serving a checkpoint trained here on generated shapes, with a gateway decoding in
    full (`up`'s) and one with the reduced-scale decode (the same in all else)."""
    import os
    import sys
    from dataclasses import replace

    from control_plane.settings import Settings
    from control_plane.stack.supervisor import Supervisor, wait_http_ok
    from control_plane.stack.up import start_stack
    from export.pipeline import export_to_repository
    from tests.conftest import free_ports

    tmp = tmp_path_factory.mktemp("detecting")
    http, grpc, metrics, gateway, reduced = free_ports(5)
    settings = replace(Settings(), model_repository=tmp / "repo", runtime_dir=tmp,
                       triton_http_port=http, triton_grpc_port=grpc,
                       triton_metrics_port=metrics, gateway_port=gateway)
    export_to_repository(trained_checkpoint, settings.model_repository, version=1)
    with Supervisor(tmp / "logs") as supervisor, pytest.MonkeyPatch.context() as env:
        env.setenv("VG_GATEWAY_REDUCED_DECODE", "0")  # `up`'s children inherit os.environ
        start_stack(settings, supervisor)
        child = supervisor.start(
            "gateway-reduced",
            [sys.executable, "-m", "control_plane", "serve", "gateway", "--port", str(reduced)],
            {**os.environ, "VG_GATEWAY_TRITON_URL": settings.triton_grpc_url,
             "VG_GATEWAY_REDUCED_DECODE": "1"})
        wait_http_ok(f"http://127.0.0.1:{reduced}/readyz", child.proc, 60, "gateway")
        yield DetectingStack(f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{reduced}")


@pytest.mark.integration
def test_detections_through_the_gateway_match_the_ultralytics_predictor(
        detecting_stack, trained_checkpoint, shapes_images):
    import httpx
    from ultralytics import YOLO

    predictor = YOLO(str(trained_checkpoint))
    images = [ultralytics_assets() / "bus.jpg", ultralytics_assets() / "zidane.jpg",
              *shapes_images]
    compared = 0
    for path in images:
        for conf in (0.25, 0.05, 0.01):
            r = httpx.post(f"{detecting_stack.full}/v1/detect", content=path.read_bytes(),
                           headers={"content-type": "image/jpeg"},
                           params={"conf": conf}, timeout=60)
            assert r.status_code == 200, r.text
            ours = r.json()["detections"]
            theirs = predictor.predict(str(path), conf=conf, verbose=False)[0].boxes
            match_detections(ours, theirs)
            compared += len(ours)
    assert compared >= 10, "the trained model should detect something on its own data"


# The reduced-scale decode against the predictor, measured by bench/reduced_decode_parity.py and
# the same matching on held-out 512 px (decoded at 1/2) and 1024 px (1/4) shapes images at
# imgsz 256, boxes clear of the threshold (score >= conf + 0.1 on either side), two detectors:
# the bootstrap (mAP50 0.79-0.82) and the suite's tiny one; matched share 0.98 / 1.00, matched
# IoU median 0.991 / 0.985 and 5th percentile 0.927 / 0.945, |score difference| median
# 0.006 / 0.010 and 95th percentile 0.047 / 0.081 (at conf 0.01, mAP50-95 within 0.6 points of
# the full decode's both ways). Held here, with room for a smaller sample:
REDUCED_TOLERANCE = {"clear_of_threshold": 0.1, "matched_share": 0.95, "median_iou": 0.95,
                     "p5_iou": 0.85, "median_score_delta": 0.03, "p95_score_delta": 0.15}


def clear_matches(ours: list[dict], theirs, conf: float) -> tuple[int, list[float], list[float]]:
    """Boxes clear of the threshold on either side: (how many of them have no same-class match
    at IoU >= 0.5 on the other side, the matched IoUs, the matched |score differences|)."""
    from scipy.optimize import linear_sum_assignment
    from ultralytics.utils.metrics import box_iou

    clear = conf + REDUCED_TOLERANCE["clear_of_threshold"]
    scores_ours = np.array([d["score"] for d in ours], np.float32)
    scores_theirs = theirs.conf.numpy()
    pairs: dict[int, int] = {}
    if ours and len(scores_theirs):
        iou = box_iou(torch.tensor([d["box"] for d in ours], dtype=torch.float32),
                      theirs.xyxy.float()).numpy()
        iou[np.array([d["class_id"] for d in ours])[:, None] != theirs.cls.numpy()[None]] = 0
        rows, cols = linear_sum_assignment(-iou)
        pairs = {int(i): int(j) for i, j in zip(rows, cols) if iou[i, j] >= 0.5}
    unmatched = (sum(1 for i, s in enumerate(scores_ours) if s >= clear and i not in pairs)
                 + sum(1 for j, s in enumerate(scores_theirs)
                       if s >= clear and j not in pairs.values()))
    kept = [(i, j) for i, j in pairs.items()
            if scores_ours[i] >= clear or scores_theirs[j] >= clear]
    return (unmatched, [float(iou[i, j]) for i, j in kept],
            [abs(float(scores_ours[i] - scores_theirs[j])) for i, j in kept])


@pytest.mark.integration
def test_detections_with_the_reduced_decode_agree_with_the_predictor_within_tolerance(
        detecting_stack, trained_checkpoint, tmp_path):
    """bus.jpg and zidane.jpg decode at 1/4 at the detector's 256 px, generated 1024 px images
    at 1/4 and 512 px ones at 1/2; the boxes come back in the original image's pixels."""
    import httpx
    from ultralytics import YOLO

    from control_plane.datasets.synthetic_data import generate_dataset

    predictor = YOLO(str(trained_checkpoint))
    images = [ultralytics_assets() / "bus.jpg", ultralytics_assets() / "zidane.jpg"]
    for size in (512, 1024):
        data_yaml = generate_dataset(tmp_path / str(size), n_train=0, n_val=16, imgsz=size,
                                     seed=99)
        images += sorted((data_yaml.parent / "images" / "val").glob("*.jpg"))
    conf, unmatched, ious, deltas = 0.01, 0, [], []
    for path in images:
        r = httpx.post(f"{detecting_stack.reduced}/v1/detect", content=path.read_bytes(),
                       headers={"content-type": "image/jpeg"}, params={"conf": conf},
                       timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        h, w = cv2.imread(str(path)).shape[:2]
        assert (body["image"]["width"], body["image"]["height"]) == (w, h)
        theirs = predictor.predict(str(path), conf=conf, verbose=False)[0].boxes
        missed, matched_ious, matched_deltas = clear_matches(body["detections"], theirs, conf)
        unmatched, ious, deltas = unmatched + missed, ious + matched_ious, deltas + matched_deltas
    tol = REDUCED_TOLERANCE
    assert len(ious) >= 8, "the trained model should detect something clear of the threshold"
    figures = {"matched_share": len(ious) / (len(ious) + unmatched),
               "median_iou": float(np.median(ious)), "p5_iou": float(np.percentile(ious, 5)),
               "median_score_delta": float(np.median(deltas)),
               "p95_score_delta": float(np.percentile(deltas, 95))}
    assert figures["matched_share"] >= tol["matched_share"], figures
    assert figures["median_iou"] >= tol["median_iou"], figures
    assert figures["p5_iou"] >= tol["p5_iou"], figures
    assert figures["median_score_delta"] <= tol["median_score_delta"], figures
    assert figures["p95_score_delta"] <= tol["p95_score_delta"], figures
