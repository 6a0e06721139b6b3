"""The control plane's Prometheus metrics (base units, `_seconds`, `_total`), in one registry.

Feature areas add theirs here, so one file lists every series the control plane exports (the
Grafana dashboards' queries are checked against a scrape of it).
"""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class StackStatusCollector(Collector):
    """The supervisor's view of `up`'s children, read from its status file at each scrape: the
    supervisor runs in `up`, not in this process, and the file survives this process's own
    restarts. No file (a cluster, where the kubelet restarts pods): no series."""

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file

    def collect(self):
        try:
            children = json.loads(self.status_file.read_text()).get("children", {})
        except (OSError, ValueError):
            return
        restarts = CounterMetricFamily(
            "visionguard_stack_child_restarts",
            "Restarts of each child of `visionguard up` by its supervisor", labels=["child"])
        running = GaugeMetricFamily(
            "visionguard_stack_child_running",
            "1 while the child of `visionguard up` runs, 0 while it waits to restart or failed",
            labels=["child"])
        for name, child in sorted(children.items()):
            restarts.add_metric([name], float(child.get("restarts", 0)))
            running.add_metric([name], 1.0 if child.get("state") == "running" else 0.0)
        yield restarts
        yield running


class NotificationsCollector(Collector):
    """Notifications by channel kind and outcome (control_plane/notify), read at each scrape from
    the process's counts: the promoter and the drift monitor own their notifier, not this app."""

    def collect(self):
        from control_plane.notify import OUTCOMES, counts

        family = CounterMetricFamily(
            "visionguard_notifications",
            "Release and drift notifications by channel kind (webhook, slack, mailto...) and "
            "outcome: sent, retried (an attempt to be tried again), failed, dropped",
            labels=["channel", "outcome"])
        seen = counts()
        for outcome in OUTCOMES:  # the webhook's series exist before the first notification
            seen.setdefault(("webhook", outcome), 0)
        for (channel, outcome), n in sorted(seen.items()):
            family.add_metric([channel, outcome], float(n))
        yield family


class ControlPlaneMetrics:
    def __init__(self, status_file: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(NotificationsCollector())
        if status_file is not None:
            r.register(StackStatusCollector(status_file))
        self.api_errors = Counter(
            "visionguard_control_api_errors_total", "API calls refused, by error code",
            ["code"], registry=r)
        # The embedded OTLP receiver (control_plane/logs/receiver.py): spans written to the traces file.
        self.spans_received = Counter(
            "visionguard_control_spans_received_total",
            "Spans received over OTLP and written to the traces file, by service",
            ["service"], registry=r)
        # Log RAG (logs_api.py): query latency by retrieval mode, events in the index.
        self.log_query_seconds = Histogram(
            "visionguard_log_query_seconds", "Log questions answered: retrieval + answer time",
            ["mode"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r)
        self.log_index_documents = Gauge(
            "visionguard_log_index_documents", "Events (log lines and spans) in the log index",
            registry=r)
        # Known label values start at 0, so dashboards and alerts see the series before the
        # first event.
        for code in ("unauthorized", "forbidden", "not_found", "invalid_parameter", "conflict",
                     "busy", "candidate_rejected", "internal_error"):
            self.api_errors.labels(code)
        for service in ("gateway", "triton"):
            self.spans_received.labels(service)
        for mode in ("bm25", "embedding", "hybrid"):
            self.log_query_seconds.labels(mode)
        self._drift(r)

    def _drift(self, r: CollectorRegistry) -> None:
        """Drift (control_plane/drift/monitor.py). Per-check series start at NaN (no check yet) so
        every series exists from the first scrape."""
        from tracker_service.drift_features import FEATURES

        self.drift_features_received = Counter(
            "visionguard_drift_features_received_total",
            "Drift feature samples received from gateways", registry=r)
        self.drift_window_samples = Gauge(
            "visionguard_drift_window_samples", "Samples in the live drift window", registry=r)
        self.drift_checks = Counter(
            "visionguard_drift_checks_total",
            "Drift checks by result: drift, no_drift, insufficient_data, error",
            ["result"], registry=r)
        self.drift_p_value = Gauge(
            "visionguard_drift_p_value",
            "Last drift check's p-value by detector (ks per feature, mmd over all)",
            ["detector", "feature"], registry=r)
        self.drift_distance = Gauge(
            "visionguard_drift_distance",
            "Last drift check's distance (KS statistic per feature, MMD^2 over all)",
            ["detector", "feature"], registry=r)
        self.drift_detected = Gauge(
            "visionguard_drift_detected",
            "Last drift check's decision (1 drift) by detector: ks, mmd, any", ["detector"],
            registry=r)
        self.drift_last_check = Gauge(
            "visionguard_drift_last_check_timestamp_seconds",
            "Unix time of the last completed drift check", registry=r)
        self.drift_retraining_pending = Gauge(
            "visionguard_drift_retraining_pending",
            "Retraining requests waiting for a person's approval", registry=r)
        for result in ("drift", "no_drift", "insufficient_data", "error"):
            self.drift_checks.labels(result)
        for feature in FEATURES:
            self.drift_p_value.labels("ks", feature).set(float("nan"))
            self.drift_distance.labels("ks", feature).set(float("nan"))
        self.drift_p_value.labels("mmd", "all").set(float("nan"))
        self.drift_distance.labels("mmd", "all").set(float("nan"))
        for detector in ("ks", "mmd", "any"):
            self.drift_detected.labels(detector).set(float("nan"))
