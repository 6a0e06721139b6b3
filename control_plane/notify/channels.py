"""Where a notification goes: a signed webhook, or anything apprise reaches (Slack, Teams, mail...).

A channel makes one delivery attempt and says how it went: `None` when delivered, else what went
wrong and whether trying again may help. Queues, retries and counting are the notifier's; a
channel holds no state between attempts but its connection pool.

The webhook signs exactly as the gateway's zone-event webhooks do (`tracker_service.webhooks`:
same HMAC, same header names), so one receiver verifies both with `webhooks.verify`.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import httpx

from tracker_service.webhooks import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
                                      TIMESTAMP_HEADER, sign)

Outcome = tuple[str | None, bool]  # (what went wrong or None, whether to try again)


class WebhookChannel:
    """POST the payload as JSON, signed with the shared secret."""

    kind = "webhook"

    def __init__(self, url: str, secret: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"notification webhook {url!r}: an http:// or https:// URL is "
                             "needed")
        if not secret:
            raise ValueError("notification webhooks are set without a secret to sign with "
                             "(VG_NOTIFY_WEBHOOK_SECRET)")
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        # Logs show scheme, host and path only: a query string may carry a token.
        self.name = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._client = httpx.Client(follow_redirects=False, timeout=httpx.Timeout(timeout_s),
                                    headers={"User-Agent": "visionguard-notify/1"})

    def deliver(self, payload: dict) -> Outcome:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode()
        timestamp = int(time.time())  # each attempt is signed again with its own time
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: sign(self.secret, timestamp, body),
                   DELIVERY_HEADER: payload["id"], EVENT_HEADER: payload["event"]}
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return f"no answer within {self.timeout_s:g} s", True
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}", True
        if response.status_code < 300:
            return None, False
        return (f"HTTP {response.status_code}",
                response.status_code == 429 or response.status_code >= 500)


class AppriseChannel:
    """One apprise URL (slack://, msteams://, mailto://, json://...): a title and a text."""

    # Failures and alerts stand out in chat; the rest is news.
    WARNING_EVENTS = frozenset({"candidate_rejected", "drift_alert", "rollback",
                                "canary_aborted", "retraining_requested"})

    def __init__(self, url: str, timeout_s: float) -> None:
        import apprise

        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            raise ValueError(f"notification URL {url.split('://')[0]}://...: apprise does not "
                             "know this service or cannot parse the URL")
        # A URL's own cto=/rto= win; otherwise the notifier's deadline applies here too.
        query = urlsplit(url).query
        if "cto=" not in query:
            plugin.socket_connect_timeout = timeout_s
        if "rto=" not in query:
            plugin.socket_read_timeout = timeout_s
        self._plugin = plugin
        self._apprise = apprise
        self.kind = url.split("://", 1)[0].lower()  # the service: slack, msteams, mailto...
        self.name = plugin.url(privacy=True)  # tokens and passwords masked for the logs

    def deliver(self, payload: dict) -> Outcome:
        notify_type = (self._apprise.NotifyType.WARNING
                       if payload["event"] in self.WARNING_EVENTS else
                       self._apprise.NotifyType.SUCCESS if payload["event"] == "promotion"
                       else self._apprise.NotifyType.INFO)
        title = " ".join(filter(None, ("VisionGuard", payload["event"], payload.get("model"))))
        ok = self._plugin.notify(title=title,
                                 body=payload["summary"], notify_type=notify_type)
        # apprise says only whether it worked (its own log says why): worth another try.
        return (None, False) if ok else (f"{self.kind} notification not accepted", True)
