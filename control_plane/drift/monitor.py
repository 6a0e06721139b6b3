"""Data drift: the champion's reference window against the live window gateways send.

Reference window: the champion's evaluation images (its `eval_dataset`, rebuilt from the
version's lineage tags by the deterministic generator and checked against `eval_dataset_hash`)
run through the champion's own `model.onnx` with onnxruntime and the NMS of the served
model.py, then through `tracker_service.drift_features` - the function the gateway uses on live
requests. It runs in-process rather than through the gateway so it needs no running stack,
always uses exactly the champion (whatever a canary routes), and keeps the evaluation images out
of the live metrics and the live window. It is cached per model version under
`<runtime_dir>/drift/`.

Detectors (alibi-detect): KS per feature with a Bonferroni correction over the features, and
MMD (pytorch backend, Gaussian kernel, permutation test) on features standardised by the
reference's mean and spread. A check flags drift when either detector's p-value is under
`drift_p_value / 2` (Bonferroni over the two detectors), so a window from the reference
distribution raises a false alarm with probability at most `drift_p_value`.

Results become metrics (control_plane/api/metrics.py), a JSON log event (`drift_check`), the last
result on disk, a notification (control_plane/notify) and - when `VG_DRIFT_RETRAIN_ON_DRIFT=1` -
a pending retraining request that a person approves (`visionguard drift approve ID`); requests
opened and decided are notified too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from control_plane.errors import Conflict
from control_plane.mlflow_store import CHAMPION, mlflow_client, mlflow_store, store_for
from control_plane.notify import Notifier, notifier_for
from control_plane.settings import Settings
from tracker_service.drift_features import FEATURES, OUTPUT_CONF, drift_features
from tracker_service.nms import postprocess

log = logging.getLogger("visionguard.drift")

DETECTORS = ("ks", "mmd")
STRIDE = 32
NMS_IOU = 0.7  # the gateway's default
MAX_DET = 300


class DriftError(Conflict):
    """A check that cannot run: no champion, no lineage to rebuild its evaluation data..."""

    code = "drift_unavailable"


class NotEnoughData(DriftError):
    """The live window holds fewer samples than a check needs."""

    code = "insufficient_data"


class AlreadyDecided(Conflict):
    """A retraining request that was approved or rejected before."""


# --- the champion's detections, in-process ----------------------------------------------------

class OnnxDetector:
    """A model.onnx (uint8 NHWC in, raw head out) as the gateway sees it served: letterbox,
    onnxruntime, NMS, boxes back in the image's pixels."""

    def __init__(self, onnx_path: str | Path, imgsz: int, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.imgsz = imgsz

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tracker_service.letterbox import letterbox, to_original

        rgb, geo = letterbox(bgr, self.imgsz, STRIDE)
        raw = self.session.run(None, {self.input: rgb[None]})[0][0]
        dets = postprocess(raw, OUTPUT_CONF, NMS_IOU, MAX_DET)
        return dets[:, 4].copy(), to_original(dets[:, :4], geo)


def image_features(paths, detector) -> np.ndarray:
    """[N, len(FEATURES)]: each image file decoded as the gateway decodes it, then featurised."""
    rows = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DriftError(f"cannot decode evaluation image {path}")
        scores, boxes = detector(bgr)
        rows.append(drift_features(bgr, scores, boxes))
    return np.stack(rows) if rows else np.zeros((0, len(FEATURES)), np.float32)


# --- the reference window ---------------------------------------------------------------------

@dataclass
class ReferenceWindow:
    model: str
    version: str
    eval_dataset: str
    features: np.ndarray  # [N, len(FEATURES)]
    feature_names: tuple[str, ...] = FEATURES

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ref-", suffix=".npz")
        os.close(fd)
        np.savez(tmp, features=self.features, feature_names=np.array(self.feature_names),
                 meta=np.array(json.dumps({"model": self.model, "version": self.version,
                                           "eval_dataset": self.eval_dataset})))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ReferenceWindow | None:
        try:
            with np.load(path) as data:
                names = tuple(str(n) for n in data["feature_names"])
                meta = json.loads(str(data["meta"]))
                features = data["features"]
        except (OSError, KeyError, ValueError):
            return None
        if names != FEATURES:  # the feature set changed since: rebuild
            return None
        return cls(meta["model"], meta["version"], meta["eval_dataset"], features, names)


def champion_version(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        raise DriftError(f"registered model {name!r} has no {CHAMPION!r} version: {exc.message}"
                         ) from None


def rebuild_eval_split(tags: dict, out_dir: Path) -> list[Path]:
    """The version's evaluation images: the recorded evaluation data if it is still on this
    machine (versions from `visionguard models register`), else regenerated from the training
    lineage; either way checked against the recorded hash."""
    from control_plane.datasets import synthetic_data

    recorded = tags.get("eval_data_yaml")
    if recorded and Path(recorded).is_file():
        root = Path(recorded).parent
        if synthetic_data.dataset_hash(root, "val") == tags.get("eval_dataset_hash"):
            return sorted((root / "images" / "val").glob("*.jpg"))
    try:
        seed, n_val, imgsz = int(tags["seed"]), int(tags["n_val"]), int(tags["imgsz"])
        expected = tags["eval_dataset_hash"]
    except (KeyError, ValueError):
        raise DriftError("the version's tags do not say how to rebuild its evaluation data "
                         "(seed, n_val, imgsz, eval_dataset_hash)") from None
    synthetic_data.generate_dataset(out_dir, n_train=0, n_val=n_val, imgsz=imgsz, seed=seed)
    actual = synthetic_data.dataset_hash(out_dir, "val")
    if actual != expected:
        raise DriftError(f"rebuilt evaluation data {tags.get('eval_dataset')} has hash "
                         f"{actual[:12]}, the version recorded {expected[:12]}")
    return sorted((out_dir / "images" / "val").glob("*.jpg"))


def build_reference(settings: Settings, version: str | None = None, *,
                    tracking_uri: str | None = None) -> ReferenceWindow:
    """The reference window of `version` (default: the champion), from cache or built."""
    store = mlflow_store(tracking_uri) if tracking_uri else store_for(settings)
    client = mlflow_client(store)
    name = settings.model_name
    version = version or champion_version(client, name)
    cache = settings.drift_dir / f"reference-{name}-v{version}.npz"
    cached = ReferenceWindow.load(cache)
    if cached is not None:
        return cached
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise DriftError(f"{name} version {version}: {exc.message}") from None
    tags = dict(mv.tags or {})
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vg-drift-ref-") as tmp:
        images = rebuild_eval_split(tags, Path(tmp) / "data")
        try:
            onnx_path = client.download_artifacts(mv.run_id, "model/model.onnx", tmp)
        except MlflowException as exc:
            raise DriftError(f"{name} version {version} has no model/model.onnx artifact: "
                             f"{exc.message}") from None
        detector = OnnxDetector(onnx_path, int(tags.get("imgsz", 640)))
        features = image_features(images, detector)
    ref = ReferenceWindow(name, str(version), tags.get("eval_dataset", ""), features)
    ref.save(cache)
    log.info("drift reference built", extra={
        "event": "drift_reference", "model": name, "version": str(version),
        "eval_dataset": ref.eval_dataset, "samples": len(features),
        "seconds": round(time.monotonic() - t0, 2)})
    return ref


# --- detectors -------------------------------------------------------------------------------

@dataclass
class DriftResult:
    model: str
    version: str
    checked_at: float
    n_reference: int
    n_live: int
    p_value: float  # the configured family-wise level
    drift: bool
    detectors: dict  # {"ks": {drift, threshold, features: {name: {p_value, distance}}},
    #                    "mmd": {drift, threshold, p_value, distance, distance_threshold}}
    drifted_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class DriftDetector:
    """KS + MMD against one reference window; `check(live)` is deterministic for given data."""

    def __init__(self, reference: np.ndarray, *, p_value: float = 0.05,
                 n_permutations: int = 200, seed: int = 0) -> None:
        from alibi_detect.cd import KSDrift, MMDDrift

        reference = np.asarray(reference, np.float32)
        if reference.ndim != 2 or reference.shape[1] != len(FEATURES) or len(reference) < 10:
            raise DriftError(f"reference window must be [>=10, {len(FEATURES)}], "
                             f"got {reference.shape}")
        self.reference = reference
        self.p_value = p_value
        self.per_detector = p_value / len(DETECTORS)
        self.seed = seed
        self.mean = reference.mean(0)
        spread = reference.std(0)
        self.scale = np.where(spread > 1e-6, spread, 1.0).astype(np.float32)
        self.ks = KSDrift(reference, p_val=self.per_detector, correction="bonferroni")
        with self._seeded():
            self.mmd = MMDDrift(self._standardise(reference), backend="pytorch",
                                p_val=self.per_detector, n_permutations=n_permutations,
                                device="cpu")
        self._lock = threading.Lock()

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)

    @contextlib.contextmanager
    def _seeded(self):
        """MMD's permutations from a fixed seed, without touching the process's torch RNG."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            yield

    def check(self, live: np.ndarray) -> dict:
        live = np.asarray(live, np.float32)
        if live.ndim != 2 or live.shape[1] != len(FEATURES):
            raise DriftError(f"live window must be [n, {len(FEATURES)}], got {live.shape}")
        with self._lock:
            # "batch": the threshold is Bonferroni-corrected over the features ("feature"
            # would compare each p-value with the uncorrected level).
            ks = self.ks.predict(live, drift_type="batch")["data"]
            with self._seeded():
                mmd = self.mmd.predict(self._standardise(live))["data"]
        ks_p = np.asarray(ks["p_val"], float).reshape(-1)
        ks_d = np.asarray(ks["distance"], float).reshape(-1)
        ks_threshold = float(ks["threshold"])
        features = {n: {"p_value": float(p), "distance": float(d)}
                    for n, p, d in zip(FEATURES, ks_p, ks_d)}
        ks_drift = bool(ks["is_drift"])
        mmd_p = float(mmd["p_val"])
        mmd_drift = mmd_p < self.per_detector
        return {
            "ks": {"drift": ks_drift, "threshold": ks_threshold, "features": features},
            "mmd": {"drift": bool(mmd_drift), "threshold": self.per_detector,
                    "p_value": mmd_p, "distance": float(mmd["distance"]),
                    "distance_threshold": float(mmd["distance_threshold"])},
        }


def drifted(detectors: dict) -> list[str]:
    threshold = detectors["ks"]["threshold"]
    feats = detectors["ks"]["features"]
    return sorted((n for n, f in feats.items() if f["p_value"] < threshold),
                  key=lambda n: feats[n]["p_value"])


# --- the live window -------------------------------------------------------------------------

class LiveWindow:
    """The last `size` feature samples gateways sent, with the model version that served each.

    With a `path`, every batch added is written there (atomically: temp file + rename) before
    `add` returns, and the window is read back at start, so a control-plane restart keeps what
    the gateways sent: at most `size` samples, a few KB. A file from another feature set or an
    unreadable one starts an empty window.
    """

    def __init__(self, size: int, path: Path | None = None) -> None:
        self._rows: deque[tuple[np.ndarray, str]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.path = path
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, values: np.ndarray, versions: list[str]) -> None:
        with self._lock:
            for row, version in zip(np.asarray(values, np.float32), versions):
                self._rows.append((row, version))
            if self.path is not None:
                self._save(self.path)

    def features(self, version: str | None = None) -> np.ndarray:
        """The window's samples served by `version` (or of unknown version); all if None."""
        with self._lock:
            rows = [r for r, v in self._rows if version is None or v in ("", version)]
        return np.stack(rows) if rows else np.zeros((0, len(FEATURES)), np.float32)

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for r, _ in self._rows]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".live-", suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, features=np.stack(rows) if rows else
                     np.zeros((0, len(FEATURES)), np.float32),
                     versions=np.array([v for _, v in self._rows], dtype=str),
                     feature_names=np.array(FEATURES))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, path: Path) -> None:
        try:
            with np.load(path) as data:
                names = tuple(str(n) for n in data["feature_names"])
                features = np.asarray(data["features"], np.float32)
                versions = [str(v) for v in data["versions"]]
        except FileNotFoundError:
            return
        except (OSError, KeyError, ValueError) as exc:
            log.warning("live drift window %s unreadable, starting an empty one: %s", path, exc,
                        extra={"event": "drift_window_unreadable"})
            return
        if names != FEATURES or features.ndim != 2 or len(features) != len(versions):
            return
        for row, version in zip(features, versions):
            self._rows.append((row, version))


# --- retraining requests ---------------------------------------------------------------------

class RetrainingRequests:
    """Pending and decided retraining requests, one JSON file written atomically; each request
    opened or decided is notified (when a notifier is given)."""

    def __init__(self, path: Path, notifier: Notifier | None = None) -> None:
        self.path = path
        self.notifier = notifier
        self._lock = threading.Lock()

    def _tell(self, request: dict, summary: str) -> None:
        if self.notifier is None:
            return
        state = request["state"]  # pending, approved, rejected
        self.notifier.notify("retraining_requested" if state == "pending" else
                             f"retraining_{state}",
                             f"{request['model']} version {request['version']}: {summary}",
                             model=request["model"], version=request["version"],
                             actor=request.get("decided_by"), request=request)

    def all(self) -> list[dict]:
        try:
            return json.loads(self.path.read_text())["requests"]
        except FileNotFoundError:
            return []

    def _write(self, requests: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".retraining-")
        with os.fdopen(fd, "w") as f:
            json.dump({"requests": requests}, f, indent=2)
        os.replace(tmp, self.path)

    def open(self, result: DriftResult) -> dict | None:
        """A pending request for this drift event; None when one is pending already."""
        with self._lock:
            requests = self.all()
            if any(r["state"] == "pending" for r in requests):
                return None
            request = {"id": uuid.uuid4().hex[:8], "state": "pending",
                       "created_at": result.checked_at, "model": result.model,
                       "version": result.version,
                       "drifted_features": result.drifted_features,
                       "mmd_p_value": result.detectors["mmd"]["p_value"]}
            self._write(requests + [request])
        self._tell(request, f"retraining requested ({request['id']}), waiting for approval")
        return request

    def decide(self, request_id: str, state: str, by: str) -> dict:
        with self._lock:
            requests = self.all()
            for r in requests:
                if r["id"] == request_id:
                    if r["state"] != "pending":
                        raise AlreadyDecided(f"retraining request {request_id} is {r['state']}")
                    r.update(state=state, decided_by=by, decided_at=time.time())
                    self._write(requests)
                    break
            else:
                raise KeyError(request_id)
        self._tell(r, f"retraining request {request_id} {state} by {by}")
        return r


# --- the monitor: window + detectors + results --------------------------------------------------

class DriftMonitor:
    """What the control plane holds: the live window, a detector per reference version, the
    last result; `check()` runs one comparison and publishes it."""

    def __init__(self, settings: Settings, metrics, reference_builder=build_reference) -> None:
        self.settings = settings
        self.metrics = metrics
        # Persisted beside the reference windows: a restart keeps the gateways' samples.
        self.window = LiveWindow(settings.drift_window, settings.drift_dir / "live-window.npz")
        metrics.drift_window_samples.set(len(self.window))
        self.notifier = notifier_for(settings)
        self.retraining = RetrainingRequests(settings.drift_dir / "retraining.json",
                                             self.notifier)
        self._build_reference = reference_builder
        self._detectors: dict[str, tuple[ReferenceWindow, DriftDetector]] = {}
        self._check_lock = threading.Lock()
        self.last: DriftResult | None = self._load_last()

    def _load_last(self) -> DriftResult | None:
        try:
            return DriftResult(**json.loads((self.settings.drift_dir / "last.json").read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def receive(self, values: np.ndarray, versions: list[str]) -> None:
        self.window.add(values, versions)
        self.metrics.drift_features_received.inc(len(versions))
        self.metrics.drift_window_samples.set(len(self.window))

    def detector(self, version: str | None = None) -> tuple[ReferenceWindow, DriftDetector]:
        ref = self._build_reference(self.settings, version)
        cached = self._detectors.get(ref.version)
        if cached is None:
            cached = (ref, DriftDetector(ref.features, p_value=self.settings.drift_p_value,
                                         n_permutations=self.settings.drift_permutations))
            self._detectors = {ref.version: cached}
        return cached

    def check(self, version: str | None = None) -> DriftResult:
        with self._check_lock:
            try:
                return self._check(version)
            except NotEnoughData:
                self.metrics.drift_checks.labels("insufficient_data").inc()
                raise
            except Exception as exc:
                self.metrics.drift_checks.labels("error").inc()
                log.warning("drift check failed", extra={
                    "event": "drift_check_failed", "error": f"{type(exc).__name__}: {exc}"})
                raise

    def _check(self, version: str | None) -> DriftResult:
        result = self.compare(version)
        self._publish(result)
        return result

    def compare(self, version: str | None = None) -> DriftResult:
        """The live window against the reference, without publishing (reports use it)."""
        ref, detector = self.detector(version)
        live = self.window.features(ref.version)
        if len(live) < self.settings.drift_min_samples:
            raise NotEnoughData(
                f"the live window holds {len(live)} samples served by {ref.model} version "
                f"{ref.version}; a check needs {self.settings.drift_min_samples}",
                window=len(self.window)) from None
        detectors = detector.check(live)
        return DriftResult(ref.model, ref.version, time.time(), len(ref.features), len(live),
                           self.settings.drift_p_value,
                           detectors["ks"]["drift"] or detectors["mmd"]["drift"],
                           detectors, drifted(detectors))

    def _publish(self, result: DriftResult) -> None:
        m = self.metrics
        for name, f in result.detectors["ks"]["features"].items():
            m.drift_p_value.labels("ks", name).set(f["p_value"])
            m.drift_distance.labels("ks", name).set(f["distance"])
        mmd = result.detectors["mmd"]
        m.drift_p_value.labels("mmd", "all").set(mmd["p_value"])
        m.drift_distance.labels("mmd", "all").set(mmd["distance"])
        for d in DETECTORS:
            m.drift_detected.labels(d).set(1 if result.detectors[d]["drift"] else 0)
        m.drift_detected.labels("any").set(1 if result.drift else 0)
        m.drift_checks.labels("drift" if result.drift else "no_drift").inc()
        m.drift_last_check.set(result.checked_at)
        self.last = result
        path = self.settings.drift_dir / "last.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last-")
        with os.fdopen(fd, "w") as f:
            json.dump(result.to_dict(), f)
        os.replace(tmp, path)
        event = {"event": "drift_check", "model": result.model, "version": result.version,
                 "drift": result.drift, "n_live": result.n_live,
                 "n_reference": result.n_reference, "drifted_features": result.drifted_features,
                 "mmd_p_value": mmd["p_value"], "mmd_distance": mmd["distance"]}
        if result.drift:
            log.warning("drift alert: data drift detected on %s (MMD p=%.3g, distance %.3g; "
                        "%d live vs %d reference samples)",
                        ", ".join(result.drifted_features) or "the joint distribution",
                        mmd["p_value"], mmd["distance"], result.n_live, result.n_reference,
                        extra=event)
            self.notifier.notify(
                "drift_alert", f"{result.model} version {result.version}: data drift on "
                f"{', '.join(result.drifted_features) or 'the joint distribution'} (MMD "
                f"p={mmd['p_value']:.3g}; {result.n_live} live vs {result.n_reference} "
                "reference samples)", model=result.model, version=result.version,
                drifted_features=result.drifted_features, mmd_p_value=mmd["p_value"],
                mmd_distance=mmd["distance"], n_live=result.n_live,
                n_reference=result.n_reference)
            if self.settings.drift_retrain_on_drift:
                request = self.retraining.open(result)
                if request is not None:
                    log.warning("retraining requested; waiting for approval", extra={
                        "event": "drift_retraining_requested", **request})
        else:
            log.info("no data drift", extra=event)
        m.drift_retraining_pending.set(
            sum(1 for r in self.retraining.all() if r["state"] == "pending"))
