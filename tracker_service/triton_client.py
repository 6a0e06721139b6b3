"""Async gRPC client for the detector: one channel, reused; Triton errors made typed.

The gateway does not know whether the detector is the CPU python-backend model or the GPU
TensorRT ensemble: both take `images` (uint8 NHWC) and return `detections` + `num_detections`.
gRPC reconnects by itself when Triton comes back, so an outage needs no gateway restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tracker_service.errors import ModelNotFound, TritonUnavailable, UpstreamError

log = logging.getLogger("visionguard.triton_client")


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


class ShmPool:
    """POSIX shared-memory regions for input images, registered with Triton by key.

    With gateway and Triton on one host, an image goes through /dev/shm instead of being
    serialised into the gRPC message and copied out of it again. One region per Triton call in
    flight; regions are registered again if Triton restarts (it forgets registrations).
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        prefix = f"vg_{os.getpid()}_{secrets.token_hex(3)}"
        self.regions = [SharedMemory(name=f"{prefix}_{i}", create=True, size=slot_bytes)
                        for i in range(slots)]
        self.free: asyncio.Queue[SharedMemory] = asyncio.Queue()
        for region in self.regions:
            self.free.put_nowait(region)
        self.registered = False
        self.generation = 0  # bumped by each registration
        self._lock = asyncio.Lock()

    async def register(self, client, seen_generation: int | None = None) -> None:
        """(Re-)register every region, once per failure: concurrent requests that saw the same
        failure wait for one registration instead of racing each other's."""
        async with self._lock:
            if seen_generation is not None and seen_generation != self.generation:
                return  # another request registered them again meanwhile
            if seen_generation is None and self.registered:
                return
            for region in self.regions:
                try:
                    await client.unregister_system_shared_memory(region.name,
                                                                 client_timeout=10)
                except InferenceServerException:
                    pass
                await client.register_system_shared_memory(region.name, f"/{region.name}",
                                                           region.size, client_timeout=10)
            self.registered = True
            self.generation += 1

    async def close(self, client) -> None:
        for region in self.regions:
            if self.registered:
                try:
                    await client.unregister_system_shared_memory(region.name)
                except InferenceServerException:
                    pass
            region.close()
            region.unlink()


class DetectorClient:
    def __init__(self, url: str, model: str, timeout_s: float = 10.0,
                 retry_after_s: int = 2, shared_memory_slots: int = 0,
                 max_image_bytes: int = 640 * 640 * 3) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._info: dict[str, ModelInfo] = {}
        self._shm = ShmPool(shared_memory_slots, max_image_bytes) if shared_memory_slots else None

    async def close(self) -> None:
        if self._shm is not None:
            await self._shm.close(self._client)
        await self._client.close()

    async def ready(self, version: str = "") -> bool:
        try:
            return await self._client.is_model_ready(self.model, version,
                                                     client_timeout=self.timeout_s)
        except InferenceServerException:
            return False

    async def inference_statistics(self, timeout_s: float = 2.0) -> list[dict]:
        """Triton's per-model-version statistics (all loaded models), as JSON dicts."""
        try:
            stats = await self._client.get_inference_statistics(
                "", as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        return stats.get("model_stats", [])

    async def model_info(self, version: str = "") -> ModelInfo:
        """Class names, stride and input size from the model's config parameters (cached)."""
        if version in self._info:
            return self._info[version]
        try:
            config = await self._client.get_model_config(
                self.model, version, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        params = {k: v["string_value"] for k, v in config["config"].get("parameters", {}).items()}
        names = {int(k): v for k, v in json.loads(params.get("class_names", "{}")).items()}
        info = ModelInfo(self.model, names, int(params.get("stride", "32")),
                         int(params.get("imgsz", "640")))
        self._info[version] = info
        return info

    async def infer(self, image: np.ndarray, *, conf: float, iou: float, max_det: int,
                    version: str = "", headers: dict[str, str] | None = None) -> InferResult:
        """`headers` go out as gRPC metadata: W3C `traceparent` joins Triton's spans to ours."""
        if self._shm is None or image.nbytes > self._shm.regions[0].size:
            return await self._infer(image, None, conf, iou, max_det, version, headers)
        region = await self._shm.free.get()
        try:
            np.copyto(np.ndarray(image.shape, np.uint8, buffer=region.buf), image)
            try:
                if not self._shm.registered:
                    await self._shm.register(self._client)
                generation = self._shm.generation
                return await self._infer(image, region, conf, iou, max_det, version, headers)
            except UpstreamError as exc:
                if "shared memory" not in exc.message.lower():
                    raise
                # Triton restarted and forgot the regions: register them again (once for all
                # the requests that saw it) and retry this one.
                log.warning("re-registering shared memory after: %s", exc.message,
                            extra={"event": "shm_reregister"})
                await self._shm.register(self._client, generation)
                return await self._infer(image, region, conf, iou, max_det, version, headers)
            except TritonUnavailable:
                self._shm.registered = False
                raise
            except InferenceServerException as exc:
                raise _translate(exc, self.model, self.retry_after_s) from None
        finally:
            self._shm.free.put_nowait(region)

    async def _infer(self, image: np.ndarray, region: SharedMemory | None, conf: float,
                     iou: float, max_det: int, version: str,
                     headers: dict[str, str] | None = None) -> InferResult:
        shape = [1, *image.shape]
        inputs = [grpcclient.InferInput("images", shape, "UINT8")]
        if region is None:
            inputs[0].set_data_from_numpy(image[None])
        else:
            inputs[0].set_shared_memory(region.name, image.nbytes)
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
                                              outputs=outputs, client_timeout=self.timeout_s,
                                              headers=headers)
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        dets = result.as_numpy("detections")[0]
        count = int(result.as_numpy("num_detections")[0, 0])
        return InferResult(dets[:count], result.get_response().model_version)
