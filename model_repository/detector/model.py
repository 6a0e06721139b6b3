"""Triton python-backend detector: runs the exported ONNX file on the CPU.

The runtime is a config parameter: OpenVINO (default, where installed) or onnxruntime; both
read the same ONNX file and give the same outputs to float precision.

Export copies this file into every version folder beside `model.onnx`, so each version is
self-contained and an older one keeps serving unchanged after a newer one is promoted.

Tensor contract (shared with the GPU ensemble, so the gateway never knows which serves):
  in   images          UINT8 [B, H, W, 3]  RGB, letterboxed, H and W multiples of the stride
  in   conf_threshold  FP32  [B, 1]        optional, default from config parameters
  in   iou_threshold   FP32  [B, 1]        optional
  in   max_det         INT32 [B, 1]        optional
  in   return_raw      BOOL  [B, 1]        optional: also return the raw head output (parity)
  out  detections      FP32  [B, K, 6]     x1, y1, x2, y2 (letterboxed pixels), score, class
  out  num_detections  INT32 [B, 1]        valid rows of `detections` per image
  out  raw             FP32  [B, C, N]     raw head output when return_raw, else [B, 0, 0]

The same file serves as `detector_postprocess` in the GPU ensemble: when the config's input is
`raw` (the TensorRT plan's output) it only runs NMS.

Normalisation (uint8 -> float / 255, NHWC -> NCHW) is inside the ONNX graph, so a quarter of the
bytes cross the wire; NMS runs here, so only K x 6 floats come back instead of C x N. The NMS itself
is `tracker_service.nms.postprocess`, the same function the control plane's drift reference runs,
so this file needs the `visionguard` package in the Python Triton embeds (`visionguard up` runs
Triton in this virtual environment; the Triton images install the package with `--no-deps`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from tracker_service.nms import postprocess


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


# Requests of one size (and mode) before its static compile starts: one-off sizes never compile.
COMPILE_AFTER = 2


class OpenVINORunner:
    """OpenVINO's CPU plugin on the ONNX file (or an INT8 variant's IR): measured ~10-20% faster
    than onnxruntime on the 2-core AMD machines this runs on, same outputs to 1e-7 of the output
    range. FP32 inference precision keeps an IR's INT8 layers INT8 (VNNI) and the rest FP32, as
    the ONNX file runs.

    Two levers measured in process (yolov8n at 640x480, bus.jpg; bench/int8.py end to end):
    - Static shapes: the model is reshaped to each [1, H, W, 3] Triton delivers and compiled
      for it, the `max_shapes` most recently used kept (one per image size and mode: lone image
      or batch). OpenVINO's INT8 kernels lose much of their edge on dynamic shapes (INT8 ~25 ms
      dynamic, ~22 static; FP32 ~45 either way). A compile takes a second or more, so it runs
      in a background thread, one at a time, while the dynamic-shape model serves that size: no
      request waits for one; a size seen once (a one-off upload) is not compiled at all. A
      camera's frames share one shape. Traffic cycling through more sizes than `max_shapes`
      recompiles evicted ones in the background; `max_shapes` 0 keeps the dynamic model only.
    - Streams for batches: a dynamic batch of two or more images is split into single images
      run in parallel on `streams` single-threaded streams (THROUGHPUT hint), which beats one
      two-thread request on the batch (INT8 ~19 ms per image against ~25; FP32 ~40 against
      ~45). A lone image runs on a LATENCY-compiled model with all the threads (c=1 latency)."""

    def __init__(self, path: Path, threads: int, streams: int, max_shapes: int) -> None:
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        self._path = path
        self._threads, self._streams, self._max_shapes = threads, max(streams, 1), max_shapes
        self._compiled: OrderedDict[tuple, tuple] = OrderedDict()  # most recently used last
        self._compiling: tuple | None = None
        self._failed: set[tuple] = set()  # not retried: the dynamic model serves these
        self._seen: OrderedDict[tuple, int] = OrderedDict()  # requests per size not compiled
        self._lock = threading.Lock()
        dynamic = self._compile(self._core.read_model(str(path)), "LATENCY")
        self._dynamic = (dynamic.create_infer_request(), dynamic.output(0))

    def _compile(self, model, hint: str):
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if hint == "THROUGHPUT":
            config["NUM_STREAMS"] = str(self._streams)
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return self._core.compile_model(model, "CPU", config)

    def _static(self, key: tuple) -> tuple | None:
        """The compiled model's request (or queue) and output for `key`, or None until it is
        compiled (the dynamic model serves meanwhile); the `COMPILE_AFTER`th request of a size
        starts its compile."""
        with self._lock:
            entry = self._compiled.get(key)
            if entry is not None:
                self._compiled.move_to_end(key)
            elif key not in self._failed:
                self._seen[key] = self._seen.pop(key, 0) + 1
                while len(self._seen) > 64:
                    self._seen.popitem(last=False)
                if self._compiling is None and self._seen[key] >= COMPILE_AFTER:
                    del self._seen[key]
                    self._compiling = key
                    threading.Thread(target=self._build, args=(key,), daemon=True).start()
            return entry

    def _build(self, key: tuple) -> None:
        height, width, parallel = key
        try:
            model = self._core.read_model(str(self._path))
            model.reshape({model.input(0).get_any_name(): [1, height, width, 3]})
            compiled = self._compile(model, "THROUGHPUT" if parallel else "LATENCY")
            runner = (self._ov.AsyncInferQueue(compiled, self._streams) if parallel
                      else compiled.create_infer_request())
            with self._lock:
                while len(self._compiled) >= self._max_shapes:
                    self._compiled.popitem(last=False)
                self._compiled[key] = (runner, compiled.output(0))
            # Goes to Triton's log, as a failure does: the dynamic model keeps serving then.
            print(f"{self._path.name}: compiled for 1x{height}x{width}x3 "
                  f"({f'{self._streams} streams' if parallel else 'latency'})", flush=True)
        except Exception as exc:  # noqa: BLE001 - a thread's error would otherwise vanish
            print(f"{self._path.name}: static compile for 1x{height}x{width}x3 failed, the "
                  f"dynamic model serves it: {exc}", flush=True)
            with self._lock:
                self._failed.add(key)
        finally:
            with self._lock:
                self._compiling = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n, height, width = batch.shape[:3]
        parallel = n > 1 and self._streams > 1
        entry = self._static((height, width, parallel)) if self._max_shapes else None
        if entry is None:
            request, output = self._dynamic
            return request.infer({0: batch})[output].copy()
        runner, output = entry
        if not parallel:
            return np.concatenate([runner.infer({0: batch[i:i + 1]})[output].copy()
                                   for i in range(n)])
        outs: list = [None] * n
        runner.set_callback(lambda request, i: outs.__setitem__(
            i, request.get_output_tensor(0).data.copy()))
        for i in range(n):
            runner.start_async({0: batch[i:i + 1]}, i)
        runner.wait_all()
        return np.concatenate(outs)


def _onnxruntime_runner(path: Path, threads: int, spin: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would steal the cores the gateway needs to decode the next image.
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_conf = float(params.get("conf_threshold", "0.25"))
        self.default_iou = float(params.get("iou_threshold", "0.7"))
        self.default_max_det = int(params.get("max_det", "300"))
        self.postprocess_only = any(i["name"] == "raw" for i in config["input"])
        if self.postprocess_only:
            return
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("intra_op_threads", "0"))
        streams = int(params.get("openvino_streams", "1"))
        max_shapes = int(params.get("openvino_static_shapes", "0"))
        # An INT8 variant (`visionguard models quantize`) carries OpenVINO IR beside its
        # parent's FP32 ONNX (the parity reference): the IR is what serves, same tensors.
        model_file = version_dir / "model.xml"
        if model_file.exists():
            if not _openvino_available():
                raise RuntimeError(f"{model_file} is OpenVINO IR and openvino is not installed")
            self.run = OpenVINORunner(model_file, threads, streams, max_shapes)
            runtime = "openvino"
        elif params.get("runtime", "openvino") == "openvino" and _openvino_available():
            model_file = version_dir / "model.onnx"
            self.run = OpenVINORunner(model_file, threads, streams, max_shapes)
            runtime = "openvino"
        else:
            model_file = version_dir / "model.onnx"
            self.run = _onnxruntime_runner(model_file, threads,
                                           params.get("allow_spinning", "0"))
            runtime = "onnxruntime"
        # Goes to Triton's log: which runtime serves is never a silent choice.
        shapes = ""
        if runtime == "openvino":
            shapes = (f", static shapes (up to {max_shapes} compiled), batches on {streams} "
                      "streams" if max_shapes else ", dynamic shapes")
        print(f"{args['model_name']} version {args['model_version']}: {model_file.name} on "
              f"{runtime}, {threads or 'default'} threads{shapes}", flush=True)

    def _optional(self, request, name: str, default, count: int) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full(count, default)
        return tensor.as_numpy().reshape(-1)

    def _raw_outputs(self, requests) -> list[np.ndarray]:
        if self.postprocess_only:
            return [pb_utils.get_input_tensor_by_name(r, "raw").as_numpy() for r in requests]
        # Requests of one dynamic batch share a shape when the batcher grouped them; run them
        # through the runtime together, then post-process each with its own thresholds.
        arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) == 1:
            raws = np.split(self.run(np.concatenate(arrays)), np.cumsum(sizes)[:-1])
        else:
            raws = [self.run(a) for a in arrays]
        return raws

    def execute(self, requests):
        raws = self._raw_outputs(requests)
        responses = []
        for request, raw in zip(requests, raws):
            n = raw.shape[0]
            conf = self._optional(request, "conf_threshold", self.default_conf, n)
            iou = self._optional(request, "iou_threshold", self.default_iou, n)
            max_det = self._optional(request, "max_det", self.default_max_det, n)
            want_raw = self._optional(request, "return_raw", False, n)
            if not (np.all(np.isfinite(raw))):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("model produced non-finite outputs")))
                continue
            dets = [postprocess(raw[i], float(conf[i]), float(iou[i]), int(max_det[i]))
                    for i in range(n)]
            k = max((d.shape[0] for d in dets), default=0)
            out = np.zeros((n, k, 6), np.float32)
            for i, d in enumerate(dets):
                out[i, : d.shape[0]] = d
            counts = np.array([[d.shape[0]] for d in dets], np.int32)
            requested = set(request.requested_output_names())
            outputs = [pb_utils.Tensor("detections", out),
                       pb_utils.Tensor("num_detections", counts)]
            if not self.postprocess_only and "raw" in requested:
                raw_out = raw if bool(np.any(want_raw)) else np.zeros((n, 0, 0), np.float32)
                outputs.append(pb_utils.Tensor("raw", np.ascontiguousarray(raw_out, np.float32)))
            # Only what the request asked for (every output when it named none): the Python
            # 3.12 stub of Triton 2.48 (nvidia-pytriton 0.5.10) hangs the instance for good when
            # a response carries an output that was not requested (the 3.11 stub drops it).
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[t for t in outputs if t.name() in requested]))
        return responses

    def finalize(self) -> None:
        self.run = None  # releases the runtime's memory before the stub exits
