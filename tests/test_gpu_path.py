"""bench/gpu_path.py: the GPU serving path's benchmark, run here as its CPU fallback.

The fallback is the whole script on the CPU: a real Triton (pytriton's tritonserver, the python
backend running bench/gpu_model/model.py with torch), real perf_analyzer, a real gateway with two
worker processes. The figures are not asserted against targets (the machine is shared); what is
checked is that they are there, positive, and agree with each other: Little's law in
perf_analyzer's closed loop, the batch sizes Triton reports against the requests sent, the
gateway's count over its window, and the served detections against the FP32 reference with the
project's NMS. The CUDA run itself happens on a GPU machine (see the script's docstring); its
test here is skipped where torch sees no GPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_path.py"


def run_script(out: Path, *args: str,
               timeout: float) -> tuple[dict, str, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    path = out / "gpu_path.json"
    assert path.exists(), f"no JSON written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(path.read_text()), (out / "gpu_path.md").read_text(), proc


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[dict, str]:
    result, table, proc = run_script(tmp_path_factory.mktemp("gpu-path"), "--device", "cpu",
                                     "--deadline-s", "200", timeout=260)
    assert proc.returncode == 0 and result["complete"], (
        f"{result['errors']}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return result, table


def test_cpu_fallback_says_it_ran_on_the_cpu(cpu_run):
    result, table = cpu_run
    assert result["errors"] == []
    assert result["device"]["kind"] == "cpu"
    assert "CPU fallback" in result["device"]["name"]
    assert "Ran on the CPU" in table and "not GPU figures" in table
    assert result["plan"]["device"] == "cpu" and result["plan"]["dtype"] == "fp32"
    assert result["anchors"]["tensorrt_fp16_a100_ms_per_image_batch8"]["value"] == 0.34
    assert result["anchors"]["dynamic_batching_gain"]["value"] == 1.76
    assert "TorchScript on cpu torch.float32" in result["triton"]["served"]


def test_served_detections_match_the_reference(cpu_run):
    parity = cpu_run[0]["parity"]
    assert parity["compared"] > 0, "the parity image gave no detections to compare"
    assert parity["served_detections"] == parity["reference_detections"]
    assert parity["classes_equal"]
    assert parity["max_box_diff_px"] < 1e-2 and parity["max_score_diff"] < 1e-4
    assert parity["raw_max_abs_diff"] <= 1e-4 * parity["raw_max_abs"]


def test_perf_analyzer_figures_are_consistent(cpu_run):
    result = cpu_run[0]
    plan = result["plan"]
    rows = result["perf_analyzer"]
    assert {(r["batch"], r["concurrency"]) for r in rows} == {
        (b, c) for b in plan["batches"] for c in plan["concurrencies"]}
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert r["images_per_s"] > 0 and r["requests_per_s"] == pytest.approx(
            r["images_per_s"] / r["batch"])
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["server_compute_infer_ms"] > 0 and r["server_queue_ms"] >= 0
        # Closed loop: requests/s = concurrency / latency, less the client's own time.
        assert 0.5 <= r["littles_law_ratio"] <= 1.1, r
        # Triton counted at least the measured window's images (plus warm-up and trials).
        assert r["triton_images"] >= 0.8 * r["images_per_s"] * plan["measurement_ms"] / 1000
        assert r["triton_images"] % r["batch"] == 0
        # Each request carries `batch` images; alone in flight, Triton runs it as it came.
        assert r["triton_batch_formed"] >= r["batch"]
        if r["concurrency"] == 1:
            assert r["triton_batch_formed"] == pytest.approx(r["batch"])
    gain = result["dynamic_batching"]
    assert gain["concurrency"] == max(plan["concurrencies"]) and gain["gain"] > 0


def test_gateway_and_in_process_figures(cpu_run):
    result = cpu_run[0]
    gateway = result["gateway"]
    assert gateway["workers"] == result["plan"]["gateway_workers"] >= 2
    # The probe request went through the shared-memory gateway: no fallback was needed here.
    assert gateway["probe"]["ok"] and gateway["probe"]["status"] == 200
    assert gateway["shared_memory"] and "probe_without_shared_memory" not in gateway
    assert [lv["concurrency"] for lv in gateway["levels"]] == list(
        result["plan"]["gateway_concurrencies"])
    for level in gateway["levels"]:
        assert level["errors"] == 0 and level["requests"] > 0
        assert level["images_per_s"] == pytest.approx(level["requests"] / level["window_s"])
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["triton_batch_formed"] >= 1
    for batch, r in result["in_process"].items():
        assert r["ms_per_batch_p50"] > 0
        assert r["images_per_s"] == pytest.approx(1000 * int(batch) / r["ms_per_batch_p50"])


def _served_model_module():
    """bench/gpu_model/model.py as Triton's stub imports it (its utils module on the path)."""
    from control_plane.stack.triton_server import pytriton_dir

    sys.path.insert(0, str(pytriton_dir() / "tritonserver" / "backends" / "python"))
    try:
        spec = importlib.util.spec_from_file_location(
            "gpu_model", ROOT / "bench" / "gpu_model" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def test_batched_torch_nms_equals_the_project_nms():
    """The served model's one-call NMS over a batch (per-image thresholds and max_det) gives
    tracker_service/nms.py's answer for every image."""
    import torch

    from tracker_service.nms import postprocess

    model = _served_model_module()
    rng = np.random.default_rng(0)
    b, nc, n = 3, 5, 400
    raw = np.zeros((b, 4 + nc, n), np.float32)
    raw[:, 0:2] = rng.uniform(0, 600, (b, 2, n))
    raw[:, 2:4] = rng.uniform(5, 120, (b, 2, n))
    raw[:, 4:] = rng.uniform(0, 1, (b, nc, n))
    conf = np.array([0.3, 0.5, 0.9], np.float32)
    iou = np.array([0.7, 0.7, 0.45], np.float32)
    max_det = np.array([300, 20, 300])
    served = model.postprocess(torch.from_numpy(raw), torch.from_numpy(conf), iou, max_det,
                               max_nms=30000)
    for i in range(b):
        expected = postprocess(raw[i], float(conf[i]), float(iou[i]), int(max_det[i]))
        assert served[i].shape == expected.shape and expected.shape[0] > 0
        np.testing.assert_allclose(served[i], expected, atol=1e-4)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA device here: the GPU path runs on a GPU machine (one "
                           "`run` call, see bench/gpu_path.py's docstring)")
def test_gpu_path_on_cuda(tmp_path):
    result, table, proc = run_script(tmp_path, "--device", "cuda", timeout=560)
    assert result["complete"], result["errors"]
    assert result["device"]["kind"] == "cuda" and result["device"]["name"]
    assert "float16" in result["triton"]["served"]
    assert result["parity"]["served_detections"] > 0
    assert all(r["images_per_s"] > 0 for r in result["perf_analyzer"])
    assert "Ran on the CPU" not in table
