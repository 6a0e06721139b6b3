"""ReID (appearance embedding) model -> ONNX with the serving contract -> Triton model directory.

Contract, whatever the source:  in `crops` UINT8 [B, H, W, 3] RGB  ->  out `embeddings` FP32 [B, D],
each row of unit length, so that a dot product is a cosine similarity (what DeepSORT's gallery
compares). As for the detector, the normalisation (uint8 NHWC -> float NCHW, ImageNet mean/std)
is inside the graph: clients send a quarter of the bytes, and the ONNX file, onnxruntime in
Triton and a TensorRT plan built from it all compute the same thing.

Sources:
* a ReID ONNX file of the user's (float NCHW in, [B, D] out): the preprocessing is prepended and
  the L2 normalisation appended with `onnx.compose`, which prefixes the user's graph so that no
  name of ours can collide with one of theirs;
* a torchvision ResNet-18 checkpoint (`.pt`/`.pth` state_dict), or the literal "resnet18" for
  seeded random weights: exported as its 512-D global-average-pooled features.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from export import triton_repo
from export.pipeline import next_version

MODEL_NAME = "reid"
INPUT_NAME = "crops"
OUTPUT_NAME = "embeddings"
DEFAULT_INPUT_HW = (256, 128)  # height x width: the usual person re-id crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
L2_EPS = 1e-12  # as torch.nn.functional.normalize: an all-zero feature stays zero, not NaN
OPSET = 17
MODEL_PY = triton_repo.REPO_TEMPLATES / MODEL_NAME / "model.py"

_BACKBONE_PREFIX = "backbone/"


@dataclass
class ReidExport:
    onnx_path: Path
    input_hw: tuple[int, int]
    dim: int
    source: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReidConfig:
    dim: int = 512
    input_hw: tuple[int, int] = DEFAULT_INPUT_HW
    max_batch_size: int = 64
    # Requests arrive already batched (every box of a frame); on CPU waiting for more only adds
    # latency, and requests that queue while the model runs are batched anyway.
    max_queue_delay_us: int = 0
    instances: int = 1
    intra_op_threads: int = 2


def load_backbone(source: str | Path, seed: int = 0):
    """ResNet-18 without its classifier: (B, 3, H, W) normalised float -> (B, 512) features.

    ``"resnet18"`` gives seeded random weights, for tests and offline demos only: such a network
    is a bank of random filters, so its embeddings separate strongly different colours and
    textures, roughly, and nothing finer. A real checkpoint is a `.pt`/`.pth` file holding the
    state_dict of `torchvision.models.resnet18` (an `fc` head, if present, is dropped).
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    if str(source) != "resnet18":
        path = Path(source)
        if path.suffix not in (".pt", ".pth"):
            raise ValueError(f"{source}: expected 'resnet18', a .pt/.pth state_dict or an "
                             ".onnx file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{source}: expected a state_dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=True)
    return model.eval()


def _backbone_onnx(source: str | Path, out_path: Path, input_hw: tuple[int, int],
                   seed: int) -> None:
    import torch

    model = load_backbone(source, seed)
    h, w = input_hw
    dummy = torch.zeros(2, 3, h, w)  # batch 2: nothing gets specialised to a batch of one
    with warnings.catch_warnings(), torch.no_grad():
        # The dynamo exporter needs onnxscript; the TorchScript one handles a ResNet exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(out_path), dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})


def _graph_io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(f"a ReID model has one input and one output, got {len(inputs)} "
                         f"and {len(model.graph.output)}")
    return inputs[0], model.graph.output[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value")
            else "?") for d in value.type.tensor_type.shape.dim]


def _check_backbone(model: onnx.ModelProto, input_hw: tuple[int, int]) -> None:
    """Float NCHW in at `input_hw` (or any size), [B, D] out."""
    inp, out = _graph_io(model)
    for value in (inp, out):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"{value.name}: expected float32, got "
                             f"{TensorProto.DataType.Name(value.type.tensor_type.elem_type)}")
    dims = _dims(inp)
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise ValueError(f"input {inp.name}: expected [B, 3, H, W], got {dims}")
    for got, want, axis in zip(dims[2:], input_hw, ("height", "width")):
        if isinstance(got, int) and got > 0 and got != want:
            raise ValueError(f"input {inp.name} has a fixed {axis} of {got}, but input_hw asks "
                             f"for {want}: pass input_hw={tuple(dims[2:])}")
    out_dims = _dims(out)
    if len(out_dims) != 2:
        raise ValueError(f"output {out.name}: expected [B, D], got {out_dims}")


def _dynamic_batch(model: onnx.ModelProto) -> None:
    """Exports often fix the batch at 1; declare it dynamic (a run with 2 checks it later)."""
    for value in _graph_io(model):
        batch = value.type.tensor_type.shape.dim[0]
        batch.Clear()
        batch.dim_param = "batch"
    # Shapes inferred for the old fixed batch would contradict the dynamic one.
    del model.graph.value_info[:]


def _ops_model(nodes, inputs, outputs, initializers, template: onnx.ModelProto,
               name: str) -> onnx.ModelProto:
    """A small graph of ours with the same IR version and opsets as `template`, for compose."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=list(template.opset_import),
                             ir_version=template.ir_version)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _preprocess(template: onnx.ModelProto, input_hw: tuple[int, int]) -> onnx.ModelProto:
    h, w = input_hw
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1) * 255.0
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1) * 255.0
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["crops_nchw"], perm=[0, 3, 1, 2],
                         name="nhwc_to_nchw"),
        helper.make_node("Cast", ["crops_nchw"], ["crops_float"], to=TensorProto.FLOAT,
                         name="uint8_to_float"),
        # (x / 255 - mean) / std, folded into one subtraction and one division.
        helper.make_node("Sub", ["crops_float", "mean_255"], ["crops_centred"],
                         name="subtract_mean"),
        helper.make_node("Div", ["crops_centred", "std_255"], ["pixels"], name="divide_by_std"),
    ]
    return _ops_model(
        nodes,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", h, w, 3])],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, h, w])],
        [numpy_helper.from_array(mean, "mean_255"), numpy_helper.from_array(std, "std_255")],
        template, "reid_preprocess")


def _l2_normalise(template: onnx.ModelProto) -> onnx.ModelProto:
    if _opset(template) >= 18:  # ReduceL2 took its axes as an input from opset 18 on
        axes = [numpy_helper.from_array(np.array([1], np.int64), "norm_axes")]
        reduce = helper.make_node("ReduceL2", ["features", "norm_axes"], ["norm"], keepdims=1,
                                  name="l2_norm")
    else:
        axes = []
        reduce = helper.make_node("ReduceL2", ["features"], ["norm"], axes=[1], keepdims=1,
                                  name="l2_norm")
    nodes = [
        reduce,
        helper.make_node("Max", ["norm", "l2_eps"], ["norm_safe"], name="clamp_norm"),
        helper.make_node("Div", ["features", "norm_safe"], [OUTPUT_NAME], name="unit_length"),
    ]
    eps = numpy_helper.from_array(np.array(L2_EPS, np.float32), "l2_eps")
    return _ops_model(
        nodes,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "dim"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "dim"])],
        [eps, *axes], template, "reid_l2_normalise")


def wrap_backbone(model: onnx.ModelProto, input_hw: tuple[int, int]) -> onnx.ModelProto:
    """Float NCHW -> [B, D] graph  =>  uint8 NHWC `crops` -> unit-length `embeddings`."""
    _check_backbone(model, input_hw)
    backbone = compose.add_prefix(model, _BACKBONE_PREFIX)  # a copy: `model` stays as it was
    _dynamic_batch(backbone)
    inp, out = _graph_io(backbone)
    merged = compose.merge_models(_preprocess(model, input_hw), backbone,
                                  io_map=[("pixels", inp.name)])
    merged = compose.merge_models(merged, _l2_normalise(model),
                                  io_map=[(out.name, "features")])
    merged.graph.name = "reid"
    # merge_models lists a domain once per merged model: keep one entry per domain.
    opsets = {o.domain or "": o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.checker.check_model(merged)
    return merged


def _embedding_dim(path: Path, input_hw: tuple[int, int]) -> int:
    """Run the wrapped file on a batch of two: proves the batch is dynamic, and gives D."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crops = np.zeros((2, *input_hw, 3), np.uint8)
    try:
        (emb,) = session.run([OUTPUT_NAME], {INPUT_NAME: crops})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"the wrapped model does not run on a batch of 2 (is the batch axis "
                         f"fixed inside the graph?): {exc}") from exc
    if emb.ndim != 2 or emb.shape[0] != 2:
        raise ValueError(f"expected embeddings [2, D] for 2 crops, got {emb.shape}")
    return int(emb.shape[1])


def export_reid_onnx(source: str | Path, out_path: Path, *,
                     input_hw: tuple[int, int] = DEFAULT_INPUT_HW, seed: int = 0) -> ReidExport:
    """Export `source` (a ReID .onnx, a ResNet-18 .pt/.pth, or "resnet18") to `out_path`."""
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vg-reid-") as tmp:
        if str(source).endswith(".onnx"):
            backbone = onnx.load(str(source))
            kind = "onnx"
        else:
            raw = Path(tmp) / "backbone.onnx"
            _backbone_onnx(source, raw, input_hw, seed)
            backbone = onnx.load(str(raw))
            kind = "resnet18"
        model = wrap_backbone(backbone, input_hw)
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save(model, tmp_out)
        dim = _embedding_dim(tmp_out, input_hw)
        meta = {"source": str(source), "backbone": kind, "input_layout": "NHWC uint8 RGB",
                "input_hw": json.dumps(list(input_hw)), "embedding_dim": str(dim),
                "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD),
                "output": "L2-normalised"}
        if kind == "resnet18" and str(source) == "resnet18":
            meta["seed"] = str(seed)
        del model.metadata_props[:]
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp_out)
        shutil.move(tmp_out, out_path)
    return ReidExport(out_path, input_hw, dim, str(source), meta)


def reid_config(cfg: ReidConfig, name: str = MODEL_NAME) -> str:
    h, w = cfg.input_hw
    params = {"input_hw": json.dumps([h, w]), "embedding_dim": str(cfg.dim),
              "intra_op_threads": str(cfg.intra_op_threads), "allow_spinning": "0"}
    return f"""\
# Generated by export/reid.py (export_reid_to_repository); regenerate rather than edit.
name: "{name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] }}
]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {cfg.dim} ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {cfg.max_queue_delay_us}
}}
instance_group [ {{ count: {cfg.instances} kind: KIND_CPU }} ]
{triton_repo._params(params)}
"""


def export_reid_to_repository(source: str | Path, repo: Path, *, version: int | None = None,
                              name: str = MODEL_NAME, max_batch_size: int = 64,
                              input_hw: tuple[int, int] = DEFAULT_INPUT_HW, seed: int = 0,
                              intra_op_threads: int = 2) -> Path:
    """Export `source` as `<repo>/<name>/<version>/` (written atomically); returns that folder."""
    repo = Path(repo)
    version = version or next_version(repo, name)
    with tempfile.TemporaryDirectory(prefix="vg-reid-") as tmp:
        exported = export_reid_onnx(source, Path(tmp) / "model.onnx", input_hw=input_hw,
                                    seed=seed)
        cfg = ReidConfig(dim=exported.dim, input_hw=exported.input_hw,
                         max_batch_size=max_batch_size, intra_op_threads=intra_op_threads)
        model_dir = repo / name
        triton_repo.clean_staging(model_dir)
        triton_repo.write_config(model_dir, reid_config(cfg, name))
        return triton_repo.write_version(model_dir, version, {
            "model.onnx": exported.onnx_path, "model.py": MODEL_PY})
