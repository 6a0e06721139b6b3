"""Notifications: release and drift decisions told to people and systems as they happen.

The promoter (promotions, rollbacks, rejected candidates, canary start and abort) and the drift
monitor (drift alerts, retraining requests and their decisions) call `notifier_for(settings)
.notify(...)` next to their audit and log records. Channels come from settings (VG_NOTIFY_*):
signed webhooks (the gateway's HMAC scheme and headers, tracker_service/webhooks.py) and apprise
URLs for chat and mail. Delivery is in the background (notifier.py); outcomes are counted per
channel kind on the control plane's /metrics (`visionguard_notifications_total`).

It sits with mlflow_store and auth, above settings: it imports only the settings and the
gateway's signing (tracker_service.webhooks), so every wing may import it.

Payload (the webhook's JSON body; apprise channels get `summary` as the text):

    {"event": "promotion", "id": "<32 hex, the delivery id>", "ts": "...Z",
     "source": "visionguard-control-plane", "summary": "detector version 3 is the champion...",
     "model": "detector", "version": "3", "actor": "cli:alice", "details": {...}}
"""

from __future__ import annotations

import atexit
import logging
import threading

from control_plane.notify.channels import AppriseChannel, WebhookChannel
from control_plane.notify.notifier import EVENTS, OUTCOMES, Notifier, counts
from control_plane.settings import Settings

__all__ = ["EVENTS", "OUTCOMES", "Notifier", "build_notifier", "counts", "notifier_for"]

log = logging.getLogger("visionguard.notify")

_notifiers: dict[tuple, Notifier] = {}
_lock = threading.Lock()


def _split(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def build_notifier(settings: Settings) -> Notifier:
    """A notifier with the channels the settings name; ValueError on a bad setting."""
    channels = [WebhookChannel(url, settings.notify_webhook_secret, settings.notify_timeout_s)
                for url in _split(settings.notify_webhook_urls)]
    if settings.notify_apprise_urls.strip():  # apprise loads its plugins on import: ~1 s
        from apprise.utils.parse import parse_urls  # commas may sit inside an apprise URL

        channels += [AppriseChannel(url, settings.notify_timeout_s)
                     for url in parse_urls(settings.notify_apprise_urls)]
    return Notifier(channels, events=_split(settings.notify_events),
                    queue_size=settings.notify_queue, retries=settings.notify_retries,
                    backoff_s=settings.notify_backoff_s,
                    max_backoff_s=settings.notify_max_backoff_s)


def notifier_for(settings: Settings) -> Notifier:
    """The process's notifier for these settings (one per distinct channel configuration),
    closed at exit with up to `notify_drain_s` to deliver what is queued. A bad setting is
    logged (`notification_config_invalid`) and gives a notifier without channels: the
    operations it would tell about still run."""
    key = (settings.notify_webhook_urls, settings.notify_webhook_secret,
           settings.notify_apprise_urls, settings.notify_events, settings.notify_timeout_s,
           settings.notify_queue, settings.notify_retries, settings.notify_backoff_s,
           settings.notify_max_backoff_s)
    with _lock:
        notifier = _notifiers.get(key)
        if notifier is None:
            try:
                notifier = build_notifier(settings)
            except ValueError as exc:
                log.error("notifications are off: %s", exc,
                          extra={"event": "notification_config_invalid", "error": str(exc)})
                notifier = Notifier(())
            if notifier.enabled:
                atexit.register(notifier.close, settings.notify_drain_s)
            _notifiers[key] = notifier
        return notifier
