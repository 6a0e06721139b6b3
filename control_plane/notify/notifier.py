"""The notifier: a bounded queue and a worker thread per channel, retries, counts, never in the way.

The control plane decides in plain threads (the CLI's promoter, the API's worker threads and
drift checks), so delivery runs in daemon threads rather than on an event loop:

- `notify` builds the payload, puts it on each channel's queue and returns; it never blocks and
  never raises (a notification must not fail the promotion or the check that caused it).
- One queue and one worker per channel: a receiver that hangs delays only its own deliveries.
  A full queue drops its *oldest* delivery and counts it (the newest decisions matter most).
- An attempt that timed out, could not connect or got 429/5xx is tried again `retries` times
  after `backoff_s * 2**attempt` (capped at `max_backoff_s`; half fixed, half random, as the
  gateway's webhooks do); other refusals fail at once. Given-up deliveries are counted and
  logged (`visionguard.notify`, event `notification_failed`).
- `flush` waits, bounded, for the queues to empty; `close` flushes and counts what is left as
  dropped. The CLI process closes its notifier at exit, so a CLI promotion's message leaves
  before the process ends.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime, timezone

log = logging.getLogger("visionguard.notify")

OUTCOMES = ("sent", "retried", "failed", "dropped")
EVENTS = ("promotion", "rollback", "candidate_rejected", "canary_started", "canary_aborted",
          "drift_alert", "retraining_requested", "retraining_approved", "retraining_rejected")

_counts: Counter[tuple[str, str]] = Counter()  # (channel kind, outcome): the whole process
_counts_lock = threading.Lock()


def counts() -> dict[tuple[str, str], int]:
    """Outcomes by (channel kind, outcome) since this process started, every notifier together
    (the control plane's /metrics reads them at scrape time)."""
    with _counts_lock:
        return dict(_counts)


def _count(kind: str, outcome: str, n: int = 1) -> None:
    with _counts_lock:
        _counts[kind, outcome] += n


class _Queue:
    """One channel's waiting deliveries and its worker."""

    def __init__(self, channel, size: int) -> None:
        self.channel = channel
        self.items: deque[dict] = deque(maxlen=size)
        self.busy = False
        self.thread: threading.Thread | None = None


class Notifier:
    def __init__(self, channels: Iterable, *, events: Iterable[str] = (), queue_size: int = 100,
                 retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 source: str = "visionguard-control-plane") -> None:
        events = frozenset(events)
        unknown = events - set(EVENTS)
        if unknown:
            raise ValueError(f"unknown notification event(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(EVENTS)}")
        if queue_size < 1 or retries < 0 or backoff_s < 0:
            raise ValueError("notifications need queue_size >= 1, retries >= 0, backoff_s >= 0")
        self.events = events or frozenset(EVENTS)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.source = source
        self._queues = [_Queue(c, queue_size) for c in channels]
        self._cond = threading.Condition()
        self._closed = False
        self._last_drop_log = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._queues)

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        with self._cond:
            return sum(len(q.items) + q.busy for q in self._queues)

    def notify(self, event: str, summary: str, *, model: str | None = None,
               version: str | None = None, actor: str | None = None, **details) -> None:
        """Queue `event` for every channel and return at once; never raises."""
        if not self._queues or event not in self.events:
            return
        try:
            payload = {"event": event, "id": uuid.uuid4().hex,
                       "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                       .replace("+00:00", "Z"),
                       "source": self.source, "summary": summary, "model": model,
                       "version": None if version is None else str(version), "actor": actor,
                       "details": details}
            with self._cond:
                if self._closed:
                    return
                for q in self._queues:
                    if len(q.items) == q.items.maxlen:  # the append drops the oldest
                        _count(q.channel.kind, "dropped")
                        self._log_drop(q)
                    q.items.append(payload)
                    if q.thread is None:
                        q.thread = threading.Thread(target=self._work, args=(q,), daemon=True,
                                                    name=f"notify {q.channel.kind}")
                        q.thread.start()
                self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - a notification never fails its operation
            log.warning("notification %s not queued: %s", event, exc,
                        extra={"event": "notification_failed", "notification": event,
                               "error": f"{type(exc).__name__}: {exc}"})

    def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every queue to empty; True when nothing is left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(q.items or q.busy for q in self._queues):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, drain_s: float = 5.0) -> None:
        """Flush for up to `drain_s`, then stop; what is still queued or in flight is dropped
        and counted."""
        self.flush(drain_s)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            left = 0
            for q in self._queues:
                n = len(q.items) + q.busy
                if n:
                    _count(q.channel.kind, "dropped", n)
                    left += n
                q.items.clear()
            self._cond.notify_all()
        if left:
            log.warning("%d notification(s) not delivered at exit were dropped", left,
                        extra={"event": "notification_dropped", "dropped": left})

    # --- the workers --------------------------------------------------------------------------

    def _work(self, q: _Queue) -> None:
        while True:
            with self._cond:
                while not q.items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                payload = q.items.popleft()
                q.busy = True
            try:
                self._deliver(q.channel, payload)
            finally:
                with self._cond:
                    q.busy = False
                    self._cond.notify_all()

    def _deliver(self, channel, payload: dict) -> None:
        for attempt in range(self.retries + 1):
            try:
                problem, retryable = channel.deliver(payload)
            except Exception as exc:  # noqa: BLE001 - a channel's library may raise anything
                problem, retryable = f"{type(exc).__name__}: {exc}", True
            if self._closed:  # close() counted it as dropped
                return
            if problem is None:
                _count(channel.kind, "sent")
                return
            if not retryable or attempt == self.retries:
                _count(channel.kind, "failed")
                log.warning("notification %s to %s failed after %d attempt(s): %s",
                            payload["event"], channel.name, attempt + 1, problem,
                            extra={"event": "notification_failed", "channel": channel.kind,
                                   "target": channel.name, "notification": payload["event"],
                                   "delivery": payload["id"], "attempts": attempt + 1,
                                   "error": problem})
                return
            _count(channel.kind, "retried")
            with self._cond:  # wakes early only to stop
                self._cond.wait_for(lambda: self._closed, self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        return wait / 2 + random.uniform(0, wait / 2)

    def _log_drop(self, q: _Queue) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s while a receiver lags
            self._last_drop_log = now
            log.warning("notification queue for %s is full (%d): dropping the oldest",
                        q.channel.name, q.items.maxlen,
                        extra={"event": "notification_dropped", "channel": q.channel.kind,
                               "target": q.channel.name})
