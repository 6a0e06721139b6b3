"""Automated canary analysis: compare the challenger with the champion on live traffic over a
window, then promote or abort without a person reading Grafana.

    start(N, p%, window) -> the canary starts as by hand (promoter.canary: load, checks, gates)
      -> every poll_s: read every gateway's per-version samples since the start
         (GET /v1/internal/version-stats, tracker_service/version_stats.py)
      -> at the window's end: judge() each criterion against its threshold (Settings,
         VG_CANARY_*), decide() -> promote | abort | extend (once, too little traffic)
      -> the decision, its numbers and the test statistics to the audit log and the challenger's
         MLflow tags (visionguard.canary.*), then promoter.promote(N) or abort_canary(reason),
         which notify as a person's promote or abort does.

Criteria (challenger against champion, same window, every gateway's samples together):
error rate (difference), p95 Triton latency (ratio, with an absolute slack so noise on a few
milliseconds does not abort), detections per image (difference of means relative to
max(champion's mean, 1)), score distribution (two-sample Kolmogorov-Smirnov test,
scipy.stats.ks_2samp; it fails only when the p-value is under VG_CANARY_KS_P_VALUE *and* the
statistic over VG_CANARY_KS_MAX_STATISTIC, so a large window does not abort on a trivial
shift) and, for streams, fragments per 100 tracked frames (difference). A criterion whose
samples are under its minimum is skipped, not passed; too few requests for either version
extends the window once by its length, then aborts with that reason.

The shadow's agreement (issue 15 item 2). The natural flow is `models shadow N` for a while,
then `models canary N --auto` (a canary of the running shadow is refused: it stops first).
When the canary starts, the analysis reads the version's last shadow run -- its start, stop and
champion from the audit log's `shadow` and `shadow_stop` entries -- and every gateway's
comparison sums over exactly that run (GET /v1/internal/shadow-stats, tracker_service/shadow.py),
keeps that record with the analysis and judges it as one more criterion (`judge_shadow`): the
matched-box fraction against VG_CANARY_MIN_SHADOW_AGREEMENT once VG_CANARY_MIN_SHADOW_COMPARED
requests were compared; with fewer, for a version never shadowed, or one compared with another
champion than the canary's, it is "not evaluated", which never blocks. Read here rather than
recorded by `Promoter.stop_shadow`: only the control plane holds the gateways' internal token
(`models shadow --stop` runs the promoter in the operator's own process, which does not), and
this is where the numbers are judged. The cost: a gateway restarted since the run, or whose
bounded rings have moved on, has forgotten it; the record says how many gateways answered and
how many comparisons they still had.

The analysis runs in a thread of the control-plane process that started it; its state is a JSON
file under the runtime directory (written atomically), so a restart finds an analysis that was
running and reports it `interrupted`, leaving the canary as it was (challenger and share
unchanged) for a person to promote, abort or analyse again. One analysis at a time: a second
start while one is active is refused (409).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np

from control_plane.errors import Busy, Conflict, ControlPlaneError, NotFound
from control_plane.releases.audit import AuditLog
from control_plane.releases.registry import Registry
from control_plane.settings import Settings

log = logging.getLogger("visionguard.canary")

ACTOR = "canary-analysis"
MAX_FAILURES_KEPT = 5  # gateways that did not answer, named in a shadow run's record
ACTIVE = ("starting", "running", "extended", "deciding")
HISTORY = 20  # analyses kept in the state file, newest last
TAG = "visionguard.canary."


class AnalysisRunning(Conflict):
    code = "canary_analysis_running"


class InvalidWindow(ControlPlaneError):
    code = "invalid_window"


class NoAnalysis(NotFound):
    code = "no_canary_analysis"


# --- the numbers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    min_requests: int
    min_scores: int
    min_tracked_frames: int
    max_error_rate_increase: float
    max_p95_ratio: float
    p95_slack_ms: float
    max_detections_change: float
    ks_p_value: float
    ks_max_statistic: float
    max_fragment_increase: float
    min_shadow_agreement: float
    min_shadow_compared: int

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(s.canary_min_requests, s.canary_min_scores, s.canary_min_tracked_frames,
                   s.canary_max_error_rate_increase, s.canary_max_p95_ratio,
                   s.canary_p95_slack_ms, s.canary_max_detections_change, s.canary_ks_p_value,
                   s.canary_ks_max_statistic, s.canary_max_fragment_increase,
                   s.canary_min_shadow_agreement, s.canary_min_shadow_compared)


@dataclass
class VersionWindow:
    """One version's traffic in the window, every gateway's samples together."""

    requests: int = 0
    errors: int = 0
    latency_ms: list[float] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tracked_frames: int = 0
    fragments: int = 0

    def add(self, stats: dict) -> None:
        """One gateway's answer for this version (version_stats.VersionStats.snapshot)."""
        self.requests += int(stats.get("requests", 0))
        self.errors += int(stats.get("errors", 0))
        self.latency_ms += [float(v) for v in stats.get("latency_ms", [])]
        self.detections += [int(v) for v in stats.get("detections", [])]
        self.scores += [float(v) for v in stats.get("scores", [])]
        self.tracked_frames += int(stats.get("tracked_frames", 0))
        self.fragments += int(stats.get("fragments", 0))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p95_ms(self) -> float | None:
        return float(np.percentile(self.latency_ms, 95)) if self.latency_ms else None

    @property
    def detections_mean(self) -> float | None:
        return float(np.mean(self.detections)) if self.detections else None

    @property
    def fragments_per_100(self) -> float | None:
        return 100.0 * self.fragments / self.tracked_frames if self.tracked_frames else None

    def summary(self) -> dict:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": _round(self.error_rate), "p95_ms": _round(self.p95_ms),
                "detections_per_image": _round(self.detections_mean),
                "scores": len(self.scores), "tracked_frames": self.tracked_frames,
                "fragments": self.fragments,
                "fragments_per_100_frames": _round(self.fragments_per_100)}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Criterion:
    name: str
    passed: bool | None  # None: skipped (too few samples to judge)
    champion: float | None
    challenger: float | None
    statistic: float | None  # what is compared with the threshold
    threshold: str
    reason: str
    extra: dict = field(default_factory=dict)


def judge(champion: VersionWindow, challenger: VersionWindow, t: Thresholds) -> list[Criterion]:
    """Every criterion, challenger against champion (pure: recorded windows in, verdicts out)."""
    out = []
    b, c = champion.error_rate, challenger.error_rate
    if b is None or c is None:
        out.append(Criterion("error_rate", None, b, c, None,
                             f"<= +{t.max_error_rate_increase:g}", "no requests"))
    else:
        diff = c - b
        out.append(Criterion("error_rate", diff <= t.max_error_rate_increase, b, c, diff,
                             f"<= +{t.max_error_rate_increase:g}",
                             f"error rate {c:.2%} vs {b:.2%} (+{diff:.2%}, limit "
                             f"+{t.max_error_rate_increase:.2%})"))
    b, c = champion.p95_ms, challenger.p95_ms
    if b is None or c is None:
        out.append(Criterion("p95_latency", None, b, c, None,
                             f"<= {t.max_p95_ratio:g}x or +{t.p95_slack_ms:g} ms",
                             "no answered requests"))
    else:
        ratio = c / b if b > 0 else float("inf")
        slower = ratio > t.max_p95_ratio and c - b > t.p95_slack_ms
        out.append(Criterion("p95_latency", not slower, b, c, ratio,
                             f"<= {t.max_p95_ratio:g}x or +{t.p95_slack_ms:g} ms",
                             f"p95 Triton latency {c:.1f} ms vs {b:.1f} ms ({ratio:.2f}x, limit "
                             f"{t.max_p95_ratio:g}x unless within +{t.p95_slack_ms:g} ms)"))
    b, c = champion.detections_mean, challenger.detections_mean
    if b is None or c is None:
        out.append(Criterion("detections_per_image", None, b, c, None,
                             f"|change| <= {t.max_detections_change:g}",
                             "no answered requests"))
    else:
        change = (c - b) / max(b, 1.0)
        out.append(Criterion("detections_per_image", abs(change) <= t.max_detections_change,
                             b, c, change, f"|change| <= {t.max_detections_change:g}",
                             f"detections per image {c:.2f} vs {b:.2f} (change {change:+.2f} of "
                             f"max(champion, 1), limit ±{t.max_detections_change:g})"))
    nb, nc = len(champion.scores), len(challenger.scores)
    ks_threshold = f"fails if p < {t.ks_p_value:g} and D > {t.ks_max_statistic:g}"
    if min(nb, nc) < t.min_scores:
        out.append(Criterion("score_distribution", None, None, None, None, ks_threshold,
                             f"KS test skipped: {nc} challenger and {nb} champion scores "
                             f"(minimum {t.min_scores} a side)",
                             {"n_champion": nb, "n_challenger": nc}))
    else:
        from scipy.stats import ks_2samp

        result = ks_2samp(challenger.scores, champion.scores)
        d, p = float(result.statistic), float(result.pvalue)
        shifted = p < t.ks_p_value and d > t.ks_max_statistic
        out.append(Criterion("score_distribution", not shifted, float(np.mean(champion.scores)),
                             float(np.mean(challenger.scores)), d, ks_threshold,
                             f"scores KS D={d:.3f}, p={p:.3g} (n={nc} vs {nb}; {ks_threshold})",
                             {"ks_statistic": d, "ks_p_value": p, "n_champion": nb,
                              "n_challenger": nc}))
    fb, fc = champion.tracked_frames, challenger.tracked_frames
    limit = f"<= +{t.max_fragment_increase:g} per 100 frames"
    if min(fb, fc) < t.min_tracked_frames:
        out.append(Criterion("tracking_fragments", None, champion.fragments_per_100,
                             challenger.fragments_per_100, None, limit,
                             f"tracking skipped: {fc} challenger and {fb} champion tracked "
                             f"frames (minimum {t.min_tracked_frames} a side)"))
    else:
        b, c = champion.fragments_per_100, challenger.fragments_per_100
        diff = c - b
        out.append(Criterion("tracking_fragments", diff <= t.max_fragment_increase, b, c, diff,
                             limit, f"track fragments {c:.2f} vs {b:.2f} per 100 tracked frames "
                             f"(+{diff:.2f}, limit +{t.max_fragment_increase:g})"))
    return out


def judge_shadow(record: dict | None, version: str, champion: str | None,
                 t: Thresholds) -> Criterion:
    """The challenger's shadow run (read_shadow_run's record, None when it was never
    shadowed) as a criterion: the matched-box fraction against its threshold, or not evaluated
    (passed None) when there is too little of it or it was compared with another champion."""
    threshold = (f">= {t.min_shadow_agreement:g} matched boxes "
                 f"(>= {t.min_shadow_compared} compared)")
    if not record:
        return Criterion("shadow_agreement", None, None, None, None, threshold,
                         f"shadow agreement not evaluated: version {version} was not shadowed "
                         f"before its canary (visionguard models shadow {version})")
    fraction, compared = record.get("matched_fraction"), int(record.get("compared", 0))
    extra = {"compared_with_champion": record.get("champion"),
             **{k: v for k, v in record.items() if k != "champion"}}
    if record.get("champion") != champion:
        return Criterion("shadow_agreement", None, None, fraction, None, threshold,
                         f"shadow agreement not evaluated: the shadow run was compared with "
                         f"champion {record.get('champion')}, the champion is now {champion}",
                         extra)
    if compared < t.min_shadow_compared or fraction is None:
        return Criterion("shadow_agreement", None, None, fraction, None, threshold,
                         f"shadow agreement not evaluated: {compared} compared < minimum "
                         f"{t.min_shadow_compared}" + ("" if fraction is not None else
                                                       " (or no box on either side)"), extra)
    passed = fraction >= t.min_shadow_agreement
    numbers = ", ".join(f"{label} {record[key]:.3f}" for key, label in (
        ("class_agreement", "class agreement"), ("mean_abs_score_delta", "mean |score delta|"))
        if record.get(key) is not None)
    return Criterion("shadow_agreement", passed, None, fraction, fraction, threshold,
                     f"shadow matched-box fraction {fraction:.3f} over {compared} compared "
                     f"requests (limit >= {t.min_shadow_agreement:g})"
                     + (f"; {numbers}" if numbers else ""), extra)


def decide(champion: VersionWindow, challenger: VersionWindow, criteria: list[Criterion],
           t: Thresholds, extended: bool) -> tuple[str, str]:
    """(promote | abort | extend, why). Too little traffic is not judged: extend once, then abort."""
    if min(champion.requests, challenger.requests) < t.min_requests:
        traffic = (f"{challenger.requests} challenger and {champion.requests} champion requests "
                   f"(minimum {t.min_requests} each)")
        if not extended:
            return "extend", f"too little traffic in the window: {traffic}; extending once"
        return "abort", f"too little traffic after extending the window once: {traffic}"
    failed = [c for c in criteria if c.passed is False]
    if failed:
        return "abort", "; ".join(c.reason for c in failed)
    skipped = [c.name for c in criteria if c.passed is None]
    return "promote", "every criterion passed" + (
        f" (not evaluated: {', '.join(skipped)})" if skipped else "")


# --- the gateways ----------------------------------------------------------------------------------

def gateway_urls(settings: Settings) -> list[str]:
    """Every gateway to read: VG_CANARY_GATEWAYS (URLs, or host:port where a name with several
    addresses, such as a headless Service, counts each), else the local gateway."""
    entries = [e.strip() for e in settings.canary_gateways.split(",") if e.strip()]
    if not entries:
        return [settings.gateway_url]
    urls: list[str] = []
    for entry in entries:
        if "://" in entry:
            urls.append(entry.rstrip("/"))
            continue
        host, _, port = entry.rpartition(":")
        for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM):
            ip = info[4][0]
            url = f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"
            if url not in urls:
                urls.append(url)
    return urls


def read_gateways(settings: Settings, since: float) -> tuple[list[dict], dict[str, str]]:
    """Each gateway's per-version samples since `since`, and which gateways did not answer."""
    return read_internal(settings, "/v1/internal/version-stats", {"since": since})


def read_shadow_stats(settings: Settings, since: float, until: float | None
                      ) -> tuple[list[dict], dict[str, str]]:
    """Each gateway's shadow comparison sums from `since` to `until` (None: now), and which
    gateways did not answer."""
    return read_internal(settings, "/v1/internal/shadow-stats",
                         {"since": since, **({"until": until} if until is not None else {})})


def read_internal(settings: Settings, path: str, params: dict
                  ) -> tuple[list[dict], dict[str, str]]:
    """Every gateway's answer to an internal route, and which gateways did not answer. A
    gateway reached at two addresses (IPv4 and IPv6 of one name) counts once (its id)."""
    import httpx

    headers = {"authorization": f"Bearer {settings.gateway_token}"} \
        if settings.gateway_token else {}
    answers, failures = [], {}
    try:
        urls = gateway_urls(settings)
    except (OSError, ValueError) as exc:
        return [], {settings.canary_gateways: f"cannot resolve: {exc}"}
    for url in urls:
        try:
            r = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=10.0)
            r.raise_for_status()
            answer = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            failures[url] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if all(a.get("gateway") != answer.get("gateway") for a in answers):
            answers.append(answer)
    return answers, failures


def merge(answers: list[dict], version: str) -> VersionWindow:
    window = VersionWindow()
    for answer in answers:
        stats = (answer.get("versions") or {}).get(version)
        if stats:
            window.add(stats)
    return window


# --- the shadow run before the canary ------------------------------------------------------------

@dataclass
class ShadowRun:
    """One shadow version's comparisons with the champion, every gateway's sums together
    (tracker_service/shadow.py ShadowStats.snapshot)."""

    compared: int = 0
    champion_boxes: int = 0
    shadow_boxes: int = 0
    matched: int = 0
    class_agreed: int = 0
    score_delta_sum: float = 0.0
    shed: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def add(self, stats: dict) -> None:
        for name in ("compared", "champion_boxes", "shadow_boxes", "matched", "class_agreed",
                     "errors"):
            setattr(self, name, getattr(self, name) + int(stats.get(name, 0)))
        self.score_delta_sum += float(stats.get("score_delta_sum", 0.0))
        for reason, n in (stats.get("shed") or {}).items():
            self.shed[reason] = self.shed.get(reason, 0) + int(n)

    @property
    def matched_fraction(self) -> float | None:
        """2 x matched / (champion + shadow boxes), as the gateway's gauge: 1 = the same boxes;
        requests where neither found anything agree without a box, so they do not count."""
        boxes = self.champion_boxes + self.shadow_boxes
        return 2 * self.matched / boxes if boxes else None

    @property
    def class_agreement(self) -> float | None:
        return self.class_agreed / self.matched if self.matched else None

    @property
    def mean_score_delta(self) -> float | None:
        return self.score_delta_sum / self.matched if self.matched else None

    def summary(self) -> dict:
        return {"compared": self.compared, "matched_fraction": _round(self.matched_fraction),
                "class_agreement": _round(self.class_agreement),
                "mean_abs_score_delta": _round(self.mean_score_delta),
                "champion_boxes": self.champion_boxes, "shadow_boxes": self.shadow_boxes,
                "matched": self.matched, "shed": sum(self.shed.values()),
                "shed_by_reason": dict(self.shed), "errors": self.errors}


def shadow_run_window(audit: AuditLog, version: str, lines: int = 100_000) -> dict | None:
    """The version's last shadow run in the audit log: since (the start of its first `shadow`
    operation: the entry is written once the operation is done, and gateways may follow the
    routing before), until (its `shadow_stop`, None while it runs) and the champion it was
    compared with. A change of share is another `shadow` entry of the same run. None when the
    version was never shadowed (or the audit log no longer has it)."""
    run = None
    for entry in audit.entries(lines):
        if entry.get("version") != version or entry.get("outcome") != "ok":
            continue
        at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
        if entry["action"] == "shadow" and (run is None or run["until"] is not None):
            run = {"since": at - float(entry.get("seconds") or 0.0), "until": None,
                   "champion": entry.get("champion")}
        elif entry["action"] == "shadow_stop" and run is not None and run["until"] is None:
            run["until"] = at
    return run


def read_shadow_run(settings: Settings, audit: AuditLog, version: str,
                    fetch: Callable[[Settings, float, float | None], tuple[list[dict], dict]]
                    = read_shadow_stats) -> dict | None:
    """The version's last shadow run (shadow_run_window) with every gateway's comparison sums
    over it, added up before any fraction is taken; None when it was never shadowed."""
    run = shadow_run_window(audit, version)
    if run is None:
        return None
    answers, failures = fetch(settings, run["since"], run["until"])
    total = ShadowRun()
    for answer in answers:
        stats = (answer.get("versions") or {}).get(version)
        if stats:
            total.add(stats)
    return {**run, **total.summary(), "gateways": len(answers),
            "gateway_failures": dict(list(failures.items())[:MAX_FAILURES_KEPT])}


# --- the analysis --------------------------------------------------------------------------------

def parse_window(text: str) -> float:
    """'10m', '30s', '1h' or plain seconds -> seconds (InvalidWindow otherwise)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    raw = text.strip().lower()
    try:
        if raw and raw[-1] in units:
            return float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        raise InvalidWindow(f"window {text!r} is not a duration such as 30s, 10m or 1h",
                            window=text) from None


class CanaryAnalyst:
    """The control plane's automated canary analyses: one at a time, state in
    `<runtime_dir>/canary_analysis.json`."""

    def __init__(self, settings: Settings, registry: Registry | None = None,
                 fetch: Callable[[Settings, float], tuple[list[dict], dict]] = read_gateways,
                 shadow_fetch: Callable[[Settings, float, float | None],
                                        tuple[list[dict], dict]] = read_shadow_stats,
                 promoter_factory: Callable | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings)
        self.path = settings.runtime_dir / "canary_analysis.json"
        self.audit = AuditLog(settings.audit_file)
        self.thresholds = Thresholds.from_settings(settings)
        self.fetch = fetch
        self.shadow_fetch = shadow_fetch
        self.clock = clock
        self._promoter_factory = promoter_factory
        self._lock = threading.RLock()  # the state file's writers: requests and the loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def promoter(self):
        if self._promoter_factory is not None:
            return self._promoter_factory()
        from control_plane.releases.promoter import Promoter

        return Promoter(self.settings, actor=ACTOR, registry=self.registry)

    # --- state ---------------------------------------------------------------------------------

    def _history(self) -> list[dict]:
        try:
            return json.loads(self.path.read_text()).get("analyses", [])
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("canary analysis state %s unreadable: %s", self.path, exc)
            return []

    def _save(self, analysis: dict) -> None:
        """Replace (or append) this analysis in the state file, atomically."""
        with self._lock:
            history = [a for a in self._history() if a["id"] != analysis["id"]] + [analysis]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".canary-analysis-")
            with os.fdopen(fd, "w") as f:
                json.dump({"analyses": history[-HISTORY:]}, f, indent=1, default=str)
            os.replace(tmp, self.path)

    def status(self, version: str | None = None) -> dict:
        """The latest analysis (of `version`), NoAnalysis when there is none."""
        for analysis in reversed(self._history()):
            if version is None or analysis["version"] == str(version):
                return analysis
        raise NoAnalysis("no automated canary analysis" + (
            f" of version {version}" if version else "") + " has run")

    def active(self) -> dict | None:
        latest = self._history()[-1:]
        return latest[0] if latest and latest[0]["status"] in ACTIVE else None

    # --- lifecycle -----------------------------------------------------------------------------

    def recover(self) -> dict | None:
        """At the control plane's start: an analysis that was active belonged to a process that
        is gone. It is reported interrupted; the canary stays as it was."""
        analysis = self.active()
        if analysis is None:
            return None
        routing = self.registry.routing()
        reason = (f"the control plane stopped during the analysis ({analysis['status']}); the "
                  f"canary is left as it was (challenger {routing.challenger or '-'} at "
                  f"{routing.canary_percent:g}%): promote or abort it, or start --auto again")
        self._finish(analysis, "interrupted", reason)
        return analysis

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_window(self, window_s: float | None) -> float:
        s = self.settings
        window = s.canary_window_s if window_s is None else float(window_s)
        if not s.canary_min_window_s <= window <= s.canary_max_window_s:
            raise InvalidWindow(
                f"window {window:g} s is outside the allowed {s.canary_min_window_s:g} to "
                f"{s.canary_max_window_s:g} s (VG_CANARY_MIN_WINDOW_S, VG_CANARY_MAX_WINDOW_S)",
                window_s=window, min_s=s.canary_min_window_s, max_s=s.canary_max_window_s)
        return window

    def start(self, version: str, percent: float, window_s: float | None, actor: str,
              canary: Callable[[], object]) -> tuple[object, dict]:
        """Check the request, run `canary()` (the promoter's canary of `version` at `percent`:
        its checks and gates), then analyse in the background. Returns (the canary's result,
        the analysis). Nothing starts when a check fails."""
        version = str(version)
        window = self.check_window(window_s)
        if not 0 < percent <= 100:
            raise ControlPlaneError(f"canary percent must be in (0, 100], got {percent:g}",
                                    percent=percent)
        self.registry.get(version)  # UnknownVersion (404) for a version never registered
        with self._lock:
            running = self.active()
            if running is not None:
                raise AnalysisRunning(
                    f"an automated canary analysis of version {running['version']} is "
                    f"{running['status']}: wait for its decision or abort the canary",
                    analysis=running["id"], version=running["version"])
            analysis = {"id": uuid.uuid4().hex[:12], "model": self.registry.name,
                        "version": version, "percent": percent, "window_s": window,
                        "actor": actor, "status": "starting", "extended": False,
                        "created_at": self.clock()}
            self._save(analysis)
        try:
            result = canary()
        except Exception as exc:
            reason = exc.message if isinstance(exc, ControlPlaneError) else f"{exc}"
            analysis.update(status="refused", reason=f"the canary did not start: {reason}")
            self._save(analysis)
            raise
        # The shadow run before this canary, as the gateways still have it (module docstring).
        shadow = read_shadow_run(self.settings, self.audit, version, self.shadow_fetch)
        now = self.clock()
        routing = self.registry.routing()
        analysis.update(status="running", champion=routing.champion, since=now,
                        deadline=now + window, shadow=shadow)
        self._save(analysis)
        self.registry.tag_version(version, **{f"{TAG}status": "running",
                                              f"{TAG}analysis": analysis["id"],
                                              f"{TAG}window_s": f"{window:g}"})
        self.audit.record(actor, "canary_analysis", model=self.registry.name, version=version,
                          outcome="started", analysis=analysis["id"], percent=percent,
                          window_s=window, champion=routing.champion,
                          shadow=analysis["shadow"])
        self._thread = threading.Thread(target=self._run, args=(analysis["id"],), daemon=True,
                                        name=f"canary-analysis-{analysis['id']}")
        self._thread.start()
        return result, analysis

    # --- the background loop -------------------------------------------------------------------

    def _run(self, analysis_id: str) -> None:
        try:
            while not self._stop.is_set():
                analysis = next((a for a in self._history() if a["id"] == analysis_id), None)
                if analysis is None or analysis["status"] not in ACTIVE:
                    return
                wait = self.step(analysis)
                if wait is None:
                    return
                self._stop.wait(wait)
        except Exception as exc:  # noqa: BLE001 - say why in the state, never die silently
            log.exception("canary analysis %s failed", analysis_id)
            analysis = next((a for a in self._history() if a["id"] == analysis_id), None)
            if analysis is not None and analysis["status"] in ACTIVE:
                self._finish(analysis, "failed", f"{type(exc).__name__}: {exc}")

    def step(self, analysis: dict) -> float | None:
        """One look at the canary: the live numbers, and at the window's end the decision.
        Returns seconds until the next look, None when the analysis is over."""
        version, champion = analysis["version"], analysis["champion"]
        routing = self.registry.routing()
        if routing.challenger != version:
            self._finish(analysis, "superseded",
                         f"the canary of version {version} ended outside the analysis (routing: "
                         f"champion {routing.champion}, challenger {routing.challenger or '-'})")
            return None
        answers, failures = self.fetch(self.settings, analysis["since"])
        base, chal = merge(answers, champion), merge(answers, version)
        now = self.clock()
        analysis["live"] = {"at": now, "champion": base.summary(), "challenger": chal.summary(),
                            "gateways": len(answers), "gateway_failures": failures}
        if now < analysis["deadline"]:
            self._save(analysis)
            return min(self.settings.canary_poll_s, analysis["deadline"] - now)
        criteria = judge(base, chal, self.thresholds) + [
            judge_shadow(analysis.get("shadow"), version, champion, self.thresholds)]
        decision, reason = decide(base, chal, criteria, self.thresholds, analysis["extended"])
        if failures and not answers:
            reason += f"; no gateway answered: {failures}"
        analysis["criteria"] = [asdict(c) for c in criteria]
        if decision == "extend":
            analysis.update(extended=True, status="extended", reason=reason,
                            deadline=analysis["deadline"] + analysis["window_s"])
            self._save(analysis)
            self.audit.record(ACTOR, "canary_analysis", model=self.registry.name,
                              version=version, outcome="extended", analysis=analysis["id"],
                              reason=reason, numbers=analysis["live"])
            return min(self.settings.canary_poll_s, analysis["window_s"])
        analysis.update(status="deciding", decision=decision, reason=reason)
        self._save(analysis)
        self._act(analysis, decision, reason)
        return None

    def _act(self, analysis: dict, decision: str, reason: str) -> None:
        """Promote or abort through the promoter (its lock, audit and notifications); a release
        operation already holding the lock is waited for, up to a minute."""
        version = analysis["version"]
        deadline = time.monotonic() + 60.0
        while True:
            try:
                promoter = self.promoter()
                if decision == "promote":
                    promoter.promote(version, reason=f"automated canary analysis: {reason}")
                else:
                    promoter.abort_canary(reason=f"automated canary analysis: {reason}")
                break
            except Busy:
                if time.monotonic() > deadline or self._stop.wait(2.0):
                    self._finish(analysis, "failed", f"could not {decision}: another release "
                                 f"operation held the lock for a minute ({reason})")
                    return
            except ControlPlaneError as exc:
                self._finish(analysis, "failed", f"could not {decision}: {exc.message} "
                             f"(decision was: {reason})")
                return
        self._finish(analysis, "promoted" if decision == "promote" else "aborted", reason)

    def _finish(self, analysis: dict, status: str, reason: str) -> None:
        """The analysis' end: state file, audit log, the challenger's MLflow tags."""
        analysis.update(status=status, reason=reason, finished_at=self.clock())
        self._save(analysis)
        criteria = analysis.get("criteria", [])
        numbers = analysis.get("live", {})
        self.audit.record(ACTOR, "canary_analysis", model=self.registry.name,
                          version=analysis["version"], outcome=status,
                          analysis=analysis["id"], reason=reason, window_s=analysis["window_s"],
                          extended=analysis["extended"], champion=analysis.get("champion"),
                          numbers={k: numbers.get(k) for k in ("champion", "challenger")},
                          criteria=criteria)
        tags = {f"{TAG}status": status, f"{TAG}reason": reason[:4000],
                f"{TAG}analysis": analysis["id"], f"{TAG}extended": analysis["extended"],
                f"{TAG}champion": analysis.get("champion") or ""}
        for side in ("champion", "challenger"):
            if side in numbers:
                tags[f"{TAG}{side}"] = json.dumps(numbers[side])
        for c in criteria:
            verdict = {True: "pass", False: "fail", None: "skipped"}[c["passed"]]
            tags[f"{TAG}{c['name']}"] = json.dumps(
                {"verdict": verdict, "statistic": c["statistic"], "champion": c["champion"],
                 "challenger": c["challenger"], "threshold": c["threshold"], **c["extra"]},
                default=str)[:4000]
        try:
            self.registry.tag_version(analysis["version"], **tags)
        except Exception as exc:  # noqa: BLE001 - MLflow away: the audit log has it all
            log.error("cannot tag version %s with its canary analysis: %s",
                      analysis["version"], exc)
        log.log(logging.INFO if status == "promoted" else logging.WARNING,
                "canary analysis of version %s: %s (%s)", analysis["version"], status, reason,
                extra={"event": "canary_analysis", "model_version": analysis["version"],
                       "outcome": status})
