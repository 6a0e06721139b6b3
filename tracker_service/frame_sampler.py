"""Production frames kept for labelling: a bounded sample, chosen per request, written aside.

Issue 14's active-learning loop needs the frames the model sees in production with its
predictions. Three reasons pick a frame (`choose_reason`, in this order):

- drift: while the control plane's last drift check flagged drift on this model, a share
  (`frames_drift_rate`) of frames. The gateway learns it by polling `GET /v1/drift/status`
  (`DriftFlag`, every `frames_drift_poll_s`, with its control-plane token): the same check that
  raises the drift alert, read where it is published, no second detector here. The frames are
  therefore those served while the flag is up, from the check's window onwards;
- uncertain: the top detection score in [`frames_uncertain_low`, `frames_uncertain_high`), the
  active-learning band where a label teaches the model most (a frame without detections has no
  top score and is left to the uniform sample);
- uniform: `frames_uniform_rate` of all frames, the baseline the others are compared with.

Then a per-stream token bucket (`frames_per_stream_per_min`; requests without a stream share one
bucket) bounds what one camera contributes. All of that is O(1) on the request path, and so is
the rest of it: a non-blocking put of the posted bytes (already in memory) and the prediction
arrays into a bounded queue. A background task does the I/O in a worker thread: the SHA-256, the
record, the write (frame_store.py), the size cap (`frames_max_bytes`, oldest evicted first) and
the retention period (`frames_retention_s`). A JPEG is stored as posted; PNG and WebP bodies are
encoded to JPEG there, off the request path.

Nothing here delays or fails a request. A full queue, a store that fails or has no room drop
the frame and count it (`visionguard_gateway_frames_dropped_total{cause}`); after a store
failure sampling pauses with exponential backoff (frames chosen meanwhile count as `paused`)
and resumes on its own once a write succeeds. Sampling is OFF by default
(`VG_GATEWAY_FRAMES_SAMPLING`): frames can be personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import numpy as np
from anyio import to_thread

from tracker_service.frame_store import (FRAMES_PREFIX, FrameStore, FrameStoreError,
                                         LocalFrameStore, S3Credentials, S3FrameStore,
                                         StoreFull, StoreUnavailable, frame_keys)
from tracker_service.metrics import GatewayMetrics
from tracker_service.settings import GatewaySettings
from tracker_service.tasks import stop_task

log = logging.getLogger("visionguard.gateway.frames")

REASONS = ("drift", "uncertain", "uniform")
NO_STREAM = ""  # the rate-limit bucket of /v1/detect requests (no stream id)
JPEG_MAGIC = b"\xff\xd8\xff"


def choose_reason(settings: GatewaySettings, rng: random.Random, drift_flagged: bool,
                  top_score: float | None) -> str | None:
    """Why this frame should be kept, or None: drift, then uncertain, then uniform."""
    if drift_flagged and rng.random() < settings.frames_drift_rate:
        return "drift"
    if (top_score is not None
            and settings.frames_uncertain_low <= top_score < settings.frames_uncertain_high
            and rng.random() < settings.frames_uncertain_rate):
        return "uncertain"
    if rng.random() < settings.frames_uniform_rate:
        return "uniform"
    return None


class StreamRateLimit:
    """A token bucket per stream: `per_min` frames a minute, bursts of a tenth of that (at
    least one). Buckets of at most `max_streams` streams, the least recently used forgotten."""

    def __init__(self, per_min: float, max_streams: int) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(1.0, per_min / 10.0)
        self.max_streams = max_streams
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, stream: str, now: float) -> bool:
        tokens, last = self._buckets.pop(stream, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[stream] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_streams:
            self._buckets.popitem(last=False)
        return allowed


class DriftFlag:
    """Whether the control plane's last drift check flagged this gateway's model: polled from
    `GET /v1/drift/status` (its `last` result). Unreachable or no check yet: the flag keeps
    its last value (down at start), as the routing follower keeps the last routing."""

    def __init__(self, settings: GatewaySettings, enabled: bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.flagged = False
        self.checked_at: float | None = None  # the flagging check's time (Unix seconds)
        self.enabled = enabled and bool(settings.control_url)
        self._client = httpx.AsyncClient(
            base_url=settings.control_url.rstrip("/"), timeout=2.0, transport=transport,
            headers={"authorization": f"Bearer {settings.control_token}"}) \
            if self.enabled else None
        self._task: asyncio.Task | None = None

    def update(self, status: dict) -> None:
        """Read the flag from a drift status body."""
        last = status.get("last") or {}
        flagged = bool(last.get("drift")) and last.get("model") in (
            None, self.settings.model_name)
        if flagged != self.flagged:
            log.info("drift flag %s: frames are %s for the drift reason",
                     "raised" if flagged else "cleared", "sampled" if flagged else "no longer "
                     "sampled", extra={"event": "frames_drift_flag", "drift": flagged,
                                       "model_version": last.get("version")})
        self.flagged = flagged
        self.checked_at = last.get("checked_at") if flagged else None

    async def refresh(self) -> bool:
        if self._client is None:
            return False
        try:
            response = await self._client.get("/v1/drift/status")
            response.raise_for_status()
            self.update(response.json())
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.debug("drift status fetch failed: %s", exc)
            return False
        return True

    async def _follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.settings.frames_drift_poll_s)

    def start(self) -> None:
        if self._client is not None and self._task is None:
            self._task = asyncio.create_task(self._follow(), name="frames-drift-flag")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()


@dataclass(frozen=True)
class SampledFrame:
    """What the request path hands to the writer: references, no copies, no encoding."""

    data: bytes  # the body as posted
    image: np.ndarray | None  # decoded pixels, only when the body is not a JPEG
    reason: str
    stream_id: str | None
    when: datetime
    model: str
    model_version: str
    classes: list[str]
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    width: int
    height: int


def frame_record(frame: SampledFrame, sha256: str) -> dict:
    """The record stored beside the image (the labelling-export contract, issue 14)."""
    names = frame.classes
    return {
        "sha256": sha256,
        "time": frame.when.isoformat(timespec="microseconds"),
        "stream_id": frame.stream_id,
        "reason": frame.reason,
        "model": frame.model,
        "model_version": frame.model_version,
        "width": frame.width,
        "height": frame.height,
        "classes": names,
        "detections": [
            {"box": [round(float(v), 2) for v in box], "class_id": int(c),
             "class_name": names[int(c)] if 0 <= int(c) < len(names) else str(int(c)),
             "score": round(float(s), 5)}
            for box, s, c in zip(frame.boxes, frame.scores, frame.class_ids)],
    }


def store_from_settings(settings: GatewaySettings) -> FrameStore | None:
    """S3 when a bucket is configured, else the local directory; None when neither is."""
    if settings.frames_s3_bucket:
        return S3FrameStore(settings.frames_s3_endpoint, settings.frames_s3_bucket,
                            S3Credentials(settings.frames_s3_access_key,
                                          settings.frames_s3_secret_key,
                                          settings.frames_s3_region))
    if settings.frames_dir:
        return LocalFrameStore(settings.frames_dir)
    return None


def _sha_of(image_key: str) -> str:
    """frames/<day>/<sha256>.jpg -> the sha256."""
    return image_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]


class FrameSampler:
    """Chooses frames on the request path (`offer`) and writes them in the background."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics,
                 store: FrameStore | None = None, drift: DriftFlag | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store if store is not None else store_from_settings(settings)
        self.enabled = settings.frames_sampling and self.store is not None
        if settings.frames_sampling and self.store is None:
            log.warning("frame sampling is on but no store is configured (set "
                        "VG_GATEWAY_FRAMES_DIR or VG_GATEWAY_FRAMES_S3_BUCKET): sampling off",
                        extra={"event": "frames_no_store"})
        self.drift = drift if drift is not None else DriftFlag(settings, self.enabled)
        self.limit = StreamRateLimit(settings.frames_per_stream_per_min,
                                     settings.max_streams + 1)
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[SampledFrame] = asyncio.Queue(settings.frames_queue)
        self._task: asyncio.Task | None = None
        # The frames held, oldest first: image key -> (bytes of image + record, mtime); and
        # their sha256s, so the same bytes sampled on another day are not kept twice.
        self._index: OrderedDict[str, tuple[int, float]] | None = None
        self._held: set[str] = set()
        self._usage = 0
        self._paused_until = 0.0
        self._backoff = settings.frames_backoff_s
        self._next_expiry = 0.0
        for reason in REASONS:
            metrics.frames_sampled.labels(reason)

    # --- the request path -------------------------------------------------------------------

    def offer(self, data: bytes, d, stream_id: str | None) -> str | None:
        """Consider one answered request (`d`: detection.Detections): the reason it was kept
        for, or None. O(1), never raises, never waits."""
        if not self.enabled:
            return None
        top = float(d.scores.max()) if len(d.scores) else None
        reason = choose_reason(self.settings, self._rng, self.drift.flagged, top)
        if reason is None:
            return None
        self.metrics.frames_sampled.labels(reason).inc()
        now = time.monotonic()
        if now < self._paused_until:
            return self._dropped("paused")
        if not self.limit.allow(stream_id or NO_STREAM, now):
            return self._dropped("rate_limited")
        names = d.model.names
        frame = SampledFrame(
            data=data, image=None if data[:3] == JPEG_MAGIC else d.image, reason=reason,
            stream_id=stream_id, when=datetime.now(timezone.utc), model=d.model.name,
            model_version=d.model_version,
            classes=[names[i] for i in sorted(names)] if names else [],
            boxes=d.boxes, scores=d.scores, class_ids=d.classes, width=d.width,
            height=d.height)
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            return self._dropped("queue_full")
        return reason

    def _dropped(self, cause: str) -> None:
        self.metrics.frames_dropped.labels(cause).inc()
        return None

    # --- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="frame-sampler")
            self.drift.start()

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.drift.close()

    async def settled(self) -> None:
        """Wait until every queued frame is written or dropped (tests, benchmarks)."""
        await self._queue.join()

    @property
    def usage(self) -> int:
        return self._usage

    async def _run(self) -> None:
        while True:
            frame = await self._queue.get()
            try:
                if time.monotonic() < self._paused_until:  # queued before the store failed
                    self.metrics.frames_dropped.labels("paused").inc()
                    continue
                await to_thread.run_sync(self._keep, frame)
            except StoreFull as exc:
                self._failed("storage_full", exc, pause=False)
            except StoreUnavailable as exc:
                self._failed("store_error", exc, pause=True)
            except Exception as exc:  # a bug here must not stop sampling, nor a request
                log.exception("frame sampling failed", extra={"event": "frames_failed"})
                self._failed("store_error", exc, pause=True)
            else:
                if self._backoff != self.settings.frames_backoff_s:
                    log.info("frames are written again", extra={"event": "frames_resumed"})
                self._backoff = self.settings.frames_backoff_s
            finally:
                self._queue.task_done()

    def _failed(self, cause: str, exc: Exception, *, pause: bool) -> None:
        self.metrics.frames_dropped.labels(cause).inc()
        if pause:
            self._paused_until = time.monotonic() + self._backoff
            log.warning("frame store failed; sampling paused for %.1f s: %s", self._backoff,
                        exc, extra={"event": "frames_paused", "cause": cause,
                                    "backoff_s": self._backoff})
            self._backoff = min(self._backoff * 2, self.settings.frames_max_backoff_s)
        else:
            log.warning("frame dropped: %s", exc, extra={"event": "frames_dropped",
                                                         "cause": cause})

    def _load_index(self) -> OrderedDict[str, tuple[int, float]]:
        """What the store already holds (a restart keeps the cap and the retention)."""
        if isinstance(self.store, S3FrameStore):
            self.store.ensure_bucket()
        groups: dict[str, tuple[int, float]] = {}
        for key, size, mtime in self.store.list(FRAMES_PREFIX):
            stem = key.rsplit(".", 1)[0]
            total, latest = groups.get(stem, (0, 0.0))
            groups[stem] = (total + size, max(latest, mtime))
        index = OrderedDict((f"{stem}.jpg", v)
                            for stem, v in sorted(groups.items(), key=lambda kv: kv[1][1]))
        self._usage = sum(size for size, _ in index.values())
        self._held = {_sha_of(key) for key in index}
        self.metrics.frames_store_usage.set(self._usage)
        return index

    def _keep(self, frame: SampledFrame) -> None:
        """Encode if needed, hash, make room, write image then record (worker thread)."""
        if self._index is None:
            self._index = self._load_index()
        self._expire()
        data = frame.data
        if frame.image is not None:
            import cv2

            ok, encoded = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError("cannot encode the frame as JPEG")
            data = encoded.tobytes()
        sha = hashlib.sha256(data).hexdigest()
        image_key, record_key = frame_keys(sha, frame.when)
        if sha in self._held:
            self.metrics.frames_dropped.labels("duplicate").inc()
            return
        record = json.dumps(frame_record(frame, sha), separators=(",", ":")).encode()
        size = len(data) + len(record)
        if size > self.settings.frames_max_bytes:
            raise StoreFull(f"one frame ({size} bytes) is over the store's cap "
                            f"({self.settings.frames_max_bytes} bytes)")
        while self._usage + size > self.settings.frames_max_bytes and self._index:
            self._evict(next(iter(self._index)))
        self.store.put(image_key, data)
        try:
            self.store.put(record_key, record)
        except FrameStoreError:
            with contextlib.suppress(FrameStoreError):  # no image without its record
                self.store.delete(image_key)
            raise
        self._index[image_key] = (size, time.time())
        self._held.add(sha)
        self._usage += size
        self.metrics.frames_stored_bytes.inc(size)
        self.metrics.frames_store_usage.set(self._usage)

    def _evict(self, image_key: str) -> None:
        stem = image_key.rsplit(".", 1)[0]
        self.store.delete(f"{stem}.json")  # the record first: a frame without one is not read
        self.store.delete(image_key)
        size, _ = self._index.pop(image_key)
        self._held.discard(_sha_of(image_key))
        self._usage -= size
        self.metrics.frames_store_usage.set(self._usage)

    def _expire(self) -> None:
        """Delete the frames older than the retention period (at most once a minute)."""
        now = time.time()
        if now < self._next_expiry:
            return
        self._next_expiry = now + min(60.0, self.settings.frames_retention_s / 10)
        cutoff = now - self.settings.frames_retention_s
        while self._index:
            key, (_, mtime) = next(iter(self._index.items()))
            if mtime >= cutoff:
                break
            self._evict(key)
