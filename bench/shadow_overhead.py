"""What shadow traffic costs the gateway: throughput and latency with the shadow on and off.

    python bench/shadow_overhead.py [--percents 50,100] [--concurrency 4] [--rounds 5 --window 4]

Starts the stack as `visionguard up` does (control plane, gateway, Triton) on a scratch model
repository and MLflow store, registers the exported model as the champion (version 1) and the
same ONNX again as version 2, and makes version 2 the shadow through the release operation
(Promoter.shadow: loaded in Triton, routing published). Then, round after round, it
interleaves windows of `--concurrency` clients posting the same JPEG (bench/gateway_load.py's
`gateway_level`) with the shadow's share set to 0 (off) and to each of `--percents`; between
windows only the share changes (the registered model's tag, which the gateways poll), so the
shadow version stays loaded and no window measures a load. Throughput is the median over
windows and each ratio the median of the ratios within a round; beside them, how many mirrors
the gateway compared and shed in each window (its /metrics), since a shadow that is shed costs
nothing and compares nothing. Prints a table and writes JSON
(default bench/results/shadow_overhead.json). The issue's target: >= 0.90x of the throughput
with the shadow off at concurrency 4, and p50 latency within 10%.
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

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_load import gateway_level, summarise  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from control_plane.releases.promoter import Promoter  # noqa: E402
from control_plane.releases.registry import Registry  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.stack.supervisor import Supervisor  # noqa: E402
from control_plane.stack.up import start_stack  # noqa: E402
from export.pipeline import export_to_repository  # noqa: E402

console = Console()
SHADOW_COUNTERS = ("visionguard_gateway_shadow_compared_total",
                   "visionguard_gateway_shadow_shed_total",
                   "visionguard_gateway_shadow_errors_total")


def shadow_counts(gateway_url: str) -> dict[str, float]:
    """The gateway's shadow counters, summed over versions and reasons."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=30).text
    out = dict.fromkeys(SHADOW_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in out:
                out[s.name] += s.value
    return out


def wait_routing(settings: Settings, percent: float, token: str) -> None:
    """Until the control plane serves the share; then one gateway poll more."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(f"{settings.control_url}/v1/routing", timeout=10,
                      headers={"authorization": f"Bearer {token}"}).json()
        if r["shadow_percent"] == percent:
            time.sleep(settings_poll_s() + 0.3)
            return
        time.sleep(0.1)
    raise TimeoutError(f"the routing never showed a {percent:g}% shadow")


def settings_poll_s() -> float:
    from tracker_service.settings import GatewaySettings

    return GatewaySettings().routing_poll_s


def register_champion_and_shadow(settings: Settings, onnx_path: Path) -> tuple[str, str]:
    """Versions 1 (champion) and 2 of the registry, both `onnx_path`, as releases register."""
    from tests.test_console import register

    champion = register(settings, onnx_path, {}, champion=True)
    return champion, register(settings, onnx_path, {"candidate": "shadow"}, champion=False)


def main() -> None:
    import ultralytics

    from control_plane.auth import TokenStore
    from tests.conftest import free_ports

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--percents", default="50,100", help="shadow shares to measure")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--image", type=Path,
                        default=Path(ultralytics.__file__).parent / "assets" / "bus.jpg")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "shadow_overhead.json")
    args = parser.parse_args()
    percents = [float(p) for p in args.percents.split(",")]
    configs = [0.0, *percents]
    image = args.image.read_bytes()

    with tempfile.TemporaryDirectory(prefix="vg-bench-shadow-") as tmp:
        http, grpc, metrics, gw, control = free_ports(5)
        settings = replace(Settings(), model_repository=Path(tmp) / "repo",
                           runtime_dir=Path(tmp) / "runtime", triton_http_port=http,
                           triton_grpc_port=grpc, triton_metrics_port=metrics, gateway_port=gw,
                           control_port=control, mlflow_ui_port=0, imgsz=args.imgsz,
                           routing_drain_s=1.0, shadow_max_percent=100.0)
        with console.status(f"exporting {args.weights} at {args.imgsz}"):
            exported = export_to_repository(args.weights, settings.model_repository, version=1,
                                            imgsz=args.imgsz)
        champion, shadow_version = register_champion_and_shadow(settings, exported.onnx_path)
        windows: dict[float, list[dict]] = {p: [] for p in configs}
        with Supervisor(settings.runtime_dir / "logs") as supervisor:
            with console.status("starting the control plane, the gateway and Triton"):
                start_stack(settings, supervisor)
            token = TokenStore(settings.tokens_file).create("bench-shadow", ["viewer"])
            registry = Registry(settings)
            with console.status(f"loading version {shadow_version} as the shadow"):
                Promoter(settings, actor="bench", registry=registry).shadow(
                    shadow_version, max(percents))
            url = f"http://{settings.host}:{settings.gateway_port}"
            with Progress(console=console) as progress:
                task = progress.add_task("measuring", total=args.rounds * len(configs))
                for _ in range(args.rounds):
                    for percent in configs:
                        registry.set_shadow_percent(percent)
                        wait_routing(settings, percent, token)
                        before = shadow_counts(url)
                        w = asyncio.run(gateway_level(url, image, args.concurrency, args.window,
                                                      args.warmup))
                        after = shadow_counts(url)
                        w.update({k: after[k] - before[k] for k in SHADOW_COUNTERS})
                        windows[percent].append(w)
                        progress.advance(task)

    def ratio(p: float, key: str) -> float:
        """Median over rounds of (shadow at p) / (shadow off) measured within each round."""
        if key == "images_per_s":
            pairs = [(a[key], b[key]) for a, b in zip(windows[p], windows[0.0])]
        else:
            pairs = [(np.median(a["latencies"]), np.median(b["latencies"]))
                     for a, b in zip(windows[p], windows[0.0])]
        return float(np.median([x / y for x, y in pairs]))

    rows = []
    for p in configs:
        summary = summarise(windows[p])
        counts = {k.removeprefix("visionguard_gateway_shadow_"): int(sum(w[k] for w in windows[p]))
                  for k in SHADOW_COUNTERS}
        rows.append({"shadow_percent": p, **summary, "mirrors": counts,
                     "throughput_vs_off": ratio(p, "images_per_s") if p else 1.0,
                     "p50_vs_off": ratio(p, "latency") if p else 1.0})
    results = {"machine": {"processor": cpu_model(), "architecture": platform.machine(),
                           "cpus": os.cpu_count(), "python": platform.python_version()},
               "image": args.image.name, "weights": args.weights, "imgsz": args.imgsz,
               "concurrency": args.concurrency, "rounds": args.rounds, "window_s": args.window,
               "shadow_settings": {k: v for k, v in os.environ.items()
                                   if k.startswith("VG_GATEWAY_SHADOW_")},
               "target": "throughput >= 0.90x and p50 within 1.10x of the shadow off",
               "configs": rows}

    table = Table(title=f"shadow overhead: {args.image.name}, {args.weights} at {args.imgsz}, "
                        f"concurrency {args.concurrency}, {args.rounds} rounds of "
                        f"{args.window:.0f} s windows, interleaved")
    for col in ("shadow", "images/s", "x off", "p50 ms", "p50 x off", "p95 ms", "errors",
                "compared", "shed", "shadow errors"):
        table.add_column(col, justify="right")
    for r in rows:
        m = r["mirrors"]
        table.add_row("off" if not r["shadow_percent"] else f"{r['shadow_percent']:g}%",
                      f"{r['images_per_s']:.1f}", f"{r['throughput_vs_off']:.2f}",
                      f"{r['p50_ms']:.1f}", f"{r['p50_vs_off']:.2f}", f"{r['p95_ms']:.1f}",
                      str(r["errors"]), str(m["compared_total"]), str(m["shed_total"]),
                      str(m["errors_total"]))
    console.print(table)
    console.print(f"machine: {results['machine']['processor']}, {os.cpu_count()} CPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(args.out)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
