"""Triton python-backend ReID model: runs the exported ONNX file with onnxruntime on the CPU.

Export (export/reid.py) copies this file into every version folder beside `model.onnx`.

Tensor contract:
  in   crops       UINT8 [B, H, W, 3]  RGB crops, already resized to the config's input_hw
  out  embeddings  FP32  [B, D]        unit length: a dot product is a cosine similarity

Normalisation (ImageNet mean/std) and the L2 normalisation are inside the ONNX graph. Every
request of a dynamic batch has the same crop size (fixed by the config), so they all go through
onnxruntime in one run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores the gateway needs to decode the next image.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         params.get("allow_spinning", "0"))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "crops").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            (embeddings,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as exc:  # onnxruntime's own exception types
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for part in np.split(embeddings, np.cumsum(sizes)[:-1]):
            if not np.all(np.isfinite(part)):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("model produced non-finite embeddings")))
                continue
            tensor = pb_utils.Tensor("embeddings", np.ascontiguousarray(part, np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.session = None  # releases onnxruntime's arena before the stub exits
