"""INT8 against FP32 end to end through the gateway, beside the peer a CPU user would pick.

    python bench/int8.py [--rounds 3 --window 4] [--checkpoint best.pt --data data.yaml]

Speed (yolov8n from its yaml, seeded, at 640 px, bus.jpg): the FP32 model exported as `up`
serves it, and its INT8 variant made by the release path's quantiser (export/quantize.py: NNCF
post-training quantisation to OpenVINO IR, calibrated on images letterboxed as served), each
served by the same Triton python backend (model.py) behind a gateway of its own; beside them,
Ultralytics' own OpenVINO INT8 export (`model.export(format="openvino", int8=True, data=...)`)
run by `predict` behind a minimal FastAPI app (one uvicorn worker, the JPEG decoded with OpenCV,
`predict` on the event loop: the service a user would write). With --baseline (the default)
both models are also served as model.py served them before static shapes and streams (one
dynamic-shape model, a whole batch in one request), so the levers' gain reads within one run.
All are loaded at concurrency 1 and 4 in windows interleaved round after round; throughput is
the median over windows, ratios the median of the ratios within each round. Random weights
make NMS see few boxes, as a real model on this image does. For our gateways a second table says
where a request's time goes: the means of the gateway's own stage timings (`timings_ms`:
decode, letterbox, waiting for a Triton slot, the Triton call, post-processing) and, within the
Triton call, Triton's per-model statistics over the same windows (queue, input conversion,
execute = model + NMS in the python backend, output conversion, mean dynamic batch).

Accuracy (a trained checkpoint, default the bootstrap model `up` trains, on its data's val
split): FP32 ONNX and the INT8 IR scored by the served path (control_plane/releases/quantize.py's
`served_scores`: letterbox, OpenVINO, NMS, faster-coco-eval), and Ultralytics' INT8 export
scored by Ultralytics' validator (its own evaluator: compare it with its FP32 row, not with ours).

Also reported: the instruction set INT8 ran on (OpenVINO's CPU OPTIMIZATION_CAPABILITIES and the
CPU's avx512_vnni / amx_int8 flags). Prints a table and writes JSON (default
bench/results/int8.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: the peer's handler annotation resolves here
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_load import gateway_level  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

console = Console(width=170)  # the breakdown table is wide
INT8_MODEL = "detector_int8"


def instruction_set() -> dict:
    import openvino as ov

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() \
        else set()
    return {"openvino_capabilities": list(ov.Core().get_property("CPU",
                                                                 "OPTIMIZATION_CAPABILITIES")),
            "avx512_vnni": "avx512_vnni" in flags, "amx_int8": "amx_int8" in flags,
            "avx_vnni": "avx_vnni" in flags}


def synthetic_data(folder: Path, imgsz: int, n_train: int, n_val: int, seed: int) -> Path:
    from control_plane.datasets.synthetic_data import generate_dataset

    return Path(generate_dataset(folder, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed))


def train_images(data_yaml: Path, count: int) -> list[Path]:
    from control_plane.datasets.layout import is_image, yolo_splits

    _, splits = yolo_splits(data_yaml)
    images = sorted(p for folder, _ in splits["train"] for p in folder.iterdir() if is_image(p))
    chosen = np.random.default_rng(0).permutation(len(images))[:count]
    return [images[i] for i in sorted(chosen)]


def our_int8(onnx_path: Path, data_yaml: Path, imgsz: int, count: int, out: Path) -> dict:
    from export.quantize import calibration_inputs, quantize

    batches = calibration_inputs(train_images(data_yaml, count), imgsz, 32)
    return quantize(onnx_path, batches, out).files


def ultralytics_int8(weights: str, data_yaml: Path, imgsz: int, work: Path) -> Path:
    """Ultralytics' OpenVINO INT8 export (NNCF, its own calibration on `data`'s val split)."""
    from ultralytics import YOLO

    from export.onnx_export import load_yolo

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "model.pt"
    load_yolo(weights).save(ckpt)
    return Path(YOLO(str(ckpt)).export(format="openvino", int8=True, data=str(data_yaml),
                                       imgsz=imgsz, verbose=False))


# --- the peer: Ultralytics predict behind FastAPI ------------------------------------------------

def serve_peer(model_dir: str, imgsz: int, port: int) -> None:
    """The FastAPI service a user would write around Ultralytics (run in its own process)."""
    import cv2
    import uvicorn
    from fastapi import FastAPI
    from ultralytics import YOLO

    model = YOLO(model_dir, task="detect")
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/detect")
    async def detect(request: Request) -> dict:
        data = np.frombuffer(await request.body(), np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        result = model.predict(image, imgsz=imgsz, verbose=False)[0]
        boxes = result.boxes
        return {"detections": [{"box": b, "score": s, "class": int(c)} for b, s, c in zip(
            boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_peer(supervisor, model_dir: Path, imgsz: int) -> str:
    from control_plane.stack.supervisor import wait_http_ok
    from tests.conftest import free_ports

    (port,) = free_ports(1)
    child = supervisor.start("ultralytics-int8", [
        sys.executable, str(Path(__file__).resolve()), "--serve-peer", str(model_dir),
        "--imgsz", str(imgsz), "--port", str(port)], dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", child.proc, 180, "ultralytics peer")
    return url


# --- speed ---------------------------------------------------------------------------------------

def speed(args, image: bytes, work: Path) -> dict:
    from control_plane.releases.fleet import TritonControl
    from control_plane.stack.supervisor import Supervisor, wait_http_ok
    from control_plane.stack.up import (gateway_command, gateway_env, local_tokens,
                                        release_gateway_regions, start_stack)
    from export import triton_repo
    from export.pipeline import MODEL_PY, export_to_repository
    from tests.conftest import free_ports

    data = synthetic_data(work / "data640", 640, args.calibration_images, 32, seed=3)
    http, grpc, metrics, gw, control = free_ports(5)
    settings = replace(Settings(), model_repository=work / "repo", runtime_dir=work / "runtime",
                       triton_http_port=http, triton_grpc_port=grpc,
                       triton_metrics_port=metrics, gateway_port=gw, control_port=control,
                       mlflow_ui_port=0)
    with console.status("exporting yolov8n (seeded) at 640 and quantising it"):
        exported = export_to_repository("yolov8n.yaml", settings.model_repository, version=1)
        ir = our_int8(exported.onnx_path, data, 640, args.calibration_images, work / "ir")
        cfg = triton_repo.DetectorConfig(names=exported.names, stride=exported.stride,
                                         imgsz=640)
        files = {"model.onnx": exported.onnx_path, "model.py": MODEL_PY,
                 "names.json": exported.version_dir / "names.json"}
        # kind: (Triton model, its version's files, its config); `fp32` is export's `detector`.
        served = {"int8": (INT8_MODEL, {**files, **ir}, cfg)}
        if args.baseline:  # model.py's one dynamic-shape model, whole batches in one request
            dynamic = replace(cfg, openvino_static_shapes=0, openvino_streams=1)
            served["fp32_dynamic"] = ("detector_dynamic", files, dynamic)
            served["int8_dynamic"] = (f"{INT8_MODEL}_dynamic", {**files, **ir}, dynamic)
        for name, version_files, model_cfg in served.values():
            model_dir = settings.model_repository / name
            triton_repo.write_config(model_dir, triton_repo.cpu_config(model_cfg, name))
            triton_repo.write_version(model_dir, 1, version_files)
    with console.status("Ultralytics' OpenVINO INT8 export (NNCF) of the same model"):
        peer_dir = ultralytics_int8("yolov8n.yaml", data, 640, work / "peer")
    kinds = ("fp32", *served, "peer")
    windows: dict[str, list[dict]] = {f"{k}_c{n}": [] for k in kinds for n in args.concurrency}
    with Supervisor(settings.runtime_dir / "logs") as supervisor:
        with console.status("starting Triton, the gateways and the peer"):
            tokens = local_tokens(settings)
            start_stack(settings, supervisor, tokens)
            triton = TritonControl(settings)
            stats = {"fp32": settings}
            urls = {"fp32": f"http://{settings.host}:{gw}"}
            for kind, (name, _, _) in served.items():
                triton.load(name)
                ok, reason = triton.wait_ready(name, 1, 180)
                if not ok:
                    raise SystemExit(f"{name} did not load: {reason}")
                (port,) = free_ports(1)
                model_settings = replace(settings, model_name=name, gateway_port=port)
                env = {**gateway_env(model_settings, tokens["gateway"], tokens["internal"]),
                       "VG_GATEWAY_CONTROL_URL": ""}  # standalone: Triton's one version serves
                child = supervisor.start(
                    f"gateway-{kind}", gateway_command(model_settings), env,
                    on_exit=lambda c: release_gateway_regions(settings, c.proc.pid))
                urls[kind] = f"http://{settings.host}:{port}"
                wait_http_ok(f"{urls[kind]}/readyz", child.proc, 120, child.name)
                stats[kind] = model_settings
            urls["peer"] = start_peer(supervisor, peer_dir, 640)
        with Progress(console=console) as progress:
            task = progress.add_task("measuring", total=args.rounds * len(windows))
            for r in range(args.rounds):
                order = list(urls) if r % 2 == 0 else list(reversed(urls))
                for n in args.concurrency:
                    for kind in order:
                        windows[f"{kind}_c{n}"].append(window(
                            urls[kind], image, n, args, stats.get(kind)))
                        progress.advance(task)
    return windows


def window(url: str, image: bytes, n: int, args, settings: Settings | None) -> dict:
    """One load window; for our gateways (`settings` names the model in Triton) also each
    response's `timings_ms` and Triton's per-request statistics over the window, so the
    breakdown shows where a request's time goes (the peer has neither)."""
    from bench.serving_overhead import per_request_ms, triton_stats

    if settings is None:
        return asyncio.run(gateway_level(url, image, n, args.window, args.warmup))
    before = triton_stats(settings)
    w = asyncio.run(gateway_level(url, image, n, args.window, args.warmup, timings=True))
    w["triton"] = per_request_ms(before, triton_stats(settings))
    return w


def breakdown(windows: list[dict]) -> dict | None:
    """Mean milliseconds per request: the gateway's stages (decode, preprocess = letterbox,
    queue = waiting for a Triton slot, infer = the Triton call, postprocess) and, inside the
    Triton call, Triton's (queue, compute_input, compute_infer = model + NMS, compute_output,
    and the mean dynamic batch)."""
    from bench.serving_overhead import GATEWAY_STAGES, TRITON_STAGES

    if not all("triton" in w for w in windows):
        return None
    gateway = {k: float(np.mean([t.get(k, 0.0) for w in windows for t in w["timings_ms"]]))
               for k in GATEWAY_STAGES}
    triton = {k: float(np.mean([w["triton"][k] for w in windows]))
              for k in (*TRITON_STAGES, "batch")}
    return {"gateway_ms": gateway, "triton_ms": triton}


def summarise(windows: list[dict]) -> dict:
    latencies = np.asarray([x for w in windows for x in w["latencies"]]) * 1000
    return {"images_per_s": float(np.median([w["images_per_s"] for w in windows])),
            "images_per_s_windows": [round(w["images_per_s"], 2) for w in windows],
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies.size else None,
            "errors": sum(w["errors"] for w in windows), "requests": int(latencies.size),
            "breakdown": breakdown(windows)}


def per_round(a: list[dict], b: list[dict]) -> float | None:
    """Median over rounds of the throughput ratio within each round (None if b served none)."""
    ratios = [x["images_per_s"] / y["images_per_s"] for x, y in zip(a, b) if y["images_per_s"]]
    return float(np.median(ratios)) if ratios else None


# --- accuracy ------------------------------------------------------------------------------------

def accuracy(args, work: Path) -> dict:
    from ultralytics import YOLO

    from control_plane.releases.quantize import served_scores
    from export.onnx_export import export_onnx

    checkpoint = args.checkpoint or Settings().bootstrap_dir / "train" / "weights" / "best.pt"
    if not Path(checkpoint).is_file():
        console.print(f"[yellow]accuracy skipped:[/] no checkpoint at {checkpoint} (pass "
                      "--checkpoint, or run `visionguard up` once for the bootstrap model)")
        return {"skipped": f"no checkpoint at {checkpoint}"}
    from control_plane.training.train import _ultralytics_logging

    with console.status(f"accuracy: FP32 and INT8 of {checkpoint}"), _ultralytics_logging(False):
        onnx_path = work / "acc" / "model.onnx"
        exported = export_onnx(checkpoint, onnx_path)
        data = args.data or synthetic_data(work / "acc-data", exported.imgsz,
                                           args.calibration_images, 100, seed=7)
        ir = our_int8(onnx_path, data, exported.imgsz, args.calibration_images, work / "acc-ir")
        fp32 = served_scores(onnx_path, data, exported.imgsz, exported.stride)
        int8 = served_scores(ir["model.xml"], data, exported.imgsz, exported.stride)
        peer_dir = ultralytics_int8(str(checkpoint), data, exported.imgsz, work / "acc-peer")
        peer = YOLO(str(peer_dir), task="detect").val(data=str(data), imgsz=exported.imgsz,
                                                       device="cpu", verbose=False, plots=False,
                                                       project=str(work / "val"))
        ours_fp32_ultra = YOLO(str(work / "acc-peer" / "model.pt")).val(
            data=str(data), imgsz=exported.imgsz, device="cpu", verbose=False, plots=False,
            project=str(work / "val"))
    return {"checkpoint": str(checkpoint), "data": str(data), "imgsz": exported.imgsz,
            "served_path": {"fp32_mAP50-95": fp32["mAP50-95"], "int8_mAP50-95": int8["mAP50-95"],
                            "drop_points": (fp32["mAP50-95"] - int8["mAP50-95"]) * 100},
            "ultralytics_validator": {"fp32_mAP50-95": float(ours_fp32_ultra.box.map),
                                      "peer_int8_mAP50-95": float(peer.box.map),
                                      "drop_points": (float(ours_fp32_ultra.box.map)
                                                      - float(peer.box.map)) * 100}}


def breakdown_table(speed_results: dict, concurrency: list[int]) -> Table:
    table = Table(title="Where a request's time goes (mean ms per request): gateway stages, "
                        "then Triton's inside the Triton call")
    for col in ("what", "c", "decode", "letterbox", "slot wait", "Triton call", "post",
                "gateway total", "T queue", "T input", "T execute (model+NMS)", "T output",
                "batch"):
        table.add_column(col, justify="right")
    for n in concurrency:
        for kind in ("fp32", "int8", "fp32_dynamic", "int8_dynamic"):
            b = speed_results.get(f"{kind}_c{n}", {}).get("breakdown")
            if b is None:
                continue
            g, t = b["gateway_ms"], b["triton_ms"]
            table.add_row(kind, str(n), *(f"{g[k]:.1f}" for k in (
                "decode", "preprocess", "queue", "infer", "postprocess", "total")),
                *(f"{t[k]:.1f}" for k in ("queue", "compute_input", "compute_infer",
                                          "compute_output", "batch")))
    return table


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before a window")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also serve both models as model.py did before static shapes and "
                             "streams (openvino_static_shapes 0, openvino_streams 1)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint for accuracy; default: the bootstrap model")
    parser.add_argument("--data", type=Path, default=None,
                        help="its data.yaml (train: calibration, val: scoring); default: "
                             "generated shapes at the checkpoint's size")
    parser.add_argument("--image", type=Path,
                        default=Path(ultralytics.__file__).parent / "assets" / "bus.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8.json")
    parser.add_argument("--serve-peer", help=argparse.SUPPRESS)
    parser.add_argument("--imgsz", type=int, default=640, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peer:
        serve_peer(args.serve_peer, args.imgsz, args.port)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    image = args.image.read_bytes()
    isa = instruction_set()
    with tempfile.TemporaryDirectory(prefix="vg-int8-") as tmp:
        windows = speed(args, image, Path(tmp))
        acc = accuracy(args, Path(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    results = {"machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
                           "python": platform.python_version(), **isa},
               "image": args.image.name, "imgsz": 640, "rounds": args.rounds,
               "window_s": args.window, "calibration_images": args.calibration_images,
               "speed": {k: summarise(v) for k, v in windows.items()}, "accuracy": acc}
    ratios = {}
    for n in args.concurrency:
        ratios[f"int8_vs_fp32_c{n}"] = per_round(windows[f"int8_c{n}"], windows[f"fp32_c{n}"])
        ratios[f"int8_vs_peer_c{n}"] = per_round(windows[f"int8_c{n}"], windows[f"peer_c{n}"])
        if args.baseline:
            ratios[f"int8_dynamic_vs_fp32_dynamic_c{n}"] = per_round(
                windows[f"int8_dynamic_c{n}"], windows[f"fp32_dynamic_c{n}"])
            ratios[f"int8_vs_int8_dynamic_c{n}"] = per_round(windows[f"int8_c{n}"],
                                                             windows[f"int8_dynamic_c{n}"])
    results["ratios"] = ratios
    results["target_int8_vs_fp32_c4"] = 1.8

    table = Table(title=f"INT8 vs FP32 through the gateway, yolov8n at 640 on {args.image.name}, "
                        f"{args.rounds} interleaved rounds of {args.window:g} s")
    for col in ("what", "concurrency", "images/s", "p50 ms", "p95 ms", "errors"):
        table.add_column(col, justify="right")
    names = {"fp32": "gateway, FP32 ONNX (OpenVINO)", "int8": "gateway, INT8 IR (ours)",
             "fp32_dynamic": "  the same FP32, dynamic shapes, one request",
             "int8_dynamic": "  the same INT8, dynamic shapes, one request",
             "peer": "FastAPI + Ultralytics OpenVINO INT8"}
    for n in args.concurrency:
        for kind, label in names.items():
            if f"{kind}_c{n}" not in results["speed"]:
                continue
            s = results["speed"][f"{kind}_c{n}"]
            ms = [f"{s[k]:.1f}" if s[k] is not None else "-" for k in ("p50_ms", "p95_ms")]
            table.add_row(label, str(n), f"{s['images_per_s']:.1f}", *ms, str(s["errors"]))
    console.print(table)
    console.print(breakdown_table(results["speed"], args.concurrency))
    for name, value in ratios.items():
        console.print(f"{name}: {'-' if value is None else f'{value:.2f}'}")
    console.print(f"INT8 on: {', '.join(isa['openvino_capabilities'])}; avx512_vnni "
                  f"{isa['avx512_vnni']}, amx_int8 {isa['amx_int8']}")
    if "served_path" in acc:
        sp, uv = acc["served_path"], acc["ultralytics_validator"]
        console.print(f"mAP50-95 (served path, {acc['imgsz']} px): FP32 {sp['fp32_mAP50-95']:.4f}"
                      f", INT8 {sp['int8_mAP50-95']:.4f} ({sp['drop_points']:+.2f} points lost); "
                      f"Ultralytics validator: FP32 {uv['fp32_mAP50-95']:.4f}, its INT8 export "
                      f"{uv['peer_int8_mAP50-95']:.4f} ({uv['drop_points']:+.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
