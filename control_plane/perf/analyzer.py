"""`perf_analyzer` against the served detector: real image data, a concurrency sweep, a table.

perf_analyzer comes from the tritonclient 2.48.0 manylinux wheel (installed into the venv's
bin/); it needs Debian's libb64-0d and libcudart.so.12 from `nvidia-cuda-runtime-cu12`, even
on a machine without a GPU, so we point LD_LIBRARY_PATH at that wheel's lib folder.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings


class PerfAnalyzerFailed(ControlPlaneError):
    """perf_analyzer exited with an error (bad arguments, no server, no such model)."""

    status_code = 502
    code = "perf_analyzer_failed"
    exit_code = 3


class UnstableMeasurement(PerfAnalyzerFailed):
    """perf_analyzer gave up on some concurrency levels: their latency or throughput did not
    settle within `stability_percentage` over `max_trials` windows. The CSV keeps the levels that
    did; the message names the ones that did not and what to change."""

    status_code = 503
    code = "unstable_measurement"


def concurrency_levels(spec: str) -> list[int]:
    """The levels perf_analyzer visits for `start[:end[:step]]` (without --binary-search)."""
    try:
        parts = [int(p) for p in spec.split(":")]
    except ValueError:
        raise ControlPlaneError(f"--concurrency {spec!r}: expected start[:end[:step]] integers",
                                field="concurrency") from None
    if not 1 <= len(parts) <= 3:
        raise ControlPlaneError(f"--concurrency {spec!r}: expected start[:end[:step]]",
                                field="concurrency")
    start = parts[0]
    end = parts[1] if len(parts) > 1 else start
    step = parts[2] if len(parts) > 2 else 1
    if start < 1 or end < start or step < 1:
        raise ControlPlaneError(f"--concurrency {spec!r}: need 1 <= start <= end and step >= 1",
                                field="concurrency")
    return list(range(start, end + 1, step))


def sample_image() -> Path:
    """bus.jpg from the ultralytics package (ships with it; nothing is downloaded)."""
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def perf_analyzer_path() -> Path:
    found = shutil.which("perf_analyzer") or str(Path(sys.prefix) / "bin" / "perf_analyzer")
    if not Path(found).exists():
        raise FileNotFoundError("perf_analyzer not found: install tritonclient==2.48.0 "
                                "(the manylinux wheel carries the binary)")
    return Path(found)


def perf_environment() -> dict[str, str]:
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    except ImportError:
        pass
    return env


def write_input_data(folder: Path, imgsz: int = 640, stride: int = 32) -> tuple[int, int]:
    """One file per input (raw bytes): a real letterboxed image and the default thresholds."""
    import cv2

    from tracker_service.letterbox import letterbox

    rgb, _ = letterbox(cv2.imread(str(sample_image())), imgsz, stride)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").write_bytes(np.ascontiguousarray(rgb).tobytes())
    (folder / "conf_threshold").write_bytes(np.float32(0.25).tobytes())
    (folder / "iou_threshold").write_bytes(np.float32(0.7).tobytes())
    (folder / "max_det").write_bytes(np.int32(300).tobytes())
    (folder / "return_raw").write_bytes(np.bool_(False).tobytes())
    return rgb.shape[0], rgb.shape[1]


def run_perf_analyzer(settings: Settings, *, concurrency: str = "1:4:1", shape: str | None = None,
                      measurement_ms: int = 5000, shared_memory: str = "none",
                      csv_path: Path, console: Console | None = None,
                      batch_size: int = 1, version: str = "", imgsz: int | None = None,
                      stability_percentage: float = 10.0,
                      max_trials: int = 10, request_count: int = 0) -> list[dict[str, str]]:
    """perf_analyzer over `concurrency`; `version` pins a model version (Triton's default
    otherwise), `imgsz` the letterbox size of the input image (default: settings.imgsz).
    `request_count` > 0: windows of at least that many requests (perf_analyzer's
    count_windows mode: a window starts at 1 s and grows until they are done) instead of
    `measurement_ms` each, so a stalled moment lengthens a window rather than emptying it.

    perf_analyzer stops its sweep at the first level whose measurements do not settle within
    `stability_percentage` over `max_trials` windows (exit status 2 when that is the first level,
    0 with a shorter CSV when it is a later one); both are reported here as
    `UnstableMeasurement`, with the settled levels' rows, never as a short table that looks
    complete."""
    levels = concurrency_levels(concurrency)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    # An earlier run's CSV must not pass for this one's when perf_analyzer writes none.
    csv_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="vg-perf-") as tmp:
        h, w = write_input_data(Path(tmp) / "data", imgsz or settings.imgsz)
        cmd = [
            str(perf_analyzer_path()), "-m", settings.model_name, "-i", "grpc",
            *(["-x", str(version)] if version else []),
            "-u", settings.triton_grpc_url, "-b", str(batch_size),
            "--concurrency-range", concurrency,
            "--measurement-interval", str(measurement_ms),
            *(["--measurement-mode", "count_windows", "--measurement-request-count",
               str(request_count)] if request_count > 0 else []),
            "--stability-percentage", f"{stability_percentage:g}",
            "--max-trials", str(max_trials),
            "--input-data", str(Path(tmp) / "data"),
            "--shape", f"images:{shape or f'{h},{w},3'}",
            "--shape", "conf_threshold:1", "--shape", "iou_threshold:1",
            "--shape", "max_det:1", "--shape", "return_raw:1",
            "--shared-memory", shared_memory,
            "--output-shared-memory-size", str(64 << 10),
            "-f", str(csv_path), "--verbose-csv",
        ]
        if console:
            console.print("+ " + " ".join(cmd))
        proc = subprocess.run(cmd, env=perf_environment(), capture_output=True, text=True)
    unstable = "Failed to obtain stable measurement" in proc.stdout + proc.stderr
    if proc.returncode != 0 and not unstable:
        # Usage errors print the whole help text after the one line that matters.
        raise PerfAnalyzerFailed(f"perf_analyzer failed ({proc.returncode}): "
                                 f"{proc.stderr[:2000].strip()}\n{proc.stdout[-3000:].strip()}",
                                 returncode=proc.returncode)
    rows: list[dict[str, str]] = []
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            # perf_analyzer orders its CSV by throughput; read it back by concurrency.
            rows = sorted(csv.DictReader(f), key=lambda row: int(row["Concurrency"]))
    missing = sorted(set(levels) - {int(r["Concurrency"]) for r in rows})
    if missing:
        raise UnstableMeasurement(
            f"perf_analyzer found no stable measurement for concurrency {missing} "
            f"(within {stability_percentage:g}% over {max_trials} windows of "
            f"{f'{request_count} requests' if request_count > 0 else f'{measurement_ms} ms'}); "
            "raise --measurement-ms or --stability-percentage, or measure on a quieter machine",
            missing=missing, measured=[int(r["Concurrency"]) for r in rows], rows=rows,
            csv=str(csv_path))
    return rows


def print_table(rows: list[dict[str, str]], console: Console) -> None:
    table = Table(title="perf_analyzer (gRPC)")
    for col in ("Concurrency", "Inferences/Second", "p50 latency", "p95 latency",
                "p99 latency", "Server Queue", "Server Compute Infer"):
        table.add_column(col, justify="right")
    for row in rows:
        us = lambda k: f"{float(row.get(k, 0)) / 1000:.1f} ms"  # noqa: E731
        table.add_row(row["Concurrency"], f"{float(row['Inferences/Second']):.1f}",
                      us("p50 latency"), us("p95 latency"), us("p99 latency"),
                      us("Server Queue"), us("Server Compute Infer"))
    console.print(table)
