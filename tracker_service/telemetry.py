"""Logs, spans and the request middleware shared by the gateway and the control plane.

- Logs: one JSON object per line on stdout, with the current span's trace_id and span_id, so a
  log line leads to its trace and back (`JsonFormatter`, `setup_logging`).
- Spans: OpenTelemetry SDK. Exporters come from the standard `OTEL_*` variables (OTLP over
  HTTP or gRPC) and/or a JSON-lines file in one schema (`span_record`), the same schema the
  control plane's OTLP receiver writes (control_plane/logs/receiver.py), so one file can hold the
  gateway's and Triton's spans of a request.
- `request_telemetry`: ASGI middleware that continues a caller's W3C trace context, opens one
  server span per request, answers with `X-Trace-Id`, and logs one line per request.

This module imports nothing from control_plane (the gateway installs without it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

tracer = trace.get_tracer("visionguard")
propagator = TraceContextTextMapPropagator()

# ---------------------------------------------------------------------------------------------
# Logs


def rfc3339(seconds: float) -> str:
    """2026-11-22T10:05:01.123Z"""
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# LogRecord's own attributes: everything else on a record came from `extra=` and is logged.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        line = {
            "ts": rfc3339(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else "",
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else "",
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(service: str, level: str | int = "INFO") -> None:
    """Every log line of the process as JSON on stdout: ours, uvicorn's and Litestar's.

    Call it after constructing the Litestar app: Litestar's default logging config installs
    its own root handler then."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.set_name("visionguard-json")
    root = logging.getLogger()
    # Replace our own handler (set up again), plain stream handlers (basicConfig) and
    # Litestar's default queue handler; leave others alone (pytest's capture handler).
    root.handlers[:] = [h for h in root.handlers
                        if h.get_name() != "visionguard-json"
                        and type(h) is not logging.StreamHandler
                        and not type(h).__module__.startswith("litestar.")] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs every request at INFO: routing polls and drift posts, once a second per
    # gateway. Their failures are logged by our own code with context.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Libraries that print through their own stream handler (MLflow's "mlflow" logger, set
    # up when mlflow is imported) log through ours instead.
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and any(
                isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                for h in logger.handlers):
            logger.handlers[:] = [h for h in logger.handlers
                                  if not isinstance(h, logging.StreamHandler)
                                  or isinstance(h, logging.FileHandler)]
            logger.propagate = True


# ---------------------------------------------------------------------------------------------
# Spans

_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}


def span_record(*, name: str, service: str, trace_id: str, span_id: str, parent_span_id: str,
                start_ns: int, end_ns: int, status: str, attributes: dict,
                events: Sequence[dict] = ()) -> dict:
    """One line of the spans file (ids as lowercase hex, "" parent for a root span)."""
    record = {
        "name": name, "service": service, "trace_id": trace_id, "span_id": span_id,
        "parent_span_id": parent_span_id, "start": _ns_to_rfc3339(start_ns),
        "end": _ns_to_rfc3339(end_ns), "duration_ms": round((end_ns - start_ns) / 1e6, 3),
        "status": status, "attributes": attributes,
    }
    if events:  # Triton puts its queue and compute timestamps here
        record["events"] = list(events)
    return record


def _ns_to_rfc3339(ns: int) -> str:
    return rfc3339(ns / 1e9)


class SpanFile:
    """Appends span records to a JSON-lines file; one lock per path within the process.

    Past `max_bytes` the file moves to `<name>.1` (replacing the previous one) and a new one
    starts, so tracing every request cannot fill the disk; 0 = no bound.
    """

    _locks: dict[Path, threading.Lock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, max_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        with SpanFile._guard:
            self.lock = SpanFile._locks.setdefault(self.path.resolve(), threading.Lock())

    def write(self, records: Iterable[dict]) -> int:
        lines = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return 0
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.max_bytes and self.path.stat().st_size >= self.max_bytes:
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
        return lines.count("\n")


def readable_span_record(span: ReadableSpan) -> dict:
    ctx = span.get_span_context()
    return span_record(
        name=span.name,
        service=str(span.resource.attributes.get("service.name", "")),
        trace_id=format(ctx.trace_id, "032x"), span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(span.parent.span_id, "016x") if span.parent else "",
        start_ns=span.start_time or 0, end_ns=span.end_time or span.start_time or 0,
        status=_STATUS[span.status.status_code],
        attributes={k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in (span.attributes or {}).items()},
        events=[{"name": e.name, "time": _ns_to_rfc3339(e.timestamp)} for e in span.events])


class JsonlSpanExporter(SpanExporter):
    """Spans as JSON lines (`span_record`), for a gateway without a collector."""

    def __init__(self, path: Path) -> None:
        self.file = SpanFile(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.file.write(readable_span_record(s) for s in spans)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


_provider: TracerProvider | None = None


def setup_tracing(service: str, *, otlp_endpoint: str = "", otlp_protocol: str = "",
                  spans_file: Path | None = None) -> TracerProvider:
    """The process's tracer provider (set once; later calls return it).

    `otlp_endpoint` non-empty: an OTLP exporter, which reads its endpoint, headers and timeout
    from the standard OTEL_EXPORTER_OTLP_* variables itself; `otlp_protocol` "grpc" picks the
    gRPC exporter, anything else OTLP/HTTP protobuf. `spans_file`: also write JSON lines there.
    Neither: spans still exist (trace ids in logs and in the traceparent sent to Triton), and
    nothing is exported. OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over `service`.
    """
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service}))
    provider = TracerProvider(resource=resource)
    if otlp_endpoint:
        if otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if spans_file is not None:
        provider.add_span_processor(BatchSpanProcessor(JsonlSpanExporter(spans_file)))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def traceparent_headers() -> dict[str, str]:
    """W3C trace context of the current span, for a downstream call (Triton's gRPC metadata)."""
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier


def record_span(name: str, start_ns: int, end_ns: int, **attributes) -> None:
    """A finished child span of the current one, from timestamps taken elsewhere (a worker
    thread's decode, the wait for a Triton slot)."""
    span = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=max(end_ns, start_ns))


# ---------------------------------------------------------------------------------------------
# One span and one log line per request

_request_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "visionguard_request_fields", default=None)


def annotate(**fields) -> None:
    """Add fields to the current request's log line and server span (model_version, error
    code, ...); no-op outside a request."""
    current = _request_fields.get()
    if current is None:
        return
    current.update({k: v for k, v in fields.items() if v is not None})
    span = current.get("_span")
    if span is not None:
        for k, v in fields.items():
            if isinstance(v, (str, bool, int, float)):
                span.set_attribute(f"visionguard.{k}", v)


def _header_getter(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}


def status_recorder(send):
    """(send wrapper, status holder): the wrapper passes messages on and keeps the response's
    status code in `holder["code"]` (500 until a response starts)."""
    holder = {"code": 500}

    async def send_wrapper(message):
        if message["type"] == "http.response.start":
            holder["code"] = message["status"]
        await send(message)

    return send_wrapper, holder


def request_telemetry(service: str, quiet_paths: Sequence[str] = ("/metrics", "/healthz",
                                                                   "/readyz")):
    """ASGI middleware factory (Litestar `middleware=[...]`).

    Quiet paths (scrapes, probes, the gateways' routing poll) get no span, and a log line only
    when they fail: one every second or so would drown the requests that matter.
    """
    log = logging.getLogger(f"visionguard.{service}.requests")

    def factory(app):
        async def quiet(scope, receive, send):
            start = time.perf_counter()
            send_wrapper, status = status_recorder(send)
            try:
                await app(scope, receive, send_wrapper)
            finally:
                if status["code"] >= 400:
                    route, method = scope.get("path_template") or scope["path"], scope["method"]
                    log.warning(f"{method} {route} {status['code']}", extra={
                        "event": "request", "method": method, "route": route,
                        "status": status["code"],
                        "duration_ms": round((time.perf_counter() - start) * 1000, 3)})

        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if scope.get("path") in quiet_paths:
                await quiet(scope, receive, send)
                return
            handler = scope.get("route_handler")
            route = scope.get("path_template") or (
                next(iter(handler.paths)) if handler is not None else "unmatched")
            method = scope.get("method", "")
            parent = propagator.extract(_header_getter(scope.get("headers", [])))
            start = time.perf_counter()
            status = {"code": 500}
            with tracer.start_as_current_span(
                    f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                    attributes={"http.request.method": method, "http.route": route,
                                "url.path": scope.get("path", "")}) as span:
                fields: dict = {"_span": span}
                token = _request_fields.set(fields)
                params = scope.get("path_params") or {}
                if "stream_id" in params:
                    annotate(stream_id=str(params["stream_id"]))
                trace_id = format(span.get_span_context().trace_id, "032x").encode()

                async def send_wrapper(message):
                    if message["type"] == "http.response.start":
                        status["code"] = message["status"]
                        message = {**message, "headers": [*message.get("headers", []),
                                                          (b"x-trace-id", trace_id)]}
                    await send(message)

                try:
                    await app(scope, receive, send_wrapper)
                finally:
                    _request_fields.reset(token)
                    code = status["code"]
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    duration_ms = round((time.perf_counter() - start) * 1000, 3)
                    extra = {k: v for k, v in fields.items() if not k.startswith("_")}
                    level = (logging.ERROR if code >= 500 else logging.WARNING if code >= 400
                             else logging.INFO)
                    log.log(level, f"{method} {route} {code} {duration_ms:.1f}ms",
                            extra={"event": "request", "method": method, "route": route,
                                   "status": code, "duration_ms": duration_ms, **extra})

        return middleware

    return factory
