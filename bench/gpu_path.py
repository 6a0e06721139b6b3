"""The GPU serving path in one call: Triton + torch on CUDA (FP16), perf_analyzer, the gateway.

    python bench/gpu_path.py                  # CUDA if torch sees it, else the CPU fallback
    python bench/gpu_path.py --bundle-build   # here, before a GPU run: bench/results/gpu_bundle/

Issue 17 item 5. TensorRT cannot be installed on any machine here (docs/design.md), so the GPU
figure this project can produce is the pytriton Triton (python backend) serving the detector
under the same name and tensor contract as model_repository/detector, with the model run by
torch on CUDA in FP16, optionally as CUDA graphs (bench/gpu_model/model.py). In one call, under
its own deadline (`--deadline-s`, default 480 s, checked before every step; whatever was measured
is written even when a step fails or time runs out), it:
  1. traces yolov8n (built from its yaml, seeded: nothing is downloaded), fused as the export
     does, at the letterbox size of bus.jpg, and writes a scratch model repository (dynamic
     batching, preferred sizes up to 32, max_batch_size 32);
  2. times the same trace in-process, batch by batch (the model alone: what the anchor measures);
  3. starts Triton (control_plane/stack/triton_server.py's command and environment, as `up`
     does) and checks one inference against the in-process FP32 reference with the project's
     NMS (tracker_service/nms.py);
  4. runs perf_analyzer over batch sizes x concurrency (gRPC, system shared memory), recording
     throughput, p50/p95/p99, Triton's queue / compute split and the batch sizes Triton formed;
  5. runs the gateway (tracker_service, several uvicorn worker processes, shared memory to
     Triton) and measures end-to-end images/s at a few concurrencies, posting bus.jpg;
  6. writes JSON and a Markdown table to $OUT when set (the device tool's output folder), else
     bench/results/gpu_path.json and .md, with the device (name, driver, CUDA), and the anchors
     (yolov8n TensorRT FP16 on an A100: 0.34 ms/image at batch 8, Ultralytics' docs; dynamic
     batching 1.76x, Triton's YOLOv7 example) beside the figures.
Without CUDA the same steps run as a CPU fallback (torch FP32, 128 px, a tiny grid, under a
minute): tests/test_gpu_path.py runs it end to end in CI, and its JSON and table say "cpu".

On the GPU machine (an H200, no network, Python 3.12 with its own torch 2.11 and numpy 2.5; the
project's .venv is 7 GB and cannot travel within the device tool's 64 MiB), what the run needs
and that machine lacks travels as one bundle in an ignored folder. Build it here first (about a
minute on 2 cores; about 50 MiB, the working tree adds about 4):

    .venv/bin/python bench/gpu_path.py --bundle-build

bench/results/gpu_bundle/ then holds runtime.tar.xz (the Python 3.12 wheels of BUNDLE_WHEELS
installed with `pip install --target --no-deps --only-binary=:all: --python-version 3.12`: the
gateway's dependencies that machine lacks, tritonclient 2.48.0 with its perf_analyzer, protobuf
4.25 for tritonclient's generated code, numpy 1.26 for Triton 2.48's python stub; the
tritonserver binary, python backend, 3.12 stub and libraries of nvidia-pytriton 0.5.10; and
libcudart.so.12 + libb64.so.0d for perf_analyzer), model.torchscript (yolov8n traced at 640 px,
FP16 weights: the trace needs ultralytics, which that machine lacks), bus.jpg and manifest.json.
Then, from a session whose task is lent a device machine, one call:

    run(command="PYTHONUNBUFFERED=1 python3 bench/gpu_path.py --bundle bench/results/gpu_bundle"
                " --out $OUT 2>&1 | tee $OUT/log.txt",
        carry=["bench/results/gpu_bundle"], timeout_s=570)

With --bundle the script unpacks the bundle under /tmp into a virtual environment whose path is
the bundle's packages, then the launching interpreter's (torch), and runs itself again in it;
Triton's python stub, started in that environment, imports the same packages; the gateway
finds the machine's own numpy first (its scipy needs numpy 2; the stub needs the bundle's 1.26).
Before starting Triton it checks that the 3.12 stub finds libpython3.12.so, looks for one on the
machine where it does not, and last uses the bundle's fallback (a stripped libpython of another
3.12 patch release, when the machine building the bundle has one); the JSON says which. Before
the gateway's load, one probe request goes through it with Triton's verbose log on; if it fails,
the same request through a second gateway without shared memory says whether that path is the
cause (on the H200 on 2026-12-04 every gateway request timed out: docs/perf/gpu-h200.md).
`python bench/gpu_path.py --bundle-build /tmp/b --bundle-python 3.11` followed by
`--bundle /tmp/b --device cpu` tries the same mechanics on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_DIR = Path(__file__).resolve().parent / "gpu_model"
BUNDLE_DIR = ROOT / "bench" / "results" / "gpu_bundle"
MODEL_NAME = "detector"
ANCHORS = {
    "tensorrt_fp16_a100_ms_per_image_batch8": {
        "value": 0.34, "source": "Ultralytics docs, yolov8n TensorRT FP16 on an A100, batch 8"},
    "dynamic_batching_gain": {
        "value": 1.76, "source": "Triton's YOLOv7 example: throughput with dynamic batching "
                                 "over without"},
}
# The gateway's Python dependencies the GPU machine's image lacks (checked against its package
# list in the device tool's KINDS.md, 2026-11-17), at the versions this project's .venv runs.
# Left out: litestar's polyfactory, faker, rich-click and litestar-htmx, which creating the
# gateway's app never imports (checked: not in sys.modules after create_app()). numpy 1.26: the
# python backend stub of Triton 2.48 is built with pybind11 2.10, which misreads numpy 2 arrays
# (triton-inference-server/python_backend#384, fixed for later Triton releases), and that
# machine has numpy 2.5.
BUNDLE_WHEELS = (
    "numpy==1.26.4", "litestar==2.25.0", "msgspec==0.23.0", "multipart==2.0.1",
    "uvicorn==0.55.0", "shapely==2.2.0", "sniffio==1.3.1", "tritonclient==2.48.0",
    "python-rapidjson==1.25", "protobuf==4.25.9", "opentelemetry-api==1.27.0",
    "opentelemetry-sdk==1.27.0", "opentelemetry-semantic-conventions==0.48b0",
    "deprecated==1.3.1", "importlib-metadata==8.4.0", "simplejpeg==1.9.0",
)
BUNDLE_PYTHON = "3.12"
PARITY_CANDIDATES = 50  # anchors above the parity check's score threshold


@dataclass(frozen=True)
class Plan:
    """What one call measures. The GPU plan fits 8 minutes on an H200 with room to spare; the
    CPU plan is the CI fallback (small input, tiny grid)."""

    device: str
    dtype: str
    imgsz: int
    batches: tuple[int, ...]
    concurrencies: tuple[int, ...]
    gateway_concurrencies: tuple[int, ...]
    gateway_workers: int
    instances: int
    cuda_graphs: bool
    measurement_ms: int
    max_trials: int
    stability_percentage: float
    gateway_window_s: float
    gateway_warmup_s: float
    client_processes: int
    inprocess_iters: int
    threads: int = 0
    max_queue_delay_us: int = 0


GPU_PLAN = Plan(device="cuda", dtype="fp16", imgsz=640, batches=(1, 8, 32),
                concurrencies=(1, 8, 64), gateway_concurrencies=(8, 32, 64), gateway_workers=8,
                instances=2, cuda_graphs=True, measurement_ms=3000, max_trials=8,
                stability_percentage=15, gateway_window_s=8, gateway_warmup_s=2,
                client_processes=4, inprocess_iters=50, max_queue_delay_us=500)
CPU_PLAN = Plan(device="cpu", dtype="fp32", imgsz=128, batches=(1, 4), concurrencies=(1, 4),
                gateway_concurrencies=(4,), gateway_workers=2, instances=1, cuda_graphs=False,
                measurement_ms=400, max_trials=6, stability_percentage=100,
                gateway_window_s=1.5, gateway_warmup_s=0.5, client_processes=1,
                inprocess_iters=3, threads=1)


class Deadline:
    """The call's own time limit: every step asks before it starts, and a subprocess gets at
    most what is left."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class OutOfTime(RuntimeError):
    pass


# --- the model --------------------------------------------------------------------------------

def bus_image(bundle: Path | None) -> Path:
    """bus.jpg: from the bundle on the GPU machine, else from the ultralytics package."""
    if bundle is not None:
        return bundle / "bus.jpg"
    from control_plane.perf.analyzer import sample_image

    return sample_image()


def letterboxed(image_path: Path, imgsz: int) -> np.ndarray:
    import cv2

    from tracker_service.letterbox import letterbox

    rgb, _ = letterbox(cv2.imread(str(image_path)), imgsz, 32)
    return np.ascontiguousarray(rgb)


def trace_detector(out_path: Path, input_hw: tuple[int, int], weights: str = "yolov8n.yaml",
                   seed: int = 0, half: bool = False) -> dict:
    """yolov8n from its yaml (seeded), fused and put in export mode as Ultralytics' exporter
    does, traced (FP32, CPU) for one input size: the two dry runs cache the anchors for that
    size, which the trace then holds as constants. Needs ultralytics (not on the GPU machine:
    there the bundle's trace is used). `half`: weights stored in FP16 (half the bytes to carry;
    the served model runs FP16 anyway, and the parity reference runs them in FP32)."""
    import torch
    from ultralytics.nn.modules import Detect

    from export.onnx_export import load_yolo

    yolo = load_yolo(weights, seed)
    model = yolo.model.fuse().eval().float()
    for p in model.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic = True, "torchscript", False
    x = torch.zeros(1, 3, *input_hw)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        traced = torch.jit.trace(model, x, strict=False, check_trace=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    (traced.half() if half else traced).save(str(out_path))
    names = {int(k): str(v) for k, v in yolo.names.items()}
    return {"architecture": weights, "seed": seed, "names": names,
            "stride": int(max(yolo.model.stride)), "input_hw": list(input_hw),
            "weights_dtype": "fp16" if half else "fp32"}


def write_repository(repo: Path, torchscript: Path, meta: dict, plan: Plan, imgsz: int) -> None:
    """The scratch Triton repository: config.pbtxt (dynamic batching, preferred sizes up to 32)
    and version 1 holding model.py and the trace."""
    from tracker_service.nms import MAX_NMS

    version = repo / MODEL_NAME / "1"
    version.mkdir(parents=True)
    shutil.copy2(MODEL_DIR / "model.py", version / "model.py")
    shutil.copy2(torchscript, version / "model.torchscript")
    preferred = ", ".join(str(b) for b in (1, 2, 4, 8, 16, 32))
    h, w = meta["input_hw"]
    params = {"class_names": json.dumps(meta["names"]), "stride": str(meta["stride"]),
              "imgsz": str(imgsz), "input_hw": f"{h}x{w}", "device": plan.device,
              "dtype": plan.dtype, "cuda_graphs": "1" if plan.cuda_graphs else "0",
              "threads": str(plan.threads), "max_nms": str(MAX_NMS),
              "conf_threshold": "0.25", "iou_threshold": "0.7", "max_det": "300"}
    # KIND_CPU on the GPU too: the stub runs torch on CUDA itself, and the python backend hands
    # it inputs in CPU memory either way; Triton's own CUDA set-up is then never in the way.
    text = f"""name: "{MODEL_NAME}"
backend: "python"
max_batch_size: 32
input [
  {{ name: "images" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }},
  {{ name: "conf_threshold" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "iou_threshold" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "max_det" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "return_raw" data_type: TYPE_BOOL dims: [ 1 ] optional: true }}
]
output [
  {{ name: "detections" data_type: TYPE_FP32 dims: [ -1, 6 ] }},
  {{ name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "raw" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {plan.max_queue_delay_us}
}}
instance_group [ {{ count: {plan.instances} kind: KIND_CPU }} ]
"""
    text += "".join(f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
                    for k, v in params.items())
    (repo / MODEL_NAME / "config.pbtxt").write_text(text)


def time_in_process(torchscript: Path, plan: Plan, input_hw: tuple[int, int],
                    deadline: Deadline) -> dict:
    """The trace alone on the served device and precision, per batch size: median ms per batch
    and per image (what the TensorRT anchor measures: the model, no transfer, no NMS)."""
    import torch

    device = torch.device(plan.device)
    dtype = torch.float16 if plan.dtype == "fp16" else torch.float32
    if plan.threads:
        torch.set_num_threads(plan.threads)
    model = torch.jit.load(str(torchscript), map_location=device).eval().to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    with torch.inference_mode():
        for batch in plan.batches:
            if deadline.left() < 30:
                out[str(batch)] = {"skipped": "deadline"}
                continue
            x = torch.rand(batch, 3, *input_hw, device=device).to(dtype)
            for _ in range(3):
                model(x)
            sync()
            times = []
            for _ in range(plan.inprocess_iters):
                t = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - t) * 1000)
            ms = float(np.median(times))
            out[str(batch)] = {"ms_per_batch_p50": ms, "ms_per_image": ms / batch,
                               "images_per_s": 1000 * batch / ms, "iterations": len(times)}
            if plan.cuda_graphs and device.type == "cuda":
                out[str(batch)].update(graph_timing(model, x, plan.inprocess_iters))
    return out


def graph_timing(model, x, iters: int) -> dict:
    """The same trace captured as a CUDA graph and replayed, as the served model does: its
    median ms per batch, or why capture failed (then the served model runs eagerly: a capture
    is tried here first, where a failure costs nothing)."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(x)
        graph.replay()
        torch.cuda.synchronize()
        eager = model(x)
        diff = float((out.float() - eager.float()).abs().max())
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
    except Exception as exc:  # noqa: BLE001 (any capture failure: say it, serve eagerly)
        return {"graph_error": f"{type(exc).__name__}: {exc}"[:500]}
    ms = float(np.median(times))
    return {"graph_ms_per_batch_p50": ms, "graph_ms_per_image": ms / x.shape[0],
            "graph_max_abs_diff_vs_eager": diff}


# --- the bundle for the GPU machine ------------------------------------------------------------

def build_bundle(dest: Path, imgsz: int = 640, python: str = BUNDLE_PYTHON) -> dict:
    """Everything the GPU machine lacks, in `dest` (an ignored folder the device tool carries).
    `python`: the GPU machine's version (3.12); this machine's (3.11) builds a bundle that can
    be tried here with `--bundle`."""
    import pytriton

    import nvidia.cuda_runtime

    site_packages = Path(pytriton.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="vg-gpu-bundle-") as tmp:
        stage = Path(tmp)
        site = stage / "site"
        print(f"installing {len(BUNDLE_WHEELS)} Python {python} wheels into the bundle",
              flush=True)
        platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 35)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-compile", "--only-binary=:all:", f"--python-version={python}",
                        "--implementation=cp", "--platform=manylinux2014_x86_64",
                        "--platform=manylinux1_x86_64", *platforms, "--target", str(site),
                        *BUNDLE_WHEELS], check=True)
        (site / "bin" / "perf_client").unlink(missing_ok=True)  # a second copy of perf_analyzer
        for tests in list((site / "numpy").rglob("tests")):  # a third of numpy, never imported
            shutil.rmtree(tests, ignore_errors=True)
        # The server side of nvidia-pytriton, without its Python API (which needs numpy < 2 and
        # more): the binary, the python backend, the stub for 3.12, the bundled libraries.
        src = site_packages / "pytriton" / "tritonserver"
        dst = site / "pytriton" / "tritonserver"
        shutil.copytree(src / "bin", dst / "bin")
        shutil.copytree(src / "backends", dst / "backends",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(src / "python_backend_stubs" / python,
                        dst / "python_backend_stubs" / python)
        (site / "pytriton" / "__init__.py").write_text(
            '"""nvidia-pytriton 0.5.10\'s tritonserver files (bench/gpu_path.py\'s bundle)."""\n')
        shutil.copytree(site_packages / "nvidia_pytriton.libs", site / "nvidia_pytriton.libs")
        lib = stage / "lib"
        lib.mkdir()
        cudart = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib" / "libcudart.so.12"
        shutil.copy2(cudart, lib / "libcudart.so.12")
        shutil.copy2("/usr/lib/x86_64-linux-gnu/libb64.so.0d", lib / "libb64.so.0d")
        fallback = local_libpython(python)
        if fallback is not None:
            # Used only where the GPU machine has no libpython of its own (the stub links it;
            # an image's Python can be built without one): stripped, 30 -> about 6 MB.
            (lib / "fallback").mkdir()
            subprocess.run(["strip", "--strip-unneeded", "-o",
                            str(lib / "fallback" / fallback.name), str(fallback)], check=True)
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        print("compressing the runtime (xz; a few minutes on 2 cores)", flush=True)
        subprocess.run(["tar", "-C", str(stage), "-I", "xz -T0 -6", "-cf",
                        str(staging / "runtime.tar.xz"), "site", "lib"], check=True)
    shutil.copy2(bus_image(None), staging / "bus.jpg")
    input_hw = letterboxed(staging / "bus.jpg", imgsz).shape[:2]
    meta = trace_detector(staging / "model.torchscript", tuple(input_hw), half=True)
    manifest = {**meta, "imgsz": imgsz, "python": python, "wheels": list(BUNDLE_WHEELS),
                "fallback_libpython": str(fallback) if fallback else None,
                "pytriton": "0.5.10", "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime()),
                "files": {p.name: p.stat().st_size for p in staging.iterdir()}}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return manifest


@dataclass
class Runtime:
    """Where the run finds what it needs: the current environment, or the unpacked bundle."""

    site: Path | None = None
    lib: Path | None = None
    bundle: Path | None = None
    manifest: dict = field(default_factory=dict)

    def child_env(self, base: dict[str, str]) -> dict[str, str]:
        """A gateway's environment: this checkout, the machine's own numpy, then the bundle's
        packages. The bundle's numpy 1.26 is for Triton's python stub alone: the machine's
        scipy (the trackers' assignment) needs its own numpy 2 (np.long; seen on the H200)."""
        env = dict(base)
        bundle = [str(self.site.parent / "machine-numpy"), str(self.site)] if self.site else []
        paths = [str(ROOT), *bundle, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def perf_env(self) -> dict[str, str]:
        from control_plane.perf.analyzer import perf_environment

        env = perf_environment()
        if self.lib:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(self.lib), env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def perf_analyzer(self) -> str:
        if self.site and (self.site / "bin" / "perf_analyzer").exists():
            return str(self.site / "bin" / "perf_analyzer")
        from control_plane.perf.analyzer import perf_analyzer_path

        return str(perf_analyzer_path())


def use_bundle(bundle: Path) -> Runtime:
    """Unpack the bundle under /tmp (once) into a virtual environment that sees the bundle's
    packages first and then this interpreter's (torch), and run this script again inside it.

    A virtual environment rather than PYTHONPATH: Triton's python stub finds its packages through
    the environment it is started in (`python3` on PATH, VIRTUAL_ENV), and PYTHONPATH did not
    reach it (checked here: a numpy on PYTHONPATH was not the one it imported). So the stub, the
    gateway and this script all import the same numpy 1.26 and the machine's torch."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    root = Path(tempfile.gettempdir()) / f"vg-gpu-runtime-{manifest['built_at'].replace(':', '')}"
    venv = root / "venv"
    if Path(sys.prefix).resolve() == venv.resolve():
        return Runtime(root / "site", root / "lib", bundle, manifest)
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(root), "-xJf", str(bundle / "runtime.tar.xz")],
                       check=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        own = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        site_packages = (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                         / "site-packages")
        (site_packages / "vg_gpu_bundle.pth").write_text(
            "\n".join([str(root / "site"), *own]) + "\n")
        # Links to this interpreter's own numpy alone, for the gateway's path (Runtime.child_env):
        # it hides the bundle's numpy 1.26 from the gateway and nothing else.
        (root / "machine-numpy").mkdir()
        source = next((Path(d) for d in own if (Path(d) / "numpy" / "__init__.py").exists()),
                      None)
        for name in ("numpy", "numpy.libs") if source else ():
            if (source / name).exists():
                (root / "machine-numpy" / name).symlink_to(source / name)
        (root / ".complete").touch()
    python = venv / "bin" / "python"
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def local_libpython(version: str) -> Path | None:
    """A shared libpython of `version` on this machine (pyenv's builds have one; Debian's
    Python 3.11 too), for the bundle's fallback."""
    name = f"libpython{version}.so.1.0"
    candidates = [Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent") / name,
                  *sorted(Path.home().glob(f".pyenv/versions/{version}.*/lib/{name}")),
                  Path("/usr/lib/x86_64-linux-gnu") / name, Path("/usr/local/lib") / name]
    return next((c for c in candidates if c.is_file()), None)


def find_libpython(runtime: Runtime, timeout_s: float = 20) -> tuple[Path | None, str]:
    """The folder holding this interpreter's libpython where the stub's loader misses it: the
    loader already tries its own paths and sysconfig's LIBDIR (triton_server.server_environment),
    so this looks under the base prefix, then a bounded search of /usr, /opt and /root, and last
    takes the bundle's fallback (another patch release of the same minor version, so only when
    the machine has none). Returns the folder and how it was found."""
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    base = Path(sys.base_prefix) / "lib"
    if (base / name).is_file():
        return base, f"base prefix: {base / name}"
    try:
        found = subprocess.run(["find", "/usr", "/opt", "/root", "-xdev", "-name", name],
                               capture_output=True, text=True, timeout=timeout_s).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        found = []
    if found:
        return Path(found[0]).parent, f"found: {found[0]}"
    if runtime.lib and (runtime.lib / "fallback" / name).is_file():
        source = runtime.manifest.get("fallback_libpython")
        return runtime.lib / "fallback", f"the bundle's fallback ({source}): the machine has none"
    return None, "not found"


def missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries `binary` needs and the loader cannot find (ldd), e.g. libpython3.12."""
    try:
        out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


# --- measuring ---------------------------------------------------------------------------------

def device_info(plan: Plan) -> dict:
    import torch

    from bench.machine import cpu_model

    info = {"kind": plan.device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_cores": os.cpu_count()}
    if plan.device == "cuda":
        info.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "unknown (nvidia-smi did not answer)"
    else:
        info["name"] = (f"CPU fallback on {cpu_model()}: torch.cuda.is_available() is False, so "
                        "no GPU figures")
    return info


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def triton_counts(http_url: str) -> dict[str, int]:
    import httpx

    stats = httpx.get(f"{http_url}/v2/models/{MODEL_NAME}/stats", timeout=10).json()
    out = {"inferences": 0, "executions": 0, "requests": 0}
    for model in stats["model_stats"]:
        out["inferences"] += int(model.get("inference_count", 0))
        out["executions"] += int(model.get("execution_count", 0))
        out["requests"] += int(model["inference_stats"]["success"]["count"])
    return out


def parity_check(grpc_url: str, torchscript: Path, image: np.ndarray,
                 candidates: int = PARITY_CANDIDATES) -> dict:
    """One image through Triton against the FP32 trace on the CPU + tracker_service/nms.py:
    the served model (its device and precision, torchvision's NMS) must find what the reference
    finds. The raw head outputs are compared too. A seeded model's scores are all far below the
    usual 0.25, so the threshold is set just under the reference's `candidates`-th best anchor
    score: there are always detections to compare."""
    import torch
    import tritonclient.grpc as grpcclient

    from tracker_service.nms import postprocess

    with torch.inference_mode():
        ref_model = torch.jit.load(str(torchscript), map_location="cpu").eval().float()
        x = torch.from_numpy(image[None]).permute(0, 3, 1, 2).float() / 255
        raw = ref_model(x)[0].numpy()
    best = np.sort(raw[4:].max(0))[::-1]
    conf = float(best[min(candidates, best.size) - 1]) * 0.999
    reference = postprocess(raw, conf, 0.7, 300)
    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = [grpcclient.InferInput("images", [1, *image.shape], "UINT8"),
              grpcclient.InferInput("conf_threshold", [1, 1], "FP32"),
              grpcclient.InferInput("return_raw", [1, 1], "BOOL")]
    inputs[0].set_data_from_numpy(image[None])
    inputs[1].set_data_from_numpy(np.array([[conf]], np.float32))
    inputs[2].set_data_from_numpy(np.array([[True]]))
    result = client.infer(MODEL_NAME, inputs)
    n = int(result.as_numpy("num_detections")[0, 0])
    served = result.as_numpy("detections")[0, :n]
    served_raw = result.as_numpy("raw")[0]
    k = min(n, reference.shape[0])
    box_diff = float(np.abs(served[:k, :4] - reference[:k, :4]).max()) if k else 0.0
    score_diff = float(np.abs(served[:k, 4] - reference[:k, 4]).max()) if k else 0.0
    return {"conf_threshold": conf, "served_detections": n,
            "reference_detections": int(reference.shape[0]), "compared": k,
            "max_box_diff_px": box_diff, "max_score_diff": score_diff,
            "classes_equal": bool(np.array_equal(served[:k, 5], reference[:k, 5])),
            "raw_shape": list(served_raw.shape),
            "raw_max_abs_diff": float(np.abs(served_raw - raw).max()),
            "raw_max_abs": float(np.abs(raw).max())}


def write_perf_data(folder: Path, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").write_bytes(image.tobytes())
    (folder / "conf_threshold").write_bytes(np.float32(0.25).tobytes())
    (folder / "iou_threshold").write_bytes(np.float32(0.7).tobytes())
    (folder / "max_det").write_bytes(np.int32(300).tobytes())
    (folder / "return_raw").write_bytes(np.bool_(False).tobytes())


def perf_level(runtime: Runtime, grpc_url: str, http_url: str, plan: Plan, batch: int,
               concurrency: int, data: Path, shape: tuple[int, ...], work: Path,
               timeout_s: float) -> dict:
    """perf_analyzer at one batch size and concurrency: tensors through system shared memory
    where /dev/shm holds every request in flight (a VM's /dev/shm can be small), else in the
    gRPC messages; the row says which."""
    csv_path = work / f"perf_b{batch}_c{concurrency}.csv"
    in_flight = batch * concurrency * int(np.prod(shape)) * 2  # inputs, and room to spare
    shm = "system" if in_flight < shutil.disk_usage("/dev/shm").free / 2 else "none"
    cmd = [runtime.perf_analyzer(), "-m", MODEL_NAME, "-i", "grpc", "-u", grpc_url,
           "-b", str(batch), "--concurrency-range", str(concurrency),
           "--measurement-interval", str(plan.measurement_ms),
           "--stability-percentage", f"{plan.stability_percentage:g}",
           "--max-trials", str(plan.max_trials), "--input-data", str(data),
           "--shape", f"images:{shape[0]},{shape[1]},3", "--shape", "conf_threshold:1",
           "--shape", "iou_threshold:1", "--shape", "max_det:1", "--shape", "return_raw:1",
           "--shared-memory", shm,
           "--output-shared-memory-size", str(batch * 300 * 6 * 4 + (64 << 10)),
           "-f", str(csv_path), "--verbose-csv"]
    before = triton_counts(http_url)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=runtime.perf_env(), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"batch": batch, "concurrency": concurrency,
                "error": f"perf_analyzer ran past its {timeout_s:.0f} s share of the deadline"}
    wall = time.monotonic() - t0
    after = triton_counts(http_url)
    if not csv_path.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        return {"batch": batch, "concurrency": concurrency,
                "error": f"perf_analyzer exited {proc.returncode}: " + " | ".join(tail)}
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    ms = lambda key: float(row.get(key, 0) or 0) / 1000  # noqa: E731 (perf_analyzer writes us)
    inferences = after["inferences"] - before["inferences"]
    executions = after["executions"] - before["executions"]
    infer_per_s = float(row["Inferences/Second"])
    return {
        "batch": batch, "concurrency": concurrency, "shared_memory": shm,
        "images_per_s": infer_per_s, "requests_per_s": infer_per_s / batch,
        "p50_ms": ms("p50 latency"), "p95_ms": ms("p95 latency"), "p99_ms": ms("p99 latency"),
        "avg_ms": ms("Avg latency"),
        "server_queue_ms": ms("Server Queue"),
        "server_compute_input_ms": ms("Server Compute Input"),
        "server_compute_infer_ms": ms("Server Compute Infer"),
        "server_compute_output_ms": ms("Server Compute Output"),
        "client_send_ms": ms("Client Send"), "client_recv_ms": ms("Client Recv"),
        # Little's law in a closed loop: requests/s ~ concurrency / latency.
        "littles_law_ratio": (infer_per_s / batch) / (concurrency / (ms("Avg latency") / 1000))
        if ms("Avg latency") else None,
        "triton_images": inferences, "triton_executions": executions,
        "triton_batch_formed": inferences / executions if executions else None,
        "wall_s": wall, "stable": proc.returncode == 0,
    }


async def _post_loop(url: str, body: bytes, concurrency: int, duration: float,
                     warmup: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(stop_at: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                r = await client.post("/v1/detect", content=body,
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
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def _client_process(args: tuple) -> dict:
    return asyncio.run(_post_loop(*args))


def gateway_level(url: str, body: bytes, concurrency: int, plan: Plan) -> dict:
    """`concurrency` clients posting bus.jpg for a window, split over client processes where the
    plan has several (one Python process cannot make an H200's load)."""
    procs = max(1, min(plan.client_processes, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    args = [(url, body, n, plan.gateway_window_s, plan.gateway_warmup_s) for n in shares]
    if procs == 1:
        parts = [_client_process(args[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            parts = pool.map(_client_process, args)
    latencies = np.array([x for p in parts for x in p["latencies"]]) * 1000
    elapsed = max(p["elapsed"] for p in parts)
    out = {"concurrency": concurrency, "client_processes": procs,
           "requests": int(latencies.size), "errors": sum(p["errors"] for p in parts),
           "window_s": elapsed, "images_per_s": latencies.size / elapsed}
    if latencies.size:
        out.update({f"p{q}_ms": float(np.percentile(latencies, q)) for q in (50, 95, 99)})
    return out


# --- the run -----------------------------------------------------------------------------------

def run(plan: Plan, deadline: Deadline, runtime: Runtime, out_dir: Path) -> dict:
    import torch

    from control_plane.settings import Settings
    from control_plane.stack import triton_server
    from control_plane.stack.supervisor import Supervisor, tail, wait_http_ok

    result: dict = {"script": "bench/gpu_path.py", "complete": False, "errors": [],
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "device": device_info(plan), "plan": asdict(plan), "anchors": ANCHORS,
                    "runtime": {"python": sys.executable, "numpy": np.__version__,
                                "bundle": str(runtime.bundle) if runtime.bundle else None},
                    "deadline_s": deadline.end - deadline.start}
    save = lambda: write_results(result, out_dir, deadline)  # noqa: E731

    def step(name: str, seconds_needed: float) -> None:
        print(f"[{deadline.elapsed():6.1f} s] {name}", flush=True)
        if deadline.left() < seconds_needed:
            raise OutOfTime(f"{name}: {deadline.left():.0f} s left, needs about "
                            f"{seconds_needed:.0f} s")

    with tempfile.TemporaryDirectory(prefix="vg-gpu-path-") as tmp:
        work = Path(tmp)
        try:
            step("model", 30)
            image_path = bus_image(runtime.bundle)
            manifest = runtime.manifest
            if manifest and manifest["imgsz"] == plan.imgsz:
                torchscript = runtime.bundle / "model.torchscript"
                meta = {k: manifest[k] for k in ("architecture", "seed", "names", "stride",
                                                 "input_hw", "weights_dtype")}
                meta["traced"] = "in the bundle (built " + manifest["built_at"] + ")"
            else:
                torchscript = work / "model.torchscript"
                hw = letterboxed(image_path, plan.imgsz).shape[:2]
                meta = {**trace_detector(torchscript, tuple(hw)), "traced": "here"}
            image = letterboxed(image_path, plan.imgsz)
            if list(image.shape[:2]) != list(meta["input_hw"]):
                raise RuntimeError(f"bus.jpg letterboxes to {image.shape[:2]} at {plan.imgsz}, "
                                   f"the trace is for {meta['input_hw']}")
            result["model"] = {**{k: v for k, v in meta.items() if k != "names"},
                               "classes": len(meta["names"]), "dtype": plan.dtype,
                               "imgsz": plan.imgsz}
            step("in-process model timing", 20)
            result["in_process"] = time_in_process(torchscript, plan, tuple(meta["input_hw"]),
                                                   deadline)
            if plan.device == "cuda":
                torch.cuda.empty_cache()
            if any("graph_error" in r for r in result["in_process"].values()):
                plan = replace(plan, cuda_graphs=False)
                result["plan"]["cuda_graphs"] = False
                result["errors_handled"] = ["CUDA graph capture failed in-process; the served "
                                            "model runs eagerly (in_process says why)"]
            save()

            step("Triton", 60)
            http, grpc, metrics, gateway_port = free_ports(4)
            settings = replace(Settings(), model_repository=work / "repo",
                               runtime_dir=work / "runtime", triton_http_port=http,
                               triton_grpc_port=grpc, triton_metrics_port=metrics,
                               gateway_port=gateway_port, model_name=MODEL_NAME, imgsz=plan.imgsz,
                               triton_trace_rate=0)
            write_repository(settings.model_repository, torchscript, meta, plan, plan.imgsz)
            triton_env = triton_server.server_environment()
            stub = (triton_server.prepare_backends(settings.runtime_dir) / "python"
                    / "triton_python_backend_stub")
            missing = missing_libraries(stub, triton_env)
            libpython = "the stub found it"
            if any(m.startswith("libpython") for m in missing):
                folder, libpython = find_libpython(runtime)
                if folder is not None:
                    triton_env["LD_LIBRARY_PATH"] = os.pathsep.join(
                        [str(folder), triton_env.get("LD_LIBRARY_PATH", "")])
                    missing = missing_libraries(stub, triton_env)
            result["libpython"] = libpython
            print(f"libpython for the stub: {libpython}", flush=True)
            if missing:
                raise RuntimeError(f"the python backend stub cannot start: {missing} not found "
                                   f"(LD_LIBRARY_PATH={triton_env.get('LD_LIBRARY_PATH')})")
            with Supervisor(work / "logs") as supervisor:
                triton = triton_server.start(supervisor, settings, [MODEL_NAME], env=triton_env)
                gateway = start_gateway(supervisor, settings, plan, runtime)
                try:
                    triton_server.wait_ready(settings, triton.proc, max(deadline.left() - 30, 5),
                                             model=MODEL_NAME)
                except (RuntimeError, TimeoutError) as exc:
                    raise RuntimeError(f"{exc}\n{tail(triton.log_path)}") from None
                result["triton"] = {"served": served_line(triton.log_path),
                                    "instances": plan.instances,
                                    "preferred_batch_sizes": [1, 2, 4, 8, 16, 32],
                                    "max_batch_size": 32,
                                    "max_queue_delay_us": plan.max_queue_delay_us}
                result["parity"] = parity_check(settings.triton_grpc_url, torchscript, image)
                save()

                data = work / "perf-data"
                write_perf_data(data, image)
                result["perf_analyzer"] = []
                levels = [(b, c) for b in plan.batches for c in plan.concurrencies]
                gateway_share = len(plan.gateway_concurrencies) * (
                    plan.gateway_window_s + plan.gateway_warmup_s + 5) + 20
                for i, (batch, concurrency) in enumerate(levels):
                    budget = (deadline.left() - gateway_share) / (len(levels) - i)
                    if budget < plan.measurement_ms / 1000 * 3:
                        result["perf_analyzer"].append({"batch": batch,
                                                        "concurrency": concurrency,
                                                        "skipped": "deadline"})
                        continue
                    print(f"[{deadline.elapsed():6.1f} s] perf_analyzer batch {batch} "
                          f"concurrency {concurrency}", flush=True)
                    result["perf_analyzer"].append(perf_level(
                        runtime, settings.triton_grpc_url, settings.triton_http_url, plan, batch,
                        concurrency, data, image.shape, work, min(budget * 2, deadline.left())))
                    save()
                result["dynamic_batching"] = batching_gain(result["perf_analyzer"])

                step("gateway", plan.gateway_window_s + plan.gateway_warmup_s + 15)
                url = f"http://{settings.host}:{settings.gateway_port}"
                try:
                    # Triton is ready by now: a gateway takes seconds, not minutes (a failed
                    # import would otherwise eat the rest of the call's deadline).
                    wait_http_ok(f"{url}/readyz", gateway.proc,
                                 max(min(deadline.left() - 20, 90), 5), "gateway")
                except (RuntimeError, TimeoutError) as exc:
                    raise RuntimeError(f"{exc}\n{tail(gateway.log_path)}") from None
                body = image_path.read_bytes()
                result["gateway"] = {"workers": plan.gateway_workers, "image": "bus.jpg",
                                     "shared_memory": True, "levels": []}
                verbose_on = triton_log_verbose(settings.triton_http_url, 1)
                probe = gateway_probe(url, body)
                triton_log_verbose(settings.triton_http_url, 0)
                result["gateway"]["probe"] = {**probe, "triton_verbose_log": verbose_on}
                print(f"gateway probe: {probe}", flush=True)
                save()
                if not probe["ok"]:
                    # Every request of the GPU machine's first gateway run timed out at the
                    # gateway's Triton deadline with images through shared memory: the same
                    # request through a second gateway that puts the image in the gRPC message
                    # says whether the shared-memory path is what fails there.
                    step("gateway without shared memory", 60)
                    port = free_ports(1)[0]
                    start_gateway(supervisor, settings, plan, runtime, shared_memory=False,
                                  port=port, name="gateway-noshm")
                    url = f"http://{settings.host}:{port}"
                    wait_http_ok(f"{url}/readyz", None, max(min(deadline.left() - 20, 90), 5),
                                 "gateway without shared memory")
                    probe = gateway_probe(url, body)
                    result["gateway"]["probe_without_shared_memory"] = probe
                    print(f"gateway probe without shared memory: {probe}", flush=True)
                    if not probe["ok"]:
                        raise RuntimeError("the gateway's probe request failed with and without "
                                           "shared memory (see gateway.probe and the logs)")
                    result["gateway"]["shared_memory"] = False
                for concurrency in plan.gateway_concurrencies:
                    step(f"gateway concurrency {concurrency}",
                         plan.gateway_window_s + plan.gateway_warmup_s + 5)
                    before = triton_counts(settings.triton_http_url)
                    level = gateway_level(url, body, concurrency, plan)
                    after = triton_counts(settings.triton_http_url)
                    executions = after["executions"] - before["executions"]
                    level["triton_batch_formed"] = (
                        (after["inferences"] - before["inferences"]) / executions
                        if executions else None)
                    result["gateway"]["levels"].append(level)
                    save()
                result["triton"]["served"] = served_line(triton.log_path)
            result["complete"] = True
        except Exception as exc:  # any failure: keep what was measured, say what stopped it
            result["errors"].append(f"{type(exc).__name__}: {exc}")
            print(f"stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        keep_logs(work / "logs", out_dir)
    save()
    return result


def keep_logs(log_dir: Path, out_dir: Path, max_bytes: int = 1 << 20) -> None:
    """Triton's and the gateway's logs (their last MiB) beside the JSON: a GPU run is one shot,
    and its scratch folder goes with it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for log in sorted(log_dir.glob("*.log")):
        with open(log, "rb") as f:
            f.seek(max(log.stat().st_size - max_bytes, 0))
            (out_dir / f"gpu_path_{log.name}").write_bytes(f.read())


def start_gateway(supervisor, settings, plan: Plan, runtime: Runtime, *,
                  shared_memory: bool = True, port: int | None = None, name: str = "gateway"):
    """The gateway (uvicorn, `gateway_workers` processes) in front of Triton, started beside it:
    its imports overlap Triton's start; /readyz waits for the detector."""
    env = runtime.child_env({
        **os.environ, "VG_GATEWAY_TRITON_URL": settings.triton_grpc_url,
        "VG_GATEWAY_MODEL_NAME": MODEL_NAME,
        "VG_GATEWAY_SHARED_MEMORY": "1" if shared_memory else "0",
        "VG_GATEWAY_IMGSZ": str(plan.imgsz), "VG_GATEWAY_LOG_LEVEL": "WARNING",
        "VG_GATEWAY_MAX_PENDING": str(max(64, 2 * max(plan.gateway_concurrencies))),
        "VG_GATEWAY_MAX_TRITON_IN_FLIGHT": "16"})
    cmd = [sys.executable, "-m", "uvicorn", "tracker_service.app:create_app", "--factory",
           "--host", settings.host, "--port", str(port or settings.gateway_port),
           "--workers", str(plan.gateway_workers), "--no-access-log", "--log-level", "warning"]
    return supervisor.start(name, cmd, env)


def triton_log_verbose(http_url: str, level: int) -> str:
    """Triton's verbose log on or off at run time (its logging extension): on for the
    gateway's probe request only, so the log shows that request's path and nothing else."""
    import httpx

    try:
        r = httpx.post(f"{http_url}/v2/logging", json={"log_verbose_level": level}, timeout=10)
        return f"{r.status_code}"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def gateway_probe(url: str, body: bytes, timeout_s: float = 30) -> dict:
    """One request through the gateway before the load: its status, time and body's error."""
    import httpx

    t = time.perf_counter()
    try:
        r = httpx.post(f"{url}/v1/detect", content=body, headers={"content-type": "image/jpeg"},
                       timeout=timeout_s)
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t}
    out = {"ok": r.status_code == 200, "status": r.status_code,
           "seconds": time.perf_counter() - t}
    if r.status_code != 200:
        out["body"] = r.text[:500]
    return out


def served_line(log_path: Path) -> str:
    """model.py's line in Triton's log: device, precision, eager or CUDA graphs."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines()
             if "TorchScript on" in line or "CUDA graph capture failed" in line]
    return " / ".join(lines[-2:]) if lines else "not reported"


def batching_gain(rows: list[dict]) -> dict | None:
    """Images/s at batch 1 and the highest concurrency (Triton forms the batches) over batch 1
    at concurrency 1 (it cannot): what dynamic batching buys, to set beside the 1.76x anchor."""
    ones = {r["concurrency"]: r for r in rows if r.get("batch") == 1 and "images_per_s" in r}
    if 1 not in ones or len(ones) < 2:
        return None
    top = max(ones)
    return {"concurrency": top, "gain": ones[top]["images_per_s"] / ones[1]["images_per_s"],
            "batch_formed": ones[top]["triton_batch_formed"]}


# --- output ------------------------------------------------------------------------------------

def table(result: dict) -> str:
    dev = result["device"]
    lines = [f"# GPU path ({dev['kind']}): {dev.get('name', '')}", ""]
    if dev["kind"] == "cpu":
        lines += ["**Ran on the CPU** (no CUDA device): these figures test the script, they are "
                  "not GPU figures.", ""]
    else:
        lines += [f"driver {dev.get('driver')}, CUDA {dev.get('cuda')}, torch {dev['torch']}, "
                  f"Python {dev['python']}, CPU {dev['cpu']} ({dev['cpu_cores']} cores)", ""]
    model = result.get("model", {})
    if model:
        lines += [f"yolov8n ({model.get('architecture')}, seed {model.get('seed')}) traced at "
                  f"{model.get('input_hw')}, {model.get('dtype')}; Triton: "
                  f"{result.get('triton', {}).get('served', 'not started')}", ""]
    if result.get("in_process"):
        lines += ["| model alone, batch | ms/batch | ms/image | images/s | CUDA graph ms/image |",
                  "|---|---|---|---|---|"]
        for b, r in result["in_process"].items():
            if "ms_per_batch_p50" in r:
                graph = (f"{r['graph_ms_per_image']:.3f}" if "graph_ms_per_image" in r
                         else r.get("graph_error", "-"))
                lines.append(f"| {b} | {r['ms_per_batch_p50']:.2f} | {r['ms_per_image']:.3f} | "
                             f"{r['images_per_s']:.0f} | {graph} |")
        anchor = ANCHORS["tensorrt_fp16_a100_ms_per_image_batch8"]
        lines += ["", f"Anchor: {anchor['value']} ms/image at batch 8 ({anchor['source']}).", ""]
    if result.get("parity"):
        p = result["parity"]
        lines += [f"Parity (one image, served vs FP32 reference + tracker_service/nms.py): "
                  f"{p['served_detections']} vs {p['reference_detections']} detections, max box "
                  f"diff {p['max_box_diff_px']:.3g} px, max score diff {p['max_score_diff']:.3g} "
                  f"(conf {p['conf_threshold']:.3g}); raw output max diff "
                  f"{p['raw_max_abs_diff']:.3g} "
                  f"of {p['raw_max_abs']:.3g}", ""]
    if result.get("perf_analyzer"):
        lines += ["| batch | concurrency | images/s | p50 ms | p95 ms | p99 ms | queue ms | "
                  "input ms | infer ms | output ms | batch formed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["perf_analyzer"]:
            if "images_per_s" not in r:
                lines.append(f"| {r['batch']} | {r['concurrency']} | "
                             f"{r.get('skipped') or r.get('error')} |")
                continue
            formed = r["triton_batch_formed"]
            lines.append(
                f"| {r['batch']} | {r['concurrency']} | {r['images_per_s']:.1f} | "
                f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['server_queue_ms']:.2f} | {r['server_compute_input_ms']:.2f} | "
                f"{r['server_compute_infer_ms']:.2f} | {r['server_compute_output_ms']:.2f} | "
                f"{f'{formed:.1f}' if formed else '-'} |")
        gain = result.get("dynamic_batching")
        if gain:
            lines += ["", f"Dynamic batching (batch 1, concurrency {gain['concurrency']} over "
                          f"concurrency 1): {gain['gain']:.2f}x, batches of "
                          f"{gain['batch_formed'] or 0:.1f} formed; anchor "
                          f"{ANCHORS['dynamic_batching_gain']['value']}x.", ""]
    if result.get("gateway"):
        g = result["gateway"]
        for key, label in (("probe", "probe request"),
                           ("probe_without_shared_memory", "probe without shared memory")):
            if key in g:
                pr = g[key]
                lines += [f"Gateway {label}: {'200' if pr['ok'] else 'FAILED'} in "
                          f"{pr['seconds']:.2f} s"
                          + ("" if pr["ok"] else f" ({pr.get('status', '')} "
                             f"{pr.get('body') or pr.get('error', '')})"), ""]
        lines += [f"Gateway, {g['workers']} worker processes, posting bus.jpg, images "
                  f"{'through shared memory' if g['shared_memory'] else 'in the gRPC message'}:",
                  "",
                  "| concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |",
                  "|---|---|---|---|---|---|"]
        for r in g["levels"]:
            lines.append(f"| {r['concurrency']} | {r['images_per_s']:.1f} | "
                         f"{r.get('p50_ms', float('nan')):.2f} | "
                         f"{r.get('p95_ms', float('nan')):.2f} | "
                         f"{r.get('p99_ms', float('nan')):.2f} | {r['errors']} |")
    if result["errors"]:
        lines += ["", "Stopped early: " + "; ".join(result["errors"])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """perf_analyzer's grid as a picture: images/s and p50 latency against concurrency, a line
    per batch size, with the model alone in-process (CUDA graphs where captured) as dashed
    ceilings. Returns False when there is nothing to draw."""
    rows = [r for r in result.get("perf_analyzer") or [] if "images_per_s" in r]
    if not rows:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax_tp, ax_lat = fig.subplots(1, 2)
    batches = sorted({r["batch"] for r in rows})
    colours = dict(zip(batches, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for b in batches:
        mine = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["concurrency"])
        conc = [r["concurrency"] for r in mine]
        ax_tp.plot(conc, [r["images_per_s"] for r in mine], "o-", color=colours[b],
                   label=f"Triton, batch {b}")
        ax_lat.plot(conc, [r["p50_ms"] for r in mine], "o-", color=colours[b],
                    label=f"batch {b}")
        alone = (result.get("in_process") or {}).get(str(b)) or {}
        ms = alone.get("graph_ms_per_image") or alone.get("ms_per_image")
        if ms:
            ax_tp.axhline(1000 / ms, color=colours[b], ls="--", lw=1,
                          label=f"model alone, batch {b}")
    gateway = [lv for lv in (result.get("gateway") or {}).get("levels", []) if lv["requests"]]
    if gateway:
        ax_tp.plot([lv["concurrency"] for lv in gateway],
                   [lv["images_per_s"] for lv in gateway], "s-", color="black",
                   label="gateway (HTTP JPEG), batch 1")
    ticks = sorted({r["concurrency"] for r in rows} | {lv["concurrency"] for lv in gateway})
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.grid(alpha=0.3)
    ax_tp.set_yscale("log")
    ax_tp.set_ylabel("images/s")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p50 latency per request, ms")
    ax_tp.legend(fontsize=7, loc="lower right")
    ax_lat.legend(fontsize=7)
    dev = result["device"]
    fig.suptitle(f"GPU path on {dev.get('name', dev['kind'])}: yolov8n "
                 f"{result.get('model', {}).get('dtype', '')} "
                 f"{result.get('model', {}).get('input_hw', '')}, Triton python backend, "
                 "perf_analyzer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_results(result: dict, out_dir: Path, deadline: Deadline) -> None:
    """JSON and the table, each through a temporary file and a rename (never half-written)."""
    result["elapsed_s"] = deadline.elapsed()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_path.json", json.dumps(result, indent=2, default=str)),
                       ("gpu_path.md", table(result))):
        tmp = out_dir / f".{name}.partial"
        tmp.write_text(text)
        tmp.replace(out_dir / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA when torch sees a GPU, else the CPU fallback")
    parser.add_argument("--deadline-s", type=float, default=480.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $OUT, else bench/results)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the bundle built by --bundle-build (on the GPU machine)")
    parser.add_argument("--bundle-build", type=Path, nargs="?", const=BUNDLE_DIR,
                        help=f"build the bundle (into {BUNDLE_DIR.relative_to(ROOT)} unless a "
                             "folder is given) and exit")
    parser.add_argument("--bundle-python", default=BUNDLE_PYTHON,
                        help="the Python version the bundle is for (the GPU machine's)")
    parser.add_argument("--replot", type=Path, default=None,
                        help="draw the picture of a gpu_path.json (e.g. one fetched from the "
                             "GPU machine) beside it, and exit")
    parser.add_argument("--skip-perf", action="store_true",
                        help="leave out the in-process timing and perf_analyzer (Triton, the "
                             "parity check and the gateway only: a rerun of the last step)")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.replot.read_text())
        target = args.replot.with_suffix(".png")
        print(f"wrote {target}" if plot(result, target) else "no perf_analyzer rows to plot")
        return
    if args.bundle_build:
        manifest = build_bundle(args.bundle_build, python=args.bundle_python)
        total = sum(manifest["files"].values())
        print(json.dumps(manifest["files"], indent=2))
        print(f"bundle: {total / 2**20:.1f} MiB in {args.bundle_build}")
        return
    deadline = Deadline(args.deadline_s)
    runtime = use_bundle(args.bundle) if args.bundle else Runtime()
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = GPU_PLAN if device == "cuda" else CPU_PLAN
    if args.skip_perf:
        plan = replace(plan, batches=(), concurrencies=())
    out_dir = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT")
                           else ROOT / "bench" / "results")
    result = run(plan, deadline, runtime, out_dir)
    try:
        plot(result, out_dir / "gpu_path.png")
    except Exception as exc:  # noqa: BLE001 (the figures matter more than their picture)
        print(f"no picture: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(table(result))
    print(f"wrote {out_dir / 'gpu_path.json'} in {result['elapsed_s']:.0f} s")
    sys.exit(0 if result["complete"] else 1)


if __name__ == "__main__":
    main()
