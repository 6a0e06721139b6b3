"""Shadow traffic: a share of the champion's requests mirrored to another version and compared.

Issue 15 item 2. The control plane's routing names a shadow version and a share
(routing.py, `Routing.mirror_to`); the service offers each request the champion answered to
`ShadowMirror.offer` once the client's detections are computed. The offer never waits: it puts
the request on a bounded queue, or sheds it (counted by reason) when the queue is full or the
gateway already holds `shadow_busy_pending` client requests, so under load the shadow is the
first work to go and nothing queues behind it. A few workers (`shadow_concurrency`) take
mirrors off the queue, check the load again, and run the shadow version on the same decoded
image through the same client (`DetectorClient.infer` with an explicit version; its
shared-memory pool has a region more per worker, app.py, so a shadow call never takes one a
client call waits for). The shadow gets its own letterbox of those pixels because its input
size and stride come from its own model configuration (`model_info(version)`).

The two answers are compared as sets of boxes: a one-to-one assignment that maximises IoU
(the trackers' `linear_assignment`: lapjv, scipy's linear_sum_assignment where lap is
missing), pairs under `shadow_match_iou` left unmatched; then class agreement and |score delta|
of the matched pairs. Prometheus gets the counts and the agreement so far, per shadow version
(metrics.ShadowMetrics).

The control plane needs the agreement of one shadow run, not of the gateway's life (a version
may be shadowed twice, against different champions): `ShadowStats` keeps, per shadow version,
bounded rings of time-stamped comparisons and of dropped mirrors (shed or failed), and answers
their sums over a time range at `GET /v1/internal/shadow-stats?since=T&until=U` (app.py), which
the automated canary analysis reads from every gateway for the run that preceded a canary
(control_plane/releases/canary_analysis.py). Sums, not rates, so the control plane can add up
several gateways before it divides.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from anyio import to_thread

from tracker_service.detection import DetectOptions, Detections
from tracker_service.errors import GatewayError
from tracker_service.letterbox import letterbox, to_original
from tracker_service.metrics import ShadowMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.tracking.association import iou_matrix, linear_assignment
from tracker_service.triton_client import DetectorClient
from tracker_service.version_stats import gateway_id, recent

log = logging.getLogger("visionguard.shadow")

QUEUE_FULL, BUSY, ERROR = "queue_full", "busy", "error"


@dataclass(frozen=True)
class Agreement:
    """One request's champion and shadow answers, compared."""

    champion_boxes: int
    shadow_boxes: int
    matched: int
    class_agreed: int
    score_deltas: np.ndarray  # |champion score - shadow score| per matched pair


def compare(champion: tuple[np.ndarray, np.ndarray, np.ndarray],
            shadow: tuple[np.ndarray, np.ndarray, np.ndarray], min_iou: float) -> Agreement:
    """Match (boxes xyxy, scores, classes) of two answers one-to-one by IoU, class-agnostic, so
    a box both models found with different classes counts as matched and as a class
    disagreement."""
    (cb, cs, cc), (sb, ss, sc) = champion, shadow
    iou = iou_matrix(cb, sb)
    pairs = linear_assignment(-iou)  # maximise total IoU
    if len(pairs):
        pairs = pairs[iou[pairs[:, 0], pairs[:, 1]] >= min_iou]
    c, s = pairs[:, 0], pairs[:, 1]
    return Agreement(len(cb), len(sb), len(pairs), int(np.sum(cc[c] == sc[s])),
                     np.abs(cs[c] - ss[s]))


class AgreementTotals:
    """The agreement so far of one shadow version, as the gauges show it."""

    def __init__(self) -> None:
        self.boxes = 0  # champion + shadow boxes
        self.matched = 0
        self.class_agreed = 0

    def add(self, a: Agreement) -> tuple[float, float]:
        """(matched-box rate, class agreement) including `a`. Two empty answers agree (rate
        1.0); with no matched box there is no class to agree on (NaN, which Prometheus keeps
        and Grafana shows as no value)."""
        self.boxes += a.champion_boxes + a.shadow_boxes
        self.matched += a.matched
        self.class_agreed += a.class_agreed
        box_rate = 2 * self.matched / self.boxes if self.boxes else 1.0
        class_rate = self.class_agreed / self.matched if self.matched else float("nan")
        return box_rate, class_rate


@dataclass
class _ShadowRun:
    compared: deque  # (t, champion boxes, shadow boxes, matched, class agreed, sum |delta|)
    dropped: deque  # (t, reason): queue_full, busy (shed) or error (the shadow call failed)


class ShadowStats:
    """Per shadow version, the comparisons and dropped mirrors of the last `max_records` each,
    for the `max_versions` most recently mirrored versions; summed over a time range on
    request (a shadow run)."""

    def __init__(self, max_versions: int = 8, max_records: int = 20_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_versions, self.max_records, self.clock = max_versions, max_records, clock
        self.gateway_id = gateway_id()
        self._versions: OrderedDict[str, _ShadowRun] = OrderedDict()

    def compared(self, version: str, a: Agreement) -> None:
        self._run(version).compared.append((self.clock(), a.champion_boxes, a.shadow_boxes,
                                            a.matched, a.class_agreed,
                                            float(np.sum(a.score_deltas))))

    def dropped(self, version: str, reason: str) -> None:
        self._run(version).dropped.append((self.clock(), reason))

    def _run(self, version: str) -> _ShadowRun:
        return recent(self._versions, version, self.max_versions,
                      lambda: _ShadowRun(deque(maxlen=self.max_records),
                                         deque(maxlen=self.max_records)))

    def snapshot(self, since: float = 0.0, until: float | None = None) -> dict:
        """Each version's sums over the records from `since` to `until` (Unix seconds; None:
        now); `from_t`: each ring's oldest kept record (a run that started before it was only
        partly kept)."""
        end = math.inf if until is None else until
        versions = {}
        for version, run in self._versions.items():
            rows = [r for r in run.compared if since <= r[0] <= end]
            sums = np.sum([r[1:] for r in rows], axis=0) if rows else np.zeros(5)
            dropped = {QUEUE_FULL: 0, BUSY: 0, ERROR: 0}
            for t, reason in run.dropped:
                if since <= t <= end:
                    dropped[reason] += 1
            versions[version] = {
                "compared": len(rows), "champion_boxes": int(sums[0]),
                "shadow_boxes": int(sums[1]), "matched": int(sums[2]),
                "class_agreed": int(sums[3]), "score_delta_sum": round(float(sums[4]), 6),
                "shed": {QUEUE_FULL: dropped[QUEUE_FULL], BUSY: dropped[BUSY]},
                "errors": dropped[ERROR],
                "from_t": {"compared": run.compared[0][0] if run.compared else None,
                           "dropped": run.dropped[0][0] if run.dropped else None}}
        return {"gateway": self.gateway_id, "now": self.clock(), "since": since,
                "until": until, "versions": versions}


@dataclass(frozen=True)
class Mirror:
    detections: Detections  # the champion's answer (with the decoded image)
    opts: DetectOptions  # the client's thresholds, class filter and max_det
    version: str  # the shadow version


class ShadowMirror:
    """The bounded background work of shadow traffic; `busy()` is the number of client
    requests the gateway holds now (admitted and not answered)."""

    def __init__(self, settings: GatewaySettings, client: DetectorClient,
                 metrics: ShadowMetrics, busy: Callable[[], int]) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.busy = busy
        self._queue: asyncio.Queue[Mirror] = asyncio.Queue(maxsize=max(settings.shadow_queue, 1))
        self._workers: list[asyncio.Task] = []
        self._totals: dict[str, AgreementTotals] = {}
        self.stats = ShadowStats(settings.version_stats_max_versions,
                                 settings.shadow_stats_max_records)
        self._series: set[str] = set()  # shadow versions whose counters exist

    def offer(self, detections: Detections, opts: DetectOptions, version: str) -> bool:
        """Queue a mirror of this answer to `version`, or shed it; never waits."""
        if not self._workers:  # started on the first mirror: a gateway without one runs none
            self._workers = [asyncio.create_task(self._work())
                             for _ in range(max(self.settings.shadow_concurrency, 1))]
        if version not in self._series:
            self._start_series(version)
        if self.busy() >= self.settings.shadow_busy_pending:  # this request included
            self._shed(version, BUSY)
            return False
        try:
            self._queue.put_nowait(Mirror(detections, opts, version))
        except asyncio.QueueFull:
            self._shed(version, QUEUE_FULL)
            return False
        return True

    def _start_series(self, version: str) -> None:
        """A new shadow version's counters and histogram at 0, so rates and "no errors" show
        from its first mirror on (its agreement gauges wait for a first comparison)."""
        m = self.metrics
        m.compared.labels(version)
        m.errors.labels(version)
        m.score_delta.labels(version)
        for kind in ("champion", "shadow", "matched", "class_agreed"):
            m.boxes.labels(version, kind)
        for reason in (QUEUE_FULL, BUSY):
            m.shed.labels(version, reason)
        self._series.add(version)

    def _shed(self, version: str, reason: str) -> None:
        self.metrics.shed.labels(version, reason).inc()
        self.stats.dropped(version, reason)

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            mirror = await self._queue.get()
            try:
                # Client load may have risen while it waited: the client's work goes first.
                if self.busy() >= self.settings.shadow_busy_pending:
                    self._shed(mirror.version, BUSY)
                    continue
                await self._mirror(mirror)
            except GatewayError as exc:
                self._failed(mirror.version)
                log.warning("shadow call to version %s failed: %s", mirror.version, exc,
                            extra={"event": "shadow_error", "error_code": exc.code,
                                   "model_version": mirror.version})
            except Exception:  # noqa: BLE001 - a shadow failure must never stop the worker
                self._failed(mirror.version)
                log.exception("shadow comparison with version %s failed", mirror.version,
                              extra={"event": "shadow_error", "model_version": mirror.version})
            finally:
                self._queue.task_done()

    def _failed(self, version: str) -> None:
        self.metrics.errors.labels(version).inc()
        self.stats.dropped(version, ERROR)

    async def _mirror(self, mirror: Mirror) -> None:
        d, opts, version = mirror.detections, mirror.opts, mirror.version
        info = await self.client.model_info(version)
        rgb, geo = await to_thread.run_sync(letterbox, d.image, min(self.settings.imgsz,
                                                                    info.imgsz), info.stride,
                                            (d.height, d.width), d.reduction)
        result = await self.client.infer(rgb, conf=opts.conf, iou=opts.iou,
                                         max_det=300 if opts.classes else opts.max_det,
                                         version=version)
        dets = result.detections
        if opts.classes:  # as the champion's answer was filtered (detection.py)
            dets = dets[np.isin(dets[:, 5].astype(np.int64), opts.classes)][: opts.max_det]
        agreement = compare((d.boxes, d.scores, d.classes),
                            (to_original(dets[:, :4], geo), dets[:, 4],
                             dets[:, 5].astype(np.int64)), self.settings.shadow_match_iou)
        self._observe(version, agreement)

    def _observe(self, version: str, a: Agreement) -> None:
        m = self.metrics
        m.compared.labels(version).inc()
        for kind, n in (("champion", a.champion_boxes), ("shadow", a.shadow_boxes),
                        ("matched", a.matched), ("class_agreed", a.class_agreed)):
            m.boxes.labels(version, kind).inc(n)
        for delta in a.score_deltas:
            m.score_delta.labels(version).observe(float(delta))
        box_rate, class_rate = self._totals.setdefault(version, AgreementTotals()).add(a)
        m.box_agreement.labels(version).set(box_rate)
        m.class_agreement.labels(version).set(class_rate)
        self.stats.compared(version, a)
