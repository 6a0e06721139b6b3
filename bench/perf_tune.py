"""`visionguard perf tune` against in-process inference on both cores (issue 17, item 4).

    python bench/perf_tune.py [--weights W] [--imgsz 640] [--concurrency 8] [--budget-ms 500]
                              [--instances 1,2] [--queue-delay-us 0,1000,4000]
                              [--preferred "2,4,8;none"] [--threads 1,2] [--measurement-ms 4000]

Exports the model at `--imgsz` into a fresh repository, starts Triton and the gateway as
`visionguard up` does, and measures, on the same letterboxed bus.jpg:
  - in-process, the model + NMS as the python backend runs them (model.py's runtime settings),
    on both cores two ways: one runner with 2 threads, and two 1-thread runners in two threads
    (the runtimes release the GIL); the better of the two is the reference;
  - the sweep (control_plane.perf.tune, perf_analyzer at `--concurrency`), and its best point
    within the p95 budget.
Target (issue 17): the tuned config's throughput at concurrency 8 within 10% of the in-process
reference. In-process windows run before and after the sweep; their median is the reference.
Prints a table and writes JSON (default bench/results/perf_tune.json) and the sweep's plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from bench.serving_overhead import served_runner  # noqa: E402
from control_plane.perf import tune  # noqa: E402
from control_plane.perf.analyzer import sample_image  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.stack.supervisor import Supervisor  # noqa: E402
from control_plane.stack.up import start_stack  # noqa: E402
from export.pipeline import export_to_repository  # noqa: E402
from tracker_service.letterbox import letterbox  # noqa: E402
from tracker_service.nms import postprocess  # noqa: E402

console = Console()


def in_process_rate(runners: list, rgb: np.ndarray, duration: float) -> float:
    """Images/s of model + NMS with one Python thread per runner, all running together."""
    counts = [0] * len(runners)
    stop = time.perf_counter() + duration

    def loop(i: int, run) -> None:
        while time.perf_counter() < stop:
            postprocess(run(rgb[None])[0], 0.25, 0.7, 300)
            counts[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i, r)) for i, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "onnxruntime"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget-ms", type=float, default=500.0)
    parser.add_argument("--instances", default="1,2")
    parser.add_argument("--queue-delay-us", default="0,1000,4000")
    parser.add_argument("--preferred", default="2,4,8;none")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--measurement-ms", type=int, default=4000)
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=8.0, help="in-process seconds per window")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "perf_tune.json")
    args = parser.parse_args()
    from tests.conftest import free_ports

    with tempfile.TemporaryDirectory(prefix="vg-bench-tune-") as tmp:
        http, grpc, metrics, gw, control, ui = free_ports(6)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           control_port=control, mlflow_ui_port=ui, imgsz=args.imgsz)
        with console.status(f"exporting {args.weights} at {args.imgsz}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1,
                                            imgsz=args.imgsz, runtime=args.runtime)
        rgb, _ = letterbox(cv2.imread(str(sample_image())), args.imgsz, 32)
        two = served_runner(exported.onnx_path, args.runtime, 2)
        ones = [served_runner(exported.onnx_path, args.runtime, 1) for _ in range(2)]
        for run in (two, *ones):
            for _ in range(3):
                run(rgb[None])
        inproc: dict[str, list[float]] = {"1 runner x 2 threads": [], "2 runners x 1 thread": []}

        def in_process_round() -> None:
            inproc["1 runner x 2 threads"].append(in_process_rate([two], rgb, args.window))
            inproc["2 runners x 1 thread"].append(in_process_rate(ones, rgb, args.window))

        in_process_round()
        points = tune.grid(tune.parse_ints(args.instances, "instances"),
                           tune.parse_ints(args.queue_delay_us, "queue-delay-us"),
                           tune.parse_sizes(args.preferred), tune.parse_ints(args.threads, "threads"),
                           8)
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status("starting Triton and the gateway"):
                start_stack(settings, supervisor)
            with console.status("sweeping") as status:
                result = tune.tune(
                    settings, points, concurrency=args.concurrency, budget_ms=args.budget_ms,
                    measurement_ms=args.measurement_ms,
                    stability_percentage=args.stability_percentage, out_dir=Path(tmp) / "sweep",
                    progress=lambda i, n, p: status.update(f"point {i + 1}/{n}: {p.label}"))
        in_process_round()
    reference_name, reference = max(((k, statistics.median(v)) for k, v in inproc.items()),
                                    key=lambda kv: kv[1])
    base = next((m for m in result.results if m.point == result.baseline), None)
    table = Table(title=f"perf tune at concurrency {args.concurrency}, {args.imgsz} px "
                        f"({cpu_model()}, {os.cpu_count()} CPUs)")
    for col in ("what", "images/s", "p95 ms", "x in-process"):
        table.add_column(col, justify="right")
    for name, rates in inproc.items():
        rate = statistics.median(rates)
        table.add_row(f"in-process, {name}", f"{rate:.1f}", "", f"{rate / reference:.2f}")
    for label, m in (("Triton, as exported", base), ("Triton, tuned (best in budget)",
                                                     result.best)):
        if m and m.error:
            table.add_row(f"{label}: {m.point.label}", "not measured", "", m.error[:80])
        elif m:
            table.add_row(f"{label}: {m.point.label}", f"{m.throughput:.1f}",
                          f"{m.p95_ms:.1f}", f"{m.throughput / reference:.2f}")
    console.print(table)
    out = {"machine": {"processor": cpu_model(), "architecture": platform.machine(),
                       "cpus": os.cpu_count()},
           "weights": args.weights, "imgsz": args.imgsz, "runtime": args.runtime,
           "in_process": inproc, "reference": {"how": reference_name, "images_per_s": reference},
           "sweep": result.as_dict(),
           "tuned_over_in_process": (result.best.throughput / reference) if result.best else None,
           "current_over_in_process": (base.throughput / reference) if base and not base.error
           else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=asdict))
    console.print(f"JSON: {args.out}; plot: {tune.plot(result, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
