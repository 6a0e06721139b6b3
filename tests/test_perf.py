"""`visionguard perf triton`: the real perf_analyzer against the real Triton."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_perf_triton_runs_perf_analyzer_and_keeps_its_csv(stack, tmp_path):
    out = tmp_path / "perf.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane", "perf", "triton", "--concurrency", "1:2:1",
         "--measurement-ms", "1500", "--out", str(out)],
        env={**stack.env, "COLUMNS": "200"}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["Concurrency"] for r in rows) == ["1", "2"]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert "perf_analyzer (gRPC)" in proc.stdout and "Inferences/Second" in proc.stdout
