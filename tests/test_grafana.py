"""grafana/: dashboards, alert rules and the Prometheus scrape config.

- Static: dashboards are valid provisioning JSON on the `prometheus` datasource; rule files pass
  `promtool check rules`; the PromQL metric-name extractor is checked on known expressions.
- Integration (the real stack from `visionguard up`): every metric named in every dashboard
  query and alert rule exists in a scrape of the gateway, Triton's metrics port and the control
  plane; a real Prometheus started with grafana/prometheus.yml scrapes the stack, loads the
  rules, and answers the dashboards' queries (the request rate with real, non-zero data).

The checks are generic over grafana/dashboards/*.json and grafana/alerts/*.rules.yaml, so
dashboards and rules added later are checked the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_ports

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = sorted((GRAFANA / "alerts").glob("*.rules.yaml"))
# Series Prometheus makes itself rather than scrapes.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS",
             "ALERTS_FOR_STATE"}
# Series per shadow version: none until a version is shadowed. tests/test_shadow.py checks the
# gateway dashboard's shadow panels against a gateway that is mirroring to one.
WHILE_SHADOWING = "visionguard_gateway_shadow_"
KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "inf", "nan", "le"}
ZONES_STREAM = "cam-grafana-zones"  # the stream `traffic` draws a zone and a line on


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions,
    aggregations, keywords, label names, label values, durations or Grafana variables."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"'(?:\\.|[^'\\])*'", "''", e)
    e = re.sub(r"`[^`]*`", "``", e)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries, $__rate_interval
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?[\w$]+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        if m.group(2) or m.group(1) in KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def exprs_in(obj) -> list[str]:
    """Every `expr` of a dashboard (panels, rows, any depth)."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "expr" and isinstance(v, str)] + [
            e for v in obj.values() for e in exprs_in(v)]
    if isinstance(obj, list):
        return [e for v in obj for e in exprs_in(v)]
    return []


def all_queries() -> dict[str, list[str]]:
    """File name -> its PromQL expressions (dashboards and alert rules)."""
    queries = {p.name: exprs_in(json.loads(p.read_text())) for p in DASHBOARDS}
    for p in RULE_FILES:
        doc = yaml.safe_load(p.read_text())
        queries[p.name] = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    return queries


@pytest.mark.parametrize("expr,names", [
    ('sum by (route, status) (rate(visionguard_gateway_request_duration_seconds_count'
     '[$__rate_interval]))', {"visionguard_gateway_request_duration_seconds_count"}),
    ('histogram_quantile(0.95, sum by (le) (rate(x_bucket{stage="track", a=~"b|c"}[5m])))',
     {"x_bucket"}),
    ('sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(b_count[5m])) > 0.05',
     {"a_total", "b_count"}),
    ("up{job=\"visionguard-triton\"} == 0", {"up"}),
    ("absent(foo{model=\"detector\"})", {"foo"}),
    ("sum(rate(a[5m])) by (model) / on (model) group_left sum(b) * 1e3 unless c offset 5m",
     {"a", "b", "c"}),
    ("max_over_time(nv_cpu_utilization[1h:5m]) and bool 1", {"nv_cpu_utilization"}),
])
def test_metric_names_are_extracted_from_promql(expr, names):
    assert metric_names(expr) == names


def test_there_is_something_to_check():
    names = {p.stem for p in DASHBOARDS}
    assert {"gateway", "triton", "tracking"} <= names
    assert {"gateway.rules", "triton.rules", "tracking.rules"} <= {p.stem for p in RULE_FILES}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_provisionable(path):
    d = json.loads(path.read_text())
    assert d["uid"] and d["title"] and d["panels"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in d["panels"]:
        if panel.get("type") == "row":
            continue
        assert panel.get("datasource", {}).get("uid") == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and metric_names(target["expr"]), panel["title"]


def test_provisioning_files_point_at_the_dashboards_and_datasource():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == ["prometheus"]
    providers = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/visionguard.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package `prometheus`)")
    out = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool, "check", "config", str(GRAFANA / "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_summary_and_severity():
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("critical", "warning", "info")
                    assert rule["annotations"]["summary"], rule["alert"]


# ---------------------------------------------------------------------------------------------
# Against the running stack


def sample_names(url: str) -> set[str]:
    """Series names exactly as Prometheus stores them. (prometheus_client's parser would add
    `_total` to Triton's counters, which Prometheus does not.)"""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, url
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)[{ ]", r.text, re.M)}


def traffic(stack, bus_jpg, n: int = 1) -> None:
    """Requests that make every labelled series appear: detections, a stream frame, an error
    answer, a stream deleted and an unknown one, a stream with a zone and a line (left in
    place: a stream's zone series go with it)."""
    url = stack.gateway_url
    for i in range(n):
        assert httpx.post(f"{url}/v1/detect", content=bus_jpg,
                          headers={"content-type": "image/jpeg"}, timeout=60).status_code == 200
    r = httpx.post(f"{url}/v1/streams/cam-grafana/frames", content=bus_jpg,
                   headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{url}/v1/detect", content=b"x", headers={"content-type": "text/plain"},
                      timeout=30).status_code == 415
    assert httpx.delete(f"{url}/v1/streams/cam-grafana", timeout=30).status_code == 204
    assert httpx.delete(f"{url}/v1/streams/never-seen", timeout=30).status_code == 404
    r = httpx.post(f"{url}/v1/streams/{ZONES_STREAM}/frames", content=bus_jpg,
                   headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.put(f"{url}/v1/streams/{ZONES_STREAM}/zones", timeout=30, json={
        "zones": [{"id": "door", "polygon": [[0, 0], [400, 0], [400, 500]]}],
        "lines": [{"id": "gate", "start": [0, 600], "end": [800, 600]}]})
    assert r.status_code == 200, r.text


def targets(stack) -> dict[str, str]:
    s = stack.settings
    return {"visionguard-gateway": f"127.0.0.1:{s.gateway_port}",
            "visionguard-triton": f"127.0.0.1:{s.triton_metrics_port}",
            "visionguard-control-plane": f"127.0.0.1:{s.control_port}"}


@pytest.mark.integration
def test_every_queried_metric_is_exported_by_the_stack(stack, bus_jpg):
    traffic(stack, bus_jpg)
    scraped = set(SYNTHETIC)
    for target in targets(stack).values():
        scraped |= sample_names(f"http://{target}/metrics")
    missing = {}
    for name, exprs in all_queries().items():
        for expr in exprs:
            absent = {n for n in metric_names(expr) - scraped
                      if not n.startswith(WHILE_SHADOWING)}
            if absent:
                missing.setdefault(name, set()).update(absent)
    assert not missing, f"metrics in queries that no scrape exports: {missing}"


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    """A real Prometheus on grafana/prometheus.yml, its targets pointed at the test stack and
    its intervals shortened to 1 s."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not on PATH (Debian package `prometheus`)")
    config = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    jobs = targets(stack)
    assert {j["job_name"] for j in config["scrape_configs"]} == set(jobs)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [jobs[job["job_name"]]]}]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(GRAFANA / f) for f in config["rule_files"]]
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> list:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.mark.integration
def test_prometheus_scrapes_the_stack_and_answers_the_dashboards(stack, prometheus, bus_jpg):
    deadline = time.monotonic() + 30
    while True:
        active = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"][
            "activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        if set(health.values()) == {"up"} and len(health) == 3:
            break
        assert time.monotonic() < deadline, f"targets not up: {active}"
        time.sleep(0.5)
    # Traffic spread over a few scrapes, so rates have two different samples to work with.
    for _ in range(4):
        traffic(stack, bus_jpg)
        time.sleep(1.0)

    dashboards = {p.stem: json.loads(p.read_text()) for p in DASHBOARDS}
    panels = {(name, p["title"]): p for name, d in dashboards.items() for p in d["panels"]}

    def shown_now(key: tuple[str, str], target: int = 0) -> list:
        return query(prometheus, panels[key]["targets"][target]["expr"].replace(
            "$__rate_interval", "1m"))

    def traffic_shown() -> bool:
        """The rates asserted below have the traffic's samples (Prometheus scrapes every
        second; this wait replaced a fixed 2.5 s)."""
        statuses = {(r["metric"]["route"], r["metric"]["status"]) for r in shown_now(
            ("gateway", "Requests per second by route and status")) if float(r["value"][1]) > 0}
        zones = shown_now(("gateway", "Zones: entries and exits per second, occupancy"), -1)
        lines = shown_now(("gateway", "Line crossings per second by direction"), -1)
        return {("/v1/detect", "200"), ("/v1/detect", "415")} <= statuses and any(
            float(r["value"][1]) > 0
            for r in shown_now(("triton", "Successful inferences per second"))) and all(
            any(r["metric"]["stream"] == ZONES_STREAM for r in result) for result in (zones, lines))

    deadline = time.monotonic() + 30
    while not traffic_shown():
        assert time.monotonic() < deadline, "the traffic's rates not shown within 30 s"
        time.sleep(0.25)
    # Every query of every dashboard is valid PromQL for a real Prometheus.
    shown = []
    for (name, title), panel in panels.items():
        for target in panel["targets"]:
            result = query(prometheus, target["expr"].replace("$__rate_interval", "1m"))
            shown.append(f"{name:9} {title[:50]:50} {target['legendFormat'][:28]:28} "
                         f"{len(result):3} series  "
                         + ", ".join(f"{float(r['value'][1]):.4g}" for r in result[:3]))
    print("\n" + "\n".join(shown))  # what the dashboards show (pytest -s)
    # The gateway's request-rate panel shows the traffic just sent.
    expr = panels[("gateway", "Requests per second by route and status")]["targets"][0]["expr"]
    result = query(prometheus, expr.replace("$__rate_interval", "1m"))
    rates = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1])
             for r in result}
    assert rates.get(("/v1/detect", "200"), 0) > 0, rates
    assert rates.get(("/v1/detect", "415"), 0) > 0, rates
    # Triton's panel, from Triton's own metrics port.
    expr = panels[("triton", "Successful inferences per second")]["targets"][0]["expr"]
    result = query(prometheus, expr.replace("$__rate_interval", "1m"))
    assert any(r["metric"]["model"] == "detector" and float(r["value"][1]) > 0
               for r in result), result
    # The zone and line panels show the stream's zone and line.
    zone_panel = panels[("gateway", "Zones: entries and exits per second, occupancy")]
    line_panel = panels[("gateway", "Line crossings per second by direction")]
    for panel, label, name in ((zone_panel, "zone", "door"), (line_panel, "line", "gate")):
        result = query(prometheus, panel["targets"][-1]["expr"].replace(
            "$__rate_interval", "1m"))
        assert any(r["metric"]["stream"] == ZONES_STREAM and r["metric"][label] == name
                   for r in result), result
    # The alert rules are loaded and evaluate without errors.
    deadline = time.monotonic() + 10
    while True:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r["health"] == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, [(r["name"], r["health"], r.get("lastError"))
                                             for r in rules]
        time.sleep(0.5)
    loaded = {g["file"] for g in groups}
    assert {str(p) for p in RULE_FILES} <= loaded
