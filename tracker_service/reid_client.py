"""Appearance embeddings from the `reid` model served by Triton (the DeepSORT embedder).

The gateway crops every box of a frame, resizes the crops to the model's input size and sends them
as one uint8 batch (a quarter of the bytes of float pixels; the model normalises). Triton's
dynamic batching then merges the frames of concurrent streams. The crop size, embedding size and
batch limit come from the model's config, so a re-exported model needs no gateway change.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import cv2
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tracker_service.triton_client import CHANNEL_ARGS, _translate

__all__ = ["ReidInfo", "TritonEmbedder", "crop_boxes"]


@dataclass(frozen=True)
class ReidInfo:
    name: str
    input_hw: tuple[int, int]
    dim: int
    max_batch_size: int


def crop_boxes(frame: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 frame, (N, 4) xyxy boxes -> (N, h, w, 3) uint8 crops of size `input_hw`.

    Boxes are clipped to the frame (pixel edges: floor of x1/y1, ceil of x2/y2). A box left with
    no area (outside the frame, inverted, NaN) becomes the nearest 1x1 pixel: the tracker still
    gets an embedding for every detection, and a meaningless one costs nothing worse than a
    poor appearance match.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    h, w = input_hw
    boxes = np.nan_to_num(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    out = np.empty((len(boxes), h, w, 3), np.uint8)
    H, W = frame.shape[:2]
    x1 = np.clip(np.floor(boxes[:, 0]), 0, W - 1).astype(int)
    y1 = np.clip(np.floor(boxes[:, 1]), 0, H - 1).astype(int)
    x2 = np.maximum(np.clip(np.ceil(boxes[:, 2]), 0, W).astype(int), x1 + 1)
    y2 = np.maximum(np.clip(np.ceil(boxes[:, 3]), 0, H).astype(int), y1 + 1)
    for i in range(len(boxes)):
        crop = np.ascontiguousarray(frame[y1[i]:y2[i], x1[i]:x2[i]])
        out[i] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


class TritonEmbedder:
    """``await embed(frame, boxes)`` -> (N, D) float32 unit vectors, one per box."""

    def __init__(self, url: str, model: str = "reid", timeout_s: float = 10.0,
                 retry_after_s: int = 2) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._info: ReidInfo | None = None

    async def close(self) -> None:
        await self._client.close()

    async def model_info(self) -> ReidInfo:
        """Crop size, embedding size and batch limit from the model's config (cached)."""
        if self._info is not None:
            return self._info
        try:
            config = (await self._client.get_model_config(self.model, as_json=True))["config"]
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        h, w = json.loads(params["input_hw"])
        self._info = ReidInfo(self.model, (int(h), int(w)), int(params["embedding_dim"]),
                              max(1, int(config.get("max_batch_size", 1))))
        return self._info

    async def embed(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``frame`` (H, W, 3) uint8 RGB, ``boxes`` (N, 4) x1, y1, x2, y2 -> (N, D) float32."""
        info = await self.model_info()
        crops = crop_boxes(frame, boxes, info.input_hw)
        if len(crops) == 0:
            return np.zeros((0, info.dim), np.float32)
        step = info.max_batch_size
        parts = await asyncio.gather(*(self._infer(crops[i:i + step])
                                       for i in range(0, len(crops), step)))
        return np.concatenate(parts).astype(np.float32, copy=False)

    async def _infer(self, crops: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput("crops", list(crops.shape), "UINT8")
        tensor.set_data_from_numpy(crops)
        try:
            result = await self._client.infer(
                self.model, [tensor], outputs=[grpcclient.InferRequestedOutput("embeddings")],
                client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _translate(exc, self.model, self.retry_after_s) from None
        return result.as_numpy("embeddings")
