"""Where every millisecond of one detection goes, at each input size and concurrency.

    python bench/serving_overhead.py [--sizes 256,640] [--concurrency 1,4] [--rounds 3 --window 4]

For each input size it exports the model at that size, starts Triton and the gateway (as
`visionguard up` does), and interleaves, round after round, windows of:
  - the same work in-process, stage by stage, on the same JPEG: JPEG decode (OpenCV), letterbox,
    the model on the served runtime (OpenVINO with model.py's settings, or onnxruntime), NMS
    (tracker_service.nms.postprocess, which the python backend runs);
  - the gateway at each concurrency: client latency, the gateway's own stage timings (the
    `timings_ms` every response carries: decode, letterbox, waiting for a Triton slot, the Triton
    call, post-processing), and Triton's per-model statistics over the window (queue, python
    backend input conversion, execute = model + NMS, output conversion).
The breakdown then reads: client latency = HTTP (parse, body read, response encoding, the event
loop) + decode + letterbox + slot wait + Triton call + post-processing; Triton call = transport
(gRPC or shared memory, both ways) + Triton queue + input conversion + execute + output
conversion. The breakdown uses means (Triton's statistics are means, and means add up);
latency p50 and throughput are medians; overhead = gateway p50 minus the in-process model +
NMS p50 measured in the same rounds. Prints a table per size and writes JSON
(default bench/results/serving_overhead.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_load import gateway_level  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.stack.supervisor import Supervisor  # noqa: E402
from control_plane.stack.up import start_stack  # noqa: E402
from export.pipeline import export_to_repository  # noqa: E402
from tracker_service.letterbox import letterbox  # noqa: E402
from tracker_service.nms import postprocess  # noqa: E402

console = Console()
GATEWAY_STAGES = ("decode", "preprocess", "queue", "infer", "postprocess", "total")
TRITON_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def served_runner(onnx_path: Path, runtime: str, threads: int):
    """The model as the python backend runs it (model.py's runner settings)."""
    if runtime == "openvino":
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  "INFERENCE_NUM_THREADS": threads}
        compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)
        request, output = compiled.create_infer_request(), compiled.output(0)
        return lambda batch: request.infer({0: batch})[output].copy()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def in_process_window(image: bytes, imgsz: int, run, duration: float) -> dict[str, list[float]]:
    """Each stage of one detection, timed separately, for `duration` seconds (ms)."""
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "letterbox", "model", "nms",
                                                      "total")}
    stop = time.perf_counter() + duration
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        rgb, _ = letterbox(bgr, imgsz, 32)
        t2 = time.perf_counter()
        raw = run(rgb[None])
        t3 = time.perf_counter()
        postprocess(raw[0], 0.25, 0.7, 300)
        t4 = time.perf_counter()
        for k, (a, b) in {"decode": (t0, t1), "letterbox": (t1, t2), "model": (t2, t3),
                          "nms": (t3, t4), "total": (t0, t4)}.items():
            stages[k].append((b - a) * 1000)
    return stages


def triton_stats(settings: Settings) -> dict[str, int]:
    """Cumulative per-model statistics (ns totals and counts) over all versions."""
    r = httpx.get(f"{settings.triton_http_url}/v2/models/{settings.model_name}/stats",
                  timeout=10)
    r.raise_for_status()
    out = {"requests": 0, "executions": 0, "success_ns": 0, **{f"{k}_ns": 0
                                                               for k in TRITON_STAGES}}
    for model in r.json()["model_stats"]:
        s = model["inference_stats"]
        out["requests"] += int(s["success"]["count"])
        out["success_ns"] += int(s["success"]["ns"])
        for k in TRITON_STAGES:
            out[f"{k}_ns"] += int(s[k]["ns"])
        out["executions"] += int(model.get("execution_count", 0))
    return out


def per_request_ms(before: dict, after: dict) -> dict[str, float]:
    n = max(after["requests"] - before["requests"], 1)
    out = {k: (after[f"{k}_ns"] - before[f"{k}_ns"]) / n / 1e6 for k in TRITON_STAGES}
    out["request"] = (after["success_ns"] - before["success_ns"]) / n / 1e6
    out["batch"] = n / max(after["executions"] - before["executions"], 1)
    return out


def median(xs) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def measure_size(args, imgsz: int, image: bytes) -> dict:
    from tests.conftest import free_ports

    with tempfile.TemporaryDirectory(prefix="vg-bench-overhead-") as tmp:
        http, grpc, metrics, gw, control, ui = free_ports(6)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           control_port=control, mlflow_ui_port=ui, imgsz=imgsz)
        with console.status(f"exporting {args.weights} at {imgsz}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1,
                                            imgsz=imgsz, intra_op_threads=args.threads,
                                            runtime=args.runtime)
        run = served_runner(exported.onnx_path, args.runtime, args.threads)
        rgb, _ = letterbox(cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR),
                           imgsz, 32)
        for _ in range(3):
            run(rgb[None])
        inproc: dict[str, list[float]] = {}
        gateway: dict[int, dict] = {n: {"latency": [], "rates": [], "errors": 0,
                                        "stages": {k: [] for k in GATEWAY_STAGES},
                                        "triton": []} for n in args.levels}
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status(f"starting Triton and the gateway ({imgsz} px)"):
                start_stack(settings, supervisor)
            url = f"http://{settings.host}:{settings.gateway_port}"
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{imgsz} px", total=args.rounds * (1 + len(args.levels)))
                for _ in range(args.rounds):
                    for k, v in in_process_window(image, imgsz, run, args.window).items():
                        inproc.setdefault(k, []).extend(v)
                    progress.advance(task)
                    for n in args.levels:
                        before = triton_stats(settings)
                        w = asyncio.run(gateway_level(url, image, n, args.window, args.warmup,
                                                      timings=True))
                        after = triton_stats(settings)
                        g = gateway[n]
                        g["latency"] += [seconds * 1000 for seconds in w["latencies"]]
                        g["rates"].append(w["images_per_s"])
                        g["errors"] += w["errors"]
                        for timings in w["timings_ms"]:
                            for k in GATEWAY_STAGES:
                                g["stages"][k].append(float(timings.get(k, 0.0)))
                        g["triton"].append(per_request_ms(before, after))
                        progress.advance(task)
    model_nms = median(inproc["model"]) + median(inproc["nms"])  # p50s, as the gateway's p50
    result = {"imgsz": imgsz, "input_hw": list(rgb.shape[:2]),
              "in_process_ms": {k: mean(v) for k, v in inproc.items()},
              "in_process_p50_ms": {k: median(v) for k, v in inproc.items()},
              "in_process_images_per_s": 1000 / mean(inproc["total"]), "gateway": {}}
    for n, g in gateway.items():
        stages = {k: mean(v) for k, v in g["stages"].items()}
        triton = {k: mean([t[k] for t in g["triton"]]) for k in (*TRITON_STAGES, "request",
                                                                 "batch")}
        p50 = median(g["latency"])
        result["gateway"][n] = {
            "images_per_s": median(g["rates"]), "p50_ms": p50, "mean_ms": mean(g["latency"]),
            "errors": g["errors"],
            "stages_ms": stages, "triton_ms": triton,
            "breakdown_ms": {
                "http (parse, body, response, event loop)":
                    mean(g["latency"]) - stages["total"],
                "JPEG decode": stages["decode"],
                "letterbox": stages["preprocess"],
                "wait for a Triton slot": stages["queue"],
                "transport to/from Triton": stages["infer"] - triton["request"],
                "Triton queue (dynamic batching)": triton["queue"],
                "python backend input": triton["compute_input"],
                "execute (model + NMS, per request)": triton["compute_infer"],
                "python backend output": triton["compute_output"],
                "boxes back + response body": stages["postprocess"],
            },
            "overhead_ms": p50 - model_nms,
            "vs_in_process_throughput": median(g["rates"]) / result["in_process_images_per_s"],
        }
    return result


def print_size(result: dict) -> None:
    ip = result["in_process_ms"]
    levels = sorted(result["gateway"])
    table = Table(title=f"{result['imgsz']} px (input {result['input_hw'][0]}x"
                        f"{result['input_hw'][1]}): mean ms per request by stage")
    table.add_column("stage")
    table.add_column("in-process", justify="right")
    for n in levels:
        table.add_column(f"gateway c={n}", justify="right")
    keys = list(result["gateway"][levels[0]]["breakdown_ms"])
    in_proc_of = {"JPEG decode": ip["decode"], "letterbox": ip["letterbox"],
                  "execute (model + NMS, per request)": ip["model"] + ip["nms"]}
    for k in keys:
        table.add_row(k, f"{in_proc_of[k]:.2f}" if k in in_proc_of else "",
                      *[f"{result['gateway'][n]['breakdown_ms'][k]:.2f}" for n in levels])
    table.add_row("  of which the model (in-process)", f"{ip['model']:.2f}", *[""] * len(levels))
    table.add_row("  of which NMS (in-process)", f"{ip['nms']:.2f}", *[""] * len(levels))
    table.add_row("total (mean)", f"{ip['total']:.2f}",
                  *[f"{result['gateway'][n]['mean_ms']:.2f}" for n in levels])
    table.add_row("total (p50)", f"{result['in_process_p50_ms']['total']:.2f}",
                  *[f"{result['gateway'][n]['p50_ms']:.2f}" for n in levels])
    table.add_row("overhead (p50 - model - NMS)", "",
                  *[f"{result['gateway'][n]['overhead_ms']:.2f}" for n in levels])
    table.add_row("images/s (median of windows)", f"{result['in_process_images_per_s']:.1f}",
                  *[f"{result['gateway'][n]['images_per_s']:.1f}" for n in levels])
    table.add_row("x in-process throughput", "1.00",
                  *[f"{result['gateway'][n]['vs_in_process_throughput']:.2f}" for n in levels])
    table.add_row("Triton requests per execution", "",
                  *[f"{result['gateway'][n]['triton_ms']['batch']:.2f}" for n in levels])
    console.print(table)


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,640")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2, help="the model's intra-op threads")
    parser.add_argument("--image", type=Path,
                        default=Path(ultralytics.__file__).parent / "assets" / "bus.jpg")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "serving_overhead.json")
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    image = args.image.read_bytes()
    results = {"machine": {"processor": cpu_model(), "architecture": platform.machine(),
                           "cpus": os.cpu_count(), "python": platform.python_version()},
               "image": args.image.name, "weights": args.weights, "runtime": args.runtime,
               "rounds": args.rounds, "window_s": args.window, "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        result = measure_size(args, size, image)
        print_size(result)
        results["sizes"].append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(args.out)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
