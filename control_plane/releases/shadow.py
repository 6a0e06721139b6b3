"""Shadow traffic, the release side: `visionguard models shadow N --percent P` and `--stop`.

    start(N, P): N registered, not the champion nor the canary's challenger, P within
      (0, VG_SHADOW_MAX_PERCENT] -> version N written into the live repository and loaded in
      every Triton (as a promotion loads it, no gates: the shadow serves nobody) -> alias
      `shadow` = N and the share P on the registered model; gateways follow the routing and
      mirror P% of the champion's requests to N in the background (tracker_service/shadow.py).
    stop: the alias and share go; after the drain version N unloads, unless it is the
      champion, the challenger or `previous`.

A version that does not load is refused and its folder and the version policy are restored, as
a rejected candidate's are. Both operations take the promoter's lock, so they never interleave
with a promotion, a canary or a rollback, and both go to the audit log.
"""

from __future__ import annotations

import time

from control_plane.errors import ControlPlaneError
from control_plane.mlflow_store import CHALLENGER, CHAMPION, PREVIOUS
from control_plane.releases.promoter import OperationResult, Promoter, PromotionError, StepResult
from control_plane.releases.registry import SHADOW
from export import triton_repo


class ShadowShareRefused(ControlPlaneError):
    """A shadow share outside (0, the configured maximum]."""

    code = "shadow_share_refused"


def start(promoter: Promoter, version: str | int, percent: float) -> OperationResult:
    """Mirror `percent`% of the champion's requests to `version` (or change the share of the
    running shadow)."""
    p, version = promoter, str(version)
    limit = p.settings.shadow_max_percent
    if not 0 < percent <= limit:
        raise ShadowShareRefused(
            f"shadow percent must be in (0, {limit:g}], got {percent:g} (each mirrored request "
            "is a second inference; VG_SHADOW_MAX_PERCENT sets the maximum)",
            percent=percent, max_percent=limit)
    t0, steps = time.monotonic(), []
    with p._exclusive(f"shadow {version}"):
        routing = p.registry.routing()
        if not routing.champion:
            raise PromotionError("no champion to compare a shadow with: promote a version first")
        if version == routing.champion:
            raise PromotionError(f"version {version} is the champion: a shadow of it would "
                                 "compare the champion with itself")
        if version == routing.challenger:
            raise PromotionError(f"version {version} is the canary's challenger: it already "
                                 "serves a share of the traffic")
        if routing.shadow and routing.shadow != version:
            raise PromotionError(f"version {routing.shadow} is the shadow: stop it first "
                                 "(visionguard models shadow --stop)", shadow=routing.shadow)
        info = p.registry.get(version)  # UnknownVersion (404) when not registered
        served = p._served()
        if int(version) not in served:
            _load(p, info, served, steps)
        p.registry.set_alias(SHADOW, version)
        p.registry.set_shadow_percent(percent)
        result = p._result("shadow", version, steps, t0)
        p.audit.record(p.actor, "shadow", model=p.model, version=version, percent=percent,
                       champion=routing.champion, seconds=round(result.seconds, 3))
        return result


def stop(promoter: Promoter) -> OperationResult:
    """End the shadow: no more mirrors; its version unloads unless something else serves it."""
    p, t0, steps = promoter, time.monotonic(), []
    with p._exclusive("shadow stop"):
        routing = p.registry.routing()
        if not routing.shadow:
            raise PromotionError("no shadow is running")
        version = routing.shadow
        p.registry.delete_alias(SHADOW)
        p.registry.set_shadow_percent(0)
        if version not in {p.registry.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}:
            p._drain()  # gateways stop mirroring before the version leaves Triton
            served = p._served() - {int(version)}
            p._apply_served(served)
            steps.append(StepResult("unload", True, 0.0, {"served": sorted(served)}))
        result = p._result("shadow_stop", version, steps, t0)
        p.audit.record(p.actor, "shadow_stop", model=p.model, version=version,
                       seconds=round(result.seconds, 3))
        return result


def _load(p: Promoter, info, served: set[int], steps: list[StepResult]) -> None:
    """Write and load the version as a promotion does; on failure put back the folder and the
    policy found (CandidateRejected says why)."""
    policy_before = triton_repo.served_versions(p.model_dir)
    wrote = False

    def load() -> dict:
        nonlocal wrote
        _, wrote = p.materialise(info)
        return p._load(int(info.version), served)

    try:
        p._step(steps, "load", info.version, load)
    except Exception as exc:
        p.progress("restoring")
        if wrote:
            triton_repo.remove_version(p.model_dir, int(info.version))
        p._apply_served(policy_before)
        p.audit.record(p.actor, "shadow", model=p.model, version=info.version,
                       outcome="refused", reason=str(exc))
        raise
