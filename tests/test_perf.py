"""`visionguard perf triton`: the real perf_analyzer against the real Triton."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from control_plane.errors import ControlPlaneError
from control_plane.perf.analyzer import concurrency_levels
from tests.conftest import ROOT, settings_from

pytestmark = pytest.mark.integration


def test_concurrency_levels_reads_perf_analyzers_range():
    assert concurrency_levels("1:4:1") == [1, 2, 3, 4]
    assert concurrency_levels("2:8:3") == [2, 5, 8]
    assert concurrency_levels("3") == [3]
    assert concurrency_levels("1:3") == [1, 2, 3]
    for bad in ("0:2:1", "4:2:1", "1:2:0", "a:b", "1:2:3:4", ""):
        with pytest.raises(ControlPlaneError, match="--concurrency"):
            concurrency_levels(bad)


def test_perf_triton_runs_perf_analyzer_and_keeps_its_csv(stack, tmp_path):
    out = tmp_path / "perf.csv"
    # CI shares two cores with the stack under test: a 10% spread (perf_analyzer's default)
    # does not always settle there, so this run allows 50%. What is asserted is unchanged: a
    # row per requested level.
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane", "perf", "triton", "--concurrency", "1:2:1",
         "--measurement-ms", "1500", "--stability-percentage", "50", "--out", str(out)],
        env={**stack.env, "COLUMNS": "200"}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["Concurrency"] for r in rows) == ["1", "2"]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert "perf_analyzer (gRPC)" in proc.stdout and "Inferences/Second" in proc.stdout


def test_perf_triton_names_the_levels_that_did_not_settle(stack, tmp_path):
    """One window per level can never show three stable windows: perf_analyzer drops the
    level and exits 0; the command must say so and fail, not print a short table."""
    out = tmp_path / "perf.csv"
    # A CSV left by an earlier run (perf tune reuses one path per point) must not pass for
    # this run's: perf_analyzer writes none when no level settles.
    out.write_text("Concurrency,Inferences/Second,p50 latency\n1,10,1000\n2,12,1500\n")
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane", "perf", "triton", "--concurrency", "1:2:1",
         "--measurement-ms", "500", "--max-trials", "1", "--out", str(out)],
        env={**stack.env, "COLUMNS": "200"}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no stable measurement for concurrency [1, 2]" in proc.stderr, proc.stderr


# -- `visionguard perf tune` ------------------------------------------------------------------


def test_tune_grid_and_config_rewrite_refuse_what_they_cannot_do():
    from control_plane.perf import tune

    points = tune.grid([1, 2], [0, 500], [(2, 4), ()], [1], max_batch_size=8)
    assert len(points) == 8 and tune.Point(2, 500, (), 1) in points
    for bad in (([0], [0], [()], [1]), ([1], [-1], [()], [1]), ([1], [0], [(16,)], [1]),
                ([], [0], [()], [1])):
        with pytest.raises(tune.TuneError):
            tune.grid(*bad, max_batch_size=8)
    assert tune.parse_sizes("2,4,8;none") == [(2, 4, 8), ()]
    with pytest.raises(tune.TuneError, match="--preferred"):
        tune.parse_sizes("2,x")
    template = (ROOT / "model_repository" / "detector" / "config.pbtxt").read_text()
    point = tune.Point(2, 1500, (2,), 1)
    rewritten = tune.config_text(template, point)
    assert tune.current_point(tune._parse(rewritten)) == point
    # Only the tuned blocks change: inputs, outputs, version policy and class names stay.
    unchanged = [line for line in template.splitlines() if "batch_size:" not in line
                 and "delay" not in line and "instance_group" not in line
                 and "intra_op_threads" not in line]
    assert all(line in rewritten.splitlines() for line in unchanged)
    with pytest.raises(tune.TuneError, match="layout"):
        tune.config_text(template.replace("dynamic_batching", "sequence_batching"), point)


def test_perf_tune_sweeps_triton_applies_the_best_and_keeps_serving(stack, bus_jpg, tmp_path):
    """Two points (the served config, and two instances) measured by the real perf_analyzer
    against the real Triton. An impossible budget changes nothing; --apply writes the best
    point into the live config.pbtxt, which Triton then serves with the same versions."""
    import json

    import httpx

    from control_plane.perf import tune
    from export import triton_repo

    settings = settings_from(stack.env)
    model_dir = settings.model_repository / settings.model_name
    triton = settings.triton_http_url
    before = (model_dir / "config.pbtxt").read_text()
    served = triton_repo.served_versions(model_dir)
    base = tune.current_point(tune._parse(before))
    assert base.max_queue_delay_us == 0 and base.instances == 1, base
    other = tune.Point(2, 0, base.preferred_batch_sizes, base.threads)
    args = [sys.executable, "-m", "control_plane", "perf", "tune", "--concurrency", "2",
            "--instances", "1,2", "--threads", str(base.threads), "--queue-delay-us", "0",
            "--preferred", ",".join(map(str, base.preferred_batch_sizes)) or "none",
            "--measurement-ms", "1500", "--stability-percentage", "50"]
    env = {**stack.env, "COLUMNS": "200"}

    def point(d: dict) -> tune.Point:
        return tune.Point(**{**d, "preferred_batch_sizes": tuple(d["preferred_batch_sizes"])})

    try:
        one = [a if a != "1,2" else "1" for a in args]  # the served point alone
        proc = subprocess.run([*one, "--budget-ms", "0.001", "--out", str(tmp_path / "a")],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "no point within the p95 budget" in proc.stdout
        assert (model_dir / "config.pbtxt").read_text() == before

        proc = subprocess.run([*args, "--budget-ms", "60000", "--apply",
                               "--out", str(tmp_path / "b")],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Triton config sweep at concurrency 2" in proc.stdout
        result = json.loads((tmp_path / "b" / "perf_tune.json").read_text())
        measured = {point(r["point"]): r for r in result["results"]}
        assert set(measured) == {base, other}, measured
        assert all(r["throughput"] > 0 and r["p95_ms"] > 0 and not r["error"]
                   for r in measured.values()), measured
        best = max(measured.values(), key=lambda r: r["throughput"])
        assert result["best"] == best and result["applied"]
        png = (tmp_path / "b" / "perf_tune.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        # The file and the served config agree with the best point; versions are unchanged.
        now = tune.current_point(tune._parse((model_dir / "config.pbtxt").read_text()))
        assert now == point(best["point"])
        assert triton_repo.served_versions(model_dir) == served
        live = httpx.get(f"{triton}/v2/models/{settings.model_name}/config", timeout=30).json()
        assert live["instance_group"][0]["count"] == now.instances
        assert live["parameters"]["intra_op_threads"]["string_value"] == str(now.threads)
        r = httpx.post(f"{stack.gateway_url}/v1/detect", content=bus_jpg,
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
    finally:  # the shared stack goes back to the config it had
        triton_repo.write_config(model_dir, before)
        httpx.post(f"{triton}/v2/repository/models/{settings.model_name}/load", timeout=300)
