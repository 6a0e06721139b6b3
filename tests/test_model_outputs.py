"""The python-backend detectors answer with the outputs a request asked for, and no others.

Triton 2.48's Python 3.12 stub (nvidia-pytriton 0.5.10, the GPU machine's Python, and any user's
3.12) hangs the model instance for good when a response carries an output the request did not
ask for; the 3.11 stub the suite runs drops it silently, so no request through the real Triton
here can tell the two apart. Seen on the H200 (every gateway request timed out at its deadline)
and again here by running bench/gpu_path.py under Python 3.12. These tests call `execute` of
both model.py files directly, with a stand-in for `triton_python_backend_utils` (it exists only
inside Triton's stub), and check what each response holds.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL_OUTPUTS = ["detections", "num_detections", "raw"]  # what Triton reports when none is named


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.output_tensors, self.error = list(output_tensors), error


class Request:
    def __init__(self, inputs: dict[str, np.ndarray], requested: list[str]) -> None:
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self.requested = requested

    def requested_output_names(self) -> list[str]:
        return self.requested


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceResponse = Tensor, InferenceResponse
    module.TritonError = lambda message: message
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return module


def load(path: Path, monkeypatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"model_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def head_output(batch: int, anchors: int = 16) -> np.ndarray:
    """A [B, 84, N] head output with one confident person box per image."""
    raw = np.zeros((batch, 84, anchors), np.float32)
    raw[:, :4, 3] = [40, 40, 20, 30]
    raw[:, 4, 3] = 0.9
    return raw


def detector_model(monkeypatch):
    module = load(ROOT / "model_repository" / "detector" / "model.py", monkeypatch)
    model = module.TritonPythonModel()
    model.default_conf, model.default_iou, model.default_max_det = 0.25, 0.7, 300
    model.postprocess_only = False
    model.run = lambda batch: head_output(batch.shape[0])
    return model


def gpu_model(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    module = load(ROOT / "bench" / "gpu_model" / "model.py", monkeypatch)
    model = module.TritonPythonModel()
    model.default_conf, model.default_iou, model.default_max_det = 0.25, 0.7, 300
    model.max_nms, model.input_hw = 30000, (32, 32)
    model.device, model.dtype, model.graphs = torch.device("cpu"), torch.float32, None
    model.model = lambda x: torch.from_numpy(head_output(x.shape[0]))
    return model


MODELS = {"detector": detector_model, "gpu_model": gpu_model}


def request(requested: list[str], return_raw: bool = False) -> Request:
    inputs = {"images": np.zeros((1, 32, 32, 3), np.uint8)}
    if return_raw:
        inputs["return_raw"] = np.array([[True]])
    return Request(inputs, requested)


@pytest.mark.parametrize("name", MODELS)
def test_a_response_holds_only_the_requested_outputs(name, monkeypatch):
    model = MODELS[name](monkeypatch)
    asked = [["detections", "num_detections"], ["num_detections"], ["detections"]]
    responses = model.execute([request(r) for r in asked])
    assert [[t.name() for t in resp.output_tensors] for resp in responses] == asked
    counts = responses[0].output_tensors[1].as_numpy()
    assert counts.tolist() == [[1]]  # the box is still found when raw is not returned
    box = responses[0].output_tensors[0].as_numpy()[0, 0]
    np.testing.assert_allclose(box[:5], [30, 25, 50, 55, 0.9], rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_output_when_the_request_names_none(name, monkeypatch):
    model = MODELS[name](monkeypatch)
    responses = model.execute([request(ALL_OUTPUTS, return_raw=True), request(ALL_OUTPUTS)])
    for resp in responses:
        assert [t.name() for t in resp.output_tensors] == ALL_OUTPUTS
    assert responses[0].output_tensors[2].as_numpy().shape == (1, 84, 16)
    assert responses[1].output_tensors[2].as_numpy().shape == (1, 0, 0)
