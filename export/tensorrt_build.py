"""TensorRT plan for the GPU target: built from the same ONNX file with TensorRT's Python API.

Runs only where a GPU and the TensorRT wheels are present (neither is installable on the
machines this project is developed on); everything around it is tested without them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


class TensorRTUnavailable(RuntimeError):
    pass


def optimization_profile(max_batch_size: int, imgsz: int, stride: int) -> dict[str, tuple]:
    """One profile over batch 1..max_batch_size and letterboxed sizes stride..imgsz (NHWC)."""
    return {
        "min": (1, stride, stride, 3),
        "opt": (max(1, max_batch_size // 2), imgsz, imgsz, 3),
        "max": (max_batch_size, imgsz, imgsz, 3),
    }


def build_engine(onnx_path: Path, plan_path: Path, *, max_batch_size: int, imgsz: int,
                 stride: int = 32, fp16: bool = True, workspace_gib: int = 4) -> Path:
    try:
        import tensorrt as trt
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise TensorRTUnavailable(
            "TensorRT is not installed: build the GPU target on a machine with a GPU and the "
            "tensorrt wheels, or serve the ONNX file with the CPU target"
        ) from exc

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = optimization_profile(max_batch_size, imgsz, stride)
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def strip_ultralytics_header(engine: bytes) -> tuple[bytes, dict]:
    """Ultralytics' `.engine` = 4-byte little-endian length + JSON metadata + plan.

    Triton's tensorrt_plan backend needs the bare plan. Returns (plan, metadata); a file that
    has no such header is returned unchanged with empty metadata.
    """
    if len(engine) > 4:
        (n,) = struct.unpack("<i", engine[:4])
        if 0 < n < len(engine) - 4:
            try:
                meta = json.loads(engine[4 : 4 + n].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            if isinstance(meta, dict):
                return engine[4 + n :], meta
    return engine, {}
