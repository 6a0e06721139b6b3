"""Promotion, canary and rollback of registered versions into the running Triton.

    promote(N): materialise version N's registered ONNX as model_repository/<model>/<N>/
      (staging folder + rename) -> add N to config.pbtxt's version policy and load (explicit
      mode) -> version N READY? -> smoke + parity on golden images -> gates (accuracy vs the
      champion, p95 latency budget) -> aliases: previous = champion, champion = N -> after the
      gateways have had time to follow the routing, the version before `previous` unloads.
    canary(N, p): the same checks, then `challenger` = N with p% of streams; promote or abort.
    rollback: champion = previous (or --to V, loaded first if needed); the rolled-back version
      unloads after the drain.

The champion never leaves Triton's version policy while another version is being checked, and
gateways always ask for an explicit version (the routing), so a failing candidate changes
nothing that serves. A rejected candidate's folder is removed (renamed aside, then deleted) and
its config entry restored, so nothing half-written stays in the repository. One operation at a
time: an exclusive lock file in the runtime directory, shared by the CLI and the API server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from control_plane.audit import AuditLog
from control_plane.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry, VersionInfo
from control_plane.settings import Settings
from export import triton_repo

log = logging.getLogger("visionguard.promotion")
MODEL_PY = triton_repo.REPO_TEMPLATES / "detector" / "model.py"


class PromotionError(Exception):
    """An operation refused before anything changed (bad state, busy, unknown version)."""

    kind = "conflict"

    def __init__(self, message: str, **details) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Busy(PromotionError):
    kind = "busy"


class CandidateRejected(PromotionError):
    """A check or gate failed; the candidate was removed and the champion keeps serving."""

    kind = "rejected"


@dataclass
class StepResult:
    step: str
    ok: bool
    seconds: float
    detail: dict = field(default_factory=dict)


@dataclass
class OperationResult:
    action: str
    version: str
    routing: dict
    steps: list[StepResult]
    seconds: float

    def as_dict(self) -> dict:
        return {"action": self.action, "version": self.version, "routing": self.routing,
                "seconds": round(self.seconds, 3),
                "steps": [{"step": s.step, "ok": s.ok, "seconds": round(s.seconds, 3),
                           **s.detail} for s in self.steps]}


# --- Triton -----------------------------------------------------------------------------------

class TritonServer:
    """The calls promotion makes to one Triton (HTTP, model control in explicit mode)."""

    def __init__(self, address: str) -> None:
        import tritonclient.http as httpclient

        self.address = address
        self.client = httpclient.InferenceServerClient(address, network_timeout=300.0,
                                                       connection_timeout=10.0)

    def load(self, model: str) -> None:
        self.client.load_model(model)

    def version_state(self, model: str, version: int) -> tuple[str, str]:
        """(state, reason) from the repository index: READY, UNAVAILABLE (+ why), ..."""
        for entry in self.client.get_model_repository_index():
            if entry.get("name") == model and str(entry.get("version")) == str(version):
                return entry.get("state", ""), entry.get("reason", "")
        return "UNKNOWN", "not in Triton's repository index"

    def wait_ready(self, model: str, version: int, timeout_s: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        state, reason = "UNKNOWN", ""
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(model, str(version)):
                    return True, "READY"
            except Exception as exc:  # noqa: BLE001 - Triton busy loading: try again
                reason = str(exc)
            state, reason = self.version_state(model, version)
            if state == "UNAVAILABLE" and reason:
                return False, f"{state}: {reason}"
            time.sleep(0.25)
        return False, f"not READY after {timeout_s:.0f} s (state {state} {reason})".strip()

    def infer_raw(self, model: str, version: int, rgb: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(detections [K, 6], raw head output [C, N]) of one letterboxed image."""
        import tritonclient.http as httpclient

        images = httpclient.InferInput("images", [1, *rgb.shape], "UINT8")
        images.set_data_from_numpy(rgb[None])
        flag = httpclient.InferInput("return_raw", [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True]]))
        result = self.client.infer(model, [images, flag], model_version=str(version))
        count = int(result.as_numpy("num_detections")[0, 0])
        return result.as_numpy("detections")[0][:count], result.as_numpy("raw")[0]


def triton_addresses(settings: Settings) -> list[str]:
    """Every Triton that serves the repository: `VG_TRITON_CONTROL_HOSTS` (host:port, comma-
    separated; a name with several addresses, such as a headless Service, counts each), else
    the local one. Resolved at each operation, so scaled-out pods are all reached."""
    import socket

    entries = [e.strip() for e in settings.triton_control_hosts.split(",") if e.strip()]
    if not entries:
        return [f"{settings.host}:{settings.triton_http_port}"]
    addresses: list[str] = []
    for entry in entries:
        host, _, port = entry.rpartition(":")
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        for ip in sorted({info[4][0] for info in infos}):
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses


class TritonControl:
    """Promotion's view of the serving fleet: every call goes to every Triton."""

    def __init__(self, settings: Settings) -> None:
        self.servers = [TritonServer(a) for a in triton_addresses(settings)]

    def load(self, model: str) -> None:
        for server in self.servers:
            server.load(model)

    def wait_ready(self, model: str, version: int, timeout_s: float) -> tuple[bool, str]:
        for server in self.servers:
            ok, reason = server.wait_ready(model, version, timeout_s)
            if not ok:
                return False, f"{reason} (Triton {server.address})" if len(self.servers) > 1 \
                    else reason
        return True, "READY"


# --- golden images ------------------------------------------------------------------------------

def golden_images(imgsz: int, stride: int) -> list[tuple[str, np.ndarray]]:
    """Letterboxed RGB images every candidate must answer sanely: Ultralytics' bus.jpg and
    zidane.jpg (shipped with the package) and two generated shape scenes."""
    import cv2
    import ultralytics

    from control_plane.synthetic_data import render_sample, sample_rng
    from tracker_service.letterbox import letterbox

    assets = Path(ultralytics.__file__).parent / "assets"
    images = [(name, cv2.imread(str(assets / name))) for name in ("bus.jpg", "zidane.jpg")]
    for i in range(2):  # seed 1234: not a seed any training set here uses
        images.append((f"shapes-{i}", render_sample(sample_rng(1234, "val", i), imgsz).image))
    return [(name, np.ascontiguousarray(letterbox(bgr, imgsz, stride)[0]))
            for name, bgr in images]


# --- the operations -------------------------------------------------------------------------------

class Promoter:
    def __init__(self, settings: Settings | None = None, actor: str = "cli",
                 progress: Callable[[str], None] | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings or Settings()
        self.registry = registry or Registry(self.settings)
        self.model = self.registry.name
        self.model_dir = self.settings.model_repository / self.model
        self.audit = AuditLog(self.settings.audit_file)
        self.actor = actor
        self.progress = progress or (lambda _step: None)
        self._triton: TritonControl | None = None

    @property
    def triton(self) -> TritonControl:
        if self._triton is None:
            self._triton = TritonControl(self.settings)
        return self._triton

    # --- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self, action: str) -> Iterator[None]:
        path = self.settings.runtime_dir / "promotion.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise Busy(f"another release operation is running ({f.read().strip()}); "
                           "try again when it ends") from None
            f.seek(0)
            f.truncate()
            f.write(f"{action} by {self.actor} since {time.strftime('%H:%M:%S')}")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def _served(self) -> set[int]:
        listed = triton_repo.served_versions(self.model_dir)
        if listed is not None:
            return set(listed)
        routing = self.registry.routing()
        keep = {v for v in (routing.champion, routing.challenger,
                            self.registry.alias(PREVIOUS)) if v}
        on_disk = set(triton_repo.versions(self.model_dir))
        return {int(v) for v in keep if int(v) in on_disk} or on_disk

    def _apply_served(self, versions: set[int] | None) -> None:
        """Write the version policy (None: `all`) and ask Triton to load the model with it:
        added versions load, removed ones unload (after their in-flight requests), the rest
        keep serving."""
        triton_repo.set_served_versions(self.model_dir,
                                        None if versions is None else sorted(versions))
        self.triton.load(self.model)

    def _step(self, steps: list[StepResult], name: str, version: str, fn, *args):
        self.progress(name)
        t0 = time.monotonic()
        try:
            detail = fn(*args) or {}
        except Exception as exc:
            reason = exc.message if isinstance(exc, PromotionError) else \
                f"{type(exc).__name__}: {exc}"
            details = exc.details if isinstance(exc, PromotionError) else {}
            steps.append(StepResult(name, False, time.monotonic() - t0,
                                    {"reason": reason, **details}))
            raise
        steps.append(StepResult(name, True, time.monotonic() - t0, detail))
        if name.startswith("gate_"):  # the version keeps its gate results
            self.registry.tag_version(version, **{name: json.dumps(detail, default=str)})
        self.audit.record(self.actor, f"step:{name}", model=self.model, version=version,
                          step=name, seconds=round(time.monotonic() - t0, 3), **detail)
        return detail

    def _drain(self) -> None:
        """Give every gateway time to pick up the new routing before a version unloads."""
        self.progress("draining")
        time.sleep(self.settings.routing_drain_s)

    # --- checks ---------------------------------------------------------------------------------

    @staticmethod
    def _names(candidate: VersionInfo, onnx_path: Path) -> dict[int, str]:
        """The candidate's class names: its registry tag, else the ONNX file's metadata."""
        if candidate.names:
            return candidate.names
        from export.onnx_export import read_contract

        try:
            return read_contract(onnx_path)[0]
        except Exception:  # noqa: BLE001 - an unreadable file fails to load later, with reason
            return {}

    def _contract(self, candidate: VersionInfo, onnx_path: Path) -> dict:
        params = triton_repo.config_parameters(self.model_dir)
        served = {int(k): v for k, v in json.loads(params.get("class_names", "{}")).items()}
        names = self._names(candidate, onnx_path)
        if not names:
            raise CandidateRejected(f"version {candidate.version} records no class names "
                                    "(register it with `visionguard models register`)")
        if served and names != served:
            raise CandidateRejected(
                f"wrong output contract: version {candidate.version} has {len(names)} classes "
                f"{sorted(names.values())[:6]}, the served model {len(served)} "
                f"{sorted(served.values())[:6]}; a new class set is a new model name",
                candidate_classes=len(names), served_classes=len(served))
        return {"classes": len(names)}

    def materialise(self, candidate: VersionInfo) -> tuple[Path, bool]:
        """model_repository/<model>/<N>/ from the registered ONNX (atomically). Returns the
        folder and whether this call wrote it."""
        vdir = self.model_dir / candidate.version
        if vdir.exists():
            return vdir, False
        with tempfile.TemporaryDirectory(prefix="vg-promote-") as tmp:
            try:
                onnx_path = self.registry.download(candidate, "model/model.onnx", Path(tmp))
            except Exception as exc:  # noqa: BLE001 - artifact store errors vary by backend
                raise CandidateRejected(f"cannot fetch version {candidate.version}'s ONNX "
                                        f"artifact: {exc}") from None
            names = self._names(candidate, onnx_path)
            names_json = Path(tmp) / "names.json"
            names_json.write_text(json.dumps({str(k): v for k, v in names.items()}))
            triton_repo.clean_staging(self.model_dir)
            if not (self.model_dir / "config.pbtxt").exists():
                from export.onnx_export import read_contract

                _, stride, imgsz = read_contract(onnx_path)
                triton_repo.write_config(self.model_dir, triton_repo.cpu_config(
                    triton_repo.DetectorConfig(names=names, stride=stride, imgsz=imgsz),
                    self.model))
            triton_repo.write_version(self.model_dir, int(candidate.version), {
                "model.onnx": onnx_path, "model.py": MODEL_PY, "names.json": names_json})
        return vdir, True

    def _load(self, version: int, served: set[int]) -> dict:
        try:
            self._apply_served(served | {version})
        except Exception as exc:  # noqa: BLE001 - Triton's load error carries the reason
            ok, reason = False, str(exc)
        else:
            ok, reason = self.triton.wait_ready(self.model, version, self.settings.load_timeout_s)
        if not ok:
            raise CandidateRejected(f"version {version} failed to load in Triton: {reason}")
        return {"state": "READY"}

    def _smoke_and_parity(self, candidate: VersionInfo, onnx_path: Path) -> dict:
        import onnxruntime as ort
        from tritonclient.utils import InferenceServerException

        params = triton_repo.config_parameters(self.model_dir)
        imgsz, stride = int(params.get("imgsz", 640)), int(params.get("stride", 32))
        nc = len(self._names(candidate, onnx_path))
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        worst, detections = 0.0, {}
        for (name, rgb), server in ((g, s) for g in golden_images(imgsz, stride)
                                    for s in self.triton.servers):
            try:
                dets, raw = server.infer_raw(self.model, int(candidate.version), rgb)
            except InferenceServerException as exc:
                raise CandidateRejected(f"smoke test on {name} failed: {exc.message()}",
                                        image=name, triton=server.address) from None
            if raw.ndim != 2 or raw.shape[0] != 4 + nc:
                raise CandidateRejected(
                    f"wrong tensor shapes: raw output {list(raw.shape)} on {name}, expected "
                    f"[{4 + nc}, N] for {nc} classes", image=name)
            if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(dets))):
                raise CandidateRejected(f"non-finite outputs (NaN/inf) on {name}", image=name)
            reference = session.run(None, {"images": rgb[None]})[0][0]
            span = float(reference.max() - reference.min()) or 1.0
            diff = float(np.max(np.abs(reference - raw))) / span
            worst = max(worst, diff)
            if diff > self.settings.parity_rtol:
                raise CandidateRejected(
                    f"parity: Triton's output differs from onnxruntime on the registered ONNX "
                    f"by {diff:.2e} x range on {name} (limit {self.settings.parity_rtol:g})",
                    image=name)
            detections[name] = int(len(dets))
        return {"images": len(detections), "tritons": len(self.triton.servers),
                "max_rel_diff": round(worst, 8), "detections": detections}

    def _accuracy_gate(self, candidate: VersionInfo, champion: VersionInfo | None) -> dict:
        tol = self.settings.gate_map_tolerance
        if candidate.map is None:
            raise CandidateRejected(f"version {candidate.version} has no recorded mAP50-95")
        if champion is None:
            return {"mAP50-95": candidate.map, "champion": None, "tolerance": tol}
        reference, how = champion.map, "recorded"
        if (champion.tags.get("eval_dataset_hash") != candidate.tags.get("eval_dataset_hash")
                or reference is None):
            # Not measured on the same data: evaluate the champion's checkpoint on the
            # candidate's evaluation set, so the comparison is like for like.
            from control_plane import training

            with tempfile.TemporaryDirectory(prefix="vg-gate-") as tmp:
                ckpt = self.registry.download(champion, "model/best.pt", Path(tmp))
                reference = training.evaluate(
                    ckpt, candidate.tags["eval_data_yaml"],
                    imgsz=int(champion.tags.get("imgsz", 640)))["mAP50-95"]
            how = "re-evaluated on the candidate's dataset"
        detail = {"mAP50-95": round(candidate.map, 4), "champion_mAP50-95": round(reference, 4),
                  "champion": champion.version, "tolerance": tol, "reference": how,
                  "eval_dataset": candidate.eval_dataset}
        if candidate.map < reference - tol:
            raise CandidateRejected(
                f"accuracy gate: mAP50-95 {candidate.map:.4f} is below the champion's "
                f"{reference:.4f} by more than {tol:g} on {candidate.eval_dataset}", **detail)
        return detail

    def _latency_gate(self, candidate: VersionInfo) -> dict:
        from control_plane import perf

        params = triton_repo.config_parameters(self.model_dir)
        with tempfile.TemporaryDirectory(prefix="vg-gate-perf-") as tmp:
            try:
                rows = perf.run_perf_analyzer(
                    self.settings, concurrency="1:1:1", measurement_ms=1500,
                    csv_path=Path(tmp) / "perf.csv", version=candidate.version,
                    imgsz=int(params.get("imgsz", 640)),
                    # The gate needs a p95 over a few hundred requests, not a steady state: on
                    # a busy machine perf_analyzer's stability rule would refuse to answer.
                    extra_args=["--max-trials", "3", "--stability-percentage", "1000"])
            except (RuntimeError, FileNotFoundError) as exc:
                raise CandidateRejected(f"latency gate: perf_analyzer failed: {exc}") from None
        row = rows[0]
        p50, p95 = float(row["p50 latency"]) / 1000, float(row["p95 latency"]) / 1000
        throughput = float(row["Inferences/Second"])
        self.registry.tag_version(candidate.version, latency_p50_ms=f"{p50:.2f}",
                                  latency_p95_ms=f"{p95:.2f}",
                                  throughput_infer_per_s=f"{throughput:.1f}",
                                  latency_source="perf_analyzer c=1 grpc")
        detail = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                  "infer_per_s": round(throughput, 1), "budget_ms": self.settings.gate_p95_ms}
        if p95 > self.settings.gate_p95_ms:
            raise CandidateRejected(f"latency gate: p95 {p95:.1f} ms over the budget of "
                                    f"{self.settings.gate_p95_ms:g} ms", **detail)
        return detail

    def _admit(self, version: str, steps: list[StepResult]) -> None:
        """Everything before routing changes: materialise, load, check, gate. On failure the
        candidate is unloaded and removed, the config restored, and CandidateRejected raised."""
        candidate = self.registry.get(version)
        champion_v = self.registry.alias(CHAMPION)
        champion = self.registry.get(champion_v) if champion_v else None
        served = self._served()
        policy_before = triton_repo.served_versions(self.model_dir)
        wrote = False
        try:
            def export() -> dict:
                nonlocal wrote
                vdir, wrote = self.materialise(candidate)
                return {"path": str(vdir), "written": wrote}

            self._step(steps, "export", version, export)
            onnx_path = self.model_dir / version / "model.onnx"
            self._step(steps, "contract", version, self._contract, candidate, onnx_path)
            self._step(steps, "load", version, self._load, int(version), served)
            self._step(steps, "smoke_parity", version, self._smoke_and_parity, candidate,
                       onnx_path)
            self._step(steps, "gate_accuracy", version, self._accuracy_gate, candidate,
                       champion)
            self._step(steps, "gate_latency", version, self._latency_gate, candidate)
        except Exception as error:  # noqa: BLE001 - any failure: restore, then say why
            exc = error if isinstance(error, CandidateRejected) else CandidateRejected(
                f"{type(error).__name__}: {error}")
            step = steps[-1].step if steps and not steps[-1].ok else "export"
            self.progress("restoring")
            # The folder goes first: under an `all` policy, reloading with it still on disk
            # would keep the candidate loaded.
            if wrote:
                triton_repo.remove_version(self.model_dir, int(version))
            if int(version) not in served:
                self._apply_served(policy_before)  # exactly the policy we found
            self.registry.tag_version(version, status="rejected", rejected_step=step,
                                      rejection_reason=exc.message[:500])
            self.audit.record(self.actor, "reject", model=self.model, version=version,
                              outcome="rejected", step=step, reason=exc.message,
                              steps=[s.__dict__ for s in steps])
            exc.details.setdefault("step", step)
            exc.details.setdefault("steps", [{"step": s.step, "ok": s.ok,
                                              "seconds": round(s.seconds, 3), **s.detail}
                                             for s in steps])
            if exc is error:
                raise
            raise exc from error

    def _result(self, action: str, version: str, steps: list[StepResult], t0: float
                ) -> OperationResult:
        return OperationResult(action, version, self.registry.routing().as_dict(), steps,
                               time.monotonic() - t0)

    def _routing_for(self, version: str):
        """The routing, if `version` may become challenger or champion now."""
        routing = self.registry.routing()
        if routing.champion == version:
            raise PromotionError(f"version {version} is already the champion")
        if routing.challenger and routing.challenger != version:
            raise PromotionError(f"a canary of version {routing.challenger} is running: "
                                 "promote or abort it first")
        return routing

    # --- public operations ------------------------------------------------------------------------

    def promote(self, version: str | int) -> OperationResult:
        version = str(version)
        t0, steps = time.monotonic(), []
        with self._exclusive(f"promote {version}"):
            routing = self._routing_for(version)
            self.audit.record(self.actor, "promote", model=self.model, version=version,
                              outcome="started", champion=routing.champion)
            if routing.challenger != version:  # a running canary already passed the checks
                self._admit(version, steps)
            old = routing.champion
            self.progress("routing")
            if old:
                self.registry.set_alias(PREVIOUS, old)
            self.registry.set_alias(CHAMPION, version)
            self.registry.delete_alias(CHALLENGER)
            self.registry.set_canary_percent(0)
            self.registry.tag_version(version, status="champion",
                                      promoted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()),
                                      promoted_by=self.actor)
            steps.append(StepResult("alias", True, 0.0, {"champion": version, "previous": old}))
            self._drain()
            keep = {int(version)} | ({int(old)} if old else set())
            self._apply_served(keep)
            steps.append(StepResult("unload_old", True, 0.0, {"served": sorted(keep)}))
            result = self._result("promote", version, steps, t0)
            tags = self.registry.get(version).tags  # a canary's gates ran when it started
            gates = {k: json.loads(v) for k, v in tags.items() if k.startswith("gate_")}
            self.audit.record(self.actor, "promote", model=self.model, version=version,
                              previous=old, seconds=round(result.seconds, 3), gates=gates)
            return result

    def canary(self, version: str | int, percent: float) -> OperationResult:
        version = str(version)
        if not 0 < percent <= 100:
            raise PromotionError(f"canary percent must be in (0, 100], got {percent:g}")
        t0, steps = time.monotonic(), []
        with self._exclusive(f"canary {version}"):
            routing = self._routing_for(version)
            if routing.challenger != version:
                self.audit.record(self.actor, "canary", model=self.model, version=version,
                                  outcome="started", percent=percent)
                self._admit(version, steps)
                self.registry.set_alias(CHALLENGER, version)
            self.registry.set_canary_percent(percent)
            self.registry.tag_version(version, status="challenger")
            result = self._result("canary", version, steps, t0)
            self.audit.record(self.actor, "canary", model=self.model, version=version,
                              percent=percent, seconds=round(result.seconds, 3))
            return result

    def abort_canary(self) -> OperationResult:
        t0 = time.monotonic()
        with self._exclusive("canary abort"):
            routing = self.registry.routing()
            if not routing.challenger:
                raise PromotionError("no canary is running")
            version = routing.challenger
            self.registry.delete_alias(CHALLENGER)
            self.registry.set_canary_percent(0)
            self.registry.tag_version(version, status="canary_aborted")
            self._drain()
            self._apply_served(self._served() - {int(version)})
            result = self._result("canary_abort", version, [], t0)
            self.audit.record(self.actor, "canary_abort", model=self.model, version=version)
            return result

    def rollback(self, to: str | int | None = None) -> OperationResult:
        t0, steps = time.monotonic(), []
        with self._exclusive("rollback"):
            routing = self.registry.routing()
            current = routing.champion
            target = str(to) if to is not None else self.registry.alias(PREVIOUS)
            if not target:
                raise PromotionError("nothing to roll back to: no `previous` version (pass "
                                     "--to a registered version)")
            if target == current:
                raise PromotionError(f"version {target} is already the champion")
            info = self.registry.get(target)
            served = self._served()
            if int(target) not in served:  # an older version: load it before routing to it
                self.materialise(info)
                self._step(steps, "load", target, self._load, int(target), served)
                served = served | {int(target)}
            self.registry.set_alias(CHAMPION, target)
            self.registry.delete_alias(PREVIOUS)
            if routing.challenger:
                self.registry.delete_alias(CHALLENGER)
                self.registry.set_canary_percent(0)
            if current:
                self.registry.tag_version(current, status="rolled_back")
            self.registry.tag_version(target, status="champion")
            steps.append(StepResult("alias", True, 0.0, {"champion": target,
                                                         "rolled_back": current}))
            self._drain()
            self._apply_served({int(target)})
            steps.append(StepResult("unload", True, 0.0, {"served": [int(target)]}))
            result = self._result("rollback", target, steps, t0)
            self.audit.record(self.actor, "rollback", model=self.model, version=target,
                              rolled_back=current, seconds=round(result.seconds, 3))
            return result


def serve_champion(settings: Settings, progress=None) -> VersionInfo | None:
    """For `up` on an empty repository: write the registered champion as its own version
    number (MLflow version N = Triton version N). None when no champion is registered."""
    registry = Registry(settings)
    champion = registry.alias(CHAMPION)
    if not champion:
        return None
    info = registry.get(champion)
    Promoter(settings, progress=progress, registry=registry).materialise(info)
    return info
