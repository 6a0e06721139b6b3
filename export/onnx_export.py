"""Ultralytics checkpoint (.pt) or architecture file (.yaml) -> ONNX with the serving contract.

Ultralytics' exporter gives a float NCHW graph with dynamic batch, height and width. We prepend
the normalisation (uint8 NHWC -> float NCHW / 255, the same arithmetic as Ultralytics'
predictor), so clients send a quarter of the bytes and every backend (onnxruntime, TensorRT)
runs the identical graph.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "images"
RAW_OUTPUT_NAME = "raw"


@dataclass
class ExportedModel:
    onnx_path: Path
    names: dict[int, str]
    stride: int
    imgsz: int
    source: str
    metadata: dict = field(default_factory=dict)


def load_yolo(weights: str | Path, seed: int = 0):
    """Load a YOLO model; a `.yaml` architecture gets seeded random weights (shape checks only).

    Anything else is a checkpoint, read by `yolo_from_checkpoint` (weights-only, allow-listed;
    `CheckpointError` / `UnsafeCheckpoint` otherwise): never by Ultralytics' own loader, which
    unpickles in full and so runs code a crafted file carries.
    """
    import torch
    from ultralytics import YOLO

    from export.checkpoint import yolo_from_checkpoint

    weights = str(weights)
    if not weights.endswith((".yaml", ".yml")):
        return yolo_from_checkpoint(weights)
    torch.manual_seed(seed)
    np.random.seed(seed)
    yolo = YOLO(weights)
    if len(yolo.names) == 80:  # an 80-class architecture is COCO's: name the classes so
        yolo.model.names = coco_names()  # responses read as they will with real weights
    return yolo


def coco_names() -> dict[int, str]:
    import ultralytics
    import yaml

    path = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
    return {int(k): v for k, v in yaml.safe_load(path.read_text())["names"].items()}


def _prepend_normalisation(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    old = graph.input[0]
    float_name = "images_float_nchw"
    for node in graph.node:
        node.input[:] = [float_name if i == old.name else i for i in node.input]
    new_input = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3]
    )
    scale = numpy_helper.from_array(np.array(255.0, dtype=np.float32), "pixel_scale")
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["images_nchw_u8"], perm=[0, 3, 1, 2],
                         name="nhwc_to_nchw"),
        helper.make_node("Cast", ["images_nchw_u8"], ["images_nchw_f"], to=TensorProto.FLOAT,
                         name="uint8_to_float"),
        helper.make_node("Div", ["images_nchw_f", "pixel_scale"], [float_name],
                         name="divide_by_255"),
    ]
    graph.initializer.append(scale)
    del graph.input[0]
    graph.input.insert(0, new_input)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    out = graph.output[0]
    for node in graph.node:
        node.output[:] = [RAW_OUTPUT_NAME if o == out.name else o for o in node.output]
    out.name = RAW_OUTPUT_NAME
    onnx.checker.check_model(model)
    return model


def export_onnx(weights: str | Path, out_path: Path, imgsz: int | None = None, opset: int = 17,
                seed: int = 0) -> ExportedModel:
    """Export `weights` to `out_path` (ONNX, uint8 NHWC input, dynamic batch/height/width).

    `imgsz` (the longest side the gateway letterboxes to) defaults to the size the checkpoint
    was trained at, which is also what Ultralytics' predictor uses for it; 640 for a `.yaml`.
    """
    yolo = load_yolo(weights, seed)
    imgsz = imgsz or int(yolo.overrides.get("imgsz") or 640)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vg-export-") as tmp:
        # Export from a checkpoint in a scratch folder: Ultralytics writes its output beside it.
        ckpt = Path(tmp) / "model.pt"
        yolo.save(ckpt)
        from ultralytics import YOLO

        produced = YOLO(str(ckpt)).export(format="onnx", dynamic=True, simplify=True,
                                          imgsz=imgsz, opset=opset, verbose=False)
        model = onnx.load(produced)
        model = _prepend_normalisation(model)
        names = {int(k): str(v) for k, v in yolo.names.items()}
        stride = int(max(yolo.model.stride))
        meta = {"names": json.dumps(names), "stride": str(stride), "imgsz": str(imgsz),
                "source": str(weights), "input_layout": "NHWC uint8 RGB"}
        del model.metadata_props[:]
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save(model, tmp_out)
        shutil.move(tmp_out, out_path)
    return ExportedModel(out_path, names, stride, imgsz, str(weights), meta)


def read_contract(onnx_path: Path) -> tuple[dict[int, str], int, int]:
    """(class names, stride, imgsz) from the metadata `export_onnx` writes into the file."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    names = {int(k): v for k, v in json.loads(meta.get("names", "{}")).items()}
    return names, int(meta.get("stride", 32)), int(meta.get("imgsz", 640))
