"""Async gRPC client for the detector: one channel, reused; Triton errors made typed.

The gateway does not know whether the detector is the CPU python-backend model or the GPU
TensorRT ensemble: both take `images` (uint8 NHWC) and return `detections` + `num_detections`.
gRPC reconnects by itself when Triton comes back, so an outage needs no gateway restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tracker_service.errors import ModelNotFound, TritonUnavailable, UpstreamError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    names: dict[int, str]
    stride: int
    imgsz: int


@dataclass
class InferResult:
    detections: np.ndarray  # [K, 6] x1 y1 x2 y2 score class, letterboxed pixels
    model_version: str


# Reconnect quickly after an outage: gRPC's default backoff grows to 120 s, which would keep
# answering 503 long after Triton is back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 2**31 - 1),
]

_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def _translate(exc: InferenceServerException, model: str, retry_after_s: int) -> Exception:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if any(s in status for s in _UNAVAILABLE) or "failed to connect" in message.lower():
        return TritonUnavailable(f"Triton is unavailable: {message}", retry_after_s)
    lowered = message.lower()
    if "unknown model" in lowered or "not found" in lowered or "is not ready" in lowered:
        return ModelNotFound(f"model {model!r}: {message}")
    return UpstreamError(f"Triton error: {message}", triton_status=status)


class DetectorClient:
    def __init__(self, url: str, model: str, timeout_s: float = 10.0,
                 retry_after_s: int = 2) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._info: dict[str, ModelInfo] = {}

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, version: str = "") -> bool:
        try:
            return await self._client.is_model_ready(self.model, version)
        except InferenceServerException:
            return False

    async def model_info(self, version: str = "") -> ModelInfo:
        """Class names, stride and input size from the model's config parameters (cached)."""
        if version in self._info:
            return self._info[version]
        try:
            config = (await self._client.get_model_config(self.model, version, as_json=True))
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        params = {k: v["string_value"] for k, v in config["config"].get("parameters", {}).items()}
        names = {int(k): v for k, v in json.loads(params.get("class_names", "{}")).items()}
        info = ModelInfo(self.model, names, int(params.get("stride", "32")),
                         int(params.get("imgsz", "640")))
        self._info[version] = info
        return info

    async def infer(self, image: np.ndarray, *, conf: float, iou: float, max_det: int,
                    version: str = "") -> InferResult:
        batch = image[None]
        inputs = [grpcclient.InferInput("images", list(batch.shape), "UINT8")]
        inputs[0].set_data_from_numpy(batch)
        for name, value, dtype, np_dtype in (
            ("conf_threshold", conf, "FP32", np.float32),
            ("iou_threshold", iou, "FP32", np.float32),
            ("max_det", max_det, "INT32", np.int32),
        ):
            tensor = grpcclient.InferInput(name, [1, 1], dtype)
            tensor.set_data_from_numpy(np.array([[value]], dtype=np_dtype))
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput("detections"),
                   grpcclient.InferRequestedOutput("num_detections")]
        try:
            result = await self._client.infer(self.model, inputs, model_version=version,
                                              outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        dets = result.as_numpy("detections")[0]
        count = int(result.as_numpy("num_detections")[0, 0])
        return InferResult(dets[:count], result.get_response().model_version)
