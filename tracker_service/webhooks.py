"""Signed JSON webhooks, sent in the background from a bounded queue, retried, never in the way.

The gateway sends its zone and line events with it; the control plane's release notifications
are meant to use it too, so nothing here knows what it sends: a payload is any JSON object.

Signature scheme (what a receiver checks; `verify` does it):

    X-VisionGuard-Timestamp: 1764756000     Unix seconds when this attempt was signed
    X-VisionGuard-Signature: sha256=<hex>   HMAC-SHA256(secret, b"<timestamp>." + raw body)
    X-VisionGuard-Delivery:  <32 hex>       one id per delivery, the same on each retry
    X-VisionGuard-Event:     <name>         what the payload is (e.g. zone_events)

The receiver recomputes the HMAC over the timestamp, a dot and the body bytes exactly as
received, compares in constant time, and refuses a timestamp older than its tolerance (5
minutes is usual) and a delivery id it has already seen. Because the timestamp is inside the
signed string, a captured request cannot be replayed later with a fresh timestamp; each retry
is signed again with its own timestamp. (Stripe and Slack sign the same way.)

Delivery:

- One bounded queue and one worker per URL: a receiver that hangs delays only its own
  deliveries. When a queue is full the *oldest* waiting delivery is dropped and counted: the
  newest events are the ones a live receiver acts on.
- Timeouts, connection errors, 429 and 5xx answers are retried `retries` times, waiting
  `backoff_s * 2**attempt` (capped at `max_backoff_s`) with jitter: half of the wait fixed, half
  random, so receivers coming back are not hit by every sender at once. Other answers
  (4xx: the receiver refused this payload) fail at once. Each attempt has one deadline,
  `timeout_s` for connect, send and answer together, so a receiver trickling bytes cannot hold
  its worker.
- `send` never blocks and never raises for a delivery problem; it may be called from the event
  loop that started the sender or from any other thread. Outcomes are counted
  (`counts`, and `on_outcome` for a metrics counter): delivered, retried (an attempt that will
  be tried again), failed (given up), dropped (queue full, or not done at close).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-VisionGuard-Signature"
TIMESTAMP_HEADER = "X-VisionGuard-Timestamp"
DELIVERY_HEADER = "X-VisionGuard-Delivery"
EVENT_HEADER = "X-VisionGuard-Event"
OUTCOMES = ("delivered", "retried", "failed", "dropped")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, body: bytes, timestamp: str, signature: str, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """A receiver's check: the signature matches and the timestamp is within `tolerance_s` of
    now. (Refusing delivery ids already seen is the receiver's own bookkeeping.)"""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True)
class _Delivery:
    id: str
    event: str
    body: bytes


class _Target:
    """One URL's queue and its worker's wake-up."""

    def __init__(self, url: str, size: int) -> None:
        self.url = url
        self.queue: deque[_Delivery] = deque(maxlen=size)
        self.wake = asyncio.Event()
        self.busy = False


class WebhookSender:
    def __init__(self, urls: Sequence[str], secret: str, *, timeout_s: float = 5.0,
                 queue_size: int = 1000, retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, on_outcome: Callable[[str], None] | None = None,
                 user_agent: str = "visionguard-webhooks/1") -> None:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"webhook URL {url!r}: an http:// or https:// URL is needed")
        if urls and not secret:
            raise ValueError("webhook URLs are set without a secret to sign with")
        if timeout_s <= 0 or queue_size < 1 or retries < 0:
            raise ValueError("webhooks need timeout_s > 0, queue_size >= 1 and retries >= 0")
        self.urls = list(urls)
        self.secret = secret
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_outcome = on_outcome
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._queue_size = queue_size
        self._user_agent = user_agent
        self._targets: list[_Target] = []
        self._workers: list[asyncio.Task] = []
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_drop_log = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        return sum(len(t.queue) + t.busy for t in self._targets)

    async def start(self) -> None:
        """Open the HTTP client and one worker per URL on the running event loop."""
        if not self.urls or self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(follow_redirects=False,
                                         headers={"User-Agent": self._user_agent},
                                         timeout=httpx.Timeout(self.timeout_s))
        self._targets = [_Target(url, self._queue_size) for url in self.urls]
        self._workers = [asyncio.create_task(self._work(t), name=f"webhook {t.url}")
                         for t in self._targets]

    def send(self, event: str, payload: Mapping) -> None:
        """Queue `payload` (a JSON object) for every URL; returns at once."""
        if not self.urls:
            return
        if self._loop is None:
            raise RuntimeError("WebhookSender.send before start()")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode()
        delivery = _Delivery(uuid.uuid4().hex, event, body)
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._enqueue(delivery)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._enqueue, delivery)

    def _enqueue(self, delivery: _Delivery) -> None:
        for target in self._targets:
            if len(target.queue) == target.queue.maxlen:  # the append drops the oldest
                self._count("dropped")
                self._log_drop(target)
            target.queue.append(delivery)
            target.wake.set()

    async def close(self, drain_s: float = 1.0) -> None:
        """Give queued deliveries up to `drain_s` to go, then stop; what is left is dropped."""
        if self._loop is None:
            return
        deadline = time.monotonic() + drain_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.pending  # queued, or in flight and abandoned
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if left:
            log.warning("%d webhook deliveries not done at shutdown were dropped", left,
                        extra={"event": "webhook_dropped", "dropped": left})
        for _ in range(left):
            self._count("dropped")
        for target in self._targets:
            target.queue.clear()
        if self._client is not None:
            await self._client.aclose()
        self._loop = None

    async def _work(self, target: _Target) -> None:
        while True:
            while not target.queue:
                target.wake.clear()
                await target.wake.wait()
            delivery = target.queue.popleft()
            target.busy = True
            try:
                await self._deliver(target.url, delivery)
            finally:
                target.busy = False

    async def _deliver(self, url: str, delivery: _Delivery) -> None:
        for attempt in range(self.retries + 1):
            problem, retryable = await self._attempt(url, delivery)
            if problem is None:
                self._count("delivered")
                return
            if not retryable or attempt == self.retries:
                self._count("failed")
                log.warning("webhook to %s failed after %d attempt(s): %s", url, attempt + 1,
                            problem, extra={"event": "webhook_failed", "url": url,
                                            "webhook_event": delivery.event,
                                            "delivery": delivery.id, "attempts": attempt + 1,
                                            "error": problem})
                return
            self._count("retried")
            await asyncio.sleep(self._backoff(attempt))

    async def _attempt(self, url: str, delivery: _Delivery) -> tuple[str | None, bool]:
        """(None, _) when delivered; else (what went wrong, whether to try again)."""
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: sign(self.secret, timestamp, delivery.body),
                   DELIVERY_HEADER: delivery.id, EVENT_HEADER: delivery.event}
        assert self._client is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(url, content=delivery.body, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout_s:g} s", True
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}", True
        if response.status_code < 300:
            return None, False
        retryable = response.status_code == 429 or response.status_code >= 500
        return f"HTTP {response.status_code}", retryable

    def _backoff(self, attempt: int) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        return wait / 2 + random.uniform(0, wait / 2)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1  # on the loop's thread only (send hands over to it)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _log_drop(self, target: _Target) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s while a receiver lags
            self._last_drop_log = now
            log.warning("webhook queue for %s is full (%d): dropping the oldest deliveries",
                        target.url, target.queue.maxlen,
                        extra={"event": "webhook_dropped", "url": target.url,
                               "dropped_total": self.counts["dropped"]})

