"""The drift-to-better-model loop end to end (issue 14, item 4), as a user runs it.

    python bench/drift_loop.py [--checkpoint best.pt] [--clean-frames 100] [--fog-frames 240]
                               [--epochs 5] [--out bench/results/drift_loop.json]

Steps, each timed:
  0. setup: the champion's dataset (`visionguard data synth`, by default the generator settings
     the bootstrap detector was trained with) and the champion (`visionguard models register
     CHECKPOINT`, the first version, so it holds `champion`), tagged with that dataset version as
     `visionguard train --data` tags what it trains (`models register` records no lineage);
     then `visionguard up` on free ports with frame sampling and retraining-on-drift on.
  1. clean traffic: generated images (a seed the champion never saw) posted to /v1/detect;
     `visionguard drift check` should say no drift.
  2. foggy traffic: the same generator with fog (evaluation/corruptions.py, severities
     --fog-severities), posted in chunks, `drift check` after each until it flags drift and the
     control plane has opened a retraining request.
  3. more foggy traffic: the gateway, polling /v1/drift/status, samples it with reason drift.
  4. `visionguard data export-for-labeling --reason drift`; the "labeller" replaces the
     pre-annotations with the generator's ground truth, found by the sha256 of the bytes sent.
  5. `visionguard data import DIR --labeled-export`: the next version of the champion's dataset.
  6. `visionguard drift approve ID`: trains the candidate from the champion on that version,
     scores it beside the champion (old val images, new production frames), robustness suite.
  7. the figures: the `retraining_evaluation` tag the approval wrote (the new frames' val share
     is the foggy validation set; the old val images the clean one), and, as a larger check, both
     checkpoints on held-out generated images (--holdout, clean and with the same fog).

Targets: foggy mAP50-95 of the candidate >= the champion's + 5 points; clean mAP50-95 within
the accuracy gate (VG_GATE_MAP_TOLERANCE below the champion's at most). Prints a table, writes
JSON and a PNG (champion vs candidate, clean and foggy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import cv2
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from control_plane.datasets import synthetic_data  # noqa: E402
from control_plane.evaluation.corruptions import corrupt  # noqa: E402

console = Console(width=150)
BOOTSTRAP = Path("/tmp/boot14/train/weights/best.pt")
LIVE_SEED, HOLDOUT_SEED = 101, 202  # generator seeds the champion never saw
TOKEN_LINE = re.compile(r"operator token, roles release\+sre: (\S+?)\)")


class Steps:
    """Each step's wall time, printed as it ends."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._t = time.monotonic()

    def done(self, name: str, detail: str = "") -> None:
        now = time.monotonic()
        self.rows.append({"step": name, "seconds": round(now - self._t, 1), "detail": detail})
        console.print(f"[green]{name}[/] {now - self._t:.1f} s  {detail}")
        self._t = now


def cli(env: dict[str, str], *args: str, ok=(0,), timeout: float = 3600) -> str:
    """`python -m control_plane ARGS` with the stack's environment; its stdout."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "control_plane", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    console.print(f"  $ visionguard {' '.join(args)}  -> exit {proc.returncode} "
                  f"({time.monotonic() - t0:.1f} s)")
    if proc.returncode not in ok:
        raise SystemExit(f"visionguard {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def json_out(text: str):
    return json.loads(text[text.index("{"):])


def frames(seed: int, n: int, imgsz: int, fog: list[int]):
    """(jpeg bytes, sample) for n generated images; with `fog`, fogged at those severities
    in turn."""
    for i in range(n):
        sample = synthetic_data.render_sample(synthetic_data.sample_rng(seed, "val", i), imgsz)
        image = sample.image
        if fog:
            image = corrupt(image, "fog", fog[i % len(fog)], key=f"{seed}-{i}")
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        yield jpg.tobytes(), sample


def post_all(url: str, items, truth: dict | None = None, workers: int = 2) -> int:
    """POST each JPEG to /v1/detect; the number answered 200. `truth`: sha256 -> sample."""
    def one(jpg: bytes) -> int:
        return client.post("/v1/detect", content=jpg,
                           headers={"content-type": "image/jpeg"}).status_code

    batch = []
    for jpg, sample in items:
        if truth is not None:
            truth[hashlib.sha256(jpg).hexdigest()] = sample
        batch.append(jpg)
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(workers) as pool:
        return sum(code == 200 for code in pool.map(one, batch))


def drift_check(env: dict[str, str]) -> dict:
    return json_out(cli(env, "drift", "check", "--json"))


def api(env: dict[str, str], path: str) -> dict:
    url = f"http://127.0.0.1:{env['VG_CONTROL_PORT']}"
    return httpx.get(url + path, headers={"authorization": f"Bearer {env['VG_TOKEN']}"},
                     timeout=30).json()


def label(export: Path, truth: dict) -> dict:
    """The labeller: the export's pre-annotations replaced by the generator's ground truth
    (found by each image's sha256 in the manifest). Counts of what it did."""
    manifest = json.loads((export / "manifest.json").read_text())
    coco = json.loads((export / "annotations.json").read_text())
    sha = {Path(im["file_name"]).name: im["sha256"] for im in manifest["images"]}
    category = {c["name"]: c["id"] for c in coco["categories"]}
    annotations, unknown = [], 0
    predicted = len(coco["annotations"])
    for im in coco["images"]:
        sample = truth.get(sha[Path(im["file_name"]).name])
        if sample is None:  # a frame this bench did not send (must not happen)
            unknown += 1
            continue
        for c, (x1, y1, x2, y2) in zip(sample.classes, sample.boxes):
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"],
                                "category_id": category[synthetic_data.SHAPES[int(c)]],
                                "bbox": [float(x1), float(y1), w, h], "area": w * h,
                                "iscrowd": 0})
    if unknown:
        raise SystemExit(f"{unknown} exported frames are not among the frames this bench sent")
    coco["annotations"] = annotations
    (export / "annotations.json").write_text(json.dumps(coco))
    return {"images": len(coco["images"]), "predicted_boxes": predicted,
            "ground_truth_boxes": len(annotations)}


def holdout_sets(root: Path, n: int, imgsz: int, fog: list[int]) -> dict[str, Path]:
    """Two YOLO datasets of the same n held-out images: clean and fogged; their data.yaml."""
    import yaml

    out = {}
    for kind, severities in (("clean", []), ("fog", fog)):
        images, labels = root / kind / "images" / "val", root / kind / "labels" / "val"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i, (jpg, sample) in enumerate(frames(HOLDOUT_SEED, n, imgsz, severities)):
            (images / f"{i:05d}.jpg").write_bytes(jpg)
            (labels / f"{i:05d}.txt").write_text(synthetic_data.yolo_labels(sample))
        out[kind] = root / kind / "data.yaml"
        out[kind].write_text(yaml.safe_dump({
            "path": str(root / kind), "train": "images/val", "val": "images/val",
            "names": dict(enumerate(synthetic_data.SHAPES))}, sort_keys=False))
    return out


def start_up(env: dict[str, str], log: Path, timeout_s: float = 600) -> subprocess.Popen:
    """`visionguard up` until it prints its URLs; the operator token is read from them."""
    cwd = log.parent / "cwd"
    cwd.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "control_plane", "up"], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise SystemExit(f"visionguard up exited {proc.returncode}:\n{text[-4000:]}")
        if "Ctrl-C stops everything" in text:
            match = TOKEN_LINE.search(text.replace("\n", ""))
            if not match:
                raise SystemExit(f"no operator token in up's output:\n{text[-4000:]}")
            env["VG_TOKEN"] = match.group(1)
            return proc
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            raise SystemExit(f"stack not ready in {timeout_s:g} s:\n{text[-4000:]}")
        time.sleep(0.5)


def plot(figures: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(figures)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, (who, colour) in enumerate((("champion", "#8c8c8c"), ("candidate", "#2a7ab9"))):
        values = [figures[g][who] for g in groups]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.38, label=who, color=colour)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_xticks(x, [f"{g}\n({figures[g]['images']} images)" for g in groups], fontsize=8)
    ax.set_ylabel("mAP50-95")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"the champion (default {BOOTSTRAP} when it exists)")
    parser.add_argument("--data-seed", type=int, default=synthetic_data_default("seed"),
                        help="generator seed of the champion's dataset")
    parser.add_argument("--data-train", type=int, default=synthetic_data_default("n_train"))
    parser.add_argument("--data-val", type=int, default=synthetic_data_default("n_val"))
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--clean-frames", type=int, default=100)
    parser.add_argument("--fog-chunk", type=int, default=50,
                        help="foggy frames between drift checks until drift is flagged")
    parser.add_argument("--max-detect-frames", type=int, default=400)
    parser.add_argument("--fog-frames", type=int, default=240,
                        help="foggy frames sent once drift is flagged (sampled with reason drift)")
    parser.add_argument("--fog-severities", default="1,2,3")
    parser.add_argument("--val-fraction", type=float, default=0.25,
                        help="VG_DATASETS_VAL_FRACTION: the new frames' val share")
    parser.add_argument("--epochs", type=int, default=5, help="VG_RETRAIN_EPOCHS")
    parser.add_argument("--robustness-images", type=int, default=50,
                        help="VG_RETRAIN_ROBUSTNESS_MAX_IMAGES")
    parser.add_argument("--holdout", type=int, default=100,
                        help="held-out images (clean and foggy) to score both models on; 0: none")
    parser.add_argument("--runtime", type=Path, default=None,
                        help="runtime directory (default a fresh temporary one, removed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift_loop.json")
    args = parser.parse_args()

    checkpoint = args.checkpoint or (BOOTSTRAP if BOOTSTRAP.is_file() else None)
    if checkpoint is None or not checkpoint.is_file():
        raise SystemExit(f"no champion checkpoint: pass --checkpoint (train one with "
                         f"`visionguard train`; {BOOTSTRAP} does not exist)")
    fog = [int(s) for s in args.fog_severities.split(",")]
    tmp = None if args.runtime else tempfile.mkdtemp(prefix="vg-drift-loop-")
    runtime = args.runtime or Path(tmp)
    runtime.mkdir(parents=True, exist_ok=True)
    try:
        run(args, checkpoint.resolve(), fog, runtime)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def synthetic_data_default(name: str) -> int:
    """The bootstrap detector's generator settings (what /tmp/boot14 was trained on)."""
    from control_plane.training import train

    return {"seed": train.DEFAULT_SEED, "n_train": train.DEFAULT_N_TRAIN,
            "n_val": train.DEFAULT_N_VAL}[name]


def run(args, checkpoint: Path, fog: list[int], runtime: Path) -> None:
    from tests.conftest import free_ports

    http, grpc, metrics, gateway, control = free_ports(5)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VG_") and not k.startswith("MLFLOW_")}
    env.update({
        "VG_RUNTIME_DIR": str(runtime), "VG_CONTROL_PORT": str(control),
        "VG_TRITON_HTTP_PORT": str(http), "VG_TRITON_GRPC_PORT": str(grpc),
        "VG_TRITON_METRICS_PORT": str(metrics), "VG_GATEWAY_PORT": str(gateway),
        "VG_MLFLOW_UI_PORT": "0", "VG_SCHEDULE_ENABLED": "0",
        "VG_CHECKPOINT_ROOTS": os.pathsep.join((str(checkpoint.parent),
                                                str(runtime / "datasets"))),
        # drift: every response featurised, a window that turns over within one chunk of fog
        "VG_GATEWAY_DRIFT_SAMPLE_RATE": "1.0", "VG_GATEWAY_DRIFT_FLUSH_S": "1",
        "VG_DRIFT_WINDOW": str(args.fog_chunk * 2), "VG_DRIFT_MIN_SAMPLES": "50",
        "VG_DRIFT_RETRAIN_ON_DRIFT": "1",
        # frame sampling on; every frame of a drifted window kept (one bench client, one bucket)
        "VG_GATEWAY_FRAMES_SAMPLING": "1", "VG_GATEWAY_FRAMES_DRIFT_RATE": "1.0",
        "VG_GATEWAY_FRAMES_PER_STREAM_PER_MIN": "100000", "VG_GATEWAY_FRAMES_DRIFT_POLL_S": "2",
        "VG_DATASETS_VAL_FRACTION": str(args.val_fraction),
        "VG_RETRAIN_EPOCHS": str(args.epochs),
        "VG_RETRAIN_ROBUSTNESS_MAX_IMAGES": str(args.robustness_images),
    })
    from control_plane.settings import Settings

    settings = Settings(runtime_dir=runtime, mlflow_tracking_uri="", datasets_dir_override="")
    steps = Steps()
    result: dict = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                "python": platform.python_version()},
                    "checkpoint": str(checkpoint), "args": {k: str(v) for k, v in
                                                             vars(args).items()}}

    # 0. the champion's dataset and the champion, then the stack ---------------------------
    from control_plane.datasets.store import DatasetStore
    from control_plane.mlflow_store import CHAMPION, mlflow_client, store_for

    client = mlflow_client(store_for(settings))
    if not client.search_registered_models(f"name = '{settings.model_name}'"):
        cli(env, "data", "synth", "--n-train", str(args.data_train), "--n-val", str(args.data_val),
            "--imgsz", str(args.imgsz), "--seed", str(args.data_seed), "--json")
        base = DatasetStore(settings, log_to_mlflow=False).list()[-1]
        cli(env, "models", "register", str(checkpoint), "--eval-data", str(base.data_yaml))
        champion = client.get_model_version_by_alias(settings.model_name, CHAMPION)
        for key, value in (("dataset", base.ref), ("dataset_name", base.name),
                           ("dataset_version", base.version)):
            client.set_model_version_tag(settings.model_name, champion.version, key, value)
    else:  # --runtime of an earlier run: its champion and dataset
        console.print(f"reusing the champion registered in {runtime}")
    champion = client.get_model_version_by_alias(settings.model_name, CHAMPION)
    base = DatasetStore(settings, log_to_mlflow=False).resolve(champion.tags["dataset"])
    steps.done("setup: dataset + champion", f"{base.ref}; champion {settings.model_name} "
                                            f"version {champion.version}")
    result["dataset"] = base.ref
    log = runtime / "up.log"
    proc = start_up(env, log)
    gw = f"http://127.0.0.1:{gateway}"
    steps.done("visionguard up", f"gateway {gw}")
    try:
        loop(args, env, gw, fog, steps, result, settings, client)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["steps"] = steps.rows
    print_and_write(args, result)


def loop(args, env, gw, fog, steps: Steps, result: dict, settings, client) -> None:
    from control_plane.drift.retraining import RETRAINING_TAG, TAG_EVALUATION

    # 1. clean traffic -------------------------------------------------------------------
    ok = post_all(gw, frames(LIVE_SEED, args.clean_frames, args.imgsz, []))
    time.sleep(3)  # the gateway's drift batch (flush 1 s) reaches the control plane
    clean = drift_check(env)
    steps.done("1. clean traffic + drift check", f"{ok}/{args.clean_frames} answered; drift "
                                                 f"{clean['drift']}")
    result["clean_check"] = {"frames": args.clean_frames, "drift": clean["drift"],
                             "mmd_p": clean["detectors"]["mmd"]["p_value"]}

    # 2. foggy traffic until drift and a retraining request ------------------------------
    truth: dict = {}
    sent, flagged, request = 0, None, None
    fog_frames = frames(LIVE_SEED + 1, args.max_detect_frames + args.fog_frames, args.imgsz,
                        fog)
    while sent < args.max_detect_frames:
        chunk = [next(fog_frames) for _ in range(args.fog_chunk)]
        post_all(gw, chunk, truth)
        sent += len(chunk)
        time.sleep(3)
        check = drift_check(env)
        if check["drift"]:
            flagged = check
            break
    if flagged is None:
        raise SystemExit(f"no drift flagged after {sent} foggy frames")
    deadline = time.monotonic() + 30
    while request is None and time.monotonic() < deadline:
        pending = [r for r in api(env, "/v1/drift/retraining")["requests"]
                   if r["state"] == "pending"]
        request = pending[-1] if pending else None
        if request is None:
            time.sleep(1)
    if request is None:
        raise SystemExit("drift flagged but no pending retraining request appeared in 30 s: "
                         f"{api(env, '/v1/drift/retraining')}")
    cli(env, "drift", "requests")
    steps.done("2. foggy traffic until drift + request",
               f"{sent} foggy frames; request {request['id']}; drifted features "
               f"{', '.join(request.get('drifted_features', [])[:4])}")
    result["drift"] = {"foggy_frames_to_flag": sent, "request": request["id"],
                       "mmd_p": flagged["detectors"]["mmd"]["p_value"],
                       "drifted_features": request.get("drifted_features", [])}

    # 3. more foggy traffic: sampled with reason drift ----------------------------------
    time.sleep(4)  # two of the gateway's /v1/drift/status polls
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")  # this run's frames only
    ok = post_all(gw, (next(fog_frames) for _ in range(args.fog_frames)), truth)
    time.sleep(3)  # the sampler's queue drains to the store
    steps.done("3. foggy traffic sampled", f"{ok}/{args.fog_frames} answered")

    # 4. export for labelling, the "labeller" --------------------------------------------
    export = Path(settings.runtime_dir) / f"labelling-export-{int(time.time())}"
    exported = json_out(cli(env, "data", "export-for-labeling", "--out", str(export),
                            "--reason", "drift", "--since", since, "--json"))
    labelled = label(export, truth)
    steps.done("4. export-for-labeling + labeller",
               f"{exported['images']} frames ({exported['by_reason']}); "
               f"{labelled['predicted_boxes']} predicted boxes -> "
               f"{labelled['ground_truth_boxes']} ground-truth boxes")
    result["export"] = {**{k: exported[k] for k in ("images", "annotations", "by_reason",
                                                    "skipped")}, "labelled": labelled}

    # 5. import as the next version ------------------------------------------------------
    imported = json_out(cli(env, "data", "import", str(export), "--labeled-export", "--json"))
    added = imported["labeled_export"]["added"]
    steps.done("5. data import --labeled-export",
               f"{imported['labeled_export']['previous']} -> {imported['ref']}; frames added "
               + ", ".join(f"{split} {sum(n.values())}" for split, n in added.items()))
    result["import"] = {"ref": imported["ref"], "counts": imported["counts"],
                        "labeled_export": imported["labeled_export"]}

    # 6. approve: retrain -------------------------------------------------------------------
    approve_log = cli(env, "drift", "approve", request["id"])
    console.print(approve_log[-3000:])
    candidates = [mv for mv in client.search_model_versions(f"name = '{settings.model_name}'")
                  if (mv.tags or {}).get(RETRAINING_TAG) == request["id"]]
    if len(candidates) != 1:
        raise SystemExit(f"expected one version tagged with request {request['id']}, found "
                         f"{len(candidates)}")
    candidate = candidates[0]
    steps.done("6. drift approve (train, evaluate, robustness)",
               f"candidate {settings.model_name} version {candidate.version}, aliases "
               f"{candidate.aliases or 'none'}")
    scores = json.loads(candidate.tags[TAG_EVALUATION])
    result["candidate"] = {"version": candidate.version, "aliases": list(candidate.aliases),
                           "tags": {k: v for k, v in candidate.tags.items()
                                    if k in ("dataset", "parent", "base", "epochs",
                                             "robustness_mean_ratio", "val_mAP50-95")},
                           "retraining_evaluation": scores}

    # 7. figures: the approval's evaluation and, larger, held-out images ---------------------
    figures = {}
    for part, label_ in (("old_val", "clean val (old)"), ("new_val", "foggy val (new frames)")):
        if part in scores["parts"]:
            p = scores["parts"][part]
            figures[label_] = {"images": p["images"], "champion": p["champion"]["mAP50-95"],
                               "candidate": p["candidate"]["mAP50-95"]}
    if args.holdout:
        from control_plane.training.train import evaluate

        champion = client.get_model_version_by_alias(settings.model_name, "champion")
        with tempfile.TemporaryDirectory(prefix="vg-drift-loop-eval-") as work:
            sets = holdout_sets(Path(work) / "sets", args.holdout, args.imgsz, fog)
            weights = {}
            for who, mv in (("champion", champion), ("candidate", candidate)):
                (Path(work) / who).mkdir()
                weights[who] = Path(client.download_artifacts(mv.run_id, "model/best.pt",
                                                              str(Path(work) / who)))
            for kind, data_yaml in sets.items():
                figures[f"held-out {kind}"] = {"images": args.holdout, **{
                    who: round(evaluate(w, data_yaml, imgsz=args.imgsz)["mAP50-95"], 6)
                    for who, w in weights.items()}}
        steps.done("7. held-out evaluation", f"{args.holdout} clean + {args.holdout} foggy")
    tol = settings.gate_map_tolerance
    for name, f in figures.items():
        f["change"] = round(f["candidate"] - f["champion"], 6)
    result["figures"] = figures
    result["targets"] = targets(figures, tol)


def targets(figures: dict, tol: float) -> dict:
    """Foggy: candidate >= champion + 0.05; clean: candidate >= champion - the gate's tolerance."""
    out = {"accuracy_gate_tolerance": tol}
    for name, f in figures.items():
        if "fog" in name:
            out[name] = {"target": "candidate >= champion + 0.05",
                         "met": f["candidate"] >= f["champion"] + 0.05}
        else:
            out[name] = {"target": f"candidate >= champion - {tol:g}",
                         "met": f["candidate"] >= f["champion"] - tol}
    return out


def print_and_write(args, result: dict) -> None:
    table = Table(title="drift -> better model: steps")
    for c in ("step", "s", "detail"):
        table.add_column(c)
    for row in result["steps"]:
        table.add_row(row["step"], f"{row['seconds']:.1f}", row["detail"][:100])
    table.add_row("total", f"{sum(r['seconds'] for r in result['steps']):.1f}", "")
    console.print(table)
    figures = result.get("figures", {})
    table = Table(title=f"mAP50-95, champion vs candidate (candidate version "
                        f"{result.get('candidate', {}).get('version', '-')})")
    for c in ("images", "n", "champion", "candidate", "change", "target", "met"):
        table.add_column(c)
    for name, f in figures.items():
        t = result["targets"][name]
        table.add_row(name, str(f["images"]), f"{f['champion']:.3f}", f"{f['candidate']:.3f}",
                      f"{f['change']:+.3f}", t["target"],
                      "[green]yes[/]" if t["met"] else "[red]no[/]")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    png = args.out.with_suffix(".png")
    if figures:
        plot(figures, png, f"champion vs retrained candidate after fog drift "
                           f"({result['args']['epochs']} epochs from the champion)")
    console.print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
