"""Checkpoint -> Triton model version: the one entry point used by the CLI and promotion."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from export import triton_repo
from export.onnx_export import export_onnx
from export.triton_repo import MODEL_NAME, BatchingConfig, DetectorConfig

Target = Literal["cpu", "gpu"]
MODEL_PY = triton_repo.REPO_TEMPLATES / MODEL_NAME / "model.py"


@dataclass
class ExportResult:
    version: int
    version_dir: Path
    onnx_path: Path
    names: dict[int, str]
    imgsz: int
    stride: int


def next_version(repo: Path, name: str = MODEL_NAME) -> int:
    existing = triton_repo.versions(Path(repo) / name)
    return (existing[-1] + 1) if existing else 1


def export_to_repository(weights: str | Path, repo: Path, *, version: int | None = None,
                         target: Target = "cpu", imgsz: int | None = None, seed: int = 0,
                         batching: BatchingConfig | None = None, intra_op_threads: int = 2,
                         allow_spinning: bool = False, runtime: str = "openvino",
                         name: str = MODEL_NAME) -> ExportResult:
    """Export `weights` and write it as `<repo>/<name>/<version>/` (atomically)."""
    repo = Path(repo)
    version = version or next_version(repo, name)
    with tempfile.TemporaryDirectory(prefix="vg-export-") as tmp:
        exported = export_onnx(weights, Path(tmp) / "model.onnx", imgsz=imgsz, seed=seed)
        imgsz = exported.imgsz
        cfg = DetectorConfig(names=exported.names, stride=exported.stride, imgsz=imgsz,
                             intra_op_threads=intra_op_threads, allow_spinning=allow_spinning,
                             runtime=runtime,
                             batching=batching or BatchingConfig())
        names_json = Path(tmp) / "names.json"
        names_json.write_text(json.dumps({str(k): v for k, v in exported.names.items()}))
        if target == "cpu":
            model_dir = repo / name
            triton_repo.clean_staging(model_dir)
            triton_repo.write_config(model_dir, triton_repo.cpu_config(cfg, name))
            vdir = triton_repo.write_version(model_dir, version, {
                "model.onnx": exported.onnx_path, "model.py": MODEL_PY, "names.json": names_json})
        else:
            from export.tensorrt_build import build_engine

            plan = build_engine(exported.onnx_path, Path(tmp) / "model.plan",
                                max_batch_size=cfg.batching.max_batch_size, imgsz=imgsz,
                                stride=exported.stride)
            configs = triton_repo.gpu_configs(cfg, name)
            for model_name, text in configs.items():
                triton_repo.write_config(repo / model_name, text)
            triton_repo.write_version(repo / f"{name}_trt", version, {"model.plan": plan})
            triton_repo.write_version(repo / f"{name}_postprocess", version, {"model.py": MODEL_PY})
            vdir = triton_repo.write_version(repo / name, version, {
                "model.onnx": exported.onnx_path, "names.json": names_json})
        # Keep the ONNX file beside the version for parity checks and lineage.
        return ExportResult(version, vdir, vdir / "model.onnx", exported.names, imgsz,
                            exported.stride)
