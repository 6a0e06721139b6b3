"""Gateway load against in-process baselines, measured in one run on one machine.

    python bench/gateway_load.py [--concurrency 1,2,4,8] [--duration 15] [--weights yolov8n.yaml]

Starts Triton and the gateway (as `visionguard up` does) on a scratch model repository, then
for each concurrency level N runs N clients posting the same JPEG for a fixed time. Beside it,
in the same run and on the same letterboxed input size:
  - onnxruntime in-process on the same ONNX file (session.run on the uint8 input),
  - Ultralytics `predict` in-process on the same JPEG and checkpoint (what a user would deploy
    instead: decode + letterbox + torch + NMS in one process).
Prints a table with images/s, p50/p95/p99 latency and the ratios, Triton's batch statistics,
and writes JSON (default bench/results/gateway_load.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control_plane.cli import start_stack  # noqa: E402
from control_plane.processes import Supervisor  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from export.pipeline import export_to_repository  # noqa: E402
from tracker_service.letterbox import letterbox  # noqa: E402

console = Console()


def percentiles(latencies: list[float]) -> dict[str, float]:
    arr = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99))}


async def gateway_level(url: str, image: bytes, concurrency: int, duration: float,
                        warmup: float) -> dict:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(stop_at: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                r = await client.post("/v1/detect", content=image,
                                      headers={"content-type": "image/jpeg"})
                if record:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors += 1

        await asyncio.gather(*[worker(time.perf_counter() + warmup, False)
                               for _ in range(concurrency)])
        start = time.perf_counter()
        await asyncio.gather(*[worker(start + duration, True) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "images_per_s": len(latencies) / elapsed,
            "requests": len(latencies), "errors": errors, **percentiles(latencies)}


def timed_loop(fn, duration: float, warmup: float) -> dict:
    stop = time.perf_counter() + warmup
    while time.perf_counter() < stop:
        fn()
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        t = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    return {"images_per_s": len(latencies) / elapsed, "requests": len(latencies),
            **percentiles(latencies)}


def onnxruntime_baseline(onnx_path: Path, tensor: np.ndarray, duration: float,
                         warmup: float) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: tensor[None]}
    return timed_loop(lambda: session.run(None, feed), duration, warmup)


def ultralytics_baseline(weights: str, image_path: Path, duration: float,
                         warmup: float) -> dict:
    from export.onnx_export import load_yolo

    yolo = load_yolo(weights)
    return timed_loop(lambda: yolo.predict(str(image_path), verbose=False), duration, warmup)


def triton_batch_stats(settings: Settings) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    stats = client.get_inference_statistics(settings.model_name).model_stats
    return (sum(s.inference_count for s in stats), sum(s.execution_count for s in stats))


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--image", type=Path,
                        default=Path(ultralytics.__file__).parent / "assets" / "bus.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "gateway_load.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    image = args.image.read_bytes()

    from tests.conftest import free_ports

    with tempfile.TemporaryDirectory(prefix="vg-bench-") as tmp:
        http, grpc, metrics, gw = free_ports(4)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw)
        with console.status(f"exporting {args.weights}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1)
        rgb, _ = letterbox(cv2.imread(str(args.image)), settings.imgsz, 32)
        console.print(f"image {args.image.name}: letterboxed input {rgb.shape[0]}x{rgb.shape[1]}")

        results: dict = {"image": args.image.name, "input_hw": list(rgb.shape[:2]),
                         "weights": args.weights, "duration_s": args.duration, "gateway": []}
        with console.status("in-process onnxruntime"):
            results["onnxruntime"] = onnxruntime_baseline(exported.onnx_path, rgb,
                                                          args.duration, args.warmup)
        with console.status("in-process Ultralytics predict"):
            results["ultralytics"] = ultralytics_baseline(args.weights, args.image,
                                                          args.duration, args.warmup)
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status("starting Triton and the gateway"):
                start_stack(settings, supervisor)
            url = f"http://{settings.host}:{settings.gateway_port}"
            for n in levels:
                before = triton_batch_stats(settings)
                with console.status(f"gateway, concurrency {n}"):
                    level = asyncio.run(gateway_level(url, image, n, args.duration,
                                                      args.warmup))
                after = triton_batch_stats(settings)
                level["triton_inferences"] = after[0] - before[0]
                level["triton_executions"] = after[1] - before[1]
                results["gateway"].append(level)

    ort_, ult = results["onnxruntime"], results["ultralytics"]
    by_c = {g["concurrency"]: g for g in results["gateway"]}
    ratios = {}
    if 4 in by_c:
        ratios["c4_vs_onnxruntime_throughput"] = by_c[4]["images_per_s"] / ort_["images_per_s"]
        ratios["c4_vs_ultralytics_throughput"] = by_c[4]["images_per_s"] / ult["images_per_s"]
    if 1 in by_c:
        ratios["c1_p50_vs_onnxruntime_latency"] = by_c[1]["p50_ms"] / ort_["p50_ms"]
    results["ratios"] = ratios

    table = Table(title=f"gateway load: {args.image.name} at {rgb.shape[0]}x{rgb.shape[1]}, "
                        f"{args.duration:.0f}s per row")
    for col in ("what", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                "Triton inferences/executions"):
        table.add_column(col, justify="right")
    table.add_row("onnxruntime in-process", f"{ort_['images_per_s']:.1f}",
                  f"{ort_['p50_ms']:.1f}", f"{ort_['p95_ms']:.1f}", f"{ort_['p99_ms']:.1f}",
                  "", "")
    table.add_row("Ultralytics predict", f"{ult['images_per_s']:.1f}", f"{ult['p50_ms']:.1f}",
                  f"{ult['p95_ms']:.1f}", f"{ult['p99_ms']:.1f}", "", "")
    for g in results["gateway"]:
        table.add_row(f"gateway c={g['concurrency']}", f"{g['images_per_s']:.1f}",
                      f"{g['p50_ms']:.1f}", f"{g['p95_ms']:.1f}", f"{g['p99_ms']:.1f}",
                      str(g["errors"]), f"{g['triton_inferences']}/{g['triton_executions']}")
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name}: {value:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
