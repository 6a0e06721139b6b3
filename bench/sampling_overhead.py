"""What keeping production frames costs the gateway: throughput with frame sampling on vs off.

    python bench/sampling_overhead.py [--concurrency 4] [--rounds 5 --window 4]

Starts the stack (control plane, Triton, the gateway with sampling off, as `visionguard up`
does) on a scratch repository, and a second gateway on the same Triton with sampling on and
every reason active: the control plane publishes a flagged drift check (a `last.json` in its
drift folder, read at start, which the gateway polls from GET /v1/drift/status), the uncertain
band is on, and the uniform rate is high enough (default 0.05) that frames really are written to
the local store (the per-stream limit is lifted for the same reason; the clients ask for
conf 0 and 20 boxes at most, as the untrained seeded detector scores under 0.01, and the
uncertain band starts there, a tenth of the frames in it kept). Each request carries a
distinct JPEG: bus.jpg with a counter in a JPEG comment segment (same pixels, another SHA-256),
so no frame is skipped as a duplicate. Windows of both gateways are interleaved round after
round at the same concurrency; throughput is the median over windows, the ratio the median of
the per-round ratios (target >= 0.97, issue 14). Prints a table and writes JSON (default
bench/results/sampling_overhead.json) with the frames sampled, stored and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_load import gateway_level, summarise  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.stack.supervisor import Supervisor, wait_http_ok  # noqa: E402
from control_plane.stack.up import (gateway_command, gateway_env, local_tokens,  # noqa: E402
                                    release_gateway_regions, start_stack)
from export.pipeline import export_to_repository  # noqa: E402

console = Console()


def tagged(jpeg: bytes, n: int) -> bytes:
    """`jpeg` with a COM segment holding `n` after SOI: same pixels, other bytes."""
    body = f"vg-bench {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def frame_metrics(url: str) -> dict:
    out: dict = {"sampled": {}, "dropped": {}, "stored_bytes": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("visionguard_gateway_frames_sampled_total{"):
            out["sampled"][line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("visionguard_gateway_frames_dropped_total{"):
            out["dropped"][line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("visionguard_gateway_frames_stored_bytes_total "):
            out["stored_bytes"] = float(line.split()[-1])
    return out


def flagged_drift(settings: Settings) -> None:
    """A drift check result that flags drift, where the control plane reads its last one."""
    settings.drift_dir.mkdir(parents=True, exist_ok=True)
    (settings.drift_dir / "last.json").write_text(json.dumps({
        "model": settings.model_name, "version": "1", "checked_at": time.time(),
        "n_reference": 200, "n_live": 200, "p_value": 0.05, "drift": True,
        "detectors": {"ks": {"drift": True, "threshold": 0.002, "features": {}},
                      "mmd": {"drift": True, "threshold": 0.025, "p_value": 0.0,
                              "distance": 1.0, "distance_threshold": 0.1}},
        "drifted_features": ["brightness"]}))


def main() -> None:
    import ultralytics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before a window")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--uniform-rate", type=float, default=0.05)
    parser.add_argument("--drift-rate", type=float, default=0.05)
    # The seeded (untrained) detector scores under 0.01: the clients ask for conf 0 (at most
    # 20 boxes) and the uncertain band starts there, so the band really catches frames (a
    # tenth of those in it are kept).
    parser.add_argument("--conf", type=float, default=0.0)
    parser.add_argument("--uncertain-rate", type=float, default=0.1)
    parser.add_argument("--image", type=Path,
                        default=Path(ultralytics.__file__).parent / "assets" / "bus.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "sampling_overhead.json")
    args = parser.parse_args()
    image = args.image.read_bytes()
    counter = itertools.count()

    from tests.conftest import free_ports

    # The same for both gateways: no drift features posted (their control-plane load is not
    # what is measured), no periodic check or schedule replacing the flagged result.
    os.environ.update({"VG_GATEWAY_DRIFT_SAMPLE_RATE": "0", "VG_DRIFT_CHECK_INTERVAL_S": "0",
                       "VG_SCHEDULE_ENABLED": "0"})
    with tempfile.TemporaryDirectory(prefix="vg-bench-") as tmp:
        http, grpc, metrics, gw, gw_on, control = free_ports(6)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           control_port=control, mlflow_ui_port=0)
        with console.status(f"exporting {args.weights}"):
            export_to_repository(args.weights, settings.model_repository, version=1)
        flagged_drift(settings)
        frames_dir = settings.runtime_dir / "frames"
        sampling = {"VG_GATEWAY_FRAMES_SAMPLING": "1", "VG_GATEWAY_FRAMES_DIR": str(frames_dir),
                    "VG_GATEWAY_FRAMES_UNIFORM_RATE": str(args.uniform_rate),
                    "VG_GATEWAY_FRAMES_DRIFT_RATE": str(args.drift_rate),
                    "VG_GATEWAY_FRAMES_UNCERTAIN_LOW": str(args.conf),
                    "VG_GATEWAY_FRAMES_UNCERTAIN_RATE": str(args.uncertain_rate),
                    "VG_GATEWAY_FRAMES_PER_STREAM_PER_MIN": "100000",
                    "VG_GATEWAY_FRAMES_DRIFT_POLL_S": "1"}
        windows: dict[str, list[dict]] = {"off": [], "on": []}
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            tokens = local_tokens(settings)
            with console.status("starting the stack and a second gateway with sampling on"):
                start_stack(settings, supervisor, tokens)
                on_settings = replace(settings, gateway_port=gw_on)
                child = supervisor.start(
                    "gateway-sampling", gateway_command(on_settings),
                    {**gateway_env(on_settings, tokens["gateway"]), **sampling},
                    on_exit=lambda c: release_gateway_regions(on_settings, c.proc.pid))
                wait_http_ok(f"http://{settings.host}:{gw_on}/readyz", child.proc, 120,
                             "gateway-sampling")
            urls = {"off": f"http://{settings.host}:{gw}", "on": f"http://{settings.host}:{gw_on}"}
            time.sleep(2)  # the sampling gateway has polled the drift flag
            with Progress(console=console) as progress:
                task = progress.add_task("measuring", total=args.rounds * 2)
                for r in range(args.rounds):
                    # Alternate which goes first, so neither always follows the other.
                    for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                        windows[name].append(asyncio.run(gateway_level(
                            urls[name], image, args.concurrency, args.window, args.warmup,
                            path=f"/v1/detect?conf={args.conf}&max_det=20",
                            body=lambda: tagged(image, next(counter)))))
                        progress.advance(task)
            frames = frame_metrics(urls["on"])
            load = os.getloadavg()
    results = {"image": args.image.name, "weights": args.weights, "window_s": args.window,
               "rounds": args.rounds, "concurrency": args.concurrency,
               "uniform_rate": args.uniform_rate, "drift_rate": args.drift_rate,
               "conf": args.conf, "uncertain_rate": args.uncertain_rate,
               "cpu": cpu_model(), "cpus": os.cpu_count(), "loadavg_after": load,
               "off": summarise(windows["off"]), "on": summarise(windows["on"]),
               "frames": frames}
    ratio = float(np.median([on["images_per_s"] / off["images_per_s"]
                             for on, off in zip(windows["on"], windows["off"])]))
    results["ratio_on_vs_off"] = ratio
    table = Table(title=f"frame sampling overhead: c={args.concurrency}, {args.rounds} rounds "
                        f"of {args.window:.0f} s windows, interleaved")
    for col in ("gateway", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    for name in ("off", "on"):
        s = results[name]
        table.add_row(f"sampling {name}", f"{s['images_per_s']:.1f}", f"{s['p50_ms']:.1f}",
                      f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}", str(s.get("errors", 0)))
    console.print(table)
    console.print(f"throughput on/off (median of per-round ratios): {ratio:.3f} "
                  f"(target >= 0.97)")
    console.print(f"frames sampled {frames['sampled']}, dropped {frames['dropped']}, "
                  f"{frames['stored_bytes'] / 1e6:.1f} MB stored; load average {load}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
