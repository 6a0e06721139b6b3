"""Release state as Prometheus metrics, read at scrape time from MLflow and the audit log."""

from __future__ import annotations

from control_plane.mlflow_store import CHALLENGER, CHAMPION, PREVIOUS

RELEASE_ACTIONS = ("register", "promote", "canary", "canary_abort", "rollback", "reject")


class ReleaseCollector:
    """Release state at scrape time, whoever changed it (the CLI or the API): the aliases
    and canary share from MLflow, and counts of audit-log events by action and outcome (the
    log is append-only, so they behave as counters)."""

    def __init__(self, registry, audit_path) -> None:
        self.model_registry = registry
        self.audit_path = audit_path

    def collect(self):
        import json

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        aliases = GaugeMetricFamily(
            "visionguard_model_alias_info",
            "Model version holding each release alias (1; 0 with version \"\" when unset)",
            labels=["model", "alias", "version"])
        canary = GaugeMetricFamily("visionguard_canary_percent",
                                   "Share of streams routed to the challenger", labels=["model"])
        model = self.model_registry.name
        try:
            routing = self.model_registry.routing()
            previous = self.model_registry.alias(PREVIOUS)
        except Exception:  # noqa: BLE001 - MLflow unreachable: say nothing rather than fail
            routing, previous = None, None
        if routing is not None:
            for alias, version in ((CHAMPION, routing.champion),
                                   (CHALLENGER, routing.challenger), (PREVIOUS, previous)):
                aliases.add_metric([model, alias, version or ""], 1.0 if version else 0.0)
            canary.add_metric([model], routing.canary_percent)
        events = CounterMetricFamily(
            "visionguard_release_events",
            "Release audit-log events by action and outcome (CLI and API alike)",
            labels=["action", "outcome"])
        counts = {(a, "ok"): 0 for a in RELEASE_ACTIONS if a != "reject"}
        counts.update({("promote", "started"): 0, ("canary", "started"): 0,
                       ("reject", "rejected"): 0})
        try:
            with open(self.audit_path) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if not entry.get("action", "").startswith("step:"):
                        key = (entry.get("action", ""), entry.get("outcome", ""))
                        counts[key] = counts.get(key, 0) + 1
        except FileNotFoundError:
            pass
        for (action, outcome), n in sorted(counts.items()):
            events.add_metric([action, outcome], n)
        yield aliases
        yield canary
        yield events
