"""Promotion, canary and rollback of registered versions into the running Triton.

    promote(N): materialise version N's registered ONNX as model_repository/<model>/<N>/
      (staging folder + rename) -> add N to config.pbtxt's version policy and load (explicit
      mode) -> version N READY? -> smoke + parity on golden images -> gates (accuracy vs the
      champion, p95 latency budget) -> aliases: previous = champion, champion = N -> after the
      gateways have had time to follow the routing, the version before `previous` unloads.
    canary(N, p): the same checks, then `challenger` = N with p% of streams; promote or abort.
    rollback: champion = previous (or --to V, loaded first if needed); the rolled-back version
      unloads after the drain.
    shadow(N, p): N loaded as a promotion loads it, no gates (the shadow serves nobody) ->
      alias `shadow` = N and the share p; gateways mirror p% of the champion's requests to N in
      the background (tracker_service/shadow.py). stop_shadow: the alias and share go; after the
      drain N unloads unless it is the champion, the challenger or `previous`.

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

from control_plane.errors import Busy, Conflict, ControlPlaneError
from control_plane.mlflow_store import CHALLENGER, CHAMPION, PREVIOUS
from control_plane.notify import notifier_for
from control_plane.releases.audit import AuditLog
from control_plane.releases.fleet import TritonControl
from control_plane.releases.gates import CandidateRejected, GateContext, checks, class_names
from control_plane.releases.registry import SHADOW, Registry, VersionInfo
from control_plane.settings import Settings
from export import triton_repo
from export.checkpoint import CheckpointError, check_onnx

log = logging.getLogger("visionguard.promotion")
MODEL_PY = triton_repo.REPO_TEMPLATES / "detector" / "model.py"
__all__ = ["Busy", "CandidateRejected", "Promoter", "PromotionError", "serve_champion"]


class ShadowShareRefused(ControlPlaneError):
    """A shadow share outside (0, VG_SHADOW_MAX_PERCENT]."""

    code = "shadow_share_refused"


class PromotionError(Conflict):
    """An operation refused before anything changed (bad state, unknown alias target)."""


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


# --- the operations -------------------------------------------------------------------------------

class Promoter:
    def __init__(self, settings: Settings, actor: str = "cli",
                 progress: Callable[[str], None] | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings)
        self.model = self.registry.name
        self.model_dir = self.settings.model_repository / self.model
        self.audit = AuditLog(self.settings.audit_file)
        self.notifier = notifier_for(settings)
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
        keep = {v for v in (routing.champion, routing.challenger, routing.shadow,
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

    def _with_shadow(self, keep: set[int], champion: str) -> set[int]:
        """`keep` and the shadow version, which gateways still mirror to (`shadow`);
        a shadow that has become the champion stops being one."""
        shadow = self.registry.alias(SHADOW)
        if shadow == champion:
            self.registry.delete_alias(SHADOW)
            self.registry.set_shadow_percent(0)
            return keep
        return keep | ({int(shadow)} if shadow else set())

    def _step(self, steps: list[StepResult], name: str, version: str, fn, *args):
        self.progress(name)
        t0 = time.monotonic()
        try:
            detail = fn(*args) or {}
        except Exception as exc:
            reason = exc.message if isinstance(exc, ControlPlaneError) else \
                f"{type(exc).__name__}: {exc}"
            details = exc.details if isinstance(exc, ControlPlaneError) else {}
            steps.append(StepResult(name, False, time.monotonic() - t0,
                                    {"reason": reason, **details}))
            raise
        steps.append(StepResult(name, True, time.monotonic() - t0, detail))
        if name.startswith("gate_"):  # the version keeps its gate results
            self.registry.tag_version(version, **{name: json.dumps(detail, default=str)})
        self.audit.record(self.actor, f"step:{name}", model=self.model, version=version,
                          step=name, seconds=round(time.monotonic() - t0, 3), **detail)
        return detail

    def _tell(self, event: str, version: str, summary: str, **details) -> None:
        """The decision, to the configured channels (control_plane/notify): queued, never in
        the way of the operation."""
        self.notifier.notify(event, f"{self.model} version {version} {summary}",
                             model=self.model, version=version, actor=self.actor, **details)

    def _drain(self) -> None:
        """Give every gateway time to pick up the new routing before a version unloads."""
        self.progress("draining")
        time.sleep(self.settings.routing_drain_s)

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
            try:  # before Triton loads it: no custom ops, no external data outside the file
                check_onnx(onnx_path)
            except CheckpointError as exc:
                raise CandidateRejected(f"version {candidate.version}'s ONNX refused: {exc}"
                                        ) from None
            names = class_names(candidate, onnx_path)
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
                "model.onnx": onnx_path, "model.py": MODEL_PY, "names.json": names_json,
                **self.registry.serving_files(candidate, Path(tmp))})
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
            ctx = GateContext(self.settings, self.registry, self.model, self.model_dir,
                              self.triton, champion, self.model_dir / version / "model.onnx",
                              load=lambda v: self._load(v, served))
            for name, check in checks(self.settings):
                self._step(steps, name, version, check, candidate, ctx)
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
            self._tell("candidate_rejected", version, f"rejected at {step}: {exc.message}",
                       step=step, reason=exc.message)
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

    def promote(self, version: str | int, reason: str = "") -> OperationResult:
        """Make `version` the champion; `reason` (the automated analysis' verdict) goes to the
        audit log and the notification."""
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
            keep = self._with_shadow({int(version)} | ({int(old)} if old else set()), version)
            self._apply_served(keep)
            steps.append(StepResult("unload_old", True, 0.0, {"served": sorted(keep)}))
            result = self._result("promote", version, steps, t0)
            tags = self.registry.get(version).tags  # a canary's gates ran when it started
            gates = {k: json.loads(v) for k, v in tags.items() if k.startswith("gate_")}
            why = {"reason": reason} if reason else {}
            self.audit.record(self.actor, "promote", model=self.model, version=version,
                              previous=old, seconds=round(result.seconds, 3), gates=gates, **why)
            self._tell("promotion", version, f"is the champion (previous: {old or 'none'}; "
                       f"by {self.actor})" + (f": {reason}" if reason else ""),
                       previous=old, gates=gates, **why)
            return result

    def canary(self, version: str | int, percent: float) -> OperationResult:
        version = str(version)
        if not 0 < percent <= 100:
            raise PromotionError(f"canary percent must be in (0, 100], got {percent:g}")
        t0, steps = time.monotonic(), []
        with self._exclusive(f"canary {version}"):
            routing = self._routing_for(version)
            if routing.shadow == version:  # aborting the canary would unload the shadow
                raise PromotionError(f"version {version} is the shadow: stop it first "
                                     "(visionguard models shadow --stop)")
            if routing.challenger != version:
                self.audit.record(self.actor, "canary", model=self.model, version=version,
                                  outcome="started", percent=percent)
                self._admit(version, steps)
            self.registry.route(CHALLENGER, version, percent)
            self.registry.tag_version(version, status="challenger")
            result = self._result("canary", version, steps, t0)
            self.audit.record(self.actor, "canary", model=self.model, version=version,
                              percent=percent, seconds=round(result.seconds, 3))
            self._tell("canary_started", version, f"is the challenger with {percent:g}% of "
                       f"streams (by {self.actor})", percent=percent)
            return result

    def abort_canary(self, reason: str = "") -> OperationResult:
        """End the canary; `reason` (the automated analysis' verdict) goes to the audit log
        and the notification."""
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
            self.audit.record(self.actor, "canary_abort", model=self.model, version=version,
                              **({"reason": reason} if reason else {}))
            self._tell("canary_aborted", version, f"canary aborted (by {self.actor})"
                       + (f": {reason}" if reason else ""),
                       **({"reason": reason} if reason else {}))
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
            keep = self._with_shadow({int(target)}, target)
            self._apply_served(keep)
            steps.append(StepResult("unload", True, 0.0, {"served": sorted(keep)}))
            result = self._result("rollback", target, steps, t0)
            self.audit.record(self.actor, "rollback", model=self.model, version=target,
                              rolled_back=current, seconds=round(result.seconds, 3))
            self._tell("rollback", target, f"is the champion again: version {current} rolled "
                       f"back (by {self.actor})", rolled_back=current)
            return result

    def shadow(self, version: str | int, percent: float) -> OperationResult:
        """Mirror `percent`% of the champion's requests to `version` (or change the running
        shadow's share). A version that does not load is refused, and its folder and the
        version policy are restored as a rejected candidate's are."""
        version = str(version)
        limit = self.settings.shadow_max_percent
        if not 0 < percent <= limit:
            raise ShadowShareRefused(
                f"shadow percent must be in (0, {limit:g}], got {percent:g} (each mirrored "
                "request is a second inference; VG_SHADOW_MAX_PERCENT sets the maximum)",
                percent=percent, max_percent=limit)
        t0, steps = time.monotonic(), []
        with self._exclusive(f"shadow {version}"):
            routing = self.registry.routing()
            if not routing.champion:
                raise PromotionError("no champion to compare a shadow with: promote a version "
                                     "first")
            if version == routing.champion:
                raise PromotionError(f"version {version} is the champion: a shadow of it would "
                                     "compare the champion with itself")
            if version == routing.challenger:
                raise PromotionError(f"version {version} is the canary's challenger: it already "
                                     "serves a share of the traffic")
            if routing.shadow and routing.shadow != version:
                raise PromotionError(f"version {routing.shadow} is the shadow: stop it first "
                                     "(visionguard models shadow --stop)", shadow=routing.shadow)
            info = self.registry.get(version)  # UnknownVersion (404) when not registered
            served = self._served()
            if int(version) not in served:
                self._load_shadow(info, served, steps)
            self.registry.route(SHADOW, version, percent)
            result = self._result("shadow", version, steps, t0)
            self.audit.record(self.actor, "shadow", model=self.model, version=version,
                              percent=percent, champion=routing.champion,
                              seconds=round(result.seconds, 3))
            return result

    def stop_shadow(self) -> OperationResult:
        """End the shadow: no more mirrors; its version unloads unless something else serves
        it."""
        t0, steps = time.monotonic(), []
        with self._exclusive("shadow stop"):
            routing = self.registry.routing()
            if not routing.shadow:
                raise PromotionError("no shadow is running")
            version = routing.shadow
            self.registry.delete_alias(SHADOW)
            self.registry.set_shadow_percent(0)
            if version not in {self.registry.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}:
                self._drain()  # gateways stop mirroring before the version leaves Triton
                served = self._served() - {int(version)}
                self._apply_served(served)
                steps.append(StepResult("unload", True, 0.0, {"served": sorted(served)}))
            result = self._result("shadow_stop", version, steps, t0)
            self.audit.record(self.actor, "shadow_stop", model=self.model, version=version,
                              seconds=round(result.seconds, 3))
            return result

    def _load_shadow(self, info: VersionInfo, served: set[int],
                     steps: list[StepResult]) -> None:
        """Write and load the version as a promotion does; on failure put back the folder and
        the policy found (CandidateRejected says why)."""
        policy_before = triton_repo.served_versions(self.model_dir)
        wrote = False

        def load() -> dict:
            nonlocal wrote
            _, wrote = self.materialise(info)
            return self._load(int(info.version), served)

        try:
            self._step(steps, "load", info.version, load)
        except Exception as exc:
            self.progress("restoring")
            if wrote:
                triton_repo.remove_version(self.model_dir, int(info.version))
            self._apply_served(policy_before)
            self.audit.record(self.actor, "shadow", model=self.model, version=info.version,
                              outcome="refused", reason=str(exc))
            raise


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
