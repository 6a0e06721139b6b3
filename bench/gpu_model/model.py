"""Triton python-backend detector for bench/gpu_path.py: the traced YOLO model run with torch.

The GPU path this project can measure without TensorRT (docs/design.md: TensorRT cannot be
installed on any machine here): the detector under the same name and tensor contract as
model_repository/detector/model.py, but the model is a TorchScript trace run by torch on CUDA in
FP16 (optionally replayed as CUDA graphs, one per batch size), and NMS is torchvision's on the
same device, so only K x 6 floats per image come back to the CPU. Without CUDA the same file runs
the trace on the CPU in FP32 (the benchmark's CI fallback).

Tensor contract (model_repository/detector/model.py's):
  in   images          UINT8 [B, H, W, 3]  RGB, letterboxed; H, W = the traced size
  in   conf_threshold  FP32  [B, 1]        optional
  in   iou_threshold   FP32  [B, 1]        optional
  in   max_det         INT32 [B, 1]        optional
  in   return_raw      BOOL  [B, 1]        optional
  out  detections      FP32  [B, K, 6]     x1, y1, x2, y2 (letterboxed pixels), score, class
  out  num_detections  INT32 [B, 1]
  out  raw             FP32  [B, C, N]     raw head output when return_raw, else [B, 0, 0]

A trace fixes the input's height and width (YOLO's anchors are computed for one size and baked
in): another size is refused with an error that names the traced one, never answered wrongly.
Only torch, torchvision and numpy are imported: the GPU machine's Python has those and nothing
of this project installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import triton_python_backend_utils as pb_utils


def postprocess(raw: torch.Tensor, conf: torch.Tensor, iou: np.ndarray, max_det: np.ndarray,
                max_nms: int) -> list[np.ndarray]:
    """[B, 4 + nc, N] raw head output -> per image [K, 6] detections, with Ultralytics' (and
    tracker_service/nms.py's) semantics: best class per anchor, score > conf, the `max_nms`
    best candidates, class-aware NMS, at most `max_det` kept, highest score first.

    One NMS call for the whole batch: boxes of different images and classes are kept apart by
    an offset per (image, class), in float64 so that 32 images x 80 classes of offsets leave
    sub-pixel precision. torchvision's batched_nms would loop over the groups instead."""
    raw = raw.float()
    b, c, n = raw.shape
    nc = c - 4
    scores, cls = raw[:, 4:].max(1)  # [B, N]
    if n > max_nms:
        top = scores.topk(max_nms, dim=1).indices
        scores, cls = scores.gather(1, top), cls.gather(1, top)
        raw = raw.gather(2, top[:, None].expand(b, c, max_nms))
    img, anchor = (scores > conf[:, None]).nonzero(as_tuple=True)
    xywh = raw[img, :4, anchor]
    score, label = scores[img, anchor], cls[img, anchor]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    kept_parts = []
    for threshold in np.unique(iou):  # one group in practice: every request's default
        sel = torch.as_tensor(iou, device=raw.device)[img] == float(threshold)
        idx = sel.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        shifted = boxes[idx].double()
        offset = (img[idx] * nc + label[idx]).double() * (shifted.max() + 1)
        kept = torchvision.ops.nms(shifted + offset[:, None], score[idx].double(),
                                   float(threshold))
        kept_parts.append(idx[kept])
    if not kept_parts:
        return [np.zeros((0, 6), np.float32) for _ in range(b)]
    kept = torch.cat(kept_parts)
    rows = torch.cat([boxes[kept], score[kept, None], label[kept, None].float()], 1)
    rows, owner = rows.cpu().numpy(), img[kept].cpu().numpy()
    order = np.argsort(owner, kind="stable")  # per image, NMS's score order kept
    rows, owner = rows[order], owner[order]
    bounds = np.searchsorted(owner, np.arange(b + 1))
    return [rows[bounds[i]:bounds[i + 1]][: int(max_det[i])] for i in range(b)]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_conf = float(params.get("conf_threshold", "0.25"))
        self.default_iou = float(params.get("iou_threshold", "0.7"))
        self.default_max_det = int(params.get("max_det", "300"))
        self.max_nms = int(params.get("max_nms", "30000"))
        self.input_hw = tuple(int(v) for v in params["input_hw"].split("x"))
        self.device = torch.device(params.get("device", "cpu"))
        self.dtype = torch.float16 if params.get("dtype") == "fp16" else torch.float32
        if self.device.type == "cpu":
            torch.set_num_threads(int(params.get("threads", "0")) or torch.get_num_threads())
        else:
            torch.backends.cudnn.benchmark = True  # one input size: pick the fastest kernels
        path = Path(args["model_repository"]) / args["model_version"] / "model.torchscript"
        self.model = torch.jit.load(str(path), map_location=self.device).eval().to(self.dtype)
        self.graphs: dict[int, tuple] | None = (
            {} if params.get("cuda_graphs") == "1" and self.device.type == "cuda" else None)
        self.mode = "CUDA graphs" if self.graphs is not None else "eager"
        if self.graphs is not None:
            # Every batch size Triton may form, captured now: a size first met under load
            # would stall its batch for the capture (and the profiling executor's runs), which
            # kept perf_analyzer's windows at batch 1 x concurrency 64 from settling on the H200.
            start = time.perf_counter()
            sizes = int(config.get("max_batch_size") or 1)
            try:
                for batch in range(1, sizes + 1):
                    self._graph(batch)
                self.mode = (f"CUDA graphs (batch 1-{sizes} captured at load in "
                             f"{time.perf_counter() - start:.1f} s)")
            except RuntimeError as exc:
                print(f"CUDA graph capture failed ({exc}); serving eagerly", flush=True)
                self.graphs, self.mode = None, "eager"
        # Goes to Triton's log, which bench/gpu_path.py reads back: what served is never a guess.
        print(f"{args['model_name']} version {args['model_version']}: TorchScript on "
              f"{self.device} {self.dtype}, {self.mode}, input {self.input_hw}; torch "
              f"{torch.__version__}, numpy {np.__version__}", flush=True)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.graphs is None:
            return self.model(x)
        try:
            graph, static_in, static_out = self._graph(x.shape[0])
        except RuntimeError as exc:  # capture refused: serve eagerly, and say so
            print(f"CUDA graph capture failed ({exc}); serving eagerly", flush=True)
            self.graphs, self.mode = None, "eager"
            return self.model(x)
        static_in.copy_(x)
        graph.replay()
        return static_out  # read before the next execute: one execute at a time per instance

    def _graph(self, batch: int) -> tuple:
        """One graph per batch size, captured the first time that size arrives."""
        if batch not in self.graphs:
            static_in = torch.zeros((batch, 3, *self.input_hw), dtype=self.dtype,
                                    device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # the JIT's profiling runs happen before the capture
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self.graphs[batch] = (graph, static_in, static_out)
        return self.graphs[batch]

    def _optional(self, request, name: str, default, count: int) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full(count, default)
        return tensor.as_numpy().reshape(-1)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        bad = [a.shape[1:3] for a in arrays if tuple(a.shape[1:3]) != self.input_hw]
        if bad:
            error = pb_utils.TritonError(f"this benchmark's model is traced for input "
                                         f"{self.input_hw[0]}x{self.input_hw[1]}; got {bad[0]}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        sizes = [a.shape[0] for a in arrays]
        conf = np.concatenate([self._optional(r, "conf_threshold", self.default_conf, n)
                               for r, n in zip(requests, sizes)]).astype(np.float32)
        iou = np.concatenate([self._optional(r, "iou_threshold", self.default_iou, n)
                              for r, n in zip(requests, sizes)]).astype(np.float32)
        max_det = np.concatenate([self._optional(r, "max_det", self.default_max_det, n)
                                  for r, n in zip(requests, sizes)])
        want_raw = [bool(np.any(self._optional(r, "return_raw", False, n)))
                    for r, n in zip(requests, sizes)]
        with torch.inference_mode():
            pixels = torch.from_numpy(np.concatenate(arrays)).to(self.device)
            x = pixels.permute(0, 3, 1, 2).to(self.dtype).div_(255)
            raw = self._forward(x)
            if not bool(torch.isfinite(raw).all()):
                error = pb_utils.TritonError("model produced non-finite outputs")
                return [pb_utils.InferenceResponse(error=error) for _ in requests]
            dets = postprocess(raw, torch.as_tensor(conf, device=self.device), iou, max_det,
                               self.max_nms)
            raws = raw.float().cpu().numpy() if any(want_raw) else None
        responses, start = [], 0
        for request, n, wants in zip(requests, sizes, want_raw):
            mine = dets[start:start + n]
            k = max((d.shape[0] for d in mine), default=0)
            out = np.zeros((n, k, 6), np.float32)
            for i, d in enumerate(mine):
                out[i, : d.shape[0]] = d
            counts = np.array([[d.shape[0]] for d in mine], np.int32)
            raw_out = raws[start:start + n] if wants else np.zeros((n, 0, 0), np.float32)
            tensors = [pb_utils.Tensor("detections", out),
                       pb_utils.Tensor("num_detections", counts),
                       pb_utils.Tensor("raw", np.ascontiguousarray(raw_out, np.float32))]
            # Only the requested outputs: the GPU machine's Python 3.12 stub (Triton 2.48 from
            # nvidia-pytriton 0.5.10) hangs the instance for good when a response carries one
            # that was not requested, as the gateway's (detections, num_detections) were.
            requested = set(request.requested_output_names())
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[t for t in tensors if t.name() in requested]))
            start += n
        return responses

    def finalize(self) -> None:
        self.model = self.graphs = None  # frees the device memory before the stub exits
