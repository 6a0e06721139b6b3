"""Where every millisecond of one detection goes, at each input size and concurrency, with the
gateway's JPEG decode as Ultralytics' predictor does it (OpenCV, in full) and as the gateway does
it by default (reduced scale where the image is large enough, else simplejpeg in full) side by
side.

    python bench/serving_overhead.py [--sizes 256,640] [--concurrency 1,4] [--rounds 3 --window 3]

For each input size it exports the model at that size, starts Triton and the gateway (as
`visionguard up` does) with VG_GATEWAY_REDUCED_DECODE=0 and VG_GATEWAY_SIMPLEJPEG_FULL_DECODE=0
("off": OpenCV decodes in full), and a second gateway, the same in all else, with both on ("on":
the defaults); then it interleaves, round after round (the order of the two swapped each
round), windows of:
  - the same work in-process, stage by stage, on the same JPEG, with each mode's decode
    (tracker_service.decode): JPEG decode, letterbox, the model on the served
    runtime (OpenVINO with model.py's settings, or onnxruntime), NMS
    (tracker_service.nms.postprocess, which the python backend runs);
  - each gateway at each concurrency: client latency, the gateway's own stage timings (the
    `timings_ms` every response carries: decode, letterbox, waiting for a Triton slot, the Triton
    call, post-processing), and Triton's per-model statistics over the window (queue, python
    backend input conversion, execute = model + NMS, output conversion).
The breakdown then reads: client latency = HTTP (parse, body read, response encoding, the event
loop) + decode + letterbox + slot wait + Triton call + post-processing; Triton call = transport
(gRPC or shared memory, both ways) + Triton queue + input conversion + execute + output
conversion. The breakdown uses means (Triton's statistics are means, and means add up);
latency p50 and throughput are medians of windows.

The load generator (--client): "keepalive" (default), one HTTP/1.1 connection per concurrent
client with httptools parsing the responses (bench/gateway_load.py's KeepAliveClient), or "httpx"
(what these benches used before; about a millisecond of the client's own CPU per request, on the
same cores as the gateway). Client latency includes the client's own work, so the cheaper one
measures the gateway more closely; the other one is measured beside it in every round (the
default gateway at c=1) and printed as "the load generator's share".

Several gateway processes (--workers-check N, default 2; 0 skips it): a third gateway, the
defaults with N uvicorn worker processes on one port (each with its own shared-memory regions in
the same Triton), measured at every concurrency in the same rounds and printed beside the
one-process default gateway.

Where the gateway's own CPU goes (--profile-s, default 8; 0 skips it): after the rounds, py-spy
(`pip install py-spy`, MIT) samples the default-decode ("on") gateway during a concurrency-1
window, and its stacks are summed by part (JPEG decode, letterbox, Litestar, uvicorn, spans,
metrics, the request log line, the gRPC client, drift features, ...: the deepest frame that names
one decides) and by function, in milliseconds per request. Samples where a thread waits (the event
loop polling, a worker thread idle, the gRPC call in flight) are counted apart, not as work.

"In-process" in the targets is the issue's: the model + NMS on the served runtime, measured in
the same rounds (p50 for latency, 1000 / mean for throughput). Per-image overhead = gateway c=1
p50 minus the in-process p50. Targets (issue 17): at 256 px overhead <= 8 ms and c=4 >= 0.75x
in-process throughput; at 640 px c=4 >= 1.0x and c=1 p50 <= 1.15x in-process. The default image
is bus.jpg (810x1080): at 256 px "on" decodes it at 1/4; at 640 px it is not reduced (1080 / 2 <
640), so there "on" decodes it in full through simplejpeg (the same pixels as OpenCV's). Prints
a table per size and the targets, and writes JSON (default bench/results/serving_overhead.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_load import CLIENTS, gateway_level  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.stack.supervisor import Supervisor  # noqa: E402
from control_plane.stack.up import (gateway_command, gateway_env, local_tokens,  # noqa: E402
                                    release_gateway_regions, start_stack)
from export.pipeline import export_to_repository  # noqa: E402
from tracker_service.decode import decode_image  # noqa: E402
from tracker_service.letterbox import letterbox  # noqa: E402
from tracker_service.nms import postprocess  # noqa: E402

console = Console(width=170)
GATEWAY_STAGES = ("decode", "preprocess", "queue", "infer", "postprocess", "total")
TRITON_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
MODES = ("off", "on")  # VG_GATEWAY_REDUCED_DECODE and VG_GATEWAY_SIMPLEJPEG_FULL_DECODE
TARGETS = {256: {"overhead_ms": ("<=", 8.0), "c4_vs_in_process": (">=", 0.75)},
           640: {"c4_vs_in_process": (">=", 1.0), "c1_p50_vs_in_process": ("<=", 1.15)}}
# A sample's part of the gateway: the deepest frame whose file (as py-spy names it: the path
# below its sys.path entry, so OpenTelemetry's namespace packages lose their prefix) starts
# with one of these decides.
PROFILE_PARTS = (
    ("(tracker_service/decode.py", "JPEG decode (header, EXIF, OpenCV)"),
    ("(tracker_service/letterbox.py", "letterbox"),
    ("(tracker_service/drift_features.py", "drift features (sampled requests, worker thread)"),
    *((key, "spans (OpenTelemetry: create, end; export thread)") for key in (
        "(trace/", "(sdk/", "(common/_internal/", "(http/trace_exporter/", "(resources/",
        "(attributes/", "(util/", "(context/", "(propagators/", "(requests/", "(urllib3/")),
    ("(prometheus_client/", "metrics (Prometheus)"),
    ("(logging/", "request log line (JSON)"),
    ("(tritonclient/", "gRPC client (tritonclient, grpc aio)"),
    ("(grpc/", "gRPC client (tritonclient, grpc aio)"),
    ("(httpx/", "httpx (routing poll, drift posts)"),
    ("(httpcore/", "httpx (routing poll, drift posts)"),
    ("(litestar/", "Litestar (routing, parameters, DI, response)"),
    ("(msgspec/", "Litestar (routing, parameters, DI, response)"),
    ("(uvicorn/", "uvicorn (HTTP parsing, send)"),
    ("(anyio/", "worker-thread hop (anyio)"),
    ("(tracker_service/", "gateway code (service, pipeline, recorder)"),
)
# Leaf frames where a thread waits: the event loop in uvloop's poll (and its own C work, which
# py-spy cannot tell apart without --native), an idle worker thread, a gRPC call in flight.
PROFILE_WAITS = ("Runner.run (", "Condition.wait (", "UnaryUnaryCall._invoke (", "Queue.get (",
                 "Event.wait (", "select (", "sleep (")


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


def in_process_window(image: bytes, imgsz: int, run, duration: float, reduced: bool
                      ) -> dict[str, list[float]]:
    """Each stage of one detection, timed separately, for `duration` seconds (ms)."""
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "letterbox", "model", "nms",
                                                      "model+nms", "total")}
    stop = time.perf_counter() + duration
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        decoded = decode_image(image, 10**9, imgsz if reduced else 0, simplejpeg_full=reduced)
        t1 = time.perf_counter()
        rgb, _ = letterbox(decoded.image, imgsz, 32, (decoded.height, decoded.width),
                           decoded.reduction)
        t2 = time.perf_counter()
        raw = run(rgb[None])
        t3 = time.perf_counter()
        postprocess(raw[0], 0.25, 0.7, 300)
        t4 = time.perf_counter()
        for k, (a, b) in {"decode": (t0, t1), "letterbox": (t1, t2), "model": (t2, t3),
                          "nms": (t3, t4), "model+nms": (t2, t4), "total": (t0, t4)}.items():
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


def decode_env(on: bool) -> dict[str, str]:
    """A gateway's JPEG decode settings: the defaults ("on") or the predictor's ("off")."""
    return {name: "1" if on else "0"
            for name in ("VG_GATEWAY_REDUCED_DECODE", "VG_GATEWAY_SIMPLEJPEG_FULL_DECODE")}


def start_second_gateway(settings: Settings, supervisor: Supervisor,
                         tokens: dict[str, str], workers: int = 1,
                         name: str = "gateway-defaults") -> str:
    """Another gateway beside `up`'s, the same in all but its JPEG decode: the defaults; with
    `workers` > 1, that many uvicorn worker processes on one port, each with its own shared
    memory regions registered in the same Triton."""
    from control_plane.stack.supervisor import wait_http_ok
    from tests.conftest import free_ports

    (port,) = free_ports(1)
    env = {**gateway_env(settings, tokens["gateway"], tokens["internal"]), **decode_env(True)}
    command = gateway_command(replace(settings, gateway_port=port))
    if workers > 1:
        command += ["--workers", str(workers)]
    child = supervisor.start(name, command, env,
                             on_exit=lambda c: release_gateway_regions(settings, c.proc.pid))
    url = f"http://{settings.host}:{port}"
    wait_http_ok(f"{url}/readyz", child.proc, settings.startup_timeout_s, child.name)
    return url


def gateway_window(url: str, image: bytes, n: int, args, settings: Settings, into: dict,
                   client: str | None = None) -> None:
    before = triton_stats(settings)
    w = asyncio.run(gateway_level(url, image, n, args.window, args.warmup, timings=True,
                                  client=client or args.client))
    after = triton_stats(settings)
    into["latency"] += [seconds * 1000 for seconds in w["latencies"]]
    into["rates"].append(w["images_per_s"])
    into["errors"] += w["errors"]
    for timings in w["timings_ms"]:
        for k in GATEWAY_STAGES:
            into["stages"][k].append(float(timings.get(k, 0.0)))
    into["triton"].append(per_request_ms(before, after))


def profile_gateway(pid: int, url: str, image: bytes, seconds: float, client: str,
                    rate: int = 250) -> dict:
    """Sample the gateway process with py-spy during a concurrency-1 window: per part and per
    function, milliseconds of samples per request (all threads, waits apart)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory(prefix="vg-bench-profile-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--duration",
                                 str(int(seconds) + 2), "--rate", str(rate), "--format", "raw",
                                 "--output", str(raw), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached before the window starts
        window = asyncio.run(gateway_level(url, image, 1, seconds, 0.0, client=client))
        _, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not raw.exists():
            return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
        lines = raw.read_text().splitlines()
    requests = max(len(window["latencies"]), 1)
    parts: dict[str, int] = {}
    functions: dict[str, int] = {}
    waiting = total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        if frames[-1].startswith(PROFILE_WAITS):
            waiting += n
            continue
        part = next((name for frame in reversed(frames) for key, name in PROFILE_PARTS
                     if key in frame), "other (interpreter, asyncio)")
        parts[part] = parts.get(part, 0) + n
        leaf = frames[-1].rsplit(":", 1)[0] + ")"  # one entry per function, not per line
        functions[leaf] = functions.get(leaf, 0) + n
    ms = 1000 / rate / requests  # one sample's milliseconds, per request

    def ranked(counts: dict[str, int], top: int) -> list[dict]:
        return [{"name": k, "ms_per_request": v * ms, "share": v / max(total - waiting, 1)}
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {"requests": requests, "seconds": seconds, "rate_hz": rate, "samples": total,
            "p50_ms": median([x * 1000 for x in window["latencies"]]),
            "waiting_ms_per_request": waiting * ms, "working_ms_per_request": (
                total - waiting) * ms,
            "parts": ranked(parts, len(parts)), "functions": ranked(functions, 15)}


def measure_size(args, imgsz: int, image: bytes) -> dict:
    from tests.conftest import free_ports

    with tempfile.TemporaryDirectory(prefix="vg-bench-overhead-") as tmp:
        http, grpc, metrics, gw, control = free_ports(5)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           control_port=control, mlflow_ui_port=0, imgsz=imgsz)
        with console.status(f"exporting {args.weights} at {imgsz}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1,
                                            imgsz=imgsz, intra_op_threads=args.threads,
                                            runtime=args.runtime)
        run = served_runner(exported.onnx_path, args.runtime, args.threads)
        decoded = decode_image(image, 10**9, imgsz)
        rgb, _ = letterbox(decoded.image, imgsz, 32, (decoded.height, decoded.width),
                           decoded.reduction)
        for _ in range(3):
            run(rgb[None])
        inproc: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        def series() -> dict:
            return {"latency": [], "rates": [], "errors": 0,
                    "stages": {k: [] for k in GATEWAY_STAGES}, "triton": []}

        gateway = {m: {n: series() for n in args.levels} for m in MODES}
        # The load generator's own share: the default gateway at c=1 also measured, in the same
        # rounds, with the other client (keep-alive <-> httpx).
        other_client = next(c for c in CLIENTS if c != args.client)
        client_check = series()
        # A lever of the issue's: several gateway processes sharing Triton's shared memory, as
        # a third gateway (the defaults, `--workers-check` processes) in the same rounds.
        workers_check = {n: series() for n in args.levels}
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status(f"starting Triton and the gateways ({imgsz} px)"):
                # `up`'s gateway decoding as the predictor does (its children inherit
                # os.environ).
                with patch.dict(os.environ, decode_env(False)):
                    tokens = local_tokens(settings)
                    start_stack(settings, supervisor, tokens)
                urls = {"off": f"http://{settings.host}:{settings.gateway_port}",
                        "on": start_second_gateway(settings, supervisor, tokens)}
                if args.workers_check > 1:
                    urls["workers"] = start_second_gateway(
                        settings, supervisor, tokens, args.workers_check, "gateway-workers")
            with Progress(console=console, transient=True) as progress:
                per_level = 2 + ("workers" in urls)
                task = progress.add_task(f"{imgsz} px", total=args.rounds * (
                    2 + per_level * len(args.levels) + 1))
                for r in range(args.rounds):
                    order = MODES if r % 2 == 0 else MODES[::-1]
                    for m in order:
                        window = in_process_window(image, imgsz, run, args.window, m == "on")
                        for k, v in window.items():
                            inproc[m].setdefault(k, []).extend(v)
                        progress.advance(task)
                    for n in args.levels:
                        for m in order:
                            gateway_window(urls[m], image, n, args, settings, gateway[m][n])
                            progress.advance(task)
                        if "workers" in urls:
                            gateway_window(urls["workers"], image, n, args, settings,
                                           workers_check[n])
                            progress.advance(task)
                    gateway_window(urls["on"], image, 1, args, settings, client_check,
                                   other_client)
                    progress.advance(task)
            profile = None
            if args.profile_s > 0:
                with console.status(f"profiling the default-decode gateway at c=1 ({imgsz} px)"):
                    pid = next(c.proc.pid for c in supervisor.children
                               if c.name == "gateway-defaults")
                    profile = profile_gateway(pid, urls["on"], image, args.profile_s,
                                              args.client)
    base = inproc["off"]  # the model + NMS, whichever the decode
    in_p50, in_rate = median(base["model+nms"]), 1000 / mean(base["model+nms"])
    result = {"imgsz": imgsz, "input_hw": list(rgb.shape[:2]), "reduction": decoded.reduction,
              "in_process_model_nms_p50_ms": in_p50, "in_process_images_per_s": in_rate,
              "in_process": {m: {"mean_ms": {k: mean(v) for k, v in inproc[m].items()},
                                 "p50_ms": {k: median(v) for k, v in inproc[m].items()}}
                             for m in MODES},
              "gateway": {m: {n: summarise(g, in_p50, in_rate) for n, g in gateway[m].items()}
                          for m in MODES},
              "profile": profile,
              "client": args.client,
              "client_check": {"client": other_client, "concurrency": 1, "decode": "on",
                               **summarise(client_check, in_p50, in_rate)},
              "workers_check": None if args.workers_check < 2 else {
                  "workers": args.workers_check, "decode": "on",
                  "levels": {n: summarise(g, in_p50, in_rate)
                             for n, g in workers_check.items()}}}
    off, on = result["gateway"]["off"], result["gateway"]["on"]
    result["on_vs_off"] = {n: {"images_per_s": on[n]["images_per_s"] / off[n]["images_per_s"],
                               "p50": on[n]["p50_ms"] / off[n]["p50_ms"]} for n in args.levels}
    result["targets"] = check_targets(imgsz, result)
    return result


def summarise(g: dict, in_p50: float, in_rate: float) -> dict:
    stages = {k: mean(v) for k, v in g["stages"].items()}
    triton = {k: mean([t[k] for t in g["triton"]]) for k in (*TRITON_STAGES, "request", "batch")}
    p50 = median(g["latency"])
    return {
        "images_per_s": median(g["rates"]), "p50_ms": p50, "mean_ms": mean(g["latency"]),
        "errors": g["errors"], "stages_ms": stages, "triton_ms": triton,
        "breakdown_ms": {
            "http (parse, body, response, event loop)": mean(g["latency"]) - stages["total"],
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
        "overhead_ms": p50 - in_p50,
        "p50_vs_in_process": p50 / in_p50,
        "vs_in_process_throughput": median(g["rates"]) / in_rate,
    }


def check_targets(imgsz: int, result: dict) -> list[dict]:
    """The issue's targets at this size (none at other sizes), for each gateway."""
    where = {"overhead_ms": (1, "overhead_ms"), "c4_vs_in_process": (4, "vs_in_process_throughput"),
             "c1_p50_vs_in_process": (1, "p50_vs_in_process")}
    rows = []
    for metric, (op, target) in TARGETS.get(imgsz, {}).items():
        level, key = where[metric]
        for m in MODES:
            if level not in result["gateway"][m]:  # that concurrency was not measured
                continue
            value = result["gateway"][m][level][key]
            rows.append({"metric": metric, "reduced_decode": m, "value": value, "op": op,
                         "target": target,
                         "met": value <= target if op == "<=" else value >= target})
    return rows


def print_size(result: dict) -> None:
    levels = sorted(result["gateway"]["off"])
    ip = result["in_process"]
    cols = [(m, n) for n in levels for m in MODES]
    table = Table(title=f"{result['imgsz']} px (input {result['input_hw'][0]}x"
                        f"{result['input_hw'][1]}; reduced decode: 1/{result['reduction']}): "
                        "mean ms per request by stage, decode off (OpenCV in full) | on "
                        "(defaults)")
    table.add_column("stage")
    for m in MODES:
        table.add_column(f"in-process {m}", justify="right")
    for m, n in cols:
        table.add_column(f"c={n} {m}", justify="right")

    def gw(m: str, n: int) -> dict:
        return result["gateway"][m][n]

    in_proc_of = {"JPEG decode": "decode", "letterbox": "letterbox",
                  "execute (model + NMS, per request)": "model+nms"}
    for k in gw("off", levels[0])["breakdown_ms"]:
        table.add_row(k, *[f"{ip[m]['mean_ms'][in_proc_of[k]]:.2f}" if k in in_proc_of else ""
                           for m in MODES],
                      *[f"{gw(m, n)['breakdown_ms'][k]:.2f}" for m, n in cols])
    for k in ("model", "nms"):
        table.add_row(f"  of which {k} (in-process)",
                      *[f"{ip[m]['mean_ms'][k]:.2f}" for m in MODES], *[""] * len(cols))
    table.add_row("total (mean)", *[f"{ip[m]['mean_ms']['total']:.2f}" for m in MODES],
                  *[f"{gw(m, n)['mean_ms']:.2f}" for m, n in cols])
    table.add_row("total (p50)", *[f"{ip[m]['p50_ms']['total']:.2f}" for m in MODES],
                  *[f"{gw(m, n)['p50_ms']:.2f}" for m, n in cols])
    table.add_row("in-process model + NMS p50; overhead = p50 - it",
                  f"{result['in_process_model_nms_p50_ms']:.2f}", "",
                  *[f"{gw(m, n)['overhead_ms']:.2f}" for m, n in cols])
    table.add_row("p50 / in-process model + NMS p50", "", "",
                  *[f"{gw(m, n)['p50_vs_in_process']:.2f}" for m, n in cols])
    table.add_row("images/s (in-process: model + NMS)",
                  f"{result['in_process_images_per_s']:.1f}", "",
                  *[f"{gw(m, n)['images_per_s']:.1f}" for m, n in cols])
    table.add_row("x in-process throughput", "1.00", "",
                  *[f"{gw(m, n)['vs_in_process_throughput']:.2f}" for m, n in cols])
    table.add_row("on / off: images/s, p50", "", "",
                  *["" if m == "off" else f"{result['on_vs_off'][n]['images_per_s']:.2f}x, "
                    f"{result['on_vs_off'][n]['p50']:.2f}x" for m, n in cols])
    table.add_row("Triton requests per execution", "", "",
                  *[f"{gw(m, n)['triton_ms']['batch']:.2f}" for m, n in cols])
    table.add_row("errors", "", "", *[str(gw(m, n)["errors"]) for m, n in cols])
    console.print(table)


def print_client_check(result: dict) -> None:
    """The default gateway at c=1 with each load generator, measured in the same rounds."""
    if 1 not in result["gateway"]["on"]:
        return
    table = Table(title=f"{result['imgsz']} px, default decode, c=1: the load generator's share")
    for column in ("client", "p50 ms", "overhead ms", "p50 / in-process", "images/s"):
        table.add_column(column, justify="left" if column == "client" else "right")
    rows = [(result["client"], result["gateway"]["on"][1]),
            (result["client_check"]["client"], result["client_check"])]
    for name, g in rows:
        table.add_row(name, f"{g['p50_ms']:.2f}", f"{g['overhead_ms']:.2f}",
                      f"{g['p50_vs_in_process']:.2f}", f"{g['images_per_s']:.1f}")
    console.print(table)


def print_workers_check(result: dict) -> None:
    """The default gateway as one process and as several, measured in the same rounds."""
    check = result["workers_check"]
    if not check:
        return
    table = Table(title=f"{result['imgsz']} px, default decode: one gateway process or "
                        f"{check['workers']} (uvicorn workers, one Triton)")
    for column in ("gateway", "c", "images/s", "p50 ms", "x in-process throughput",
                   "p50 / in-process", "errors"):
        table.add_column(column, justify="left" if column == "gateway" else "right")
    for n in sorted(check["levels"]):
        for label, g in (("1 process", result["gateway"]["on"][n]),
                         (f"{check['workers']} processes", check["levels"][n])):
            table.add_row(label, str(n), f"{g['images_per_s']:.1f}", f"{g['p50_ms']:.2f}",
                          f"{g['vs_in_process_throughput']:.2f}",
                          f"{g['p50_vs_in_process']:.2f}", str(g["errors"]))
    console.print(table)


def print_profile(result: dict) -> None:
    profile = result["profile"]
    if not profile:
        return
    if "skipped" in profile:
        console.print(f"profile ({result['imgsz']} px): skipped: {profile['skipped']}")
        return
    title = (f"{result['imgsz']} px, default decode (on), c=1: the gateway process's samples "
             f"(py-spy, {profile['rate_hz']} Hz, {profile['requests']} requests, p50 "
             f"{profile['p50_ms']:.2f} ms), ms per request; working "
             f"{profile['working_ms_per_request']:.2f}, waiting "
             f"{profile['waiting_ms_per_request']:.2f}")
    for key, heading in (("parts", "part"), ("functions", "function (self)")):
        table = Table(title=title if key == "parts" else None)
        table.add_column(heading)
        table.add_column("ms / request", justify="right")
        table.add_column("share of work", justify="right")
        for row in profile[key]:
            table.add_row(row["name"], f"{row['ms_per_request']:.3f}", f"{row['share']:.1%}")
        console.print(table)


def print_targets(results: list[dict]) -> None:
    table = Table(title="Issue 17 targets (in-process = the model + NMS on the served runtime)")
    for column in ("size", "metric", "target", "decode off (OpenCV)", "decode on (defaults)"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for r in results:
        by_metric: dict[str, dict[str, dict]] = {}
        for row in r["targets"]:
            by_metric.setdefault(row["metric"], {})[row["reduced_decode"]] = row
        for metric, rows in by_metric.items():
            first = next(iter(rows.values()))
            table.add_row(str(r["imgsz"]), metric, f"{first['op']} {first['target']}",
                          *[(f"{rows[m]['value']:.2f} "
                             f"{'[green]met[/]' if rows[m]['met'] else '[red]missed[/]'}")
                            if m in rows else "" for m in MODES])
    console.print(table)


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,640")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--profile-s", type=float, default=8.0,
                        help="seconds of py-spy sampling of the gateway at c=1 (0: none)")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2, help="the model's intra-op threads")
    parser.add_argument("--workers-check", type=int, default=2,
                        help="also measure the default gateway with this many worker processes "
                             "(0 or 1: not)")
    parser.add_argument("--client", default="keepalive", choices=CLIENTS,
                        help="the load generator (the other one is measured at c=1 beside it)")
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
               "rounds": args.rounds, "window_s": args.window, "client": args.client,
               "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        result = measure_size(args, size, image)
        print_size(result)
        print_client_check(result)
        print_workers_check(result)
        print_profile(result)
        results["sizes"].append(result)
    print_targets(results["sizes"])
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(args.out)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
