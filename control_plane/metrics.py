"""The control plane's Prometheus metrics (base units, `_seconds`, `_total`), in one registry.

Feature areas add theirs here, so one file lists every series the control plane exports (the
Grafana dashboards' queries are checked against a scrape of it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ControlPlaneMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.api_errors = Counter(
            "visionguard_control_api_errors_total", "API calls refused, by error code",
            ["code"], registry=r)
