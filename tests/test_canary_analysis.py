"""Automated canary analysis (issue 15, item 1): the gateway's per-version samples, the decision
on recorded windows, the analysis' state and refusals on a real MLflow store, and one canary
of an equal and one of a blind challenger decided by a real control plane on live traffic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from control_plane.releases.canary_analysis import (AnalysisRunning, CanaryAnalyst, InvalidWindow,
                                                    Thresholds, VersionWindow, decide, judge,
                                                    judge_shadow, parse_window, read_shadow_run)
from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings
from tracker_service.tracking import TrackState
from tracker_service.version_stats import VersionStats

CONFIRMED, LOST = int(TrackState.CONFIRMED), int(TrackState.LOST)


# --- the gateway's samples -------------------------------------------------------------------

def tracks(*rows: tuple[int, tuple[float, float, float, float], int]) -> np.ndarray:
    """Tracker output rows (id, box, state) in tracking.OUT_* columns."""
    out = np.zeros((len(rows), 9))
    for i, (tid, box, state) in enumerate(rows):
        out[i, :4], out[i, 4], out[i, 5], out[i, 8] = box, tid, 0.9, state
    return out.reshape(-1, 9)


A, B, FAR = (10, 10, 50, 50), (12, 11, 52, 51), (200, 200, 240, 240)


def frames_fragments(stats: VersionStats, frames: list[np.ndarray], stream: str = "s") -> int:
    for f in frames:
        stats.tracked("1", stream, f)
    return stats.snapshot()["versions"]["1"]["fragments"]


def test_a_new_id_where_a_track_just_ended_is_a_fragment():
    s = VersionStats(fragment_gap_frames=5)
    assert frames_fragments(s, [tracks((1, A, CONFIRMED)), tracks(), tracks((2, B, CONFIRMED))]) == 1


def test_a_track_back_under_its_own_id_a_far_new_id_or_a_late_one_is_no_fragment():
    back = [tracks((1, A, CONFIRMED)), tracks((1, A, LOST)), tracks((1, B, CONFIRMED))]
    assert frames_fragments(VersionStats(), back) == 0
    far = [tracks((1, A, CONFIRMED)), tracks(), tracks((2, FAR, CONFIRMED))]
    assert frames_fragments(VersionStats(), far) == 0
    late = [tracks((1, A, CONFIRMED))] + [tracks()] * 6 + [tracks((2, B, CONFIRMED))]
    assert frames_fragments(VersionStats(fragment_gap_frames=5), late) == 0
    # Streams are apart: an id new on one stream is not a fragment of another's track.
    s = VersionStats()
    s.tracked("1", "a", tracks((1, A, CONFIRMED)))
    s.tracked("1", "a", tracks())
    s.tracked("1", "b", tracks((7, B, CONFIRMED)))
    assert s.snapshot()["versions"]["1"] == {**s.snapshot()["versions"]["1"], "fragments": 0,
                                             "tracked_frames": 3}


def test_samples_are_per_version_since_a_time_and_bounded():
    now = [100.0]
    s = VersionStats(max_requests=3, max_scores=4, max_versions=2, clock=lambda: now[0])
    s.answered("1", 0.010, np.array([0.9, 0.8]))
    now[0] = 101.0
    s.answered("1", 0.020, np.array([0.7]))
    s.failed("1")
    s.answered("2", 0.030, np.array([]))
    got = s.snapshot(since=100.5)["versions"]
    assert got["1"]["requests"] == 2 and got["1"]["errors"] == 1
    assert got["1"]["latency_ms"] == [20.0] and got["1"]["scores"] == [0.7]
    assert got["2"] == {**got["2"], "requests": 1, "detections": [0], "scores": []}
    for _ in range(5):
        s.answered("1", 0.01, np.array([0.5, 0.5]))
    kept = s.snapshot()["versions"]["1"]
    assert kept["requests"] == 3 and len(kept["scores"]) == 4, "rings are bounded"
    assert kept["from_t"]["requests"] == 101.0
    s.answered("3", 0.01, np.array([0.5]))  # a third version: the least recently used goes
    assert set(s.snapshot()["versions"]) == {"1", "3"}


def test_a_failing_hook_never_fails_the_request():
    s = VersionStats()
    s.tracked("1", "s", np.zeros((2, 3)))  # not tracker output: logged and counted
    s.answered("1", 0.01, None)
    assert s.failures == 2


# --- the decision on recorded windows ----------------------------------------------------------

T = Thresholds(min_requests=100, min_scores=200, min_tracked_frames=100,
               max_error_rate_increase=0.01, max_p95_ratio=1.5, p95_slack_ms=20.0,
               max_detections_change=0.25, ks_p_value=0.01, ks_max_statistic=0.1,
               max_fragment_increase=2.0, min_shadow_agreement=0.7, min_shadow_compared=50)


def window(n: int = 400, seed: int = 0, errors: int = 0, latency: float = 30.0,
           dets: float = 4.0, score_shift: float = 0.0, frames: int = 300,
           fragments: int = 3) -> VersionWindow:
    rng = np.random.default_rng(seed)
    ok = n - errors
    return VersionWindow(
        requests=n, errors=errors,
        latency_ms=list(rng.normal(latency, 3.0, ok)),
        detections=list(rng.poisson(dets, ok)),
        scores=list(np.clip(rng.beta(5, 2, ok * 2) + score_shift, 0, 1)),
        tracked_frames=frames, fragments=fragments)


def verdicts(champion: VersionWindow, challenger: VersionWindow) -> dict[str, bool | None]:
    return {c.name: c.passed for c in judge(champion, challenger, T)}


def test_an_equal_challenger_passes_every_criterion_and_is_promoted():
    base, same = window(seed=0), window(seed=1)
    criteria = judge(base, same, T)
    assert all(c.passed for c in criteria), [c.reason for c in criteria]
    assert decide(base, same, criteria, T, extended=False) == ("promote", "every criterion passed")


@pytest.mark.parametrize("name, challenger", [
    ("error_rate", window(seed=1, errors=20)),
    ("p95_latency", window(seed=1, latency=60.0)),
    ("detections_per_image", window(seed=1, dets=2.0)),
    ("score_distribution", window(seed=1, score_shift=-0.2)),
    ("tracking_fragments", window(seed=1, fragments=30)),
])
def test_each_criterion_fails_alone(name, challenger):
    base = window(seed=0)
    got = verdicts(base, challenger)
    assert got[name] is False and all(v for k, v in got.items() if k != name), got
    decision, reason = decide(base, challenger, judge(base, challenger, T), T, extended=False)
    assert decision == "abort" and reason == next(
        c.reason for c in judge(base, challenger, T) if c.name == name)


def test_latency_within_the_slack_and_a_trivial_score_shift_pass():
    base = window(seed=0, latency=4.0)
    assert verdicts(base, window(seed=1, latency=12.0))["p95_latency"], \
        "3x of 4 ms is within the 20 ms slack"
    big = window(n=20_000, seed=0)
    shifted = window(n=20_000, seed=1, score_shift=0.02)
    ks = next(c for c in judge(big, shifted, T) if c.name == "score_distribution")
    assert ks.extra["ks_p_value"] < T.ks_p_value and ks.passed, \
        "significant but under the statistic's threshold: no abort on a trivial shift"


def test_too_few_samples_skip_a_criterion_and_too_little_traffic_extends_once():
    base, few_frames = window(seed=0), window(seed=1, frames=10)
    assert verdicts(base, few_frames)["tracking_fragments"] is None
    quiet = window(n=40, seed=1)
    got = verdicts(base, quiet)
    assert got["score_distribution"] is None, "80 scores < 200: KS skipped"
    decision, reason = decide(base, quiet, judge(base, quiet, T), T, extended=False)
    assert decision == "extend" and "40 challenger" in reason
    decision, reason = decide(base, quiet, judge(base, quiet, T), T, extended=True)
    assert decision == "abort" and reason.startswith("too little traffic after extending")


def shadow_run(compared: int = 120, matched: int = 300, boxes: int = 320,
               champion: str = "1") -> dict:
    """A shadow run's record as read_shadow_run makes it: `boxes` on each side."""
    return {"since": 900.0, "until": 950.0, "champion": champion, "compared": compared,
            "matched_fraction": round(2 * matched / (2 * boxes), 4), "class_agreement": 0.98,
            "mean_abs_score_delta": 0.012, "champion_boxes": boxes, "shadow_boxes": boxes,
            "matched": matched, "shed": 4, "shed_by_reason": {"busy": 4}, "errors": 0,
            "gateways": 1, "gateway_failures": {}}


def test_the_shadow_runs_agreement_is_a_criterion_when_enough_was_compared():
    agreed = judge_shadow(shadow_run(), "2", "1", T)
    assert agreed.passed and agreed.challenger == agreed.statistic == 0.9375
    assert "0.938 over 120 compared" in agreed.reason and "class agreement 0.980" in agreed.reason
    assert agreed.extra["compared_with_champion"] == "1" and agreed.extra["shed"] == 4
    apart = judge_shadow(shadow_run(matched=100), "2", "1", T)
    assert apart.passed is False and "limit >= 0.7" in apart.reason
    base, same = window(seed=0), window(seed=1)
    criteria = judge(base, same, T) + [apart]
    assert decide(base, same, criteria, T, extended=False) == ("abort", apart.reason), \
        "a shadow that disagreed aborts a canary whose live numbers all pass"
    # Not evaluated, and never blocking: too few compared, never shadowed, another champion.
    few = judge_shadow(shadow_run(compared=12, matched=10), "2", "1", T)
    assert few.passed is None and "12 compared < minimum 50" in few.reason
    never = judge_shadow(None, "2", "1", T)
    assert never.passed is None and "version 2 was not shadowed" in never.reason
    other = judge_shadow(shadow_run(champion="3"), "2", "1", T)
    assert other.passed is None and "compared with champion 3, the champion is now 1" in \
        other.reason
    for skipped in (few, never, other):
        assert decide(base, same, judge(base, same, T) + [skipped], T, extended=False) == (
            "promote", "every criterion passed (not evaluated: shadow_agreement)")


def test_the_shadow_run_is_the_last_one_in_the_audit_log_summed_over_gateways(tmp_path):
    from control_plane.releases.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl")
    assert read_shadow_run(Settings(), audit, "2", fetch=None) is None
    audit.record("cli", "shadow", model="m", version="2", percent=10, champion="1", seconds=2.5)
    audit.record("cli", "shadow_stop", model="m", version="2")
    audit.record("cli", "shadow", model="m", version="2", outcome="refused", reason="x")
    audit.record("cli", "shadow", model="m", version="2", percent=10, champion="3", seconds=1.0)
    audit.record("cli", "shadow", model="m", version="2", percent=20, champion="3", seconds=0.1)
    audit.record("cli", "shadow", model="m", version="4", percent=10, champion="3", seconds=0.1)
    audit.record("cli", "shadow_stop", model="m", version="2")
    at = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
          for e in audit.entries()]
    asked = []

    def fetch(settings, since, until):
        asked.append((since, until))
        one = {"compared": 30, "champion_boxes": 100, "shadow_boxes": 80, "matched": 70,
               "class_agreed": 63, "score_delta_sum": 1.4, "shed": {"busy": 2, "queue_full": 1},
               "errors": 1}
        two = {**one, "compared": 10, "champion_boxes": 0, "shadow_boxes": 20, "matched": 0,
               "class_agreed": 0, "score_delta_sum": 0.0}
        return ([{"gateway": "a", "versions": {"2": one, "4": two}},
                 {"gateway": "b", "versions": {"2": two}}], {"http://c:8000": "ConnectError"})

    run = read_shadow_run(Settings(), audit, "2", fetch=fetch)
    # The second run (the refused entry is none): from its first operation's start (the entry
    # is written when the operation is done) to its stop; the share change is the same run.
    assert asked == [(pytest.approx(at[3] - 1.0), pytest.approx(at[6]))]
    assert run["champion"] == "3" and run["compared"] == 40 and run["gateways"] == 2
    # Sums first, then fractions: 2 x 70 / (100 + 80 + 20), not a mean of the two gateways'.
    assert run["matched_fraction"] == 0.7 and run["class_agreement"] == 0.9
    assert run["mean_abs_score_delta"] == 0.02 and run["shed"] == 6 and run["errors"] == 2
    assert run["gateway_failures"] == {"http://c:8000": "ConnectError"}


def test_thresholds_come_from_settings(monkeypatch):
    monkeypatch.setenv("VG_CANARY_MAX_P95_RATIO", "3.0")
    monkeypatch.setenv("VG_CANARY_MIN_REQUESTS", "7")
    monkeypatch.setenv("VG_CANARY_MIN_SHADOW_AGREEMENT", "0.95")
    monkeypatch.setenv("VG_CANARY_MIN_SHADOW_COMPARED", "500")
    t = Thresholds.from_settings(Settings())
    assert (t.max_p95_ratio, t.min_requests) == (3.0, 7)
    assert (t.min_shadow_agreement, t.min_shadow_compared) == (0.95, 500)
    assert judge_shadow(shadow_run(), "2", "1", t).passed is None, "120 compared < 500"
    assert Thresholds.from_settings(replace(Settings(), canary_ks_p_value=0.2)).ks_p_value == 0.2
    slower = window(seed=1, latency=60.0)
    assert next(c for c in judge(window(), slower, t) if c.name == "p95_latency").passed


def test_windows_parse_and_out_of_range_ones_are_refused():
    assert [parse_window(w) for w in ("30s", "10m", "1h", "45")] == [30, 600, 3600, 45]
    with pytest.raises(InvalidWindow):
        parse_window("soon")


# --- the analysis' state, on a real MLflow store ---------------------------------------------

class Promotions:
    """Records what the analysis asked the promoter (the real one needs Triton: the stack test
    below runs it)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def promote(self, version, reason=""):
        self.calls.append(("promote", version, reason))

    def abort_canary(self, reason=""):
        self.calls.append(("abort", reason))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite MLflow store for the module (its first use migrates the schema: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def registry(tmp_path, mlflow_uri, request):
    """Versions 1 (champion) and 2 of a model of this test's own, and a fresh runtime directory
    (the analyses' state, the audit log)."""
    from control_plane.mlflow_store import experiment_id
    from control_plane.releases.registry import REGISTRY_EXPERIMENT, Registry
    from control_plane.training.train import register_version

    settings = replace(Settings(runtime_dir=tmp_path), mlflow_tracking_uri=mlflow_uri,
                       canary_poll_s=3600.0, canary_min_requests=10, canary_min_scores=20,
                       canary_min_tracked_frames=10)
    reg = Registry(settings, name=f"canary-{request.node.name[5:40]}")
    exp = experiment_id(reg.client, reg.store, REGISTRY_EXPERIMENT)
    for _ in range(2):
        run = reg.client.create_run(exp)
        register_version(reg.client, reg.name, source="file:///none", run_id=run.info.run_id,
                         tags={})
    return reg


def analyst_for(registry, answers: list[dict], now: list[float], shadow_answers=()):
    promotions = Promotions()
    analyst = CanaryAnalyst(registry.settings, registry, fetch=lambda s, since: (answers, {}),
                            shadow_fetch=lambda s, since, until: (list(shadow_answers), {}),
                            promoter_factory=lambda: promotions, clock=lambda: now[0])
    analyst.close()  # no background loop: the test takes each step
    return analyst, promotions


def canary_of(registry, version: str):
    from control_plane.mlflow_store import CHALLENGER

    def start():
        registry.route(CHALLENGER, version, 50)
        return "started"
    return start


def gateway_answer(champion: dict, challenger: dict) -> dict:
    return {"gateway": "test", "versions": {"1": champion, "2": challenger}}


def stats(n: int, dets: int = 3, score: float = 0.8, frames: int = 0) -> dict:
    return {"requests": n, "errors": 0, "latency_ms": [10.0] * n, "detections": [dets] * n,
            "scores": [score] * (n * dets), "tracked_frames": frames, "fragments": 0}


def test_refusals_before_anything_starts(registry):
    analyst, _ = analyst_for(registry, [], [1000.0])
    from control_plane.releases.registry import UnknownVersion

    with pytest.raises(InvalidWindow) as low:
        analyst.start("2", 50, 1.0, "test", canary_of(registry, "2"))
    with pytest.raises(InvalidWindow):
        analyst.start("2", 50, 10 * 86400.0, "test", canary_of(registry, "2"))
    with pytest.raises(ControlPlaneError, match="percent") as share:
        analyst.start("2", 150, 60.0, "test", canary_of(registry, "2"))
    assert share.value.status_code == 400
    with pytest.raises(UnknownVersion):
        analyst.start("9", 50, 60.0, "test", canary_of(registry, "9"))
    assert low.value.status_code == 400 and registry.routing().challenger is None
    analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    with pytest.raises(AnalysisRunning) as second:
        analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    assert second.value.status_code == 409


def test_too_little_traffic_extends_once_then_aborts_with_the_reason(registry):
    now = [1000.0]
    answers = [gateway_answer(stats(50), stats(3))]
    analyst, promotions = analyst_for(registry, answers, now)
    _, analysis = analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    now[0] = 1030.0
    assert analyst.step(analyst.status("2")) is not None  # mid-window: live numbers only
    assert analyst.status("2")["live"]["challenger"]["requests"] == 3
    now[0] = 1061.0
    analyst.step(analyst.status("2"))
    extended = analyst.status("2")
    assert extended["status"] == "extended" and extended["deadline"] == 1120.0
    now[0] = 1121.0
    assert analyst.step(analyst.status("2")) is None
    done = analyst.status("2")
    assert done["status"] == "aborted" and "after extending" in done["reason"]
    assert promotions.calls == [("abort", f"automated canary analysis: {done['reason']}")]
    tags = registry.get("2").tags
    assert tags["visionguard.canary.status"] == "aborted"
    assert json.loads(tags["visionguard.canary.challenger"])["requests"] == 3
    from control_plane.releases.audit import AuditLog

    outcomes = [e["outcome"] for e in AuditLog(registry.settings.audit_file).entries()
                if e["action"] == "canary_analysis"]
    assert outcomes == ["started", "extended", "aborted"]


def test_an_equal_challenger_is_promoted_with_its_numbers_kept(registry):
    now = [1000.0]
    answers = [gateway_answer(stats(30, frames=20), stats(30, frames=20))]
    analyst, promotions = analyst_for(registry, answers, now)
    analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    now[0] = 1061.0
    analyst.step(analyst.status())
    done = analyst.status()
    assert done["status"] == "promoted", done["reason"]
    assert done["shadow"] is None, "version 2 was never shadowed"
    assert promotions.calls == [("promote", "2", "automated canary analysis: every criterion "
                                 "passed (not evaluated: shadow_agreement)")]
    ks = json.loads(registry.get("2").tags["visionguard.canary.score_distribution"])
    assert ks["verdict"] == "pass" and ks["n_challenger"] == 90
    shadow = json.loads(registry.get("2").tags["visionguard.canary.shadow_agreement"])
    assert shadow["verdict"] == "skipped" and shadow["statistic"] is None


def test_a_shadow_that_disagreed_aborts_an_otherwise_equal_canary_and_says_so(registry):
    from control_plane.releases.audit import AuditLog

    audit = AuditLog(registry.settings.audit_file)
    audit.record("test", "shadow", model=registry.name, version="2", percent=20,
                 champion="1", seconds=0.5)
    audit.record("test", "shadow_stop", model=registry.name, version="2")
    compared = {"compared": 80, "champion_boxes": 240, "shadow_boxes": 160, "matched": 100,
                "class_agreed": 90, "score_delta_sum": 3.0, "shed": {"busy": 5}, "errors": 0}
    now = [1000.0]
    answers = [gateway_answer(stats(30, frames=20), stats(30, frames=20))]
    analyst, promotions = analyst_for(registry, answers, now,
                                      [{"gateway": "g", "versions": {"2": compared}}])
    _, started = analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    assert started["shadow"]["compared"] == 80 and started["shadow"]["matched_fraction"] == 0.5
    now[0] = 1061.0
    analyst.step(analyst.status())
    done = analyst.status()
    assert done["status"] == "aborted"
    assert done["reason"].startswith("shadow matched-box fraction 0.500 over 80 compared")
    assert promotions.calls == [("abort", f"automated canary analysis: {done['reason']}")]
    # The numbers behind it: the analysis (HTTP and CLI show its criteria), the MLflow tag,
    # the audit log.
    criterion = next(c for c in done["criteria"] if c["name"] == "shadow_agreement")
    assert criterion["passed"] is False and criterion["challenger"] == 0.5
    assert all(c["passed"] for c in done["criteria"] if c["name"] != "shadow_agreement"), \
        "every live criterion passed"
    tag = json.loads(registry.get("2").tags["visionguard.canary.shadow_agreement"])
    assert (tag["verdict"], tag["statistic"], tag["compared"]) == ("fail", 0.5, 80)
    assert tag["compared_with_champion"] == "1" and tag["class_agreement"] == 0.9
    entries = [e for e in audit.entries() if e["action"] == "canary_analysis"]
    assert entries[0]["outcome"] == "started" and entries[0]["shadow"]["compared"] == 80
    assert entries[-1]["outcome"] == "aborted" and any(
        c["name"] == "shadow_agreement" and c["passed"] is False for c in entries[-1]["criteria"])


def test_a_restart_reports_the_running_analysis_interrupted_and_leaves_the_canary(registry):
    analyst, promotions = analyst_for(registry, [], [1000.0])
    analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    after_restart = CanaryAnalyst(registry.settings, registry)
    interrupted = after_restart.recover()
    assert interrupted["status"] == "interrupted" and "stopped" in interrupted["reason"]
    assert after_restart.status("2")["status"] == "interrupted"
    assert registry.routing().challenger == "2" and registry.routing().canary_percent == 50
    assert promotions.calls == []
    assert after_restart.recover() is None


def test_a_canary_ended_by_hand_supersedes_the_analysis(registry):
    analyst, promotions = analyst_for(registry, [], [1000.0])
    analyst.start("2", 50, 60.0, "test", canary_of(registry, "2"))
    from control_plane.mlflow_store import CHALLENGER

    registry.delete_alias(CHALLENGER)
    assert analyst.step(analyst.status()) is None
    assert analyst.status()["status"] == "superseded" and promotions.calls == []


# --- a real control plane decides on live traffic ----------------------------------------------
#
# Beside the session's stack: its Triton serves a model of this test's own (`canary-detector`,
# its own MLflow store and runtime directory), so the stack's `detector`, its registry and the
# other tests' versions are untouched; one control plane and one gateway process of our own
# follow it. Two clients post frames throughout.

MODEL = "canary-detector"
WINDOW_S = 10


def blind_onnx(src: Path, dst: Path) -> Path:
    """The same network with every class score multiplied by 0: it loads, passes the smoke and
    parity checks (they compare Triton with onnxruntime on this very file) and finds nothing."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0]
    rows = out.type.tensor_type.shape.dim[1].dim_value  # 4 box rows + one per class
    mask = np.zeros((1, rows, 1), dtype=np.float32)
    mask[0, :4] = 1.0
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == out.name else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(mask, "class_mask"))
    model.graph.node.append(helper.make_node("Mul", [f"{out.name}_raw", "class_mask"],
                                             [out.name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def register_like(registry, champion: str, onnx_path: Path, what: str) -> str:
    """A version with the champion's tags (metrics, class names, evaluation data) whose ONNX is
    `onnx_path`: the gates pass it as they would the champion."""
    from control_plane.mlflow_store import experiment_id
    from control_plane.releases.registry import REGISTRY_EXPERIMENT
    from control_plane.training.train import register_version

    tags = registry.get(champion).tags
    run = registry.client.create_run(experiment_id(registry.client, registry.store,
                                                   REGISTRY_EXPERIMENT), run_name=what)
    registry.client.log_artifact(run.info.run_id, str(onnx_path), "model")
    source = f"{registry.client.get_run(run.info.run_id).info.artifact_uri}/model"
    version, _ = register_version(registry.client, registry.name, source=source,
                                  run_id=run.info.run_id, tags={**tags, "candidate": what})
    registry.client.set_terminated(run.info.run_id)
    return version


def wait_decided(url: str, headers: dict, version: str, timeout_s: float) -> dict:
    from control_plane.releases.canary_analysis import ACTIVE

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = httpx.get(f"{url}/v1/models/{version}/canary", headers=headers, timeout=10).json()
        if a["status"] not in ACTIVE:
            return a
        time.sleep(0.25)
    raise AssertionError(f"no decision on version {version} within {timeout_s:.0f} s: {a}")


@pytest.fixture()
def own_release(stack, trained_checkpoint, tmp_path):
    """Version 1 of `canary-detector` (the suite's trained detector) served by the stack's
    Triton, a gateway following a control plane of our own; unloaded and removed at the end."""
    from control_plane.auth import TokenStore
    from control_plane.datasets.synthetic_data import generate_dataset
    from control_plane.releases.fleet import TritonControl
    from control_plane.releases.promoter import serve_champion
    from control_plane.releases.registry import Registry
    from control_plane.stack.supervisor import Supervisor, wait_http_ok
    from tests.conftest import free_ports, gateway_process

    (control_port,) = free_ports(1)
    runtime = tmp_path / "runtime"
    s = stack.settings
    env = {**os.environ, "VG_RUNTIME_DIR": str(runtime), "VG_MODEL_NAME": MODEL,
           "VG_MODEL_REPOSITORY": str(s.model_repository),
           "VG_TRITON_HTTP_PORT": str(s.triton_http_port),
           "VG_TRITON_GRPC_PORT": str(s.triton_grpc_port), "VG_CONTROL_PORT": str(control_port),
           "VG_ROUTING_DRAIN_S": "1", "VG_DRIFT_CHECK_INTERVAL_S": "0",
           "VG_LOGS_INDEX_INTERVAL_S": "0", "VG_GATEWAY_TOKEN": "internal-secret",
           "VG_CANARY_MIN_REQUESTS": "20", "VG_CANARY_MIN_SCORES": "30",
           "VG_CANARY_MIN_TRACKED_FRAMES": "20", "VG_CANARY_POLL_S": "1"}
    settings = replace(Settings(runtime_dir=runtime, model_repository=s.model_repository),
                       model_name=MODEL, triton_http_port=s.triton_http_port,
                       triton_grpc_port=s.triton_grpc_port, control_port=control_port)
    registry = Registry(settings)
    eval_data = generate_dataset(tmp_path / "eval", n_train=0, n_val=12, imgsz=256, seed=7)
    champion = registry.register(trained_checkpoint, actor="test", eval_data=eval_data).version
    serve_champion(settings)
    triton = TritonControl(settings)
    triton.load(MODEL)
    assert triton.wait_ready(MODEL, int(champion), 120)[0]
    store = TokenStore(settings.tokens_file)
    tokens = {"release": store.create("test-release", ["release"]),
              "gateway": store.create("test-gateway", ["gateway"])}
    try:
        with gateway_process(stack, tmp_path / "gateway", model_name=MODEL,
                             control_url=settings.control_url, control_token=tokens["gateway"],
                             routing_poll_s="0.5", internal_token="internal-secret") as gateway:
            env["VG_CANARY_GATEWAYS"] = gateway
            with Supervisor(tmp_path / "control") as supervisor:
                child = supervisor.start("control-plane", [
                    sys.executable, "-m", "control_plane", "serve", "control-plane"], env)
                wait_http_ok(f"{settings.control_url}/healthz", child.proc, 90, "control plane")
                yield settings, registry, gateway, tokens, env, champion
    finally:
        import tritonclient.http as httpclient

        httpclient.InferenceServerClient(f"127.0.0.1:{s.triton_http_port}").unload_model(MODEL)
        import shutil

        shutil.rmtree(Path(s.model_repository) / MODEL, ignore_errors=True)


@pytest.mark.integration
def test_live_canaries_promote_an_equal_challenger_and_abort_a_blind_one(own_release,
                                                                        shapes_images, tmp_path):
    from control_plane.mlflow_store import CHAMPION
    from control_plane.releases.audit import AuditLog
    from tests.test_promotion import Load, split_streams

    settings, registry, gateway, tokens, env, v1 = own_release
    url, release = settings.control_url, {"authorization": f"Bearer {tokens['release']}"}
    onnx_path = Path(settings.model_repository) / MODEL / v1 / "model.onnx"
    v2 = register_like(registry, v1, onnx_path, "equal")
    v3 = register_like(registry, v1, blind_onnx(onnx_path, tmp_path / "model.onnx"), "blind")
    # The internal endpoints need the gateway's internal token, which the control plane sends.
    for route in ("version-stats", "shadow-stats"):
        assert httpx.get(f"{gateway}/v1/internal/{route}", timeout=10).status_code == 401
    to_champion, to_challenger = split_streams(50, 2)
    image = shapes_images[0].read_bytes()
    with Load(gateway, image, [[to_champion[0], to_challenger[0]],
                               [to_champion[1], to_challenger[1]]]) as load:
        r = httpx.post(f"{url}/v1/models/{v2}/canary", headers=release, timeout=600,
                       json={"percent": 50, "auto": True, "window_s": WINDOW_S})
        assert r.status_code == 200, r.text
        assert r.json()["analysis"]["status"] == "running"
        # Refused while it runs, before anything changes: a second analysis, a window or a
        # share out of range, a version never registered.
        for version, body, status in ((v3, {"auto": True, "window_s": 30}, 409),
                                      (v3, {"auto": True, "window_s": 1}, 400),
                                      (v3, {"auto": True, "percent": 150}, 400),
                                      ("99", {"auto": True}, 404)):
            r = httpx.post(f"{url}/v1/models/{version}/canary", headers=release, timeout=60,
                           json={"percent": 50, **body})
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]
        promoted = wait_decided(url, release, v2, WINDOW_S * 2 + 60)
        assert promoted["status"] == "promoted", promoted
        assert registry.alias(CHAMPION) == v2
        # The CLI: the blind challenger, followed to its decision (exit 3: not promoted).
        cli = subprocess.run(
            [sys.executable, "-m", "control_plane", "models", "canary", v3, "--percent", "50",
             "--auto", "--window", f"{WINDOW_S}s"],
            env={**env, "VG_CONTROL_URL": url, "VG_TOKEN": tokens["release"],
                 "COLUMNS": "200"}, capture_output=True, text=True, timeout=WINDOW_S * 2 + 300)
        assert cli.returncode == 3, cli.stdout + cli.stderr
        print(json.dumps(promoted, indent=1), cli.stdout, sep="\n")  # the transcripts, with -rP
    aborted = httpx.get(f"{url}/v1/canary/analysis", headers=release, timeout=10).json()
    assert aborted["version"] == v3 and aborted["status"] == "aborted", aborted
    assert "detections per image" in aborted["reason"] and "aborted" in cli.stdout
    assert registry.routing().challenger is None and registry.alias(CHAMPION) == v2
    failed = [rec for rec in load.records if rec[2] != 200]
    assert len(load.records) > 100 and failed == [], failed[:5]

    # The numbers behind each decision: on the challenger's MLflow tags and in the audit log.
    for version, analysis in ((v2, promoted), (v3, aborted)):
        tags = registry.get(version).tags
        assert tags["visionguard.canary.status"] == analysis["status"]
        assert json.loads(tags["visionguard.canary.challenger"])["requests"] >= 20
    ks = next(c for c in promoted["criteria"] if c["name"] == "score_distribution")
    assert ks["passed"] and ks["extra"]["ks_p_value"] > 0.01
    entries = [e for e in AuditLog(settings.audit_file).entries(500)
               if e["action"] in ("canary_analysis", "promote", "canary_abort")]
    assert [(e["action"], e["outcome"]) for e in entries if e["version"] == v2][-2:] == \
        [("promote", "ok"), ("canary_analysis", "promoted")]
    abort_entry = next(e for e in entries if e["action"] == "canary_abort")
    assert abort_entry["actor"] == "canary-analysis" and "detections" in abort_entry["reason"]
    promote_entry = next(e for e in entries if e["action"] == "promote" and e["outcome"] == "ok")
    assert promote_entry["reason"] == ("automated canary analysis: every criterion passed "
                                       "(not evaluated: shadow_agreement)")
