"""A served FP32 ONNX detector -> INT8 by NNCF post-training quantisation, same tensor contract.

Calibration images go through the serving path's own preprocessing (`tracker_service.letterbox`:
the minimal-rectangle letterbox to the model's `imgsz`, RGB uint8 NHWC), so the activation
ranges NNCF measures are the ones the served model sees; the uint8 -> float normalisation is
inside the graph (export/onnx_export.py) and stays there.

The output is OpenVINO IR (`model.xml` + `model.bin`, NNCF's OpenVINO backend), which the
python backend (model_repository/detector/model.py) loads in preference to `model.onnx` when a
version folder has it; the input and outputs are the FP32 model's, so the gateway cannot tell.
QDQ ONNX was the other candidate: NNCF 3.4.0's ONNX backend does not import beside onnx 1.22
(`onnx.TensorProto.DataType | np.dtype` in a class body raises TypeError), so IR it is; it is
also what OpenVINO, which serves the CPU model, compiles without a conversion step.

The detection head's box decoding (DFL, anchor arithmetic) and class sigmoid stay in floating
point: the ignored scope Ultralytics' own OpenVINO INT8 export uses for the same head, whose
convolutions hold nearly all the work.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tracker_service.letterbox import letterbox

FORMAT = "openvino-ir"
# The files of the IR in a version folder (model.py serves model.xml when present).
SERVED_FILES: tuple[str, ...] = ("model.xml", "model.bin")


@dataclass(frozen=True)
class QuantizedModel:
    files: dict[str, Path]  # {name in the version folder: path}
    calibration_images: int
    ignored_nodes: int  # FP32 nodes kept out of quantisation (the head's decoding)


def calibration_inputs(paths: Sequence[Path], imgsz: int, stride: int
                       ) -> list[np.ndarray]:
    """The images as the gateway feeds them to Triton: decoded, letterboxed, RGB uint8, with a
    batch axis. Unreadable files are skipped (a calibration set is a sample, not a contract)."""
    out = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb, _ = letterbox(bgr, imgsz, stride)
        out.append(np.ascontiguousarray(rgb[None]))
    return out


def head_ignored_scope(node_names: Iterable[str]):
    """NNCF's ignored scope for the YOLO head's decoding: the DFL, the anchor arithmetic
    (Add / Sub / Mul / Div) and the class Sigmoid of the last `/model.<k>/` module.

    The head's Sigmoid by name rather than every Sigmoid (Ultralytics' ignored scope): a SiLU
    read from ONNX without convert_model's fusions is a Sigmoid and a Mul, and the type would
    then keep every activation out of INT8."""
    import nncf

    indices = [int(m.group(1)) for n in node_names if (m := re.match(r"^/model\.(\d+)/", n))]
    if not indices:  # not an Ultralytics graph: no head to find by name
        return nncf.IgnoredScope(types=["Sigmoid"], validate=False)
    head = rf"/model\.{max(indices)}"
    return nncf.IgnoredScope(
        patterns=[rf"{head}/dfl/.*", rf"{head}/Add.*", rf"{head}/Sub.*", rf"{head}/Mul.*",
                  rf"{head}/Div.*", rf"{head}/Sigmoid.*"], validate=False)


def quantize(onnx_path: Path, calibration: Sequence[np.ndarray], out_dir: Path, *,
             progress: Callable[[str], None] | None = None) -> QuantizedModel:
    """Quantise `onnx_path` (the served FP32 model) with `calibration` (batches from
    `calibration_inputs`) into `out_dir` as OpenVINO IR; the ONNX metadata (class names,
    stride, imgsz) goes into the IR's runtime info."""
    import nncf
    import onnx
    import openvino as ov

    if not calibration:
        raise ValueError("no calibration images")
    report = progress or (lambda _step: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    # convert_model, not Core.read_model: its graph transformations fuse each SiLU's Sigmoid
    # and Mul into one Swish, which the CPU plugin fuses into the INT8 convolution before it.
    # Quantised unfused, 54 activations ran as separate floating-point steps between the INT8
    # convolutions (bench/int8.py, INT8 / FP32 at c=4: 1.52x before, 1.96x after).
    model = ov.convert_model(str(onnx_path))
    scope = head_ignored_scope(op.get_friendly_name() for op in model.get_ops())
    ignored = sum(1 for op in model.get_ops() if _ignored(op.get_type_name(),
                                                          op.get_friendly_name(), scope))
    report(f"quantising with {len(calibration)} calibration images")
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration)),
                              subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, ignored_scope=scope)
    for prop in graph.metadata_props:
        quantized.set_rt_info(prop.value, ["model_info", prop.key])
    quantized.set_rt_info("nncf-ptq int8", ["model_info", "quantization"])
    # Written beside, then renamed: a reader never sees half an IR.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ir-") as tmp:
        ov.save_model(quantized, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        files = {}
        for name in SERVED_FILES:
            (Path(tmp) / name).replace(out_dir / name)
            files[name] = out_dir / name
    report("quantised")
    return QuantizedModel(files, len(calibration), ignored)


def _ignored(op_type: str, name: str, scope) -> bool:
    return op_type in scope.types or any(re.fullmatch(p, name) for p in scope.patterns)
