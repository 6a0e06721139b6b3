"""ReID model: the ONNX contract, parity with torch, wrapping a user's ONNX, and the real Triton.

The backbone is ResNet-18 with seeded random weights (nothing here can download weights): its
embeddings are checked for exactness against torch and onnxruntime, and only for the roughest
property a random filter bank has, telling strongly different colours apart.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from control_plane.stack import triton_server
from control_plane.stack.supervisor import Supervisor, tail
from control_plane.settings import Settings
from export.reid import MODEL_PY, export_reid_onnx, export_reid_to_repository
from tests.conftest import free_ports
from tracker_service.errors import ModelNotFound, TritonUnavailable
from tracker_service.reid_client import TritonEmbedder, crop_boxes

ROOT = Path(__file__).resolve().parents[1]
HW = (256, 128)
MAX_BATCH = 8  # small, so that a frame of ten boxes goes to Triton in two requests
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def torch_embed(module: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """The reference: what the ONNX graph must compute, written out in torch."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        features = module((x - MEAN) / STD)
    return torch.nn.functional.normalize(features, dim=1).numpy()


def resnet18_features(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    return model.eval()


def random_crops(n: int, hw=HW, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def scene(seed: int) -> np.ndarray:
    """A grey frame with a red and a blue 'person', plus per-frame pixel noise."""
    rng = np.random.default_rng(seed)
    frame = np.full((360, 480, 3), 128, np.int64)
    frame[60:300, 40:160] = (200, 30, 30)
    frame[60:300, 300:420] = (30, 40, 200)
    return np.clip(frame + rng.integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reid_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("reid_repository")
    export_reid_to_repository("resnet18", repo, version=1, max_batch_size=MAX_BATCH, seed=0)
    return repo


@pytest.fixture(scope="module")
def reid_session(reid_repo) -> ort.InferenceSession:
    return session(reid_repo / "reid" / "1" / "model.onnx")


# --- export: the ONNX file -----------------------------------------------------------------------

def test_onnx_contract_uint8_nhwc_in_unit_vectors_out(reid_repo, reid_session):
    model = onnx.load(str(reid_repo / "reid" / "1" / "model.onnx"))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "crops" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == [
        "batch", 256, 128, 3]
    assert out.name == "embeddings" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["embedding_dim"] == "512" and meta["input_hw"] == "[256, 128]"
    for batch in (1, 3):
        (emb,) = reid_session.run(None, {"crops": random_crops(batch, seed=batch)})
        assert emb.shape == (batch, 512) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception):  # the crop size is fixed: the client must resize
        reid_session.run(None, {"crops": random_crops(1, hw=(128, 64))})


def test_onnx_matches_the_torch_module(reid_session):
    crops = random_crops(3, seed=7)
    crops[0] = (200, 30, 30)  # a flat colour, as well as noise
    (served,) = reid_session.run(None, {"crops": crops})
    expected = torch_embed(resnet18_features(seed=0), crops)
    assert np.abs(served - expected).max() < 1e-4
    assert np.abs(served[0] - served[1]).max() > 1e-3  # the crops do give different vectors


def test_checkpoint_weights_are_the_ones_exported(tmp_path, reid_session):
    torch.manual_seed(3)
    trained = torchvision.models.resnet18(weights=None)  # with its 1000-class head, as saved
    checkpoint = tmp_path / "reid_resnet18.pth"
    torch.save(trained.state_dict(), checkpoint)
    exported = export_reid_onnx(checkpoint, tmp_path / "model.onnx", input_hw=(128, 64))
    assert exported.dim == 512 and exported.input_hw == (128, 64)
    crops = random_crops(2, hw=(128, 64), seed=1)
    (served,) = session(exported.onnx_path).run(None, {"crops": crops})
    trained.fc = torch.nn.Identity()
    assert np.abs(served - torch_embed(trained.eval(), crops)).max() < 1e-4
    # ...and not the seeded random ones.
    assert np.abs(served - torch_embed(resnet18_features(seed=0), crops)).max() > 1e-2


class TinyReid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(x) * 5.0  # not of unit length: the wrapper must normalise


@pytest.mark.parametrize("input_name,output_name,dynamic,opset", [
    ("input", "features", True, 17),
    # Our own names, a batch fixed at 1 (as exports often are), the opset where ReduceL2 changed.
    ("crops", "embeddings", False, 18),
])
def test_user_onnx_gets_normalisation_and_l2(tmp_path, input_name, output_name, dynamic, opset):
    torch.manual_seed(0)
    tiny = TinyReid().eval()
    user = tmp_path / "user.onnx"
    axes = {input_name: {0: "n"}, output_name: {0: "n"}} if dynamic else None
    torch.onnx.export(tiny, (torch.zeros(1, 3, 32, 16),), str(user), dynamo=False,
                      opset_version=opset, input_names=[input_name],
                      output_names=[output_name], dynamic_axes=axes)
    assert onnx.load(str(user)).opset_import[0].version == opset
    exported = export_reid_onnx(user, tmp_path / "wrapped.onnx", input_hw=(32, 16))
    assert exported.dim == 16
    crops = random_crops(3, hw=(32, 16), seed=2)
    (served,) = session(exported.onnx_path).run(["embeddings"], {"crops": crops})
    assert served.shape == (3, 16)
    np.testing.assert_allclose(served, torch_embed(tiny, crops), atol=1e-5)
    # Without the mean/std step (only / 255) the answer would be measurably different.
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        unnormalised = torch.nn.functional.normalize(tiny(x), dim=1).numpy()
    assert np.abs(served - unnormalised).max() > 1e-3


def test_user_onnx_with_another_crop_size_is_refused(tmp_path):
    user = tmp_path / "user.onnx"
    torch.onnx.export(TinyReid().eval(), (torch.zeros(1, 3, 32, 16),), str(user), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    with pytest.raises(ValueError, match="input_hw"):
        export_reid_onnx(user, tmp_path / "wrapped.onnx")  # default 256 x 128


# --- export: the Triton model directory ----------------------------------------------------------

def test_version_folder_and_config(reid_repo):
    vdir = reid_repo / "reid" / "1"
    # Triton's python backend stub adds __pycache__ once it has loaded the version.
    assert sorted(p.name for p in vdir.iterdir() if p.name != "__pycache__") == [
        "model.onnx", "model.py"]
    assert (vdir / "model.py").read_bytes() == MODEL_PY.read_bytes()
    text = (reid_repo / "reid" / "config.pbtxt").read_text()
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.name == "reid" and cfg.backend == "python" and cfg.max_batch_size == MAX_BATCH
    assert cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    (inp,), (out,) = cfg.input, cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("crops", model_config_pb2.TYPE_UINT8,
                                                         [256, 128, 3])
    assert (out.name, out.data_type, list(out.dims)) == ("embeddings",
                                                         model_config_pb2.TYPE_FP32, [512])
    assert cfg.parameters["input_hw"].string_value == "[256, 128]"
    assert cfg.parameters["embedding_dim"].string_value == "512"
    # The committed template is what export writes for the default model (max batch 64).
    committed = (ROOT / "model_repository" / "reid" / "config.pbtxt").read_text()
    assert committed == text.replace(f"max_batch_size: {MAX_BATCH}\n", "max_batch_size: 64\n")


# --- cropping ------------------------------------------------------------------------------------

def test_crops_are_clipped_to_the_frame_and_degenerate_boxes_are_one_pixel():
    frame = np.random.default_rng(0).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    boxes = np.array([
        [10.2, 20.7, 50.1, 90.0],   # inside: floor/ceil to pixel edges
        [-30, -10, 40, 60],         # partly outside
        [60, 50, 60, 50],           # zero area
        [70, 40, 20, 10],           # inverted
        [500, 500, 600, 700],       # wholly outside
        [np.nan, 5, np.inf, 9],     # garbage
    ])
    crops = crop_boxes(frame, boxes, (32, 16))
    assert crops.shape == (6, 32, 16, 3) and crops.dtype == np.uint8
    resize = lambda a: cv2.resize(a, (16, 32), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    np.testing.assert_array_equal(crops[0], resize(frame[20:90, 10:51]))
    np.testing.assert_array_equal(crops[1], resize(frame[0:60, 0:40]))
    for i, (y, x) in ((2, (50, 60)), (3, (40, 70)), (4, (99, 79))):
        assert (crops[i] == frame[y, x]).all(), i
    assert crop_boxes(frame, np.zeros((0, 4)), (32, 16)).shape == (0, 32, 16, 3)


# --- the real Triton -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reid_triton(reid_repo, tmp_path_factory):
    runtime = tmp_path_factory.mktemp("reid_runtime")
    http, grpc, metrics = free_ports(3)
    settings = Settings(model_repository=reid_repo, runtime_dir=runtime, triton_http_port=http,
                        triton_grpc_port=grpc, triton_metrics_port=metrics)
    supervisor = Supervisor(runtime / "logs")
    child = triton_server.start(supervisor, settings, models=["reid"])
    try:
        triton_server.wait_ready(settings, child.proc, 120, model="reid")
    except (RuntimeError, TimeoutError) as exc:
        supervisor.stop()
        pytest.fail(f"{exc}\n{tail(child.log_path)}")
    yield settings
    supervisor.stop()


@pytest.fixture
async def embedder(reid_triton):
    client = TritonEmbedder(reid_triton.triton_grpc_url, "reid", timeout_s=60)
    yield client
    await client.close()


def inference_stats(settings, at_least: int = 0) -> tuple[int, int]:
    """(inferences, executions) of reid. Triton records statistics just after it answers, so
    wait (up to 10 s) until at least `at_least` inferences are counted."""
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    deadline = time.monotonic() + 10
    while True:
        stats = client.get_inference_statistics("reid", "1").model_stats[0]
        if stats.inference_count >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    client.close()
    return stats.inference_count, stats.execution_count


@pytest.mark.integration
async def test_triton_embeddings_equal_onnxruntime(embedder, reid_session):
    frame = scene(seed=0)
    boxes = np.array([
        [40, 60, 160, 300], [300, 60, 420, 300], [0, 0, 480, 360], [100.5, 30.2, 180.9, 200.1],
        [-50, 200, 90, 500],        # partly outside
        [400, -20, 520, 100],       # partly outside
        [200, 200, 200, 200],       # zero area
        [300, 300, 250, 250],       # inverted
        [900, 900, 950, 990],       # wholly outside
        [10, 10, 30, 12],           # thin
    ])  # ten boxes: two requests of at most MAX_BATCH
    served = await embedder.embed(frame, boxes)
    assert served.shape == (10, 512) and served.dtype == np.float32
    (expected,) = reid_session.run(None, {"crops": crop_boxes(frame, boxes, HW)})
    np.testing.assert_allclose(served, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    info = await embedder.model_info()
    assert (info.input_hw, info.dim, info.max_batch_size) == (HW, 512, MAX_BATCH)


@pytest.mark.integration
async def test_no_boxes_means_no_inference(embedder, reid_triton):
    await embedder.model_info()
    before = inference_stats(reid_triton)
    out = await embedder.embed(scene(seed=0), np.zeros((0, 4), np.float32))
    assert out.shape == (0, 512) and out.dtype == np.float32
    assert inference_stats(reid_triton) == before


@pytest.mark.integration
async def test_concurrent_frames_are_batched_and_answered_separately(embedder, reid_triton,
                                                                     reid_session):
    # 24 at once: however loaded the machine, most queue behind a running execution.
    frames = [scene(seed=s) for s in range(24)]
    boxes = [np.array([[40 + 10 * (i % 6), 60, 160, 300]], float) for i in range(24)]
    before = inference_stats(reid_triton)
    served = await asyncio.gather(*(embedder.embed(f, b) for f, b in zip(frames, boxes)))
    after = inference_stats(reid_triton, at_least=before[0] + 24)
    for frame, box, emb in zip(frames, boxes, served):
        (expected,) = reid_session.run(None, {"crops": crop_boxes(frame, box, HW)})
        np.testing.assert_allclose(emb, expected, atol=1e-4)
    assert after[0] - before[0] == 24
    assert after[1] - before[1] < 24  # fewer executions than crops: Triton batched requests


@pytest.mark.integration
async def test_different_colours_are_farther_apart_than_the_same_object(embedder):
    """Random weights separate strongly different colours only; that is all this checks."""
    boxes = np.array([[30, 50, 170, 310], [290, 50, 430, 310]], float)  # with some background
    first = await embedder.embed(scene(seed=1), boxes)
    moved = await embedder.embed(scene(seed=2), boxes + np.array([6, -8, 6, -8]))
    distance = lambda a, b: 1.0 - float(a @ b)  # noqa: E731  (unit vectors)
    same = max(distance(first[0], moved[0]), distance(first[1], moved[1]))
    different = min(distance(first[0], first[1]), distance(first[0], moved[1]),
                    distance(moved[0], first[1]))
    assert same < different


@pytest.mark.integration
async def test_errors_are_typed(reid_triton):
    unknown = TritonEmbedder(reid_triton.triton_grpc_url, "no_such_model", timeout_s=10)
    try:
        with pytest.raises(ModelNotFound):
            await unknown.embed(scene(seed=0), np.array([[0, 0, 10, 10]]))
    finally:
        await unknown.close()
    (port,) = free_ports(1)
    down = TritonEmbedder(f"127.0.0.1:{port}", "reid", timeout_s=5)
    try:
        with pytest.raises(TritonUnavailable):
            await down.embed(scene(seed=0), np.array([[0, 0, 10, 10]]))
    finally:
        await down.close()
