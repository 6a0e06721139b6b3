"""Notifications of release and drift decisions (control_plane/notify), against real HTTP receivers.

- Signed webhooks: the gateway's HMAC scheme and header names, checked by a receiver written
  from the documented scheme and by `tracker_service.webhooks.verify`;
- apprise: a `json://` URL pointing at the local receiver;
- a receiver answering 500 and one that sleeps past the deadline: `notify` returns before any
  answer, the failures are retried, counted on /metrics and logged (`notification_failed`);
- a full queue drops the oldest and counts it;
- the drift monitor's real check and retraining decision path: drift alert, retraining
  requested and approved reach the receiver while a second, failing receiver changes nothing.
  The detectors are replaced by a fixed drifted result there: importing alibi-detect alone takes
  ~14 s on these 2 cores, and tests/test_drift.py covers them.

The promoter's hooks (promotion, rollback, rejected candidate, canary start and abort) need a
running Triton; they call the same `Notifier.notify` next to their audit records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from prometheus_client import generate_latest

from control_plane import notify
from control_plane.api.metrics import ControlPlaneMetrics
from control_plane.notify import Notifier, build_notifier, notifier_for
from control_plane.notify.channels import WebhookChannel
from control_plane.settings import Settings
from tests.webhook_receiver import Receiver, receiving, signature_ok
from tracker_service.webhooks import verify

SECRET = "notify-test-secret"
TIMEOUT_S = 0.5


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(slow_s=TIMEOUT_S * 3) as r:
        yield r


def settings_for(tmp_path, **notify_settings) -> Settings:
    return replace(Settings(runtime_dir=tmp_path), notify_webhook_secret=SECRET,
                   notify_timeout_s=TIMEOUT_S, notify_retries=1, notify_backoff_s=0.05,
                   **notify_settings)


def sent_count(channel: str, outcome: str) -> int:
    return notify.counts().get((channel, outcome), 0)


def scrape() -> str:
    return generate_latest(ControlPlaneMetrics().registry).decode()


@contextmanager
def closing(notifier: Notifier) -> Iterator[Notifier]:
    try:
        yield notifier
    finally:
        notifier.close(drain_s=0)


def test_webhooks_are_signed_as_the_gateways_and_filtered_by_event(receiver, tmp_path):
    settings = settings_for(tmp_path, notify_webhook_urls=f"{receiver.url}/ok",
                            notify_events="promotion,rollback")
    before = sent_count("webhook", "sent")
    with closing(build_notifier(settings)) as notifier:
        notifier.notify("promotion", "detector version 3 is the champion", model="detector",
                        version=3, actor="cli:alice", previous="2")
        notifier.notify("drift_alert", "not in VG_NOTIFY_EVENTS", model="detector")
        notifier.notify("rollback", "detector version 2 is the champion again",
                        model="detector", version="2", actor="cli:alice", rolled_back="3")
        assert notifier.flush(10)
    got = receiver.on("/ok")
    assert [h["X-VisionGuard-Event"] for h, _ in got] == ["promotion", "rollback"]
    for headers, body in got:
        payload = json.loads(body)
        assert signature_ok(headers, body, SECRET)
        assert verify(SECRET, body, headers["X-VisionGuard-Timestamp"],
                      headers["X-VisionGuard-Signature"])
        assert not verify(SECRET, body + b" ", headers["X-VisionGuard-Timestamp"],
                          headers["X-VisionGuard-Signature"])
        assert headers["X-VisionGuard-Delivery"] == payload["id"]
        assert headers["Content-Type"] == "application/json"
        assert payload["source"] == "visionguard-control-plane"
        assert payload["model"] == "detector" and payload["actor"] == "cli:alice"
        assert payload["ts"].endswith("Z")
    promotion = json.loads(got[0][1])
    assert promotion["event"] == "promotion" and promotion["version"] == "3"
    assert promotion["details"] == {"previous": "2"}
    assert json.loads(got[1][1])["details"] == {"rolled_back": "3"}
    assert sent_count("webhook", "sent") == before + 2
    assert f'visionguard_notifications_total{{channel="webhook",outcome="sent"}} ' \
           f'{float(before + 2)}' in scrape()


def test_an_apprise_json_url_delivers_to_the_receiver(receiver, tmp_path):
    settings = settings_for(tmp_path, notify_apprise_urls=f"json://127.0.0.1:{receiver.port}"
                                                          "/apprise")
    before = sent_count("json", "sent")
    with closing(build_notifier(settings)) as notifier:
        notifier.notify("candidate_rejected", "detector version 4 rejected at gate_accuracy: "
                        "mAP50 0.41 < champion 0.52 - 0.01", model="detector", version="4")
        assert notifier.flush(10)
    ((_, body),) = receiver.on("/apprise")
    message = json.loads(body)
    assert message["title"] == "VisionGuard candidate_rejected detector"
    assert message["message"].startswith("detector version 4 rejected at gate_accuracy")
    assert message["type"] == "warning"
    assert sent_count("json", "sent") == before + 1
    assert 'visionguard_notifications_total{channel="json",outcome="sent"}' in scrape()


def test_a_500_and_a_timeout_never_block_the_caller_and_are_counted_and_logged(
        receiver, tmp_path, caplog):
    settings = settings_for(tmp_path,
                            notify_webhook_urls=f"{receiver.url}/fail,{receiver.url}/slow")
    failed, retried = sent_count("webhook", "failed"), sent_count("webhook", "retried")
    caplog.set_level(logging.WARNING, logger="visionguard.notify")
    with closing(build_notifier(settings)) as notifier:
        notifier.notify("rollback", "detector version 2 is the champion again",
                        model="detector", version="2")
        # notify has returned with both deliveries still queued or in flight: it did not
        # wait for the receivers (each retry waits out a backoff, /slow sleeps 1.5 s)
        assert notifier.pending == 2
        assert notifier.flush(15)
    fails, slows = receiver.on("/fail"), receiver.on("/slow")
    assert len(fails) == 2 and len(slows) == 2  # the first attempt and one retry each
    assert len({h["X-VisionGuard-Delivery"] for h, _ in fails}) == 1  # same id on the retry
    assert all(signature_ok(h, b, SECRET) for h, b in fails + slows)
    assert sent_count("webhook", "failed") == failed + 2
    assert sent_count("webhook", "retried") == retried + 2
    problems = sorted(r.error for r in caplog.records
                      if getattr(r, "event", "") == "notification_failed")
    assert problems == ["HTTP 500", f"no answer within {TIMEOUT_S:g} s"]
    assert all(r.notification == "rollback" and r.attempts == 2 for r in caplog.records
               if getattr(r, "event", "") == "notification_failed")


def test_a_full_queue_drops_the_oldest_and_counts_it(receiver, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="visionguard.notify")
    dropped = sent_count("webhook", "dropped")
    channel = WebhookChannel(f"{receiver.url}/hang", SECRET, timeout_s=10)
    with closing(Notifier([channel], queue_size=2)) as notifier:
        notifier.notify("promotion", "first: in flight", version="1")
        assert receiver.entered.wait(5)  # the worker holds the first; the queue is empty
        for version in range(2, 6):
            notifier.notify("promotion", "queued", version=str(version))
        assert notifier.pending == 3  # one in flight, two queued
        receiver.release.set()
        assert notifier.flush(10)
    versions = [json.loads(b)["version"] for _, b in receiver.on("/hang")]
    assert versions == ["1", "4", "5"]
    assert sent_count("webhook", "dropped") == dropped + 2
    assert any(getattr(r, "event", "") == "notification_dropped" for r in caplog.records)


def test_bad_settings_are_refused_and_turn_notifications_off_without_failing(tmp_path, caplog):
    with pytest.raises(ValueError, match="without a secret"):
        build_notifier(replace(settings_for(tmp_path, notify_webhook_urls="http://x/h"),
                               notify_webhook_secret=""))
    with pytest.raises(ValueError, match="http:// or https://"):
        build_notifier(settings_for(tmp_path, notify_webhook_urls="ftp://x/h"))
    with pytest.raises(ValueError, match="unknown notification event"):
        build_notifier(settings_for(tmp_path, notify_events="promotion,promoted"))
    with pytest.raises(ValueError, match="apprise does not know"):
        build_notifier(settings_for(tmp_path, notify_apprise_urls="nosuchservice://a/b"))
    caplog.set_level(logging.ERROR, logger="visionguard.notify")
    off = notifier_for(settings_for(tmp_path, notify_webhook_urls="ftp://x/h"))
    assert not off.enabled
    off.notify("promotion", "goes nowhere, raises nothing")
    assert [r.event for r in caplog.records if r.name == "visionguard.notify"] == [
        "notification_config_invalid"]


def test_the_drift_monitor_tells_of_drift_and_retraining_decisions(receiver, tmp_path, caplog):
    from control_plane.drift.monitor import DriftMonitor, DriftResult

    settings = settings_for(
        tmp_path, drift_retrain_on_drift=True,
        notify_webhook_urls=f"{receiver.url}/ok,{receiver.url}/fail")
    metrics = ControlPlaneMetrics()
    monitor = DriftMonitor(settings, metrics)
    drifted = DriftResult(
        "detector", "7", time.time(), 40, 60, 0.05, True,
        {"ks": {"drift": True, "threshold": 0.003,
                "features": {"brightness": {"p_value": 1e-9, "distance": 0.8}}},
         "mmd": {"drift": True, "threshold": 0.025, "p_value": 0.0, "distance": 0.4,
                 "distance_threshold": 0.02}},
        ["brightness"])
    monitor.compare = lambda version=None: drifted  # the detectors: see the module docstring
    failed = sent_count("webhook", "failed")
    caplog.set_level(logging.WARNING, logger="visionguard.notify")

    assert monitor.check() is drifted  # published, with one of two receivers answering 500
    (request,) = monitor.retraining.all()
    monitor.retraining.decide(request["id"], "approved", "release")
    assert monitor.notifier.flush(15)

    got = [(h, json.loads(b)) for h, b in receiver.on("/ok")]
    assert [p["event"] for _, p in got] == ["drift_alert", "retraining_requested",
                                            "retraining_approved"]
    assert all(signature_ok(h, b, SECRET) for h, b in receiver.on("/ok"))
    alert = got[0][1]
    assert alert["model"] == "detector" and alert["version"] == "7"
    assert alert["details"]["drifted_features"] == ["brightness"]
    assert "brightness" in alert["summary"]
    approved = got[2][1]
    assert approved["actor"] == "release"
    assert approved["details"]["request"]["id"] == request["id"]
    assert sent_count("webhook", "failed") == failed + 3
    assert sum(getattr(r, "event", "") == "notification_failed" for r in caplog.records) == 3
