"""Drift detection at scale: false alarms on the reference distribution, and detection power
for fog, night, blur and noise at three severities. Prints tables and writes JSON.

    python bench/drift.py [--window 50] [--fa-windows 100] [--power-windows 10]
                          [--out bench/results/drift.json]

Reference: the MLflow champion's reference window, exactly as the control plane builds it (its
evaluation split rebuilt from lineage, run through its model.onnx and the served NMS, then
tracker_service.drift_features). Live: held-out images of the same generator (seed 1, never
used for training or evaluation), JPEG-encoded as a camera would send them, run through the
same model, featurised as the gateway does; shifted by control_plane.datasets.image_shifts for the
power table. Detectors: control_plane.drift.DriftDetector (KS per feature with Bonferroni,
MMD with a permutation test; drift when either is under p/2), at the settings' p-value.

Needs a champion (`visionguard train` registers the bootstrap detector as one).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from control_plane.drift.monitor import DriftDetector, OnnxDetector, build_reference, drifted  # noqa: E402
from control_plane.datasets.image_shifts import SHIFTS  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.datasets.synthetic_data import render_sample, sample_rng  # noqa: E402
from tracker_service.drift_features import FEATURES, drift_features  # noqa: E402

LIVE_SEED = 1


def champion_detector(settings: Settings, version: str, imgsz: int) -> OnnxDetector:
    from control_plane.mlflow_store import mlflow_client, mlflow_store

    client = mlflow_client(mlflow_store(settings.mlflow_tracking_uri or None,
                                        settings.runtime_dir))
    mv = client.get_model_version(settings.model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(mv.run_id, "model/model.onnx", tmp)
        return OnnxDetector(path, imgsz)


def camera(image: np.ndarray) -> np.ndarray:
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return cv2.imdecode(jpg, cv2.IMREAD_COLOR)


def features(detector, images) -> np.ndarray:
    rows = []
    for bgr in images:
        bgr = camera(bgr)
        rows.append(drift_features(bgr, *detector(bgr)))
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=50, help="live samples per check")
    parser.add_argument("--fa-windows", type=int, default=100,
                        help="windows from the reference distribution (false alarms)")
    parser.add_argument("--power-windows", type=int, default=10,
                        help="windows per shift and severity (detection power)")
    parser.add_argument("--severities", default="0.25,0.5,1.0")
    parser.add_argument("--permutations", type=int, default=None,
                        help="MMD permutations (default: VG_DRIFT_PERMUTATIONS)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write drift_report.html/.png there for one window at "
                             "night, severity 0.5 (what `visionguard drift report` shows)")
    args = parser.parse_args()
    console = Console(width=150)
    settings = Settings()
    severities = [float(s) for s in args.severities.split(",")]
    n_perm = args.permutations or settings.drift_permutations

    t0 = time.monotonic()
    ref = build_reference(settings)
    from control_plane.mlflow_store import mlflow_client, mlflow_store

    client = mlflow_client(mlflow_store(settings.mlflow_tracking_uri or None,
                                        settings.runtime_dir))
    tags = client.get_model_version(settings.model_name, ref.version).tags
    imgsz = int(tags.get("imgsz", 640))
    detector = champion_detector(settings, ref.version, imgsz)
    drift = DriftDetector(ref.features, p_value=settings.drift_p_value, n_permutations=n_perm)
    console.print(f"champion {ref.model} v{ref.version}: reference {len(ref.features)} samples "
                  f"of {ref.eval_dataset} at {imgsz}px ({time.monotonic() - t0:.1f} s)")

    w = args.window

    def render(i: int) -> np.ndarray:
        return render_sample(sample_rng(LIVE_SEED, "val", i), imgsz).image

    # --- false alarms: disjoint windows of held-out, unshifted images ------------------------
    t1 = time.monotonic()
    alarms = {"ks": 0, "mmd": 0, "any": 0}
    fa_p = []
    for k in range(args.fa_windows):
        live = features(detector, (render(k * w + i) for i in range(w)))
        r = drift.check(live)
        alarms["ks"] += r["ks"]["drift"]
        alarms["mmd"] += r["mmd"]["drift"]
        alarms["any"] += r["ks"]["drift"] or r["mmd"]["drift"]
        fa_p.append({"ks_min_p": min(f["p_value"] for f in r["ks"]["features"].values()),
                     "mmd_p": r["mmd"]["p_value"], "drifted": drifted(r)})
    fa_s = time.monotonic() - t1
    n = args.fa_windows
    false_alarms = {k: {"alarms": v, "windows": n, "rate": v / n} for k, v in alarms.items()}
    first20 = sum(bool(p["drifted"]) or p["mmd_p"] < drift.per_detector for p in fa_p[:20])

    table = Table(title=f"False alarms: {n} windows of {w} held-out images (same generator)")
    for c in ("detector", "alarms", "rate"):
        table.add_column(c)
    for k, v in false_alarms.items():
        table.add_row(k, str(v["alarms"]), f"{v['rate']:.3f}")
    console.print(table)
    console.print(f"first 20 windows: {first20} alarm(s), rate {first20 / 20:.2f}")

    # --- power: the same images shifted ------------------------------------------------------
    base = [render(i) for i in range(args.fa_windows * w, (args.fa_windows + args.power_windows)
                                     * w)]
    power = []
    t2 = time.monotonic()
    for shift, fn in SHIFTS.items():
        for sev in severities:
            hits = {"ks": 0, "mmd": 0, "any": 0}
            mmd_p, mmd_d, top = [], [], {}
            for k in range(args.power_windows):
                images = [fn(img, sev, np.random.default_rng([k, i, 7]))
                          for i, img in enumerate(base[k * w:(k + 1) * w])]
                r = drift.check(features(detector, images))
                hits["ks"] += r["ks"]["drift"]
                hits["mmd"] += r["mmd"]["drift"]
                hits["any"] += r["ks"]["drift"] or r["mmd"]["drift"]
                mmd_p.append(r["mmd"]["p_value"])
                mmd_d.append(r["mmd"]["distance"])
                for name in drifted(r)[:3]:
                    top[name] = top.get(name, 0) + 1
            power.append({"shift": shift, "severity": sev, "windows": args.power_windows,
                          "detected_ks": hits["ks"], "detected_mmd": hits["mmd"],
                          "detected_any": hits["any"],
                          "power": hits["any"] / args.power_windows,
                          "mmd_p_median": float(np.median(mmd_p)),
                          "mmd_distance_median": float(np.median(mmd_d)),
                          "top_features": sorted(top, key=top.get, reverse=True)[:3]})
    power_s = time.monotonic() - t2

    table = Table(title=f"Detection power: {args.power_windows} windows of {w} per shift")
    for c in ("shift", "severity", "KS", "MMD", "any", "MMD p (median)", "MMD^2 (median)",
              "features that moved most"):
        table.add_column(c)
    for p in power:
        table.add_row(p["shift"], f"{p['severity']:g}", f"{p['detected_ks']}/{p['windows']}",
                      f"{p['detected_mmd']}/{p['windows']}",
                      f"{p['detected_any']}/{p['windows']}", f"{p['mmd_p_median']:.3g}",
                      f"{p['mmd_distance_median']:.4f}", ", ".join(p["top_features"]))
    console.print(table)

    result = {
        "champion": {"model": ref.model, "version": ref.version,
                     "eval_dataset": ref.eval_dataset, "reference_samples": len(ref.features),
                     "imgsz": imgsz},
        "features": list(FEATURES), "window": w, "p_value": settings.drift_p_value,
        "per_detector_p_value": drift.per_detector, "mmd_permutations": n_perm,
        "live_seed": LIVE_SEED, "false_alarms": false_alarms,
        "false_alarms_first_20_windows": first20, "power": power,
        "seconds": {"false_alarms": round(fa_s, 1), "power": round(power_s, 1)},
        "machine": {"python": platform.python_version(), "processor": cpu_model()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.report is not None:
        from control_plane.drift.monitor import DriftResult
        from control_plane.drift.report import render_html, render_png

        images = [SHIFTS["night"](img, 0.5, np.random.default_rng([0, i, 7]))
                  for i, img in enumerate(base[:w])]
        live = features(detector, images)
        det = drift.check(live)
        report = DriftResult(ref.model, ref.version, time.time(), len(ref.features), len(live),
                             settings.drift_p_value, det["ks"]["drift"] or det["mmd"]["drift"],
                             det, drifted(det)).to_dict()
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "drift_report.html").write_bytes(render_html(ref.features, live, report))
        (args.report / "drift_report.png").write_bytes(render_png(ref.features, live, report))
        console.print(f"wrote {args.report}/drift_report.html and .png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
