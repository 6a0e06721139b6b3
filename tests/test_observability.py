"""Logs, traces and metrics: the JSON log format, the span file schema, the control plane's OTLP
receiver, and (integration) one request traced through the real gateway and the real Triton
(opentelemetry trace mode) into one spans file, with its JSON log line and its metrics."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tracker_service.telemetry import JsonFormatter, JsonlSpanExporter

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPAN_KEYS = {"name", "service", "trace_id", "span_id", "parent_span_id", "start", "end",
             "duration_ms", "status", "attributes"}
LOG_KEYS = {"ts", "level", "service", "logger", "message", "trace_id", "span_id"}


def sdk_spans(service: str = "gateway"):
    """Real SDK spans: a root with two children, one of them failed."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/detect") as root:
        root.set_attribute("http.route", "/v1/detect")
        with tracer.start_as_current_span("decode") as span:
            span.set_attribute("bytes", 1234)
        with tracer.start_as_current_span("infer") as span:
            span.set_status(Status(StatusCode.ERROR, "Triton is down"))
    return exporter.get_finished_spans()


def check_span_lines(lines: list[dict], spans) -> None:
    assert len(lines) == len(spans)
    by_name = {line["name"]: line for line in lines}
    for line in lines:
        assert SPAN_KEYS <= set(line)
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
        assert TS.match(line["start"]) and TS.match(line["end"])
        assert line["duration_ms"] >= 0
    root = by_name["POST /v1/detect"]
    assert root["parent_span_id"] == "" and root["service"] == "gateway"
    assert root["attributes"] == {"http.route": "/v1/detect"}
    assert by_name["decode"]["parent_span_id"] == root["span_id"]
    assert by_name["decode"]["attributes"] == {"bytes": 1234}
    assert by_name["infer"]["status"] == "ERROR"
    assert {line["trace_id"] for line in lines} == {format(spans[0].context.trace_id, "032x")}
    for span in spans:
        line = next(x for x in lines if x["span_id"] == format(span.context.span_id, "016x"))
        assert line["duration_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6,
                                                    abs=0.002)


def test_log_lines_are_json_with_the_current_trace_and_span():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    log = logging.getLogger("test.telemetry")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        tracer = TracerProvider().get_tracer("test")
        log.info("outside")
        with tracer.start_as_current_span("request") as span:
            log.warning("slow frame", extra={"stream_id": "cam-3", "duration_ms": 812.5})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    outside, inside, failed = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line in (outside, inside, failed):
        assert LOG_KEYS <= set(line) and TS.match(line["ts"])
        assert line["service"] == "gateway" and line["logger"] == "test.telemetry"
    assert outside["trace_id"] == outside["span_id"] == ""
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert (inside["level"], inside["message"]) == ("WARNING", "slow frame")
    assert inside["stream_id"] == "cam-3" and inside["duration_ms"] == 812.5
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exception"]


def test_span_file_exporter_writes_the_shared_schema(tmp_path):
    spans = sdk_spans()
    path = tmp_path / "spans.jsonl"
    JsonlSpanExporter(path).export(spans)
    check_span_lines([json.loads(x) for x in path.read_text().splitlines()], spans)


def test_request_middleware_logs_one_line_per_request_and_continues_the_callers_trace(caplog):
    from litestar import get

    from tracker_service.telemetry import annotate, request_telemetry, setup_tracing

    setup_tracing("pytest")  # the process's provider (no exporter unless one was set up)

    @get("/v1/things/{thing_id:str}")
    async def thing(thing_id: str) -> dict:
        annotate(model_version="7")
        if thing_id == "missing":
            from litestar.exceptions import NotFoundException
            raise NotFoundException("no such thing")
        return {"id": thing_id}

    @get("/metrics")
    async def scrape() -> str:
        return "ok"

    @get("/healthz")
    async def health() -> None:
        raise RuntimeError("unhealthy")

    app = Litestar([thing, scrape, health], middleware=[request_telemetry("test")],
                   logging_config=None)  # leave pytest's log capture in place
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    with caplog.at_level(logging.INFO, logger="visionguard.test.requests"), TestClient(app) as c:
        ok = c.get("/v1/things/a", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        missing = c.get("/v1/things/missing")
        assert c.get("/metrics").status_code == 200
        assert c.get("/healthz").status_code == 500
    assert ok.status_code == 200 and ok.headers["x-trace-id"] == trace_id
    assert missing.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", missing.headers["x-trace-id"])
    assert missing.headers["x-trace-id"] != trace_id
    records = [r for r in caplog.records if r.name == "visionguard.test.requests"]
    assert [(r.levelname, r.route, r.status) for r in records] == [
        ("INFO", "/v1/things/{thing_id}", 200),
        ("WARNING", "/v1/things/{thing_id}", 404),
        ("WARNING", "/healthz", 500),  # a quiet path logs only when it fails
    ]
    assert records[0].model_version == "7" and records[0].duration_ms >= 0


def test_span_file_rolls_over_past_its_bound(tmp_path):
    from tracker_service.telemetry import SpanFile

    path = tmp_path / "spans.jsonl"
    spans = SpanFile(path, max_bytes=300)
    for i in range(20):
        spans.write([{"name": f"s{i}", "pad": "x" * 40}])
    current = [json.loads(x)["name"] for x in path.read_text().splitlines()]
    previous = [json.loads(x)["name"]
                for x in (tmp_path / "spans.jsonl.1").read_text().splitlines()]
    kept = previous + current
    assert kept == [f"s{i}" for i in range(20 - len(kept), 20)]  # the newest, in order
    assert 5 <= len(previous) < 20 and path.stat().st_size < 300 + 60


@pytest.fixture
def collector_client(tmp_path):
    """The collector's router in a bare app with the control plane's error handlers (the whole
    control plane runs in the integration tests)."""
    from control_plane.logs import receiver as collector
    from control_plane.api.app import ControlPlaneError, on_control_plane_error
    from control_plane.api.metrics import ControlPlaneMetrics
    from control_plane.settings import Settings

    settings = Settings(runtime_dir=tmp_path)
    app = Litestar([collector.router(settings)],
                   exception_handlers={ControlPlaneError: on_control_plane_error})
    app.state.metrics = ControlPlaneMetrics()
    with TestClient(app) as client:
        yield client, settings.traces_file, app.state.metrics


def test_collector_writes_otlp_protobuf_spans(collector_client):
    client, path, metrics = collector_client
    spans = sdk_spans()
    body = encode_spans(spans).SerializeToString()
    r = client.post("/v1/traces", content=body,
                    headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    check_span_lines([json.loads(x) for x in path.read_text().splitlines()], spans)
    # gzip, as the OTLP exporters send with OTEL_EXPORTER_OTLP_COMPRESSION=gzip
    r = client.post("/v1/traces", content=gzip.compress(body),
                    headers={"content-type": "application/x-protobuf",
                             "content-encoding": "gzip"})
    assert r.status_code == 200
    assert len(path.read_text().splitlines()) == 2 * len(spans)
    assert metrics.spans_received.labels("gateway")._value.get() == 2 * len(spans)


# What Triton 2.48 (opentelemetry trace mode) posted for one inference carrying a traceparent,
# captured from the bundled tritonserver; trimmed to two of its three spans.
TRITON_OTLP_JSON = {"resourceSpans": [{"resource": {"attributes": [
    {"key": "telemetry.sdk.language", "value": {"stringValue": "cpp"}},
    {"key": "service.name", "value": {"stringValue": "triton"}}]},
    "scopeSpans": [{"scope": {"name": "triton-server"}, "spans": [
        {"attributes": [{"key": "triton.model_name", "value": {"stringValue": "detector"}},
                        {"key": "triton.model_version", "value": {"intValue": "1"}}],
         "endTimeUnixNano": "1795342580151760281",
         "events": [{"name": "REQUEST_START", "timeUnixNano": "1795342580126338124"},
                    {"name": "QUEUE_START", "timeUnixNano": "1795342580126375159"},
                    {"name": "REQUEST_END", "timeUnixNano": "1795342580151760281"}],
         "kind": 2, "name": "detector", "parentSpanId": "80c3eeaeab7f6657",
         "spanId": "342caedbd8ed83b6", "startTimeUnixNano": "1795342580126338124",
         "traceId": "0af7651916cd43dd8448eb211c80319c"},
        {"endTimeUnixNano": "1795342580151973219", "kind": 2, "name": "InferRequest",
         "parentSpanId": "b7ad6b7169203331", "spanId": "80c3eeaeab7f6657",
         "startTimeUnixNano": "1795342580126286327",
         "traceId": "0af7651916cd43dd8448eb211c80319c"}]}]}]}


def test_collector_reads_tritons_otlp_json(collector_client):
    client, path, _ = collector_client
    r = client.post("/v1/traces", content=json.dumps(TRITON_OTLP_JSON),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {}
    detector, infer_request = [json.loads(x) for x in path.read_text().splitlines()]
    assert detector["service"] == infer_request["service"] == "triton"
    assert detector["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert detector["parent_span_id"] == infer_request["span_id"] == "80c3eeaeab7f6657"
    assert infer_request["parent_span_id"] == "b7ad6b7169203331"  # the caller's span
    assert detector["attributes"] == {"triton.model_name": "detector",
                                      "triton.model_version": 1}
    assert detector["duration_ms"] == pytest.approx(25.422, abs=0.001)
    assert detector["start"] == "2026-11-22T10:16:20.126Z"
    assert [e["name"] for e in detector["events"]] == ["REQUEST_START", "QUEUE_START",
                                                       "REQUEST_END"]


@pytest.mark.parametrize("body,headers,message", [
    (b"\x0a\xff\xff", {"content-type": "application/x-protobuf"}, "not an OTLP"),
    (b"{not json", {"content-type": "application/json"}, "not an OTLP"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "1"}]}]}]}',
     {"content-type": "application/json"}, "bad trace or span id"),
    (b"spans", {"content-type": "text/plain"}, "unsupported content type"),
    (b"not gzip", {"content-type": "application/x-protobuf", "content-encoding": "gzip"},
     "cannot decompress"),
])
def test_collector_refuses_bad_bodies_with_json_errors(collector_client, body, headers, message):
    client, path, _ = collector_client
    r = client.post("/v1/traces", content=body, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_traces"
    assert message in r.json()["error"]["message"]
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# The real stack: `visionguard up` (Triton, control plane, gateway)


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_spans(path: Path, trace_id: str, want: set[str], timeout_s: float = 30) -> list:
    """The trace's spans once every name in `want` arrived (exporters batch for ~5 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [s for s in read_jsonl(path) if s["trace_id"] == trace_id]
        if want <= {s["name"] for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


GATEWAY_SPANS = {"POST /v1/streams/{stream_id}/frames", "decode", "preprocess", "queue",
                 "infer", "postprocess", "track"}
TRITON_SPANS = {"InferRequest", "detector", "compute"}


@pytest.fixture(scope="module")
def traced_stack(seeded_repo, tmp_path_factory):
    """`visionguard up` with Triton's opentelemetry trace mode on (VG_TRITON_TRACE_RATE=1).
    Off by default: under concurrent load Triton 2.48 with tracing crashed (signal 11 after a
    failed export) and failed or hung perf_analyzer runs (see settings.triton_trace_rate)."""
    from tests.conftest import run_up, stack_env

    env = {**stack_env(seeded_repo, tmp_path_factory.mktemp("traced-runtime")),
           "VG_TRITON_TRACE_RATE": "1"}
    with run_up(env, tmp_path_factory.mktemp("traced-logs") / "up.log") as running:
        yield running


@pytest.fixture(scope="module")
def traced_frame(traced_stack, bus_jpg):
    """One stream frame sent with a caller's W3C traceparent; its response and trace."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(f"{traced_stack.gateway_url}/v1/streams/cam-obs/frames", content=bus_jpg,
                   headers={"content-type": "image/jpeg",
                            "traceparent": f"00-{trace_id}-{parent}-01"}, timeout=60)
    assert r.status_code == 200, r.text
    spans = wait_for_spans(traced_stack.settings.traces_file, trace_id,
                           GATEWAY_SPANS | TRITON_SPANS)
    return r, trace_id, parent, spans


@pytest.mark.integration
def test_one_request_is_one_trace_through_gateway_and_triton(traced_frame):
    r, trace_id, parent, spans = traced_frame
    assert r.headers["x-trace-id"] == trace_id  # the caller's trace continues
    names = {s["name"] for s in spans}
    assert GATEWAY_SPANS | TRITON_SPANS <= names, f"missing {GATEWAY_SPANS | TRITON_SPANS - names}"
    by_name = {s["name"]: s for s in spans}
    root = by_name["POST /v1/streams/{stream_id}/frames"]
    assert root["service"] == "gateway" and root["parent_span_id"] == parent
    assert root["attributes"]["http.response.status_code"] == 200
    assert root["attributes"]["visionguard.stream_id"] == "cam-obs"
    for stage in ("decode", "preprocess", "queue", "infer", "postprocess", "track"):
        assert by_name[stage]["service"] == "gateway"
        assert by_name[stage]["parent_span_id"] == root["span_id"], stage
        assert 0 <= by_name[stage]["duration_ms"] <= root["duration_ms"]
    # Triton's spans hang under the gateway's infer span: the traceparent went into Triton.
    infer, request = by_name["infer"], by_name["InferRequest"]
    assert request["service"] == "triton"
    assert request["parent_span_id"] == infer["span_id"]
    assert by_name["detector"]["parent_span_id"] == request["span_id"]
    assert by_name["compute"]["parent_span_id"] == by_name["detector"]["span_id"]
    assert by_name["detector"]["attributes"]["triton.model_name"] == "detector"
    assert str(by_name["detector"]["attributes"]["triton.model_version"]) == \
        r.json()["model"]["version"]
    # Triton's work lies inside the gateway's call to it: one host, one clock, timestamps in
    # ms. (Not its span ends: Triton ends InferRequest, detector and compute after the
    # response went out; its compute timestamps even ran ~12 ms past its own
    # INFER_RESPONSE_COMPLETE event here, so only the gRPC frontend's events are compared.)
    at = {e["name"]: ts(e["time"]) for e in request["events"]}
    assert ts(infer["start"]) - 0.002 <= ts(request["start"]) <= ts(infer["end"])
    assert ts(infer["start"]) - 0.002 <= at["GRPC_WAITREAD_END"]
    assert at["INFER_RESPONSE_COMPLETE"] <= ts(infer["end"]) + 0.002
    # The stage spans agree with the timings the response reports.
    for stage in ("decode", "preprocess", "infer", "postprocess", "track"):
        assert by_name[stage]["duration_ms"] == pytest.approx(r.json()["timings_ms"][stage],
                                                              abs=1.0), stage
    print("\n" + "\n".join(f"{s['service']:8} {s['name']:40} {s['duration_ms']:9.3f} ms  "
                           f"span {s['span_id']} parent {s['parent_span_id'] or '-'}"
                           for s in sorted(spans, key=lambda s: s["start"])))


def log_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON log line: {line!r}")
    return parsed


@pytest.mark.integration
def test_gateway_logs_one_json_line_per_request_with_its_trace(traced_stack, traced_frame):
    r, trace_id, _, spans = traced_frame
    root = next(s for s in spans if s["name"].startswith("POST "))
    bad = httpx.post(f"{traced_stack.gateway_url}/v1/detect", content=b"hello",
                     headers={"content-type": "text/plain"}, timeout=30)
    assert bad.status_code == 415
    logs = traced_stack.settings.runtime_dir / "logs"
    deadline = time.monotonic() + 10
    while True:
        lines = log_lines(logs / "gateway.log")
        mine = [x for x in lines if x["trace_id"] in (trace_id, bad.headers["x-trace-id"])
                and x.get("event") == "request"]
        if len(mine) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for line in lines:
        assert LOG_KEYS <= set(line) and TS.match(line["ts"]), line
        assert line["service"] == "gateway"
    ok, refused = sorted(mine, key=lambda x: x["status"])
    assert ok["level"] == "INFO" and ok["trace_id"] == trace_id
    assert ok["span_id"] == root["span_id"]
    assert ok["route"] == "/v1/streams/{stream_id}/frames" and ok["stream_id"] == "cam-obs"
    assert ok["model_version"] == r.json()["model"]["version"]
    assert ok["duration_ms"] == pytest.approx(root["duration_ms"], abs=5)
    assert refused["level"] == "WARNING" and refused["status"] == 415
    assert refused["error_code"] == "unsupported_media_type"
    assert refused["route"] == "/v1/detect"
    # The control plane logs the same way (its requests and uvicorn's own lines).
    for line in log_lines(logs / "control-plane.log"):
        assert LOG_KEYS <= set(line) and line["service"] == "control-plane", line


def scrape(url: str) -> dict[str, list]:
    """Sample name -> [(labels, value)] from a Prometheus text endpoint. Counter names as
    Prometheus stores them: prometheus_client's parser adds `_total` to Triton's."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            name = s.name
            if family.type == "counter" and family.name.startswith("nv_"):
                name = family.name
            samples.setdefault(name, []).append((s.labels, s.value))
    return samples


@pytest.mark.integration
def test_gateway_metrics_cover_the_request_path(traced_stack, traced_frame, bus_jpg):
    r = httpx.post(f"{traced_stack.gateway_url}/v1/detect", content=bus_jpg,
                   headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200
    version = r.json()["model"]["version"]
    m = scrape(f"{traced_stack.gateway_url}/metrics")

    def value(name: str, **labels) -> float:
        return sum(v for lab, v in m.get(name, []) if labels.items() <= lab.items())

    assert value("visionguard_gateway_request_duration_seconds_count",
                 route="/v1/detect", status="200") >= 1
    assert value("visionguard_gateway_request_duration_seconds_count",
                 route="/v1/streams/{stream_id:str}/frames", status="200") >= 1
    assert value("visionguard_triton_request_duration_seconds_count",
                 model="detector", version=version) >= 2
    assert value("visionguard_gateway_slot_wait_seconds_count") >= 2
    for stage in ("decode", "preprocess", "postprocess", "track"):
        assert value("visionguard_gateway_stage_duration_seconds_count", stage=stage) >= 1
    assert value("visionguard_detections_per_image_count", version=version) >= 2
    assert "visionguard_detection_score_bucket" in m
    assert value("visionguard_active_streams") >= 1
    assert "visionguard_active_tracks" in m
    assert value("visionguard_model_version_info", model="detector", version=version) == 1
    # Batch sizes from Triton's statistics: every image the gateway sent ran in some batch.
    executions = value("visionguard_triton_batch_executions_total", model="detector",
                       version=version)
    images = value("visionguard_triton_batch_inferences_total", model="detector",
                   version=version)
    assert executions >= 1 and images >= executions
    assert value("visionguard_triton_model_version_loaded", model="detector",
                 version=version) == 1
    # Triton's own metrics port counts the same inferences.
    triton = scrape(f"http://127.0.0.1:{traced_stack.settings.triton_metrics_port}/metrics")
    success = sum(v for lab, v in triton["nv_inference_request_success"]
                  if lab["model"] == "detector" and lab["version"] == version)
    assert success >= images


def test_up_sends_spans_to_the_control_plane_unless_the_user_names_a_collector(monkeypatch):
    from control_plane.stack.up import gateway_env
    from control_plane.settings import Settings
    from control_plane.stack.triton_server import trace_args

    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    local = Settings(control_port=9911, otlp_traces_endpoint="", otlp_endpoint="",
                     triton_trace_rate=1)
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:9911/v1/traces" in trace_args(local)
    assert "--trace-config=mode=opentelemetry" in trace_args(local)
    env = gateway_env(local)
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://127.0.0.1:9911/v1/traces"
    assert env["OTEL_SERVICE_NAME"] == "gateway"

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    user = Settings(control_port=9911, triton_trace_rate=1)
    assert "--trace-config=opentelemetry,url=http://collector:4318/v1/traces" in trace_args(user)
    env = gateway_env(user)
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env  # the SDK uses the user's base URL
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert trace_args(Settings(triton_trace_rate=0)) == []
    assert trace_args(Settings()) == [], "off unless asked for (see settings.triton_trace_rate)"
