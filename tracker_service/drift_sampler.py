"""Drift features from the gateway to the control plane: sampled, buffered, sent in batches.

A request never waits for the control plane: `offer` computes the features of a sampled
request (under a millisecond) and appends them to a bounded buffer; a background task posts
batches (`POST /v1/drift/features`, bearer token) every `drift_flush_s` or when a batch is full.
When the buffer is full, or the control plane refuses or cannot be reached, samples are
dropped and counted (`visionguard_gateway_drift_features_total{outcome}`); drift needs a
representative window, not every request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

import httpx
import numpy as np
from anyio import to_thread

from tracker_service.drift_features import FEATURES, drift_features, samplable
from tracker_service.metrics import GatewayMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.tasks import stop_task

log = logging.getLogger("visionguard.gateway.drift")

MAX_FEATURISING = 4  # images whose features are being computed at once


class DriftSampler:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.enabled = bool(settings.control_url) and settings.drift_sample_rate > 0
        self._buffer: deque[dict] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._random = random.Random()
        self._failing = False
        self._featurising = 0
        self._tasks: set[asyncio.Task] = set()
        headers = {"authorization": f"Bearer {settings.control_token}"} \
            if settings.control_token else {}
        self._client = httpx.AsyncClient(base_url=settings.control_url or "http://unset",
                                         headers=headers, timeout=settings.drift_post_timeout_s,
                                         transport=transport)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="drift-sampler")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await stop_task(self._task)
        self._task = None
        await self._client.aclose()

    def offer(self, bgr: np.ndarray | None, scores: np.ndarray, boxes: np.ndarray, *,
              conf: float, classes, max_det: int, model_version: str) -> bool:
        """Sample this request: True if its features will be computed and buffered.

        Returns at once: the features are computed in a worker thread (a 12 MP frame takes
        tens of milliseconds to shrink, which must not stall the event loop), at most
        MAX_FEATURISING images at a time. Never raises for a full buffer or a missing control
        plane: the request it came from must not fail."""
        if not self.enabled or bgr is None:
            return False
        if self._random.random() >= self.settings.drift_sample_rate:
            return False
        if not samplable(conf, classes, max_det, len(scores)):
            return False
        if (len(self._buffer) + self._featurising >= self.settings.drift_max_buffer
                or self._featurising >= MAX_FEATURISING):
            self.metrics.drift_features.labels("dropped_full").inc()
            return False
        self._featurising += 1
        task = asyncio.get_running_loop().create_task(
            self._featurise(bgr, np.array(scores), np.array(boxes), model_version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _featurise(self, bgr, scores, boxes, model_version: str) -> None:
        try:
            values = await to_thread.run_sync(drift_features, bgr, scores, boxes)
        except Exception:  # a bug here must not surface in a request
            log.exception("drift features failed", extra={"event": "drift_features_failed"})
            return
        finally:
            self._featurising -= 1
        self._buffer.append({"model_version": model_version,
                             "values": [round(float(v), 6) for v in values]})
        self.metrics.drift_features.labels("buffered").inc()
        self.metrics.drift_buffer.set(len(self._buffer))
        if len(self._buffer) >= self.settings.drift_batch_size:
            self._wake.set()

    async def settled(self) -> None:
        """Wait until the features of every accepted sample are in the buffer."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.drift_flush_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            while self._buffer:
                await self.flush_once()
                if len(self._buffer) < self.settings.drift_batch_size:
                    break

    async def flush_once(self) -> int:
        """Post one batch from the buffer; returns the samples sent (0 when dropped)."""
        n = min(len(self._buffer), self.settings.drift_batch_size)
        if n == 0:
            return 0
        batch = [self._buffer.popleft() for _ in range(n)]
        self.metrics.drift_buffer.set(len(self._buffer))
        body = {"feature_names": list(FEATURES), "model": self.settings.model_name,
                "samples": batch}
        try:
            response = await self._client.post("/v1/drift/features", json=body)
        except (httpx.HTTPError, OSError) as exc:
            return self._dropped("dropped_unreachable", n, f"{type(exc).__name__}: {exc}")
        if response.status_code >= 500:
            return self._dropped("dropped_unreachable", n, f"HTTP {response.status_code}")
        if response.status_code >= 400:
            return self._dropped("dropped_rejected", n,
                                 f"HTTP {response.status_code}: {response.text[:300]}")
        self.metrics.drift_features.labels("sent").inc(n)
        if self._failing:
            self._failing = False
            log.info("drift features reach the control plane again",
                     extra={"event": "drift_features_resumed"})
        return n

    def _dropped(self, outcome: str, n: int, reason: str) -> int:
        """Count the dropped batch; log once per outage, not once per batch."""
        self.metrics.drift_features.labels(outcome).inc(n)
        if not self._failing:
            self._failing = True
            log.warning("drift features dropped until the control plane takes them: %s",
                        reason, extra={"event": "drift_features_dropped", "outcome": outcome,
                                       "samples": n})
        return 0
