"""Gateway load against in-process baselines, measured in one run on one machine.

    python bench/gateway_load.py [--concurrency 1,2,4,8] [--rounds 5 --window 4] [--imgsz 640]
                                  [--runtime ...]

Starts Triton and the gateway (as `visionguard up` does) on a scratch model repository, then
for each concurrency level N runs N clients posting the same JPEG for a fixed time. Beside it,
in the same run and on the same letterboxed input size:
  - onnxruntime in-process on the same ONNX file (session.run on the uint8 input),
  - Ultralytics `predict` in-process on the same JPEG and checkpoint (what a user would deploy
    instead: decode + letterbox + torch + NMS in one process).
Windows of every configuration are interleaved round after round, so the machine's noise falls
on all of them alike; throughput is the median over windows, ratios the median of the ratios
within each round. Prints a table with images/s, p50/p95/p99 latency, the ratios and Triton's
batch statistics, and writes JSON (default bench/results/gateway_load.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httptools
import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from control_plane.stack.up import start_stack  # noqa: E402
from control_plane.stack.supervisor import Supervisor  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from export.pipeline import export_to_repository  # noqa: E402
from tracker_service.letterbox import letterbox  # noqa: E402

console = Console()


def percentiles(latencies: list[float]) -> dict[str, float]:
    arr = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99))}


class _Response:
    """One response as httptools parses it (the parser calls these methods)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.parts: list[bytes] = []
        self.done = self.keep_alive = False

    def on_headers_complete(self) -> None:
        # Asked here: once the message completes, llhttp answers False.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def on_message_complete(self) -> None:
        self.done = True


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection, responses parsed by httptools (the C parser uvicorn
    itself uses). The load generator for the gateway benches: httpx's AsyncClient spends
    about 0.6 ms more of the client's own CPU per request (against a no-op ASGI app on the
    2-core AMD EPYC: p50 0.7-1.0 ms a round trip, this client 0.37-0.41 ms), which the bench
    then counted as the gateway's overhead, and took from the cores the gateway and Triton
    share at concurrency 4. One client per concurrent worker."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """(status, body); once more on a new connection if the server closed the idle one."""
        request = (f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                   f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
                   ).encode() + body
        try:
            return await self._exchange(request)
        except (ConnectionError, httptools.HttpParserError, asyncio.IncompleteReadError):
            await self.close()
        return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(request)
        await self._writer.drain()
        response = _Response()
        while not response.done:
            data = await self._reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            response.parser.feed_data(data)
        if not response.keep_alive:
            await self.close()
        return response.parser.get_status_code(), b"".join(response.parts)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        self._reader = self._writer = None


CLIENTS = ("keepalive", "httpx")


async def gateway_level(url: str, image: bytes, concurrency: int, duration: float,
                        warmup: float, timings: bool = False, path: str = "/v1/detect",
                        body=None, client: str = "keepalive") -> dict:
    """`concurrency` clients posting `image` to `path` for `duration` seconds after `warmup`:
    images/s, each successful request's latency (s) and the error count. With `timings`, also
    each successful response's `timings_ms` (the gateway's own stages), in the latencies'
    order; off by default, as parsing every body takes the client's CPU from the load it makes.
    `body`: a callable giving each request's bytes instead of `image` (distinct images).
    `client`: "keepalive" (KeepAliveClient, one connection per worker) or "httpx" (the
    benches' client before: an AsyncClient pool)."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors = 0
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, not {client!r}")
    target = urlsplit(url)

    async def worker(post, stop_at: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, content = await post(body() if body else image)
            if record:
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                    if timings:
                        stages.append(json.loads(content)["timings_ms"])
                else:
                    errors += 1

    async def run(posts) -> float:
        await asyncio.gather(*[worker(p, time.perf_counter() + warmup, False) for p in posts])
        start = time.perf_counter()
        await asyncio.gather(*[worker(p, start + duration, True) for p in posts])
        return time.perf_counter() - start

    headers = {"content-type": "image/jpeg"}
    if client == "httpx":
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(
                max_connections=concurrency)) as pool:
            async def post(content: bytes) -> tuple[int, bytes]:
                r = await pool.post(path, content=content, headers=headers)
                return r.status_code, r.content
            elapsed = await run([post] * concurrency)
    else:
        conns = [KeepAliveClient(target.hostname, target.port or 80) for _ in range(concurrency)]
        try:
            elapsed = await run([partial(c.post, path, content_type=headers["content-type"])
                                 for c in conns])
        finally:
            for c in conns:
                await c.close()
    result = {"images_per_s": len(latencies) / elapsed, "latencies": latencies, "errors": errors}
    if timings:
        result["timings_ms"] = stages
    return result


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
    return {"images_per_s": len(latencies) / elapsed, "latencies": latencies}


def onnxruntime_baseline(onnx_path: Path, tensor: np.ndarray):
    """session.run on the letterboxed uint8 input, onnxruntime's default session options."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: tensor[None]}
    return lambda: session.run(None, feed)


def ultralytics_baseline(weights: str, image_path: Path, imgsz: int = 640):
    """What a user would deploy instead: predict() on the JPEG (decode, letterbox, torch, NMS)."""
    from export.onnx_export import load_yolo

    yolo = load_yolo(weights)
    return lambda: yolo.predict(str(image_path), imgsz=imgsz, verbose=False)


def summarise(windows: list[dict]) -> dict:
    """Median throughput over windows; latency percentiles over every request of every window."""
    latencies = [x for w in windows for x in w["latencies"]]
    out = {"images_per_s": float(np.median([w["images_per_s"] for w in windows])),
           "images_per_s_windows": [round(w["images_per_s"], 2) for w in windows],
           "requests": len(latencies), **percentiles(latencies)}
    if any("errors" in w for w in windows):
        out["errors"] = sum(w.get("errors", 0) for w in windows)
    return out


def triton_batch_stats(settings: Settings) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    stats = client.get_inference_statistics(settings.model_name).model_stats
    return (sum(s.inference_count for s in stats), sum(s.execution_count for s in stats))


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before a window")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=640,
                        help="the model's input size (`up`'s bootstrap model: 256)")
    parser.add_argument("--allow-spinning", action="store_true",
                        help="let Triton's onnxruntime threads spin (export option)")
    parser.add_argument("--intra-op-threads", type=int, default=2)
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "onnxruntime"],
                        help="runtime of the CPU python-backend model (export option)")
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
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           imgsz=args.imgsz)
        with console.status(f"exporting {args.weights} at {args.imgsz}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1,
                                            imgsz=args.imgsz,
                                            allow_spinning=args.allow_spinning,
                                            intra_op_threads=args.intra_op_threads,
                                            runtime=args.runtime)
        rgb, _ = letterbox(cv2.imread(str(args.image)), settings.imgsz, 32)
        console.print(f"image {args.image.name}: letterboxed input {rgb.shape[0]}x{rgb.shape[1]}")

        results: dict = {"machine": cpu_model(), "imgsz": args.imgsz,
                         "image": args.image.name, "input_hw": list(rgb.shape[:2]),
                         "weights": args.weights, "window_s": args.window,
                         "rounds": args.rounds, "allow_spinning": args.allow_spinning,
                         "intra_op_threads": args.intra_op_threads, "runtime": args.runtime}
        with console.status("loading the in-process baselines"):
            baselines = {"onnxruntime": onnxruntime_baseline(exported.onnx_path, rgb),
                         "ultralytics": ultralytics_baseline(args.weights, args.image,
                                                             args.imgsz)}
        windows: dict[str, list[dict]] = {k: [] for k in baselines}
        windows.update({f"c{n}": [] for n in levels})
        batches = {n: [0, 0] for n in levels}
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status("starting Triton and the gateway"):
                start_stack(settings, supervisor)
            url = f"http://{settings.host}:{settings.gateway_port}"
            # Interleave short windows of every configuration, round after round: the
            # machine's noise then falls on all of them alike, and medians compare.
            with Progress(console=console) as progress:
                task = progress.add_task("measuring", total=args.rounds * len(windows))
                for _ in range(args.rounds):
                    for name, fn in baselines.items():
                        windows[name].append(timed_loop(fn, args.window, args.warmup))
                        progress.advance(task)
                    for n in levels:
                        before = triton_batch_stats(settings)
                        windows[f"c{n}"].append(asyncio.run(
                            gateway_level(url, image, n, args.window, args.warmup)))
                        after = triton_batch_stats(settings)
                        batches[n][0] += after[0] - before[0]
                        batches[n][1] += after[1] - before[1]
                        progress.advance(task)

    results["onnxruntime"] = summarise(windows["onnxruntime"])
    results["ultralytics"] = summarise(windows["ultralytics"])
    results["gateway"] = [{"concurrency": n, **summarise(windows[f"c{n}"]),
                           "triton_inferences": batches[n][0],
                           "triton_executions": batches[n][1]} for n in levels]
    ort_, ult = results["onnxruntime"], results["ultralytics"]

    def per_round(a: str, b: str, key: str = "images_per_s") -> float:
        """Median over rounds of the ratio measured within each round."""
        if key == "images_per_s":
            return float(np.median([x[key] / y[key] for x, y in zip(windows[a], windows[b])]))
        return float(np.median([np.median(x["latencies"]) / np.median(y["latencies"])
                                for x, y in zip(windows[a], windows[b])]))

    ratios = {}
    if 4 in levels:
        ratios["c4_vs_onnxruntime_throughput"] = per_round("c4", "onnxruntime")
        ratios["c4_vs_ultralytics_throughput"] = per_round("c4", "ultralytics")
    if 1 in levels:
        ratios["c1_p50_vs_onnxruntime_latency"] = per_round("c1", "onnxruntime", "latency")
    results["ratios"] = ratios

    table = Table(title=f"gateway load: {args.image.name} at {rgb.shape[0]}x{rgb.shape[1]}, "
                        f"{args.rounds} rounds of {args.window:.0f} s windows, interleaved")
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
