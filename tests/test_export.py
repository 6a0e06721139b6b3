"""Export: the ONNX contract, config.pbtxt for both targets, atomic versions."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import triton_repo
from export.pipeline import MODEL_PY
from export.tensorrt_build import optimization_profile, strip_ultralytics_header
from export.triton_repo import BatchingConfig, DetectorConfig

ROOT = Path(__file__).resolve().parents[1]


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_onnx_takes_uint8_nhwc_with_dynamic_batch_and_size(seeded_repo):
    path = seeded_repo / "detector" / "1" / "model.onnx"
    model = onnx.load(path)
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    meta = {p.key: p.value for p in model.metadata_props}
    assert len(json.loads(meta["names"])) == 80 and meta["stride"] == "32"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 640, 640, 3), (3, 480, 320, 3)]:
        (raw,) = session.run(None, {"images": np.zeros(shape, np.uint8)})
        anchors = sum((shape[1] // s) * (shape[2] // s) for s in (8, 16, 32))
        assert raw.shape == (shape[0], 84, anchors)


def test_version_folder_is_complete_and_configs_parse(seeded_repo):
    vdir = seeded_repo / "detector" / "1"
    # Triton's python backend stub adds __pycache__ once it has loaded the version.
    assert sorted(p.name for p in vdir.iterdir() if p.name != "__pycache__") == [
        "model.onnx", "model.py", "names.json"]
    cfg = parse((seeded_repo / "detector" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert [i.name for i in cfg.input][:1] == ["images"]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert [o.name for o in cfg.output] == ["detections", "num_detections", "raw"]
    assert all(i.optional for i in cfg.input[1:])
    assert len(json.loads(cfg.parameters["class_names"].string_value)) == 80


MODEL_SPECIFIC = ("class_names", "imgsz")  # differ between checkpoints, by design


def test_committed_cpu_config_matches_what_export_writes(seeded_repo):
    """model_repository/detector/config.pbtxt in git is what `export` generates: the same
    contract, batching and parameters; only the model's class names and size may differ (git
    holds the default bootstrap model's, the test exports the seeded architecture)."""
    committed = parse((ROOT / "model_repository" / "detector" / "config.pbtxt").read_text())
    generated = parse((seeded_repo / "detector" / "config.pbtxt").read_text())
    for cfg in (committed, generated):
        for key in MODEL_SPECIFIC:
            del cfg.parameters[key]
    assert committed == generated


def test_gpu_ensemble_configs_share_the_contract():
    cfg = DetectorConfig(names={0: "a", 1: "b"}, batching=BatchingConfig(max_batch_size=16))
    configs = {name: parse(text) for name, text in triton_repo.gpu_configs(cfg).items()}
    ens, trt, post = configs["detector"], configs["detector_trt"], configs["detector_postprocess"]
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 16
    assert trt.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(trt.output[0].dims) == [6, -1]  # 4 box + 2 classes
    assert ens.platform == "ensemble"
    cpu = parse(triton_repo.cpu_config(cfg))
    # Same tensor names, types and dims for everything the gateway sends and reads.
    as_tuple = lambda ts: {(t.name, t.data_type, tuple(t.dims)) for t in ts}  # noqa: E731
    assert as_tuple(ens.input) <= as_tuple(cpu.input)
    assert as_tuple(ens.output) <= as_tuple(cpu.output)
    steps = [s.model_name for s in ens.ensemble_scheduling.step]
    assert steps == ["detector_trt", "detector_postprocess"]
    assert post.input[0].name == "raw"


def test_write_version_is_atomic_and_immutable(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"x" * 100)
    model_dir = tmp_path / "repo" / "m"
    triton_repo.write_version(model_dir, 1, {"model.onnx": src})
    with pytest.raises(FileExistsError):
        triton_repo.write_version(model_dir, 1, {"model.onnx": src})
    # A copy that fails half-way leaves no version folder and no staging folder behind.
    with pytest.raises(FileNotFoundError):
        triton_repo.write_version(model_dir, 2, {"model.onnx": src, "x": tmp_path / "missing"})
    assert triton_repo.versions(model_dir) == [1]
    assert [p.name for p in model_dir.iterdir()] == ["1"]
    triton_repo.remove_version(model_dir, 1)
    assert triton_repo.versions(model_dir) == []
    with pytest.raises(ValueError):
        triton_repo.write_version(model_dir, 0, {"model.onnx": src})


def test_strip_ultralytics_engine_header():
    plan = b"\x00\x01PLANBYTES" * 10
    meta = {"stride": 32, "names": {"0": "person"}}
    blob = json.dumps(meta).encode()
    stripped, parsed = strip_ultralytics_header(struct.pack("<i", len(blob)) + blob + plan)
    assert stripped == plan and parsed == meta
    assert strip_ultralytics_header(plan) == (plan, {})


def test_optimization_profile_covers_batch_and_size_range():
    p = optimization_profile(max_batch_size=8, imgsz=640, stride=32)
    assert p["min"] == (1, 32, 32, 3) and p["max"] == (8, 640, 640, 3)
    assert p["opt"] == (4, 640, 640, 3)


def test_tensorrt_engine_build():
    pytest.importorskip("tensorrt", reason="TensorRT is not installable on these machines "
                        "(no GPU, wheels only on NVIDIA's index): the GPU target is built on a "
                        "GPU machine with TensorRT")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: TensorRT engines are built on a GPU")
    from export.pipeline import export_to_repository

    repo = Path(pytest.importorskip("tempfile").mkdtemp())
    result = export_to_repository("yolov8n.yaml", repo, target="gpu", version=1)
    assert (repo / "detector_trt" / "1" / "model.plan").stat().st_size > 0
    assert result.version == 1


def test_model_py_template_is_what_versions_run(seeded_repo):
    assert (seeded_repo / "detector" / "1" / "model.py").read_text() == MODEL_PY.read_text()
